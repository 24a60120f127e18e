//! Ports the compressor of `huff0/compress.go` and `huff0/huff0.go`
//! (klauspost/compress 1.15.12): Huffman coding of a block's literals, with
//! the previous table kept for reuse (`ReusePolicyAllow` / `ReusePolicyNone`,
//! the two policies the zstd encoder uses).

use super::bitwriter::{BitWriter, CTableEntry};
use super::fsecompress::FseScratch;

const MAX_SYMBOL_VALUE: usize = 255;
const TABLE_LOG_MAX: u8 = 11;
const TABLE_LOG_DEFAULT: u8 = 11;
const MIN_TABLELOG: u8 = 5;
const HUFF_NODES_LEN: usize = 512;
const HUFF_NODES_MASK: u32 = HUFF_NODES_LEN as u32 - 1;
/// `BlockSizeMax`.
const BLOCK_SIZE_MAX: usize = (1 << 18) - 1;

/// `ReusePolicy` (only the two the zstd encoder sets).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ReusePolicy {
    Allow,
    None,
}

/// Why the literals are not Huffman coded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HuffError {
    /// `ErrIncompressible`: store them raw.
    Incompressible,
    /// `ErrUseRLE`: a single repeated byte.
    UseRle,
    /// Any other error (Go would fail the stream).
    Other(&'static str),
}

#[derive(Clone, Copy, Default)]
struct NodeElt {
    count: u32,
    parent: u16,
    symbol: u8,
    nb_bits: u8,
}

/// `huff0.Scratch`, the compressor's part.
pub(crate) struct Scratch {
    count: [u32; 256],
    /// `Out`: the last compressed output (table description, if new, then streams).
    pub out: Vec<u8>,
    pub reuse: ReusePolicy,
    want_log_less: u8,
    table_log: u8,
    symbol_len: u16,
    max_count: usize,
    clear_count: bool,
    actual_table_log: u8,
    prev_table_log: u8,
    prev_table: Vec<CTableEntry>,
    c_table: Vec<CTableEntry>,
    /// `nodes`, never cleared between uses, like Go's.
    nodes: Box<[NodeElt; HUFF_NODES_LEN + 1]>,
    fse: FseScratch,
    huff_weight: [u8; 256],
    /// The input length (`br.remain()`).
    remain: usize,
}

impl Scratch {
    /// `&huff0.Scratch{WantLogLess: 4}`, as `blockEnc.init` makes it.
    pub fn new(want_log_less: u8) -> Scratch {
        Scratch {
            count: [0; 256],
            out: Vec::new(),
            reuse: ReusePolicy::Allow,
            want_log_less,
            table_log: 0,
            symbol_len: 0,
            max_count: 0,
            clear_count: false,
            actual_table_log: 0,
            prev_table_log: 0,
            prev_table: Vec::new(),
            c_table: Vec::with_capacity(MAX_SYMBOL_VALUE + 1),
            nodes: Box::new([NodeElt::default(); HUFF_NODES_LEN + 1]),
            fse: FseScratch::default(),
            huff_weight: [0; 256],
            remain: 0,
        }
    }

    fn prepare(&mut self, input: &[u8]) -> Result<(), HuffError> {
        if input.len() > BLOCK_SIZE_MAX {
            return Err(HuffError::Other("input too big"));
        }
        if self.table_log == 0 {
            self.table_log = TABLE_LOG_DEFAULT;
        }
        if self.clear_count && self.max_count == 0 {
            self.count = [0; 256];
            self.clear_count = false;
        }
        self.out.clear();
        self.remain = input.len();
        Ok(())
    }

    /// `Compress1X`: returns whether the previous table was reused; the output is
    /// in `self.out`.
    pub fn compress_1x(&mut self, input: &[u8]) -> Result<bool, HuffError> {
        self.prepare(input)?;
        self.compress(input, false)
    }

    /// `Compress4X`.
    pub fn compress_4x(&mut self, input: &[u8]) -> Result<bool, HuffError> {
        self.prepare(input)?;
        self.compress(input, true)
    }

