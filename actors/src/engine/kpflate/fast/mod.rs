//! The fast match finders of levels 1-6: what they share (`fast_encoder.go`: the
//! history, hashes, wraparound protection) here, each level (`level1.go` ..
//! `level6.go`) in its own file. Positions are `i32` like in Go; table entries hold
//! `position + cur`.

use super::tokens::{match_len, Tokens, MAX_STORE_BLOCK_SIZE};
use super::KpVersion;

mod level1;
mod level2;
mod level3;
mod level4;
mod level5;
mod level6;

use level1::L1;
use level2::L2;
use level3::L3;
use level4::L4;
use level5::L5;
use level6::L6;

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
        match level {
            1 => FastEnc::L1(Box::new(L1::new(version))),
            2 => FastEnc::L2(Box::new(L2::new(version))),
            3 => FastEnc::L3(Box::new(L3::new(version))),
            4 => FastEnc::L4(Box::new(L4::new(version))),
            5 => FastEnc::L5(Box::new(L5::new(version))),
            6 => FastEnc::L6(Box::new(L6::new(version))),
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
            FastEnc::L1(e) => e.reset(),
            FastEnc::L2(e) => e.reset(),
            FastEnc::L3(e) => e.reset(),
            FastEnc::L4(e) => e.reset(),
            FastEnc::L5(e) => e.reset(),
            FastEnc::L6(e) => e.reset(),
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
