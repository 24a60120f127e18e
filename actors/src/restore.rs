//! Restoring a layer from its recipe: a reader thread fetches chunks ahead of the consumer, in
//! the order the recipe needs them (handed over in batches of about `HANDOFF_BYTES`, a
//! bounded window of about [`PREFETCH`] average chunks), while the caller's
//! thread interleaves them and re-encodes the exact compressed stream. A chunk stored as a
//! delta is decoded against its base, which is itself stored whole (invariant 5: at most two
//! reads per chunk); bases come through the restore's small chunk cache, since many deltas
//! usually share one.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use crate::catalog::Catalog;
use crate::engine::chunk::ChunkId;
use bytes::Bytes;
use rayon::prelude::*;

use crate::engine::container::{
    decode_chunk, decoded_len, read_span, split_delta, ChunkEncoding, ChunkLoc,
};
use crate::engine::delta::DeltaCoder;
use crate::engine::frame_delta;
use crate::engine::recipe::{restore_from, Recipe};
use crate::engine::recompress::Reencoder;
use crate::flight::{Flight, Flights, AHEAD, ANNOUNCED_HEAD, IDLE, LINGER};
use crate::storage::containers::Containers;

/// Chunks read ahead of the re-encoder (counted as chunks of the average size).
pub const PREFETCH: usize = 64;
/// Average chunk size [`PREFETCH`] is counted in.
const CHUNK_AVG: usize = 16 << 10;
/// Bytes of chunks the reader hands to the re-encoder at once.
const HANDOFF_BYTES: usize = 128 << 10;
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
        // Frame deltas of the batch, rebuilt together at the end.
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
        if !frames.is_empty() {
            // Re-encoding is the cost of a frame delta: on the rayon pool, its base first.
            let mut jobs = Vec::with_capacity(frames.len());
            for (i, l, stored) in frames {
                let (base_id, _) = split_delta(&stored)?;
                let (base, ns) = self.whole_base(&ids[i], &base_id, session)?;
                read_ns += ns;
                jobs.push((i, l, stored, base));
            }
            let t = Instant::now();
            let rebuilt: Vec<io::Result<Bytes>> = jobs
                .par_iter()
                .map(|(i, l, stored, base)| {
                    rebuild_frame(&ids[*i], l, stored, base).map(Bytes::from)
                })
                .collect();
            decode_ns += elapsed_ns(t);
            for ((i, ..), raw) in jobs.into_iter().zip(rebuilt) {
                let raw = raw?;
                session.cache.put(ids[i], raw.clone());
                out[i] = Some(raw);
            }
        }
        if let Some(times) = times {
            times.read.fetch_add(read_ns, Relaxed);
            times.decode.fetch_add(decode_ns, Relaxed);
        }
        Ok(out
            .into_iter()
            .map(|c| c.expect("every chunk read"))
            .collect())
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

/// Where a restore's time went, in nanoseconds, summed over restores.
#[derive(Default, Debug)]
pub struct StageTimes {
    /// Reading stored chunks from container files.
    pub read: AtomicU64,
    /// Decompressing chunks and decoding deltas.
    pub decode: AtomicU64,
    /// The re-encoder waiting for chunks (reads and decodes not keeping up).
    pub wait: AtomicU64,
    /// Interleaving chunks along the tar framing and re-encoding them exactly.
    pub encode: AtomicU64,
    /// Hashing the restored bytes against the digest.
    pub hash: AtomicU64,
    /// Handing bytes on: writing the spool file, or sending to the client.
    pub send: AtomicU64,
}

