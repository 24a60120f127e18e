//! Tokens (literals and matches) and their histograms, as in `token.go`.

pub(super) const LENGTH_SHIFT: u32 = 22;
pub(super) const OFFSET_MASK: u32 = (1 << LENGTH_SHIFT) - 1;
pub(super) const MATCH_TYPE: u32 = 1 << 30;
pub(super) const MATCH_OFFSET_ONLY_MASK: u32 = 0xffff;
pub(super) const END_BLOCK_MARKER: usize = 256;
pub(super) const LITERAL_COUNT: usize = 286;
pub(super) const OFFSET_CODE_COUNT: usize = 30;
pub(super) const MAX_STORE_BLOCK_SIZE: usize = 65535;
pub(super) const BASE_MATCH_LENGTH: i32 = 3;

/// Extra bits of each length code (code = symbol - 257).
pub(super) static LENGTH_EXTRA_BITS: [u8; 32] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0, 0, 0, 0,
];

/// Base length (minus 3) of each length code.
pub(super) static LENGTH_BASE: [u8; 32] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128,
    160, 192, 224, 255, 0, 0, 0,
];

/// Extra bits of each offset code.
pub(super) static OFFSET_EXTRA_BITS: [i8; 32] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13, 14, 14,
];

/// `offsetCombined`: extra bit count | (offset base << 8) for codes that have extra bits.
pub(super) static OFFSET_COMBINED: [u32; 32] = offset_combined();

const fn offset_combined() -> [u32; 32] {
    const BASE: [u32; 32] = [
        0x000000, 0x000001, 0x000002, 0x000003, 0x000004, 0x000006, 0x000008, 0x00000c, 0x000010,
        0x000018, 0x000020, 0x000030, 0x000040, 0x000060, 0x000080, 0x0000c0, 0x000100, 0x000180,
        0x000200, 0x000300, 0x000400, 0x000600, 0x000800, 0x000c00, 0x001000, 0x001800, 0x002000,
        0x003000, 0x004000, 0x006000, 0x008000, 0x00c000,
    ];
    let mut out = [0u32; 32];
    let mut i = 0;
    while i < 32 {
        if !(OFFSET_EXTRA_BITS[i] == 0 || BASE[i] > 0x006000) {
            out[i] = OFFSET_EXTRA_BITS[i] as u32 | (BASE[i] << 8);
        }
        i += 1;
    }
    out
}

/// Length code for `length - 3`.
#[rustfmt::skip]
pub(super) static LENGTH_CODES: [u8; 256] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 9, 9, 10, 10, 11, 11,
    12, 12, 12, 12, 13, 13, 13, 13, 14, 14, 14, 14, 15, 15, 15, 15,
    16, 16, 16, 16, 16, 16, 16, 16, 17, 17, 17, 17, 17, 17, 17, 17,
    18, 18, 18, 18, 18, 18, 18, 18, 19, 19, 19, 19, 19, 19, 19, 19,
    20, 20, 20, 20, 20, 20, 20, 20, 20, 20, 20, 20, 20, 20, 20, 20,
    21, 21, 21, 21, 21, 21, 21, 21, 21, 21, 21, 21, 21, 21, 21, 21,
    22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22, 22,
    23, 23, 23, 23, 23, 23, 23, 23, 23, 23, 23, 23, 23, 23, 23, 23,
    24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24,
    24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24,
    25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25,
    25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25,
    26, 26, 26, 26, 26, 26, 26, 26, 26, 26, 26, 26, 26, 26, 26, 26,
    26, 26, 26, 26, 26, 26, 26, 26, 26, 26, 26, 26, 26, 26, 26, 26,
    27, 27, 27, 27, 27, 27, 27, 27, 27, 27, 27, 27, 27, 27, 27, 27,
    27, 27, 27, 27, 27, 27, 27, 27, 27, 27, 27, 27, 27, 27, 27, 28,
];

/// Offset code for `offset - 1 < 256`; for larger offsets `OFFSET_CODES[(off >> 7) as u8] + 14`.
#[rustfmt::skip]
pub(super) static OFFSET_CODES: [u32; 256] = [
    0, 1, 2, 3, 4, 4, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7,
    8, 8, 8, 8, 8, 8, 8, 8, 9, 9, 9, 9, 9, 9, 9, 9,
    10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10,
    11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11,
    12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12,
    12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12,
    13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13,
    13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13,
    14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14,
    14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14,
    14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14,
    14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14, 14,
    15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15,
    15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15,
    15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15,
    15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15,
];

