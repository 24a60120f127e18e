//! Exact re-creation of deflate streams written by pigz (2.x, levels 1-9, default 128 KiB
//! blocks, dictionaries on), using zlib itself.
//!
//! pigz compresses its input in independent blocks of `block` bytes. Each block is deflated by
//! a fresh zlib stream (`deflateReset` + `deflateParams(level)`) primed with the last 32 KiB of
//! the previous block as dictionary. A block that is not the last ends with `Z_BLOCK`, then is
//! brought to a byte boundary: with an empty stored block (`Z_SYNC_FLUSH`) when an odd number of
//! bits is pending, else with empty static blocks (`deflatePrime(10 bits, 2)`) until aligned.
//! The last block ends with `Z_FINISH`. These are facts of pigz's published algorithm (zlib
//! license); the code here is ours. The output does not depend on pigz's thread count.
//!
//! Because blocks are independent given the previous block's plaintext, this encoder could run
//! them in parallel; it runs them in order for now.

use std::os::raw::{c_int, c_uint};

use libz_sys as z;

use super::goflate::{Segment, SegmentError, Split};

pub const DEFAULT_BLOCK: usize = 128 * 1024;
const DICT: usize = 32 * 1024;

extern "C" {
    // Not bound by libz-sys; present in every zlib since 1.2.5.2.
    fn deflatePending(strm: z::z_streamp, pending: *mut c_uint, bits: *mut c_int) -> c_int;
}

/// One raw-deflate zlib stream, reset per block as pigz does.
struct Zlib {
    strm: Box<z::z_stream>,
}

impl Zlib {
    fn new() -> Zlib {
        let mut strm = super::inflate::new_z_stream();
        // SAFETY: a fully initialised z_stream, raw deflate (-15), memLevel 8, as pigz.
        let ret = unsafe {
            z::deflateInit2_(
                &mut *strm,
                6,
                z::Z_DEFLATED,
                -15,
                8,
                z::Z_DEFAULT_STRATEGY,
                z::zlibVersion(),
                std::mem::size_of::<z::z_stream>() as c_int,
            )
        };
        assert_eq!(ret, z::Z_OK, "deflateInit2 failed");
        Zlib { strm }
    }

    fn reset(&mut self, level: i32, dict: &[u8]) {
        // SAFETY: the stream was initialised by deflateInit2.
        unsafe {
            z::deflateReset(&mut *self.strm);
            z::deflateParams(&mut *self.strm, level, z::Z_DEFAULT_STRATEGY);
            if !dict.is_empty() {
                z::deflateSetDictionary(&mut *self.strm, dict.as_ptr(), dict.len() as z::uInt);
            }
        }
    }

    /// Run `input` through deflate with `flush`, appending everything produced to `out`.
    fn run(&mut self, input: &[u8], flush: c_int, out: &mut Vec<u8>) {
        self.strm.next_in = input.as_ptr() as *mut u8;
        self.strm.avail_in = input.len() as z::uInt;
        loop {
            out.reserve(64 * 1024);
            let spare = out.capacity() - out.len();
            // SAFETY: next_out points at `spare` writable bytes of `out`'s allocation; zlib
            // writes at most avail_out bytes there, and we only extend the length by that.
            unsafe {
                self.strm.next_out = out.as_mut_ptr().add(out.len());
                self.strm.avail_out = spare as z::uInt;
                z::deflate(&mut *self.strm, flush);
                let produced = spare - self.strm.avail_out as usize;
                out.set_len(out.len() + produced);
            }
            if self.strm.avail_out != 0 {
                break;
            }
        }
        debug_assert_eq!(self.strm.avail_in, 0);
    }

    /// Bytes and bits zlib holds back (not yet in the output).
    fn pending(&mut self) -> (u32, c_int) {
        let mut pending: c_uint = 0;
        let mut bits: c_int = 0;
        // SAFETY: valid stream and out-pointers.
        unsafe { deflatePending(&mut *self.strm, &mut pending, &mut bits) };
        (pending, bits)
    }

    fn prime(&mut self, bits: c_int) {
        // SAFETY: valid stream; fewer than 16 bits.
        unsafe { z::deflatePrime(&mut *self.strm, bits, 0) };
    }

    fn pending_bits(&mut self) -> c_int {
        let mut pending: c_uint = 0;
        let mut bits: c_int = 0;
        // SAFETY: valid stream and out-pointers.
        unsafe { deflatePending(&mut *self.strm, &mut pending, &mut bits) };
        bits
    }

