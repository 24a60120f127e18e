//! Ports `zstd/enc_best.go` (klauspost/compress 1.13.4 to 1.19.1, see
//! [`BestRules`]), with the `ShannonEntropyBits` of [`crate::engine::go_entropy`],
//! without dictionaries: `SpeedBestCompression`'s match finder, which scores
//! candidate matches by their estimated cost under the predefined tables.
//!
//! The match search was rewritten twice: 1.15.13 and 1.16.1 changed only how
//! the candidates are compared (the rest is 1.15.12's loop, kept in
//! [`BestFastEncoder::encode_v1_15`]); 1.16.4 rewrote the loop (backward
//! extension of every candidate, repeats straight after a match, no offset-2
//! loop), and 1.17.2, 1.17.3, 1.17.6 and 1.17.8 changed details of it
//! ([`BestFastEncoder::encode_v1_16_4`]).

use super::base::{
    hash4, hash8, load32, load64, match_table, matchlen, populate, prefetch, shift_prev_table,
    FastBase, Matcher, PrevEntry, Rebase, MAX_MATCH_LENGTH, ZSTD_MIN_MATCH,
};
use super::block::{ml_code, of_code, Seq};
use super::fse::predefined;
use crate::engine::go_entropy::shannon_entropy_bits;

const BEST_LONG_TABLE_BITS: u32 = 22;
const BEST_SHORT_TABLE_BITS: u32 = 18;
/// `highScore` up to 1.16.3.
const HIGH_SCORE: i32 = 25000;
/// `highScore` from 1.16.4 on: `maxMatchLen * 8`.
const HIGH_SCORE_V1_16_4: i32 = MAX_MATCH_LENGTH * 8;

/// How candidate matches are compared before 1.16.4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) enum Selection {
    /// 1.15.12: `best = bestOf(best, matchAt(...))` one candidate after the other,
    /// each side's position difference rounded on its own.
    #[default]
    Pairwise,
    /// 1.15.13-1.16.0: `bestOf` on pointers with one rounded difference
    /// (`a.est-b.est+(a.s-b.s)*bitsPerByte>>10 < 0`), candidates compared in
    /// pairs (a tournament), and the end search starts 2 bytes into the match.
    Tree,
    /// 1.16.1-1.16.3: `improve(&best, ...)` replaces the best match in place
    /// (always while it scores `highScore`); failed candidates are skipped.
    Improve,
}

/// Which `enc_best.go` to follow (from [`super::KpVersion`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct BestRules {
    /// Before 1.16.4: the 1.15.12 loop with this candidate comparison.
    pub selection: Selection,
    /// 1.16.4 on: the rewritten loop ([`BestFastEncoder::encode_v1_16_4`]).
    pub v1_16_4: bool,
    /// 1.17.2 on: `improve` rejects candidates at or after `s` (`delta <= 0`).
    pub reject_self: bool,
    /// 1.17.3 on: repeat codes `& 3` in `estBits`; every candidate extended
    /// backwards; skipped positions indexed only up to `sLimit+4` (repeats) or
    /// `sLimit-4`, and before leaving the loop (repeat offsets updated first).
    pub v1_17_3: bool,
    /// 1.17.6 on: candidates extended backwards only while the best match so far
    /// is not a repeat (`m.rep <= 0`).
    pub v1_17_6: bool,
    /// 1.17.8 on: a block of one repeated byte is one literal and one match.
    pub rle_first: bool,
}

/// `bestFastEncoder`.
pub(crate) struct BestFastEncoder {
    base: FastBase,
    pub rules: BestRules,
    table: Vec<PrevEntry>,
    long_table: Vec<PrevEntry>,
}

impl BestFastEncoder {
    pub fn new(max_match_off: i32, rebase: Rebase) -> Self {
        let mut base = FastBase::new(max_match_off, rebase);
        // Candidates before the history are refused (`offset < 0` in `matchAt` and
        // `improve`), so entries of earlier frames need no window between.
        base.frame_gap = 1;
        BestFastEncoder {
            base,
            rules: BestRules::default(),
            table: match_table(1 << BEST_SHORT_TABLE_BITS),
            long_table: match_table(1 << BEST_LONG_TABLE_BITS),
        }
    }
}

#[inline(always)]
fn hl(u: u64) -> usize {
    hash8(u, BEST_LONG_TABLE_BITS)
}

#[inline(always)]
fn hs(u: u64) -> usize {
    hash4(u, BEST_SHORT_TABLE_BITS)
}

/// Asks for the entries the next search looks up first, at the position whose bytes are
/// `cv`: while the table is indexed over the match just found, they come in.
#[inline(always)]
fn prefetch_next(long_table: &[PrevEntry], table: &[PrevEntry], cv: u64) {
    prefetch(long_table, hl(cv));
    prefetch(table, hs(cv));
}

