//! Level 4 (`level4.go`): a short (4-byte) and a long (7-byte) hash table.

use super::{
    emit_remainder, hash4, hash7, load32, load64, matchlen_long, protect_plain, FastGen,
    INPUT_MARGIN, MAX_MATCH_OFFSET, MIN_NON_LITERAL_BLOCK_SIZE, TABLE_BITS, TABLE_SIZE,
};
use crate::engine::kpflate::tokens::{match_len, Tokens};
use crate::engine::kpflate::KpVersion;

pub(in crate::engine::kpflate) struct L4 {
    g: FastGen,
    /// klauspost 1.18.0+: `lOff` became the candidate's position but is still used as a
    /// distance when measuring the next-long candidate (`src[nextS-lOff+4:]`).
    l_off_quirk: bool,
    table: Box<[i32]>,
    b_table: Box<[i32]>,
}

impl L4 {
    pub(super) fn new(version: KpVersion) -> Self {
        L4 {
            g: FastGen::new(),
            l_off_quirk: version >= KpVersion::V1_18_0,
            table: vec![0; TABLE_SIZE].into_boxed_slice(),
            b_table: vec![0; TABLE_SIZE].into_boxed_slice(),
        }
    }

    pub(super) fn reset(&mut self) {
        self.g.reset();
    }

    pub(super) fn encode(&mut self, dst: &mut Tokens, src_in: &[u8]) {
        const HB: u32 = TABLE_BITS;
        protect_plain(
            &mut self.g,
            &mut [&mut self.table[..], &mut self.b_table[..]],
        );
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

        'main: loop {
            const SKIP_LOG: i32 = 6;
            const DO_EVERY: i32 = 1;
            let mut next_s = s;
            let mut t;
            loop {
                let next_hash_s = hash4(cv, HB);
                let next_hash_l = hash7(cv, HB);
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
                b_table[next_hash_l] = entry;

                t = l_candidate - cur;
                if s - t < MAX_MATCH_OFFSET && cv as u32 == load32(src, l_candidate - cur) {
                    break;
                }
                t = s_candidate - cur;
                if s - t < MAX_MATCH_OFFSET && cv as u32 == load32(src, s_candidate - cur) {
                    l_candidate = b_table[hash7(next, HB)];
                    let l_off = next_s - (l_candidate - cur);
                    if l_off < MAX_MATCH_OFFSET && load32(src, l_candidate - cur) == next as u32 {
                        let l1 = match_len(&src[(s + 4) as usize..], &src[(t + 4) as usize..]);
                        // 1.18.0+ reads from the distance as if it were a position.
                        let from = if self.l_off_quirk {
                            l_off
                        } else {
                            next_s - l_off
                        };
                        let l2 =
                            match_len(&src[(next_s + 4) as usize..], &src[(from + 4) as usize..]);
                        if l2 > l1 {
                            s = next_s;
                            t = l_candidate - cur;
                        }
                    }
                    break;
                }
                cv = next;
            }

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
                if ((s + 8) as usize) < src.len() {
                    let cv = load64(src, s);
                    table[hash4(cv, HB)] = s + cur;
                    b_table[hash7(cv, HB)] = s + cur;
                }
                break 'main;
            }
            let mut i = next_s;
            if i < s - 1 {
                let cv = load64(src, i);
                let t = i + cur;
                let t2 = t + 1;
                b_table[hash7(cv, HB)] = t;
                b_table[hash7(cv >> 8, HB)] = t2;
                table[hash4(cv >> 8, HB)] = t2;
                i += 3;
                while i < s - 1 {
                    let cv = load64(src, i);
                    let t = i + cur;
                    let t2 = t + 1;
                    b_table[hash7(cv, HB)] = t;
                    b_table[hash7(cv >> 8, HB)] = t2;
                    table[hash4(cv >> 8, HB)] = t2;
                    i += 3;
                }
            }
            let x = load64(src, s - 1);
            let o = cur + s - 1;
            table[hash4(x, HB)] = o;
            b_table[hash7(x, HB)] = o;
            cv = x >> 8;
        }
        emit_remainder(dst, src, next_emit);
    }
}
