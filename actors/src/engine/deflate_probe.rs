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
    ZLIB_LEVELS
        .into_iter()
        .find(|&level| zlib_writes(level, raw, deflate, complete))
}

/// zlib's levels in the order tried.
const ZLIB_LEVELS: [u32; 9] = [6, 9, 1, 5, 4, 3, 2, 7, 8];

/// Whether zlib at `level` writes `deflate` from `raw` (all of it if `complete`, else its
/// beginning), fed in steps and given up at its first differing output, so that probing a
/// stream from another encoder costs little.
fn zlib_writes(level: u32, raw: &[u8], deflate: &[u8], complete: bool) -> bool {
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(level));
    for piece in raw.chunks(64 * 1024) {
        if enc.write_all(piece).is_err() {
            return false;
        }
        enc.flush_pending();
        if !deflate.starts_with(enc.get_ref()) {
            return false;
        }
    }
    if complete {
        enc.finish().is_ok_and(|out| out == deflate)
    } else {
        enc.flush_pending();
        let out = enc.get_ref();
        !out.is_empty() && deflate.starts_with(out)
    }
}

/// The deflate encoder that reproduces a member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Deflater {
    pub(crate) level: u32,
    pub(crate) pigz_block: Option<u32>,
    pub(crate) go: Option<GoEncoder>,
}

/// Go's compress/flate levels in the order tried: `xfl` (the gzip header's extra flags, which
/// Go sets from the level) narrows them.
fn go_levels(xfl: u8) -> &'static [i32] {
    match xfl {
        4 => &[1],
        2 => &[9],
        _ => &[6, 5, 4, 7, 8, 3, 2, 0, -2],
    }
}

/// Go's compress/flate level that reproduces a deflate stream, judged on its beginning like
/// [`probe_zlib_level`]. `xfl` (the gzip header's extra flags, which Go sets from the level)
/// orders the candidates.
pub fn probe_go_level(raw: &[u8], deflate: &[u8], complete: bool, xfl: u8) -> Option<i32> {
    (go_levels(xfl).iter().copied())
        .find(|&level| go_writes(GoStdVariant::Go1_8, level, raw, deflate, complete, false))
}

/// Go 1.27's compress/flate level (klauspost's encoder, one stream) that reproduces a deflate
/// stream, judged on its beginning like [`probe_go_level`].
pub fn probe_go127_level(raw: &[u8], deflate: &[u8], complete: bool, xfl: u8) -> Option<i32> {
    (go_levels(xfl).iter().copied())
        .find(|&level| go_writes(GoStdVariant::Go1_27, level, raw, deflate, complete, false))
}

/// The klauspost/compress/gzip level and release (klauspost's flate as one stream) that
/// reproduce a deflate stream, judged on its beginning like [`probe_go_level`]: pgzip's
/// levels, and the releases [`PgzipVariant::candidates`] gives for its default blocks.
fn probe_kpgzip(
    raw: &[u8],
    deflate: &[u8],
    complete: bool,
    xfl: u8,
) -> Option<(i32, PgzipVariant)> {
    for &level in pgzip_levels(xfl) {
        for variant in PgzipVariant::candidates(level, kpflate::PGZIP_DEFAULT_BLOCK, deflate) {
            let kp = Some(variant.kp_version());
            if stream_writes(kp, level, raw, deflate, complete, false) {
                return Some((level, variant));
            }
        }
    }
    None
}

/// The klauspost version a Go compress/flate variant is re-encoded with (`None`: Go's own,
/// [`GoDeflater`]).
fn std_kp(variant: GoStdVariant) -> Option<kpflate::KpVersion> {
    match variant {
        GoStdVariant::Go1_8 => None,
        GoStdVariant::Go1_27 => Some(kpflate::KpVersion::Go1_27),
    }
}

/// Whether Go's compress/flate (`variant`) at `level` writes `deflate` from `raw` (see
/// [`stream_writes`]).
fn go_writes(
    variant: GoStdVariant,
    level: i32,
    raw: &[u8],
    deflate: &[u8],
    complete: bool,
    allow_empty: bool,
) -> bool {
    stream_writes(std_kp(variant), level, raw, deflate, complete, allow_empty)
}

