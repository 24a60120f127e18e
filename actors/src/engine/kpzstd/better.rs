//! Ports `zstd/enc_better.go` (klauspost/compress 1.15.12), without the
//! dictionary variant: `SpeedBetterCompression`'s match finder (a short table
//! hashing 5 bytes and a long table hashing 8 that keeps the previous entry,
//! lazy checks at s+1 and a search from the end of the match).

use super::base::{
    hash5, hash8, load32, load64, match_table, matchlen, populate, shift_prev_table, FastBase,
    Matcher, PrevEntry, Rebase, TableEntry, MAX_MATCH_LENGTH, ZSTD_MIN_MATCH,
};
use super::block::Seq;

const BETTER_LONG_TABLE_BITS: u32 = 19;
const BETTER_SHORT_TABLE_BITS: u32 = 13;

/// `betterFastEncoder`.
pub(crate) struct BetterFastEncoder {
    base: FastBase,
    /// 1.17.3 on: after a match, the skipped positions are indexed from the last
    /// search position + 1 (`index0`), not from the match start + 1.
    pub index_from_search: bool,
    /// 1.17.8 on: a block of one repeated byte is one literal and one offset-1
    /// match ("Check RLE first").
    pub rle_first: bool,
    /// How far into the match the look for a long match at its end starts: 3 from 1.15.10
    /// ("allow some bytes at the beginning to mismatch"), 0 before.
    pub end_skip: i32,
    /// 1.12.2 on: look for a long match at the end of the one found at all.
    pub end_look: bool,
    table: Vec<TableEntry>,
    long_table: Vec<PrevEntry>,
}

impl BetterFastEncoder {
    pub fn new(max_match_off: i32, rebase: Rebase) -> Self {
        BetterFastEncoder {
            base: FastBase::new(max_match_off, rebase),
            index_from_search: false,
            rle_first: false,
            end_skip: 3,
            end_look: true,
            table: match_table(1 << BETTER_SHORT_TABLE_BITS),
            long_table: match_table(1 << BETTER_LONG_TABLE_BITS),
        }
    }
}

#[inline(always)]
fn hl(u: u64) -> usize {
    hash8(u, BETTER_LONG_TABLE_BITS)
}

#[inline(always)]
fn hs(u: u64) -> usize {
    hash5(u, BETTER_SHORT_TABLE_BITS)
}

impl Matcher for BetterFastEncoder {
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
        const INPUT_MARGIN: i32 = 8 + 2;
        const MIN_NON_LITERAL_BLOCK_SIZE: usize = 16;
        const K_SEARCH_STRENGTH: i32 = 9;

        if self.base.must_rebase() {
            let mmo = self.base.max_match_off;
            if self.base.hist.is_empty() {
                self.table.fill(TableEntry::default());
                self.long_table.fill(PrevEntry::default());
            } else {
                let cur = self.base.cur;
                let min_off = cur
                    .wrapping_add(self.base.hist.len() as i32)
                    .wrapping_sub(mmo);
                for e in self.table.iter_mut() {
                    let v = e.offset;
                    e.offset = if v < min_off {
                        0
                    } else {
                        v.wrapping_sub(cur).wrapping_add(mmo)
                    };
                }
                shift_prev_table(&mut self.long_table, cur, min_off, mmo);
            }
            self.base.cur = mmo;
        }

        let mut s = self.base.add_block(block);
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
        let index_from_search = self.index_from_search;
        let end_look = self.end_look;
        blk.size = block.len();
        if self.rle_first && block.len() > ZSTD_MIN_MATCH as usize {
            // Check RLE first.
            if block[1..] == block[..block.len() - 1] {
                blk.literals.push(block[0]);
                blk.sequences.push(Seq {
                    lit_len: 1,
                    match_len: (block.len() - 1) as u32 - ZSTD_MIN_MATCH as u32,
                    offset: 1 + 3,
                    ..Seq::default()
                });
                return;
            }
        }
        if block.len() < MIN_NON_LITERAL_BLOCK_SIZE {
            blk.extra_lits = block.len();
            blk.literals.clear();
            blk.literals.extend_from_slice(block);
            return;
        }
        let src = &hist[..];
        let s_limit = src.len() as i32 - INPUT_MARGIN;
        let mut next_emit = s;
        let mut cv = load64(src, s);
        let mut offset1 = blk.recent_offsets[0] as i32;
        let mut offset2 = blk.recent_offsets[1] as i32;

