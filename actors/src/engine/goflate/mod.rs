//! An exact re-implementation of Go's `compress/flate` encoder and the
//! `compress/gzip` writer on top of it (Go 1.19, the version Debian ships).
//!
//! Docker Engine, BuildKit, containerd and go-containerregistry write layer
//! gzip with this code. To give such a layer back bit for bit from
//! deduplicated chunks, stowage re-encodes the plaintext with the same
//! algorithm: same match finder (hash chains, lazy matching, the BestSpeed
//! Snappy-style matcher), same block splitting (16384 tokens, 65535-byte
//! stored/BestSpeed/HuffmanOnly windows), same Huffman construction
//! (`huffmanEncoder.generate`'s length-limited package-merge) and the same
//! fixed/dynamic/stored choice.
//!
//! Port of the Go standard library's compress/flate and compress/gzip
//! (BSD-3-Clause, Copyright (c) 2009 The Go Authors); see NOTICE.
//!
//! ## Write pattern
//! Go's output for levels 2-9 can depend, in rare cases, on how the input was
//! split into `Write` calls (the 64 KiB window slides at the first `Write`
//! that finds it nearly full). [`GoDeflater::write`] always behaves like a
//! single large `Write` call, which is also what every write size that is a
//! multiple of 32 KiB (`io.Copy`) produces. Streams written otherwise almost
//! always come out the same; when one does not, the whole-stream check at
//! ingest sees it and the layer keeps its raw bytes.
//!
//! Explicit `Flush` calls mid-stream are not modelled: the container tools only `Write` and
//! `Close`, and a stream with sync-flush points fails the probe and stays raw.
//!
//! ## Versions
//! The encoder has been unchanged in its output since Go 1.7's BestSpeed
//! rewrite (deflatefast.go) and the hash4/minMatchLength 4 change; the tests
//! check it against the Go toolchain found on the machine.

mod fast;
mod huffman;

use fast::{common_prefix, DeflateFast};
use huffman::{literal_token, match_token, BitWriter, Token, MAX_STORE_BLOCK_SIZE};

const WINDOW_SIZE: usize = 1 << 15;
const WINDOW_MASK: usize = WINDOW_SIZE - 1;
const MIN_MATCH_LENGTH: isize = 4;
const MAX_MATCH_LENGTH: isize = 258;
const MAX_FLATE_BLOCK_TOKENS: usize = 1 << 14;
const HASH_BITS: u32 = 17;
const HASH_SIZE: usize = 1 << HASH_BITS;
const HASH_MASK: u32 = (HASH_SIZE - 1) as u32;
const MAX_HASH_OFFSET: isize = 1 << 24;
const SKIP_NEVER: isize = i32::MAX as isize;
const BLOCK_START_NONE: isize = i32::MAX as isize;
const HASHMUL: u32 = 0x1e35a7bd;

/// Go's compression levels: -2 HuffmanOnly, 0 NoCompression, 1 BestSpeed .. 9.
/// -1 (DefaultCompression) is level 6 and gives identical bytes.
pub const LEVELS: [i32; 11] = [-2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9];

#[derive(Clone, Copy)]
struct Params {
    good: isize,
    lazy: isize,
    nice: isize,
    chain: isize,
    fast_skip_hashing: isize,
}

fn params(level: i32) -> Params {
    let (good, lazy, nice, chain, fsh) = match level {
        2 => (4, 0, 16, 8, 5),
        3 => (4, 0, 32, 32, 6),
        4 => (4, 4, 16, 16, SKIP_NEVER),
        5 => (8, 16, 32, 32, SKIP_NEVER),
        6 => (8, 16, 128, 128, SKIP_NEVER),
        7 => (8, 32, 128, 256, SKIP_NEVER),
        8 => (32, 128, 258, 1024, SKIP_NEVER),
        9 => (32, 258, 258, 4096, SKIP_NEVER),
        _ => (0, 0, 0, 0, 0),
    };
    Params {
        good,
        lazy,
        nice,
        chain,
        fast_skip_hashing: fsh,
    }
}

