//! Level 6 (`level6.go`): level 5's tables, indexing across each match, and trying the
//! last match's offset (a repeat) against a short-table candidate.

use super::{
    emit_remainder, end_check, hash4, hash7, load32, load64, matchlen, matchlen_long, protect_prev,
    EntryPrev, FastGen, BUFFER_RESET, INPUT_MARGIN, MAX_MATCH_LENGTH, MAX_MATCH_OFFSET,
    MIN_NON_LITERAL_BLOCK_SIZE, TABLE_BITS, TABLE_SIZE,
};
use crate::engine::kpflate::tokens::Tokens;
use crate::engine::kpflate::KpVersion;

pub(in crate::engine::kpflate) struct L6 {
    g: FastGen,
    /// As [`super::L5`]'s (without its limit on the match length): from 1.12.2, 2 bytes in from
    /// 1.15.10.
    end_check: Option<i32>,
    table: Box<[i32]>,
    b_table: Box<[EntryPrev]>,
}

impl L6 {
    pub(super) fn new(version: KpVersion) -> Self {
        L6 {
            g: FastGen::new(),
            end_check: end_check(version),
            table: vec![0; TABLE_SIZE].into_boxed_slice(),
            b_table: vec![EntryPrev::default(); TABLE_SIZE].into_boxed_slice(),
        }
    }

    pub(super) fn reset(&mut self) {
        self.g.reset();
    }

