//! Stored layer file indexes (`GET /_layers/<digest>/files`): the JSON array of a layer's
//! regular files (path, size, mode, sha256), compressed alone or as a zstd delta against the
//! index of a similar layer.
//!
//! # On-disk format (`layer_files` database, version 2)
//!
//! ```text
//! magic "SLFI" | version u8 (= 2) | kind u8
//!   kind 0 (whole): zstd frame of the JSON
//!   kind 1 (delta): ref_len u8 | reference layer digest (UTF-8) | zstd frame of the JSON,
//!                   compressed with the reference's JSON as prefix (patch-from)
//! ```
//!
//! Version 1 values are a bare zstd frame of the JSON, and are still read.
//!
//! Successive versions of an image rebuild the same files: their indexes differ in a few
//! sizes and hashes, yet each holds a 32-byte hash per file that compresses to nothing on its
//! own. A delta against the previous version's index is typically 20-100 times smaller.
//!
//! The reference is found by a sketch: the 8 smallest xxh3 hashes of the layer's paths
//! (bottom-k, an estimate of the paths the two layers share). Each whole index registers its
//! sketch in `layer_sketches` (key: hash u64 big-endian, value: the layer digest, the latest
//! winning); a new index looks its own sketch up and tries the layer named most often. Only
//! whole indexes are registered, so a reference is always whole: reading any index costs at
//! most two values. A layer's whole index must be kept while a delta names it (garbage
//! collection, when it exists, reads the reference from the delta's header).

use crate::error::{RegistryError, Result};
use stowage_actors::engine::delta::DeltaCoder;
use stowage_actors::engine::tar::FileEntry;

const MAGIC: &[u8; 4] = b"SLFI";
const VERSION: u8 = 2;
const WHOLE: u8 = 0;
const DELTA: u8 = 1;
const LEVEL: i32 = 9;
/// Sketch size: hashes kept per layer.
pub const SKETCH: usize = 8;
/// Sketch hashes two layers must share before a delta is tried.
pub const MIN_SHARED: usize = 2;

/// A stored index, parsed.
pub enum Stored<'a> {
    Whole(&'a [u8]),
    Delta { reference: &'a str, frame: &'a [u8] },
}

fn corrupt(what: &str) -> RegistryError {
    RegistryError::Internal(format!("corrupt file index: {what}"))
}

pub fn parse(v: &[u8]) -> Result<Stored<'_>> {
    let Some(rest) = v.strip_prefix(MAGIC) else {
        // Version 1: a bare zstd frame.
        return Ok(Stored::Whole(v));
    };
    match rest {
        [VERSION, WHOLE, frame @ ..] => Ok(Stored::Whole(frame)),
        [VERSION, DELTA, n, rest @ ..] if rest.len() >= *n as usize => {
            let (r, frame) = rest.split_at(*n as usize);
            let reference = std::str::from_utf8(r).map_err(|_| corrupt("reference"))?;
            Ok(Stored::Delta { reference, frame })
        }
        [v, ..] if *v != VERSION => Err(RegistryError::Internal(format!(
            "file index version {v}, this stowage reads up to version {VERSION}"
        ))),
        _ => Err(corrupt("header")),
    }
}

pub fn whole(json: &[u8]) -> Result<Vec<u8>> {
    let frame = zstd::bulk::compress(json, LEVEL)
        .map_err(|e| RegistryError::Internal(format!("compressing file index: {e}")))?;
    let mut v = Vec::with_capacity(6 + frame.len());
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&[VERSION, WHOLE]);
    v.extend_from_slice(&frame);
    Ok(v)
}

