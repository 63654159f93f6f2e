//! Linear layers: `matvec` (decode, a few tokens, memory-bound) and `matmul` (prefill chunks),
//! for every weight format, with fused epilogues (residual add, SwiGLU) and, in matvec, a fused
//! input RMSNorm.

use std::sync::Arc;

use crate::gpu::tensor::{GpuMatrix, Shard};
use crate::gpu::{grid, BufRef, GpuContext, Kernel, Recorder};
use crate::model::host::TensorFormat;
use crate::Result;

use super::src;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    /// y = W x
    Store = 0,
    /// y += W x (residual add)
    Accumulate = 1,
    /// rows are interleaved (gate, up) pairs: y[i] = silu(gate_i . x) * (up_i . x)
    SwiGlu = 2,
}

/// `linear_params.wgsl`'s struct: every linear driver's parameters (and `embed_rows.wgsl`'s,
/// which reuses the fields).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    pub rows: u32,
    pub cols: u32,
    pub w_stride: u32,
    pub row0: u32,
    pub x_stride: u32,
    pub y_stride: u32,
    pub n_tok: u32,
    pub mode: u32,
    pub norm: u32,
    pub eps: f32,
    pub grid_x: u32,
    pub x_off: u32,
}

impl Params {
    /// One row shard `s` of `w` (a format of `unit` bytes per `w_stride` step) applied to `io`.
    fn for_shard(w: &GpuMatrix, s: &Shard, unit: usize, io: &LinearIo, epi: Epilogue, norm: Option<(&wgpu::Buffer, f32)>, grid_x: u32) -> Params {
        Params {
            rows: s.rows as u32,
            cols: w.cols as u32,
            w_stride: (w.row_bytes / unit) as u32,
            row0: (io.y_row0 + s.row0) as u32,
            x_stride: io.x_stride as u32,
            y_stride: io.y_stride as u32,
            n_tok: io.n_tok as u32,
            mode: epi as u32,
            norm: norm.is_some() as u32,
            eps: norm.map_or(0.0, |n| n.1),
            grid_x,
            x_off: io.x_off as u32,
        }
    }
}

/// Largest token count the matvec kernel takes; larger chunks go through the tiled matmul, which
/// reads each weight block once per 64 tokens, on every adapter (on lavapipe a 64-token chunk of a
/// 1536 x 576 layer takes 27 ms in the matmul against ~350 ms in 64 matvecs).
pub const MATVEC_MAX_TOKENS: usize = 4;

/// (format file name, source, bytes per `w_stride` unit, override constants)
pub(crate) fn format_shader(fmt: TensorFormat) -> Result<(&'static str, &'static str, usize, Vec<(&'static str, f64)>)> {
    Ok(match fmt {
        TensorFormat::F16 => ("wfmt_f16", src::WFMT_F16, 16, vec![("BF16", 0.0)]),
        TensorFormat::BF16 => ("wfmt_f16", src::WFMT_F16, 16, vec![("BF16", 1.0)]),
        TensorFormat::F32 => ("wfmt_f32", src::WFMT_F32, 16, vec![]),
        q => {
            let (name, s, unit) = super::quant_pack::quant_format_shader(q)?;
            (name, s, unit, vec![])
        }
    })
}

/// Rows per matvec workgroup: CPU adapters (lavapipe, SwiftShader) pay per workgroup, so they
/// get 32 rows x 8 lanes; GPUs get 4 rows x 64 lanes for long coalesced row reads.
pub fn matvec_rows(ctx: &GpuContext) -> u32 {
    if ctx.info.device_type == wgpu::DeviceType::Cpu { 32 } else { 4 }
}

/// The subgroup size the subgroup matvec can rely on (adapters whose size is fixed), if any.
pub fn fixed_subgroup(ctx: &GpuContext) -> Option<u32> {
    let c = &ctx.caps;
    (c.subgroups && c.subgroup_min == c.subgroup_max && c.subgroup_min >= 4 && c.subgroup_min <= 64
        )
        .then_some(c.subgroup_min)
}

/// Weight rows per lane of `matvec_cpu.wgsl` in decode steps and in prefill chunks, and the tokens
/// it takes per pass over the weights (lavapipe, 2 cores: a 3072 x 576 Q4_1 matvec 0.6 ms with
/// 8 rows per lane against 1.1 ms with 2; docs/perf.md).
pub const CPU_ROWS: u32 = 8;
pub const CPU_PREFILL: (u32, u32) = (8, 8);

/// Whether the adapter gets the CPU kernels (`matvec_cpu.wgsl` for every token count): device
/// type CPU (unless `GpuOptions::no_cpu_kernels`) and one fixed subgroup size of at least 8 (the
/// kernel broadcasts 8 lanes' loads).
pub fn cpu_variant(ctx: &GpuContext) -> bool {
    ctx.caps.cpu_kernels && cpu_capable(ctx)
}

/// Whether `matvec_cpu.wgsl` can run on the adapter at all (tests force it on GPUs too).
pub fn cpu_capable(ctx: &GpuContext) -> bool {
    fixed_subgroup(ctx).is_some_and(|s| s >= 8)
}

/// `matvec_cpu.wgsl` composed with a weight format, `rows` weight rows per lane (even, for
/// SwiGLU pairs) and `tokens` per pass over the weights.
pub fn cpu_kernel_source(fmt: TensorFormat, rows: u32, tokens: u32) -> Result<String> {
    if rows == 0 || rows % 2 != 0 || tokens == 0 || rows * tokens > 64 {
        return Err(crate::Error::arg("rows", format!("matvec_cpu takes an even number of rows per lane and rows x tokens <= 64, got {rows} x {tokens}")));
    }
    let (_, fsrc, _, _) = format_shader(fmt)?;
    let consts = format!("const R: u32 = {rows}u;\nconst TT: u32 = {tokens}u;\n");
    let (mut setup, mut slice, mut store) = (String::new(), String::new(), String::new());
    for k in 0..tokens {
        setup += &format!("        let base_{k} = xbase(t0, {k}u);\n        let sc_{k} = xscale(base_{k}, lane);\n");
        slice += &format!("            let xs_{k} = xslice(base_{k}, c, l4, sc_{k});\n");
        for r in 0..rows {
            setup += &format!("        var a_{r}_{k} = 0.0;\n");
        }
    }
    if tokens == 1 {
        // one token: the format's own dot product (integer weights, scaled once per block)
        slice += "            let xsum = sum32(xs_0);\n";
        for r in 0..rows {
            slice += &format!("            a_{r}_0 += fmt_dot32(min(wr0 + {r}u, p.rows - 1u), c, xs_0, xsum);\n");
        }
    } else {
        // each row's slice decoded once; then one FMA per (column, row, token) into scalar
        // accumulators, column by column, so only R x TT accumulators stay live (dot products of
        // whole slices per (row, token) kept 4 x as many partial sums live and ran ~5-20% slower)
        for r in 0..rows {
            slice += &format!("            let w_{r} = fmt_dec32(min(wr0 + {r}u, p.rows - 1u), c);\n");
        }
        for j in 0..8 {
            for comp in ["x", "y", "z", "w"] {
                for r in 0..rows {
                    for k in 0..tokens {
                        slice += &format!("            a_{r}_{k} = fma(w_{r}[{j}].{comp}, xs_{k}[{j}].{comp}, a_{r}_{k});\n");
                    }
                }
            }
        }
    }
    store += "        if (p.mode == 2u) {\n";
    for k in 0..tokens {
        for r in (0..rows).step_by(2) {
            store += &format!("            store_swiglu(wr0 + {r}u, t0 + {k}u, a_{r}_{k}, a_{}_{k});\n", r + 1);
        }
    }
    store += "        } else {\n";
    for k in 0..tokens {
        for r in 0..rows {
            store += &format!("            store(wr0 + {r}u, t0 + {k}u, a_{r}_{k});\n");
        }
    }
    store += "        }\n";
    let body = super::expand_markers(src::MATVEC_CPU, None, &[("//@SETUP", &setup), ("//@SLICE", &slice), ("//@STORE", &store)]);
    Ok(super::with_prelude(&body, &format!("{}\n{consts}{fsrc}", src::LINEAR_PARAMS)))
}

fn cpu_kernel(ctx: &GpuContext, fmt: TensorFormat, rows: u32, tokens: u32) -> Result<(Arc<Kernel>, usize)> {
    let (fname, _, unit, consts) = format_shader(fmt)?;
    let name = format!("matvec_cpu[R{rows},T{tokens}]+{fname}");
    Ok((ctx.kernel_with(&name, "main", &consts, || cpu_kernel_source(fmt, rows, tokens))?, unit))
}

/// `matvec_cpu.wgsl` on a chunk of any number of tokens; `norm` fuses the input RMSNorm.
pub fn linear_cpu(rec: &mut Recorder, w: &GpuMatrix, io: &LinearIo, epi: Epilogue, norm: Option<(&wgpu::Buffer, f32)>, (rows, tokens): (u32, u32)) -> Result<()> {
    if io.x_f16 {
        return Err(crate::Error::arg("x_f16", "f16 inputs are read by the cooperative-matrix matmul only"));
    }
    let ctx = rec.ctx();
    if !cpu_capable(ctx) {
        return Err(crate::Error::arg("variant", "matvec_cpu needs subgroups of one fixed size of at least 8"));
    }
    let (k, unit) = cpu_kernel(ctx, w.format, rows, tokens)?;
    let gamma = match norm {
        Some((g, _)) => BufRef::from(g),
        None => io.x.clone(), // bound but unread
    };
    for s in &w.shards {
        let g = grid(ctx, (s.rows as u32).div_ceil(16 * rows));
        let p = Params::for_shard(w, s, unit, io, epi, norm, g[0]);
        let passes = (io.n_tok as u32).div_ceil(tokens).clamp(1, ctx.caps.max_workgroups_per_dim.min(CPU_MAX_PASS_GROUPS));
        rec.dispatch(&k, &p, &[BufRef::from(&s.buf), io.x.clone(), io.y.clone(), gamma.clone()], [g[0], g[1], passes]);
    }
    Ok(())
}

/// Workgroups along the token passes of `matvec_cpu.wgsl` at most (each takes every Z-th pass).
const CPU_MAX_PASS_GROUPS: u32 = 1024;

/// The WGSL of a linear-layer driver (`matvec`, `matvec_sg`, `matmul`; `wide_kernel_source` for `matvec_wide`; `coop_kernel_source` for `matmul_coop`) composed with
/// a weight format: directives, the shared params, the format file, the driver. Public so tests can
/// validate the variants an adapter at hand cannot run.
pub fn kernel_source(driver: &str, fmt: TensorFormat) -> Result<String> {
    let driver_src = match driver {
        "matvec" => src::MATVEC,
        "matvec_sg" => src::MATVEC_SG,
        "matmul" => src::MATMUL,
        other => return Err(crate::Error::arg("driver", format!("unknown linear driver `{other}`"))),
    };
    let (_, fsrc, _, _) = format_shader(fmt)?;
    Ok(super::with_prelude(driver_src, &format!("{}\n{fsrc}", src::LINEAR_PARAMS)))
}

/// The shape of `matmul_coop.wgsl`'s tiles: `wm` x `wn` subgroups of 32 per workgroup, each owning
/// `fm` x `fn_` accumulator fragments of 16 x 16 (tokens x rows); `bk` values of k staged per step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoopTile {
    pub wm: u32,
    pub wn: u32,
    pub fm: u32,
    pub fn_: u32,
    pub bk: u32,
    /// Workgroup staging buffers: 2 (one barrier per step) or 1 (two barriers, half the memory,
    /// which lets larger tiles fit).
    pub stages: u32,
    /// Steps whose global loads are in flight in registers while a step multiplies: 1 or 2 (twice
    /// the staging registers, twice the time for the loads to arrive).
    pub depth: u32,
}

