//! libzstd 1.5.4-1.5.6's double-fast match finder (`dfast`, levels 3-4), ported from
//! `lib/compress/zstd_double_fast.c` (`ZSTD_compressBlock_doubleFast_noDict_generic`,
//! `ZSTD_compressBlock_doubleFast_extDict_generic` and `ZSTD_fillDoubleHashTableForCCtx`): the
//! sequences those releases found, which 1.5.7 no longer finds (it takes the long match at the
//! next position only if it is longer than the short match at this one). libzstd's own
//! entropy stage writes the block from them (`dfast_writer.rs`).
//!
//! And the loop of 1.4.8-1.5.0 ([`DfastRelease::V1_4_8`]; Debian 11's and Ubuntu 22.04's
//! `zstd`), which 1.5.1 rewrote: one position at a time, the step growing with the literals
//! since the last match; a long match at the next position looked for only after a short one
//! here, and taken outright; one repeat offset set aside at a block's start, not two; and in
//! the older window segment a repeat offset tried wherever its index lies above the window's
//! start.
//!
//! Positions are libzstd's indices (the stream's first byte is 2), so the window tests compare
//! the same numbers libzstd compares; the bytes are one buffer whose first byte has index
//! [`Dfast::base`]. libzstd's window is two segments when its streaming input buffer wraps:
//! the older one (`lowLimit..dictLimit`, the "extDict") is read by the second match finder
//! here. Matches run on from its end into the newer segment, which in the stream is what
//! follows, so one buffer serves both.

use super::window::{
    enforce_max_dist, lowest_index, reduce_indices, restored, restored_one, set_aside,
    set_aside_one,
};

/// libzstd's first index (`ZSTD_WINDOW_START_INDEX`).
pub(super) const START: u32 = 2;
/// `kSearchStrength`: positions searched before the step grows.
const STEP_INCR: usize = 1 << 8;
/// `HASH_READ_SIZE`.
const HASH_READ: usize = 8;

/// A repeat of the last offset (libzstd's `REPCODE1_TO_OFFBASE`), as an offset code.
pub(super) const REPCODE1: u32 = 1;
/// libzstd's offset codes: 1-3 repeat codes, a plain offset plus 3.
pub(super) const fn offset_code(offset: u32) -> u32 {
    offset + 3
}

/// One sequence: literals, then a match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Seq {
    pub lit_len: u32,
    /// libzstd's offset code ("offBase").
    pub off_code: u32,
    pub match_len: u32,
}

/// The compression parameters the match finder reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct DfastParams {
    pub window_log: u32,
    /// The long (8-byte) table's log.
    pub hash_log: u32,
    /// The short table's log.
    pub chain_log: u32,
    pub min_match: u32,
    pub release: DfastRelease,
}

/// Whose loop the match finder runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DfastRelease {
    /// libzstd 1.4.8-1.5.0 (checked against both built from their tags).
    V1_4_8,
    /// libzstd 1.5.1-1.5.6.
    V1_5_4,
}

/// The match finder's state across the blocks of one job (or single-threaded frame).
pub(super) struct Dfast {
    p: DfastParams,
    hash_long: Vec<u32>,
    hash_small: Vec<u32>,
    /// Index of the buffer's first byte.
    pub base: u32,
    /// libzstd's `window.lowLimit` and `window.dictLimit`: the older segment (extDict) is
    /// `low_limit..dict_limit`, the newer one starts at `dict_limit`.
    pub low_limit: u32,
    pub dict_limit: u32,
    /// The two repeat offsets the match finder tracks (`rep[0]`, `rep[1]`).
    pub rep: [u32; 2],
}

#[inline(always)]
pub(super) fn read32(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(b[i..i + 4].try_into().unwrap())
}

#[inline(always)]
fn read64(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i..i + 8].try_into().unwrap())
}

/// `ZSTD_hashPtr` for `mls` bytes (4 for anything but 5-8).
#[inline(always)]
pub(super) fn hash(b: &[u8], i: usize, bits: u32, mls: u32) -> usize {
    match mls {
        5 => ((read64(b, i) << 24).wrapping_mul(889523592379) >> (64 - bits)) as usize,
        6 => ((read64(b, i) << 16).wrapping_mul(227718039650203) >> (64 - bits)) as usize,
        7 => ((read64(b, i) << 8).wrapping_mul(58295818150454627) >> (64 - bits)) as usize,
        8 => (read64(b, i).wrapping_mul(0xCF1BBCDCB7A56463) >> (64 - bits)) as usize,
        _ => (read32(b, i).wrapping_mul(2654435761) >> (32 - bits)) as usize,
    }
}

