//! libzstd 1.5.4-1.5.5's optimal parser (`btopt`, `btultra`, `btultra2`: levels 16-19, and
//! 20-22 with `--ultra`), ported from `lib/compress/zstd_opt.c` of 1.5.5 (1.5.4's differs
//! only in clearing an unused field): the binary-tree match finder
//! (`ZSTD_insertBt1`, `ZSTD_insertBtAndGetAllMatches`), the price model
//! (`ZSTD_rescaleFreqs`, `ZSTD_getMatchPrice`, ...), the parser
//! (`ZSTD_compressBlock_opt_generic`) and `btultra2`'s first-block pass that seeds its
//! statistics (`ZSTD_initStats_ultra`). 1.5.6 rewrote parts of the parser, so frames of these
//! releases differ from 1.5.7's at these levels; libzstd 1.5.7's entropy stage writes the
//! blocks from these sequences (`dfast_writer.rs`, through its sequence producer).
//!
//! The window is one segment (libzstd's "noDict" mode: the multi-threaded mode's jobs, the
//! CLI's default) or two (its "extDict" mode: a single-threaded stream beyond its first
//! window, once libzstd's input buffer is refilled from its start). No dictionary, no
//! long-distance matching.
//!
//! Positions are libzstd's indices, as in `dfast.rs`: the bytes are one buffer whose first
//! byte has index [`Opt::base`]. With two segments the older one's end is followed in the
//! stream by the newer's start, so in one buffer `ZSTD_count_2segments` is a plain count and
//! the two modes differ only in which repeat offsets they try.

use super::dfast::{count, hash, read32, Seq, START};
use super::window::{before_block, lowest_index};
use crate::engine::kpzstd::{ll_code, ml_code, LL_BITS_TABLE, ML_BITS_TABLE};

/// `ZSTD_OPT_NUM`: positions the parser looks ahead.
const OPT_NUM: usize = 1 << 12;
const BITCOST_ACCURACY: u32 = 8;
const BITCOST_MULTIPLIER: u32 = 1 << BITCOST_ACCURACY;
/// `ZSTD_LITFREQ_ADD`.
const LITFREQ_ADD: u32 = 2;
const MAX_PRICE: i32 = 1 << 30;
/// `ZSTD_PREDEF_THRESHOLD`: a first block this small is priced on fixed costs.
const PREDEF_THRESHOLD: usize = 8;
const MINMATCH: u32 = 3;
const BLOCKSIZE_MAX: u32 = 128 << 10;
/// `ZSTD_HASHLOG3_MAX`.
const HASHLOG3_MAX: u32 = 17;
/// `HASH_READ_SIZE`.
const HASH_READ: usize = 8;
const MAX_LL: usize = 35;
const MAX_ML: usize = 52;
const MAX_OFF: usize = 31;

/// Which of the three parsers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OptStrategy {
    /// `btopt`: whole-bit prices, positions skipped when unpromising.
    Btopt,
    /// `btultra`: fractional prices, every position.
    Btultra,
    /// `btultra`, its first block parsed twice to seed the statistics.
    Btultra2,
}

/// The compression parameters the parser reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct OptParams {
    pub window_log: u32,
    pub chain_log: u32,
    pub hash_log: u32,
    pub search_log: u32,
    pub min_match: u32,
    pub target_length: u32,
    pub strategy: OptStrategy,
}

impl OptParams {
    fn opt_level(&self) -> u32 {
        match self.strategy {
            OptStrategy::Btopt => 0,
            _ => 2,
        }
    }

    /// `BOUNDED(3, minMatch, 6)`: the match finder's template.
    fn mls(&self) -> u32 {
        self.min_match.clamp(3, 6)
    }
}

/// One position's best way there (`ZSTD_optimal_t`).
#[derive(Clone, Copy, Debug, Default)]
struct Optimal {
    price: i32,
    off: u32,
    mlen: u32,
    litlen: u32,
    rep: [u32; 3],
}

impl Optimal {
    fn total_len(&self) -> u32 {
        self.litlen + self.mlen
    }
}

/// A match found (`ZSTD_match_t`): its offset code and length.
#[derive(Clone, Copy, Debug, Default)]
struct Match {
    off: u32,
    len: u32,
}

/// The statistics prices come from (`optState_t`'s frequencies).
#[derive(Clone)]
struct Stats {
    lit_freq: [u32; 256],
    lit_length_freq: [u32; MAX_LL + 1],
    match_length_freq: [u32; MAX_ML + 1],
    off_code_freq: [u32; MAX_OFF + 1],
    lit_sum: u32,
    lit_length_sum: u32,
    match_length_sum: u32,
    off_code_sum: u32,
    lit_sum_base_price: u32,
    lit_length_sum_base_price: u32,
    match_length_sum_base_price: u32,
    off_code_sum_base_price: u32,
    /// `zop_predef`: fixed costs.
    predef: bool,
}

