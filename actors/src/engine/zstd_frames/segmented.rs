//! Pull: one long klauspost frame re-encoded in segments between the block boundaries
//! recorded at ingest ([`SplitFrame::splits`](super::SplitFrame)), each segment on a thread
//! of its own that is fed its plaintext as the restore gathers it, so that every segment is
//! being encoded while the rest of the plaintext still comes in.
//!
//! Segment 0 is the frame's beginning, written as the whole frame would be. Segment `i > 0`
//! is a fresh encoder fed the plaintext from its `warm` offset, whose output up to `start`
//! is dropped: from there on it writes the frame's blocks (ingest saw it do so, and
//! verify-before-discard proved the whole frame). The last segment ends the frame; its
//! checksum (XXH64 of the whole plaintext, low 32 bits) is computed here, as the plaintext
//! goes by, since its encoder saw only the end.
//!
//! The segments' threads are plain threads, not the rayon pool's: they wait for plaintext
//! that the restore may gather on the pool. A frame has at most
//! [`MAX_SEGMENTS`](super::splits::MAX_SEGMENTS) of them, and the process at most its
//! [`SegmentBudget`] (the server's `--zstd-segment-cores`): a frame gets a thread for every
//! segment or none, and with none it is re-encoded whole on its restore's thread, as if no
//! segments had been planned (always exact). So concurrent pulls of such layers use their
//! restore threads and at most the budget beside them, not a frame's segments each. The
//! re-encodes that prove segments (verify-before-discard, fsck) always get their threads.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::Arc;

use xxhash_rust::xxh64::Xxh64;

use super::encoders::{FrameWriter, ZstdEncoder};
use super::{FrameShape, FLAG_CHECKSUM, FLAG_FLUSHED};

/// How many segment threads may run at once, across the frames of every restore; with the
/// frames given their segments and those re-encoded whole for want of threads.
#[derive(Debug)]
pub struct SegmentBudget {
    limit: AtomicU64,
    in_use: AtomicU64,
    segmented: AtomicU64,
    whole: AtomicU64,
}

/// What a [`SegmentBudget`] reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentReading {
    /// Segment threads allowed at once, and running now.
    pub limit: u64,
    pub in_use: u64,
    /// Frames planned in segments that were re-encoded in them, and whole because the budget
    /// had too few threads free.
    pub segmented: u64,
    pub whole: u64,
}

/// The process's budget (unlimited until [`SegmentBudget::set_limit`]).
pub static SEGMENT_THREADS: SegmentBudget = SegmentBudget::new(u64::MAX);

/// Threads for re-encodes that prove the segments (verification, fsck): never refused, since
/// segments re-encoded whole would prove nothing about the segments later pulls use.
pub(super) static PROVING: SegmentBudget = SegmentBudget::new(u64::MAX);

impl SegmentBudget {
    pub const fn new(limit: u64) -> SegmentBudget {
        SegmentBudget {
            limit: AtomicU64::new(limit),
            in_use: AtomicU64::new(0),
            segmented: AtomicU64::new(0),
            whole: AtomicU64::new(0),
        }
    }

    pub fn set_limit(&self, n: u64) {
        self.limit.store(n, Relaxed);
    }

    pub fn reading(&self) -> SegmentReading {
        SegmentReading {
            limit: self.limit.load(Relaxed),
            in_use: self.in_use.load(Relaxed),
            segmented: self.segmented.load(Relaxed),
            whole: self.whole.load(Relaxed),
        }
    }

    /// Threads for all `n` segments of a frame, or None (counted either way).
    pub(super) fn take(&'static self, n: u64) -> Option<Threads> {
        let limit = self.limit.load(Relaxed);
        let got = self
            .in_use
            .fetch_update(Relaxed, Relaxed, |used| {
                used.checked_add(n).filter(|&after| after <= limit)
            })
            .is_ok();
        if got {
            self.segmented.fetch_add(1, Relaxed);
            Some(Threads { budget: self, n })
        } else {
            self.whole.fetch_add(1, Relaxed);
            None
        }
    }
}

/// Segment threads taken from a budget, given back when dropped (with the frame).
#[derive(Debug)]
pub(super) struct Threads {
    budget: &'static SegmentBudget,
    n: u64,
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.budget.in_use.fetch_sub(self.n, Relaxed);
    }
}