/// `match`.
#[derive(Clone, Copy, Default)]
struct Match {
    offset: i32,
    s: i32,
    length: i32,
    rep: i32,
    est: i32,
}

impl Match {
    /// `estBits`: the match's cost in bits with the predefined tables, minus the
    /// literals it saves.
    /// `rep_mask`: 1.17.3 on, `ofCode(uint32(m.rep) & 3)` (before, the flag 4 of
    /// 1.16.4's repeats straight after a match was priced too).
    fn est_bits(&mut self, bits_per_byte: i32, high_score: i32, rep_mask: u32) {
        let mlc = ml_code((self.length - ZSTD_MIN_MATCH) as u32);
        let ofc = if self.rep < 0 {
            of_code(((self.s - self.offset) as u32).wrapping_add(3))
        } else {
            of_code(self.rep as u32 & rep_mask)
        };
        let p = predefined();
        let of_tt = p[1].ct.symbol_tt[ofc as usize];
        let ml_tt = p[2].ct.symbol_tt[mlc as usize];
        self.est = i32::from(of_tt.out_bits.wrapping_add(ml_tt.out_bits));
        self.est = self.est.wrapping_add(
            ((of_tt.delta_nb_bits >> 16).wrapping_add(ml_tt.delta_nb_bits >> 16)) as i32,
        );
        self.est = self
            .est
            .wrapping_sub(self.length.wrapping_mul(bits_per_byte) >> 10);
        if self.est > 0 {
            self.length = 0;
            self.est = high_score;
        }
    }
}

impl Matcher for BestFastEncoder {
    fn base(&mut self) -> &mut FastBase {
        &mut self.base
    }

    fn base_ref(&self) -> &FastBase {
        &self.base
    }

    fn populate_tables(&mut self) {
        populate(&mut self.table);
        populate(&mut self.long_table);
    }

    fn encode(&mut self, block: &[u8]) {
        const MIN_NON_LITERAL_BLOCK_SIZE: usize = 16;

        if self.base.must_rebase() {
            let mmo = self.base.max_match_off;
            if self.base.hist.is_empty() {
                self.table.fill(PrevEntry::default());
                self.long_table.fill(PrevEntry::default());
            } else {
                let cur = self.base.cur;
                let min_off = cur
                    .wrapping_add(self.base.hist.len() as i32)
                    .wrapping_sub(mmo);
                shift_prev_table(&mut self.table, cur, min_off, mmo);
                shift_prev_table(&mut self.long_table, cur, min_off, mmo);
            }
            self.base.cur = mmo;
        }

        let s = self.base.add_block(block);
        let blk = &mut self.base.blk;
        blk.size = block.len();
        // 1.17.8 on: "Check RLE first".
        if self.rules.rle_first
            && block.len() > ZSTD_MIN_MATCH as usize
            && block[1..] == block[..block.len() - 1]
        {
            blk.literals.push(block[0]);
            blk.sequences.push(Seq {
                lit_len: 1,
                match_len: (block.len() - 1) as u32 - ZSTD_MIN_MATCH as u32,
                offset: 1 + 3,
                ..Seq::default()
            });
            return;
        }
        if block.len() < MIN_NON_LITERAL_BLOCK_SIZE {
            blk.extra_lits = block.len();
            blk.literals.clear();
            blk.literals.extend_from_slice(block);
            return;
        }

        // Literal cost estimate, scaled by 10 bits; Huffman never goes below 1 bit/byte.
        let mut bits_per_byte = ((shannon_entropy_bits(block) * 1024) / block.len() as i64) as i32;
        if bits_per_byte < 1024 {
            bits_per_byte = 1024;
        }
        if self.rules.v1_16_4 {
            self.encode_v1_16_4(s, bits_per_byte);
        } else {
            self.encode_v1_15(s, bits_per_byte);
        }
    }

    /// `EncodeNoHist` is `Encode` with history here.
    fn encode_no_hist(&mut self, src: &[u8]) {
        self.base.ensure_hist(src.len());
        self.encode(src);
    }
}

/// A failed `matchAt` (1.15.12-1.16.0): no match, scored `highScore`.
fn no_match(s: i32) -> Match {
    Match {
        s,
        est: HIGH_SCORE,
        ..Match::default()
    }
}