impl CoopTile {
    /// 64 tokens x 128 rows, 8 subgroups: for products with few tiles.
    pub const SMALL: CoopTile = CoopTile { wm: 2, wn: 4, fm: 2, fn_: 2, bk: 32, stages: 2, depth: 1 };
    /// 128 tokens x 128 rows, four subgroups of 64 x 64 (16 accumulators each), one staging
    /// buffer of k = 32: 128 threads and 24 KiB of workgroup memory, small enough for a compute
    /// unit to hold several workgroups, whose products can cover each other's loads. H200 (docs/perf.md, session 16): 177.7 TFLOP/s on 4096 x 14336 x 4096 f16 where
    /// 128 x 256 tiles of eight subgroups (one workgroup a unit) made 154.3, and ahead of them on
    /// every product and format measured.
    pub const LARGE: CoopTile = CoopTile { wm: 2, wn: 2, fm: 4, fn_: 4, bk: 32, stages: 1, depth: 1 };
    /// The op's choices, largest first: `LARGE`, `SMALL`, `TINY`.
    pub const BY_SIZE: [CoopTile; 3] = [CoopTile::LARGE, CoopTile::SMALL, CoopTile::TINY];
    /// 32 tokens x 64 rows, 4 subgroups: small models' products over ESA's 512-token chunks
    /// (SmolLM2's 576 x 576 projection makes 40 `SMALL` tiles for 132 compute units, 144 of these).
    pub const TINY: CoopTile = CoopTile { wm: 2, wn: 2, fm: 1, fn_: 2, bk: 32, stages: 2, depth: 1 };

    pub fn tokens(&self) -> u32 {
        16 * self.wm * self.fm
    }
    pub fn rows(&self) -> u32 {
        16 * self.wn * self.fn_
    }
    pub fn threads(&self) -> u32 {
        32 * self.wm * self.wn
    }
    /// Bytes of workgroup memory: `stages` staging buffers of (rows + tokens) x (bk + 8) halves,
    /// and a 16 x 16 f32 scratch per subgroup.
    pub fn workgroup_bytes(&self) -> u32 {
        self.stages * (self.rows() + self.tokens()) * (self.bk + 8) * 2 + 1024 * self.wm * self.wn
    }

    /// Parses `WMxWNxFMxFNxBK[xSTAGES[xDEPTH]]` (as `Display` writes it; 2 stages and depth 1 when
    /// left out); checks that every thread stages whole octets and the accumulators fit in registers.
    pub fn parse(s: &str) -> Result<CoopTile> {
        let v: Vec<u32> = s.split('x').map(|t| t.trim().parse::<u32>()).collect::<std::result::Result<_, _>>()
            .map_err(|_| crate::Error::arg("coop tile", format!("`{s}`: expected WMxWNxFMxFNxBK[xSTAGES[xDEPTH]], e.g. 2x4x4x2x32")))?;
        let (wm, wn, fm, fn_, bk, stages, depth) = match v[..] {
            [wm, wn, fm, fn_, bk] => (wm, wn, fm, fn_, bk, 2, 1),
            [wm, wn, fm, fn_, bk, s] => (wm, wn, fm, fn_, bk, s, 1),
            [wm, wn, fm, fn_, bk, s, d] => (wm, wn, fm, fn_, bk, s, d),
            _ => return Err(crate::Error::arg("coop tile", format!("`{s}`: expected five to seven numbers WMxWNxFMxFNxBK[xSTAGES[xDEPTH]]"))),
        };
        let t = CoopTile { wm, wn, fm, fn_, bk, stages, depth };
        t.check()?;
        Ok(t)
    }

    fn check(&self) -> Result<()> {
        let bad = |why: &str| Err(crate::Error::arg("coop tile", format!("{self}: {why}")));
        if self.wm == 0 || self.wn == 0 || self.fm == 0 || self.fn_ == 0 || self.bk == 0 || self.bk % 16 != 0 {
            return bad("every size must be positive and BK a multiple of 16");
        }
        if self.stages != 1 && self.stages != 2 {
            return bad("1 or 2 staging buffers");
        }
        if self.depth != 1 && self.depth != 2 {
            return bad("loads 1 or 2 steps ahead");
        }
        if self.threads() > 1024 || self.fm * self.fn_ > 16 {
            return bad("at most 32 subgroups and 16 accumulator fragments per subgroup");
        }
        let opr = self.bk / 8;
        if (self.rows() * opr) % self.threads() != 0 || (self.tokens() * opr) % self.threads() != 0 {
            return bad("the staged octets of a step must divide evenly among the threads");
        }
        Ok(())
    }
}

impl std::fmt::Display for CoopTile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}x{}x{}", self.wm, self.wn, self.fm, self.fn_, self.bk)?;
        if self.stages != 2 || self.depth != 1 {
            write!(f, "x{}", self.stages)?;
        }
        if self.depth != 1 {
            write!(f, "x{}", self.depth)?;
        }
        Ok(())
    }
}

