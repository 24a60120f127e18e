//! Containers: append-only files of encoded chunks, written in arrival (= pull) order.
//!
//! # On-disk format (magic `STWGCNT\0`, version 3), little-endian
//!
//! ```text
//! header   32 bytes  magic "STWGCNT\0" | version u32 | reserved u32 | container id u64 | reserved u64
//! records  repeated  chunk id [20] | encoding u8 | raw_len u32 | stored_len u32 | data [stored_len]
//! index    count u32, then per chunk: chunk id [20] | offset u64 | stored_len u32 | raw_len u32 | encoding u8
//! trailer  16 bytes  index offset u64 | magic "STWGIDX\0"
//! ```
//!
//! `offset` points at a record's data. A container is written at version 2 unless it holds a
//! frame delta (encoding 3). Encodings: 0 zstd frame of the chunk, 1 the chunk as
//! is, 2 (version 2) a delta: the base chunk's id (20 bytes) then a zstd frame made with the base as
//! reference prefix (see [`super::delta`]); the base is always a chunk stored whole (0 or 1),
//! so restoring any chunk takes at most two reads. 3 (version 3) a frame delta: a chunk that
//! is one whole zstd frame, stored as the base's id, how the frame was written, and a delta
//! of its plaintext against the base's, whose chunk is a whole zstd frame too (see
//! [`super::frame_delta`]); the frame is re-encoded on read. Version 1 containers (no deltas)
//! and version 2 (no frame deltas) are read as well. A container is self-describing: the chunk index can be rebuilt from the records
//! or the footer index alone, and a delta names its base by id, not by place, so containers
//! can be rewritten ([`rewrite`]) without touching the deltas that depend on their chunks. It
//! is sealed (index and trailer written, file and directory fsynced) before any metadata
//! refers to it.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::chunk::ChunkId;

pub const MAGIC: &[u8; 8] = b"STWGCNT\0";
pub const INDEX_MAGIC: &[u8; 8] = b"STWGIDX\0";
pub const VERSION: u32 = 3;
/// The version a container without frame deltas is written at: a stowage from before frame
/// deltas reads it (an operator can go back a release).
const VERSION_WITHOUT_FRAME_DELTAS: u32 = 2;
/// Oldest container version still read.
pub const MIN_VERSION: u32 = 1;
const HEADER_LEN: u64 = 32;
const RECORD_HEAD: u64 = 20 + 1 + 4 + 4;
const INDEX_ENTRY: usize = 20 + 8 + 4 + 4 + 1;

/// How a chunk's bytes are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ChunkEncoding {
    /// zstd-compressed on its own.
    Zstd = 0,
    /// As is (compression did not help).
    Stored = 1,
    /// A zstd delta against a base chunk stored whole; the data starts with the base's id.
    Delta = 2,
    /// A whole zstd frame kept as a delta of its plaintext against a base chunk stored whole
    /// that is a zstd frame too, and re-encoded on read; the data starts with the base's id
    /// (see [`super::frame_delta`]).
    FrameDelta = 3,
}

impl ChunkEncoding {
    /// Stored whole (may serve as a delta base).
    pub fn is_whole(self) -> bool {
        !matches!(self, ChunkEncoding::Delta | ChunkEncoding::FrameDelta)
    }

    pub fn from_u8(v: u8) -> io::Result<ChunkEncoding> {
        match v {
            0 => Ok(ChunkEncoding::Zstd),
            1 => Ok(ChunkEncoding::Stored),
            2 => Ok(ChunkEncoding::Delta),
            3 => Ok(ChunkEncoding::FrameDelta),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unknown chunk encoding {v}"),
            )),
        }
    }
}

/// Where a chunk lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLoc {
    pub container: u64,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub encoding: ChunkEncoding,
}

/// Encode a chunk for storage: zstd at `level`, or stored when that does not save space.
pub fn encode_chunk(raw: &[u8], level: i32) -> (ChunkEncoding, Vec<u8>) {
    match zstd::bulk::compress(raw, level) {
        Ok(z) if z.len() < raw.len() => (ChunkEncoding::Zstd, z),
        _ => (ChunkEncoding::Stored, raw.to_vec()),
    }
}

/// The stored data of a delta record: the base's id, then the delta.
pub fn delta_record(base: &ChunkId, delta: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(20 + delta.len());
    v.extend_from_slice(&base.0);
    v.extend_from_slice(delta);
    v
}

