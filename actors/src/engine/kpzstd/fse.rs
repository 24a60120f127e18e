//! Ports `zstd/fse_encoder.go` and the encoder half of `zstd/fse_predefined.go`
//! (klauspost/compress 1.15.12): the FSE tables for the literal length, offset
//! and match length codes of a block's sequences section.

use std::sync::OnceLock;

use super::bitwriter::BitWriter;

const MAX_ENC_TABLE_LOG: u8 = 8;
const MIN_ENC_TABLELOG: u8 = 5;

/// `bits.Len32(v) - 1` as Go's `highBit` computes it (0 gives 0xFFFF_FFFF).
#[inline(always)]
pub(crate) fn high_bit(v: u32) -> u32 {
    (32 - v.leading_zeros()).wrapping_sub(1)
}

/// `tableStep`.
#[inline(always)]
pub(crate) fn table_step(table_size: u32) -> u32 {
    (table_size >> 1) + (table_size >> 3) + 3
}

/// `symbolTransform`.
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct SymbolTransform {
    pub delta_nb_bits: u32,
    pub delta_find_state: i16,
    pub out_bits: u8,
}

/// `cTable`, with Go's slices as fixed arrays (the encoder's table log is at most 8) and
/// the state table's current length.
#[derive(Clone)]
pub(crate) struct CTable {
    pub table_symbol: [u8; 256],
    pub state_table: [u16; 256],
    pub state_len: usize,
    pub symbol_tt: [SymbolTransform; 256],
}

impl Default for CTable {
    fn default() -> Self {
        CTable {
            table_symbol: [0; 256],
            state_table: [0; 256],
            state_len: 0,
            symbol_tt: [SymbolTransform::default(); 256],
        }
    }
}

/// `fseEncoder`.
#[derive(Clone)]
pub(crate) struct FseEncoder {
    pub symbol_len: u16,
    pub actual_table_log: u8,
    pub ct: CTable,
    pub max_count: usize,
    pub zero_bits: bool,
    pub clear_count: bool,
    pub use_rle: bool,
    pub pre_defined: bool,
    pub re_used: bool,
    pub rle_val: u8,
    pub max_bits: u8,
    pub count: [u32; 256],
    pub norm: [i16; 256],
}

impl Default for FseEncoder {
    fn default() -> Self {
        FseEncoder {
            symbol_len: 0,
            actual_table_log: 0,
            ct: CTable::default(),
            max_count: 0,
            zero_bits: false,
            clear_count: false,
            use_rle: false,
            pre_defined: false,
            re_used: false,
            rle_val: 0,
            max_bits: 0,
            count: [0; 256],
            norm: [0; 256],
        }
    }
}

const RTB_TABLE: [u32; 8] = [0, 473195, 504333, 520860, 550000, 700000, 750000, 830000];