#[inline(always)]
fn highbit(v: u32) -> u32 {
    31 - v.leading_zeros()
}

/// `WEIGHT`: a statistic's cost, in whole bits (`btopt`) or fractional ones.
#[inline(always)]
fn weight(stat: u32, opt_level: u32) -> u32 {
    let stat = stat.wrapping_add(1);
    let hb = highbit(stat);
    if opt_level == 0 {
        return hb * BITCOST_MULTIPLIER;
    }
    hb * BITCOST_MULTIPLIER + ((stat << BITCOST_ACCURACY) >> hb)
}

/// `ZSTD_downscaleStats`.
fn downscale(table: &mut [u32], shift: u32, base1: bool) -> u32 {
    let mut sum = 0u32;
    for t in table.iter_mut() {
        let base = if base1 { 1 } else { (*t > 0) as u32 };
        *t = base + (*t >> shift);
        sum = sum.wrapping_add(*t);
    }
    sum
}

/// `ZSTD_scaleStats`.
fn scale(table: &mut [u32], log_target: u32) -> u32 {
    let prev = table.iter().fold(0u32, |a, &t| a.wrapping_add(t));
    let factor = prev >> log_target;
    if factor <= 1 {
        return prev;
    }
    downscale(table, highbit(factor), true)
}

impl Stats {
    fn new() -> Stats {
        Stats {
            lit_freq: [0; 256],
            lit_length_freq: [0; MAX_LL + 1],
            match_length_freq: [0; MAX_ML + 1],
            off_code_freq: [0; MAX_OFF + 1],
            lit_sum: 0,
            lit_length_sum: 0,
            match_length_sum: 0,
            off_code_sum: 0,
            lit_sum_base_price: 0,
            lit_length_sum_base_price: 0,
            match_length_sum_base_price: 0,
            off_code_sum_base_price: 0,
            predef: false,
        }
    }

    fn set_base_prices(&mut self, opt_level: u32) {
        self.lit_sum_base_price = weight(self.lit_sum, opt_level);
        self.lit_length_sum_base_price = weight(self.lit_length_sum, opt_level);
        self.match_length_sum_base_price = weight(self.match_length_sum, opt_level);
        self.off_code_sum_base_price = weight(self.off_code_sum, opt_level);
    }

    /// `ZSTD_rescaleFreqs` without a dictionary: a first block starts from its literals'
    /// counts and fixed sequence statistics, a later one from the last's, scaled down.
    fn rescale(&mut self, src: &[u8], opt_level: u32) {
        self.predef = false;
        if self.lit_length_sum == 0 {
            if src.len() <= PREDEF_THRESHOLD {
                self.predef = true;
            }
            self.lit_freq = [0; 256];
            for &b in src {
                self.lit_freq[b as usize] += 1;
            }
            self.lit_sum = downscale(&mut self.lit_freq, 8, false);
            const BASE_LL: [u32; MAX_LL + 1] = [
                4, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
                1, 1, 1, 1, 1, 1, 1, 1,
            ];
            self.lit_length_freq = BASE_LL;
            self.lit_length_sum = BASE_LL.iter().sum();
            self.match_length_freq = [1; MAX_ML + 1];
            self.match_length_sum = (MAX_ML + 1) as u32;
            const BASE_OF: [u32; MAX_OFF + 1] = [
                6, 2, 1, 1, 2, 3, 4, 4, 4, 3, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
                1, 1, 1, 1,
            ];
            self.off_code_freq = BASE_OF;
            self.off_code_sum = BASE_OF.iter().sum();
        } else {
            self.lit_sum = scale(&mut self.lit_freq, 12);
            self.lit_length_sum = scale(&mut self.lit_length_freq, 11);
            self.match_length_sum = scale(&mut self.match_length_freq, 11);
            self.off_code_sum = scale(&mut self.off_code_freq, 11);
        }
        self.set_base_prices(opt_level);
    }

    /// `ZSTD_rawLiteralsCost`.
    fn raw_literals_cost(&self, lits: &[u8], opt_level: u32) -> u32 {
        if lits.is_empty() {
            return 0;
        }
        if self.predef {
            return (lits.len() as u32 * 6) * BITCOST_MULTIPLIER;
        }
        let mut price = self.lit_sum_base_price.wrapping_mul(lits.len() as u32);
        let max = self.lit_sum_base_price.wrapping_sub(BITCOST_MULTIPLIER);
        for &b in lits {
            let p = weight(self.lit_freq[b as usize], opt_level).min(max);
            price = price.wrapping_sub(p);
        }
        price
    }

