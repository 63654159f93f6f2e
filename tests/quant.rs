//! Dequantisation of every ggml block format: hand-computed blocks, plus random blocks checked
//! against llama.cpp's own Python implementation (tests/fixtures/quant_blocks.json, made by
//! scripts/make_quant_fixture.py). Exact equality: both sides do the same f32 arithmetic on small
//! integers and f16 scales (tolerance 1e-6 relative to allow for fused multiply-add order).

use esa_wgpu::model::host::TensorFormat;
use esa_wgpu::quant::{dequantize, k_scale_min, matvec_reference, random_blocks};

const ONE: [u8; 2] = [0x00, 0x3C]; // f16 1.0
const HALF: [u8; 2] = [0x00, 0x38]; // f16 0.5
const TWO: [u8; 2] = [0x00, 0x40]; // f16 2.0
const QUARTER: [u8; 2] = [0x00, 0x34]; // f16 0.25
const MINUS_THREE: [u8; 2] = [0x00, 0xC2]; // f16 -3.0

fn deq(f: TensorFormat, b: &[u8]) -> Vec<f32> {
    dequantize("test", f, b, f.block().0).unwrap()
}

#[test]
fn q8_0_hand_block() {
    let mut b = vec![0u8; 34];
    b[0..2].copy_from_slice(&HALF);
    let qs: [i8; 5] = [0, 1, -1, 127, -128];
    for (i, q) in qs.iter().enumerate() {
        b[2 + i] = *q as u8;
    }
    let x = deq(TensorFormat::Q8_0, &b);
    assert_eq!(&x[..5], &[0.0, 0.5, -0.5, 63.5, -64.0]);
    assert!(x[5..].iter().all(|&v| v == 0.0));
}

#[test]
fn q4_0_hand_block() {
    let mut b = vec![0x88u8; 18]; // nibbles of 8 decode to 0
    b[0..2].copy_from_slice(&TWO);
    b[2] = 0x1F; // x[0] = 2 * (15 - 8), x[16] = 2 * (1 - 8)
    b[3] = 0x80; // x[1] = 2 * (0 - 8),  x[17] = 2 * (8 - 8)
    let x = deq(TensorFormat::Q4_0, &b);
    let mut want = vec![0.0f32; 32];
    want[0] = 14.0;
    want[16] = -14.0;
    want[1] = -16.0;
    want[17] = 0.0;
    assert_eq!(x, want);
}

#[test]
fn q4_1_hand_block() {
    let mut b = vec![0u8; 20];
    b[0..2].copy_from_slice(&ONE);
    b[2..4].copy_from_slice(&MINUS_THREE);
    b[4] = 0x2F; // x[0] = 15 - 3, x[16] = 2 - 3
    let x = deq(TensorFormat::Q4_1, &b);
    let mut want = vec![-3.0f32; 32];
    want[0] = 12.0;
    want[16] = -1.0;
    assert_eq!(x, want);
}

/// Scales for the K-quant hand blocks: sub-block 0 gets (scale 2, min 4); sub-block 5 gets
/// (scale 19, min 50), whose top two bits live in bytes 1 and 5 (leaving sub-block 1 at (0, 0));
/// every other sub-block is (0, 0).
fn k_scales() -> [u8; 12] {
    let mut s = [0u8; 12];
    s[0] = 2;
    s[4] = 4;
    s[1] = 0b0100_0000; // scale of sub-block 5: high bits 01 -> +16
    s[5] = 0b1100_0000; // min of sub-block 5: high bits 11 -> +48
    s[9] = 0x23; // sub-block 5: low 4 bits of scale 3, of min 2
    s
}

#[test]
fn k_scale_min_unpacks_six_bit_fields() {
    let s = k_scales();
    assert_eq!(k_scale_min(0, &s), (2, 4));
    assert_eq!(k_scale_min(1, &s), (0, 0));
    assert_eq!(k_scale_min(5, &s), (19, 50));
    assert_eq!(k_scale_min(4, &s), (0, 0));
}

#[test]
fn q4_k_hand_block() {
    let mut b = vec![0u8; 144];
    b[0..2].copy_from_slice(&ONE); // d
    b[2..4].copy_from_slice(&HALF); // dmin
    b[4..16].copy_from_slice(&k_scales());
    b[16] = 0x05; // chunk 0: x[0] (sub-block 0) low nibble 5, x[32] (sub-block 1) high nibble 0
    b[16 + 64] = 0x70; // chunk 2: x[128] (sub-block 4) 0, x[160] (sub-block 5) 7
    let x = deq(TensorFormat::Q4_K, &b);
    let mut want = vec![0.0f32; 256];
    want[..32].fill(-2.0); // 1 * 2 * 0 - 0.5 * 4
    want[160..192].fill(-25.0); // - 0.5 * 50
    want[0] = 8.0; // 2 * 5 - 2
    want[160] = 108.0; // 19 * 7 - 25
    assert_eq!(x, want);
}

#[test]
fn q5_k_hand_block() {
    let mut b = vec![0u8; 176];
    b[0..2].copy_from_slice(&ONE);
    b[2..4].copy_from_slice(&HALF);
    b[4..16].copy_from_slice(&k_scales());
    b[16] = 0b0010_0001; // qh[0]: bit 0 -> x[0] += 16; bit 5 (chunk 2, high half) -> x[160] += 16
    b[48] = 0x05;
    b[48 + 64] = 0x70;
    let x = deq(TensorFormat::Q5_K, &b);
    let mut want = vec![0.0f32; 256];
    want[..32].fill(-2.0);
    want[160..192].fill(-25.0);
    want[0] = 40.0; // 2 * (5 + 16) - 2
    want[160] = 412.0; // 19 * (7 + 16) - 25
    assert_eq!(x, want);
}

