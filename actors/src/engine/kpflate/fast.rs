//! The fast match finders of levels 1-6 (`fast_encoder.go`, `level1.go` ..
//! `level6.go`). Positions are `i32` like in Go; table entries hold
//! `position + cur`.

use super::tokens::{match_len, Tokens, MAX_STORE_BLOCK_SIZE};
use super::KpVersion;

const TABLE_BITS: u32 = 15;
const TABLE_SIZE: usize = 1 << TABLE_BITS;
const MAX_MATCH_OFFSET: i32 = 1 << 15;
const MAX_MATCH_LENGTH: i32 = 258;
const B_TABLE_BITS: u32 = 17;
const B_TABLE_SIZE: usize = 1 << B_TABLE_BITS;
const ALLOC_HISTORY: usize = MAX_STORE_BLOCK_SIZE * 5;
const BUFFER_RESET: i32 =
    ((1i64 << 31) - ALLOC_HISTORY as i64 - MAX_STORE_BLOCK_SIZE as i64 - 1) as i32;
const INPUT_MARGIN: i32 = 12 - 1;
const MIN_NON_LITERAL_BLOCK_SIZE: usize = 1 + 1 + INPUT_MARGIN as usize;

const PRIME4: u32 = 2654435761;
const PRIME5: u64 = 889523592379;
const PRIME7: u64 = 58295818150454627;

#[inline(always)]
fn load64(b: &[u8], i: i32) -> u64 {
    let i = i as usize;
    u64::from_le_bytes(b[i..i + 8].try_into().unwrap())
}

#[inline(always)]
fn load32(b: &[u8], i: i32) -> u32 {
    let i = i as usize;
    u32::from_le_bytes(b[i..i + 4].try_into().unwrap())
}

/// `hashLen(u, bits, 4)`.
#[inline(always)]
fn hash4(u: u64, bits: u32) -> usize {
    ((u as u32).wrapping_mul(PRIME4) >> (32 - bits)) as usize
}

/// Level 1's `hash` before 1.15.11: the low 4 bytes, another multiplier.
#[inline(always)]
fn hash4_l1(u: u64) -> usize {
    ((u as u32).wrapping_mul(0x1e35a7bd) >> (32 - TABLE_BITS)) as usize
}

/// `hashLen(u, bits, 5)`.
#[inline(always)]
fn hash5(u: u64, bits: u32) -> usize {
    ((u << 24).wrapping_mul(PRIME5) >> (64 - bits)) as usize
}

/// `hash7(u, bits)`.
#[inline(always)]
fn hash7(u: u64, bits: u32) -> usize {
    ((u << 8).wrapping_mul(PRIME7) >> ((64 - bits) & 63)) as usize
}

/// `matchlen`: common prefix of `src[s..]` and `src[t..]`, at most 254.
#[inline(always)]
fn matchlen(s: i32, t: i32, src: &[u8]) -> i32 {
    let s1 = (s as usize + MAX_MATCH_LENGTH as usize - 4).min(src.len());
    match_len(&src[s as usize..s1], &src[t as usize..]) as i32
}

/// `matchlenLong`: common prefix of `src[s..]` and `src[t..]`.
#[inline(always)]
fn matchlen_long(s: i32, t: i32, src: &[u8]) -> i32 {
    match_len(&src[s as usize..], &src[t as usize..]) as i32
}

/// `fastGen`: history buffer and offset base shared by the fast levels.
struct FastGen {
    hist: Box<[u8]>,
    len: usize,
    cur: i32,
}

impl FastGen {
    fn new() -> Self {
        FastGen {
            hist: vec![0u8; ALLOC_HISTORY].into_boxed_slice(),
            len: 0,
            cur: MAX_STORE_BLOCK_SIZE as i32,
        }
    }

    fn add_block(&mut self, src: &[u8]) -> i32 {
        if self.len + src.len() > ALLOC_HISTORY {
            let offset = self.len - MAX_MATCH_OFFSET as usize;
            self.hist
                .copy_within(offset..offset + MAX_MATCH_OFFSET as usize, 0);
            self.cur += offset as i32;
            self.len = MAX_MATCH_OFFSET as usize;
        }
        let s = self.len;
        self.hist[s..s + src.len()].copy_from_slice(src);
        self.len += src.len();
        s as i32
    }

