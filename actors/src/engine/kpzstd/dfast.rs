//! Ports `zstd/enc_dfast.go` (klauspost/compress 1.15.12), without the
//! dictionary variant: `SpeedDefault`'s double-fast match finder (a long
//! table hashing 8 bytes and the short table hashing 5).

use super::base::{
    hash5, hash8, load32, load64, match_table, matchlen, populate, FastBase, Matcher, Rebase,
    TableEntry, MAX_MATCH_LENGTH, ZSTD_MIN_MATCH,
};
use super::block::Seq;

const D_FAST_LONG_TABLE_BITS: u32 = 17;
const D_FAST_LONG_TABLE_SIZE: usize = 1 << D_FAST_LONG_TABLE_BITS;
const D_FAST_SHORT_TABLE_BITS: u32 = 15;
const D_FAST_SHORT_TABLE_SIZE: usize = 1 << D_FAST_SHORT_TABLE_BITS;

/// `doubleFastEncoder`.
pub(crate) struct DoubleFastEncoder {
    base: FastBase,
    table: Vec<TableEntry>,
    long_table: Vec<TableEntry>,
}

impl DoubleFastEncoder {
    pub fn new(max_match_off: i32, rebase: Rebase) -> Self {
        DoubleFastEncoder {
            base: FastBase::new(max_match_off, rebase),
            table: match_table(D_FAST_SHORT_TABLE_SIZE),
            long_table: match_table(D_FAST_LONG_TABLE_SIZE),
        }
    }
}

#[inline(always)]
fn hl(u: u64) -> usize {
    hash8(u, D_FAST_LONG_TABLE_BITS)
}

#[inline(always)]
fn hs(u: u64) -> usize {
    hash5(u, D_FAST_SHORT_TABLE_BITS)
}

impl Matcher for DoubleFastEncoder {
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
        const K_SEARCH_STRENGTH: i32 = 8;

