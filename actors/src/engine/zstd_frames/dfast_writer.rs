//! Frames of libzstd 1.5.4-1.5.6 at levels 3-4 (Debian 12's `zstd` default is 3), of 1.5.4 at
//! 5-12 and of 1.5.4-1.5.5 at 16-19 (`zstd -19`): the match finder of those releases in Rust
//! (`dfast.rs`, `lazy.rs`, `opt.rs`), libzstd 1.5.7's entropy stage through its
//! external sequence producer (`ZSTD_registerSequenceProducer`), which writes a block from
//! given sequences exactly as from its own match finder's. Those releases' entropy stage,
//! block cutting (whole 128 KiB blocks) and frame header are 1.5.7's with its pre-splitter
//! off, which the other levels already rely on (`libzstd.rs`).
//!
//! The producer's sequences carry libzstd's offset codes as they are: with repeat-code
//! resolution off, libzstd stores `offset + 3`, so a repeat code `r` (1-3) is handed over as
//! the offset `r - 3` (mod 2^32). libzstd's own match finder decides which matches are
//! repeats; so does the port.
//!
//! The multi-threaded mode (the CLI's default, any number of workers) is re-enacted here, as
//! the producer cannot run inside libzstd's workers (and written several jobs at a time, each
//! on its own core, as libzstd's workers do): the input is cut into jobs of
//! `2^max(20, windowLog + 2)` bytes; each later job starts a fresh match finder, its repeat
//! offsets invalid, on a prefix of the previous job's last `2^(windowLog - 3)` bytes
//! (`ZSTDMT_computeOverlapSize` for `dfast`; `2^(windowLog - 1)` for `btopt` and `btultra`,
//! the whole window for `btultra2`), and a fresh entropy state; its blocks follow the
//! previous job's without a header; the frame's checksum covers all of it. A job that fills
//! ends there, so a stream without its size that ends on a job's edge (the CLI reading a
//! pipe) ends with an empty last block; with the size in the header (the CLI reading a file)
//! the job that reaches it is the last.
//!
//! A single-threaded frame is written as libzstd's streaming interface writes it: from an
//! input buffer of a window and a block (2 MiB and 128 KiB at level 3), refilled from its
//! start when full, so that beyond the first fill the window is two segments and the older
//! one is searched by the "extDict" match finder ([`InBuffer`]). (A frame written in one call
//! from a caller's whole buffer, `ZSTD_compress2`, never splits its window; such frames are not
//! tried.) After a refill libzstd resumes the optimal parser's insertions at the new segment.
//!
//! libzstd keeps a block's repeat offsets only if it writes the block compressed: after a
//! block stored raw or as a run of one byte the match finder restarts from the ones before
//! (and after a block cut in partitions, from a decoder's: `reps.rs`).

use std::ffi::c_void;
use std::ptr::NonNull;

use xxhash_rust::xxh64::Xxh64;
use zstd::zstd_safe::zstd_sys::{self as sys, ZSTD_EndDirective, ZSTD_cParameter};

use super::dfast::{Dfast, DfastParams, DfastRelease, Seq};
use super::fast::{Fast, FastParams};
use super::header::parse_header;
use super::lazy::{lazy_params, Lazy, LazyParams};
use super::libzstd::{check, compress_stream, set_before_1_5_1, BEFORE_1_5_1, LIBZSTD_1_5_7};
use super::opt::{opt_params, Opt, OptParams, OptStrategy};
use super::reps::reps_after;

const BLOCK: usize = 128 << 10;
/// When a single-threaded frame's bytes below the window are dropped, and its indices moved
/// down (see [`Dfast::reduce`]; libzstd corrects them at 3.5 GiB).
#[derive(Clone, Copy)]
struct Limits {
    /// Bytes dropped at a time.
    trim: usize,
    /// Index beyond which they are moved down.
    reduce_at: u32,
}

const LIMITS: Limits = Limits {
    trim: 16 << 20,
    reduce_at: 2 << 30,
};
/// `ZSTD_strategy::ZSTD_fast` and `ZSTD_dfast`.
const STRATEGY_FAST: u32 = 1;
const STRATEGY_DFAST: u32 = 2;
/// What the producer returns on a mismatch (`ZSTD_SEQUENCE_PRODUCER_ERROR`).
const PRODUCER_ERROR: usize = usize::MAX;
/// libzstd stores blocks under this size raw without asking for sequences
/// (`MIN_CBLOCK_SIZE + ZSTD_blockHeaderSize + 1 + 1`).
const MIN_BLOCK_SEARCHED: usize = 7;

