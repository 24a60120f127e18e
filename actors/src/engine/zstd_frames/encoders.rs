//! Which encoder wrote a stream's data frames, and writing one frame as it did: libzstd at a
//! level (optionally `--long`, single- or multi-threaded) or klauspost/compress/zstd (see
//! [`crate::engine::kpzstd`]) at one of its four levels; the candidates tried on a frame, most
//! likely first.
//!
//! libzstd writes other bytes in its multi-threaded mode (`nbWorkers` ≥ 1): the input is cut
//! into jobs of `2^(windowLog + 2)` bytes or more, each compressed on its own with the end of
//! the previous one as a prefix. The `zstd` CLI works that way by default (with one worker,
//! unless `--single-thread`), and the bytes do not depend on the number of workers, so such a
//! frame is re-encoded with as many workers as the machine has cores.

use serde::{Deserialize, Serialize};

use super::dfast_writer::{self, DfastWriter, Earlier};
use super::header::FrameHeader;
use super::ingest::FrameProbe;
use super::libzstd::{self, LibzstdParams, LibzstdWriter};
use super::v1_4_8;
use super::{FrameShape, FLAG_CHECKSUM, FLAG_CONTENT_SIZE, FLAG_FLUSHED};
use crate::engine::kpzstd::{KpLevel, KpOptions, KpStreamEncoder, KpVersion};

/// Which encoder wrote the data frames of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "lib", rename_all = "lowercase")]
pub enum ZstdEncoder {
    /// The libzstd stowage links (1.5.7), at `level`; `long`: long-distance matching with a
    /// 128 MiB window (`zstd --long`); `mt`: its multi-threaded mode (the `zstd` CLI's
    /// default), any number of workers; `fixed_blocks`: whole 128 KiB blocks, as releases
    /// before 1.5.7 cut them (and their long-distance matching parameters), which writes their
    /// bytes at the levels whose match finders did not change since (see
    /// `zstd_frames/libzstd.rs`).
    Libzstd {
        level: i32,
        #[serde(default, skip_serializing_if = "is_false")]
        long: bool,
        #[serde(default, skip_serializing_if = "is_false")]
        mt: bool,
        #[serde(default, skip_serializing_if = "is_false")]
        fixed_blocks: bool,
        /// With `fixed_blocks`, where an earlier release's match finder wrote other bytes than
        /// 1.5.7's with fixed blocks: its port, chosen by the strategy at the frame's size.
        /// 1.5.4's lazy match finders (`zstd_frames/lazy.rs`, changed in 1.5.5: levels 5-12,
        /// and smaller levels' frames of some sizes), 1.5.4-1.5.5's optimal parser
        /// (`zstd_frames/opt.rs`, rewritten in 1.5.6: levels 16-19, and 12-15's small frames),
        /// their double-fast loop; at other strategies 1.5.7 without lazy skipping (since
        /// 2026-12-06, for streams of a frame per file). Labelled `-1.5.4` (`-1.5.5` at 16-19).
        #[serde(default, skip_serializing_if = "is_false")]
        ported: bool,
        /// With `fixed_blocks`, at levels 1-15: the bytes of 1.4.8-1.5.0 (Debian 11's and
        /// Ubuntu 22.04's `zstd`), whose fast and double-fast loops (ported: `fast.rs`,
        /// `dfast.rs`), level table (`v1_4_8.rs`), lazy finders and Huffman symbol sort
        /// (`ZSTD_c_stowageBefore151`, `vendor/README.md`) later releases changed. Labelled
        /// `-1.4.8`.
        #[serde(default, skip_serializing_if = "is_false")]
        before_1_5_1: bool,
    },
    /// klauspost/compress/zstd's streaming `Encoder` at `level`, with the options container
    /// tools leave at their defaults (see [`crate::engine::kpzstd`]).
    Klauspost {
        level: KpZstdLevel,
        /// The release family (`"v1.17.0"`; see [`KpVersion`]).
        #[serde(default)]
        version: KpVersion,
    },
}