/// `matchLen(a, b)` as Go runs it when `b` may be the shorter slice: 8 bytes at a
/// time while both have 8, then byte by byte over `a`, where Go panics (index out of
/// range) if `b` ends first without a mismatch; so does this.
fn go_match_len(a: &[u8], b: &[u8]) -> i32 {
    let mut n = 0usize;
    while a.len() - n >= 8 && b.len() - n >= 8 {
        let x = u64::from_le_bytes(a[n..n + 8].try_into().unwrap());
        let y = u64::from_le_bytes(b[n..n + 8].try_into().unwrap());
        let diff = x ^ y;
        if diff != 0 {
            return (n + (diff.trailing_zeros() >> 3) as usize) as i32;
        }
        n += 8;
    }
    for i in n..a.len() {
        if a[i] != b[i] {
            return i as i32;
        }
    }
    a.len() as i32
}

/// 1.16.4 on: `improve`, with what the closure captures.
struct Improver<'a> {
    src: &'a [u8],
    max_match_off: i32,
    bits_per_byte: i32,
    rules: BestRules,
}

impl Improver<'_> {
    fn high_score(&self) -> i32 {
        HIGH_SCORE_V1_16_4
    }

    /// "Set m to a match at offset if it looks like that will improve compression."
    #[inline(always)]
    fn improve(
        &self,
        m: &mut Match,
        mut offset: i32,
        mut s: i32,
        first: u32,
        rep: i32,
        next_emit: i32,
    ) {
        let src = self.src;
        let delta = s.wrapping_sub(offset);
        if offset < 0
            || delta >= self.max_match_off
            || (self.rules.reject_self && delta <= 0)
            || load32(src, offset) != first
        {
            return;
        }
        // "Try to quick reject if we already have a long match."
        if m.length > 16 {
            let left = src.len() as i64 - i64::from(m.s.wrapping_add(m.length));
            if left <= 0 {
                return;
            }
            let check_len = m.length - (s - m.s) - 8;
            if left > 2
                && check_len > 4
                && load32(src, offset + check_len) != load32(src, s + check_len)
            {
                return;
            }
        }
        let mut l = 4 + if delta > 0 {
            matchlen(s + 4, offset + 4, src)
        } else {
            // Before 1.17.2 only (issue #875: a candidate at or after `s`, which Go
            // then wrote as a zero or negative offset): Go's `matchLen` with the
            // candidate's side the shorter one.
            go_match_len(&src[(s + 4) as usize..], &src[(offset + 4) as usize..])
        };
        let extend = if self.rules.v1_17_6 {
            m.rep <= 0
        } else if self.rules.v1_17_3 {
            true
        } else {
            rep < 0
        };
        if extend {
            let t_min = (s - self.max_match_off).max(0);
            while offset > t_min
                && s > next_emit
                && src[(offset - 1) as usize] == src[(s - 1) as usize]
                && l < MAX_MATCH_LENGTH
            {
                s -= 1;
                offset -= 1;
                l += 1;
            }
        }
        let mut cand = Match {
            offset,
            s,
            length: l,
            rep,
            est: 0,
        };
        let rep_mask = if self.rules.v1_17_3 { 3 } else { u32::MAX };
        cand.est_bits(self.bits_per_byte, self.high_score(), rep_mask);
        if m.est >= self.high_score()
            || cand
                .est
                .wrapping_sub(m.est)
                .wrapping_add(cand.s.wrapping_sub(m.s).wrapping_mul(self.bits_per_byte) >> 10)
                < 0
        {
            *m = cand;
        }
    }
}

