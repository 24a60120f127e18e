//! Exact re-compression: inflate a layer at ingest while learning how to re-create its exact
//! compressed bytes, and re-encode them on pull.
//!
//! Covered here: uncompressed streams; gzip written by Go's compress/gzip at every level
//! (Docker Engine, BuildKit, containerd, ggcr; see [`super::goflate`]); gzip written by
//! klauspost/pgzip at every level (podman, buildah, skopeo, umoci; see [`super::kpflate`]);
//! eStargz (many Go members: one per file payload chunk, the TOC, and an empty footer member
//! whose header carries an Extra field, kept verbatim like every header);
//! gzip written by zlib (Python's gzip/zlib and other
//! zlib-based tools) at levels 1-9 with the default memLevel 8 and strategy, or by pigz (levels
//! 1-9, 128 KiB blocks; see [`super::pigz`]), one or more members, header and trailer stored
//! verbatim, bounded trailing bytes (GNU gzip is not zlib and stays raw); zstd streams of one or
//! more frames and skippable frames (see [`super::zstd_frames`]). The parameters are chosen by a probe over the first [`PROBE`] bytes of each member;
//! the whole stream is proven only by the full restore of verify-before-discard. Anything else
//! is [`NotExact`] and the layer stays raw.

use super::deflate_probe::{probe_deflater, unknown_deflate, Deflater, Probed, UMOCI_BLOCK};
use super::goflate;
use super::inflate::BlockInflate;
use super::kpflate;
use super::zstd_frames::{ZstdDecoder, ZstdEncoder, ZstdPart};
use serde::{Deserialize, Serialize};

/// Uncompressed bytes of a member used to find its parameters.
pub const PROBE: usize = 4 << 20;
/// Plaintext between the block boundaries recorded for parallel re-encoding.
pub const SPLIT_EVERY: u64 = 4 << 20;
/// Trailing bytes after the last gzip member kept verbatim; more means raw.
const MAX_TRAILING: usize = 64 << 10;

/// The compression of a blob, identified from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn detect(prefix: &[u8]) -> Compression {
        if prefix.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if prefix.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// How to re-create the exact compressed stream from the uncompressed one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Encoding {
    None,
    Gzip {
        members: Vec<GzipMember>,
        trailing: Vec<u8>,
    },
    /// One libzstd frame (recipes written before [`Encoding::ZstdFrames`]; still read).
    Zstd {
        level: i32,
        checksum: bool,
        /// The frame header carries the content size (pledged to the encoder).
        content_size: bool,
        raw_len: u64,
    },
    /// A stream of zstd frames (see [`super::zstd_frames`]).
    ZstdFrames {
        encoder: ZstdEncoder,
        parts: Vec<ZstdPart>,
    },
    /// A zstd stream of many frames kept as its compressed frames: the recipe's stream is the
    /// compressed stream itself, split at frame boundaries, and a pull sends it as stored,
    /// without re-encoding. zstd:chunked writes a frame per file at klauspost's slowest level,
    /// and an unchanged file gives the same frame in every version, so its frames deduplicate
    /// as they are (see `--zstd-frames`).
    #[serde(rename = "zstdstoredframes")]
    ZstdStoredFrames {
        /// Data frames in the stream.
        frames: u64,
        /// What wrote the stream's first data frames, when stowage knows the encoder.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        encoder: Option<ZstdEncoder>,
    },
}

impl Encoding {
    /// A short name for metrics and logs: `none`, `gzip-zlib-6`, `zstd-3`, ...
    pub fn label(&self) -> String {
        match self {
            Encoding::None => "none".into(),
            Encoding::Gzip { members, .. } => match members.first() {
                Some(GzipMember {
                    go:
                        Some(GoEncoder::Std {
                            level,
                            variant: GoStdVariant::Go1_27,
                        }),
                    ..
                }) => format!("gzip-go1.27-{level}"),
                Some(GzipMember {
                    go: Some(GoEncoder::Std { level, .. }),
                    ..
                }) => format!("gzip-go-{level}"),
                Some(GzipMember {
                    go: Some(GoEncoder::Pgzip { level, .. }),
                    ..
                }) => format!("gzip-pgzip-{level}"),
                Some(GzipMember {
                    go: Some(GoEncoder::Kpgzip { level, .. }),
                    ..
                }) => format!("gzip-kp-{level}"),
                Some(m) if m.pigz_block.is_some() => format!("gzip-pigz-{}", m.level),
                Some(m) => format!("gzip-zlib-{}", m.level),
                None => "gzip".into(),
            },
            Encoding::Zstd { level, .. } => format!("zstd-{level}"),
            Encoding::ZstdFrames { encoder, .. } => encoder.label(),
            Encoding::ZstdStoredFrames { .. } => "zstd-stored-frames".into(),
        }
    }

    /// Roughly how fast a layer in this encoding is re-created, in plaintext bytes per
    /// second: the restore speeds `benches/encoder-table` measured on a 2-core machine (README,
    /// "Benchmark"), by encoder family and level. Only the ratios matter (the hot tier keeps
    /// what is slow to re-create); a fixed table, not a measurement, so that equal encodings
    /// weigh the same and the tier stays least-recently-used among them.
    pub fn nominal_restore_rate(&self) -> f64 {
        let label = self.label();
        // The level is the label's number (`zstd-19-long`, `zstd-3-mt`, `gzip-zlib-6`).
        let level = label
            .split('-')
            .find_map(|l| l.parse::<i32>().ok())
            .unwrap_or(6);
        let mb_s = match label.as_str() {
            "none" | "zstd-stored-frames" => 500.0,
            "zstd-kp-fastest" => 187.0,
            "zstd-kp-default" => 122.0,
            "zstd-kp-better" => 35.0,
            "zstd-kp-best" => 28.0,
            l if l.starts_with("gzip-pgzip-") => 250.0,
            // One stream of Go's or klauspost's flate, on one core.
            l if l.starts_with("gzip-go") || l.starts_with("gzip-kp-") => {
                if level <= 6 {
                    118.0
                } else {
                    31.0
                }
            }
            l if l.starts_with("gzip-") => {
                if level <= 6 {
                    60.0
                } else {
                    20.0
                }
            }
            // libzstd levels; the optimal parser (16-19: ported from 1.5.5 or 1.5.7's own,
            // `zstd-19-mt-1.5.5` ingested at 2.3 MB/s by registry-bench on 2 cores).
            _ => match level {
                ..=9 => 150.0,
                10..=15 => 20.0,
                _ => 3.0,
            },
        };
        mb_s * 1e6
    }
}

