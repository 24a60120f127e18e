//! Block encoder and bit writer, as in `huffman_bit_writer.go`.
//!
//! Go buffers 6 bytes at a time before handing them to its `io.Writer`; the
//! resulting byte stream is simply the LSB-first bit stream, which is what
//! this writer appends to `out`.

use super::huffman::{
    fixed_bit_length, hcode64, hlen, HuffmanEncoder, FIXED_LITERAL_CODES, FIXED_OFFSET_CODES,
};
use super::tokens::{
    Tokens, END_BLOCK_MARKER, LENGTH_BASE, LENGTH_CODES, LENGTH_EXTRA_BITS, LITERAL_COUNT,
    MATCH_OFFSET_ONLY_MASK, MAX_STORE_BLOCK_SIZE, OFFSET_CODE_COUNT, OFFSET_COMBINED,
    OFFSET_EXTRA_BITS, OFFSET_MASK,
};
use super::KpVersion;

mod before_1_14;

const CODEGEN_CODE_COUNT: usize = 19;
const BAD_CODE: u8 = 255;
const MAX_PREDEFINED_TOKENS: usize = 250;
const LENGTH_CODES_START: usize = 257;
const LENGTH_EXTRA_BITS_MIN_CODE: u32 = 8;
const OFFSET_EXTRA_BITS_MIN_CODE: u32 = 4;
const MAX_NUM_LIT: usize = 286;
const MAX_NUM_DIST: usize = 30;

static CODEGEN_ORDER: [usize; 19] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

/// `huffOffset`: the distance code used by Huffman-only blocks (one 1-bit code).
static HUFF_OFFSET_CODES: [u32; 30] = {
    let mut c = [0u32; 30];
    c[0] = 1;
    c
};

pub(super) struct BitWriter {
    pub out: Vec<u8>,
    bits: u64,
    nbits: u32,
    last_huff_man: bool,
    literal_encoding: HuffmanEncoder,
    tmp_lit_encoding: HuffmanEncoder,
    offset_encoding: HuffmanEncoder,
    codegen_encoding: HuffmanEncoder,
    last_header: i64,
    pub log_new_table_penalty: u32,
    /// The release whose block headers are written (see [`KpVersion`]).
    pub version: KpVersion,
    literal_freq: [u16; LENGTH_CODES_START + 32],
    offset_freq: [u16; 32],
    codegen_freq: [u16; CODEGEN_CODE_COUNT],
    codegen: [u8; LITERAL_COUNT + OFFSET_CODE_COUNT + 1],
}

/// Appends `bits` to the bit buffer, spilling 6 bytes when 48 or more are pending.
macro_rules! put_bits {
    ($out:expr, $bits:ident, $nbits:ident, $value:expr, $len:expr) => {{
        $bits |= ($value) << ($nbits & 63);
        $nbits += $len;
        if $nbits >= 48 {
            $out.extend_from_slice(&$bits.to_le_bytes()[..6]);
            $bits >>= 48;
            $nbits -= 48;
        }
    }};
}

impl BitWriter {
    pub fn new(out: Vec<u8>) -> Self {
        BitWriter {
            out,
            bits: 0,
            nbits: 0,
            last_huff_man: false,
            literal_encoding: HuffmanEncoder::new(LITERAL_COUNT),
            tmp_lit_encoding: HuffmanEncoder::new(LITERAL_COUNT),
            offset_encoding: HuffmanEncoder::new(OFFSET_CODE_COUNT),
            codegen_encoding: HuffmanEncoder::new(CODEGEN_CODE_COUNT),
            last_header: 0,
            log_new_table_penalty: 0,
            version: KpVersion::V1_15_12,
            literal_freq: [0; LENGTH_CODES_START + 32],
            offset_freq: [0; 32],
            codegen_freq: [0; CODEGEN_CODE_COUNT],
            codegen: [0; LITERAL_COUNT + OFFSET_CODE_COUNT + 1],
        }
    }

    /// `flush`: pay any owed EOB and pad to a byte boundary.
    pub fn flush(&mut self) {
        if self.last_header > 0 {
            self.write_code(self.literal_encoding.codes[END_BLOCK_MARKER]);
            self.last_header = 0;
        }
        while self.nbits != 0 {
            self.out.push(self.bits as u8);
            self.bits >>= 8;
            self.nbits = self.nbits.saturating_sub(8);
        }
        self.bits = 0;
    }