#[derive(Debug, thiserror::Error)]
#[error("Go compress/flate has no level {0} (want -2..9)")]
pub struct BadLevel(pub i32);

enum Mode {
    Store,
    Huff,
    Fast(Box<DeflateFast>),
    Lazy,
}

#[inline(always)]
fn hash4(b: &[u8]) -> u32 {
    let v = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    v.wrapping_mul(HASHMUL) >> (32 - HASH_BITS)
}

/// A streaming Go `flate.Writer`. Output accumulates in an internal buffer:
/// take it with [`GoDeflater::take_output`].
pub struct GoDeflater {
    mode: Mode,
    p: Params,
    w: BitWriter,
    sync: bool,
    window: Vec<u8>,
    window_end: usize,
    tokens: Vec<Token>,
    // Hash-chain state (levels 2-9).
    chain_head: isize,
    hash_head: Vec<u32>,
    hash_prev: Vec<u32>,
    hash_offset: isize,
    index: isize,
    block_start: isize,
    byte_available: bool,
    length: isize,
    offset: isize,
    max_insert_index: isize,
    closed: bool,
    /// Absolute plaintext offset of window[0] (levels 2-9).
    base: u64,
    /// Stop after the block that ends at this absolute plaintext offset (segment encoding).
    stop_at: Option<u64>,
    stopped: bool,
}

impl GoDeflater {
    pub fn new(level: i32) -> Result<GoDeflater, BadLevel> {
        let level = if level == -1 { 6 } else { level };
        let (mode, window, tokens) = match level {
            0 => (Mode::Store, vec![0; MAX_STORE_BLOCK_SIZE], Vec::new()),
            -2 => (Mode::Huff, vec![0; MAX_STORE_BLOCK_SIZE], Vec::new()),
            1 => (
                Mode::Fast(Box::new(DeflateFast::new())),
                vec![0; MAX_STORE_BLOCK_SIZE],
                Vec::with_capacity(MAX_STORE_BLOCK_SIZE + 1),
            ),
            2..=9 => (
                Mode::Lazy,
                vec![0; 2 * WINDOW_SIZE],
                Vec::with_capacity(MAX_FLATE_BLOCK_TOKENS + 1),
            ),
            _ => return Err(BadLevel(level)),
        };
        let lazy = matches!(mode, Mode::Lazy);
        Ok(GoDeflater {
            mode,
            p: params(level),
            w: BitWriter::new(),
            sync: false,
            window,
            window_end: 0,
            tokens,
            chain_head: -1,
            hash_head: if lazy { vec![0; HASH_SIZE] } else { Vec::new() },
            hash_prev: if lazy {
                vec![0; WINDOW_SIZE]
            } else {
                Vec::new()
            },
            hash_offset: 1,
            index: 0,
            block_start: 0,
            byte_available: false,
            length: MIN_MATCH_LENGTH - 1,
            offset: 0,
            max_insert_index: 0,
            closed: false,
            base: 0,
            stop_at: None,
            stopped: false,
        })
    }

    /// Compressed bytes produced so far and not yet taken.
    pub fn take_output(&mut self, dst: &mut Vec<u8>) {
        if dst.is_empty() {
            std::mem::swap(dst, &mut self.w.out);
        } else {
            dst.append(&mut self.w.out);
        }
    }

    /// Feed plaintext, as one large `Write` would.
    pub fn write(&mut self, mut b: &[u8]) {
        assert!(!self.closed, "write after close");
        while !b.is_empty() && !self.stopped {
            if self.window_end == self.window.len() {
                self.step();
            }
            let n = self.fill(b);
            b = &b[n..];
        }
    }