/// klauspost/compress/zstd's encoder levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KpZstdLevel {
    Fastest,
    Default,
    Better,
    Best,
}

impl KpZstdLevel {
    pub(super) fn kp(self) -> KpLevel {
        match self {
            KpZstdLevel::Fastest => KpLevel::Fastest,
            KpZstdLevel::Default => KpLevel::Default,
            KpZstdLevel::Better => KpLevel::Better,
            KpZstdLevel::Best => KpLevel::Best,
        }
    }

    /// Most used first: containers/image, containers/storage and BuildKit default to zstd
    /// level 3, `SpeedDefault`.
    const ALL: [KpZstdLevel; 4] = [
        KpZstdLevel::Default,
        KpZstdLevel::Fastest,
        KpZstdLevel::Better,
        KpZstdLevel::Best,
    ];
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Window log of `zstd --long`.
const LONG_WINDOW_LOG: u32 = 27;

impl ZstdEncoder {
    /// libzstd at `level`, single-threaded, no long-distance matching.
    pub fn libzstd(level: i32) -> ZstdEncoder {
        ZstdEncoder::Libzstd {
            level,
            long: false,
            mt: false,
            fixed_blocks: false,
            ported: false,
            before_1_5_1: false,
        }
    }

    /// A short name for metrics and logs: `zstd-3`, `zstd-19-long`, `zstd-3-mt`,
    /// `zstd-1-mt-fixed`, `zstd-19-mt-1.5.5`, `zstd-3-mt-1.4.8`, ...
    pub fn label(&self) -> String {
        match self {
            ZstdEncoder::Libzstd {
                level,
                long,
                mt,
                fixed_blocks,
                ported,
                before_1_5_1,
            } => format!(
                "zstd-{level}{}{}{}",
                if *long { "-long" } else { "" },
                if *mt { "-mt" } else { "" },
                if *ported {
                    dfast_writer::ported_release(*level)
                } else if *before_1_5_1 {
                    "-1.4.8"
                } else if *fixed_blocks {
                    "-fixed"
                } else {
                    ""
                }
            ),
            ZstdEncoder::Klauspost { level, .. } => {
                format!("zstd-kp-{}", level.kp().name())
            }
        }
    }

