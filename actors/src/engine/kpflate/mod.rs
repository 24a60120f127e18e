//! Port of github.com/klauspost/compress/flate 1.15.12 and
//! github.com/klauspost/pgzip 1.2.5 (BSD-3-Clause, Copyright (c) 2012 The Go
//! Authors, Copyright (c) 2015 Klaus Post), with the changes of other
//! releases that alter output selected by [`KpVersion`] (1.10.3-1.15.10; 1.18.0,
//! 1.18.1, 1.18.2-1.19.1, and Go 1.27's copy of the encoder), and [`KpDeflater`] for
//! klauspost's `flate.Writer` as one stream.
//!
//! A bit-exact re-encoder for the gzip that pgzip writes (what podman,
//! skopeo, buildah and umoci compress layers with), so that a layer stored
//! decompressed and deduplicated can be given back byte for byte. The Rust
//! code follows the Go algorithms step by step (match finders, block-type
//! decisions, Huffman construction, table-reuse heuristics, even integer
//! wrap-arounds) because any deviation changes bytes.
//!
//! # pgzip framing
//!
//! pgzip cuts its input into blocks of `block_size` bytes (default
//! [`PGZIP_DEFAULT_BLOCK`] = 1 MiB). Each block is deflated independently by
//! a klauspost `flate.Writer` primed (`ResetDict`) with the previous block's
//! last [`PGZIP_TAIL`] = 16384 bytes (no dictionary for the first block; a
//! block of at most 16384 bytes would pass no tail on, but only the final
//! block can be that short). Then:
//!
//! * every block ends with `Flush()`: its data, then an empty stored block
//!   `00 00 ff ff` after padding (a sync marker), so every block is byte
//!   aligned and none has BFINAL set;
//! * the final block (`Close`) additionally gets `Close()`: a fixed-Huffman
//!   empty final block, the two bytes `03 00`.
//! * A block is cut as soon as the buffer holds exactly `block_size` bytes,
//!   so an input that is a (non-zero) multiple of `block_size` ends with an
//!   extra *empty* final block (dictionary = tail of the last full block),
//!   which deflates to `00 00 00 ff ff 03 00` at every level. Empty input
//!   likewise is one empty final block: `00 00 00 ff ff 03 00` (an empty
//!   stored block `00 00 00 ff ff`, then `03 00`).
//!
//! The member is `header ‖ blocks ‖ CRC-32 (LE) ‖ size mod 2^32 (LE)`. The
//! 10-byte header ([`pgzip_header`]) is
//! `1f 8b 08 00 | 00 09 6e 88 | XFL | ff`:
//! FLG 0 (no name/comment/extra), MTIME `0x886e0900` — pgzip writes
//! `uint32(time.Time{}.Unix())` = `uint32(-62135596800)` rather than 0
//! when no ModTime is set, XFL 2 for level 9, 4 for level 1, 0 otherwise
//! (including the default level), OS 255 ("unknown").
//!
//! # Levels
//!
//! All levels pgzip accepts are implemented and checked bit for bit against
//! the Go library (`tests/kpflate.rs`): -2 (HuffmanOnly), -1
//! (DefaultCompression, which klauspost maps to level 5), 0 (stored), 1-6
//! (the "fast" snappy-style encoders) and 7-9 (hash chains with lazy
//! matching). Level 9 uses the literal-cost match gain estimate.
//!
//! Go keeps encoders in a `sync.Pool` and reuses them across blocks; their
//! leftover state cannot reach the output (every table entry of an earlier
//! use is more than a window away after `Reset`), so each block here starts
//! from a fresh encoder, which is what lets blocks run in parallel.
//!
//! Not modelled: explicit `Flush()` calls by the writer's user (they cut
//! short blocks; container tools only `Write` and `Close`), and header
//! fields (name, comment, extra, ModTime) that the tools do not set. The
//! offset-rebasing paths for a single block of 256 MiB (levels 7-9) or
//! about 2 GiB (levels 1-6) are ported but not exercised by the tests.

mod bitwriter;
mod compressor;
mod fast;
mod huffman;
mod tokens;

use compressor::Compressor;

/// pgzip's default block size (`defaultBlockSize`).
pub const PGZIP_DEFAULT_BLOCK: usize = 1 << 20;
/// The tail of each block pgzip passes to the next as dictionary (`tailSize`).
pub const PGZIP_TAIL: usize = 16384;

