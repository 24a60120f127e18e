//! Delta encoding of a chunk against a similar *base* chunk: a zstd frame compressed with the
//! base as reference prefix (zstd's patch-from), so every run shared with the base costs a
//! match instead of literals. Decoding needs the same base as prefix. The frame records its
//! content size; [`DeltaCoder::decode`] checks it.
//!
//! Only chunks stored whole serve as bases (DESIGN.md invariant 5): the caller enforces it,
//! and the container format stores the base's chunk id in front of the delta.

use std::io;

use zstd::zstd_safe::{self, CCtx, CParameter, DCtx, ResetDirective};

/// A reusable delta encoder/decoder (one zstd context each way).
pub struct DeltaCoder {
    cctx: CCtx<'static>,
    dctx: DCtx<'static>,
}

fn zerr(what: &str, code: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{what}: {}", zstd_safe::get_error_name(code)),
    )
}

impl DeltaCoder {
    pub fn new(level: i32) -> DeltaCoder {
        let mut cctx = CCtx::create();
        // Level and content size are sticky parameters; the prefix applies to one frame.
        let _ = cctx.set_parameter(CParameter::CompressionLevel(level));
        let _ = cctx.set_parameter(CParameter::ContentSizeFlag(true));
        let _ = cctx.set_parameter(CParameter::ChecksumFlag(false));
        DeltaCoder {
            cctx,
            dctx: DCtx::create(),
        }
    }

    /// `target` as a delta against `base`.
    pub fn encode(&mut self, base: &[u8], target: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(zstd_safe::compress_bound(target.len()));
        // SAFETY: the context keeps a pointer to `base` only until the end of the next frame;
        // the frame is produced by `compress2` below and the session is reset before this
        // function returns (on success and on failure), so the pointer never outlives `base`.
        let prefix: &'static [u8] =
            unsafe { std::slice::from_raw_parts(base.as_ptr(), base.len()) };
        let r = self
            .cctx
            .ref_prefix(prefix)
            .and_then(|_| self.cctx.compress2(&mut out, target));
        let _ = self.cctx.reset(ResetDirective::SessionOnly);
        r.map_err(|c| zerr("delta encode", c))?;
        Ok(out)
    }

    /// Rebuild the chunk of `raw_len` bytes from `base` and its `delta`.
    pub fn decode(&mut self, base: &[u8], delta: &[u8], raw_len: u32) -> io::Result<Vec<u8>> {
        match zstd_safe::get_frame_content_size(delta) {
            Ok(Some(n)) if n == raw_len as u64 => self.decode_len(base, delta, raw_len as usize),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("delta frame does not declare the chunk's {raw_len} bytes"),
            )),
        }
    }

    /// Rebuild the bytes a `delta` against `base` declares, refusing more than `max`.
    pub fn decode_at_most(&mut self, base: &[u8], delta: &[u8], max: usize) -> io::Result<Vec<u8>> {
        match zstd_safe::get_frame_content_size(delta) {
            Ok(Some(n)) if n <= max as u64 => self.decode_len(base, delta, n as usize),
            Ok(Some(n)) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("delta frame declares {n} bytes, more than the {max} allowed"),
            )),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "delta frame does not declare its size",
            )),
        }
    }

    fn decode_len(&mut self, base: &[u8], delta: &[u8], len: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(len);
        // SAFETY: as in `encode`: the prefix is used by the one `decompress` call below and
        // dropped by the reset before returning.
        let prefix: &'static [u8] =
            unsafe { std::slice::from_raw_parts(base.as_ptr(), base.len()) };
        let r = self
            .dctx
            .ref_prefix(prefix)
            .and_then(|_| self.dctx.decompress(&mut out, delta));
        let _ = self.dctx.reset(ResetDirective::SessionOnly);
        r.map_err(|c| zerr("delta decode", c))?;
        if out.len() != len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("delta decoded to {} bytes, expected {len}", out.len()),
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::test_bytes as data;

    #[test]
    fn a_small_edit_costs_a_small_delta() {
        let mut c = DeltaCoder::new(3);
        let base = data(16384, 1);
        let mut t = base.clone();
        t[5000..5008].copy_from_slice(b"edited!!");
        let d = c.encode(&base, &t).unwrap();
        assert!(d.len() < 100, "delta of {} bytes", d.len());
        assert_eq!(c.decode(&base, &d, t.len() as u32).unwrap(), t);
        // The context is reusable and the prefix does not leak into the next frame.
        let plain = c.encode(&[], &t).unwrap();
        assert!(plain.len() > 16000);
        assert_eq!(c.decode(&[], &plain, t.len() as u32).unwrap(), t);
    }

    #[test]
    fn wrong_base_or_length_is_an_error_not_wrong_bytes() {
        let mut c = DeltaCoder::new(3);
        let base = data(16384, 1);
        let mut t = base.clone();
        t[100] ^= 1;
        let d = c.encode(&base, &t).unwrap();
        assert!(c.decode(&base, &d, t.len() as u32 + 1).is_err());
        let other = data(16384, 2);
        if let Ok(v) = c.decode(&other, &d, t.len() as u32) {
            assert_ne!(v, t);
        }
        assert!(c.decode(&base, &d[..d.len() / 2], t.len() as u32).is_err());
    }
}
