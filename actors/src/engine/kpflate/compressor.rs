//! The `compressor` of `deflate.go`: window management and the per-level
//! step functions (store, Huffman only, fast levels 1-6, lazy levels 7-9).

use super::bitwriter::BitWriter;
use super::fast::FastEnc;
use super::huffman::HuffmanEncoder;
use super::tokens::{
    match_len, offset_code, Tokens, LENGTH_CODES, LENGTH_EXTRA_BITS, MAX_STORE_BLOCK_SIZE,
    OFFSET_EXTRA_BITS,
};
use super::{KpError, KpVersion};
use crate::engine::go_entropy::shannon_entropy_bits;

mod before_1_14;

const LOG_WINDOW_SIZE: usize = 15;
const WINDOW_SIZE: usize = 1 << LOG_WINDOW_SIZE;
const WINDOW_MASK: usize = WINDOW_SIZE - 1;
const MIN_MATCH_LENGTH: isize = 4;
const MAX_MATCH_LENGTH: isize = 258;
const MAX_FLATE_BLOCK_TOKENS: usize = 1 << 15;
const HASH_BITS: u32 = 17;
const HASH_SIZE: usize = 1 << HASH_BITS;
const HASH_MASK: u32 = (1 << HASH_BITS) - 1;
const MAX_HASH_OFFSET: isize = 1 << 28;
const MAX_MATCH_OFFSET: usize = 1 << 15;
const PRIME4: u32 = 2654435761;

#[inline(always)]
fn hash4u(u: u32) -> u32 {
    u.wrapping_mul(PRIME4) >> (32 - HASH_BITS)
}

#[inline(always)]
fn hash4(b: &[u8]) -> usize {
    hash4u(u32::from_le_bytes(b[..4].try_into().unwrap())) as usize
}

/// `bulkHash4`: hashes of every 4-byte window of `b`.
fn bulk_hash4(b: &[u8], dst: &mut [u32]) {
    if b.len() < 4 {
        return;
    }
    let mut hb = u32::from_le_bytes(b[..4].try_into().unwrap());
    dst[0] = hash4u(hb);
    let end = b.len() - 4 + 1;
    for i in 1..end {
        hb = (hb >> 8) | ((b[i + 3] as u32) << 24);
        dst[i] = hash4u(hb);
    }
}

/// `advancedState` plus the level parameters of levels 7-9.
pub(super) struct Lazy {
    lazy: isize,
    nice: isize,
    chain: isize,
    length: isize,
    offset: isize,
    max_insert_index: isize,
    chain_head: isize,
    hash_offset: isize,
    ii: u16,
    index: isize,
    hash_match: [u32; (MAX_MATCH_LENGTH + MIN_MATCH_LENGTH) as usize],
    hash_head: Box<[u32]>,
    hash_prev: Box<[u32]>,
    /// Literal code used by level 9 to estimate match gains.
    h: Option<HuffmanEncoder>,
    /// klauspost 1.18.0+: the rewritten check for a better match at the end of a match, and
    /// level 9's gain estimate with base cost 3 and minimum gain 4 (6 and 0 before).
    v1_18: bool,
    /// klauspost 1.18.2+: level 9's literal code is built from at most the next 32 KiB.
    hist_cap: bool,
    /// klauspost before 1.14.0: the matcher of [`before_1_14`].
    before_1_14: bool,
    /// klauspost 1.14.0-1.14.1: a match's gain is its length times the bits per byte the
    /// window's entropy estimates (`est_bits_per_byte`), less its offset's bit length.
    bpb_gain: bool,
    est_bits_per_byte: i64,
}

