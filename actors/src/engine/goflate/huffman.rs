//! Go's `compress/flate` Huffman code construction (huffman_code.go) and block
//! writer (huffman_bit_writer.go), ported so that the bits come out identical.
//!
//! Go sorts with `sort.Sort`, which is not stable, but both of its orders are
//! total (frequency then literal; literal), so any correct sort gives the same
//! result.

use std::sync::OnceLock;

pub(crate) const MAX_NUM_LIT: usize = 286;
pub(crate) const OFFSET_CODE_COUNT: usize = 30;
const END_BLOCK_MARKER: usize = 256;
const LENGTH_CODES_START: usize = 257;
const CODEGEN_CODE_COUNT: usize = 19;
const BAD_CODE: u8 = 255;
pub(crate) const MAX_STORE_BLOCK_SIZE: usize = 65535;

const LENGTH_EXTRA_BITS: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
const LENGTH_BASE: [u32; 29] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128,
    160, 192, 224, 255,
];
const OFFSET_EXTRA_BITS: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];
const OFFSET_BASE: [u32; 30] = [
    0x000000, 0x000001, 0x000002, 0x000003, 0x000004, 0x000006, 0x000008, 0x00000c, 0x000010,
    0x000018, 0x000020, 0x000030, 0x000040, 0x000060, 0x000080, 0x0000c0, 0x000100, 0x000180,
    0x000200, 0x000300, 0x000400, 0x000600, 0x000800, 0x000c00, 0x001000, 0x001800, 0x002000,
    0x003000, 0x004000, 0x006000,
];
const CODEGEN_ORDER: [usize; 19] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

// Tokens, as in token.go: a literal is its byte; a match is
// MATCH_TYPE | (length-3) << 22 | (offset-1).
pub(crate) type Token = u32;
pub(crate) const MATCH_TYPE: u32 = 1 << 30;
const LENGTH_SHIFT: u32 = 22;
const OFFSET_MASK: u32 = (1 << LENGTH_SHIFT) - 1;

#[inline]
pub(crate) fn literal_token(b: u8) -> Token {
    b as u32
}
#[inline]
pub(crate) fn match_token(xlength: u32, xoffset: u32) -> Token {
    MATCH_TYPE + (xlength << LENGTH_SHIFT) + xoffset
}

const fn length_codes() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut len = 0;
    while len < 256 {
        let mut c = 0;
        while c + 1 < 29 && LENGTH_BASE[c + 1] <= len as u32 {
            c += 1;
        }
        t[len] = c as u8;
        len += 1;
    }
    t
}
static LENGTH_CODES: [u8; 256] = length_codes();

#[inline]
fn length_code(xlength: u32) -> usize {
    LENGTH_CODES[xlength as usize] as usize
}

#[inline]
fn offset_code(xoffset: u32) -> usize {
    if xoffset < 4 {
        return xoffset as usize;
    }
    let nb = 31 - xoffset.leading_zeros();
    (2 * nb + ((xoffset >> (nb - 1)) & 1)) as usize
}

#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub(crate) struct HCode {
    pub code: u16,
    pub len: u16,
}

#[derive(Clone, Copy)]
struct LiteralNode {
    literal: u16,
    freq: i32,
}

#[derive(Clone, Copy, Default)]
struct LevelInfo {
    level: i32,
    last_freq: i32,
    next_char_freq: i32,
    next_pair_freq: i32,
    needed: i32,
}

fn reverse_bits(number: u16, bit_length: u16) -> u16 {
    (number << (16 - bit_length)).reverse_bits()
}

pub(crate) struct HuffmanEncoder {
    pub codes: Vec<HCode>,
    list: Vec<LiteralNode>,
    bit_count: [i32; 17],
}

impl HuffmanEncoder {
    pub fn new(size: usize) -> HuffmanEncoder {
        HuffmanEncoder {
            codes: vec![HCode::default(); size],
            list: Vec::with_capacity(MAX_NUM_LIT + 1),
            bit_count: [0; 17],
        }
    }

    fn fixed_literal() -> HuffmanEncoder {
        let mut h = HuffmanEncoder::new(MAX_NUM_LIT);
        for ch in 0..MAX_NUM_LIT as u16 {
            let (bits, size) = match ch {
                0..=143 => (ch + 48, 8),
                144..=255 => (ch + 400 - 144, 9),
                256..=279 => (ch - 256, 7),
                _ => (ch + 192 - 280, 8),
            };
            h.codes[ch as usize] = HCode {
                code: reverse_bits(bits, size),
                len: size,
            };
        }
        h
    }