/// Where a block's sequence section found an encoding error Go would return.
#[derive(Debug)]
pub(crate) struct FseError(pub &'static str);

impl FseEncoder {
    /// `HistogramFinished`.
    pub fn histogram_finished(&mut self, max_symbol: u8, max_count: usize) {
        self.max_count = max_count;
        self.symbol_len = u16::from(max_symbol) + 1;
        self.clear_count = max_count != 0;
    }

    /// `allocCtable`: the arrays are fixed; only the state table's length changes.
    fn alloc_ctable(&mut self) {
        self.ct.state_len = 1 << self.actual_table_log;
    }

    /// `buildCTable`.
    pub fn build_ctable(&mut self) -> Result<(), FseError> {
        let table_size = 1u32 << self.actual_table_log;
        let mut high_threshold = table_size - 1;
        let mut cumul = [0i16; 257];
        self.alloc_ctable();
        let sl = self.symbol_len as usize;
        {
            let ts = &mut self.ct.table_symbol;
            cumul[0] = 0;
            for u in 0..sl {
                let v = self.norm[u];
                if v == -1 {
                    cumul[u + 1] = cumul[u] + 1;
                    ts[high_threshold as usize] = u as u8;
                    high_threshold = high_threshold.wrapping_sub(1);
                } else {
                    cumul[u + 1] = cumul[u].wrapping_add(v);
                }
            }
            if cumul[sl] as u32 != table_size {
                return Err(FseError(
                    "internal error: expected cumul[s.symbolLen] == tableSize",
                ));
            }
            cumul[sl] = table_size as i16 + 1;
        }
        // Spread symbols.
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
                    self.ct.table_symbol[position as usize] = ui as u8;
                    position = (position + step) & table_mask;
                    while position > high_threshold {
                        position = (position + step) & table_mask;
                    }
                }
            }
            if position != 0 {
                return Err(FseError("position!=0"));
            }
        }
        // Build table.
        {
            let tsi = table_size as usize;
            for u in 0..tsi {
                let v = self.ct.table_symbol[u] as usize;
                self.ct.state_table[cumul[v] as usize] = (tsi + u) as u16;
                cumul[v] += 1;
            }
        }
        // Symbol transformation table.
        {
            let mut total = 0i16;
            let table_log = self.actual_table_log;
            let tl = (u32::from(table_log) << 16).wrapping_sub(1 << table_log);
            for i in 0..sl {
                let v = self.norm[i];
                let tt = &mut self.ct.symbol_tt[i];
                match v {
                    0 => {}
                    -1 | 1 => {
                        tt.delta_nb_bits = tl;
                        tt.delta_find_state = total - 1;
                        total += 1;
                    }
                    _ => {
                        let max_bits_out =
                            u32::from(table_log).wrapping_sub(high_bit((v - 1) as u32));
                        let min_state_plus = (v as u32) << max_bits_out;
                        tt.delta_nb_bits = (max_bits_out << 16).wrapping_sub(min_state_plus);
                        tt.delta_find_state = total - v;
                        total += v;
                    }
                }
            }
            if total as u32 != table_size {
                return Err(FseError("total mismatch"));
            }
        }
        Ok(())
    }

    /// `setRLE`.
    pub fn set_rle(&mut self, val: u8) {
        self.alloc_ctable();
        self.actual_table_log = 0;
        self.ct.state_len = 1;
        // Go's cState.init zeroes the single state when it starts the stream; nothing
        // reads it in between, so it is done here and init can take the table shared.
        self.ct.state_table[0] = 0;
        self.ct.symbol_tt[val as usize] = SymbolTransform::default();
        self.rle_val = val;
        self.use_rle = true;
    }

    /// `setBits`: `None` means the number of extra bits equals the code.
    pub fn set_bits(&mut self, transform: Option<&[u8]>) {
        if self.re_used || self.pre_defined {
            return;
        }
        if self.use_rle {
            match transform {
                None => {
                    self.ct.symbol_tt[self.rle_val as usize].out_bits = self.rle_val;
                    self.max_bits = self.rle_val;
                }
                Some(t) => {
                    self.max_bits = t[self.rle_val as usize];
                    self.ct.symbol_tt[self.rle_val as usize].out_bits = self.max_bits;
                }
            }
            return;
        }
        let sl = self.symbol_len as usize;
        match transform {
            None => {
                for i in 0..sl {
                    self.ct.symbol_tt[i].out_bits = i as u8;
                }
                self.max_bits = (self.symbol_len.wrapping_sub(1)) as u8;
            }
            Some(t) => {
                self.max_bits = 0;
                for (i, &v) in t[..sl].iter().enumerate() {
                    self.ct.symbol_tt[i].out_bits = v;
                    if v > self.max_bits {
                        self.max_bits = v;
                    }
                }
            }
        }
    }

    /// `normalizeCount`: normalize to the table size and build the tables.
    pub fn normalize_count(&mut self, length: usize) -> Result<(), FseError> {
        if self.re_used {
            return Ok(());
        }
        self.optimal_table_log(length);
        let table_log = self.actual_table_log;
        if self.max_count == length {
            self.use_rle = true;
            return Ok(());
        }
        self.use_rle = false;
        let sl = self.symbol_len as usize;
        normalize(&self.count[..sl], &mut self.norm[..sl], table_log, length).map_err(FseError)?;
        self.build_ctable()
    }

    /// `optimalTableLog`.
    fn optimal_table_log(&mut self, length: usize) {
        let mut table_log = MAX_ENC_TABLE_LOG;
        let min_bits_src = high_bit(length as u32).wrapping_add(1);
        let min_bits_symbols = high_bit(u32::from(self.symbol_len.wrapping_sub(1))).wrapping_add(2);
        let mut min_bits = min_bits_symbols as u8;
        if min_bits_src < min_bits_symbols {
            min_bits = min_bits_src as u8;
        }
        let max_bits_src = (high_bit((length as u32).wrapping_sub(1)) as u8).wrapping_sub(2);
        if max_bits_src < table_log {
            table_log = max_bits_src;
        }
        if min_bits > table_log {
            table_log = min_bits;
        }
        table_log = table_log.clamp(MIN_ENC_TABLELOG, MAX_ENC_TABLE_LOG);
        self.actual_table_log = table_log;
    }

    /// `writeCount`: the normalized counts as the table description.
    pub fn write_count(&self, out: &mut Vec<u8>) -> Result<(), FseError> {
        if self.use_rle {
            out.push(self.rle_val);
            return Ok(());
        }
        if self.pre_defined || self.re_used {
            return Ok(());
        }
        write_ncount(
            &self.norm,
            self.symbol_len,
            self.actual_table_log,
            MIN_ENC_TABLELOG,
            ((self.symbol_len as usize * self.actual_table_log as usize) >> 3) + 3 + 2,
            out,
        )
    }

    /// `bitCost`, in fixed point with `accuracy_log` fractional bits.
    #[inline]
    fn bit_cost(&self, symbol_value: u8, accuracy_log: u32) -> u32 {
        let tt = self.ct.symbol_tt[symbol_value as usize];
        let min_nb_bits = tt.delta_nb_bits >> 16;
        let threshold = (min_nb_bits.wrapping_add(1)) << 16;
        let table_size = 1u32 << self.actual_table_log;
        let delta_from_threshold =
            threshold.wrapping_sub(tt.delta_nb_bits.wrapping_add(table_size));
        let normalized = (delta_from_threshold << accuracy_log) >> self.actual_table_log;
        let bit_multiplier = 1u32 << accuracy_log;
        (min_nb_bits.wrapping_add(1))
            .wrapping_mul(bit_multiplier)
            .wrapping_sub(normalized)
    }

    /// `approxSize`: the cost in bits of `hist` with this table, or u32::MAX if it
    /// cannot represent it.
    pub fn approx_size(&self, hist: &[u32]) -> u32 {
        if (self.symbol_len as usize) < hist.len() {
            return u32::MAX;
        }
        if self.use_rle {
            return u32::MAX;
        }
        const K_ACCURACY_LOG: u32 = 8;
        let bad_cost = (u32::from(self.actual_table_log) + 1) << K_ACCURACY_LOG;
        let mut cost = 0u32;
        for (i, &v) in hist.iter().enumerate() {
            if v == 0 {
                continue;
            }
            if self.norm[i] == 0 {
                return u32::MAX;
            }
            let bc = self.bit_cost(i as u8, K_ACCURACY_LOG);
            if bc > bad_cost {
                return u32::MAX;
            }
            cost = cost.wrapping_add(v.wrapping_mul(bc));
        }
        cost >> K_ACCURACY_LOG
    }

    /// `maxHeaderSize`, in bits.
    pub fn max_header_size(&self) -> u32 {
        if self.pre_defined {
            return 0;
        }
        if self.use_rle {
            return 8;
        }
        (((u32::from(self.symbol_len) * u32::from(self.actual_table_log)) >> 3) + 3) * 8
    }
}