    fn reset(&mut self) {
        if self.cur <= BUFFER_RESET {
            self.cur += MAX_MATCH_OFFSET + self.len as i32;
        }
        self.len = 0;
    }

    /// The minimum offset kept by the wraparound shift (`minOff`).
    fn min_off(&self) -> i32 {
        self.cur + self.len as i32 - MAX_MATCH_OFFSET
    }

    #[inline]
    fn shift(&self, v: i32, min_off: i32) -> i32 {
        if v <= min_off {
            0
        } else {
            v - self.cur + MAX_MATCH_OFFSET
        }
    }
}

#[derive(Clone, Copy, Default)]
struct EntryPrev {
    cur: i32,
    prev: i32,
}

impl EntryPrev {
    #[inline(always)]
    fn push(&mut self, v: i32) {
        self.prev = self.cur;
        self.cur = v;
    }
}

/// One of the six fast encoders.
pub(super) enum FastEnc {
    L1(Box<L1>),
    L2(Box<L2>),
    L3(Box<L3>),
    L4(Box<L4>),
    L5(Box<L5>),
    L6(Box<L6>),
}

impl FastEnc {
    /// The encoder of `level` as klauspost `version` writes it: levels 1-3 hash 4 bytes
    /// before 1.15.11 (see [`L1`]), level 4 from 1.18.0 has a quirk (see [`L4`]), level 5
    /// checks the end of a match from 2 bytes in from 1.15.10.
    pub fn new(level: i32, version: KpVersion) -> Self {
        let g = FastGen::new();
        match level {
            1 => FastEnc::L1(Box::new(L1 {
                g,
                hash4: version < KpVersion::V1_15_12,
                table: vec![0; TABLE_SIZE].into_boxed_slice(),
            })),
            2 => FastEnc::L2(Box::new(L2 {
                g,
                hash4: version < KpVersion::V1_15_12,
                table: vec![0; B_TABLE_SIZE].into_boxed_slice(),
            })),
            3 => FastEnc::L3(Box::new(L3 {
                g,
                era: match version {
                    v if v < KpVersion::V1_14_3 => L3Era::Hash15,
                    v if v < KpVersion::V1_15_12 => L3Era::Hash4,
                    _ => L3Era::Hash5,
                },
                table: vec![EntryPrev::default(); 1 << 16].into_boxed_slice(),
            })),
            4 => FastEnc::L4(Box::new(L4 {
                g,
                l_off_quirk: version >= KpVersion::V1_18_0,
                table: vec![0; TABLE_SIZE].into_boxed_slice(),
                b_table: vec![0; TABLE_SIZE].into_boxed_slice(),
            })),
            5 => FastEnc::L5(Box::new(L5 {
                g,
                end_check: end_check(version),
                table: vec![0; TABLE_SIZE].into_boxed_slice(),
                b_table: vec![EntryPrev::default(); TABLE_SIZE].into_boxed_slice(),
            })),
            6 => FastEnc::L6(Box::new(L6 {
                g,
                end_check: end_check(version),
                table: vec![0; TABLE_SIZE].into_boxed_slice(),
                b_table: vec![EntryPrev::default(); TABLE_SIZE].into_boxed_slice(),
            })),
            _ => unreachable!("fast levels are 1..=6"),
        }
    }

    pub fn encode(&mut self, dst: &mut Tokens, src: &[u8]) {
        match self {
            FastEnc::L1(e) => e.encode(dst, src),
            FastEnc::L2(e) => e.encode(dst, src),
            FastEnc::L3(e) => e.encode(dst, src),
            FastEnc::L4(e) => e.encode(dst, src),
            FastEnc::L5(e) => e.encode(dst, src),
            FastEnc::L6(e) => e.encode(dst, src),
        }
    }

    pub fn reset(&mut self) {
        match self {
            FastEnc::L1(e) => e.g.reset(),
            FastEnc::L2(e) => e.g.reset(),
            FastEnc::L3(e) => e.g.reset(),
            FastEnc::L4(e) => e.g.reset(),
            FastEnc::L5(e) => e.g.reset(),
            FastEnc::L6(e) => e.g.reset(),
        }
    }
}

