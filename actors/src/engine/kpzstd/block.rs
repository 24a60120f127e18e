//! Ports `zstd/blockenc.go` and `zstd/seqenc.go` (klauspost/compress
//! 1.15.12): a block's literals and sequences turned into a compressed,
//! RLE or raw block, with the Huffman and FSE table-reuse decisions carried
//! from block to block.

use super::base::ZSTD_MIN_MATCH;
use super::bitwriter::{BitWriter, BIT_MASK32};
use super::fse::{
    high_bit, predefined, CState, FseEncoder, FseError, LL_BITS_TABLE, ML_BITS_TABLE,
};
use super::huff0::{HuffError, ReusePolicy, Scratch};
use super::MAX_COMPRESSED_BLOCK_SIZE;

/// `seq`: a literal run, then a match. `offset` is already the coded value
/// (1..=3 repeat codes, else distance + 3).
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct Seq {
    pub lit_len: u32,
    pub match_len: u32,
    pub offset: u32,
    pub ll_code: u8,
    pub ml_code: u8,
    pub of_code: u8,
}

/// Why `encode` did not produce a compressed block.
#[derive(Debug)]
pub(crate) enum BlockError {
    /// `errIncompressible`: store the block raw.
    Incompressible,
    /// An internal error Go would return from the stream.
    Internal(&'static str),
}

impl From<FseError> for BlockError {
    fn from(e: FseError) -> Self {
        BlockError::Internal(e.0)
    }
}

const BLOCK_TYPE_RAW: u32 = 0;
const BLOCK_TYPE_RLE: u32 = 1;
const BLOCK_TYPE_COMPRESSED: u32 = 2;

const LITERALS_BLOCK_RAW: u64 = 0;
const LITERALS_BLOCK_RLE: u64 = 1;
const LITERALS_BLOCK_COMPRESSED: u64 = 2;
const LITERALS_BLOCK_TREELESS: u64 = 3;

const COMP_MODE_PREDEFINED: u8 = 0;
const COMP_MODE_RLE: u8 = 1;
const COMP_MODE_FSE: u8 = 2;
const COMP_MODE_REPEAT: u8 = 3;

/// `blockHeader`.
#[derive(Clone, Copy, Default)]
pub(crate) struct BlockHeader(u32);

impl BlockHeader {
    pub fn set_last(&mut self, b: bool) {
        if b {
            self.0 |= 1;
        } else {
            self.0 &= (1 << 24) - 2;
        }
    }
    pub fn set_size(&mut self, v: u32) {
        self.0 = (self.0 & 7) | (v << 3);
    }
    pub fn set_type(&mut self, t: u32) {
        const MASK: u32 = 1 | (((1 << 24) - 1) ^ 7);
        self.0 = (self.0 & MASK) | (t << 1);
    }
    pub fn append_to(self, b: &mut Vec<u8>) {
        b.extend_from_slice(&self.0.to_le_bytes()[..3]);
    }
    fn write_at(self, b: &mut [u8]) {
        b[..3].copy_from_slice(&self.0.to_le_bytes()[..3]);
    }
}

/// `literalsHeader`: the low 60 bits are the header, the top 4 its length.
#[derive(Clone, Copy, Default)]
struct LiteralsHeader(u64);

impl LiteralsHeader {
    fn set_type(&mut self, t: u64) {
        self.0 = (self.0 & (u64::MAX - 3)) | t;
    }
    fn set_size(&mut self, regen_len: usize) {
        let in_bits = 32 - (regen_len as u32).leading_zeros();
        let mut lh = self.0 & 3;
        let r = regen_len as u64;
        match in_bits {
            0..=4 => lh |= (r << 3) | (1 << 60),
            5..=11 => lh |= (1 << 2) | (r << 4) | (2 << 60),
            12..=19 => lh |= (3 << 2) | (r << 4) | (3 << 60),
            _ => panic!("internal error: block too big ({regen_len})"),
        }
        self.0 = lh;
    }
    fn set_sizes(&mut self, comp_len: usize, in_len: usize, single: bool) {
        let comp_bits = 32 - (comp_len as u32).leading_zeros();
        let in_bits = 32 - (in_len as u32).leading_zeros();
        let mut lh = self.0 & 3;
        let (c, i) = (comp_len as u64, in_len as u64);
        if comp_bits <= 10 && in_bits <= 10 {
            if !single {
                lh |= 1 << 2;
            }
            lh |= (i << 4) | (c << (10 + 4)) | (3 << 60);
        } else if comp_bits <= 14 && in_bits <= 14 {
            lh |= (2 << 2) | (i << 4) | (c << (14 + 4)) | (4 << 60);
            assert!(!single, "single stream used with more than 10 bits length.");
        } else if comp_bits <= 18 && in_bits <= 18 {
            lh |= (3 << 2) | (i << 4) | (c << (18 + 4)) | (5 << 60);
            assert!(!single, "single stream used with more than 10 bits length.");
        } else {
            panic!("internal error: block too big");
        }
        self.0 = lh;
    }
    fn size(self) -> usize {
        (self.0 >> 60) as usize
    }
    fn append_to(self, b: &mut Vec<u8>) {
        let n = self.size();
        assert!(
            (1..=5).contains(&n),
            "literalsHeader has invalid size ({n})"
        );
        b.extend_from_slice(&self.0.to_le_bytes()[..n]);
    }
}

/// Which encoder a sequence section uses for one of its three code streams.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pick {
    Cur,
    Prev,
    Predef,
}