/// The bytes hashed for a minimum match of `min_match` (the fast finders' template: 4-7).
pub(super) fn hash_len(min_match: u32) -> u32 {
    match min_match {
        5 => 5,
        6 => 6,
        7 => 7,
        _ => 4,
    }
}

/// `ZSTD_count`: how many bytes at `a` equal those at `b`, not reading past `limit`.
#[inline(always)]
pub(super) fn count(buf: &[u8], mut a: usize, mut b: usize, limit: usize) -> usize {
    let start = a;
    while a + 8 <= limit {
        let diff = read64(buf, a) ^ read64(buf, b);
        if diff != 0 {
            return a - start + (diff.trailing_zeros() / 8) as usize;
        }
        a += 8;
        b += 8;
    }
    while a < limit && buf[a] == buf[b] {
        a += 1;
        b += 1;
    }
    a - start
}

impl Dfast {
    /// A fresh match finder; `rep` as the job starts it (`[1, 4]` for a frame's first,
    /// `[0, 0]`, "invalid", for the multi-threaded mode's later jobs).
    pub fn new(p: DfastParams, rep: [u32; 2]) -> Dfast {
        Dfast {
            p,
            hash_long: vec![0; 1 << p.hash_log],
            hash_small: vec![0; 1 << p.chain_log],
            base: START,
            low_limit: START,
            dict_limit: START,
            rep,
        }
    }

    /// Moves every index down by `delta` (the window's lowest, `low_limit`, becomes
    /// [`START`]), as libzstd corrects its indices before they overflow
    /// (`ZSTD_reduceIndex`): entries below it are cleared, which they were as good as (they
    /// never match), so the sequences found do not change. The buffer must start at
    /// `low_limit`. Returns by how much.
    pub fn reduce(&mut self) -> u32 {
        reduce_indices(
            self.hash_long.iter_mut().chain(self.hash_small.iter_mut()),
            &mut self.base,
            &mut self.low_limit,
            &mut self.dict_limit,
        )
    }

    /// Loads `buf[..len]` (a job's prefix) as libzstd loads a raw-content dictionary
    /// (`ZSTD_dtlm_fast`): every third position into both tables.
    pub fn load_prefix(&mut self, buf: &[u8], len: usize) {
        if len <= HASH_READ {
            return;
        }
        let (hl, hs, mls) = (self.p.hash_log, self.p.chain_log, self.p.min_match);
        let idx = |p: usize| p as u32 + self.base;
        let iend = len - HASH_READ;
        let mut ip = 0;
        while ip + 2 <= iend {
            self.hash_small[hash(buf, ip, hs, mls)] = idx(ip);
            self.hash_long[hash(buf, ip, hl, 8)] = idx(ip);
            ip += 3;
        }
    }

    /// `ZSTD_getLowestPrefixIndex` (no dictionary).
    fn lowest_prefix_index(&self, curr: u32) -> u32 {
        lowest_index(curr, self.dict_limit, self.p.window_log)
    }

    /// Finds the sequences of the block `buf[start..end]` (at least 7 bytes: libzstd stores
    /// shorter blocks without looking), appending them to `seqs`; returns the block's last
    /// literals' length. `rep` is updated as libzstd updates the block's repeat offsets; a
    /// block written uncompressed must restore them (`libzstd` does not keep them either).
    pub fn block(&mut self, buf: &[u8], start: usize, end: usize, seqs: &mut Vec<Seq>) -> usize {
        let block_start = start as u32 + self.base;
        enforce_max_dist(
            block_start,
            self.p.window_log,
            &mut self.low_limit,
            &mut self.dict_limit,
        );
        if self.low_limit < self.dict_limit {
            self.block_ext_dict(buf, start, end, seqs)
        } else {
            self.block_one_segment(buf, start, end, seqs)
        }
    }

    fn block_one_segment(
        &mut self,
        buf: &[u8],
        start: usize,
        end: usize,
        seqs: &mut Vec<Seq>,
    ) -> usize {
        match self.p.release {
            DfastRelease::V1_4_8 => self.block_no_dict_1_4_8(buf, start, end, seqs),
            DfastRelease::V1_5_4 => self.block_no_dict(buf, start, end, seqs),
        }
    }

