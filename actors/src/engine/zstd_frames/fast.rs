//! libzstd 1.4.8-1.5.0's fast match finder (`fast`, levels 1-2: `zstd -1`, `zstd --fast`'s
//! neighbours), ported from their `lib/compress/zstd_fast.c`
//! (`ZSTD_compressBlock_fast_generic`, `ZSTD_compressBlock_fast_extDict_generic`,
//! `ZSTD_fillHashTable`): 1.5.1 rewrote its loop, and later releases' frames at these levels
//! are 1.5.7's own. Like the double-fast port (`dfast.rs`), it hands its sequences to
//! libzstd's entropy stage (`dfast_writer.rs`), with 1.4.8's Huffman sort.
//!
//! One table of `hashLog` bits. One segment: two positions at a time (`ip0`, `ip1`), the
//! repeat offset tried two positions on (and one back), the step growing with the literals
//! since the last match. The older segment (a single-threaded stream past its first window):
//! one position at a time, as 1.4.8 does there.

use super::dfast::{count, hash, hash_len, read32, Seq, REPCODE1, START};
use super::window::{enforce_max_dist, lowest_index, reduce_indices, restored_one, set_aside_one};

/// `kSearchStrength`.
const SEARCH_STRENGTH: u32 = 8;
/// `HASH_READ_SIZE`.
const HASH_READ: usize = 8;

/// The compression parameters the match finder reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FastParams {
    pub window_log: u32,
    pub hash_log: u32,
    pub min_match: u32,
    pub target_length: u32,
}

/// The match finder's state across the blocks of one job (or single-threaded frame).
pub(super) struct Fast {
    p: FastParams,
    table: Vec<u32>,
    /// Index of the buffer's first byte.
    pub base: u32,
    /// libzstd's `window.lowLimit` and `window.dictLimit` (see `dfast.rs`).
    pub low_limit: u32,
    pub dict_limit: u32,
    /// The two repeat offsets the match finder tracks.
    pub rep: [u32; 2],
}

impl Fast {
    /// A fresh match finder; `rep` as the job starts it (`[1, 4]` for a frame's first, `[0,
    /// 0]` for the multi-threaded mode's later jobs).
    pub fn new(p: FastParams, rep: [u32; 2]) -> Fast {
        Fast {
            p,
            table: vec![0; 1 << p.hash_log],
            base: START,
            low_limit: START,
            dict_limit: START,
            rep,
        }
    }

    fn mls(&self) -> u32 {
        hash_len(self.p.min_match)
    }

    /// Moves every index down (see `Dfast::reduce`).
    pub fn reduce(&mut self) -> u32 {
        reduce_indices(
            self.table.iter_mut(),
            &mut self.base,
            &mut self.low_limit,
            &mut self.dict_limit,
        )
    }

    /// Loads `buf[..len]` (a job's prefix) as libzstd loads a raw-content dictionary
    /// (`ZSTD_dtlm_fast`): every third position.
    pub fn load_prefix(&mut self, buf: &[u8], len: usize) {
        if len <= HASH_READ {
            return;
        }
        let (bits, mls) = (self.p.hash_log, self.mls());
        let iend = len - HASH_READ;
        let mut ip = 0;
        while ip + 2 <= iend {
            self.table[hash(buf, ip, bits, mls)] = ip as u32 + self.base;
            ip += 3;
        }
    }

