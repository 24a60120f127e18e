//! libzstd 1.5.4's lazy match finders with its row-based hash table (`greedy`, `lazy`,
//! `lazy2`: levels 5-12, the row table being libzstd's choice there on x86-64), ported from
//! `lib/compress/zstd_lazy.c` of 1.5.4 (`ZSTD_RowFindBestMatch`, `ZSTD_row_update_internal`,
//! `ZSTD_compressBlock_lazy_generic`, `ZSTD_compressBlock_lazy_extDict_generic`). 1.5.5 salted
//! the row hash, changed its tags and skips incompressible data faster, so 1.5.4's frames at
//! these levels differ from 1.5.5's and 1.5.7's; libzstd 1.5.7's entropy stage writes the
//! blocks from these sequences (`dfast_writer.rs`, through its sequence producer).
//!
//! A row is a circular buffer of 16, 32 or 64 positions sharing a hash, each with a one-byte
//! tag (more bits of the hash); its head, the last slot written, sits in its tag row's first
//! byte. The hash of a position is computed eight positions ahead and kept in a small cache
//! (`hashCache`), whose stale entries near a block's end are used as libzstd uses them.
//!
//! The window is one segment ("noDict") or two ("extDict", a single-threaded stream beyond
//! its first window); positions are libzstd's indices in one buffer, as in `dfast.rs`, where
//! the two segments follow each other and a two-segment count is a plain count.

use super::dfast::{count, hash, read32, Seq, REPCODE1, START};
use super::window::{before_block, lowest_index, restored, set_aside};

/// `ZSTD_ROW_HASH_TAG_BITS`.
const TAG_BITS: u32 = 8;
/// `ZSTD_ROW_HASH_TAG_OFFSET`: where a tag row's tags begin (its head is its first byte).
const TAG_OFFSET: usize = 16;
/// `ZSTD_ROW_HASH_CACHE_SIZE`.
const CACHE: usize = 8;
/// `kSearchStrength`.
const SEARCH_STRENGTH: u32 = 8;

/// The compression parameters the match finder reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct LazyParams {
    pub window_log: u32,
    pub hash_log: u32,
    pub search_log: u32,
    pub min_match: u32,
    /// 0 `greedy`, 1 `lazy`, 2 `lazy2`: positions looked ahead for a better match.
    pub depth: u32,
}

impl LazyParams {
    /// `BOUNDED(4, searchLog, 6)`: a row's log.
    fn row_log(&self) -> u32 {
        self.search_log.clamp(4, 6)
    }
}

/// The match finder's state across the blocks of one job (or frame).
pub(super) struct Lazy {
    p: LazyParams,
    /// Rows of positions (`hashTable`).
    hash: Vec<u32>,
    /// Two bytes an entry (`tagTable`): each row's head, then its tags.
    tags: Vec<u8>,
    hash_cache: [u32; CACHE],
    /// Index of the buffer's first byte.
    pub base: u32,
    pub low_limit: u32,
    pub dict_limit: u32,
    next_to_update: u32,
    /// The two repeat offsets the match finder tracks.
    pub rep: [u32; 2],
    /// A search's candidates (kept to save an allocation a search).
    candidates: Vec<u32>,
}

/// The match found by a search: its length and offset code.
struct Found {
    len: usize,
    off: u32,
}

impl Lazy {
    /// A fresh match finder; `rep` as the job starts it (`[1, 4]`, or `[0, 0]` for the
    /// multi-threaded mode's later jobs).
    pub fn new(p: LazyParams, rep: [u32; 2]) -> Lazy {
        Lazy {
            p,
            hash: vec![0; 1 << p.hash_log],
            tags: vec![0; 2 << p.hash_log],
            hash_cache: [0; CACHE],
            base: START,
            low_limit: START,
            dict_limit: START,
            next_to_update: START,
            rep,
            candidates: Vec::with_capacity(64),
        }
    }

    /// The hash a row and a tag come from (`ZSTD_hashPtr` with the tag's bits).
    fn row_hash(&self, buf: &[u8], pos: usize) -> u32 {
        let bits = self.p.hash_log - self.p.row_log() + TAG_BITS;
        hash(buf, pos, bits, self.p.min_match.min(6)) as u32
    }