    /// 1.4.8's `ZSTD_compressBlock_doubleFast_generic` for `ZSTD_noDict`.
    fn block_no_dict_1_4_8(
        &mut self,
        buf: &[u8],
        start: usize,
        end: usize,
        seqs: &mut Vec<Seq>,
    ) -> usize {
        let base = self.base;
        let idx = |p: usize| p as u32 + base;
        let pos = |i: u32| (i - base) as usize;
        let mls = self.mls();
        let (hbl, hbs) = (self.p.hash_log, self.p.chain_log);
        let iend = end;
        let prefix_lowest_index = self.lowest_prefix_index(idx(end));
        let prefix_lowest = pos(prefix_lowest_index);
        let mut anchor = start;
        let mut ip = start;
        if ip == prefix_lowest {
            ip += 1;
        }
        let current = idx(ip);
        let ([mut offset_1, mut offset_2], saved) =
            set_aside_one(self.rep, current - self.lowest_prefix_index(current));
        let hash_long = &mut self.hash_long;
        let hash_small = &mut self.hash_small;
        // `while (ip < ilimit)`, `ilimit = iend - HASH_READ_SIZE`.
        let ilimit = end.saturating_sub(HASH_READ);
        while ip < ilimit {
            let h2 = hash(buf, ip, hbl, 8);
            let h = hash(buf, ip, hbs, mls);
            let curr = idx(ip);
            let match_index_l = hash_long[h2];
            let match_index_s = hash_small[h];
            hash_long[h2] = curr;
            hash_small[h] = curr;
            let mut m_length;
            let found;
            if offset_1 > 0 && read32(buf, ip + 1 - offset_1 as usize) == read32(buf, ip + 1) {
                m_length = count(buf, ip + 1 + 4, ip + 1 + 4 - offset_1 as usize, iend) + 4;
                ip += 1;
                found = None;
            } else if match_index_l > prefix_lowest_index
                && read64(buf, pos(match_index_l)) == read64(buf, ip)
            {
                let m = pos(match_index_l);
                m_length = count(buf, ip + 8, m + 8, iend) + 8;
                found = Some(m);
            } else if match_index_s > prefix_lowest_index
                && read32(buf, pos(match_index_s)) == read32(buf, ip)
            {
                // _search_next_long: a long match at the next position wins outright.
                let hl3 = hash(buf, ip + 1, hbl, 8);
                let match_index_l3 = hash_long[hl3];
                hash_long[hl3] = curr + 1;
                if match_index_l3 > prefix_lowest_index
                    && read64(buf, pos(match_index_l3)) == read64(buf, ip + 1)
                {
                    let m = pos(match_index_l3);
                    m_length = count(buf, ip + 9, m + 8, iend) + 8;
                    ip += 1;
                    found = Some(m);
                } else {
                    let m = pos(match_index_s);
                    m_length = count(buf, ip + 4, m + 4, iend) + 4;
                    found = Some(m);
                }
            } else {
                ip += ((ip - anchor) >> 8) + 1;
                continue;
            }
            let m = Found {
                at: found,
                ip,
                anchor,
                len: m_length,
            };
            (ip, m_length) = m.store(buf, prefix_lowest, [&mut offset_1, &mut offset_2], seqs);
            Self::after_match(
                buf,
                base,
                hash_long,
                hash_small,
                (hbl, hbs, mls),
                curr,
                &mut ip,
                &mut anchor,
                m_length,
                ilimit,
                iend,
                &mut offset_1,
                &mut offset_2,
                seqs,
            );
        }
        self.rep = restored_one([offset_1, offset_2], saved);
        iend - anchor
    }

    fn mls(&self) -> u32 {
        hash_len(self.p.min_match)
    }

