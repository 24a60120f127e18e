//! zstd layers of many frames kept as their compressed frames: whether a layer is (the
//! [`ZstdFrames`] policy), and the split of its compressed stream at frame boundaries into the
//! recipe's inline stream (skippable frames) and "files" (each data frame, chunked on its
//! own, so the same frame gives the same chunks in every layer, however small: grouping small
//! frames in the inline stream stored 0.58 of docker-registry's bytes on the zstd:chunked
//! dataset instead of 0.47, as a changed frame spoilt the chunk around it). The layer's file
//! index comes from decompressing the stream, which also refuses a corrupt one before
//! anything is stored.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ingest::WEIGH_FRAMES;
use super::{scan_frames, FrameSpan, ZstdDecoder, ZstdEncoder};
use crate::engine::recompress::{Encoding, NotExact};
use crate::engine::tar::{FileEntry, TarSink, TarSplitter};

/// How much of a stream's beginning its encoder is identified on, at most (whole frames, at
/// least one data frame).
const IDENTIFY_BYTES: u64 = 8 << 20;
/// Pieces the split hands on.
const PIECE: usize = 1 << 20;

/// Whether a zstd layer of many data frames (zstd:chunked, a frame per file) is stored as its
/// compressed frames, deduplicated frame by frame and pulled without re-encoding
/// ([`Encoding::ZstdStoredFrames`]),
/// or decompressed, deduplicated by content and re-encoded exactly on pull. The first stores
/// a little more (an unchanged file's frame repeats, a changed file's frame is stored whole
/// unless it becomes a frame delta) and pulls at file-read speed; the second stores less and
/// pulls at the encoder's speed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ZstdFrames {
    /// Store the frames when the stream's encoder re-encodes slower than
    /// [`STORE_FRAMES_BELOW`] (klauspost's `SpeedBetterCompression` and
    /// `SpeedBestCompression`, zstd:chunked's level; libzstd above level 9) or is unknown;
    /// and, when frame deltas are on for the layer, when its frames are files' frames (a
    /// median frame of at most [`FILE_FRAMES_UP_TO`] bytes): a changed file's frame then
    /// costs only a delta, and a pull re-encodes only the changed frames, not the layer.
    #[default]
    Auto,
    /// Always store the frames of a stream of two or more data frames.
    Store,
    /// Never: re-encode every frame on pull.
    Reencode,
}

/// Re-encoding speed (plaintext bytes per second, [`Encoding::nominal_restore_rate`]) below
/// which [`ZstdFrames::Auto`] stores a many-framed layer's frames.
pub const STORE_FRAMES_BELOW: f64 = 100e6;

/// The median compressed data frame up to which a stream's frames are taken for files'
/// (zstd:chunked writes one per file: a few hundred bytes in the median) rather than for
/// pieces of one stream (pzstd's, megabytes each), under [`ZstdFrames::Auto`].
pub const FILE_FRAMES_UP_TO: u64 = 64 << 10;

impl std::str::FromStr for ZstdFrames {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(ZstdFrames::Auto),
            "store" => Ok(ZstdFrames::Store),
            "reencode" => Ok(ZstdFrames::Reencode),
            _ => Err(format!("{s:?}: expected auto, store or reencode")),
        }
    }
}

/// How fast frames `encoder` wrote are re-encoded on pull, in plaintext bytes per second
/// ([`Encoding::nominal_restore_rate`]).
pub fn reencode_rate(encoder: ZstdEncoder) -> f64 {
    Encoding::ZstdFrames {
        encoder,
        parts: Vec::new(),
    }
    .nominal_restore_rate()
}

/// A stream whose frames are to be stored: its frames and (when known) its encoder.
#[derive(Debug)]
pub struct StoredFrames {
    spans: Vec<FrameSpan>,
    encoder: Option<ZstdEncoder>,
}