impl StageTimes {
    /// (stage name, seconds) for metrics.
    pub fn seconds(&self) -> [(&'static str, f64); 6] {
        let s = |a: &AtomicU64| a.load(Relaxed) as f64 / 1e9;
        [
            ("read", s(&self.read)),
            ("decode", s(&self.decode)),
            ("wait", s(&self.wait)),
            ("encode", s(&self.encode)),
            ("hash", s(&self.hash)),
            ("send", s(&self.send)),
        ]
    }
}

fn elapsed_ns(t: Instant) -> u64 {
    t.elapsed().as_nanos() as u64
}

/// Rebuild the layer described by `recipe`, handing its exact bytes to `out` in order.
pub fn restore_layer(
    recipe: &Recipe,
    reader: &ChunkReader,
    out: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    restore_layer_timed(recipe, reader, &StageTimes::default(), out)
}

/// [`restore_layer`] through [`Reencoder::proving`]: for verify-before-discard and fsck,
/// which prove a recipe as pulls use it.
pub fn restore_layer_proving(
    recipe: &Recipe,
    reader: &ChunkReader,
    out: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let enc = Reencoder::proving(&recipe.encoding);
    restore_tail_timed(recipe, 0, enc, false, reader, &StageTimes::default(), out)
}

/// [`restore_layer`], adding the time spent reading, decoding, waiting for chunks and
/// re-encoding to `times` (the caller times what `out` does; the re-encode is what remains).
pub fn restore_layer_timed(
    recipe: &Recipe,
    reader: &ChunkReader,
    times: &StageTimes,
    out: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let enc = Reencoder::new(&recipe.encoding);
    restore_tail_timed(recipe, 0, enc, false, reader, times, out)
}

/// [`restore_layer_timed`] from uncompressed offset `from` on, through `enc` (resumed there:
/// [`Reencoder::resume`]); chunks wholly before `from` are not read. With `verify_chunks`, each
/// chunk read is checked against its id (SHA-1), for restores that cannot be checked against
/// the layer's digest (a part of a layer); the time counts as hashing.
pub fn restore_tail_timed(
    recipe: &Recipe,
    from: u64,
    enc: Reencoder,
    verify_chunks: bool,
    reader: &ChunkReader,
    times: &StageTimes,
    out: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let order = recipe.read_order_from(from);
    // Chunks travel in batches: one hand-off per chunk cost more than reading a small one (a
    // zstd:chunked layer stored as its frames has a chunk per file, thousands a layer).
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<(ChunkId, Bytes)>>>(
        PREFETCH * CHUNK_AVG / HANDOFF_BYTES,
    );
    // Chunks are checked against their ids by whichever side has less to do: the reader when
    // the stream is re-encoded, the writer when it is only copied.
    let (check_read, check_written) = match (verify_chunks, enc.copies()) {
        (false, _) => (false, false),
        (true, copies) => (!copies, copies),
    };
    let check = |id: ChunkId, data: &[u8]| -> io::Result<()> {
        let t = Instant::now();
        let same = ChunkId::of(data).ok() == Some(id);
        times.hash.fetch_add(elapsed_ns(t), Relaxed);
        if same {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("chunk {id} read back with other bytes"),
            ))
        }
    };
    // Counted piece by piece, so a long restore shows in metrics while it runs: time waiting
    // for chunks since the last piece, and when the re-encoder last took over.
    let waited = std::cell::Cell::new(0u64);
    let mut mark = Instant::now();
    let account = |since: Instant| {
        let w = waited.replace(0);
        times.wait.fetch_add(w, Relaxed);
        times
            .encode
            .fetch_add(elapsed_ns(since).saturating_sub(w), Relaxed);
    };
    let r = std::thread::scope(|s| {
        s.spawn(move || {
            let mut session = ReadSession::new(CHUNK_CACHE_BYTES);
            let mut ahead = reader.prefetch_ahead(&order);
            let mut i = 0;
            while i < order.len() {
                ahead.reached(i);
                let (mut end, mut bytes) = (i, 0);
                while end < order.len() && bytes < HANDOFF_BYTES {
                    bytes += order[end].1 as usize;
                    end += 1;
                }
                let ids: Vec<ChunkId> = order[i..end].iter().map(|(id, _)| *id).collect();
                let r = reader
                    .read_many(&ids, &mut session, Some(times))
                    .and_then(|chunks| {
                        let batch: Vec<(ChunkId, Bytes)> = ids.into_iter().zip(chunks).collect();
                        if check_read {
                            for (id, data) in &batch {
                                check(*id, data)?;
                            }
                        }
                        Ok(batch)
                    });
                let failed = r.is_err();
                if tx.send(r).is_err() || failed {
                    return;
                }
                i = end;
            }
        });
        // Own the receiver here: it must be dropped before the scope joins the reader, so a
        // reader blocked on a full channel wakes up when the restore stops early.
        let rx = rx;
        let mut pending = Vec::<(ChunkId, Bytes)>::new().into_iter();
        let mut it = std::iter::from_fn(|| loop {
            if let Some((id, chunk)) = pending.next() {
                if check_written {
                    if let Err(e) = check(id, &chunk) {
                        return Some(Err(e));
                    }
                }
                return Some(Ok(chunk));
            }
            let t = Instant::now();
            let next = rx.recv().ok();
            waited.set(waited.get() + elapsed_ns(t));
            match next? {
                Ok(batch) => pending = batch.into_iter(),
                Err(e) => return Some(Err(e)),
            }
        });
        restore_from(recipe, from, enc, &mut it, &mut |b| {
            account(mark);
            let r = out(b);
            mark = Instant::now();
            r
        })
    });
    account(mark);
    r
}