/// One gzip member: header and trailer verbatim, the zlib level of its deflate stream, and how
/// many uncompressed bytes it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GzipMember {
    pub header: Vec<u8>,
    pub level: u32,
    pub raw_len: u64,
    pub trailer: [u8; 8],
    /// Written by pigz with this block size (else by plain zlib at `level`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pigz_block: Option<u32>,
    /// Written by a Go encoder (then `level` and `pigz_block` are unused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub go: Option<GoEncoder>,
    /// Block boundaries `[plaintext offset, bit offset]` about every [`SPLIT_EVERY`] bytes where
    /// the deflate stream can be re-encoded in parallel (Go levels 4-9, zlib levels 4-9).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub splits: Vec<[u64; 2]>,
    /// Bytes of its deflate stream (between header and trailer). With the header and trailer
    /// lengths it places every member in the compressed stream, so that a range is re-encoded
    /// from the start of the member it falls in (eStargz readers fetch one file's member at a
    /// time, and the footer first). Absent in recipes written before it was recorded: those
    /// resume in single-member streams only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deflate_len: Option<u64>,
}

/// The Go deflate encoders stowage reproduces, with the output variant they were matched
/// against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "lib", rename_all = "lowercase")]
pub enum GoEncoder {
    /// The standard library's compress/flate at `level` (-2..9), output as of Go 1.19.
    Std {
        level: i32,
        #[serde(default)]
        variant: GoStdVariant,
    },
    /// klauspost/pgzip 1.2.5 on klauspost/compress (the release `variant` names): independent
    /// blocks of `block` bytes, each with the previous block's last 16 KiB as dictionary.
    Pgzip {
        level: i32,
        block: u32,
        #[serde(default)]
        variant: PgzipVariant,
    },
    /// klauspost/compress/gzip (the release `variant` names): klauspost's flate as one
    /// stream, no pgzip blocks, under pgzip's header (the MTIME of the zero `time.Time`)
    /// unless the writer set one.
    Kpgzip {
        level: i32,
        #[serde(default)]
        variant: PgzipVariant,
    },
}

/// Which releases of Go's compress/flate write the bytes an encoder reproduces. Established by
/// running each release's encoder on the same inputs (README, "Exact re-compression").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum GoStdVariant {
    /// Go 1.8 through 1.26 (levels 1 and -2: streams over 1 GiB from Go 1.15). Go 1.27 ships
    /// klauspost's encoder instead.
    #[default]
    #[serde(rename = "go1.8-1.26")]
    Go1_8,
    /// Go 1.27's compress/flate: klauspost/compress's encoder as one stream (not pgzip
    /// blocks), re-encoded by [`super::kpflate`] as [`kpflate::KpVersion::Go1_27`]. Checked
    /// against the Go 1.27.3 release (CI builds with it); a stream is only ever recorded as
    /// this once re-encoding it reproduced it (the probe, then the full restore before the
    /// raw bytes are dropped).
    #[serde(rename = "go1.27")]
    Go1_27,
}

/// Which releases of klauspost/compress write the bytes [`super::kpflate`] reproduces (with
/// pgzip 1.2.5-1.2.6, whose framing did not change, and as one stream by
/// klauspost/compress/gzip). Established by compressing the same inputs with pgzip built
/// against each tag (`tests/flate_versions.rs`, `scripts/flate-versions`); a variant is named
/// by the first release that writes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PgzipVariant {
    /// klauspost/compress 1.15.11-1.15.14 at every level; 1.16.0-1.17.11 at every level but
    /// 7-9; 1.18.0 at every level but 4 and 7-9; 1.15.10 at every level but 1-3; 1.14.2-1.15.9
    /// at 7-9 and 1.12.3-1.15.9 at -2 (Huffman only), which they write alike.
    #[default]
    #[serde(rename = "klauspost1.15.12")]
    Klauspost1_15_12,
    /// klauspost/compress 1.16.0-1.18.0 at levels 7-9 and 1.18.0 at level 4 (at the others
    /// they write what [`PgzipVariant::Klauspost1_15_12`] does).
    #[serde(rename = "klauspost1.18.0")]
    Klauspost1_18_0,
    /// klauspost/compress 1.18.1 (retracted upstream) at every level. Levels 1-6 nearly always
    /// write what 1.18.2 does (they differ only where counting the end-of-block code tips a
    /// table-reuse decision), so a stream is recorded as this only when 1.18.2 fails.
    #[serde(rename = "klauspost1.18.1")]
    Klauspost1_18_1,
    /// klauspost/compress 1.18.2 through 1.19.1 (the latest checked) at every level.
    #[serde(rename = "klauspost1.18.2")]
    Klauspost1_18_2,
    /// klauspost/compress 1.15.0-1.15.9 at levels 0-6 (the default is 5), and 1.15.10 at 1-3.
    #[serde(rename = "klauspost1.15.0")]
    Klauspost1_15_0,
    /// klauspost/compress 1.14.3-1.14.4 at levels 0-6 (the default is 5).
    #[serde(rename = "klauspost1.14.3")]
    Klauspost1_14_3,
    /// klauspost/compress 1.14.0-1.14.2 at levels -2 to 6 (the default is 5), and 1.14.0-1.14.1
    /// at 7-9.
    #[serde(rename = "klauspost1.14.0")]
    Klauspost1_14_0,
    /// klauspost/compress 1.12.3-1.13.6 at levels 0-6 (the default is 5).
    #[serde(rename = "klauspost1.12.3")]
    Klauspost1_12_3,
    /// klauspost/compress 1.12.2 at levels 0-6 (the default is 5).
    #[serde(rename = "klauspost1.12.2")]
    Klauspost1_12_2,
    /// klauspost/compress 1.11.13-1.12.1 at levels 0-6 (the default is 5), and 1.12.2 at -2.
    #[serde(rename = "klauspost1.11.13")]
    Klauspost1_11_13,
    /// klauspost/compress 1.11.0-1.11.12 (and 1.10.3) at every level (the default is 5), and
    /// 1.11.13-1.13.6 at levels 7-9: umoci's `go.mod` pins 1.11.3.
    #[serde(rename = "klauspost1.11.0")]
    Klauspost1_11_0,
}

