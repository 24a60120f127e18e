//! Restoring a layer from its recipe: a reader thread fetches chunks ahead of the consumer, in
//! the order the recipe needs them (a bounded window of [`PREFETCH`] chunks), while the caller's
//! thread interleaves them and re-encodes the exact compressed stream. A chunk stored as a
//! delta is decoded against its base, which is itself stored whole (invariant 5: at most two
//! reads per chunk); bases come through the restore's small chunk cache, since many deltas
//! usually share one.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::catalog::Catalog;
use crate::engine::chunk::ChunkId;
use crate::engine::container::{
    container_path, decode_chunk, read_stored, split_delta, ChunkEncoding,
};
use crate::engine::delta::DeltaCoder;
use crate::engine::recipe::{restore, Recipe};

/// Chunks read ahead of the re-encoder.
pub const PREFETCH: usize = 64;
/// Decoded chunks a restore keeps for reuse (a layer often repeats chunks: zero runs, copies of
/// a file, shared headers), in bytes.
pub const CHUNK_CACHE_BYTES: usize = 8 << 20;
/// Container files kept open by one reader.
const OPEN_FILES: usize = 16;

/// Reads chunks by id through the catalog's index.
#[derive(Clone)]
pub struct ChunkReader {
    catalog: Arc<dyn Catalog>,
    dir: PathBuf,
}

impl ChunkReader {
    pub fn new(catalog: Arc<dyn Catalog>, containers: PathBuf) -> ChunkReader {
        ChunkReader {
            catalog,
            dir: containers,
        }
    }

    /// The stored record of `id`: its location and stored bytes. Garbage collection may
    /// compact the container between the index lookup and the open: it repoints the index
    /// before it removes the old file, so a container found missing is looked up again (a file
    /// already open stays readable after its removal).
    fn record(
        &self,
        id: &ChunkId,
        files: &mut HashMap<u64, File>,
    ) -> io::Result<(crate::engine::container::ChunkLoc, Vec<u8>)> {
        let mut attempts = 0;
        loop {
            let loc = self.catalog.chunk(id)?.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("chunk {id} is not in the index"),
                )
            })?;
            if !files.contains_key(&loc.container) {
                if files.len() >= OPEN_FILES {
                    files.clear();
                }
                match File::open(container_path(&self.dir, loc.container)) {
                    Ok(f) => {
                        files.insert(loc.container, f);
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 3 => {
                        attempts += 1;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let stored = read_stored(&files[&loc.container], &loc)?;
            return Ok((loc, stored));
        }
    }

    /// The raw bytes of `id`, through `session`'s cache; a delta is decoded against its base.
    pub fn read(&self, id: &ChunkId, session: &mut ReadSession) -> io::Result<Vec<u8>> {
        if let Some(hit) = session.cache.get(id) {
            return Ok(hit);
        }
        let (loc, stored) = self.record(id, &mut session.files)?;
        let raw = if loc.encoding == ChunkEncoding::Delta {
            let (base_id, delta) = split_delta(&stored)?;
            let base = match session.cache.get(&base_id) {
                Some(b) => b,
                None => {
                    let (bloc, bstored) = self.record(&base_id, &mut session.files)?;
                    if !bloc.encoding.is_whole() {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("chunk {id}: its delta base {base_id} is itself a delta"),
                        ));
                    }
                    let b = decode_chunk(bloc.encoding, &bstored, bloc.raw_len)?;
                    session.cache.put(base_id, &b);
                    b
                }
            };
            session.coder.decode(&base, delta, loc.raw_len)?
        } else {
            decode_chunk(loc.encoding, &stored, loc.raw_len)?
        };
        session.cache.put(*id, &raw);
        Ok(raw)
    }
}

/// One reader's state: open container files, a delta decoder and a small cache of decoded
/// chunks (repeats within a layer, and delta bases).
pub struct ReadSession {
    files: HashMap<u64, File>,
    cache: ChunkCache,
    coder: DeltaCoder,
}

impl ReadSession {
    pub fn new(cache_bytes: usize) -> ReadSession {
        ReadSession {
            files: HashMap::new(),
            cache: ChunkCache::with_budget(cache_bytes),
            coder: DeltaCoder::new(3),
        }
    }

    /// Keep `data` as the bytes of `id` (a chunk on its way to a container, not yet indexed).
    pub fn remember(&mut self, id: ChunkId, data: &[u8]) {
        self.cache.put(id, data);
    }
}

/// A small cache of decoded chunks for one reader: least recently inserted goes first.
struct ChunkCache {
    map: HashMap<ChunkId, Vec<u8>>,
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

    fn get(&self, id: &ChunkId) -> Option<Vec<u8>> {
        self.map.get(id).cloned()
    }

    fn put(&mut self, id: ChunkId, data: &[u8]) {
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
        self.map.insert(id, data.to_vec());
    }
}

/// Rebuild the layer described by `recipe`, handing its exact bytes to `out` in order.
pub fn restore_layer(
    recipe: &Recipe,
    reader: &ChunkReader,
    out: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let order = recipe.read_order();
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(PREFETCH);
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut session = ReadSession::new(CHUNK_CACHE_BYTES);
            for (id, _) in order {
                let r = reader.read(&id, &mut session);
                let stop = r.is_err();
                if tx.send(r).is_err() || stop {
                    break;
                }
            }
        });
        // Own the receiver here: it must be dropped before the scope joins the reader, so a
        // reader blocked on a full channel wakes up when the restore stops early.
        let rx = rx;
        let mut it = rx.iter();
        restore(recipe, &mut it, out)
    })
}