    fn pos(&self, idx: u32) -> usize {
        (idx - self.base) as usize
    }

    /// Loads `buf[..len]` (a job's prefix) as libzstd loads a raw-content dictionary:
    /// every position but the last 8, without the hash cache.
    pub fn load_prefix(&mut self, buf: &[u8], len: usize) {
        self.next_to_update = self.base;
        if len <= 8 {
            return;
        }
        self.row_update(buf, len - 8, false);
        self.next_to_update = self.base + len as u32;
    }

    /// libzstd's input buffer was refilled from its start: insertions resume at the new
    /// segment.
    pub fn new_segment(&mut self) {
        self.next_to_update = self.dict_limit;
    }

    /// Moves every index down so that `low_limit` becomes [`START`] (see `Dfast::reduce`):
    /// rows are found by hash, not by index, and entries below the window end a row's
    /// search as zeros do. Returns by how much.
    pub fn reduce(&mut self) -> u32 {
        debug_assert_eq!(self.base, self.low_limit);
        let delta = self.low_limit - START;
        for e in self.hash.iter_mut() {
            *e = if *e < self.low_limit { 0 } else { *e - delta };
        }
        self.base -= delta;
        self.low_limit -= delta;
        self.dict_limit -= delta;
        self.next_to_update = self.next_to_update.saturating_sub(delta).max(START);
        delta
    }

    /// `ZSTD_row_fillHashCache`: the hashes of up to 8 positions from `idx`, not beyond
    /// `limit` (a position).
    fn fill_hash_cache(&mut self, buf: &[u8], idx: u32, limit: isize) {
        let at = self.pos(idx) as isize;
        let room = if at > limit {
            0
        } else {
            (limit - at + 1) as u32
        };
        for i in idx..idx + room.min(CACHE as u32) {
            let h = self.row_hash(buf, self.pos(i));
            self.prefetch_row(h);
            self.hash_cache[i as usize & (CACHE - 1)] = h;
        }
    }

    /// `ZSTD_row_nextCachedHash`: the cached hash of `idx`, the cache taking that of
    /// `idx + 8` in its place.
    fn next_cached_hash(&mut self, buf: &[u8], idx: u32) -> u32 {
        let new = self.row_hash(buf, self.pos(idx) + CACHE);
        self.prefetch_row(new);
        std::mem::replace(&mut self.hash_cache[idx as usize & (CACHE - 1)], new)
    }

    /// `ZSTD_row_prefetch`: the row of hash `h` and its tags on their way to the cache, 8
    /// positions before they are read (speed only).
    #[inline(always)]
    fn prefetch_row(&self, h: u32) {
        let row_log = self.p.row_log();
        let row = ((h >> TAG_BITS) << row_log) as usize;
        prefetch(self.hash.as_ptr().wrapping_add(row) as *const u8);
        if row_log >= 5 {
            prefetch(self.hash.as_ptr().wrapping_add(row + 16) as *const u8);
        }
        prefetch(self.tags.as_ptr().wrapping_add(2 * row));
        if row_log == 6 {
            prefetch(self.tags.as_ptr().wrapping_add(2 * row + 64));
        }
    }

    /// `ZSTD_row_nextIndex`: the row's next slot (its head moves back one).
    fn next_slot(&mut self, row: usize) -> usize {
        let mask = (1u32 << self.p.row_log()) - 1;
        let next = (self.tags[2 * row] as u32).wrapping_sub(1) & mask;
        self.tags[2 * row] = next as u8;
        next as usize
    }

    /// `ZSTD_row_update_internalImpl`.
    fn insert_range(&mut self, buf: &[u8], from: u32, to: u32, use_cache: bool) {
        for idx in from..to {
            let h = if use_cache {
                self.next_cached_hash(buf, idx)
            } else {
                self.row_hash(buf, self.pos(idx))
            };
            let row = ((h >> TAG_BITS) << self.p.row_log()) as usize;
            let slot = self.next_slot(row);
            self.tags[2 * row + TAG_OFFSET + slot] = h as u8;
            self.hash[row + slot] = idx;
        }
    }