    /// `ZSTD_compressBlock_doubleFast_noDict_generic`: the window is one segment.
    fn block_no_dict(
        &mut self,
        buf: &[u8],
        start: usize,
        end: usize,
        seqs: &mut Vec<Seq>,
    ) -> usize {
        let base = self.base;
        let idx = |p: usize| p as u32 + base;
        let pos = |i: u32| (i - base) as usize;
        let mls = self.mls();
        let (hbl, hbs) = (self.p.hash_log, self.p.chain_log);
        let iend = end;
        let prefix_lowest_index = self.lowest_prefix_index(idx(end));
        let prefix_lowest = pos(prefix_lowest_index);
        // `ilimit = iend - HASH_READ_SIZE`; a block shorter than that has no position to try.
        let ilimit = end.checked_sub(HASH_READ).filter(|&l| l >= start);
        let mut anchor = start;
        let mut ip = start;
        if ip == prefix_lowest {
            ip += 1;
        }
        let current = idx(ip);
        let ([mut offset_1, mut offset_2], saved) =
            set_aside(self.rep, current - self.lowest_prefix_index(current));
        let hash_long = &mut self.hash_long;
        let hash_small = &mut self.hash_small;
        let Some(ilimit) = ilimit else {
            self.rep = restored([offset_1, offset_2], saved);
            return iend - anchor;
        };

        'outer: loop {
            let mut step = 1usize;
            let mut next_step = ip + STEP_INCR;
            let mut ip1 = ip + step;
            if ip1 > ilimit {
                break 'outer;
            }
            let mut hl0 = hash(buf, ip, hbl, 8);
            let mut idxl0 = hash_long[hl0];
            let mut curr;
            let mut m_length;
            // Inner loop: one position per turn until a match: the repeat offset's (None) or
            // one at `ip` from the position found (before catching up).
            let found = loop {
                let hs0 = hash(buf, ip, hbs, mls);
                let idxs0 = hash_small[hs0];
                curr = idx(ip);
                hash_long[hl0] = curr;
                hash_small[hs0] = curr;

                // The repeat offset at the next position.
                if offset_1 > 0 && read32(buf, ip + 1 - offset_1 as usize) == read32(buf, ip + 1) {
                    m_length = count(buf, ip + 1 + 4, ip + 1 + 4 - offset_1 as usize, iend) + 4;
                    ip += 1;
                    break None;
                }

                let hl1 = hash(buf, ip1, hbl, 8);

                if idxl0 > prefix_lowest_index {
                    let m = pos(idxl0);
                    if read64(buf, m) == read64(buf, ip) {
                        m_length = count(buf, ip + 8, m + 8, iend) + 8;
                        // _match_found
                        if step < 4 {
                            hash_long[hl1] = idx(ip1);
                        }
                        break Some(m);
                    }
                }

                let idxl1 = hash_long[hl1];

                if idxs0 > prefix_lowest_index && read32(buf, pos(idxs0)) == read32(buf, ip) {
                    // _search_next_long: a long match at the next position wins outright
                    // (1.5.7 takes it only if longer).
                    let (m, at) = if idxl1 > prefix_lowest_index
                        && read64(buf, pos(idxl1)) == read64(buf, ip1)
                    {
                        let m = pos(idxl1);
                        m_length = count(buf, ip1 + 8, m + 8, iend) + 8;
                        (m, ip1)
                    } else {
                        let m = pos(idxs0);
                        m_length = count(buf, ip + 4, m + 4, iend) + 4;
                        (m, ip)
                    };
                    ip = at;
                    if step < 4 {
                        hash_long[hl1] = idx(ip1);
                    }
                    break Some(m);
                }

                if ip1 >= next_step {
                    step += 1;
                    next_step += STEP_INCR;
                }
                ip = ip1;
                ip1 += step;
                hl0 = hl1;
                idxl0 = idxl1;
                if ip1 > ilimit {
                    break 'outer;
                }
            };
            // _match_found (the hash update for `ip1` is done above, where `hl1` is known).
            let m = Found {
                at: found,
                ip,
                anchor,
                len: m_length,
            };
            (ip, m_length) = m.store(buf, prefix_lowest, [&mut offset_1, &mut offset_2], seqs);
            // _match_stored
            Self::after_match(
                buf,
                base,
                hash_long,
                hash_small,
                (hbl, hbs, mls),
                curr,
                &mut ip,
                &mut anchor,
                m_length,
                ilimit,
                iend,
                &mut offset_1,
                &mut offset_2,
                seqs,
            );
        }
        self.rep = restored([offset_1, offset_2], saved);
        iend - anchor
    }

    /// `ZSTD_compressBlock_doubleFast_extDict_generic`: the window's older segment ends at
    /// `dict_limit`, where the newer one begins. Its candidates come from one table at a
    /// time (the long one, then the short one and a long one at the next position).
    fn block_ext_dict(
        &mut self,
        buf: &[u8],
        start: usize,
        end: usize,
        seqs: &mut Vec<Seq>,
    ) -> usize {
        let base = self.base;
        let idx = |p: usize| p as u32 + base;
        let pos = |i: u32| (i - base) as usize;
        let max_distance = 1u32 << self.p.window_log;
        let end_index = idx(end);
        // ZSTD_getLowestMatchIndex
        let dict_start_index = if end_index - self.low_limit > max_distance {
            end_index - max_distance
        } else {
            self.low_limit
        };
        let prefix_start_index = self.dict_limit.max(dict_start_index);
        if prefix_start_index == dict_start_index {
            // The older segment has left the window.
            return self.block_one_segment(buf, start, end, seqs);
        }
        let mls = self.mls();
        let (hbl, hbs) = (self.p.hash_log, self.p.chain_log);
        let hash_long = &mut self.hash_long;
        let hash_small = &mut self.hash_small;
        let (dict_start, prefix_start) = (pos(dict_start_index), pos(prefix_start_index));
        // Where a match in either segment may reach back to.
        let lowest = |index: u32| {
            if index < prefix_start_index {
                dict_start
            } else {
                prefix_start
            }
        };
        // Whether a repeat offset may be tried at `index`, from position `curr` (1.4.8 reads it
        // wherever the index lies above the window's start; an offset past the stream's start,
        // which it would read before the buffer, is not tried here).
        let v1_4_8 = self.p.release == DfastRelease::V1_4_8;
        let rep_in_window = move |offset: u32, index: u32, curr: u32| {
            if v1_4_8 {
                index > dict_start_index && index <= curr
            } else {
                offset <= curr - dict_start_index
            }
        };
        let iend = end;
        let ilimit = end as isize - 8;
        let mut offset_1 = self.rep[0];
        let mut offset_2 = self.rep[1];
        let mut ip = start;
        let mut anchor = start;
        while (ip as isize) < ilimit {
            let h_small = hash(buf, ip, hbs, mls);
            let match_index = hash_small[h_small];
            let h_long = hash(buf, ip, hbl, 8);
            let match_long_index = hash_long[h_long];
            let curr = idx(ip);
            // May wrap: the tests below refuse such an index.
            let rep_index = (curr + 1).wrapping_sub(offset_1);
            hash_small[h_small] = curr;
            hash_long[h_long] = curr;
            let m_length;
            if (prefix_start_index - 1).wrapping_sub(rep_index) >= 3
                && rep_in_window(offset_1, rep_index, curr + 1)
                && read32(buf, pos(rep_index)) == read32(buf, ip + 1)
            {
                m_length = count(buf, ip + 1 + 4, pos(rep_index) + 4, iend) + 4;
                ip += 1;
                seqs.push(Seq {
                    lit_len: (ip - anchor) as u32,
                    off_code: REPCODE1,
                    match_len: m_length as u32,
                });
            } else {
                // A long match here, else a short one (or a long one at the next position).
                let (mut m, low, mut len, offset) = if match_long_index > dict_start_index
                    && read64(buf, pos(match_long_index)) == read64(buf, ip)
                {
                    let m = pos(match_long_index);
                    let len = count(buf, ip + 8, m + 8, iend) + 8;
                    (m, lowest(match_long_index), len, curr - match_long_index)
                } else if match_index > dict_start_index
                    && read32(buf, pos(match_index)) == read32(buf, ip)
                {
                    let h3 = hash(buf, ip + 1, hbl, 8);
                    let match_index3 = hash_long[h3];
                    hash_long[h3] = curr + 1;
                    if match_index3 > dict_start_index
                        && read64(buf, pos(match_index3)) == read64(buf, ip + 1)
                    {
                        let m = pos(match_index3);
                        let len = count(buf, ip + 9, m + 8, iend) + 8;
                        ip += 1;
                        (m, lowest(match_index3), len, curr + 1 - match_index3)
                    } else {
                        let m = pos(match_index);
                        let len = count(buf, ip + 4, m + 4, iend) + 4;
                        (m, lowest(match_index), len, curr - match_index)
                    }
                } else {
                    ip += ((ip - anchor) >> 8) + 1;
                    continue;
                };
                while ip > anchor && m > low && buf[ip - 1] == buf[m - 1] {
                    ip -= 1;
                    m -= 1;
                    len += 1;
                }
                m_length = len;
                offset_2 = offset_1;
                offset_1 = offset;
                seqs.push(Seq {
                    lit_len: (ip - anchor) as u32,
                    off_code: offset_code(offset),
                    match_len: m_length as u32,
                });
            }

            ip += m_length;
            anchor = ip;
            if ip as isize <= ilimit {
                let insert = curr + 2;
                hash_long[hash(buf, pos(insert), hbl, 8)] = insert;
                hash_long[hash(buf, ip - 2, hbl, 8)] = idx(ip - 2);
                hash_small[hash(buf, pos(insert), hbs, mls)] = insert;
                hash_small[hash(buf, ip - 1, hbs, mls)] = idx(ip - 1);
                while ip as isize <= ilimit {
                    let current2 = idx(ip);
                    let rep_index2 = current2.wrapping_sub(offset_2);
                    if (prefix_start_index - 1).wrapping_sub(rep_index2) >= 3
                        && rep_in_window(offset_2, rep_index2, current2)
                        && read32(buf, pos(rep_index2)) == read32(buf, ip)
                    {
                        let rep_length2 = count(buf, ip + 4, pos(rep_index2) + 4, iend) + 4;
                        std::mem::swap(&mut offset_1, &mut offset_2);
                        seqs.push(Seq {
                            lit_len: 0,
                            off_code: REPCODE1,
                            match_len: rep_length2 as u32,
                        });
                        hash_small[hash(buf, ip, hbs, mls)] = current2;
                        hash_long[hash(buf, ip, hbl, 8)] = current2;
                        ip += rep_length2;
                        anchor = ip;
                        continue;
                    }
                    break;
                }
            }
        }
        self.rep = [offset_1, offset_2];
        iend - anchor
    }
}

