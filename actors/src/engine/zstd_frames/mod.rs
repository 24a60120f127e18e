//! zstd layers as the streams of frames they are: learn at ingest how each data frame was
//! written, re-create the exact stream on pull.
//!
//! A zstd layer is one or more frames. A plain `zstd` layer is usually one data frame;
//! zstd:chunked (containers/storage) writes a data frame per file (or group of small files),
//! then skippable frames holding its table of contents and footer; other writers concatenate
//! frames too. The uncompressed layer is the concatenation of the data frames' contents;
//! skippable frames carry no layer bytes and are kept verbatim (they are small), as is every
//! frame's place in the stream.
//!
//! # Identification
//!
//! Each data frame is decoded with libzstd while its first
//! [`PROBE`](crate::engine::recompress::PROBE) bytes (plain and compressed) are kept. The
//! first frame's encoder is found by trying candidates (klauspost's levels, then libzstd's,
//! then earlier libzstd releases' fixed blocks: `encoders.rs`, `libzstd.rs`, their levels
//! 3-4 through a port of their match finder: `dfast.rs`, `dfast_writer.rs`, 1.5.4's levels 5-12
//! through a port of its lazy ones, `lazy.rs`, and 1.5.4-1.5.5's levels 16-19 through a port
//! of their optimal parser, `opt.rs`) on that probe;
//! every later frame must be re-created by the same encoder.
//! A frame that ends within the probe is compared whole, including how it ends; a longer one
//! is compared on its beginning, and verify-before-discard proves the rest. Frame header
//! facts (checksum, content size) are read from the frame and recorded, not guessed.
//!
//! # Recipe (part of the layer recipe's encoding JSON, `kind: "zstdframes"`)
//!
//! ```text
//! { "kind": "zstdframes",
//!   "encoder": {"lib": "libzstd", "level": 3, "long": true?, "mt": true?, "fixed_blocks": true?,
//!               "ported": true?}
//!            | {"lib": "klauspost", "level": "default", "version": "v1.17.0"} | null,
//!   "parts": [ [raw_len, compressed_len, flags],     a data frame
//!              "50 2a 4d 18 ... (hex)",              a skippable frame, whole
//!              ... ] }
//! ```
//!
//! A frame whose first block was cut short (see [`ZstdPart::CutFrame`]) is
//! `[raw_len, compressed_len, flags, first_block_len]`. A long klauspost frame re-encoded in
//! segments (see [`ZstdPart::Split`]) is an object:
//! `{"raw": n, "comp": n, "flags": f, "cut": k?, "splits": [[warm, start, comp_start], ...]}`.
//! `flags` is a bit set: [`FLAG_CHECKSUM`], [`FLAG_CONTENT_SIZE`], [`FLAG_FLUSHED`].
//! Frames' compressed lengths let a range request start re-encoding at the frame it falls in
//! (partial pulls of zstd:chunked ask for single files' frames).
//!
//! # Segments
//!
//! A klauspost frame is one encoder's output from start to end, but where a fresh encoder fed
//! a window of the plaintext before a block writes that block and the ones after it exactly
//! as the frame has them, the frame can be re-encoded from there on another core (`splits.rs`
//! finds such places at ingest, `segmented.rs` re-encodes on pull). Verify-before-discard
//! proves the segments; should it not, the same frames without segments are tried next.
//!
//! # Stored frames
//!
//! A stream of many frames whose encoder re-encodes slowly (zstd:chunked) may instead keep its
//! compressed frames ([`Encoding::ZstdStoredFrames`](crate::engine::recompress::Encoding),
//! `stored.rs`): `scan.rs` finds the frame boundaries from block headers, and the recipe's
//! stream is then the compressed stream itself.

mod dfast;
mod dfast_writer;
mod encoders;
mod fast;
mod header;
mod ingest;
mod lazy;
mod libzstd;
mod opt;
mod pull;
mod reps;
mod scan;
mod segmented;
mod splits;
mod stored;
#[cfg(test)]
mod tests;
mod v1_4_8;
mod window;

use serde::{Deserialize, Serialize};

pub use encoders::{encode_frame, FrameWriter, KpZstdLevel, ZstdEncoder};
pub use header::{parse_header, FrameHeader};
pub use ingest::{SegmentCores, ZstdDecoder};
pub use pull::FramesEncoder;
pub use scan::{scan_frames, FrameSpan};
pub use segmented::{SegmentBudget, SegmentReading, SEGMENT_THREADS};
pub use stored::{reencode_rate, StoredFrames, ZstdFrames, STORE_FRAMES_BELOW};

/// A zstd data frame's magic number.
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// The frame has a content checksum.
pub const FLAG_CHECKSUM: u8 = 1;
/// The frame header carries the content size.
pub const FLAG_CONTENT_SIZE: u8 = 2;
/// The writer flushed before ending the frame, so it ends with an empty last block.
pub const FLAG_FLUSHED: u8 = 4;
/// Largest skippable frame kept (zstd:chunked's table of contents is far below).
const MAX_SKIPPABLE: u64 = 64 << 20;
/// Largest number of frames in a stream (a zstd:chunked layer has about one per file).
const MAX_FRAMES: usize = 4 << 20;
/// Largest block a zstd block header may announce, and a block's largest plaintext (128 KiB).
const MAX_BLOCK: u64 = 128 << 10;