    /// `ZSTD_row_update_internal`: every position up to `ip` into the rows, but for the
    /// middle of a long match (the first 96 and last 32 positions of a gap over 384).
    fn row_update(&mut self, buf: &[u8], ip: usize, use_cache: bool) {
        let mut idx = self.next_to_update;
        let target = ip as u32 + self.base;
        if use_cache && target.wrapping_sub(idx) > 384 {
            self.insert_range(buf, idx, idx + 96, true);
            idx = target.wrapping_sub(32);
            self.fill_hash_cache(buf, idx, ip as isize + 1);
        }
        self.insert_range(buf, idx, target, use_cache);
        self.next_to_update = target;
    }

    /// `ZSTD_RowFindBestMatch`: the longest match at `ip` among the row's positions whose tag
    /// is the position's, at least 4 bytes (else a length of 3).
    fn find_best_match(&mut self, buf: &[u8], ip: usize, iend: usize, ext_dict: bool) -> Found {
        let curr = ip as u32 + self.base;
        let max_distance = 1u32 << self.p.window_log;
        let low = if curr - self.low_limit > max_distance {
            curr - max_distance
        } else {
            self.low_limit
        };
        let row_log = self.p.row_log();
        let entries = 1u32 << row_log;
        let mask = entries - 1;
        let mut attempts = 1u32 << self.p.search_log.min(row_log);
        let mut best = Found { len: 3, off: 0 };

        self.row_update(buf, ip, true);
        let h = self.next_cached_hash(buf, curr);
        let row = ((h >> TAG_BITS) << row_log) as usize;
        let tag = h as u8;
        let head = self.tags[2 * row] as u32 & mask;
        // ZSTD_row_getMatchMask: a bit for each slot holding the tag, from the head on.
        let tags = &self.tags[2 * row + TAG_OFFSET..2 * row + TAG_OFFSET + entries as usize];
        let mut bits = tag_mask(tags, tag);
        if head > 0 {
            bits = (bits >> head | bits << (entries - head)) & (u64::MAX >> (64 - entries));
        }
        let mut candidates = std::mem::take(&mut self.candidates);
        candidates.clear();
        while bits > 0 && attempts > 0 {
            let slot = (head + bits.trailing_zeros()) & mask;
            let index = self.hash[row + slot as usize];
            if index < low {
                break;
            }
            prefetch(buf.as_ptr().wrapping_add(self.pos(index)));
            candidates.push(index);
            attempts -= 1;
            bits &= bits - 1;
        }
        // The position itself goes in now, saving the next update a turn.
        let slot = self.next_slot(row);
        self.tags[2 * row + TAG_OFFSET + slot] = tag;
        self.hash[row + slot] = self.next_to_update;
        self.next_to_update += 1;

        for &index in &candidates {
            let m = self.pos(index);
            let len = if !ext_dict || index >= self.dict_limit {
                // 4 bytes ending where the best so far ends: potentially better.
                let at = best.len - 3;
                if read32(buf, m + at) == read32(buf, ip + at) {
                    count(buf, ip, m, iend)
                } else {
                    0
                }
            } else if read32(buf, m) == read32(buf, ip) {
                count(buf, ip + 4, m + 4, iend) + 4
            } else {
                0
            };
            if len > best.len {
                best = Found {
                    len,
                    off: curr - index + 3,
                };
                if ip + len == iend {
                    break;
                }
            }
        }
        self.candidates = candidates;
        best
    }