/// Whether levels 5 and 6 look for a longer match at the end of one (from 1.12.2), and how far
/// into the match that look starts: 2 from 1.15.10 ("allow some bytes at the beginning to
/// mismatch"), 0 before.
fn end_check(version: KpVersion) -> Option<i32> {
    match version {
        v if v >= KpVersion::V1_15_12 => Some(2),
        v if v >= KpVersion::V1_12_2 => Some(0),
        _ => None,
    }
}

/// Wraparound protection for plain tables.
fn protect_plain(g: &mut FastGen, tables: &mut [&mut [i32]]) {
    while g.cur >= BUFFER_RESET {
        if g.len == 0 {
            for t in tables.iter_mut() {
                t.fill(0);
            }
            g.cur = MAX_MATCH_OFFSET;
            break;
        }
        let min_off = g.min_off();
        for t in tables.iter_mut() {
            for v in t.iter_mut() {
                *v = g.shift(*v, min_off);
            }
        }
        g.cur = MAX_MATCH_OFFSET;
    }
}

/// Wraparound protection for a (cur, prev) table where a stale cur clears prev too.
fn protect_prev(g: &mut FastGen, t: &mut [EntryPrev], prev_follows_cur: bool) {
    let min_off = g.min_off();
    for v in t.iter_mut() {
        if prev_follows_cur && v.cur <= min_off {
            v.cur = 0;
            v.prev = 0;
        } else {
            v.cur = g.shift(v.cur, min_off);
            v.prev = g.shift(v.prev, min_off);
        }
    }
}

/// Emits `src[next_emit..]` as literals unless nothing at all was found.
#[inline]
fn emit_remainder(dst: &mut Tokens, src: &[u8], next_emit: i32) {
    if (next_emit as usize) < src.len() {
        if dst.n == 0 {
            return;
        }
        dst.emit_literals(&src[next_emit as usize..]);
    }
}

/// Level 1. Before 1.15.11 (`hash4`), levels 1-3 hash the low 4 bytes where later releases
/// hash 5 (level 1 with its own multiplier) and index the end of the last match when 4 bytes
/// (not 8) follow it; level 3 also had a smaller input margin, skipped faster and indexed
/// every 5th position of a match (not every 6th).
pub(super) struct L1 {
    g: FastGen,
    hash4: bool,
    table: Box<[i32]>,
}

impl L1 {
    fn encode(&mut self, dst: &mut Tokens, src_in: &[u8]) {
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

/// Level 2 (4-byte hashes before 1.15.11, see [`L1`]).
pub(super) struct L2 {
    g: FastGen,
    hash4: bool,
    table: Box<[i32]>,
}

impl L2 {
    fn encode(&mut self, dst: &mut Tokens, src_in: &[u8]) {
        if self.hash4 {
            self.encode_as::<true>(dst, src_in)
        } else {
            self.encode_as::<false>(dst, src_in)
        }
    }

    fn encode_as<const HASH4: bool>(&mut self, dst: &mut Tokens, src_in: &[u8]) {
        const HB: u32 = B_TABLE_BITS;
        let hash = |u: u64| if HASH4 { hash4(u, HB) } else { hash5(u, HB) };
        protect_plain(&mut self.g, &mut [&mut self.table[..]]);
        let mut s = self.g.add_block(src_in);
        if src_in.len() < MIN_NON_LITERAL_BLOCK_SIZE {
            dst.n = src_in.len();
            return;
        }
        let cur = self.g.cur;
        let src = &self.g.hist[..self.g.len];
        let table = &mut self.table[..B_TABLE_SIZE];
        let mut next_emit = s;
        let s_limit = src.len() as i32 - INPUT_MARGIN;
        let mut cv = load64(src, s);

        'main: loop {
            const SKIP_LOG: i32 = 5;
            const DO_EVERY: i32 = 2;
            let mut next_s = s;
            let mut candidate;
            loop {
                let mut next_hash = hash(cv);
                s = next_s;
                next_s = s + DO_EVERY + ((s - next_emit) >> SKIP_LOG);
                if next_s > s_limit {
                    break 'main;
                }
                candidate = table[next_hash];
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
                    break;
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
                    if ((s + l + if HASH4 { 4 } else { 8 }) as usize) < src.len() {
                        let cv = load64(src, s);
                        table[hash(cv)] = s + cur;
                    }
                    break 'main;
                }
                let mut i = s - l + 2;
                while i < s - 5 {
                    let mut x = load64(src, i);
                    table[hash(x)] = cur + i;
                    x >>= 16;
                    table[hash(x)] = cur + i + 2;
                    x >>= 16;
                    table[hash(x)] = cur + i + 4;
                    i += 7;
                }
                let x = load64(src, s - 2);
                let o = cur + s - 2;
                let prev_hash = hash(x);
                let prev_hash2 = hash(x >> 8);
                table[prev_hash] = o;
                table[prev_hash2] = o + 1;
                let curr_hash = hash(x >> 16);
                candidate = table[curr_hash];
                table[curr_hash] = o + 2;
                let offset = s - (candidate - cur);
                if offset > MAX_MATCH_OFFSET || (x >> 16) as u32 != load32(src, candidate - cur) {
                    cv = x >> 24;
                    s += 1;
                    break;
                }
            }
        }
        emit_remainder(dst, src, next_emit);
    }
}

