//! Ports `zstd/bitwriter.go`, `huff0/bitwriter.go` and `fse/bitwriter.go`
//! (klauspost/compress 1.15.12): one LSB-first bit writer with the methods of
//! all three (they differ only in which helpers each package has).

/// Bit masks for up to 16 bits (`bitMask16`; entries above 16 stay 0xFFFF).
const BIT_MASK16: [u16; 32] = [
    0, 1, 3, 7, 0xF, 0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF, 0x3FFF, 0x7FFF,
    0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF, 0, 0, 0, 0, 0,
    0,
];

/// Bit masks for up to 31 bits (`bitMask32`).
pub(crate) const BIT_MASK32: [u32; 32] = {
    let mut m = [0u32; 32];
    let mut i = 1;
    while i < 32 {
        m[i] = (1u32 << i) - 1;
        i += 1;
    }
    m
};

/// `bitWriter`: the first bit written is the LSB of the first output byte.
#[derive(Default)]
pub(crate) struct BitWriter {
    pub bit_container: u64,
    pub n_bits: u8,
    pub out: Vec<u8>,
}

impl BitWriter {
    /// `reset`: continue writing by appending to `out`.
    pub fn reset(&mut self, out: Vec<u8>) {
        self.bit_container = 0;
        self.n_bits = 0;
        self.out = out;
    }

    /// `addBits16NC`: up to 16 bits, masked, no flush check.
    #[inline(always)]
    pub fn add_bits16_nc(&mut self, value: u16, bits: u8) {
        self.bit_container |=
            u64::from(value & BIT_MASK16[(bits & 31) as usize]) << (self.n_bits & 63);
        self.n_bits = self.n_bits.wrapping_add(bits);
    }

    /// `addBits32NC`: up to 31 bits, masked, no flush check.
    #[inline(always)]
    pub fn add_bits32_nc(&mut self, value: u32, bits: u8) {
        self.bit_container |=
            u64::from(value & BIT_MASK32[(bits & 31) as usize]) << (self.n_bits & 63);
        self.n_bits = self.n_bits.wrapping_add(bits);
    }

    /// `addBits64NC`: up to 64 bits; there must be room for 32.
    #[inline(always)]
    pub fn add_bits64_nc(&mut self, value: u64, bits: u8) {
        if bits <= 31 {
            self.add_bits32_clean(value as u32, bits);
            return;
        }
        self.add_bits32_clean(value as u32, 32);
        self.flush32();
        self.add_bits32_clean((value >> 32) as u32, bits - 32);
    }

    /// `addBits32Clean`: the value must not have more bits set than `bits`.
    #[inline(always)]
    pub fn add_bits32_clean(&mut self, value: u32, bits: u8) {
        self.bit_container |= u64::from(value) << (self.n_bits & 63);
        self.n_bits = self.n_bits.wrapping_add(bits);
    }

    /// `addBits16Clean`.
    #[inline(always)]
    pub fn add_bits16_clean(&mut self, value: u16, bits: u8) {
        self.bit_container |= u64::from(value) << (self.n_bits & 63);
        self.n_bits = self.n_bits.wrapping_add(bits);
    }

    /// `addBits16ZeroNC` (fse): like `addBits16Clean`, but 0 bits write nothing and the
    /// value is cut to `bits`.
    #[inline(always)]
    pub fn add_bits16_zero_nc(&mut self, value: u16, bits: u8) {
        if bits == 0 {
            return;
        }
        let sh = (16 - bits as u32) & 15;
        let value = (value << sh) >> sh;
        self.bit_container |= u64::from(value) << (self.n_bits & 63);
        self.n_bits = self.n_bits.wrapping_add(bits);
    }

    /// `encSymbol` (huff0).
    #[inline(always)]
    pub fn enc_symbol(&mut self, ct: &[CTableEntry], symbol: u8) {
        let enc = ct[symbol as usize];
        self.bit_container |= u64::from(enc.val) << (self.n_bits & 63);
        self.n_bits = self.n_bits.wrapping_add(enc.n_bits);
    }

    /// `encTwoSymbols` (huff0).
    #[inline(always)]
    pub fn enc_two_symbols(&mut self, ct: &[CTableEntry], av: u8, bv: u8) {
        let a = ct[av as usize];
        let b = ct[bv as usize];
        let sh = self.n_bits & 63;
        let combined = u64::from(a.val) | (u64::from(b.val) << (a.n_bits & 63));
        self.bit_container |= combined << sh;
        self.n_bits = self.n_bits.wrapping_add(a.n_bits).wrapping_add(b.n_bits);
    }

    /// `flush32`: make room for at least 32 more bits.
    #[inline(always)]
    pub fn flush32(&mut self) {
        if self.n_bits < 32 {
            return;
        }
        self.out
            .extend_from_slice(&(self.bit_container as u32).to_le_bytes());
        self.n_bits -= 32;
        self.bit_container >>= 32;
    }

    /// `flush` (fse): write all whole bytes.
    pub fn flush(&mut self) {
        let v = self.n_bits >> 3;
        assert!(v <= 8, "bits ({}) > 64", self.n_bits);
        self.out
            .extend_from_slice(&self.bit_container.to_le_bytes()[..v as usize]);
        self.bit_container = if v == 8 {
            0
        } else {
            self.bit_container >> (u32::from(v) << 3)
        };
        self.n_bits &= 7;
    }

    /// `flushAlign`: write the remaining bits, padded to a byte.
    pub fn flush_align(&mut self) {
        let nb = (self.n_bits as usize).div_ceil(8);
        self.out
            .extend_from_slice(&self.bit_container.to_le_bytes()[..nb.min(8)]);
        self.n_bits = 0;
        self.bit_container = 0;
    }

    /// `close`: the end mark (a 1 bit), then the last byte(s).
    pub fn close(&mut self) {
        self.add_bits16_clean(1, 1);
        self.flush_align();
    }
}

/// A huff0 code (`cTableEntry`).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub(crate) struct CTableEntry {
    pub val: u16,
    pub n_bits: u8,
}
