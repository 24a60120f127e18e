//! Length-limited canonical Huffman code construction, as in `huffman_code.go`.
//!
//! A code is packed like Go's `hcode`: bit length in the low 8 bits, the
//! (bit-reversed) code above it.

use super::tokens::LITERAL_COUNT;

pub(super) const MAX_BITS_LIMIT: usize = 16;

#[inline(always)]
pub(super) fn hlen(c: u32) -> u32 {
    c & 0xff
}

#[inline(always)]
pub(super) fn hcode64(c: u32) -> u64 {
    (c >> 8) as u64
}

#[inline(always)]
const fn new_hcode(code: u16, length: u8) -> u32 {
    length as u32 | ((code as u32) << 8)
}

#[inline(always)]
const fn reverse_bits(number: u16, bit_length: u8) -> u16 {
    (number << ((16 - bit_length as u32) & 15)).reverse_bits()
}

/// A literal node packed as `freq << 16 | literal`, so that sorting the packed
/// values orders by (frequency, literal) exactly like Go's `sortByFreq`.
const MAX_NODE: u32 = u32::MAX;

#[inline(always)]
fn node_lit(n: u32) -> u16 {
    n as u16
}

#[inline(always)]
fn node_freq(n: u32) -> u16 {
    (n >> 16) as u16
}

#[derive(Clone, Copy, Default)]
struct LevelInfo {
    level: i32,
    last_freq: i32,
    next_char_freq: i32,
    next_pair_freq: i32,
    needed: i32,
}

pub(super) struct HuffmanEncoder {
    pub codes: Vec<u32>,
    bit_count: [i32; 17],
    freqcache: [u32; LITERAL_COUNT + 1],
}

impl HuffmanEncoder {
    pub fn new(size: usize) -> Self {
        HuffmanEncoder {
            codes: vec![0; size],
            bit_count: [0; 17],
            freqcache: [0; LITERAL_COUNT + 1],
        }
    }

    /// `bitLength`: bits needed to code `freq` with this code.
    #[inline]
    pub fn bit_length(&self, freq: &[u16]) -> i64 {
        let mut total = 0i64;
        for (i, &f) in freq.iter().enumerate() {
            if f != 0 {
                total += f as i64 * hlen(self.codes[i]) as i64;
            }
        }
        total
    }

    /// `bitLengthRaw`: bits needed to code the bytes `b` as literals.
    #[inline]
    pub fn bit_length_raw(&self, b: &[u8]) -> i64 {
        let codes = &self.codes[..256];
        b.iter().map(|&x| hlen(codes[x as usize]) as i64).sum()
    }

    /// `canReuseBits`: like `bit_length`, or `i32::MAX` if a used symbol has no code.
    pub fn can_reuse_bits(&self, freq: &[u16]) -> i64 {
        let mut total = 0i64;
        for (i, &f) in freq.iter().enumerate() {
            if f != 0 {
                let code = self.codes[i];
                if code == 0 {
                    return i32::MAX as i64;
                }
                total += f as i64 * hlen(code) as i64;
            }
        }
        total
    }

    /// `bitCounts`: how many literals get each bit length (package-merge style).
    /// `n` nodes are in `self.freqcache[..n]`, sorted; n >= 3.
    fn bit_counts(&mut self, n: usize, mut max_bits: i32) -> usize {
        let list = &mut self.freqcache;
        let n32 = n as i32;
        list[n] = MAX_NODE;
        if max_bits > n32 - 1 {
            max_bits = n32 - 1;
        }
        let mut levels = [LevelInfo::default(); MAX_BITS_LIMIT + 1];
        let mut leaf_counts = [[0i32; MAX_BITS_LIMIT]; MAX_BITS_LIMIT];

        let l2f = node_freq(list[2]) as i32;
        let l1f = node_freq(list[1]) as i32;
        let l0f = node_freq(list[0]) as i32 + node_freq(list[1]) as i32;

        for level in 1..=max_bits {
            levels[level as usize] = LevelInfo {
                level,
                last_freq: l1f,
                next_char_freq: l2f,
                next_pair_freq: l0f,
                needed: 0,
            };
            leaf_counts[level as usize][level as usize] = 2;
            if level == 1 {
                levels[1].next_pair_freq = i32::MAX;
            }
        }
        levels[max_bits as usize].needed = 2 * n32 - 4;

        let mut level = max_bits as usize;
        while level < 16 {
            if levels[level].next_pair_freq == i32::MAX && levels[level].next_char_freq == i32::MAX
            {
                levels[level].needed = 0;
                levels[level + 1].next_pair_freq = i32::MAX;
                level += 1;
                continue;
            }
            let prev_freq = levels[level].last_freq;
            if levels[level].next_char_freq < levels[level].next_pair_freq {
                let nn = leaf_counts[level][level] + 1;
                levels[level].last_freq = levels[level].next_char_freq;
                leaf_counts[level][level] = nn;
                let e = list[nn as usize];
                levels[level].next_char_freq = if node_lit(e) < u16::MAX {
                    node_freq(e) as i32
                } else {
                    i32::MAX
                };
            } else {
                levels[level].last_freq = levels[level].next_pair_freq;
                let save = leaf_counts[level][level];
                leaf_counts[level] = leaf_counts[level - 1];
                leaf_counts[level][level] = save;
                let lv = levels[level].level as usize;
                levels[lv - 1].needed = 2;
            }
            levels[level].needed -= 1;
            if levels[level].needed == 0 {
                if levels[level].level == max_bits {
                    break;
                }
                let lv = levels[level].level as usize;
                levels[lv + 1].next_pair_freq = prev_freq.wrapping_add(levels[level].last_freq);
                level += 1;
            } else {
                while levels[level - 1].needed > 0 {
                    level -= 1;
                }
            }
        }
        assert_eq!(
            leaf_counts[max_bits as usize][max_bits as usize], n32,
            "leafCounts[maxBits][maxBits] != n"
        );
        let counts = &leaf_counts[max_bits as usize];
        for (bits, level) in (1..=max_bits as usize).rev().enumerate() {
            self.bit_count[bits + 1] = counts[level] - counts[level - 1];
        }
        max_bits as usize + 1
    }

