//! The window bounds libzstd's match finders share (`ZSTD_window_t` and the match state's
//! `nextToUpdate`), as the ports of earlier releases' finders (`dfast.rs`, `lazy.rs`,
//! `opt.rs`) keep them: indices, the stream's first byte being [`super::dfast::START`].

/// `ZSTD_getLowestMatchIndex` / `ZSTD_getLowestPrefixIndex` without a dictionary: the lowest
/// index a match at `curr` may reach, `limit` (`lowLimit` or `dictLimit`) or a window back.
pub(super) fn lowest_index(curr: u32, limit: u32, window_log: u32) -> u32 {
    let max_distance = 1u32 << window_log;
    if curr - limit > max_distance {
        curr - max_distance
    } else {
        limit
    }
}

/// What libzstd does to the window before a block starting at index `curr` is searched:
/// `ZSTD_window_enforceMaxDist` (called with the block's start), insertions resumed no lower
/// than the window (`ZSTD_compress_frameChunk`), and after a long match only its last
/// positions inserted (`ZSTD_buildSeqStore`).
pub(super) fn before_block(
    curr: u32,
    window_log: u32,
    low_limit: &mut u32,
    dict_limit: &mut u32,
    next_to_update: &mut u32,
) {
    let max_dist = 1u32 << window_log;
    if curr > max_dist {
        *low_limit = (*low_limit).max(curr - max_dist);
        *dict_limit = (*dict_limit).max(*low_limit);
    }
    *next_to_update = (*next_to_update).max(*low_limit);
    if curr > *next_to_update + 384 {
        *next_to_update = curr - 192.min(curr - *next_to_update - 384);
    }
}

/// Repeat offsets beyond `max_rep` at a block's start are set aside (0, "invalid"), as the
/// one-segment finders do (`offsetSaved`): `(offsets, saved)`.
pub(super) fn set_aside(rep: [u32; 2], max_rep: u32) -> ([u32; 2], [u32; 2]) {
    let mut offsets = rep;
    let mut saved = [0; 2];
    for i in 0..2 {
        if offsets[i] > max_rep {
            saved[i] = offsets[i];
            offsets[i] = 0;
        }
    }
    (offsets, saved)
}

/// The repeat offsets a one-segment block ends with: an invalid one takes back what was set
/// aside, and if the first was invalid and became valid, the saved ones rotate.
pub(super) fn restored(offsets: [u32; 2], mut saved: [u32; 2]) -> [u32; 2] {
    if saved[0] != 0 && offsets[0] != 0 {
        saved[1] = saved[0];
    }
    [
        if offsets[0] != 0 {
            offsets[0]
        } else {
            saved[0]
        },
        if offsets[1] != 0 {
            offsets[1]
        } else {
            saved[1]
        },
    ]
}
