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
//! Each data frame is decoded with libzstd while its first [`PROBE`] bytes (plain and
//! compressed) are kept. The first frame's encoder is found by trying candidates (see
//! [`candidates`]) on that probe; every later frame must be re-created by the same encoder.
//! A frame that ends within the probe is compared whole, including how it ends; a longer one
//! is compared on its beginning, and verify-before-discard proves the rest. Frame header
//! facts (checksum, content size) are read from the frame and recorded, not guessed.
//!
//! # Recipe (part of the layer recipe's encoding JSON, `kind: "zstdframes"`)
//!
//! ```text
//! { "kind": "zstdframes", "encoder": {"lib": "libzstd", "level": 3} | null,
//!   "parts": [ [raw_len, compressed_len, flags],     a data frame
//!              "50 2a 4d 18 ... (hex)",              a skippable frame, whole
//!              ... ] }
//! ```
//!
//! `flags` is a bit set: [`FLAG_CHECKSUM`], [`FLAG_CONTENT_SIZE`], [`FLAG_FLUSHED`].
//! Frames' compressed lengths let a range request start re-encoding at the frame it falls in
//! (partial pulls of zstd:chunked ask for single files' frames).

use std::io::Write;

use serde::{Deserialize, Serialize};
use zstd::stream::raw::Operation;

use super::kpzstd::{KpLevel, KpOptions, KpStreamEncoder};
use super::recompress::{NotExact, PROBE};

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

/// Whether `b` starts with a skippable frame's magic number (`0x184D2A5?`, little-endian).
pub fn is_skippable(b: &[u8]) -> bool {
    b.len() >= 4 && b[0] & 0xf0 == 0x50 && b[1..4] == [0x2a, 0x4d, 0x18]
}

/// Which encoder wrote the data frames of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "lib", rename_all = "lowercase")]
pub enum ZstdEncoder {
    /// The libzstd stowage links (1.5.7), at `level`, single-threaded; `long`: long-distance
    /// matching with a 128 MiB window (`zstd --long`).
    Libzstd {
        level: i32,
        #[serde(default, skip_serializing_if = "is_false")]
        long: bool,
    },
    /// klauspost/compress/zstd's streaming `Encoder` at `level`, with the options container
    /// tools leave at their defaults (see [`super::kpzstd`]).
    Klauspost {
        level: KpZstdLevel,
        #[serde(default)]
        variant: KpZstdVariant,
    },
}

/// klauspost/compress/zstd's encoder levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KpZstdLevel {
    Fastest,
    Default,
    Better,
    Best,
}

impl KpZstdLevel {
    fn kp(self) -> KpLevel {
        match self {
            KpZstdLevel::Fastest => KpLevel::Fastest,
            KpZstdLevel::Default => KpLevel::Default,
            KpZstdLevel::Better => KpLevel::Better,
            KpZstdLevel::Best => KpLevel::Best,
        }
    }

    fn from_kp(l: KpLevel) -> KpZstdLevel {
        match l {
            KpLevel::Fastest => KpZstdLevel::Fastest,
            KpLevel::Default => KpZstdLevel::Default,
            KpLevel::Better => KpZstdLevel::Better,
            KpLevel::Best => KpZstdLevel::Best,
        }
    }

    /// Most used first: containers/image, containers/storage and BuildKit default to zstd
    /// level 3, `SpeedDefault`.
    const ALL: [KpZstdLevel; 4] = [
        KpZstdLevel::Default,
        KpZstdLevel::Fastest,
        KpZstdLevel::Better,
        KpZstdLevel::Best,
    ];
}

/// Which releases of klauspost/compress write the bytes [`super::kpzstd`] reproduces.
/// Established by building every release's encoder and comparing outputs (README, "Exact
/// re-compression").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum KpZstdVariant {
    /// klauspost/compress 1.15.12: the same bytes as 1.14.2-1.16.3 at `SpeedDefault`,
    /// 1.14.3-1.16.3 at `SpeedFastest`, 1.15.10-1.16.3 at `SpeedBetterCompression`,
    /// 1.14.2-1.15.12 at `SpeedBestCompression` (Debian's skopeo, podman and buildah link
    /// 1.15.12).
    #[default]
    #[serde(rename = "klauspost1.15.12")]
    Klauspost1_15_12,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Window log of `zstd --long`.
const LONG_WINDOW_LOG: u32 = 27;

impl ZstdEncoder {
    /// libzstd at `level`, single-threaded, no long-distance matching.
    pub fn libzstd(level: i32) -> ZstdEncoder {
        ZstdEncoder::Libzstd { level, long: false }
    }

    /// A short name for metrics and logs: `zstd-3`, `zstd-19-long`, ...
    pub fn label(&self) -> String {
        match self {
            ZstdEncoder::Libzstd { level, long } => {
                format!("zstd-{level}{}", if *long { "-long" } else { "" })
            }
            ZstdEncoder::Klauspost { level, .. } => {
                format!("zstd-kp-{}", level.kp().name())
            }
        }
    }
}