impl Lazy {
    /// Chain every 4-byte window of `window[start..end]` into the hash table (`bulkHash4`,
    /// big-endian before 1.14.0).
    fn insert_hashes(&mut self, window: &[u8], start: usize, end: usize) {
        let tocheck = &window[start..end];
        if tocheck.len() < MIN_MATCH_LENGTH as usize {
            return;
        }
        let dst_size = tocheck.len() - MIN_MATCH_LENGTH as usize + 1;
        if self.before_1_14 {
            before_1_14::bulk_hash4(tocheck, &mut self.hash_match[..dst_size]);
        } else {
            bulk_hash4(tocheck, &mut self.hash_match[..dst_size]);
        }
        for i in 0..dst_size {
            let di = i + start;
            let new_h = (self.hash_match[i] & HASH_MASK) as usize;
            self.hash_prev[di & WINDOW_MASK] = self.hash_head[new_h];
            self.hash_head[new_h] = (di as isize + self.hash_offset) as u32;
        }
    }
}

enum Kind {
    Store,
    Huff,
    Fast(FastEnc),
    Lazy(Box<Lazy>),
}

pub(super) struct Compressor {
    w: BitWriter,
    window: Vec<u8>,
    window_end: usize,
    block_start: isize,
    tokens: Tokens,
    sync: bool,
    byte_available: bool,
    kind: Kind,
}

impl Compressor {
    /// `NewWriterDict(level, nil)` followed by `ResetDict(dict)`, as `version` does it (what
    /// pgzip does for each block).
    pub fn new(level: i32, dict: &[u8], out: Vec<u8>, version: KpVersion) -> Result<Self, KpError> {
        Self::with_reset(level, dict, out, version, true)
    }

    /// `NewWriter(level)`: like [`Compressor::new`] without a dictionary, but the fast
    /// encoder is not reset. (A reset moves its offset base, which only shows when the base
    /// wraps, after about 2 GiB of one stream.)
    pub fn new_writer(level: i32, out: Vec<u8>, version: KpVersion) -> Result<Self, KpError> {
        Self::with_reset(level, &[], out, version, false)
    }

    fn with_reset(
        level: i32,
        dict: &[u8],
        out: Vec<u8>,
        version: KpVersion,
        reset: bool,
    ) -> Result<Self, KpError> {
        let mut w = BitWriter::new(out);
        w.version = version;
        let (kind, window_len) = match level {
            0 => (Kind::Store, MAX_STORE_BLOCK_SIZE),
            -2 => {
                // Huffman only: blocks of 64 KiB with a new-table penalty of 1/16 before
                // 1.11.13, of 32 KiB with 1/256 until 1.12.2, 1/1024 since.
                let (penalty, window) = match version {
                    v if v < KpVersion::V1_11_13 => (4, MAX_STORE_BLOCK_SIZE),
                    v if v < KpVersion::V1_12_3 => (8, 32 << 10),
                    _ => (10, 32 << 10),
                };
                w.log_new_table_penalty = penalty;
                (Kind::Huff, window)
            }
            -1 | 1..=6 => {
                w.log_new_table_penalty = match version {
                    v if v < KpVersion::V1_11_13 => 6,
                    v if v < KpVersion::V1_14_0 => 8,
                    _ => 7,
                };
                // DefaultCompression: level 5 in klauspost/compress, 6 in Go 1.27.
                let level = match (level, version) {
                    (-1, KpVersion::Go1_27) => 6,
                    (-1, _) => 5,
                    _ => level,
                };
                let mut fast = FastEnc::new(level, version);
                // ResetDict on a writer from the pool: the encoder is reset first.
                if reset {
                    fast.reset();
                }
                (Kind::Fast(fast), MAX_STORE_BLOCK_SIZE)
            }
            7..=9 => {
                w.log_new_table_penalty = 8;
                // (good, lazy, nice, chain) = levels[level]; "good" is unused by deflateLazy
                // (and before 1.14.0 never reached).
                let before_1_14 = version < KpVersion::V1_14_0;
                // 1.14.0-1.14.1 (1.14.2 writes what later releases do at 7-9).
                let bpb_gain = version == KpVersion::V1_14_0;
                let (lazy, nice, chain) = match (level, before_1_14, bpb_gain) {
                    (7, true, _) => (8, 24, 16),
                    (8, true, _) => (16, 24, 64),
                    (_, true, _) => (258, 258, 4096),
                    (7, _, true) => (10, 12, 16),
                    (8, _, true) => (24, 32, 64),
                    (7, _, _) => (12, 16, 24),
                    (8, _, _) => (30, 40, 64),
                    _ => (258, 258, 1024),
                };
                let state = Lazy {
                    lazy,
                    nice,
                    chain,
                    length: MIN_MATCH_LENGTH - 1,
                    offset: 0,
                    max_insert_index: 0,
                    chain_head: -1,
                    hash_offset: 1,
                    ii: 0,
                    index: 0,
                    hash_match: [0; (MAX_MATCH_LENGTH + MIN_MATCH_LENGTH) as usize],
                    hash_head: vec![0; HASH_SIZE].into_boxed_slice(),
                    hash_prev: vec![0; WINDOW_SIZE].into_boxed_slice(),
                    h: None,
                    v1_18: version >= KpVersion::V1_18_0,
                    hist_cap: version >= KpVersion::V1_18_2,
                    before_1_14,
                    bpb_gain,
                    est_bits_per_byte: 8,
                };
                (Kind::Lazy(Box::new(state)), 2 * WINDOW_SIZE)
            }
            _ => return Err(KpError::Level(level)),
        };
        let mut c = Compressor {
            w,
            window: vec![0; window_len],
            window_end: 0,
            block_start: 0,
            tokens: Tokens {
                split_255: version < KpVersion::V1_15_0,
                ..Tokens::new()
            },
            sync: false,
            byte_available: false,
            kind,
        };
        c.fill_window(dict);
        Ok(c)
    }

