//! Super-features for near-duplicate chunk detection (the Odess family: content-defined
//! sampling over a Gear hash, then N-transform features grouped into super-features).
//!
//! A Gear rolling hash runs over the chunk (`fp = (fp << 1) + GEAR[byte]`, so its top bits
//! depend on the last 64 bytes). Positions where the top `sample_bits` bits of `fp` are zero
//! are *sampled* (about one in `2^sample_bits` positions, chosen by content, so an insertion
//! moves the samples with the data instead of shifting them). At every sampled position each
//! of the `features` linear transforms `m_i * fp + a_i` is evaluated and the maximum over the
//! chunk is kept: two chunks that share most of their content share most of these maxima.
//! Features are grouped in order into `super_features` groups; each group's xxh3 is a
//! super-feature. Two chunks with one equal super-feature very likely share every feature of
//! that group, i.e. are similar; the candidate base is the chunk matching the most groups.
//!
//! # Stability
//!
//! Super-features are persisted in the feature index, so the Gear table and transforms are a
//! format: they come from splitmix64 with the fixed seeds below and must never change
//! (changing them would only make old chunks unfindable as bases, never corrupt data).
//! [`FEATURE_VERSION`] names this definition.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Version of the feature definition (Gear table, transforms, grouping).
pub const FEATURE_VERSION: u8 = 1;
/// Most features a configuration may ask for.
pub const MAX_FEATURES: usize = 32;

const fn splitmix64(state: u64) -> (u64, u64) {
    let s = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = s;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (s, z ^ (z >> 31))
}

const fn table<const N: usize>(seed: u64, odd: bool) -> [u64; N] {
    let mut t = [0u64; N];
    let mut s = seed;
    let mut i = 0;
    while i < N {
        let (ns, v) = splitmix64(s);
        s = ns;
        t[i] = if odd { v | 1 } else { v };
        i += 1;
    }
    t
}

static GEAR: [u64; 256] = table::<256>(0x5354_5747_4745_4152, false); // "STWGGEAR"
static MUL: [u64; MAX_FEATURES] = table::<MAX_FEATURES>(0x5354_5747_4d55_4c54, true);
static ADD: [u64; MAX_FEATURES] = table::<MAX_FEATURES>(0x5354_5747_4144_4453, false);

/// Similarity-detection parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeatureParams {
    /// Number of features (N-transforms); a multiple of `super_features`.
    pub features: usize,
    /// Number of super-features (groups of `features / super_features`).
    pub super_features: usize,
    /// One position in `2^sample_bits` is sampled.
    pub sample_bits: u32,
}

impl Default for FeatureParams {
    /// 6 features, each its own super-feature, sampling 1/128: the ablation in the README
    /// (`benches/similarity-ablation`). On 16 KiB chunks, groups of 2-4 features found only
    /// 50-80% of the deltas single features find; more than 6 found a few more, at a feature
    /// index cost that ate the gain in the registry; sampling 1/32 to 1/512 made no
    /// difference.
    fn default() -> Self {
        FeatureParams {
            features: 6,
            super_features: 6,
            sample_bits: 7,
        }
    }
}

impl FeatureParams {
    /// Check the parameters, with a message for the operator.
    pub fn validate(&self) -> Result<(), String> {
        if self.super_features == 0 || self.super_features > 16 {
            return Err("super-features must be between 1 and 16".into());
        }
        if self.features == 0
            || self.features > MAX_FEATURES
            || !self.features.is_multiple_of(self.super_features)
        {
            return Err(format!(
                "features must be a multiple of super-features, at most {MAX_FEATURES}"
            ));
        }
        if self.sample_bits > 16 {
            return Err("sampling must be at least 1 in 65536 (sample bits at most 16)".into());
        }
        Ok(())
    }
}