/// One of `seqCoders`' pairs (`llEnc`/`llPrev` ...): `encs[cur]` is the encoder being
/// filled, the other the one the previous block used (Go swaps pointers).
pub(crate) struct CoderPair {
    encs: [Box<FseEncoder>; 2],
    cur: usize,
}

impl CoderPair {
    fn new() -> Self {
        CoderPair {
            encs: [Box::default(), Box::default()],
            cur: 0,
        }
    }
    fn cur(&mut self) -> &mut FseEncoder {
        &mut self.encs[self.cur]
    }
    fn prev(&mut self) -> &mut FseEncoder {
        &mut self.encs[1 - self.cur]
    }
    /// `setPrev`'s `compareSwap` (`None`: the predefined table, or nil).
    fn set_prev(&mut self, used: Option<Pick>) {
        match used {
            Some(Pick::Cur) => {
                self.cur = 1 - self.cur;
                self.encs[self.cur].re_used = false;
                self.encs[1 - self.cur].re_used = true;
            }
            Some(Pick::Prev) => {}
            _ => self.prev().symbol_len = 0,
        }
    }
}

/// The release-dependent decisions of `blockEnc.encode` and `encodeLits`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockRules {
    /// `saved := b.size - len(b.literals) - (b.size >> shift)`: 5 up to 1.16.3, 6 from
    /// 1.16.4.
    pub saved_shift: u32,
    /// 1.16.4 on: a compressed block that is not smaller than its input is replaced by
    /// a raw block inside `encode` (with `popOffsets`) instead of returning
    /// `errIncompressible`, and callers no longer skip `encode` for a full block of
    /// literals.
    pub raw_in_encode: bool,
    /// 1.17.0 on: literals of more than 16 (not 32) bytes are Huffman coded with one
    /// stream, and a Huffman result that would not beat raw literals (headers
    /// included) is dropped for raw literals.
    pub small_huffman: bool,
    /// 1.17.8 on: a block that is one sequence of offset 1 after at most one literal
    /// is written as an RLE block.
    pub rle_blocks: bool,
}

impl BlockRules {
    /// 1.15.12.
    pub const V1_15_12: BlockRules = BlockRules {
        saved_shift: 5,
        raw_in_encode: false,
        small_huffman: false,
        rle_blocks: false,
    };
}

/// `blockEnc`.
pub(crate) struct BlockEnc {
    pub rules: BlockRules,
    pub size: usize,
    pub literals: Vec<u8>,
    pub sequences: Vec<Seq>,
    ll: CoderPair,
    of: CoderPair,
    ml: CoderPair,
    lit_enc: Scratch,
    pub extra_lits: usize,
    pub output: Vec<u8>,
    pub recent_offsets: [u32; 3],
    pub prev_recent_offsets: [u32; 3],
    pub last: bool,
}