/// One frame of a zstd stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ZstdPart {
    /// A data frame: uncompressed length, compressed length, flags (`FLAG_*`).
    Frame(u64, u64, u8),
    /// A skippable frame, whole (magic, size, data).
    Skippable(#[serde(with = "hex_bytes")] Vec<u8>),
}

impl ZstdPart {
    fn raw_len(&self) -> u64 {
        match self {
            ZstdPart::Frame(raw, _, _) => *raw,
            ZstdPart::Skippable(_) => 0,
        }
    }

    fn comp_len(&self) -> u64 {
        match self {
            ZstdPart::Frame(_, comp, _) => *comp,
            ZstdPart::Skippable(b) => b.len() as u64,
        }
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

// ---- frame headers -------------------------------------------------------------------------

/// What a data frame's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub checksum: bool,
    pub content_size: Option<u64>,
    /// log2 of the window size (None for single-segment frames, whose window is their size).
    pub window_log: Option<u32>,
}

impl FrameHeader {
    fn flags(&self) -> u8 {
        let mut f = 0;
        if self.checksum {
            f |= FLAG_CHECKSUM;
        }
        if self.content_size.is_some() {
            f |= FLAG_CONTENT_SIZE;
        }
        f
    }

    /// "window 8 MiB, checksum, content size unknown": for a raw reason (a metric label, so
    /// from a small set).
    fn describe(&self) -> String {
        let window = match self.window_log {
            Some(w) if w >= 20 => format!("window {} MiB", 1u64 << (w - 20)),
            Some(w) => format!("window {} KiB", 1u64 << (w - 10)),
            None => "single segment".to_string(),
        };
        let check = if self.checksum {
            "checksum"
        } else {
            "no checksum"
        };
        let size = match self.content_size {
            Some(_) => "content size in the header",
            None => "content size unknown",
        };
        format!("{window}, {check}, {size}")
    }
}

/// Parse a data frame header at the start of `b`; `Ok(None)` if more bytes are needed.
pub fn parse_header(b: &[u8]) -> Result<Option<FrameHeader>, NotExact> {
    if b.len() < 5 {
        return Ok(None);
    }
    if b[..4] != ZSTD_MAGIC {
        return Err(NotExact::Corrupt("zstd frame"));
    }
    let fhd = b[4];
    let fcs_flag = fhd >> 6;
    let single = fhd & 0x20 != 0;
    if fhd & 0x08 != 0 {
        return Err(NotExact::Corrupt("zstd frame header (reserved bit set)"));
    }
    if fhd & 0x03 != 0 {
        return Err(NotExact::Unsupported("zstd frame with a dictionary"));
    }
    let mut i = 5;
    let window_log = if single {
        None
    } else {
        let Some(&wd) = b.get(5) else {
            return Ok(None);
        };
        i += 1;
        Some(10 + u32::from(wd >> 3))
    };
    let fcs_len = match (fcs_flag, single) {
        (0, true) => 1,
        (0, false) => 0,
        (1, _) => 2,
        (2, _) => 4,
        _ => 8,
    };
    if b.len() < i + fcs_len {
        return Ok(None);
    }
    let content_size = (fcs_len > 0).then(|| {
        let mut v = [0u8; 8];
        v[..fcs_len].copy_from_slice(&b[i..i + fcs_len]);
        u64::from_le_bytes(v) + if fcs_len == 2 { 256 } else { 0 }
    });
    Ok(Some(FrameHeader {
        checksum: fhd & 0x04 != 0,
        content_size,
        window_log,
    }))
}

/// libzstd's window log at each level 1-19 when the content size is not known (its
/// `ZSTD_defaultCParameters` for large inputs): which levels could have written a frame.
const LIBZSTD_WINDOW_LOG: [u32; 19] = [
    19, 20, 21, 21, 21, 21, 21, 21, 22, 22, 22, 22, 22, 22, 22, 22, 23, 23, 23,
];

/// Encoders to try on a frame, most likely first.
fn candidates(h: &FrameHeader) -> Vec<ZstdEncoder> {
    let long = h.window_log == Some(LONG_WINDOW_LOG);
    let levels = || {
        std::iter::once(3)
            .chain((1..=19).filter(|&l| l != 3))
            .filter(move |&level| match (h.content_size, h.window_log) {
                _ if long => true,
                // Without a content size the window is the level's own.
                (None, Some(w)) => LIBZSTD_WINDOW_LOG[level as usize - 1] == w,
                _ => true,
            })
    };
    let klauspost = KpZstdLevel::ALL
        .into_iter()
        // The levels the port has.
        .filter(|l| KpStreamEncoder::new(&kp_options(*l)).is_ok())
        .map(|level| ZstdEncoder::Klauspost {
            level,
            variant: KpZstdVariant::default(),
        });
    klauspost
        .chain(levels().map(|level| ZstdEncoder::Libzstd { level, long }))
        .collect()
}

/// What container tools set: the level, nothing else.
fn kp_options(level: KpZstdLevel) -> KpOptions {
    KpOptions {
        level: level.kp(),
        ..KpOptions::default()
    }
}

// ---- writing one frame ---------------------------------------------------------------------

/// Writes one data frame as its encoder did.
pub struct FrameWriter {
    inner: Writer,
    flushed: bool,
}

enum Writer {
    Libzstd(Box<zstd::stream::write::Encoder<'static, Vec<u8>>>),
    Klauspost(Box<KpStreamEncoder>),
}

impl FrameWriter {
    /// A writer of a frame of `raw_len` bytes (used only if the header carries it).
    pub fn new(enc: &ZstdEncoder, raw_len: u64, flags: u8) -> FrameWriter {
        use zstd::zstd_safe::CParameter;
        let content_size = flags & FLAG_CONTENT_SIZE != 0;
        let inner = match *enc {
            ZstdEncoder::Libzstd { level, long } => {
                let mut z =
                    zstd::stream::write::Encoder::new(Vec::new(), level).expect("zstd encoder");
                if long {
                    z.set_parameter(CParameter::EnableLongDistanceMatching(true))
                        .expect("zstd parameter");
                    z.set_parameter(CParameter::WindowLog(LONG_WINDOW_LOG))
                        .expect("zstd parameter");
                }
                z.set_parameter(CParameter::ChecksumFlag(flags & FLAG_CHECKSUM != 0))
                    .expect("zstd parameter");
                z.set_parameter(CParameter::ContentSizeFlag(content_size))
                    .expect("zstd parameter");
                if content_size {
                    z.set_pledged_src_size(Some(raw_len))
                        .expect("zstd pledged size");
                }
                Writer::Libzstd(Box::new(z))
            }
            ZstdEncoder::Klauspost { level, .. } => {
                let crc = flags & FLAG_CHECKSUM != 0;
                let mut k = kp_pool::take(level, crc);
                // Reset, or ResetContentSize: a streamed frame that declares its size.
                k.reset(content_size.then_some(raw_len));
                Writer::Klauspost(k)
            }
        };
        FrameWriter {
            inner,
            flushed: flags & FLAG_FLUSHED != 0,
        }
    }

