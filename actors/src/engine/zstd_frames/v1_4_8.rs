//! The compression parameters libzstd 1.4.8-1.5.0 derive from a level (their
//! `ZSTD_defaultCParameters`, from `lib/compress/zstd_compress.c` of 1.4.8): 1.5.x changed
//! levels 5-13 of the table for large inputs and some rows for small ones. Frames of those
//! releases at levels whose match finders 1.5.7 still has (greedy to btlazy2, with its
//! row-based finder off and stowage's `ZSTD_c_stowageBefore151`) are written by the linked
//! libzstd from these parameters, which it then fits to the frame's size as those releases
//! did (`ZSTD_adjustCParams_internal`).

/// One row: window, chain, hash and search logs, minimum match, target length, strategy
/// (`ZSTD_strategy`: 1 fast, 2 dfast, 3 greedy, 4 lazy, 5 lazy2, 6 btlazy2, 7-9 optimal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct CParams {
    pub window_log: u32,
    pub chain_log: u32,
    pub hash_log: u32,
    pub search_log: u32,
    pub min_match: u32,
    pub target_length: u32,
    pub strategy: u32,
}

/// `ZSTD_btlazy2`: the slowest strategy whose match finder 1.5.7 keeps as it was.
pub(super) const STRATEGY_BTLAZY2: u32 = 6;

/// The table: for inputs of any size over 256 KiB (or unknown), up to 256 KiB, 128 KiB,
/// 16 KiB; rows for levels 0-22.
const TABLE: [[[u32; 7]; 23]; 4] = [
    [
        [19, 12, 13, 1, 6, 1, 1],
        [19, 13, 14, 1, 7, 0, 1],
        [20, 15, 16, 1, 6, 0, 1],
        [21, 16, 17, 1, 5, 0, 2],
        [21, 18, 18, 1, 5, 0, 2],
        [21, 18, 19, 2, 5, 2, 3],
        [21, 19, 19, 3, 5, 4, 3],
        [21, 19, 19, 3, 5, 8, 4],
        [21, 19, 19, 3, 5, 16, 5],
        [21, 19, 20, 4, 5, 16, 5],
        [22, 20, 21, 4, 5, 16, 5],
        [22, 21, 22, 4, 5, 16, 5],
        [22, 21, 22, 5, 5, 16, 5],
        [22, 21, 22, 5, 5, 32, 6],
        [22, 22, 23, 5, 5, 32, 6],
        [22, 23, 23, 6, 5, 32, 6],
        [22, 22, 22, 5, 5, 48, 7],
        [23, 23, 22, 5, 4, 64, 7],
        [23, 23, 22, 6, 3, 64, 8],
        [23, 24, 22, 7, 3, 256, 9],
        [25, 25, 23, 7, 3, 256, 9],
        [26, 26, 24, 7, 3, 512, 9],
        [27, 27, 25, 9, 3, 999, 9],
    ],
    [
        [18, 12, 13, 1, 5, 1, 1],
        [18, 13, 14, 1, 6, 0, 1],
        [18, 14, 14, 1, 5, 0, 2],
        [18, 16, 16, 1, 4, 0, 2],
        [18, 16, 17, 2, 5, 2, 3],
        [18, 18, 18, 3, 5, 2, 3],
        [18, 18, 19, 3, 5, 4, 4],
        [18, 18, 19, 4, 4, 4, 4],
        [18, 18, 19, 4, 4, 8, 5],
        [18, 18, 19, 5, 4, 8, 5],
        [18, 18, 19, 6, 4, 8, 5],
        [18, 18, 19, 5, 4, 12, 6],
        [18, 19, 19, 7, 4, 12, 6],
        [18, 18, 19, 4, 4, 16, 7],
        [18, 18, 19, 4, 3, 32, 7],
        [18, 18, 19, 6, 3, 128, 7],
        [18, 19, 19, 6, 3, 128, 8],
        [18, 19, 19, 8, 3, 256, 8],
        [18, 19, 19, 6, 3, 128, 9],
        [18, 19, 19, 8, 3, 256, 9],
        [18, 19, 19, 10, 3, 512, 9],
        [18, 19, 19, 12, 3, 512, 9],
        [18, 19, 19, 13, 3, 999, 9],
    ],
    [
        [17, 12, 12, 1, 5, 1, 1],
        [17, 12, 13, 1, 6, 0, 1],
        [17, 13, 15, 1, 5, 0, 1],
        [17, 15, 16, 2, 5, 0, 2],
        [17, 17, 17, 2, 4, 0, 2],
        [17, 16, 17, 3, 4, 2, 3],
        [17, 17, 17, 3, 4, 4, 4],
        [17, 17, 17, 3, 4, 8, 5],
        [17, 17, 17, 4, 4, 8, 5],
        [17, 17, 17, 5, 4, 8, 5],
        [17, 17, 17, 6, 4, 8, 5],
        [17, 17, 17, 5, 4, 8, 6],
        [17, 18, 17, 7, 4, 12, 6],
        [17, 18, 17, 3, 4, 12, 7],
        [17, 18, 17, 4, 3, 32, 7],
        [17, 18, 17, 6, 3, 256, 7],
        [17, 18, 17, 6, 3, 128, 8],
        [17, 18, 17, 8, 3, 256, 8],
        [17, 18, 17, 10, 3, 512, 8],
        [17, 18, 17, 5, 3, 256, 9],
        [17, 18, 17, 7, 3, 512, 9],
        [17, 18, 17, 9, 3, 512, 9],
        [17, 18, 17, 11, 3, 999, 9],
    ],
    [
        [14, 12, 13, 1, 5, 1, 1],
        [14, 14, 15, 1, 5, 0, 1],
        [14, 14, 15, 1, 4, 0, 1],
        [14, 14, 15, 2, 4, 0, 2],
        [14, 14, 14, 4, 4, 2, 3],
        [14, 14, 14, 3, 4, 4, 4],
        [14, 14, 14, 4, 4, 8, 5],
        [14, 14, 14, 6, 4, 8, 5],
        [14, 14, 14, 8, 4, 8, 5],
        [14, 15, 14, 5, 4, 8, 6],
        [14, 15, 14, 9, 4, 8, 6],
        [14, 15, 14, 3, 4, 12, 7],
        [14, 15, 14, 4, 3, 24, 7],
        [14, 15, 14, 5, 3, 32, 8],
        [14, 15, 15, 6, 3, 64, 8],
        [14, 15, 15, 7, 3, 256, 8],
        [14, 15, 15, 5, 3, 48, 9],
        [14, 15, 15, 6, 3, 128, 9],
        [14, 15, 15, 7, 3, 256, 9],
        [14, 15, 15, 8, 3, 256, 9],
        [14, 15, 15, 8, 3, 512, 9],
        [14, 15, 15, 9, 3, 512, 9],
        [14, 15, 15, 10, 3, 999, 9],
    ],
];