/// Whether one flate stream, Go 1.8-1.26's (`kp` `None`) or klauspost's at version `kp`, at
/// `level` writes `deflate` from `raw`: all of it if `complete`, else its beginning, fed 64
/// KiB at a time and given up at its first differing output. Both emit a block at a time,
/// so an incomplete probe must have produced one block at least, unless `allow_empty` (a
/// probe of long runs that fills no block).
fn stream_writes(
    kp: Option<kpflate::KpVersion>,
    level: i32,
    raw: &[u8],
    deflate: &[u8],
    complete: bool,
    allow_empty: bool,
) -> bool {
    enum Enc {
        Go(Box<GoDeflater>),
        Kp(Box<kpflate::KpDeflater>),
    }
    let mut enc = match kp {
        None => Enc::Go(Box::new(GoDeflater::new(level).expect("valid Go level"))),
        Some(version) => Enc::Kp(Box::new(
            kpflate::KpDeflater::new(version, level).expect("valid level"),
        )),
    };
    let mut out = Vec::new();
    for piece in raw.chunks(64 * 1024) {
        match &mut enc {
            Enc::Go(e) => {
                e.write(piece);
                e.take_output(&mut out);
            }
            Enc::Kp(e) => {
                e.write(piece);
                e.take_output(&mut out);
            }
        }
        if !deflate.starts_with(&out) {
            return false;
        }
    }
    if complete {
        match &mut enc {
            Enc::Go(e) => {
                e.close();
                e.take_output(&mut out);
            }
            Enc::Kp(e) => {
                e.close();
                e.take_output(&mut out);
            }
        }
        out == deflate
    } else {
        (allow_empty || !out.is_empty()) && deflate.starts_with(&out)
    }
}

/// pgzip block sizes seen in the wild, most common first: the library default (podman,
/// buildah, skopeo via containers/image) and umoci's `SetConcurrency(256 KiB, ...)`.
const PGZIP_BLOCKS: [usize; 6] = [1 << 20, UMOCI_BLOCK, 512 << 10, 128 << 10, 2 << 20, 4 << 20];
/// umoci's `SetConcurrency` block size.
pub(crate) const UMOCI_BLOCK: usize = 256 << 10;

/// pgzip's levels in the order tried (the default first), narrowed by `xfl` as Go's.
fn pgzip_levels(xfl: u8) -> &'static [i32] {
    match xfl {
        4 => &[1],
        2 => &[9],
        _ => &[5, 6, 4, 7, 3, 2, 8, 0, -2],
    }
}

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
    let order = pgzip_levels(xfl);
    let blocks = if all_blocks {
        &PGZIP_BLOCKS[..]
    } else {
        &PGZIP_BLOCKS[..1]
    };
    for &level in order {
        for &block in blocks {
            for variant in PgzipVariant::candidates(level, block, deflate) {
                if pgzip_writes(level, block, variant, raw, deflate, complete) {
                    return Some((level, block, variant));
                }
            }
        }
    }
    None
}

/// Whether pgzip at `level` in blocks of `block` bytes (klauspost `variant`) writes `deflate`
/// from `raw`: all of it if `complete`, else its first two blocks.
fn pgzip_writes(
    level: i32,
    block: usize,
    variant: PgzipVariant,
    raw: &[u8],
    deflate: &[u8],
    complete: bool,
) -> bool {
    let version = variant.kp_version();
    if complete {
        return kpflate::pgzip_deflate_version(version, level, block, raw)
            .ok()
            .as_deref()
            == Some(deflate);
    }
    let mut out = Vec::new();
    for i in 0..(raw.len() / block).min(2) {
        let dict = &raw[(i * block).saturating_sub(kpflate::PGZIP_TAIL)..i * block];
        let blk = &raw[i * block..(i + 1) * block];
        if kpflate::pgzip_block_version(version, level, dict, blk, false, &mut out).is_err()
            || !deflate.starts_with(&out)
        {
            return false;
        }
    }
    !out.is_empty()
}

/// The MTIME pgzip writes when none is set: `uint32(time.Time{}.Unix())`.
pub(crate) const PGZIP_MTIME: [u8; 4] = [0x00, 0x09, 0x6e, 0x88];

/// What the probe found for a member: the encoder, and others that write the probe alike.
#[derive(Debug)]
pub(crate) struct Probed {
    pub(crate) deflater: Deflater,
    /// Other encoders to try, in order, should `deflater` not re-create the whole member (a
    /// member longer than the probe): a probe of incompressible data (stored blocks at every
    /// level) or of long runs tells few encoders apart, and what follows it may. Not tried
    /// here (see `alternatives_to`).
    pub(crate) alternatives: Vec<Deflater>,
}