        // "Index skipped": positions index0, index0+2, ... below s-1 into both tables.
        macro_rules! index_skipped {
            ($index0:expr, $s:expr) => {
                let mut index0 = $index0;
                while index0 < $s - 1 {
                    let cv0 = load64(src, index0);
                    let cv1 = cv0 >> 8;
                    let h0 = hl(cv0);
                    let off = index0.wrapping_add(cur);
                    long_table[h0] = PrevEntry {
                        offset: off,
                        prev: long_table[h0].offset,
                    };
                    table[hs(cv1)] = TableEntry {
                        offset: off.wrapping_add(1),
                        val: cv1 as u32,
                    };
                    index0 += 2;
                }
            };
        }

        'encode_loop: loop {
            let mut t: i32;
            let can_repeat = blk.sequences.len() > 2;
            let mut matched: i32;
            let mut index0: i32;
            loop {
                let next_hash_l = hl(cv);
                let next_hash_s = hs(cv);
                let candidate_l = long_table[next_hash_l];
                let candidate_s = table[next_hash_s];

                let mut rep_index = s.wrapping_sub(offset1).wrapping_add(1);
                let off = s.wrapping_add(cur);
                long_table[next_hash_l] = PrevEntry {
                    offset: off,
                    prev: candidate_l.offset,
                };
                table[next_hash_s] = TableEntry {
                    offset: off,
                    val: cv as u32,
                };
                index0 = s + 1;

                if can_repeat && rep_index >= 0 && load32(src, rep_index) == (cv >> 8) as u32 {
                    let mut seq = Seq::default();
                    let length = 4 + matchlen(s + 4 + 1, rep_index + 4, src);
                    seq.match_len = (length - ZSTD_MIN_MATCH) as u32;
                    let mut start = s + 1;
                    let start_limit = next_emit + 1;
                    let t_min = (s - mmo).max(0);
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
                    seq.offset = 1;
                    blk.sequences.push(seq);
                    s += length + 1;
                    next_emit = s;
                    if s >= s_limit {
                        break 'encode_loop;
                    }
                    index_skipped!(index0, s);
                    cv = load64(src, s);
                    continue;
                }

                let mut coffset_l = candidate_l.offset.wrapping_sub(cur);
                let coffset_lp = candidate_l.prev.wrapping_sub(cur);

                if s.wrapping_sub(coffset_l) < mmo && cv == load64(src, coffset_l) {
                    matched = matchlen(s + 8, coffset_l + 8, src) + 8;
                    t = coffset_l;
                    if s.wrapping_sub(coffset_lp) < mmo && cv == load64(src, coffset_lp) {
                        let prev_match = matchlen(s + 8, coffset_lp + 8, src) + 8;
                        if prev_match > matched {
                            matched = prev_match;
                            t = coffset_lp;
                        }
                    }
                    break;
                }
                if s.wrapping_sub(coffset_lp) < mmo && cv == load64(src, coffset_lp) {
                    matched = matchlen(s + 8, coffset_lp + 8, src) + 8;
                    t = coffset_lp;
                    break;
                }

                let coffset_s = candidate_s.offset.wrapping_sub(cur);
                if s.wrapping_sub(coffset_s) < mmo && cv as u32 == candidate_s.val {
                    matched = matchlen(s + 4, coffset_s + 4, src) + 4;
                    const CHECK_AT: i32 = 1;
                    let cv = load64(src, s + CHECK_AT);
                    let next_hash_l = hl(cv);
                    let candidate_l = long_table[next_hash_l];
                    coffset_l = candidate_l.offset.wrapping_sub(cur);
                    long_table[next_hash_l] = PrevEntry {
                        offset: (s + CHECK_AT).wrapping_add(cur),
                        prev: candidate_l.offset,
                    };
                    if s.wrapping_sub(coffset_l) < mmo && cv == load64(src, coffset_l) {
                        let matched_next = matchlen(s + 8 + CHECK_AT, coffset_l + 8, src) + 8;
                        if matched_next > matched {
                            t = coffset_l;
                            s += CHECK_AT;
                            matched = matched_next;
                            break;
                        }
                    }
                    coffset_l = candidate_l.prev.wrapping_sub(cur);
                    if s.wrapping_sub(coffset_l) < mmo && cv == load64(src, coffset_l) {
                        let matched_next = matchlen(s + 8 + CHECK_AT, coffset_l + 8, src) + 8;
                        if matched_next > matched {
                            t = coffset_l;
                            s += CHECK_AT;
                            matched = matched_next;
                            break;
                        }
                    }
                    t = coffset_s;
                    break;
                }

                s += 1 + ((s - next_emit) >> (K_SEARCH_STRENGTH - 1));
                if s >= s_limit {
                    break 'encode_loop;
                }
                cv = load64(src, s);
            }

