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

/// Moves every index down so that the window's lowest, `low_limit`, becomes
/// [`super::dfast::START`] (`ZSTD_reduceIndex`, for the fast finders' tables): entries below
/// it are cleared, which they were as good as (they never match). The buffer must start at
/// `low_limit`. Returns by how much.
pub(super) fn reduce_indices<'a>(
    tables: impl Iterator<Item = &'a mut u32>,
    base: &mut u32,
    low_limit: &mut u32,
    dict_limit: &mut u32,
) -> u32 {
    debug_assert_eq!(*base, *low_limit);
    let delta = *low_limit - super::dfast::START;
    for e in tables {
        *e = e.saturating_sub(delta);
    }
    *base -= delta;
    *low_limit -= delta;
    *dict_limit -= delta;
    delta
}

/// `ZSTD_window_enforceMaxDist`, called with the index of a block's start: the window's
/// segments no lower than a window back.
pub(super) fn enforce_max_dist(
    curr: u32,
    window_log: u32,
    low_limit: &mut u32,
    dict_limit: &mut u32,
) {
    let max_dist = 1u32 << window_log;
    if curr > max_dist {
        *low_limit = (*low_limit).max(curr - max_dist);
        *dict_limit = (*dict_limit).max(*low_limit);
    }
}

/// 1.4.8-1.5.0's one-segment finders set one repeat offset aside at a block's start (the
/// last beyond `max_rep`), for either: `(offsets, saved)`.
pub(super) fn set_aside_one(rep: [u32; 2], max_rep: u32) -> ([u32; 2], u32) {
    let [mut offset_1, mut offset_2] = rep;
    let mut saved = 0;
    if offset_2 > max_rep {
        saved = offset_2;
        offset_2 = 0;
    }
    if offset_1 > max_rep {
        saved = offset_1;
        offset_1 = 0;
    }
    ([offset_1, offset_2], saved)
}

/// The repeat offsets such a block ends with: an invalid one takes back the one set aside.
pub(super) fn restored_one(offsets: [u32; 2], saved: u32) -> [u32; 2] {
    offsets.map(|o| if o != 0 { o } else { saved })
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
    enforce_max_dist(curr, window_log, low_limit, dict_limit);
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