impl BlockEnc {
    /// `&blockEnc{}` then `init()`.
    pub fn new() -> Self {
        let mut b = BlockEnc {
            rules: BlockRules::V1_15_12,
            size: 0,
            literals: Vec::with_capacity(MAX_COMPRESSED_BLOCK_SIZE),
            sequences: Vec::with_capacity(2000),
            ll: CoderPair::new(),
            of: CoderPair::new(),
            ml: CoderPair::new(),
            lit_enc: Scratch::new(4),
            extra_lits: 0,
            output: Vec::with_capacity(MAX_COMPRESSED_BLOCK_SIZE),
            recent_offsets: [0; 3],
            prev_recent_offsets: [0; 3],
            last: false,
        };
        b.reset();
        b
    }

    /// `initNewEncode`: offsets and encoders back to a stream's start.
    pub fn init_new_encode(&mut self) {
        self.recent_offsets = [1, 4, 8];
        self.lit_enc.reuse = ReusePolicy::None;
        self.ll.set_prev(None);
        self.ml.set_prev(None);
        self.of.set_prev(None);
    }

    /// `reset(nil)`: new block content, same stream.
    pub fn reset(&mut self) {
        self.extra_lits = 0;
        self.literals.clear();
        self.size = 0;
        self.sequences.clear();
        self.output.clear();
        self.last = false;
    }

    /// `popOffsets`.
    fn pop_offsets(&mut self) {
        self.recent_offsets = self.prev_recent_offsets;
    }

    /// `encodeRaw`: `output` becomes a raw block of `a`.
    pub fn encode_raw(&mut self, a: &[u8]) {
        self.output.clear();
        encode_raw_to(&mut self.output, a, self.last);
    }

    /// `encodeLits`: a block of literals only (the block's own literals or its input).
    fn encode_lits_inner(&mut self, lits: &[u8], raw: bool) -> Result<(), BlockError> {
        let mut bh = BlockHeader::default();
        bh.set_last(self.last);
        bh.set_size(lits.len() as u32);
        // Don't compress extremely small blocks (no dictionary literal table here).
        if lits.len() < 8 || lits.len() < 32 || raw {
            bh.set_type(BLOCK_TYPE_RAW);
            bh.append_to(&mut self.output);
            self.output.extend_from_slice(lits);
            return Ok(());
        }
        let mut single = false;
        let one_x_above = if self.rules.small_huffman { 16 } else { 32 };
        let mut r = if lits.len() >= 1024 {
            self.lit_enc.compress_4x(lits)
        } else if lits.len() > one_x_above {
            single = true;
            self.lit_enc.compress_1x(lits)
        } else {
            Err(HuffError::Incompressible)
        };
        if self.rules.small_huffman && r.is_ok() && self.lit_enc.out.len() + 5 > lits.len() {
            // If we are close, we may still be worse or equal to raw.
            let mut lh = LiteralsHeader::default();
            lh.set_sizes(self.lit_enc.out.len(), lits.len(), single);
            if self.lit_enc.out.len() + lh.size() >= lits.len() {
                r = Err(HuffError::Incompressible);
            }
        }
        let re_used = match r {
            Err(HuffError::Incompressible) => {
                bh.set_type(BLOCK_TYPE_RAW);
                bh.append_to(&mut self.output);
                self.output.extend_from_slice(lits);
                return Ok(());
            }
            Err(HuffError::UseRle) => {
                bh.set_type(BLOCK_TYPE_RLE);
                bh.append_to(&mut self.output);
                self.output.push(lits[0]);
                return Ok(());
            }
            Err(HuffError::Other(e)) => return Err(BlockError::Internal(e)),
            Ok(r) => r,
        };
        self.lit_enc.reuse = ReusePolicy::Allow;
        bh.set_type(BLOCK_TYPE_COMPRESSED);
        let mut lh = LiteralsHeader::default();
        lh.set_type(if re_used {
            LITERALS_BLOCK_TREELESS
        } else {
            LITERALS_BLOCK_COMPRESSED
        });
        let out_len = self.lit_enc.out.len();
        lh.set_sizes(out_len, lits.len(), single);
        bh.set_size((out_len + lh.size() + 1) as u32);
        bh.append_to(&mut self.output);
        lh.append_to(&mut self.output);
        self.output.extend_from_slice(&self.lit_enc.out);
        self.output.push(0);
        Ok(())
    }

