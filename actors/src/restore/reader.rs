//! Reading a layer's chunks for a restore: a batch of ids looked up in one index transaction,
//! adjacent records read at once, deltas decoded against their bases (stored whole), and
//! frame deltas rebuilt on the rayon pool while the restore reads on ([`PendingBatch`]);
//! with a bucket, the containers of the chunks ahead fetched in the background ([`Ahead`]).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::{elapsed_ns, StageTimes};
use crate::catalog::Catalog;
use crate::engine::chunk::ChunkId;
use crate::engine::container::{
    decode_chunk, decoded_len, read_span, split_delta, ChunkEncoding, ChunkLoc,
};
use crate::engine::delta::DeltaCoder;
use crate::engine::frame_delta;
use crate::storage::containers::Containers;

/// Decoded chunks a restore keeps for reuse (a layer often repeats chunks: zero runs, copies of
/// a file, shared headers), in bytes.
pub const CHUNK_CACHE_BYTES: usize = 8 << 20;
/// Container files kept open by one reader.
const OPEN_FILES: usize = 16;
/// Most bytes one read of adjacent chunk records covers.
const RUN_BYTES: u64 = 1 << 20;
/// Bytes between two records of a container still read through rather than with a read of
/// their own (each record has a head of 29 bytes; a chunk of another layer may lie between).
const RUN_GAP: u64 = 4 << 10;

/// Chunks of a layer's read order that the prefetch of containers from a bucket keeps ahead
/// of its reader (a few containers' worth).
const PREFETCH_AHEAD_CHUNKS: usize = 2048;

/// Keeps the containers of the next `PREFETCH_AHEAD_CHUNKS` chunks of a read order coming
/// from the bucket while the reader works (nothing without a bucket).
pub struct Ahead<'a> {
    reader: &'a ChunkReader,
    order: &'a [(ChunkId, u32)],
    /// Chunks of `order` looked at so far.
    next: usize,
    last: Option<u64>,
}

impl Ahead<'_> {
    /// The reader is at chunk `i`: look `PREFETCH_AHEAD_CHUNKS` further.
    pub fn reached(&mut self, i: usize) {
        if self.reader.containers.bucket().is_none() {
            return;
        }
        let until = (i + PREFETCH_AHEAD_CHUNKS).min(self.order.len());
        if self.next >= until {
            return;
        }
        let ids: Vec<ChunkId> = self.order[self.next..until].iter().map(|c| c.0).collect();
        self.next = until;
        let Ok(locs) = self.reader.catalog.chunks(&ids) else {
            return;
        };
        for loc in locs.into_iter().flatten() {
            if self.last != Some(loc.container) {
                self.reader.containers.prefetch(loc.container);
                self.last = Some(loc.container);
            }
        }
    }
}

/// Reads chunks by id through the catalog's index.
#[derive(Clone)]
pub struct ChunkReader {
    catalog: Arc<dyn Catalog>,
    containers: Arc<Containers>,
}

impl ChunkReader {
    pub fn new(catalog: Arc<dyn Catalog>, containers: Arc<Containers>) -> ChunkReader {
        ChunkReader {
            catalog,
            containers,
        }
    }