    pub fn write(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        match &mut self.inner {
            Writer::Libzstd(z) => {
                z.write_all(raw).expect("writing to memory");
                out.append(z.get_mut());
            }
            Writer::Klauspost(k) => k.write(raw, out),
        }
    }

    pub fn finish(self, out: &mut Vec<u8>) {
        match self.inner {
            Writer::Libzstd(mut z) => {
                if self.flushed {
                    z.flush().expect("flushing in memory");
                }
                out.extend_from_slice(&z.finish().expect("finishing in memory"));
            }
            Writer::Klauspost(mut k) => {
                if self.flushed {
                    k.flush(out);
                }
                k.close(out);
                kp_pool::put(k);
            }
        }
    }
}

/// klauspost encoders kept per thread between frames: a zstd:chunked layer is thousands of
/// small frames, and an encoder's match tables are 1-34 MiB to allocate and clear. Go's own
/// writer reuses one encoder across frames (`Reset`): entries left from an earlier frame
/// are more than a window behind and never match, so the bytes are a new encoder's.
mod kp_pool {
    use std::cell::RefCell;

    use super::{kp_options, KpStreamEncoder, KpZstdLevel};
    use crate::engine::kpzstd::KpOptions;

    type Pooled = (KpZstdLevel, bool, Box<KpStreamEncoder>);

    thread_local! {
        static POOL: RefCell<Vec<Pooled>> = const { RefCell::new(Vec::new()) };
    }

    /// At most this many idle encoders per thread.
    const KEEP: usize = 2;

    pub(super) fn take(level: KpZstdLevel, crc: bool) -> Box<KpStreamEncoder> {
        let pooled = POOL.with(|p| {
            let mut p = p.borrow_mut();
            let i = p.iter().position(|(l, c, _)| *l == level && *c == crc)?;
            Some(p.swap_remove(i).2)
        });
        pooled.unwrap_or_else(|| {
            let opts = KpOptions {
                crc,
                ..kp_options(level)
            };
            Box::new(KpStreamEncoder::new(&opts).expect("level checked at ingest"))
        })
    }

    pub(super) fn put(k: Box<KpStreamEncoder>) {
        let (level, crc) = (k.level(), k.crc());
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() >= KEEP {
                p.remove(0);
            }
            p.push((KpZstdLevel::from_kp(level), crc, k));
        });
    }
}

/// The frame `enc` writes from all of `raw`.
pub fn encode_frame(enc: &ZstdEncoder, raw: &[u8], flags: u8) -> Vec<u8> {
    let mut w = FrameWriter::new(enc, raw.len() as u64, flags);
    let mut out = Vec::with_capacity(raw.len() / 3 + 64);
    w.write(raw, &mut out);
    w.finish(&mut out);
    out
}