    fn compressor(&mut self, input: &[u8], four: bool) -> Result<(), HuffError> {
        if four {
            self.compress4x_do(input)
        } else {
            let mut out = std::mem::take(&mut self.out);
            compress1x_do(&mut out, input, &self.c_table, self.actual_table_log);
            self.out = out;
            Ok(())
        }
    }

    /// `compress`.
    fn compress(&mut self, input: &[u8], four: bool) -> Result<bool, HuffError> {
        if self.reuse == ReusePolicy::None {
            self.prev_table.clear();
        }
        let mut max_count = self.max_count;
        let can_reuse;
        if max_count == 0 {
            let (m, r) = self.count_simple(input);
            max_count = m;
            can_reuse = r;
        } else {
            can_reuse = self.can_use_table(&self.prev_table);
        }
        let mut want_size = input.len();
        if self.want_log_less > 0 {
            want_size -= want_size >> self.want_log_less;
        }
        self.clear_count = true;
        self.max_count = 0;
        if max_count >= input.len() {
            if max_count > input.len() {
                return Err(HuffError::Other("maxCount > length"));
            }
            if input.len() == 1 {
                return Err(HuffError::Incompressible);
            }
            return Err(HuffError::UseRle);
        }
        if max_count == 1 || max_count < (input.len() >> 7) {
            return Err(HuffError::Incompressible);
        }
        // (ReusePolicyPrefer/Must are not used by the zstd encoder.)
        self.build_ctable()?;

        if self.reuse == ReusePolicy::Allow && can_reuse {
            // `hSize := len(s.Out)`: nothing has been written to Out yet.
            let h_size = self.out.len();
            let sl = self.symbol_len as usize;
            let old_size = estimate_size(&self.prev_table, &self.count[..sl]);
            let new_size = estimate_size(&self.c_table, &self.count[..sl]);
            if old_size <= h_size + new_size || h_size + 12 >= want_size {
                let keep_table = std::mem::take(&mut self.c_table);
                let keep_tl = self.actual_table_log;
                self.c_table = std::mem::take(&mut self.prev_table);
                self.actual_table_log = self.prev_table_log;
                let r = self.compressor(input, four);
                self.prev_table = std::mem::replace(&mut self.c_table, keep_table);
                self.actual_table_log = keep_tl;
                r?;
                if self.out.len() >= want_size {
                    return Err(HuffError::Incompressible);
                }
                return Ok(true);
            }
        }

        // Use the new table.
        self.write_table()?;
        self.compressor(input, four)?;
        if self.out.len() >= want_size {
            return Err(HuffError::Incompressible);
        }
        // Move the current table into previous.
        std::mem::swap(&mut self.prev_table, &mut self.c_table);
        self.prev_table_log = self.actual_table_log;
        self.c_table.clear();
        Ok(false)
    }

    /// `compress4X`: four streams with a jump table.
    fn compress4x_do(&mut self, src: &[u8]) -> Result<(), HuffError> {
        if src.len() < 12 {
            return Err(HuffError::Incompressible);
        }
        let segment_size = src.len().div_ceil(4);
        let mut out = std::mem::take(&mut self.out);
        let offset_idx = out.len();
        out.extend_from_slice(&[0; 6]);
        let mut rest = src;
        for i in 0..4 {
            let todo = &rest[..rest.len().min(segment_size)];
            rest = &rest[todo.len()..];
            let idx = out.len();
            compress1x_do(&mut out, todo, &self.c_table, self.actual_table_log);
            let length = out.len() - idx;
            if length > u16::MAX as usize {
                self.out = out;
                return Err(HuffError::Incompressible);
            }
            if i < 3 {
                out[i * 2 + offset_idx] = length as u8;
                out[i * 2 + offset_idx + 1] = (length >> 8) as u8;
            }
        }
        self.out = out;
        Ok(())
    }

