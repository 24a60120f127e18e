//! Restoring a layer from its recipe: a reader thread fetches chunks ahead of the consumer, in
//! the order the recipe needs them (handed over in batches of about `HANDOFF_BYTES`, a
//! bounded window of about [`PREFETCH`] average chunks), while the caller's
//! thread interleaves them and re-encodes the exact compressed stream. A chunk stored as a
//! delta is decoded against its base, which is itself stored whole (invariant 5: at most two
//! reads per chunk); bases come through the restore's small chunk cache, since many deltas
//! usually share one. Reading is `restore/reader.rs`; the reader keeps up to
//! `BATCHES_IN_FLIGHT` batches read while their frame deltas are rebuilt on the rayon pool.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use crate::catalog::Catalog;
use crate::engine::chunk::ChunkId;
use bytes::Bytes;

use crate::engine::recipe::{restore_from, Recipe};
use crate::engine::recompress::Reencoder;
use crate::flight::{Flight, Flights, AHEAD, ANNOUNCED_HEAD, IDLE, LINGER};
use crate::storage::containers::Containers;

mod reader;
pub use reader::{Ahead, ChunkReader, PendingBatch, ReadSession, CHUNK_CACHE_BYTES};

/// Chunks read ahead of the re-encoder (counted as chunks of the average size).
pub const PREFETCH: usize = 64;
/// Average chunk size [`PREFETCH`] is counted in.
const CHUNK_AVG: usize = 16 << 10;
/// Bytes of chunks the reader hands to the re-encoder at once.
const HANDOFF_BYTES: usize = 128 << 10;
/// Batches a restore has read and not yet handed on, their frame deltas being rebuilt.
const BATCHES_IN_FLIGHT: usize = 8;

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
            // Batches read whose frame deltas are still being rebuilt, oldest first. A batch
            // goes on as soon as it and those before it are done: without frame deltas at
            // once, as if read one by one.
            let mut in_flight = std::collections::VecDeque::new();
            let mut i = 0;
            while i < order.len() || !in_flight.is_empty() {
                if i < order.len() && in_flight.len() < BATCHES_IN_FLIGHT {
                    ahead.reached(i);
                    let (mut end, mut bytes) = (i, 0);
                    while end < order.len() && bytes < HANDOFF_BYTES {
                        bytes += order[end].1 as usize;
                        end += 1;
                    }
                    let ids: Vec<ChunkId> = order[i..end].iter().map(|(id, _)| *id).collect();
                    let started = reader.start_many(&ids, &mut session, Some(times));
                    in_flight.push_back((ids, started));
                    i = end;
                }
                while let Some((_, started)) = in_flight.front_mut() {
                    let ready = started.as_mut().map_or(true, |p| p.ready());
                    // With nothing more to read now, the oldest batch is waited for.
                    let wait = i >= order.len() || in_flight.len() >= BATCHES_IN_FLIGHT;
                    if !ready && !wait {
                        break;
                    }
                    let (ids, started) = in_flight.pop_front().expect("a batch in flight");
                    let r = started
                        .and_then(|p| p.finish(&mut session, Some(times)))
                        .and_then(|chunks| {
                            let batch: Vec<(ChunkId, Bytes)> =
                                ids.into_iter().zip(chunks).collect();
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
                }
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
}