/// The flags with which `enc` re-creates a frame, judged on its probe: all of it when
/// `complete`, else its beginning. `header_flags` come from the frame; whether it ends flushed
/// is tried.
fn frame_matches(
    enc: &ZstdEncoder,
    probe: &FrameProbe,
    header: &FrameHeader,
    complete: bool,
) -> Option<u8> {
    let flags = header.flags();
    let size = header.content_size.unwrap_or(probe.raw_len);
    if complete {
        let mut tries = vec![flags];
        if matches!(enc, ZstdEncoder::Klauspost { .. }) && flags & FLAG_CONTENT_SIZE != 0 {
            // klauspost writes a frame of less than a block with its size without being told
            // it: try that first.
            tries.insert(0, flags & !FLAG_CONTENT_SIZE);
        }
        if probe.may_be_flushed(header.checksum) {
            let flushed: Vec<u8> = tries.iter().map(|f| f | FLAG_FLUSHED).collect();
            tries.splice(0..0, flushed);
        }
        tries
            .into_iter()
            .find(|&f| encode_frame(enc, &probe.raw, f) == probe.comp)
    } else {
        let mut w = FrameWriter::new(enc, size, flags);
        let mut out = Vec::new();
        for piece in probe.raw.chunks(256 << 10) {
            w.write(piece, &mut out);
            if !probe.comp.starts_with(&out) {
                return None;
            }
        }
        // At least one block must be out and match.
        (out.len() > 16).then_some(flags)
    }
}

// ---- ingest ----------------------------------------------------------------------------------

/// The first bytes of a data frame, plain and compressed, and its last compressed bytes.
#[derive(Default)]
struct FrameProbe {
    raw: Vec<u8>,
    comp: Vec<u8>,
    raw_len: u64,
    comp_len: u64,
    tail: Vec<u8>,
    /// The beginning was already checked (the frame outgrew the probe).
    checked: Option<u8>,
}

impl FrameProbe {
    fn keep(&mut self, comp: &[u8], raw: &[u8]) {
        if self.checked.is_none() {
            if self.comp.len() < PROBE + (PROBE >> 3) {
                self.comp.extend_from_slice(comp);
            }
            if self.raw.len() < PROBE {
                let take = (PROBE - self.raw.len()).min(raw.len());
                self.raw.extend_from_slice(&raw[..take]);
            }
        }
        self.tail.extend_from_slice(comp);
        if self.tail.len() > 64 {
            self.tail.drain(..self.tail.len() - 16);
        }
        self.comp_len += comp.len() as u64;
        self.raw_len += raw.len() as u64;
    }

    /// Whether the frame ends with an empty raw last block (`01 00 00`), as a writer that
    /// flushed before closing leaves.
    fn may_be_flushed(&self, checksum: bool) -> bool {
        let end = self.tail.len() - if checksum { 4 } else { 0 };
        end >= 3 && self.tail[end - 3..end] == [1, 0, 0]
    }
}

enum St {
    /// Between frames: the next one's first bytes.
    Between,
    Data(FrameHeader, Box<FrameProbe>),
    /// Before a data frame's header is complete.
    DataHeader(Vec<u8>),
    Skippable {
        bytes: Vec<u8>,
        left: u64,
    },
}

/// Streaming decompressor of a zstd layer that records how to re-create it.
pub struct ZstdDecoder {
    st: St,
    pending: Vec<u8>,
    dec: zstd::stream::raw::Decoder<'static>,
    parts: Vec<ZstdPart>,
    encoder: Option<ZstdEncoder>,
    outbuf: Vec<u8>,
    failed: Option<NotExact>,
}

impl Default for ZstdDecoder {
    fn default() -> Self {
        ZstdDecoder {
            st: St::Between,
            pending: Vec::new(),
            dec: zstd::stream::raw::Decoder::new().expect("zstd decoder"),
            parts: Vec::new(),
            encoder: None,
            outbuf: vec![0; 256 * 1024],
            failed: None,
        }
    }
}