    /// `ZSTD_litLengthPrice`.
    fn lit_length_price(&self, lit_length: u32, opt_level: u32) -> u32 {
        if self.predef {
            return weight(lit_length, opt_level);
        }
        if lit_length == BLOCKSIZE_MAX {
            return BITCOST_MULTIPLIER + self.lit_length_price(BLOCKSIZE_MAX - 1, opt_level);
        }
        let code = ll_code(lit_length) as usize;
        (LL_BITS_TABLE[code] as u32 * BITCOST_MULTIPLIER)
            .wrapping_add(self.lit_length_sum_base_price)
            .wrapping_sub(weight(self.lit_length_freq[code], opt_level))
    }

    /// `ZSTD_getMatchPrice`: the match part of a sequence.
    #[inline(always)]
    fn match_price(&self, off_base: u32, match_length: u32, opt_level: u32) -> u32 {
        let off_code = highbit(off_base);
        let ml_base = match_length - MINMATCH;
        if self.predef {
            return weight(ml_base, opt_level) + (16 + off_code) * BITCOST_MULTIPLIER;
        }
        let mut price = (off_code * BITCOST_MULTIPLIER).wrapping_add(
            self.off_code_sum_base_price
                .wrapping_sub(weight(self.off_code_freq[off_code as usize], opt_level)),
        );
        if opt_level < 2 && off_code >= 20 {
            price = price.wrapping_add((off_code - 19) * 2 * BITCOST_MULTIPLIER);
        }
        let ml_code = ml_code(ml_base) as usize;
        price = price.wrapping_add(
            (ML_BITS_TABLE[ml_code] as u32 * BITCOST_MULTIPLIER).wrapping_add(
                self.match_length_sum_base_price
                    .wrapping_sub(weight(self.match_length_freq[ml_code], opt_level)),
            ),
        );
        price.wrapping_add(BITCOST_MULTIPLIER / 5)
    }

    /// `ZSTD_updateStats`.
    fn update(&mut self, lits: &[u8], off_base: u32, match_length: u32) {
        for &b in lits {
            self.lit_freq[b as usize] += LITFREQ_ADD;
        }
        self.lit_sum = self.lit_sum.wrapping_add(lits.len() as u32 * LITFREQ_ADD);
        self.lit_length_freq[ll_code(lits.len() as u32) as usize] += 1;
        self.lit_length_sum += 1;
        self.off_code_freq[highbit(off_base) as usize] += 1;
        self.off_code_sum += 1;
        self.match_length_freq[ml_code(match_length - MINMATCH) as usize] += 1;
        self.match_length_sum += 1;
    }
}

/// `ZSTD_updateRep`: the repeat offsets after a sequence with offset code `off_base`.
pub(super) fn new_rep(rep: [u32; 3], off_base: u32, ll0: bool) -> [u32; 3] {
    let mut r = rep;
    if off_base > 3 {
        r[2] = r[1];
        r[1] = r[0];
        r[0] = off_base - 3;
    } else {
        let code = off_base - 1 + ll0 as u32;
        if code > 0 {
            let current = raw_offset(&rep, off_base, ll0);
            r[2] = if code >= 2 { r[1] } else { r[2] };
            r[1] = r[0];
            r[0] = current;
        }
    }
    r
}

/// The offset a repeat code (`off_base` 1-3) stands for after `rep`
/// (`ZSTD_resolveRepcodeToRawOffset`): after no literals, codes shift by one and the last
/// means the latest offset less one.
pub(super) fn raw_offset(rep: &[u32; 3], off_base: u32, ll0: bool) -> u32 {
    let code = off_base - 1 + ll0 as u32;
    if code == 3 {
        rep[0].wrapping_sub(1)
    } else {
        rep[code as usize]
    }
}

/// `ZSTD_readMINMATCH`, for comparisons.
#[inline(always)]
fn read_minmatch(b: &[u8], i: usize, length: u32) -> u32 {
    if length == 3 {
        read32(b, i) << 8
    } else {
        read32(b, i)
    }
}

/// `ZSTD_hash3Ptr`.
#[inline(always)]
fn hash3(b: &[u8], i: usize, bits: u32) -> usize {
    ((read32(b, i) << 8).wrapping_mul(506832829) >> (32 - bits)) as usize
}

