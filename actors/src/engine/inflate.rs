//! Raw inflate (zlib via libz-sys) that also reports deflate block boundaries: the plaintext
//! offset and the bit offset in the compressed stream where each block starts. Parallel
//! re-encoders cut streams there (see [`super::goflate::encode_segment`]).

use std::os::raw::c_int;
use std::ptr::null_mut;

use libz_sys as z;

unsafe extern "C" fn zalloc(_: z::voidpf, items: z::uInt, size: z::uInt) -> z::voidpf {
    // SAFETY: plain C allocation for zlib, released by `zfree`.
    unsafe { libc::calloc(items as usize, size as usize) }
}

unsafe extern "C" fn zfree(_: z::voidpf, p: z::voidpf) {
    // SAFETY: `p` came from `zalloc`.
    unsafe { libc::free(p) }
}

/// A zeroed `z_stream` with our allocator, ready for `deflateInit2_`/`inflateInit2_`. Boxed:
/// zlib keeps a pointer to it.
pub(crate) fn new_z_stream() -> Box<z::z_stream> {
    Box::new(z::z_stream {
        next_in: null_mut(),
        avail_in: 0,
        total_in: 0,
        next_out: null_mut(),
        avail_out: 0,
        total_out: 0,
        msg: null_mut(),
        state: null_mut(),
        zalloc,
        zfree,
        opaque: null_mut(),
        data_type: 0,
        adler: 0,
        reserved: 0,
    })
}

/// What one [`BlockInflate::run`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub consumed: usize,
    pub produced: usize,
    pub stream_end: bool,
    /// The call stopped at a block boundary (not the stream's end): (plaintext offset, bit
    /// offset) of the next block, both from the start of the stream.
    pub boundary: Option<(u64, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("corrupt deflate stream")]
pub struct Corrupt;

pub struct BlockInflate {
    strm: Box<z::z_stream>,
}

// SAFETY: the z_stream is owned exclusively and only used through &mut self.
unsafe impl Send for BlockInflate {}

impl Default for BlockInflate {
    fn default() -> Self {
        Self::new()
    }
}

impl BlockInflate {
    pub fn new() -> BlockInflate {
        let mut strm = new_z_stream();
        // SAFETY: a fully initialised z_stream; raw inflate (-15).
        let ret = unsafe {
            z::inflateInit2_(
                &mut *strm,
                -15,
                z::zlibVersion(),
                std::mem::size_of::<z::z_stream>() as c_int,
            )
        };
        assert_eq!(ret, z::Z_OK, "inflateInit2 failed");
        BlockInflate { strm }
    }

    #[allow(clippy::unnecessary_cast)] // uLong is 32 bits on some targets
    pub fn total_in(&self) -> u64 {
        self.strm.total_in as u64
    }

    #[allow(clippy::unnecessary_cast)] // uLong is 32 bits on some targets
    pub fn total_out(&self) -> u64 {
        self.strm.total_out as u64
    }

    /// Inflate from `input` into `out`, stopping early at a block boundary.
    pub fn run(&mut self, input: &[u8], out: &mut [u8]) -> Result<Step, Corrupt> {
        self.strm.next_in = input.as_ptr() as *mut u8;
        self.strm.avail_in = input.len().min(u32::MAX as usize) as z::uInt;
        self.strm.next_out = out.as_mut_ptr();
        self.strm.avail_out = out.len().min(u32::MAX as usize) as z::uInt;
        let (in0, out0) = (self.strm.avail_in, self.strm.avail_out);
        // SAFETY: next_in/next_out point at live buffers of avail_in/avail_out bytes.
        let ret = unsafe { z::inflate(&mut *self.strm, z::Z_BLOCK) };
        let consumed = (in0 - self.strm.avail_in) as usize;
        let produced = (out0 - self.strm.avail_out) as usize;
        self.strm.next_in = null_mut();
        self.strm.next_out = null_mut();
        match ret {
            z::Z_OK | z::Z_BUF_ERROR => {}
            z::Z_STREAM_END => {
                return Ok(Step {
                    consumed,
                    produced,
                    stream_end: true,
                    boundary: None,
                })
            }
            _ => return Err(Corrupt),
        }
        let dt = self.strm.data_type;
        let boundary = (dt & 128 != 0 && dt & 64 == 0)
            .then(|| (self.total_out(), self.total_in() * 8 - (dt & 7) as u64));
        Ok(Step {
            consumed,
            produced,
            stream_end: false,
            boundary,
        })
    }
}

impl Drop for BlockInflate {
    fn drop(&mut self) {
        // SAFETY: initialised by inflateInit2 and ended once.
        unsafe { z::inflateEnd(&mut *self.strm) };
    }
}