    /// Container `id`'s file, opened once per session (up to [`OPEN_FILES`] at a time).
    fn file<'f>(&self, id: u64, files: &'f mut HashMap<u64, File>) -> io::Result<&'f File> {
        if !files.contains_key(&id) {
            if files.len() >= OPEN_FILES {
                files.clear();
            }
            let f = self.containers.open(id)?;
            files.insert(id, f);
        }
        Ok(&files[&id])
    }

    /// The stored record of `id`: its location and stored bytes. Garbage collection may
    /// compact the container between the index lookup and the open: it repoints the index
    /// before it removes the old file, so a container found missing is looked up again (a file
    /// already open stays readable after its removal).
    fn record(
        &self,
        id: &ChunkId,
        files: &mut HashMap<u64, File>,
    ) -> io::Result<(ChunkLoc, Bytes)> {
        let mut attempts = 0;
        loop {
            let loc = self.catalog.chunk(id)?.ok_or_else(|| not_indexed(id))?;
            match self.file(loc.container, files) {
                Ok(f) => return Ok((loc, read_span(f, loc.offset, loc.stored_len as usize)?)),
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 3 => attempts += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// A prefetch of the containers `order` will read (see [`Ahead`]).
    pub fn prefetch_ahead<'a>(&'a self, order: &'a [(ChunkId, u32)]) -> Ahead<'a> {
        Ahead {
            reader: self,
            order,
            next: 0,
            last: None,
        }
    }

    /// The raw bytes of `id`, through `session`'s cache; a delta is decoded against its base.
    /// The chunk is kept in the cache whatever its encoding (similarity reads candidate bases
    /// this way, many of them again and again; read alone, its bytes are a buffer of their
    /// own).
    pub fn read(&self, id: &ChunkId, session: &mut ReadSession) -> io::Result<Bytes> {
        let raw = self
            .read_many(std::slice::from_ref(id), session, None)?
            .pop()
            .expect("one chunk read");
        session.cache.put(*id, raw.clone());
        Ok(raw)
    }

    /// The raw bytes of each of `ids`, in order, through `session`'s cache, adding the time
    /// spent reading and decoding to `times`. The chunks not in the cache are looked up in one
    /// index transaction, and records lying next to each other in a container (a layer's
    /// chunks are packed in pull order) are read with one pread of up to `RUN_BYTES`: a
    /// layer of small chunks (zstd:chunked frames, a chunk per file) costs a few reads, not
    /// one per chunk.
    pub fn read_many(
        &self,
        ids: &[ChunkId],
        session: &mut ReadSession,
        times: Option<&StageTimes>,
    ) -> io::Result<Vec<Bytes>> {
        self.start_many(ids, session, times)?.finish(session, times)
    }

    /// [`ChunkReader::read_many`] up to its frame deltas, which go on being rebuilt on the
    /// rayon pool while the caller reads on: a restore keeps a batch or two in flight, so that
    /// a batch's largest frame does not leave the other cores idle until the next batch.
    pub fn start_many(
        &self,
        ids: &[ChunkId],
        session: &mut ReadSession,
        times: Option<&StageTimes>,
    ) -> io::Result<PendingBatch> {
        let t = Instant::now();
        let mut out: Vec<Option<Bytes>> = ids.iter().map(|id| session.cache.get(id)).collect();
        let missing: Vec<usize> = (0..ids.len()).filter(|&i| out[i].is_none()).collect();
        let locs = if missing.is_empty() {
            Vec::new()
        } else {
            let wanted: Vec<ChunkId> = missing.iter().map(|&i| ids[i]).collect();
            self.catalog.chunks(&wanted)?
        };
        let loc = |k: usize| locs[k].ok_or_else(|| not_indexed(&ids[missing[k]]));
        let (mut read_ns, mut decode_ns) = (elapsed_ns(t), 0);
        // Frame deltas of the batch: started on the rayon pool once the batch is read.
        let mut frames = Vec::new();
        let mut k = 0;
        while k < missing.len() {
            let first = loc(k)?;
            let (mut end, mut span_end) = (k + 1, first.offset + first.stored_len as u64);
            while let Some(Some(l)) = locs.get(end) {
                let next_to = l.container == first.container
                    && l.offset >= span_end
                    && l.offset - span_end <= RUN_GAP
                    && l.offset + l.stored_len as u64 - first.offset <= RUN_BYTES;
                if !next_to {
                    break;
                }
                span_end = l.offset + l.stored_len as u64;
                end += 1;
            }
            let t = Instant::now();
            let span = self
                .file(first.container, &mut session.files)
                .and_then(|f| read_span(f, first.offset, (span_end - first.offset) as usize));
            let span = match span {
                Ok(s) => Some(s),
                // Compacted away since the lookup: each chunk is looked up again.
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            read_ns += elapsed_ns(t);
            for j in k..end {
                let id = &ids[missing[j]];
                let (l, stored) = match &span {
                    Some(s) => {
                        let l = loc(j)?;
                        let at = (l.offset - first.offset) as usize;
                        (l, s.slice(at..at + l.stored_len as usize))
                    }
                    None => {
                        let t = Instant::now();
                        let r = self.record(id, &mut session.files)?;
                        read_ns += elapsed_ns(t);
                        r
                    }
                };
                if l.encoding == ChunkEncoding::FrameDelta {
                    frames.push((missing[j], l, stored));
                    continue;
                }
                let t = Instant::now();
                let (raw, base_read_ns) = self.decode(id, &l, stored, session)?;
                // A base's read happens inside the decode span: counted as a read only.
                read_ns += base_read_ns;
                decode_ns += elapsed_ns(t).saturating_sub(base_read_ns);
                out[missing[j]] = Some(raw);
            }
            k = end;
        }
        // Re-encoding is the cost of a frame delta: on the rayon pool, its base read first.
        let (tx, rx) = std::sync::mpsc::channel();
        let mut rebuilding = Vec::with_capacity(frames.len());
        for (i, l, stored) in frames {
            let (base_id, _) = split_delta(&stored)?;
            let (base, ns) = self.whole_base(&ids[i], &base_id, session)?;
            read_ns += ns;
            let (id, tx) = (ids[i], tx.clone());
            rayon::spawn(move || {
                let r = std::panic::catch_unwind(|| rebuild_frame(&id, &l, &stored, &base))
                    .unwrap_or_else(|_| {
                        Err(io::Error::other(format!(
                            "chunk {id}: frame rebuild panicked"
                        )))
                    });
                // The batch may have been given up (its restore failed): nobody waits.
                let _ = tx.send((i, r.map(Bytes::from)));
            });
            rebuilding.push((i, id));
        }
        if let Some(times) = times {
            times.read.fetch_add(read_ns, Relaxed);
            times.decode.fetch_add(decode_ns, Relaxed);
        }
        Ok(PendingBatch {
            out,
            waiting: rebuilding.len(),
            rebuilding,
            rebuilt: rx,
            failed: None,
        })
    }

    /// The bytes of `base_id`, delta base of chunk `id` (so stored whole), through the
    /// session's cache, and the nanoseconds spent reading it.
    fn whole_base(
        &self,
        id: &ChunkId,
        base_id: &ChunkId,
        session: &mut ReadSession,
    ) -> io::Result<(Bytes, u64)> {
        if let Some(b) = session.cache.get(base_id) {
            return Ok((b, 0));
        }
        let t = Instant::now();
        let (bloc, bstored) = self.record(base_id, &mut session.files)?;
        let read_ns = elapsed_ns(t);
        if !bloc.encoding.is_whole() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("chunk {id}: its delta base {base_id} is itself a delta"),
            ));
        }
        let b = session.decode_whole(&bloc, bstored)?;
        session.cache.put(*base_id, b.clone());
        Ok((b, read_ns))
    }

    /// Chunk `id`'s raw bytes from its stored record, and the nanoseconds spent reading its
    /// delta base. Decoded chunks go into the session's cache; a chunk stored as it is does
    /// not (reading it again costs what a copy would, and its bytes are a slice of a run).
    fn decode(
        &self,
        id: &ChunkId,
        loc: &ChunkLoc,
        stored: Bytes,
        session: &mut ReadSession,
    ) -> io::Result<(Bytes, u64)> {
        let mut base_read_ns = 0;
        let raw = match loc.encoding {
            ChunkEncoding::Stored => return Ok((decoded_len(stored, loc.raw_len)?, 0)),
            ChunkEncoding::Zstd => session.decode_whole(loc, stored)?,
            ChunkEncoding::Delta | ChunkEncoding::FrameDelta => {
                let (base_id, rest) = split_delta(&stored)?;
                let base;
                (base, base_read_ns) = self.whole_base(id, &base_id, session)?;
                let raw = if loc.encoding == ChunkEncoding::Delta {
                    session.coder.decode(&base, rest, loc.raw_len)?
                } else {
                    rebuild_frame(id, loc, &stored, &base)?
                };
                Bytes::from(raw)
            }
        };
        session.cache.put(*id, raw.clone());
        Ok((raw, base_read_ns))
    }
}