/// `offsetCode`: the offset code of `off` (= distance - 1). Like Go, an
/// `off` of 32768 (never produced) wraps through `as u8`.
#[inline(always)]
pub(super) fn offset_code(off: u32) -> u32 {
    if off < 256 {
        OFFSET_CODES[off as usize]
    } else {
        OFFSET_CODES[(off >> 7) as u8 as usize] + 14
    }
}

/// `lengthCodes1[x]`: the length code plus one, i.e. the `extra_hist` slot.
#[inline(always)]
fn length_codes1(xl: u8) -> usize {
    LENGTH_CODES[xl as usize] as usize + 1
}

/// The queued tokens of one deflate block plus their histograms.
pub(super) struct Tokens {
    /// Histogram of symbols 256.. (EOB at 0, length codes at 1..).
    pub extra_hist: [u16; 32],
    pub off_hist: [u16; 32],
    pub lit_hist: [u16; 256],
    pub n: usize,
    pub tokens: Box<[u32]>,
    /// klauspost before 1.15.0: a match longer than 258 is always cut into pieces of 255 (the
    /// remainder may then be as short as 3), not into 258s while more than 261 remain.
    pub split_255: bool,
}

impl Tokens {
    pub fn new() -> Self {
        Tokens {
            extra_hist: [0; 32],
            off_hist: [0; 32],
            lit_hist: [0; 256],
            n: 0,
            tokens: vec![0u32; MAX_STORE_BLOCK_SIZE + 1].into_boxed_slice(),
            split_255: false,
        }
    }

    pub fn reset(&mut self) {
        if self.n == 0 {
            return;
        }
        self.n = 0;
        self.lit_hist = [0; 256];
        self.extra_hist = [0; 32];
        self.off_hist = [0; 32];
    }

    #[inline(always)]
    pub fn add_literal(&mut self, lit: u8) {
        self.tokens[self.n] = lit as u32;
        self.lit_hist[lit as usize] = self.lit_hist[lit as usize].wrapping_add(1);
        self.n += 1;
    }

    #[inline(always)]
    pub fn emit_literals(&mut self, lits: &[u8]) {
        let toks = &mut self.tokens[self.n..self.n + lits.len()];
        for (t, &v) in toks.iter_mut().zip(lits) {
            *t = v as u32;
            self.lit_hist[v as usize] = self.lit_hist[v as usize].wrapping_add(1);
        }
        self.n += lits.len();
    }

    /// `AddMatch`: `xlength` is length - 3, `xoffset` is distance - 1.
    #[inline(always)]
    pub fn add_match(&mut self, xlength: u32, xoffset: u32) {
        let oc = offset_code(xoffset);
        let xoffset = xoffset | (oc << 16);
        let e = &mut self.extra_hist[length_codes1(xlength as u8)];
        *e = e.wrapping_add(1);
        let o = &mut self.off_hist[(oc & 31) as usize];
        *o = o.wrapping_add(1);
        self.tokens[self.n] = MATCH_TYPE | (xlength << LENGTH_SHIFT) | xoffset;
        self.n += 1;
    }

    /// `AddMatchLong`: `xlength` is the full length (may exceed 258), `xoffset` is distance - 1.
    #[inline(always)]
    pub fn add_match_long(&mut self, mut xlength: i32, xoffset: u32) {
        let oc = offset_code(xoffset);
        let xoffset = xoffset | (oc << 16);
        while xlength > 0 {
            let mut xl = xlength;
            if xl > 258 {
                xl = if xl > 258 + BASE_MATCH_LENGTH && !self.split_255 {
                    258
                } else {
                    258 - BASE_MATCH_LENGTH
                };
            }
            xlength -= xl;
            xl -= BASE_MATCH_LENGTH;
            let e = &mut self.extra_hist[length_codes1(xl as u8)];
            *e = e.wrapping_add(1);
            let o = &mut self.off_hist[(oc & 31) as usize];
            *o = o.wrapping_add(1);
            self.tokens[self.n] = MATCH_TYPE | ((xl as u32) << LENGTH_SHIFT) | xoffset;
            self.n += 1;
        }
    }