impl ZstdDecoder {
    pub fn feed(&mut self, input: &[u8], out: &mut dyn FnMut(&[u8])) -> Result<(), NotExact> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.feed_inner(input, out);
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    fn feed_inner(&mut self, mut input: &[u8], out: &mut dyn FnMut(&[u8])) -> Result<(), NotExact> {
        use zstd::stream::raw::{InBuffer, OutBuffer};
        while !input.is_empty() {
            match &mut self.st {
                St::Between => {
                    let need = 8 - self.pending.len().min(8);
                    let take = need.min(input.len());
                    self.pending.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if self.pending.len() < 4 {
                        continue;
                    }
                    if self.parts.len() >= MAX_FRAMES {
                        return Err(NotExact::Unsupported("more than 4 Mi zstd frames"));
                    }
                    if self.pending[..4] == ZSTD_MAGIC {
                        self.st = St::DataHeader(std::mem::take(&mut self.pending));
                    } else if is_skippable(&self.pending) {
                        if self.pending.len() < 8 {
                            continue;
                        }
                        let size = u32::from_le_bytes(self.pending[4..8].try_into().expect("4"));
                        if u64::from(size) > MAX_SKIPPABLE {
                            return Err(NotExact::Unsupported("skippable frame over 64 MiB"));
                        }
                        self.st = St::Skippable {
                            bytes: std::mem::take(&mut self.pending),
                            left: u64::from(size),
                        };
                        self.end_skippable();
                    } else {
                        return Err(NotExact::Unsupported(
                            "bytes after the last zstd frame that are not a frame",
                        ));
                    }
                }
                St::DataHeader(head) => {
                    let take = input.len().min(32);
                    head.extend_from_slice(&input[..take]);
                    let Some(h) = parse_header(head)? else {
                        input = &input[take..];
                        continue;
                    };
                    // Decode from the frame's first byte: put back what the header took.
                    let before = head.len() - take;
                    let head = std::mem::take(head);
                    self.st = St::Data(h, Box::default());
                    if before > 0 {
                        self.feed_inner(&head[..before], out)?;
                    }
                }
                St::Data(header, probe) => {
                    let mut inb = InBuffer::around(input);
                    let mut outb = OutBuffer::around(&mut self.outbuf[..]);
                    let hint = self
                        .dec
                        .run(&mut inb, &mut outb)
                        .map_err(|_| NotExact::Corrupt("zstd frame"))?;
                    let (used, made) = (inb.pos(), outb.pos());
                    let produced = &self.outbuf[..made];
                    probe.keep(&input[..used], produced);
                    out(produced);
                    input = &input[used..];
                    if probe.checked.is_none() && probe.raw.len() == PROBE && hint != 0 {
                        // The frame goes on past the probe: decide now, so a stream from an
                        // unknown encoder is given up early.
                        let h = *header;
                        let flags = self.check_frame(&h, false)?;
                        if let St::Data(_, p) = &mut self.st {
                            p.checked = Some(flags);
                            p.raw = Vec::new();
                            p.comp = Vec::new();
                        }
                    }
                    if hint == 0 {
                        self.end_frame()?;
                    } else if used == 0 && made == 0 {
                        return Err(NotExact::Corrupt("zstd frame"));
                    }
                }
                St::Skippable { bytes, left } => {
                    let take = (*left).min(input.len() as u64) as usize;
                    bytes.extend_from_slice(&input[..take]);
                    *left -= take as u64;
                    input = &input[take..];
                    self.end_skippable();
                }
            }
        }
        // Output the decoder could not hand over for want of room.
        while let St::Data(..) = self.st {
            let mut inb = InBuffer::around(&[]);
            let mut outb = OutBuffer::around(&mut self.outbuf[..]);
            let hint = self
                .dec
                .run(&mut inb, &mut outb)
                .map_err(|_| NotExact::Corrupt("zstd frame"))?;
            let made = outb.pos();
            if made == 0 && hint != 0 {
                break;
            }
            if let St::Data(_, probe) = &mut self.st {
                probe.keep(&[], &self.outbuf[..made]);
            }
            out(&self.outbuf[..made]);
            if hint == 0 {
                self.end_frame()?;
            }
        }
        Ok(())
    }

    fn end_skippable(&mut self) {
        if let St::Skippable { bytes, left: 0 } = &mut self.st {
            self.parts.push(ZstdPart::Skippable(std::mem::take(bytes)));
            self.st = St::Between;
        }
    }

    /// The flags of the frame being decoded, checked against the stream's encoder (found now
    /// if this is the first frame).
    fn check_frame(&mut self, header: &FrameHeader, complete: bool) -> Result<u8, NotExact> {
        let St::Data(_, probe) = &self.st else {
            unreachable!("checking a data frame");
        };
        if let Some(f) = probe.checked {
            return Ok(f);
        }
        if let Some(enc) = &self.encoder {
            return frame_matches(enc, probe, header, complete).ok_or_else(|| {
                NotExact::UnknownZstdEncoder(format!(
                    "a later zstd frame is not written like the first ({}; {})",
                    enc.label(),
                    header.describe()
                ))
            });
        }
        for enc in candidates(header) {
            if let Some(f) = frame_matches(&enc, probe, header, complete) {
                self.encoder = Some(enc);
                return Ok(f);
            }
        }
        Err(NotExact::UnknownZstdEncoder(format!(
            "no encoder stowage reproduces wrote the frame (klauspost/compress 1.15.12 at its \
             four levels and libzstd 1.5.7 at levels 1-19 tried; multi-threaded libzstd is \
             not reproduced; another version or writer?): {}",
            header.describe()
        )))
    }

