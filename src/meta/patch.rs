//! Per-layer metadata stored whole or as a zstd patch against a similar layer's: the file index
//! (`layer_files`) and the recipe (`recipes`).
//!
//! Successive versions of an image rebuild the same files. Their file indexes differ in a few
//! sizes and hashes, yet each holds a 32-byte hash per file that compresses to nothing on its
//! own; their recipes list the same chunk ids, 20 random bytes each, in the same order. Against
//! the previous version's, both shrink by one to two orders of magnitude. Recipes grow with
//! the logical bytes pushed (about 20 bytes per 16 KiB), so on a registry of many near-identical
//! versions they would otherwise become a sizeable part of what is stored.
//!
//! # On-disk format (values of `layer_files` and `recipes`, version 2)
//!
//! ```text
//! magic [4] ("SLFI" file index, "SRCP" recipe) | version u8 (= 2) | kind u8
//!   kind 0 (whole): the payload
//!   kind 1 (patch): ref_len u8 | reference layer digest (UTF-8) |
//!                   zstd frame (content size declared) of the *raw form*, compressed with the
//!                   reference's raw form as prefix (patch-from)
//! ```
//!
//! A file index's payload is a zstd frame of its JSON and its raw form the JSON; a recipe's
//! payload is its own binary format (`stowage_actors::engine::recipe`) and its raw form the
//! uncompressed recipe body. Values without the magic are version 1 (a bare payload) and read
//! as whole.
//!
//! The reference is found by a sketch: the [`SKETCH`] smallest xxh3 hashes of the layer's file
//! paths (bottom-k, an estimate of the paths two layers share). A layer whose index and recipe
//! are both stored whole registers its sketch in `layer_sketches` (key: hash u64 big-endian,
//! value: the layer digest, the latest winning); a new layer looks its sketch up and tries the
//! layer named most often. Only whole values serve as references, so reading any value costs
//! at most two reads (one level, as for chunk deltas). A layer's whole values must be kept while
//! a patch names it: garbage collection, when it exists, finds the reference in the header.

use crate::error::{RegistryError, Result};
use stowage_actors::engine::delta::DeltaCoder;
use stowage_actors::engine::tar::FileEntry;

pub const FILE_INDEX: &[u8; 4] = b"SLFI";
pub const RECIPE: &[u8; 4] = b"SRCP";
const VERSION: u8 = 2;
const WHOLE: u8 = 0;
const PATCH: u8 = 1;
const LEVEL: i32 = 9;
/// Sketch size: hashes kept per layer.
pub const SKETCH: usize = 8;
/// Sketch hashes two layers must share before a patch is tried.
pub const MIN_SHARED: usize = 2;

/// A stored value, parsed.
pub enum Stored<'a> {
    Whole(&'a [u8]),
    Patch { reference: &'a str, frame: &'a [u8] },
}

fn corrupt(what: &str) -> RegistryError {
    RegistryError::Internal(format!("corrupt stored layer metadata: {what}"))
}

pub fn parse<'a>(magic: &[u8; 4], v: &'a [u8]) -> Result<Stored<'a>> {
    let Some(rest) = v.strip_prefix(magic) else {
        return Ok(Stored::Whole(v));
    };
    match rest {
        [VERSION, WHOLE, payload @ ..] => Ok(Stored::Whole(payload)),
        [VERSION, PATCH, n, rest @ ..] if rest.len() >= *n as usize => {
            let (r, frame) = rest.split_at(*n as usize);
            let reference = std::str::from_utf8(r).map_err(|_| corrupt("reference"))?;
            Ok(Stored::Patch { reference, frame })
        }
        [v, ..] if *v != VERSION => Err(RegistryError::Internal(format!(
            "stored layer metadata version {v}, this stowage reads up to version {VERSION}"
        ))),
        _ => Err(corrupt("header")),
    }
}

pub fn whole(magic: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(6 + payload.len());
    v.extend_from_slice(magic);
    v.extend_from_slice(&[VERSION, WHOLE]);
    v.extend_from_slice(payload);
    v
}