/// A batch of chunks read by [`ChunkReader::start_many`], its frame deltas (if any) still
/// being rebuilt on the rayon pool.
#[must_use = "finish the batch for its chunks"]
pub struct PendingBatch {
    out: Vec<Option<Bytes>>,
    /// Position in the batch and id of each frame delta being rebuilt.
    rebuilding: Vec<(usize, ChunkId)>,
    rebuilt: std::sync::mpsc::Receiver<(usize, io::Result<Bytes>)>,
    /// Rebuilds not yet taken in.
    waiting: usize,
    /// The first rebuild that failed.
    failed: Option<io::Error>,
}

impl PendingBatch {
    /// Whether every frame delta of the batch is rebuilt (taking in those that are), so that
    /// [`PendingBatch::finish`] will not wait.
    pub fn ready(&mut self) -> bool {
        while self.waiting > 0 {
            match self.rebuilt.try_recv() {
                Ok(r) => self.take(r),
                Err(std::sync::mpsc::TryRecvError::Empty) => return false,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => self.lost(),
            }
        }
        true
    }

    fn take(&mut self, (i, raw): (usize, io::Result<Bytes>)) {
        self.waiting -= 1;
        match raw {
            Ok(raw) => self.out[i] = Some(raw),
            Err(e) => {
                self.failed.get_or_insert(e);
            }
        }
    }