/// Serves deduplicated layers: each request restores one layer (or a byte range of it) on one
/// of the actor's threads and streams it into `tx` in pieces of about 256 KiB. The digest is
/// recomputed on the fly whenever the whole layer is produced; on mismatch the stream ends
/// with an error instead of its last bytes, so the response is aborted, never completed with
/// wrong bytes. Mailbox: requests queue until a thread is free (each holds a bounded channel of
/// [`RESTORE_CHANNEL`] pieces towards its client). A failed restore ends its stream with an
/// error and leaves the actor serving.
pub struct Restore {
    reader: ChunkReader,
    stats: Arc<RestoreStats>,
}

/// Pieces buffered between a restore thread and the HTTP response.
pub const RESTORE_CHANNEL: usize = 8;

#[derive(Default, Debug)]
pub struct RestoreStats {
    pub layers: std::sync::atomic::AtomicU64,
    pub bytes: std::sync::atomic::AtomicU64,
    pub mismatches: std::sync::atomic::AtomicU64,
    pub failures: std::sync::atomic::AtomicU64,
    /// Pulls served from the cache of restored layers.
    pub cache_hits: std::sync::atomic::AtomicU64,
}

impl actix::Actor for Restore {
    type Context = actix::SyncContext<Self>;
}

pub struct RestoreLayer {
    pub recipe: Arc<Recipe>,
    pub digest: crate::digest::Digest,
    /// First byte and length to send; `None` for the whole layer.
    pub range: Option<(u64, u64)>,
    pub tx: tokio::sync::mpsc::Sender<io::Result<bytes::Bytes>>,
    /// Where to keep a copy of a whole layer once it matched its digest.
    pub cache: Option<crate::cache::CacheWriter>,
}

impl actix::Message for RestoreLayer {
    type Result = ();
}

impl Restore {
    pub fn start(
        threads: usize,
        catalog: Arc<dyn Catalog>,
        containers: PathBuf,
    ) -> (actix::Addr<Restore>, Arc<RestoreStats>) {
        let stats = Arc::new(RestoreStats::default());
        let s = stats.clone();
        let reader = ChunkReader::new(catalog, containers);
        let addr = actix::SyncArbiter::start(threads.max(1), move || Restore {
            reader: reader.clone(),
            stats: s.clone(),
        });
        (addr, stats)
    }
}

impl actix::Handler<RestoreLayer> for Restore {
    type Result = ();

    fn handle(&mut self, mut m: RestoreLayer, _: &mut actix::SyncContext<Self>) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut cache = m.cache.take();
        let total = m.recipe.as_ref();
        let (start, len) = m.range.unwrap_or((0, u64::MAX));
        let end = start.saturating_add(len);
        let mut hasher = m.digest.algorithm().hasher();
        let mut pos = 0u64;
        let mut sent = 0u64;
        // The last piece of a whole layer is held back until its digest is checked, so that a
        // mismatch can end the response short of its Content-Length.
        let mut held: Option<bytes::Bytes> = None;
        let whole = m.range.is_none();
        let r = restore_layer(total, &self.reader, &mut |b| {
            hasher.update(b);
            if let Some(c) = cache.as_mut() {
                c.write(b);
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
                m.tx.blocking_send(Ok(piece))
                    .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "client went away"))?;
            }
            if m.range.is_some() && pos >= end {
                // A partial range: stop once it is served.
                return Err(io::Error::new(io::ErrorKind::Interrupted, "range served"));
            }
            Ok(())
        });
        self.stats.bytes.fetch_add(sent, Relaxed);
        match r {
            Ok(()) => {
                self.stats.layers.fetch_add(1, Relaxed);
                let got = hasher.finish();
                if got == m.digest {
                    if let Some(last) = held.take() {
                        self.stats.bytes.fetch_add(last.len() as u64, Relaxed);
                        let _ = m.tx.blocking_send(Ok(last));
                    }
                    if let Some(c) = cache.take() {
                        if let Err(e) = c.commit() {
                            tracing::warn!(digest = %m.digest, error = %e, "could not cache the restored layer");
                        }
                    }
                } else {
                    self.stats.mismatches.fetch_add(1, Relaxed);
                    tracing::error!(digest = %m.digest, restored = %got, "restored layer does not match its digest; response aborted");
                    let _ = m.tx.blocking_send(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "restored bytes do not match the digest",
                    )));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
            Err(e) => {
                self.stats.failures.fetch_add(1, Relaxed);
                tracing::error!(digest = %m.digest, error = %e, "restore failed; response aborted");
                let _ = m.tx.blocking_send(Err(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_cache_is_bounded_and_evicts_oldest() {
        let mut c = ChunkCache::default();
        let big = vec![7u8; CHUNK_CACHE_BYTES / 4];
        let ids: Vec<ChunkId> = (0..6u8).map(|i| ChunkId([i; 20])).collect();
        for id in &ids {
            c.put(*id, &big);
        }
        assert!(c.bytes <= CHUNK_CACHE_BYTES);
        assert!(c.get(&ids[0]).is_none(), "oldest evicted");
        assert_eq!(c.get(&ids[5]).as_deref(), Some(&big[..]));
        c.put(ChunkId([9; 20]), &vec![0u8; CHUNK_CACHE_BYTES]);
        assert!(
            c.get(&ChunkId([9; 20])).is_none(),
            "oversized chunks are not cached"
        );
    }
}
