//! Ingest: where a long klauspost frame can be re-encoded from by a fresh encoder, so that a
//! pull writes it in segments on several cores (`segmented.rs`).
//!
//! A klauspost encoder's state at a block is its match tables (only the last window of
//! plaintext can be matched), its repeat offsets and the Huffman and FSE tables the previous
//! blocks left to reuse. A fresh encoder fed one window of plaintext before a block has the
//! same usable matches, but the entropy tables it carries can differ for a while (a table
//! reused for many blocks goes back further than any window). So each place is tried while
//! the frame is decoded: about where a segment should start for the frame's segments to
//! take equal time, a second encoder ("pretest") is started at a block boundary one window
//! earlier and fed the plaintext as it comes. The first block from which it writes a
//! window's worth of blocks in a row exactly as the frame has them, one of them a block that
//! carries all its entropy tables (after which both encoders hold the same tables to reuse),
//! is the next segment's start. Raw blocks, raw literals and reused tables do not show that:
//! they come out alike from encoders whose tables differ, which a later block can reveal. The
//! window of blocks compared covers the reach of any match-table entry the warm-up's first
//! blocks, encoded without the history the frame had, may have left otherwise than the
//! frame's encoder did. Whether a fresh encoder falls in line at all depends on the data
//! (see the README): where it does not within [`SLIP`] blocks, the frame stays whole.
//!
//! Pretest encoders run one at a time, on the ingest thread: ingest encodes about two
//! windows more per segment. Verify-before-discard proves the whole frame afterwards.

use std::collections::VecDeque;

use super::encoders::{FrameWriter, ZstdEncoder};
use super::FrameShape;

/// Blocks a pretest may take to get there before it is given up.
pub(super) const SLIP: u64 = 64;
/// Segments are at least this many windows long (each costs one window of extra encoding).
const MIN_WINDOWS: u64 = 3;
/// Most segments a frame is cut into (each is re-encoded on a thread of its own).
pub(super) const MAX_SEGMENTS: u64 = 8;

/// What the frame is known to be once its encoder is found.
struct Plan {
    encoder: ZstdEncoder,
    block: u64,
    /// Plaintext of the first block (shorter when the writer cut it).
    first: u64,
    window: u64,
    /// The frame's plaintext length, when its header says.
    content_size: Option<u64>,
    /// Compressed bytes from the frame's start to the stream's end, when known.
    comp_left: Option<u64>,
    parallel: u64,
}

impl Plan {
    fn plain_of(&self, idx: u64) -> u64 {
        match idx {
            0 => 0,
            i => self.first + (i - 1) * self.block,
        }
    }

    /// The first block that starts at or after plaintext offset `p`, from block 1 on.
    fn block_at_or_after(&self, p: u64) -> u64 {
        if p <= self.first {
            1
        } else {
            1 + (p - self.first).div_ceil(self.block)
        }
    }
}

struct Pretest {
    w: FrameWriter,
    warm: u64,
    /// Next plaintext offset it takes.
    fed: u64,
    pending: Vec<u8>,
    /// Index of the block its next full block is.
    next_idx: u64,
    compare_from: u64,
    /// Blocks written as the frame has them, in a row, and where the run started
    /// (`[index, compressed offset]`).
    run: u32,
    /// The run holds a block that carries all its tables (see [`self_contained`]).
    synced: bool,
    cand: Option<[u64; 2]>,
    /// Its blocks not yet compared (the frame's may not be in yet).
    waiting: VecDeque<(u64, Vec<u8>)>,
}

/// Follows one data frame through ingest and records where it can be re-encoded from.
pub(super) struct SplitFinder {
    plan: Option<Plan>,
    comp_seen: u64,
    plain_seen: u64,
    // The frame's blocks, walked header by header.
    next_hdr: u64,
    hdr: Vec<u8>,
    idx: u64,
    walked: bool,
    /// The frame's blocks from this index on are kept for comparing: `(index, offset, len)`,
    /// their bytes in `orig` from compressed offset `orig_base`.
    keep_from: Option<u64>,
    kept: VecDeque<(u64, u64, u64)>,
    orig: Vec<u8>,
    orig_base: Option<u64>,
    pretest: Option<Pretest>,
    tries: u64,
    splits: Vec<[u64; 3]>,
}

impl SplitFinder {
    /// A finder for a frame whose header is `header_len` bytes.
    pub(super) fn new(header_len: u64) -> SplitFinder {
        SplitFinder {
            plan: None,
            comp_seen: 0,
            plain_seen: 0,
            next_hdr: header_len,
            hdr: Vec::with_capacity(3),
            idx: 0,
            walked: false,
            keep_from: None,
            kept: VecDeque::new(),
            orig: Vec::new(),
            orig_base: None,
            pretest: None,
            tries: 0,
            splits: Vec::new(),
        }
    }

