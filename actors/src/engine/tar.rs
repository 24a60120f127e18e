//! Splitting an uncompressed layer (a tar stream) into framing and file contents, exactly.
//!
//! [`TarSplitter`] is fed the stream in pieces of any size and hands every byte, in order, to
//! exactly one of [`TarSink::meta`] (headers, PAX / GNU long-name records, contents of small
//! files, padding, the end-of-archive blocks and anything after them) or
//! [`TarSink::file_data`] (contents of regular files of at least `inline_below` bytes,
//! bracketed by `file_start`/`file_end`). Concatenating what the sink receives reproduces the
//! input byte for byte, whatever the input is: a stream that stops parsing as tar (bad
//! checksum, truncation, not a tar at all) simply continues as meta.
//!
//! Headers are parsed with the `tar` crate. Every regular file, inlined or not, is reported in
//! the layer's file index with its path (PAX `path` and GNU long names applied), size, mode and
//! the sha256 of its contents.

use sha2::Digest as _;

/// One regular file of the layer (its table of contents entry).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub mode: u32,
    /// `sha256:<hex>` of the contents.
    pub sha256: String,
}

/// Receives the split stream.
pub trait TarSink {
    fn meta(&mut self, bytes: &[u8]);
    fn file_start(&mut self, size: u64);
    fn file_data(&mut self, bytes: &[u8]);
    fn file_end(&mut self);
}

const BLOCK: usize = 512;
/// PAX and GNU long-name records larger than this are passed through without being parsed.
const MAX_EXT_RECORD: u64 = 1 << 20;

enum State {
    /// Collecting a 512-byte header block.
    Header,
    /// Inside the data of the current entry: `remaining` bytes of content then `pad` bytes.
    Data { remaining: u64, pad: u64 },
    /// End-of-archive seen, or the stream stopped parsing as tar: the rest is meta.
    Rest,
}

/// What the current entry's data is.
#[derive(PartialEq, Eq)]
enum DataKind {
    /// Contents of a large regular file: goes to `file_data`.
    File,
    /// Contents of a small regular file: inline, but hashed for the index.
    SmallFile,
    /// PAX extended header (`x`) or GNU long name (`L`): parsed for the next entry's path.
    LongName,
    Pax,
    Other,
}

pub struct TarSplitter {
    inline_below: u64,
    state: State,
    hdr: Vec<u8>,
    kind: DataKind,
    /// The PAX record or GNU long name being collected.
    ext: Vec<u8>,
    next_path: Option<String>,
    current: Option<FileEntry>,
    hasher: Option<sha2::Sha256>,
    files: Vec<FileEntry>,
    entries: u64,
    parsed_to_end: bool,
}

/// What the split found.
#[derive(Debug, Default)]
pub struct TarSummary {
    /// True when the stream parsed as tar up to its end-of-archive blocks.
    pub is_tar: bool,
    pub entries: u64,
    pub files: Vec<FileEntry>,
}

fn checksum_ok(h: &[u8]) -> bool {
    let stored = tar::Header::from_byte_slice(h).cksum();
    let actual: u32 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                b as u32
            }
        })
        .sum();
    stored.is_ok_and(|s| s == actual)
}

fn pax_path(records: &[u8]) -> Option<String> {
    let mut rest = records;
    while !rest.is_empty() {
        let sp = rest.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..sp]).ok()?.parse().ok()?;
        if len <= sp || len > rest.len() {
            return None;
        }
        let rec = &rest[sp + 1..len];
        let rec = rec.strip_suffix(b"\n").unwrap_or(rec);
        if let Some(v) = rec.strip_prefix(b"path=") {
            return Some(String::from_utf8_lossy(v).into_owned());
        }
        rest = &rest[len..];
    }
    None
}

impl TarSplitter {
    /// Regular files smaller than `inline_below` bytes travel with the framing.
    pub fn new(inline_below: u64) -> TarSplitter {
        TarSplitter {
            inline_below,
            state: State::Header,
            hdr: Vec::with_capacity(BLOCK),
            kind: DataKind::Other,
            ext: Vec::new(),
            next_path: None,
            current: None,
            hasher: None,
            files: Vec::new(),
            entries: 0,
            parsed_to_end: false,
        }
    }