/// `matmul_coop.wgsl` for one tile shape and weight format: the `//@TILE` block gets the tile's
/// constants and the `//@SETS`, `//@ACC`, `//@LOOP`, `//@STORE` lines expand to the register sets,
/// the accumulators, the k loop (one copy of a step per register set) and the epilogue of each
/// fragment (WGSL has no arrays of cooperative matrices, and arrays of registers stay registers
/// only when indexed by constants).
pub fn coop_kernel_source(tile: CoopTile, fmt: TensorFormat, x_f16: bool) -> Result<String> {
    tile.check()?;
    let (fm, fn_, depth) = (tile.fm, tile.fn_, tile.depth);
    let mut acc = String::new();
    let mut mma = String::new();
    let mut store = String::new();
    for j in 0..fn_ {
        mma += &format!("let b{j} = coopLoad<coop_mat16x16<f16, B>>(&ws[ib + {}u * LD], LD);\n", 16 * j);
    }
    for i in 0..fm {
        mma += &format!("let a{i} = coopLoadT<coop_mat16x16<f16, A>>(&xs[ia + {}u * LD], LD);\n", 16 * i);
        for j in 0..fn_ {
            acc += &format!("var c{i}_{j} = coop_mat16x16<f32, C>();\n");
            mma += &format!("c{i}_{j} = coopMultiplyAdd(a{i}, b{j}, c{i}_{j});\n");
            if !store.is_empty() {
                store += "workgroupBarrier();\n";
            }
            store += &format!("coopStoreT(c{i}_{j}, &cs[cbase], 16u);\nworkgroupBarrier();\nepilogue(sg, lane, t0 + {}u, r0 + {}u);\n", 16 * i, 16 * j);
        }
    }
    let load = |set: u32, step: &str| {
        format!(
            "for (var i = 0u; i < WOCT; i++) {{ w{set}[i] = load_w(li + i * THREADS, row_base, kc0 + ({step}) * BK); }}\n\
             for (var i = 0u; i < XOCT; i++) {{ x{set}[i] = load_x(li + i * THREADS, tok_base, kc0 + ({step}) * BK); }}\n"
        )
    };
    let put = |set: u32, buf: &str| {
        format!(
            "for (var i = 0u; i < WOCT; i++) {{ put_w({buf} * WBUF + slot(li + i * THREADS), w{set}[i]); }}\n\
             for (var i = 0u; i < XOCT; i++) {{ put_x({buf} * XBUF + slot(li + i * THREADS), x{set}[i]); }}\n"
        )
    };
    let mut sets = String::new();
    for j in 0..depth {
        sets += &format!("var w{j}: array<WRaw, WOCT>;\nvar x{j}: array<vec4<u32>, XOCT>;\n");
        if j > 0 {
            sets += &format!("if ({j}u < nk) {{\n{}}}\n", load(j, &format!("{j}u")));
        }
    }
    let mut body = String::new();
    for j in 0..depth {
        let next = (j + 1) % depth;
        body += &format!(
            "{{\nlet k = kt + {j}u;\n\
             if (STAGES == 1u && k > 0u) {{\nworkgroupBarrier();\n{put0}workgroupBarrier();\n}}\n\
             if (k + DEPTH < nk) {{\n{ld}}}\n\
             let cur = select(0u, k % 2u, STAGES == 2u);\n\
             for (var kk = 0u; kk < BK; kk += 16u) {{\n\
             // A = activations [token][k] (row-major), fragment i at tokens 16 (FM sm + i);\n\
             // B(k, row) = W[row][k] (column-major), fragment j at rows 16 (FN sn + j).\n\
             let ia = cur * XBUF + (sm * FM * 16u) * LD + kk / 4u;\nlet ib = cur * WBUF + (sn * FN * 16u) * LD + kk / 4u;\n{mma}}}\n\
             if (STAGES == 2u) {{\nif (k + 1u < nk) {{\n{putn}}}\nworkgroupBarrier();\n}}\n}}\n",
            put0 = put(j, "0u"),
            ld = load(j, "k + DEPTH"),
            putn = put(next, "(1u - cur)"),
        );
    }
    let lp = format!("for (var kt = 0u; kt < nk; kt += DEPTH) {{\n{body}}}\n");
    let consts = format!(
        "const WM: u32 = {}u;\nconst WN: u32 = {}u;\nconst FM: u32 = {fm}u;\nconst FN: u32 = {fn_}u;\nconst BK: u32 = {}u;\nconst STAGES: u32 = {}u;\nconst DEPTH: u32 = {depth}u;\n",
        tile.wm, tile.wn, tile.bk, tile.stages
    );
    let mut out = String::new();
    let mut skip = false; // inside a block that is replaced or not taken
    for line in src::MATMUL_COOP.lines() {
        match line.trim() {
            "//@TILE" => {
                skip = true;
                out += &consts;
            }
            "//@X32" => skip = x_f16,
            "//@X16" => skip = !x_f16,
            "//@END" => skip = false,
            _ if skip => {}
            "//@SETS" => out += &sets,
            "//@ACC" => out += &acc,
            "//@LOOP" => out += &lp,
            "//@STORE" => out += &store,
            _ => {
                out += line;
                out.push('\n');
            }
        }
    }
    let (_, fsrc, _, _) = format_shader(fmt)?;
    // Formats without their own packed-halves load get the generic one: decode, then pack.
    let load8h = if fsrc.contains("fn fmt_load8h(") {
        ""
    } else {
        "\nfn fmt_load8h(row: u32, col: u32) -> vec4<u32> {\n    return pack_oct(fmt_load8(row, col));\n}\n"
    };
    // The weights' staging: the format's own raw words where it has a staging file, else the
    // packed halves of fmt_load8h.
    let stage = coop_staging_source(fmt).unwrap_or_else(|| {
        "\nalias WRaw = vec4<u32>;\n\
         fn fmt_raw8(row: u32, col: u32, ok: bool) -> WRaw {\n    return select(vec4<u32>(0u), fmt_load8h(row, col), ok);\n}\n\
         fn fmt_stage8(r: WRaw) -> array<vec4<f16>, 2> {\n    return array<vec4<f16>, 2>(halves4(r, 0u), halves4(r, 1u));\n}\n"
            .to_string()
    });
    Ok(super::with_prelude(&out, &format!("{}\n{}\n{fsrc}{load8h}\n{stage}", src::LINEAR_PARAMS, src::UNPACK_F16X8)))
}

/// `matmul_coop.wgsl`'s weight staging for formats that keep their loaded words raw until they
/// are written to workgroup memory (`wfmt_coop_*.wgsl`: `WRaw`, `fmt_raw8`, `fmt_stage8`).
/// `ESA_WGPU_COOP_RAW=0` decodes every format at load time instead (for comparisons).
fn coop_staging_source(fmt: TensorFormat) -> Option<String> {
    if std::env::var("ESA_WGPU_COOP_RAW").is_ok_and(|v| v == "0") {
        return None;
    }
    let parts: &[&str] = match fmt {
        TensorFormat::Q4_0 => &[src::WFMT_COOP_Q4_RAW, src::WFMT_COOP_Q4_0],
        TensorFormat::Q4_1 => &[src::WFMT_COOP_Q4_RAW, src::WFMT_COOP_Q4_1],
        TensorFormat::Q8_0 => &[src::WFMT_COOP_Q8_0],
        TensorFormat::Q4_K => &[src::WFMT_COOP_KSCALE, src::WFMT_COOP_Q4_K],
        TensorFormat::Q5_K => &[src::WFMT_COOP_KSCALE, src::WFMT_COOP_Q5_K],
        TensorFormat::Q6_K => &[src::WFMT_COOP_Q6_K],
        _ => return None,
    };
    Some(parts.join("\n"))
}

fn coop_kernel(ctx: &GpuContext, tile: CoopTile, fmt: TensorFormat, x_f16: bool) -> Result<(Arc<Kernel>, usize)> {
    let (fname, _, unit, consts) = format_shader(fmt)?;
    let name = format!("matmul_coop[{tile}{}]+{fname}", if x_f16 { ",x16" } else { "" });
    Ok((ctx.kernel_with(&name, "main", &consts, || coop_kernel_source(tile, fmt, x_f16))?, unit))
}