    /// `Close`: everything pending, then the final empty stored block.
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        self.sync = true;
        self.step();
        self.w.write_stored_header(0, true);
        self.w.flush();
        self.closed = true;
    }

    fn fill(&mut self, b: &[u8]) -> usize {
        if matches!(self.mode, Mode::Lazy) {
            self.shift_window_if_needed();
        }
        let n = b.len().min(self.window.len() - self.window_end);
        self.window[self.window_end..self.window_end + n].copy_from_slice(&b[..n]);
        self.window_end += n;
        n
    }

    fn step(&mut self) {
        match self.mode {
            Mode::Store => {
                if self.window_end > 0 && (self.window_end == MAX_STORE_BLOCK_SIZE || self.sync) {
                    self.w.write_stored_header(self.window_end, false);
                    let (w, win) = (&mut self.w, &self.window[..self.window_end]);
                    write_raw(w, win);
                    self.window_end = 0;
                }
            }
            Mode::Huff => {
                if self.window_end < self.window.len() && !self.sync || self.window_end == 0 {
                    return;
                }
                self.w
                    .write_block_huff(false, &self.window[..self.window_end]);
                self.window_end = 0;
            }
            Mode::Fast(_) => self.enc_speed(),
            Mode::Lazy => self.deflate(),
        }
    }

    fn enc_speed(&mut self) {
        let Mode::Fast(fast) = &mut self.mode else {
            unreachable!()
        };
        let end = self.window_end;
        if end < MAX_STORE_BLOCK_SIZE {
            if !self.sync {
                return;
            }
            if end < 128 {
                match end {
                    0 => return,
                    1..=16 => {
                        self.w.write_stored_header(end, false);
                        write_raw(&mut self.w, &self.window[..end]);
                    }
                    _ => self.w.write_block_huff(false, &self.window[..end]),
                }
                self.window_end = 0;
                fast.reset();
                return;
            }
        }
        self.tokens.clear();
        fast.encode(&mut self.tokens, &self.window[..end]);
        if self.tokens.len() > end - (end >> 4) {
            self.w.write_block_huff(false, &self.window[..end]);
        } else {
            self.w
                .write_block_dynamic(&mut self.tokens, false, &self.window[..end]);
        }
        self.window_end = 0;
    }

    fn shift_window_if_needed(&mut self) {
        if self.index < (2 * WINDOW_SIZE) as isize - (MIN_MATCH_LENGTH + MAX_MATCH_LENGTH) {
            return;
        }
        self.window.copy_within(WINDOW_SIZE..2 * WINDOW_SIZE, 0);
        self.base += WINDOW_SIZE as u64;
        self.index -= WINDOW_SIZE as isize;
        self.window_end -= WINDOW_SIZE;
        if self.block_start >= WINDOW_SIZE as isize {
            self.block_start -= WINDOW_SIZE as isize;
        } else {
            self.block_start = BLOCK_START_NONE;
        }
        self.hash_offset += WINDOW_SIZE as isize;
        if self.hash_offset > MAX_HASH_OFFSET {
            let delta = self.hash_offset - 1;
            self.hash_offset -= delta;
            self.chain_head -= delta;
            for v in self.hash_prev.iter_mut().chain(self.hash_head.iter_mut()) {
                *v = if (*v as isize) > delta {
                    (*v as isize - delta) as u32
                } else {
                    0
                };
            }
        }
    }

    fn write_block(&mut self, index: isize) {
        if index > 0 {
            let input = if self.block_start <= index {
                Some(&self.window[self.block_start as usize..index as usize])
            } else {
                None
            };
            self.block_start = index;
            self.w.write_block(&mut self.tokens, false, input);
            if self.stop_at == Some(self.base + index as u64) {
                self.stopped = true;
            }
        }
        self.tokens.clear();
    }

    #[inline(always)]
    fn insert(&mut self, index: isize) -> u32 {
        let i = index as usize;
        let hash = hash4(&self.window[i..i + 4]);
        let hh = &mut self.hash_head[(hash & HASH_MASK) as usize];
        let prev = *hh;
        self.hash_prev[i & WINDOW_MASK] = prev;
        *hh = (index + self.hash_offset) as u32;
        prev
    }

    fn find_match(
        &self,
        pos: isize,
        prev_head: isize,
        prev_length: isize,
        lookahead: isize,
    ) -> Option<(isize, isize)> {
        let min_match_look = MAX_MATCH_LENGTH.min(lookahead);
        let win = &self.window[..(pos + min_match_look) as usize];
        let nice = self.p.nice.min(win.len() as isize - pos);
        let mut tries = self.p.chain;
        let mut length = prev_length;
        if length >= self.p.good {
            tries >>= 2;
        }
        let mut w_end = win[(pos + length) as usize];
        let w_pos = &win[pos as usize..];
        let min_index = pos - WINDOW_SIZE as isize;
        let mut found = None;
        let mut i = prev_head;
        while tries > 0 {
            if w_end == win[(i + length) as usize] {
                let n = common_prefix(
                    &win[i as usize..i as usize + min_match_look as usize],
                    w_pos,
                ) as isize;
                if n > length && (n > MIN_MATCH_LENGTH || pos - i <= 4096) {
                    length = n;
                    found = Some((n, pos - i));
                    if n >= nice {
                        break;
                    }
                    w_end = win[(pos + n) as usize];
                }
            }
            if i == min_index {
                break;
            }
            i = self.hash_prev[i as usize & WINDOW_MASK] as isize - self.hash_offset;
            if i < min_index || i < 0 {
                break;
            }
            tries -= 1;
        }
        found
    }

    fn deflate(&mut self) {
        if ((self.window_end as isize - self.index) < MIN_MATCH_LENGTH + MAX_MATCH_LENGTH)
            && !self.sync
        {
            return;
        }
        let fsh = self.p.fast_skip_hashing;
        let window_end = self.window_end as isize;
        self.max_insert_index = window_end - (MIN_MATCH_LENGTH - 1);
        loop {
            let lookahead = window_end - self.index;
            if lookahead < MIN_MATCH_LENGTH + MAX_MATCH_LENGTH {
                if !self.sync {
                    break;
                }
                if lookahead == 0 {
                    if self.byte_available {
                        let b = self.window[self.index as usize - 1];
                        self.tokens.push(literal_token(b));
                        self.byte_available = false;
                    }
                    if !self.tokens.is_empty() {
                        self.write_block(self.index);
                    }
                    break;
                }
            }
            if self.index < self.max_insert_index {
                self.chain_head = self.insert(self.index) as isize;
            }
            let prev_length = self.length;
            let prev_offset = self.offset;
            self.length = MIN_MATCH_LENGTH - 1;
            self.offset = 0;
            let min_index = (self.index - WINDOW_SIZE as isize).max(0);
            if self.chain_head - self.hash_offset >= min_index
                && (fsh != SKIP_NEVER && lookahead > MIN_MATCH_LENGTH - 1
                    || fsh == SKIP_NEVER && lookahead > prev_length && prev_length < self.p.lazy)
            {
                if let Some((l, o)) = self.find_match(
                    self.index,
                    self.chain_head - self.hash_offset,
                    MIN_MATCH_LENGTH - 1,
                    lookahead,
                ) {
                    self.length = l;
                    self.offset = o;
                }
            }
            if fsh != SKIP_NEVER && self.length >= MIN_MATCH_LENGTH
                || fsh == SKIP_NEVER
                    && prev_length >= MIN_MATCH_LENGTH
                    && self.length <= prev_length
            {
                if fsh != SKIP_NEVER {
                    self.tokens.push(match_token(
                        (self.length - 3) as u32,
                        (self.offset - 1) as u32,
                    ));
                } else {
                    self.tokens.push(match_token(
                        (prev_length - 3) as u32,
                        (prev_offset - 1) as u32,
                    ));
                }
                if self.length <= fsh {
                    let new_index = if fsh != SKIP_NEVER {
                        self.index + self.length
                    } else {
                        self.index + prev_length - 1
                    };
                    let mut index = self.index + 1;
                    while index < new_index {
                        if index < self.max_insert_index {
                            self.insert(index);
                        }
                        index += 1;
                    }
                    self.index = index;
                    if fsh == SKIP_NEVER {
                        self.byte_available = false;
                        self.length = MIN_MATCH_LENGTH - 1;
                    }
                } else {
                    self.index += self.length;
                }
                if self.tokens.len() == MAX_FLATE_BLOCK_TOKENS {
                    self.write_block(self.index);
                    if self.stopped {
                        return;
                    }
                }
            } else {
                if fsh != SKIP_NEVER || self.byte_available {
                    let i = if fsh != SKIP_NEVER {
                        self.index
                    } else {
                        self.index - 1
                    };
                    self.tokens.push(literal_token(self.window[i as usize]));
                    if self.tokens.len() == MAX_FLATE_BLOCK_TOKENS {
                        self.write_block(i + 1);
                        if self.stopped {
                            self.index += 1;
                            self.byte_available = true;
                            return;
                        }
                    }
                }
                self.index += 1;
                if fsh == SKIP_NEVER {
                    self.byte_available = true;
                }
            }
        }
    }
}

