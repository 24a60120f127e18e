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

/// Re-encodes a member in segments between block boundaries recorded at ingest, several at a
/// time on the rayon pool, keeping only the plaintext the next segments need. A segment whose
/// start turns out not to be a clean restart point (its length disagrees with the recorded
/// boundary) is re-encoded from the boundary before and cut.
pub(super) struct Segmented {
    kind: SegmentKind,
    total: u64,
    /// Segment starts (the first is the stream's start).
    cuts: Vec<goflate::Split>,
    next: usize,
    /// Plaintext from absolute offset `buf_base`.
    buf: Vec<u8>,
    buf_base: u64,
    received: u64,
    out_bits: u64,
    /// The last, partial byte of the output so far (`out_bits % 8` bits of it are valid).
    partial: Vec<u8>,
    /// Resumed mid-byte: the first output byte lacks the bits before the boundary.
    drop_first: bool,
    /// A segment failed: the output stops there.
    failed: bool,
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
            cuts,
            next: 0,
            buf: Vec::new(),
            buf_base: 0,
            received: 0,
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

    /// Segment `i`, or if its start is not a clean restart point, the tail of the segment
    /// from the boundary before (whose plaintext is kept for that).
    fn segment(&self, i: usize) -> Result<goflate::Segment, goflate::SegmentError> {
        let run = |from: usize| {
            let start = self.cuts[from];
            let lo = start.plain.saturating_sub(goflate::HISTORY_BEFORE);
            if lo < self.buf_base {
                return Err(goflate::SegmentError::Coverage(lo, self.needed(i)));
            }
            let hi = self.needed(i);
            if hi > self.buf_base + self.buf.len() as u64 {
                // The plaintext ended early (a corrupt restore): nothing to encode from.
                return Err(goflate::SegmentError::Coverage(lo, hi));
            }
            let data = &self.buf[(lo - self.buf_base) as usize..(hi - self.buf_base) as usize];
            self.kind
                .encode(self.total, data, lo, start, self.segment_end(i))
        };
        match run(i) {
            Err(goflate::SegmentError::Length { .. }) if i > 0 => {
                let seg = run(i - 1)?;
                // Drop the bits before cuts[i]: they end on the same bit phase, so it is a
                // byte offset plus a mask.
                let (from, to) = (self.cuts[i - 1], self.cuts[i]);
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

    fn segment_end(&self, i: usize) -> Option<goflate::Split> {
        self.cuts.get(i + 1).copied()
    }

    /// Plaintext needed before segment `i` can be encoded.
    fn needed(&self, i: usize) -> u64 {
        match self.segment_end(i) {
            Some(e) => (e.plain + self.kind.lookahead()).min(self.total),
            None => self.total,
        }
    }

    pub(super) fn write(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        self.buf.extend_from_slice(raw);
        self.received += raw.len() as u64;
        let threads = rayon::current_num_threads().max(1);
        let ready = (self.next..self.cuts.len())
            .take_while(|&i| self.needed(i) <= self.received)
            .count();
        if ready >= threads || (ready > 0 && self.received == self.total) {
            self.encode(ready, out);
        }
    }

    fn encode(&mut self, count: usize, out: &mut Vec<u8>) {
        use rayon::prelude::*;
        let range = self.next..self.next + count;
        let segs: Vec<Option<goflate::Segment>> = range
            .clone()
            .into_par_iter()
            .map(|i| {
                self.segment(i)
                    .inspect_err(|e| {
                        // The restore's sha256 check turns the short stream into an aborted
                        // response; at ingest verify-before-discard keeps the layer raw.
                        tracing::error!(error = %e, "segment re-encoding failed");
                    })
                    .ok()
            })
            .collect();
        let mut acc = std::mem::take(&mut self.partial);
        for seg in &segs {
            match seg {
                Some(seg) if !self.failed => goflate::splice(&mut acc, &mut self.out_bits, seg),
                // Nothing after a failed segment can be spliced on: the stream ends short.
                _ => self.failed = true,
            }
        }
        // Hand out the whole bytes; keep a partial last byte for the next splice.
        let keep = usize::from(!self.out_bits.is_multiple_of(8));
        let whole = acc.len() - keep;
        let first = usize::from(self.drop_first && whole > 0);
        self.drop_first &= whole == 0;
        out.extend_from_slice(&acc[first..whole]);
        self.partial = acc[whole..].to_vec();
        self.next += count;
        // Drop plaintext no later segment needs (one segment back is kept for the fallback).
        if let Some(s) = self.cuts.get(self.next.saturating_sub(1)) {
            let keep_from = s.plain.saturating_sub(goflate::HISTORY_BEFORE);
            if keep_from > self.buf_base {
                let drop = ((keep_from - self.buf_base) as usize).min(self.buf.len());
                self.buf.drain(..drop);
                self.buf_base += drop as u64;
            }
        }
    }

    pub(super) fn finish(mut self, out: &mut Vec<u8>) {
        let left = self.cuts.len() - self.next;
        if left > 0 {
            self.encode(left, out);
        }
        if !self.drop_first {
            out.extend_from_slice(&self.partial);
        }
    }
}