/// A match about to be stored: found at `at` (None: at the repeat offset) for `ip`, `len`
/// bytes, after the literals since `anchor`.
struct Found {
    at: Option<usize>,
    ip: usize,
    anchor: usize,
    len: usize,
}

impl Found {
    /// `_match_found`: a match from the tables caught up backwards (it may begin before where
    /// it was found, down to `lowest`) and its offset made the latest; then the sequence
    /// stored. Returns where the match begins and its length.
    #[inline(always)]
    fn store(
        self,
        buf: &[u8],
        lowest: usize,
        [offset_1, offset_2]: [&mut u32; 2],
        seqs: &mut Vec<Seq>,
    ) -> (usize, usize) {
        let Found {
            at,
            mut ip,
            anchor,
            mut len,
        } = self;
        let offset = at.map(|mut m| {
            let offset = (ip - m) as u32;
            while ip > anchor && m > lowest && buf[ip - 1] == buf[m - 1] {
                ip -= 1;
                m -= 1;
                len += 1;
            }
            offset
        });
        if let Some(offset) = offset {
            *offset_2 = *offset_1;
            *offset_1 = offset;
        }
        seqs.push(Seq {
            lit_len: (ip - anchor) as u32,
            off_code: offset.map_or(REPCODE1, offset_code),
            match_len: len as u32,
        });
        (ip, len)
    }
}