/// The row 1.4.8 takes for `level` (1-22) and a frame of `content_size` (None: unknown,
/// as from a pipe): `ZSTD_getCParams` without a dictionary, before fitting it to the size.
pub(super) fn cparams(level: i32, content_size: Option<u64>) -> Option<CParams> {
    if !(1..=22).contains(&level) {
        return None;
    }
    let table = match content_size {
        None => 0,
        Some(n) => {
            usize::from(n <= 256 << 10) + usize::from(n <= 128 << 10) + usize::from(n <= 16 << 10)
        }
    };
    let [window_log, chain_log, hash_log, search_log, min_match, target_length, strategy] =
        TABLE[table][level as usize];
    Some(CParams {
        window_log,
        chain_log,
        hash_log,
        search_log,
        min_match,
        target_length,
        strategy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows read back as in 1.4.8's source: level 3 of the large-input table, level 5 of the
    /// 256 KiB one, level 22 of the 16 KiB one.
    #[test]
    fn rows_of_1_4_8s_table() {
        let row = |c: CParams| {
            [
                c.window_log,
                c.chain_log,
                c.hash_log,
                c.search_log,
                c.min_match,
                c.target_length,
                c.strategy,
            ]
        };
        assert_eq!(row(cparams(3, None).unwrap()), [21, 16, 17, 1, 5, 0, 2]);
        assert_eq!(
            row(cparams(5, Some(200_000)).unwrap()),
            [18, 18, 18, 3, 5, 2, 3]
        );
        assert_eq!(
            row(cparams(22, Some(1000)).unwrap()),
            [14, 15, 15, 10, 3, 999, 9]
        );
        assert_eq!(cparams(0, None), None);
    }
}