    /// The frame's encoder is known: look for segment starts from here on if it is a
    /// klauspost one and the frame may be long enough to be worth it.
    pub(super) fn start(
        &mut self,
        encoder: &ZstdEncoder,
        shape: FrameShape,
        content_size: Option<u64>,
        comp_left: Option<u64>,
        parallel: u64,
    ) {
        let Some((block, window)) = encoder.kp_geometry() else {
            return;
        };
        if parallel < 2 || (content_size.is_none() && comp_left.is_none()) {
            return;
        }
        self.plan = Some(Plan {
            encoder: *encoder,
            block,
            first: shape.cut.unwrap_or(block),
            window,
            content_size,
            comp_left,
            parallel,
        });
    }

    /// The segment starts found (`[warm, start, comp_start]`).
    pub(super) fn finish(self) -> Vec<[u64; 3]> {
        if let Some(t) = self.pretest {
            t.w.abandon();
        }
        self.splits
    }

    /// Compressed bytes of the frame, in order from its first.
    pub(super) fn feed_comp(&mut self, comp: &[u8]) {
        let start = self.comp_seen;
        let end = start + comp.len() as u64;
        self.comp_seen = end;
        if self.plan.is_none() && self.walked {
            return;
        }
        while !self.walked {
            let at = self.next_hdr + self.hdr.len() as u64;
            if at >= end {
                break;
            }
            let take = (3 - self.hdr.len()).min((end - at) as usize);
            let from = (at - start) as usize;
            self.hdr.extend_from_slice(&comp[from..from + take]);
            if self.hdr.len() < 3 {
                break;
            }
            let h =
                u32::from(self.hdr[0]) | u32::from(self.hdr[1]) << 8 | u32::from(self.hdr[2]) << 16;
            self.hdr.clear();
            let size = u64::from(h >> 3);
            let body = match (h >> 1) & 3 {
                0 | 2 => size,
                1 => 1,
                // Reserved: libzstd refuses the frame.
                _ => {
                    self.walked = true;
                    break;
                }
            };
            if self.keep_from.is_some_and(|k| self.idx >= k) {
                self.kept.push_back((self.idx, self.next_hdr, 3 + body));
                self.orig_base.get_or_insert(self.next_hdr);
            }
            self.next_hdr += 3 + body;
            self.idx += 1;
            self.walked = h & 1 == 1;
        }
        if let Some(base) = self.orig_base {
            let from = base.max(start);
            if from < end {
                self.orig
                    .extend_from_slice(&comp[(from - start) as usize..]);
            }
        }
        self.compare();
    }

    /// Plaintext of the frame, in order from its first byte.
    pub(super) fn feed_plain(&mut self, mut plain: &[u8]) {
        let pos = self.plain_seen;
        self.plain_seen += plain.len() as u64;
        if self.pretest.is_none() {
            self.maybe_start(pos);
        }
        let Some(plan) = &self.plan else { return };
        let Some(t) = &mut self.pretest else { return };
        if t.fed >= self.plain_seen {
            return;
        }
        plain = &plain[(t.fed - pos) as usize..];
        t.fed = self.plain_seen;
        let block = plan.block as usize;
        while !plain.is_empty() {
            let take = (block - t.pending.len()).min(plain.len());
            t.pending.extend_from_slice(&plain[..take]);
            plain = &plain[take..];
            if t.pending.len() < block {
                break;
            }
            let mut out = Vec::new();
            t.w.write(&t.pending, &mut out);
            t.pending.clear();
            if t.next_idx >= t.compare_from {
                t.waiting.push_back((t.next_idx, out));
            }
            t.next_idx += 1;
        }
        self.compare();
    }

