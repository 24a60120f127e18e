//! Frame deltas: a chunk that is one whole zstd frame (a file's frame of a zstd:chunked layer
//! kept as its compressed frames) stored as a zstd delta of its *plaintext* against the
//! plaintext of a similar frame stored whole, and re-encoded exactly on read.
//!
//! A changed file's frame shares almost nothing with its previous version's frame once
//! compressed (a delta of the compressed frames saved 16% on django's zstd:chunked layers),
//! but their plaintexts share most of their bytes (7.4x smaller as deltas). Similarity
//! decodes such a frame, finds a stored frame whose plaintext is similar through
//! super-features of plaintext (kept apart from those of ordinary chunks by [`FRAME_SALT`]),
//! and keeps the delta only when the frame's encoder re-creates the frame from the plaintext
//! byte for byte. Reading it costs that re-encode, at the encoder's speed, on every pull of
//! every layer that holds the frame: a frame delta is kept only where it saves enough per
//! byte re-encoded ([`crate::pipeline::SimilarityConfig::frame_delta_min_saving`], scaled by
//! the encoder's speed: [`required_saving`]).
//!
//! # Stored data (container encoding 3, [`ChunkEncoding::FrameDelta`]), little-endian
//!
//! ```text
//! base id [20] | version u8 (1) | frame flags u8 (zstd_frames FLAG_*) | writer | delta
//! writer  0 | level i8 | bits u8 (1 long, 2 mt, 4 fixed_blocks, 8 ported,
//!                                 16 before_1_5_1)                     libzstd
//!         1 | level u8 (0 fastest, 1 default, 2 better, 3 best) | n u8 | release [n] (ASCII)
//!                                                                       klauspost/compress
//! delta   a zstd frame declaring the plaintext's size, made with the base frame's plaintext
//!         as reference prefix (see [`super::delta`])
//! ```
//!
//! The base is a chunk stored whole whose bytes are one zstd frame; its plaintext is at most
//! [`MAX_PLAIN`] bytes, and so is the frame's.
//!
//! [`ChunkEncoding::FrameDelta`]: super::container::ChunkEncoding::FrameDelta

use std::cell::RefCell;
use std::io;

use zstd::stream::raw::{InBuffer, Operation, OutBuffer};

use super::chunk::ChunkId;
use super::delta::DeltaCoder;
use super::zstd_frames::{
    encode_frame, parse_header, FrameShape, KpZstdLevel, ZstdEncoder, FLAG_FLUSHED, ZSTD_MAGIC,
};

/// Version of the data after the base id.
pub const FORMAT_VERSION: u8 = 1;
/// Largest plaintext of a frame kept as a frame delta, or of its base.
pub const MAX_PLAIN: usize = 8 << 20;
/// Largest frame (compressed bytes) kept as one chunk when frame deltas are on (a larger one
/// is cut by content, as every frame is when they are off, and is never a frame delta).
pub const MAX_FRAME_CHUNK: usize = 4 << 20;
/// Smallest frame (compressed bytes) looked up or registered as a base: a frame delta of a
/// smaller one saves little (the frames of zstd:chunked's small files, a few hundred bytes,
/// saved 0.07 bytes per byte re-encoded), and the features of each frame stored whole cost
/// the feature index about 50 bytes.
pub const MIN_FRAME: usize = 512;
/// The least a frame delta saves by default, in bytes per byte of plaintext re-encoded at
/// [`REFERENCE_RATE`]. Chosen on registry-bench's zstd:chunked datasets (README, *Frame
/// deltas*): their stored bytes within 0.02 of the gzip dataset's, pulls at most 2x
/// docker-registry's, at level 3 and at zstd:chunked's own level 10.
pub const DEFAULT_MIN_SAVING: f64 = 0.1;
/// Re-encoding speed (plaintext bytes per second, [`Encoding::nominal_restore_rate`]) at
/// which a frame delta must save the configured bytes per byte; a slower encoder's must save
/// proportionally more, so that each second a pull spends re-encoding saves as much.
///
/// [`Encoding::nominal_restore_rate`]: super::recompress::Encoding::nominal_restore_rate
pub const REFERENCE_RATE: f64 = 100e6;