/// At most this many alternatives are handed on; verification tries them in turn, each given
/// up at its first differing byte.
const MAX_ALTERNATIVES: usize = 96;

/// Which encoders to try, in an order chosen from the header: pgzip writes a telltale MTIME,
/// Go writes OS 255 (as Python does), zlib-based tools usually 3 (Unix). For a member longer
/// than the probe, the other candidates come along as alternatives; and a Go header whose
/// probe no Go encoder emitted a block of (4 MiB of runs fill none) is taken as the first Go
/// encoder's whose nothing-yet is consistent, the other such as alternatives.
pub(crate) fn probe_deflater(
    header: &[u8],
    raw: &[u8],
    deflate: &[u8],
    complete: bool,
) -> Option<Probed> {
    let (xfl, os) = (header[8], header[9]);
    let pgzip_mtime = header[4..8] == PGZIP_MTIME;
    let pgzip = || {
        probe_pgzip(raw, deflate, complete, xfl, pgzip_mtime)
            .map(|(level, block, variant)| pgzip_deflater(level, block, variant))
    };
    let go = || {
        probe_go_level(raw, deflate, complete, xfl)
            .map(|level| go_deflater(level, GoStdVariant::Go1_8))
            .or_else(|| {
                probe_go127_level(raw, deflate, complete, xfl)
                    .map(|l| go_deflater(l, GoStdVariant::Go1_27))
            })
    };
    let kpgzip = || {
        probe_kpgzip(raw, deflate, complete, xfl)
            .map(|(level, variant)| kpgzip_deflater(level, variant))
    };
    let zlib = || probe_zlib_level(raw, deflate, complete).map(zlib_deflater);
    let pigz = || {
        probe_pigz_level(raw, deflate, complete, DEFAULT_BLOCK).map(|level| Deflater {
            level,
            pigz_block: Some(DEFAULT_BLOCK as u32),
            go: None,
        })
    };
    let found = if pgzip_mtime {
        // pgzip's telltale header, which klauspost/compress/gzip writes too: if neither
        // reproduces the stream, only another Go encoder plausibly might. pgzip ends each
        // block with a sync flush (an empty stored block, `00 00 ff ff` once aligned), which
        // one stream does not have: without one, the stream is tried as one first (pgzip's
        // block sizes and releases are many trials).
        if deflate.windows(4).any(|w| w == [0, 0, 0xff, 0xff]) {
            pgzip().or_else(kpgzip).or_else(go)
        } else {
            kpgzip().or_else(pgzip).or_else(go)
        }
    } else if os == 255 {
        go().or_else(zlib)
            .or_else(pigz)
            .or_else(pgzip)
            .or_else(kpgzip)
    } else {
        zlib().or_else(pigz).or_else(go).or_else(pgzip)
    };
    if complete {
        return found.map(|deflater| Probed {
            deflater,
            alternatives: Vec::new(),
        });
    }
    let cands = candidates(header);
    if let Some(deflater) = found {
        let alternatives = alternatives_to(&deflater, &cands);
        return Some(Probed {
            deflater,
            alternatives,
        });
    }
    if os != 255 {
        return None;
    }
    let mut weak = cands.into_iter().filter(|d| match d.go {
        Some(GoEncoder::Std { level, variant }) => {
            go_writes(variant, level, raw, deflate, false, true)
        }
        _ => false,
    });
    let deflater = weak.next()?;
    Some(Probed {
        deflater,
        alternatives: weak.take(MAX_ALTERNATIVES).collect(),
    })
}

fn go_deflater(level: i32, variant: GoStdVariant) -> Deflater {
    Deflater {
        level: 0,
        pigz_block: None,
        go: Some(GoEncoder::Std { level, variant }),
    }
}

fn pgzip_deflater(level: i32, block: usize, variant: PgzipVariant) -> Deflater {
    Deflater {
        level: 0,
        pigz_block: None,
        go: Some(GoEncoder::Pgzip {
            level,
            block: block as u32,
            variant,
        }),
    }
}

fn kpgzip_deflater(level: i32, variant: PgzipVariant) -> Deflater {
    Deflater {
        level: 0,
        pigz_block: None,
        go: Some(GoEncoder::Kpgzip { level, variant }),
    }
}

fn zlib_deflater(level: u32) -> Deflater {
    Deflater {
        level,
        pigz_block: None,
        go: None,
    }
}