impl PgzipVariant {
    /// The encoder version that writes this variant's bytes.
    pub fn kp_version(self) -> kpflate::KpVersion {
        match self {
            PgzipVariant::Klauspost1_15_12 => kpflate::KpVersion::V1_15_12,
            PgzipVariant::Klauspost1_18_0 => kpflate::KpVersion::V1_18_0,
            PgzipVariant::Klauspost1_18_1 => kpflate::KpVersion::V1_18_1,
            PgzipVariant::Klauspost1_18_2 => kpflate::KpVersion::V1_18_2,
            PgzipVariant::Klauspost1_15_0 => kpflate::KpVersion::V1_15_0,
            PgzipVariant::Klauspost1_14_3 => kpflate::KpVersion::V1_14_3,
            PgzipVariant::Klauspost1_14_0 => kpflate::KpVersion::V1_14_0,
            PgzipVariant::Klauspost1_12_3 => kpflate::KpVersion::V1_12_3,
            PgzipVariant::Klauspost1_12_2 => kpflate::KpVersion::V1_12_2,
            PgzipVariant::Klauspost1_11_13 => kpflate::KpVersion::V1_11_13,
            PgzipVariant::Klauspost1_11_0 => kpflate::KpVersion::V1_11_0,
        }
    }

    /// The variants worth trying at `level` and `block`, most likely first given the first
    /// block header of the stream: a dynamic block declaring all 286 literal/length and 30
    /// distance codes is what 1.15.12 writes for a block that is not flushed; later releases
    /// trim them.
    pub(crate) fn candidates(level: i32, block: usize, deflate: &[u8]) -> Vec<PgzipVariant> {
        use PgzipVariant::*;
        let full_header = deflate.len() >= 2 && {
            let bits = u16::from_le_bytes([deflate[0], deflate[1]]);
            (bits >> 1) & 3 == 2 && (bits >> 3) & 31 == 29 && (bits >> 8) & 31 == 29
        };
        let mut v = if full_header {
            vec![Klauspost1_15_12, Klauspost1_18_2]
        } else {
            vec![Klauspost1_18_2, Klauspost1_15_12]
        };
        // 1.18.0 differs from 1.15.12 only at level 4 and the lazy levels.
        if matches!(level, 4 | 7..=9) {
            v.push(Klauspost1_18_0);
        }
        // Earlier releases, newest first: at levels 1-6, where they write other bytes than
        // 1.15.12 (the default, 5, above all), in the default blocks or umoci's 256 KiB (umoci
        // pins 1.11.3), which is what container tools use.
        if matches!(level, 1..=6) && matches!(block, kpflate::PGZIP_DEFAULT_BLOCK | UMOCI_BLOCK) {
            // 1.15.0-1.15.9 differ from 1.15.12 only at levels 1-3, 5 and 6.
            if level != 4 {
                v.push(Klauspost1_15_0);
            }
            v.extend([
                Klauspost1_14_3,
                Klauspost1_14_0,
                Klauspost1_12_3,
                Klauspost1_12_2,
                Klauspost1_11_13,
                Klauspost1_11_0,
            ]);
        }
        // Levels 7-9 of 1.14.0-1.14.1 and before 1.14.0 (all releases alike there, named by
        // the first), Huffman only before 1.12.3.
        if matches!(block, kpflate::PGZIP_DEFAULT_BLOCK | UMOCI_BLOCK) {
            match level {
                7..=9 => v.extend([Klauspost1_14_0, Klauspost1_11_0]),
                -2 => v.extend([Klauspost1_11_13, Klauspost1_11_0]),
                _ => {}
            }
        }
        // 1.18.1 differs from 1.18.2 at levels 1-6 only rarely: try it last.
        v.push(Klauspost1_18_1);
        v
    }
}