/// One segment: where its encoder starts, where its output starts (plaintext and compressed),
/// where it ends.
#[derive(Clone, Copy, Debug)]
struct Seg {
    warm: u64,
    start: u64,
    end: u64,
    comp_start: u64,
    comp_end: u64,
}

/// What a segment's thread is sent.
enum In {
    /// Plaintext from this frame offset on.
    Plain(u64, Arc<[u8]>),
    /// The frame's checksum (to the last segment, once all plaintext is in).
    Checksum(u32),
}

/// What a segment's thread sends back: its output as it comes, then whether it was whole.
enum Out {
    Bytes(Vec<u8>),
    Done(bool),
}

struct Worker {
    seg: Seg,
    tx: Option<Sender<In>>,
    rx: Receiver<Out>,
}

/// Re-creates one frame from its plaintext, segments in parallel.
pub(super) struct SegmentedFrame {
    flags: u8,
    /// Segments whose output is not all handed out yet, in order.
    workers: VecDeque<Worker>,
    received: u64,
    crc: Xxh64,
    /// A segment came out wrong: the output stops there.
    failed: bool,
    /// The threads' share of the budget, given back with the frame.
    _threads: Threads,
}

impl SegmentedFrame {
    /// `splits` as recorded (`[warm, start, comp_start]`, increasing); `threads`, one for
    /// each segment (`splits.len() + 1`).
    pub(super) fn new(
        encoder: ZstdEncoder,
        shape: FrameShape,
        raw_len: u64,
        comp_len: u64,
        splits: &[[u64; 3]],
        threads: Threads,
    ) -> SegmentedFrame {
        debug_assert_eq!(threads.n, splits.len() as u64 + 1);
        tracing::debug!(
            raw_len,
            segments = splits.len() + 1,
            "zstd frame re-encoded in segments"
        );
        let mut workers = VecDeque::with_capacity(splits.len() + 1);
        let mut at = [0, 0, 0];
        let ends = splits.iter().copied().chain([[raw_len, raw_len, comp_len]]);
        for (i, [warm, start, comp]) in ends.enumerate() {
            let seg = Seg {
                warm: at[0],
                start: at[1],
                comp_start: at[2],
                end: start,
                comp_end: comp,
            };
            at = [warm, start, comp];
            let (tx, in_rx) = channel();
            let (out_tx, rx) = channel();
            let run = move || encode_segment(&encoder, shape, raw_len, seg, i == 0, in_rx, out_tx);
            if let Err(e) = std::thread::Builder::new()
                .name("zstd-segment".into())
                .spawn(run)
            {
                // Its receiver is gone with the closure: the frame ends short.
                tracing::error!(error = %e, "could not start a zstd segment's thread");
            }
            workers.push_back(Worker {
                seg,
                tx: Some(tx),
                rx,
            });
        }
        SegmentedFrame {
            flags: shape.flags,
            workers,
            received: 0,
            crc: Xxh64::new(0),
            failed: false,
            _threads: threads,
        }
    }

    pub(super) fn write(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        if raw.is_empty() {
            return;
        }
        let (lo, hi) = (self.received, self.received + raw.len() as u64);
        let piece: Arc<[u8]> = Arc::from(raw);
        let frame_end = self.workers.back().map_or(0, |w| w.seg.end);
        for w in &mut self.workers {
            if w.seg.warm < hi && lo < w.seg.end {
                if let Some(tx) = &w.tx {
                    let _ = tx.send(In::Plain(lo, piece.clone()));
                }
            }
            if w.seg.end <= hi && w.seg.end != frame_end {
                // All its plaintext is sent.
                w.tx = None;
            }
        }
        self.crc.update(raw);
        self.received = hi;
        self.collect(false, out);
    }

    pub(super) fn finish(mut self, out: &mut Vec<u8>) {
        if let Some(last) = self.workers.back_mut() {
            if self.received == last.seg.end && self.flags & FLAG_CHECKSUM != 0 {
                if let Some(tx) = &last.tx {
                    let _ = tx.send(In::Checksum(self.crc.digest() as u32));
                }
            }
        }
        // With less plaintext than the frame holds (a corrupt restore) the segments short of
        // it see their input end, and fail.
        for w in &mut self.workers {
            w.tx = None;
        }
        self.collect(true, out);
    }