/// The match finder's parameters at `level` for a frame of `content_size` (None: unknown),
/// as libzstd derives them; None where the level's strategy there is not `dfast`.
pub(super) fn dfast_params(level: i32, content_size: Option<u64>) -> Option<DfastParams> {
    // SAFETY: a pure function of its arguments.
    let c = unsafe { sys::ZSTD_getCParams(level, content_size.unwrap_or(u64::MAX) as _, 0) };
    (c.strategy as u32 == STRATEGY_DFAST).then_some(DfastParams {
        window_log: c.windowLog,
        hash_log: c.hashLog,
        chain_log: c.chainLog,
        min_match: c.minMatch,
        release: DfastRelease::V1_5_4,
    })
}

/// The fast match finder's parameters at `level` for a frame of `content_size`, as libzstd
/// derives them (1.4.8's are 1.5.7's at levels 1-4); None where the strategy is not `fast`.
fn fast_params(level: i32, content_size: Option<u64>) -> Option<FastParams> {
    // SAFETY: a pure function of its arguments.
    let c = unsafe { sys::ZSTD_getCParams(level, content_size.unwrap_or(u64::MAX) as _, 0) };
    (c.strategy as u32 == STRATEGY_FAST).then_some(FastParams {
        window_log: c.windowLog,
        hash_log: c.hashLog,
        min_match: c.minMatch,
        target_length: c.targetLength,
    })
}

/// Whether this writer writes 1.4.8-1.5.0's frame at `level` (`before_1_5_1`): levels 1-4
/// without `--long`, where the strategy at the frame's size is `fast` or `dfast`.
pub(super) fn writes_1_4_8(level: i32, long: bool, content_size: Option<u64>) -> bool {
    (1..=4).contains(&level)
        && !long
        && (fast_params(level, content_size).is_some()
            || dfast_params(level, content_size).is_some())
}

/// Which earlier release's bytes a writer writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Earlier {
    /// 1.5.1-1.5.6 at levels 3-4 (`fixed_blocks`): their double-fast loop.
    Dfast,
    /// The release whose match finder is ported at the level (`ported`, see
    /// [`writes_ported`]).
    Ported,
    /// 1.4.8-1.5.0 at levels 1-4 (`before_1_5_1`): their fast or double-fast loop, and their
    /// Huffman symbol sort in libzstd's entropy stage (`ZSTD_c_stowageBefore151`).
    V1_4_8,
}

/// Whether this writer writes a frame of an earlier release (`fixed_blocks`) at `level`
/// of these facts: levels 3-4, without `--long`, where the strategy at its size is `dfast`.
pub(super) fn writes(level: i32, long: bool, content_size: Option<u64>) -> bool {
    (3..=4).contains(&level) && !long && dfast_params(level, content_size).is_some()
}

/// Whether this writer writes a frame of an earlier release whose match finder it ports at
/// `level` (`ported`): 1.5.4's lazy ones (`lazy.rs`), 1.5.4-1.5.5's optimal parser (`opt.rs`)
/// or 1.5.1-1.5.6's double-fast loop, whichever the strategy at the frame's size is (see
/// [`ported_params`]); not with `--long`.
pub(super) fn writes_ported(level: i32, long: bool, content_size: Option<u64>) -> bool {
    !long && ported_params(level, content_size).is_some()
}

/// Whether the release a `ported` frame at `level` has (1.5.4; at 16-19, 1.5.4-1.5.5) has a
/// match finder of its own, ported, at the strategy a frame of `content_size` gets: its lazy
/// ones (greedy, lazy, lazy2, where 1.5.7 has rows) or its optimal parser (btopt to btultra2).
/// Elsewhere 1.5.7 with fixed blocks writes its bytes, or at `dfast` the port of its loop.
pub(super) fn ports_lazy_or_opt(level: i32, content_size: Option<u64>) -> bool {
    lazy_params(level, content_size).is_some() || opt_params(level, content_size).is_some()
}

/// The ported match finder's parameters at `level` for a frame of `content_size`, chosen by
/// the strategy at that size (a stream of frames, one per file, has frames of every size: at
/// level 4, a 140 kB file's is `greedy`, a 3 MB file's `dfast`); None where 1.5.7 with fixed
/// blocks writes the release's bytes. (Before 2026-12-06 only levels 5-12 and 16-19 had a
/// `ported` encoder, and only at the level's own strategy: those frames are written as before.)
fn ported_params(level: i32, content_size: Option<u64>) -> Option<FinderParams> {
    lazy_params(level, content_size)
        .map(FinderParams::Lazy)
        .or_else(|| opt_params(level, content_size).map(FinderParams::Opt))
        .or_else(|| dfast_params(level, content_size).map(FinderParams::Dfast))
}

