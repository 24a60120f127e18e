//! Frames of libzstd 1.5.4-1.5.6 at levels 3-4 (Debian 12's `zstd` default is 3): the match
//! finder of those releases in Rust (`dfast.rs`), libzstd 1.5.7's entropy stage through its
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
//! the producer cannot run inside libzstd's workers: the input is cut into jobs of
//! `2^max(20, windowLog + 2)` bytes; each later job starts a fresh match finder, its repeat
//! offsets invalid, on a prefix of the previous job's last `2^(windowLog - 3)` bytes
//! (`ZSTDMT_computeOverlapSize` for `dfast`), and a fresh entropy state; its blocks follow the
//! previous job's without a header; the frame's checksum covers all of it. A job that fills
//! ends there, so a stream without its size that ends on a job's edge (the CLI reading a
//! pipe) ends with an empty last block; with the size in the header (the CLI reading a file)
//! the job that reaches it is the last.
//!
//! Single-threaded frames are re-created when they fit their window (their content size in
//! the header, at most the window): a longer one wraps libzstd's input buffer, which the
//! port does not follow (its "extDict" match finder).
//!
//! libzstd keeps a block's repeat offsets only if it writes the block compressed: after a
//! block stored raw or as a run of one byte the match finder restarts from the ones before.

use std::ffi::c_void;
use std::ptr::NonNull;

use xxhash_rust::xxh64::Xxh64;
use zstd::zstd_safe::zstd_sys::{self as sys, ZSTD_EndDirective, ZSTD_cParameter};

use super::dfast::{Dfast, DfastParams, Seq};
use super::header::parse_header;

const BLOCK: usize = 128 << 10;
/// `ZSTD_strategy::ZSTD_dfast`.
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
    })
}