    fn prime_static_empty_block(&mut self) {
        // SAFETY: valid stream.
        unsafe { z::deflatePrime(&mut *self.strm, 10, 2) };
    }
}

impl Drop for Zlib {
    fn drop(&mut self) {
        // SAFETY: the stream was initialised by deflateInit2 and is ended once.
        unsafe { z::deflateEnd(&mut *self.strm) };
    }
}

/// Re-creates one pigz member's deflate stream from its `raw_len` plaintext bytes.
pub struct PigzEncoder {
    zlib: Zlib,
    level: i32,
    block_size: usize,
    block: Vec<u8>,
    dict: Vec<u8>,
    /// Plaintext bytes not yet pushed.
    left: u64,
    /// The last block has been written.
    finished: bool,
}

impl PigzEncoder {
    pub fn new(level: u32, block_size: usize, raw_len: u64) -> PigzEncoder {
        PigzEncoder {
            zlib: Zlib::new(),
            level: level as i32,
            block_size,
            block: Vec::with_capacity(block_size),
            dict: Vec::new(),
            left: raw_len,
            finished: false,
        }
    }

    fn compress_block(&mut self, last: bool, out: &mut Vec<u8>) {
        self.zlib.reset(self.level, &self.dict);
        if last {
            self.zlib.run(&self.block, z::Z_FINISH, out);
        } else {
            self.zlib.run(&self.block, z::Z_BLOCK, out);
            let bits = self.zlib.pending_bits();
            if bits & 1 != 0 {
                self.zlib.run(&[], z::Z_SYNC_FLUSH, out);
            } else if bits & 7 != 0 {
                loop {
                    self.zlib.prime_static_empty_block();
                    if self.zlib.pending_bits() & 7 == 0 {
                        break;
                    }
                }
                self.zlib.run(&[], z::Z_BLOCK, out);
            }
        }
        let keep = self.block.len().min(DICT);
        self.dict.clear();
        self.dict
            .extend_from_slice(&self.block[self.block.len() - keep..]);
        self.block.clear();
    }

    /// Add plaintext; compressed bytes are appended to `out` block by block.
    pub fn push(&mut self, mut raw: &[u8], out: &mut Vec<u8>) {
        while !raw.is_empty() {
            let take = (self.block_size - self.block.len()).min(raw.len());
            self.block.extend_from_slice(&raw[..take]);
            raw = &raw[take..];
            self.left = self.left.saturating_sub(take as u64);
            if self.block.len() == self.block_size {
                let last = self.left == 0;
                self.compress_block(last, out);
                if last {
                    self.finished = true;
                    return;
                }
            }
        }
    }

    /// End of the member: compress what is buffered as the last block (unless the member's
    /// length was a multiple of the block size and `push` already wrote it).
    pub fn finish(mut self, out: &mut Vec<u8>) {
        if !self.finished {
            self.compress_block(true, out);
        }
    }
}

/// The level (1-9) at which pigz with `block_size` blocks reproduces `deflate`, judged on the
/// member's first bytes: `raw` is a prefix of its plaintext (all of it if `complete`) and
/// `deflate` a prefix of its deflate stream at least as long as what `raw` encodes to.
pub fn probe_pigz_level(
    raw: &[u8],
    deflate: &[u8],
    complete: bool,
    block_size: usize,
) -> Option<u32> {
    // Only whole blocks can be compared when the member goes on.
    let usable = if complete {
        raw.len()
    } else {
        raw.len() / block_size * block_size
    };
    if usable == 0 && !complete {
        return None;
    }
    for level in [6u32, 9, 1, 5, 4, 3, 2, 7, 8] {
        let total = if complete { raw.len() as u64 } else { u64::MAX };
        let mut enc = PigzEncoder::new(level, block_size, total);
        let mut out = Vec::new();
        let mut mismatch = false;
        // Block by block, giving up on a level at its first differing block.
        for piece in raw[..usable].chunks(block_size) {
            enc.push(piece, &mut out);
            if !deflate.starts_with(&out) {
                mismatch = true;
                break;
            }
        }
        if mismatch {
            continue;
        }
        let ok = if complete {
            enc.finish(&mut out);
            out == deflate
        } else {
            !out.is_empty() && deflate.starts_with(&out)
        };
        if ok {
            return Some(level);
        }
    }
    None
}