    /// Finds the sequences of the block `buf[start..end]` (at least 7 bytes), appending them
    /// to `seqs`; returns the block's last literals' length; `rep` is updated.
    /// `ZSTD_compressBlock_lazy_generic` (one segment) and
    /// `ZSTD_compressBlock_lazy_extDict_generic` (two): they differ in where a repeat offset
    /// may point and how far a match is extended back.
    pub fn block(&mut self, buf: &[u8], start: usize, end: usize, seqs: &mut Vec<Seq>) -> usize {
        let curr = start as u32 + self.base;
        before_block(
            curr,
            self.p.window_log,
            &mut self.low_limit,
            &mut self.dict_limit,
            &mut self.next_to_update,
        );
        let ext_dict = self.low_limit < self.dict_limit;
        let iend = end;
        // The last position searched (a row's hashes are computed 8 ahead).
        let ilimit = end as isize - 8 - CACHE as isize;
        let depth = self.p.depth;
        let prefix_start = self.pos(self.dict_limit);
        let mut ip = start;
        let mut anchor = start;
        if ip == prefix_start {
            ip += 1;
        }
        // One segment: offsets beyond the window are set aside for the block.
        let ([mut offset_1, mut offset_2], saved) = if ext_dict {
            (self.rep, [0; 2])
        } else {
            let curr = ip as u32 + self.base;
            let low = lowest_index(curr, self.dict_limit, self.p.window_log);
            set_aside(self.rep, curr - low)
        };
        let next = self.next_to_update;
        self.fill_hash_cache(buf, next, ilimit);
        let gain =
            |len: usize, off: u32, extra: i32| (len * 4) as i32 - highbit(off) as i32 + extra;

        while (ip as isize) < ilimit {
            let mut m = Candidate {
                len: 0,
                off: REPCODE1,
                begin: ip + 1,
            };
            let rep_first = self.rep_len(buf, ip + 1, offset_1, iend, ext_dict);
            if let Some(len) = rep_first {
                m.len = len;
            }
            if !(rep_first.is_some() && depth == 0) {
                let f = self.find_best_match(buf, ip, iend, ext_dict);
                if f.len > m.len {
                    m = Candidate {
                        len: f.len,
                        off: f.off,
                        begin: ip,
                    };
                }
                if m.len < 4 {
                    ip += ((ip - anchor) >> SEARCH_STRENGTH) + 1;
                    continue;
                }
                // A better match one position on, or (`lazy2`) two?
                while depth >= 1 && (ip as isize) < ilimit {
                    ip += 1;
                    if self.look_again(buf, ip, iend, ext_dict, &mut m, offset_1, 1, &gain) {
                        continue;
                    }
                    if depth == 2 && (ip as isize) < ilimit {
                        ip += 1;
                        if self.look_again(buf, ip, iend, ext_dict, &mut m, offset_1, 2, &gain) {
                            continue;
                        }
                    }
                    break;
                }
                // Catch up: the match may begin earlier, within its segment.
                if m.off > 3 {
                    let offset = m.off - 3;
                    let match_index = (m.begin as u32 + self.base) - offset;
                    let m_start = if ext_dict && match_index < self.dict_limit {
                        self.pos(self.low_limit)
                    } else {
                        prefix_start
                    };
                    let mut at = self.pos(match_index);
                    while m.begin > anchor && at > m_start && buf[m.begin - 1] == buf[at - 1] {
                        m.begin -= 1;
                        at -= 1;
                        m.len += 1;
                    }
                    offset_2 = offset_1;
                    offset_1 = offset;
                }
            }
            // _storeSequence
            seqs.push(Seq {
                lit_len: (m.begin - anchor) as u32,
                off_code: m.off,
                match_len: m.len as u32,
            });
            ip = m.begin + m.len;
            anchor = ip;
            // Immediate repeats of the second offset.
            while (ip as isize) <= ilimit {
                let Some(len) = self.rep_len(buf, ip, offset_2, iend, ext_dict) else {
                    break;
                };
                std::mem::swap(&mut offset_1, &mut offset_2);
                seqs.push(Seq {
                    lit_len: 0,
                    off_code: REPCODE1,
                    match_len: len as u32,
                });
                ip += len;
                anchor = ip;
            }
        }
        self.rep = restored([offset_1, offset_2], saved);
        iend - anchor
    }