/// Why a stream cannot be re-created exactly (the layer is kept raw, with this reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotExact {
    #[error("corrupt {0}")]
    Corrupt(&'static str),
    /// Which encoder the gzip header points to and that it did not reproduce the stream (one
    /// of a few texts: it is a metric label); see `unknown_deflate`.
    #[error("{0}")]
    UnknownDeflateEncoder(&'static str),
    /// What was tried and what the frame header says (from a small set: it is a metric label).
    #[error("{0}")]
    UnknownZstdEncoder(String),
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
}

// ---- ingest: decompress and learn the parameters ------------------------------------------

/// Streaming decompressor that also records what [`Encoding`] re-creates its input.
pub enum LayerDecoder {
    None,
    Gzip(Box<GzipDecoder>),
    Zstd(Box<ZstdDecoder>),
}

impl LayerDecoder {
    pub fn new(c: Compression) -> LayerDecoder {
        match c {
            Compression::None => LayerDecoder::None,
            Compression::Gzip => LayerDecoder::Gzip(Box::default()),
            Compression::Zstd => LayerDecoder::Zstd(Box::default()),
        }
    }

    /// Decompress `input`, handing the output to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut dyn FnMut(&[u8])) -> Result<(), NotExact> {
        match self {
            LayerDecoder::None => {
                out(input);
                Ok(())
            }
            LayerDecoder::Gzip(g) => g.feed(input, out),
            LayerDecoder::Zstd(z) => z.feed(input, out),
        }
    }

    pub fn finish(self) -> Result<Encoding, NotExact> {
        self.finish_with_alternatives().map(|(e, _)| e)
    }

    /// The compressed stream is `len` bytes long: lets a long zstd frame be planned in
    /// segments for parallel re-encoding.
    pub fn set_stream_len(&mut self, len: u64) {
        if let LayerDecoder::Zstd(z) = self {
            z.set_stream_len(len);
        }
    }

    /// Plan a long zstd frame's segments as `cores` says (default:
    /// [`SegmentCores::Auto`](super::zstd_frames::SegmentCores::Auto)).
    pub fn set_segments(&mut self, cores: super::zstd_frames::SegmentCores) {
        if let LayerDecoder::Zstd(z) = self {
            z.set_segments(cores);
        }
    }

    /// The encoding, and others that re-created every byte ingest compared as it did, in the
    /// order to try them should the encoding not re-create the whole layer (ingest compares
    /// a long zstd frame's beginning only; see `ZstdDecoder::finish`).
    pub fn finish_with_alternatives(self) -> Result<(Encoding, Vec<Encoding>), NotExact> {
        match self {
            LayerDecoder::None => Ok((Encoding::None, Vec::new())),
            LayerDecoder::Gzip(g) => g.finish_with_alternatives(),
            LayerDecoder::Zstd(z) => {
                let (encoder, parts, others) = z.finish()?;
                // Segments are proven by verification only: the frames re-encoded whole come
                // next, and are what the other encoders are tried with.
                let unsplit: Vec<_> = parts.iter().map(ZstdPart::unsplit).collect();
                let split = unsplit != parts;
                let alternatives = (split.then_some(encoder).into_iter())
                    .chain(others)
                    .map(|encoder| Encoding::ZstdFrames {
                        encoder,
                        parts: unsplit.clone(),
                    })
                    .collect();
                Ok((Encoding::ZstdFrames { encoder, parts }, alternatives))
            }
        }
    }
}

/// Length of a complete gzip header at the start of `b`, `Ok(None)` if more bytes are needed.
fn gzip_header_len(b: &[u8]) -> Result<Option<usize>, NotExact> {
    if b.len() < 10 {
        return Ok(None);
    }
    if b[0] != 0x1f || b[1] != 0x8b || b[2] != 8 || b[3] & 0xe0 != 0 {
        return Err(NotExact::Corrupt("gzip header"));
    }
    let flg = b[3];
    let mut i = 10;
    if flg & 4 != 0 {
        if b.len() < i + 2 {
            return Ok(None);
        }
        i += 2 + u16::from_le_bytes([b[i], b[i + 1]]) as usize;
    }
    for bit in [8u8, 16] {
        if flg & bit != 0 {
            match b.get(i..).and_then(|r| r.iter().position(|&x| x == 0)) {
                Some(p) => i += p + 1,
                None => return Ok(None),
            }
        }
    }
    if flg & 2 != 0 {
        i += 2;
    }
    Ok(if b.len() >= i { Some(i) } else { None })
}

enum GzState {
    Header,
    Body,
    Trailer,
    /// After a member: another member or trailing bytes.
    Between,
    Trailing,
}

struct MemberProbe {
    raw: Vec<u8>,
    deflate: Vec<u8>,
    raw_len: u64,
    /// Compressed bytes of the deflate stream so far.
    deflate_len: u64,
    crc: flate2::Crc,
    /// The encoder found once [`PROBE`] bytes were in (members longer than the probe).
    level: Option<Probed>,
    /// Block boundaries about [`SPLIT_EVERY`] apart, for parallel re-encoding.
    splits: Vec<goflate::Split>,
}

impl Default for MemberProbe {
    fn default() -> Self {
        MemberProbe {
            raw: Vec::new(),
            deflate: Vec::new(),
            raw_len: 0,
            deflate_len: 0,
            crc: flate2::Crc::new(),
            level: None,
            splits: Vec::new(),
        }
    }
}

pub struct GzipDecoder {
    state: GzState,
    pending: Vec<u8>,
    inflate: BlockInflate,
    probe: MemberProbe,
    header: Vec<u8>,
    members: Vec<GzipMember>,
    /// Per member, the other encoders verification may try should the found one not
    /// re-create it ([`Probed`]).
    alternatives: Vec<Vec<Deflater>>,
    trailing: Vec<u8>,
    outbuf: Vec<u8>,
    failed: Option<NotExact>,
}

impl Default for GzipDecoder {
    fn default() -> Self {
        GzipDecoder {
            state: GzState::Header,
            pending: Vec::new(),
            inflate: BlockInflate::new(),
            probe: MemberProbe::default(),
            header: Vec::new(),
            members: Vec::new(),
            alternatives: Vec::new(),
            trailing: Vec::new(),
            outbuf: vec![0; 256 * 1024],
            failed: None,
        }
    }
}