    /// A klauspost encoder's block size and window, in bytes (None for libzstd, whose frames
    /// are not re-encoded in segments).
    pub(super) fn kp_geometry(&self) -> Option<(u64, u64)> {
        let ZstdEncoder::Klauspost { level, version } = *self else {
            return None;
        };
        let (window, block) = crate::engine::kpzstd::geometry(&kp_options(level, version, true))
            .expect("level and version checked at ingest");
        Some((block as u64, window as u64))
    }
}

/// libzstd's window log at each level 1-19 when the content size is not known (its
/// `ZSTD_defaultCParameters` for large inputs): which levels could have written a frame.
pub(super) const LIBZSTD_WINDOW_LOG: [u32; 19] = [
    19, 20, 21, 21, 21, 21, 21, 21, 22, 22, 22, 22, 22, 22, 22, 22, 23, 23, 23,
];

/// Encoders to try on a frame, most likely first.
pub(super) fn candidates(h: &FrameHeader) -> Vec<ZstdEncoder> {
    // `--long`'s window, or none in the header: a single-segment frame (its size known and
    // within the window) may have been written with `--long` or without, without first.
    let longs: &[bool] = match h.window_log {
        Some(LONG_WINDOW_LOG) => &[true],
        None => &[false, true],
        Some(_) => &[false],
    };
    let level_fits =
        |level: i32, long: bool, before_1_5_1: bool| match (h.content_size, h.window_log) {
            _ if long => true,
            // Without a content size the window is the level's own (1.4.8-1.5.0's table differs).
            (None, Some(w)) if before_1_5_1 => {
                v1_4_8::cparams(level, None).map(|c| c.window_log) == Some(w)
            }
            (None, Some(w)) => LIBZSTD_WINDOW_LOG[level as usize - 1] == w,
            _ => true,
        };
    // Each level's releases that write different bytes: 1.15.12 first (Debian 12's skopeo,
    // podman and buildah), then the newest first (upstream BuildKit, containerd and
    // containers/image pin recent releases). Where several write a frame's probe alike, the
    // first is chosen and the others stay in the running for later frames (see
    // `ZstdDecoder`); a single long frame is settled on its first `PROBE` bytes.
    let klauspost = KpZstdLevel::ALL.into_iter().flat_map(|level| {
        let mut versions = KpVersion::distinct(level.kp());
        versions.sort_by_key(|v| (*v != KpVersion::V1_15_12, std::cmp::Reverse(*v)));
        versions
            .into_iter()
            .filter(move |&version| kp_header_fits(h, level, version))
            .map(move |version| ZstdEncoder::Klauspost { level, version })
    });
    // Level by level, the CLI's default first, then from the fastest to write (a candidate
    // costs a block or two at its level); at each, without `--long` first, single-threaded
    // first (libraries), then the CLI's multi-threaded mode; 1.5.7, then the releases before
    // it with fixed blocks: at levels 3-4 (`dfast`, whose match finder changed in 1.5.7)
    // through the port of theirs, where it applies (`dfast_writer.rs`); last, the releases
    // whose match finders are ported at the level (`ported`: 1.5.4's lazy ones at 5-12,
    // `lazy.rs`; 1.5.4-1.5.5's optimal parser at 16-19, `opt.rs`; at any level for a frame
    // whose header holds its size, see below), multi-threaded first;
    // at levels 1-15, 1.4.8-1.5.0 after all of them (`before_1_5_1`).
    let libzstd = std::iter::once(3)
        .chain((1..=19).filter(|&l| l != 3))
        .flat_map(|level| {
            longs.iter().flat_map(move |&long| {
                [
                    (false, false, false),
                    (true, false, false),
                    (true, true, false),
                    (true, false, true),
                ]
                .into_iter()
                .flat_map(move |(fixed_blocks, ported, before_1_5_1)| {
                    // Ported match finders: the CLI's multi-threaded mode first, whose
                    // frames begin as single-threaded ones do for a window (2-8 MiB, beyond
                    // the probe) and, within one job, end alike (the optimal parser is
                    // slow to try).
                    let mts = if ported { [true, false] } else { [false, true] };
                    mts.map(move |mt| ZstdEncoder::Libzstd {
                        level,
                        long,
                        mt,
                        fixed_blocks,
                        ported,
                        before_1_5_1,
                    })
                })
            })
        })
        .filter(|enc| {
            let &ZstdEncoder::Libzstd {
                level,
                long,
                fixed_blocks,
                ported,
                before_1_5_1,
                ..
            } = enc
            else {
                unreachable!()
            };
            level_fits(level, long, before_1_5_1)
                && if ported {
                    // Where the level's strategy is one whose match finder is ported; and
                    // at any level a frame with its size in its header: in a stream of
                    // frames, one per file, a later frame's size may give another strategy
                    // (`FrameWriter::make` picks the writer frame by frame), so the ported
                    // encoder stays in the running until a larger frame tells.
                    !long
                        && (h.content_size.is_some()
                            || dfast_writer::ports_lazy_or_opt(level, h.content_size))
                } else if before_1_5_1 {
                    dfast_writer::writes_1_4_8(level, long, h.content_size)
                        || libzstd::writes_1_4_8_chains(level, long, h.content_size)
                } else {
                    // (At levels 3-4 a frame too small for `dfast` is written as 1.5.7
                    // with fixed blocks writes it, as by the ported encoders above.)
                    !fixed_blocks
                        || !(3..=4).contains(&level)
                        || h.content_size.is_some()
                        || dfast_writer::writes(level, long, h.content_size)
                }
        });
    klauspost.chain(libzstd).collect()
}

/// Whether klauspost's streaming `Encoder` at `level` of `version` writes frames with this
/// header (trying one costs a block at its level, and `SpeedBestCompression` is slow): it
/// declares the level's window, or the power of two above a content size below it (1 KiB at
/// least; a size under 256 bytes goes undeclared), and a single segment only when the whole
/// frame is one block (`EncodeAll`).
fn kp_header_fits(h: &FrameHeader, level: KpZstdLevel, version: KpVersion) -> bool {
    let Ok((window, block)) = crate::engine::kpzstd::geometry(&kp_options(level, version, true))
    else {
        return false;
    };
    let window = window as u64;
    match h.window_log {
        None => h.content_size.is_some_and(|n| n <= block as u64),
        Some(log) => {
            // `blockEnc.windowSize` of the declared size (0 when none is declared).
            let size = h.content_size.unwrap_or(0);
            let declared = if size > 0 && size < window {
                (1u64 << (64 - size.leading_zeros())).max(1024)
            } else {
                window
            };
            1u64.checked_shl(log) == Some(declared) || (log == 10 && h.content_size.is_none())
        }
    }
}

/// Plaintext a long frame is judged on for libzstd's multi-threaded mode.
const MT_PROBE: usize = 1 << 20;

/// Workers a multi-threaded libzstd frame is re-encoded with (its bytes do not depend on it).
fn libzstd_workers() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8) as u32)
}

