//! The block compression of chunk format 2 (see `envelope.rs`): LZ4 (the `lz4_flex` crate, pure
//! Rust, block format without a frame). Chosen by measurement over realistic usage chunks, see
//! docs/decisions/0026-store-index-and-chunks.md.

/// Compresses a chunk's records.
pub(crate) fn compress(body: &[u8]) -> Vec<u8> {
    lz4_flex::block::compress(body)
}

/// Decompresses a chunk's records, which must be exactly `len` bytes long. Bad input is an
/// error, never a panic and never an allocation beyond `len`.
pub(crate) fn decompress(compressed: &[u8], len: usize) -> Result<Vec<u8>, String> {
    let body = lz4_flex::block::decompress(compressed, len)
        .map_err(|e| format!("compressed records do not decode: {e}"))?;
    if body.len() != len {
        return Err(format!("records of {} bytes, the header says {len}", body.len()));
    }
    Ok(body)
}