    /// Start a pretest if the next segment start is within a window of `pos`.
    fn maybe_start(&mut self, pos: u64) {
        let Some(plan) = &self.plan else { return };
        let estimate = match (plan.content_size, plan.comp_left) {
            (Some(n), _) => n,
            (None, Some(left)) if self.comp_seen > 0 => {
                (pos as u128 * left as u128 / self.comp_seen as u128) as u64
            }
            _ => return,
        };
        let w = plan.window;
        let most = estimate / (MIN_WINDOWS * w);
        let segments = plan.parallel.min(MAX_SEGMENTS).min(most);
        let j = self.splits.len() as u64 + 1;
        if j >= segments || self.tries > segments + 2 {
            return;
        }
        // Equal work per segment: each after the first also encodes one window first.
        let each = (estimate + (segments - 1) * w) / segments;
        let target = j * each - (j - 1) * w;
        if pos + w < target {
            return;
        }
        let warm_idx = plan.block_at_or_after(pos);
        let warm = plan.plain_of(warm_idx);
        if self.splits.last().is_some_and(|s| warm < s[1]) {
            return;
        }
        let compare_from = plan.block_at_or_after(warm + w);
        self.tries += 1;
        self.keep_from = Some(compare_from);
        self.pretest = Some(Pretest {
            w: FrameWriter::new(&plan.encoder, 0, FrameShape::flags(0)),
            warm,
            fed: warm,
            pending: Vec::with_capacity(plan.block as usize),
            next_idx: warm_idx,
            compare_from,
            run: 0,
            synced: false,
            cand: None,
            waiting: VecDeque::new(),
        });
    }

    /// Compare the pretest's blocks with the frame's as both come in.
    fn compare(&mut self) {
        let Some(t) = &mut self.pretest else { return };
        let Some(plan) = &self.plan else { return };
        let mut done = false;
        while let Some((j, mine)) = t.waiting.front() {
            while self.kept.front().is_some_and(|k| k.0 < *j) {
                self.kept.pop_front();
            }
            let Some(&(k, off, len)) = self.kept.front() else {
                // The frame ended before this block (or its header is not in yet).
                done = self.walked;
                break;
            };
            let base = self.orig_base.expect("kept blocks have bytes");
            if k != *j {
                done = true;
                break;
            }
            if off + len > base + self.orig.len() as u64 {
                break;
            }
            let theirs = &self.orig[(off - base) as usize..(off + len - base) as usize];
            if *mine == theirs {
                t.run += 1;
                t.synced |= self_contained(mine);
                t.cand.get_or_insert([*j, off]);
            } else {
                t.run = 0;
                t.synced = false;
                t.cand = None;
            }
            let j = *j;
            t.waiting.pop_front();
            self.kept.pop_front();
            let drop = (off + len - base) as usize;
            self.orig.drain(..drop);
            self.orig_base = Some(off + len);
            // A window of blocks: the warm-up's first blocks, encoded without the history
            // the frame had, may have left other match-table entries than the frame's
            // encoder did, and those are within reach for one more window.
            if u64::from(t.run) * plan.block >= plan.window && t.synced {
                let [idx, comp] = t.cand.expect("a run has a start");
                self.splits.push([t.warm, plan.plain_of(idx), comp]);
                done = true;
                break;
            }
            if t.run == 0 && j >= t.compare_from + SLIP {
                done = true;
                break;
            }
        }
        if done {
            if let Some(t) = self.pretest.take() {
                t.w.abandon();
            }
            self.keep_from = None;
            self.kept.clear();
            self.orig.clear();
            self.orig_base = None;
        }
    }
}

/// Whether a compressed block (header included) carries every entropy table it uses: Huffman
/// literals with their tree, and no sequence table in repeat mode. An encoder that wrote such
/// a block holds, after it, the tables that block describes, whatever it held before.
fn self_contained(block: &[u8]) -> bool {
    let Some(&h) = block.first() else {
        return false;
    };
    if (h >> 1) & 3 != 2 {
        return false;
    }
    let body = &block[3.min(block.len())..];
    let Some(&lit) = body.first() else {
        return false;
    };
    if lit & 3 != 2 {
        // Raw, RLE or treeless (reused table) literals.
        return false;
    }
    let (header, comp) = match (lit >> 2) & 3 {
        0 | 1 => {
            let Some(b) = body.get(..3) else { return false };
            let v = u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16;
            (3, (v >> 14) & 0x3ff)
        }
        2 => {
            let Some(b) = body.get(..4) else { return false };
            let v = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            (4, v >> 18)
        }
        _ => {
            let Some(b) = body.get(..5) else { return false };
            let v = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], 0, 0, 0]);
            (5, (v >> 22) as u32 & 0x3ffff)
        }
    };
    let Some(seq) = body.get(header + comp as usize..) else {
        return false;
    };
    let modes = match seq.first() {
        None => return false,
        // No sequences: no sequence tables.
        Some(0) => return true,
        Some(&n) if n < 128 => seq.get(1),
        Some(&n) if n < 255 => seq.get(2),
        Some(_) => seq.get(3),
    };
    let Some(&m) = modes else { return false };
    [m >> 6, (m >> 4) & 3, (m >> 2) & 3]
        .iter()
        .all(|&mode| mode != 3)
}