    /// `countSimple`: the histogram, its largest count, and whether the previous table
    /// can code every symbol present.
    fn count_simple(&mut self, input: &[u8]) -> (usize, bool) {
        // Four interleaved counters are faster than one and give the same sums.
        let mut c = [[0u32; 256]; 4];
        let mut chunks = input.chunks_exact(4);
        for q in &mut chunks {
            c[0][q[0] as usize] += 1;
            c[1][q[1] as usize] += 1;
            c[2][q[2] as usize] += 1;
            c[3][q[3] as usize] += 1;
        }
        for &v in chunks.remainder() {
            c[0][v as usize] += 1;
        }
        for (i, n) in self.count.iter_mut().enumerate() {
            *n += c[0][i] + c[1][i] + c[2][i] + c[3][i];
        }
        let mut m = 0u32;
        let mut reuse = true;
        if !self.prev_table.is_empty() {
            for (i, &v) in self.count.iter().enumerate() {
                if v > m {
                    m = v;
                }
                if v > 0 {
                    self.symbol_len = i as u16 + 1;
                    if i >= self.prev_table.len() || self.prev_table[i].n_bits == 0 {
                        reuse = false;
                    }
                }
            }
            return (m as usize, reuse);
        }
        for (i, &v) in self.count.iter().enumerate() {
            if v > m {
                m = v;
            }
            if v > 0 {
                self.symbol_len = i as u16 + 1;
            }
        }
        (m as usize, false)
    }

    fn can_use_table(&self, c: &[CTableEntry]) -> bool {
        if c.len() < self.symbol_len as usize {
            return false;
        }
        for (i, &v) in self.count[..self.symbol_len as usize].iter().enumerate() {
            if v != 0 && c[i].n_bits == 0 {
                return false;
            }
        }
        true
    }

    fn optimal_table_log(&mut self) {
        let mut table_log = self.table_log;
        // minTableLog
        let min_bits_src = high_bit32(self.remain as u32).wrapping_add(1);
        let min_bits_symbols =
            high_bit32(u32::from(self.symbol_len.wrapping_sub(1))).wrapping_add(2);
        let min_bits = if min_bits_src < min_bits_symbols {
            min_bits_src as u8
        } else {
            min_bits_symbols as u8
        };
        let max_bits_src = (high_bit32((self.remain as u32).wrapping_sub(1)) as u8).wrapping_sub(1);
        if max_bits_src < table_log {
            table_log = max_bits_src;
        }
        if min_bits > table_log {
            table_log = min_bits;
        }
        table_log = table_log.clamp(MIN_TABLELOG, TABLE_LOG_MAX);
        self.actual_table_log = table_log;
    }

