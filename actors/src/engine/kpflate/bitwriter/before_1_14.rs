//! `writeBlockDynamic` as klauspost/compress 1.12.3-1.13.6 wrote it (what pgzip's default level
//! goes through): a block that may be followed by another gets every histogram entry filled
//! (`tokens.Fill`) so its table can always be reused, the new-table estimate counts filled
//! entries but not the end-of-block code, a stored block wins when it is less than a
//! sixteenth larger than the coded one, and there is no fixed-table preference. 1.14.0
//! replaced this with the decisions in [`BitWriter::write_block_dynamic`].

use super::super::tokens::{Tokens, END_BLOCK_MARKER};
use super::BitWriter;

impl BitWriter {
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
        let mut size;
        if self.last_header > 0 {
            let mut new_size = self.last_header + tokens.estimated_bits_of(n_lits);
            new_size += new_size >> self.log_new_table_penalty;
            let reuse_size = self.dynamic_reuse_size() + self.extra_bit_size();
            if new_size < reuse_size {
                self.write_code(self.literal_encoding.codes[END_BLOCK_MARKER]);
                size = new_size;
                self.last_header = 0;
            } else {
                size = reuse_size;
            }
            if storable && ssize < size + (size >> 4) {
                self.write_stored_header(input.unwrap().len(), eof);
                self.write_bytes(input.unwrap());
                self.last_header = 0;
                return;
            }
        }
        if self.last_header == 0 {
            // (The end-of-block entry is already set: by `Fill`, or by the sync's EOB.)
            self.generate();
            self.generate_codegen(num_literals, num_offsets, false);
            self.codegen_encoding.generate(&self.codegen_freq, 7);
            let (dsize, num_codegens) = self.dynamic_size(self.extra_bit_size());
            size = dsize;
            if storable && ssize < size + (size >> 4) {
                self.write_stored_header(input.unwrap().len(), eof);
                self.write_bytes(input.unwrap());
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
        let lit = std::mem::take(&mut self.literal_encoding.codes);
        let off = std::mem::take(&mut self.offset_encoding.codes);
        self.write_tokens(&tokens.tokens[..tokens.n], &lit, &off);
        self.literal_encoding.codes = lit;
        self.offset_encoding.codes = off;
    }
}