/// Whether `b` starts with a skippable frame's magic number (`0x184D2A5?`, little-endian).
pub fn is_skippable(b: &[u8]) -> bool {
    b.len() >= 4 && b[0] & 0xf0 == 0x50 && b[1..4] == [0x2a, 0x4d, 0x18]
}
/// One frame of a zstd stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ZstdPart {
    /// A data frame: uncompressed length, compressed length, flags (`FLAG_*`).
    Frame(u64, u64, u8),
    /// A data frame whose first block was cut short at the last number (plaintext bytes):
    /// the writer was given those bytes by `Write`, then the rest by `ReadFrom`, which
    /// writes out what is buffered first. containers/image does that when it compresses
    /// from local storage (podman, buildah push): the 8 bytes it peeked at to detect the
    /// compression, then the stream.
    CutFrame(u64, u64, u8, u64),
    /// A skippable frame, whole (magic, size, data).
    Skippable(#[serde(with = "hex_bytes")] Vec<u8>),
    /// A long data frame whose encoder can be restarted at the recorded blocks, to re-encode it
    /// in segments on several cores.
    Split(SplitFrame),
}

/// A data frame with the places a fresh encoder takes up its blocks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitFrame {
    pub raw: u64,
    pub comp: u64,
    pub flags: u8,
    /// As in [`ZstdPart::CutFrame`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut: Option<u64>,
    /// Segment starts after the first, each `[warm, start, comp_start]`: a fresh encoder fed
    /// the plaintext from `warm` (output discarded) writes the frame's blocks from plaintext
    /// offset `start`, which begin at `comp_start` of the frame's compressed bytes. All three
    /// are block boundaries and increase from one segment to the next.
    pub splits: Vec<[u64; 3]>,
}

impl ZstdPart {
    pub(super) fn raw_len(&self) -> u64 {
        match self {
            ZstdPart::Frame(raw, ..) | ZstdPart::CutFrame(raw, ..) => *raw,
            ZstdPart::Split(f) => f.raw,
            ZstdPart::Skippable(_) => 0,
        }
    }

    pub(super) fn comp_len(&self) -> u64 {
        match self {
            ZstdPart::Frame(_, comp, ..) | ZstdPart::CutFrame(_, comp, ..) => *comp,
            ZstdPart::Split(f) => f.comp,
            ZstdPart::Skippable(b) => b.len() as u64,
        }
    }

    /// How a data frame is written (None for a skippable frame).
    pub(super) fn shape(&self) -> Option<FrameShape> {
        match *self {
            ZstdPart::Frame(_, _, flags) => Some(FrameShape { flags, cut: None }),
            ZstdPart::CutFrame(_, _, flags, cut) => Some(FrameShape {
                flags,
                cut: Some(cut),
            }),
            ZstdPart::Split(ref f) => Some(FrameShape {
                flags: f.flags,
                cut: f.cut,
            }),
            ZstdPart::Skippable(_) => None,
        }
    }

    /// The part without segments: the frame re-encoded from start to end.
    pub fn unsplit(&self) -> ZstdPart {
        match self {
            ZstdPart::Split(f) => {
                ZstdPart::frame(f.raw, f.comp, self.shape().expect("a data frame"))
            }
            p => p.clone(),
        }
    }

    /// The recorded segment starts of a data frame (empty if it has none).
    pub fn splits(&self) -> &[[u64; 3]] {
        match self {
            ZstdPart::Split(f) => &f.splits,
            _ => &[],
        }
    }

    /// A data frame's part, with its segment starts if it has any.
    pub(super) fn split_frame(
        raw_len: u64,
        comp_len: u64,
        shape: FrameShape,
        splits: Vec<[u64; 3]>,
    ) -> ZstdPart {
        if splits.is_empty() {
            return ZstdPart::frame(raw_len, comp_len, shape);
        }
        ZstdPart::Split(SplitFrame {
            raw: raw_len,
            comp: comp_len,
            flags: shape.flags,
            cut: shape.cut,
            splits,
        })
    }

    /// A data frame's part.
    pub(super) fn frame(raw_len: u64, comp_len: u64, shape: FrameShape) -> ZstdPart {
        match shape.cut {
            None => ZstdPart::Frame(raw_len, comp_len, shape.flags),
            Some(cut) => ZstdPart::CutFrame(raw_len, comp_len, shape.flags, cut),
        }
    }
}

/// How a data frame was written besides its encoder: its flags (`FLAG_*`) and where, if
/// anywhere, its first block was cut short.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameShape {
    pub flags: u8,
    pub cut: Option<u64>,
}

impl FrameShape {
    pub fn flags(flags: u8) -> FrameShape {
        FrameShape { flags, cut: None }
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <&str>::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}