fn write_raw(w: &mut BitWriter, bytes: &[u8]) {
    // Stored block body: the header already flushed to a byte boundary and
    // wrote LEN/NLEN (32 bits, so still byte aligned).
    w.flush();
    w.out.extend_from_slice(bytes);
}

/// Go's whole `flate.Writer` output for `input` written in one go and closed.
pub fn deflate(level: i32, input: &[u8]) -> Result<Vec<u8>, BadLevel> {
    let mut d = GoDeflater::new(level)?;
    d.write(input);
    d.close();
    let mut out = Vec::new();
    d.take_output(&mut out);
    Ok(out)
}

/// The 10-byte header `compress/gzip` writes with no name, comment, extra or
/// mtime: XFL is 2 for level 9, 4 for level 1, else 0; OS is 255 (unknown).
pub fn gzip_header(level: i32) -> [u8; 10] {
    let xfl = match level {
        9 => 2,
        1 => 4,
        _ => 0,
    };
    [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 255]
}

// ---- parallel re-encoding ------------------------------------------------------------------
//
// A Go stream at levels 4-9 can be cut at any block boundary and each part re-encoded on its
// own. At a boundary the encoder's whole state is a function of the plaintext alone:
// * the lazy matcher is clean: after a match block `byteAvailable` is false; after a literal
//   block the pending match at the boundary was searched unconditionally (the search only
//   depends on the hash chains, not on the previous match), so restarting there with a clean
//   matcher reaches the same state one step later;
// * every position before the boundary is in the hash chains (levels 4-9 insert them all),
//   and only the last 32 KiB and positions inside the current window buffer are reachable;
// * the window buffer slides by 32 KiB at the first token boundary at or past
//   `(k+1)*32768 - 261` while more input follows, so its base is known from the offset;
// * `hashOffset` is `1 + (slides mod 512) * 32768` (Go rebases it every 16 MiB);
// * the bit writer only matters through the bit phase, which the boundary's bit offset gives.
// Boundaries come from the inflater at ingest ([`Split`]); the restore is checked whole by
// its sha256 like every other.