impl Dfast {
    /// `_match_stored`: past the match, the complementary insertions, then as many
    /// immediate repeats of the previous offset as follow.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn after_match(
        buf: &[u8],
        base: u32,
        hash_long: &mut [u32],
        hash_small: &mut [u32],
        (hbl, hbs, mls): (u32, u32, u32),
        curr: u32,
        ip: &mut usize,
        anchor: &mut usize,
        m_length: usize,
        ilimit: usize,
        iend: usize,
        offset_1: &mut u32,
        offset_2: &mut u32,
        seqs: &mut Vec<Seq>,
    ) {
        let idx = |p: usize| p as u32 + base;
        let pos = |i: u32| (i - base) as usize;
        *ip += m_length;
        *anchor = *ip;
        if *ip > ilimit {
            return;
        }
        let insert = curr + 2;
        hash_long[hash(buf, pos(insert), hbl, 8)] = insert;
        hash_long[hash(buf, *ip - 2, hbl, 8)] = idx(*ip - 2);
        hash_small[hash(buf, pos(insert), hbs, mls)] = insert;
        hash_small[hash(buf, *ip - 1, hbs, mls)] = idx(*ip - 1);
        while *ip <= ilimit
            && *offset_2 > 0
            && read32(buf, *ip) == read32(buf, *ip - *offset_2 as usize)
        {
            let r_length = count(buf, *ip + 4, *ip + 4 - *offset_2 as usize, iend) + 4;
            std::mem::swap(offset_1, offset_2);
            hash_small[hash(buf, *ip, hbs, mls)] = idx(*ip);
            hash_long[hash(buf, *ip, hbl, 8)] = idx(*ip);
            seqs.push(Seq {
                lit_len: 0,
                off_code: REPCODE1,
                match_len: r_length as u32,
            });
            *ip += r_length;
            *anchor = *ip;
        }
    }
}