/// Split a delta record's stored data (a [`ChunkEncoding::Delta`] or
/// [`ChunkEncoding::FrameDelta`]) into its base's id and the rest.
pub fn split_delta(stored: &[u8]) -> io::Result<(ChunkId, &[u8])> {
    if stored.len() < 20 {
        return Err(bad("delta record shorter than its base id"));
    }
    let mut id = [0u8; 20];
    id.copy_from_slice(&stored[..20]);
    Ok((ChunkId(id), &stored[20..]))
}

/// Decode a chunk stored whole. Deltas need their base: see [`super::delta::DeltaCoder`].
pub fn decode_chunk(enc: ChunkEncoding, stored: &[u8], raw_len: u32) -> io::Result<Vec<u8>> {
    let raw = match enc {
        ChunkEncoding::Stored => stored.to_vec(),
        ChunkEncoding::Zstd => zstd::bulk::decompress(stored, raw_len as usize)?,
        ChunkEncoding::Delta | ChunkEncoding::FrameDelta => {
            return Err(bad("a delta chunk needs its base to be decoded"))
        }
    };
    decoded_len(raw, raw_len)
}

/// `raw`, if it has the `raw_len` bytes a chunk's record promises.
pub fn decoded_len<B: AsRef<[u8]>>(raw: B, raw_len: u32) -> io::Result<B> {
    let len = raw.as_ref().len();
    if len != raw_len as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("chunk decoded to {len} bytes, expected {raw_len}"),
        ));
    }
    Ok(raw)
}

pub fn container_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}"))
}

/// The id a container file is named by ([`container_path`]'s inverse); None for other files.
pub fn container_id(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    (name.len() == 16)
        .then(|| u64::from_str_radix(name, 16).ok())
        .flatten()
}

/// An open container being filled.
pub struct ContainerWriter {
    id: u64,
    path: PathBuf,
    out: BufWriter<File>,
    pos: u64,
    index: Vec<(ChunkId, ChunkLoc)>,
}