    /// `encode`: the block (literals + sequences) appended to `output`. `org` is the
    /// block's input, used when matches save too little.
    pub fn encode(&mut self, org: &[u8], raw: bool, raw_all_lits: bool) -> Result<(), BlockError> {
        if self.sequences.is_empty() {
            let lits = std::mem::take(&mut self.literals);
            let r = self.encode_lits_inner(&lits, raw_all_lits);
            self.literals = lits;
            return r;
        }
        if self.rules.rle_blocks
            && self.sequences.len() == 1
            && !org.is_empty()
            && self.literals.len() <= 1
        {
            // Check common RLE cases.
            let seq = self.sequences[0];
            if seq.lit_len == self.literals.len() as u32 && seq.offset.wrapping_sub(3) == 1 {
                // Offset == 1 and 0 or 1 literals.
                let mut bh = BlockHeader::default();
                bh.set_last(self.last);
                bh.set_size(seq.match_len + ZSTD_MIN_MATCH as u32 + seq.lit_len);
                bh.set_type(BLOCK_TYPE_RLE);
                bh.append_to(&mut self.output);
                self.output.push(org[0]);
                return Ok(());
            }
        }
        let saved = self.size as isize
            - self.literals.len() as isize
            - (self.size >> self.rules.saved_shift) as isize;
        if saved < 16 {
            self.pop_offsets();
            return self.encode_lits_inner(org, raw_all_lits);
        }

        let mut bh = BlockHeader::default();
        let mut lh = LiteralsHeader::default();
        bh.set_last(self.last);
        bh.set_type(BLOCK_TYPE_COMPRESSED);
        let bh_offset = self.output.len();
        bh.append_to(&mut self.output);

        let nlits = self.literals.len();
        let mut single = false;
        let one_x_above = if self.rules.small_huffman { 16 } else { 32 };
        let mut r = if nlits >= 1024 && !raw {
            self.lit_enc.compress_4x(&self.literals)
        } else if nlits > one_x_above && !raw {
            single = true;
            self.lit_enc.compress_1x(&self.literals)
        } else {
            Err(HuffError::Incompressible)
        };
        if self.rules.small_huffman && r.is_ok() && self.lit_enc.out.len() + 5 > nlits {
            // If we are close, we may still be worse or equal to raw.
            let mut lh = LiteralsHeader::default();
            lh.set_size(nlits);
            let sz_raw = lh.size();
            lh.set_sizes(self.lit_enc.out.len(), nlits, single);
            let sz_comp = lh.size();
            if self.lit_enc.out.len() + sz_comp >= nlits + sz_raw {
                r = Err(HuffError::Incompressible);
            }
        }
        match r {
            Err(HuffError::Incompressible) => {
                lh.set_type(LITERALS_BLOCK_RAW);
                lh.set_size(nlits);
                lh.append_to(&mut self.output);
                self.output.extend_from_slice(&self.literals);
            }
            Err(HuffError::UseRle) => {
                lh.set_type(LITERALS_BLOCK_RLE);
                lh.set_size(nlits);
                lh.append_to(&mut self.output);
                self.output.push(self.literals[0]);
            }
            Ok(re_used) => {
                lh.set_type(if re_used {
                    LITERALS_BLOCK_TREELESS
                } else {
                    LITERALS_BLOCK_COMPRESSED
                });
                lh.set_sizes(self.lit_enc.out.len(), nlits, single);
                lh.append_to(&mut self.output);
                self.output.extend_from_slice(&self.lit_enc.out);
                self.lit_enc.reuse = ReusePolicy::Allow;
            }
            Err(HuffError::Other(e)) => return Err(BlockError::Internal(e)),
        }

        // Sequences.
        let n = self.sequences.len();
        if n < 128 {
            self.output.push(n as u8);
        } else if n < 0x7f00 {
            self.output.push(128 + (n >> 8) as u8);
            self.output.push(n as u8);
        } else {
            let n = n - 0x7f00;
            self.output
                .extend_from_slice(&[255, n as u8, (n >> 8) as u8]);
        }
        self.gen_codes();
        self.ll.cur().normalize_count(n)?;
        self.of.cur().normalize_count(n)?;
        self.ml.cur().normalize_count(n)?;

        let predef = predefined();
        let mut mode = 0u8;
        let first = self.sequences[0];
        let ll_pick = if self.ll.cur().use_rle {
            mode |= COMP_MODE_RLE << 6;
            self.ll.cur().set_rle(first.ll_code);
            Pick::Cur
        } else {
            let (p, m) = choose_comp(&mut self.ll, &predef[0]);
            mode |= m << 6;
            p
        };
        let of_pick = if self.of.cur().use_rle {
            mode |= COMP_MODE_RLE << 4;
            self.of.cur().set_rle(first.of_code);
            Pick::Cur
        } else {
            let (p, m) = choose_comp(&mut self.of, &predef[1]);
            mode |= m << 4;
            p
        };
        let ml_pick = if self.ml.cur().use_rle {
            mode |= COMP_MODE_RLE << 2;
            self.ml.cur().set_rle(first.ml_code);
            Pick::Cur
        } else {
            let (p, m) = choose_comp(&mut self.ml, &predef[2]);
            mode |= m << 2;
            p
        };
        self.output.push(mode);

        let ll_enc = chosen(&mut self.ll, ll_pick, &predef[0], Some(&LL_BITS_TABLE));
        ll_enc.write_count(&mut self.output)?;
        let of_enc = chosen(&mut self.of, of_pick, &predef[1], None);
        of_enc.write_count(&mut self.output)?;
        let ml_enc = chosen(&mut self.ml, ml_pick, &predef[2], Some(&ML_BITS_TABLE));
        ml_enc.write_count(&mut self.output)?;

        let mut wr = BitWriter::default();
        wr.reset(std::mem::take(&mut self.output));
        wr.out.reserve(self.sequences.len() * 8 + 16);

        let seqs = &self.sequences;
        let mut seq = seqs.len() - 1;
        let s = seqs[seq];
        let ll_b = ll_enc.ct.symbol_tt[s.ll_code as usize];
        let of_b = of_enc.ct.symbol_tt[s.of_code as usize];
        let ml_b = ml_enc.ct.symbol_tt[s.ml_code as usize];
        let mut ll = CState::init(&ll_enc.ct, ll_b);
        let mut of = CState::init(&of_enc.ct, of_b);
        wr.flush32();
        let mut ml = CState::init(&ml_enc.ct, ml_b);

        wr.add_bits32_nc(s.lit_len, ll_b.out_bits);
        wr.add_bits32_nc(s.match_len, ml_b.out_bits);
        wr.flush32();
        wr.add_bits32_nc(s.offset, of_b.out_bits);

        {
            let ll_tt = &ll_enc.ct.symbol_tt;
            let of_tt = &of_enc.ct.symbol_tt;
            let ml_tt = &ml_enc.ct.symbol_tt;
            let ll_st = &ll_enc.ct.state_table;
            let of_st = &of_enc.ct.state_table;
            let ml_st = &ml_enc.ct.state_table;
            while seq > 0 {
                seq -= 1;
                let s = seqs[seq];
                let of_b = of_tt[s.of_code as usize];
                wr.flush32();
                let nb = (u32::from(of.state).wrapping_add(of_b.delta_nb_bits)) >> 16;
                let dst = i32::from(of.state >> (nb & 15)) + i32::from(of_b.delta_find_state);
                wr.add_bits16_nc(of.state, nb as u8);
                of.state = of_st[dst as usize];

                let out_bits = u32::from(of_b.out_bits & 31);
                let mut extra_bits = u64::from(s.offset & BIT_MASK32[out_bits as usize]);
                let mut extra_bits_n = out_bits;

                let ml_b = ml_tt[s.ml_code as usize];
                let nb = (u32::from(ml.state).wrapping_add(ml_b.delta_nb_bits)) >> 16;
                let dst = i32::from(ml.state >> (nb & 15)) + i32::from(ml_b.delta_find_state);
                wr.add_bits16_nc(ml.state, nb as u8);
                ml.state = ml_st[dst as usize];

                let out_bits = u32::from(ml_b.out_bits & 31);
                extra_bits = (extra_bits << out_bits)
                    | u64::from(s.match_len & BIT_MASK32[out_bits as usize]);
                extra_bits_n += out_bits;

                let ll_b = ll_tt[s.ll_code as usize];
                let nb = (u32::from(ll.state).wrapping_add(ll_b.delta_nb_bits)) >> 16;
                let dst = i32::from(ll.state >> (nb & 15)) + i32::from(ll_b.delta_find_state);
                wr.add_bits16_nc(ll.state, nb as u8);
                ll.state = ll_st[dst as usize];

                let out_bits = u32::from(ll_b.out_bits & 31);
                extra_bits =
                    (extra_bits << out_bits) | u64::from(s.lit_len & BIT_MASK32[out_bits as usize]);
                extra_bits_n += out_bits;

                wr.flush32();
                wr.add_bits64_nc(extra_bits, extra_bits_n as u8);
            }
        }
        ml.flush(&mut wr, ml_enc.actual_table_log);
        of.flush(&mut wr, of_enc.actual_table_log);
        ll.flush(&mut wr, ll_enc.actual_table_log);
        wr.close();
        self.output = std::mem::take(&mut wr.out);

        if self.output.len() - 3 - bh_offset >= self.size {
            if self.rules.raw_in_encode {
                // Discard and encode as raw block.
                self.output.truncate(bh_offset);
                encode_raw_to(&mut self.output, org, self.last);
                self.pop_offsets();
                self.lit_enc.reuse = ReusePolicy::None;
                return Ok(());
            }
            self.lit_enc.reuse = ReusePolicy::None;
            return Err(BlockError::Incompressible);
        }
        bh.set_size((self.output.len() - bh_offset - 3) as u32);
        bh.write_at(&mut self.output[bh_offset..]);
        self.ll
            .set_prev(Some(ll_pick).filter(|p| *p != Pick::Predef));
        self.ml
            .set_prev(Some(ml_pick).filter(|p| *p != Pick::Predef));
        self.of
            .set_prev(Some(of_pick).filter(|p| *p != Pick::Predef));
        Ok(())
    }