/// The shared body of zstd's `fseEncoder.writeCount` and fse's `Scratch.writeCount`.
pub(crate) fn write_ncount(
    norm: &[i16; 256],
    symbol_len: u16,
    table_log: u8,
    min_tablelog: u8,
    max_header_size: usize,
    dst: &mut Vec<u8>,
) -> Result<(), FseError> {
    let table_size = 1i32 << table_log;
    let mut previous0 = false;
    let mut charnum = 0u16;
    let mut bit_stream = u32::from(table_log - min_tablelog);
    let mut bit_count = 4u32;
    let mut remaining = (table_size + 1) as i16;
    let mut threshold = table_size as i16;
    let mut nb_bits = u32::from(table_log) + 1;
    let mut out = vec![0u8; max_header_size];
    let mut out_p = 0usize;
    #[inline(always)]
    fn shl(v: u32, n: u32) -> u32 {
        if n >= 32 {
            0
        } else {
            v << n
        }
    }
    while remaining > 1 {
        if previous0 {
            let mut start = charnum;
            while norm[charnum as usize] == 0 {
                charnum += 1;
            }
            while charnum >= start + 24 {
                start += 24;
                bit_stream = bit_stream.wrapping_add(shl(0xFFFF, bit_count));
                out[out_p] = bit_stream as u8;
                out[out_p + 1] = (bit_stream >> 8) as u8;
                out_p += 2;
                bit_stream >>= 16;
            }
            while charnum >= start + 3 {
                start += 3;
                bit_stream = bit_stream.wrapping_add(shl(3, bit_count));
                bit_count += 2;
            }
            bit_stream = bit_stream.wrapping_add(shl(u32::from(charnum - start), bit_count));
            bit_count += 2;
            if bit_count > 16 {
                out[out_p] = bit_stream as u8;
                out[out_p + 1] = (bit_stream >> 8) as u8;
                out_p += 2;
                bit_stream >>= 16;
                bit_count -= 16;
            }
        }
        let mut count = norm[charnum as usize];
        charnum += 1;
        let max = (2 * threshold - 1) - remaining;
        if count < 0 {
            remaining += count;
        } else {
            remaining -= count;
        }
        count += 1;
        if count >= threshold {
            count += max;
        }
        bit_stream = bit_stream.wrapping_add(shl(count as u16 as u32, bit_count));
        bit_count += nb_bits;
        if count < max {
            bit_count -= 1;
        }
        previous0 = count == 1;
        if remaining < 1 {
            return Err(FseError("internal error: remaining < 1"));
        }
        while remaining < threshold {
            nb_bits -= 1;
            threshold >>= 1;
        }
        if bit_count > 16 {
            out[out_p] = bit_stream as u8;
            out[out_p + 1] = (bit_stream >> 8) as u8;
            out_p += 2;
            bit_stream >>= 16;
            bit_count -= 16;
        }
    }
    if out_p + 2 > out.len() {
        return Err(FseError("internal error: header overflow"));
    }
    out[out_p] = bit_stream as u8;
    out[out_p + 1] = (bit_stream >> 8) as u8;
    out_p += bit_count.div_ceil(8) as usize;
    if charnum > symbol_len {
        return Err(FseError("internal error: charnum > s.symbolLen"));
    }
    dst.extend_from_slice(&out[..out_p]);
    Ok(())
}