    pub fn into_output(self) -> Vec<u8> {
        self.w.out
    }

    /// Moves the complete bytes written so far to `dst`.
    pub fn take_output(&mut self, dst: &mut Vec<u8>) {
        dst.append(&mut self.w.out);
    }

    /// `fillWindow`: prime the match finder with a dictionary.
    fn fill_window(&mut self, mut b: &[u8]) {
        match &mut self.kind {
            Kind::Store | Kind::Huff => {}
            Kind::Fast(fast) => {
                if b.len() > MAX_MATCH_OFFSET {
                    b = &b[b.len() - MAX_MATCH_OFFSET..];
                }
                fast.encode(&mut self.tokens, b);
                self.tokens.reset();
            }
            Kind::Lazy(s) => {
                if b.len() > WINDOW_SIZE {
                    b = &b[b.len() - WINDOW_SIZE..];
                }
                let n = b.len();
                self.window[self.window_end..self.window_end + n].copy_from_slice(b);
                let loops = (n + 256 - MIN_MATCH_LENGTH as usize) / 256;
                for j in 0..loops {
                    let startindex = j * 256;
                    let end = (startindex + 256 + MIN_MATCH_LENGTH as usize - 1).min(n);
                    s.insert_hashes(&self.window, startindex, end);
                }
                self.window_end += n;
                s.index = n as isize;
            }
        }
    }

    /// `write`: feed input, running the step function whenever the window is full.
    pub fn write(&mut self, mut b: &[u8]) {
        while !b.is_empty() {
            if self.window_end == self.window.len() || self.sync {
                self.step();
            }
            let n = match self.kind {
                Kind::Lazy(_) => self.fill_deflate(b),
                _ => {
                    let n = b.len().min(self.window.len() - self.window_end);
                    self.window[self.window_end..self.window_end + n].copy_from_slice(&b[..n]);
                    self.window_end += n;
                    n
                }
            };
            b = &b[n..];
        }
    }

    /// `Flush`: everything so far, then an empty stored block (sync marker).
    pub fn sync_flush(&mut self) {
        self.sync = true;
        self.step();
        self.w.write_stored_header(0, false);
        self.w.flush();
        self.sync = false;
    }

    /// `Close`: everything so far, then the final (empty fixed) block.
    pub fn close(&mut self) {
        self.sync = true;
        self.step();
        self.w.write_stored_header(0, true);
        self.w.flush();
    }