/// The super-features of `data`, or `None` when the chunk is too short or too uniform to have
/// sampled positions (it then has no near-duplicate detection).
pub fn super_features(data: &[u8], p: &FeatureParams) -> Option<Vec<u64>> {
    let n = p.features.min(MAX_FEATURES);
    let mut feat = [0u64; MAX_FEATURES];
    let shift = 64 - p.sample_bits;
    let mut fp = 0u64;
    let mut samples = 0usize;
    for &b in data {
        fp = (fp << 1).wrapping_add(GEAR[b as usize]);
        if p.sample_bits == 0 || fp >> shift == 0 {
            samples += 1;
            for i in 0..n {
                let t = MUL[i].wrapping_mul(fp).wrapping_add(ADD[i]);
                if t > feat[i] {
                    feat[i] = t;
                }
            }
        }
    }
    if samples == 0 {
        return None;
    }
    let per = n / p.super_features;
    let mut out = Vec::with_capacity(p.super_features);
    for (g, group) in feat[..n].chunks_exact(per).enumerate() {
        let mut bytes = [0u8; MAX_FEATURES * 8];
        for (i, f) in group.iter().enumerate() {
            bytes[i * 8..i * 8 + 8].copy_from_slice(&f.to_le_bytes());
        }
        out.push(xxh3_64_with_seed(&bytes[..per * 8], g as u64));
    }
    Some(out)
}

/// Candidate bases for a chunk with super-features `sf`: `lookup(i, sf[i])` gives the chunk
/// registered under super-feature `i`. Candidates are ranked by the number of super-features
/// they match (the earlier super-feature breaks ties); at most `n` are returned, with their
/// number of matches.
pub fn pick_bases<Id: Copy + PartialEq>(
    sf: &[u64],
    n: usize,
    mut lookup: impl FnMut(usize, u64) -> Option<Id>,
) -> Vec<(Id, usize)> {
    let mut cands: Vec<(Id, usize)> = Vec::with_capacity(sf.len());
    for (i, &f) in sf.iter().enumerate() {
        if let Some(id) = lookup(i, f) {
            match cands.iter_mut().find(|(c, _)| *c == id) {
                Some(c) => c.1 += 1,
                None => cands.push((id, 1)),
            }
        }
    }
    // Stable: equal counts keep the order of their first super-feature.
    cands.sort_by_key(|c| std::cmp::Reverse(c.1));
    cands.truncate(n);
    cands
}

/// Bytes [`compressed_format`] looks at.
pub const MAGIC_LEN: usize = 12;