/// What container tools set: the level, nothing else.
fn kp_options(level: KpZstdLevel, version: KpVersion, crc: bool) -> KpOptions {
    KpOptions {
        level: level.kp(),
        version,
        crc,
        ..KpOptions::default()
    }
}

// ---- writing one frame ---------------------------------------------------------------------

/// Writes one data frame as its encoder did.
pub struct FrameWriter {
    inner: Writer,
    flushed: bool,
    /// Plaintext bytes still to come before the first block is cut short, if it is.
    cut: Option<u64>,
}

enum Writer {
    Libzstd(Box<LibzstdWriter>),
    /// libzstd 1.5.4-1.5.6 at levels 3-4 (`fixed_blocks`).
    Dfast(Box<DfastWriter>),
    Klauspost(KpOptions, Box<KpStreamEncoder>),
}

impl FrameWriter {
    /// A writer of a frame of `raw_len` bytes (used only if the header carries it), to
    /// re-create it: a klauspost encoder's match tables are mapped at once
    /// ([`KpStreamEncoder::populate`]).
    pub fn new(enc: &ZstdEncoder, raw_len: u64, shape: FrameShape) -> FrameWriter {
        FrameWriter::make(enc, raw_len, shape, true)
    }

    /// The same, to try whether `enc` wrote a frame: most tries stop within the first block,
    /// so a klauspost encoder's tables (34 MiB at `SpeedBestCompression`) stay mapped as used.
    fn trial(enc: &ZstdEncoder, raw_len: u64, shape: FrameShape) -> FrameWriter {
        FrameWriter::make(enc, raw_len, shape, false)
    }