impl BestFastEncoder {
    /// The match search of 1.15.12-1.16.3 (`rules.selection` says how candidates
    /// are compared).
    fn encode_v1_15(&mut self, mut s: i32, bits_per_byte: i32) {
        const INPUT_MARGIN: i32 = 8 + 4;
        const K_SEARCH_STRENGTH: i32 = 10;
        const GOOD_ENOUGH: i32 = 100;

        let selection = self.rules.selection;
        let FastBase {
            cur,
            max_match_off,
            hist,
            blk,
            ..
        } = &mut self.base;
        let (cur, mmo) = (*cur, *max_match_off);
        let table = &mut self.table[..];
        let long_table = &mut self.long_table[..];
        let src = &hist[..];
        let s_limit = src.len() as i32 - INPUT_MARGIN;
        let mut next_emit = s;
        let mut cv = load64(src, s);
        let mut offset1 = blk.recent_offsets[0] as i32;
        let mut offset2 = blk.recent_offsets[1] as i32;
        let mut offset3 = blk.recent_offsets[2] as i32;

        // 1.15.12's `bestOf`: each side's position difference rounded on its own.
        let pair = |a: Match, b: Match| -> Match {
            let l = a.est + ((a.s - b.s).wrapping_mul(bits_per_byte) >> 10);
            let r = b.est + ((b.s - a.s).wrapping_mul(bits_per_byte) >> 10);
            if l < r {
                a
            } else {
                b
            }
        };
        // 1.15.13's `bestOf`: `a.est-b.est+(a.s-b.s)*bitsPerByte>>10 < 0`.
        let tree = |a: Match, b: Match| -> Match {
            if a.est
                .wrapping_sub(b.est)
                .wrapping_add((a.s - b.s).wrapping_mul(bits_per_byte) >> 10)
                < 0
            {
                a
            } else {
                b
            }
        };
        // `matchAt` (`None`: the check failed), and 1.16.1's `improve` around it.
        let match_at = |offset: i32, s: i32, first: u32, rep: i32| -> Option<Match> {
            if offset < 0 || s.wrapping_sub(offset) >= mmo || load32(src, offset) != first {
                return None;
            }
            let mut m = Match {
                offset,
                s,
                length: 4 + matchlen(s + 4, offset + 4, src),
                rep,
                est: 0,
            };
            m.est_bits(bits_per_byte, HIGH_SCORE, u32::MAX);
            Some(m)
        };
        let at = |offset: i32, s: i32, first: u32, rep: i32| -> Match {
            match_at(offset, s, first, rep).unwrap_or_else(|| no_match(s))
        };
        let improve = |m: &mut Match, cand: Option<Match>| {
            if let Some(cand) = cand {
                if m.est >= HIGH_SCORE
                    || cand
                        .est
                        .wrapping_sub(m.est)
                        .wrapping_add((cand.s - m.s).wrapping_mul(bits_per_byte) >> 10)
                        < 0
                {
                    *m = cand;
                }
            }
        };
        // The candidates at `s`, the repeats at `spp`, and those after `s` (in Go's
        // order), under each selection.
        let first4 = |c: [i32; 4], s: i32, first: u32| -> Match {
            match selection {
                Selection::Pairwise => {
                    let mut best = pair(at(c[0], s, first, -1), at(c[1], s, first, -1));
                    best = pair(best, at(c[2], s, first, -1));
                    pair(best, at(c[3], s, first, -1))
                }
                Selection::Tree => tree(
                    tree(at(c[0], s, first, -1), at(c[1], s, first, -1)),
                    tree(at(c[2], s, first, -1), at(c[3], s, first, -1)),
                ),
                Selection::Improve => {
                    let mut best = no_match(s);
                    for o in c {
                        improve(&mut best, match_at(o, s, first, -1));
                    }
                    best
                }
            }
        };
        let reps = |best: Match, offs: [i32; 3], spp: i32, first: u32| -> Match {
            let m = |i: usize| (spp - offs[i], i as i32 + 1);
            match selection {
                Selection::Pairwise => {
                    let mut best = best;
                    for i in 0..3 {
                        let (o, rep) = m(i);
                        best = pair(best, at(o, spp, first, rep));
                    }
                    best
                }
                Selection::Tree => {
                    let [m1, m2, m3] = [0, 1, 2].map(|i| {
                        let (o, rep) = m(i);
                        at(o, spp, first, rep)
                    });
                    tree(tree(best, m1), tree(m2, m3))
                }
                Selection::Improve => {
                    let mut best = best;
                    for i in 0..3 {
                        let (o, rep) = m(i);
                        improve(&mut best, match_at(o, spp, first, rep));
                    }
                    best
                }
            }
        };

        'encode_loop: loop {
            let can_repeat = blk.sequences.len() > 2;

            let next_hash_l = hl(cv);
            let next_hash_s = hs(cv);
            // The next steps look up s+1 (and s+2 when there is a match to improve): ask
            // for those entries now, while the ones for s come in.
            prefetch(long_table, hl(load64(src, s + 1)));
            prefetch(table, hs(cv >> 8));
            prefetch(long_table, hl(load64(src, s + 2)));
            let mut candidate_l = long_table[next_hash_l];
            let mut candidate_s = table[next_hash_s];

            let mut best = first4(
                [
                    candidate_l.offset.wrapping_sub(cur),
                    candidate_l.prev.wrapping_sub(cur),
                    candidate_s.offset.wrapping_sub(cur),
                    candidate_s.prev.wrapping_sub(cur),
                ],
                s,
                cv as u32,
            );

            // Where this match ends is looked up below: most often it is still the best.
            let s_at = best.s + best.length;
            if best.length > 0 && s_at < s_limit {
                prefetch(long_table, hl(load64(src, s_at)));
            }
            if can_repeat && best.length < GOOD_ENOUGH {
                let offs = [offset1, offset2, offset3];
                best = reps(best, offs, s + 1, (cv >> 8) as u32);
                if best.length > 0 {
                    best = reps(best, offs, s + 3, (cv >> 24) as u32);
                }
            }
            long_table[next_hash_l] = PrevEntry {
                offset: s.wrapping_add(cur),
                prev: candidate_l.offset,
            };
            table[next_hash_s] = PrevEntry {
                offset: s.wrapping_add(cur),
                prev: candidate_s.offset,
            };

            if best.length < GOOD_ENOUGH {
                if best.length < 4 {
                    s += 1 + ((s - next_emit) >> (K_SEARCH_STRENGTH - 1));
                    if s >= s_limit {
                        break 'encode_loop;
                    }
                    cv = load64(src, s);
                    continue;
                }

                s += 1;
                candidate_s = table[hs(cv >> 8)];
                cv = load64(src, s);
                let cv2 = load64(src, s + 1);
                candidate_l = long_table[hl(cv)];
                let candidate_l2 = long_table[hl(cv2)];

                // Short at s, long at s and s+1.
                let c = [
                    (candidate_s.offset.wrapping_sub(cur), s, cv as u32),
                    (candidate_l.offset.wrapping_sub(cur), s, cv as u32),
                    (candidate_l.prev.wrapping_sub(cur), s, cv as u32),
                    (candidate_l2.offset.wrapping_sub(cur), s + 1, cv2 as u32),
                    (candidate_l2.prev.wrapping_sub(cur), s + 1, cv2 as u32),
                ];
                match selection {
                    Selection::Pairwise => {
                        for (o, sp, first) in c {
                            best = pair(best, at(o, sp, first, -1));
                        }
                    }
                    Selection::Tree => {
                        let [m1, m2, m3, m4, m5] = c.map(|(o, sp, first)| at(o, sp, first, -1));
                        best = tree(tree(tree(best, m1), m2), tree(tree(m3, m4), m5));
                    }
                    Selection::Improve => {
                        for (o, sp, first) in c {
                            improve(&mut best, match_at(o, sp, first, -1));
                        }
                    }
                }

                // Where the best match ends: a long match there, from 1.15.13 on
                // checked from 2 bytes into the match ("skipBeginning").
                let s_at = best.s + best.length;
                if s_at < s_limit {
                    let candidate_end = long_table[hl(load64(src, s_at))];
                    match selection {
                        Selection::Pairwise => {
                            let pos = candidate_end
                                .offset
                                .wrapping_sub(cur)
                                .wrapping_sub(best.length);
                            if pos >= 0 {
                                let mut best_end =
                                    pair(best, at(pos, best.s, load32(src, best.s), -1));
                                let pos = candidate_end
                                    .prev
                                    .wrapping_sub(cur)
                                    .wrapping_sub(best.length);
                                if pos >= 0 {
                                    best_end =
                                        pair(best_end, at(pos, best.s, load32(src, best.s), -1));
                                }
                                best = best_end;
                            }
                        }
                        Selection::Tree => {
                            const SKIP_BEGINNING: i32 = 2;
                            let at_end = |pos: i32, best: &Match| {
                                let sb = best.s + SKIP_BEGINNING;
                                at(pos, sb, load32(src, sb), -1)
                            };
                            let pos = candidate_end
                                .offset
                                .wrapping_sub(cur)
                                .wrapping_sub(best.length)
                                .wrapping_add(SKIP_BEGINNING);
                            if pos >= 0 {
                                let mut best_end = tree(best, at_end(pos, &best));
                                let pos = candidate_end
                                    .prev
                                    .wrapping_sub(cur)
                                    .wrapping_sub(best.length)
                                    .wrapping_add(SKIP_BEGINNING);
                                if pos >= 0 {
                                    best_end = tree(best_end, at_end(pos, &best));
                                }
                                best = best_end;
                            }
                        }
                        Selection::Improve => {
                            const SKIP_BEGINNING: i32 = 2;
                            let pos = candidate_end
                                .offset
                                .wrapping_sub(cur)
                                .wrapping_sub(best.length)
                                .wrapping_add(SKIP_BEGINNING);
                            if pos >= 0 {
                                let sb = best.s + SKIP_BEGINNING;
                                improve(&mut best, match_at(pos, sb, load32(src, sb), -1));
                                // `best` may have changed: Go reads it again.
                                let pos = candidate_end
                                    .prev
                                    .wrapping_sub(cur)
                                    .wrapping_sub(best.length)
                                    .wrapping_add(SKIP_BEGINNING);
                                if pos >= 0 {
                                    let sb = best.s + SKIP_BEGINNING;
                                    improve(&mut best, match_at(pos, sb, load32(src, sb), -1));
                                }
                            }
                        }
                    }
                }
            }

            if best.rep > 0 {
                s = best.s;
                let mut seq = Seq {
                    match_len: (best.length - ZSTD_MIN_MATCH) as u32,
                    ..Seq::default()
                };
                let mut start = best.s;
                let start_limit = next_emit + 1;
                let t_min = (s - mmo).max(0);
                let mut rep_index = best.offset;
                while rep_index > t_min
                    && start > start_limit
                    && src[(rep_index - 1) as usize] == src[(start - 1) as usize]
                    && seq.match_len < (MAX_MATCH_LENGTH - ZSTD_MIN_MATCH - 1) as u32
                {
                    rep_index -= 1;
                    start -= 1;
                    seq.match_len += 1;
                }
                if start != next_emit {
                    blk.literals
                        .extend_from_slice(&src[next_emit as usize..start as usize]);
                    seq.lit_len = (start - next_emit) as u32;
                }
                seq.offset = best.rep as u32;
                blk.sequences.push(seq);

                let mut index0 = s;
                s = best.s + best.length;
                next_emit = s;
                if s >= s_limit {
                    break 'encode_loop;
                }
                prefetch_next(long_table, table, load64(src, s));
                let mut off = index0.wrapping_add(cur);
                while index0 < s - 1 {
                    let cv0 = load64(src, index0);
                    let h0 = hl(cv0);
                    let h1 = hs(cv0);
                    long_table[h0] = PrevEntry {
                        offset: off,
                        prev: long_table[h0].offset,
                    };
                    table[h1] = PrevEntry {
                        offset: off,
                        prev: table[h1].offset,
                    };
                    off = off.wrapping_add(1);
                    index0 += 1;
                }
                match best.rep {
                    2 => std::mem::swap(&mut offset1, &mut offset2),
                    3 => {
                        (offset1, offset2, offset3) = (offset3, offset1, offset2);
                    }
                    _ => {}
                }
                cv = load64(src, s);
                continue;
            }

            s = best.s;
            let mut t = best.offset;
            (offset1, offset2, offset3) = (s - t, offset1, offset2);

            let mut l = best.length;
            let t_min = (s - mmo).max(0);
            while t > t_min
                && s > next_emit
                && src[(t - 1) as usize] == src[(s - 1) as usize]
                && l < MAX_MATCH_LENGTH
            {
                s -= 1;
                t -= 1;
                l += 1;
            }

            let mut seq = Seq {
                lit_len: (s - next_emit) as u32,
                match_len: (l - ZSTD_MIN_MATCH) as u32,
                ..Seq::default()
            };
            if seq.lit_len > 0 {
                blk.literals
                    .extend_from_slice(&src[next_emit as usize..s as usize]);
            }
            seq.offset = (s - t) as u32 + 3;
            s += l;
            blk.sequences.push(seq);
            next_emit = s;
            if s >= s_limit {
                break 'encode_loop;
            }
            prefetch_next(long_table, table, load64(src, s));

            let mut index0 = s - l + 1;
            while index0 < s - 1 {
                let cv0 = load64(src, index0);
                let h0 = hl(cv0);
                let h1 = hs(cv0);
                let off = index0.wrapping_add(cur);
                long_table[h0] = PrevEntry {
                    offset: off,
                    prev: long_table[h0].offset,
                };
                table[h1] = PrevEntry {
                    offset: off,
                    prev: table[h1].offset,
                };
                index0 += 1;
            }

            cv = load64(src, s);
            if !can_repeat {
                continue;
            }

            loop {
                let o2 = s - offset2;
                if load32(src, o2) != cv as u32 {
                    break;
                }
                let next_hash_s = hs(cv);
                let next_hash_l = hl(cv);
                let l = 4 + matchlen(s + 4, o2 + 4, src);
                long_table[next_hash_l] = PrevEntry {
                    offset: s.wrapping_add(cur),
                    prev: long_table[next_hash_l].offset,
                };
                table[next_hash_s] = PrevEntry {
                    offset: s.wrapping_add(cur),
                    prev: table[next_hash_s].offset,
                };
                seq.match_len = (l - ZSTD_MIN_MATCH) as u32;
                seq.lit_len = 0;
                seq.offset = 1;
                s += l;
                next_emit = s;
                blk.sequences.push(seq);
                std::mem::swap(&mut offset1, &mut offset2);
                if s >= s_limit {
                    break 'encode_loop;
                }
                cv = load64(src, s);
            }
        }