/// The release whose bytes a `ported` frame at `level` has, for its label.
pub(super) fn ported_release(level: i32) -> &'static str {
    if level <= 15 {
        "-1.5.4"
    } else {
        "-1.5.5"
    }
}

/// The match finder `earlier`'s frame at `level` has, and its parameters.
fn finder_params(level: i32, earlier: Earlier, content_size: Option<u64>) -> Option<FinderParams> {
    let dfast = |release| {
        let p = dfast_params(level, content_size)?;
        Some(FinderParams::Dfast(DfastParams { release, ..p }))
    };
    match earlier {
        Earlier::Dfast => dfast(DfastRelease::V1_5_4),
        Earlier::Ported => ported_params(level, content_size),
        Earlier::V1_4_8 => fast_params(level, content_size)
            .map(FinderParams::Fast)
            .or_else(|| dfast(DfastRelease::V1_4_8)),
    }
}

/// The match finder a frame's jobs use, and its parameters.
#[derive(Clone, Copy)]
enum FinderParams {
    Fast(FastParams),
    Dfast(DfastParams),
    Lazy(LazyParams),
    Opt(OptParams),
}

impl FinderParams {
    fn window_log(&self) -> u32 {
        match self {
            FinderParams::Fast(p) => p.window_log,
            FinderParams::Dfast(p) => p.window_log,
            FinderParams::Lazy(p) => p.window_log,
            FinderParams::Opt(p) => p.window_log,
        }
    }

    /// `ZSTDMT_computeOverlapSize`'s log: how much of the previous job a job starts on (the
    /// strategy's default overlap log, 6 for `fast`, `dfast`, `greedy` and `lazy`, 7 for `lazy2`, 8
    /// for `btopt` and `btultra`, 9 for `btultra2`: a window less 9 minus it).
    fn overlap_log(&self) -> u32 {
        let overlap = match self {
            FinderParams::Fast(_) | FinderParams::Dfast(_) => 6,
            FinderParams::Lazy(p) => 6 + u32::from(p.depth == 2),
            FinderParams::Opt(p) if p.strategy == OptStrategy::Btultra2 => 9,
            FinderParams::Opt(_) => 8,
        };
        self.window_log() - (9 - overlap)
    }
}

/// A job's match finder.
enum Finder {
    Fast(Fast),
    Dfast(Dfast),
    Lazy(Box<Lazy>),
    Opt(Box<Opt>),
}

impl Finder {
    fn new(p: FinderParams, first: bool) -> Finder {
        match p {
            FinderParams::Fast(p) => {
                Finder::Fast(Fast::new(p, if first { [1, 4] } else { [0, 0] }))
            }
            FinderParams::Dfast(p) => {
                Finder::Dfast(Dfast::new(p, if first { [1, 4] } else { [0, 0] }))
            }
            FinderParams::Lazy(p) => {
                Finder::Lazy(Box::new(Lazy::new(p, if first { [1, 4] } else { [0, 0] })))
            }
            FinderParams::Opt(p) => Finder::Opt(Box::new(Opt::new(
                p,
                if first { [1, 4, 8] } else { [0, 0, 0] },
            ))),
        }
    }

    fn load_prefix(&mut self, prefix: &[u8]) {
        match self {
            Finder::Fast(f) => f.load_prefix(prefix, prefix.len()),
            Finder::Dfast(d) => d.load_prefix(prefix, prefix.len()),
            Finder::Lazy(l) => l.load_prefix(prefix, prefix.len()),
            Finder::Opt(o) => o.load_prefix(prefix, prefix.len()),
        }
    }

    /// The repeat offsets the next block starts from (`dfast` tracks two).
    fn rep(&self) -> [u32; 3] {
        match self {
            Finder::Fast(f) => [f.rep[0], f.rep[1], 0],
            Finder::Dfast(d) => [d.rep[0], d.rep[1], 0],
            Finder::Lazy(l) => [l.rep[0], l.rep[1], 0],
            Finder::Opt(o) => o.rep,
        }
    }

    fn set_rep(&mut self, rep: [u32; 3]) {
        match self {
            Finder::Fast(f) => f.rep = [rep[0], rep[1]],
            Finder::Dfast(d) => d.rep = [rep[0], rep[1]],
            Finder::Lazy(l) => l.rep = [rep[0], rep[1]],
            Finder::Opt(o) => o.rep = rep,
        }
    }

    fn block(&mut self, buf: &[u8], start: usize, end: usize, seqs: &mut Vec<Seq>) -> usize {
        match self {
            Finder::Fast(f) => f.block(buf, start, end, seqs),
            Finder::Dfast(d) => d.block(buf, start, end, seqs),
            Finder::Lazy(l) => l.block(buf, start, end, seqs),
            Finder::Opt(o) => o.block(buf, start, end, seqs),
        }
    }