/// Every encoder an ambiguous probe's alternatives are drawn from, in the order
/// [`probe_deflater`] tries them for this header: Go's levels (1.8-1.26's, then 1.27's), zlib's,
/// pgzip's at each level, block size and release, and klauspost/compress/gzip's at each level
/// and release (pigz's blocks always tell its levels apart). Built from what the header says
/// only (`xfl` narrows the levels).
fn candidates(header: &[u8]) -> Vec<Deflater> {
    let (xfl, os) = (header[8], header[9]);
    let pgzip_mtime = header[4..8] == PGZIP_MTIME;
    let go: Vec<Deflater> = [GoStdVariant::Go1_8, GoStdVariant::Go1_27]
        .into_iter()
        .flat_map(|v| go_levels(xfl).iter().map(move |&l| go_deflater(l, v)))
        .collect();
    let zlib: Vec<Deflater> = ZLIB_LEVELS.into_iter().map(zlib_deflater).collect();
    let blocks = if pgzip_mtime {
        &PGZIP_BLOCKS[..]
    } else {
        &PGZIP_BLOCKS[..1]
    };
    let mut pgzip = Vec::new();
    let mut kpgzip = Vec::new();
    for &level in pgzip_levels(xfl) {
        for &block in blocks {
            // Without a stream to look at: every release the level is tried with.
            for variant in PgzipVariant::candidates(level, block, &[]) {
                pgzip.push(pgzip_deflater(level, block, variant));
            }
        }
        for variant in PgzipVariant::candidates(level, kpflate::PGZIP_DEFAULT_BLOCK, &[]) {
            kpgzip.push(kpgzip_deflater(level, variant));
        }
    }
    if pgzip_mtime {
        [pgzip, kpgzip, go].concat()
    } else if os == 255 {
        [go, zlib, pgzip, kpgzip].concat()
    } else {
        [zlib, go, pgzip].concat()
    }
}

/// The level a deflater compresses at.
fn level_of(d: &Deflater) -> i32 {
    match &d.go {
        Some(
            GoEncoder::Std { level, .. }
            | GoEncoder::Pgzip { level, .. }
            | GoEncoder::Kpgzip { level, .. },
        ) => *level,
        None => d.level as i32,
    }
}

/// The other candidates, most plausible first, without trying them here: the found level's
/// other releases, then the found encoder's other levels, then the rest in the order tried
/// (pgzip in the found block size only: the probe tells block sizes apart). Trying them at
/// ingest made every pgzip layer's ingest several times slower (releases often write a probe
/// alike), while verification only gets to them when the found one fails, and gives each up
/// at its first differing byte.
fn alternatives_to(found: &Deflater, cands: &[Deflater]) -> Vec<Deflater> {
    let kind = |d: &Deflater| match &d.go {
        Some(GoEncoder::Std { variant, .. }) => (1, *variant as u32, 0),
        Some(GoEncoder::Pgzip { variant, block, .. }) => (2, *variant as u32, *block),
        Some(GoEncoder::Kpgzip { variant, .. }) => (3, *variant as u32, 0),
        None => (0, 0, d.pigz_block.unwrap_or(0)),
    };
    let family = |d: &Deflater| kind(d).0;
    let block_ok = |d: &Deflater| match (&found.go, &d.go) {
        (Some(GoEncoder::Pgzip { block: a, .. }), Some(GoEncoder::Pgzip { block: b, .. })) => {
            a == b
        }
        _ => true,
    };
    let rank = |d: &Deflater| {
        if family(d) == family(found) && level_of(d) == level_of(found) {
            0
        } else if kind(d) == kind(found) {
            1
        } else {
            2
        }
    };
    let mut others: Vec<&Deflater> = (cands.iter())
        .filter(|d| *d != found && block_ok(d))
        .collect();
    // Stable: within a rank, the order tried.
    others.sort_by_key(|d| rank(d));
    others.into_iter().take(MAX_ALTERNATIVES).cloned().collect()
}

