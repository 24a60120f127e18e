//! Ports the compressor of `fse/compress.go` (klauspost/compress 1.15.12),
//! which huff0 uses to compress the weights of a Huffman table description.

use super::bitwriter::BitWriter;
use super::fse::{high_bit, normalize, table_step, write_ncount};

const MAX_TABLE_LOG: u8 = 12;
const MIN_TABLELOG: u8 = 5;

#[derive(Clone, Copy, Default)]
struct SymbolTransform {
    delta_find_state: i32,
    delta_nb_bits: u32,
}

/// Why `fse.Compress` gave up (every outcome makes huff0 fall back to raw weights).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FseFail {
    Incompressible,
    Rle,
    Internal,
}

/// `fse.Scratch`, the parts the compressor uses.
pub(crate) struct FseScratch {
    pub count: [u32; 256],
    norm: [i16; 256],
    symbol_len: u16,
    actual_table_log: u8,
    max_count: usize,
    clear_count: bool,
    zero_bits: bool,
    pub table_log: u8,
    table_symbol: Vec<u8>,
    state_table: Vec<u16>,
    symbol_tt: Vec<SymbolTransform>,
    bw: BitWriter,
}

impl Default for FseScratch {
    fn default() -> Self {
        FseScratch {
            count: [0; 256],
            norm: [0; 256],
            symbol_len: 0,
            actual_table_log: 0,
            max_count: 0,
            clear_count: false,
            zero_bits: false,
            table_log: 0,
            table_symbol: vec![0; 1 << MAX_TABLE_LOG],
            state_table: vec![0; 1 << MAX_TABLE_LOG],
            symbol_tt: vec![SymbolTransform::default(); 256],
            bw: BitWriter::default(),
        }
    }
}

impl FseScratch {
    /// `HistogramFinished`.
    pub fn histogram_finished(&mut self, max_symbol: u8, max_count: usize) {
        self.max_count = max_count;
        self.symbol_len = u16::from(max_symbol) + 1;
        self.clear_count = max_count != 0;
    }

    /// `fse.Compress`: the table description and the FSE stream of `input`, appended
    /// to a fresh buffer that is returned.
    pub fn compress(&mut self, input: &[u8]) -> Result<Vec<u8>, FseFail> {
        if input.len() <= 1 {
            return Err(FseFail::Incompressible);
        }
        // prepare
        if self.table_log == 0 {
            self.table_log = 11;
        }
        if self.table_log > MAX_TABLE_LOG {
            return Err(FseFail::Internal);
        }
        if self.clear_count && self.max_count == 0 {
            self.count = [0; 256];
            self.clear_count = false;
        }
        let mut max_count = self.max_count;
        if max_count == 0 {
            max_count = self.count_simple(input);
        }
        self.clear_count = true;
        self.max_count = 0;
        if max_count == input.len() {
            return Err(FseFail::Rle);
        }
        if max_count == 1 || max_count < (input.len() >> 7) {
            return Err(FseFail::Incompressible);
        }
        let remain = input.len();
        self.optimal_table_log(remain);
        self.normalize_count(remain)?;
        let mut out = Vec::with_capacity(remain + 16);
        let mhs = (((self.symbol_len as usize) * (self.actual_table_log as usize)) >> 3) + 3;
        write_ncount(
            &self.norm,
            self.symbol_len,
            self.actual_table_log,
            MIN_TABLELOG,
            mhs,
            &mut out,
        )
        .map_err(|_| FseFail::Internal)?;
        self.build_ctable()?;
        let out = self.compress_stream(input, out)?;
        if out.len() >= input.len() {
            return Err(FseFail::Incompressible);
        }
        Ok(out)
    }

    fn count_simple(&mut self, input: &[u8]) -> usize {
        for &v in input {
            self.count[v as usize] += 1;
        }
        let mut m = 0u32;
        for (i, &v) in self.count.iter().enumerate() {
            if v > m {
                m = v;
            }
            if v > 0 {
                self.symbol_len = i as u16 + 1;
            }
        }
        m as usize
    }

    fn optimal_table_log(&mut self, remain: usize) {
        let mut table_log = self.table_log;
        // minTableLog
        let min_bits_src = high_bit((remain as u32).wrapping_sub(1)).wrapping_add(1);
        let min_bits_symbols = high_bit(u32::from(self.symbol_len.wrapping_sub(1))).wrapping_add(2);
        let min_bits = if min_bits_src < min_bits_symbols {
            min_bits_src as u8
        } else {
            min_bits_symbols as u8
        };
        let max_bits_src = (high_bit((remain as u32).wrapping_sub(1)) as u8).wrapping_sub(2);
        if max_bits_src < table_log {
            table_log = max_bits_src;
        }
        if min_bits > table_log {
            table_log = min_bits;
        }
        table_log = table_log.clamp(MIN_TABLELOG, MAX_TABLE_LOG);
        self.actual_table_log = table_log;
    }

    fn normalize_count(&mut self, remain: usize) -> Result<(), FseFail> {
        let sl = self.symbol_len as usize;
        normalize(
            &self.count[..sl],
            &mut self.norm[..sl],
            self.actual_table_log,
            remain,
        )
        .map_err(|_| FseFail::Internal)
    }