impl GzipDecoder {
    fn feed(&mut self, mut input: &[u8], out: &mut dyn FnMut(&[u8])) -> Result<(), NotExact> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.feed_inner(&mut input, out);
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    fn feed_inner(
        &mut self,
        input: &mut &[u8],
        out: &mut dyn FnMut(&[u8]),
    ) -> Result<(), NotExact> {
        while !input.is_empty() {
            match self.state {
                GzState::Header => {
                    self.pending.extend_from_slice(input);
                    *input = &[];
                    if let Some(n) = gzip_header_len(&self.pending)? {
                        self.header = self.pending[..n].to_vec();
                        let rest = self.pending.split_off(n);
                        self.pending.clear();
                        self.state = GzState::Body;
                        self.inflate = BlockInflate::new();
                        self.probe = MemberProbe::default();
                        self.feed_inner(&mut &rest[..], out)?;
                    }
                }
                GzState::Body => {
                    let step = self
                        .inflate
                        .run(input, &mut self.outbuf)
                        .map_err(|_| NotExact::Corrupt("deflate stream"))?;
                    let (used, made) = (step.consumed, step.produced);
                    let p = &mut self.probe;
                    p.deflate_len += used as u64;
                    if p.level.is_none() && p.deflate.len() < PROBE + (PROBE >> 3) {
                        p.deflate.extend_from_slice(&input[..used]);
                    }
                    let produced = &self.outbuf[..made];
                    if p.level.is_none() && p.raw.len() < PROBE {
                        let take = (PROBE - p.raw.len()).min(made);
                        p.raw.extend_from_slice(&produced[..take]);
                    }
                    if p.level.is_none()
                        && p.raw.len() == PROBE
                        && p.raw_len + made as u64 > PROBE as u64
                    {
                        // The member goes on past the probe: decide now, so a stream from
                        // another encoder is given up early instead of at its end.
                        p.level = Some(
                            probe_deflater(&self.header, &p.raw, &p.deflate, false)
                                .ok_or_else(|| unknown_deflate(&self.header))?,
                        );
                        p.raw = Vec::new();
                        p.deflate = Vec::new();
                    }
                    p.crc.update(produced);
                    p.raw_len += made as u64;
                    out(produced);
                    *input = &input[used..];
                    if let Some((plain, bit)) = step.boundary {
                        let last = self.probe.splits.last().map_or(0, |s| s.plain);
                        if plain >= last + SPLIT_EVERY {
                            self.probe.splits.push(goflate::Split { plain, bit });
                        }
                    }
                    if step.stream_end {
                        self.state = GzState::Trailer;
                    } else if used == 0 && made == 0 && step.boundary.is_none() {
                        return Err(NotExact::Corrupt("deflate stream"));
                    }
                }
                GzState::Trailer => {
                    let take = (8 - self.pending.len()).min(input.len());
                    self.pending.extend_from_slice(&input[..take]);
                    *input = &input[take..];
                    if self.pending.len() == 8 {
                        self.end_member()?;
                    }
                }
                GzState::Between => {
                    self.state = if input[0] == 0x1f {
                        GzState::Header
                    } else {
                        GzState::Trailing
                    };
                }
                GzState::Trailing => {
                    self.trailing.extend_from_slice(input);
                    *input = &[];
                    if self.trailing.len() > MAX_TRAILING {
                        return Err(NotExact::Unsupported("large trailing data after gzip"));
                    }
                }
            }
        }
        Ok(())
    }

    fn end_member(&mut self) -> Result<(), NotExact> {
        let mut trailer = [0u8; 8];
        trailer.copy_from_slice(&self.pending);
        self.pending.clear();
        let p = std::mem::take(&mut self.probe);
        let crc = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes"));
        let isize = u32::from_le_bytes(trailer[4..].try_into().expect("4 bytes"));
        if crc != p.crc.sum() || isize != p.raw_len as u32 {
            return Err(NotExact::Corrupt("gzip trailer (crc or size mismatch)"));
        }
        let Probed {
            deflater: found,
            alternatives,
        } = match p.level {
            Some(d) => d,
            None => {
                let complete = p.raw_len as usize == p.raw.len();
                probe_deflater(&self.header, &p.raw, &p.deflate, complete)
                    .ok_or_else(|| unknown_deflate(&self.header))?
            }
        };
        let splittable = match &found.go {
            Some(GoEncoder::Std {
                level,
                variant: GoStdVariant::Go1_8,
            }) => goflate::splittable(*level),
            Some(GoEncoder::Std { .. }) => false,
            Some(GoEncoder::Pgzip { .. } | GoEncoder::Kpgzip { .. }) => false,
            None => found.pigz_block.is_none() && (4..=9).contains(&found.level),
        };
        // Keep clear of the stream's end, where the window no longer slides.
        let limit = p.raw_len.saturating_sub(4 * 32768);
        let splits = if splittable {
            (p.splits.iter())
                .filter(|s| s.plain < limit)
                .map(|s| [s.plain, s.bit])
                .collect()
        } else {
            Vec::new()
        };
        self.alternatives.push(alternatives);
        self.members.push(GzipMember {
            header: std::mem::take(&mut self.header),
            level: found.level,
            raw_len: p.raw_len,
            trailer,
            pigz_block: found.pigz_block,
            go: found.go,
            splits,
            deflate_len: Some(p.deflate_len),
        });
        self.state = GzState::Between;
        Ok(())
    }

    /// The encoding, and for a stream of one member whose probe did not tell encoders apart
    /// the same with each of the others that wrote it alike, in order (re-encoded
    /// sequentially: the recorded block boundaries are the first encoder's).
    fn finish_with_alternatives(self) -> Result<(Encoding, Vec<Encoding>), NotExact> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        match self.state {
            GzState::Between | GzState::Trailing if !self.members.is_empty() => {
                let others = match &self.alternatives[..] {
                    [only] if self.members.len() == 1 => only.as_slice(),
                    _ => &[],
                };
                let alternatives = (others.iter())
                    .map(|d| Encoding::Gzip {
                        members: vec![GzipMember {
                            level: d.level,
                            pigz_block: d.pigz_block,
                            go: d.go.clone(),
                            splits: Vec::new(),
                            ..self.members[0].clone()
                        }],
                        trailing: self.trailing.clone(),
                    })
                    .collect();
                let encoding = Encoding::Gzip {
                    members: self.members,
                    trailing: self.trailing,
                };
                Ok((encoding, alternatives))
            }
            _ => Err(NotExact::Corrupt("truncated gzip stream")),
        }
    }
}

pub use super::deflate_probe::{probe_go127_level, probe_go_level, probe_pgzip, probe_zlib_level};