/// Why no encoder reproduces a gzip member, from what its header says of its writer: an
/// encoder version stowage does not have is named as such.
pub(crate) fn unknown_deflate(header: &[u8]) -> NotExact {
    NotExact::UnknownDeflateEncoder(if header[4..8] == PGZIP_MTIME {
        "gzip with klauspost/pgzip's header (klauspost/compress/gzip writes it too), but not \
         written by the klauspost/compress flate versions stowage reproduces (1.10.3-1.19.1 at \
         every level, in pgzip's blocks or as one stream): an earlier pgzip, an earlier or \
         newer release, or another encoder"
    } else if header[9] == 255 {
        "gzip with OS 255 in its header (Go's compress/gzip writes that, as do Rust's flate2 \
         and others), but not written by Go 1.8-1.26's compress/flate, by Go 1.27's (1.27.3's \
         klauspost-derived encoder), nor by zlib, pigz, pgzip or klauspost/compress/gzip \
         (1.10.3-1.19.1) at any level: a later Go, another klauspost release, or another \
         encoder"
    } else {
        "no zlib level reproduces the deflate stream (neither zlib nor pigz wrote it, nor Go \
         or pgzip at any level): GNU gzip (`tar czf`), zlib-ng, libdeflate or another encoder \
         stowage does not reproduce"
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::recompress::{go_gzip, Compression, LayerDecoder, Reencoder};

    /// 2 MiB of noise, 2 MiB of zeros, then 4 MiB of text: a probe (the first 4 MiB) that
    /// tells few encoders apart, and a rest that does.
    fn noise_runs_text() -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut v: Vec<u8> = (0..2 << 20).map(|_| next() as u8).collect();
        v.resize(4 << 20, 0);
        let words = ["layer ", "chunk ", "registry ", "delta\n", "tar ", "zstd "];
        while v.len() < 8 << 20 {
            v.extend_from_slice(words[(next() % words.len() as u64) as usize].as_bytes());
        }
        v
    }

    /// Zeros, then text: Go's encoder fills no block in the probe.
    fn runs_text() -> Vec<u8> {
        let mut v = noise_runs_text();
        v[..2 << 20].fill(0);
        v
    }

    /// Ingest, then what verification does: the encoding, then each alternative, until one
    /// re-creates the stream (given up at its first differing output). The label that did,
    /// and how many were tried.
    fn verified(compressed: &[u8], raw: &[u8]) -> (String, usize) {
        let mut d = LayerDecoder::new(Compression::detect(compressed));
        let mut got = Vec::new();
        for part in compressed.chunks(100_003) {
            d.feed(part, &mut |b| got.extend_from_slice(b)).unwrap();
        }
        assert!(got == raw, "decompressed bytes");
        let (first, alternatives) = d.finish_with_alternatives().unwrap();
        for (i, enc) in std::iter::once(first).chain(alternatives).enumerate() {
            let mut r = Reencoder::new(&enc);
            let mut out = Vec::new();
            let mut differs = false;
            for part in raw.chunks(1 << 20) {
                r.push(part, &mut out);
                if !compressed.starts_with(&out) {
                    differs = true;
                    break;
                }
            }
            if !differs {
                r.finish(&mut out);
                if out == compressed {
                    return (enc.label(), i + 1);
                }
            }
        }
        panic!("no encoding ingest handed on re-creates the stream");
    }

    /// Before alternatives these stayed raw: the probe matched the first encoder tried (pgzip
    /// level 5 in 1.18.2's bytes, Go 1.8-1.26's level 0), or none at all (Go filled no block),
    /// and the full restore then differed.
    #[test]
    fn probes_that_tell_few_encoders_apart_hand_on_the_others() {
        let raw = noise_runs_text();
        for (level, variant) in [
            (3, PgzipVariant::Klauspost1_15_12),
            (5, PgzipVariant::Klauspost1_15_12),
            (9, PgzipVariant::Klauspost1_18_2),
        ] {
            let gz =
                kpflate::pgzip_gzip_version(variant.kp_version(), level, 1 << 20, &raw).unwrap();
            let (label, tried) = verified(&gz, &raw);
            assert_eq!(label, format!("gzip-pgzip-{level}"), "{variant:?}");
            eprintln!("pgzip {level} {variant:?}: {label} after {tried}");
        }
        let gz = go_gzip(GoStdVariant::Go1_27, 6, &raw);
        assert_eq!(verified(&gz, &raw).0, "gzip-go1.27-6");
        let runs = runs_text();
        let gz = go_gzip(GoStdVariant::Go1_8, 6, &runs);
        assert_eq!(verified(&gz, &runs).0, "gzip-go-6");
    }

    /// A probe that tells the encoder apart: the alternatives are there for verification only,
    /// and the found one is first.
    #[test]
    fn a_telling_probe_finds_the_encoder_first() {
        let mut raw = noise_runs_text();
        raw.rotate_left(4 << 20);
        let gz =
            kpflate::pgzip_gzip_version(kpflate::KpVersion::V1_15_12, 3, 1 << 20, &raw).unwrap();
        assert_eq!(verified(&gz, &raw), ("gzip-pgzip-3".to_string(), 1));
    }
}