/// A block boundary of a deflate stream: plaintext offset and bit offset in the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split {
    pub plain: u64,
    pub bit: u64,
}

/// Levels whose streams can be re-encoded from block boundaries.
pub fn splittable(level: i32) -> bool {
    (4..=9).contains(&level) || level == -1
}

/// Plaintext a segment needs around it: from `HISTORY_BEFORE` bytes before its start to
/// `LOOKAHEAD_AFTER` bytes after its end (both clamped to the stream).
pub const HISTORY_BEFORE: u64 = 2 * WINDOW_SIZE as u64;
pub const LOOKAHEAD_AFTER: u64 = 2 * WINDOW_SIZE as u64 + 1;

fn window_base(q: u64, total: u64) -> (u64, u64) {
    let w = WINDOW_SIZE as u64;
    let mut k = 0;
    while (k + 2) * w <= q + 261 && (k + 2) * w < total {
        k += 1;
    }
    (k * w, k)
}

/// One re-encoded segment: `bytes` starts with `start.bit % 8` zero bits that belong to the
/// previous segment's last byte, and holds `bits` bits in all (those included).
pub struct Segment {
    pub bytes: Vec<u8>,
    pub bits: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("level {0} streams cannot be split")]
    Level(i32),
    #[error("segment plaintext does not cover {0}..{1}")]
    Coverage(u64, u64),
    #[error("segment came out {got} bits long, the stream has {want}")]
    Length { got: u64, want: u64 },
}