    /// Finds the sequences of the block `buf[start..end]`, appending them to `seqs`; returns
    /// the block's last literals' length (see `Dfast::block`).
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
            self.block_no_dict(buf, start, end, seqs)
        }
    }

    /// `ZSTD_compressBlock_fast_generic`: the window is one segment.
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
        let (hlog, mls) = (self.p.hash_log, self.mls());
        let step_size = self.p.target_length as usize + usize::from(self.p.target_length == 0) + 1;
        let iend = end;
        let prefix_start_index = lowest_index(idx(end), self.dict_limit, self.p.window_log);
        let prefix_start = pos(prefix_start_index);
        let ilimit = end.saturating_sub(HASH_READ);
        let mut anchor = start;
        let mut ip0 = start;
        if ip0 == prefix_start {
            ip0 += 1;
        }
        let mut ip1 = ip0 + 1;
        let current = idx(ip0);
        let max_rep = current - lowest_index(current, self.dict_limit, self.p.window_log);
        let ([mut offset_1, mut offset_2], saved) = set_aside_one(self.rep, max_rep);
        let table = &mut self.table;
        while ip1 < ilimit {
            let ip2 = ip0 + 2;
            let h0 = hash(buf, ip0, hlog, mls);
            let h1 = hash(buf, ip1, hlog, mls);
            let current0 = idx(ip0);
            let match_index0 = table[h0];
            let match_index1 = table[h1];
            table[h0] = current0;
            table[h1] = idx(ip1);

            // `(ip, match, length so far, offset code)`.
            let (mut ip, m, mut m_length, off_code) =
                if offset_1 > 0 && read32(buf, ip2 - offset_1 as usize) == read32(buf, ip2) {
                    let rep_match = ip2 - offset_1 as usize;
                    // (At the stream's first byte libzstd would read the one before the window.)
                    let back = usize::from(rep_match > 0 && buf[ip2 - 1] == buf[rep_match - 1]);
                    (ip2 - back, rep_match - back, 4 + back, REPCODE1)
                } else {
                    let found = if match_index0 > prefix_start_index
                        && read32(buf, pos(match_index0)) == read32(buf, ip0)
                    {
                        Some((ip0, pos(match_index0)))
                    } else if match_index1 > prefix_start_index
                        && read32(buf, pos(match_index1)) == read32(buf, ip1)
                    {
                        Some((ip1, pos(match_index1)))
                    } else {
                        None
                    };
                    let Some((mut ip, mut m)) = found else {
                        let step = ((ip0 - anchor) >> (SEARCH_STRENGTH - 1)) + step_size;
                        ip0 += step;
                        ip1 += step;
                        continue;
                    };
                    // _offset
                    offset_2 = offset_1;
                    offset_1 = (ip - m) as u32;
                    let mut len = 4;
                    while ip > anchor && m > prefix_start && buf[ip - 1] == buf[m - 1] {
                        ip -= 1;
                        m -= 1;
                        len += 1;
                    }
                    (ip, m, len, offset_1 + 3)
                };
            // _match
            m_length += count(buf, ip + m_length, m + m_length, iend);
            seqs.push(Seq {
                lit_len: (ip - anchor) as u32,
                off_code,
                match_len: m_length as u32,
            });
            ip += m_length;
            anchor = ip;
            if ip <= ilimit {
                let insert = current0 + 2;
                table[hash(buf, pos(insert), hlog, mls)] = insert;
                table[hash(buf, ip - 2, hlog, mls)] = idx(ip - 2);
                if offset_2 > 0 {
                    while ip <= ilimit && read32(buf, ip) == read32(buf, ip - offset_2 as usize) {
                        let r_length = count(buf, ip + 4, ip + 4 - offset_2 as usize, iend) + 4;
                        std::mem::swap(&mut offset_1, &mut offset_2);
                        table[hash(buf, ip, hlog, mls)] = idx(ip);
                        ip += r_length;
                        seqs.push(Seq {
                            lit_len: 0,
                            off_code: REPCODE1,
                            match_len: r_length as u32,
                        });
                        anchor = ip;
                    }
                }
            }
            ip0 = ip;
            ip1 = ip0 + 1;
        }
        self.rep = restored_one([offset_1, offset_2], saved);
        iend - anchor
    }

    /// `ZSTD_compressBlock_fast_extDict_generic`: the window's older segment ends at
    /// `dict_limit`, where the newer one begins (one buffer holds both, see `dfast.rs`).
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
        let (hlog, mls) = (self.p.hash_log, self.mls());
        let step_size = self.p.target_length as usize + usize::from(self.p.target_length == 0);
        let end_index = idx(end);
        let dict_start_index = lowest_index(end_index, self.low_limit, self.p.window_log);
        let prefix_start_index = self.dict_limit.max(dict_start_index);
        if prefix_start_index == dict_start_index {
            // The older segment has left the window.
            return self.block_no_dict(buf, start, end, seqs);
        }
        let (dict_start, prefix_start) = (pos(dict_start_index), pos(prefix_start_index));
        let lowest = |index: u32| {
            if index < prefix_start_index {
                dict_start
            } else {
                prefix_start
            }
        };
        // A repeat offset is tried wherever its index lies above the window's start (and, here,
        // not past the position: an offset beyond the stream's start is not read).
        let rep_ok = |index: u32, curr: u32| {
            (prefix_start_index - 1).wrapping_sub(index) >= 3
                && index > dict_start_index
                && index <= curr
        };
        let table = &mut self.table;
        let iend = end;
        let ilimit = end as isize - 8;
        let [mut offset_1, mut offset_2] = self.rep;
        let mut ip = start;
        let mut anchor = start;
        while (ip as isize) < ilimit {
            let h = hash(buf, ip, hlog, mls);
            let match_index = table[h];
            let curr = idx(ip);
            let rep_index = (curr + 1).wrapping_sub(offset_1);
            table[h] = curr;
            if rep_ok(rep_index, curr + 1) && read32(buf, pos(rep_index)) == read32(buf, ip + 1) {
                let r_length = count(buf, ip + 1 + 4, pos(rep_index) + 4, iend) + 4;
                ip += 1;
                seqs.push(Seq {
                    lit_len: (ip - anchor) as u32,
                    off_code: REPCODE1,
                    match_len: r_length as u32,
                });
                ip += r_length;
                anchor = ip;
            } else {
                if match_index < dict_start_index
                    || read32(buf, pos(match_index)) != read32(buf, ip)
                {
                    ip += ((ip - anchor) >> SEARCH_STRENGTH) + step_size;
                    continue;
                }
                let mut m = pos(match_index);
                let low = lowest(match_index);
                let offset = curr - match_index;
                let mut len = count(buf, ip + 4, m + 4, iend) + 4;
                while ip > anchor && m > low && buf[ip - 1] == buf[m - 1] {
                    ip -= 1;
                    m -= 1;
                    len += 1;
                }
                offset_2 = offset_1;
                offset_1 = offset;
                seqs.push(Seq {
                    lit_len: (ip - anchor) as u32,
                    off_code: offset + 3,
                    match_len: len as u32,
                });
                ip += len;
                anchor = ip;
            }
            if ip as isize <= ilimit {
                table[hash(buf, pos(curr + 2), hlog, mls)] = curr + 2;
                table[hash(buf, ip - 2, hlog, mls)] = idx(ip - 2);
                while ip as isize <= ilimit {
                    let current2 = idx(ip);
                    let rep_index2 = current2.wrapping_sub(offset_2);
                    if !(rep_ok(rep_index2, current2)
                        && read32(buf, pos(rep_index2)) == read32(buf, ip))
                    {
                        break;
                    }
                    let rep_length2 = count(buf, ip + 4, pos(rep_index2) + 4, iend) + 4;
                    std::mem::swap(&mut offset_1, &mut offset_2);
                    seqs.push(Seq {
                        lit_len: 0,
                        off_code: REPCODE1,
                        match_len: rep_length2 as u32,
                    });
                    table[hash(buf, ip, hlog, mls)] = current2;
                    ip += rep_length2;
                    anchor = ip;
                }
            }
        }
        self.rep = [offset_1, offset_2];
        iend - anchor
    }
}