    fn step(&mut self) {
        match self.kind {
            Kind::Store => self.store(),
            Kind::Huff => self.store_huff(),
            Kind::Fast(_) => self.store_fast(),
            Kind::Lazy(_) => self.deflate_lazy(),
        }
    }

    fn write_stored_block(w: &mut BitWriter, buf: &[u8]) {
        w.write_stored_header(buf.len(), false);
        w.write_bytes(buf);
    }

    fn store(&mut self) {
        if self.window_end > 0 && (self.window_end == MAX_STORE_BLOCK_SIZE || self.sync) {
            Self::write_stored_block(&mut self.w, &self.window[..self.window_end]);
            self.window_end = 0;
        }
    }

    fn store_huff(&mut self) {
        if (self.window_end < self.window.len() && !self.sync) || self.window_end == 0 {
            return;
        }
        self.w
            .write_block_huff(false, &self.window[..self.window_end], self.sync);
        self.window_end = 0;
    }

    fn store_fast(&mut self) {
        let Kind::Fast(fast) = &mut self.kind else {
            unreachable!()
        };
        let we = self.window_end;
        if we < self.window.len() {
            if !self.sync {
                return;
            }
            if we < 128 {
                if we == 0 {
                    return;
                }
                if we <= 32 {
                    Self::write_stored_block(&mut self.w, &self.window[..we]);
                } else {
                    self.w.write_block_huff(false, &self.window[..we], true);
                }
                self.tokens.reset();
                self.window_end = 0;
                fast.reset();
                return;
            }
        }
        fast.encode(&mut self.tokens, &self.window[..we]);
        if self.tokens.n == 0 {
            Self::write_stored_block(&mut self.w, &self.window[..we]);
        } else if self.tokens.n > we - (we >> 4) {
            self.w
                .write_block_huff(false, &self.window[..we], self.sync);
        } else {
            self.w.write_block_dynamic(
                &mut self.tokens,
                false,
                Some(&self.window[..we]),
                self.sync,
            );
        }
        self.tokens.reset();
        self.window_end = 0;
    }

    /// `fillDeflate`: slide the window when needed, then copy input in.
    fn fill_deflate(&mut self, b: &[u8]) -> usize {
        let Kind::Lazy(s) = &mut self.kind else {
            unreachable!()
        };
        if s.index >= (2 * WINDOW_SIZE) as isize - (MIN_MATCH_LENGTH + MAX_MATCH_LENGTH) {
            self.window.copy_within(WINDOW_SIZE..2 * WINDOW_SIZE, 0);
            s.index -= WINDOW_SIZE as isize;
            self.window_end -= WINDOW_SIZE;
            if self.block_start >= WINDOW_SIZE as isize {
                self.block_start -= WINDOW_SIZE as isize;
            } else {
                self.block_start = i32::MAX as isize;
            }
            s.hash_offset += WINDOW_SIZE as isize;
            let max_hash_offset = if s.before_1_14 {
                1 << 24
            } else {
                MAX_HASH_OFFSET
            };
            if s.hash_offset > max_hash_offset {
                let delta = s.hash_offset - 1;
                s.hash_offset -= delta;
                s.chain_head -= delta;
                for v in s.hash_prev.iter_mut() {
                    *v = if *v as isize > delta {
                        (*v as isize - delta) as u32
                    } else {
                        0
                    };
                }
                for v in s.hash_head.iter_mut() {
                    *v = if *v as isize > delta {
                        (*v as isize - delta) as u32
                    } else {
                        0
                    };
                }
            }
        }
        let n = b.len().min(self.window.len() - self.window_end);
        self.window[self.window_end..self.window_end + n].copy_from_slice(&b[..n]);
        self.window_end += n;
        n
    }

