//! libzstd's streaming compressor (`ZSTD_compressStream2`) through its C API, for the one
//! parameter the `zstd` crate does not set: `ZSTD_c_blockSplitterLevel`.
//!
//! libzstd 1.5.7 cuts a full 128 KiB block where its content changes (its "pre-splitter", on at
//! every level); earlier releases cut whole 128 KiB blocks. With the pre-splitter off
//! (`blockSplitterLevel` 1), 1.5.7 writes the bytes of those releases wherever its match finders
//! did not change since. Checked by building each release's library from its tag and
//! comparing the frames of the same inputs (text, shared libraries, random and zero runs;
//! single- and multi-threaded, with and without the content size), 2026-12-04:
//!
//! | release | levels written alike | what differs at the others |
//! |---|---|---|
//! | 1.5.6 | 1, 2, 5-19 | levels 3-4: `dfast` takes a long match at the next position only if longer (1.5.7); written by the port of theirs (`dfast_writer.rs`) |
//! | 1.5.5 | 1, 2, 5-15 | and the optimal parser (16-19, rewritten in 1.5.6); written by the port of theirs (`opt.rs`) |
//! | 1.5.4 (Debian 12's `zstd`) | 1, 2, 13-15 | and the lazy match finders (5-12: row hash salt and tags, skipping incompressible data, 1.5.5); 3-4, 5-12 (`lazy.rs`) and 16-19 through the ports |
//! | 1.5.1, 1.5.2 | 13-15 | and levels 1-2 (changed by 1.5.4: written alike for a few MB, so told apart only by verify-before-discard); at 3-4 1.5.4's bytes, written by the port (checked 2026-12-05 with their CLIs on a 43.7 MB tar: pipe, file, `--single-thread`, `-T2`, `--no-check`) |
//! | 1.5.0, 1.4.8 | none | |
//!
//! The same holds with `--long` (checked for 1.5.4-1.5.6), once long-distance matching gets
//! the parameters those releases derived (1.5.7 derives others from the strategy): a hash log of the window log
//! less 7 (at least 6), a hash rate log of the rest, a minimum match of 64 and buckets of 8,
//! the window log being 27 or, with the content size in the header, that of the size if
//! smaller ([`old_ldm`]).

use std::ffi::{c_int, c_void};
use std::ptr::NonNull;

use zstd::zstd_safe::zstd_sys::{self as sys, ZSTD_EndDirective, ZSTD_cParameter};

use super::v1_4_8;

/// What a frame is written with.
#[derive(Clone, Copy, Debug)]
pub(super) struct LibzstdParams {
    pub level: i32,
    /// Long-distance matching with this window log.
    pub long_window_log: Option<u32>,
    /// Multi-threaded mode with this many workers (0: single-threaded).
    pub workers: u32,
    pub checksum: bool,
    /// The frame declares its size, this one.
    pub content_size: Option<u64>,
    /// Whole 128 KiB blocks (and, with `long_window_log`, long-distance matching's
    /// parameters), as releases before 1.5.7 had them.
    pub fixed_blocks: bool,
    /// With `fixed_blocks`, the bytes of 1.4.8-1.5.0 where 1.5.7 still has their match finder
    /// (greedy to btlazy2): their level's parameters (`v1_4_8.rs`), the hash-chain finders
    /// (not the row-based ones), and `ZSTD_c_stowageBefore151`.
    pub before_1_5_1: bool,
    /// The lazy match finders without 1.5.5's skipping through incompressible data, as
    /// 1.5.1-1.5.4 have them (`ZSTD_c_stowageBefore151` = 2).
    pub no_lazy_skipping: bool,
}

/// Whether this writer writes 1.4.8-1.5.0's frame at `level` through the linked libzstd
/// (`before_1_5_1`): without `--long`, where those releases' strategy at the frame's size is
/// one of the hash-chain finders 1.5.7 keeps (greedy to btlazy2).
pub(super) fn writes_1_4_8_chains(level: i32, long: bool, content_size: Option<u64>) -> bool {
    !long
        && v1_4_8::cparams(level, content_size)
            .is_some_and(|c| (3..=v1_4_8::STRATEGY_BTLAZY2).contains(&c.strategy))
}

/// Long-distance matching's hash log, hash rate log, minimum match and bucket size log as
/// libzstd before 1.5.7 derived them (`ZSTD_ldm_adjustParameters`) from the window log, which
/// a known content size shrinks to the size's (`ZSTD_adjustCParams_internal`).
pub(super) fn old_ldm(window_log: u32, content_size: Option<u64>) -> (u32, u32, u32, u32) {
    let window_log = match content_size {
        // libzstd resizes windows only for sources up to 1 GiB.
        Some(n) if n <= 1 << 30 => {
            let src_log = if n < 64 {
                6
            } else {
                64 - (n - 1).leading_zeros()
            };
            window_log.min(src_log)
        }
        _ => window_log,
    };
    let hash_log = window_log.saturating_sub(7).max(6);
    let rate_log = window_log.saturating_sub(hash_log);
    (hash_log, rate_log, 64, 3.min(hash_log))
}

