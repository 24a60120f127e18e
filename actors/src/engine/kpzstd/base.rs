//! Ports `zstd/enc_base.go` and `zstd/hash.go` (klauspost/compress 1.15.12):
//! the history window, position offset (`cur`), checksum and block shared by
//! the match finders, and the hash functions.

use xxhash_rust::xxh64::Xxh64;

use super::block::BlockEnc;
use super::MAX_COMPRESSED_BLOCK_SIZE;

/// `bufferReset` up to 1.15.12: `math.MaxInt32 - MaxWindowSize`.
pub(crate) const BUFFER_RESET: i32 = i32::MAX - (1 << 29);

/// When positions are rebased or tables cleared (`bufferReset`), which 1.15.13 changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rebase {
    /// Up to 1.15.12: the constant [`BUFFER_RESET`]; `Encode` checks `e.cur >= bufferReset`.
    Fixed,
    /// From 1.15.13: `fastBase.bufferReset = math.MaxInt32 - 2*windowSize`; `Encode`
    /// checks `e.cur >= e.bufferReset-int32(len(e.hist))`.
    PerWindow,
}
/// `zstdMinMatch`.
pub(crate) const ZSTD_MIN_MATCH: i32 = 3;
/// `maxMatchLength`.
pub(crate) const MAX_MATCH_LENGTH: i32 = 131074;

const PRIME4BYTES: u32 = 2654435761;
const PRIME5BYTES: u64 = 889523592379;
const PRIME6BYTES: u64 = 227718039650203;
const PRIME8BYTES: u64 = 0xcf1bbcdcb7a56463;

/// `hashLen(u, length, 4)`.
#[inline(always)]
pub(crate) fn hash4(u: u64, length: u32) -> usize {
    ((u as u32).wrapping_mul(PRIME4BYTES) >> (32 - length)) as usize
}

/// `hashLen(u, length, 5)`.
#[inline(always)]
pub(crate) fn hash5(u: u64, length: u32) -> usize {
    ((u << (64 - 40)).wrapping_mul(PRIME5BYTES) >> (64 - length)) as u32 as usize
}

/// `hashLen(u, length, 6)`.
#[inline(always)]
pub(crate) fn hash6(u: u64, length: u32) -> usize {
    ((u << (64 - 48)).wrapping_mul(PRIME6BYTES) >> (64 - length)) as u32 as usize
}

/// `hashLen(u, length, 8)`.
#[inline(always)]
pub(crate) fn hash8(u: u64, length: u32) -> usize {
    (u.wrapping_mul(PRIME8BYTES) >> (64 - length)) as u32 as usize
}

/// `load3232`.
#[inline(always)]
pub(crate) fn load32(b: &[u8], i: i32) -> u32 {
    let i = i as usize;
    u32::from_le_bytes(b[i..i + 4].try_into().unwrap())
}

/// `load6432`.
#[inline(always)]
pub(crate) fn load64(b: &[u8], i: i32) -> u64 {
    let i = i as usize;
    u64::from_le_bytes(b[i..i + 8].try_into().unwrap())
}

/// `matchLen` / `fastBase.matchlen`: how many bytes at `s` equal those at `t`, up to
/// the end of `src` (counted from `s`).
#[inline(always)]
pub(crate) fn matchlen(s: i32, t: i32, src: &[u8]) -> i32 {
    let a = &src[s as usize..];
    let b = &src[t as usize..t as usize + a.len()];
    let mut i = 0usize;
    let end = a.len() & !7;
    while i < end {
        let x = u64::from_le_bytes(a[i..i + 8].try_into().unwrap());
        let y = u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        let diff = x ^ y;
        if diff != 0 {
            return (i + (diff.trailing_zeros() >> 3) as usize) as i32;
        }
        i += 8;
    }
    while i < a.len() {
        if a[i] != b[i] {
            return i as i32;
        }
        i += 1;
    }
    a.len() as i32
}

/// `SpeedFastest`'s inlined match length before 1.14.0: whole 8-byte words only, so a
/// match running into the last `len % 8` bytes of `src` stops at the last whole word.
#[inline(always)]
pub(crate) fn matchlen_words(s: i32, t: i32, src: &[u8]) -> i32 {
    let a = &src[s as usize..];
    let b = &src[t as usize..t as usize + a.len()];
    let end = a.len() & !7;
    for i in (0..end).step_by(8) {
        let x = u64::from_le_bytes(a[i..i + 8].try_into().unwrap());
        let y = u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        let diff = x ^ y;
        if diff != 0 {
            return (i + (diff.trailing_zeros() >> 3) as usize) as i32;
        }
    }
    end as i32
}

/// `tableEntry`.
#[derive(Clone, Copy, Default)]
pub(crate) struct TableEntry {
    pub val: u32,
    pub offset: i32,
}

