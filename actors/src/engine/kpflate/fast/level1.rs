//! Level 1 (`level1.go`): one table of 4- or 5-byte hashes.

use super::{
    emit_remainder, hash4_l1, hash5, load32, load64, matchlen_long, protect_plain, FastGen,
    INPUT_MARGIN, MAX_MATCH_OFFSET, MIN_NON_LITERAL_BLOCK_SIZE, TABLE_BITS, TABLE_SIZE,
};
use crate::engine::kpflate::tokens::Tokens;
use crate::engine::kpflate::KpVersion;

/// Level 1. Before 1.15.11 (`hash4`), levels 1-3 hash the low 4 bytes where later releases
/// hash 5 (level 1 with its own multiplier) and index the end of the last match when 4 bytes
/// (not 8) follow it; level 3 also had a smaller input margin, skipped faster and indexed
/// every 5th position of a match (not every 6th).
pub(in crate::engine::kpflate) struct L1 {
    g: FastGen,
    hash4: bool,
    table: Box<[i32]>,
}

impl L1 {
    pub(super) fn new(version: KpVersion) -> Self {
        L1 {
            g: FastGen::new(),
            hash4: version < KpVersion::V1_15_12,
            table: vec![0; TABLE_SIZE].into_boxed_slice(),
        }
    }

    pub(super) fn reset(&mut self) {
        self.g.reset();
    }

    pub(super) fn encode(&mut self, dst: &mut Tokens, src_in: &[u8]) {
        if self.hash4 {
            self.encode_as::<true>(dst, src_in)
        } else {
            self.encode_as::<false>(dst, src_in)
        }
    }

    fn encode_as<const HASH4: bool>(&mut self, dst: &mut Tokens, src_in: &[u8]) {
        const HB: u32 = TABLE_BITS;
        let hash = |u: u64| if HASH4 { hash4_l1(u) } else { hash5(u, HB) };
        protect_plain(&mut self.g, &mut [&mut self.table[..]]);
        let mut s = self.g.add_block(src_in);
        if src_in.len() < MIN_NON_LITERAL_BLOCK_SIZE {
            dst.n = src_in.len();
            return;
        }
        let cur = self.g.cur;
        let src = &self.g.hist[..self.g.len];
        let table = &mut self.table[..TABLE_SIZE];
        let mut next_emit = s;
        let s_limit = src.len() as i32 - INPUT_MARGIN;
        let mut cv = load64(src, s);

        'main: loop {
            const SKIP_LOG: i32 = 5;
            const DO_EVERY: i32 = 2;
            let mut next_s;
            let mut candidate;
            loop {
                let mut next_hash = hash(cv);
                candidate = table[next_hash];
                next_s = s + DO_EVERY + ((s - next_emit) >> SKIP_LOG);
                if next_s > s_limit {
                    break 'main;
                }
                let mut now = load64(src, next_s);
                table[next_hash] = s + cur;
                next_hash = hash(now);
                let offset = s - (candidate - cur);
                if offset < MAX_MATCH_OFFSET && cv as u32 == load32(src, candidate - cur) {
                    table[next_hash] = next_s + cur;
                    break;
                }
                cv = now;
                s = next_s;
                next_s += 1;
                candidate = table[next_hash];
                now >>= 8;
                table[next_hash] = s + cur;
                let offset = s - (candidate - cur);
                if offset < MAX_MATCH_OFFSET && cv as u32 == load32(src, candidate - cur) {
                    table[next_hash] = next_s + cur;
                    break;
                }
                cv = now;
                s = next_s;
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
                    if ((s + l + if HASH4 { 4 } else { 8 }) as usize) < src.len() {
                        let cv = load64(src, s);
                        table[hash(cv)] = s + cur;
                    }
                    break 'main;
                }
                let mut x = load64(src, s - 2);
                let o = cur + s - 2;
                let prev_hash = hash(x);
                table[prev_hash] = o;
                x >>= 16;
                let curr_hash = hash(x);
                candidate = table[curr_hash];
                table[curr_hash] = o + 2;
                let offset = s - (candidate - cur);
                if offset > MAX_MATCH_OFFSET || x as u32 != load32(src, candidate - cur) {
                    cv = x >> 8;
                    s += 1;
                    break;
                }
            }
        }
        emit_remainder(dst, src, next_emit);
    }
}
