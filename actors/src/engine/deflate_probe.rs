//! Which deflate encoder wrote a gzip member, judged on its beginning (the first
//! [`PROBE`](super::recompress::PROBE) bytes of plaintext, or all of a shorter member): zlib
//! and pigz levels, Go's compress/flate (1.8-1.26 and 1.27's), klauspost/pgzip levels, block
//! sizes and releases, tried in an order the gzip header suggests. The whole stream is proven
//! only by verify-before-discard's full restore.

use std::io::Write;

use super::goflate::GoDeflater;
use super::kpflate;
use super::pigz::{probe_pigz_level, DEFAULT_BLOCK};
use super::recompress::{GoEncoder, GoStdVariant, NotExact, PgzipVariant};

/// The zlib level (memLevel 8, default strategy) that reproduces a deflate stream, judged on
/// its beginning: `raw` is a prefix of the member's uncompressed bytes (all of it if
/// `complete`), `deflate` a prefix of its deflate stream at least as long as what `raw` encodes
/// to.
pub fn probe_zlib_level(raw: &[u8], deflate: &[u8], complete: bool) -> Option<u32> {
    'level: for level in [6u32, 9, 1, 5, 4, 3, 2, 7, 8] {
        let mut enc =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(level));
        // Feed in steps and give up on a level at its first differing output, so that probing
        // a stream from another encoder costs little.
        for piece in raw.chunks(64 * 1024) {
            enc.write_all(piece).ok()?;
            enc.flush_pending();
            if !deflate.starts_with(enc.get_ref()) {
                continue 'level;
            }
        }
        let ok = if complete {
            let out = enc.finish().ok()?;
            out == deflate
        } else {
            enc.flush_pending();
            let out = enc.get_ref();
            !out.is_empty() && deflate.starts_with(out)
        };
        if ok {
            return Some(level);
        }
    }
    None
}

/// The deflate encoder that reproduces a member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Deflater {
    pub(crate) level: u32,
    pub(crate) pigz_block: Option<u32>,
    pub(crate) go: Option<GoEncoder>,
}

/// Go's compress/flate level that reproduces a deflate stream, judged on its beginning like
/// [`probe_zlib_level`]. `xfl` (the gzip header's extra flags, which Go sets from the level)
/// orders the candidates.
pub fn probe_go_level(raw: &[u8], deflate: &[u8], complete: bool, xfl: u8) -> Option<i32> {
    let order: &[i32] = match xfl {
        4 => &[1],
        2 => &[9],
        _ => &[6, 5, 4, 7, 8, 3, 2, 0, -2],
    };
    'level: for &level in order {
        let mut enc = GoDeflater::new(level).expect("valid Go level");
        let mut out = Vec::new();
        for piece in raw.chunks(64 * 1024) {
            enc.write(piece);
            enc.take_output(&mut out);
            if !deflate.starts_with(&out) {
                continue 'level;
            }
        }
        let ok = if complete {
            enc.close();
            enc.take_output(&mut out);
            out == deflate
        } else {
            // Go emits a block at a time: at least one must be out and match.
            !out.is_empty() && deflate.starts_with(&out)
        };
        if ok {
            return Some(level);
        }
    }
    None
}