    pub fn push(&mut self, mut data: &[u8], sink: &mut dyn TarSink) {
        while !data.is_empty() {
            match &mut self.state {
                State::Rest => {
                    sink.meta(data);
                    return;
                }
                State::Header => {
                    let take = (BLOCK - self.hdr.len()).min(data.len());
                    self.hdr.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.hdr.len() == BLOCK {
                        self.on_header(sink);
                    }
                }
                State::Data { remaining, pad } => {
                    if *remaining > 0 {
                        let take = (*remaining).min(data.len() as u64) as usize;
                        let part = &data[..take];
                        *remaining -= take as u64;
                        data = &data[take..];
                        let done = *remaining == 0;
                        self.on_content(part, sink);
                        if done {
                            self.on_content_end(sink);
                        }
                    } else {
                        let take = (*pad).min(data.len() as u64) as usize;
                        *pad -= take as u64;
                        sink.meta(&data[..take]);
                        data = &data[take..];
                    }
                    if let State::Data {
                        remaining: 0,
                        pad: 0,
                    } = self.state
                    {
                        self.state = State::Header;
                    }
                }
            }
        }
    }

    fn on_header(&mut self, sink: &mut dyn TarSink) {
        let h = std::mem::take(&mut self.hdr);
        sink.meta(&h);
        if h.iter().all(|&b| b == 0) {
            // End-of-archive: a zero block (normally two), then whatever follows.
            self.parsed_to_end = true;
            self.state = State::Rest;
            return;
        }
        let header = tar::Header::from_byte_slice(&h);
        let size = match (checksum_ok(&h), header.entry_size()) {
            (true, Ok(s)) => s,
            _ => {
                self.state = State::Rest;
                return;
            }
        };
        self.entries += 1;
        let ty = header.entry_type();
        let pad = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        self.kind = DataKind::Other;
        if ty.is_gnu_longname() && size <= MAX_EXT_RECORD {
            self.kind = DataKind::LongName;
        } else if ty.is_pax_local_extensions() && size <= MAX_EXT_RECORD {
            self.kind = DataKind::Pax;
        } else if ty.is_file() || ty.is_contiguous() {
            let path = self
                .next_path
                .take()
                .unwrap_or_else(|| String::from_utf8_lossy(&header.path_bytes()).into_owned());
            self.current = Some(FileEntry {
                path,
                size,
                mode: header.mode().unwrap_or(0),
                sha256: String::new(),
            });
            self.hasher = Some(sha2::Sha256::new());
            if size >= self.inline_below {
                self.kind = DataKind::File;
                sink.file_start(size);
            } else {
                self.kind = DataKind::SmallFile;
            }
        } else if !ty.is_gnu_longlink() && !ty.is_pax_global_extensions() {
            self.next_path = None;
        }
        self.ext.clear();
        if size == 0 {
            self.on_content_end(sink);
            self.state = if pad == 0 {
                State::Header
            } else {
                State::Data { remaining: 0, pad }
            };
        } else {
            self.state = State::Data {
                remaining: size,
                pad,
            };
        }
    }

    fn on_content(&mut self, part: &[u8], sink: &mut dyn TarSink) {
        if let Some(h) = &mut self.hasher {
            h.update(part);
        }
        match self.kind {
            DataKind::File => sink.file_data(part),
            DataKind::LongName | DataKind::Pax => {
                self.ext.extend_from_slice(part);
                sink.meta(part);
            }
            _ => sink.meta(part),
        }
    }

    fn on_content_end(&mut self, sink: &mut dyn TarSink) {
        match self.kind {
            DataKind::File => sink.file_end(),
            DataKind::LongName => {
                let name = self.ext.split(|&b| b == 0).next().unwrap_or(&[]);
                self.next_path = Some(String::from_utf8_lossy(name).into_owned());
            }
            DataKind::Pax => {
                if let Some(p) = pax_path(&self.ext) {
                    self.next_path = Some(p);
                }
            }
            _ => {}
        }
        if let (Some(mut f), Some(h)) = (self.current.take(), self.hasher.take()) {
            f.sha256 = format!("sha256:{}", hex::encode(h.finalize()));
            self.files.push(f);
        }
        self.kind = DataKind::Other;
    }