    /// `genCodes`: the codes and histograms of the sequences.
    fn gen_codes(&mut self) {
        if self.sequences.is_empty() {
            return;
        }
        assert!(
            self.sequences.len() <= u16::MAX as usize,
            "can only encode up to 64K sequences"
        );
        let ll_h = &mut self.ll.encs[self.ll.cur].count;
        let of_h = &mut self.of.encs[self.of.cur].count;
        let ml_h = &mut self.ml.encs[self.ml.cur].count;
        ll_h.fill(0);
        of_h.fill(0);
        ml_h.fill(0);
        let (mut ll_max, mut of_max, mut ml_max) = (0u8, 0u8, 0u8);
        for seq in self.sequences.iter_mut() {
            let v = ll_code(seq.lit_len);
            seq.ll_code = v;
            ll_h[v as usize] += 1;
            ll_max = ll_max.max(v);
            let v = of_code(seq.offset);
            seq.of_code = v;
            of_h[v as usize] += 1;
            of_max = of_max.max(v);
            let v = ml_code(seq.match_len);
            seq.ml_code = v;
            ml_h[v as usize] += 1;
            ml_max = ml_max.max(v);
        }
        let max_count = |a: &[u32]| a.iter().copied().max().unwrap_or(0) as usize;
        let mlc = max_count(&ml_h[..=ml_max as usize]);
        let ofc = max_count(&of_h[..=of_max as usize]);
        let llc = max_count(&ll_h[..=ll_max as usize]);
        self.ml.cur().histogram_finished(ml_max, mlc);
        self.of.cur().histogram_finished(of_max, ofc);
        self.ll.cur().histogram_finished(ll_max, llc);
    }
}