/// Level 3, as three generations of klauspost write it (`era`, see [`L3Era`]).
pub(super) struct L3 {
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
    fn encode(&mut self, dst: &mut Tokens, src_in: &[u8]) {
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

pub(super) struct L4 {
    g: FastGen,
    /// klauspost 1.18.0+: `lOff` became the candidate's position but is still used as a
    /// distance when measuring the next-long candidate (`src[nextS-lOff+4:]`).
    l_off_quirk: bool,
    table: Box<[i32]>,
    b_table: Box<[i32]>,
}

impl L4 {
    fn encode(&mut self, dst: &mut Tokens, src_in: &[u8]) {
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

pub(super) struct L5 {
    g: FastGen,
    /// Where a longer match is looked for at the end of a match shorter than 30 ([`end_check`]).
    end_check: Option<i32>,
    table: Box<[i32]>,
    b_table: Box<[EntryPrev]>,
}

impl L5 {
    fn encode(&mut self, dst: &mut Tokens, src_in: &[u8]) {
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

        'main: loop {
            const SKIP_LOG: i32 = 6;
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

                    let mut t2 = l_candidate.cur - cur;
                    if next_s - t2 < MAX_MATCH_OFFSET {
                        if load32(src, l_candidate.cur - cur) == next as u32 {
                            let ml = matchlen(next_s + 4, t2 + 4, src) + 4;
                            if ml > l {
                                t = t2;
                                s = next_s;
                                l = ml;
                                break;
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
            if let Some(skip) = self.end_check.filter(|_| l < 30 && s_at < s_limit) {
                let e_long = b_table[hash7(load64(src, s_at), HB)].cur;
                let t2 = e_long - cur - l + skip;
                let s2 = s + skip;
                let off = s2 - t2;
                if t2 >= 0 && off < MAX_MATCH_OFFSET && off > 0 {
                    let l2 = matchlen_long(s2, t2, src);
                    if l2 > l {
                        t = t2;
                        l = l2;
                        s = s2;
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
            s += l;
            next_emit = s;
            if next_s >= s {
                s = next_s + 1;
            }
            if s >= s_limit {
                break 'main;
            }

            let mut i = s - l + 1;
            if i < s - 1 {
                let mut cv = load64(src, i);
                let mut t = i + cur;
                table[hash4(cv, HB)] = t;
                b_table[hash7(cv, HB)].push(t);
                cv >>= 8;
                t += 1;
                b_table[hash7(cv, HB)].push(t);
                cv >>= 8;
                t += 1;
                table[hash4(cv, HB)] = t;
                i += 4;
                while i < s - 1 {
                    let cv = load64(src, i);
                    let t = i + cur;
                    let t2 = t + 1;
                    b_table[hash7(cv, HB)].push(t);
                    table[hash4(cv >> 8, HB)] = t2;
                    i += 3;
                }
            }
            let x = load64(src, s - 1);
            let o = cur + s - 1;
            table[hash4(x, HB)] = o;
            b_table[hash7(x, HB)].push(o);
            cv = x >> 8;
        }
        emit_remainder(dst, src, next_emit);
    }
}

pub(super) struct L6 {
    g: FastGen,
    /// As [`L5`]'s (without its limit on the match length): from 1.12.2, 2 bytes in from
    /// 1.15.10.
    end_check: Option<i32>,
    table: Box<[i32]>,
    b_table: Box<[EntryPrev]>,
}

impl L6 {
    fn encode(&mut self, dst: &mut Tokens, src_in: &[u8]) {
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