    /// `buildCTable`.
    fn build_ctable(&mut self) -> Result<(), HuffError> {
        self.optimal_table_log();
        self.huff_sort();
        let sl = self.symbol_len as usize;
        self.c_table.clear();
        self.c_table.resize(sl, CTableEntry::default());

        let start_node = sl as i32;
        let mut non_null_rank = sl as i32 - 1;
        let mut node_nb = start_node;
        // huffNode[i] is nodes[i + 1]; huffNode0[i] is nodes[i].
        let nodes = &mut *self.nodes;
        macro_rules! hn {
            ($i:expr) => {
                nodes[($i) as usize + 1]
            };
        }
        while hn!(non_null_rank).count == 0 {
            non_null_rank -= 1;
        }
        let mut low_s = non_null_rank;
        let node_root = node_nb + low_s - 1;
        let mut low_n = node_nb;
        hn!(node_nb).count = hn!(low_s).count.wrapping_add(hn!(low_s - 1).count);
        hn!(low_s).parent = node_nb as u16;
        hn!(low_s - 1).parent = node_nb as u16;
        node_nb += 1;
        low_s -= 2;
        for n in node_nb..=node_root {
            hn!(n).count = 1 << 30;
        }
        nodes[0].count = 1 << 31;
        while node_nb <= node_root {
            let n1;
            if nodes[(low_s + 1) as usize].count < nodes[(low_n + 1) as usize].count {
                n1 = low_s;
                low_s -= 1;
            } else {
                n1 = low_n;
                low_n += 1;
            }
            let n2;
            if nodes[(low_s + 1) as usize].count < nodes[(low_n + 1) as usize].count {
                n2 = low_s;
                low_s -= 1;
            } else {
                n2 = low_n;
                low_n += 1;
            }
            hn!(node_nb).count = nodes[(n1 + 1) as usize]
                .count
                .wrapping_add(nodes[(n2 + 1) as usize].count);
            nodes[(n1 + 1) as usize].parent = node_nb as u16;
            nodes[(n2 + 1) as usize].parent = node_nb as u16;
            node_nb += 1;
        }
        hn!(node_root).nb_bits = 0;
        let mut n = node_root - 1;
        while n >= start_node {
            let p = hn!(n).parent as usize;
            hn!(n).nb_bits = nodes[p + 1].nb_bits.wrapping_add(1);
            n -= 1;
        }
        for n in 0..=non_null_rank {
            let p = hn!(n).parent as usize;
            hn!(n).nb_bits = nodes[p + 1].nb_bits.wrapping_add(1);
        }
        self.actual_table_log = self.set_max_height(non_null_rank as usize);
        let max_nb_bits = self.actual_table_log;
        if max_nb_bits > TABLE_LOG_MAX {
            return Err(HuffError::Other("maxNbBits > tableLogMax"));
        }
        let nodes = &*self.nodes;
        let mut nb_per_rank = [0u16; TABLE_LOG_MAX as usize + 1];
        let mut val_per_rank = [0u16; 16];
        for v in &nodes[1..non_null_rank as usize + 2] {
            nb_per_rank[v.nb_bits as usize] += 1;
        }
        {
            let mut min = 0u16;
            let mut n = max_nb_bits;
            while n > 0 {
                val_per_rank[n as usize] = min;
                min = min.wrapping_add(nb_per_rank[n as usize]);
                min >>= 1;
                n -= 1;
            }
        }
        for v in &nodes[1..non_null_rank as usize + 2] {
            self.c_table[v.symbol as usize].n_bits = v.nb_bits;
        }
        for e in self.c_table.iter_mut() {
            let nbits = (e.n_bits & 15) as usize;
            let v = val_per_rank[nbits];
            e.val = v;
            val_per_rank[nbits] = v.wrapping_add(1);
        }
        Ok(())
    }

    /// `huffSort`: symbols by decreasing count.
    fn huff_sort(&mut self) {
        #[derive(Clone, Copy, Default)]
        struct RankPos {
            base: u32,
            current: u32,
        }
        // nodes here is s.nodes[1:].
        let nodes = &mut self.nodes[1..];
        let mut rank = [RankPos::default(); 32];
        let sl = self.symbol_len as usize;
        for &v in &self.count[..sl] {
            let r = high_bit32(v.wrapping_add(1)) & 31;
            rank[r as usize].base += 1;
        }
        const MAX_BIT_LENGTH: usize = 18 + 1;
        for n in (1..=MAX_BIT_LENGTH).rev() {
            rank[n - 1].base += rank[n].base;
        }
        for r in rank[..MAX_BIT_LENGTH].iter_mut() {
            r.current = r.base;
        }
        for (n, &c) in self.count[..sl].iter().enumerate() {
            let r = (high_bit32(c.wrapping_add(1)).wrapping_add(1) & 31) as usize;
            let mut pos = rank[r].current;
            rank[r].current += 1;
            let mut prev = nodes[(pos.wrapping_sub(1) & HUFF_NODES_MASK) as usize];
            while pos > rank[r].base && c > prev.count {
                nodes[(pos & HUFF_NODES_MASK) as usize] = prev;
                pos -= 1;
                prev = nodes[(pos.wrapping_sub(1) & HUFF_NODES_MASK) as usize];
            }
            nodes[(pos & HUFF_NODES_MASK) as usize] = NodeElt {
                count: c,
                parent: 0,
                symbol: n as u8,
                nb_bits: 0,
            };
        }
    }