    /// Every sender is gone with rebuilds not taken in (cannot happen: each rebuild sends).
    fn lost(&mut self) {
        self.waiting = 0;
        self.failed.get_or_insert_with(|| {
            io::Error::other("a frame delta's rebuild ended without a result")
        });
    }

    /// The batch's chunks in order, once its frame deltas are rebuilt (they go into
    /// `session`'s cache); the wait counts as decoding in `times`.
    pub fn finish(
        mut self,
        session: &mut ReadSession,
        times: Option<&StageTimes>,
    ) -> io::Result<Vec<Bytes>> {
        if self.waiting > 0 {
            let t = Instant::now();
            while self.waiting > 0 {
                match self.rebuilt.recv() {
                    Ok(r) => self.take(r),
                    Err(_) => self.lost(),
                }
            }
            if let Some(times) = times {
                times.decode.fetch_add(elapsed_ns(t), Relaxed);
            }
        }
        if let Some(e) = self.failed {
            return Err(e);
        }
        for (i, id) in &self.rebuilding {
            let raw = self.out[*i].clone().expect("rebuilt");
            session.cache.put(*id, raw);
        }
        Ok(self
            .out
            .into_iter()
            .map(|c| c.expect("every chunk read"))
            .collect())
    }
}

thread_local! {
    /// A delta decoder for frame deltas (rebuilt on the rayon pool, or by a lone read).
    static FRAME_CODER: std::cell::RefCell<DeltaCoder> = std::cell::RefCell::new(DeltaCoder::new(3));
}

/// Frame delta `id` (record `stored` at `loc`) rebuilt from its `base`'s bytes, with this
/// thread's delta decoder.
fn rebuild_frame(id: &ChunkId, loc: &ChunkLoc, stored: &[u8], base: &[u8]) -> io::Result<Vec<u8>> {
    let (base_id, rest) = split_delta(stored)?;
    let r =
        FRAME_CODER.with(|c| frame_delta::rebuild(base, rest, loc.raw_len, &mut c.borrow_mut()));
    r.map_err(|e| io::Error::new(e.kind(), format!("chunk {id} (base {base_id}): {e}")))
}

fn not_indexed(id: &ChunkId) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("chunk {id} is not in the index"),
    )
}

/// One reader's state: open container files, a delta decoder and a small cache of decoded
/// chunks (repeats within a layer, and delta bases).
pub struct ReadSession {
    files: HashMap<u64, File>,
    cache: ChunkCache,
    coder: DeltaCoder,
    /// One zstd context for the session's chunks (making one per chunk showed in profiles of
    /// layers of many small chunks).
    unzstd: zstd::bulk::Decompressor<'static>,
}

impl ReadSession {
    pub fn new(cache_bytes: usize) -> ReadSession {
        ReadSession {
            files: HashMap::new(),
            cache: ChunkCache::with_budget(cache_bytes),
            coder: DeltaCoder::new(3),
            unzstd: zstd::bulk::Decompressor::new().expect("zstd decompression context"),
        }
    }