/// The least a frame delta of a frame `enc` wrote must save, in bytes per byte of plaintext,
/// under `min_saving` (at [`REFERENCE_RATE`]): no less than it for a faster encoder.
pub fn required_saving(enc: ZstdEncoder, min_saving: f64) -> f64 {
    min_saving * (REFERENCE_RATE / super::zstd_frames::reencode_rate(enc)).max(1.0)
}

/// Mixed into the super-features of a frame's plaintext, so that frames find frames and
/// ordinary chunks ordinary chunks in the one feature index.
pub const FRAME_SALT: u64 = 0x5a53_5444_4652_4d31;

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// How a frame is re-created from its plaintext: its encoder and its flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRecipe {
    pub encoder: ZstdEncoder,
    pub flags: u8,
}

impl FrameRecipe {
    fn write(&self, out: &mut Vec<u8>) {
        out.push(FORMAT_VERSION);
        out.push(self.flags);
        match self.encoder {
            ZstdEncoder::Libzstd {
                level,
                long,
                mt,
                fixed_blocks,
                ported,
                before_1_5_1,
            } => {
                out.push(0);
                out.push(level as i8 as u8);
                out.push(
                    u8::from(long)
                        | u8::from(mt) << 1
                        | u8::from(fixed_blocks) << 2
                        | u8::from(ported) << 3
                        | u8::from(before_1_5_1) << 4,
                );
            }
            ZstdEncoder::Klauspost { level, version } => {
                out.push(1);
                out.push(match level {
                    KpZstdLevel::Fastest => 0,
                    KpZstdLevel::Default => 1,
                    KpZstdLevel::Better => 2,
                    KpZstdLevel::Best => 3,
                });
                let name = serde_json::to_value(version)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .expect("a klauspost release serializes as its name");
                out.push(name.len() as u8);
                out.extend_from_slice(name.as_bytes());
            }
        }
    }

    /// The recipe at the start of `b`, and what follows it.
    fn read(b: &[u8]) -> io::Result<(FrameRecipe, &[u8])> {
        let short = || bad("frame delta: record cut short");
        let (&[version, flags, lib], rest) = b.split_first_chunk::<3>().ok_or_else(short)?;
        if version != FORMAT_VERSION {
            return Err(bad(format!(
                "frame delta version {version}, this stowage reads version {FORMAT_VERSION}"
            )));
        }
        let (encoder, rest) = match lib {
            0 => {
                let (&[level, bits], rest) = rest.split_first_chunk::<2>().ok_or_else(short)?;
                let enc = ZstdEncoder::Libzstd {
                    level: level as i8 as i32,
                    long: bits & 1 != 0,
                    mt: bits & 2 != 0,
                    fixed_blocks: bits & 4 != 0,
                    ported: bits & 8 != 0,
                    before_1_5_1: bits & 16 != 0,
                };
                (enc, rest)
            }
            1 => {
                let (&[level, n], rest) = rest.split_first_chunk::<2>().ok_or_else(short)?;
                let level = match level {
                    0 => KpZstdLevel::Fastest,
                    1 => KpZstdLevel::Default,
                    2 => KpZstdLevel::Better,
                    3 => KpZstdLevel::Best,
                    l => return Err(bad(format!("frame delta: klauspost level {l}"))),
                };
                let name = rest.get(..n as usize).ok_or_else(short)?;
                let version = std::str::from_utf8(name)
                    .ok()
                    .and_then(|s| serde_json::from_value(s.into()).ok())
                    .ok_or_else(|| {
                        bad(format!(
                            "frame delta: unknown klauspost release {:?}",
                            String::from_utf8_lossy(name)
                        ))
                    })?;
                let enc = ZstdEncoder::Klauspost { level, version };
                (enc, &rest[n as usize..])
            }
            l => return Err(bad(format!("frame delta: unknown writer {l}"))),
        };
        Ok((FrameRecipe { encoder, flags }, rest))
    }

    /// The frame this recipe writes from `plain`.
    pub fn encode(&self, plain: &[u8]) -> Vec<u8> {
        encode_frame(&self.encoder, plain, FrameShape::flags(self.flags))
    }

    /// The recipe by which `encoder` re-creates `frame` from its plaintext `plain`, byte for
    /// byte (the frame's header flags, ending flushed or not); None if it does not.
    pub fn find(encoder: ZstdEncoder, frame: &[u8], plain: &[u8]) -> Option<FrameRecipe> {
        let header = parse_header(frame).ok()??;
        let flags = header.flags();
        [flags, flags | FLAG_FLUSHED]
            .into_iter()
            .map(|flags| FrameRecipe { encoder, flags })
            .find(|r| r.encode(plain) == frame)
    }
}