    /// `setMaxHeight`: limit code lengths to `actual_table_log`.
    fn set_max_height(&mut self, last_non_null: usize) -> u8 {
        let max_nb_bits = self.actual_table_log;
        let hn = &mut self.nodes[1..];
        let largest_bits = hn[last_non_null].nb_bits;
        if largest_bits <= max_nb_bits {
            return largest_bits;
        }
        let mut total_cost: i64 = 0;
        let base_cost: i64 = 1 << (largest_bits - max_nb_bits);
        let mut n = last_non_null as u32;
        while hn[n as usize].nb_bits > max_nb_bits {
            total_cost += base_cost - (1i64 << (largest_bits - hn[n as usize].nb_bits));
            hn[n as usize].nb_bits = max_nb_bits;
            n = n.wrapping_sub(1);
        }
        while hn[n as usize].nb_bits == max_nb_bits {
            n = n.wrapping_sub(1);
        }
        total_cost >>= largest_bits - max_nb_bits;
        const NO_SYMBOL: u32 = 0xF0F0F0F0;
        let mut rank_last = [NO_SYMBOL; TABLE_LOG_MAX as usize + 2];
        {
            let mut current_nb_bits = max_nb_bits;
            let mut pos = n as i64;
            while pos >= 0 {
                if hn[pos as usize].nb_bits >= current_nb_bits {
                    pos -= 1;
                    continue;
                }
                current_nb_bits = hn[pos as usize].nb_bits;
                rank_last[(max_nb_bits - current_nb_bits) as usize] = pos as u32;
                pos -= 1;
            }
        }
        while total_cost > 0 {
            let mut n_bits_to_decrease = (high_bit32(total_cost as u32) as u8).wrapping_add(1);
            while n_bits_to_decrease > 1 {
                let high_pos = rank_last[n_bits_to_decrease as usize];
                let low_pos = rank_last[n_bits_to_decrease as usize - 1];
                if high_pos == NO_SYMBOL {
                    n_bits_to_decrease -= 1;
                    continue;
                }
                if low_pos == NO_SYMBOL {
                    break;
                }
                let high_total = hn[high_pos as usize].count;
                let low_total = hn[low_pos as usize].count.wrapping_mul(2);
                if high_total <= low_total {
                    break;
                }
                n_bits_to_decrease -= 1;
            }
            while n_bits_to_decrease <= TABLE_LOG_MAX
                && rank_last[n_bits_to_decrease as usize] == NO_SYMBOL
            {
                n_bits_to_decrease += 1;
            }
            let nb = n_bits_to_decrease as usize;
            total_cost -= 1i64 << (n_bits_to_decrease - 1);
            if rank_last[nb - 1] == NO_SYMBOL {
                rank_last[nb - 1] = rank_last[nb];
            }
            let p = rank_last[nb] as usize;
            hn[p].nb_bits = hn[p].nb_bits.wrapping_add(1);
            if rank_last[nb] == 0 {
                rank_last[nb] = NO_SYMBOL;
            } else {
                rank_last[nb] -= 1;
                if hn[rank_last[nb] as usize].nb_bits
                    != max_nb_bits.wrapping_sub(n_bits_to_decrease)
                {
                    rank_last[nb] = NO_SYMBOL;
                }
            }
        }
        while total_cost < 0 {
            if rank_last[1] == NO_SYMBOL {
                while hn[n as usize].nb_bits == max_nb_bits {
                    n = n.wrapping_sub(1);
                }
                let i = n.wrapping_add(1) as usize;
                hn[i].nb_bits = hn[i].nb_bits.wrapping_sub(1);
                rank_last[1] = n.wrapping_add(1);
                total_cost += 1;
                continue;
            }
            let i = rank_last[1] as usize + 1;
            hn[i].nb_bits = hn[i].nb_bits.wrapping_sub(1);
            rank_last[1] += 1;
            total_cost += 1;
        }
        max_nb_bits
    }

