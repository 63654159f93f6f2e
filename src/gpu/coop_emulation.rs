//! Cooperative matrices emulated in plain WGSL, so the tensor-core kernels can be checked
//! numerically on adapters without them (CI's lavapipe): `GpuOptions::emulate_coop` (or
//! `ESA_WGPU_EMULATE_COOP=1`) makes the ops choose the cooperative-matrix variants and
//! `GpuContext::kernel` rewrites their source with `emulate` before compiling.
//!
//! The rewrite keeps the kernel's own index arithmetic, barriers and epilogues, which is what the
//! emulation is for; only the matrix operations are replaced:
//! - a 16x16 fragment becomes `array<f32, 256>` held whole by every invocation (row-major);
//! - `coopLoad` / `coopLoadT` (f16 or f32) from workgroup array `NAME` become a generated `emu_load_NAME`
//!   (column- or row-major, every invocation reads the whole fragment);
//! - `coopMultiplyAdd` is a plain 16x16x16 product; `coopStoreT` to `NAME` is written by the first
//!   invocation of the emulated subgroup;
//! - `subgroup_id` / `subgroup_invocation_id` become `li / 32` / `li % 32` (the kernels assume
//!   subgroups of 32), and `subgroupShuffleXor(x, mask)` and `subgroupShuffle(x, lane)` exchanges
//!   through workgroup memory.
//! Slow (every invocation does every product), meant for small test shapes on software adapters
//! only (on a GPU the per-lane fragments spill: a test that takes 20 s on lavapipe ran for
//! minutes on the H200). The emulated
//! kernel must still fit the adapter's workgroup memory (plus 1 KiB for the shuffle exchange):
//! on lavapipe (32 KiB) the prefill attention at head_dim 32 fits (~25 KiB) and is tested this way
//! (`tests/kernels.rs`); the matmul's 128 x 64 double-buffered tiles (~39 KiB) do not, and neither
//! wgpu nor lavapipe reports the overflow: results are simply wrong. The matmul's cooperative
//! variant is tested on the device (docs/perf.md).

use crate::{Error, Result};

const PRELUDE: &str = r#"
// --- cooperative-matrix emulation (src/gpu/coop_emulation.rs) ---
alias EmuFrag = array<f32, 256>;
var<private> emu_li: u32;
var<workgroup> emu_xch: array<f32, 256>;

fn emu_mma(a: EmuFrag, b: EmuFrag, c: EmuFrag) -> EmuFrag {
    var r = c;
    for (var i = 0u; i < 16u; i++) {
        for (var j = 0u; j < 16u; j++) {
            var s = 0.0;
            for (var k = 0u; k < 16u; k++) { s += a[i * 16u + k] * b[k * 16u + j]; }
            r[i * 16u + j] += s;
        }
    }
    return r;
}

// subgroupShuffle(x, src) within the emulated subgroup of 32 (call it in uniform control flow).
fn emu_shfl(x: f32, src: u32) -> f32 {
    workgroupBarrier();
    emu_xch[emu_li] = x;
    workgroupBarrier();
    let y = emu_xch[(emu_li / 32u) * 32u + src];
    workgroupBarrier();
    return y;
}

// subgroupShuffleXor(x, m): the same exchange, from lane (this lane ^ m).
fn emu_shfl_xor(x: f32, m: u32) -> f32 {
    return emu_shfl(x, (emu_li % 32u) ^ m);
}
"#;

/// The `NAME[INDEX], STRIDE)` tail of a cooperative load or store (after its `&`).
struct PointerArgs {
    name: String,
    index: String,
    stride: String,
}

/// Parse `args` (starting right after the `&`); returns the parts and the bytes used, through the
/// closing parenthesis.
fn pointer_args(args: &str, what: &str) -> Result<(PointerArgs, usize)> {
    let bad = |m: &str| Error::Gpu(format!("coop emulation: {what} {m}"));
    let bracket = args.find('[').ok_or_else(|| bad("pointer not NAME[...]"))?;
    let close = args.find("],").ok_or_else(|| bad("pointer not NAME[INDEX], STRIDE"))?;
    // the call's closing parenthesis: the first after the stride (the index may hold parentheses)
    let end = close + args[close..].find(')').ok_or_else(|| bad("unterminated"))?;
    let parts = PointerArgs {
        name: args[..bracket].trim().to_string(),
        index: args[bracket + 1..close].to_string(),
        stride: args[close + 2..end].trim().to_string(),
    };
    Ok((parts, end + 1))
}