fn kernel(ctx: &GpuContext, driver: &str, fmt: TensorFormat) -> Result<(Arc<Kernel>, usize)> {
    let (fname, _, unit, mut consts) = format_shader(fmt)?;
    if driver == "matvec_sg" {
        consts.push(("SG", fixed_subgroup(ctx).unwrap_or(32) as f64));
    }
    if driver == "matvec" {
        let rows = matvec_rows(ctx);
        consts.push(("ROWS", rows as f64));
        consts.push(("LANES", (256 / rows) as f64));
    }
    let name = format!("{driver}+{fname}");
    Ok((ctx.kernel_with(&name, "main", &consts, || kernel_source(driver, fmt))?, unit))
}

/// Layout of the activations: `n_tok` rows of `x_stride` floats in `x`; outputs at
/// `y[t * y_stride + y_row0 + r]` (SwiGLU: `(y_row0 + r) / 2`, y_row0 counting weight rows).
#[derive(Clone)]
pub struct LinearIo {
    pub x: BufRef,
    /// Offset of token 0 in `x`, in its elements (floats, or halves with `x_f16`).
    pub x_off: usize,
    pub x_stride: usize,
    /// `x` holds f16 rows written by `pack_f16` (offset and stride multiples of 8 halves, zero
    /// padding past the width); only the cooperative-matrix matmul reads them.
    pub x_f16: bool,
    pub y: BufRef,
    pub y_stride: usize,
    pub y_row0: usize,
    pub n_tok: usize,
}

/// How a few tokens are multiplied (decode): the variants differ in how they spread a row over
/// threads, not in what they compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatvecVariant {
    /// `matvec.wgsl`: rows reduced in workgroup memory; every adapter.
    Portable,
    /// `matvec_sg.wgsl`: one row per subgroup, no barriers; CPU adapters (lavapipe).
    Subgroup,
    /// `matvec_wide.wgsl`: several rows per group of threads with vec4 input loads, the input
    /// normalised once per workgroup; GPUs with fixed-size subgroups. Needs cols % 8 == 0 and a
    /// vec4-aligned input (others take `Subgroup`).
    Wide,
    /// `matvec_blocks.wgsl`: whole 32-value blocks per thread, loaded an iteration ahead, the
    /// input quantised to bytes in workgroup memory, integer dot products; one token of Q4_0, Q4_1 or Q8_0 weights on GPUs
    /// with fixed-size subgroups (`blocks_supported`; other products take `Wide`).
    Blocks,
}

/// The matvec variant the adapter runs best.
pub fn matvec_variant(ctx: &GpuContext) -> MatvecVariant {
    match fixed_subgroup(ctx) {
        None => MatvecVariant::Portable,
        Some(_) if ctx.caps.cpu_kernels => MatvecVariant::Subgroup,
        Some(_) => MatvecVariant::Wide,
    }
}

/// Every matvec variant this adapter can run (tests compare them all with the reference).
pub fn matvec_variants(ctx: &GpuContext) -> Vec<MatvecVariant> {
    match fixed_subgroup(ctx) {
        None => vec![MatvecVariant::Portable],
        Some(_) => vec![MatvecVariant::Portable, MatvecVariant::Subgroup, MatvecVariant::Wide, MatvecVariant::Blocks],
    }
}

/// Widest input `matvec_blocks` stages (two levels of bytes, and an f32 step and sum per 32
/// values: 2.25 bytes a value, 36 KiB at 16 384), lowered to what the adapter's workgroup memory
/// holds beside the 1.25 KiB of partial sums.
fn blocks_max_cols(ctx: &GpuContext) -> usize {
    let fits = (ctx.caps.max_workgroup_storage as usize).saturating_sub(1280) * 4 / 9;
    fits.min(16384) / 256 * 256
}

/// Whether `matvec_blocks` takes this product: one token of a 32-value block format it has a block
/// decode for, whole blocks per row, an input it can read as vec4 and stage.
pub fn blocks_supported(ctx: &GpuContext, fmt: TensorFormat, cols: usize, n_tok: usize, x_off: usize) -> bool {
    matches!(fmt, TensorFormat::Q4_0 | TensorFormat::Q4_1 | TensorFormat::Q8_0)
        && n_tok == 1
        && cols % 32 == 0
        && x_off % 4 == 0
        && cols <= blocks_max_cols(ctx)
        && fixed_subgroup(ctx).is_some()
}

/// `matvec_blocks`' shape: threads per row group, rows per thread, blocks per row and iteration,
/// the most workgroups dispatched (each then takes every n-th row tile) and the most splits of the
/// columns (`ksplit`; taken only by accumulate-mode products without the norm, lowered so every
/// split has columns; 1 = none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlocksShape {
    pub tpr: u32,
    pub nr: u32,
    pub u: u32,
    pub wgs: u32,
    pub ksplit: u32,
}

impl BlocksShape {
    /// `TPRxNRxU`, `TPRxNRxUxWGS` or `TPRxNRxUxWGSxKSPLIT`, e.g. `64x4x2x128` (the bench's
    /// `--blocks-shapes`).
    pub fn parse(s: &str) -> Result<BlocksShape> {
        let bad = || crate::Error::arg("matvec_blocks shape", format!("`{s}`: expected TPRxNRxU[xWORKGROUPS[xKSPLIT]], e.g. 64x4x2x128"));
        let v: Vec<u32> = s.split('x').map(|p| p.parse().map_err(|_| bad())).collect::<Result<_>>()?;
        match v[..] {
            [tpr, nr, u] => Ok(BlocksShape { tpr, nr, u, wgs: BLOCKS_WORKGROUPS, ksplit: 1 }),
            [tpr, nr, u, wgs] => Ok(BlocksShape { tpr, nr, u, wgs, ksplit: 1 }),
            [tpr, nr, u, wgs, ksplit] => Ok(BlocksShape { tpr, nr, u, wgs, ksplit }),
            _ => Err(bad()),
        }
    }

    /// Whether the kernel can run this shape with subgroups of `sg` (SwiGLU needs row pairs).
    fn check(&self, sg: u32, swiglu: bool) -> Result<()> {
        let BlocksShape { tpr, nr, u, wgs, ksplit } = *self;
        if !tpr.is_power_of_two() || tpr < sg || tpr > 256 || !matches!(nr, 1 | 2 | 4) || (swiglu && nr == 1) || !(1..=4).contains(&u) || wgs == 0 || ksplit == 0 {
            return Err(crate::Error::arg("matvec_blocks shape", format!("{self}: threads per row group a power of two in {sg}..=256, rows per thread 1, 2 or 4 (2 or 4 for SwiGLU), 1..=4 blocks per iteration, at least one workgroup and one split")));
        }
        Ok(())
    }

    /// The most workgroups dispatched with `ks` splits: `wgs` rounded down to a multiple of `ks`
    /// (at least `ks`), so every workgroup keeps one split.
    fn workgroups(&self, ks: u32) -> u32 {
        (self.wgs / ks).max(1) * ks
    }

    /// The splits a product of `cols` columns takes: `ksplit` for accumulate-mode products without
    /// the norm (their sums are added into y, so split sums can be), lowered until every split has
    /// blocks; 1 otherwise.
    fn splits(&self, cols: usize, epi: Epilogue, norm: bool) -> u32 {
        if epi != Epilogue::Accumulate || norm {
            return 1;
        }
        let nb = (cols / 32) as u32;
        let mut s = self.ksplit.clamp(1, self.wgs.max(1)).min(nb.max(1));
        while s > 1 && (s - 1) * nb.div_ceil(s) >= nb {
            s -= 1;
        }
        s
    }
}

impl std::fmt::Display for BlocksShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}x{}", self.tpr, self.nr, self.u, self.wgs)?;
        if self.ksplit != 1 {
            write!(f, "x{}", self.ksplit)?;
        }
        Ok(())
    }
}

/// Workgroups `matvec_blocks` dispatches at most: persistent ones, a few per compute unit of a
/// large GPU (wgpu does not report the count). H200, session 12, 28672 x 4096 Q4_0: 128 41.9 us,
/// 256 33.3, 512 29.9, 1024 31.9.
pub const BLOCKS_WORKGROUPS: u32 = 512;