    /// The index of the buffer's first byte, and the window's: `lowLimit` and `dictLimit`
    /// (the older segment is `lowLimit..dictLimit`, the newer starts at `dictLimit`).
    fn window(&mut self) -> (&mut u32, &mut u32, &mut u32) {
        match self {
            Finder::Fast(f) => (&mut f.base, &mut f.low_limit, &mut f.dict_limit),
            Finder::Dfast(d) => (&mut d.base, &mut d.low_limit, &mut d.dict_limit),
            Finder::Lazy(l) => (&mut l.base, &mut l.low_limit, &mut l.dict_limit),
            Finder::Opt(o) => (&mut o.base, &mut o.low_limit, &mut o.dict_limit),
        }
    }

    /// libzstd's input buffer was refilled from its start (`ZSTD_compressContinue_internal`
    /// on a non-contiguous input): insertions resume at the new segment.
    fn new_segment(&mut self) {
        match self {
            Finder::Fast(_) | Finder::Dfast(_) => {}
            Finder::Lazy(l) => l.new_segment(),
            Finder::Opt(o) => o.new_segment(),
        }
    }

    /// Moves every index down (see [`Dfast::reduce`], [`Opt::reduce`]); by how much.
    fn reduce(&mut self) -> u32 {
        match self {
            Finder::Fast(f) => f.reduce(),
            Finder::Dfast(d) => d.reduce(),
            Finder::Lazy(l) => l.reduce(),
            Finder::Opt(o) => o.reduce(),
        }
    }
}

/// The sequences of the block being written, for the producer callback.
struct Pending {
    seqs: Vec<sys::ZSTD_Sequence>,
    /// The block's length (checked against what libzstd asks for).
    len: usize,
}

/// libzstd's call for a block's sequences: hands over the ones `Pending` holds.
unsafe extern "C" fn produce(
    state: *mut c_void,
    out: *mut sys::ZSTD_Sequence,
    capacity: usize,
    _src: *const c_void,
    src_size: usize,
    _dict: *const c_void,
    _dict_size: usize,
    _level: i32,
    _window: usize,
) -> usize {
    // SAFETY: `state` is the writer's `Pending`, which outlives the context and is not
    // otherwise borrowed while libzstd compresses (the writer is in `compress`).
    let p = unsafe { &mut *(state as *mut Pending) };
    if src_size != p.len || p.seqs.len() > capacity {
        return PRODUCER_ERROR;
    }
    // SAFETY: `out` has room for `capacity` sequences (checked above).
    unsafe { std::ptr::copy_nonoverlapping(p.seqs.as_ptr(), out, p.seqs.len()) };
    p.len = usize::MAX;
    p.seqs.len()
}

/// libzstd's streaming input buffer (single-threaded): a window and a block long, refilled
/// from its start when the next block would not fit. Where each block sits in it decides when
/// the window becomes two segments (`ZSTD_window_update`) and how much of the older one the
/// newer has overwritten.
struct InBuffer {
    size: usize,
    block: usize,
    /// Where the next block starts.
    pos: usize,
    /// The next block starts the buffer over.
    wrapped: bool,
    started: bool,
    /// Index of the buffer's first byte in the newer segment and in the older one.
    seg_start: u32,
    old_seg_start: u32,
    limits: Limits,
}

impl InBuffer {
    fn new(window_size: usize, limits: Limits) -> InBuffer {
        let block = BLOCK.min(window_size);
        InBuffer {
            size: window_size + block,
            block,
            pos: 0,
            wrapped: false,
            started: false,
            seg_start: 0,
            old_seg_start: 0,
            limits,
        }
    }

    /// `ZSTD_window_update` for the block of `len` bytes from index `start`.
    /// Whether the block begins a new segment (libzstd then resumes the match finder's
    /// insertions there).
    fn before_block(&mut self, f: &mut Finder, start: u32, len: usize) -> bool {
        let (_, low_limit, dict_limit) = f.window();
        if !self.started {
            self.started = true;
            self.seg_start = start;
            return false;
        }
        if self.wrapped {
            *low_limit = *dict_limit;
            *dict_limit = start;
            self.old_seg_start = self.seg_start;
            self.seg_start = start;
            if *dict_limit - *low_limit < 8 {
                *low_limit = *dict_limit;
            }
        }
        // The block overwrites the older segment's bytes where it lands.
        if *low_limit < *dict_limit {
            // (Differences wrap: the older segment's start may lie below a reduced index.)
            let (low, high) = (
                low_limit.wrapping_sub(self.old_seg_start) as usize,
                dict_limit.wrapping_sub(self.old_seg_start) as usize,
            );
            if self.pos + len > low && self.pos < high {
                *low_limit =
                    (*dict_limit).min(self.old_seg_start.wrapping_add((self.pos + len) as u32));
            }
        }
        self.wrapped
    }

