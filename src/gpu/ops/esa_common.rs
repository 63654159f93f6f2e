//! Checks shared by the ESA ops: a binding too small for the shapes is an error naming it, not an
//! out-of-bounds read clamped silently by the GPU.

use crate::gpu::BufRef;
use crate::{Error, Result};

/// Bytes visible through a binding.
pub(crate) fn binding_bytes(b: &BufRef) -> u64 {
    b.size.unwrap_or_else(|| b.buf.size().saturating_sub(b.offset))
}

/// Errors unless `b` holds at least `elems` 4-byte elements.
pub(crate) fn check_words(op: &str, what: &str, b: &BufRef, elems: usize) -> Result<()> {
    let have = binding_bytes(b);
    if have < elems as u64 * 4 {
        return Err(Error::arg(format!("{op}.{what}"), format!("buffer of {have} bytes, needs {} ({elems} x 4 bytes)", elems * 4)));
    }
    Ok(())
}