    fn end_frame(&mut self) -> Result<(), NotExact> {
        let St::Data(header, probe) = &self.st else {
            unreachable!("ending a data frame");
        };
        let header = *header;
        if let Some(n) = header.content_size {
            if n != probe.raw_len {
                return Err(NotExact::Corrupt("zstd frame (content size mismatch)"));
            }
        }
        let complete = probe.raw_len == probe.raw.len() as u64 && probe.checked.is_none();
        let mut flags = self.check_frame(&header, complete)?;
        let St::Data(_, probe) = &self.st else {
            unreachable!("ending a data frame");
        };
        if !complete && probe.may_be_flushed(header.checksum) {
            // A long frame's end is not compared at ingest; an empty last block is what a
            // flush before closing leaves (verify-before-discard proves the guess).
            flags |= FLAG_FLUSHED;
        }
        self.parts
            .push(ZstdPart::Frame(probe.raw_len, probe.comp_len, flags));
        self.st = St::Between;
        self.dec
            .reinit()
            .map_err(|_| NotExact::Corrupt("zstd frame"))?;
        Ok(())
    }

    pub fn finish(self) -> Result<(ZstdEncoder, Vec<ZstdPart>), NotExact> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if !matches!(self.st, St::Between) || !self.pending.is_empty() {
            return Err(NotExact::Corrupt("truncated zstd stream"));
        }
        let encoder = match self.encoder {
            Some(e) => e,
            // Only skippable frames: nothing to encode, any encoder will do.
            None if !self.parts.is_empty() => ZstdEncoder::libzstd(3),
            None => return Err(NotExact::Corrupt("empty zstd stream")),
        };
        Ok((encoder, self.parts))
    }
}

// ---- pull ------------------------------------------------------------------------------------

/// Frames this large or larger are written as they stream in; smaller ones are gathered and
/// written several at a time on the rayon pool.
const BATCH: usize = 4 << 20;

/// Re-creates a zstd stream from its uncompressed bytes.
pub struct FramesEncoder {
    encoder: ZstdEncoder,
    parts: Vec<ZstdPart>,
    /// The next part not yet written or queued.
    next: usize,
    /// Queued small frames (and the skippable frames between them), with their plaintext.
    queue: Vec<usize>,
    queued_raw: Vec<u8>,
    /// Plaintext of the frame after the queued ones already in `queued_raw`.
    partial: usize,
    /// A large frame being streamed, and the plaintext it still takes.
    streaming: Option<(FrameWriter, u64)>,
}

impl FramesEncoder {
    pub fn new(encoder: ZstdEncoder, parts: Vec<ZstdPart>) -> FramesEncoder {
        FramesEncoder::resume_at(encoder, parts, 0)
    }

    fn resume_at(encoder: ZstdEncoder, parts: Vec<ZstdPart>, next: usize) -> FramesEncoder {
        FramesEncoder {
            encoder,
            parts,
            next,
            queue: Vec::new(),
            queued_raw: Vec::new(),
            partial: 0,
            streaming: None,
        }
    }

    /// A re-encoder starting at the frame that holds compressed byte `at`, with that frame's
    /// compressed and uncompressed offsets; None if `at` is in the first frame.
    pub fn resume(encoder: ZstdEncoder, parts: &[ZstdPart], at: u64) -> Option<(Self, u64, u64)> {
        let (mut comp, mut plain) = (0u64, 0u64);
        let mut k = 0;
        for (i, p) in parts.iter().enumerate() {
            if comp + p.comp_len() > at {
                break;
            }
            comp += p.comp_len();
            plain += p.raw_len();
            k = i + 1;
        }
        if k == 0 || k >= parts.len() {
            return None;
        }
        Some((
            FramesEncoder::resume_at(encoder, parts.to_vec(), k),
            comp,
            plain,
        ))
    }

    /// Add uncompressed bytes; compressed output is appended to `out`.
    pub fn push(&mut self, mut raw: &[u8], out: &mut Vec<u8>) {
        loop {
            if let Some((w, left)) = &mut self.streaming {
                let take = (*left).min(raw.len() as u64) as usize;
                w.write(&raw[..take], out);
                *left -= take as u64;
                raw = &raw[take..];
                if *left > 0 {
                    return;
                }
                let (w, _) = self.streaming.take().expect("streaming");
                w.finish(out);
            }
            let Some(part) = self.parts.get(self.next) else {
                // More input than the recipe describes: not ours to encode.
                self.drain(out);
                out.extend_from_slice(raw);
                return;
            };
            match *part {
                ZstdPart::Skippable(_) => {}
                ZstdPart::Frame(len, _, flags) if len >= BATCH as u64 => {
                    self.drain(out);
                    self.streaming = Some((FrameWriter::new(&self.encoder, len, flags), len));
                    self.next += 1;
                    continue;
                }
                ZstdPart::Frame(len, _, _) => {
                    let need = len as usize - self.partial;
                    if raw.len() < need {
                        self.queued_raw.extend_from_slice(raw);
                        self.partial += raw.len();
                        return;
                    }
                    self.queued_raw.extend_from_slice(&raw[..need]);
                    raw = &raw[need..];
                    self.partial = 0;
                }
            }
            self.queue.push(self.next);
            self.next += 1;
            if self.queued_raw.len() >= BATCH {
                self.drain(out);
            }
        }
    }