/// `chooseComp`: new table, previous table or predefined, by estimated size.
fn choose_comp(pair: &mut CoderPair, pre_def: &FseEncoder) -> (Pick, u8) {
    let cur = &pair.encs[pair.cur];
    let prev = &pair.encs[1 - pair.cur];
    let hist = &cur.count[..cur.symbol_len as usize];
    let mut n_size = cur.approx_size(hist).wrapping_add(cur.max_header_size());
    let predef_size = pre_def.approx_size(hist);
    let prev_size = prev.approx_size(hist);
    n_size = n_size.wrapping_add((n_size.wrapping_add(2 * 8 * 16)) >> 4);
    if predef_size <= prev_size && predef_size <= n_size {
        (Pick::Predef, COMP_MODE_PREDEFINED)
    } else if prev_size <= n_size {
        (Pick::Prev, COMP_MODE_REPEAT)
    } else {
        (Pick::Cur, COMP_MODE_FSE)
    }
}

/// The encoder a pick refers to, with `setBits` applied (a no-op for the predefined
/// and reused ones).
fn chosen<'a>(
    pair: &'a mut CoderPair,
    p: Pick,
    pre: &'a FseEncoder,
    bits: Option<&[u8]>,
) -> &'a FseEncoder {
    let e = match p {
        Pick::Cur => pair.cur(),
        Pick::Prev => pair.prev(),
        Pick::Predef => return pre,
    };
    e.set_bits(bits);
    e
}

