//! Re-encoding one deflate stream (Go levels 4-9, zlib levels 4-9) in segments between the
//! block boundaries recorded at ingest ([`GzipMember::splits`](super::recompress::GzipMember)),
//! several segments at a time on the rayon pool, and resuming it from one of those boundaries
//! without the plaintext before it (a Range request of a cold layer).

use super::goflate;

/// The encoder a segmented member is re-encoded with.
#[derive(Clone, Copy)]
pub(super) enum SegmentKind {
    Go(i32),
    Zlib(i32),
}

impl SegmentKind {
    fn lookahead(self) -> u64 {
        match self {
            SegmentKind::Go(_) => goflate::LOOKAHEAD_AFTER,
            SegmentKind::Zlib(_) => super::pigz::ZLIB_LOOKAHEAD,
        }
    }

    fn encode(
        self,
        total: u64,
        data: &[u8],
        data_base: u64,
        start: goflate::Split,
        end: Option<goflate::Split>,
    ) -> Result<goflate::Segment, goflate::SegmentError> {
        match self {
            SegmentKind::Go(level) => {
                goflate::encode_segment(level, total, data, data_base, start, end)
            }
            SegmentKind::Zlib(level) => {
                super::pigz::zlib_segment(level, total, data, data_base, start, end)
            }
        }
    }
}

/// Re-encodes a member in segments between block boundaries recorded at ingest, on the rayon
/// pool while the plaintext of the next segments is still being gathered (at most one more
/// segment in flight than the pool has threads), keeping only the plaintext the next segments
/// need. Segments are handed out in order. A segment whose start turns out not to be a clean
/// restart point (its length disagrees with the recorded boundary) is re-encoded from the
/// boundary before and cut.
pub(super) struct Segmented {
    kind: SegmentKind,
    total: u64,
    /// Segment starts (the first is the stream's start).
    cuts: std::sync::Arc<[goflate::Split]>,
    /// The next segment to hand to the pool.
    next: usize,
    /// Plaintext from absolute offset `buf_base`.
    buf: Vec<u8>,
    buf_base: u64,
    received: u64,
    /// Segments on the pool, in stream order.
    in_flight: std::collections::VecDeque<std::sync::mpsc::Receiver<Option<goflate::Segment>>>,
    out_bits: u64,
    /// The last, partial byte of the output so far (`out_bits % 8` bits of it are valid).
    partial: Vec<u8>,
    /// Resumed mid-byte: the first output byte lacks the bits before the boundary.
    drop_first: bool,
    /// A segment failed: the output stops there.
    failed: bool,
}

/// Plaintext a segment needs before it can be encoded.
fn needed(kind: SegmentKind, total: u64, cuts: &[goflate::Split], i: usize) -> u64 {
    match cuts.get(i + 1) {
        Some(e) => (e.plain + kind.lookahead()).min(total),
        None => total,
    }
}

/// Segment `i` from plaintext `data` (from absolute offset `base`), or if its start is not a
/// clean restart point, the tail of the segment from the boundary before (whose plaintext
/// `data` holds for that).
fn encode_one(
    kind: SegmentKind,
    total: u64,
    cuts: &[goflate::Split],
    i: usize,
    data: &[u8],
    base: u64,
) -> Result<goflate::Segment, goflate::SegmentError> {
    let hi = needed(kind, total, cuts, i);
    let run = |from: usize| {
        let start = cuts[from];
        let lo = start.plain.saturating_sub(goflate::HISTORY_BEFORE);
        if lo < base || hi > base + data.len() as u64 {
            // Not kept, or the plaintext ended early (a corrupt restore).
            return Err(goflate::SegmentError::Coverage(lo, hi));
        }
        let d = &data[(lo - base) as usize..(hi - base) as usize];
        kind.encode(total, d, lo, start, cuts.get(i + 1).copied())
    };
    match run(i) {
        Err(goflate::SegmentError::Length { .. }) if i > 0 => {
            let seg = run(i - 1)?;
            // Drop the bits before cuts[i]: they end on the same bit phase, so it is a byte
            // offset plus a mask.
            let (from, to) = (cuts[i - 1], cuts[i]);
            let skip = from.bit % 8 + (to.bit - from.bit);
            let mut bytes = seg.bytes[(skip / 8) as usize..].to_vec();
            let phase = (to.bit % 8) as u32;
            if let Some(first) = bytes.first_mut() {
                *first &= !((1u8 << phase) - 1);
            }
            Ok(goflate::Segment {
                bytes,
                bits: seg.bits - skip + phase as u64,
            })
        }
        r => r,
    }
}

impl Segmented {
    pub(super) fn new(kind: SegmentKind, total: u64, splits: &[[u64; 2]]) -> Segmented {
        let mut cuts = vec![goflate::Split { plain: 0, bit: 0 }];
        cuts.extend(
            splits
                .iter()
                .map(|&[plain, bit]| goflate::Split { plain, bit }),
        );
        Segmented {
            kind,
            total,
            cuts: cuts.into(),
            next: 0,
            buf: Vec::new(),
            buf_base: 0,
            received: 0,
            in_flight: Default::default(),
            out_bits: 0,
            partial: Vec::new(),
            drop_first: false,
            failed: false,
        }
    }