/// "Nowhere": where a binary tree link goes when the search stops (libzstd's `dummy32`).
const NOWHERE: usize = usize::MAX;

/// Where the binary tree search links the position being inserted: the last node smaller than
/// it (its "larger" child is to be set) and the last larger (its "smaller" child), and how
/// many bytes every node on either side still shares with it.
struct Link {
    smaller: usize,
    larger: usize,
    common_smaller: usize,
    common_larger: usize,
}

impl Link {
    fn new(curr: u32, bt_mask: u32) -> Link {
        let smaller = 2 * (curr & bt_mask) as usize;
        Link {
            smaller,
            larger: smaller + 1,
            common_smaller: 0,
            common_larger: 0,
        }
    }

    /// Bytes a node met next shares with the position for sure.
    fn common(&self) -> usize {
        self.common_smaller.min(self.common_larger)
    }

    /// The search is over: the open links end the tree.
    fn close(self, bt: &mut [u32]) {
        for at in [self.smaller, self.larger] {
            if at != NOWHERE {
                bt[at] = 0;
            }
        }
    }
}

/// The parser's state across the blocks of one job (or frame).
pub(super) struct Opt {
    p: OptParams,
    hash: Vec<u32>,
    /// The binary tree: two links per position (`chainTable`).
    bt: Vec<u32>,
    hash3: Vec<u32>,
    hash_log3: u32,
    /// Index of the buffer's first byte.
    pub base: u32,
    pub low_limit: u32,
    pub dict_limit: u32,
    next_to_update: u32,
    /// The repeat offsets (`rep[0..3]`).
    pub rep: [u32; 3],
    stats: Stats,
    opt: Vec<Optimal>,
    matches: Vec<Match>,
    /// The first pass of `btultra2` writes its sequences here, to be dropped.
    scratch: Vec<Seq>,
}

impl Opt {
    /// A fresh parser; `rep` as the job starts it (`[1, 4, 8]` for a frame's first,
    /// `[0, 0, 0]`, "invalid", for the multi-threaded mode's later jobs).
    pub fn new(p: OptParams, rep: [u32; 3]) -> Opt {
        let hash_log3 = if p.min_match == 3 {
            HASHLOG3_MAX.min(p.window_log)
        } else {
            0
        };
        Opt {
            p,
            hash: vec![0; 1 << p.hash_log],
            bt: vec![0; 1 << p.chain_log],
            hash3: vec![0; if hash_log3 > 0 { 1 << hash_log3 } else { 0 }],
            hash_log3,
            base: START,
            low_limit: START,
            dict_limit: START,
            next_to_update: START,
            rep,
            stats: Stats::new(),
            opt: vec![Optimal::default(); OPT_NUM + 3],
            matches: vec![Match::default(); OPT_NUM + 3],
            scratch: Vec::new(),
        }
    }

    /// Loads `buf[..len]` (a job's prefix) as libzstd loads a raw-content dictionary into a
    /// binary tree (`ZSTD_loadDictionaryContent`): every position but the last 8, sorted.
    pub fn load_prefix(&mut self, buf: &[u8], len: usize) {
        self.next_to_update = self.base;
        if len <= HASH_READ {
            return;
        }
        self.update_tree(buf, len - HASH_READ, len, self.p.min_match);
        self.next_to_update = self.base + len as u32;
    }

    /// libzstd's input buffer was refilled from its start: insertions resume at the new
    /// segment (`ZSTD_compressContinue_internal` on a non-contiguous input).
    pub fn new_segment(&mut self) {
        self.next_to_update = self.dict_limit;
    }

    /// Moves every index down, as libzstd corrects them before they overflow
    /// (`ZSTD_window_correctOverflow`): by a whole number of the binary tree's cycles (its
    /// nodes sit at an index's low bits), as far as `low_limit` allows; returns by how much.
    /// Entries below the window are cleared, which changes no search (they end one, as the
    /// window's bound does).
    pub fn reduce(&mut self) -> u32 {
        let cycle = 1u32 << (self.p.chain_log - 1);
        let delta = (self.low_limit - START) & !(cycle - 1);
        for e in self
            .hash
            .iter_mut()
            .chain(&mut self.bt)
            .chain(&mut self.hash3)
        {
            *e = if *e < self.low_limit { 0 } else { *e - delta };
        }
        self.base -= delta;
        self.low_limit -= delta;
        self.dict_limit -= delta;
        self.next_to_update = self.next_to_update.saturating_sub(delta).max(START);
        delta
    }