/// `raw` as a patch against `ref_raw`, the raw form of layer `reference`'s value; `None` if
/// that is not smaller than `whole_len` or does not decode back to `raw`.
pub fn patch(
    magic: &[u8; 4],
    raw: &[u8],
    reference: &str,
    ref_raw: &[u8],
    whole_len: usize,
) -> Option<Vec<u8>> {
    let n = u8::try_from(reference.len()).ok()?;
    let mut coder = DeltaCoder::new(LEVEL);
    let frame = coder.encode(ref_raw, raw).ok()?;
    if 7 + reference.len() + frame.len() >= whole_len || unpatch(ref_raw, &frame).ok()? != raw {
        return None;
    }
    let mut v = Vec::with_capacity(7 + reference.len() + frame.len());
    v.extend_from_slice(magic);
    v.extend_from_slice(&[VERSION, PATCH, n]);
    v.extend_from_slice(reference.as_bytes());
    v.extend_from_slice(&frame);
    Some(v)
}

/// The raw form a patch frame encodes, given its reference's raw form.
pub fn unpatch(ref_raw: &[u8], frame: &[u8]) -> Result<Vec<u8>> {
    let len = match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(n)) => u32::try_from(n).map_err(|_| corrupt("size"))?,
        _ => return Err(corrupt("frame without content size")),
    };
    DeltaCoder::new(1)
        .decode(ref_raw, frame, len)
        .map_err(|e| RegistryError::Internal(format!("stored layer metadata: {e}")))
}

/// A file index's payload: its JSON, compressed.
pub fn compress_json(json: &[u8]) -> Result<Vec<u8>> {
    zstd::bulk::compress(json, LEVEL)
        .map_err(|e| RegistryError::Internal(format!("compressing file index: {e}")))
}

pub fn decompress_json(payload: &[u8]) -> Result<Vec<u8>> {
    zstd::stream::decode_all(payload)
        .map_err(|e| RegistryError::Internal(format!("file index: {e}")))
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
            .map(|i| {
                let changed = if i % 50 == 0 { version } else { 0 };
                FileEntry {
                    path: format!("usr/lib/app/module{i}.py"),
                    size: (i * 37) as u64 + changed as u64,
                    mode: 0o644,
                    sha256: format!("sha256:{:064x}", i as u128 * 7919 + changed as u128),
                }
            })
            .collect()
    }

    #[test]
    fn a_new_version_is_stored_as_a_small_patch_and_reads_back() {
        let (a, b) = (files(2000, 1), files(2000, 2));
        let (ja, jb) = (
            serde_json::to_vec(&a).unwrap(),
            serde_json::to_vec(&b).unwrap(),
        );
        assert_eq!(sketch(&a), sketch(&b));
        assert_eq!(sketch(&a).len(), SKETCH);
        let wb = whole(FILE_INDEX, &compress_json(&jb).unwrap());
        let p = patch(FILE_INDEX, &jb, "sha256:aa", &ja, wb.len()).expect("a smaller patch");
        assert!(
            p.len() * 10 < wb.len(),
            "patch {} vs whole {}",
            p.len(),
            wb.len()
        );
        match parse(FILE_INDEX, &p).unwrap() {
            Stored::Patch { reference, frame } => {
                assert_eq!(reference, "sha256:aa");
                assert_eq!(unpatch(&ja, frame).unwrap(), jb);
            }
            Stored::Whole(_) => panic!("stored whole"),
        }
        match parse(FILE_INDEX, &wb).unwrap() {
            Stored::Whole(f) => assert_eq!(decompress_json(f).unwrap(), jb),
            Stored::Patch { .. } => panic!("stored as a patch"),
        }
        // Version 1: a bare payload.
        let v1 = compress_json(&jb).unwrap();
        match parse(FILE_INDEX, &v1).unwrap() {
            Stored::Whole(f) => assert_eq!(decompress_json(f).unwrap(), jb),
            Stored::Patch { .. } => panic!("version 1 read as a patch"),
        }
        // An unrelated reference gives no patch; a damaged header is refused.
        assert!(patch(FILE_INDEX, &jb, "sha256:bb", b"[]", wb.len()).is_none());
        assert!(parse(FILE_INDEX, b"SLFI\x03\x00").is_err());
        assert!(parse(FILE_INDEX, b"SLFI\x02\x01\x09abc").is_err());
        assert!(parse(FILE_INDEX, b"SLFI\x02\x07").is_err());
        // A patch of one database is not read as the other's.
        assert!(matches!(parse(RECIPE, &p).unwrap(), Stored::Whole(_)));
    }
}