/// The compressed format `head` (a file's first bytes) starts with, if any: such files do not
/// compress and rarely delta well (a small change upstream rewrites the whole stream), so the
/// selective policies may skip similarity for them. Decided from bytes, not names.
pub fn compressed_format(head: &[u8]) -> Option<&'static str> {
    const MAGICS: &[(&[u8], &str)] = &[
        (b"\x1f\x8b", "gzip"),
        (b"PK\x03\x04", "zip"),
        (b"\x28\xb5\x2f\xfd", "zstd"),
        (b"\xfd7zXZ\x00", "xz"),
        (b"BZh", "bzip2"),
        (b"\x04\x22\x4d\x18", "lz4"),
        (b"7z\xbc\xaf\x27\x1c", "7z"),
        (b"\xff\xd8\xff", "jpeg"),
        (b"\x89PNG\r\n\x1a\n", "png"),
        (b"GIF8", "gif"),
        (b"wOF2", "woff2"),
        (b"wOFF", "woff"),
    ];
    if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        return Some("webp");
    }
    MAGICS
        .iter()
        .find(|(m, _)| head.starts_with(m))
        .map(|(_, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::test_bytes as data;

    const PINNED_SF0: u64 = 0x9243_35a1_0487_a364;

    fn matches(a: &[u64], b: &[u64]) -> usize {
        a.iter().zip(b).filter(|(x, y)| x == y).count()
    }

    #[test]
    fn tables_are_fixed() {
        // The feature index depends on these values: they must never change.
        assert_eq!(GEAR[0], 0x231f_3a9d_b9f4_52a7, "{:#x}", GEAR[0]);
        assert_eq!(MUL[0] & 1, 1);
        let p = FeatureParams {
            features: 12,
            super_features: 3,
            sample_bits: 7,
        };
        let sf = super_features(&data(16384, 3), &p).unwrap();
        assert_eq!(sf.len(), 3);
        assert_eq!(sf, super_features(&data(16384, 3), &p).unwrap());
        assert_eq!(sf[0], PINNED_SF0, "{:#x}", sf[0]);
    }

    #[test]
    fn similar_chunks_share_super_features_and_different_ones_do_not() {
        let p = FeatureParams::default();
        let base = data(16384, 7);
        let mut hits = 0;
        let mut unrelated = 0;
        for k in 0..50u64 {
            let mut edited = base.clone();
            // A few scattered small edits: a version string, a patched word, an insertion.
            let at = (k as usize * 331) % 16000;
            edited[at..at + 8].copy_from_slice(b"v1.2.3-4");
            edited.insert((k as usize * 97) % 16000, b'x');
            if matches(
                &super_features(&base, &p).unwrap(),
                &super_features(&edited, &p).unwrap(),
            ) > 0
            {
                hits += 1;
            }
            let other = data(16384, 1000 + k);
            unrelated += matches(
                &super_features(&base, &p).unwrap(),
                &super_features(&other, &p).unwrap(),
            );
        }
        assert!(hits >= 48, "only {hits}/50 edited chunks found");
        assert_eq!(unrelated, 0);
    }

    #[test]
    fn short_or_uniform_chunks_have_none_or_stable_features() {
        let p = FeatureParams::default();
        assert!(super_features(b"", &p).is_none());
        // Zeros sample either everywhere or nowhere; either way the result is deterministic.
        assert_eq!(
            super_features(&[0u8; 8192], &p),
            super_features(&[0u8; 8192], &p)
        );
    }

    #[test]
    fn compressed_formats_are_recognised_by_their_bytes() {
        let mut gz = Vec::new();
        {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(&mut gz, flate2::Compression::default());
            e.write_all(b"hello").unwrap();
            e.finish().unwrap();
        }
        assert_eq!(compressed_format(&gz), Some("gzip"));
        assert_eq!(
            compressed_format(&zstd::bulk::compress(b"hello", 3).unwrap()),
            Some("zstd")
        );
        assert_eq!(compressed_format(b"PK\x03\x04\x14\x00"), Some("zip"));
        assert_eq!(
            compressed_format(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"),
            Some("png")
        );
        assert_eq!(compressed_format(b"RIFF\0\0\0\0WEBPVP8 "), Some("webp"));
        assert_eq!(compressed_format(b"\x7fELF\x02\x01\x01"), None);
        assert_eq!(compressed_format(b"#!/bin/sh\n"), None);
        assert_eq!(compressed_format(b""), None);
    }

    #[test]
    fn candidates_are_ranked_by_matches() {
        let index = |i: usize, _f: u64| [Some('a'), Some('b'), Some('b'), Some('c')][i];
        assert_eq!(pick_bases(&[1, 2, 3, 4], 1, index), vec![('b', 2)]);
        assert_eq!(
            pick_bases(&[1, 2, 3, 4], 2, index),
            vec![('b', 2), ('a', 1)]
        );
        let index = |i: usize, _f: u64| [Some('a'), Some('b'), None][i];
        assert_eq!(pick_bases(&[1, 2, 3], 1, index), vec![('a', 1)]);
        assert!(pick_bases(&[1, 2, 3], 2, |_, _| None::<char>).is_empty());
    }

    #[test]
    fn parameters_are_checked() {
        assert!(FeatureParams::default().validate().is_ok());
        let bad = FeatureParams {
            features: 10,
            super_features: 3,
            sample_bits: 7,
        };
        assert!(bad.validate().is_err());
    }
}