/// `json` as a delta against `ref_json`, the index of layer `reference`; `None` if that is not
/// smaller than `whole_len` or does not decode back to `json`.
pub fn delta(json: &[u8], reference: &str, ref_json: &[u8], whole_len: usize) -> Option<Vec<u8>> {
    let n = u8::try_from(reference.len()).ok()?;
    let mut coder = DeltaCoder::new(LEVEL);
    let frame = coder.encode(ref_json, json).ok()?;
    if 7 + reference.len() + frame.len() >= whole_len
        || decode_frame(&mut coder, Some(ref_json), &frame).ok()? != json
    {
        return None;
    }
    let mut v = Vec::with_capacity(7 + reference.len() + frame.len());
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&[VERSION, DELTA, n]);
    v.extend_from_slice(reference.as_bytes());
    v.extend_from_slice(&frame);
    Some(v)
}

/// Decompress a whole frame (`prefix` None) or a delta frame against `prefix`.
pub fn decode_frame(
    coder: &mut DeltaCoder,
    prefix: Option<&[u8]>,
    frame: &[u8],
) -> Result<Vec<u8>> {
    let err = |e: std::io::Error| RegistryError::Internal(format!("file index: {e}"));
    match prefix {
        None => zstd::stream::decode_all(frame).map_err(err),
        Some(p) => {
            let len = match zstd::zstd_safe::get_frame_content_size(frame) {
                Ok(Some(n)) => u32::try_from(n).map_err(|_| corrupt("size"))?,
                _ => return Err(corrupt("frame without content size")),
            };
            coder.decode(p, frame, len).map_err(err)
        }
    }
}

/// The bottom-[`SKETCH`] hashes of the layer's paths, ascending.
pub fn sketch(files: &[FileEntry]) -> Vec<u64> {
    let mut h: Vec<u64> = files
        .iter()
        .map(|f| xxhash_rust::xxh3::xxh3_64(f.path.as_bytes()))
        .collect();
    h.sort_unstable();
    h.dedup();
    h.truncate(SKETCH);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(n: usize, version: u32) -> Vec<FileEntry> {
        (0..n)
            .map(|i| FileEntry {
                path: format!("usr/lib/app/module{i}.py"),
                size: (i * 37) as u64 + if i % 50 == 0 { version as u64 } else { 0 },
                mode: 0o644,
                sha256: format!(
                    "sha256:{:064x}",
                    (i as u128 * 7919 + version as u128 * (i % 50 == 0) as u128)
                ),
            })
            .collect()
    }

    #[test]
    fn a_new_version_is_stored_as_a_small_delta_and_reads_back() {
        let (a, b) = (files(2000, 1), files(2000, 2));
        let (ja, jb) = (
            serde_json::to_vec(&a).unwrap(),
            serde_json::to_vec(&b).unwrap(),
        );
        assert_eq!(sketch(&a), sketch(&b));
        let wb = whole(&jb).unwrap();
        let d = delta(&jb, "sha256:aa", &ja, wb.len()).expect("a smaller delta");
        assert!(
            d.len() * 10 < wb.len(),
            "delta {} vs whole {}",
            d.len(),
            wb.len()
        );
        let mut coder = DeltaCoder::new(LEVEL);
        match parse(&d).unwrap() {
            Stored::Delta { reference, frame } => {
                assert_eq!(reference, "sha256:aa");
                assert_eq!(decode_frame(&mut coder, Some(&ja), frame).unwrap(), jb);
            }
            Stored::Whole(_) => panic!("stored whole"),
        }
        match parse(&wb).unwrap() {
            Stored::Whole(f) => assert_eq!(decode_frame(&mut coder, None, f).unwrap(), jb),
            Stored::Delta { .. } => panic!("stored as delta"),
        }
        // Version 1: a bare frame.
        let v1 = zstd::bulk::compress(&jb, 3).unwrap();
        match parse(&v1).unwrap() {
            Stored::Whole(f) => assert_eq!(decode_frame(&mut coder, None, f).unwrap(), jb),
            Stored::Delta { .. } => panic!("v1 read as delta"),
        }
        // An unrelated reference gives no delta; a damaged header is refused.
        assert!(delta(&jb, "sha256:bb", b"[]", wb.len()).is_none());
        assert!(parse(b"SLFI\x03\x00").is_err());
        assert!(parse(b"SLFI\x02\x01\x09abc").is_err());
    }
}