/// The klauspost/compress flate release whose output is produced. Later releases change
/// only what their variant names; the census of which releases write identical bytes at
/// which levels is on [`crate::engine::recompress::PgzipVariant`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum KpVersion {
    /// 1.11.0-1.11.12 and 1.10.3 (at every level): as
    /// 1.11.13 but for how unused bytes enter a Huffman-only block's estimate and table, and
    /// a new-table penalty of 1/64 at levels 1-6.
    V1_11_0,
    /// 1.11.13-1.12.1 (at every level): as 1.12.2 without levels 5 and 6's look for
    /// a longer match at the end of one.
    V1_11_13,
    /// 1.12.2 (at every level): as 1.12.3 but for
    /// Huffman-only blocks sized by byte entropy and unclamped symbol costs in the new-table
    /// estimate.
    V1_12_2,
    /// 1.12.3-1.13.6 (at every level): as 1.14.0 but for levels 7-9 (the lazy matcher before
    /// 1.14.0, `compressor/before_1_14.rs`, in every variant up to here), the dynamic block
    /// decisions before 1.14.0 (filled histograms, a stored block when
    /// under a sixteenth larger, no fixed-table preference) and a new-table penalty of 1/256
    /// at levels 1-6 instead of 1/128.
    V1_12_3,
    /// 1.14.0-1.14.2 (at every level but 7-9 of 1.14.2): as 1.14.3 without its quick check
    /// for incompressible Huffman-only blocks, level 3 with level 1's hash (see `fast.rs`),
    /// and levels 7-9 weighing a match by the window's entropy (`compressor.rs`, `bpb_gain`).
    V1_14_0,
    /// 1.14.3-1.14.4 (at every level): as 1.15.0, and a
    /// match longer than 258 is cut into 255s.
    V1_14_3,
    /// 1.15.0-1.15.9, and 1.15.10 at levels 1-3 (at every level): as 1.15.12, but levels 5
    /// and 6 look for a longer match at the end of one from its first byte, and levels 1-3
    /// hash 4 bytes (see `fast.rs`).
    V1_15_0,
    /// 1.15.12: dynamic blocks that may be followed by a reused table get full-size header
    /// counts (HLIT 286, HDIST 30).
    #[default]
    V1_15_12,
    /// 1.18.0: level 4 measures its next-long candidate from the wrong place (`lOff`);
    /// levels 7-9 check for a better match at the end of a match in a new way, and level 9
    /// weighs match gains differently.
    V1_18_0,
    /// 1.18.1: every dynamic header is trimmed to the codes used (HLIT/HDIST), counting the
    /// end-of-block code only when a sync already added it.
    V1_18_1,
    /// 1.18.2 (through 1.19.1): the end-of-block code is counted before trimming; level 9
    /// builds its literal cost estimate from at most 32 KiB ahead.
    V1_18_2,
    /// Go 1.27's compress/flate, a copy of klauspost's encoder as in 1.18.2 except that a
    /// block that is not flushed counts an end-of-block code in its token histogram up front
    /// ("ensure we can always write EOB"), which enters the new-table size estimate. Exact
    /// against the Go 1.27.3 release at every level (`tests/flate_versions.rs`, in CI).
    Go1_27,
}

/// A streaming klauspost (or Go 1.27) `flate.Writer` without dictionary: output accumulates
/// in an internal buffer, taken with [`KpDeflater::take_output`]. The bytes do not depend on
/// how the input is cut into writes.
pub struct KpDeflater {
    c: Compressor,
}

impl KpDeflater {
    /// `flate.NewWriter(w, level)` of `version`.
    pub fn new(version: KpVersion, level: i32) -> Result<KpDeflater, KpError> {
        check_level(level)?;
        Ok(KpDeflater {
            c: Compressor::new_writer(level, Vec::new(), version)?,
        })
    }

    pub fn write(&mut self, b: &[u8]) {
        self.c.write(b);
    }

    /// `Close`: the rest of the input and the final block.
    pub fn close(&mut self) {
        self.c.close();
    }

    /// Moves the bytes written so far to `dst`.
    pub fn take_output(&mut self, dst: &mut Vec<u8>) {
        self.c.take_output(dst);
    }
}

/// The raw deflate stream `flate.NewWriter(level)`, `Write(input)`, `Close()` of `version`.
pub fn deflate_version(version: KpVersion, level: i32, input: &[u8]) -> Result<Vec<u8>, KpError> {
    let mut d = KpDeflater::new(version, level)?;
    d.write(input);
    d.close();
    let mut out = Vec::new();
    d.take_output(&mut out);
    Ok(out)
}

/// What this encoder cannot do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KpError {
    /// The level is not one of -2..=9.
    #[error("unsupported klauspost flate level {0} (want -2..=9)")]
    Level(i32),
    /// pgzip refuses block sizes of at most [`PGZIP_TAIL`].
    #[error("pgzip block size {0} must be larger than {PGZIP_TAIL}")]
    BlockSize(usize),
}

fn check_level(level: i32) -> Result<(), KpError> {
    if (-2..=9).contains(&level) {
        Ok(())
    } else {
        Err(KpError::Level(level))
    }
}

