//! Block decisions of klauspost/compress before 1.14.0 (what pgzip's default level goes
//! through).
//!
//! `writeBlock` up to 1.13.6 (levels 7-9): the smallest of fixed, dynamic and stored.
//!
//! `writeBlockDynamic` up to 1.13.6: a block that may be followed by another gets every
//! histogram entry filled (`tokens.Fill`) so its table can always be reused, the new-table
//! estimate counts filled entries but not the end-of-block code, a stored block wins when it
//! is less than a sixteenth larger than the coded one, and there is no fixed-table preference.
//! 1.14.0 replaced this with the decisions in [`BitWriter::write_block_dynamic`].
//!
//! `writeBlockHuff` (blocks where matches removed under a sixteenth of the bytes) up to
//! 1.12.2: the block's size is guessed from its byte entropy rather than from a table built
//! for it; 1.11.13 changed how unused bytes enter that guess and table.

use super::super::huffman::{FIXED_LITERAL_CODES, FIXED_OFFSET_CODES};
use super::super::tokens::{m_fast_log2, Tokens, END_BLOCK_MARKER};
use super::super::KpVersion;
use super::{histogram, BitWriter, LENGTH_CODES_START};

impl BitWriter {
    /// `writeBlock` up to 1.13.6, what levels 7-9 wrote each block with: the smallest of a
    /// fixed, a new dynamic and a stored block (a table is never reused), the end-of-block
    /// code always in the block.
    pub fn write_block_before_1_14(
        &mut self,
        tokens: &mut Tokens,
        eof: bool,
        input: Option<&[u8]>,
    ) {
        tokens.add_eob();
        if self.last_header > 0 {
            self.write_code(self.literal_encoding.codes[END_BLOCK_MARKER]);
            self.last_header = 0;
        }
        let (num_literals, num_offsets) = self.index_tokens(tokens, false, false);
        self.generate();
        let (ssize, storable) = Self::stored_size(input);
        let extra_bits = if storable { self.extra_bit_size() } else { 0 };
        let mut size = self.fixed_size(extra_bits);
        self.generate_codegen(num_literals, num_offsets, false);
        self.codegen_encoding.generate(&self.codegen_freq, 7);
        let (dsize, num_codegens) = self.dynamic_size(extra_bits);
        let dynamic = dsize < size;
        if dynamic {
            size = dsize;
        }
        if storable && ssize < size {
            self.write_stored_header(input.unwrap().len(), eof);
            self.write_bytes(input.unwrap());
            return;
        }
        if dynamic {
            self.write_dynamic_header(num_literals, num_offsets, num_codegens, eof);
            self.write_tokens_in_table(tokens);
        } else {
            self.write_fixed_header(eof);
            self.write_tokens(
                &tokens.tokens[..tokens.n],
                &FIXED_LITERAL_CODES,
                &FIXED_OFFSET_CODES,
            );
        }
    }

    pub(super) fn write_block_dynamic_before_1_14(
        &mut self,
        tokens: &mut Tokens,
        eof: bool,
        input: Option<&[u8]>,
        sync: bool,
    ) {
        let sync = sync || eof;
        if sync {
            tokens.add_eob();
        }
        if (self.last_huff_man || eof) && self.last_header > 0 {
            self.write_code(self.literal_encoding.codes[END_BLOCK_MARKER]);
            self.last_header = 0;
            self.last_huff_man = false;
        }
        // `nLits`: the tokens but the end-of-block code, plus the entries `Fill` sets.
        let mut n_lits = tokens.n - usize::from(sync);
        if !sync {
            n_lits += tokens.fill();
        }
        let (num_literals, num_offsets) = self.index_tokens(tokens, !sync, false);

        let (ssize, storable) = Self::stored_size(input);
        // (Go computes it twice, from the same histograms.)
        let extra_bits = self.extra_bit_size();
        let mut size;
        if self.last_header > 0 {
            let clamp = self.version >= KpVersion::V1_12_3;
            let mut new_size = self.last_header + tokens.estimated_bits_of(n_lits, clamp);
            new_size += new_size >> self.log_new_table_penalty;
            let reuse_size = self.dynamic_reuse_size() + extra_bits;
            size = self.new_table_if_smaller(new_size, reuse_size);
            if storable && ssize < size + (size >> 4) {
                self.write_stored_block(input.unwrap(), eof);
                self.last_header = 0;
                return;
            }
        }
        if self.last_header == 0 {
            // (The end-of-block entry is already set: by `Fill`, or by the sync's EOB.)
            self.generate();
            self.generate_codegen(num_literals, num_offsets, false);
            self.codegen_encoding.generate(&self.codegen_freq, 7);
            let (dsize, num_codegens) = self.dynamic_size(extra_bits);
            size = dsize;
            if storable && ssize < size + (size >> 4) {
                self.write_stored_block(input.unwrap(), eof);
                self.last_header = 0;
                return;
            }
            self.write_dynamic_header(num_literals, num_offsets, num_codegens, eof);
            self.last_header = self.header_size().0;
            self.last_huff_man = false;
        }
        if sync {
            self.last_header = 0;
        }
        self.write_tokens_in_table(tokens);
    }
}

