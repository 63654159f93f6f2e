//! ggml block quantisation formats: CPU dequantisation (the reference the GPU kernels are tested
//! against) and helpers to build random valid blocks for tests.
//!
//! Block layouts (all little-endian, `d`/`m`/`dmin` are f16; ggml `ggml-common.h`):
//! - Q8_0 (32 values, 34 bytes): d, i8 qs[32]; x = d * q.
//! - Q4_0 (32, 18): d, u8 qs[16]; x[j] = d * ((qs[j] & 15) - 8), x[j+16] = d * ((qs[j] >> 4) - 8).
//! - Q4_1 (32, 20): d, m, u8 qs[16]; as Q4_0 with x = d * q + m and no -8.
//! - Q4_K (256, 144): d, dmin, u8 scales[12] (eight 6-bit scales and mins), u8 qs[128].
//!   Each 64-value chunk c uses one 32-byte slice of qs: low nibbles are sub-block 2c, high nibbles
//!   sub-block 2c+1; x = d * sc * q - dmin * mn.
//! - Q5_K (256, 176): d, dmin, scales[12], u8 qh[32], u8 qs[128]; as Q4_K with a fifth bit from
//!   qh: bit 2c of qh[l] for the low nibble of chunk c, bit 2c+1 for the high nibble.
//! - Q6_K (256, 210): u8 ql[128], u8 qh[64], i8 scales[16], d (last!). Two halves of 128; in half
//!   n, for l in 0..32, four values l, l+32, l+64, l+96 take ql nibbles and qh bit pairs; q - 32,
//!   scaled by d * scales[8n + l/16 + 2k].

use crate::model::host::TensorFormat;
use crate::session::SplitMix;
use crate::{Error, Result};

/// Values per K-quant super-block.
pub const QK_K: usize = 256;