    fn after_block(&mut self, len: usize) {
        self.pos += len;
        self.wrapped = self.pos + self.block > self.size;
        if self.wrapped {
            self.pos = 0;
        }
    }
}

/// One job being written: its own match finder and libzstd context (jobs after the first are
/// written several at a time).
struct JobWriter {
    /// The job's prefix, then its data.
    buf: Vec<u8>,
    prefix_len: usize,
    /// `buf[..done]` is written.
    done: usize,
    first: bool,
    /// libzstd has begun the job's frame (its header is out).
    session_started: bool,
    finder: Finder,
    cctx: NonNull<sys::ZSTD_CCtx>,
    pending: NonNull<Pending>,
    seqs: Vec<Seq>,
    /// The frame's size was given to libzstd (a first job's, with a content size).
    pledged: bool,
    /// Single-threaded: libzstd's input buffer (multi-threaded jobs are contiguous).
    in_buffer: Option<InBuffer>,
}

// The context and the producer's state belong to no thread; one uses them at a time.
unsafe impl Send for JobWriter {}

impl Drop for JobWriter {
    fn drop(&mut self) {
        // SAFETY: created in `new` and freed once, here; the context goes first, so nothing
        // calls the producer afterwards.
        unsafe {
            sys::ZSTD_freeCCtx(self.cctx.as_ptr());
            drop(Box::from_raw(self.pending.as_ptr()));
        }
    }
}

/// What every job of a frame shares.
#[derive(Clone, Copy)]
struct FrameParams {
    params: FinderParams,
    /// 1.4.8-1.5.0's Huffman symbol sort.
    stable_huf_sort: bool,
    level: i32,
    checksum: bool,
    content_size: Option<u64>,
}

impl JobWriter {
    /// The frame's first job (its header; its checksum if it is the only one), or a later
    /// one after `prefix` (the previous job's end), its repeat offsets invalid and its header
    /// to be dropped.
    fn new(f: &FrameParams, first: bool, prefix: &[u8], in_buffer: Option<InBuffer>) -> JobWriter {
        // SAFETY: no arguments; a null return is an allocation failure.
        let cctx = NonNull::new(unsafe { sys::ZSTD_createCCtx() }).expect("ZSTD_createCCtx");
        let pending = NonNull::from(Box::leak(Box::new(Pending {
            seqs: Vec::new(),
            len: usize::MAX,
        })));
        let mut finder = Finder::new(f.params, first);
        finder.load_prefix(prefix);
        let w = JobWriter {
            buf: prefix.to_vec(),
            prefix_len: prefix.len(),
            done: prefix.len(),
            first,
            session_started: false,
            finder,
            cctx,
            pending,
            seqs: Vec::new(),
            pledged: first && f.content_size.is_some(),
            in_buffer,
        };
        use ZSTD_cParameter::*;
        w.set(ZSTD_c_compressionLevel, f.level);
        w.set(ZSTD_c_contentSizeFlag, f.content_size.is_some() as i32);
        // ZSTD_c_blockSplitterLevel: 1 is "no splitting" (whole 128 KiB blocks).
        w.set(ZSTD_c_experimentalParam20, 1);
        // ZSTD_c_repcodeResolution: ZSTD_ps_disable, offsets stored as given.
        w.set(ZSTD_c_experimentalParam19, 2);
        w.set(ZSTD_c_checksumFlag, (first && f.checksum) as i32);
        // SAFETY: a live context, before its first byte.
        unsafe {
            set_before_1_5_1(
                w.cctx,
                if f.stable_huf_sort {
                    BEFORE_1_5_1
                } else {
                    LIBZSTD_1_5_7
                },
            )
        };
        if first {
            if let Some(n) = f.content_size {
                // SAFETY: a live context, before its first byte.
                check(
                    unsafe { sys::ZSTD_CCtx_setPledgedSrcSize(w.cctx.as_ptr(), n as _) },
                    "pledged size",
                );
            }
        }
        // SAFETY: a live context; `pending` lives as long as it (see Drop).
        unsafe {
            sys::ZSTD_registerSequenceProducer(
                cctx.as_ptr(),
                pending.as_ptr() as *mut c_void,
                Some(produce),
            )
        };
        w
    }

    fn set(&self, param: ZSTD_cParameter, value: i32) {
        // SAFETY: a live context; libzstd checks the value.
        let r = unsafe { sys::ZSTD_CCtx_setParameter(self.cctx.as_ptr(), param, value) };
        check(r, &format!("{param:?} = {value}"));
    }