        // Protect against e.cur wraparound.
        if self.base.must_rebase() {
            let mmo = self.base.max_match_off;
            if self.base.hist.is_empty() {
                self.table.fill(TableEntry::default());
                self.long_table.fill(TableEntry::default());
            } else {
                let cur = self.base.cur;
                let min_off = cur
                    .wrapping_add(self.base.hist.len() as i32)
                    .wrapping_sub(mmo);
                for e in self.table.iter_mut().chain(self.long_table.iter_mut()) {
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
        let long_table = &mut self.long_table[..];
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
                let next_hash_l = hl(cv);
                let next_hash_s = hs(cv);
                let candidate_l = long_table[next_hash_l];
                let candidate_s = table[next_hash_s];

                let mut rep_index = s.wrapping_sub(offset1).wrapping_add(1);
                let entry = TableEntry {
                    offset: s.wrapping_add(cur),
                    val: cv as u32,
                };
                long_table[next_hash_l] = entry;
                table[next_hash_s] = entry;

                if can_repeat && rep_index >= 0 && load32(src, rep_index) == (cv >> 8) as u32 {
                    let mut seq = Seq::default();
                    let length = 4 + matchlen(s + 4 + 1, rep_index + 4, src);
                    seq.match_len = (length - ZSTD_MIN_MATCH) as u32;
                    let mut start = s + 1;
                    let start_limit = next_emit + 1;
                    let t_min = (s - max_match_off).max(0);
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
                    cv = load64(src, s);
                    continue;
                }
                let coffset_l = s.wrapping_sub(candidate_l.offset.wrapping_sub(cur));
                let coffset_s = s.wrapping_sub(candidate_s.offset.wrapping_sub(cur));

                if coffset_l < max_match_off && cv as u32 == candidate_l.val {
                    t = candidate_l.offset.wrapping_sub(cur);
                    break;
                }
                if coffset_s < max_match_off && cv as u32 == candidate_s.val {
                    const CHECK_AT: i32 = 1;
                    let cv = load64(src, s + CHECK_AT);
                    let next_hash_l = hl(cv);
                    let candidate_l = long_table[next_hash_l];
                    let coffset_l = s
                        .wrapping_sub(candidate_l.offset.wrapping_sub(cur))
                        .wrapping_add(CHECK_AT);
                    long_table[next_hash_l] = TableEntry {
                        offset: (s + CHECK_AT).wrapping_add(cur),
                        val: cv as u32,
                    };
                    if coffset_l < max_match_off && cv as u32 == candidate_l.val {
                        t = candidate_l.offset.wrapping_sub(cur);
                        s += CHECK_AT;
                        break;
                    }
                    t = candidate_s.offset.wrapping_sub(cur);
                    break;
                }
                s += 1 + ((s - next_emit) >> (K_SEARCH_STRENGTH - 1));
                if s >= s_limit {
                    break 'encode_loop;
                }
                cv = load64(src, s);
            }

            offset2 = offset1;
            offset1 = s - t;

            let mut l = matchlen(s + 4, t + 4, src) + 4;
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

            // Index match start+1 (long) and start+2 (short), end-2 (long) and end-1 (short).
            let index0 = s - l + 1;
            let index1 = s - 2;
            let mut cv0 = load64(src, index0);
            let mut cv1 = load64(src, index1);
            let mut te0 = TableEntry {
                offset: index0.wrapping_add(cur),
                val: cv0 as u32,
            };
            let mut te1 = TableEntry {
                offset: index1.wrapping_add(cur),
                val: cv1 as u32,
            };
            long_table[hl(cv0)] = te0;
            long_table[hl(cv1)] = te1;
            cv0 >>= 8;
            cv1 >>= 8;
            te0.offset = te0.offset.wrapping_add(1);
            te1.offset = te1.offset.wrapping_add(1);
            te0.val = cv0 as u32;
            te1.val = cv1 as u32;
            table[hs(cv0)] = te0;
            table[hs(cv1)] = te1;

            cv = load64(src, s);

            if !can_repeat {
                continue;
            }

            // Check offset 2.
            loop {
                let o2 = s - offset2;
                if load32(src, o2) != cv as u32 {
                    break;
                }
                let next_hash_s = hs(cv);
                let next_hash_l = hl(cv);
                let l = 4 + matchlen(s + 4, o2 + 4, src);
                let entry = TableEntry {
                    offset: s.wrapping_add(cur),
                    val: cv as u32,
                };
                long_table[next_hash_l] = entry;
                table[next_hash_s] = entry;
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
        const INPUT_MARGIN: i32 = 8 + 2;
        const MIN_NON_LITERAL_BLOCK_SIZE: usize = 16;
        const K_SEARCH_STRENGTH: i32 = 8;

        if self.base.cur >= self.base.buffer_reset {
            self.table.fill(TableEntry::default());
            self.long_table.fill(TableEntry::default());
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
        let long_table = &mut self.long_table[..];

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
                let next_hash_l = hl(cv);
                let next_hash_s = hs(cv);
                let candidate_l = long_table[next_hash_l];
                let candidate_s = table[next_hash_s];

                let mut rep_index = s.wrapping_sub(offset1).wrapping_add(1);
                let entry = TableEntry {
                    offset: s.wrapping_add(cur),
                    val: cv as u32,
                };
                long_table[next_hash_l] = entry;
                table[next_hash_s] = entry;

                if blk.sequences.len() > 2 && load32(src, rep_index) == (cv >> 8) as u32 {
                    let mut seq = Seq::default();
                    let length = 4 + matchlen(s + 4 + 1, rep_index + 4, src);
                    seq.match_len = (length - ZSTD_MIN_MATCH) as u32;
                    let mut start = s + 1;
                    let start_limit = next_emit + 1;
                    let t_min = (s - max_match_off).max(0);
                    while rep_index > t_min
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
                    s += length + 1;
                    next_emit = s;
                    if s >= s_limit {
                        break 'encode_loop;
                    }
                    cv = load64(src, s);
                    continue;
                }
                let coffset_l = s.wrapping_sub(candidate_l.offset.wrapping_sub(cur));
                let coffset_s = s.wrapping_sub(candidate_s.offset.wrapping_sub(cur));

                if coffset_l < max_match_off && cv as u32 == candidate_l.val {
                    t = candidate_l.offset.wrapping_sub(cur);
                    break;
                }
                if coffset_s < max_match_off && cv as u32 == candidate_s.val {
                    const CHECK_AT: i32 = 1;
                    let cv = load64(src, s + CHECK_AT);
                    let next_hash_l = hl(cv);
                    let candidate_l = long_table[next_hash_l];
                    let coffset_l = s
                        .wrapping_sub(candidate_l.offset.wrapping_sub(cur))
                        .wrapping_add(CHECK_AT);
                    long_table[next_hash_l] = TableEntry {
                        offset: (s + CHECK_AT).wrapping_add(cur),
                        val: cv as u32,
                    };
                    if coffset_l < max_match_off && cv as u32 == candidate_l.val {
                        t = candidate_l.offset.wrapping_sub(cur);
                        s += CHECK_AT;
                        break;
                    }
                    t = candidate_s.offset.wrapping_sub(cur);
                    break;
                }
                s += 1 + ((s - next_emit) >> (K_SEARCH_STRENGTH - 1));
                if s >= s_limit {
                    break 'encode_loop;
                }
                cv = load64(src, s);
            }

            offset2 = offset1;
            offset1 = s - t;

            let mut l = matchlen(s + 4, t + 4, src) + 4;
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

            let index0 = s - l + 1;
            let index1 = s - 2;
            let mut cv0 = load64(src, index0);
            let mut cv1 = load64(src, index1);
            let mut te0 = TableEntry {
                offset: index0.wrapping_add(cur),
                val: cv0 as u32,
            };
            let mut te1 = TableEntry {
                offset: index1.wrapping_add(cur),
                val: cv1 as u32,
            };
            long_table[hl(cv0)] = te0;
            long_table[hl(cv1)] = te1;
            cv0 >>= 8;
            cv1 >>= 8;
            te0.offset = te0.offset.wrapping_add(1);
            te1.offset = te1.offset.wrapping_add(1);
            te0.val = cv0 as u32;
            te1.val = cv1 as u32;
            table[hs(cv0)] = te0;
            table[hs(cv1)] = te1;

            cv = load64(src, s);

            if blk.sequences.len() <= 2 {
                continue;
            }

            loop {
                let o2 = s - offset2;
                if load32(src, o2) != cv as u32 {
                    break;
                }
                // Go hashes cv1>>8 here (the end-1 value shifted once more), not cv.
                let next_hash_s = hs(cv1 >> 8);
                let next_hash_l = hl(cv);
                let l = 4 + matchlen(s + 4, o2 + 4, src);
                let entry = TableEntry {
                    offset: s.wrapping_add(cur),
                    val: cv as u32,
                };
                long_table[next_hash_l] = entry;
                table[next_hash_s] = entry;
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
        // No history is kept: move cur on so the next user sees no false matches.
        if *cur_ref < *buffer_reset {
            *cur_ref = cur_ref.wrapping_add(src.len() as i32);
        }
    }
}