    /// `ZSTD_getLowestMatchIndex` (no dictionary).
    fn lowest_match_index(&self, curr: u32) -> u32 {
        lowest_index(curr, self.low_limit, self.p.window_log)
    }

    /// Finds the sequences of the block `buf[start..end]` (at least 7 bytes: libzstd stores
    /// shorter blocks without looking), appending them to `seqs`; returns the block's last
    /// literals' length. `rep` is updated as libzstd updates the block's repeat offsets.
    pub fn block(&mut self, buf: &[u8], start: usize, end: usize, seqs: &mut Vec<Seq>) -> usize {
        let curr = start as u32 + self.base;
        before_block(
            curr,
            self.p.window_log,
            &mut self.low_limit,
            &mut self.dict_limit,
            &mut self.next_to_update,
        );
        let opt_level = self.p.opt_level();
        if self.p.strategy == OptStrategy::Btultra2
            && self.stats.lit_length_sum == 0
            && self.dict_limit == self.low_limit
            && curr == self.dict_limit
            && end - start > PREDEF_THRESHOLD
        {
            // ZSTD_initStats_ultra: a first pass for its statistics, then the block is
            // parsed anew as if nothing came before (its indices moved beyond the first's).
            let mut rep = self.rep;
            let mut scratch = std::mem::take(&mut self.scratch);
            scratch.clear();
            self.parse(buf, start, end, &mut rep, &mut scratch, opt_level);
            self.scratch = scratch;
            let len = (end - start) as u32;
            self.base += len;
            self.dict_limit += len;
            self.low_limit = self.dict_limit;
            self.next_to_update = self.dict_limit;
        }
        let mut rep = self.rep;
        let last = self.parse(buf, start, end, &mut rep, seqs, opt_level);
        self.rep = rep;
        last
    }

    /// One step down the tree from the node `match_index` (sharing `len` bytes with the
    /// position, which sorts after it if `smaller`; its links at `next`): the node is linked in
    /// on its side, and the search goes on to its child towards the position (None: the node
    /// is the tree's last, `bt_low`, and the search stops).
    fn descend(
        &mut self,
        link: &mut Link,
        smaller: bool,
        len: usize,
        match_index: u32,
        bt_low: u32,
        next: usize,
    ) -> Option<u32> {
        if smaller {
            self.bt[link.smaller] = match_index;
            link.common_smaller = len;
            if match_index <= bt_low {
                link.smaller = NOWHERE;
                return None;
            }
            link.smaller = next + 1;
            Some(self.bt[next + 1])
        } else {
            self.bt[link.larger] = match_index;
            link.common_larger = len;
            if match_index <= bt_low {
                link.larger = NOWHERE;
                return None;
            }
            link.larger = next;
            Some(self.bt[next])
        }
    }

    /// `ZSTD_insertBt1`: adds the position `ip` to the tree; returns how many positions the
    /// caller may move on.
    fn insert_bt1(&mut self, buf: &[u8], ip: usize, iend: usize, target: u32, mls: u32) -> u32 {
        let base = self.base;
        let h = hash(buf, ip, self.p.hash_log, mls);
        let bt_mask = (1u32 << (self.p.chain_log - 1)) - 1;
        let mut match_index = self.hash[h];
        let curr = ip as u32 + base;
        let bt_low = curr.saturating_sub(bt_mask);
        let mut link = Link::new(curr, bt_mask);
        let window_low = self.lowest_match_index(target);
        let mut match_end_idx = curr + 8 + 1;
        let mut best_length = 8usize;
        let mut compares = 1u32 << self.p.search_log;
        self.hash[h] = curr;
        while compares > 0 && match_index >= window_low {
            let next = 2 * (match_index & bt_mask) as usize;
            let m = (match_index - base) as usize;
            let mut len = link.common();
            len += count(buf, ip + len, m + len, iend);
            if len > best_length {
                best_length = len;
                if len > (match_end_idx - match_index) as usize {
                    match_end_idx = match_index + len as u32;
                }
            }
            if ip + len == iend {
                break;
            }
            let smaller_here = buf[m + len] < buf[ip + len];
            match self.descend(&mut link, smaller_here, len, match_index, bt_low, next) {
                Some(i) => match_index = i,
                None => break,
            }
            compares -= 1;
        }
        link.close(&mut self.bt);
        let positions = if best_length > 384 {
            192.min(best_length as u32 - 384)
        } else {
            0
        };
        positions.max(match_end_idx - (curr + 8))
    }