    /// The job's data so far.
    fn data(&self) -> &[u8] {
        &self.buf[self.prefix_len..]
    }

    /// Writes every whole block with more after it (not the frame's last, then).
    fn write_ready(&mut self, out: &mut Vec<u8>) {
        while self.buf.len() - self.done > BLOCK {
            self.block(BLOCK, false, out);
        }
    }

    /// Writes the rest of the job: its last block ends the frame if `last`.
    fn end(&mut self, last: bool, out: &mut Vec<u8>) {
        self.write_ready(out);
        let left = self.buf.len() - self.done;
        if last {
            if left == 0 && !self.session_started && !self.first {
                // An empty last job: a last raw block of nothing (ZSTD_writeLastEmptyBlock).
                out.extend_from_slice(&[1, 0, 0]);
            } else {
                self.block(left, true, out);
            }
        } else if left > 0 {
            self.block(left, false, out);
        }
    }

    /// Writes the next `len` bytes of the job as a block (the frame's last if `last`).
    fn block(&mut self, len: usize, last: bool, out: &mut Vec<u8>) {
        let (start, end) = (self.done, self.done + len);
        let rep_before = self.finder.rep();
        self.seqs.clear();
        // SAFETY: not borrowed elsewhere while no libzstd call runs.
        let pending = unsafe { self.pending.as_mut() };
        pending.seqs.clear();
        if let Some(b) = self.in_buffer.as_mut() {
            let index = start as u32 + *self.finder.window().0;
            if b.before_block(&mut self.finder, index, len) {
                self.finder.new_segment();
            }
        }
        if len >= MIN_BLOCK_SEARCHED {
            let last_literals = self.finder.block(&self.buf, start, end, &mut self.seqs);
            pending
                .seqs
                .extend(self.seqs.iter().map(|s| sys::ZSTD_Sequence {
                    // A repeat code as an offset libzstd turns back into it (see above).
                    offset: s.off_code.wrapping_sub(3),
                    litLength: s.lit_len,
                    matchLength: s.match_len,
                    rep: 0,
                }));
            pending.seqs.push(sys::ZSTD_Sequence {
                offset: 0,
                litLength: last_literals as u32,
                matchLength: 0,
                rep: 0,
            });
        }
        pending.len = len;
        let op = if last {
            ZSTD_EndDirective::ZSTD_e_end
        } else {
            ZSTD_EndDirective::ZSTD_e_flush
        };
        let mut written = Vec::with_capacity(len + 64);
        if last && !self.session_started && !self.pledged {
            // All of a stream of unknown size in one block: the `zstd` CLI hands its data
            // over, then the end. Both at once, libzstd would take the size as known and fit
            // the declared window to it.
            self.compress(start, end, ZSTD_EndDirective::ZSTD_e_continue, &mut written);
            self.compress(end, end, op, &mut written);
        } else {
            self.compress(start, end, op, &mut written);
        }
        let mut from = 0;
        if !self.session_started {
            let h = parse_header(&written)
                .ok()
                .flatten()
                .expect("libzstd writes a frame header first");
            from = h.len;
            if self.first {
                out.extend_from_slice(&written[..from]);
            }
            self.session_started = true;
        }
        let rep = reps_after(rep_before, &self.seqs, &written[from..])
            .expect("libzstd writes whole blocks");
        self.finder.set_rep(rep);
        out.extend_from_slice(&written[from..]);
        self.done = end;
        if let Some(b) = self.in_buffer.as_mut() {
            b.after_block(len);
            // What is below the window is never read again.
            let (base, low_limit, _) = self.finder.window();
            let below = (*low_limit - *base) as usize;
            if below >= b.limits.trim {
                self.buf.drain(..below);
                *base += below as u32;
                self.done -= below;
                if *base > b.limits.reduce_at {
                    let delta = self.finder.reduce();
                    b.seg_start = b.seg_start.wrapping_sub(delta);
                    b.old_seg_start = b.old_seg_start.wrapping_sub(delta);
                }
            }
        }
    }

    fn compress(&mut self, start: usize, end: usize, op: ZSTD_EndDirective, out: &mut Vec<u8>) {
        // SAFETY: a live context, used by this job alone; the producer it calls reads
        // `pending`, not borrowed meanwhile.
        unsafe { compress_stream(self.cctx, &self.buf[start..end], op, out) }
    }
}