    /// `deflateLazy`: hash-chain matching with lazy evaluation (levels 7-9).
    fn deflate_lazy(&mut self) {
        if matches!(&self.kind, Kind::Lazy(s) if s.before_1_14) {
            return self.deflate_lazy_before_1_14();
        }
        let Kind::Lazy(s) = &mut self.kind else {
            unreachable!()
        };
        let window = &self.window[..];
        let window_end = self.window_end as isize;
        let tokens = &mut self.tokens;
        let w = &mut self.w;
        let sync = self.sync;
        let block_start = &mut self.block_start;

        if window_end - s.index < MIN_MATCH_LENGTH + MAX_MATCH_LENGTH && !sync {
            return;
        }
        if s.bpb_gain {
            s.est_bits_per_byte = 8;
            if !sync {
                let bits = shannon_entropy_bits(&window[s.index as usize..window_end as usize]);
                s.est_bits_per_byte = (1.0 + bits as f64 / (window_end - s.index) as f64) as i64;
            }
        } else if window_end != s.index && s.chain > 100 {
            let h = s.h.get_or_insert_with(|| HuffmanEncoder::new(256));
            let mut tmp = [0u16; 256];
            let mut to_index = &window[s.index as usize..window_end as usize];
            if s.hist_cap {
                to_index = &to_index[..to_index.len().min(MAX_FLATE_BLOCK_TOKENS)];
            }
            for &v in to_index {
                tmp[v as usize] = tmp[v as usize].wrapping_add(1);
            }
            h.generate(&tmp, 15);
        }

        s.max_insert_index = window_end - (MIN_MATCH_LENGTH - 1);

        // `writeBlock`
        let write_block = |w: &mut BitWriter,
                           tokens: &mut Tokens,
                           block_start: &mut isize,
                           index: isize,
                           eof: bool| {
            if index > 0 || eof {
                let win = if *block_start <= index {
                    Some(&window[*block_start as usize..index as usize])
                } else {
                    None
                };
                *block_start = index;
                w.write_block_dynamic(tokens, eof, win, sync);
            }
        };

        loop {
            let lookahead = window_end - s.index;
            if lookahead < MIN_MATCH_LENGTH + MAX_MATCH_LENGTH {
                if !sync {
                    return;
                }
                if lookahead == 0 {
                    if self.byte_available {
                        tokens.add_literal(window[s.index as usize - 1]);
                        self.byte_available = false;
                    }
                    if tokens.n > 0 {
                        write_block(w, tokens, block_start, s.index, false);
                        tokens.reset();
                    }
                    return;
                }
            }
            if s.index < s.max_insert_index {
                let hash = hash4(&window[s.index as usize..]);
                let ch = s.hash_head[hash];
                s.chain_head = ch as isize;
                s.hash_prev[s.index as usize & WINDOW_MASK] = ch;
                s.hash_head[hash] = (s.index + s.hash_offset) as u32;
            }
            let mut prev_length = s.length;
            let mut prev_offset = s.offset;
            s.length = MIN_MATCH_LENGTH - 1;
            s.offset = 0;
            let min_index = (s.index - WINDOW_SIZE as isize).max(0);

            if s.chain_head - s.hash_offset >= min_index
                && lookahead > prev_length
                && prev_length < s.lazy
            {
                if let Some((nl, no)) =
                    find_match(s, window, s.index, s.chain_head - s.hash_offset, lookahead)
                {
                    s.length = nl;
                    s.offset = no;
                }
            }

            if prev_length >= MIN_MATCH_LENGTH && s.length <= prev_length {
                const CHECK_OFF: isize = 2;
                if s.v1_18 {
                    // 1.18.0+: look for a match ending where this one does, from 2 bytes in,
                    // then extend it back (emitting the bytes it does not cover as literals).
                    if prev_length < MAX_MATCH_LENGTH - CHECK_OFF {
                        let prev_index = s.index - 1;
                        if prev_index + prev_length < s.max_insert_index {
                            let end = lookahead.min(MAX_MATCH_LENGTH + CHECK_OFF) + prev_index;
                            let h = hash4(&window[(prev_index + prev_length) as usize..]);
                            let ch2 = s.hash_head[h] as isize - s.hash_offset - prev_length;
                            if prev_index - ch2 != prev_offset && ch2 > min_index + CHECK_OFF {
                                let length = match_len(
                                    &window[(prev_index + CHECK_OFF) as usize..end as usize],
                                    &window[(ch2 + CHECK_OFF) as usize..],
                                ) as isize;
                                if length > prev_length {
                                    prev_length = length;
                                    prev_offset = prev_index - ch2;
                                    let mut i = CHECK_OFF - 1;
                                    while i >= 0 {
                                        if prev_length >= MAX_MATCH_LENGTH
                                            || window[(prev_index + i) as usize]
                                                != window[(ch2 + i) as usize]
                                        {
                                            for j in 0..=i {
                                                tokens
                                                    .add_literal(window[(prev_index + j) as usize]);
                                                if tokens.n == MAX_FLATE_BLOCK_TOKENS {
                                                    write_block(
                                                        w,
                                                        tokens,
                                                        block_start,
                                                        s.index,
                                                        false,
                                                    );
                                                    tokens.reset();
                                                }
                                                s.index += 1;
                                                if s.index < s.max_insert_index {
                                                    let h = hash4(&window[s.index as usize..]);
                                                    let ch = s.hash_head[h];
                                                    s.chain_head = ch as isize;
                                                    s.hash_prev[s.index as usize & WINDOW_MASK] =
                                                        ch;
                                                    s.hash_head[h] =
                                                        (s.index + s.hash_offset) as u32;
                                                }
                                            }
                                            break;
                                        }
                                        prev_length += 1;
                                        i -= 1;
                                    }
                                }
                            }
                        }
                    }
                } else {
                    let prev_index = s.index - 1;
                    if prev_index + prev_length + CHECK_OFF < s.max_insert_index {
                        let end = lookahead.min(MAX_MATCH_LENGTH) + prev_index;
                        let idx = prev_index + prev_length - (4 - CHECK_OFF);
                        let h = hash4(&window[idx as usize..]);
                        let ch2 =
                            s.hash_head[h] as isize - s.hash_offset - prev_length + (4 - CHECK_OFF);
                        if ch2 > min_index {
                            let length = match_len(
                                &window[prev_index as usize..end as usize],
                                &window[ch2 as usize..],
                            ) as isize;
                            if length > prev_length {
                                prev_length = length;
                                prev_offset = prev_index - ch2;
                            }
                        }
                    }
                }
                tokens.add_match((prev_length - 3) as u32, (prev_offset - 1) as u32);

                let new_index = s.index + prev_length - 1;
                let end = new_index.min(s.max_insert_index) + MIN_MATCH_LENGTH - 1;
                let startindex = (s.index + 1).min(s.max_insert_index);
                s.insert_hashes(window, startindex as usize, end as usize);
                s.index = new_index;
                self.byte_available = false;
                s.length = MIN_MATCH_LENGTH - 1;
                if tokens.n == MAX_FLATE_BLOCK_TOKENS {
                    write_block(w, tokens, block_start, s.index, false);
                    tokens.reset();
                }
                s.ii = 0;
            } else {
                if s.length >= MIN_MATCH_LENGTH {
                    s.ii = 0;
                }
                if self.byte_available {
                    s.ii = s.ii.wrapping_add(1);
                    tokens.add_literal(window[s.index as usize - 1]);
                    if tokens.n == MAX_FLATE_BLOCK_TOKENS {
                        write_block(w, tokens, block_start, s.index, false);
                        tokens.reset();
                    }
                    s.index += 1;
                    let n = s.ii as isize - s.chain;
                    if n > 0 {
                        let n = 1 + (n >> 6);
                        for _ in 0..n {
                            if s.index >= window_end - 1 {
                                break;
                            }
                            tokens.add_literal(window[s.index as usize - 1]);
                            if tokens.n == MAX_FLATE_BLOCK_TOKENS {
                                write_block(w, tokens, block_start, s.index, false);
                                tokens.reset();
                            }
                            if s.index < s.max_insert_index {
                                let h = hash4(&window[s.index as usize..]);
                                let ch = s.hash_head[h];
                                s.chain_head = ch as isize;
                                s.hash_prev[s.index as usize & WINDOW_MASK] = ch;
                                s.hash_head[h] = (s.index + s.hash_offset) as u32;
                            }
                            s.index += 1;
                        }
                        tokens.add_literal(window[s.index as usize - 1]);
                        self.byte_available = false;
                        if tokens.n == MAX_FLATE_BLOCK_TOKENS {
                            write_block(w, tokens, block_start, s.index, false);
                            tokens.reset();
                        }
                    }
                } else {
                    s.index += 1;
                    self.byte_available = true;
                }
            }
        }
    }
}