    pub(super) fn encode(&mut self, dst: &mut Tokens, src_in: &[u8]) {
        const HB: u32 = TABLE_BITS;
        while self.g.cur >= BUFFER_RESET {
            if self.g.len == 0 {
                self.table.fill(0);
                self.b_table.fill(EntryPrev::default());
                self.g.cur = MAX_MATCH_OFFSET;
                break;
            }
            let min_off = self.g.min_off();
            for v in self.table.iter_mut() {
                *v = self.g.shift(*v, min_off);
            }
            protect_prev(&mut self.g, &mut self.b_table, true);
            self.g.cur = MAX_MATCH_OFFSET;
        }
        let mut s = self.g.add_block(src_in);
        if src_in.len() < MIN_NON_LITERAL_BLOCK_SIZE {
            dst.n = src_in.len();
            return;
        }
        let cur = self.g.cur;
        let src = &self.g.hist[..self.g.len];
        let table = &mut self.table[..TABLE_SIZE];
        let b_table = &mut self.b_table[..TABLE_SIZE];
        let mut next_emit = s;
        let s_limit = src.len() as i32 - INPUT_MARGIN;
        let mut cv = load64(src, s);
        let mut repeat: i32 = 1;

        'main: loop {
            const SKIP_LOG: i32 = 7;
            const DO_EVERY: i32 = 1;
            let mut next_s = s;
            let mut l: i32 = 0;
            let mut t;
            loop {
                let mut next_hash_s = hash4(cv, HB);
                let mut next_hash_l = hash7(cv, HB);
                s = next_s;
                next_s = s + DO_EVERY + ((s - next_emit) >> SKIP_LOG);
                if next_s > s_limit {
                    break 'main;
                }
                let s_candidate = table[next_hash_s];
                let mut l_candidate = b_table[next_hash_l];
                let next = load64(src, next_s);
                let entry = s + cur;
                table[next_hash_s] = entry;
                b_table[next_hash_l].push(entry);

                next_hash_s = hash4(next, HB);
                next_hash_l = hash7(next, HB);

                t = l_candidate.cur - cur;
                if s - t < MAX_MATCH_OFFSET {
                    if cv as u32 == load32(src, l_candidate.cur - cur) {
                        table[next_hash_s] = next_s + cur;
                        b_table[next_hash_l].push(next_s + cur);
                        let t2 = l_candidate.prev - cur;
                        if s - t2 < MAX_MATCH_OFFSET
                            && cv as u32 == load32(src, l_candidate.prev - cur)
                        {
                            l = matchlen(s + 4, t + 4, src) + 4;
                            let ml1 = matchlen(s + 4, t2 + 4, src) + 4;
                            if ml1 > l {
                                t = t2;
                                l = ml1;
                                break;
                            }
                        }
                        break;
                    }
                    t = l_candidate.prev - cur;
                    if s - t < MAX_MATCH_OFFSET && cv as u32 == load32(src, l_candidate.prev - cur)
                    {
                        table[next_hash_s] = next_s + cur;
                        b_table[next_hash_l].push(next_s + cur);
                        break;
                    }
                }

                t = s_candidate - cur;
                if s - t < MAX_MATCH_OFFSET && cv as u32 == load32(src, s_candidate - cur) {
                    l = matchlen(s + 4, t + 4, src) + 4;
                    l_candidate = b_table[next_hash_l];
                    table[next_hash_s] = next_s + cur;
                    b_table[next_hash_l].push(next_s + cur);

                    const REP_OFF: i32 = 1;
                    let mut t2 = s - repeat + REP_OFF;
                    if load32(src, t2) == (cv >> (8 * REP_OFF)) as u32 {
                        let ml = matchlen(s + 4 + REP_OFF, t2 + 4, src) + 4;
                        if ml > l {
                            t = t2;
                            l = ml;
                            s += REP_OFF;
                            break;
                        }
                    }

                    t2 = l_candidate.cur - cur;
                    if next_s - t2 < MAX_MATCH_OFFSET {
                        if load32(src, l_candidate.cur - cur) == next as u32 {
                            let ml = matchlen(next_s + 4, t2 + 4, src) + 4;
                            if ml > l {
                                t = t2;
                                s = next_s;
                                l = ml;
                            }
                        }
                        t2 = l_candidate.prev - cur;
                        if next_s - t2 < MAX_MATCH_OFFSET
                            && load32(src, l_candidate.prev - cur) == next as u32
                        {
                            let ml = matchlen(next_s + 4, t2 + 4, src) + 4;
                            if ml > l {
                                t = t2;
                                s = next_s;
                                l = ml;
                                break;
                            }
                        }
                    }
                    break;
                }
                cv = next;
            }

            if l == 0 {
                l = matchlen_long(s + 4, t + 4, src) + 4;
            } else if l == MAX_MATCH_LENGTH {
                l += matchlen_long(s + l, t + l, src);
            }

            let s_at = s + l;
            if let Some(skip) = self.end_check.filter(|_| s_at < s_limit) {
                let e_long = b_table[hash7(load64(src, s_at), HB)];
                let mut t2 = e_long.cur - cur - l + skip;
                let s2 = s + skip;
                let off = s2 - t2;
                if off < MAX_MATCH_OFFSET {
                    if off > 0 && t2 >= 0 {
                        let l2 = matchlen_long(s2, t2, src);
                        if l2 > l {
                            t = t2;
                            l = l2;
                            s = s2;
                        }
                    }
                    t2 = e_long.prev - cur - l + skip;
                    let off = s2 - t2;
                    if off > 0 && off < MAX_MATCH_OFFSET && t2 >= 0 {
                        let l2 = matchlen_long(s2, t2, src);
                        if l2 > l {
                            t = t2;
                            l = l2;
                            s = s2;
                        }
                    }
                }
            }

            while t > 0 && s > next_emit && src[(t - 1) as usize] == src[(s - 1) as usize] {
                s -= 1;
                t -= 1;
                l += 1;
            }
            if next_emit < s {
                dst.emit_literals(&src[next_emit as usize..s as usize]);
            }
            dst.add_match_long(l, (s - t - 1) as u32);
            repeat = s - t;
            s += l;
            next_emit = s;
            if next_s >= s {
                s = next_s + 1;
            }
            if s >= s_limit {
                let mut i = next_s + 1;
                while i < src.len() as i32 - 8 {
                    let cv = load64(src, i);
                    table[hash4(cv, HB)] = i + cur;
                    b_table[hash7(cv, HB)].push(i + cur);
                    i += 2;
                }
                break 'main;
            }
            let mut i = next_s + 1;
            while i < s - 1 {
                let cv = load64(src, i);
                let t = i + cur;
                let t2 = t + 1;
                let e1 = hash7(cv, HB);
                let e2 = hash7(cv >> 8, HB);
                table[hash4(cv, HB)] = t;
                b_table[e1].push(t);
                b_table[e2].push(t2);
                i += 2;
            }
            cv = load64(src, s);
        }
        emit_remainder(dst, src, next_emit);
    }
}