/// `matvec_blocks`' default shape: one subgroup per row group (at least 16 threads), one block of
/// each of NR rows per iteration (H200 sweep, docs/perf.md: 32x4x1 beat 64 threads and two blocks
/// per iteration on 4096 x 14336 Q4_0, 26.5 against 33.8 us, and 2 rows per thread, 36.3 us); NR
/// (4, else 2, else 1) is lowered only while the product would have fewer than 128 row tiles
/// (small models, whose products are too small to keep a large GPU's units busy otherwise).
/// Products of at least `KSPLIT_MIN_COLS` columns split them in two (taken by the accumulate-mode
/// ones: O and down): each row tile's long dependent chain of blocks is halved, and twice the
/// workgroups share the staging (H200, session 13: 8B Q4_0 decode 407.3 -> 430.7 tok/s, 4096 x
/// 14336 Q4_0 cold 29.5 -> 22.8 us; SmolLM2's 576- and 1536-column products lost, 1 133 -> 1 068).
/// `ESA_WGPU_BLOCKS=TPRxNRxU[xWGS[xKSPLIT]]` overrides it (for tuning on a device; NR still at
/// least 2 for SwiGLU).
pub fn blocks_shape(sg: u32, rows: usize, cols: usize, swiglu: bool) -> BlocksShape {
    static KNOB: std::sync::OnceLock<Option<BlocksShape>> = std::sync::OnceLock::new();
    let knob = *KNOB.get_or_init(|| std::env::var("ESA_WGPU_BLOCKS").ok().and_then(|s| BlocksShape::parse(&s).ok()));
    if let Some(k) = knob.filter(|k| k.check(sg, false).is_ok()) {
        return BlocksShape { nr: if swiglu { k.nr.max(2) } else { k.nr }, ..k };
    }
    let tpr = sg.max(16);
    let groups = 256 / tpr;
    let mut nr = 4;
    while nr > if swiglu { 2 } else { 1 } && (rows as u32).div_ceil(groups * nr) < 128 {
        nr /= 2;
    }
    let ksplit = if cols >= KSPLIT_MIN_COLS { 2 } else { 1 };
    BlocksShape { tpr, nr, u: 1, wgs: BLOCKS_WORKGROUPS, ksplit }
}

/// Columns from which `blocks_shape` splits accumulate-mode products in two (see there).
pub const KSPLIT_MIN_COLS: usize = 4096;

/// `matvec_wide`'s shape: `t` threads per row group (a power of two, at least one subgroup and at
/// least 16 so the reduction's 16 (token, row) slots per group fit in 256 threads, at most 256),
/// `nr` rows per group (1, 2 or 4; SwiGLU needs pairs), `u` runs of each row per main-loop
/// iteration (1..=4), `v` consecutive octets per run (1, 2 or 4; cols must be a multiple of 8v):
/// `nr * u * v` octet loads in flight per thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WideShape {
    pub t: u32,
    pub nr: u32,
    pub u: u32,
    pub v: u32,
}

impl WideShape {
    /// Parses `TxNRxU[xV]` (as `Display` writes it; V = 1 when left out).
    pub fn parse(s: &str) -> Result<WideShape> {
        let v: Vec<u32> = s.split('x').map(|t| t.trim().parse::<u32>()).collect::<std::result::Result<_, _>>()
            .map_err(|_| crate::Error::arg("matvec_wide shape", format!("`{s}`: expected TxNRxU[xV], e.g. 128x4x2")))?;
        match v[..] {
            [t, nr, u] => Ok(WideShape { t, nr, u, v: 1 }),
            [t, nr, u, v] => Ok(WideShape { t, nr, u, v }),
            _ => Err(crate::Error::arg("matvec_wide shape", format!("`{s}`: expected three or four numbers TxNRxU[xV]"))),
        }
    }

    fn check(&self, sg: u32, swiglu: bool, cols: usize) -> Result<()> {
        let WideShape { t, nr, u, v } = *self;
        if !t.is_power_of_two() || t < sg.max(16) || t > 256 || !matches!(nr, 1 | 2 | 4) || (swiglu && nr == 1) || !(1..=4).contains(&u) || !matches!(v, 1 | 2 | 4) {
            return Err(crate::Error::arg("matvec_wide shape", format!("{self}: threads per group a power of two in {}..=256, rows per group 1, 2 or 4 (2 or 4 for SwiGLU), 1..=4 runs per iteration, 1, 2 or 4 octets per run", sg.max(16))));
        }
        if cols % (8 * v as usize) != 0 {
            return Err(crate::Error::arg("matvec_wide shape", format!("{self}: {cols} columns are not a whole number of runs of {v} octets")));
        }
        Ok(())
    }
}

impl std::fmt::Display for WideShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}", self.t, self.nr, self.u)?;
        if self.v != 1 {
            write!(f, "x{}", self.v)?;
        }
        Ok(())
    }
}

/// Rows from which f16 products take two rows per lane group in `matvec_wide` (`wide_shape`).
const WIDE_F16_TALL: usize = 16384;

/// The op's `matvec_wide` shape for a product: T gives each thread about four octets of a row, at
/// most 128 threads (H200 sweep in docs/perf.md: 128x4x2 streams 4096 x 14336 f16 at 3.0 TB/s, 256
/// threads at 2.6); NR (4, else 2, else 1) is lowered while the product would have fewer than 256
/// workgroups, so small models still spread over a large GPU. (U, V): one run of two consecutive
/// octets for Q4_0, Q4_1 and Q6_K, two runs of one octet for the other formats (the best of each
/// format in the same H200 sweep; whole 32-value blocks per thread, 1 x 4, were slower for all).
/// F16 products of at least `WIDE_F16_TALL` rows start at NR = 2 (H200, session 11: 28672 x 4096
/// at 3.72 against 3.58 TB/s with 4; the 4096- and 6144-row products were best at 4).
pub fn wide_shape(sg: u32, rows: usize, cols: usize, swiglu: bool, fmt: TensorFormat) -> WideShape {
    let octets = (cols / 8).max(1) as u32;
    let t = (octets / 4).next_power_of_two().clamp(sg.max(16), 128);
    let groups = 256 / t;
    let mut nr = if fmt == TensorFormat::F16 && rows >= WIDE_F16_TALL { 2 } else { 4 };
    while nr > if swiglu { 2 } else { 1 } && (rows as u32).div_ceil(groups * nr) < 256 {
        nr /= 2;
    }
    if matches!(fmt, TensorFormat::Q4_0 | TensorFormat::Q4_1 | TensorFormat::Q6_K) && cols % 16 == 0 {
        WideShape { t, nr, u: 1, v: 2 }
    } else {
        WideShape { t, nr, u: 2, v: 1 }
    }
}

/// y = W x for up to MATVEC_MAX_TOKENS tokens. `norm`: (gamma, eps) to RMS-normalise x first.
/// On CPU adapters (`cpu_variant`) any token count goes to `matvec_cpu.wgsl` (`linear_cpu`).
pub fn matvec(rec: &mut Recorder, w: &GpuMatrix, io: &LinearIo, epi: Epilogue, norm: Option<(&wgpu::Buffer, f32)>) -> Result<()> {
    if cpu_variant(rec.ctx()) {
        let shape = if io.n_tok == 1 { (CPU_ROWS, 1) } else { CPU_PREFILL };
        return linear_cpu(rec, w, io, epi, norm, shape);
    }
    // Q8_0 too since its integer products (H200, session 12: 4096 x 4096 13.6 us against 14.2
    // in `Wide`, 28672 x 4096 55.5 against 57.9)
    let v = match matvec_variant(rec.ctx()) {
        MatvecVariant::Wide if blocks_supported(rec.ctx(), w.format, w.cols, io.n_tok, io.x_off) => MatvecVariant::Blocks,
        v => v,
    };
    matvec_with(rec, w, io, epi, norm, v)
}

/// `matvec` with the variant forced (tests and benches; one of `matvec_variants`). `Blocks` falls
/// back to `Wide` for products it does not take (`blocks_supported`), and `Wide` to `Subgroup` for
/// inputs it cannot read as vec4.
pub fn matvec_with(rec: &mut Recorder, w: &GpuMatrix, io: &LinearIo, epi: Epilogue, norm: Option<(&wgpu::Buffer, f32)>, variant: MatvecVariant) -> Result<()> {
    matvec_dispatch(rec, w, io, epi, norm, variant, None, None)
}

/// `matvec_wide` with its shape forced (tests cover every shape; the bench sweeps them).
pub fn matvec_wide(rec: &mut Recorder, w: &GpuMatrix, io: &LinearIo, epi: Epilogue, norm: Option<(&wgpu::Buffer, f32)>, shape: WideShape) -> Result<()> {
    shape.check(fixed_subgroup(rec.ctx()).unwrap_or(32), epi == Epilogue::SwiGlu, w.cols)?;
    matvec_dispatch(rec, w, io, epi, norm, MatvecVariant::Wide, Some(shape), None)
}

