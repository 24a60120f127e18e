//! Where each frame of a zstd stream starts and ends, found without decompressing: a data
//! frame is walked block header by block header (each says how many bytes its block takes), a
//! skippable frame by its size field. Used to store a zstd:chunked layer's compressed frames
//! themselves (see [`crate::engine::recompress::Encoding::ZstdStoredFrames`]).

use std::io::{self, Read};

use super::{is_skippable, parse_header, MAX_BLOCK, MAX_FRAMES, MAX_SKIPPABLE, ZSTD_MAGIC};
use crate::engine::recompress::NotExact;

/// One frame of a stream: its compressed length and whether it is a data frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameSpan {
    pub len: u64,
    pub data: bool,
}

/// The frames of the zstd stream `r`, in order. A stream that is not a sequence of whole
/// frames (bytes after the last one, a truncated frame, a reserved block type) is an error.
pub fn scan_frames(r: &mut dyn Read) -> Result<Vec<FrameSpan>, NotExact> {
    let mut r = io::BufReader::with_capacity(256 << 10, r);
    let mut spans = Vec::new();
    let mut head = [0u8; 18];
    loop {
        let n = read_up_to(&mut r, &mut head[..4])?;
        if n == 0 {
            return Ok(spans);
        }
        if n < 4 {
            return Err(NotExact::Corrupt("truncated zstd stream"));
        }
        if spans.len() >= MAX_FRAMES {
            return Err(NotExact::Unsupported("more than 4 Mi zstd frames"));
        }
        if is_skippable(&head[..4]) {
            let mut size = [0u8; 4];
            read_exact(&mut r, &mut size)?;
            let size = u64::from(u32::from_le_bytes(size));
            if size > MAX_SKIPPABLE {
                return Err(NotExact::Unsupported("skippable frame over 64 MiB"));
            }
            skip(&mut r, size)?;
            spans.push(FrameSpan {
                len: 8 + size,
                data: false,
            });
            continue;
        }
        if head[..4] != ZSTD_MAGIC {
            return Err(NotExact::Unsupported(
                "bytes after the last zstd frame that are not a frame",
            ));
        }
        // The header is 5 to 18 bytes; read it a byte at a time until it parses.
        let mut have = 4;
        let header = loop {
            if let Some(h) = parse_header(&head[..have])? {
                break h;
            }
            if have == head.len() {
                return Err(NotExact::Corrupt("zstd frame header"));
            }
            read_exact(&mut r, &mut head[have..have + 1])?;
            have += 1;
        };
        let mut len = header.len as u64;
        loop {
            let mut bh = [0u8; 3];
            read_exact(&mut r, &mut bh)?;
            let bh = u32::from(bh[0]) | u32::from(bh[1]) << 8 | u32::from(bh[2]) << 16;
            let size = u64::from(bh >> 3);
            let body = match (bh >> 1) & 3 {
                0 | 2 => size,
                1 => 1,
                _ => return Err(NotExact::Corrupt("zstd block (reserved type)")),
            };
            if size > MAX_BLOCK {
                return Err(NotExact::Corrupt("zstd block (over 128 KiB)"));
            }
            skip(&mut r, body)?;
            len += 3 + body;
            if bh & 1 == 1 {
                break;
            }
        }
        if header.checksum {
            skip(&mut r, 4)?;
            len += 4;
        }
        spans.push(FrameSpan { len, data: true });
    }
}

fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> Result<usize, NotExact> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(NotExact::Corrupt("zstd stream (read error)")),
        }
    }
    Ok(n)
}

fn read_exact(r: &mut dyn Read, buf: &mut [u8]) -> Result<(), NotExact> {
    if read_up_to(r, buf)? < buf.len() {
        return Err(NotExact::Corrupt("truncated zstd stream"));
    }
    Ok(())
}

fn skip(r: &mut dyn Read, n: u64) -> Result<(), NotExact> {
    let copied = io::copy(&mut r.take(n), &mut io::sink())
        .map_err(|_| NotExact::Corrupt("zstd stream (read error)"))?;
    if copied < n {
        return Err(NotExact::Corrupt("truncated zstd stream"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_found_as_libzstd_and_skippable_frames_lay_them_out() {
        let a = zstd::bulk::compress(&vec![7u8; 300_000], 3).unwrap();
        let text: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i * 31).to_le_bytes())
            .collect();
        let mut e = zstd::bulk::Compressor::new(19).unwrap();
        e.include_checksum(true).unwrap();
        let b = e.compress(&text).unwrap();
        let skippable = [&[0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0][..], b"toc"].concat();
        let empty = zstd::bulk::compress(b"", 1).unwrap();
        let stream = [&a[..], &skippable, &b, &empty].concat();
        let spans = scan_frames(&mut &stream[..]).unwrap();
        let want = [
            (a.len(), true),
            (skippable.len(), false),
            (b.len(), true),
            (empty.len(), true),
        ];
        let got: Vec<(usize, bool)> = spans.iter().map(|s| (s.len as usize, s.data)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_cut_or_trailed_stream_is_refused() {
        let a = zstd::bulk::compress(&vec![1u8; 100_000], 3).unwrap();
        for cut in [a.len() - 1, 6, 2] {
            assert!(scan_frames(&mut &a[..cut]).is_err(), "cut at {cut}");
        }
        let trailed = [&a[..], b"junk"].concat();
        assert!(scan_frames(&mut &trailed[..]).is_err());
        assert_eq!(scan_frames(&mut &b""[..]).unwrap(), vec![]);
    }
}