    /// A chunk stored whole, decoded (a chunk stored as it is is not copied).
    fn decode_whole(&mut self, loc: &ChunkLoc, stored: Bytes) -> io::Result<Bytes> {
        match loc.encoding {
            ChunkEncoding::Stored => decoded_len(stored, loc.raw_len),
            ChunkEncoding::Zstd => decoded_len(
                Bytes::from(self.unzstd.decompress(&stored, loc.raw_len as usize)?),
                loc.raw_len,
            ),
            ChunkEncoding::Delta | ChunkEncoding::FrameDelta => {
                decode_chunk(loc.encoding, &stored, loc.raw_len).map(Bytes::from)
            }
        }
    }

    /// Keep `data` as the bytes of `id` (a chunk on its way to a container, not yet indexed).
    pub fn remember(&mut self, id: ChunkId, data: &[u8]) {
        self.cache.put(id, Bytes::copy_from_slice(data));
    }
}

/// A small cache of decoded chunks for one reader: least recently inserted goes first.
struct ChunkCache {
    map: HashMap<ChunkId, Bytes>,
    order: std::collections::VecDeque<ChunkId>,
    bytes: usize,
    budget: usize,
}

impl Default for ChunkCache {
    fn default() -> Self {
        ChunkCache::with_budget(CHUNK_CACHE_BYTES)
    }
}

impl ChunkCache {
    fn with_budget(budget: usize) -> ChunkCache {
        ChunkCache {
            map: HashMap::new(),
            order: Default::default(),
            bytes: 0,
            budget,
        }
    }

    fn get(&self, id: &ChunkId) -> Option<Bytes> {
        self.map.get(id).cloned()
    }