/// `fastBase`.
pub(crate) struct FastBase {
    /// The offset at the start of `hist`.
    pub cur: i32,
    /// The window: the maximum match distance.
    pub max_match_off: i32,
    pub hist: Vec<u8>,
    /// `bufferReset`.
    pub buffer_reset: i32,
    /// Whether `Encode`'s check subtracts the history (1.15.13 on).
    rebase_minus_hist: bool,
    /// Go's `cap(e.hist)`, which decides when the history moves down.
    hist_cap: usize,
    /// How far past a finished frame's history `cur` moves when the next frame starts.
    /// Go moves it a window on (`maxMatchOff`), so that every table entry is out of reach,
    /// and clears the tables when `cur` nears `bufferReset`: once every 2^31 / window
    /// frames, which for zstd:chunked's frames of a few KiB under
    /// [`super::best::BestFastEncoder`] (34 MB of tables) was a fifth of the re-encode.
    /// An encoder that also refuses every candidate before its history's start (as Go's
    /// must: it would index out of bounds) needs only 1; its tables then wrap once in 2^31
    /// bytes. The frames written are the same.
    pub frame_gap: i32,
    pub crc: Xxh64,
    pub blk: BlockEnc,
}

impl FastBase {
    pub fn new(max_match_off: i32, rebase: Rebase) -> Self {
        let (buffer_reset, rebase_minus_hist) = match rebase {
            Rebase::Fixed => (BUFFER_RESET, false),
            Rebase::PerWindow => (i32::MAX - max_match_off.wrapping_mul(2), true),
        };
        FastBase {
            cur: 0,
            max_match_off,
            hist: Vec::new(),
            buffer_reset,
            rebase_minus_hist,
            hist_cap: 0,
            frame_gap: max_match_off,
            crc: Xxh64::new(0),
            blk: BlockEnc::new(),
        }
    }

    /// `Encode`'s "protect against e.cur wraparound" condition.
    #[inline(always)]
    pub fn must_rebase(&self) -> bool {
        if self.rebase_minus_hist {
            self.cur >= self.buffer_reset.wrapping_sub(self.hist.len() as i32)
        } else {
            self.cur >= self.buffer_reset
        }
    }

    /// `WindowSize`: the window, or a power of two holding `size` if smaller.
    pub fn window_size(&self, size: i64) -> i32 {
        if size > 0 && size < i64::from(self.max_match_off) {
            let mut b = 1i32 << (64 - (size as u64).leading_zeros());
            if b < 1024 {
                b = 1024;
            }
            return b;
        }
        self.max_match_off
    }

    /// `AppendCRC`: the low 32 bits of the XXH64, little endian.
    pub fn append_crc(&self, dst: &mut Vec<u8>) {
        dst.extend_from_slice(&(self.crc.digest() as u32).to_le_bytes());
    }

    /// `addBlock`: append `src` to the history (moving it down first if full);
    /// returns where it starts.
    pub fn add_block(&mut self, src: &[u8]) -> i32 {
        if self.hist.len() + src.len() > self.hist_cap {
            if self.hist_cap == 0 {
                self.ensure_hist(src.len());
            } else {
                assert!(
                    self.hist_cap >= (self.max_match_off as usize + MAX_COMPRESSED_BLOCK_SIZE),
                    "unexpected buffer cap"
                );
                let offset = self.hist.len() as i32 - self.max_match_off;
                self.hist.copy_within(offset as usize.., 0);
                self.cur = self.cur.wrapping_add(offset);
                self.hist.truncate(self.max_match_off as usize);
            }
        }
        let s = self.hist.len() as i32;
        self.hist.extend_from_slice(src);
        s
    }

    /// `ensureHist` (never low-memory).
    pub fn ensure_hist(&mut self, n: usize) {
        if self.hist_cap >= n {
            return;
        }
        let mut l = self.max_match_off as usize;
        if self.max_match_off as usize <= MAX_COMPRESSED_BLOCK_SIZE {
            l += MAX_COMPRESSED_BLOCK_SIZE;
        } else {
            l += self.max_match_off as usize;
        }
        if l < 1 << 20 {
            l = 1 << 20;
        }
        if l < n {
            l = n;
        }
        self.hist = Vec::with_capacity(l);
        self.hist_cap = l;
    }

    /// `resetBase` without a dictionary: a new frame; earlier positions move out of
    /// reach.
    pub fn reset_base(&mut self) {
        self.blk.reset();
        self.blk.init_new_encode();
        self.crc.reset(0);
        if self.cur < self.buffer_reset {
            self.cur = self
                .cur
                .wrapping_add(self.frame_gap)
                .wrapping_add(self.hist.len() as i32);
        }
        self.hist.clear();
    }
}

/// What the stream driver needs of a match finder (`encoder` in Go, without the
/// dictionary and block-swapping methods).
pub(crate) trait Matcher: Send {
    fn base(&mut self) -> &mut FastBase;
    fn base_ref(&self) -> &FastBase;
    /// `Encode`: find the sequences of `src`, a block continuing the history.
    fn encode(&mut self, src: &[u8]);
    /// `EncodeNoHist`: the same for a frame's only block, without keeping history.
    fn encode_no_hist(&mut self, src: &[u8]);
    /// `Reset(nil, _)`.
    fn reset(&mut self) {
        self.base().reset_base();
    }
    /// Maps its match tables' pages now ([`populate`]), before it re-creates frames.
    fn populate_tables(&mut self);
}