/// Go 1.27's compress/flate level (klauspost's encoder, one stream) that reproduces a deflate
/// stream, judged on its beginning like [`probe_go_level`].
pub fn probe_go127_level(raw: &[u8], deflate: &[u8], complete: bool, xfl: u8) -> Option<i32> {
    let order: &[i32] = match xfl {
        4 => &[1],
        2 => &[9],
        _ => &[6, 5, 4, 7, 8, 3, 2, 0, -2],
    };
    'level: for &level in order {
        let mut enc =
            kpflate::KpDeflater::new(kpflate::KpVersion::Go1_27, level).expect("valid level");
        let mut out = Vec::new();
        for piece in raw.chunks(64 * 1024) {
            enc.write(piece);
            enc.take_output(&mut out);
            if !deflate.starts_with(&out) {
                continue 'level;
            }
        }
        let ok = if complete {
            enc.close();
            enc.take_output(&mut out);
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

/// pgzip block sizes seen in the wild, most common first: the library default (podman,
/// buildah, skopeo via containers/image) and umoci's `SetConcurrency(256 KiB, ...)`.
const PGZIP_BLOCKS: [usize; 6] = [1 << 20, UMOCI_BLOCK, 512 << 10, 128 << 10, 2 << 20, 4 << 20];
/// umoci's `SetConcurrency` block size.
pub(crate) const UMOCI_BLOCK: usize = 256 << 10;

/// The pgzip level, block size and klauspost version that reproduce a deflate stream, judged
/// on its first two blocks (all of it if `complete`).
/// `all_blocks` false tries the default block size only (a stream without pgzip's MTIME is
/// unlikely to be pgzip; probing it is not free).
pub fn probe_pgzip(
    raw: &[u8],
    deflate: &[u8],
    complete: bool,
    xfl: u8,
    all_blocks: bool,
) -> Option<(i32, usize, PgzipVariant)> {
    let order: &[i32] = match xfl {
        4 => &[1],
        2 => &[9],
        _ => &[5, 6, 4, 7, 3, 2, 8, 0, -2],
    };
    let blocks = if all_blocks {
        &PGZIP_BLOCKS[..]
    } else {
        &PGZIP_BLOCKS[..1]
    };
    for &level in order {
        for &block in blocks {
            for variant in PgzipVariant::candidates(level, block, deflate) {
                let version = variant.kp_version();
                let ok = if complete {
                    kpflate::pgzip_deflate_version(version, level, block, raw).ok()? == deflate
                } else {
                    let mut out = Vec::new();
                    let mut ok = true;
                    for i in 0..(raw.len() / block).min(2) {
                        let dict = &raw[(i * block).saturating_sub(kpflate::PGZIP_TAIL)..i * block];
                        let blk = &raw[i * block..(i + 1) * block];
                        kpflate::pgzip_block_version(version, level, dict, blk, false, &mut out)
                            .ok()?;
                        if !deflate.starts_with(&out) {
                            ok = false;
                            break;
                        }
                    }
                    ok && !out.is_empty()
                };
                if ok {
                    return Some((level, block, variant));
                }
            }
        }
    }
    None
}

/// The MTIME pgzip writes when none is set: `uint32(time.Time{}.Unix())`.
pub(crate) const PGZIP_MTIME: [u8; 4] = [0x00, 0x09, 0x6e, 0x88];

/// Which encoders to try, in an order chosen from the header: pgzip writes a telltale MTIME,
/// Go writes OS 255 (as Python does), zlib-based tools usually 3 (Unix).
pub(crate) fn probe_deflater(
    header: &[u8],
    raw: &[u8],
    deflate: &[u8],
    complete: bool,
) -> Option<Deflater> {
    let (xfl, os) = (header[8], header[9]);
    let pgzip_mtime = header[4..8] == PGZIP_MTIME;
    let pgzip = || {
        probe_pgzip(raw, deflate, complete, xfl, pgzip_mtime).map(|(level, block, variant)| {
            Deflater {
                level: 0,
                pigz_block: None,
                go: Some(GoEncoder::Pgzip {
                    level,
                    block: block as u32,
                    variant,
                }),
            }
        })
    };
    let go = || {
        probe_go_level(raw, deflate, complete, xfl)
            .map(|level| (level, GoStdVariant::Go1_8))
            .or_else(|| {
                probe_go127_level(raw, deflate, complete, xfl).map(|l| (l, GoStdVariant::Go1_27))
            })
            .map(|(level, variant)| Deflater {
                level: 0,
                pigz_block: None,
                go: Some(GoEncoder::Std { level, variant }),
            })
    };
    let zlib = || {
        probe_zlib_level(raw, deflate, complete).map(|level| Deflater {
            level,
            pigz_block: None,
            go: None,
        })
    };
    let pigz = || {
        probe_pigz_level(raw, deflate, complete, DEFAULT_BLOCK).map(|level| Deflater {
            level,
            pigz_block: Some(DEFAULT_BLOCK as u32),
            go: None,
        })
    };
    if pgzip_mtime {
        // pgzip's telltale header: if pgzip does not reproduce the stream, only another Go
        // encoder plausibly might.
        return pgzip().or_else(go);
    }
    if os == 255 {
        go().or_else(zlib).or_else(pigz).or_else(pgzip)
    } else {
        zlib().or_else(pigz).or_else(go).or_else(pgzip)
    }
}

/// Why no encoder reproduces a gzip member, from what its header says of its writer: an
/// encoder version stowage does not have is named as such.
pub(crate) fn unknown_deflate(header: &[u8]) -> NotExact {
    NotExact::UnknownDeflateEncoder(if header[4..8] == PGZIP_MTIME {
        "gzip with klauspost/pgzip's header, but not written by the klauspost/compress flate \
         versions stowage reproduces (1.15.11-1.19.1 at every level, 1.10.3-1.15.10 at the \
         default level and most at level 4): an earlier release at another level, an \
         earlier pgzip, or a newer encoder"
    } else if header[9] == 255 {
        "gzip with OS 255 in its header (Go's compress/gzip writes that, as do Rust's flate2 \
         and others), but not written by Go 1.8-1.26's compress/flate, by Go 1.27's (1.27.3's \
         klauspost-derived encoder), nor by zlib, pigz or pgzip at any level: a later Go, \
         klauspost/compress gzip, or another encoder"
    } else {
        "no zlib level reproduces the deflate stream (neither zlib nor pigz wrote it)"
    })
}

/// Emitting what zlib already produced without flushing the stream (which would change it).
trait FlushPending {
    fn flush_pending(&mut self);
}

impl<W: Write> FlushPending for flate2::write::DeflateEncoder<W> {
    fn flush_pending(&mut self) {
        // `write` with an empty buffer only moves finished output to the inner writer.
        let _ = self.write(&[]);
    }
}