/// Dequantize `numel` elements stored in `format` to f32.
/// Errors (naming `what`) if `data` is too short or `numel` is not a whole number of blocks.
pub fn dequantize(what: &str, format: TensorFormat, data: &[u8], numel: usize) -> Result<Vec<f32>> {
    let (be, bb) = format.block();
    if numel % be != 0 {
        return Err(Error::tensor(what, format!("{numel} elements is not a multiple of the {format:?} block of {be}")));
    }
    let need = numel / be * bb;
    if data.len() < need {
        return Err(Error::tensor(what, format!("needs {need} bytes of {format:?} data, has {}", data.len())));
    }
    let d = &data[..need];
    let mut out = Vec::with_capacity(numel);
    match format {
        TensorFormat::F32 => out.extend(d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        TensorFormat::F16 => out.extend(d.chunks_exact(2).map(|c| f16(c, 0))),
        TensorFormat::BF16 => out.extend(d.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        _ => {
            let mut buf = vec![0f32; be];
            for block in d.chunks_exact(bb) {
                dequantize_block(format, block, &mut buf);
                out.extend_from_slice(&buf);
            }
        }
    }
    Ok(out)
}

/// Dequantize one block of a block format into `out` (`out.len()` = the block's element count).
pub fn dequantize_block(format: TensorFormat, b: &[u8], out: &mut [f32]) {
    match format {
        TensorFormat::F32 => out[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        TensorFormat::F16 => out[0] = f16(b, 0),
        TensorFormat::BF16 => out[0] = half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        TensorFormat::Q8_0 => {
            let d = f16(b, 0);
            for j in 0..32 {
                out[j] = d * (b[2 + j] as i8) as f32;
            }
        }
        TensorFormat::Q4_0 => {
            let d = f16(b, 0);
            for j in 0..16 {
                let q = b[2 + j];
                out[j] = d * ((q & 15) as i32 - 8) as f32;
                out[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
            }
        }
        TensorFormat::Q4_1 => {
            let (d, m) = (f16(b, 0), f16(b, 2));
            for j in 0..16 {
                let q = b[4 + j];
                out[j] = d * (q & 15) as f32 + m;
                out[j + 16] = d * (q >> 4) as f32 + m;
            }
        }
        TensorFormat::Q4_K => {
            let (d, dmin) = (f16(b, 0), f16(b, 2));
            let scales = &b[4..16];
            let qs = &b[16..144];
            for c in 0..4 {
                let (sc0, m0) = k_scale_min(2 * c, scales);
                let (sc1, m1) = k_scale_min(2 * c + 1, scales);
                let (d0, d1) = (d * sc0 as f32, d * sc1 as f32);
                let (min0, min1) = (dmin * m0 as f32, dmin * m1 as f32);
                for l in 0..32 {
                    let q = qs[32 * c + l];
                    out[64 * c + l] = d0 * (q & 15) as f32 - min0;
                    out[64 * c + 32 + l] = d1 * (q >> 4) as f32 - min1;
                }
            }
        }
        TensorFormat::Q5_K => {
            let (d, dmin) = (f16(b, 0), f16(b, 2));
            let scales = &b[4..16];
            let qh = &b[16..48];
            let qs = &b[48..176];
            for c in 0..4 {
                let (sc0, m0) = k_scale_min(2 * c, scales);
                let (sc1, m1) = k_scale_min(2 * c + 1, scales);
                let (d0, d1) = (d * sc0 as f32, d * sc1 as f32);
                let (min0, min1) = (dmin * m0 as f32, dmin * m1 as f32);
                for l in 0..32 {
                    let q = qs[32 * c + l];
                    let h0 = (qh[l] >> (2 * c)) & 1;
                    let h1 = (qh[l] >> (2 * c + 1)) & 1;
                    out[64 * c + l] = d0 * ((q & 15) | (h0 << 4)) as f32 - min0;
                    out[64 * c + 32 + l] = d1 * ((q >> 4) | (h1 << 4)) as f32 - min1;
                }
            }
        }
        TensorFormat::Q6_K => {
            let ql = &b[0..128];
            let qh = &b[128..192];
            let sc = &b[192..208];
            let d = f16(b, 208);
            for n in 0..2 {
                let (ql, qh, sc) = (&ql[64 * n..], &qh[32 * n..], &sc[8 * n..]);
                let y = &mut out[128 * n..];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 15) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                    y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                    y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                    y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                }
            }
        }
    }
}

/// The 6-bit (scale, min) of sub-block `j` (0..8) of a Q4_K/Q5_K super-block. Sub-blocks 0-3 keep
/// them in the low 6 bits of bytes j and j+4; sub-blocks 4-7 put their low 4 bits in byte j+4 and
/// their top 2 bits in the spare top bits of bytes j-4 (scale) and j (min).
pub fn k_scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 15) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

fn f16(b: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Deterministic random data, `rows * cols` elements of `format`, with every scale a finite f16
/// of moderate size so the values are valid and sums stay well inside f32. For tests.
pub fn random_blocks(format: TensorFormat, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let (be, bb) = format.block();
    assert_eq!(cols % be, 0, "cols must be a whole number of {format:?} blocks");
    let n_blocks = rows * cols / be;
    // SplitMix64: tiny, seedable, good enough for test data (no runtime `rand` dependency)
    let mut rng = SplitMix::from_state(seed);
    let mut out = vec![0u8; n_blocks * bb];
    for block in out.chunks_exact_mut(bb) {
        for x in block.iter_mut() {
            *x = rng.next_u64() as u8;
        }
        // Overwrite the scale fields with sane values (random bytes would give NaN/Inf/huge).
        let scale = |rng: &mut SplitMix, lo: f32, hi: f32| -> [u8; 2] {
            let u = (rng.next_u64() >> 11) as f32 / (1u64 << 53) as f32;
            half::f16::from_f32(lo + (hi - lo) * u).to_le_bytes()
        };
        match format {
            TensorFormat::F32 => block.copy_from_slice(&scale_f32(&mut rng).to_le_bytes()),
            TensorFormat::F16 => block.copy_from_slice(&scale(&mut rng, -2.0, 2.0)),
            TensorFormat::BF16 => {
                let v = (rng.next_u64() >> 11) as f32 / (1u64 << 53) as f32 * 4.0 - 2.0;
                block.copy_from_slice(&half::bf16::from_f32(v).to_le_bytes())
            }
            TensorFormat::Q8_0 | TensorFormat::Q4_0 => block[0..2].copy_from_slice(&scale(&mut rng, -0.05, 0.05)),
            TensorFormat::Q4_1 => {
                block[0..2].copy_from_slice(&scale(&mut rng, 0.0, 0.05));
                block[2..4].copy_from_slice(&scale(&mut rng, -0.4, 0.0));
            }
            TensorFormat::Q4_K | TensorFormat::Q5_K => {
                block[0..2].copy_from_slice(&scale(&mut rng, 0.0, 0.002));
                block[2..4].copy_from_slice(&scale(&mut rng, 0.0, 0.002));
            }
            TensorFormat::Q6_K => block[208..210].copy_from_slice(&scale(&mut rng, -0.001, 0.001)),
        }
    }
    out
}

fn scale_f32(rng: &mut SplitMix) -> f32 {
    (rng.next_u64() >> 11) as f32 / (1u64 << 53) as f32 * 4.0 - 2.0
}


/// Reference `y = W x` for a row-major `rows x cols` matrix in any format, accumulated in f64.
/// The GPU matvec kernels are tested against this.
pub fn matvec_reference(what: &str, format: TensorFormat, w: &[u8], rows: usize, cols: usize, x: &[f32]) -> Result<Vec<f32>> {
    if x.len() != cols {
        return Err(Error::tensor(what, format!("input has {} values, matrix has {cols} columns", x.len())));
    }
    let w = dequantize(what, format, w, rows * cols)?;
    Ok(w.chunks_exact(cols.max(1))
        .take(rows)
        .map(|row| row.iter().zip(x).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() as f32)
        .collect())
}