impl ContainerWriter {
    pub fn create(dir: &Path, id: u64) -> io::Result<ContainerWriter> {
        let path = container_path(dir, id);
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let mut out = BufWriter::with_capacity(1 << 20, f);
        out.write_all(MAGIC)?;
        // Made `VERSION` at sealing if a frame delta went in.
        out.write_all(&VERSION_WITHOUT_FRAME_DELTAS.to_le_bytes())?;
        out.write_all(&0u32.to_le_bytes())?;
        out.write_all(&id.to_le_bytes())?;
        out.write_all(&0u64.to_le_bytes())?;
        Ok(ContainerWriter {
            id,
            path,
            out,
            pos: HEADER_LEN,
            index: Vec::new(),
        })
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn append(
        &mut self,
        id: ChunkId,
        enc: ChunkEncoding,
        raw_len: u32,
        data: &[u8],
    ) -> io::Result<ChunkLoc> {
        self.out.write_all(&id.0)?;
        self.out.write_all(&[enc as u8])?;
        self.out.write_all(&raw_len.to_le_bytes())?;
        self.out.write_all(&(data.len() as u32).to_le_bytes())?;
        self.out.write_all(data)?;
        let loc = ChunkLoc {
            container: self.id,
            offset: self.pos + RECORD_HEAD,
            stored_len: data.len() as u32,
            raw_len,
            encoding: enc,
        };
        self.pos += RECORD_HEAD + data.len() as u64;
        self.index.push((id, loc));
        Ok(loc)
    }

    /// Write the index and trailer, fsync the file and its directory. Returns the entries.
    pub fn seal(mut self) -> io::Result<Vec<(ChunkId, ChunkLoc)>> {
        let index_offset = self.pos;
        self.out
            .write_all(&(self.index.len() as u32).to_le_bytes())?;
        for (id, loc) in &self.index {
            self.out.write_all(&id.0)?;
            self.out.write_all(&loc.offset.to_le_bytes())?;
            self.out.write_all(&loc.stored_len.to_le_bytes())?;
            self.out.write_all(&loc.raw_len.to_le_bytes())?;
            self.out.write_all(&[loc.encoding as u8])?;
        }
        self.out.write_all(&index_offset.to_le_bytes())?;
        self.out.write_all(INDEX_MAGIC)?;
        let f = self.out.into_inner().map_err(|e| e.into_error())?;
        if self
            .index
            .iter()
            .any(|(_, l)| l.encoding == ChunkEncoding::FrameDelta)
        {
            f.write_all_at(&VERSION.to_le_bytes(), MAGIC.len() as u64)?;
        }
        f.sync_all()?;
        File::open(self.path.parent().expect("container has a directory"))?.sync_all()?;
        Ok(self.index)
    }

    /// Give up on an unsealed container (nothing refers to it yet).
    pub fn discard(self) -> io::Result<()> {
        let path = self.path.clone();
        drop(self.out);
        std::fs::remove_file(path)
    }
}

/// Read a chunk's stored bytes.
pub fn read_stored(file: &File, loc: &ChunkLoc) -> io::Result<Vec<u8>> {
    // The buffer is read_span's own, so the conversion does not copy.
    read_span(file, loc.offset, loc.stored_len as usize).map(Vec::from)
}

/// `len` bytes of `file` from `offset` (a run of adjacent records read at once), without
/// zeroing the buffer first: it is filled by pread(2) from the kernel's copy.
pub fn read_span(file: &File, offset: u64, len: usize) -> io::Result<bytes::Bytes> {
    use std::os::fd::AsRawFd;
    let mut buf = Vec::<u8>::with_capacity(len);
    let mut got = 0;
    while got < len {
        let off = libc::off_t::try_from(offset + got as u64)
            .map_err(|_| bad(format!("offset {offset} out of range")))?;
        // SAFETY: the destination is the buffer's unused capacity past `got` (`len - got`
        // bytes are reserved); pread writes at most that many bytes there, through the
        // pointer, and only the bytes it reports are counted as initialized below.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buf.as_mut_ptr().add(got).cast(),
                len - got,
                off,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("container ends before byte {}", offset + len as u64),
            ));
        }
        got += n as usize;
        // SAFETY: pread initialized the `n` bytes past the old length.
        unsafe { buf.set_len(got) };
    }
    Ok(buf.into())
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Read and check a sealed container's header and footer index.
pub fn read_index(path: &Path) -> io::Result<(u64, Vec<(ChunkId, ChunkLoc)>)> {
    let mut f = File::open(path)?;
    let mut head = [0u8; HEADER_LEN as usize];
    f.read_exact(&mut head)?;
    if &head[..8] != MAGIC {
        return Err(bad(format!("{}: not a stowage container", path.display())));
    }
    let version = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
    if !(MIN_VERSION..=VERSION).contains(&version) {
        return Err(bad(format!(
            "{}: container version {version}",
            path.display()
        )));
    }
    let id = u64::from_le_bytes(head[16..24].try_into().expect("8 bytes"));
    let len = f.seek(SeekFrom::End(0))?;
    if len < HEADER_LEN + 4 + 16 {
        return Err(bad(format!(
            "{}: truncated (unsealed) container",
            path.display()
        )));
    }
    let mut trailer = [0u8; 16];
    f.read_exact_at(&mut trailer, len - 16)?;
    if &trailer[8..] != INDEX_MAGIC {
        return Err(bad(format!(
            "{}: no index (unsealed container)",
            path.display()
        )));
    }
    let index_offset = u64::from_le_bytes(trailer[..8].try_into().expect("8 bytes"));
    let mut count = [0u8; 4];
    f.read_exact_at(&mut count, index_offset)?;
    let count = u32::from_le_bytes(count) as usize;
    let mut raw = vec![0u8; count * INDEX_ENTRY];
    f.read_exact_at(&mut raw, index_offset + 4)?;
    let mut out = Vec::with_capacity(count);
    for e in raw.chunks_exact(INDEX_ENTRY) {
        let mut cid = [0u8; 20];
        cid.copy_from_slice(&e[..20]);
        out.push((
            ChunkId(cid),
            ChunkLoc {
                container: id,
                offset: u64::from_le_bytes(e[20..28].try_into().expect("8 bytes")),
                stored_len: u32::from_le_bytes(e[28..32].try_into().expect("4 bytes")),
                raw_len: u32::from_le_bytes(e[32..36].try_into().expect("4 bytes")),
                encoding: ChunkEncoding::from_u8(e[36])?,
            },
        ));
    }
    Ok((id, out))
}