    /// The same encoder resumed at boundary `k` (1-based into `splits`): fed the plaintext
    /// from the returned offset on, it writes the stream from byte `ceil(splits[k - 1].bit / 8)`
    /// (a byte the boundary cuts in two is left out). The plaintext starts a whole segment
    /// before the boundary, for the re-encode from the boundary before should `k` prove not
    /// to be a clean restart point.
    pub(super) fn resume(
        kind: SegmentKind,
        total: u64,
        splits: &[[u64; 2]],
        k: usize,
    ) -> (Segmented, u64) {
        let mut s = Segmented::new(kind, total, splits);
        assert!(k >= 1 && k < s.cuts.len(), "boundary {k} out of range");
        let from = s.cuts[k - 1].plain.saturating_sub(goflate::HISTORY_BEFORE);
        let phase = s.cuts[k].bit % 8;
        s.next = k;
        s.buf_base = from;
        s.received = from;
        s.out_bits = phase;
        if phase != 0 {
            s.partial = vec![0];
            s.drop_first = true;
        }
        (s, from)
    }

    fn needed(&self, i: usize) -> u64 {
        needed(self.kind, self.total, &self.cuts, i)
    }

    /// Hand segment `self.next` to the pool with a copy of the plaintext it needs (from the
    /// boundary before it, for the fallback), and drop the plaintext no later one needs.
    fn submit(&mut self) {
        let i = self.next;
        let from = self.cuts[i.saturating_sub(1)]
            .plain
            .saturating_sub(goflate::HISTORY_BEFORE)
            .max(self.buf_base);
        let hi = (self.needed(i).min(self.buf_base + self.buf.len() as u64)).max(from);
        let data =
            self.buf[(from - self.buf_base) as usize..(hi - self.buf_base) as usize].to_vec();
        let (kind, total, cuts) = (self.kind, self.total, self.cuts.clone());
        let job = move || {
            encode_one(kind, total, &cuts, i, &data, from)
                .inspect_err(|e| {
                    // The restore's sha256 check turns the short stream into an aborted
                    // response; at ingest verify-before-discard keeps the layer raw.
                    tracing::error!(error = %e, "segment re-encoding failed");
                })
                .ok()
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        if rayon::current_thread_index().is_some() {
            // On the pool already: waiting there for the pool could wait forever.
            let _ = tx.send(job());
        } else {
            rayon::spawn(move || {
                let _ = tx.send(job());
            });
        }
        self.in_flight.push_back(rx);
        self.next += 1;
        // Plaintext no later segment needs (one segment back is kept for the fallback).
        let keep_from = self.cuts[self.next - 1]
            .plain
            .saturating_sub(goflate::HISTORY_BEFORE);
        if keep_from > self.buf_base {
            let drop = ((keep_from - self.buf_base) as usize).min(self.buf.len());
            self.buf.drain(..drop);
            self.buf_base += drop as u64;
        }
    }

    /// Hand out finished segments in order: waiting for the first one when `wait`.
    fn collect(&mut self, mut wait: bool, out: &mut Vec<u8>) {
        while let Some(rx) = self.in_flight.front() {
            let got = if wait {
                Some(rx.recv().ok().flatten())
            } else {
                match rx.try_recv() {
                    Ok(r) => Some(r),
                    Err(std::sync::mpsc::TryRecvError::Empty) => None,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => Some(None),
                }
            };
            let Some(seg) = got else { break };
            self.in_flight.pop_front();
            wait = false;
            match seg {
                Some(seg) if !self.failed => self.emit(&seg, out),
                // Nothing after a failed segment can be spliced on: the stream ends short.
                _ => self.failed = true,
            }
        }
    }

    fn emit(&mut self, seg: &goflate::Segment, out: &mut Vec<u8>) {
        let mut acc = std::mem::take(&mut self.partial);
        goflate::splice(&mut acc, &mut self.out_bits, seg);
        // Hand out the whole bytes; keep a partial last byte for the next splice.
        let keep = usize::from(!self.out_bits.is_multiple_of(8));
        let whole = acc.len() - keep;
        let first = usize::from(self.drop_first && whole > 0);
        self.drop_first &= whole == 0;
        out.extend_from_slice(&acc[first..whole]);
        self.partial = acc[whole..].to_vec();
    }

    pub(super) fn write(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        self.buf.extend_from_slice(raw);
        self.received += raw.len() as u64;
        let most = rayon::current_num_threads().max(1) + 1;
        while self.next < self.cuts.len() && self.needed(self.next) <= self.received {
            if self.in_flight.len() >= most {
                self.collect(true, out);
            }
            self.submit();
        }
        self.collect(false, out);
    }

    pub(super) fn finish(mut self, out: &mut Vec<u8>) {
        // With the whole plaintext every segment is ready; with less (a corrupt restore) the
        // first one short of it fails and ends the stream.
        while self.next < self.cuts.len() {
            self.submit();
        }
        while !self.in_flight.is_empty() {
            self.collect(true, out);
        }
        if !self.drop_first {
            out.extend_from_slice(&self.partial);
        }
    }
}