impl BitWriter {
    pub(super) fn write_block_huff_before_1_12_3(&mut self, eof: bool, input: &[u8], sync: bool) {
        self.literal_freq = [0; LENGTH_CODES_START + 32];
        if !self.last_huff_man {
            self.offset_freq = [0; 32];
        }
        const NUM_LITERALS: usize = END_BLOCK_MARKER + 1;
        const GUESS_HEADER_SIZE_BITS: i64 = 70 * 8;
        let fill = !eof && !sync;
        let v1_11_13 = self.version >= KpVersion::V1_11_13;
        let (mut est_bits, est_extra) =
            histogram_size(input, &mut self.literal_freq, fill, v1_11_13);
        est_bits += self.last_header
            + if v1_11_13 {
                input.len() as i64 / 32
            } else {
                15
            };
        if self.last_header == 0 {
            est_bits += GUESS_HEADER_SIZE_BITS;
        }
        est_bits += est_bits >> self.log_new_table_penalty;
        let (ssize, storable) = Self::stored_size(Some(input));
        if storable && ssize < est_bits {
            self.write_stored_block(input, eof);
            return;
        }
        if self.last_header > 0 {
            let reuse_size = self.literal_encoding.bit_length(&self.literal_freq[..256]);
            est_bits += est_extra;
            if est_bits < reuse_size {
                self.write_code(self.literal_encoding.codes[END_BLOCK_MARKER]);
                self.last_header = 0;
            }
        }
        if self.last_header == 0 {
            if fill && v1_11_13 {
                // "A slightly suboptimal tree that can be used for all."
                for f in self.literal_freq[..NUM_LITERALS].iter_mut() {
                    if *f == 0 {
                        *f = 1;
                    }
                }
            }
            self.literal_freq[END_BLOCK_MARKER] = 1;
            self.literal_encoding
                .generate(&self.literal_freq[..NUM_LITERALS], 15);
            self.generate_codegen(NUM_LITERALS, 1, true);
            self.codegen_encoding.generate(&self.codegen_freq, 7);
            let num_codegens = self.codegens();
            self.write_dynamic_header(NUM_LITERALS, 1, num_codegens, eof);
            self.last_huff_man = true;
            self.last_header = self.header_size().0;
        }
        self.write_huff_literals(input, eof || sync);
    }
}

/// `histogramSize`: the byte histogram of `b` into `h`, and the entropy estimate in bits of
/// coding it (symbol costs at least 1 bit, not capped). With `fill`, bytes that do not occur
/// are counted once: up to 1.11.12 they are set to 1 in `h` and their cost returned apart;
/// from 1.11.13 (`v1_11_13`) they only enlarge the total the probabilities are taken over.
fn histogram_size(b: &[u8], h: &mut [u16], fill: bool, v1_11_13: bool) -> (i64, i64) {
    let h = &mut h[..256];
    histogram(b, h);
    let at_least_one = |v: f32| if v < 1.0 { 1.0 } else { v };
    let mut total = b.len();
    if fill && v1_11_13 {
        total += h.iter().filter(|&&v| v == 0).count();
    }
    let inv_total = 1.0f32 / total as f32;
    let mut shannon = 0f32;
    let mut extra = 0f32;
    let one_bits = at_least_one(-m_fast_log2(inv_total));
    for v in h.iter_mut() {
        if *v > 0 {
            let n = *v as f32;
            shannon += at_least_one(-m_fast_log2(n * inv_total)) * n;
        } else if fill && !v1_11_13 {
            *v = 1;
            extra += one_bits;
        }
    }
    ((shannon + 0.99) as i64, (extra + 0.99) as i64)
}