    fn make(enc: &ZstdEncoder, raw_len: u64, shape: FrameShape, populate: bool) -> FrameWriter {
        let flags = shape.flags;
        let content_size = flags & FLAG_CONTENT_SIZE != 0;
        let size = content_size.then_some(raw_len);
        // A release's own match finder, ported, where the frame's strategy has one.
        let earlier = match *enc {
            ZstdEncoder::Libzstd {
                level,
                long,
                fixed_blocks: true,
                ported,
                before_1_5_1,
                ..
            } => {
                if before_1_5_1 {
                    dfast_writer::writes_1_4_8(level, long, size).then_some(Earlier::V1_4_8)
                } else if ported {
                    dfast_writer::writes_ported(level, long, size).then_some(Earlier::Ported)
                } else {
                    dfast_writer::writes(level, long, size).then_some(Earlier::Dfast)
                }
            }
            _ => None,
        };
        let inner = match (*enc, earlier) {
            (ZstdEncoder::Libzstd { level, mt, .. }, Some(earlier)) => {
                Writer::Dfast(Box::new(DfastWriter::new(
                    level,
                    earlier,
                    mt,
                    flags & FLAG_CHECKSUM != 0,
                    content_size.then_some(raw_len),
                    libzstd_workers() as usize,
                )))
            }
            // (A `ported` encoder's frame too where its release's strategy at the frame's
            // size is one 1.5.7 has as well, with fixed blocks and, as 1.5.4, without lazy
            // skipping: a stream of frames, one per file, has small ones.)
            (
                ZstdEncoder::Libzstd {
                    level,
                    long,
                    mt,
                    fixed_blocks,
                    ported,
                    before_1_5_1,
                },
                None,
            ) => Writer::Libzstd(Box::new(LibzstdWriter::new(&LibzstdParams {
                level,
                long_window_log: long.then_some(LONG_WINDOW_LOG),
                workers: if mt { libzstd_workers() } else { 0 },
                checksum: flags & FLAG_CHECKSUM != 0,
                content_size: size,
                fixed_blocks,
                before_1_5_1,
                no_lazy_skipping: ported,
            }))),
            (ZstdEncoder::Klauspost { level, version }, _) => {
                let crc = flags & FLAG_CHECKSUM != 0;
                let (opts, mut k) = kp_pool::take(kp_options(level, version, crc));
                // Reset, or ResetContentSize: a streamed frame that declares its size.
                k.reset(content_size.then_some(raw_len));
                if populate {
                    k.populate();
                }
                Writer::Klauspost(opts, k)
            }
        };
        FrameWriter {
            inner,
            flushed: flags & FLAG_FLUSHED != 0,
            cut: shape.cut.filter(|&c| c > 0 && c < raw_len),
        }
    }

    pub fn write(&mut self, mut raw: &[u8], out: &mut Vec<u8>) {
        if let Some(left) = self.cut {
            let take = left.min(raw.len() as u64) as usize;
            self.write_on(&raw[..take], out);
            raw = &raw[take..];
            self.cut = Some(left - take as u64);
            if left == take as u64 {
                // `ReadFrom` begins: what is buffered goes out as a block.
                self.cut = None;
                self.flush_block(out);
            }
        }
        self.write_on(raw, out);
    }

    /// Stops without ending the frame (a segment of it is written): the encoder goes back to
    /// the pool, to be reset before its next frame.
    pub(super) fn abandon(self) {
        if let Writer::Klauspost(opts, k) = self.inner {
            kp_pool::put(opts, k);
        }
    }

    fn flush_block(&mut self, out: &mut Vec<u8>) {
        match &mut self.inner {
            Writer::Libzstd(z) => z.flush(out),
            Writer::Dfast(z) => z.flush(out),
            Writer::Klauspost(_, k) => k.flush(out),
        }
    }

    fn write_on(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        if raw.is_empty() {
            return;
        }
        match &mut self.inner {
            Writer::Libzstd(z) => z.write(raw, out),
            Writer::Dfast(z) => z.write(raw, out),
            Writer::Klauspost(_, k) => k.write(raw, out),
        }
    }

    pub fn finish(self, out: &mut Vec<u8>) {
        match self.inner {
            Writer::Libzstd(mut z) => {
                if self.flushed {
                    z.flush(out);
                }
                z.finish(out);
            }
            Writer::Dfast(mut z) => {
                if self.flushed {
                    z.flush(out);
                }
                z.finish(out);
            }
            Writer::Klauspost(opts, mut k) => {
                if self.flushed {
                    k.flush(out);
                }
                k.close(out);
                kp_pool::put(opts, k);
            }
        }
    }
}