/// `cState`: the compression state of one FSE stream.
#[derive(Clone, Copy)]
pub(crate) struct CState {
    pub state: u16,
}

impl CState {
    /// `init`: the state for the first symbol (RLE tables have a single state 0).
    #[inline]
    pub fn init(ct: &CTable, first: SymbolTransform) -> CState {
        if ct.state_len == 1 {
            return CState { state: 0 };
        }
        let nb_bits_out = (first.delta_nb_bits.wrapping_add(1 << 15)) >> 16;
        let im = ((nb_bits_out << 16).wrapping_sub(first.delta_nb_bits)) as i32;
        let lu = (im >> nb_bits_out) + i32::from(first.delta_find_state);
        CState {
            state: ct.state_table[lu as usize],
        }
    }

    /// `flush`: the final state, which the decoder starts from.
    #[inline]
    pub fn flush(&self, bw: &mut BitWriter, table_log: u8) {
        bw.flush32();
        bw.add_bits16_nc(self.state, table_log);
    }
}

/// `llBitsTable`: extra bits per literal length code.
pub(crate) const LL_BITS_TABLE: [u8; 36] = [
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 4, 6, 7, 8, 9, 10, 11,
    12, 13, 14, 15, 16,
];

/// `mlBitsTable`: extra bits per match length code.
pub(crate) const ML_BITS_TABLE: [u8; 53] = [
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    1, 1, 1, 1, 2, 2, 3, 3, 4, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
];

/// `fsePredefEnc`: the predefined literal length, offset and match length encoders.
pub(crate) fn predefined() -> &'static [FseEncoder; 3] {
    static PREDEF: OnceLock<[FseEncoder; 3]> = OnceLock::new();
    PREDEF.get_or_init(|| {
        let ll: &[i16] = &[
            4, 3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 2, 1, 1,
            1, 1, 1, -1, -1, -1, -1,
        ];
        let of: &[i16] = &[
            1, 1, 1, 1, 1, 1, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1,
            -1,
        ];
        let ml: &[i16] = &[
            1, 4, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
            1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1, -1, -1, -1,
        ];
        let make = |norm: &[i16], log: u8, bits: Option<&[u8]>| {
            let mut e = FseEncoder::default();
            e.norm[..norm.len()].copy_from_slice(norm);
            e.symbol_len = norm.len() as u16;
            e.actual_table_log = log;
            e.build_ctable().expect("predefined table");
            e.set_bits(bits);
            e.pre_defined = true;
            e
        };
        [
            make(ll, 6, Some(&LL_BITS_TABLE)),
            make(of, 5, None),
            make(ml, 6, Some(&ML_BITS_TABLE)),
        ]
    })
}