/// Whether a frame at `level` of these header facts is one this writer re-creates: `dfast`
/// at its size, and (single-threaded) within its window.
pub(super) fn reproducible(level: i32, mt: bool, content_size: Option<u64>) -> bool {
    match dfast_params(level, content_size) {
        None => false,
        Some(_) if mt => true,
        Some(p) => content_size.is_some_and(|n| n <= 1 << p.window_log),
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

/// One frame being written.
pub(super) struct DfastWriter {
    params: DfastParams,
    mt: bool,
    checksum: bool,
    content_size: Option<u64>,
    /// A job's length (multi-threaded), or no limit.
    job_size: usize,
    prefix_size: usize,
    /// The current job: its prefix, then its data.
    buf: Vec<u8>,
    prefix_len: usize,
    /// `buf[..done]` is written.
    done: usize,
    /// Bytes of the frame so far.
    total: u64,
    first_job: bool,
    /// libzstd has begun the current job's frame (its header is out).
    session_started: bool,
    dfast: Dfast,
    cctx: NonNull<sys::ZSTD_CCtx>,
    pending: NonNull<Pending>,
    hash: Xxh64,
    seqs: Vec<Seq>,
}

// The context and the producer's state belong to no thread; one uses them at a time.
unsafe impl Send for DfastWriter {}

impl Drop for DfastWriter {
    fn drop(&mut self) {
        // SAFETY: created in `new` and freed once, here; the context goes first, so nothing
        // calls the producer afterwards.
        unsafe {
            sys::ZSTD_freeCCtx(self.cctx.as_ptr());
            drop(Box::from_raw(self.pending.as_ptr()));
        }
    }
}

fn check(r: usize, what: &str) -> usize {
    // SAFETY: plain functions of a return code.
    if unsafe { sys::ZSTD_isError(r) } != 0 {
        let name = unsafe { std::ffi::CStr::from_ptr(sys::ZSTD_getErrorName(r)) };
        panic!("libzstd {what}: {}", name.to_string_lossy());
    }
    r
}

impl DfastWriter {
    /// A writer of a frame at `level` (see [`reproducible`]).
    pub fn new(level: i32, mt: bool, checksum: bool, content_size: Option<u64>) -> DfastWriter {
        let params = dfast_params(level, content_size).expect("a dfast level, checked at ingest");
        // SAFETY: no arguments; a null return is an allocation failure.
        let cctx = NonNull::new(unsafe { sys::ZSTD_createCCtx() }).expect("ZSTD_createCCtx");
        let pending = NonNull::from(Box::leak(Box::new(Pending {
            seqs: Vec::new(),
            len: usize::MAX,
        })));
        let (job_size, prefix_size) = if mt {
            let job_log = (params.window_log + 2).clamp(20, 30);
            (1usize << job_log, 1usize << (params.window_log - 3))
        } else {
            (usize::MAX, 0)
        };
        let mut w = DfastWriter {
            params,
            mt,
            checksum,
            content_size,
            job_size,
            prefix_size,
            buf: Vec::new(),
            prefix_len: 0,
            done: 0,
            total: 0,
            first_job: true,
            session_started: false,
            dfast: Dfast::new(params, [1, 4]),
            cctx,
            pending,
            hash: Xxh64::new(0),
            seqs: Vec::new(),
        };
        use ZSTD_cParameter::*;
        w.set(ZSTD_c_compressionLevel, level);
        w.set(ZSTD_c_contentSizeFlag, content_size.is_some() as i32);
        // ZSTD_c_blockSplitterLevel: 1 is "no splitting" (whole 128 KiB blocks).
        w.set(ZSTD_c_experimentalParam20, 1);
        // ZSTD_c_repcodeResolution: ZSTD_ps_disable, offsets stored as given.
        w.set(ZSTD_c_experimentalParam19, 2);
        // SAFETY: a live context; `pending` lives as long as it (see Drop).
        unsafe {
            sys::ZSTD_registerSequenceProducer(
                cctx.as_ptr(),
                pending.as_ptr() as *mut c_void,
                Some(produce),
            )
        };
        w.begin_session();
        w
    }

    fn set(&mut self, param: ZSTD_cParameter, value: i32) {
        // SAFETY: a live context; libzstd checks the value.
        let r = unsafe { sys::ZSTD_CCtx_setParameter(self.cctx.as_ptr(), param, value) };
        check(r, &format!("{param:?} = {value}"));
    }

    /// libzstd's frame for the current job: the first job's is the frame's (its header and,
    /// if it is the only job, its checksum); a later job's header is dropped and the frame's
    /// checksum is added here.
    fn begin_session(&mut self) {
        // SAFETY: a live context.
        check(
            unsafe {
                sys::ZSTD_CCtx_reset(
                    self.cctx.as_ptr(),
                    sys::ZSTD_ResetDirective::ZSTD_reset_session_only,
                )
            },
            "reset",
        );
        let checksum = self.first_job && self.checksum;
        self.set(ZSTD_cParameter::ZSTD_c_checksumFlag, checksum as i32);
        if self.first_job {
            if let Some(n) = self.content_size {
                // SAFETY: a live context, before its first byte.
                check(
                    unsafe { sys::ZSTD_CCtx_setPledgedSrcSize(self.cctx.as_ptr(), n as _) },
                    "pledged size",
                );
            }
        }
        self.session_started = false;
    }

    /// Compresses `raw` on, appending what comes out to `out`.
    pub fn write(&mut self, mut raw: &[u8], out: &mut Vec<u8>) {
        while !raw.is_empty() {
            let room = self.job_size - (self.buf.len() - self.prefix_len);
            let take = room.min(raw.len());
            self.buf.extend_from_slice(&raw[..take]);
            raw = &raw[take..];
            // A block with more after it is not the frame's last: it can go.
            while self.buf.len() - self.done > BLOCK {
                self.block(BLOCK, false, out);
            }
            self.total += take as u64;
            // A full job ends here, unless the frame's declared end is here too: the CLI
            // hands its file's last piece over with the end of the frame, and the job is the
            // last (from a pipe the end comes after, and an empty last block follows).
            if self.buf.len() - self.prefix_len == self.job_size
                && self.content_size != Some(self.total)
            {
                self.end_job(out);
            }
        }
    }

    /// Ends the current block (and, multi-threaded, the current job), as a streaming writer's
    /// `flush()` does.
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        if self.mt {
            self.end_job(out);
        } else if self.buf.len() > self.done {
            self.block(self.buf.len() - self.done, false, out);
        }
    }

    /// Ends the frame.
    pub fn finish(mut self, out: &mut Vec<u8>) {
        let left = self.buf.len() - self.done;
        if left == 0 && !self.session_started && !self.first_job {
            // An empty last job: a last raw block of nothing (ZSTD_writeLastEmptyBlock).
            out.extend_from_slice(&[1, 0, 0]);
        } else {
            self.block(left, true, out);
        }
        if self.checksum && !self.first_job {
            // The frame's XXH64 (every job's data), its low 32 bits.
            self.hash.update(&self.buf[self.prefix_len..]);
            out.extend_from_slice(&(self.hash.digest() as u32).to_le_bytes());
        }
    }

    /// The current job is whole: the next starts on a prefix of its end.
    fn end_job(&mut self, out: &mut Vec<u8>) {
        if self.buf.len() == self.prefix_len {
            return;
        }
        while self.buf.len() > self.done {
            let n = (self.buf.len() - self.done).min(BLOCK);
            self.block(n, false, out);
        }
        self.hash.update(&self.buf[self.prefix_len..]);
        let keep = self.prefix_size.min(self.buf.len() - self.prefix_len);
        self.buf.drain(..self.buf.len() - keep);
        self.prefix_len = keep;
        self.done = keep;
        self.first_job = false;
        self.dfast = Dfast::new(self.params, [0, 0]);
        self.dfast.load_prefix(&self.buf, keep);
        self.begin_session();
    }

    /// Writes the next `len` bytes of the job as a block (the frame's last if `last`).
    fn block(&mut self, len: usize, last: bool, out: &mut Vec<u8>) {
        let (start, end) = (self.done, self.done + len);
        let rep_before = self.dfast.rep;
        self.seqs.clear();
        // SAFETY: not borrowed elsewhere while no libzstd call runs.
        let pending = unsafe { self.pending.as_mut() };
        pending.seqs.clear();
        if len >= MIN_BLOCK_SEARCHED {
            let last_literals = self.dfast.block(&self.buf, start, end, &mut self.seqs);
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
        self.compress(start, end, op, &mut written);
        let mut from = 0;
        if !self.session_started {
            let h = parse_header(&written)
                .ok()
                .flatten()
                .expect("libzstd writes a frame header first");
            from = h.len;
            if self.first_job {
                out.extend_from_slice(&written[..from]);
            }
            self.session_started = true;
        }
        // Block type: 0 raw, 1 one byte repeated, 2 compressed.
        if written.len() > from && (written[from] >> 1) & 3 != 2 {
            self.dfast.rep = rep_before;
        }
        out.extend_from_slice(&written[from..]);
        self.done = end;
    }

    fn compress(&mut self, start: usize, end: usize, op: ZSTD_EndDirective, out: &mut Vec<u8>) {
        let raw = &self.buf[start..end];
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
            // SAFETY: a live context; `input` borrows the job's buffer, `output` the spare
            // capacity of `out`, and libzstd writes only `output.pos` bytes there; the
            // producer reads `pending`, not borrowed meanwhile.
            let left = check(
                unsafe {
                    sys::ZSTD_compressStream2(self.cctx.as_ptr(), &mut output, &mut input, op)
                },
                "compressing",
            );
            // SAFETY: libzstd initialised these bytes.
            unsafe { out.set_len(out.len() + output.pos) };
            if left == 0 && input.pos == input.size {
                return;
            }
        }
    }
}