    fn fixed_offset() -> HuffmanEncoder {
        let mut h = HuffmanEncoder::new(30);
        for ch in 0..30u16 {
            h.codes[ch as usize] = HCode {
                code: reverse_bits(ch, 5),
                len: 5,
            };
        }
        h
    }

    pub fn bit_length(&self, freq: &[i32]) -> i64 {
        let mut total = 0i64;
        for (i, &f) in freq.iter().enumerate() {
            if f != 0 {
                total += f as i64 * self.codes[i].len as i64;
            }
        }
        total
    }

    /// huffmanEncoder.generate: length-limited canonical codes.
    pub fn generate(&mut self, freq: &[i32], max_bits: i32) {
        let mut list = std::mem::take(&mut self.list);
        list.clear();
        for (i, &f) in freq.iter().enumerate() {
            if f != 0 {
                list.push(LiteralNode {
                    literal: i as u16,
                    freq: f,
                });
            } else {
                self.codes[i].len = 0;
            }
        }
        if list.len() <= 2 {
            for (i, node) in list.iter().enumerate() {
                self.codes[node.literal as usize] = HCode {
                    code: i as u16,
                    len: 1,
                };
            }
            self.list = list;
            return;
        }
        list.sort_unstable_by_key(|a| (a.freq, a.literal));
        let max_bits = self.bit_counts(&mut list, max_bits);
        self.assign_encoding_and_size(max_bits, &mut list);
        self.list = list;
    }

    /// Returns maxBits as clamped; self.bit_count[1..=maxBits] holds the counts.
    fn bit_counts(&mut self, list: &mut Vec<LiteralNode>, max_bits: i32) -> usize {
        let n = list.len() as i32;
        list.push(LiteralNode {
            literal: u16::MAX,
            freq: i32::MAX,
        });
        let max_bits = max_bits.min(n - 1) as usize;
        let mut levels = [LevelInfo::default(); 16];
        let mut leaf_counts = [[0i32; 16]; 16];
        for level in 1..=max_bits {
            levels[level] = LevelInfo {
                level: level as i32,
                last_freq: list[1].freq,
                next_char_freq: list[2].freq,
                next_pair_freq: list[0].freq.wrapping_add(list[1].freq),
                needed: 0,
            };
            leaf_counts[level][level] = 2;
            if level == 1 {
                levels[level].next_pair_freq = i32::MAX;
            }
        }
        levels[max_bits].needed = 2 * n - 4;
        let mut level = max_bits;
        loop {
            let l = levels[level];
            if l.next_pair_freq == i32::MAX && l.next_char_freq == i32::MAX {
                levels[level].needed = 0;
                levels[level + 1].next_pair_freq = i32::MAX;
                level += 1;
                continue;
            }
            let prev_freq = l.last_freq;
            if l.next_char_freq < l.next_pair_freq {
                let n = leaf_counts[level][level] + 1;
                levels[level].last_freq = l.next_char_freq;
                leaf_counts[level][level] = n;
                levels[level].next_char_freq = list[n as usize].freq;
            } else {
                levels[level].last_freq = l.next_pair_freq;
                let (lo, hi) = leaf_counts.split_at_mut(level);
                hi[0][..level].copy_from_slice(&lo[level - 1][..level]);
                levels[l.level as usize - 1].needed = 2;
            }
            levels[level].needed -= 1;
            if levels[level].needed == 0 {
                if levels[level].level as usize == max_bits {
                    break;
                }
                let lf = levels[level].last_freq;
                levels[level + 1].next_pair_freq = prev_freq.wrapping_add(lf);
                level += 1;
            } else {
                while levels[level - 1].needed > 0 {
                    level -= 1;
                }
            }
        }
        assert_eq!(
            leaf_counts[max_bits][max_bits], n,
            "goflate: leafCounts[maxBits][maxBits] != n"
        );
        list.pop();
        for (bits, level) in (1..).zip((1..=max_bits).rev()) {
            self.bit_count[bits] = leaf_counts[max_bits][level] - leaf_counts[max_bits][level - 1];
        }
        max_bits
    }