/// One frame being written.
pub(super) struct LibzstdWriter {
    cctx: NonNull<sys::ZSTD_CCtx>,
}

// A compression context belongs to no thread: it is used by one at a time (`&mut self`).
unsafe impl Send for LibzstdWriter {}

impl Drop for LibzstdWriter {
    fn drop(&mut self) {
        // SAFETY: created by ZSTD_createCCtx and freed once, here.
        unsafe { sys::ZSTD_freeCCtx(self.cctx.as_ptr()) };
    }
}

/// `r`, unless it is a libzstd error (a bug here: the parameters were checked at ingest).
pub(super) fn check(r: usize, what: &str) -> usize {
    // SAFETY: plain functions of a return code.
    if unsafe { sys::ZSTD_isError(r) } != 0 {
        let name = unsafe { std::ffi::CStr::from_ptr(sys::ZSTD_getErrorName(r)) };
        panic!("libzstd {what}: {}", name.to_string_lossy());
    }
    r
}

impl LibzstdWriter {
    pub fn new(p: &LibzstdParams) -> LibzstdWriter {
        // SAFETY: no arguments; a null return is an allocation failure.
        let cctx = NonNull::new(unsafe { sys::ZSTD_createCCtx() }).expect("ZSTD_createCCtx");
        let mut w = LibzstdWriter { cctx };
        use ZSTD_cParameter::*;
        w.set(ZSTD_c_compressionLevel, p.level);
        if p.workers > 0 {
            w.set(ZSTD_c_nbWorkers, p.workers as i32);
        }
        if let Some(log) = p.long_window_log {
            w.set(ZSTD_c_enableLongDistanceMatching, 1);
            w.set(ZSTD_c_windowLog, log as i32);
            if p.fixed_blocks {
                let (hash, rate, min_match, bucket) = old_ldm(log, p.content_size);
                w.set(ZSTD_c_ldmHashLog, hash as i32);
                // 0 (a frame under 64 bytes, too short for a long match) is the default.
                w.set(ZSTD_c_ldmHashRateLog, rate as i32);
                w.set(ZSTD_c_ldmMinMatch, min_match as i32);
                w.set(ZSTD_c_ldmBucketSizeLog, bucket as i32);
            }
        }
        w.set(ZSTD_c_checksumFlag, p.checksum as i32);
        w.set(ZSTD_c_contentSizeFlag, p.content_size.is_some() as i32);
        if p.fixed_blocks {
            // ZSTD_c_blockSplitterLevel: 1 is "no splitting".
            w.set(ZSTD_c_experimentalParam20, 1);
        }
        if p.no_lazy_skipping && !p.before_1_5_1 {
            // SAFETY: a live context, before its first byte.
            unsafe { set_before_1_5_1(w.cctx, NO_LAZY_SKIPPING) };
        }
        // (A 1.4.8 frame whose strategy at its size is not one of those, as a later frame
        // of a stream may be, is written with 1.5.7's parameters: it does not match, and
        // ingest tries the stream's other encoders or keeps it raw.)
        if let Some(c) = v1_4_8::cparams(p.level, p.content_size)
            .filter(|c| p.before_1_5_1 && c.strategy <= v1_4_8::STRATEGY_BTLAZY2)
        {
            w.set(ZSTD_c_windowLog, c.window_log as i32);
            w.set(ZSTD_c_chainLog, c.chain_log as i32);
            w.set(ZSTD_c_hashLog, c.hash_log as i32);
            w.set(ZSTD_c_searchLog, c.search_log as i32);
            w.set(ZSTD_c_minMatch, c.min_match as i32);
            w.set(ZSTD_c_targetLength, c.target_length as i32);
            w.set(ZSTD_c_strategy, c.strategy as i32);
            // ZSTD_c_useRowMatchFinder: ZSTD_ps_disable.
            w.set(ZSTD_c_experimentalParam14, 2);
            // SAFETY: a live context, before its first byte.
            unsafe { set_before_1_5_1(w.cctx, BEFORE_1_5_1) };
        }
        if let Some(n) = p.content_size {
            // SAFETY: a live context, before its first byte.
            check(
                unsafe { sys::ZSTD_CCtx_setPledgedSrcSize(w.cctx.as_ptr(), n as _) },
                "pledged size",
            );
        }
        w
    }

    fn set(&mut self, param: ZSTD_cParameter, value: i32) {
        // SAFETY: a live context; libzstd checks the value.
        let r = unsafe { sys::ZSTD_CCtx_setParameter(self.cctx.as_ptr(), param, value) };
        check(r, &format!("{param:?} = {value}"));
    }

    /// Compresses `raw` on, appending what comes out to `out`.
    pub fn write(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        self.run(raw, ZSTD_EndDirective::ZSTD_e_continue, out);
    }