/// `findMatch`: the best match at `pos` longer than 3 along the hash chain from `prev_head`.
/// Which is best: the longest (levels 7-8 from 1.14.2), or the one of most gain, weighed by
/// the window's bits per byte (1.14.0-1.14.1) or by level 9's literal code (1.14.2 on).
fn find_match(
    s: &Lazy,
    window: &[u8],
    pos: isize,
    prev_head: isize,
    lookahead: isize,
) -> Option<(isize, isize)> {
    if s.bpb_gain {
        let bpb = s.est_bits_per_byte;
        let base = MIN_MATCH_LENGTH as i64 * bpb - 12;
        return chain_search(s, window, pos, prev_head, lookahead, base, |n, d, _| {
            n as i64 * bpb - (32 - (d as u32).leading_zeros()) as i64
        });
    }
    if s.chain < 100 {
        return chain_search(s, window, pos, prev_head, lookahead, i64::MIN, |n, _, _| {
            n as i64
        });
    }
    // 1.18.0+ wants a gain of more than 4 bits at a base cost of 3; 1.15.12 more than 0 at 6.
    let (base_cost, c_gain): (i64, i64) = if s.v1_18 { (3, 4) } else { (6, 0) };
    let h = s.h.as_ref().expect("level 9 literal code");
    chain_search(
        s,
        window,
        pos,
        prev_head,
        lookahead,
        c_gain,
        |n, d, w_pos| {
            h.bit_length_raw(&w_pos[..n as usize])
                - OFFSET_EXTRA_BITS[offset_code(d as u32) as usize] as i64
                - base_cost
                - LENGTH_EXTRA_BITS[LENGTH_CODES[((n - 3) & 255) as usize] as usize] as i64
        },
    )
}