/// `encodeRawTo`: a raw block of `src` appended to `dst`.
pub(crate) fn encode_raw_to(dst: &mut Vec<u8>, src: &[u8], last: bool) {
    let mut bh = BlockHeader::default();
    bh.set_last(last);
    bh.set_size(src.len() as u32);
    bh.set_type(BLOCK_TYPE_RAW);
    bh.append_to(dst);
    dst.extend_from_slice(src);
}

const LL_CODE_TABLE: [u8; 64] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 16, 17, 17, 18, 18, 19, 19, 20, 20,
    20, 20, 21, 21, 21, 21, 22, 22, 22, 22, 22, 22, 22, 22, 23, 23, 23, 23, 23, 23, 23, 23, 24, 24,
    24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24,
];

const ML_CODE_TABLE: [u8; 128] = {
    let mut t = [0u8; 128];
    let mut i = 0;
    while i < 128 {
        t[i] = if i < 32 {
            i as u8
        } else if i < 40 {
            32 + ((i - 32) / 2) as u8
        } else if i < 48 {
            36 + ((i - 40) / 4) as u8
        } else if i < 64 {
            38 + ((i - 48) / 8) as u8
        } else if i < 80 {
            40
        } else if i < 96 {
            41
        } else {
            42
        };
        i += 1;
    }
    t
};

/// `llCode`.
#[inline(always)]
pub(crate) fn ll_code(lit_length: u32) -> u8 {
    if lit_length <= 63 {
        return LL_CODE_TABLE[(lit_length & 63) as usize];
    }
    (high_bit(lit_length) as u8).wrapping_add(19)
}

/// `mlCode` (of matchLength - 3).
#[inline(always)]
pub(crate) fn ml_code(ml_base: u32) -> u8 {
    if ml_base <= 127 {
        return ML_CODE_TABLE[(ml_base & 127) as usize];
    }
    (high_bit(ml_base) as u8).wrapping_add(36)
}

/// `ofCode`.
#[inline(always)]
pub(crate) fn of_code(offset: u32) -> u8 {
    (32 - offset.leading_zeros()).wrapping_sub(1) as u8
}