    /// Hand out the segments' output in order: what is there, or (`wait`) all of it.
    fn collect(&mut self, wait: bool, out: &mut Vec<u8>) {
        while let Some(w) = self.workers.front() {
            let msg = if wait {
                w.rx.recv().unwrap_or(Out::Done(false))
            } else {
                match w.rx.try_recv() {
                    Ok(m) => m,
                    Err(TryRecvError::Empty) => return,
                    Err(TryRecvError::Disconnected) => Out::Done(false),
                }
            };
            match msg {
                Out::Bytes(b) if !self.failed => out.extend_from_slice(&b),
                Out::Bytes(_) => {}
                Out::Done(whole) => {
                    // Nothing after a failed segment can follow: the frame ends short, which
                    // the restore's digest check turns into an aborted response (at ingest,
                    // verify-before-discard tries the frame without segments).
                    self.failed |= !whole;
                    self.workers.pop_front();
                }
            }
        }
    }
}

/// A segment's thread: encodes its plaintext as it is sent, sending its output on.
fn encode_segment(
    encoder: &ZstdEncoder,
    shape: FrameShape,
    raw_len: u64,
    seg: Seg,
    first: bool,
    input: Receiver<In>,
    output: Sender<Out>,
) {
    let last = seg.end == raw_len;
    let mut w = if first {
        // The frame's own beginning: header, first block cut short or not.
        FrameWriter::new(encoder, raw_len, shape)
    } else {
        // A fresh encoder without checksum or content size (only its blocks are kept); the
        // plaintext before `start` is whole blocks, so nothing of it is left buffered.
        let flags = shape.flags & FLAG_FLUSHED;
        FrameWriter::new(encoder, raw_len, FrameShape { flags, cut: None })
    };
    let mut buf = Vec::new();
    let mut sent = 0u64;
    let mut pos = seg.warm;
    let mut crc = None;
    while pos < seg.end || (last && !first && shape.flags & FLAG_CHECKSUM != 0 && crc.is_none()) {
        let Ok(msg) = input.recv() else { break };
        let (off, piece) = match msg {
            In::Plain(off, piece) => (off, piece),
            In::Checksum(c) => {
                crc = Some(c);
                continue;
            }
        };
        let (lo, hi) = (pos.max(off), seg.end.min(off + piece.len() as u64));
        if lo != pos || hi <= lo {
            // Pieces come in order; one that skips ahead means plaintext went missing.
            if hi > lo {
                break;
            }
            continue;
        }
        let mut s = &piece[(lo - off) as usize..(hi - off) as usize];
        if pos < seg.start {
            let k = ((seg.start - pos) as usize).min(s.len());
            w.write(&s[..k], &mut buf);
            buf.clear();
            s = &s[k..];
            pos += k as u64;
        }
        if !s.is_empty() {
            w.write(s, &mut buf);
            pos += s.len() as u64;
        }
        if !buf.is_empty() {
            sent += buf.len() as u64;
            let _ = output.send(Out::Bytes(std::mem::take(&mut buf)));
        }
    }
    if pos < seg.end {
        tracing::error!(
            start = seg.start,
            at = pos,
            "zstd segment: the plaintext ended early"
        );
        w.abandon();
        let _ = output.send(Out::Done(false));
        return;
    }
    if last {
        w.finish(&mut buf);
        if !first && shape.flags & FLAG_CHECKSUM != 0 {
            let Some(crc) = crc else {
                tracing::error!("zstd segment: the frame's checksum is not known");
                let _ = output.send(Out::Done(false));
                return;
            };
            buf.extend_from_slice(&crc.to_le_bytes());
        }
    } else {
        w.abandon();
    }
    sent += buf.len() as u64;
    if !buf.is_empty() {
        let _ = output.send(Out::Bytes(buf));
    }
    let whole = sent == seg.comp_end - seg.comp_start;
    if !whole {
        tracing::error!(
            start = seg.start,
            expected = seg.comp_end - seg.comp_start,
            got = sent,
            "zstd segment re-encoded to another length"
        );
    }
    let _ = output.send(Out::Done(whole));
}