/// The walk of `findMatch` along the hash chain from `prev_head` (at most `chain` links): a
/// longer match at `pos` is taken when `gain(length, distance, &window[pos..])` beats the
/// best so far (`c_gain` at first); a match of `nice` bytes ends the walk.
fn chain_search(
    s: &Lazy,
    window: &[u8],
    pos: isize,
    prev_head: isize,
    lookahead: isize,
    mut c_gain: i64,
    gain: impl Fn(isize, isize, &[u8]) -> i64,
) -> Option<(isize, isize)> {
    let min_match_look = lookahead.min(MAX_MATCH_LENGTH);
    let win = &window[..(pos + min_match_look) as usize];
    let nice = (win.len() as isize - pos).min(s.nice);
    let mut tries = s.chain;
    let mut length = MIN_MATCH_LENGTH - 1;
    let mut w_end = win[(pos + length) as usize];
    let w_pos = &win[pos as usize..];
    let min_index = (pos - WINDOW_SIZE as isize).max(0);
    let mut offset = 0;
    let mut ok = false;
    let mut i = prev_head;
    while tries > 0 {
        if w_end == win[(i + length) as usize] {
            let n = match_len(&win[i as usize..(i + min_match_look) as usize], w_pos) as isize;
            if n > length {
                let new_gain = gain(n, pos - i, w_pos);
                if new_gain > c_gain {
                    length = n;
                    offset = pos - i;
                    c_gain = new_gain;
                    ok = true;
                    if n >= nice {
                        break;
                    }
                    w_end = win[(pos + n) as usize];
                }
            }
        }
        if i <= min_index {
            break;
        }
        i = s.hash_prev[i as usize & WINDOW_MASK] as isize - s.hash_offset;
        if i < min_index {
            break;
        }
        tries -= 1;
    }
    ok.then_some((length, offset))
}