    /// The length of a repeat of `offset` at `at`, if its first 4 bytes match: with one
    /// segment any offset but 0; with two, one within the window that does not straddle them.
    fn rep_len(
        &self,
        buf: &[u8],
        at: usize,
        offset: u32,
        iend: usize,
        ext_dict: bool,
    ) -> Option<usize> {
        let usable = if ext_dict {
            let curr = at as u32 + self.base;
            let rep_index = curr.wrapping_sub(offset);
            let window_low = lowest_index(curr, self.low_limit, self.p.window_log);
            (self.dict_limit - 1).wrapping_sub(rep_index) >= 3 && offset <= curr - window_low
        } else {
            offset > 0
        };
        let m = at.wrapping_sub(offset as usize);
        (usable && read32(buf, at) == read32(buf, m)).then(|| count(buf, at + 4, m + 4, iend) + 4)
    }

    /// The lazy look-ahead at `ip` (`depth` 1 or 2 positions past the match `m`): a repeat of
    /// the last offset, then a search; true if the search found a better match, from which
    /// to look on.
    #[allow(clippy::too_many_arguments)]
    fn look_again(
        &mut self,
        buf: &[u8],
        ip: usize,
        iend: usize,
        ext_dict: bool,
        m: &mut Candidate,
        offset_1: u32,
        depth: u32,
        gain: &dyn Fn(usize, u32, i32) -> i32,
    ) -> bool {
        let (rep_weight, bonus) = if depth == 1 { (3, 4) } else { (4, 7) };
        if m.off != 0 {
            if let Some(len) = self.rep_len(buf, ip, offset_1, iend, ext_dict) {
                let gain2 = (len * rep_weight) as i32;
                let gain1 = (m.len * rep_weight) as i32 - highbit(m.off) as i32 + 1;
                if gain2 > gain1 {
                    *m = Candidate {
                        len,
                        off: REPCODE1,
                        begin: ip,
                    };
                }
            }
        }
        let f = self.find_best_match(buf, ip, iend, ext_dict);
        if f.len >= 4 && gain(f.len, f.off, 0) > gain(m.len, m.off, bonus) {
            *m = Candidate {
                len: f.len,
                off: f.off,
                begin: ip,
            };
            return true;
        }
        false
    }
}

/// The match a position settles on so far: its length, offset code and start.
struct Candidate {
    len: usize,
    off: u32,
    begin: usize,
}

/// Asks for the cache line at `p` (a hint: never read, never faults).
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch does not access memory, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// A bit for each of `tags` (16, 32 or 64) equal to `tag`, the first the lowest: libzstd's
/// SSE2 comparison (`ZSTD_row_getSSEMask`), 16 tags at a time.
#[inline(always)]
fn tag_mask(tags: &[u8], tag: u8) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
        };
        let mut bits = 0u64;
        for (i, chunk) in tags.chunks_exact(16).enumerate() {
            // SAFETY: SSE2 is part of x86-64; the load reads the 16 bytes of `chunk`.
            let m = unsafe {
                let v = _mm_loadu_si128(chunk.as_ptr() as *const _);
                _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(tag as i8)))
            };
            bits |= u64::from(m as u16) << (16 * i);
        }
        bits
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        tags.iter()
            .enumerate()
            .fold(0u64, |m, (i, &t)| m | (u64::from(t == tag) << i))
    }
}

#[inline(always)]
fn highbit(v: u32) -> u32 {
    31 - v.leading_zeros()
}

/// The match finder's parameters at `level` for a frame of `content_size` (None: unknown),
/// as libzstd derives them; None where the level's strategy there is not a lazy one.
pub(super) fn lazy_params(level: i32, content_size: Option<u64>) -> Option<LazyParams> {
    use zstd::zstd_safe::zstd_sys as sys;
    // SAFETY: a pure function of its arguments.
    let c = unsafe { sys::ZSTD_getCParams(level, content_size.unwrap_or(u64::MAX) as _, 0) };
    let depth = match c.strategy as u32 {
        3 => 0,
        4 => 1,
        5 => 2,
        _ => return None,
    };
    // libzstd uses the row table where the window is over 16 KiB (x86-64, SSE2).
    (c.windowLog > 14).then_some(LazyParams {
        window_log: c.windowLog,
        hash_log: c.hashLog,
        search_log: c.searchLog,
        min_match: c.minMatch,
        depth,
    })
}