/// Re-encode the part of a Go level 4-9 stream from block boundary `start` to `end` (or to
/// the end of the stream, `total` plaintext bytes). `data` is plaintext starting at absolute
/// offset `data_base`, covering [`HISTORY_BEFORE`] before `start` and [`LOOKAHEAD_AFTER`]
/// after `end`.
pub fn encode_segment(
    level: i32,
    total: u64,
    data: &[u8],
    data_base: u64,
    start: Split,
    end: Option<Split>,
) -> Result<Segment, SegmentError> {
    if !splittable(level) {
        return Err(SegmentError::Level(level));
    }
    let q = start.plain;
    let (base, slides) = window_base(q, total);
    let need_end = match end {
        Some(e) => (e.plain + LOOKAHEAD_AFTER).min(total),
        None => total,
    };
    let data_end = data_base + data.len() as u64;
    if data_base > base || data_end < need_end {
        return Err(SegmentError::Coverage(base, need_end));
    }
    let mut d = GoDeflater::new(level).map_err(|_| SegmentError::Level(level))?;
    let at = |abs: u64| (abs - data_base) as usize;
    let wend = (base + 2 * WINDOW_SIZE as u64).min(total);
    let initial = &data[at(base)..at(wend)];
    d.window[..initial.len()].copy_from_slice(initial);
    d.window_end = initial.len();
    d.base = base;
    d.hash_offset = 1 + (slides % 512) as isize * WINDOW_SIZE as isize;
    d.index = (q - base) as isize;
    d.block_start = d.index;
    d.max_insert_index = d.window_end as isize - (MIN_MATCH_LENGTH - 1);
    let from = (q.saturating_sub(WINDOW_SIZE as u64)).max(base);
    for abs in from..q {
        d.insert((abs - base) as isize);
    }
    d.w.set_phase((start.bit % 8) as u32);
    d.stop_at = end.map(|e| e.plain);
    if d.window_end == d.window.len() {
        d.step();
    }
    d.write(&data[at(wend)..at(need_end)]);
    if end.is_none() {
        d.close();
    }
    let (bytes, bits) = d.w.take_bits();
    let got = bits - start.bit % 8;
    if let Some(e) = end {
        if !d.stopped || got != e.bit - start.bit {
            return Err(SegmentError::Length {
                got,
                want: e.bit - start.bit,
            });
        }
    }
    Ok(Segment { bytes, bits })
}

/// Append `seg` to a stream of `out_bits` bits held in `out` (its last byte possibly partial).
pub fn splice(out: &mut Vec<u8>, out_bits: &mut u64, seg: &Segment) {
    let phase = *out_bits % 8;
    let mut bytes = &seg.bytes[..];
    if phase != 0 {
        if let (Some(last), Some(first)) = (out.last_mut(), bytes.first()) {
            *last |= first;
            bytes = &bytes[1..];
        }
    }
    out.extend_from_slice(bytes);
    *out_bits += seg.bits - phase;
}
