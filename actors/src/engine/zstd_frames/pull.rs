//! Pull: re-create a zstd stream from its plaintext and recorded frames, small frames in
//! batches on the rayon pool, large ones as they stream in; resumable at any frame for range
//! requests.

use super::encoders::{encode_frame, FrameWriter, ZstdEncoder};
use super::segmented::{SegmentBudget, SegmentedFrame, PROVING, SEGMENT_THREADS};
use super::ZstdPart;

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
    streaming: Option<(Streaming, u64)>,
    /// Where a frame planned in segments gets threads for them.
    budget: &'static SegmentBudget,
}

/// A large frame as it streams in: written by one encoder, or in segments on threads of
/// their own (`segmented.rs`).
enum Streaming {
    Whole(FrameWriter),
    Segments(Box<SegmentedFrame>),
}

impl Streaming {
    fn write(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        match self {
            Streaming::Whole(w) => w.write(raw, out),
            Streaming::Segments(s) => s.write(raw, out),
        }
    }

    fn finish(self, out: &mut Vec<u8>) {
        match self {
            Streaming::Whole(w) => w.finish(out),
            Streaming::Segments(s) => s.finish(out),
        }
    }
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
            budget: &SEGMENT_THREADS,
        }
    }

    /// Segment threads from `budget` instead of the process's.
    #[cfg(test)]
    pub(super) fn with_budget(mut self, budget: &'static SegmentBudget) -> FramesEncoder {
        self.budget = budget;
        self
    }

    /// Frames planned in segments are always re-encoded in them, outside the process's
    /// budget: for the re-encodes that prove the segments pulls will use.
    pub fn proving(mut self) -> FramesEncoder {
        self.budget = &PROVING;
        self
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
            let len = part.raw_len();
            match part.shape() {
                None => {}
                Some(shape) if len >= BATCH as u64 => {
                    let (splits, comp_len) = (part.splits().to_vec(), part.comp_len());
                    self.drain(out);
                    let threads = match splits.len() {
                        0 => None,
                        n => self.budget.take(n as u64 + 1),
                    };
                    let w = match threads {
                        None => Streaming::Whole(FrameWriter::new(&self.encoder, len, shape)),
                        Some(threads) => Streaming::Segments(Box::new(SegmentedFrame::new(
                            self.encoder,
                            shape,
                            len,
                            comp_len,
                            &splits,
                            threads,
                        ))),
                    };
                    self.streaming = Some((w, len));
                    self.next += 1;
                    continue;
                }
                Some(_) => {
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
            .map(|&(i, at, n)| match (&parts[i], parts[i].shape()) {
                (_, Some(shape)) => encode_frame(encoder, &raw[at..at + n], shape),
                (ZstdPart::Skippable(b), None) => b.clone(),
                (_, None) => unreachable!("only skippable frames have no shape"),
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