/// klauspost encoders kept between frames, shared by every thread: a zstd:chunked layer is
/// thousands of small frames, and an encoder's match tables are 1-34 MiB to allocate and
/// clear. Go's own writer reuses one encoder across frames (`Reset`): entries left from an
/// earlier frame are more than a window behind and never match, so the bytes are a new
/// encoder's. Not per thread: each restore runs on a thread of its own, and an encoder kept
/// there would die with it, so each pull would allocate its tables anew. An encoder idle for
/// [`kp_pool::IDLE_FOR`] is dropped (a thread looks every half of that), so the memory a
/// burst of pulls took goes back once they are over.
mod kp_pool {
    use std::sync::{Mutex, Once, OnceLock};
    use std::time::{Duration, Instant};

    use super::KpStreamEncoder;
    use crate::engine::kpzstd::KpOptions;

    /// Idle encoders, the least recently put first, and when each was put.
    type Idle = Vec<(KpOptions, Box<KpStreamEncoder>, Instant)>;

    static POOL: Mutex<Idle> = Mutex::new(Vec::new());

    /// How long an idle encoder is kept.
    pub(super) const IDLE_FOR: Duration = Duration::from_secs(60);

    /// At most this many idle encoders: one per core that may be re-encoding, and a few
    /// more for the kinds of encoder in use (34 MiB each at `SpeedBestCompression`).
    fn keep() -> usize {
        static KEEP: OnceLock<usize> = OnceLock::new();
        *KEEP.get_or_init(|| std::thread::available_parallelism().map_or(2, |n| n.get().min(8)) + 2)
    }

    fn idle() -> std::sync::MutexGuard<'static, Idle> {
        // An encoder is put back only after a frame ended: a panic elsewhere leaves the
        // list whole.
        POOL.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn take(opts: KpOptions) -> (KpOptions, Box<KpStreamEncoder>) {
        let pooled = {
            let mut p = idle();
            p.iter()
                .rposition(|(o, _, _)| *o == opts)
                .map(|i| p.remove(i).1)
        };
        let k = pooled.unwrap_or_else(|| {
            Box::new(KpStreamEncoder::new(&opts).expect("level and version checked at ingest"))
        });
        (opts, k)
    }

    pub(super) fn put(opts: KpOptions, k: Box<KpStreamEncoder>) {
        let dropped = {
            let mut p = idle();
            let dropped = (p.len() >= keep()).then(|| p.remove(0));
            p.push((opts, k, Instant::now()));
            dropped
        };
        // Freed outside the lock.
        drop(dropped);
        static TRIMMER: Once = Once::new();
        TRIMMER.call_once(|| {
            let spawned = std::thread::Builder::new()
                .name("kp-pool-trim".into())
                .spawn(|| loop {
                    std::thread::sleep(IDLE_FOR / 2);
                    let old = expired(&mut idle(), Instant::now());
                    drop(old);
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "idle klauspost encoders will not be dropped");
            }
        });
    }

    /// Takes out of `pool` the encoders idle for [`IDLE_FOR`] at `now` (to be freed outside
    /// the lock).
    pub(super) fn expired(pool: &mut Idle, now: Instant) -> Idle {
        let (old, kept) = std::mem::take(pool)
            .into_iter()
            .partition(|(_, _, put)| now.saturating_duration_since(*put) >= IDLE_FOR);
        *pool = kept;
        old
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::engine::kpzstd::KpLevel;

        #[test]
        fn encoders_idle_for_a_while_are_dropped_the_others_kept_in_order() {
            let opts = |level| KpOptions {
                level,
                ..KpOptions::default()
            };
            let t0 = Instant::now();
            let mut pool: Idle = [KpLevel::Fastest, KpLevel::Default, KpLevel::Fastest]
                .into_iter()
                .zip([
                    Duration::ZERO,
                    Duration::from_secs(10),
                    Duration::from_secs(50),
                ])
                .map(|(l, at)| {
                    let k = Box::new(KpStreamEncoder::new(&opts(l)).unwrap());
                    (opts(l), k, t0 + at)
                })
                .collect();
            assert!(expired(&mut pool, t0 + Duration::from_secs(59)).is_empty());
            let old = expired(&mut pool, t0 + IDLE_FOR + Duration::from_secs(10));
            assert_eq!(old.len(), 2);
            assert_eq!(pool.len(), 1);
            assert!(
                pool[0].0 == opts(KpLevel::Fastest) && pool[0].2 == t0 + Duration::from_secs(50)
            );
            assert_eq!(expired(&mut pool, t0 + Duration::from_secs(200)).len(), 1);
            assert!(pool.is_empty());
        }
    }
}