/// `matvec_blocks` with its shape (TPR, NR, U) forced (the bench sweeps them); products it does not
/// take are refused.
pub fn matvec_blocks(rec: &mut Recorder, w: &GpuMatrix, io: &LinearIo, epi: Epilogue, norm: Option<(&wgpu::Buffer, f32)>, shape: BlocksShape) -> Result<()> {
    if !blocks_supported(rec.ctx(), w.format, w.cols, io.n_tok, io.x_off) {
        return Err(crate::Error::arg("matvec_blocks", format!("{:?} x {} columns, {} tokens: not a product matvec_blocks takes", w.format, w.cols, io.n_tok)));
    }
    shape.check(fixed_subgroup(rec.ctx()).unwrap_or(32), epi == Epilogue::SwiGlu)?;
    matvec_dispatch(rec, w, io, epi, norm, MatvecVariant::Blocks, None, Some(shape))
}

/// `variant` with its shape forced where `shape` (`Wide`) or `bshape` (`Blocks`) is given, else the
/// op's shape for the product.
#[allow(clippy::too_many_arguments)]
fn matvec_dispatch(rec: &mut Recorder, w: &GpuMatrix, io: &LinearIo, epi: Epilogue, norm: Option<(&wgpu::Buffer, f32)>, variant: MatvecVariant, shape: Option<WideShape>, bshape: Option<BlocksShape>) -> Result<()> {
    if io.x_f16 {
        return Err(crate::Error::arg("x_f16", "f16 inputs are read by the cooperative-matrix matmul only"));
    }
    if io.n_tok > MATVEC_MAX_TOKENS {
        return Err(crate::Error::arg("n_tok", format!("matvec takes at most {MATVEC_MAX_TOKENS} tokens, got {}", io.n_tok)));
    }
    let ctx = rec.ctx();
    let sg = fixed_subgroup(ctx);
    if variant != MatvecVariant::Portable && sg.is_none() {
        return Err(crate::Error::arg("matvec variant", format!("{variant:?} needs subgroups of one fixed size, which this adapter lacks")));
    }
    let vec4_ok = w.cols % 8 == 0 && io.x_off % 4 == 0 && (io.x_stride % 4 == 0 || io.n_tok == 1);
    let variant = if variant == MatvecVariant::Blocks && !blocks_supported(ctx, w.format, w.cols, io.n_tok, io.x_off) { MatvecVariant::Wide } else { variant };
    let variant = if variant == MatvecVariant::Wide && !vec4_ok { MatvecVariant::Subgroup } else { variant };
    let swiglu = epi == Epilogue::SwiGlu;
    let gamma = match norm {
        Some((g, _)) => BufRef::from(g),
        None => io.x.clone(), // bound but unread
    };
    for s in &w.shards {
        let ((k, unit), groups) = match variant {
            MatvecVariant::Portable => (kernel(ctx, "matvec", w.format)?, (s.rows as u32).div_ceil(matvec_rows(ctx))),
            // one output row per subgroup; SwiGLU outputs are row pairs
            MatvecVariant::Subgroup => {
                let sg = sg.unwrap_or(32);
                (kernel(ctx, "matvec_sg", w.format)?, ((if swiglu { s.rows / 2 } else { s.rows }) as u32).div_ceil(64 / sg))
            }
            MatvecVariant::Wide => {
                let sh = shape.unwrap_or_else(|| wide_shape(sg.unwrap_or(32), s.rows, w.cols, swiglu, w.format));
                (wide_kernel(ctx, w.format, sh, io.n_tok)?, (s.rows as u32).div_ceil(256 / sh.t * sh.nr))
            }
            MatvecVariant::Blocks => {
                let sh = bshape.unwrap_or_else(|| blocks_shape(sg.unwrap_or(32), s.rows, w.cols, swiglu));
                let ks = sh.splits(w.cols, epi, norm.is_some());
                (blocks_kernel(ctx, w.format, sh, w.cols, ks)?, ((s.rows as u32).div_ceil(256 / sh.tpr * sh.nr) * ks).min(sh.workgroups(ks)))
            }
        };
        let g = grid(ctx, groups);
        let p = Params::for_shard(w, s, unit, io, epi, norm, g[0]);
        rec.dispatch(&k, &p, &[BufRef::from(&s.buf), io.x.clone(), io.y.clone(), gamma.clone()], g);
    }
    Ok(())
}

/// `matvec_wide.wgsl` for `nr` rows per group, `u` octets per iteration and `n_tok` tokens: the
/// `//@CONSTS` block gets them and the `//@ACC`, `//@MAIN`, `//@TAIL`, `//@REDUCE` lines expand to
/// one register and one line per (token, row) (and per unrolled octet), so nothing lives in an
/// indexed array.
pub fn wide_kernel_source(fmt: TensorFormat, nr: usize, u: usize, v: usize, n_tok: usize) -> Result<String> {
    if !(1..=4).contains(&nr) || !(1..=4).contains(&u) || !matches!(v, 1 | 2 | 4) || !(1..=MATVEC_MAX_TOKENS).contains(&n_tok) {
        return Err(crate::Error::arg("matvec_wide", format!("{nr} rows, {u} runs of {v} octets and {n_tok} tokens per pipeline: rows, runs and tokens 1..=4, octets 1, 2 or 4")));
    }
    let mut acc = String::new();
    for t in 0..n_tok {
        acc += &format!("let xb{t} = (p.x_off + {t}u * p.x_stride) / 4u;\n");
        for r in 0..nr {
            acc += &format!("var a{t}_{r} = 0.0;\n");
        }
    }
    // one step of `u` runs starting at run `oc`: per octet, weight loads first, then inputs, then
    // the products
    let step = |u: usize| {
        let mut b = String::new();
        for k in 0..u {
            for j in 0..v {
                let o = format!("o{k}_{j}");
                b += &format!("let {o} = (oc + {k}u * T) * V + {j}u;\n");
                for r in 0..nr {
                    b += &format!("let w{k}_{j}_{r} = fmt_load8(min(first + {r}u, last_row), 8u * {o});\n");
                }
                b += &format!("var g{k}_{j}l = vec4<f32>(1.0);\nvar g{k}_{j}h = vec4<f32>(1.0);\nif (use_gamma) {{ g{k}_{j}l = gamma[2u * {o}]; g{k}_{j}h = gamma[2u * {o} + 1u]; }}\n");
                for t in 0..n_tok {
                    b += &format!("let x{k}_{j}_{t}l = x[xb{t} + 2u * {o}] * g{k}_{j}l * scale[{t}];\nlet x{k}_{j}_{t}h = x[xb{t} + 2u * {o} + 1u] * g{k}_{j}h * scale[{t}];\n");
                }
                for t in 0..n_tok {
                    for r in 0..nr {
                        b += &format!("a{t}_{r} += dot(w{k}_{j}_{r}.lo, x{k}_{j}_{t}l) + dot(w{k}_{j}_{r}.hi, x{k}_{j}_{t}h);\n");
                    }
                }
            }
        }
        b
    };
    let mut reduce = String::new();
    for t in 0..n_tok {
        for r in 0..nr {
            reduce += &format!("{{ let s = subgroupAdd(a{t}_{r}); if (li % SG == 0u) {{ red[(sub * NTOK + {t}u) * 4u + {r}u] = s; }} }}\n");
        }
    }
    let consts = format!("const NR: u32 = {nr}u;\nconst NTOK: u32 = {n_tok}u;\nconst U: u32 = {u}u;\nconst V: u32 = {v}u;\n");
    let out = super::expand_markers(src::MATVEC_WIDE, Some(("//@CONSTS", &consts)), &[("//@ACC", &acc), ("//@MAIN", &step(u)), ("//@TAIL", &step(1)), ("//@REDUCE", &reduce)]);
    let (_, fsrc, _, _) = format_shader(fmt)?;
    Ok(super::with_prelude(&out, &format!("{}\n{fsrc}", src::LINEAR_PARAMS)))
}