/// Copy the records of the sealed container `src` for which `keep` holds into a new sealed
/// container `new_id` in `dir`, byte for byte (deltas keep naming their bases by id). This is
/// the compaction step of garbage collection: the caller repoints the chunk index at the
/// returned entries in one transaction before removing `src`.
pub fn rewrite(
    src: &Path,
    dir: &Path,
    new_id: u64,
    keep: &dyn Fn(&ChunkId) -> bool,
) -> io::Result<Vec<(ChunkId, ChunkLoc)>> {
    let (_, index) = read_index(src)?;
    let f = File::open(src)?;
    let mut w = ContainerWriter::create(dir, new_id)?;
    for (id, loc) in index.iter().filter(|(id, _)| keep(id)) {
        let data = read_stored(&f, loc)?;
        w.append(*id, loc.encoding, loc.raw_len, &data)?;
    }
    w.seal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_seal_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ContainerWriter::create(dir.path(), 7).unwrap();
        let chunks: Vec<Vec<u8>> = vec![vec![1u8; 10_000], b"short".to_vec(), (0..=255).collect()];
        let mut locs = Vec::new();
        for c in &chunks {
            let (enc, data) = encode_chunk(c, 3);
            locs.push(
                w.append(ChunkId::of(c).unwrap(), enc, c.len() as u32, &data)
                    .unwrap(),
            );
        }
        assert_eq!(locs[0].encoding, ChunkEncoding::Zstd);
        assert_eq!(locs[1].encoding, ChunkEncoding::Stored);
        let sealed = w.seal().unwrap();
        let (id, index) = read_index(&container_path(dir.path(), 7)).unwrap();
        assert_eq!(id, 7);
        assert_eq!(index, sealed);
        let f = File::open(container_path(dir.path(), 7)).unwrap();
        for (c, (cid, loc)) in chunks.iter().zip(&index) {
            let stored = read_stored(&f, loc).unwrap();
            let raw = decode_chunk(loc.encoding, &stored, loc.raw_len).unwrap();
            assert_eq!(&raw, c);
            assert_eq!(ChunkId::of(&raw).unwrap(), *cid);
        }
    }

    /// A container is written at version 2, which stowage releases before frame deltas read,
    /// unless it holds one; then at version 3, and compaction writes what is left accordingly.
    #[test]
    fn only_a_container_with_a_frame_delta_is_version_3() {
        let dir = tempfile::tempdir().unwrap();
        let version = |id| {
            let b = std::fs::read(container_path(dir.path(), id)).unwrap();
            u32::from_le_bytes(b[8..12].try_into().unwrap())
        };
        let (a, b) = (b"a whole chunk".to_vec(), b"a frame".to_vec());
        let (ia, ib) = (ChunkId::of(&a).unwrap(), ChunkId::of(&b).unwrap());
        let mut w = ContainerWriter::create(dir.path(), 1).unwrap();
        w.append(ia, ChunkEncoding::Stored, a.len() as u32, &a)
            .unwrap();
        w.seal().unwrap();
        assert_eq!(version(1), 2);
        let mut w = ContainerWriter::create(dir.path(), 2).unwrap();
        w.append(ia, ChunkEncoding::Stored, a.len() as u32, &a)
            .unwrap();
        let record = delta_record(&ia, b"recipe and delta");
        w.append(ib, ChunkEncoding::FrameDelta, b.len() as u32, &record)
            .unwrap();
        w.seal().unwrap();
        assert_eq!(version(2), 3);
        let (_, index) = read_index(&container_path(dir.path(), 2)).unwrap();
        assert_eq!(index[1].1.encoding, ChunkEncoding::FrameDelta);

        let src = container_path(dir.path(), 2);
        rewrite(&src, dir.path(), 3, &|id| *id == ia).unwrap();
        assert_eq!(version(3), 2, "the frame delta was not kept");
        rewrite(&src, dir.path(), 4, &|_| true).unwrap();
        assert_eq!(version(4), 3);
    }

    #[test]
    fn unsealed_and_foreign_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ContainerWriter::create(dir.path(), 1).unwrap();
        w.append(ChunkId::of(b"x").unwrap(), ChunkEncoding::Stored, 1, b"x")
            .unwrap();
        drop(w);
        assert!(read_index(&container_path(dir.path(), 1)).is_err());
        std::fs::write(
            dir.path().join("junk"),
            b"hello world, not a container at all",
        )
        .unwrap();
        assert!(read_index(&dir.path().join("junk")).is_err());
    }
}