impl StoredFrames {
    /// Whether the zstd stream at `path` keeps its compressed frames under `policy`: it must
    /// have two data frames or more, and under [`ZstdFrames::Auto`] an encoder that re-encodes
    /// slower than [`STORE_FRAMES_BELOW`] or that stowage does not know, or (when
    /// `frame_deltas` are on for the layer) frames of files. `None` also for a stream that is
    /// not a sequence of whole frames: the regular path says what is wrong.
    pub fn plan(
        path: &Path,
        policy: ZstdFrames,
        frame_deltas: bool,
    ) -> io::Result<Option<StoredFrames>> {
        if policy == ZstdFrames::Reencode {
            return Ok(None);
        }
        let Ok(spans) = scan_frames(&mut File::open(path)?) else {
            return Ok(None);
        };
        let mut data: Vec<u64> = spans.iter().filter(|s| s.data).map(|s| s.len).collect();
        if data.len() < 2 {
            return Ok(None);
        }
        let encoder = identify(path, &spans)?;
        let store = match (policy, encoder) {
            (ZstdFrames::Store, _) | (_, None) => true,
            (_, Some(encoder)) => {
                let slow = reencode_rate(encoder) < STORE_FRAMES_BELOW;
                let mid = data.len() / 2;
                slow || (frame_deltas && *data.select_nth_unstable(mid).1 <= FILE_FRAMES_UP_TO)
            }
        };
        Ok(store.then_some(StoredFrames { spans, encoder }))
    }

    /// The encoder of the stream's first frames, if stowage knows it.
    pub fn encoder(&self) -> Option<ZstdEncoder> {
        self.encoder
    }

    /// Hand the stream at `path` to `sink` split at its frames (skippable frames as meta, each
    /// data frame as a file), after decompressing it whole for the layer's file index; `raw`
    /// is told of each decompressed piece. Nothing reaches `sink` if the stream does not
    /// decompress.
    pub fn split(
        &self,
        path: &Path,
        sink: &mut dyn TarSink,
        raw: &mut dyn FnMut(&[u8]),
    ) -> Result<(Encoding, Vec<FileEntry>), NotExact> {
        let read_error = |_| NotExact::Corrupt("zstd stream (read error)");
        let files = file_index(path, raw)?;
        let mut f = io::BufReader::with_capacity(PIECE, File::open(path).map_err(read_error)?);
        let mut buf = vec![0u8; PIECE];
        for span in &self.spans {
            if span.data {
                sink.file_start(span.len);
            }
            let mut left = span.len;
            while left > 0 {
                let n = left.min(PIECE as u64) as usize;
                f.read_exact(&mut buf[..n]).map_err(read_error)?;
                if span.data {
                    sink.file_data(&buf[..n]);
                } else {
                    sink.meta(&buf[..n]);
                }
                left -= n as u64;
            }
            if span.data {
                sink.file_end();
            }
        }
        let frames = self.spans.iter().filter(|s| s.data).count() as u64;
        let encoder = self.encoder;
        Ok((Encoding::ZstdStoredFrames { frames, encoder }, files))
    }
}

/// The encoder of the stream's first frames (up to [`WEIGH_FRAMES`] data frames or
/// [`IDENTIFY_BYTES`]), as ingest would find it; `None` if none stowage knows wrote them.
fn identify(path: &Path, spans: &[FrameSpan]) -> io::Result<Option<ZstdEncoder>> {
    let (mut len, mut data) = (0u64, 0);
    for s in spans {
        if data > 0 && (data == WEIGH_FRAMES || len + s.len > IDENTIFY_BYTES) {
            break;
        }
        len += s.len;
        data += usize::from(s.data);
    }
    // Fed piece by piece: a first frame may be a large file's, hundreds of MB.
    let mut head = File::open(path)?.take(len);
    let mut dec = ZstdDecoder::default();
    let mut buf = vec![0u8; PIECE];
    loop {
        let n = head.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if dec.feed(&buf[..n], &mut |_| {}).is_err() {
            return Ok(None);
        }
    }
    Ok(dec.finish().ok().map(|(encoder, ..)| encoder))
}