/// Rewrite a cooperative-matrix kernel into plain WGSL (see the module docs). Sources without
/// `enable wgpu_cooperative_matrix;` come back unchanged.
pub fn emulate(src: &str) -> Result<String> {
    if !src.contains("enable wgpu_cooperative_matrix;") {
        return Ok(src.to_string());
    }
    // Comments may name the operations (WGSL has no string literals, so `//` always starts one).
    let uncommented: String = src.lines().map(|l| l.find("//").map_or(l, |i| &l[..i])).collect::<Vec<_>>().join("\n");
    let mut s = uncommented.replace("enable wgpu_cooperative_matrix;", "");
    s = s.replace("coop_mat16x16<f32, C>()", "EmuFrag()");
    // Loads: coopLoad[T]<coop_mat16x16<f16, R>>(&NAME[INDEX], STRIDE)
    let mut loads: Vec<String> = Vec::new();
    for (pat, row_major) in [
        ("coopLoadT<coop_mat16x16<f16, ", true),
        ("coopLoad<coop_mat16x16<f16, ", false),
        ("coopLoadT<coop_mat16x16<f32, ", true),
        ("coopLoad<coop_mat16x16<f32, ", false),
    ] {
        while let Some(at) = s.find(pat) {
            let rest = &s[at + pat.len()..];
            let open = rest.find("(&").ok_or_else(|| Error::Gpu("coop emulation: load without (&".into()))?;
            let (ptr, used) = pointer_args(&rest[open + 2..], "load")?;
            let call = format!("emu_load_{}({}, {}, {row_major})", ptr.name, ptr.index, ptr.stride);
            s.replace_range(at..at + pat.len() + open + 2 + used, &call);
            if !loads.contains(&ptr.name) {
                loads.push(ptr.name);
            }
        }
    }
    s = s.replace("coopMultiplyAdd(", "emu_mma(");
    // What is left of the fragment types are declarations (`var q: coop_mat16x16<f16, A>;`).
    for t in ["coop_mat16x16<f16, A>", "coop_mat16x16<f16, B>", "coop_mat16x16<f32, C>"] {
        s = s.replace(t, "EmuFrag");
    }
    // Stores: coopStoreT(FRAG, &NAME[INDEX], STRIDE)
    let mut stores: Vec<String> = Vec::new();
    while let Some(at) = s.find("coopStoreT(") {
        let rest = &s[at + "coopStoreT(".len()..];
        let comma = rest.find(", &").ok_or_else(|| Error::Gpu("coop emulation: store without , &".into()))?;
        let frag = rest[..comma].to_string();
        let (ptr, used) = pointer_args(&rest[comma + 3..], "store")?;
        let call = format!("emu_store_{}({frag}, {}, {})", ptr.name, ptr.index, ptr.stride);
        s.replace_range(at..at + "coopStoreT(".len() + comma + 3 + used, &call);
        if !stores.contains(&ptr.name) {
            stores.push(ptr.name);
        }
    }
    if s.contains("coopStore(") || s.contains("coop_mat") || s.contains("coopLoad") {
        return Err(Error::Gpu("coop emulation: a cooperative-matrix form it does not know is left".into()));
    }
    s = s.replace("subgroupShuffleXor(", "emu_shfl_xor(");
    s = s.replace("subgroupShuffle(", "emu_shfl(");
    s = s.replace(
        ",\n        @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {",
        ") {\n    emu_li = li;\n    let sg = li / 32u;\n    let lane = li % 32u;",
    );
    if s.contains("@builtin(subgroup_id)") {
        return Err(Error::Gpu("coop emulation: entry point signature not in the expected form".into()));
    }
    let mut helpers = String::from(PRELUDE);
    for name in &loads {
        // Arrays of vec2<f16> or vec4<f16> hold 2 or 4 halves per element: `at` and `stride`
        // count elements, the fragment's entries are halves.
        let decl = format!("var<workgroup> {name}: array<");
        let w = match s.find(&decl).map(|i| &s[i + decl.len()..]) {
            Some(t) if t.starts_with("vec4<") => 4,
            Some(t) if t.starts_with("vec2<") => 2,
            _ => 1,
        };
        let read = if w == 1 { format!("{name}[i]") } else { format!("{name}[i / {w}u][i % {w}u]") };
        helpers.push_str(&format!(
            "fn emu_load_{name}(at: u32, stride: u32, row_major: bool) -> EmuFrag {{\n    var f: EmuFrag;\n    for (var r = 0u; r < 16u; r++) {{\n        for (var c = 0u; c < 16u; c++) {{\n            let i = select(at * {w}u + c * stride * {w}u + r, at * {w}u + r * stride * {w}u + c, row_major);\n            f[r * 16u + c] = f32({read});\n        }}\n    }}\n    return f;\n}}\n"
        ));
    }
    for name in &stores {
        helpers.push_str(&format!(
            "fn emu_store_{name}(f: EmuFrag, at: u32, stride: u32) {{\n    if (emu_li % 32u == 0u) {{\n        for (var r = 0u; r < 16u; r++) {{\n            for (var c = 0u; c < 16u; c++) {{ {name}[at + r * stride + c] = f[r * 16u + c]; }}\n        }}\n    }}\n}}\n"
        ));
    }
    // Helpers go after the declarations they use: before the first function of the kernel.
    let first_fn = s.find("\nfn ").or_else(|| s.find("\n@compute")).ok_or_else(|| Error::Gpu("coop emulation: no function".into()))?;
    s.insert_str(first_fn + 1, &helpers);
    Ok(s)
}