/// Restore threads allowed to run at once (`--restore-threads`): a restore takes a permit to
/// run and gives it back when it ends or pauses. Restores starting (or serving readers that
/// keep up) come first; one that paused ahead of its readers gets a permit back only when
/// none of those waits.
#[derive(Debug, Default)]
pub struct Permits {
    state: Mutex<PermitState>,
    freed: Condvar,
    total: usize,
}

#[derive(Debug, Default)]
struct PermitState {
    free: usize,
    waiting: usize,
    waiting_low: usize,
    /// Restores paused (holding their buffers, not a permit), at most `max_paused`.
    paused: usize,
    max_paused: usize,
}

impl Permits {
    pub fn new(n: usize) -> Permits {
        Permits {
            state: Mutex::new(PermitState {
                free: n.max(1),
                max_paused: PAUSED_PER_PERMIT * n.max(1),
                ..Default::default()
            }),
            freed: Condvar::new(),
            total: n.max(1),
        }
    }

    /// Take a permit (first in line).
    pub fn acquire(&self) {
        let mut g = self.state.lock().expect("permits lock");
        g.waiting += 1;
        while g.free == 0 {
            g = self.freed.wait(g).expect("permits lock");
        }
        g.free -= 1;
        g.waiting -= 1;
    }

    /// Take a permit once no [`Permits::acquire`] waits.
    fn acquire_low(&self) {
        let mut g = self.state.lock().expect("permits lock");
        g.waiting_low += 1;
        while g.free == 0 || g.waiting > 0 {
            g = self.freed.wait(g).expect("permits lock");
        }
        g.free -= 1;
        g.waiting_low -= 1;
    }

    pub fn release(&self) {
        self.state.lock().expect("permits lock").free += 1;
        self.freed.notify_all();
    }

    /// Another restore than the caller's (which holds a permit) runs or waits to run.
    pub fn others_busy(&self) -> bool {
        let g = self.state.lock().expect("permits lock");
        self.total - g.free > 1 || g.waiting > 0
    }

    /// No restore runs or waits to run (paused ones aside).
    pub fn idle(&self) -> bool {
        let g = self.state.lock().expect("permits lock");
        g.free == self.total && g.waiting == 0
    }

    /// Give the permit back to pause, if fewer than the most paused restores allowed are
    /// paused (each keeps its read-ahead, chunk cache and re-encoder while it waits, so their
    /// number bounds memory); false: go on running.
    pub fn pause(&self) -> bool {
        let mut g = self.state.lock().expect("permits lock");
        if g.paused >= g.max_paused {
            return false;
        }
        g.paused += 1;
        g.free += 1;
        drop(g);
        self.freed.notify_all();
        true
    }