/// The frame `enc` writes from all of `raw`.
pub fn encode_frame(enc: &ZstdEncoder, raw: &[u8], shape: FrameShape) -> Vec<u8> {
    let mut w = FrameWriter::new(enc, raw.len() as u64, shape);
    let mut out = Vec::with_capacity(raw.len() / 3 + 64);
    w.write(raw, &mut out);
    w.finish(&mut out);
    out
}

/// Writes `raw` through `w` in 256 KiB pieces, as long as what comes out begins `comp`: false
/// at the first piece whose output differs (most candidates differ in their first block).
fn writes_alike(w: &mut FrameWriter, raw: &[u8], comp: &[u8], out: &mut Vec<u8>) -> bool {
    raw.chunks(256 << 10).all(|piece| {
        w.write(piece, out);
        comp.starts_with(out)
    })
}

/// How `enc` re-creates a frame, judged on its probe: all of it when `complete`, else its
/// beginning. The flags in the header are the frame's; whether it ends flushed, and (for
/// klauspost) whether its first block was cut short, are tried.
pub(super) fn frame_matches(
    enc: &ZstdEncoder,
    probe: &FrameProbe,
    header: &FrameHeader,
    complete: bool,
) -> Option<FrameShape> {
    let flags = header.flags();
    let size = header.content_size.unwrap_or(probe.raw_len);
    let klauspost = matches!(enc, ZstdEncoder::Klauspost { .. });
    let mut cuts = vec![None];
    if klauspost {
        if let Some(k) = probe.first_block_len(header) {
            if k < probe.raw_len {
                cuts.push(Some(k));
            }
        }
    }
    if complete {
        let mut tries = vec![flags];
        if klauspost && flags & FLAG_CONTENT_SIZE != 0 {
            // klauspost writes a frame of less than a block with its size without being told
            // it: try that first.
            tries.insert(0, flags & !FLAG_CONTENT_SIZE);
        }
        if probe.may_be_flushed(header.checksum) {
            let flushed: Vec<u8> = tries.iter().map(|f| f | FLAG_FLUSHED).collect();
            tries.splice(0..0, flushed);
        }
        cuts.into_iter()
            .flat_map(|cut| tries.iter().map(move |&flags| FrameShape { flags, cut }))
            .find(|&shape| {
                let mut w = FrameWriter::trial(enc, probe.raw.len() as u64, shape);
                let mut out = Vec::with_capacity(probe.comp.len() + 64);
                if !writes_alike(&mut w, &probe.raw, &probe.comp, &mut out) {
                    w.abandon();
                    return false;
                }
                w.finish(&mut out);
                out == probe.comp
            })
    } else {
        // Multi-threaded libzstd holds a job's bytes until the job (larger than the probe) is
        // whole: the beginning is flushed out instead. Flushing ends that job early, but the
        // blocks written until then are the ones the whole job starts with. It is judged on
        // less of the probe: it writes nothing before the flush to stop a mismatch early.
        let mt = matches!(enc, ZstdEncoder::Libzstd { mt: true, .. });
        let raw = &probe.raw[..probe.raw.len().min(if mt { MT_PROBE } else { usize::MAX })];
        cuts.into_iter().find_map(|cut| {
            let shape = FrameShape { flags, cut };
            let mut w = FrameWriter::trial(enc, size, shape);
            let mut out = Vec::new();
            if !writes_alike(&mut w, raw, &probe.comp, &mut out) {
                return None;
            }
            if mt {
                w.flush_block(&mut out);
                if !probe.comp.starts_with(&out) {
                    return None;
                }
            }
            // At least one block must be out and match.
            (out.len() > 16).then_some(shape)
        })
    }
}