/// A whole gzip member as Go's compress/gzip (`variant`) writes `raw` at `level` in one
/// `Write` and `Close`: its header, the deflate stream, the CRC-32 and size (the twin of
/// [`kpflate::pgzip_gzip_version`]).
pub fn go_gzip(variant: GoStdVariant, level: i32, raw: &[u8]) -> Vec<u8> {
    let mut out = goflate::gzip_header(level).to_vec();
    out.extend(match variant {
        GoStdVariant::Go1_8 => goflate::deflate(level, raw).expect("a Go level"),
        GoStdVariant::Go1_27 => {
            kpflate::deflate_version(kpflate::KpVersion::Go1_27, level, raw).expect("a Go level")
        }
    });
    let mut crc = flate2::Crc::new();
    crc.update(raw);
    out.extend(crc.sum().to_le_bytes());
    out.extend((raw.len() as u32).to_le_bytes());
    out
}
pub use super::reencode::Reencoder;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::deflate_probe::PGZIP_MTIME;
    use std::io::Write;

    /// The hot tier weighs libzstd frames by their level whatever else their label says.
    #[test]
    fn libzstd_restore_rates_follow_the_level() {
        use crate::engine::zstd_frames::ZstdEncoder;
        let rate = |level, long, mt| {
            Encoding::ZstdFrames {
                encoder: ZstdEncoder::Libzstd {
                    level,
                    long,
                    mt,
                    fixed_blocks: false,
                    ported: false,
                    before_1_5_1: false,
                },
                parts: Vec::new(),
            }
            .nominal_restore_rate()
        };
        for (long, mt) in [(false, false), (true, false), (false, true)] {
            assert!(
                rate(19, long, mt) < rate(12, long, mt) && rate(12, long, mt) < rate(3, long, mt),
                "long {long}, mt {mt}"
            );
            assert_eq!(rate(19, long, mt), rate(19, false, false));
        }
    }

    fn text(n: usize) -> Vec<u8> {
        let words = [
            "layer", "chunk", "stowage", "registry", "delta", "zlib", "\n", "tar ",
        ];
        let mut x = 12345u64;
        let mut v = Vec::with_capacity(n + 16);
        while v.len() < n {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            v.extend_from_slice(words[(x >> 60) as usize % words.len()].as_bytes());
            v.push(b' ');
        }
        v.truncate(n);
        v
    }

    fn roundtrip(compressed: &[u8], raw: &[u8]) -> Result<Encoding, NotExact> {
        let mut d = LayerDecoder::new(Compression::detect(compressed));
        let mut got = Vec::new();
        for part in compressed.chunks(10_007) {
            d.feed(part, &mut |b| got.extend_from_slice(b))?;
        }
        let enc = d.finish()?;
        assert_eq!(got, raw, "decompressed bytes");
        let mut r = Reencoder::new(&enc);
        let mut out = Vec::new();
        for part in raw.chunks(65_536) {
            r.push(part, &mut out);
        }
        r.finish(&mut out);
        assert!(
            out == compressed,
            "re-encoded stream differs ({})",
            enc.label()
        );
        Ok(enc)
    }

    fn gzip(raw: &[u8], level: u32) -> Vec<u8> {
        let mut e = flate2::GzBuilder::new()
            .mtime(0)
            .filename("layer.tar")
            .write(Vec::new(), flate2::Compression::new(level));
        e.write_all(raw).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzip_levels_1_to_9() {
        let raw = text(3_000_000);
        for level in 1..=9 {
            let enc = roundtrip(&gzip(&raw, level), &raw).unwrap();
            match enc {
                Encoding::Gzip { members, .. } => {
                    // Levels that zlib implements identically may be found as each other.
                    assert_eq!(members.len(), 1);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn gzip_large_member_uses_the_probe() {
        let raw = text(PROBE * 2 + 12345);
        let enc = roundtrip(&gzip(&raw, 6), &raw).unwrap();
        assert_eq!(enc.label(), "gzip-zlib-6");
    }

    #[test]
    fn gzip_multi_member_empty_and_trailing() {
        let a = text(100_000);
        let b = text(50_000);
        let mut c = gzip(&a, 9);
        c.extend_from_slice(&gzip(b"", 6));
        c.extend_from_slice(&gzip(&b, 1));
        c.extend_from_slice(&[0u8; 100]);
        let mut raw = a.clone();
        raw.extend_from_slice(&b);
        let enc = roundtrip(&c, &raw).unwrap();
        match enc {
            Encoding::Gzip { members, trailing } => {
                assert_eq!(members.len(), 3);
                assert_eq!(trailing.len(), 100);
            }
            other => panic!("{other:?}"),
        }
        roundtrip(&gzip(b"", 6), b"").unwrap();
        roundtrip(&gzip(b"x", 6), b"x").unwrap();
    }

    #[test]
    fn a_foreign_encoder_is_refused_after_the_probe_not_at_the_end() {
        let raw = text(PROBE * 3);
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(0));
        e.write_all(&raw).unwrap();
        let stored = e.finish().unwrap();
        let mut d = LayerDecoder::new(Compression::Gzip);
        let mut fed = 0;
        let mut refused = None;
        for part in stored.chunks(64 * 1024) {
            fed += part.len();
            if let Err(e) = d.feed(part, &mut |_| {}) {
                refused = Some(e);
                break;
            }
        }
        assert!(
            matches!(&refused, Some(NotExact::UnknownDeflateEncoder(_))),
            "{refused:?}"
        );
        assert!(
            fed < stored.len() / 2,
            "refused after {fed} of {} bytes",
            stored.len()
        );
    }

    fn pigz(raw: &[u8], level: u32) -> Vec<u8> {
        use std::process::{Command, Stdio};
        let mut c = Command::new("pigz")
            .args([format!("-{level}").as_str(), "-c"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("pigz is installed by scripts/test");
        let mut stdin = c.stdin.take().unwrap();
        let data = raw.to_vec();
        let w = std::thread::spawn(move || stdin.write_all(&data).unwrap());
        let out = c.wait_with_output().unwrap();
        w.join().unwrap();
        out.stdout
    }

    #[test]
    fn pigz_layers_round_trip() {
        for (n, level) in [
            (300_000, 6),
            (PROBE + 777_777, 6),
            (PROBE * 2, 9),
            (1_000_000, 1),
        ] {
            let raw = text(n);
            let enc = roundtrip(&pigz(&raw, level), &raw).unwrap();
            assert_eq!(enc.label(), format!("gzip-pigz-{level}"));
        }
    }

    #[test]
    fn pgzip_variants_are_identified_and_restored() {
        use PgzipVariant::*;
        let raw = text(1_500_000);
        // With a stretch repeated in the first block: a match longer than 258 (which 1.14
        // cuts differently).
        let mut repeat = raw.clone();
        repeat.splice(200_000..200_000, raw[190_000..200_000].to_vec());
        // And skewed noise with a few matches: Huffman-only blocks, which releases before
        // 1.12.3 size otherwise.
        let mut x = 99u64;
        let mut noise: Vec<u8> = Vec::new();
        while noise.len() < 300_000 {
            if noise.len() % 500 == 499 {
                let at = noise.len() - 1000.min(noise.len());
                noise.extend_from_within(at..at + 12);
            }
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            noise.push(((x >> 58) + ((x >> 40) & 63)) as u8);
        }
        repeat.splice(1 << 20..1 << 20, noise.clone());
        repeat.splice(400_000..400_000, noise);
        // At level 5, 1.18.1 writes what 1.18.2 does (and is recorded as it) but for rare
        // table-reuse decisions; at level 9 every release writes its own bytes.
        for (level, variants) in [
            (
                5,
                &[
                    Klauspost1_15_12,
                    Klauspost1_18_2,
                    Klauspost1_15_0,
                    Klauspost1_14_3,
                    Klauspost1_12_3,
                    Klauspost1_12_2,
                    Klauspost1_11_13,
                    Klauspost1_11_0,
                ][..],
            ),
            (4, &[Klauspost1_18_0, Klauspost1_18_2][..]),
            // Before 1.15.11 levels 1-3 hashed 4 bytes (level 3 before 1.14.3 another way);
            // level 6 looked at the end of a match from its start (1.12.2) or not at all.
            (1, &[Klauspost1_15_12, Klauspost1_15_0][..]),
            (3, &[Klauspost1_15_12, Klauspost1_15_0, Klauspost1_14_0][..]),
            (
                6,
                &[Klauspost1_15_12, Klauspost1_15_0, Klauspost1_11_13][..],
            ),
            // Huffman only: 64 KiB blocks before 1.11.13, other new-table penalties before
            // 1.12.3.
            (
                -2,
                &[Klauspost1_18_2, Klauspost1_11_13, Klauspost1_11_0][..],
            ),
            (
                9,
                &[
                    Klauspost1_15_12,
                    Klauspost1_18_0,
                    Klauspost1_18_1,
                    Klauspost1_18_2,
                    Klauspost1_14_0,
                    Klauspost1_11_0,
                ][..],
            ),
        ] {
            let raw = if level == 5 { &repeat } else { &raw };
            let mut seen = Vec::new();
            for &v in variants {
                let gz = kpflate::pgzip_gzip_version(v.kp_version(), level, 1 << 20, raw).unwrap();
                let enc = roundtrip(&gz, raw).unwrap();
                let Encoding::Gzip { members, .. } = &enc else {
                    panic!("{enc:?}")
                };
                let Some(GoEncoder::Pgzip { variant, .. }) = members[0].go else {
                    panic!("{enc:?}")
                };
                // Releases that write the same bytes may be recorded as each other; here they
                // differ, so the one that wrote them is found.
                assert_eq!(variant, v, "level {level}");
                assert_eq!(enc.label(), format!("gzip-pgzip-{level}"));
                seen.push(gz);
            }
            for (i, a) in seen.iter().enumerate() {
                assert!(
                    seen[i + 1..].iter().all(|b| a != b),
                    "level {level}: same bytes"
                );
            }
        }
        // umoci's blocks (256 KiB) from its pinned klauspost 1.11.3, restored exactly (by
        // 1.11.13's variant: in these blocks both write the same bytes).
        let gz = kpflate::pgzip_gzip_version(Klauspost1_11_0.kp_version(), 5, 256 << 10, &repeat)
            .unwrap();
        let enc = roundtrip(&gz, &repeat).unwrap();
        let Encoding::Gzip { members, .. } = &enc else {
            panic!("{enc:?}")
        };
        assert!(
            matches!(
                members[0].go,
                Some(GoEncoder::Pgzip {
                    level: 5,
                    block: 262_144,
                    variant: Klauspost1_11_0 | Klauspost1_11_13
                })
            ),
            "{enc:?}"
        );
        // A recipe of an earlier version (no variant) restores as 1.15.12.
        let m: GoEncoder =
            serde_json::from_str(r#"{"lib":"pgzip","level":5,"block":1048576}"#).unwrap();
        assert_eq!(
            m,
            GoEncoder::Pgzip {
                level: 5,
                block: 1 << 20,
                variant: Klauspost1_15_12
            }
        );
        let names: Vec<String> = [
            Klauspost1_15_12,
            Klauspost1_18_0,
            Klauspost1_18_1,
            Klauspost1_18_2,
        ]
        .iter()
        .map(|v| serde_json::to_string(v).unwrap())
        .collect();
        assert_eq!(
            names,
            [
                "\"klauspost1.15.12\"",
                "\"klauspost1.18.0\"",
                "\"klauspost1.18.1\"",
                "\"klauspost1.18.2\""
            ]
        );
    }

    #[test]
    fn go127_streams_are_identified_and_restored() {
        let raw = text(1_200_000);
        for level in [-1, 1, 9] {
            let gz = go_gzip(GoStdVariant::Go1_27, level, &raw);
            let enc = roundtrip(&gz, &raw).unwrap();
            let shown = if level == -1 { 6 } else { level };
            assert_eq!(enc.label(), format!("gzip-go1.27-{shown}"));
        }
        // Longer than the probe: decided early, restored whole, no split points recorded.
        let raw = text(PROBE + 300_000);
        let enc = roundtrip(&go_gzip(GoStdVariant::Go1_27, 6, &raw), &raw).unwrap();
        assert_eq!(enc.label(), "gzip-go1.27-6");
        let Encoding::Gzip { members, .. } = &enc else {
            panic!("{enc:?}")
        };
        assert!(members[0].splits.is_empty());
        assert_eq!(
            serde_json::to_string(&GoStdVariant::Go1_27).unwrap(),
            "\"go1.27\""
        );
    }

    /// klauspost/compress/gzip: one stream of klauspost's flate under pgzip's header, from
    /// releases of several eras, found and restored; its recipe names the library and release.
    #[test]
    fn kpgzip_streams_are_identified_and_restored() {
        let raw = text(PROBE + 300_000);
        let cases = [
            (PgzipVariant::Klauspost1_15_12, [1, 5, 6, 9]),
            (PgzipVariant::Klauspost1_18_2, [1, 3, 6, 9]),
            (PgzipVariant::Klauspost1_14_0, [2, 5, 6, 7]),
            (PgzipVariant::Klauspost1_11_0, [1, 3, 4, 8]),
        ];
        for (variant, levels) in cases {
            for level in levels {
                let mut gz = kpflate::pgzip_header(level).to_vec();
                gz.extend(kpflate::deflate_version(variant.kp_version(), level, &raw).unwrap());
                let mut crc = flate2::Crc::new();
                crc.update(&raw);
                gz.extend(crc.sum().to_le_bytes());
                gz.extend((raw.len() as u32).to_le_bytes());
                let enc = roundtrip(&gz, &raw).unwrap();
                assert_eq!(enc.label(), format!("gzip-kp-{level}"), "{variant:?}");
            }
        }
        let member = GoEncoder::Kpgzip {
            level: 6,
            variant: PgzipVariant::Klauspost1_15_12,
        };
        let json = serde_json::to_string(&member).unwrap();
        assert_eq!(
            json,
            r#"{"lib":"kpgzip","level":6,"variant":"klauspost1.15.12"}"#
        );
        assert_eq!(serde_json::from_str::<GoEncoder>(&json).unwrap(), member);
    }

    #[test]
    fn zstd_levels() {
        let raw = text(1_000_000);
        for level in [1, 3, 9, 19] {
            let c = zstd::stream::encode_all(&raw[..], level).unwrap();
            roundtrip(&c, &raw).unwrap();
        }
        roundtrip(&zstd::stream::encode_all(&b""[..], 3).unwrap(), b"").unwrap();
    }

    #[test]
    fn single_frame_recipes_of_earlier_versions_still_restore() {
        let raw = text(300_000);
        let c = zstd::stream::encode_all(&raw[..], 5).unwrap();
        let old =
            r#"{"kind":"zstd","level":5,"checksum":false,"content_size":false,"raw_len":300000}"#;
        let enc: Encoding = serde_json::from_str(old).unwrap();
        let mut r = Reencoder::new(&enc);
        let mut out = Vec::new();
        r.push(&raw, &mut out);
        r.finish(&mut out);
        assert!(out == c);
    }

    #[test]
    fn uncompressed_is_identity() {
        let raw = text(10_000);
        assert_eq!(roundtrip(&raw, &raw).unwrap(), Encoding::None);
    }

    #[test]
    fn corrupt_and_foreign_streams_are_refused() {
        let raw = text(200_000);
        let mut g = gzip(&raw, 6);
        let n = g.len();
        g[n - 5] ^= 0xff; // size in the trailer
        let mut d = LayerDecoder::new(Compression::Gzip);
        assert!(matches!(d.feed(&g, &mut |_| {}), Err(NotExact::Corrupt(_))));
        assert!(matches!(d.finish(), Err(NotExact::Corrupt(_))));

        let g = gzip(&raw, 6);
        let mut d = LayerDecoder::new(Compression::Gzip);
        d.feed(&g[..g.len() / 2], &mut |_| {}).unwrap();
        assert!(matches!(d.finish(), Err(NotExact::Corrupt(_))), "truncated");

        let mut g = gzip(&raw, 6);
        g[30] ^= 0x55; // inside the deflate stream
        let mut d = LayerDecoder::new(Compression::Gzip);
        let fed = d.feed(&g, &mut |_| {});
        assert!(fed.is_err() || d.finish().is_err());

        // A deflate stream from another encoder (miniz-style stored blocks) is not zlib's.
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(0));
        e.write_all(&raw).unwrap();
        let stored = e.finish().unwrap();
        let mut d = LayerDecoder::new(Compression::Gzip);
        assert_eq!(d.feed(&stored, &mut |_| {}), Err(unknown_deflate(&stored)));
        assert_eq!(d.finish(), Err(unknown_deflate(&stored)));

        // A Go-style header (OS 255) names the Go versions tried; pgzip's MTIME, klauspost's.
        let mut go_like = stored.clone();
        go_like[9] = 255;
        let mut d = LayerDecoder::new(Compression::Gzip);
        let err = d.feed(&go_like, &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains("Go 1.27"), "{err}");
        let mut unix = stored.clone();
        unix[9] = 3;
        let mut d = LayerDecoder::new(Compression::Gzip);
        let err = d.feed(&unix, &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains("no zlib level"), "{err}");
        let mut pgzip_like = stored.clone();
        pgzip_like[4..8].copy_from_slice(&PGZIP_MTIME);
        let mut d = LayerDecoder::new(Compression::Gzip);
        let err = d.feed(&pgzip_like, &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains("1.10.3-1.19.1"), "{err}");
    }
}