    /// Take a permit back after [`Permits::pause`], once no new restore waits.
    pub fn resume(&self) {
        self.state.lock().expect("permits lock").paused -= 1;
        self.acquire_low();
    }
}

/// Paused restores allowed per permit (see [`Permits::pause`]).
pub const PAUSED_PER_PERMIT: usize = 4;

/// Serves deduplicated layers. A whole-layer restore runs on a thread of its own and writes
/// into its [`Flight`]'s spool file at the re-encoder's pace, whoever reads it
/// (`crate::flight`); a direct restore (when the disk has no room for a spool) runs on one of
/// the actor's threads and streams into a bounded channel of [`RESTORE_CHANNEL`] pieces of
/// about 256 KiB towards one client, and may serve a byte range. Either way at most
/// `--restore-threads` restores run at once ([`Permits`]); one running ahead of its readers
/// yields while others run. The digest is recomputed on the fly whenever the whole layer is
/// produced; on mismatch readers get an error instead of the last bytes, so a response is
/// aborted, never completed with wrong bytes.
///
/// Mailbox: unbounded, in arrival order, but what it holds is bounded by the registry: at
/// most [`crate::flight::MAX_FLIGHTS`] flights exist (concurrent pulls of one layer share
/// one), announced restores are capped, and direct restores are one per request. A failed
/// restore fails its readers and leaves the actor serving; a flight nobody reads, expects or
/// wants any more stops early, and a paused one whose readers took nothing for
/// [`crate::flight::IDLE`] is given up.
pub struct Restore {
    reader: ChunkReader,
    stats: Arc<RestoreStats>,
    permits: Arc<Permits>,
}

/// Pieces buffered between a direct restore and the HTTP response.
pub const RESTORE_CHANNEL: usize = 8;

#[derive(Default, Debug)]
pub struct RestoreStats {
    /// Layers restored whole and verified.
    pub layers: AtomicU64,
    pub bytes: AtomicU64,
    pub mismatches: AtomicU64,
    pub failures: AtomicU64,
    /// Pulls served from the hot tier.
    pub cache_hits: AtomicU64,
    /// Restores stopped because nobody read them any more.
    pub abandoned: AtomicU64,
    /// Restores started by a manifest GET before their blob GETs.
    pub announced: AtomicU64,
    /// Times a restore ahead of its readers yielded its thread to a waiting one.
    pub paused: AtomicU64,
    /// Ranges restored from a block boundary recorded at ingest instead of the layer's start,
    /// and the uncompressed bytes before it they did not restore.
    pub resumed: AtomicU64,
    pub resumed_skipped_bytes: AtomicU64,
    pub times: StageTimes,
}

impl actix::Actor for Restore {
    type Context = actix::SyncContext<Self>;
}

/// Where a restore's bytes go.
pub enum Target {
    /// The flight's spool file (the whole layer).
    Spool(SpoolJob),
    /// One client, the whole layer or the range (first byte, length).
    Direct {
        range: Option<(u64, u64)>,
        tx: tokio::sync::mpsc::Sender<io::Result<bytes::Bytes>>,
    },
}

/// Keeps a verified spool file (the hot tier renames it); answers whether it did.
pub type Adopt = Box<dyn FnOnce(&Path) -> bool + Send>;

/// A flight to restore. Dropped unfinished (the actor stopped before a thread took it, or the
/// restore panicked), it fails the flight, so its readers never wait for a restore that will
/// not run.
pub struct SpoolJob {
    flight: Arc<Flight>,
    flights: Arc<Flights>,
    /// May keep the verified file (the hot tier renames it); answers whether it did.
    adopt: Option<Adopt>,
}

