//! Levels 7-9 of klauspost/compress up to 1.13.6 (`deflateLazy` and `findMatch` before 1.14.0
//! rewrote them; the same from 1.10.3 on): hashes of the 4 bytes read big-endian, no look for
//! a better match at the end of one, a long run of literals skipped ahead without hashing
//! (`ii >> 5` bytes once 32 literals in a row were emitted), at most 2^14 tokens a block, and
//! each block written by `writeBlock` ([`BitWriter::write_block_before_1_14`]). A match of 4
//! bytes is taken only within 4096 bytes.

use super::{Compressor, Kind, Lazy, MAX_MATCH_LENGTH, MIN_MATCH_LENGTH, WINDOW_MASK, WINDOW_SIZE};
use crate::engine::kpflate::bitwriter::BitWriter;
use crate::engine::kpflate::tokens::{match_len, Tokens};

/// `maxFlateBlockTokens` before 1.14.0.
const MAX_FLATE_BLOCK_TOKENS: usize = 1 << 14;

/// `hash4` before 1.14.0: the 4 bytes read big-endian.
#[inline(always)]
pub(super) fn hash4(b: &[u8]) -> usize {
    super::hash4u(u32::from_be_bytes(b[..4].try_into().unwrap())) as usize
}

/// `bulkHash4` before 1.14.0.
pub(super) fn bulk_hash4(b: &[u8], dst: &mut [u32]) {
    if b.len() < 4 {
        return;
    }
    let mut hb = u32::from_be_bytes(b[..4].try_into().unwrap());
    dst[0] = super::hash4u(hb);
    for i in 1..b.len() - 4 + 1 {
        hb = (hb << 8) | b[i + 3] as u32;
        dst[i] = super::hash4u(hb);
    }
}

impl Compressor {
    /// `deflateLazy` before 1.14.0.
    pub(super) fn deflate_lazy_before_1_14(&mut self) {
        let Kind::Lazy(s) = &mut self.kind else {
            unreachable!()
        };
        let window = &self.window[..];
        let window_end = self.window_end as isize;
        let tokens = &mut self.tokens;
        let w = &mut self.w;
        let sync = self.sync;
        let block_start = &mut self.block_start;

        if window_end - s.index < MIN_MATCH_LENGTH + MAX_MATCH_LENGTH && !sync {
            return;
        }
        s.max_insert_index = window_end - (MIN_MATCH_LENGTH - 1);

        // `writeBlock`
        let write_block =
            |w: &mut BitWriter, tokens: &mut Tokens, block_start: &mut isize, index: isize| {
                if index > 0 {
                    let win = if *block_start <= index {
                        Some(&window[*block_start as usize..index as usize])
                    } else {
                        None
                    };
                    *block_start = index;
                    w.write_block_before_1_14(tokens, false, win);
                }
                tokens.reset();
            };

        loop {
            let lookahead = window_end - s.index;
            if lookahead < MIN_MATCH_LENGTH + MAX_MATCH_LENGTH {
                if !sync {
                    return;
                }
                if lookahead == 0 {
                    if self.byte_available {
                        tokens.add_literal(window[s.index as usize - 1]);
                        self.byte_available = false;
                    }
                    if tokens.n > 0 {
                        write_block(w, tokens, block_start, s.index);
                    }
                    return;
                }
            }
            if s.index < s.max_insert_index {
                let hash = hash4(&window[s.index as usize..]);
                let ch = s.hash_head[hash];
                s.chain_head = ch as isize;
                s.hash_prev[s.index as usize & WINDOW_MASK] = ch;
                s.hash_head[hash] = (s.index + s.hash_offset) as u32;
            }
            let prev_length = s.length;
            let prev_offset = s.offset;
            s.length = MIN_MATCH_LENGTH - 1;
            s.offset = 0;
            let min_index = (s.index - WINDOW_SIZE as isize).max(0);

            if s.chain_head - s.hash_offset >= min_index
                && lookahead > prev_length
                && prev_length < s.lazy
            {
                if let Some((nl, no)) =
                    find_match(s, window, s.index, s.chain_head - s.hash_offset, lookahead)
                {
                    s.length = nl;
                    s.offset = no;
                }
            }

            if prev_length >= MIN_MATCH_LENGTH && s.length <= prev_length {
                tokens.add_match((prev_length - 3) as u32, (prev_offset - 1) as u32);
                let new_index = s.index + prev_length - 1;
                let end = new_index.min(s.max_insert_index) + MIN_MATCH_LENGTH - 1;
                let startindex = (s.index + 1).min(s.max_insert_index);
                s.insert_hashes(window, startindex as usize, end as usize);
                s.index = new_index;
                self.byte_available = false;
                s.length = MIN_MATCH_LENGTH - 1;
                if tokens.n == MAX_FLATE_BLOCK_TOKENS {
                    write_block(w, tokens, block_start, s.index);
                }
            } else {
                if s.length >= MIN_MATCH_LENGTH {
                    s.ii = 0;
                }
                if self.byte_available {
                    s.ii = s.ii.wrapping_add(1);
                    tokens.add_literal(window[s.index as usize - 1]);
                    if tokens.n == MAX_FLATE_BLOCK_TOKENS {
                        write_block(w, tokens, block_start, s.index);
                    }
                    s.index += 1;
                    if s.ii > 31 {
                        for _ in 0..s.ii >> 5 {
                            if s.index >= window_end - 1 {
                                break;
                            }
                            tokens.add_literal(window[s.index as usize - 1]);
                            if tokens.n == MAX_FLATE_BLOCK_TOKENS {
                                write_block(w, tokens, block_start, s.index);
                            }
                            s.index += 1;
                        }
                        tokens.add_literal(window[s.index as usize - 1]);
                        self.byte_available = false;
                        if tokens.n == MAX_FLATE_BLOCK_TOKENS {
                            write_block(w, tokens, block_start, s.index);
                        }
                    }
                } else {
                    s.index += 1;
                    self.byte_available = true;
                }
            }
        }
    }
}

/// `findMatch` before 1.14.0: the longest match at `pos` along the hash chain from
/// `prev_head` (a 4-byte one only within 4096 bytes).
fn find_match(
    s: &Lazy,
    window: &[u8],
    pos: isize,
    prev_head: isize,
    lookahead: isize,
) -> Option<(isize, isize)> {
    let min_match_look = lookahead.min(MAX_MATCH_LENGTH);
    let win = &window[..(pos + min_match_look) as usize];
    let nice = (win.len() as isize - pos).min(s.nice);
    // (`good` would quarter the tries for a previous match that long; the previous length
    // passed is always 3.)
    let mut tries = s.chain;
    let mut length = MIN_MATCH_LENGTH - 1;
    let mut w_end = win[(pos + length) as usize];
    let w_pos = &win[pos as usize..];
    let min_index = pos - WINDOW_SIZE as isize;
    let mut offset = 0;
    let mut ok = false;
    let mut i = prev_head;
    while tries > 0 {
        if w_end == win[(i + length) as usize] {
            let n = match_len(&win[i as usize..(i + min_match_look) as usize], w_pos) as isize;
            if n > length && (n > MIN_MATCH_LENGTH || pos - i <= 4096) {
                length = n;
                offset = pos - i;
                ok = true;
                if n >= nice {
                    break;
                }
                w_end = win[(pos + n) as usize];
            }
        }
        if i == min_index {
            break;
        }
        i = s.hash_prev[i as usize & WINDOW_MASK] as isize - s.hash_offset;
        if i < min_index || i < 0 {
            break;
        }
        tries -= 1;
    }
    ok.then_some((length, offset))
}
