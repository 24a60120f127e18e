//! The repeat offsets libzstd carries from one block to the next, read back from what it
//! wrote: the ports of earlier releases' match finders (`dfast.rs`, `opt.rs`) hand a block's
//! sequences to libzstd 1.5.7 and must start the next block from the offsets libzstd (and the
//! release re-enacted) starts it from, which depend on how the block was stored.

use super::dfast::Seq;
use super::opt::{new_rep, raw_offset};

/// The repeat offsets libzstd starts the block after this one from, having written this one
/// (`written`: its blocks, the frame's header and checksum cut off) from `seqs`, starting
/// from `before`. A block written whole keeps the sequences' offsets if compressed, else the
/// ones before. A block its post-splitter cut (`btopt` and up) into partitions, some stored
/// raw or as one byte repeated, keeps what a decoder has seen (`dRep` in
/// `ZSTD_compressBlock_splitBlock_internal`): the compressed partitions' sequences, their
/// repeat codes turned into offsets where the two histories differ
/// (`ZSTD_seqStore_resolveOffCodes`). A compressed partition says how many sequences it
/// holds; a stored one, how many bytes.
pub(super) fn reps_after(before: [u32; 3], seqs: &[Seq], written: &[u8]) -> Option<[u32; 3]> {
    let (mut d, mut c) = (before, before);
    let mut next = seqs.iter();
    let mut at = 0;
    while at + 3 <= written.len() {
        let h = u32::from_le_bytes([written[at], written[at + 1], written[at + 2], 0]);
        let (last, kind, size) = (h & 1 == 1, (h >> 1) & 3, (h >> 3) as usize);
        at += 3;
        match kind {
            2 => {
                let n = sequences_in(written.get(at..at + size)?)?;
                for s in next.by_ref().take(n) {
                    let ll0 = s.lit_len == 0;
                    let mut off = s.off_code;
                    if off <= 3 {
                        let (dr, cr) = (raw_offset(&d, off, ll0), raw_offset(&c, off, ll0));
                        if dr != cr {
                            off = cr + 3;
                        }
                    }
                    d = new_rep(d, off, ll0);
                    c = new_rep(c, s.off_code, ll0);
                }
                at += size;
            }
            0 | 1 => {
                // A stored partition: the sequences whose bytes it holds leave `d` alone.
                let mut left = size;
                for s in next.as_slice() {
                    let len = (s.lit_len + s.match_len) as usize;
                    if len > left {
                        break;
                    }
                    left -= len;
                    c = new_rep(c, s.off_code, s.lit_len == 0);
                    next.next();
                }
                at += if kind == 0 { size } else { 1 };
            }
            _ => return None,
        }
        if last {
            break;
        }
    }
    // Only compressed partitions move `d`: a block stored whole leaves `before`.
    Some(d)
}

/// How many sequences a compressed block holds: its literals section skipped, the sequences
/// section's header read.
fn sequences_in(block: &[u8]) -> Option<usize> {
    let b0 = *block.first()?;
    let (kind, format) = (b0 & 3, (b0 >> 2) & 3);
    let byte = |i: usize| block.get(i).map(|&b| b as usize);
    let skip = if kind < 2 {
        // Raw or one byte repeated: a 1, 2 or 3 byte header with the size.
        let (header, size) = match format {
            0 | 2 => (1, (b0 >> 3) as usize),
            1 => (2, (b0 >> 4) as usize | byte(1)? << 4),
            _ => (3, (b0 >> 4) as usize | byte(1)? << 4 | byte(2)? << 12),
        };
        header + if kind == 0 { size } else { 1 }
    } else {
        // Huffman-coded: both sizes in a 3, 4 or 5 byte header.
        let (header, bits) = match format {
            0 | 1 => (3, 10),
            2 => (4, 14),
            _ => (5, 18),
        };
        let mut v = 0usize;
        for i in 0..header {
            v |= byte(i)? << (8 * i);
        }
        header + ((v >> (4 + bits)) & ((1 << bits) - 1))
    };
    let n0 = byte(skip)?;
    Some(match n0 {
        0..=127 => n0,
        128..=254 => ((n0 - 128) << 8) + byte(skip + 1)?,
        _ => byte(skip + 1)? + (byte(skip + 2)? << 8) + 0x7F00,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block the post-splitter cut in three, its middle partition stored raw: the next
    /// block starts from what a decoder saw (the stored partition's new offset missing, and
    /// the last partition's repeat code, which meant that offset, sent as the offset itself),
    /// not from the parser's own history.
    #[test]
    fn after_a_stored_partition_the_decoders_repeat_offsets_go_on() {
        let seq = |lit_len, off_code, match_len| Seq {
            lit_len,
            off_code,
            match_len,
        };
        let seqs = [seq(5, 103, 10), seq(2, 303, 8), seq(1, 2, 5)];
        // A compressed partition: 5 raw literals, then one sequence (the rest not read).
        let compressed = |last: bool| {
            let body = [5 << 3, b'a', b'b', b'c', b'd', b'e', 1, 0, 0, 0];
            let h = u32::from(last) | 2 << 1 | (body.len() as u32) << 3;
            let mut b = h.to_le_bytes()[..3].to_vec();
            b.extend_from_slice(&body);
            b
        };
        let mut written = compressed(false);
        written.extend_from_slice(&(10u32 << 3).to_le_bytes()[..3]);
        written.extend_from_slice(&[7; 10]);
        written.extend(compressed(true));
        assert_eq!(reps_after([1, 4, 8], &seqs, &written), Some([100, 100, 1]));
        // All compressed: the parser's own.
        let mut all = compressed(false);
        all.extend(compressed(false));
        all.extend(compressed(true));
        assert_eq!(reps_after([1, 4, 8], &seqs, &all), Some([100, 300, 1]));
        // Stored whole: the ones before.
        let mut raw = (25u32 << 3 | 1).to_le_bytes()[..3].to_vec();
        raw.extend_from_slice(&[7; 25]);
        assert_eq!(reps_after([1, 4, 8], &seqs, &raw), Some([1, 4, 8]));
    }
}
