//! Level 3 (`level3.go`): two candidates per hash (current and previous), in three generations.

use super::{
    emit_remainder, hash4, hash4_l1, hash5, load32, load64, matchlen_long, protect_prev, EntryPrev,
    FastGen, BUFFER_RESET, INPUT_MARGIN, MAX_MATCH_OFFSET,
};
use crate::engine::kpflate::tokens::{match_len, Tokens};
use crate::engine::kpflate::KpVersion;

/// Level 3, as three generations of klauspost write it (`era`, see [`L3Era`]).
pub(in crate::engine::kpflate) struct L3 {
    g: FastGen,
    era: L3Era,
    table: Box<[EntryPrev]>,
}

/// Which level 3: the releases that changed it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum L3Era {
    /// Before 1.14.3: level 1's 4-byte hash into 2^15 entries; after a match the 4
    /// positions before its end are indexed, and a candidate found there is taken only at the
    /// older of the two entries (a match at the newer is dropped).
    Hash15,
    /// 1.14.3-1.15.10: 4-byte hashes into 2^16 entries, an input margin of 7, a skip of 1/64,
    /// every 5th position of a match indexed.
    Hash4,
    /// 1.15.11 and later: 5-byte hashes, a margin of 11, a skip of 1/128, every 6th position.
    Hash5,
}

impl L3 {
    pub(super) fn new(version: KpVersion) -> Self {
        L3 {
            g: FastGen::new(),
            era: match version {
                v if v < KpVersion::V1_14_3 => L3Era::Hash15,
                v if v < KpVersion::V1_15_12 => L3Era::Hash4,
                _ => L3Era::Hash5,
            },
            table: vec![EntryPrev::default(); 1 << 16].into_boxed_slice(),
        }
    }

    pub(super) fn reset(&mut self) {
        self.g.reset();
    }

    pub(super) fn encode(&mut self, dst: &mut Tokens, src_in: &[u8]) {
        match self.era {
            L3Era::Hash15 => self.encode_as::<0>(dst, src_in),
            L3Era::Hash4 => self.encode_as::<1>(dst, src_in),
            L3Era::Hash5 => self.encode_as::<2>(dst, src_in),
        }
    }