/// Files of the layer, from its decompressed tar stream.
fn file_index(path: &Path, raw: &mut dyn FnMut(&[u8])) -> Result<Vec<FileEntry>, NotExact> {
    struct Discard;
    impl TarSink for Discard {
        fn meta(&mut self, _: &[u8]) {}
        fn file_start(&mut self, _: u64) {}
        fn file_data(&mut self, _: &[u8]) {}
        fn file_end(&mut self) {}
    }
    let corrupt = |_| NotExact::Corrupt("zstd frame");
    let f = File::open(path).map_err(|_| NotExact::Corrupt("zstd stream (read error)"))?;
    let mut dec = zstd::stream::read::Decoder::new(f).map_err(corrupt)?;
    // Where small files go does not matter: the sink discards, and every file is indexed.
    let mut split = TarSplitter::new(0);
    let mut buf = vec![0u8; PIECE];
    loop {
        let n = dec.read(&mut buf).map_err(corrupt)?;
        if n == 0 {
            break;
        }
        raw(&buf[..n]);
        split.push(&buf[..n], &mut Discard);
    }
    Ok(split.finish(&mut Discard).files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::zstd_frames::{encode_frame, FrameShape, KpZstdLevel, FLAG_CHECKSUM};

    /// A tar of `n` files of text, and its entries' byte ranges (header and contents).
    fn tar_of(n: usize) -> (Vec<u8>, Vec<usize>) {
        let mut b = tar::Builder::new(Vec::new());
        for i in 0..n {
            let data: Vec<u8> = (0..3000 + 2000 * i)
                .flat_map(|k| format!("{i} line {k}\n").into_bytes())
                .collect();
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, format!("f{i}"), &data[..]).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let mut starts: Vec<usize> = tar::Archive::new(&tar[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().raw_header_position() as usize)
            .collect();
        starts.push(tar.len());
        (tar, starts)
    }

    fn frames(enc: &ZstdEncoder, tar: &[u8], starts: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        for w in starts.windows(2) {
            let shape = FrameShape::flags(FLAG_CHECKSUM);
            out.extend(encode_frame(enc, &tar[w[0]..w[1]], shape));
        }
        out.extend_from_slice(&[0x5e, 0x2a, 0x4d, 0x18, 2, 0, 0, 0, 1, 2]);
        out
    }

    fn staged(dir: &Path, name: &str, b: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, b).unwrap();
        p
    }

    #[derive(Default)]
    struct Collect {
        bytes: Vec<u8>,
        files: Vec<u64>,
    }

    impl TarSink for Collect {
        fn meta(&mut self, b: &[u8]) {
            self.bytes.extend_from_slice(b);
        }
        fn file_start(&mut self, size: u64) {
            self.files.push(size);
        }
        fn file_data(&mut self, b: &[u8]) {
            self.bytes.extend_from_slice(b);
        }
        fn file_end(&mut self) {}
    }

    #[test]
    fn slow_or_unknown_encoders_frames_are_stored_fast_ones_reencoded() {
        let dir = tempfile::tempdir().unwrap();
        let (tar, starts) = tar_of(4);
        let best = ZstdEncoder::Klauspost {
            level: KpZstdLevel::Best,
            version: Default::default(),
        };
        let slow = staged(dir.path(), "best", &frames(&best, &tar, &starts));
        let fast = staged(
            dir.path(),
            "z3",
            &frames(&ZstdEncoder::libzstd(3), &tar, &starts),
        );
        let one = staged(dir.path(), "one", &zstd::bulk::compress(&tar, 19).unwrap());
        // libzstd level 3 with a longer minimum match: no encoder stowage knows.
        let odd = |raw: &[u8]| {
            let mut c = zstd::bulk::Compressor::new(3).unwrap();
            c.set_parameter(zstd::zstd_safe::CParameter::MinMatch(7))
                .unwrap();
            c.compress(raw).unwrap()
        };
        let unknown: Vec<u8> = starts
            .windows(2)
            .flat_map(|w| odd(&tar[w[0]..w[1]]))
            .collect();
        let unknown = staged(dir.path(), "unknown", &unknown);
        let plan = |p: &Path, policy| StoredFrames::plan(p, policy, false).unwrap();

        let stored = plan(&slow, ZstdFrames::Auto).expect("SpeedBest frames are stored");
        assert_eq!(stored.encoder, Some(best));
        assert!(plan(&slow, ZstdFrames::Reencode).is_none());
        assert!(
            plan(&fast, ZstdFrames::Auto).is_none(),
            "libzstd 3 re-encodes fast"
        );
        assert!(plan(&fast, ZstdFrames::Store).is_some());
        assert!(plan(&one, ZstdFrames::Store).is_none(), "one data frame");
        let stored = plan(&unknown, ZstdFrames::Auto).expect("unknown encoders' frames are stored");
        assert_eq!(stored.encoder, None);
        let trailed = staged(
            dir.path(),
            "trailed",
            &[&std::fs::read(&slow).unwrap()[..], b"x"].concat(),
        );
        assert!(
            plan(&trailed, ZstdFrames::Store).is_none(),
            "not whole frames"
        );
    }

    #[test]
    fn with_frame_deltas_a_fast_encoders_files_frames_are_stored_a_streams_pieces_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let z3 = ZstdEncoder::libzstd(3);
        let (tar, starts) = tar_of(4);
        let files = staged(dir.path(), "files", &frames(&z3, &tar, &starts));
        // Three pieces of a stream of words in no order: about 150 KB a frame.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let words: Vec<u8> = (0..120_000)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                format!("w{} ", x % 50_000).into_bytes()
            })
            .collect();
        let third = words.len() / 3;
        let pieces = staged(
            dir.path(),
            "pieces",
            &frames(&z3, &words, &[0, third, 2 * third, words.len()]),
        );
        let plan = |p: &Path, fd| StoredFrames::plan(p, ZstdFrames::Auto, fd).unwrap();

        let stored = plan(&files, true).expect("files' frames, frame deltas on");
        assert_eq!(stored.encoder, Some(z3));
        assert!(
            plan(&files, false).is_none(),
            "frame deltas off: re-encoded"
        );
        let spans = scan_frames(&mut File::open(&pieces).unwrap()).unwrap();
        assert!(spans
            .iter()
            .filter(|s| s.data)
            .all(|s| s.len > FILE_FRAMES_UP_TO));
        assert_eq!(identify(&pieces, &spans).unwrap(), Some(z3));
        assert!(
            plan(&pieces, true).is_none(),
            "a stream's pieces: re-encoded"
        );
    }

    #[test]
    fn the_split_hands_on_every_byte_and_a_frame_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let (tar, starts) = tar_of(5);
        let blob = frames(&ZstdEncoder::libzstd(3), &tar, &starts);
        let path = staged(dir.path(), "blob", &blob);
        let plan = StoredFrames::plan(&path, ZstdFrames::Store, false)
            .unwrap()
            .unwrap();
        let (mut sink, mut plain) = (Collect::default(), 0);
        let (enc, files) = plan
            .split(&path, &mut sink, &mut |b| plain += b.len())
            .unwrap();
        assert!(sink.bytes == blob, "every byte, in order");
        assert_eq!(sink.files.len(), 5, "a file per data frame");
        assert_eq!(sink.files.iter().sum::<u64>() + 10, blob.len() as u64);
        assert_eq!(plain, tar.len(), "decompressed for the file index");
        let names: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(names, ["f0", "f1", "f2", "f3", "f4"]);
        assert_eq!(
            enc,
            Encoding::ZstdStoredFrames {
                frames: 5,
                encoder: Some(ZstdEncoder::libzstd(3))
            }
        );

        // A frame whose contents no longer match its checksum: refused, nothing handed on.
        let mut bad = blob.clone();
        let first = scan_frames(&mut &blob[..]).unwrap()[0].len as usize;
        bad[first - 1] ^= 0x55;
        let path = staged(dir.path(), "bad", &bad);
        let plan = StoredFrames::plan(&path, ZstdFrames::Store, false)
            .unwrap()
            .unwrap();
        let mut sink = Collect::default();
        assert!(plan.split(&path, &mut sink, &mut |_| {}).is_err());
        assert!(sink.bytes.is_empty() && sink.files.is_empty());
    }
}