    /// `Fill` (klauspost before 1.14.0): every unused literal, length and offset code counted
    /// once, so the block's table can code any later block. Returns how many literal and
    /// length entries it set (what `Fill` adds to `nLits`).
    pub fn fill(&mut self) -> usize {
        if self.n == 0 {
            return 0;
        }
        let mut filled = 0;
        for v in self
            .lit_hist
            .iter_mut()
            .chain(&mut self.extra_hist[..LITERAL_COUNT - 256])
        {
            if *v == 0 {
                *v = 1;
                filled += 1;
            }
        }
        for v in self.off_hist[..OFFSET_CODE_COUNT].iter_mut() {
            if *v == 0 {
                *v = 1;
            }
        }
        filled
    }

    pub fn add_eob(&mut self) {
        self.tokens[self.n] = END_BLOCK_MARKER as u32;
        self.extra_hist[0] = self.extra_hist[0].wrapping_add(1);
        self.n += 1;
    }

    /// `EstimatedBits`: an estimate of the optimal encoded size of the block in bits.
    pub fn estimated_bits(&self) -> i64 {
        self.estimated_bits_of(self.n, true)
    }

    /// [`Tokens::estimated_bits`] with literal probabilities taken over `total` symbols
    /// (before 1.14.0: `nLits`, see [`Tokens::fill`]); before 1.12.3 each symbol's cost was
    /// not clamped to 1..15 bits (`clamp` false).
    pub fn estimated_bits_of(&self, total: usize, clamp: bool) -> i64 {
        let at_least_one = if clamp { at_least_one } else { |v| v };
        let mut shannon = 0f32;
        let mut bits: i64 = 0;
        let mut n_matches: i64 = 0;
        if total > 0 {
            let inv_total = 1.0f32 / total as f32;
            for &v in self.lit_hist.iter() {
                if v > 0 {
                    let n = v as f32;
                    shannon += at_least_one(-m_fast_log2(n * inv_total)) * n;
                }
            }
            shannon += 15.0;
            for (i, &v) in self.extra_hist[1..LITERAL_COUNT - 256].iter().enumerate() {
                if v > 0 {
                    let n = v as f32;
                    shannon += at_least_one(-m_fast_log2(n * inv_total)) * n;
                    bits += LENGTH_EXTRA_BITS[i & 31] as i64 * v as i64;
                    n_matches += v as i64;
                }
            }
        }
        if n_matches > 0 {
            let inv_total = 1.0f32 / n_matches as f32;
            for (i, &v) in self.off_hist[..OFFSET_CODE_COUNT].iter().enumerate() {
                if v > 0 {
                    let n = v as f32;
                    shannon += at_least_one(-m_fast_log2(n * inv_total)) * n;
                    bits += OFFSET_EXTRA_BITS[i & 31] as i64 * v as i64;
                }
            }
        }
        shannon as i64 + bits
    }
}

#[inline]
pub(super) fn at_least_one(v: f32) -> f32 {
    v.clamp(1.0, 15.0)
}

/// `mFastLog2`, an approximate base-2 logarithm computed exactly like Go's float32 code.
#[inline]
#[allow(clippy::excessive_precision)]
pub(super) fn m_fast_log2(val: f32) -> f32 {
    let mut ux = val.to_bits() as i32;
    let mut log2 = (((ux >> 23) & 255) - 128) as f32;
    ux &= -0x7f800001;
    ux = ux.wrapping_add(127 << 23);
    let uval = f32::from_bits(ux as u32);
    log2 += ((-0.34484843f32) * uval + 2.02466578f32) * uval - 0.67487759f32;
    log2
}

/// `matchLen`: the length of the common prefix of `a` and `b` (`a` the shorter).
#[inline(always)]
pub(super) fn match_len(a: &[u8], b: &[u8]) -> usize {
    let b = &b[..a.len()];
    let mut checked = 0;
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        let x = u64::from_le_bytes(x.try_into().unwrap());
        let y = u64::from_le_bytes(y.try_into().unwrap());
        let diff = x ^ y;
        if diff != 0 {
            return checked + (diff.trailing_zeros() >> 3) as usize;
        }
        checked += 8;
    }
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        if x != y {
            return checked;
        }
        checked += 1;
    }
    checked
}