    /// Ends the current block, as a `flush()` of a streaming writer does.
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        self.run(&[], ZSTD_EndDirective::ZSTD_e_flush, out);
    }

    /// Ends the frame.
    pub fn finish(mut self, out: &mut Vec<u8>) {
        self.run(&[], ZSTD_EndDirective::ZSTD_e_end, out);
    }

    fn run(&mut self, raw: &[u8], op: ZSTD_EndDirective, out: &mut Vec<u8>) {
        // SAFETY: a live context, used by this writer alone.
        unsafe { compress_stream(self.cctx, raw, op, out) }
    }
}

extern "C" {
    /// `ZSTD_CCtx_setParameter` for a parameter the bindings do not name.
    #[link_name = "ZSTD_CCtx_setParameter"]
    fn set_parameter_by_number(cctx: *mut sys::ZSTD_CCtx, param: c_int, value: c_int) -> usize;
}

/// `ZSTD_c_stowageBefore151`, the parameter stowage's patch adds to libzstd
/// (`vendor/README.md`): 1.4.8-1.5.0's Huffman symbol sort (equal counts in symbol order;
/// 1.5.1 quicksorts counts of 166 and over) and lazy match finders without 1.5.5's skipping.
const STOWAGE_BEFORE_1_5_1: c_int = 1018;
/// Its values: 1.4.8-1.5.0 (both), 1.5.1-1.5.4 (no lazy skipping only), 1.5.7 (neither).
pub(super) const BEFORE_1_5_1: c_int = 1;
pub(super) const NO_LAZY_SKIPPING: c_int = 2;
pub(super) const LIBZSTD_1_5_7: c_int = 0;

/// Sets `ZSTD_c_stowageBefore151` on `cctx`.
///
/// # Safety
/// `cctx` is a live context no other thread uses meanwhile.
pub(super) unsafe fn set_before_1_5_1(cctx: NonNull<sys::ZSTD_CCtx>, value: c_int) {
    // SAFETY: the caller's word; libzstd checks the parameter and value.
    let r = unsafe { set_parameter_by_number(cctx.as_ptr(), STOWAGE_BEFORE_1_5_1, value) };
    check(r, "ZSTD_c_stowageBefore151");
}

/// `ZSTD_compressStream2` of `raw` with `op` until it is taken in (and, but for
/// `ZSTD_e_continue`, all of it flushed), appending what comes out to `out`.
///
/// # Safety
/// `cctx` is a live context no other thread uses meanwhile.
pub(super) unsafe fn compress_stream(
    cctx: NonNull<sys::ZSTD_CCtx>,
    raw: &[u8],
    op: ZSTD_EndDirective,
    out: &mut Vec<u8>,
) {
    let mut input = sys::ZSTD_inBuffer {
        src: raw.as_ptr() as *const c_void,
        size: raw.len(),
        pos: 0,
    };
    loop {
        // SAFETY: a constant.
        out.reserve(unsafe { sys::ZSTD_CStreamOutSize() });
        let spare = out.spare_capacity_mut();
        let mut output = sys::ZSTD_outBuffer {
            dst: spare.as_mut_ptr() as *mut c_void,
            size: spare.len(),
            pos: 0,
        };
        // SAFETY: a live context (the caller's word); `input` borrows `raw`, `output` the
        // spare capacity of `out`, and libzstd writes only `output.pos` bytes there.
        let left = check(
            unsafe { sys::ZSTD_compressStream2(cctx.as_ptr(), &mut output, &mut input, op) },
            "compressing",
        );
        // SAFETY: libzstd initialised these bytes.
        unsafe { out.set_len(out.len() + output.pos) };
        let done =
            input.pos == input.size && (op == ZSTD_EndDirective::ZSTD_e_continue || left == 0);
        if done {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::old_ldm;

    /// What libzstd 1.5.6's `ZSTD_ldm_adjustParameters` derives for `zstd --long` (window log
    /// 27): from the whole window without a content size or beyond 1 GiB, else from the size's.
    #[test]
    fn long_distance_parameters_before_1_5_7() {
        assert_eq!(old_ldm(27, None), (20, 7, 64, 3));
        assert_eq!(old_ldm(27, Some(3 << 30)), (20, 7, 64, 3));
        assert_eq!(old_ldm(27, Some(1 << 30)), (20, 7, 64, 3));
        assert_eq!(old_ldm(27, Some(1_400_000)), (14, 7, 64, 3));
        assert_eq!(old_ldm(27, Some(1 << 21)), (14, 7, 64, 3));
        assert_eq!(old_ldm(27, Some((1 << 21) + 1)), (15, 7, 64, 3));
        assert_eq!(old_ldm(27, Some(100)), (6, 1, 64, 3));
        assert_eq!(old_ldm(27, Some(0)), (6, 0, 64, 3));
    }
}