/// `normalizeCount` of Go's `fse` package and of zstd's `fseEncoder` (the same code twice in
/// Go): scale the symbols' `count` (summing to `total`) to `1 << table_log`, into `norm` (-1
/// marks a low-probability symbol). Both slices are `symbol_len` long.
pub(super) fn normalize(
    count: &[u32],
    norm: &mut [i16],
    table_log: u8,
    total: usize,
) -> Result<(), &'static str> {
    let scale = 62 - u64::from(table_log);
    let step = (1u64 << 62) / total as u64;
    let v_step = 1u64 << (scale - 20);
    let mut still_to_distribute = 1i16 << table_log;
    let mut largest = 0usize;
    let mut largest_p = 0i16;
    let low_threshold = (total >> table_log) as u32;
    for (i, &cnt) in count.iter().enumerate() {
        if cnt == 0 {
            norm[i] = 0;
            continue;
        }
        if cnt <= low_threshold {
            norm[i] = -1;
            still_to_distribute -= 1;
        } else {
            let mut proba = (u64::from(cnt).wrapping_mul(step) >> scale) as i16;
            if proba < 8 {
                let rest_to_beat = v_step.wrapping_mul(u64::from(RTB_TABLE[proba as usize]));
                let v = u64::from(cnt)
                    .wrapping_mul(step)
                    .wrapping_sub((proba as u64) << scale);
                if v > rest_to_beat {
                    proba += 1;
                }
            }
            if proba > largest_p {
                largest_p = proba;
                largest = i;
            }
            norm[i] = proba;
            still_to_distribute = still_to_distribute.wrapping_sub(proba);
        }
    }
    if -still_to_distribute >= (norm[largest] >> 1) {
        return normalize2(count, norm, table_log, total);
    }
    norm[largest] += still_to_distribute;
    Ok(())
}

/// `normalizeCount2`: the secondary method, for corner cases.
fn normalize2(
    count: &[u32],
    norm: &mut [i16],
    table_log: u8,
    total: usize,
) -> Result<(), &'static str> {
    const NOT_YET_ASSIGNED: i16 = -2;
    let symbol_len = count.len() as u32;
    let mut distributed = 0u32;
    let mut total = total as u32;
    let low_threshold = total >> table_log;
    let mut low_one = total.wrapping_mul(3) >> (table_log + 1);
    for (i, &cnt) in count.iter().enumerate() {
        if cnt == 0 {
            norm[i] = 0;
            continue;
        }
        if cnt <= low_threshold {
            norm[i] = -1;
            distributed += 1;
            total = total.wrapping_sub(cnt);
            continue;
        }
        if cnt <= low_one {
            norm[i] = 1;
            distributed += 1;
            total = total.wrapping_sub(cnt);
            continue;
        }
        norm[i] = NOT_YET_ASSIGNED;
    }
    let mut to_distribute = (1u32 << table_log).wrapping_sub(distributed);
    if total / to_distribute > low_one {
        low_one = total.wrapping_mul(3) / to_distribute.wrapping_mul(2);
        for (i, &cnt) in count.iter().enumerate() {
            if norm[i] == NOT_YET_ASSIGNED && cnt <= low_one {
                norm[i] = 1;
                distributed += 1;
                total = total.wrapping_sub(cnt);
            }
        }
        to_distribute = (1u32 << table_log).wrapping_sub(distributed);
    }
    if distributed == symbol_len + 1 {
        let mut max_v = 0usize;
        let mut max_c = 0u32;
        for (i, &cnt) in count.iter().enumerate() {
            if cnt > max_c {
                max_v = i;
                max_c = cnt;
            }
        }
        norm[max_v] = norm[max_v].wrapping_add(to_distribute as i16);
        return Ok(());
    }
    if total == 0 {
        let mut i = 0u32;
        while to_distribute > 0 {
            if norm[i as usize] > 0 {
                to_distribute -= 1;
                norm[i as usize] += 1;
            }
            i = (i + 1) % symbol_len;
        }
        return Ok(());
    }
    let v_step_log = 62 - u64::from(table_log);
    let mid = (1u64 << (v_step_log - 1)) - 1;
    let r_step = ((1u64 << v_step_log)
        .wrapping_mul(u64::from(to_distribute))
        .wrapping_add(mid))
        / u64::from(total);
    let mut tmp_total = mid;
    for (i, &cnt) in count.iter().enumerate() {
        if norm[i] == NOT_YET_ASSIGNED {
            let end = tmp_total.wrapping_add(u64::from(cnt).wrapping_mul(r_step));
            let s_start = (tmp_total >> v_step_log) as u32;
            let s_end = (end >> v_step_log) as u32;
            let weight = s_end.wrapping_sub(s_start);
            if weight < 1 {
                return Err("weight < 1");
            }
            norm[i] = weight as i16;
            tmp_total = end;
        }
    }
    Ok(())
}