/// Match-table entries whose all-zero bytes are the empty entry (`Default`).
///
/// # Safety
/// An implementor's `T::default()` must be all zero bytes, with no padding that matters.
pub(crate) unsafe trait ZeroIsEmpty: Copy + Default {}

// SAFETY: two integers each, zero by default.
unsafe impl ZeroIsEmpty for TableEntry {}
// SAFETY: as above.
unsafe impl ZeroIsEmpty for PrevEntry {}

/// A match table of `n` empty entries, from zeroed (calloc'd) memory: a page costs memory
/// only once used. Most encoders see small frames only (ingest tries each level on a frame's
/// start, and gives most of them up within a block), and `SpeedBestCompression`'s tables
/// are 34 MiB. An encoder about to re-create frames populates its tables first
/// ([`populate`]).
pub(crate) fn match_table<T: ZeroIsEmpty>(n: usize) -> Vec<T> {
    if n == 0 || std::mem::size_of::<T>() == 0 {
        return vec![T::default(); n];
    }
    let layout = std::alloc::Layout::array::<T>(n).expect("a match table fits in memory");
    // SAFETY: the layout is not empty; zeroed memory is `n` valid empty entries
    // (`ZeroIsEmpty`); the allocation is the global allocator's with `Vec`'s layout for a
    // capacity of `n`.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout).cast::<T>();
        if p.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Vec::from_raw_parts(p, n, n)
    }
}

/// Maps every page of table `t` writable now, its entries unchanged, in one call
/// (`MADV_POPULATE_WRITE`, Linux 5.14). Left lazy, a fresh page is mapped on its first read
/// to the shared zero page, and its first write then faults again and flushes the TLB of
/// every core the process runs on: scattered over `SpeedBestCompression`'s 34 MiB, those
/// faults were a third of a frame-delta pull. A hint: where the kernel refuses it, pages stay
/// lazy and the bytes written are the same.
pub(crate) fn populate<T>(t: &mut [T]) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sysconf has no preconditions.
        let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            p if p > 0 => p as usize,
            _ => return,
        };
        let start = t.as_mut_ptr() as usize;
        let first = start.next_multiple_of(page);
        let end = (start + std::mem::size_of_val(t)) / page * page;
        if end > first {
            // SAFETY: the pages lie inside `t`, which we borrow mutably; populating them
            // for writing changes no byte.
            unsafe {
                libc::madvise(
                    first as *mut libc::c_void,
                    end - first,
                    libc::MADV_POPULATE_WRITE,
                )
            };
        }
    }
}

/// Asks the cache for `t[i]`, an entry a later step will look up. A hint only: what the
/// encoder writes does not change.
#[inline(always)]
pub(crate) fn prefetch<T>(t: &[T], i: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(e) = t.get(i) {
        // SAFETY: a prefetch reads nothing and cannot fault; `e` is a live element, and SSE
        // is part of every x86_64 target.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                (e as *const T).cast::<i8>(),
            )
        }
    }
}

/// `prevEntry`: a table entry that remembers the one it replaced (a chain of 2).
#[derive(Clone, Copy, Default)]
pub(crate) struct PrevEntry {
    pub offset: i32,
    pub prev: i32,
}

/// The wraparound shift of a `prevEntry` table (`Encode`'s `e.cur >= bufferReset`
/// branch of the better and best encoders).
pub(crate) fn shift_prev_table(t: &mut [PrevEntry], cur: i32, min_off: i32, max_match_off: i32) {
    for e in t.iter_mut() {
        let (mut v, mut v2) = (e.offset, e.prev);
        if v < min_off {
            v = 0;
            v2 = 0;
        } else {
            v = v.wrapping_sub(cur).wrapping_add(max_match_off);
            v2 = if v2 < min_off {
                0
            } else {
                v2.wrapping_sub(cur).wrapping_add(max_match_off)
            };
        }
        *e = PrevEntry {
            offset: v,
            prev: v2,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_starts_empty_and_populating_it_changes_no_entry() {
        let mut t: Vec<PrevEntry> = match_table(1 << 16);
        assert_eq!(t.len(), 1 << 16);
        assert!(t.iter().all(|e| e.offset == 0 && e.prev == 0));
        for (i, e) in t.iter_mut().enumerate().step_by(999) {
            e.offset = i as i32 + 1;
            e.prev = -(i as i32);
        }
        let before: Vec<(i32, i32)> = t.iter().map(|e| (e.offset, e.prev)).collect();
        populate(&mut t);
        populate(&mut t[3..60001]);
        assert!(t.iter().map(|e| (e.offset, e.prev)).eq(before));
        let empty: Vec<TableEntry> = match_table(0);
        assert!(empty.is_empty());
    }
}