    fn build_ctable(&mut self) -> Result<(), FseFail> {
        let table_size = 1u32 << self.actual_table_log;
        let mut high_threshold = table_size - 1;
        let mut cumul = [0i16; 257];
        let sl = self.symbol_len as usize;
        for u in 0..sl {
            let v = self.norm[u];
            if v == -1 {
                cumul[u + 1] = cumul[u] + 1;
                self.table_symbol[high_threshold as usize] = u as u8;
                high_threshold = high_threshold.wrapping_sub(1);
            } else {
                cumul[u + 1] = cumul[u].wrapping_add(v);
            }
        }
        if cumul[sl] as u32 != table_size {
            return Err(FseFail::Internal);
        }
        cumul[sl] = table_size as i16 + 1;
        self.zero_bits = false;
        {
            let step = table_step(table_size);
            let table_mask = table_size - 1;
            let mut position = 0u32;
            let large_limit = 1i16 << (self.actual_table_log - 1);
            for (ui, &v) in self.norm[..sl].iter().enumerate() {
                if v > large_limit {
                    self.zero_bits = true;
                }
                for _ in 0..v.max(0) {
                    self.table_symbol[position as usize] = ui as u8;
                    position = (position + step) & table_mask;
                    while position > high_threshold {
                        position = (position + step) & table_mask;
                    }
                }
            }
            if position != 0 {
                return Err(FseFail::Internal);
            }
        }
        let tsi = table_size as usize;
        for u in 0..tsi {
            let v = self.table_symbol[u] as usize;
            self.state_table[cumul[v] as usize] = (tsi + u) as u16;
            cumul[v] += 1;
        }
        let mut total = 0i16;
        let table_log = self.actual_table_log;
        let tl = (u32::from(table_log) << 16).wrapping_sub(1 << table_log);
        for i in 0..sl {
            let v = self.norm[i];
            let tt = &mut self.symbol_tt[i];
            match v {
                0 => {}
                -1 | 1 => {
                    tt.delta_nb_bits = tl;
                    tt.delta_find_state = i32::from(total - 1);
                    total += 1;
                }
                _ => {
                    let max_bits_out = u32::from(table_log).wrapping_sub(high_bit((v - 1) as u32));
                    let min_state_plus = (v as u32) << max_bits_out;
                    tt.delta_nb_bits = (max_bits_out << 16).wrapping_sub(min_state_plus);
                    tt.delta_find_state = i32::from(total - v);
                    total += v;
                }
            }
        }
        if total as u32 != table_size {
            return Err(FseFail::Internal);
        }
        Ok(())
    }

    /// `compress`: the two interleaved FSE states over `src`, back to front.
    fn compress_stream(&mut self, src: &[u8], out: Vec<u8>) -> Result<Vec<u8>, FseFail> {
        if src.len() <= 2 {
            return Err(FseFail::Internal);
        }
        let tt = &self.symbol_tt;
        let st = &self.state_table;
        let bw = &mut self.bw;
        bw.reset(out);
        let init = |first: SymbolTransform| -> u16 {
            let nb_bits_out = first.delta_nb_bits.wrapping_add(1 << 15) >> 16;
            let im = ((nb_bits_out << 16).wrapping_sub(first.delta_nb_bits)) as i32;
            let lu = (im >> nb_bits_out) + first.delta_find_state;
            st[lu as usize]
        };
        #[inline(always)]
        fn encode(bw: &mut BitWriter, st: &[u16], state: &mut u16, t: SymbolTransform, zero: bool) {
            let nb_bits_out = (u32::from(*state).wrapping_add(t.delta_nb_bits)) >> 16;
            let dst_state = i32::from(*state >> (nb_bits_out & 15)) + t.delta_find_state;
            if zero {
                bw.add_bits16_zero_nc(*state, nb_bits_out as u8);
            } else {
                bw.add_bits16_nc(*state, nb_bits_out as u8);
            }
            *state = st[dst_state as usize];
        }
        let mut ip = src.len();
        let (mut c1, mut c2);
        if ip & 1 == 1 {
            c1 = init(tt[src[ip - 1] as usize]);
            c2 = init(tt[src[ip - 2] as usize]);
            encode(bw, st, &mut c1, tt[src[ip - 3] as usize], true);
            ip -= 3;
        } else {
            c2 = init(tt[src[ip - 1] as usize]);
            c1 = init(tt[src[ip - 2] as usize]);
            ip -= 2;
        }
        if ip & 2 != 0 {
            encode(bw, st, &mut c2, tt[src[ip - 1] as usize], true);
            encode(bw, st, &mut c1, tt[src[ip - 2] as usize], true);
            ip -= 2;
        }
        let zero = self.zero_bits;
        let small = self.actual_table_log <= 8;
        while ip >= 4 {
            bw.flush32();
            let (v3, v2, v1, v0) = (src[ip - 4], src[ip - 3], src[ip - 2], src[ip - 1]);
            encode(bw, st, &mut c2, tt[v0 as usize], zero);
            encode(bw, st, &mut c1, tt[v1 as usize], zero);
            if !small {
                bw.flush32();
            }
            encode(bw, st, &mut c2, tt[v2 as usize], zero);
            encode(bw, st, &mut c1, tt[v3 as usize], zero);
            ip -= 4;
        }
        let tl = self.actual_table_log;
        for c in [c2, c1] {
            bw.flush32();
            bw.add_bits16_nc(c, tl);
            bw.flush();
        }
        bw.close();
        Ok(std::mem::take(&mut bw.out))
    }
}