/// The stored data of a frame delta: `base`'s id, the recipe, the delta.
pub fn record(base: &ChunkId, recipe: &FrameRecipe, delta: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(20 + 16 + delta.len());
    v.extend_from_slice(&base.0);
    recipe.write(&mut v);
    v.extend_from_slice(delta);
    v
}

thread_local! {
    /// One zstd decoder per thread (creating one per frame showed in profiles of pulls).
    static UNZSTD: RefCell<Option<zstd::stream::raw::Decoder<'static>>> = const { RefCell::new(None) };
}

/// The plaintext of `frame`, which must be one whole zstd frame of at most [`MAX_PLAIN`]
/// bytes of plaintext (None otherwise: not a frame, several, corrupt, or too large).
pub fn frame_plaintext(frame: &[u8]) -> Option<Vec<u8>> {
    if !frame.starts_with(&ZSTD_MAGIC)
        || zstd::zstd_safe::find_frame_compressed_size(frame).ok()? != frame.len()
    {
        return None;
    }
    let declared = zstd::zstd_safe::get_frame_content_size(frame).ok()?;
    if declared.is_some_and(|n| n > MAX_PLAIN as u64) {
        return None;
    }
    UNZSTD.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::stream::raw::Decoder::new().ok()?);
        }
        let d = d.as_mut().expect("made above");
        d.reinit().ok()?;
        let mut plain = Vec::with_capacity(declared.unwrap_or(0) as usize);
        let mut input = InBuffer::around(frame);
        let mut piece = [0u8; 32 << 10];
        loop {
            let mut out = OutBuffer::around(&mut piece[..]);
            let hint = d.run(&mut input, &mut out).ok()?;
            let n = out.pos();
            plain.extend_from_slice(&piece[..n]);
            if plain.len() > MAX_PLAIN {
                return None;
            }
            if hint == 0 {
                break;
            }
            if n == 0 && input.pos() == frame.len() {
                return None; // cut short
            }
        }
        (input.pos() == frame.len()).then_some(plain)
    })
}

/// Re-create a frame delta's chunk of `raw_len` bytes from its base's bytes (a whole frame)
/// and its stored data after the base id (`rest`, see [`super::container::split_delta`]).
pub fn rebuild(
    base_frame: &[u8],
    rest: &[u8],
    raw_len: u32,
    coder: &mut DeltaCoder,
) -> io::Result<Vec<u8>> {
    let (recipe, delta) = FrameRecipe::read(rest)?;
    let base = frame_plaintext(base_frame)
        .ok_or_else(|| bad("frame delta: its base is not one whole zstd frame"))?;
    let plain = coder.decode_at_most(&base, delta, MAX_PLAIN)?;
    let frame = recipe.encode(&plain);
    if frame.len() != raw_len as usize {
        return Err(bad(format!(
            "frame delta re-encoded to {} bytes, expected {raw_len}",
            frame.len()
        )));
    }
    Ok(frame)
}

