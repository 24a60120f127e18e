//! The pure deduplication engine: no actix here, everything is testable on its own.

pub mod chunk;
pub mod container;
pub mod deflate_probe;
pub mod delta;
pub mod features;
pub mod frame_delta;
pub mod go_entropy;
pub mod goflate;
pub mod inflate;
pub mod kpflate;
pub mod kpzstd;
pub mod pigz;
pub mod recipe;
pub mod recompress;
pub mod reencode;
pub mod segmented;
pub mod tar;
pub mod zstd_frames;

/// Deterministic pseudo-random bytes (xorshift64) for the engine's unit tests.
#[cfg(test)]
pub(crate) fn test_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
