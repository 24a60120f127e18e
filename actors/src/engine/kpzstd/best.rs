//! Ports `zstd/enc_best.go` (klauspost/compress 1.15.12) and the
//! `ShannonEntropyBits` it uses (`compressible.go`), without dictionaries:
//! `SpeedBestCompression`'s match finder, which scores candidate matches by
//! their estimated cost under the predefined tables.

use super::base::{
    hash4, hash8, load32, load64, matchlen, shift_prev_table, FastBase, Matcher, PrevEntry, Rebase,
    MAX_MATCH_LENGTH, ZSTD_MIN_MATCH,
};
use super::block::{ml_code, of_code, Seq};
use super::fse::predefined;

const BEST_LONG_TABLE_BITS: u32 = 22;
const BEST_SHORT_TABLE_BITS: u32 = 18;
const HIGH_SCORE: i32 = 25000;

/// `bestFastEncoder`.
pub(crate) struct BestFastEncoder {
    base: FastBase,
    table: Vec<PrevEntry>,
    long_table: Vec<PrevEntry>,
}

impl BestFastEncoder {
    pub fn new(max_match_off: i32, rebase: Rebase) -> Self {
        BestFastEncoder {
            base: FastBase::new(max_match_off, rebase),
            table: vec![PrevEntry::default(); 1 << BEST_SHORT_TABLE_BITS],
            long_table: vec![PrevEntry::default(); 1 << BEST_LONG_TABLE_BITS],
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
    fn est_bits(&mut self, bits_per_byte: i32) {
        let mlc = ml_code((self.length - ZSTD_MIN_MATCH) as u32);
        let ofc = if self.rep < 0 {
            of_code((self.s - self.offset) as u32 + 3)
        } else {
            of_code(self.rep as u32)
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
            self.est = HIGH_SCORE;
        }
    }
}

/// Go's `math.Log` on amd64 (`log_amd64.s`, the FreeBSD algorithm) for a
/// finite x > 0, operation for operation.
fn go_log(x: f64) -> f64 {
    // The constants of log_amd64.s, by their bits.
    const HSQRT2: f64 = std::f64::consts::FRAC_1_SQRT_2; // 0x3FE6A09E667F3BCD
    let ln2_hi = f64::from_bits(0x3FE6_2E42_FEE0_0000);
    let ln2_lo = f64::from_bits(0x3DEA_39EF_3579_3C76);
    let l1 = f64::from_bits(0x3FE5_5555_5555_5593);
    let l2 = f64::from_bits(0x3FD9_9999_9997_FA04);
    let l3 = f64::from_bits(0x3FD2_4924_9422_9359);
    let l4 = f64::from_bits(0x3FCC_71C5_1D8E_78AF);
    let l5 = f64::from_bits(0x3FC7_4664_96CB_03DE);
    let l6 = f64::from_bits(0x3FC3_9A09_D078_C69F);
    let l7 = f64::from_bits(0x3FC2_F112_DF3E_5244);
    let bits = x.to_bits();
    let mut f1 = f64::from_bits((bits & 0x000F_FFFF_FFFF_FFFF) | 0x3FE0_0000_0000_0000);
    let mut k = (((bits >> 52) & 0x7FF) as i32 - 0x3FE) as f64;
    // CMPSD ..., 5 (not less than): HSqrt2 >= f1.
    if f1 <= HSQRT2 {
        k -= 1.0;
        f1 *= 2.0;
    }
    let f = f1 - 1.0;
    let s = f / (2.0 + f);
    let s2 = s * s;
    let s4 = s2 * s2;
    let t1 = s2 * (l1 + s4 * (l3 + s4 * (l5 + s4 * l7)));
    let t2 = s4 * (l2 + s4 * (l4 + s4 * l6));
    let r = t1 + t2;
    let hfsq = 0.5 * f * f;
    k * ln2_hi - ((hfsq - (s * (hfsq + r) + k * ln2_lo)) - f)
}

/// Go's `math.Log2` (via `Frexp`) for a normal x > 0.
fn go_log2(x: f64) -> f64 {
    let bits = x.to_bits();
    let exp = ((bits >> 52) & 0x7FF) as i32 - 0x3FE;
    let frac = f64::from_bits((bits & !(0x7FFu64 << 52)) | (0x3FEu64 << 52));
    if frac == 0.5 {
        return (exp - 1) as f64;
    }
    // Go's constant 1/Ln2 is LOG2_E (0x3FF71547652B82FE).
    go_log(frac) * std::f64::consts::LOG2_E + exp as f64
}

/// `compress.ShannonEntropyBits`.
pub(crate) fn shannon_entropy_bits(b: &[u8]) -> i64 {
    if b.is_empty() {
        return 0;
    }
    let mut hist = [0usize; 256];
    for &c in b {
        hist[c as usize] += 1;
    }
    let mut shannon = 0f64;
    let inv_total = 1.0 / b.len() as f64;
    for &v in &hist {
        if v > 0 {
            let n = v as f64;
            shannon += (-go_log2(n * inv_total) * n).ceil();
        }
    }
    shannon.ceil() as i64
}

impl Matcher for BestFastEncoder {
    fn base(&mut self) -> &mut FastBase {
        &mut self.base
    }

    fn base_ref(&self) -> &FastBase {
        &self.base
    }

    fn encode(&mut self, block: &[u8]) {
        const INPUT_MARGIN: i32 = 8 + 4;
        const MIN_NON_LITERAL_BLOCK_SIZE: usize = 16;
        const K_SEARCH_STRENGTH: i32 = 10;
        const GOOD_ENOUGH: i32 = 100;

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
        blk.size = block.len();
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

        let src = &hist[..];
        let s_limit = src.len() as i32 - INPUT_MARGIN;
        let mut next_emit = s;
        let mut cv = load64(src, s);
        let mut offset1 = blk.recent_offsets[0] as i32;
        let mut offset2 = blk.recent_offsets[1] as i32;
        let mut offset3 = blk.recent_offsets[2] as i32;

        let best_of = |a: Match, b: Match| -> Match {
            let l = a.est + ((a.s - b.s).wrapping_mul(bits_per_byte) >> 10);
            let r = b.est + ((b.s - a.s).wrapping_mul(bits_per_byte) >> 10);
            if l < r {
                a
            } else {
                b
            }
        };
        let match_at = |offset: i32, s: i32, first: u32, rep: i32| -> Match {
            if s.wrapping_sub(offset) >= mmo || load32(src, offset) != first {
                return Match {
                    s,
                    est: HIGH_SCORE,
                    ..Match::default()
                };
            }
            let mut m = Match {
                offset,
                s,
                length: 4 + matchlen(s + 4, offset + 4, src),
                rep,
                est: 0,
            };
            m.est_bits(bits_per_byte);
            m
        };

        'encode_loop: loop {
            let can_repeat = blk.sequences.len() > 2;

            let next_hash_l = hl(cv);
            let next_hash_s = hs(cv);
            let mut candidate_l = long_table[next_hash_l];
            let mut candidate_s = table[next_hash_s];

            let mut best = best_of(
                match_at(candidate_l.offset.wrapping_sub(cur), s, cv as u32, -1),
                match_at(candidate_l.prev.wrapping_sub(cur), s, cv as u32, -1),
            );
            best = best_of(
                best,
                match_at(candidate_s.offset.wrapping_sub(cur), s, cv as u32, -1),
            );
            best = best_of(
                best,
                match_at(candidate_s.prev.wrapping_sub(cur), s, cv as u32, -1),
            );

            if can_repeat && best.length < GOOD_ENOUGH {
                let mut cv32 = (cv >> 8) as u32;
                let mut spp = s + 1;
                best = best_of(best, match_at(spp - offset1, spp, cv32, 1));
                best = best_of(best, match_at(spp - offset2, spp, cv32, 2));
                best = best_of(best, match_at(spp - offset3, spp, cv32, 3));
                if best.length > 0 {
                    cv32 = (cv >> 24) as u32;
                    spp += 2;
                    best = best_of(best, match_at(spp - offset1, spp, cv32, 1));
                    best = best_of(best, match_at(spp - offset2, spp, cv32, 2));
                    best = best_of(best, match_at(spp - offset3, spp, cv32, 3));
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

                best = best_of(
                    best,
                    match_at(candidate_s.offset.wrapping_sub(cur), s, cv as u32, -1),
                );
                best = best_of(
                    best,
                    match_at(candidate_l.offset.wrapping_sub(cur), s, cv as u32, -1),
                );
                best = best_of(
                    best,
                    match_at(candidate_l.prev.wrapping_sub(cur), s, cv as u32, -1),
                );
                best = best_of(
                    best,
                    match_at(candidate_l2.offset.wrapping_sub(cur), s + 1, cv2 as u32, -1),
                );
                best = best_of(
                    best,
                    match_at(candidate_l2.prev.wrapping_sub(cur), s + 1, cv2 as u32, -1),
                );

                let s_at = best.s + best.length;
                if s_at < s_limit {
                    let candidate_end = long_table[hl(load64(src, s_at))];
                    let pos = candidate_end
                        .offset
                        .wrapping_sub(cur)
                        .wrapping_sub(best.length);
                    if pos >= 0 {
                        let mut best_end =
                            best_of(best, match_at(pos, best.s, load32(src, best.s), -1));
                        let pos = candidate_end
                            .prev
                            .wrapping_sub(cur)
                            .wrapping_sub(best.length);
                        if pos >= 0 {
                            best_end =
                                best_of(best_end, match_at(pos, best.s, load32(src, best.s), -1));
                        }
                        best = best_end;
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

    /// `EncodeNoHist` is `Encode` with history here.
    fn encode_no_hist(&mut self, src: &[u8]) {
        self.base.ensure_hist(src.len());
        self.encode(src);
    }
}