    /// `ERA`: 0, 1, 2 for [`L3Era`]'s `Hash15`, `Hash4`, `Hash5`.
    fn encode_as<const ERA: u8>(&mut self, dst: &mut Tokens, src_in: &[u8]) {
        const HB: u32 = 16;
        let hash4_era = ERA < 2;
        let hash = |u: u64| match ERA {
            0 => hash4_l1(u),
            1 => hash4(u, HB),
            _ => hash5(u, HB),
        };
        let input_margin = if hash4_era { 8 - 1 } else { INPUT_MARGIN };
        while self.g.cur >= BUFFER_RESET {
            if self.g.len == 0 {
                self.table.fill(EntryPrev::default());
                self.g.cur = MAX_MATCH_OFFSET;
                break;
            }
            protect_prev(&mut self.g, &mut self.table, false);
            self.g.cur = MAX_MATCH_OFFSET;
        }
        let mut s = self.g.add_block(src_in);
        if src_in.len() < 1 + 1 + input_margin as usize {
            dst.n = src_in.len();
            return;
        }
        let cur = self.g.cur;
        let src = &self.g.hist[..self.g.len];
        let table = &mut self.table[..1 << HB];
        let mut next_emit = s;
        let s_limit = src.len() as i32 - input_margin;
        let mut cv = load64(src, s);

        'main: loop {
            let skip_log: i32 = if hash4_era { 6 } else { 7 };
            let mut next_s = s;
            let mut candidate;
            loop {
                let next_hash = hash(cv);
                s = next_s;
                next_s = s + 1 + ((s - next_emit) >> skip_log);
                if next_s > s_limit {
                    break 'main;
                }
                let candidates = table[next_hash];
                let now = if hash4_era {
                    load32(src, next_s) as u64
                } else {
                    load64(src, next_s)
                };
                let min_offset = cur + s - (MAX_MATCH_OFFSET - 4);
                table[next_hash] = EntryPrev {
                    prev: candidates.cur,
                    cur: s + cur,
                };
                candidate = candidates.cur;
                if candidate < min_offset {
                    cv = now;
                    continue;
                }
                if cv as u32 == load32(src, candidate - cur) {
                    if candidates.prev < min_offset
                        || cv as u32 != load32(src, candidates.prev - cur)
                    {
                        break;
                    }
                    let offset = s - (candidate - cur);
                    let o2 = s - (candidates.prev - cur);
                    let l1 = match_len(&src[(s + 4) as usize..], &src[(s - offset + 4) as usize..]);
                    let l2 = match_len(&src[(s + 4) as usize..], &src[(s - o2 + 4) as usize..]);
                    if l2 > l1 {
                        candidate = candidates.prev;
                    }
                    break;
                } else {
                    candidate = candidates.prev;
                    if candidate > min_offset && cv as u32 == load32(src, candidate - cur) {
                        break;
                    }
                }
                cv = now;
            }

            loop {
                let mut t = candidate - cur;
                let mut l = matchlen_long(s + 4, t + 4, src) + 4;
                while t > 0 && s > next_emit && src[(t - 1) as usize] == src[(s - 1) as usize] {
                    s -= 1;
                    t -= 1;
                    l += 1;
                }
                if next_emit < s {
                    dst.emit_literals(&src[next_emit as usize..s as usize]);
                }
                dst.add_match_long(l, (s - t - 1) as u32);
                s += l;
                next_emit = s;
                if next_s >= s {
                    s = next_s + 1;
                }
                if s >= s_limit {
                    t += l;
                    if ((t + if hash4_era { 4 } else { 8 }) as usize) < src.len() && t > 0 {
                        cv = if hash4_era {
                            load32(src, t) as u64
                        } else {
                            load64(src, t)
                        };
                        let h = hash(cv);
                        let c = table[h].cur;
                        table[h] = EntryPrev {
                            prev: c,
                            cur: cur + t,
                        };
                    }
                    break 'main;
                }
                let mut x;
                if ERA == 0 {
                    x = load64(src, s - 3);
                    table[hash(x)].push(cur + s - 3);
                    x >>= 8;
                } else {
                    let mut i = s - l + 2;
                    while i < s - 5 {
                        let h = hash(if hash4_era {
                            load32(src, i) as u64
                        } else {
                            load64(src, i)
                        });
                        table[h].push(cur + i);
                        i += if hash4_era { 5 } else { 6 };
                    }
                    x = load64(src, s - 2);
                }
                table[hash(x)].push(cur + s - 2);
                x >>= 8;
                table[hash(x)].push(cur + s - 1);
                x >>= 8;
                let curr_hash = hash(x);
                let candidates = table[curr_hash];
                cv = x;
                table[curr_hash] = EntryPrev {
                    prev: candidates.cur,
                    cur: s + cur,
                };
                candidate = candidates.cur;
                let min_offset = cur + s - (MAX_MATCH_OFFSET - 4);
                if ERA == 0 {
                    // Only a match at the older entry is taken.
                    if candidate > min_offset && cv as u32 != load32(src, candidate - cur) {
                        candidate = candidates.prev;
                        if candidate > min_offset
                            && cv as u32 == load32(src, candidate - cur)
                            && s - (candidate - cur) <= MAX_MATCH_OFFSET
                        {
                            continue;
                        }
                    }
                } else if candidate > min_offset {
                    if cv as u32 == load32(src, candidate - cur) {
                        continue;
                    }
                    candidate = candidates.prev;
                    if candidate > min_offset && cv as u32 == load32(src, candidate - cur) {
                        continue;
                    }
                }
                cv = x >> 8;
                s += 1;
                break;
            }
        }
        emit_remainder(dst, src, next_emit);
    }
}