impl SpoolJob {
    pub fn new(flight: Arc<Flight>, flights: Arc<Flights>, adopt: Adopt) -> SpoolJob {
        SpoolJob {
            flight,
            flights,
            adopt: Some(adopt),
        }
    }

    fn finish(mut self, r: Result<(), String>) {
        let adopt = self.adopt.take().expect("finished once");
        self.flights.finish(&self.flight, r, adopt);
    }
}

impl Drop for SpoolJob {
    fn drop(&mut self) {
        if self.adopt.is_some() {
            self.flights
                .finish(&self.flight, Err("the restore did not run".into()), |_| {
                    false
                });
        }
    }
}

pub struct RestoreLayer {
    pub recipe: Arc<Recipe>,
    pub digest: crate::digest::Digest,
    pub target: Target,
}

impl actix::Message for RestoreLayer {
    type Result = ();
}

impl Restore {
    pub fn start(
        threads: usize,
        catalog: Arc<dyn Catalog>,
        containers: Arc<Containers>,
    ) -> (actix::Addr<Restore>, Arc<RestoreStats>) {
        let stats = Arc::new(RestoreStats::default());
        let s = stats.clone();
        let reader = ChunkReader::new(catalog, containers);
        let permits = Arc::new(Permits::new(threads));
        // The actor's threads only hand spooled restores to threads of their own (which
        // run under the permits) and run direct ones (under the permits too).
        let addr = actix::SyncArbiter::start(threads.max(1), move || Restore {
            reader: reader.clone(),
            stats: s.clone(),
            permits: permits.clone(),
        });
        (addr, stats)
    }

