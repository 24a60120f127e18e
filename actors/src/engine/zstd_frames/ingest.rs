//! Ingest: decode a zstd stream frame by frame with libzstd, keep each data frame's probe and
//! find (first frame) or check (later frames) the encoder that wrote it.

use zstd::stream::raw::{InBuffer, Operation, OutBuffer};

use super::encoders::{candidates, frame_matches, KpZstdLevel, ZstdEncoder};
use super::header::{parse_header, FrameHeader};
use super::splits::SplitFinder;
use super::{
    is_skippable, FrameShape, ZstdPart, FLAG_FLUSHED, MAX_BLOCK, MAX_FRAMES, MAX_SKIPPABLE,
    ZSTD_MAGIC,
};
use crate::engine::recompress::{NotExact, PROBE};

thread_local! {
    /// What [`FrameProbe::first_block_len`] decodes a first block with: one context and
    /// buffer per thread, not one per frame (a zstd:chunked layer has thousands).
    static FIRST_BLOCK: std::cell::RefCell<(zstd::stream::raw::Decoder<'static>, Vec<u8>)> =
        std::cell::RefCell::new((
            zstd::stream::raw::Decoder::new().expect("zstd decoder"),
            vec![0u8; MAX_BLOCK as usize],
        ));
}

/// The first bytes of a data frame, plain and compressed, and its last compressed bytes.
#[derive(Default)]
pub(super) struct FrameProbe {
    pub(super) raw: Vec<u8>,
    pub(super) comp: Vec<u8>,
    pub(super) raw_len: u64,
    pub(super) comp_len: u64,
    pub(super) tail: Vec<u8>,
    /// The beginning was already checked (the frame outgrew the probe).
    pub(super) checked: Option<FrameShape>,
    /// [`FrameProbe::first_block_len`], worked out once: every klauspost candidate asks for it,
    /// and the probe no longer changes once a frame is being checked.
    first_block: std::cell::OnceCell<Option<u64>>,
    /// Where a long frame can be re-encoded from in segments.
    finder: Option<SplitFinder>,
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
        if let Some(f) = &mut self.finder {
            f.feed_comp(comp);
            f.feed_plain(raw);
        }
    }

    /// The plaintext length of the frame's first block, if the probe holds all of it: read
    /// from the block header for raw and RLE blocks, the frame's for a frame of one block (a
    /// zstd:chunked file's, most often), by decoding it for other compressed ones.
    pub(super) fn first_block_len(&self, header: &FrameHeader) -> Option<u64> {
        *self
            .first_block
            .get_or_init(|| self.read_first_block_len(header))
    }

    fn read_first_block_len(&self, header: &FrameHeader) -> Option<u64> {
        let h = self.comp.get(header.len..header.len + 3)?;
        let h = u32::from(h[0]) | u32::from(h[1]) << 8 | u32::from(h[2]) << 16;
        let size = u64::from(h >> 3);
        match (h >> 1) & 3 {
            0 | 1 => Some(size),
            2 => {
                let end = header.len + 3 + size as usize;
                let block = self.comp.get(..end)?;
                if h & 1 == 1 && self.comp_len >= end as u64 && self.raw_len <= MAX_BLOCK {
                    // The only block, decoded whole (frames are checked once decoded, or
                    // once past the probe, which one block never is).
                    return Some(self.raw_len);
                }
                FIRST_BLOCK.with(|cell| {
                    let (d, plain) = &mut *cell.borrow_mut();
                    d.reinit().ok()?;
                    let mut inb = InBuffer::around(block);
                    let mut outb = OutBuffer::around(&mut plain[..]);
                    d.run(&mut inb, &mut outb).ok()?;
                    Some(outb.pos() as u64)
                })
            }
            _ => None,
        }
    }

    /// Whether the frame ends with an empty raw last block (`01 00 00`), as a writer that
    /// flushed before closing leaves.
    pub(super) fn may_be_flushed(&self, checksum: bool) -> bool {
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

/// How many frames alternative encoders are checked on (see `ZstdDecoder::others`); after
/// that they are tried only on a frame the chosen encoder does not write.
pub(super) const WEIGH_FRAMES: usize = 64;

/// A first frame this small (whole) is weighed against libzstd at every level, not only at
/// the level that wrote it first.
const ALIKE_ANY_LEVEL: u64 = 16 << 10;

/// Cores a pull may re-encode one long klauspost frame on, in segments planned at ingest; the
/// same number bounds the segment threads of all pulls together ([`SEGMENT_THREADS`]).
///
/// [`SEGMENT_THREADS`]: super::SEGMENT_THREADS
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SegmentCores {
    /// This machine's cores (at most 8) for a `SpeedBestCompression` frame: its re-encode
    /// (about 20-30 MB/s a core) is nearly all of its pull, and on 2 cores two segments
    /// pulled a 77 MB layer in 2.9 s instead of 4.3. All but one for a faster level's frame:
    /// the restore keeps one core busy reading containers, decompressing chunks, hashing and
    /// sending. Measured on 2 cores (README, *Benchmark*): a `SpeedDefault` pull of 77 MB kept
    /// 1.3 cores busy, and two segments made it use 1.6 without finishing sooner; a
    /// `SpeedBetterCompression` one (8 MiB window) took 1.04 s instead of 1.08.
    #[default]
    Auto,
    /// This many for every frame (1: never in segments).
    Fixed(u64),
}

impl SegmentCores {
    fn cores() -> u64 {
        std::thread::available_parallelism().map_or(1, |n| (n.get() as u64).clamp(1, 8))
    }

    /// Segments to plan for a frame `encoder` wrote (below 2: none).
    pub fn for_encoder(self, encoder: &ZstdEncoder) -> u64 {
        match self {
            SegmentCores::Fixed(n) => n,
            SegmentCores::Auto
                if matches!(
                    encoder,
                    ZstdEncoder::Klauspost {
                        level: KpZstdLevel::Best,
                        ..
                    }
                ) =>
            {
                Self::cores()
            }
            SegmentCores::Auto => (Self::cores() - 1).max(1),
        }
    }

    /// The most segments any frame is planned (and segment threads run at once).
    pub fn most(self) -> u64 {
        match self {
            SegmentCores::Fixed(n) => n.max(1),
            SegmentCores::Auto => Self::cores(),
        }
    }
}

/// Streaming decompressor of a zstd layer that records how to re-create it.
pub struct ZstdDecoder {
    st: St,
    pending: Vec<u8>,
    dec: zstd::stream::raw::Decoder<'static>,
    parts: Vec<ZstdPart>,
    encoder: Option<ZstdEncoder>,
    /// Other encoders that wrote every frame so far exactly as `encoder` did (small frames
    /// come out the same from several klauspost releases and levels): one takes over if a
    /// later frame tells them apart. Weighed for the first [`WEIGH_FRAMES`] frames; after
    /// that, tried (in order) only on a frame the encoder does not write.
    others: Vec<ZstdEncoder>,
    frames_checked: usize,
    outbuf: Vec<u8>,
    failed: Option<NotExact>,
    /// The whole stream's compressed length, when known: how long a frame without a content
    /// size may be, to plan its segments.
    stream_len: Option<u64>,
    /// Cores a pull may re-encode a long frame's segments on.
    parallel: SegmentCores,
}

impl Default for ZstdDecoder {
    fn default() -> Self {
        ZstdDecoder {
            st: St::Between,
            pending: Vec::new(),
            dec: zstd::stream::raw::Decoder::new().expect("zstd decoder"),
            parts: Vec::new(),
            encoder: None,
            others: Vec::new(),
            frames_checked: 0,
            outbuf: vec![0; 256 * 1024],
            failed: None,
            stream_len: None,
            parallel: SegmentCores::Auto,
        }
    }
}

impl ZstdDecoder {
    /// The stream is `len` compressed bytes long (the staged blob's size).
    pub fn set_stream_len(&mut self, len: u64) {
        self.stream_len = Some(len);
    }

    /// Plan segments as `cores` says (default: [`SegmentCores::Auto`]).
    pub fn set_segments(&mut self, cores: SegmentCores) {
        self.parallel = cores;
    }

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
                    let probe = FrameProbe {
                        finder: (self.parallel.most() >= 2).then(|| SplitFinder::new(h.len as u64)),
                        ..FrameProbe::default()
                    };
                    self.st = St::Data(h, Box::new(probe));
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
                        let shape = self.check_frame(&h, false)?;
                        let done: u64 = self.parts.iter().map(ZstdPart::comp_len).sum();
                        let comp_left = self.stream_len.map(|n| n.saturating_sub(done));
                        if let (St::Data(_, p), Some(enc)) = (&mut self.st, &self.encoder) {
                            p.checked = Some(shape);
                            p.raw = Vec::new();
                            p.comp = Vec::new();
                            if let Some(f) = &mut p.finder {
                                f.start(
                                    enc,
                                    shape,
                                    h.content_size,
                                    comp_left,
                                    self.parallel.for_encoder(enc),
                                );
                            }
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

    /// How the frame being decoded was written, checked against the stream's encoder (found now
    /// if this is the first frame).
    fn check_frame(
        &mut self,
        header: &FrameHeader,
        complete: bool,
    ) -> Result<FrameShape, NotExact> {
        let St::Data(_, probe) = &self.st else {
            unreachable!("checking a data frame");
        };
        if let Some(f) = probe.checked {
            return Ok(f);
        }
        if let Some(enc) = self.encoder {
            let mut others = std::mem::take(&mut self.others);
            let weigh = self.frames_checked < WEIGH_FRAMES;
            self.frames_checked += 1;
            if let Some(shape) = frame_matches(&enc, probe, header, complete) {
                if weigh {
                    others.retain(|o| frame_matches(o, probe, header, complete) == Some(shape));
                }
                self.others = others;
                return Ok(shape);
            }
            // The encoder chosen so far does not write this frame: the first alternative that
            // does (and wrote the first `WEIGH_FRAMES` frames alike; the frames after those
            // are left to verify-before-discard) takes over.
            let mut rest = others.into_iter();
            while let Some(alt) = rest.next() {
                if let Some(shape) = frame_matches(&alt, probe, header, complete) {
                    self.encoder = Some(alt);
                    self.others = rest
                        .filter(|o| frame_matches(o, probe, header, complete) == Some(shape))
                        .collect();
                    return Ok(shape);
                }
            }
            return Err(NotExact::UnknownZstdEncoder(format!(
                "a later zstd frame is not written like the first ({}; {})",
                enc.label(),
                header.describe()
            )));
        }
        let candidates = candidates(header);
        for (i, enc) in candidates.iter().enumerate() {
            if let Some(shape) = frame_matches(enc, probe, header, complete) {
                self.encoder = Some(*enc);
                self.frames_checked = 1;
                // Who else writes the probe alike: klauspost releases and levels, and libzstd
                // at the same level in its other modes (with fixed blocks a multi-threaded
                // frame's first job, 16 MiB at level 13, is written as the single-threaded
                // frame begins: Debian 12's `zstd -13`; fixed blocks and earlier releases'
                // match finders differ from 1.5.7's only here and there, so a stream of
                // small frames, one per file, may show it only frames later), and also at
                // other levels for a small complete frame (most levels write a few hundred
                // bytes alike) or for a frame longer than its probe, 1.4.8's levels 13-15
                // (whose tables differ a little: the first hundreds of kB come out alike).
                let small = complete && probe.raw_len <= ALIKE_ANY_LEVEL;
                let alike = |c: &ZstdEncoder| match (enc, c) {
                    (ZstdEncoder::Klauspost { .. }, ZstdEncoder::Klauspost { .. }) => true,
                    (
                        ZstdEncoder::Libzstd {
                            level,
                            long,
                            before_1_5_1,
                            ..
                        },
                        ZstdEncoder::Libzstd {
                            level: l,
                            long: g,
                            before_1_5_1: b,
                            ..
                        },
                    ) => long == g && (level == l || small || (!complete && *before_1_5_1 && *b)),
                    _ => false,
                };
                self.others = candidates[i + 1..]
                    .iter()
                    .filter(|c| alike(c))
                    .filter(|c| frame_matches(c, probe, header, complete) == Some(shape))
                    .copied()
                    .collect();
                return Ok(shape);
            }
        }
        Err(NotExact::UnknownZstdEncoder(format!(
            "no encoder stowage reproduces wrote the frame (klauspost/compress 1.11.0-1.19.1 \
             at its four levels, SpeedBestCompression from 1.13.4, libzstd 1.5.7 at levels 1-19, and the releases before it \
             where their bytes are 1.5.7's with fixed blocks or their level 3-4 match finder \
             (1.5.6 at 1-19, 1.5.5 at 1-15, 1.5.4 at 1-4 and 13-15, 1.5.1-1.5.2 at 3-4 and \
             13-15) or their ported match finders (1.5.4 at 5-12, 1.5.4-1.5.5 at 16-19, \
             1.4.8-1.5.0 at 1-15), single- and multi-threaded, with and without --long, \
             tried; libzstd before 1.5.7 at another level (1.4.8-1.5.0 at 16-19: Debian 11, \
             Ubuntu 22.04), or another writer?): {}",
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
        let mut shape = self.check_frame(&header, complete)?;
        let St::Data(_, probe) = &mut self.st else {
            unreachable!("ending a data frame");
        };
        if !complete && probe.may_be_flushed(header.checksum) {
            // A long frame's end is not compared at ingest; an empty last block is what a
            // flush before closing leaves (verify-before-discard proves the guess).
            shape.flags |= FLAG_FLUSHED;
        }
        // (A frame compared whole never outgrew the probe: its finder never started.)
        let splits = probe
            .finder
            .take()
            .map_or_else(Vec::new, SplitFinder::finish);
        self.parts.push(ZstdPart::split_frame(
            probe.raw_len,
            probe.comp_len,
            shape,
            splits,
        ));
        self.st = St::Between;
        self.dec
            .reinit()
            .map_err(|_| NotExact::Corrupt("zstd frame"))?;
        Ok(())
    }

    /// The stream's encoder and frames, and the other encoders that wrote every byte ingest
    /// compared as that one did (klauspost releases that agree on a long frame's beginning):
    /// the layer's verification tries them in turn if the first does not re-create it.
    pub fn finish(self) -> Result<(ZstdEncoder, Vec<ZstdPart>, Vec<ZstdEncoder>), NotExact> {
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
        Ok((encoder, self.parts, self.others))
    }
}