#[test]
fn q6_k_hand_block() {
    let mut b = vec![0u8; 210];
    let (ql, rest) = b.split_at_mut(128);
    let (qh, rest) = rest.split_at_mut(64);
    let (sc, d) = rest.split_at_mut(16);
    d.copy_from_slice(&QUARTER);
    sc[0] = 2; // values 0..16
    sc[2] = (-1i8) as u8; // values 32..48
    sc[4] = 1; // values 64..80
    sc[8] = 4; // second half, values 128..144
    ql[0] = 0x3A; // x[0] low nibble 10, x[64] low bits 3
    qh[0] = 0b0000_0110; // x[0] high bits 2, x[32] high bits 1, x[64] high bits 0
    ql[64] = 0x0F; // x[128] low nibble 15
    let x = deq(TensorFormat::Q6_K, &b);
    // Every q without bits set is 0 - 32.
    let mut want = vec![0.0f32; 256];
    want[0..16].fill(0.25 * 2.0 * -32.0);
    want[32..48].fill(0.25 * -1.0 * -32.0);
    want[64..80].fill(0.25 * 1.0 * -32.0);
    want[128..144].fill(0.25 * 4.0 * -32.0);
    want[0] = 0.25 * 2.0 * (10 + 32 - 32) as f32; // 5
    want[32] = 0.25 * -1.0 * (16 - 32) as f32; // 4
    want[64] = 0.25 * 1.0 * (3 - 32) as f32; // -7.25
    want[128] = 0.25 * 4.0 * (15 - 32) as f32; // -17
    assert_eq!(x, want);
}

#[test]
fn float_formats() {
    let f32s = [1.5f32, -2.25];
    let b: Vec<u8> = f32s.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(dequantize("t", TensorFormat::F32, &b, 2).unwrap(), f32s);
    let b = [ONE, MINUS_THREE].concat();
    assert_eq!(dequantize("t", TensorFormat::F16, &b, 2).unwrap(), [1.0, -3.0]);
    let b = [[0x80, 0x3F], [0x40, 0xC0]].concat(); // bf16 1.0, -3.0
    assert_eq!(dequantize("t", TensorFormat::BF16, &b, 2).unwrap(), [1.0, -3.0]);
}

#[test]
fn matches_llama_cpp_python_dequantize() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/quant_blocks.json")).unwrap();
    for (name, f) in [
        ("Q8_0", TensorFormat::Q8_0),
        ("Q4_0", TensorFormat::Q4_0),
        ("Q4_1", TensorFormat::Q4_1),
        ("Q4_K", TensorFormat::Q4_K),
        ("Q5_K", TensorFormat::Q5_K),
        ("Q6_K", TensorFormat::Q6_K),
    ] {
        let hex = fixture[name]["hex"].as_str().unwrap();
        let bytes: Vec<u8> = (0..hex.len() / 2).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()).collect();
        let want: Vec<f32> = fixture[name]["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let got = dequantize(name, f, &bytes, want.len()).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{name}[{i}]: got {g}, llama.cpp {w}");
        }
    }
}

#[test]
fn errors_name_the_tensor() {
    let e = dequantize("blk.0.attn_q.weight", TensorFormat::Q4_1, &[0u8; 19], 32).unwrap_err().to_string();
    assert!(e.contains("blk.0.attn_q.weight") && e.contains("20"), "{e}");
    let e = dequantize("w", TensorFormat::Q4_K, &[0u8; 144], 100).unwrap_err().to_string();
    assert!(e.contains("multiple"), "{e}");
}

#[test]
fn random_blocks_are_finite_and_deterministic() {
    for f in [TensorFormat::Q8_0, TensorFormat::Q4_0, TensorFormat::Q4_1, TensorFormat::Q4_K, TensorFormat::Q5_K, TensorFormat::Q6_K, TensorFormat::F16, TensorFormat::BF16, TensorFormat::F32] {
        let cols = f.block().0.max(32) * 2;
        let a = random_blocks(f, 3, cols, 42);
        assert_eq!(a, random_blocks(f, 3, cols, 42));
        assert_eq!(a.len(), f.row_bytes(cols).unwrap() * 3);
        let x = dequantize("r", f, &a, 3 * cols).unwrap();
        assert!(x.iter().all(|v| v.is_finite() && v.abs() < 100.0), "{f:?}");
        assert!(x.iter().any(|&v| v != 0.0), "{f:?}");
    }
}

#[test]
fn matvec_reference_multiplies_rows() {
    // 2 x 32 Q8_0 matrix: row 0 all q = 1 (d = 1), row 1 all q = -2 (d = 0.5).
    let mut w = vec![0u8; 68];
    w[0..2].copy_from_slice(&ONE);
    w[2..34].fill(1);
    w[34..36].copy_from_slice(&HALF);
    w[36..68].fill((-2i8) as u8);
    let x: Vec<f32> = (0..32).map(|i| i as f32).collect();
    let y = matvec_reference("w", TensorFormat::Q8_0, &w, 2, 32, &x).unwrap();
    assert_eq!(y, [496.0, -496.0]);
}