    /// Restore into the flight's spool file, publishing progress after each piece. While
    /// another restore runs or waits, one more than [`AHEAD`] bytes ahead of its fastest
    /// reader yields its permit until they catch up or nothing else runs (or gives up after
    /// [`IDLE`] without a read), so slow clients cost their own pace, not everyone's. One
    /// announced by a manifest GET writes [`ANNOUNCED_HEAD`] bytes, then waits for a pull.
    fn spool(
        &self,
        recipe: &Recipe,
        digest: &crate::digest::Digest,
        job: &SpoolJob,
    ) -> Result<(), String> {
        let (flight, flights) = (&*job.flight, &job.flights);
        if flights.leave_if_abandoned(&job.flight) {
            self.stats.abandoned.fetch_add(1, Relaxed);
            return Err("nobody reads it any more".into());
        }
        let times = &self.stats.times;
        let permits = &self.permits;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(flight.path())
            .map_err(|e| format!("opening the spool: {e}"))?;
        let mut w = io::BufWriter::with_capacity(crate::flight::PIECE, file);
        let mut hasher = digest.algorithm().hasher();
        let mut written = 0u64;
        let r = restore_layer_timed(recipe, &self.reader, times, &mut |b| {
            let t = Instant::now();
            hasher.update(b);
            times.hash.fetch_add(elapsed_ns(t), Relaxed);
            let t = Instant::now();
            io::Write::write_all(&mut w, b)?;
            io::Write::flush(&mut w)?;
            times.send.fetch_add(elapsed_ns(t), Relaxed);
            written += b.len() as u64;
            self.stats.bytes.fetch_add(b.len() as u64, Relaxed);
            flight.publish(crate::flight::Progress::Written(written));
            if flight.unclaimed() && written > ANNOUNCED_HEAD {
                // Announced, and no pull of it yet: wait for one with what is done.
                if !permits.pause() {
                    return Err(io::Error::new(io::ErrorKind::Interrupted, "not pulled"));
                }
                self.stats.paused.fetch_add(1, Relaxed);
                let pulled = flight.wait_for_readers(u64::MAX, || flight.joined() > 0, LINGER);
                permits.resume();
                if !pulled {
                    return Err(io::Error::new(io::ErrorKind::Interrupted, "not pulled"));
                }
            } else if written > flight.read_upto() + AHEAD
                && permits.others_busy()
                && permits.pause()
            {
                self.stats.paused.fetch_add(1, Relaxed);
                // Back when its readers caught up, or when no other restore runs or waits.
                let go_on = flight.wait_for_readers(written - AHEAD / 2, || permits.idle(), IDLE);
                permits.resume();
                if !go_on {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "its readers took nothing for too long",
                    ));
                }
            }
            if flights.leave_if_abandoned(&job.flight) {
                return Err(io::Error::new(io::ErrorKind::Interrupted, "abandoned"));
            }
            Ok(())
        });
        match r {
            Ok(()) => {
                let got = hasher.finish();
                if &got == digest {
                    self.stats.layers.fetch_add(1, Relaxed);
                    Ok(())
                } else {
                    self.stats.mismatches.fetch_add(1, Relaxed);
                    tracing::error!(%digest, restored = %got, "restored layer does not match its digest; responses aborted");
                    Err("restored bytes do not match the digest".into())
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                self.stats.abandoned.fetch_add(1, Relaxed);
                Err("nobody reads it any more".into())
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                self.stats.abandoned.fetch_add(1, Relaxed);
                tracing::warn!(%digest, "restore given up: {e}");
                Err(format!("restore given up: {e}"))
            }
            Err(e) => {
                self.stats.failures.fetch_add(1, Relaxed);
                tracing::error!(%digest, error = %e, "restore failed; responses aborted");
                Err(format!("restore failed: {e}"))
            }
        }
    }

    /// Restore straight to one client (whole or a range). A range is restored from the last
    /// block boundary before it when the layer has one (skipping the work before it); its
    /// chunks are then checked against their ids, as its bytes cannot be checked against the
    /// layer's digest.
    fn direct(
        &self,
        recipe: &Recipe,
        digest: &crate::digest::Digest,
        range: Option<(u64, u64)>,
        tx: &tokio::sync::mpsc::Sender<io::Result<bytes::Bytes>>,
    ) {
        let times = &self.stats.times;
        let (start, len) = range.unwrap_or((0, u64::MAX));
        let end = start.saturating_add(len);
        let mut hasher = digest.algorithm().hasher();
        let resumed = range.and_then(|(start, _)| Reencoder::resume(&recipe.encoding, start));
        let (from, mut pos, enc) = match resumed {
            Some((enc, at)) => {
                self.stats.resumed.fetch_add(1, Relaxed);
                (self.stats.resumed_skipped_bytes).fetch_add(at.plain, Relaxed);
                (at.plain, at.offset, enc)
            }
            None => (0, 0, Reencoder::new(&recipe.encoding)),
        };
        let verify_chunks = from > 0;
        let mut sent = 0u64;
        // The last piece of a whole layer is held back until its digest is checked, so that a
        // mismatch can end the response short of its Content-Length.
        let mut held: Option<bytes::Bytes> = None;
        let whole = range.is_none();
        let r = restore_tail_timed(
            recipe,
            from,
            enc,
            verify_chunks,
            &self.reader,
            times,
            &mut |b| {
                if !verify_chunks {
                    let t = Instant::now();
                    hasher.update(b);
                    times.hash.fetch_add(elapsed_ns(t), Relaxed);
                }
                let (bs, be) = (pos, pos + b.len() as u64);
                pos = be;
                let (s, e) = (bs.max(start), be.min(end));
                if s < e {
                    let mut piece =
                        bytes::Bytes::copy_from_slice(&b[(s - bs) as usize..(e - bs) as usize]);
                    if whole {
                        match held.replace(piece) {
                            Some(prev) => piece = prev,
                            None => return Ok(()),
                        }
                    }
                    sent += piece.len() as u64;
                    let t = Instant::now();
                    tx.blocking_send(Ok(piece)).map_err(|_| {
                        io::Error::new(io::ErrorKind::BrokenPipe, "client went away")
                    })?;
                    times.send.fetch_add(elapsed_ns(t), Relaxed);
                }
                if range.is_some() && pos >= end {
                    // A partial range: stop once it is served.
                    return Err(io::Error::new(io::ErrorKind::Interrupted, "range served"));
                }
                Ok(())
            },
        );
        self.stats.bytes.fetch_add(sent, Relaxed);
        match r {
            // A range to the end from a boundary: its chunks were checked.
            Ok(()) if verify_chunks => {}
            Ok(()) => {
                let got = hasher.finish();
                if &got == digest {
                    self.stats.layers.fetch_add(1, Relaxed);
                    if let Some(last) = held.take() {
                        self.stats.bytes.fetch_add(last.len() as u64, Relaxed);
                        let _ = tx.blocking_send(Ok(last));
                    }
                } else {
                    self.stats.mismatches.fetch_add(1, Relaxed);
                    tracing::error!(%digest, restored = %got, "restored layer does not match its digest; response aborted");
                    let _ = tx.blocking_send(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "restored bytes do not match the digest",
                    )));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
            Err(e) => {
                self.stats.failures.fetch_add(1, Relaxed);
                tracing::error!(%digest, error = %e, "restore failed; response aborted");
                let _ = tx.blocking_send(Err(e));
            }
        }
    }
}