/// `matvec_blocks.wgsl` for `nr` rows per thread, `u` blocks per row and iteration and inputs up to
/// `max_cols` wide: the `//@CONSTS` block gets them and the `//@` lines expand to one register (a
/// block's words) and one line per (block, row), so nothing lives in an indexed array.
pub fn blocks_kernel_source(fmt: TensorFormat, nr: usize, u: usize, max_cols: usize, ksplit: usize) -> Result<String> {
    if !matches!(nr, 1 | 2 | 4) || !(1..=4).contains(&u) || max_cols == 0 || max_cols % 256 != 0 || ksplit == 0 {
        return Err(crate::Error::arg("matvec_blocks", format!("{nr} rows and {u} blocks per thread, {max_cols} columns, {ksplit} splits: rows 1, 2 or 4, blocks 1..=4, columns a positive multiple of 256, at least one split")));
    }
    let (mut load0, mut next, mut dots, mut rotate, mut acc, mut reduce) = (String::new(), String::new(), String::new(), String::new(), String::new(), String::new());
    next += "let nb0 = ti + TPR * U * nit;\n";
    let mut reset = String::new();
    for r in 0..nr {
        acc += &format!("var a{r} = 0.0;\n");
        reset += &format!("a{r} = 0.0;\n");
        reduce += &format!("{{ let s = subgroupAdd(a{r}); if (li % SG == 0u) {{ red[sub * NR + {r}u] = s; }} }}\n");
    }
    for k in 0..u {
        for r in 0..nr {
            load0 += &format!("var c{k}_{r} = fmt_bload(min(first + {r}u, last_row), min(kb0 + ti + {k}u * TPR, last_blk));\n");
            next += &format!("let n{k}_{r} = fmt_bload(min(nfirst + {r}u, last_row), min(kb0 + nb0 + {k}u * TPR, last_blk));\n");
            rotate += &format!("c{k}_{r} = n{k}_{r};\n");
        }
        dots += &format!("{{\nlet b = ti + TPR * (U * it + {k}u);\nif (b < nb) {{\nlet xv = xqblock(b);\nlet xm = xmeta[b];\nlet xq = i32(xm.y);\nlet st = xm.x;\n");
        for r in 0..nr {
            dots += &format!("a{r} = fma(st, fmt_bidot(c{k}_{r}, xv, xq), a{r});\n");
        }
        dots += "}\n}\n";
    }
    // y as f32, or with splits as atomic words that each split adds to by compare-and-swap
    let y = if ksplit == 1 {
        "@group(0) @binding(3) var<storage, read_write> y: array<f32>;\nfn y_add(o: u32, v: f32) { y[o] = y[o] + v; }\nfn y_store(o: u32, v: f32) { y[o] = v; }\n".to_string()
    } else {
        "@group(0) @binding(3) var<storage, read_write> y: array<atomic<u32>>;\n\
         fn y_add(o: u32, v: f32) {\n    var old = atomicLoad(&y[o]);\n    loop {\n        let r = atomicCompareExchangeWeak(&y[o], old, bitcast<u32>(bitcast<f32>(old) + v));\n        if (r.exchanged) { break; }\n        old = r.old_value;\n    }\n}\n\
         fn y_store(o: u32, v: f32) { atomicStore(&y[o], bitcast<u32>(v)); }\n".to_string()
    };
    let consts = format!("const NR: u32 = {nr}u;\nconst U: u32 = {u}u;\nconst MAX_COLS: u32 = {max_cols}u;\nconst KSPLIT: u32 = {ksplit}u;\n{y}");
    let markers = [("//@LOAD0", &load0), ("//@LOADNEXT", &next), ("//@DOTS", &dots), ("//@ROTATE", &rotate), ("//@ACC", &acc), ("//@REDUCE", &reduce), ("//@RESET", &reset)];
    let out = super::expand_markers(src::MATVEC_BLOCKS, Some(("//@CONSTS", &consts)), &markers.map(|(k, v)| (k, v.as_str())));
    let (_, fsrc, _, _) = format_shader(fmt)?;
    Ok(super::with_prelude(&out, &format!("{}\n{fsrc}", src::LINEAR_PARAMS)))
}

/// The kernel for inputs of `cols` values: its workgroup memory and staging registers sized for
/// `cols` rounded up to 2048 (one chunk of 8 values per thread), so narrow products keep more
/// workgroups per compute unit and stage in fewer registers.
fn blocks_kernel(ctx: &GpuContext, fmt: TensorFormat, sh: BlocksShape, cols: usize, ksplit: u32) -> Result<(Arc<Kernel>, usize)> {
    let (fname, _, unit, mut consts) = format_shader(fmt)?;
    consts.extend([("SG", fixed_subgroup(ctx).unwrap_or(32) as f64), ("TPR", sh.tpr as f64), ("N_WG", sh.workgroups(ksplit) as f64)]);
    let split_cols = (cols / 32).div_ceil(ksplit as usize) * 32;
    let max_cols = split_cols.div_ceil(2048).max(1).saturating_mul(2048).min(blocks_max_cols(ctx));
    let name = format!("matvec_blocks[{}x{}x{max_cols}x{ksplit}]+{fname}", sh.nr, sh.u);
    Ok((ctx.kernel_with(&name, "main", &consts, || blocks_kernel_source(fmt, sh.nr as usize, sh.u as usize, max_cols, ksplit as usize))?, unit))
}

fn wide_kernel(ctx: &GpuContext, fmt: TensorFormat, sh: WideShape, n_tok: usize) -> Result<(Arc<Kernel>, usize)> {
    let (fname, _, unit, mut consts) = format_shader(fmt)?;
    consts.extend([("SG", fixed_subgroup(ctx).unwrap_or(32) as f64), ("T", sh.t as f64)]);
    let name = format!("matvec_wide[{}x{}x{}x{n_tok}]+{fname}", sh.nr, sh.u, sh.v);
    Ok((ctx.kernel_with(&name, "main", &consts, || wide_kernel_source(fmt, sh.nr as usize, sh.u as usize, sh.v as usize, n_tok))?, unit))
}

/// How a chunk of tokens is multiplied: on cooperative matrices (tensor cores) or with the portable
/// FMA tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatmulVariant {
    /// `matmul_coop.wgsl`: 16x16x16 f16 products with f32 accumulation, tiles from `coop_tile`.
    Coop,
    /// `matmul.wgsl`: 64 x 64 tiles of f32 FMAs, every adapter.
    Tiled,
    /// `matvec_cpu.wgsl` with `CPU_PREFILL` rows per lane and tokens per pass: CPU adapters.
    Cpu,
}

/// A larger cooperative-matrix tile is taken while the product still has this many of them
/// (about one per compute unit of a large GPU: fewer leave units idle).
const COOP_MIN_TILES: usize = 128;

/// The matmul variant the adapter runs best: cooperative matrices where the adapter offers 16x16x16
/// f16 -> f32 products and subgroups of exactly 32 (the tile layout has 8 subgroups of 32).
pub fn matmul_variant(ctx: &GpuContext) -> MatmulVariant {
    if (ctx.caps.coop_f16_16 && ctx.caps.shader_f16 && fixed_subgroup(ctx) == Some(32)) || ctx.caps.coop_emulated {
        MatmulVariant::Coop
    } else if cpu_variant(ctx) {
        MatmulVariant::Cpu
    } else {
        MatmulVariant::Tiled
    }
}

/// Y = X W^T for a chunk of tokens (tiled). Input must already be normalised.
/// F32 weights (ESA's compression maps, small) keep full precision on the FMA tiles.
pub fn matmul(rec: &mut Recorder, w: &GpuMatrix, io: &LinearIo, epi: Epilogue) -> Result<()> {
    let v = match matmul_variant(rec.ctx()) {
        MatmulVariant::Coop if w.format == TensorFormat::F32 => MatmulVariant::Tiled,
        v => v,
    };
    matmul_with(rec, w, io, epi, v)
}

/// `matmul` with the variant forced (tests and benches compare them; `Coop` needs an adapter for
/// which `matmul_variant` chose it).
pub fn matmul_with(rec: &mut Recorder, w: &GpuMatrix, io: &LinearIo, epi: Epilogue, variant: MatmulVariant) -> Result<()> {
    match variant {
        MatmulVariant::Coop => {
            let (tile, splits) = coop_plan(rec.ctx(), w.rows, io.n_tok, w.cols);
            matmul_coop_split(rec, w, io, epi, tile, splits)
        }
        MatmulVariant::Cpu => linear_cpu(rec, w, io, epi, None, CPU_PREFILL),
        MatmulVariant::Tiled => matmul_tiled_split(rec, w, io, epi, 1),
    }
}