/// One frame being written. A single-threaded frame (one job) is written block by block as
/// its data comes; a multi-threaded frame's jobs are gathered whole and written `workers` at a
/// time, each on its own core (ingest, comparing a frame's beginning, then sees a candidate's
/// blocks only when the probe's job is flushed or the probe ends: a few MiB of work more for a
/// wrong candidate, tried after 1.5.7's at the same level).
pub(super) struct DfastWriter {
    f: FrameParams,
    mt: bool,
    /// A job's length (multi-threaded), or no limit.
    job_size: usize,
    prefix_size: usize,
    workers: usize,
    /// The job taking data.
    current: JobWriter,
    /// Whole jobs waiting to be written.
    queued: Vec<JobWriter>,
    /// Bytes of the frame so far.
    total: u64,
    hash: Xxh64,
}

impl DfastWriter {
    /// A writer of `earlier`'s frame at `level` (see [`writes`] and [`writes_ported`]),
    /// multi-threaded jobs written on up to `workers` cores.
    pub fn new(
        level: i32,
        earlier: Earlier,
        mt: bool,
        checksum: bool,
        content_size: Option<u64>,
        workers: usize,
    ) -> DfastWriter {
        let params = finder_params(level, earlier, content_size);
        let f = FrameParams {
            params: params.expect("a level of the ported match finders, checked at ingest"),
            stable_huf_sort: earlier == Earlier::V1_4_8,
            level,
            checksum,
            content_size,
        };
        Self::with_limits(f, mt, workers, LIMITS)
    }

    fn with_limits(f: FrameParams, mt: bool, workers: usize, limits: Limits) -> DfastWriter {
        let (params, content_size) = (f.params, f.content_size);
        let (job_size, prefix_size) = if mt {
            let job_log = (params.window_log() + 2).clamp(20, 30);
            (1usize << job_log, 1usize << params.overlap_log())
        } else {
            (usize::MAX, 0)
        };
        let in_buffer = (!mt).then(|| {
            let window = 1usize << params.window_log();
            let size = content_size.map_or(window, |n| (n.max(1) as usize).min(window));
            InBuffer::new(size, limits)
        });
        DfastWriter {
            f,
            mt,
            job_size,
            prefix_size,
            workers: workers.max(1),
            current: JobWriter::new(&f, true, &[], in_buffer),
            queued: Vec::new(),
            total: 0,
            hash: Xxh64::new(0),
        }
    }

    /// Compresses `raw` on, appending what comes out to `out`.
    pub fn write(&mut self, mut raw: &[u8], out: &mut Vec<u8>) {
        while !raw.is_empty() {
            let job = &mut self.current;
            let take = (self.job_size - job.data().len()).min(raw.len());
            job.buf.extend_from_slice(&raw[..take]);
            let full = job.data().len() == self.job_size;
            if !self.mt {
                // A block with more after it is not the frame's last: it can go (a
                // multi-threaded job waits until it is whole).
                job.write_ready(out);
            }
            raw = &raw[take..];
            self.total += take as u64;
            // A full job ends here, unless the frame's declared end is here too: the CLI
            // hands its file's last piece over with the end of the frame, and the job is the
            // last (from a pipe the end comes after, and an empty last block follows).
            if full && self.f.content_size != Some(self.total) {
                self.end_job(out);
            }
        }
    }

    /// Ends the current block (and, multi-threaded, the current job), as a streaming writer's
    /// `flush()` does: everything so far is out.
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        if self.mt {
            self.end_job(out);
            self.write_queued(false, out);
        } else {
            // Single-threaded: one job, never queued.
            let job = &mut self.current;
            job.write_ready(out);
            let left = job.buf.len() - job.done;
            if left > 0 {
                job.block(left, false, out);
            }
        }
    }

    /// Ends the frame.
    pub fn finish(mut self, out: &mut Vec<u8>) {
        if self.current.first {
            // The only job: its frame is the frame (header, blocks, checksum).
            self.current.end(true, out);
            return;
        }
        let DfastWriter {
            f,
            current,
            mut queued,
            mut hash,
            ..
        } = self;
        queued.push(current);
        write_jobs(queued, &mut hash, true, out);
        if f.checksum {
            // The frame's XXH64 (every job's data), its low 32 bits.
            out.extend_from_slice(&(hash.digest() as u32).to_le_bytes());
        }
    }

    /// The current job is whole (or flushed): it waits for its turn, and the next starts on a
    /// prefix of its end.
    fn end_job(&mut self, out: &mut Vec<u8>) {
        let job = &self.current;
        if job.data().is_empty() {
            return;
        }
        let keep = self.prefix_size.min(job.data().len());
        let prefix = job.buf[job.buf.len() - keep..].to_vec();
        let next = JobWriter::new(&self.f, false, &prefix, None);
        let whole = std::mem::replace(&mut self.current, next);
        self.queued.push(whole);
        if self.queued.len() >= self.workers {
            self.write_queued(false, out);
        }
    }

    /// Writes the queued jobs (see [`write_jobs`]).
    fn write_queued(&mut self, last: bool, out: &mut Vec<u8>) {
        write_jobs(std::mem::take(&mut self.queued), &mut self.hash, last, out);
    }
}