    /// `ZSTD_updateTree_internal`: every position up to `ip` into the tree.
    fn update_tree(&mut self, buf: &[u8], ip: usize, iend: usize, mls: u32) {
        let target = ip as u32 + self.base;
        let mut idx = self.next_to_update;
        while idx < target {
            let pos = (idx - self.base) as usize;
            idx += self.insert_bt1(buf, pos, iend, target, mls);
        }
        self.next_to_update = target;
    }

    /// `ZSTD_insertAndFindFirstIndexHash3`.
    fn hash3_first(&mut self, buf: &[u8], next3: &mut u32, ip: usize) -> u32 {
        let bits = self.hash_log3;
        let target = ip as u32 + self.base;
        let mut idx = *next3;
        while idx < target {
            self.hash3[hash3(buf, (idx - self.base) as usize, bits)] = idx;
            idx += 1;
        }
        *next3 = target;
        self.hash3[hash3(buf, ip, bits)]
    }

    /// `ZSTD_btGetAllMatches_internal` and `ZSTD_insertBtAndGetAllMatches` (no dictionary):
    /// the matches at `ip`, each longer than the last, into `self.matches`; how many.
    #[allow(clippy::too_many_arguments)]
    fn get_all_matches(
        &mut self,
        buf: &[u8],
        next3: &mut u32,
        ip: usize,
        iend: usize,
        rep: &[u32; 3],
        ll0: u32,
        length_to_beat: u32,
    ) -> usize {
        let base = self.base;
        let curr = ip as u32 + base;
        if curr < self.next_to_update {
            return 0;
        }
        let mls = self.p.mls();
        self.update_tree(buf, ip, iend, mls);

        let sufficient_len = self.p.target_length.min(OPT_NUM as u32 - 1) as usize;
        let min_match = if mls == 3 { 3 } else { 4 };
        let h = hash(buf, ip, self.p.hash_log, mls);
        let mut match_index = self.hash[h];
        let bt_mask = (1u32 << (self.p.chain_log - 1)) - 1;
        let dict_limit = self.dict_limit;
        let ext_dict = self.low_limit < dict_limit;
        let bt_low = curr.saturating_sub(bt_mask);
        let window_low = self.lowest_match_index(curr);
        let match_low = if window_low != 0 { window_low } else { 1 };
        let mut link = Link::new(curr, bt_mask);
        let mut match_end_idx = curr + 8 + 1;
        let mut mnum = 0usize;
        let mut compares = 1u32 << self.p.search_log;
        let mut best_length = length_to_beat as usize - 1;

        // The repeat offsets.
        for rep_code in ll0..3 + ll0 {
            let rep_offset = if rep_code == 3 {
                rep[0].wrapping_sub(1)
            } else {
                rep[rep_code as usize]
            };
            let rep_index = curr.wrapping_sub(rep_offset);
            // In the newer segment; with two, in the older, not within 3 bytes of its end.
            let usable = if rep_offset.wrapping_sub(1) < curr - dict_limit {
                rep_index >= window_low
            } else {
                ext_dict
                    && rep_offset.wrapping_sub(1) < curr - window_low
                    && (dict_limit - 1).wrapping_sub(rep_index) >= 3
            };
            let mut rep_len = 0usize;
            if usable
                && read_minmatch(buf, ip, min_match)
                    == read_minmatch(buf, ip - rep_offset as usize, min_match)
            {
                let m = ip - rep_offset as usize;
                rep_len = count(buf, ip + min_match as usize, m + min_match as usize, iend)
                    + min_match as usize;
            }
            if rep_len > best_length {
                best_length = rep_len;
                self.matches[mnum] = Match {
                    off: rep_code - ll0 + 1,
                    len: rep_len as u32,
                };
                mnum += 1;
                if rep_len > sufficient_len || ip + rep_len == iend {
                    return mnum;
                }
            }
        }

        // The 3-byte hash (minimum match 3).
        if mls == 3 && best_length < 3 {
            let index3 = self.hash3_first(buf, next3, ip);
            if index3 >= match_low && curr - index3 < (1 << 18) {
                let len = count(buf, ip, (index3 - base) as usize, iend);
                if len >= 3 {
                    best_length = len;
                    self.matches[0] = Match {
                        off: curr - index3 + 3,
                        len: len as u32,
                    };
                    mnum = 1;
                    if len > sufficient_len || ip + len == iend {
                        self.next_to_update = curr + 1;
                        return 1;
                    }
                }
            }
        }

        self.hash[h] = curr;
        while compares > 0 && match_index >= match_low {
            let next = 2 * (match_index & bt_mask) as usize;
            let m = (match_index - base) as usize;
            let mut len = link.common();
            len += count(buf, ip + len, m + len, iend);
            if len > best_length {
                if len > (match_end_idx - match_index) as usize {
                    match_end_idx = match_index + len as u32;
                }
                best_length = len;
                self.matches[mnum] = Match {
                    off: curr - match_index + 3,
                    len: len as u32,
                };
                mnum += 1;
                if len > OPT_NUM || ip + len == iend {
                    break;
                }
            }
            let smaller_here = buf[m + len] < buf[ip + len];
            match self.descend(&mut link, smaller_here, len, match_index, bt_low, next) {
                Some(i) => match_index = i,
                None => break,
            }
            compares -= 1;
        }
        link.close(&mut self.bt);
        self.next_to_update = match_end_idx - 8;
        mnum
    }