    /// `cTable.write`: the table description (FSE-compressed weights, or 4 bits per
    /// weight), into `self.out`.
    fn write_table(&mut self) -> Result<(), HuffError> {
        let huff_log = self.actual_table_log;
        let max_symbol_value = (self.symbol_len.wrapping_sub(1)) as u8;
        let mut bits_to_weight = [0u8; TABLE_LOG_MAX as usize + 1];
        for n in 1..=huff_log {
            bits_to_weight[n as usize] = huff_log + 1 - n;
        }
        let hist = &mut self.fse.count;
        hist[..16].fill(0);
        for n in 0..max_symbol_value as usize {
            let v = bits_to_weight[self.c_table[n].n_bits as usize] & 15;
            self.huff_weight[n] = v;
            hist[v as usize] += 1;
        }
        if max_symbol_value >= 2 {
            let mut huff_max_cnt = 0u32;
            let mut huff_max = 0u8;
            for (i, &v) in hist[..16].iter().enumerate() {
                if v == 0 {
                    continue;
                }
                huff_max = i as u8;
                if v > huff_max_cnt {
                    huff_max_cnt = v;
                }
            }
            self.fse.histogram_finished(huff_max, huff_max_cnt as usize);
            self.fse.table_log = 6;
            if let Ok(b) = self
                .fse
                .compress(&self.huff_weight[..max_symbol_value as usize])
            {
                if b.len() < (self.symbol_len >> 1) as usize {
                    self.out.push(b.len() as u8);
                    self.out.extend_from_slice(&b);
                    return Ok(());
                }
            }
        }
        if max_symbol_value > (256 - 128) as u8 {
            return Err(HuffError::Incompressible);
        }
        self.out.push(128 | max_symbol_value.wrapping_sub(1));
        self.huff_weight[max_symbol_value as usize] = 0;
        let mut n = 0usize;
        while n < max_symbol_value as usize {
            self.out
                .push((self.huff_weight[n] << 4) | self.huff_weight[n + 1]);
            n += 2;
        }
        Ok(())
    }
}

/// `cTable.estimateSize`.
fn estimate_size(c: &[CTableEntry], hist: &[u32]) -> usize {
    let mut nb_bits = 7u32;
    for (i, v) in c[..hist.len()].iter().enumerate() {
        nb_bits = nb_bits.wrapping_add(u32::from(v.n_bits).wrapping_mul(hist[i]));
    }
    (nb_bits >> 3) as usize
}

/// `compress1xDo`: one Huffman stream of `src`, appended to `out`.
fn compress1x_do(out: &mut Vec<u8>, src: &[u8], ct: &[CTableEntry], actual_table_log: u8) {
    let mut full = [CTableEntry::default(); 256];
    full[..ct.len()].copy_from_slice(ct);
    let ct = &full;
    let mut bw = BitWriter::default();
    bw.reset(std::mem::take(out));
    bw.out.reserve(src.len() + 8);
    let mut n = src.len() & !3;
    for i in (1..=(src.len() & 3)).rev() {
        bw.enc_symbol(ct, src[n + i - 1]);
    }
    if actual_table_log <= 8 {
        while n >= 4 {
            n -= 4;
            let tmp = &src[n..n + 4];
            bw.flush32();
            bw.enc_two_symbols(ct, tmp[3], tmp[2]);
            bw.enc_two_symbols(ct, tmp[1], tmp[0]);
        }
    } else {
        while n >= 4 {
            n -= 4;
            let tmp = &src[n..n + 4];
            bw.flush32();
            bw.enc_two_symbols(ct, tmp[3], tmp[2]);
            bw.flush32();
            bw.enc_two_symbols(ct, tmp[1], tmp[0]);
        }
    }
    bw.close();
    *out = std::mem::take(&mut bw.out);
}

/// `highBit32`.
#[inline(always)]
fn high_bit32(v: u32) -> u32 {
    (32 - v.leading_zeros()).wrapping_sub(1)
}