/// Writes whole jobs, in parallel, in order, their data hashed into the frame's `hash`; the
/// last ends the frame if `last`.
fn write_jobs(jobs: Vec<JobWriter>, hash: &mut Xxh64, last: bool, out: &mut Vec<u8>) {
    use rayon::prelude::*;
    for job in &jobs {
        hash.update(job.data());
    }
    let n = jobs.len();
    let outs: Vec<Vec<u8>> = jobs
        .into_par_iter()
        .enumerate()
        .map(|(i, mut job)| {
            let mut o = Vec::with_capacity(job.data().len() / 2);
            job.end(last && i + 1 == n, &mut o);
            o
        })
        .collect();
    for o in outs {
        out.extend_from_slice(&o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dropping the bytes below the window and moving the indices down (done past 16 MiB and
    /// 2 GiB) changes no byte written: here at 1 and 3 MiB, over a 24 MiB frame of text,
    /// noise and runs at level 3 (`dfast`), over 12 MiB at levels 8 (`lazy2`) and 16 (`btopt`).
    #[test]
    fn trimming_and_moving_indices_down_write_the_same_frame() {
        let mut raw = Vec::new();
        for i in 0..200u64 {
            raw.extend_from_slice(&crate::engine::test_bytes(30_000, i % 7));
            raw.extend_from_slice(&crate::engine::test_bytes(70_000, i));
            raw.extend(std::iter::repeat_n(i as u8, 20_000));
        }
        let write = |level, limits| {
            let p = if level == 3 {
                FinderParams::Dfast(dfast_params(3, None).unwrap())
            } else {
                ported_params(level, None).unwrap()
            };
            let raw = if level == 3 {
                &raw[..]
            } else {
                &raw[..12 << 20]
            };
            let f = FrameParams {
                params: p,
                stable_huf_sort: false,
                level,
                checksum: true,
                content_size: None,
            };
            let mut w = DfastWriter::with_limits(f, false, 1, limits);
            let mut out = Vec::new();
            for piece in raw.chunks(777_777) {
                w.write(piece, &mut out);
            }
            w.finish(&mut out);
            out
        };
        let small = Limits {
            trim: 1 << 20,
            reduce_at: 3 << 20,
        };
        for (level, len) in [(3, raw.len()), (8, 12 << 20), (16, 12 << 20)] {
            let (a, b) = (write(level, LIMITS), write(level, small));
            assert!(a == b, "level {level}: the frames differ");
            assert!(zstd::stream::decode_all(&a[..]).unwrap() == raw[..len]);
        }
    }

    /// Frames the `zstd` of Debian 11 and Ubuntu 22.04 (libzstd 1.4.8) wrote, at level 3 from
    /// a pipe, at 1 and 4 from a file (`actors/testdata`: runs of 100 symbols 200 times each
    /// in random order, whose equal counts 1.5.1's Huffman sort orders otherwise, and licence
    /// texts), are written again by 1.4.8's fast and double-fast loops and libzstd 1.5.7 with
    /// 1.4.8's sort, and not without that sort.
    #[test]
    fn libzstd_1_4_8_frames_with_their_huffman_sort() {
        let fixtures: [(&[u8], i32, bool); 3] = [
            (
                include_bytes!("../../../testdata/zstd-1.4.8-level3-pipe.zst"),
                3,
                false,
            ),
            (
                include_bytes!("../../../testdata/zstd-1.4.8-level1-file.zst"),
                1,
                true,
            ),
            (
                include_bytes!("../../../testdata/zstd-1.4.8-level4-file.zst"),
                4,
                true,
            ),
        ];
        for (frame, level, sized) in fixtures {
            let raw = zstd::stream::decode_all(frame).unwrap();
            let content_size = sized.then_some(raw.len() as u64);
            let write = |stable_huf_sort| {
                let f = FrameParams {
                    params: finder_params(level, Earlier::V1_4_8, content_size).unwrap(),
                    stable_huf_sort,
                    level,
                    checksum: true,
                    content_size,
                };
                let mut w = DfastWriter::with_limits(f, false, 1, LIMITS);
                let mut out = Vec::new();
                for piece in raw.chunks(10_007) {
                    w.write(piece, &mut out);
                }
                w.finish(&mut out);
                out
            };
            assert!(write(true) == frame, "level {level}: 1.4.8's frame");
            assert!(write(false) != frame, "level {level}: the sort mattered");
        }
    }
}