/// The portable matmul (`matmul.wgsl`) split `splits` ways along K (1: unsplit), each split's
/// partials summed by `split_k::reduce`. The op does not split it (its 64 x 64 tiles are many);
/// tests do, to check the split logic the cooperative-matrix kernel shares on any adapter.
pub fn matmul_tiled_split(rec: &mut Recorder, w: &GpuMatrix, io: &LinearIo, epi: Epilogue, splits: usize) -> Result<()> {
    if io.x_f16 {
        return Err(crate::Error::arg("x_f16", "f16 inputs are read by the cooperative-matrix matmul only"));
    }
    let k = kernel(rec.ctx(), "matmul", w.format)?;
    matmul_dispatch(rec, w, io, epi, k, (64, 64), false, splits)
}

/// The cooperative-matrix tile for a product of `rows` x `n_tok`, unsplit: the largest of
/// `CoopTile::BY_SIZE` that fits the adapter's workgroup memory and still makes `COOP_MIN_TILES`
/// workgroups (the smallest where none does). Larger tiles feed each staged value to more
/// products; the global loads that stage them, not the tensor cores, bound this kernel
/// (docs/perf.md).
pub fn coop_tile(ctx: &GpuContext, rows: usize, n_tok: usize) -> CoopTile {
    CoopTile::BY_SIZE
        .into_iter()
        .filter(|t| t.workgroup_bytes() <= ctx.caps.max_workgroup_storage)
        .find(|t| coop_tiles(t, rows, n_tok) >= COOP_MIN_TILES)
        .unwrap_or(CoopTile::TINY)
}

fn coop_tiles(t: &CoopTile, rows: usize, n_tok: usize) -> usize {
    rows.div_ceil(t.rows() as usize) * n_tok.div_ceil(t.tokens() as usize)
}

/// The largest tile goes unsplit from this many workgroups (H200, 8B products at 512 tokens in
/// 128 x 128 tiles: 192 tiles unsplit 111.7 TFLOP/s, in two splits 100.5; 128 tiles unsplit 90.2,
/// in two 119.2).
const UNSPLIT_MIN_TILES: usize = 192;
/// Workgroups a split product aims at.
const SPLIT_TARGET: usize = 256;
/// At most this many splits, each over at least `SPLIT_MIN_COLS` columns (shorter walks spend
/// their time filling and draining the pipeline, and the partials grow with the splits).
const MAX_SPLITS: usize = 4;
const SPLIT_MIN_COLS: usize = 1024;

/// Tile and K splits for a product of `rows` x `n_tok` over `cols`: the largest tile that fits the
/// adapter, unsplit where it makes `UNSPLIT_MIN_TILES` workgroups, else split along K into enough
/// parts for `SPLIT_TARGET` workgroups where that takes at most `MAX_SPLITS` of `SPLIT_MIN_COLS`
/// columns or more and the partials fit `split_k::scratch_bytes`; otherwise `coop_tile`, unsplit
/// (small models' products: too few columns to split). `ESA_WGPU_MATMUL_SPLIT=N` forces N splits
/// of `coop_tile`'s tile (1: never split), for comparisons.
pub fn coop_plan(ctx: &GpuContext, rows: usize, n_tok: usize, cols: usize) -> (CoopTile, usize) {
    static KNOB: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    if let Some(n) = *KNOB.get_or_init(|| std::env::var("ESA_WGPU_MATMUL_SPLIT").ok().and_then(|v| v.parse::<usize>().ok())) {
        return (coop_tile(ctx, rows, n_tok), n.clamp(1, 64));
    }
    if let Some(t) = CoopTile::BY_SIZE.into_iter().find(|t| t.workgroup_bytes() <= ctx.caps.max_workgroup_storage) {
        let n = coop_tiles(&t, rows, n_tok);
        if n >= UNSPLIT_MIN_TILES {
            return (t, 1);
        }
        let s = SPLIT_TARGET.div_ceil(n);
        if s <= MAX_SPLITS && cols / s >= SPLIT_MIN_COLS && super::split_k::partial_bytes(s, n_tok, rows) <= super::split_k::scratch_bytes(ctx) {
            return (t, s);
        }
    }
    (coop_tile(ctx, rows, n_tok), 1)
}

/// The cooperative-matrix matmul with a given tile shape (benches sweep shapes; tests cover each).
pub fn matmul_coop_tile(rec: &mut Recorder, w: &GpuMatrix, io: &LinearIo, epi: Epilogue, tile: CoopTile) -> Result<()> {
    matmul_coop_split(rec, w, io, epi, tile, 1)
}

/// `matmul_coop_tile` split `splits` ways along K (1: unsplit; see `split_k`).
pub fn matmul_coop_split(rec: &mut Recorder, w: &GpuMatrix, io: &LinearIo, epi: Epilogue, tile: CoopTile, splits: usize) -> Result<()> {
    let ctx = rec.ctx();
    if tile.workgroup_bytes() > ctx.caps.max_workgroup_storage {
        return Err(crate::Error::arg("coop tile", format!("{tile} needs {} bytes of workgroup memory, the adapter offers {}", tile.workgroup_bytes(), ctx.caps.max_workgroup_storage)));
    }
    let k = coop_kernel(ctx, tile, w.format, io.x_f16)?;
    matmul_dispatch(rec, w, io, epi, k, (tile.rows(), tile.tokens()), true, splits)
}

/// `tokens_first`: the grid's x counts token tiles (the cooperative-matrix kernel: the workgroups in
/// flight together then share weight tiles, which are read from memory about once). With more
/// than one of `splits` the grid's z counts splits of K: each shard's partials go to the `split_k` scratch and
/// `split_k::reduce` applies the epilogue.
#[allow(clippy::too_many_arguments)]
fn matmul_dispatch(rec: &mut Recorder, w: &GpuMatrix, io: &LinearIo, epi: Epilogue, (k, unit): (Arc<Kernel>, usize), (tile_rows, tile_tok): (u32, u32), tokens_first: bool, splits: usize) -> Result<()> {
    let ctx = rec.ctx();
    if splits == 0 || splits as u32 > ctx.caps.max_workgroups_per_dim {
        return Err(crate::Error::arg("splits", format!("{splits} splits of K: at least 1, at most {}", ctx.caps.max_workgroups_per_dim)));
    }
    let part = if splits > 1 { Some(BufRef::from(&super::split_k::scratch(ctx)?)) } else { None };
    for s in &w.shards {
        let mut p = Params::for_shard(w, s, unit, io, epi, None, 0);
        let (gr, gt) = ((s.rows as u32).div_ceil(tile_rows), (io.n_tok as u32).div_ceil(tile_tok));
        let g = if tokens_first { [gt, gr, splits as u32] } else { [gr, gt, splits as u32] };
        if g[0] > ctx.caps.max_workgroups_per_dim || g[1] > ctx.caps.max_workgroups_per_dim {
            return Err(crate::Error::arg("n_tok", format!("matmul grid {g:?} exceeds the adapter's {} workgroups per dimension", ctx.caps.max_workgroups_per_dim)));
        }
        match &part {
            None => rec.dispatch(&k, &p, &[BufRef::from(&s.buf), io.x.clone(), io.y.clone()], g),
            Some(part) => {
                super::split_k::check_partials(part, splits, io.n_tok, s.rows)?;
                // raw partials, plane z of split z: [z][n_tok][rows]
                p.mode = Epilogue::Store as u32;
                p.y_stride = s.rows as u32;
                p.row0 = 0;
                rec.dispatch(&k, &p, &[BufRef::from(&s.buf), io.x.clone(), part.clone()], g);
                super::split_k::reduce(rec, part, io, epi, s.rows, io.y_row0 + s.row0, splits)?;
            }
        }
    }
    Ok(())
}

/// Picks matvec or matmul by token count. With `norm`, the matmul path expects the caller to have
/// normalised x already (see `norm::rmsnorm`), so pass `norm` only when n_tok <= MATVEC_MAX_TOKENS.
pub fn linear(rec: &mut Recorder, w: &GpuMatrix, io: &LinearIo, epi: Epilogue) -> Result<()> {
    if io.n_tok <= MATVEC_MAX_TOKENS {
        matvec(rec, w, io, epi, None)
    } else {
        matmul(rec, w, io, epi)
    }
}