    fn assign_encoding_and_size(&mut self, max_bits: usize, list: &mut [LiteralNode]) {
        let mut code: u16 = 0;
        let mut end = list.len();
        for n in 0..=max_bits {
            code = code.wrapping_shl(1);
            let bits = self.bit_count[n] as usize;
            if n == 0 || bits == 0 {
                continue;
            }
            let chunk = &mut list[end - bits..end];
            chunk.sort_unstable_by_key(|x| x.literal);
            for node in chunk.iter() {
                self.codes[node.literal as usize] = HCode {
                    code: reverse_bits(code, n as u16),
                    len: n as u16,
                };
                code = code.wrapping_add(1);
            }
            end -= bits;
        }
    }
}

struct Fixed {
    lit: HuffmanEncoder,
    off: HuffmanEncoder,
    huff_offset: HuffmanEncoder,
}

fn fixed() -> &'static Fixed {
    static F: OnceLock<Fixed> = OnceLock::new();
    F.get_or_init(|| {
        let mut huff_offset = HuffmanEncoder::new(OFFSET_CODE_COUNT);
        let mut freq = [0i32; OFFSET_CODE_COUNT];
        freq[0] = 1;
        huff_offset.generate(&freq, 15);
        Fixed {
            lit: HuffmanEncoder::fixed_literal(),
            off: HuffmanEncoder::fixed_offset(),
            huff_offset,
        }
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    Fixed,
    Dynamic,
    HuffOffset,
}

/// huffmanBitWriter: LSB-first bits, appended to `out`.
pub(crate) struct BitWriter {
    bits: u64,
    nbits: u32,
    pub out: Vec<u8>,
    codegen_freq: [i32; CODEGEN_CODE_COUNT],
    literal_freq: Vec<i32>,
    offset_freq: Vec<i32>,
    codegen: Vec<u8>,
    literal_encoding: HuffmanEncoder,
    offset_encoding: HuffmanEncoder,
    codegen_encoding: HuffmanEncoder,
}

impl BitWriter {
    pub fn new() -> BitWriter {
        BitWriter {
            bits: 0,
            nbits: 0,
            out: Vec::new(),
            codegen_freq: [0; CODEGEN_CODE_COUNT],
            literal_freq: vec![0; MAX_NUM_LIT],
            offset_freq: vec![0; OFFSET_CODE_COUNT],
            codegen: vec![0; MAX_NUM_LIT + OFFSET_CODE_COUNT + 1],
            literal_encoding: HuffmanEncoder::new(MAX_NUM_LIT),
            offset_encoding: HuffmanEncoder::new(OFFSET_CODE_COUNT),
            codegen_encoding: HuffmanEncoder::new(CODEGEN_CODE_COUNT),
        }
    }

    /// Start in the middle of a byte: `phase` zero bits stand for the bits before.
    pub fn set_phase(&mut self, phase: u32) {
        self.bits = 0;
        self.nbits = phase;
    }

    /// Everything written, including a last partial byte, and the number of bits.
    pub fn take_bits(&mut self) -> (Vec<u8>, u64) {
        let total = self.out.len() as u64 * 8 + self.nbits as u64;
        let mut out = std::mem::take(&mut self.out);
        let (mut bits, mut nbits) = (self.bits, self.nbits);
        while nbits > 0 {
            out.push(bits as u8);
            bits >>= 8;
            nbits = nbits.saturating_sub(8);
        }
        self.bits = 0;
        self.nbits = 0;
        (out, total)
    }

    pub fn flush(&mut self) {
        while self.nbits > 0 {
            self.out.push(self.bits as u8);
            self.bits >>= 8;
            self.nbits = self.nbits.saturating_sub(8);
        }
        self.bits = 0;
    }

    #[inline(always)]
    fn write_bits(&mut self, b: u32, nb: u32) {
        self.bits |= (b as u64) << self.nbits;
        self.nbits += nb;
        if self.nbits >= 48 {
            self.out.extend_from_slice(&self.bits.to_le_bytes()[..6]);
            self.bits >>= 48;
            self.nbits -= 48;
        }
    }

    #[inline(always)]
    fn write_code(&mut self, c: HCode) {
        self.write_bits(c.code as u32, c.len as u32);
    }

    fn write_bytes(&mut self, bytes: &[u8]) {
        debug_assert_eq!(self.nbits & 7, 0, "writeBytes with unfinished bits");
        while self.nbits != 0 {
            self.out.push(self.bits as u8);
            self.bits >>= 8;
            self.nbits -= 8;
        }
        self.out.extend_from_slice(bytes);
    }

    fn lit_enc(&self, w: Which) -> &HuffmanEncoder {
        match w {
            Which::Fixed => &fixed().lit,
            _ => &self.literal_encoding,
        }
    }
    fn off_enc(&self, w: Which) -> &HuffmanEncoder {
        match w {
            Which::Fixed => &fixed().off,
            Which::Dynamic => &self.offset_encoding,
            Which::HuffOffset => &fixed().huff_offset,
        }
    }

    fn generate_codegen(&mut self, num_literals: usize, num_offsets: usize, off: Which) {
        self.codegen_freq = [0; CODEGEN_CODE_COUNT];
        for i in 0..num_literals {
            self.codegen[i] = self.literal_encoding.codes[i].len as u8;
        }
        for i in 0..num_offsets {
            self.codegen[num_literals + i] = self.off_enc(off).codes[i].len as u8;
        }
        let codegen = &mut self.codegen;
        let freq = &mut self.codegen_freq;
        codegen[num_literals + num_offsets] = BAD_CODE;
        let mut size = codegen[0];
        let mut count: i32 = 1;
        let mut out_index = 0;
        let mut in_index = 1;
        while size != BAD_CODE {
            let next_size = codegen[in_index];
            in_index += 1;
            if next_size == size {
                count += 1;
                continue;
            }
            if size != 0 {
                codegen[out_index] = size;
                out_index += 1;
                freq[size as usize] += 1;
                count -= 1;
                while count >= 3 {
                    let n = count.min(6);
                    codegen[out_index] = 16;
                    codegen[out_index + 1] = (n - 3) as u8;
                    out_index += 2;
                    freq[16] += 1;
                    count -= n;
                }
            } else {
                while count >= 11 {
                    let n = count.min(138);
                    codegen[out_index] = 18;
                    codegen[out_index + 1] = (n - 11) as u8;
                    out_index += 2;
                    freq[18] += 1;
                    count -= n;
                }
                if count >= 3 {
                    codegen[out_index] = 17;
                    codegen[out_index + 1] = (count - 3) as u8;
                    out_index += 2;
                    freq[17] += 1;
                    count = 0;
                }
            }
            count -= 1;
            while count >= 0 {
                codegen[out_index] = size;
                out_index += 1;
                freq[size as usize] += 1;
                count -= 1;
            }
            size = next_size;
            count = 1;
        }
        codegen[out_index] = BAD_CODE;
    }

    fn dynamic_size(&self, off: Which, extra_bits: i64) -> (i64, usize) {
        let mut num_codegens = CODEGEN_CODE_COUNT;
        while num_codegens > 4 && self.codegen_freq[CODEGEN_ORDER[num_codegens - 1]] == 0 {
            num_codegens -= 1;
        }
        let header = 3
            + 5
            + 5
            + 4
            + 3 * num_codegens as i64
            + self.codegen_encoding.bit_length(&self.codegen_freq)
            + self.codegen_freq[16] as i64 * 2
            + self.codegen_freq[17] as i64 * 3
            + self.codegen_freq[18] as i64 * 7;
        let size = header
            + self.literal_encoding.bit_length(&self.literal_freq)
            + self.off_enc(off).bit_length(&self.offset_freq)
            + extra_bits;
        (size, num_codegens)
    }

    fn fixed_size(&self, extra_bits: i64) -> i64 {
        3 + fixed().lit.bit_length(&self.literal_freq)
            + fixed().off.bit_length(&self.offset_freq)
            + extra_bits
    }

    fn stored_size(input: Option<&[u8]>) -> Option<i64> {
        match input {
            Some(b) if b.len() <= MAX_STORE_BLOCK_SIZE => Some((b.len() as i64 + 5) * 8),
            _ => None,
        }
    }

    fn write_dynamic_header(
        &mut self,
        num_literals: usize,
        num_offsets: usize,
        num_codegens: usize,
        eof: bool,
    ) {
        self.write_bits(if eof { 5 } else { 4 }, 3);
        self.write_bits((num_literals - 257) as u32, 5);
        self.write_bits((num_offsets - 1) as u32, 5);
        self.write_bits((num_codegens - 4) as u32, 4);
        for &o in CODEGEN_ORDER.iter().take(num_codegens) {
            let v = self.codegen_encoding.codes[o].len as u32;
            self.write_bits(v, 3);
        }
        let mut i = 0;
        loop {
            let code_word = self.codegen[i];
            i += 1;
            if code_word == BAD_CODE {
                break;
            }
            let c = self.codegen_encoding.codes[code_word as usize];
            self.write_code(c);
            match code_word {
                16 => {
                    self.write_bits(self.codegen[i] as u32, 2);
                    i += 1;
                }
                17 => {
                    self.write_bits(self.codegen[i] as u32, 3);
                    i += 1;
                }
                18 => {
                    self.write_bits(self.codegen[i] as u32, 7);
                    i += 1;
                }
                _ => {}
            }
        }
    }

    pub fn write_stored_header(&mut self, length: usize, eof: bool) {
        self.write_bits(eof as u32, 3);
        self.flush();
        self.write_bits(length as u32, 16);
        self.write_bits(!(length as u16) as u32, 16);
    }

    fn write_fixed_header(&mut self, eof: bool) {
        self.write_bits(if eof { 3 } else { 2 }, 3);
    }

    /// huffmanBitWriter.writeBlock: fixed, dynamic or stored, whichever is smallest.
    /// `tokens` must not contain the end-of-block marker; it is added here.
    pub fn write_block(&mut self, tokens: &mut Vec<Token>, eof: bool, input: Option<&[u8]>) {
        tokens.push(END_BLOCK_MARKER as u32);
        let (num_literals, num_offsets) = self.index_tokens(tokens);
        let mut extra_bits = 0i64;
        let stored = Self::stored_size(input);
        if stored.is_some() {
            for length_code in LENGTH_CODES_START + 8..num_literals {
                extra_bits += self.literal_freq[length_code] as i64
                    * LENGTH_EXTRA_BITS[length_code - LENGTH_CODES_START] as i64;
            }
            let offsets = self.offset_freq[..num_offsets].iter().skip(4);
            for (&f, &eb) in offsets.zip(OFFSET_EXTRA_BITS.iter().skip(4)) {
                extra_bits += f as i64 * eb as i64;
            }
        }
        let mut which = Which::Fixed;
        let mut size = self.fixed_size(extra_bits);
        self.generate_codegen(num_literals, num_offsets, Which::Dynamic);
        self.codegen_encoding.generate(&self.codegen_freq, 7);
        let (dynamic_size, num_codegens) = self.dynamic_size(Which::Dynamic, extra_bits);
        if dynamic_size < size {
            size = dynamic_size;
            which = Which::Dynamic;
        }
        if let Some(ss) = stored {
            if ss < size {
                let input = input.unwrap();
                self.write_stored_header(input.len(), eof);
                self.write_bytes(input);
                tokens.pop();
                return;
            }
        }
        if which == Which::Fixed {
            self.write_fixed_header(eof);
        } else {
            self.write_dynamic_header(num_literals, num_offsets, num_codegens, eof);
        }
        self.write_tokens(tokens, which);
        tokens.pop();
    }

    /// huffmanBitWriter.writeBlockDynamic (BestSpeed): dynamic or stored.
    pub fn write_block_dynamic(&mut self, tokens: &mut Vec<Token>, eof: bool, input: &[u8]) {
        tokens.push(END_BLOCK_MARKER as u32);
        let (num_literals, num_offsets) = self.index_tokens(tokens);
        self.generate_codegen(num_literals, num_offsets, Which::Dynamic);
        self.codegen_encoding.generate(&self.codegen_freq, 7);
        let (size, num_codegens) = self.dynamic_size(Which::Dynamic, 0);
        if let Some(ss) = Self::stored_size(Some(input)) {
            if ss < size + (size >> 4) {
                self.write_stored_header(input.len(), eof);
                self.write_bytes(input);
                tokens.pop();
                return;
            }
        }
        self.write_dynamic_header(num_literals, num_offsets, num_codegens, eof);
        self.write_tokens(tokens, Which::Dynamic);
        tokens.pop();
    }

    fn index_tokens(&mut self, tokens: &[Token]) -> (usize, usize) {
        self.literal_freq.iter_mut().for_each(|f| *f = 0);
        self.offset_freq.iter_mut().for_each(|f| *f = 0);
        for &t in tokens {
            if t < MATCH_TYPE {
                self.literal_freq[t as usize] += 1;
                continue;
            }
            let length = (t - MATCH_TYPE) >> LENGTH_SHIFT;
            let offset = t & OFFSET_MASK;
            self.literal_freq[LENGTH_CODES_START + length_code(length)] += 1;
            self.offset_freq[offset_code(offset)] += 1;
        }
        let mut num_literals = self.literal_freq.len();
        while self.literal_freq[num_literals - 1] == 0 {
            num_literals -= 1;
        }
        let mut num_offsets = self.offset_freq.len();
        while num_offsets > 0 && self.offset_freq[num_offsets - 1] == 0 {
            num_offsets -= 1;
        }
        if num_offsets == 0 {
            self.offset_freq[0] = 1;
            num_offsets = 1;
        }
        self.literal_encoding.generate(&self.literal_freq, 15);
        self.offset_encoding.generate(&self.offset_freq, 15);
        (num_literals, num_offsets)
    }

    fn write_tokens(&mut self, tokens: &[Token], which: Which) {
        // Copy the (small) code tables out so the bit writer can be borrowed mutably.
        let mut le = [HCode::default(); MAX_NUM_LIT];
        le.copy_from_slice(&self.lit_enc(which).codes[..MAX_NUM_LIT]);
        let mut oe = [HCode::default(); OFFSET_CODE_COUNT];
        oe.copy_from_slice(&self.off_enc(which).codes[..OFFSET_CODE_COUNT]);
        for &t in tokens {
            if t < MATCH_TYPE {
                self.write_code(le[t as usize]);
                continue;
            }
            let length = (t - MATCH_TYPE) >> LENGTH_SHIFT;
            let lc = length_code(length);
            self.write_code(le[lc + LENGTH_CODES_START]);
            let eb = LENGTH_EXTRA_BITS[lc] as u32;
            if eb > 0 {
                self.write_bits(length - LENGTH_BASE[lc], eb);
            }
            let offset = t & OFFSET_MASK;
            let oc = offset_code(offset);
            self.write_code(oe[oc]);
            let eb = OFFSET_EXTRA_BITS[oc] as u32;
            if eb > 0 {
                self.write_bits(offset - OFFSET_BASE[oc], eb);
            }
        }
    }

    /// huffmanBitWriter.writeBlockHuff: literals only (HuffmanOnly, incompressible BestSpeed blocks).
    pub fn write_block_huff(&mut self, eof: bool, input: &[u8]) {
        self.literal_freq.iter_mut().for_each(|f| *f = 0);
        for &b in input {
            self.literal_freq[b as usize] += 1;
        }
        self.literal_freq[END_BLOCK_MARKER] = 1;
        let num_literals = END_BLOCK_MARKER + 1;
        // Go sets offsetFreq[0] and leaves the rest as the previous block left them;
        // they only meet zero-length codes, but keep the state identical anyway.
        self.offset_freq[0] = 1;
        let num_offsets = 1;
        self.literal_encoding.generate(&self.literal_freq, 15);
        self.generate_codegen(num_literals, num_offsets, Which::HuffOffset);
        self.codegen_encoding.generate(&self.codegen_freq, 7);
        let (size, num_codegens) = self.dynamic_size(Which::HuffOffset, 0);
        if let Some(ss) = Self::stored_size(Some(input)) {
            if ss < size + (size >> 4) {
                self.write_stored_header(input.len(), eof);
                self.write_bytes(input);
                return;
            }
        }
        self.write_dynamic_header(num_literals, num_offsets, num_codegens, eof);
        let mut enc = [HCode::default(); 257];
        enc.copy_from_slice(&self.literal_encoding.codes[..257]);
        for &b in input {
            self.write_code(enc[b as usize]);
        }
        self.write_code(enc[END_BLOCK_MARKER]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_tables_match_go() {
        // Spot values from token.go's lengthCodes / offsetCodes.
        assert_eq!(length_code(0), 0);
        assert_eq!(length_code(8), 8);
        assert_eq!(length_code(9), 8);
        assert_eq!(length_code(10), 9);
        assert_eq!(length_code(254), 27);
        assert_eq!(length_code(255), 28);
        for off in 0..32768u32 {
            let c = offset_code(off);
            assert!(OFFSET_BASE[c] <= off);
            assert!(c == 29 || OFFSET_BASE[c + 1] > off, "{off}");
        }
    }
}
