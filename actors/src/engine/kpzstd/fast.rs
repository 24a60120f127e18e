//! Ports `zstd/enc_fast.go` (klauspost/compress 1.15.12), without the
//! dictionary variant: `SpeedFastest`'s single-table match finder (6-byte
//! hashes, checking two positions per step).

use super::base::{
    hash6, load32, load64, match_table, matchlen, matchlen_words, populate, FastBase, Matcher,
    Rebase, TableEntry, MAX_MATCH_LENGTH, ZSTD_MIN_MATCH,
};
use super::block::Seq;

const TABLE_BITS: u32 = 15;
const TABLE_SIZE: usize = 1 << TABLE_BITS;

/// `fastEncoder`.
pub(crate) struct FastEncoder {
    base: FastBase,
    /// `kSearchStrength` of `Encode` and `EncodeNoHist`: 6 and 6 from 1.14.3, 7 and 8
    /// before.
    pub search_strength: (i32, i32),
    /// Before 1.14.0: match lengths in whole 8-byte words ([`matchlen_words`]).
    pub word_matchlen: bool,
    table: Vec<TableEntry>,
}

impl FastEncoder {
    pub fn new(max_match_off: i32, rebase: Rebase) -> Self {
        FastEncoder {
            base: FastBase::new(max_match_off, rebase),
            search_strength: (6, 6),
            word_matchlen: false,
            table: match_table(TABLE_SIZE),
        }
    }
}

/// The match length function: [`matchlen_words`] before 1.14.0 (`words`), else [`matchlen`].
#[inline(always)]
fn match_length(words: bool) -> impl Fn(i32, i32, &[u8]) -> i32 {
    move |s, t, src| {
        if words {
            matchlen_words(s, t, src)
        } else {
            matchlen(s, t, src)
        }
    }
}

#[inline(always)]
fn h(u: u64) -> usize {
    hash6(u, TABLE_BITS)
}

impl Matcher for FastEncoder {
    fn base(&mut self) -> &mut FastBase {
        &mut self.base
    }

    fn base_ref(&self) -> &FastBase {
        &self.base
    }

    fn populate_tables(&mut self) {
        populate(&mut self.table);
    }