    /// `ZSTD_compressBlock_opt_generic` (no dictionary, no long-distance matches).
    fn parse(
        &mut self,
        buf: &[u8],
        start: usize,
        end: usize,
        rep: &mut [u32; 3],
        seqs: &mut Vec<Seq>,
        opt_level: u32,
    ) -> usize {
        let iend = end;
        let ilimit = end.saturating_sub(8);
        let prefix_start = (self.dict_limit - self.base) as usize;
        let sufficient_len = self.p.target_length.min(OPT_NUM as u32 - 1);
        let min_match = if self.p.min_match == 3 { 3 } else { 4 };
        let mut next3 = self.next_to_update;
        let mut ip = start;
        let mut anchor = start;

        self.stats.rescale(&buf[start..end], opt_level);
        if ip == prefix_start {
            ip += 1;
        }

        while ip < ilimit {
            let mut cur: usize;
            let mut last_pos: usize;
            let last_seq: Optimal;

            // The first match.
            let litlen = (ip - anchor) as u32;
            let ll0 = (litlen == 0) as u32;
            let nb = self.get_all_matches(buf, &mut next3, ip, iend, rep, ll0, min_match);
            if nb == 0 {
                ip += 1;
                continue;
            }
            self.opt[0] = Optimal {
                price: self.stats.lit_length_price(litlen, opt_level) as i32,
                off: 0,
                mlen: 0,
                litlen,
                rep: *rep,
            };
            let longest = self.matches[nb - 1];
            'shortest: {
                if longest.len > sufficient_len {
                    // A long match: taken at once.
                    last_seq = Optimal {
                        litlen,
                        mlen: longest.len,
                        off: longest.off,
                        ..Optimal::default()
                    };
                    cur = 0;
                    break 'shortest;
                }
                // The prices of the first matches.
                let literals_price = (self.opt[0].price as u32)
                    .wrapping_add(self.stats.lit_length_price(0, opt_level));
                let mut pos = 1usize;
                while pos < min_match as usize {
                    self.opt[pos].price = MAX_PRICE;
                    pos += 1;
                }
                for mi in 0..nb {
                    let Match { off, len } = self.matches[mi];
                    while pos <= len as usize {
                        let price = literals_price
                            .wrapping_add(self.stats.match_price(off, pos as u32, opt_level));
                        let o = &mut self.opt[pos];
                        o.mlen = pos as u32;
                        o.off = off;
                        o.litlen = litlen;
                        o.price = price as i32;
                        pos += 1;
                    }
                }
                last_pos = pos - 1;

                // The positions after.
                cur = 1;
                while cur <= last_pos {
                    let inr = ip + cur;
                    // A literal here, if cheaper.
                    let prev = self.opt[cur - 1];
                    let litlen = if prev.mlen == 0 { prev.litlen + 1 } else { 1 };
                    let price = prev
                        .price
                        .wrapping_add(
                            self.stats.raw_literals_cost(&buf[inr - 1..inr], opt_level) as i32
                        )
                        .wrapping_add(self.stats.lit_length_price(litlen, opt_level) as i32)
                        .wrapping_sub(self.stats.lit_length_price(litlen - 1, opt_level) as i32);
                    if price <= self.opt[cur].price {
                        let o = &mut self.opt[cur];
                        o.mlen = 0;
                        o.off = 0;
                        o.litlen = litlen;
                        o.price = price;
                    }
                    // The repeat offsets here.
                    let here = self.opt[cur];
                    self.opt[cur].rep = if here.mlen != 0 {
                        let from = cur - here.mlen as usize;
                        new_rep(self.opt[from].rep, here.off, here.litlen == 0)
                    } else {
                        self.opt[cur - 1].rep
                    };
                    // The last match starts at least 8 bytes before the end.
                    if inr > ilimit {
                        cur += 1;
                        continue;
                    }
                    if cur == last_pos {
                        break;
                    }
                    if opt_level == 0
                        && self.opt[cur + 1].price
                            <= self.opt[cur].price + (BITCOST_MULTIPLIER / 2) as i32
                    {
                        cur += 1;
                        continue;
                    }
                    let here = self.opt[cur];
                    let ll0 = (here.mlen != 0) as u32;
                    let litlen = if here.mlen == 0 { here.litlen } else { 0 };
                    let base_price =
                        (here.price as u32).wrapping_add(self.stats.lit_length_price(0, opt_level));
                    let here_rep = here.rep;
                    let nb =
                        self.get_all_matches(buf, &mut next3, inr, iend, &here_rep, ll0, min_match);
                    if nb == 0 {
                        cur += 1;
                        continue;
                    }
                    let longest = self.matches[nb - 1];
                    if longest.len > sufficient_len || cur + longest.len as usize >= OPT_NUM {
                        last_seq = Optimal {
                            mlen: longest.len,
                            off: longest.off,
                            litlen,
                            ..Optimal::default()
                        };
                        // The last sequence may begin with literals before `ip` (then it is
                        // the first).
                        let back = if here.mlen == 0 {
                            here.litlen as usize
                        } else {
                            0
                        };
                        cur = cur.saturating_sub(back);
                        break 'shortest;
                    }
                    for mi in 0..nb {
                        let Match { off, len: last_ml } = self.matches[mi];
                        let start_ml = if mi > 0 {
                            self.matches[mi - 1].len + 1
                        } else {
                            min_match
                        };
                        let mut mlen = last_ml;
                        while mlen >= start_ml {
                            let pos = cur + mlen as usize;
                            let price = (base_price as i32)
                                .wrapping_add(self.stats.match_price(off, mlen, opt_level) as i32);
                            if pos > last_pos || price < self.opt[pos].price {
                                while last_pos < pos {
                                    self.opt[last_pos + 1].price = MAX_PRICE;
                                    last_pos += 1;
                                }
                                let o = &mut self.opt[pos];
                                o.mlen = mlen;
                                o.off = off;
                                o.litlen = litlen;
                                o.price = price;
                            } else if opt_level == 0 {
                                break;
                            }
                            mlen -= 1;
                        }
                    }
                    cur += 1;
                }
                last_seq = self.opt[last_pos];
                let total = last_seq.total_len() as usize;
                cur = last_pos.saturating_sub(total);
            }

            // _shortestPath: the next sequences' repeat offsets, then the sequences from
            // the end back.
            *rep = if last_seq.mlen != 0 {
                new_rep(self.opt[cur].rep, last_seq.off, last_seq.litlen == 0)
            } else {
                self.opt[cur].rep
            };
            let store_end = cur + 1;
            let mut store_start = store_end;
            let mut seq_pos = cur;
            self.opt[store_end] = last_seq;
            while seq_pos > 0 {
                let back = self.opt[seq_pos].total_len() as usize;
                store_start -= 1;
                self.opt[store_start] = self.opt[seq_pos];
                seq_pos = seq_pos.saturating_sub(back);
            }
            for sp in store_start..=store_end {
                let o = self.opt[sp];
                let (llen, mlen) = (o.litlen as usize, o.mlen);
                if mlen == 0 {
                    // Only literals: the last, starting the next run.
                    ip = anchor + llen;
                    continue;
                }
                self.stats.update(&buf[anchor..anchor + llen], o.off, mlen);
                seqs.push(Seq {
                    lit_len: llen as u32,
                    off_code: o.off,
                    match_len: mlen,
                });
                anchor += llen + mlen as usize;
                ip = anchor;
            }
            self.stats.set_base_prices(opt_level);
        }
        iend - anchor
    }
}

/// The parser's parameters at `level` for a frame of `content_size` (None: unknown), as
/// libzstd derives them; None where the level's strategy there is not an optimal parser's.
pub(super) fn opt_params(level: i32, content_size: Option<u64>) -> Option<OptParams> {
    use zstd::zstd_safe::zstd_sys as sys;
    // SAFETY: a pure function of its arguments.
    let c = unsafe { sys::ZSTD_getCParams(level, content_size.unwrap_or(u64::MAX) as _, 0) };
    let strategy = match c.strategy as u32 {
        7 => OptStrategy::Btopt,
        8 => OptStrategy::Btultra,
        9 => OptStrategy::Btultra2,
        _ => return None,
    };
    Some(OptParams {
        window_log: c.windowLog,
        chain_log: c.chainLog,
        hash_log: c.hashLog,
        search_log: c.searchLog,
        min_match: c.minMatch,
        target_length: c.targetLength,
        strategy,
    })
}