    fn put(&mut self, id: ChunkId, data: Bytes) {
        if data.len() > self.budget / 4 || self.map.contains_key(&id) {
            return;
        }
        while self.bytes + data.len() > self.budget {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(v) = self.map.remove(&old) {
                self.bytes -= v.len();
            }
        }
        self.bytes += data.len();
        self.order.push_back(id);
        self.map.insert(id, data);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;
    use crate::catalog::SealedContainer;
    use crate::digest::Digest;
    use crate::engine::container::{delta_record, encode_chunk, ContainerWriter};
    use crate::engine::recipe::Recipe;
    use crate::engine::tar::FileEntry;
    use crate::engine::test_bytes;

    /// An index that gives batched lookups `stale` locations (as if garbage collection had
    /// compacted their containers since) and single ones the current ones.
    #[derive(Default)]
    struct Index {
        current: HashMap<ChunkId, ChunkLoc>,
        stale: HashMap<ChunkId, ChunkLoc>,
        batches: AtomicU64,
    }

    impl Catalog for Index {
        fn chunk(&self, id: &ChunkId) -> io::Result<Option<ChunkLoc>> {
            Ok(self.current.get(id).copied())
        }
        fn chunks(&self, ids: &[ChunkId]) -> io::Result<Vec<Option<ChunkLoc>>> {
            self.batches.fetch_add(1, Relaxed);
            Ok(ids
                .iter()
                .map(|id| self.stale.get(id).or(self.current.get(id)).copied())
                .collect())
        }
        fn similar(&self, _: &[u64]) -> io::Result<Vec<Option<ChunkId>>> {
            unimplemented!()
        }
        fn allocate_container(&self) -> io::Result<u64> {
            unimplemented!()
        }
        fn commit_container(&self, _: &SealedContainer) -> io::Result<()> {
            unimplemented!()
        }
        fn commit_recipe(&self, _: &Digest, _: &Recipe, _: &[FileEntry]) -> io::Result<()> {
            unimplemented!()
        }
        fn keep_raw(&self, _: &Digest, _: &str) -> io::Result<()> {
            unimplemented!()
        }
    }

    /// Chunks stored as they are, compressed and as deltas, in two containers: read in one
    /// batch (repeats, both containers, runs of adjacent records), each comes back with its
    /// own bytes; a chunk missing from the index fails the batch, naming it; and a batch whose
    /// lookup points into a container removed since is read through fresh lookups.
    #[test]
    fn a_batch_of_chunks_reads_back_each_chunks_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let base = test_bytes(9000, 1);
        let mut near = base.clone();
        near[100..140].copy_from_slice(&[0xee; 40]);
        let datas = [
            test_bytes(3000, 2),
            vec![b'z'; 5000],
            base.clone(),
            test_bytes(1, 3),
            near,
            test_bytes(70_000, 4),
        ];
        let ids: Vec<ChunkId> = datas.iter().map(|d| ChunkId::of(d).unwrap()).collect();
        let mut index = Index::default();
        let mut w = ContainerWriter::create(dir.path(), 1).unwrap();
        for (i, d) in datas.iter().enumerate().take(5) {
            let (enc, stored) = if i == 4 {
                let delta = DeltaCoder::new(3).encode(&base, d).unwrap();
                (ChunkEncoding::Delta, delta_record(&ids[2], &delta))
            } else {
                encode_chunk(d, 3)
            };
            w.append(ids[i], enc, d.len() as u32, &stored).unwrap();
        }
        index.current.extend(w.seal().unwrap());
        let mut w = ContainerWriter::create(dir.path(), 2).unwrap();
        let (enc, stored) = encode_chunk(&datas[5], 3);
        w.append(ids[5], enc, datas[5].len() as u32, &stored)
            .unwrap();
        index.current.extend(w.seal().unwrap());
        let encodings: Vec<ChunkEncoding> =
            ids.iter().map(|id| index.current[id].encoding).collect();
        assert!(
            encodings.contains(&ChunkEncoding::Stored) && encodings.contains(&ChunkEncoding::Zstd)
        );
        assert_eq!(encodings[4], ChunkEncoding::Delta);

        let want = [0, 1, 5, 0, 4, 2, 3, 1];
        let batch: Vec<ChunkId> = want.iter().map(|&i| ids[i]).collect();
        let containers = Arc::new(Containers::local(dir.path()));
        let index = Arc::new(index);
        let reader = ChunkReader::new(index.clone(), containers.clone());
        let got = reader
            .read_many(&batch, &mut ReadSession::new(CHUNK_CACHE_BYTES), None)
            .unwrap();
        assert_eq!(index.batches.load(Relaxed), 1, "one lookup for the batch");
        for (g, &i) in got.iter().zip(&want) {
            assert!(g[..] == datas[i][..], "chunk {i}");
        }

        let unknown = ChunkId::of(b"never stored").unwrap();
        let e = reader
            .read_many(&[ids[0], unknown], &mut ReadSession::new(0), None)
            .unwrap_err();
        assert!(e.to_string().contains(&unknown.to_string()), "{e}");

        let mut moved = Index {
            current: index.current.clone(),
            ..Default::default()
        };
        for id in &ids {
            let mut l = moved.current[id];
            l.container = 7;
            moved.stale.insert(*id, l);
        }
        let reader = ChunkReader::new(Arc::new(moved), containers);
        let got = reader
            .read_many(&batch, &mut ReadSession::new(0), None)
            .unwrap();
        for (g, &i) in got.iter().zip(&want) {
            assert!(g[..] == datas[i][..], "chunk {i} after its container moved");
        }
    }

    #[test]
    fn chunk_cache_is_bounded_and_evicts_oldest() {
        let mut c = ChunkCache::default();
        let big = Bytes::from(vec![7u8; CHUNK_CACHE_BYTES / 4]);
        let ids: Vec<ChunkId> = (0..6u8).map(|i| ChunkId([i; 20])).collect();
        for id in &ids {
            c.put(*id, big.clone());
        }
        assert!(c.bytes <= CHUNK_CACHE_BYTES);
        assert!(c.get(&ids[0]).is_none(), "oldest evicted");
        assert_eq!(c.get(&ids[5]).as_deref(), Some(&big[..]));
        c.put(ChunkId([9; 20]), Bytes::from(vec![0u8; CHUNK_CACHE_BYTES]));
        assert!(
            c.get(&ChunkId([9; 20])).is_none(),
            "oversized chunks are not cached"
        );
    }
}