    fn encode(&mut self, block: &[u8]) {
        let ml = match_length(self.word_matchlen);
        const INPUT_MARGIN: i32 = 8;
        const MIN_NON_LITERAL_BLOCK_SIZE: usize = 1 + 1 + INPUT_MARGIN as usize;
        const STEP_SIZE: i32 = 2;
        let k_search_strength = self.search_strength.0;

        if self.base.must_rebase() {
            let mmo = self.base.max_match_off;
            if self.base.hist.is_empty() {
                self.table.fill(TableEntry::default());
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
        let (cur, max_match_off) = (*cur, *max_match_off);
        let table = &mut self.table[..];
        blk.size = block.len();
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

        'encode_loop: loop {
            let mut t: i32;
            let can_repeat = blk.sequences.len() > 2;
            loop {
                let next_hash = h(cv);
                let next_hash2 = h(cv >> 8);
                let candidate = table[next_hash];
                let candidate2 = table[next_hash2];
                let mut rep_index = s.wrapping_sub(offset1).wrapping_add(2);

                table[next_hash] = TableEntry {
                    offset: s.wrapping_add(cur),
                    val: cv as u32,
                };
                table[next_hash2] = TableEntry {
                    offset: s.wrapping_add(cur).wrapping_add(1),
                    val: (cv >> 8) as u32,
                };

                if can_repeat && rep_index >= 0 && load32(src, rep_index) == (cv >> 16) as u32 {
                    let mut seq = Seq::default();
                    let length = 4 + ml(s + 6, rep_index + 4, src);
                    seq.match_len = (length - ZSTD_MIN_MATCH) as u32;
                    let mut start = s + 2;
                    let start_limit = next_emit + 1;
                    let s_min = (s - max_match_off).max(0);
                    while rep_index > s_min
                        && start > start_limit
                        && src[(rep_index - 1) as usize] == src[(start - 1) as usize]
                        && seq.match_len < (MAX_MATCH_LENGTH - ZSTD_MIN_MATCH) as u32
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
                    s += length + 2;
                    next_emit = s;
                    if s >= s_limit {
                        break 'encode_loop;
                    }
                    cv = load64(src, s);
                    continue;
                }
                let coffset0 = s.wrapping_sub(candidate.offset.wrapping_sub(cur));
                let coffset1 = s
                    .wrapping_sub(candidate2.offset.wrapping_sub(cur))
                    .wrapping_add(1);
                if coffset0 < max_match_off && cv as u32 == candidate.val {
                    t = candidate.offset.wrapping_sub(cur);
                    break;
                }
                if coffset1 < max_match_off && (cv >> 8) as u32 == candidate2.val {
                    t = candidate2.offset.wrapping_sub(cur);
                    s += 1;
                    break;
                }
                s += STEP_SIZE + ((s - next_emit) >> (k_search_strength - 1));
                if s >= s_limit {
                    break 'encode_loop;
                }
                cv = load64(src, s);
            }
            offset2 = offset1;
            offset1 = s - t;

            let mut l = ml(s + 4, t + 4, src) + 4;
            let t_min = (s - max_match_off).max(0);
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
            cv = load64(src, s);

            // Check offset 2.
            let o2 = s - offset2;
            if can_repeat && load32(src, o2) == cv as u32 {
                let l = 4 + ml(s + 4, o2 + 4, src);
                table[h(cv)] = TableEntry {
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

    fn encode_no_hist(&mut self, src: &[u8]) {
        let ml = match_length(self.word_matchlen);
        const INPUT_MARGIN: i32 = 8;
        const MIN_NON_LITERAL_BLOCK_SIZE: usize = 1 + 1 + INPUT_MARGIN as usize;
        const STEP_SIZE: i32 = 2;
        let k_search_strength = self.search_strength.1;

        if self.base.cur >= self.base.buffer_reset {
            self.table.fill(TableEntry::default());
            self.base.cur = self.base.max_match_off;
        }
        let FastBase {
            cur: cur_ref,
            max_match_off,
            buffer_reset,
            blk,
            ..
        } = &mut self.base;
        let (cur, max_match_off) = (*cur_ref, *max_match_off);
        let table = &mut self.table[..];

        let mut s = 0i32;
        blk.size = src.len();
        if src.len() < MIN_NON_LITERAL_BLOCK_SIZE {
            blk.extra_lits = src.len();
            blk.literals.clear();
            blk.literals.extend_from_slice(src);
            return;
        }
        let s_limit = src.len() as i32 - INPUT_MARGIN;
        let mut next_emit = s;
        let mut cv = load64(src, s);
        let mut offset1 = blk.recent_offsets[0] as i32;
        // As in Go; the first match overwrites it before it is read.
        #[allow(unused_assignments)]
        let mut offset2 = blk.recent_offsets[1] as i32;

        'encode_loop: loop {
            let mut t: i32;
            loop {
                let next_hash = h(cv);
                let next_hash2 = h(cv >> 8);
                let candidate = table[next_hash];
                let candidate2 = table[next_hash2];
                let mut rep_index = s.wrapping_sub(offset1).wrapping_add(2);

                table[next_hash] = TableEntry {
                    offset: s.wrapping_add(cur),
                    val: cv as u32,
                };
                table[next_hash2] = TableEntry {
                    offset: s.wrapping_add(cur).wrapping_add(1),
                    val: (cv >> 8) as u32,
                };

                if blk.sequences.len() > 2 && load32(src, rep_index) == (cv >> 16) as u32 {
                    let mut seq = Seq::default();
                    let length = 4 + ml(s + 6, rep_index + 4, src);
                    seq.match_len = (length - ZSTD_MIN_MATCH) as u32;
                    let mut start = s + 2;
                    let start_limit = next_emit + 1;
                    let s_min = (s - max_match_off).max(0);
                    while rep_index > s_min
                        && start > start_limit
                        && src[(rep_index - 1) as usize] == src[(start - 1) as usize]
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
                    s += length + 2;
                    next_emit = s;
                    if s >= s_limit {
                        break 'encode_loop;
                    }
                    cv = load64(src, s);
                    continue;
                }
                let coffset0 = s.wrapping_sub(candidate.offset.wrapping_sub(cur));
                let coffset1 = s
                    .wrapping_sub(candidate2.offset.wrapping_sub(cur))
                    .wrapping_add(1);
                if coffset0 < max_match_off && cv as u32 == candidate.val {
                    t = candidate.offset.wrapping_sub(cur);
                    break;
                }
                if coffset1 < max_match_off && (cv >> 8) as u32 == candidate2.val {
                    t = candidate2.offset.wrapping_sub(cur);
                    s += 1;
                    break;
                }
                s += STEP_SIZE + ((s - next_emit) >> (k_search_strength - 1));
                if s >= s_limit {
                    break 'encode_loop;
                }
                cv = load64(src, s);
            }
            offset2 = offset1;
            offset1 = s - t;

            let mut l = ml(s + 4, t + 4, src) + 4;
            let t_min = (s - max_match_off).max(0);
            while t > t_min && s > next_emit && src[(t - 1) as usize] == src[(s - 1) as usize] {
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
            cv = load64(src, s);

            let o2 = s - offset2;
            if blk.sequences.len() > 2 && load32(src, o2) == cv as u32 {
                let l = 4 + ml(s + 4, o2 + 4, src);
                table[h(cv)] = TableEntry {
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
        if *cur_ref < *buffer_reset {
            *cur_ref = cur_ref.wrapping_add(src.len() as i32);
        }
    }
}