    /// `assignEncodingAndSize`: canonical codes, assigned in literal order per bit length.
    fn assign_encoding_and_size(&mut self, nbits: usize, count: usize) {
        let mut code: u16 = 0;
        let mut list_len = count;
        for n in 0..nbits {
            let bits = self.bit_count[n];
            code <<= 1;
            if n == 0 || bits == 0 {
                continue;
            }
            let chunk = &mut self.freqcache[list_len - bits as usize..list_len];
            chunk.sort_unstable_by_key(|&v| node_lit(v));
            for &node in chunk.iter() {
                self.codes[node_lit(node) as usize] =
                    new_hcode(reverse_bits(code, n as u8), n as u8);
                code = code.wrapping_add(1);
            }
            list_len -= bits as usize;
        }
    }

    /// `generate`: the length-limited code for `freq`.
    pub fn generate(&mut self, freq: &[u16], max_bits: i32) {
        let mut count = 0;
        for (i, &f) in freq.iter().enumerate() {
            if f != 0 {
                self.freqcache[count] = ((f as u32) << 16) | i as u32;
                count += 1;
            } else {
                self.codes[i] = 0;
            }
        }
        if count <= 2 {
            for i in 0..count {
                let lit = node_lit(self.freqcache[i]) as usize;
                self.codes[lit] = new_hcode(i as u16, 1);
            }
            return;
        }
        self.freqcache[..count].sort_unstable();
        let nbits = self.bit_counts(count, max_bits);
        self.assign_encoding_and_size(nbits, count);
    }
}

/// The fixed literal/length code of RFC 1951.
pub(super) static FIXED_LITERAL_CODES: [u32; LITERAL_COUNT] = fixed_literal_codes();
/// The fixed distance code.
pub(super) static FIXED_OFFSET_CODES: [u32; 30] = fixed_offset_codes();

const fn fixed_literal_codes() -> [u32; LITERAL_COUNT] {
    let mut codes = [0u32; LITERAL_COUNT];
    let mut ch = 0u16;
    while (ch as usize) < LITERAL_COUNT {
        let (bits, size) = if ch < 144 {
            (ch + 48, 8)
        } else if ch < 256 {
            (ch + 400 - 144, 9)
        } else if ch < 280 {
            (ch - 256, 7)
        } else {
            (ch + 192 - 280, 8)
        };
        codes[ch as usize] = new_hcode(reverse_bits(bits, size), size);
        ch += 1;
    }
    codes
}

const fn fixed_offset_codes() -> [u32; 30] {
    let mut codes = [0u32; 30];
    let mut ch = 0;
    while ch < 30 {
        codes[ch] = new_hcode(reverse_bits(ch as u16, 5), 5);
        ch += 1;
    }
    codes
}

/// `bitLength` against a fixed code table.
pub(super) fn fixed_bit_length(codes: &[u32], freq: &[u16]) -> i64 {
    let mut total = 0i64;
    for (i, &f) in freq.iter().enumerate() {
        if f != 0 {
            total += f as i64 * hlen(codes[i]) as i64;
        }
    }
    total
}