impl actix::Handler<RestoreLayer> for Restore {
    type Result = ();

    fn handle(&mut self, m: RestoreLayer, _: &mut actix::SyncContext<Self>) {
        match m.target {
            Target::Spool(job) => {
                // Its own thread: it may pause, and a paused restore must not hold one of
                // the actor's threads. At most `MAX_FLIGHTS` exist at a time.
                let me = Restore {
                    reader: self.reader.clone(),
                    stats: self.stats.clone(),
                    permits: self.permits.clone(),
                };
                let spawned = std::thread::Builder::new()
                    .name("restore".into())
                    .spawn(move || {
                        me.permits.acquire();
                        let r = me.spool(&m.recipe, &m.digest, &job);
                        me.permits.release();
                        job.finish(r);
                    });
                if let Err(e) = spawned {
                    // The job was dropped with the closure: its flight failed.
                    tracing::error!(error = %e, "could not start a restore thread");
                }
            }
            Target::Direct { range, tx } => {
                self.permits.acquire();
                self.direct(&m.recipe, &m.digest, range, &tx);
                self.permits.release();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::SealedContainer;
    use crate::digest::Digest;
    use crate::engine::container::{delta_record, encode_chunk, ContainerWriter};
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
    fn paused_restores_wait_behind_new_ones() {
        let p = Arc::new(Permits::new(1));
        p.acquire();
        let order = Arc::new(Mutex::new(Vec::new()));
        let low = {
            let (p, order) = (p.clone(), order.clone());
            std::thread::spawn(move || {
                p.acquire_low();
                order.lock().unwrap().push("low");
                p.release();
            })
        };
        // Wait (by its state, not by time) until the low one is queued.
        while p.state.lock().unwrap().waiting_low == 0 {
            std::thread::yield_now();
        }
        let high = {
            let (p, order) = (p.clone(), order.clone());
            std::thread::spawn(move || {
                p.acquire();
                order.lock().unwrap().push("high");
                p.release();
            })
        };
        while p.state.lock().unwrap().waiting == 0 {
            std::thread::yield_now();
        }
        p.release();
        high.join().unwrap();
        low.join().unwrap();
        assert_eq!(*order.lock().unwrap(), ["high", "low"]);
    }

    #[test]
    fn paused_restores_are_bounded() {
        let p = Permits::new(1);
        p.acquire();
        for _ in 0..PAUSED_PER_PERMIT {
            assert!(p.pause());
            p.acquire(); // the permit another restore took meanwhile
        }
        assert!(!p.pause(), "no more may pause: they go on running");
        p.release();
        p.resume();
        assert!(p.pause(), "one resumed: room for another");
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