            // A better match by a long match at the end of the current one?
            if end_look && s + matched < s_limit {
                let skip_beginning = self.end_skip;
                let next_hash_l = hl(load64(src, s + matched));
                let s2 = s + skip_beginning;
                let cv = load32(src, s2);
                let candidate_l = long_table[next_hash_l];
                let mut coffset_l = candidate_l
                    .offset
                    .wrapping_sub(cur)
                    .wrapping_sub(matched)
                    .wrapping_add(skip_beginning);
                if coffset_l >= 0
                    && coffset_l < s2
                    && s2 - coffset_l < mmo
                    && cv == load32(src, coffset_l)
                {
                    let matched_next = matchlen(s2 + 4, coffset_l + 4, src) + 4;
                    if matched_next > matched {
                        t = coffset_l;
                        s = s2;
                        matched = matched_next;
                    }
                }
                coffset_l = candidate_l
                    .prev
                    .wrapping_sub(cur)
                    .wrapping_sub(matched)
                    .wrapping_add(skip_beginning);
                if coffset_l >= 0
                    && coffset_l < s2
                    && s2 - coffset_l < mmo
                    && cv == load32(src, coffset_l)
                {
                    let matched_next = matchlen(s2 + 4, coffset_l + 4, src) + 4;
                    if matched_next > matched {
                        t = coffset_l;
                        s = s2;
                        matched = matched_next;
                    }
                }
            }

            offset2 = offset1;
            offset1 = s - t;

            let mut l = matched;
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

            // Index match start+1 (long) -> s - 1 (1.17.3 on: from the last search
            // position + 1).
            let from = if index_from_search { index0 } else { s - l + 1 };
            index_skipped!(from, s);

            cv = load64(src, s);
            if !can_repeat {
                continue;
            }

            loop {
                let o2 = s - offset2;
                if load32(src, o2) != cv as u32 {
                    break;
                }
                let next_hash_l = hl(cv);
                let next_hash_s = hs(cv);
                let l = 4 + matchlen(s + 4, o2 + 4, src);
                long_table[next_hash_l] = PrevEntry {
                    offset: s.wrapping_add(cur),
                    prev: long_table[next_hash_l].offset,
                };
                table[next_hash_s] = TableEntry {
                    offset: s.wrapping_add(cur),
                    val: cv as u32,
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
    }

    /// `EncodeNoHist` is `Encode` with history here.
    fn encode_no_hist(&mut self, src: &[u8]) {
        self.base.ensure_hist(src.len());
        self.encode(src);
    }
}