/// Super-features of a frame's plaintext, as the feature index keeps them for frames.
pub fn salted(features: Vec<u64>) -> Vec<u64> {
    features.into_iter().map(|f| f ^ FRAME_SALT).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::zstd_frames::{FLAG_CHECKSUM, FLAG_CONTENT_SIZE};

    fn text(n: usize, seed: u32) -> Vec<u8> {
        (0..n)
            .flat_map(|i| format!("line {i} of file {seed}: value {}\n", i * 7 % 13).into_bytes())
            .collect()
    }

    fn encoders() -> Vec<ZstdEncoder> {
        let kp = |level| ZstdEncoder::Klauspost {
            level,
            version: Default::default(),
        };
        vec![
            kp(KpZstdLevel::Best),
            kp(KpZstdLevel::Fastest),
            ZstdEncoder::libzstd(3),
            ZstdEncoder::Libzstd {
                level: -5,
                long: false,
                mt: false,
                fixed_blocks: false,
                ported: false,
                before_1_5_1: false,
            },
        ]
    }

    #[test]
    fn a_slower_encoders_frame_delta_must_save_more() {
        let kp = |level| ZstdEncoder::Klauspost {
            level,
            version: Default::default(),
        };
        // At the reference speed or faster: the setting itself.
        for enc in [kp(KpZstdLevel::Fastest), kp(KpZstdLevel::Default)] {
            assert_eq!(required_saving(enc, 0.1), 0.1, "{enc:?}");
        }
        assert_eq!(required_saving(ZstdEncoder::libzstd(3), 0.1), 0.1);
        // Slower: as much saved per second of re-encoding.
        let better = required_saving(kp(KpZstdLevel::Better), 0.1);
        let best = required_saving(kp(KpZstdLevel::Best), 0.1);
        assert!(0.1 < better && better < best, "{better} {best}");
        assert!((best - 0.1 * 100.0 / 28.0).abs() < 1e-9, "{best}");
        assert!(required_saving(ZstdEncoder::libzstd(19), 0.1) > 0.1);
        assert_eq!(
            required_saving(kp(KpZstdLevel::Best), 0.0),
            0.0,
            "0: any delta"
        );
    }

    #[test]
    fn a_changed_frame_is_rebuilt_from_its_bases_plaintext_byte_for_byte() {
        let mut coder = DeltaCoder::new(3);
        let old = text(3000, 1);
        let mut new = old.clone();
        new[40_000..40_020].copy_from_slice(b"an edit in the file!");
        new.extend_from_slice(b"and a new last line\n");
        for enc in encoders() {
            for flags in [
                FLAG_CHECKSUM,
                FLAG_CONTENT_SIZE,
                FLAG_CHECKSUM | FLAG_FLUSHED,
            ] {
                let shape = FrameShape::flags(flags);
                let (base, frame) = (
                    encode_frame(&enc, &old, shape),
                    encode_frame(&enc, &new, shape),
                );
                let recipe = FrameRecipe::find(enc, &frame, &new).expect("re-created");
                // The header's flags (klauspost declares the size of a one-block frame
                // unasked), and whether it ends flushed.
                assert_eq!(recipe.flags & FLAG_FLUSHED, flags & FLAG_FLUSHED, "{enc:?}");
                let delta = coder.encode(&old, &new).unwrap();
                let id = ChunkId::of(&base).unwrap();
                let rec = record(&id, &recipe, &delta);
                assert!(
                    rec.len() < frame.len() / 4,
                    "{} of {}",
                    rec.len(),
                    frame.len()
                );
                let (got_id, rest) = super::super::container::split_delta(&rec).unwrap();
                assert_eq!(got_id, id);
                let back = rebuild(&base, rest, frame.len() as u32, &mut coder).unwrap();
                assert!(back == frame, "{enc:?} {flags}");
            }
        }
    }

    #[test]
    fn what_is_not_one_whole_frame_or_not_re_created_is_refused() {
        let enc = encoders()[0];
        let plain = text(500, 2);
        let frame = encode_frame(&enc, &plain, FrameShape::flags(FLAG_CHECKSUM));
        assert_eq!(frame_plaintext(&frame).as_deref(), Some(&plain[..]));
        assert!(frame_plaintext(&[&frame[..], &frame[..]].concat()).is_none());
        assert!(frame_plaintext(&frame[..frame.len() - 1]).is_none());
        assert!(frame_plaintext(b"not a frame").is_none());
        // Another writer's frame of the same plaintext: no recipe.
        let other = zstd::bulk::compress(&plain, 19).unwrap();
        assert!(FrameRecipe::find(enc, &other, &plain).is_none());

        // Damaged stored data is an error, not wrong bytes.
        let mut coder = DeltaCoder::new(3);
        let recipe = FrameRecipe::find(enc, &frame, &plain).unwrap();
        let delta = coder.encode(&plain, &plain).unwrap();
        let rec = record(&ChunkId::of(&frame).unwrap(), &recipe, &delta);
        let rest = &rec[20..];
        let n = frame.len() as u32;
        assert!(rebuild(&frame, rest, n, &mut coder).unwrap() == frame);
        assert!(rebuild(&frame, rest, n + 1, &mut coder).is_err());
        assert!(rebuild(&frame, &rest[..4], n, &mut coder).is_err());
        let mut v2 = rest.to_vec();
        v2[0] = 2;
        assert!(rebuild(&frame, &v2, n, &mut coder).is_err());
        assert!(
            rebuild(&plain, rest, n, &mut coder).is_err(),
            "base not a frame"
        );
    }
}