    /// Write the queued frames, several at a time.
    fn drain(&mut self, out: &mut Vec<u8>) {
        use rayon::prelude::*;
        let mut jobs = Vec::with_capacity(self.queue.len());
        let mut at = 0usize;
        for &i in &self.queue {
            let n = self.parts[i].raw_len() as usize;
            jobs.push((i, at, n));
            at += n;
        }
        let (parts, raw, encoder) = (&self.parts, &self.queued_raw, &self.encoder);
        let written: Vec<Vec<u8>> = jobs
            .par_iter()
            .map(|&(i, at, n)| match &parts[i] {
                ZstdPart::Frame(_, _, flags) => encode_frame(encoder, &raw[at..at + n], *flags),
                ZstdPart::Skippable(b) => b.clone(),
            })
            .collect();
        for w in written {
            out.extend_from_slice(&w);
        }
        self.queued_raw.drain(..at);
        self.queue.clear();
    }

    /// End of the uncompressed stream.
    pub fn finish(mut self, out: &mut Vec<u8>) {
        // Queues what holds no plaintext: skippable frames and empty frames at the end.
        self.push(&[], out);
        if let Some((w, _)) = self.streaming.take() {
            w.finish(out);
        }
        self.drain(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: usize, seed: u64) -> Vec<u8> {
        let words = ["frame", "skip", "zstd", "layer", "\n", "tar ", "chunk"];
        let mut x = seed;
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            v.extend_from_slice(words[(x >> 60) as usize % words.len()].as_bytes());
        }
        v.truncate(n);
        v
    }

    fn skippable(data: &[u8]) -> Vec<u8> {
        let mut v = vec![0x50, 0x2a, 0x4d, 0x18];
        v.extend_from_slice(&(data.len() as u32).to_le_bytes());
        v.extend_from_slice(data);
        v
    }

    /// Ingest then re-create, feeding odd piece sizes both ways.
    fn roundtrip(stream: &[u8], raw: &[u8]) -> Result<(ZstdEncoder, Vec<ZstdPart>), NotExact> {
        let mut d = ZstdDecoder::default();
        let mut got = Vec::new();
        for piece in stream.chunks(9_973) {
            d.feed(piece, &mut |b| got.extend_from_slice(b))?;
        }
        let (enc, parts) = d.finish()?;
        assert_eq!(got, raw, "decompressed bytes");
        let json = serde_json::to_string(&parts).unwrap();
        let parts: Vec<ZstdPart> = serde_json::from_str(&json).unwrap();
        for piece in [1usize << 20, 65_537, 777] {
            let mut e = FramesEncoder::new(enc, parts.clone());
            let mut out = Vec::new();
            for p in raw.chunks(piece) {
                e.push(p, &mut out);
            }
            e.finish(&mut out);
            assert!(
                out == stream,
                "re-created stream differs (pieces of {piece})"
            );
        }
        Ok((enc, parts))
    }

    #[test]
    fn libzstd_levels_and_flags() {
        let raw = text(1_000_000, 1);
        for level in [1, 3, 9, 19] {
            let c = zstd::stream::encode_all(&raw[..], level).unwrap();
            let (enc, _) = roundtrip(&c, &raw).unwrap();
            assert_eq!(enc, ZstdEncoder::libzstd(level));
        }
        roundtrip(&zstd::stream::encode_all(&b""[..], 3).unwrap(), b"").unwrap();
        for flags in [
            0,
            FLAG_CHECKSUM,
            FLAG_CONTENT_SIZE | FLAG_CHECKSUM,
            FLAG_FLUSHED,
        ] {
            let enc = ZstdEncoder::libzstd(3);
            let c = encode_frame(&enc, &raw, flags);
            let (_, parts) = roundtrip(&c, &raw).unwrap();
            assert_eq!(
                parts,
                vec![ZstdPart::Frame(raw.len() as u64, c.len() as u64, flags)]
            );
        }
    }

    #[test]
    fn long_distance_libzstd() {
        // Repeats 6 MB apart: beyond the windows of levels 1 and 3, not of a long one.
        let mut raw = text(1 << 20, 5);
        raw.extend_from_slice(&crate::engine::test_bytes(5 << 20, 6));
        raw.extend_from_slice(&text(1 << 20, 5));
        for level in [1, 3] {
            let enc = ZstdEncoder::Libzstd { level, long: true };
            let c = encode_frame(&enc, &raw, FLAG_CHECKSUM);
            let (found, _) = roundtrip(&c, &raw).unwrap();
            assert_eq!(found, enc);
        }
    }