        if (next_emit as usize) < src.len() {
            blk.literals.extend_from_slice(&src[next_emit as usize..]);
            blk.extra_lits = src.len() - next_emit as usize;
        }
        blk.recent_offsets[0] = offset1 as u32;
        blk.recent_offsets[1] = offset2 as u32;
        blk.recent_offsets[2] = offset3 as u32;
    }

    /// The match search of 1.16.4 on (`rules` says which later changes apply).
    fn encode_v1_16_4(&mut self, mut s: i32, bits_per_byte: i32) {
        const INPUT_MARGIN: i32 = 8 + 4;
        const K_SEARCH_STRENGTH: i32 = 10;
        const GOOD_ENOUGH: i32 = 250;
        const SKIP_BEGINNING: i32 = 2;

        let rules = self.rules;
        let FastBase {
            cur,
            max_match_off,
            hist,
            blk,
            ..
        } = &mut self.base;
        let (cur, mmo) = (*cur, *max_match_off);
        let table = &mut self.table[..];
        let long_table = &mut self.long_table[..];
        let src = &hist[..];
        let s_limit = src.len() as i32 - INPUT_MARGIN;
        let mut next_emit = s;
        let mut offset1 = blk.recent_offsets[0] as i32;
        let mut offset2 = blk.recent_offsets[1] as i32;
        let mut offset3 = blk.recent_offsets[2] as i32;
        let f = Improver {
            src,
            max_match_off: mmo,
            bits_per_byte,
            rules,
        };

        'encode_loop: loop {
            let can_repeat = blk.sequences.len() > 2;
            let mut cv = load64(src, s);

            let next_hash_l = hl(cv);
            let next_hash_s = hs(cv);
            let mut candidate_l = long_table[next_hash_l];
            let mut candidate_s = table[next_hash_s];

            let mut best = Match {
                s,
                est: f.high_score(),
                ..Match::default()
            };
            let ne = next_emit;
            f.improve(
                &mut best,
                candidate_l.offset.wrapping_sub(cur),
                s,
                cv as u32,
                -1,
                ne,
            );
            f.improve(
                &mut best,
                candidate_l.prev.wrapping_sub(cur),
                s,
                cv as u32,
                -1,
                ne,
            );
            f.improve(
                &mut best,
                candidate_s.offset.wrapping_sub(cur),
                s,
                cv as u32,
                -1,
                ne,
            );
            f.improve(
                &mut best,
                candidate_s.prev.wrapping_sub(cur),
                s,
                cv as u32,
                -1,
                ne,
            );

            if can_repeat && best.length < GOOD_ENOUGH {
                if s == next_emit {
                    // Repeats straight after a match (flag 4: no literals before them).
                    f.improve(&mut best, s - offset2, s, cv as u32, 1 | 4, ne);
                    f.improve(&mut best, s - offset3, s, cv as u32, 2 | 4, ne);
                    if offset1 > 1 {
                        f.improve(&mut best, s - (offset1 - 1), s, cv as u32, 3 | 4, ne);
                    }
                }
                // No match or a non-repeat one: repeats at s+1 (and s+3).
                if best.rep <= 0 {
                    let mut cv32 = (cv >> 8) as u32;
                    let mut spp = s + 1;
                    f.improve(&mut best, spp - offset1, spp, cv32, 1, ne);
                    f.improve(&mut best, spp - offset2, spp, cv32, 2, ne);
                    f.improve(&mut best, spp - offset3, spp, cv32, 3, ne);
                    if best.rep < 0 {
                        cv32 = (cv >> 24) as u32;
                        spp += 2;
                        f.improve(&mut best, spp - offset1, spp, cv32, 1, ne);
                        f.improve(&mut best, spp - offset2, spp, cv32, 2, ne);
                        f.improve(&mut best, spp - offset3, spp, cv32, 3, ne);
                    }
                }
            }
            long_table[next_hash_l] = PrevEntry {
                offset: s.wrapping_add(cur),
                prev: candidate_l.offset,
            };
            table[next_hash_s] = PrevEntry {
                offset: s.wrapping_add(cur),
                prev: candidate_s.offset,
            };
            let mut index0 = s + 1;

            if best.length < GOOD_ENOUGH {
                if best.length < 4 {
                    s += 1 + ((s - next_emit) >> (K_SEARCH_STRENGTH - 1));
                    if s >= s_limit {
                        break 'encode_loop;
                    }
                    continue;
                }

                candidate_s = table[hs(cv >> 8)];
                cv = load64(src, s + 1);
                let cv2 = load64(src, s + 2);
                candidate_l = long_table[hl(cv)];
                let candidate_l2 = long_table[hl(cv2)];

                // Short at s+1, long at s+1 and s+2.
                let s1 = s + 1;
                f.improve(
                    &mut best,
                    candidate_s.offset.wrapping_sub(cur),
                    s1,
                    cv as u32,
                    -1,
                    ne,
                );
                f.improve(
                    &mut best,
                    candidate_l.offset.wrapping_sub(cur),
                    s1,
                    cv as u32,
                    -1,
                    ne,
                );
                f.improve(
                    &mut best,
                    candidate_l.prev.wrapping_sub(cur),
                    s1,
                    cv as u32,
                    -1,
                    ne,
                );
                let s2 = s + 2;
                f.improve(
                    &mut best,
                    candidate_l2.offset.wrapping_sub(cur),
                    s2,
                    cv2 as u32,
                    -1,
                    ne,
                );
                f.improve(
                    &mut best,
                    candidate_l2.prev.wrapping_sub(cur),
                    s2,
                    cv2 as u32,
                    -1,
                    ne,
                );

                // A long match where the best one ends, checked from 2 bytes into it,
                // unless that position is already indexed.
                if best.s > s - SKIP_BEGINNING {
                    let s_at = best.s + best.length;
                    if s_at < s_limit {
                        let candidate_end = long_table[hl(load64(src, s_at))];
                        let off = candidate_end
                            .offset
                            .wrapping_sub(cur)
                            .wrapping_sub(best.length)
                            .wrapping_add(SKIP_BEGINNING);
                        if off >= 0 {
                            let sb = best.s + SKIP_BEGINNING;
                            f.improve(&mut best, off, sb, load32(src, sb), -1, ne);
                            // Go reads `best` again: it may have changed.
                            let off = candidate_end
                                .prev
                                .wrapping_sub(cur)
                                .wrapping_sub(best.length)
                                .wrapping_add(SKIP_BEGINNING);
                            if off >= 0 {
                                let sb = best.s + SKIP_BEGINNING;
                                f.improve(&mut best, off, sb, load32(src, sb), -1, ne);
                            }
                        }
                    }
                }
            }

            s = best.s;
            if best.rep > 0 {
                let mut seq = Seq {
                    match_len: (best.length - ZSTD_MIN_MATCH) as u32,
                    ..Seq::default()
                };
                if best.s != next_emit {
                    blk.literals
                        .extend_from_slice(&src[next_emit as usize..best.s as usize]);
                    seq.lit_len = (best.s - next_emit) as u32;
                }
                // "If bit 4 is set, this is a non-lit repeat."
                seq.offset = (best.rep & 3) as u32;
                blk.sequences.push(seq);

                // Index old s + 1 -> s - 1.
                s = best.s + best.length;
                next_emit = s;
                if !rules.v1_17_3 && s >= s_limit {
                    break 'encode_loop;
                }
                let end = if rules.v1_17_3 { s.min(s_limit + 4) } else { s };
                let mut off = index0.wrapping_add(cur);
                while index0 < end {
                    let cv0 = load64(src, index0);
                    let h0 = hl(cv0);
                    let h1 = hs(cv0);
                    long_table[h0] = PrevEntry {
                        offset: off,
                        prev: long_table[h0].offset,
                    };
                    table[h1] = PrevEntry {
                        offset: off,
                        prev: table[h1].offset,
                    };
                    off = off.wrapping_add(1);
                    index0 += 1;
                }
                match best.rep {
                    2 | 5 => std::mem::swap(&mut offset1, &mut offset2),
                    3 | 6 => {
                        (offset1, offset2, offset3) = (offset3, offset1, offset2);
                    }
                    7 => {
                        (offset1, offset2, offset3) = (offset1 - 1, offset1, offset2);
                    }
                    _ => {}
                }
                if s >= s_limit {
                    break 'encode_loop;
                }
                continue;
            }

            let t = best.offset;
            (offset1, offset2, offset3) = (s - t, offset1, offset2);
            let l = best.length;
            let mut seq = Seq {
                lit_len: (s - next_emit) as u32,
                match_len: (l - ZSTD_MIN_MATCH) as u32,
                ..Seq::default()
            };
            if seq.lit_len > 0 {
                blk.literals
                    .extend_from_slice(&src[next_emit as usize..s as usize]);
            }
            seq.offset = ((s - t) as u32).wrapping_add(3);
            s += l;
            blk.sequences.push(seq);
            next_emit = s;
            if !rules.v1_17_3 && s >= s_limit {
                break 'encode_loop;
            }

            // Index old s + 1 -> s - 1 (1.17.3 on: or sLimit - 4).
            let end = if rules.v1_17_3 { s.min(s_limit - 4) } else { s };
            let mut off = index0.wrapping_add(cur);
            while index0 < end {
                let cv0 = load64(src, index0);
                let h0 = hl(cv0);
                let h1 = hs(cv0);
                long_table[h0] = PrevEntry {
                    offset: off,
                    prev: long_table[h0].offset,
                };
                table[h1] = PrevEntry {
                    offset: off,
                    prev: table[h1].offset,
                };
                index0 += 1;
                off = off.wrapping_add(1);
            }
            if s >= s_limit {
                break 'encode_loop;
            }
        }

        if (next_emit as usize) < src.len() {
            blk.literals.extend_from_slice(&src[next_emit as usize..]);
            blk.extra_lits = src.len() - next_emit as usize;
        }
        blk.recent_offsets[0] = offset1 as u32;
        blk.recent_offsets[1] = offset2 as u32;
        blk.recent_offsets[2] = offset3 as u32;
    }
}
