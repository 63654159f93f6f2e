//! Stress test of the GGUF reader without a fuzzer: ~20k deterministic mutations of the tiny valid
//! fixture (truncations, huge length/count fields, random byte flips). Each mutant must give Ok or a
//! clean `Err` from `GgufHeader::parse`, `GgufModel::open`, `tensor()` of every tensor,
//! `tokenizer_spec()` and `Tokenizer::from_gguf`: never a panic and never an absurd allocation.
//! (The cargo-fuzz target in fuzz/ explores further; this one runs in every `cargo test`.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use esa_wgpu::model::gguf::{hf_name, GgufHeader, GgufModel};
use esa_wgpu::model::host::WeightSource;
use esa_wgpu::tokenizer::Tokenizer;

/// Records the largest single allocation, so a forged count that reserves gigabytes is caught even
/// when the machine would have had the memory.
struct Tracking;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LARGEST.fetch_max(l.size(), Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LARGEST.fetch_max(l.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LARGEST.fetch_max(new, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// No single allocation for a 36 KB file may exceed this (the tokenizer and tensors of the fixture
/// need far less).
const MAX_ALLOC: usize = 64 << 20;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny_llama_ggufpy.gguf");

/// splitmix64: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Byte offsets of every u64 length/count field of a valid GGUF header (tensor and metadata counts,
/// string lengths, array lengths, tensor dims and offsets), found by walking the fixture.
fn length_fields(b: &[u8]) -> Vec<usize> {
    let u32_at = |p: usize| u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
    let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap()) as usize;
    let mut out = vec![8, 16];
    let mut p = 24;
    fn value(b: &[u8], p: &mut usize, t: u32, out: &mut Vec<usize>) {
        let u32_at = |p: usize| u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
        let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap()) as usize;
        match t {
            0 | 1 | 7 => *p += 1,
            2 | 3 => *p += 2,
            4 | 5 | 6 => *p += 4,
            10 | 11 | 12 => *p += 8,
            8 => {
                out.push(*p);
                *p += 8 + u64_at(*p);
            }
            9 => {
                let et = u32_at(*p);
                out.push(*p + 4);
                let n = u64_at(*p + 4);
                *p += 12;
                for _ in 0..n {
                    value(b, p, et, out);
                }
            }
            _ => panic!("fixture has unknown type {t}"),
        }
    }
    let (n_t, n_kv) = (u64_at(8), u64_at(16));
    for _ in 0..n_kv {
        out.push(p);
        p += 8 + u64_at(p);
        let t = u32_at(p);
        p += 4;
        value(b, &mut p, t, &mut out);
    }
    for _ in 0..n_t {
        out.push(p);
        p += 8 + u64_at(p);
        let nd = u32_at(p) as usize;
        p += 4;
        for _ in 0..nd {
            out.push(p);
            p += 8;
        }
        p += 4; // type
        out.push(p); // offset
        p += 8;
    }
    out
}

/// Run every reader entry point on `bytes`. Returns true when the model opened.
fn exercise(bytes: &[u8], path: &Path) -> bool {
    let Ok(header) = GgufHeader::parse(path, bytes) else { return false };
    std::fs::write(path, bytes).unwrap();
    let Ok(model) = GgufModel::open(path) else { return false };
    let _ = model.config().rope_inv_freqs();
    for t in &header.tensors {
        if let Some(name) = hf_name(&t.name) {
            let _ = model.tensor(&name);
        }
    }
    if let Ok(spec) = model.tokenizer_spec() {
        let _ = Tokenizer::from_gguf(&spec);
    }
    true
}

#[test]
fn mutated_fixture_never_panics_or_allocates_absurdly() {
    let orig = std::fs::read(FIXTURE).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mutant.gguf");
    let fields = length_fields(&orig);
    let header_end = *fields.last().unwrap() + 8;

    // The unmutated fixture must open fully.
    assert!(exercise(&orig, &path), "the fixture itself does not open");

    let mut mutants: Vec<(String, Vec<u8>)> = Vec::new();
    // Truncations at every 97th offset.
    for cut in (0..orig.len()).step_by(97) {
        mutants.push((format!("truncate at {cut}"), orig[..cut].to_vec()));
    }
    // Huge (and off-by-one) values in every length/count field.
    let len = orig.len() as u64;
    let huge = [u64::MAX, u64::MAX / 2, 1 << 63, 1 << 62, 1 << 40, 1 << 32, u32::MAX as u64, len, len + 1, 0];
    for &f in &fields {
        for &v in &huge {
            let mut m = orig.clone();
            m[f..f + 8].copy_from_slice(&v.to_le_bytes());
            mutants.push((format!("u64 {v} at {f}"), m));
        }
    }
    // Random flips up to 20k mutants in all: 1-8 bytes, mostly in the header.
    let mut rng = Rng(0x5EED_6775);
    let mut i = 0;
    while mutants.len() < 20_000 {
        let mut m = orig.clone();
        let n = 1 + rng.below(8);
        for _ in 0..n {
            let at = if rng.below(10) < 8 { rng.below(header_end) } else { rng.below(m.len()) };
            match rng.below(3) {
                0 => m[at] ^= 1 << rng.below(8),
                1 => m[at] = rng.next() as u8,
                _ => m[at] = [0, 0xff, 0x7f, 0x80][rng.below(4)],
            }
        }
        mutants.push((format!("random flips #{i}"), m));
        i += 1;
    }

    let mut failures = Vec::new();
    let mut opened = 0;
    for (what, bytes) in &mutants {
        LARGEST.store(0, Ordering::Relaxed);
        match catch_unwind(AssertUnwindSafe(|| exercise(bytes, &path))) {
            Ok(ok) => opened += ok as usize,
            Err(_) => failures.push(format!("{what}: panicked")),
        }
        let largest = LARGEST.load(Ordering::Relaxed);
        if largest > MAX_ALLOC {
            failures.push(format!("{what}: allocated {largest} bytes at once"));
        }
    }
    eprintln!("{} mutants, {opened} opened as a model, {} failures", mutants.len(), failures.len());
    assert!(failures.is_empty(), "{} of {} mutants failed, first: {:#?}", failures.len(), mutants.len(), &failures[..failures.len().min(20)]);
}