/// Re-encode the part of a zlib raw deflate stream (memLevel 8, default strategy, `level`)
/// from block boundary `start` to `end` (or the stream's end, `total` bytes), with zlib
/// restarted from the 32 KiB before `start` as dictionary. Exact when zlib's lazy matcher was
/// clean at `start` (the block before ended with a match, or a literal with no pending match);
/// otherwise the segment's length differs from the recorded boundary and
/// [`SegmentError::Length`] says so, so the caller can start from an earlier boundary.
/// `data` holds plaintext from absolute offset `data_base`, covering 32 KiB before `start`
/// and [`ZLIB_LOOKAHEAD`] bytes after `end`.
pub fn zlib_segment(
    level: i32,
    total: u64,
    data: &[u8],
    data_base: u64,
    start: Split,
    end: Option<Split>,
) -> Result<Segment, SegmentError> {
    let hist = start.plain.saturating_sub(DICT as u64);
    let feed_to = end.map_or(total, |e| (e.plain + ZLIB_LOOKAHEAD).min(total));
    if data_base > hist || data_base + (data.len() as u64) < feed_to {
        return Err(SegmentError::Coverage(hist, feed_to));
    }
    let at = |abs: u64| (abs - data_base) as usize;
    let mut zl = Zlib::new();
    zl.reset(level, &data[at(hist)..at(start.plain)]);
    let phase = (start.bit % 8) as c_int;
    if phase > 0 {
        zl.prime(phase);
    }
    let mut out = Vec::new();
    let input = &data[at(start.plain)..at(feed_to)];
    let Some(e) = end else {
        zl.run(input, z::Z_FINISH, &mut out);
        let bits = out.len() as u64 * 8;
        return Ok(Segment { bytes: out, bits });
    };
    zl.run(input, z::Z_NO_FLUSH, &mut out);
    let (pending, bits) = zl.pending();
    let produced = (out.len() as u64 + pending as u64) * 8 + bits as u64;
    let want = phase as u64 + (e.bit - start.bit);
    if produced != want {
        return Err(SegmentError::Length {
            got: produced - phase as u64,
            want: e.bit - start.bit,
        });
    }
    // Push out the held-back bits (and a throw-away rest), then cut at the boundary.
    zl.run(&[], z::Z_SYNC_FLUSH, &mut out);
    out.truncate(want.div_ceil(8) as usize);
    if !want.is_multiple_of(8) {
        if let Some(last) = out.last_mut() {
            *last &= (1u8 << (want % 8)) - 1;
        }
    }
    Ok(Segment {
        bytes: out,
        bits: want,
    })
}

/// Plaintext [`zlib_segment`] needs after a segment's end: zlib decides a symbol once it has
/// 262 bytes of lookahead.
pub const ZLIB_LOOKAHEAD: u64 = 600;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    fn pigz(data: &[u8], level: u32) -> Vec<u8> {
        let mut c = Command::new("pigz")
            .args([format!("-{level}").as_str(), "-n", "-c"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("pigz is installed by scripts/test");
        let mut stdin = c.stdin.take().unwrap();
        let data2 = data.to_vec();
        let w = std::thread::spawn(move || stdin.write_all(&data2).unwrap());
        let out = c.wait_with_output().unwrap();
        w.join().unwrap();
        assert!(out.status.success());
        out.stdout
    }

    /// The raw deflate stream of a single-member gzip file with a 10-byte header.
    fn deflate_of(gz: &[u8]) -> &[u8] {
        assert_eq!(gz[3], 0, "pigz -n writes no name");
        &gz[10..gz.len() - 8]
    }

    fn sample(n: usize) -> Vec<u8> {
        let mut x = 77u64;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if i % 3 == 0 {
                    x as u8
                } else {
                    b"pigz block text "[(x % 16) as usize]
                }
            })
            .collect()
    }

    #[test]
    fn reproduces_pigz_at_every_level_and_size() {
        for n in [
            0,
            1,
            1000,
            DEFAULT_BLOCK,
            DEFAULT_BLOCK + 1,
            3 * DEFAULT_BLOCK,
            1_000_003,
        ] {
            let data = sample(n);
            for level in 1..=9 {
                let gz = pigz(&data, level);
                let want = deflate_of(&gz);
                let mut enc = PigzEncoder::new(level, DEFAULT_BLOCK, n as u64);
                let mut out = Vec::new();
                for part in data.chunks(50_000) {
                    enc.push(part, &mut out);
                }
                enc.finish(&mut out);
                assert!(out == want, "size {n} level {level}");
                let found = probe_pigz_level(&data, want, true, DEFAULT_BLOCK);
                assert!(found.is_some(), "size {n} level {level}");
            }
        }
    }
}