    /// `writeBits`: like Go, a negative `b` is sign-extended into the buffer.
    #[inline]
    fn write_bits(&mut self, b: i32, nb: u32) {
        let (mut bits, mut nbits) = (self.bits, self.nbits);
        put_bits!(self.out, bits, nbits, b as i64 as u64, nb);
        self.bits = bits;
        self.nbits = nbits;
    }

    #[inline]
    fn write_code(&mut self, c: u32) {
        let (mut bits, mut nbits) = (self.bits, self.nbits);
        put_bits!(self.out, bits, nbits, hcode64(c), hlen(c));
        self.bits = bits;
        self.nbits = nbits;
    }

    /// `writeBytes`: raw bytes after a byte-aligned header.
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        assert!(self.nbits & 7 == 0, "writeBytes with unfinished bits");
        while self.nbits != 0 {
            self.out.push(self.bits as u8);
            self.bits >>= 8;
            self.nbits -= 8;
        }
        self.out.extend_from_slice(bytes);
    }

    /// `generateCodegen`: run-length code of the literal and offset code lengths.
    fn generate_codegen(&mut self, num_literals: usize, num_offsets: usize, huff_only: bool) {
        self.codegen_freq = [0; CODEGEN_CODE_COUNT];
        let codegen = &mut self.codegen;
        for (cg, &c) in codegen[..num_literals]
            .iter_mut()
            .zip(&self.literal_encoding.codes)
        {
            *cg = hlen(c) as u8;
        }
        let off_codes: &[u32] = if huff_only {
            &HUFF_OFFSET_CODES
        } else {
            &self.offset_encoding.codes
        };
        for (cg, &c) in codegen[num_literals..num_literals + num_offsets]
            .iter_mut()
            .zip(off_codes)
        {
            *cg = hlen(c) as u8;
        }
        codegen[num_literals + num_offsets] = BAD_CODE;

        let freq = &mut self.codegen_freq;
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

    fn codegens(&self) -> usize {
        let mut num = CODEGEN_CODE_COUNT;
        while num > 4 && self.codegen_freq[CODEGEN_ORDER[num - 1]] == 0 {
            num -= 1;
        }
        num
    }

    fn header_size(&self) -> (i64, usize) {
        let num = self.codegens();
        let size = 3
            + 5
            + 5
            + 4
            + 3 * num as i64
            + self.codegen_encoding.bit_length(&self.codegen_freq)
            + self.codegen_freq[16] as i64 * 2
            + self.codegen_freq[17] as i64 * 3
            + self.codegen_freq[18] as i64 * 7;
        (size, num)
    }

    fn dynamic_reuse_size(&self) -> i64 {
        self.literal_encoding.bit_length(&self.literal_freq)
            + self.offset_encoding.bit_length(&self.offset_freq)
    }

    fn dynamic_size(&self, extra_bits: i64) -> (i64, usize) {
        let (header, num) = self.header_size();
        let size = header
            + self.literal_encoding.bit_length(&self.literal_freq)
            + self.offset_encoding.bit_length(&self.offset_freq)
            + extra_bits;
        (size, num)
    }

    fn extra_bit_size(&self) -> i64 {
        let mut total = 0i64;
        for (i, &n) in self.literal_freq[257..LITERAL_COUNT].iter().enumerate() {
            total += n as i64 * LENGTH_EXTRA_BITS[i & 31] as i64;
        }
        for (i, &n) in self.offset_freq[..OFFSET_CODE_COUNT].iter().enumerate() {
            total += n as i64 * OFFSET_EXTRA_BITS[i & 31] as i64;
        }
        total
    }

    fn fixed_size(&self, extra_bits: i64) -> i64 {
        3 + fixed_bit_length(&FIXED_LITERAL_CODES, &self.literal_freq)
            + fixed_bit_length(&FIXED_OFFSET_CODES, &self.offset_freq)
            + extra_bits
    }

    /// `storedSize`: bits for a stored block of `input`, if it fits in one.
    fn stored_size(input: Option<&[u8]>) -> (i64, bool) {
        match input {
            Some(b) if b.len() <= MAX_STORE_BLOCK_SIZE => ((b.len() as i64 + 5) * 8, true),
            _ => (0, false),
        }
    }

    fn write_dynamic_header(
        &mut self,
        num_literals: usize,
        num_offsets: usize,
        num_codegens: usize,
        is_eof: bool,
    ) {
        self.write_bits(if is_eof { 5 } else { 4 }, 3);
        self.write_bits(num_literals as i32 - 257, 5);
        self.write_bits(num_offsets as i32 - 1, 5);
        self.write_bits(num_codegens as i32 - 4, 4);
        for &o in CODEGEN_ORDER.iter().take(num_codegens) {
            let value = hlen(self.codegen_encoding.codes[o]);
            self.write_bits(value as i32, 3);
        }
        let mut i = 0;
        loop {
            let code_word = self.codegen[i];
            i += 1;
            if code_word == BAD_CODE {
                break;
            }
            self.write_code(self.codegen_encoding.codes[code_word as usize]);
            match code_word {
                16 => {
                    self.write_bits(self.codegen[i] as i32, 2);
                    i += 1;
                }
                17 => {
                    self.write_bits(self.codegen[i] as i32, 3);
                    i += 1;
                }
                18 => {
                    self.write_bits(self.codegen[i] as i32, 7);
                    i += 1;
                }
                _ => {}
            }
        }
    }

    /// `writeStoredHeader`; an empty final stored block becomes a fixed block.
    pub fn write_stored_header(&mut self, length: usize, is_eof: bool) {
        if self.last_header > 0 {
            self.write_code(self.literal_encoding.codes[END_BLOCK_MARKER]);
            self.last_header = 0;
        }
        if length == 0 && is_eof {
            self.write_fixed_header(is_eof);
            self.write_bits(0, 7);
            self.flush();
            return;
        }
        self.write_bits(is_eof as i32, 3);
        self.flush();
        self.write_bits(length as i32, 16);
        self.write_bits(!(length as u16) as i32, 16);
    }

    /// A stored block of `input` (paying any owed end-of-block code first).
    fn write_stored_block(&mut self, input: &[u8], eof: bool) {
        self.write_stored_header(input.len(), eof);
        self.write_bytes(input);
    }

    /// Whether to keep the current table: a new one is started (the owed end-of-block code
    /// written) when its estimated size beats reusing; returns the size of the choice.
    fn new_table_if_smaller(&mut self, new_size: i64, reuse_size: i64) -> i64 {
        if new_size < reuse_size {
            self.write_code(self.literal_encoding.codes[END_BLOCK_MARKER]);
            self.last_header = 0;
            new_size
        } else {
            reuse_size
        }
    }

    fn write_fixed_header(&mut self, is_eof: bool) {
        if self.last_header > 0 {
            self.write_code(self.literal_encoding.codes[END_BLOCK_MARKER]);
            self.last_header = 0;
        }
        self.write_bits(if is_eof { 3 } else { 2 }, 3);
    }

    /// `writeBlockDynamic`: dynamic (or reused, fixed or stored) block for `tokens`.
    pub fn write_block_dynamic(
        &mut self,
        tokens: &mut Tokens,
        eof: bool,
        input: Option<&[u8]>,
        sync: bool,
    ) {
        if self.version < KpVersion::V1_14_0 {
            return self.write_block_dynamic_before_1_14(tokens, eof, input, sync);
        }
        let sync = sync || eof;
        if sync {
            tokens.add_eob();
        } else if self.version == KpVersion::Go1_27 {
            // Go 1.27: "Ensure we can always write EOB."
            tokens.extra_hist[0] = 1;
        }
        if (self.last_huff_man || eof) && self.last_header > 0 {
            self.write_code(self.literal_encoding.codes[END_BLOCK_MARKER]);
            self.last_header = 0;
            self.last_huff_man = false;
        }
        if self.last_header > 0 && !self.can_reuse(tokens) {
            self.write_code(self.literal_encoding.codes[END_BLOCK_MARKER]);
            self.last_header = 0;
        }

        // 1.15.12: `indexTokens(tokens, !sync)`, a block that may be reused gets full-size
        // (286/30) header counts; 1.18.1: `indexTokens(tokens, fillReuse && !sync)` with
        // `fillReuse` false, counts trimmed to the codes used (EOB counted only if a sync added
        // it); 1.18.2+: `indexTokens(tokens, true)`, EOB counted before trimming.
        let (num_literals, num_offsets) = match self.version {
            KpVersion::V1_18_1 => self.index_tokens(tokens, false, false),
            KpVersion::V1_18_2 => self.index_tokens(tokens, false, true),
            // EOB is already in the token histogram.
            KpVersion::Go1_27 => self.index_tokens(tokens, false, false),
            // 1.14.0-1.18.0 (earlier releases are handled above).
            _ => self.index_tokens(tokens, !sync, false),
        };
        let mut extra_bits = 0;
        let (ssize, storable) = Self::stored_size(input);
        if storable || self.last_header > 0 {
            extra_bits = self.extra_bit_size();
        }

        let mut size;
        if self.last_header > 0 {
            let mut new_size = self.last_header + tokens.estimated_bits();
            new_size += hlen(self.literal_encoding.codes[END_BLOCK_MARKER]) as i64
                + (new_size >> self.log_new_table_penalty);
            let reuse_size = self.dynamic_reuse_size() + extra_bits;
            size = self.new_table_if_smaller(new_size, reuse_size);
            if tokens.n < MAX_PREDEFINED_TOKENS {
                let pre_size = self.fixed_size(extra_bits) + 7;
                if pre_size < size {
                    if storable && ssize <= size {
                        self.write_stored_block(input.unwrap(), eof);
                        return;
                    }
                    self.write_fixed_header(eof);
                    if !sync {
                        tokens.add_eob();
                    }
                    self.write_tokens(
                        &tokens.tokens[..tokens.n],
                        &FIXED_LITERAL_CODES,
                        &FIXED_OFFSET_CODES,
                    );
                    return;
                }
            }
            if storable && ssize <= size {
                self.write_stored_block(input.unwrap(), eof);
                return;
            }
        }

        if self.last_header == 0 {
            self.literal_freq[END_BLOCK_MARKER] = 1;
            self.generate();
            self.generate_codegen(num_literals, num_offsets, false);
            self.codegen_encoding.generate(&self.codegen_freq, 7);
            let (dsize, num_codegens) = self.dynamic_size(extra_bits);
            size = dsize;
            if tokens.n < MAX_PREDEFINED_TOKENS {
                let pre_size = self.fixed_size(extra_bits);
                if pre_size <= size {
                    if storable && ssize <= pre_size {
                        self.write_stored_block(input.unwrap(), eof);
                        return;
                    }
                    self.write_fixed_header(eof);
                    if !sync {
                        tokens.add_eob();
                    }
                    self.write_tokens(
                        &tokens.tokens[..tokens.n],
                        &FIXED_LITERAL_CODES,
                        &FIXED_OFFSET_CODES,
                    );
                    return;
                }
            }
            if storable && ssize <= size {
                self.write_stored_block(input.unwrap(), eof);
                return;
            }
            self.write_dynamic_header(num_literals, num_offsets, num_codegens, eof);
            if !sync {
                self.last_header = self.header_size().0;
            }
            self.last_huff_man = false;
        }
        if sync {
            self.last_header = 0;
        }
        self.write_tokens_in_table(tokens);
    }

    /// The block's tokens in the current literal and offset tables.
    fn write_tokens_in_table(&mut self, tokens: &Tokens) {
        let lit = std::mem::take(&mut self.literal_encoding.codes);
        let off = std::mem::take(&mut self.offset_encoding.codes);
        self.write_tokens(&tokens.tokens[..tokens.n], &lit, &off);
        self.literal_encoding.codes = lit;
        self.offset_encoding.codes = off;
    }

    fn can_reuse(&self, t: &Tokens) -> bool {
        let off = &self.offset_encoding.codes;
        for (i, &v) in t.off_hist[..OFFSET_CODE_COUNT].iter().enumerate() {
            if v != 0 && off[i] == 0 {
                return false;
            }
        }
        let lit = &self.literal_encoding.codes;
        for (i, &v) in t.extra_hist[..LITERAL_COUNT - 256].iter().enumerate() {
            if v != 0 && lit[256 + i] == 0 {
                return false;
            }
        }
        for (i, &v) in t.lit_hist.iter().enumerate() {
            if v != 0 && lit[i] == 0 {
                return false;
            }
        }
        true
    }

    /// `indexTokens`: copy histograms; count used literal and offset codes. `filled` is
    /// 1.15.12's parameter (return the maximum counts), `always_eob` 1.18.2's (count EOB).
    fn index_tokens(&mut self, t: &Tokens, filled: bool, always_eob: bool) -> (usize, usize) {
        self.literal_freq[..256].copy_from_slice(&t.lit_hist);
        self.literal_freq[256..288].copy_from_slice(&t.extra_hist);
        self.offset_freq = t.off_hist;
        if t.n == 0 {
            return (0, 0);
        }
        if filled {
            return (MAX_NUM_LIT, MAX_NUM_DIST);
        }
        if always_eob {
            self.literal_freq[END_BLOCK_MARKER] = 1;
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
        (num_literals, num_offsets)
    }

    fn generate(&mut self) {
        self.literal_encoding
            .generate(&self.literal_freq[..LITERAL_COUNT], 15);
        self.offset_encoding
            .generate(&self.offset_freq[..OFFSET_CODE_COUNT], 15);
    }

    /// `writeTokens`: the tokens with the given codes; a trailing EOB token is written last.
    fn write_tokens(&mut self, tokens: &[u32], le_codes: &[u32], oe_codes: &[u32]) {
        if tokens.is_empty() {
            return;
        }
        let mut tokens = tokens;
        let mut defer_eob = false;
        if tokens[tokens.len() - 1] == END_BLOCK_MARKER as u32 {
            tokens = &tokens[..tokens.len() - 1];
            defer_eob = true;
        }
        let lits = &le_codes[..256];
        let offs = &oe_codes[..OFFSET_CODE_COUNT.min(oe_codes.len())];
        let lengths = &le_codes[LENGTH_CODES_START..];
        let (mut bits, mut nbits) = (self.bits, self.nbits);
        let out = &mut self.out;
        for &t in tokens {
            if t < 256 {
                let c = lits[t as usize];
                put_bits!(out, bits, nbits, hcode64(c), hlen(c));
                continue;
            }
            let length = (t >> 22) as u8;
            let length_code = (LENGTH_CODES[length as usize] & 31) as u32;
            let c = lengths[length_code as usize];
            put_bits!(out, bits, nbits, hcode64(c), hlen(c));
            if length_code >= LENGTH_EXTRA_BITS_MIN_CODE {
                let extra_length_bits = LENGTH_EXTRA_BITS[length_code as usize] as u32;
                let extra_length = (length - LENGTH_BASE[length_code as usize]) as u64;
                put_bits!(out, bits, nbits, extra_length, extra_length_bits);
            }
            let offset = t & OFFSET_MASK;
            let offset_code = (offset >> 16) & 31;
            let c = offs[offset_code as usize];
            put_bits!(out, bits, nbits, hcode64(c), hlen(c));
            if offset_code >= OFFSET_EXTRA_BITS_MIN_CODE {
                let comb = OFFSET_COMBINED[offset_code as usize];
                let v = (offset.wrapping_sub(comb >> 8) & MATCH_OFFSET_ONLY_MASK) as u64;
                put_bits!(out, bits, nbits, v, comb & 0xff);
            }
        }
        self.bits = bits;
        self.nbits = nbits;
        if defer_eob {
            self.write_code(le_codes[END_BLOCK_MARKER]);
        }
    }

    /// `writeBlockHuff`: the bytes as Huffman-coded literals, or stored if that does not pay.
    pub fn write_block_huff(&mut self, eof: bool, input: &[u8], sync: bool) {
        if self.version < KpVersion::V1_12_3 {
            return self.write_block_huff_before_1_12_3(eof, input, sync);
        }
        self.literal_freq = [0; LENGTH_CODES_START + 32];
        if !self.last_huff_man {
            self.offset_freq = [0; 32];
        }
        const NUM_LITERALS: usize = END_BLOCK_MARKER + 1;
        const NUM_OFFSETS: usize = 1;
        const GUESS_HEADER_SIZE_BITS: i64 = 70 * 8;
        histogram(input, &mut self.literal_freq);
        let (ssize, storable) = Self::stored_size(Some(input));
        // From 1.14.3: a quick check for incompressible content.
        if storable && input.len() > 1024 && self.version >= KpVersion::V1_14_3 {
            let mut abs = 0f64;
            let avg = input.len() as f64 / 256.0;
            let max = (input.len() * 2) as f64;
            for &v in self.literal_freq[..256].iter() {
                let diff = v as f64 - avg;
                abs += diff * diff;
                if abs > max {
                    break;
                }
            }
            if abs < max {
                self.write_stored_block(input, eof);
                return;
            }
        }
        self.literal_freq[END_BLOCK_MARKER] = 1;
        self.tmp_lit_encoding
            .generate(&self.literal_freq[..NUM_LITERALS], 15);
        let mut est_bits = self
            .tmp_lit_encoding
            .can_reuse_bits(&self.literal_freq[..NUM_LITERALS]);
        if est_bits < i32::MAX as i64 {
            est_bits += self.last_header;
            if self.last_header == 0 {
                est_bits += GUESS_HEADER_SIZE_BITS;
            }
            est_bits += est_bits >> self.log_new_table_penalty;
        }
        if storable && ssize <= est_bits {
            self.write_stored_block(input, eof);
            return;
        }
        if self.last_header > 0 {
            let reuse_size = self
                .literal_encoding
                .can_reuse_bits(&self.literal_freq[..256]);
            if est_bits < reuse_size {
                self.write_code(self.literal_encoding.codes[END_BLOCK_MARKER]);
                self.last_header = 0;
            }
        }
        if self.last_header == 0 {
            std::mem::swap(&mut self.literal_encoding, &mut self.tmp_lit_encoding);
            self.generate_codegen(NUM_LITERALS, NUM_OFFSETS, true);
            self.codegen_encoding.generate(&self.codegen_freq, 7);
            let num_codegens = self.codegens();
            self.write_dynamic_header(NUM_LITERALS, NUM_OFFSETS, num_codegens, eof);
            self.last_huff_man = true;
            self.last_header = self.header_size().0;
        }

        self.write_huff_literals(input, eof || sync);
    }

    /// The tail of `writeBlockHuff`: `input` as literals in the current table, then the
    /// end-of-block code if `end`.
    fn write_huff_literals(&mut self, input: &[u8], end: bool) {
        let encoding = &self.literal_encoding.codes[..256];
        let (mut bits, mut nbits) = (self.bits, self.nbits);
        let out = &mut self.out;
        let mut chunks = input.chunks_exact(3);
        for c3 in &mut chunks {
            // Room for three codes of up to 15 bits: keep fewer than 16 pending.
            if nbits >= 16 {
                let n = nbits >> 3;
                out.extend_from_slice(&bits.to_le_bytes()[..n as usize]);
                bits = if n == 8 { 0 } else { bits >> (n * 8) };
                nbits -= n * 8;
            }
            let a = encoding[c3[0] as usize];
            let b = encoding[c3[1] as usize];
            let c = encoding[c3[2] as usize];
            bits |= hcode64(a) << nbits;
            nbits += hlen(a);
            bits |= hcode64(b) << nbits;
            nbits += hlen(b);
            bits |= hcode64(c) << nbits;
            nbits += hlen(c);
        }
        if nbits >= 16 {
            let n = nbits >> 3;
            out.extend_from_slice(&bits.to_le_bytes()[..n as usize]);
            bits = if n == 8 { 0 } else { bits >> (n * 8) };
            nbits -= n * 8;
        }
        for &t in chunks.remainder() {
            let c = encoding[t as usize];
            put_bits!(out, bits, nbits, hcode64(c), hlen(c));
        }
        self.bits = bits;
        self.nbits = nbits;

        if end {
            self.write_code(self.literal_encoding.codes[END_BLOCK_MARKER]);
            self.last_header = 0;
            self.last_huff_man = false;
        }
    }
}

/// `histogram`: byte counts added to `h[..256]` (u16, wrapping like Go).
fn histogram(b: &[u8], h: &mut [u16]) {
    let mut c = [[0u32; 256]; 4];
    let mut it = b.chunks_exact(4);
    for x in &mut it {
        c[0][x[0] as usize] += 1;
        c[1][x[1] as usize] += 1;
        c[2][x[2] as usize] += 1;
        c[3][x[3] as usize] += 1;
    }
    for &x in it.remainder() {
        c[0][x as usize] += 1;
    }
    for i in 0..256 {
        let total = c[0][i] + c[1][i] + c[2][i] + c[3][i];
        h[i] = h[i].wrapping_add(total as u16);
    }
}