    /// End of input. A stream cut inside a large file still closes that file for the sink.
    pub fn finish(mut self, sink: &mut dyn TarSink) -> TarSummary {
        if let State::Data { remaining, .. } = self.state {
            if remaining > 0 && self.kind == DataKind::File {
                sink.file_end();
            }
            self.parsed_to_end = false;
        }
        if matches!(self.state, State::Header) && !self.hdr.is_empty() {
            sink.meta(&self.hdr);
            self.parsed_to_end = false;
        }
        TarSummary {
            is_tar: self.parsed_to_end,
            entries: self.entries,
            files: if self.parsed_to_end {
                self.files
            } else {
                Vec::new()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what the sink saw, to check exactness and framing.
    #[derive(Default)]
    struct Rec {
        out: Vec<u8>,
        files: Vec<(u64, Vec<u8>)>,
        open: bool,
    }

    impl TarSink for Rec {
        fn meta(&mut self, b: &[u8]) {
            assert!(!self.open, "meta inside a file");
            self.out.extend_from_slice(b);
        }
        fn file_start(&mut self, size: u64) {
            self.open = true;
            self.files.push((size, Vec::new()));
        }
        fn file_data(&mut self, b: &[u8]) {
            assert!(self.open);
            self.out.extend_from_slice(b);
            self.files.last_mut().unwrap().1.extend_from_slice(b);
        }
        fn file_end(&mut self) {
            self.open = false;
        }
    }

    pub(crate) fn sample_tar() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(1_700_000_000);
            h.set_cksum();
            b.append_data(&mut h, path, data).unwrap();
        };
        add("etc/small.conf", b"x=1\n");
        add("usr/lib/big.so", &vec![7u8; 100_000]);
        add("empty", b"");
        // A long name goes through a GNU long-name record.
        let long = format!("usr/share/{}/file.txt", "d".repeat(150));
        add(&long, &vec![1u8; 5000]);
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        h.set_mode(0o755);
        h.set_cksum();
        b.append_data(&mut h, "usr/", &[][..]).unwrap();
        b.into_inner().unwrap()
    }

    fn split(data: &[u8], piece: usize) -> (Rec, TarSummary) {
        let mut s = TarSplitter::new(4096);
        let mut r = Rec::default();
        for p in data.chunks(piece.max(1)) {
            s.push(p, &mut r);
        }
        let sum = s.finish(&mut r);
        (r, sum)
    }

    #[test]
    fn exact_and_framed() {
        let t = sample_tar();
        for piece in [1, 7, 512, 1000, 1 << 20] {
            let (r, sum) = split(&t, piece);
            assert_eq!(r.out, t, "piece {piece}");
            assert!(sum.is_tar);
            assert_eq!(r.files.len(), 2, "two files above the inline size");
            assert_eq!(r.files[0].0, 100_000);
            assert_eq!(sum.files.len(), 4);
            let long = sum.files.iter().find(|f| f.size == 5000).unwrap();
            assert!(long.path.ends_with("/file.txt") && long.path.len() > 150);
            assert_eq!(sum.files[0].path, "etc/small.conf");
            assert_eq!(sum.files[0].mode, 0o644);
            assert_eq!(
                sum.files[0].sha256,
                format!("sha256:{}", hex::encode(sha2::Sha256::digest(b"x=1\n")))
            );
        }
    }

    #[test]
    fn trailing_bytes_and_garbage_stay_exact() {
        let mut t = sample_tar();
        t.extend_from_slice(b"trailing junk after the end blocks");
        let (r, sum) = split(&t, 333);
        assert_eq!(r.out, t);
        assert!(sum.is_tar);

        let junk: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let (r, sum) = split(&junk, 100);
        assert_eq!(r.out, junk);
        assert!(!sum.is_tar);
        assert!(r.files.is_empty());
    }

    #[test]
    fn truncated_tar_stays_exact() {
        let t = sample_tar();
        for cut in [100, 512, 700, 20_000, t.len() - 1] {
            let (r, sum) = split(&t[..cut], 4096);
            assert_eq!(r.out, &t[..cut], "cut at {cut}");
            assert!(!r.open, "file closed at end");
            // Cut inside the end-of-archive blocks still parsed to the end.
            assert_eq!(sum.is_tar, cut == t.len() - 1, "cut at {cut}");
        }
    }

    #[test]
    fn pax_path_records() {
        let rec = b"30 mtime=1700000000.123456789\n20 path=a/b/c/d.txt\n";
        assert_eq!(pax_path(rec).as_deref(), Some("a/b/c/d.txt"));
        assert_eq!(pax_path(b"garbage"), None);
    }
}