    #[test]
    fn klauspost_frames() {
        let raw = text(2_000_000, 8);
        for level in [KpZstdLevel::Default, KpZstdLevel::Fastest] {
            let enc = ZstdEncoder::Klauspost {
                level,
                variant: KpZstdVariant::default(),
            };
            let c = encode_frame(&enc, &raw, FLAG_CHECKSUM);
            let (found, _) = roundtrip(&c, &raw).unwrap();
            assert_eq!(found, enc);
            assert_eq!(found.label(), format!("zstd-kp-{}", level.kp().name()));
            // Frames of under a block carry their size unasked; later frames must match.
            let mut stream = Vec::new();
            for n in [100usize, 5000, 300_000] {
                stream.extend_from_slice(&encode_frame(&enc, &raw[..n], FLAG_CHECKSUM));
            }
            let joined: Vec<u8> = [&raw[..100], &raw[..5000], &raw[..300_000]].concat();
            let (found, parts) = roundtrip(&stream, &joined).unwrap();
            assert_eq!(found, enc);
            assert_eq!(parts.len(), 3);
        }
    }

    #[test]
    fn the_window_table_is_libzstds() {
        let raw = text(300_000, 2);
        for level in 1..=19 {
            let enc = ZstdEncoder::libzstd(level);
            let mut w = FrameWriter::new(&enc, 0, FLAG_CHECKSUM);
            let mut out = Vec::new();
            w.write(&raw, &mut out);
            w.finish(&mut out);
            let h = parse_header(&out).unwrap().unwrap();
            assert_eq!(
                h.window_log,
                Some(LIBZSTD_WINDOW_LOG[level as usize - 1]),
                "{level}"
            );
        }
    }

    #[test]
    fn many_frames_and_skippable_frames() {
        // zstd:chunked's shape: a frame per file, big and small, then skippable frames.
        let enc = ZstdEncoder::libzstd(3);
        let mut stream = Vec::new();
        let mut raw = Vec::new();
        for (i, n) in [512usize, 70_000, 1, 9_000_000, 3_000, 0, 200_000, 5 << 20]
            .into_iter()
            .enumerate()
        {
            let part = text(n, i as u64 + 10);
            stream.extend_from_slice(&encode_frame(&enc, &part, FLAG_CHECKSUM));
            raw.extend_from_slice(&part);
            if i == 2 {
                stream.extend_from_slice(&skippable(b"in between"));
            }
        }
        stream.extend_from_slice(&skippable(&text(5_000, 99)));
        stream.extend_from_slice(&skippable(&[7u8; 40]));
        let (_, parts) = roundtrip(&stream, &raw).unwrap();
        assert_eq!(parts.len(), 11);

        // A range request resumes at the frame it falls in.
        let mut comp = 0;
        for (k, p) in parts.iter().enumerate().skip(1) {
            let before: u64 = parts[..k].iter().map(ZstdPart::comp_len).sum();
            let (mut e, at, plain) = FramesEncoder::resume(enc, &parts, before + 1).unwrap();
            assert_eq!(at, before);
            let mut out = Vec::new();
            e.push(&raw[plain as usize..], &mut out);
            e.finish(&mut out);
            assert!(out == stream[at as usize..], "resumed at part {k}");
            comp += p.comp_len();
        }
        assert!(comp > 0);
        assert!(FramesEncoder::resume(enc, &parts, 3).is_none());
    }

    #[test]
    fn bad_streams_are_refused() {
        let raw = text(100_000, 3);
        let c = zstd::stream::encode_all(&raw[..], 3).unwrap();
        let mut d = ZstdDecoder::default();
        d.feed(&c[..c.len() / 2], &mut |_| {}).unwrap();
        assert!(matches!(d.finish(), Err(NotExact::Corrupt(_))), "truncated");

        let mut trailing = c.clone();
        trailing.extend_from_slice(b"garbage!");
        let mut d = ZstdDecoder::default();
        assert!(matches!(
            d.feed(&trailing, &mut |_| {}),
            Err(NotExact::Unsupported(_))
        ));

        let mut big = skippable(b"");
        big[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut d = ZstdDecoder::default();
        assert!(matches!(
            d.feed(&big, &mut |_| {}),
            Err(NotExact::Unsupported(_))
        ));

        // A frame from an encoder stowage does not have: libzstd with another minimum match.
        let mut z = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        z.set_parameter(zstd::zstd_safe::CParameter::MinMatch(7))
            .unwrap();
        z.write_all(&raw).unwrap();
        let foreign = z.finish().unwrap();
        let mut d = ZstdDecoder::default();
        d.feed(&foreign, &mut |_| {}).unwrap_or(());
        let err = d.finish().unwrap_err();
        assert!(
            matches!(&err, NotExact::UnknownZstdEncoder(m) if m.contains("window 2 MiB")),
            "{err}"
        );
    }
}