/// Deflate one pgzip block exactly as pgzip 1.2.5 / klauspost flate 1.15.12 does:
/// `dict` is the preceding plaintext tail pgzip passes as dictionary (empty for the first block),
/// `last` says whether this is the final block (Close) or a flushed one. Output is the raw
/// deflate bytes this block contributes to the member (byte aligned).
///
/// The bytes are appended to `out`; on error `out` is left untouched.
pub fn pgzip_block(
    level: i32,
    dict: &[u8],
    block: &[u8],
    last: bool,
    out: &mut Vec<u8>,
) -> Result<(), KpError> {
    pgzip_block_version(KpVersion::V1_15_12, level, dict, block, last, out)
}

/// [`pgzip_block`] as pgzip on klauspost/compress `version` writes it.
pub fn pgzip_block_version(
    version: KpVersion,
    level: i32,
    dict: &[u8],
    block: &[u8],
    last: bool,
    out: &mut Vec<u8>,
) -> Result<(), KpError> {
    check_level(level)?;
    let mut c = Compressor::new(level, dict, std::mem::take(out), version)?;
    c.write(block);
    c.sync_flush();
    if last {
        c.close();
    }
    *out = c.into_output();
    Ok(())
}

/// The blocks pgzip cuts `input` into, each with its dictionary and whether it is the last.
fn blocks(block_size: usize, input: &[u8]) -> impl Iterator<Item = (&[u8], &[u8], bool)> {
    let full = input.len() / block_size;
    (0..=full).map(move |i| {
        let start = i * block_size;
        let end = (start + block_size).min(input.len());
        let dict = if i == 0 {
            &input[..0]
        } else {
            &input[start - PGZIP_TAIL..start]
        };
        (dict, &input[start..end], i == full)
    })
}

fn check_block_size(block_size: usize) -> Result<(), KpError> {
    if block_size <= PGZIP_TAIL {
        return Err(KpError::BlockSize(block_size));
    }
    Ok(())
}

/// The whole deflate body of a pgzip member for `input` (no gzip header/trailer), blocks of `block_size`.
pub fn pgzip_deflate(level: i32, block_size: usize, input: &[u8]) -> Result<Vec<u8>, KpError> {
    pgzip_deflate_version(KpVersion::V1_15_12, level, block_size, input)
}

/// [`pgzip_deflate`] as pgzip on klauspost/compress `version` writes it.
pub fn pgzip_deflate_version(
    version: KpVersion,
    level: i32,
    block_size: usize,
    input: &[u8],
) -> Result<Vec<u8>, KpError> {
    check_level(level)?;
    check_block_size(block_size)?;
    let mut out = Vec::with_capacity(input.len() / 2 + 64);
    for (dict, block, last) in blocks(block_size, input) {
        pgzip_block_version(version, level, dict, block, last, &mut out)?;
    }
    Ok(out)
}

/// [`pgzip_deflate`] with the blocks compressed in parallel on rayon's pool.
pub fn pgzip_deflate_parallel(
    level: i32,
    block_size: usize,
    input: &[u8],
) -> Result<Vec<u8>, KpError> {
    use rayon::prelude::*;
    check_level(level)?;
    check_block_size(block_size)?;
    let parts: Vec<(&[u8], &[u8], bool)> = blocks(block_size, input).collect();
    let bodies = parts
        .into_par_iter()
        .map(|(dict, block, last)| {
            let mut out = Vec::with_capacity(block.len() / 2 + 64);
            pgzip_block(level, dict, block, last, &mut out).map(|()| out)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(bodies.concat())
}

/// The 10-byte gzip header pgzip writes for `level` (no name, comment or extra).
pub fn pgzip_header(level: i32) -> [u8; 10] {
    // uint32(time.Time{}.Unix()): the zero time.Time is year 1, not 1970.
    let mtime = (-62_135_596_800i64) as u32;
    let m = mtime.to_le_bytes();
    let xfl = match level {
        9 => 2,
        1 => 4,
        _ => 0,
    };
    [0x1f, 0x8b, 8, 0, m[0], m[1], m[2], m[3], xfl, 255]
}

/// A complete pgzip gzip member: header, [`pgzip_deflate`] body, CRC-32 and size.
pub fn pgzip_gzip(level: i32, block_size: usize, input: &[u8]) -> Result<Vec<u8>, KpError> {
    pgzip_gzip_version(KpVersion::V1_15_12, level, block_size, input)
}

/// [`pgzip_gzip`] as pgzip on klauspost/compress `version` writes it.
pub fn pgzip_gzip_version(
    version: KpVersion,
    level: i32,
    block_size: usize,
    input: &[u8],
) -> Result<Vec<u8>, KpError> {
    let body = pgzip_deflate_version(version, level, block_size, input)?;
    let mut out = Vec::with_capacity(body.len() + 18);
    out.extend_from_slice(&pgzip_header(level));
    out.extend_from_slice(&body);
    let mut crc = flate2::Crc::new();
    crc.update(input);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(input.len() as u32).to_le_bytes());
    Ok(out)
}
