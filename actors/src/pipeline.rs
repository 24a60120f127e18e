//! The deduplication pipeline as actix actors:
//!
//! ```text
//! BlobCommitted ──> Upload ──(Dedup)──> Extract ──(Segments)──> Chunk ──(Chunks)──> Similarity
//!   ──(Encoded)──> Pack ──(Finished)──> Commit (restore + verify, recipe commit, raw blob dropped)
//! ```
//!
//! Upload is an async actor on the server's event loop: it queues committed blobs (small
//! messages, one per blob) and hands them to Extract one at a time, so the sync stages never
//! hold more than one layer's worth of batches per edge.
//!
//! Every stage is a [`SyncArbiter`] actor (CPU work off the async reactor) with one thread.
//! actix's sync mailboxes are unbounded, so each edge is bounded by *credits*: a sender keeps
//! at most [`QUEUE_DEPTH`] batches in flight towards the next stage and blocks when it has that
//! many, which slows the stages before it (invariant 4). Batches carry about
//! [`BATCH_BYTES`] of data.
//!
//! Failure: a stage that fails a layer passes the failure down as the layer's outcome; the
//! layer is then kept raw with the reason (never an error for the client) and the pipeline goes
//! on with the next layer. Nothing is discarded before Commit has restored the layer from its
//! committed chunks and matched its digest (invariant 1). A crash at any point leaves either the
//! raw blob in staging (and the layer pending, resumed at start-up) or a verified recipe.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;

use crate::digest::Digest;
use crate::engine::chunk::{ChunkId, ChunkParams};
use crate::engine::container::{encode_chunk, ChunkEncoding, ChunkLoc, ContainerWriter};
use crate::engine::recipe::{NewChunk, Recipe, RecipeBuilder};
use crate::engine::recompress::{Compression, Encoding, LayerDecoder};
use crate::engine::tar::{FileEntry, TarSink, TarSplitter};
use crate::restore::{restore_layer, ChunkReader};

/// Batches in flight on each edge between two stages.
pub const QUEUE_DEPTH: usize = 4;
/// Target size of a batch.
pub const BATCH_BYTES: usize = 1 << 20;

/// The metadata side the pipeline needs, implemented by the server over LMDB.
pub trait Catalog: Send + Sync + 'static {
    fn chunk(&self, id: &ChunkId) -> io::Result<Option<ChunkLoc>>;
    fn allocate_container(&self) -> io::Result<u64>;
    /// Record a sealed container's chunks, in one transaction.
    fn commit_container(&self, id: u64, entries: &[(ChunkId, ChunkLoc)]) -> io::Result<()>;
    /// Store the verified recipe and file index, count the chunk references and mark the blob
    /// deduplicated, in one transaction.
    fn commit_recipe(&self, blob: &Digest, recipe: &Recipe, files: &[FileEntry]) -> io::Result<()>;
    /// Keep the blob raw, for `reason`.
    fn keep_raw(&self, blob: &Digest, reason: &str) -> io::Result<()>;
}

/// Pipeline settings.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    pub containers: PathBuf,
    pub chunk: ChunkParams,
    pub container_target: u64,
    pub zstd_level: i32,
}

/// What became of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Deduplicated { encoding: String },
    Raw { reason: String },
}

/// Per-stage counters, read by the server's metrics.
#[derive(Default, Debug)]
pub struct StageStats {
    pub extract_bytes: AtomicU64,
    pub raw_bytes: AtomicU64,
    pub chunk_bytes: AtomicU64,
    pub chunks: AtomicU64,
    pub new_chunks: AtomicU64,
    pub duplicate_chunks: AtomicU64,
    pub stored_chunk_bytes: AtomicU64,
    pub containers_sealed: AtomicU64,
    pub verify_bytes: AtomicU64,
    /// Committed blobs waiting for Extract.
    pub queued: AtomicU64,
    /// Batches waiting on each edge: extract→chunk, chunk→similarity, similarity→pack, pack→commit.
    pub queue_depth: [AtomicI64; 4],
}

type Reply = tokio::sync::oneshot::Sender<Outcome>;

struct JobCtx {
    digest: Digest,
    path: PathBuf,
    reply: std::sync::Mutex<Option<Reply>>,
}

impl JobCtx {
    fn finish(&self, o: Outcome) {
        if let Some(tx) = self.reply.lock().expect("reply lock").take() {
            let _ = tx.send(o);
        }
    }
}

/// Crash-test hook: when the environment variable `STOWAGE_FAILPOINT` names this point, the
/// process aborts here, as `kill -9` would at that instant. Used by the crash tests to stop the
/// pipeline deterministically between its durable steps; unset in normal operation.
fn failpoint(name: &str) {
    static POINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if POINT
        .get_or_init(|| std::env::var("STOWAGE_FAILPOINT").ok())
        .as_deref()
        == Some(name)
    {
        tracing::warn!(failpoint = name, "aborting at failpoint");
        std::process::abort();
    }
}

/// Lower the calling thread's CPU priority (nice 10): the pipeline works behind the pushes and
/// must not starve uploads and pulls on a small machine (invariant 3).
pub fn background_priority() {
    // SAFETY: setpriority on the calling thread's own id; failure only leaves the priority as is.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

type Pending =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), MailboxError>> + Send>>;

/// A sender that keeps at most [`QUEUE_DEPTH`] batches in flight to the next stage.
struct Bounded {
    next: Recipient<Batch>,
    inflight: VecDeque<Pending>,
    stats: Arc<StageStats>,
    edge: usize,
}

impl Bounded {
    fn new(next: Recipient<Batch>, stats: Arc<StageStats>, edge: usize) -> Self {
        Bounded {
            next,
            inflight: VecDeque::new(),
            stats,
            edge,
        }
    }

    fn send(&mut self, b: Batch) {
        while self.inflight.len() >= QUEUE_DEPTH {
            self.wait_one();
        }
        self.stats.queue_depth[self.edge].fetch_add(1, Ordering::Relaxed);
        self.inflight.push_back(Box::pin(self.next.send(b)));
    }

    fn wait_one(&mut self) {
        if let Some(r) = self.inflight.pop_front() {
            let _ = futures_executor::block_on(r);
            self.stats.queue_depth[self.edge].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The one message type between stages: a job's batch of work.
pub struct Batch {
    job: Arc<JobCtx>,
    body: Body,
}

impl Message for Batch {
    type Result = ();
}

enum Segment {
    Meta(Vec<u8>),
    FileStart(u64),
    FileData(Vec<u8>),
    FileEnd,
}

struct EncodedChunk {
    id: ChunkId,
    raw_len: u32,
    /// None: already stored (a duplicate).
    stored: Option<(ChunkEncoding, Vec<u8>)>,
}

enum Body {
    /// Extract → Chunk.
    Segments(Vec<Segment>),
    /// Extract → Chunk: end of the layer.
    EndOfLayer(Result<(Encoding, Vec<FileEntry>), String>),
    /// Chunk → Similarity.
    Chunks(Vec<NewChunk>),
    /// Similarity → Pack.
    Encoded(Vec<EncodedChunk>),
    /// Chunk → Similarity → Pack → Commit: the layer's recipe (or why there is none).
    Finished(Result<(Recipe, Vec<FileEntry>), String>),
}

// ---- Extract -------------------------------------------------------------------------------

/// Reads a staged blob, identifies and inflates its compression, splits the tar stream.
/// Messages in: [`Dedup`] (from the server). Out: [`Body::Segments`], [`Body::EndOfLayer`].
pub struct Extract {
    next: Bounded,
    cfg: PipelineConfig,
    stats: Arc<StageStats>,
}

impl Actor for Extract {
    type Context = SyncContext<Self>;

    fn started(&mut self, _: &mut SyncContext<Self>) {
        background_priority();
    }
}

/// Deduplicate the staged blob `digest` at `path`; the outcome is sent on `reply`.
pub struct Dedup {
    pub digest: Digest,
    pub path: PathBuf,
    pub reply: Reply,
}

impl Message for Dedup {
    type Result = ();
}

struct SegSink<'a> {
    batch: Vec<Segment>,
    bytes: usize,
    next: &'a mut Bounded,
    job: &'a Arc<JobCtx>,
}

impl SegSink<'_> {
    fn flush(&mut self) {
        if !self.batch.is_empty() {
            let items = std::mem::take(&mut self.batch);
            self.bytes = 0;
            self.next.send(Batch {
                job: self.job.clone(),
                body: Body::Segments(items),
            });
        }
    }
    fn add(&mut self, s: Segment, n: usize) {
        self.batch.push(s);
        self.bytes += n;
        if self.bytes >= BATCH_BYTES {
            self.flush();
        }
    }
}

impl TarSink for SegSink<'_> {
    fn meta(&mut self, b: &[u8]) {
        self.add(Segment::Meta(b.to_vec()), b.len());
    }
    fn file_start(&mut self, size: u64) {
        self.add(Segment::FileStart(size), 0);
    }
    fn file_data(&mut self, b: &[u8]) {
        self.add(Segment::FileData(b.to_vec()), b.len());
    }
    fn file_end(&mut self) {
        self.add(Segment::FileEnd, 0);
    }
}

impl Handler<Dedup> for Extract {
    type Result = ();

    fn handle(&mut self, msg: Dedup, _: &mut SyncContext<Self>) {
        let job = Arc::new(JobCtx {
            digest: msg.digest,
            path: msg.path,
            reply: std::sync::Mutex::new(Some(msg.reply)),
        });
        let end = self.extract(&job);
        self.next.send(Batch {
            job,
            body: Body::EndOfLayer(end),
        });
    }
}

impl Extract {
    fn extract(&mut self, job: &Arc<JobCtx>) -> Result<(Encoding, Vec<FileEntry>), String> {
        let mut f = File::open(&job.path).map_err(|e| format!("opening staged blob: {e}"))?;
        let mut buf = vec![0u8; BATCH_BYTES];
        let mut n = read_full(&mut f, &mut buf).map_err(|e| e.to_string())?;
        let mut decoder = LayerDecoder::new(Compression::detect(&buf[..n]));
        let mut split = TarSplitter::new(self.cfg.chunk.min as u64);
        let mut sink = SegSink {
            batch: Vec::new(),
            bytes: 0,
            next: &mut self.next,
            job,
        };
        let mut failure = None;
        while n > 0 {
            self.stats
                .extract_bytes
                .fetch_add(n as u64, Ordering::Relaxed);
            let stats = &self.stats;
            if let Err(e) = decoder.feed(&buf[..n], &mut |raw| {
                stats
                    .raw_bytes
                    .fetch_add(raw.len() as u64, Ordering::Relaxed);
                split.push(raw, &mut sink)
            }) {
                failure = Some(e.to_string());
                break;
            }
            n = read_full(&mut f, &mut buf).map_err(|e| e.to_string())?;
        }
        let summary = split.finish(&mut sink);
        sink.flush();
        if let Some(f) = failure {
            return Err(f);
        }
        let enc = decoder.finish().map_err(|e| e.to_string())?;
        Ok((enc, summary.files))
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

// ---- Chunk ---------------------------------------------------------------------------------

/// Cuts file contents and the inline stream into content-defined chunks and builds the recipe.
/// In: Segments, EndOfLayer. Out: Chunks, Finished.
pub struct Chunk {
    next: Bounded,
    cfg: PipelineConfig,
    builders: HashMap<usize, RecipeBuilder>,
    stats: Arc<StageStats>,
}

impl Actor for Chunk {
    type Context = SyncContext<Self>;

    fn started(&mut self, _: &mut SyncContext<Self>) {
        background_priority();
    }
}

impl Handler<Batch> for Chunk {
    type Result = ();

    fn handle(&mut self, b: Batch, _: &mut SyncContext<Self>) {
        let key = Arc::as_ptr(&b.job) as usize;
        match b.body {
            Body::Segments(items) => {
                let builder = self
                    .builders
                    .entry(key)
                    .or_insert_with(|| RecipeBuilder::new(self.cfg.chunk));
                for s in items {
                    match s {
                        Segment::Meta(d) => builder.meta(&d),
                        Segment::FileStart(n) => builder.file_start(n),
                        Segment::FileData(d) => builder.file_data(&d),
                        Segment::FileEnd => builder.file_end(),
                    }
                }
                let chunks = builder.take_chunks();
                self.forward(&b.job, chunks);
            }
            Body::EndOfLayer(end) => {
                let builder = self
                    .builders
                    .remove(&key)
                    .unwrap_or_else(|| RecipeBuilder::new(self.cfg.chunk));
                let result = match end {
                    Err(e) => Err(e),
                    Ok((enc, files)) => {
                        let (recipe, last) = builder.finish(enc);
                        self.forward(&b.job, last);
                        recipe.map(|r| (r, files)).map_err(|e| e.to_string())
                    }
                };
                self.next.send(Batch {
                    job: b.job,
                    body: Body::Finished(result),
                });
            }
            _ => unreachable!("Chunk receives segments only"),
        }
    }
}

impl Chunk {
    fn forward(&mut self, job: &Arc<JobCtx>, chunks: Vec<NewChunk>) {
        if chunks.is_empty() {
            return;
        }
        let bytes: usize = chunks.iter().map(|c| c.data.len()).sum();
        self.stats
            .chunk_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        self.stats
            .chunks
            .fetch_add(chunks.len() as u64, Ordering::Relaxed);
        self.next.send(Batch {
            job: job.clone(),
            body: Body::Chunks(chunks),
        });
    }
}

// ---- Similarity ----------------------------------------------------------------------------

/// Looks each chunk up in the chunk index and encodes the new ones. This is the slot for
/// near-duplicate detection (super-features + zstd deltas); for now every new chunk is
/// compressed on its own. In: Chunks, Finished. Out: Encoded, Finished.
pub struct Similarity {
    next: Bounded,
    catalog: Arc<dyn Catalog>,
    cfg: PipelineConfig,
    stats: Arc<StageStats>,
}

impl Actor for Similarity {
    type Context = SyncContext<Self>;

    fn started(&mut self, _: &mut SyncContext<Self>) {
        background_priority();
    }
}

impl Handler<Batch> for Similarity {
    type Result = ();

    fn handle(&mut self, b: Batch, _: &mut SyncContext<Self>) {
        let body = match b.body {
            Body::Chunks(chunks) => {
                let mut out = Vec::with_capacity(chunks.len());
                for c in chunks {
                    let known = matches!(self.catalog.chunk(&c.id), Ok(Some(_)));
                    let stored = if known {
                        self.stats.duplicate_chunks.fetch_add(1, Ordering::Relaxed);
                        None
                    } else {
                        Some(encode_chunk(&c.data, self.cfg.zstd_level))
                    };
                    out.push(EncodedChunk {
                        id: c.id,
                        raw_len: c.data.len() as u32,
                        stored,
                    });
                }
                Body::Encoded(out)
            }
            other => other,
        };
        self.next.send(Batch { job: b.job, body });
    }
}

// ---- Pack ----------------------------------------------------------------------------------

/// Appends new chunks to the open container in arrival order; seals (fsync) and commits the
/// container's chunk entries when it reaches its target size and at the end of each layer.
/// In: Encoded, Finished. Out: Finished (to Commit).
pub struct Pack {
    next: Bounded,
    catalog: Arc<dyn Catalog>,
    cfg: PipelineConfig,
    open: Option<ContainerWriter>,
    in_open: HashSet<ChunkId>,
    failed: HashMap<usize, String>,
    stats: Arc<StageStats>,
}

impl Actor for Pack {
    type Context = SyncContext<Self>;

    fn started(&mut self, _: &mut SyncContext<Self>) {
        background_priority();
    }
}

impl Pack {
    fn append(&mut self, c: EncodedChunk) -> io::Result<()> {
        let Some((enc, data)) = c.stored else {
            return Ok(());
        };
        if self.in_open.contains(&c.id) || self.catalog.chunk(&c.id)?.is_some() {
            self.stats.duplicate_chunks.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if self.open.is_none() {
            let id = self.catalog.allocate_container()?;
            self.open = Some(ContainerWriter::create(&self.cfg.containers, id)?);
        }
        let w = self.open.as_mut().expect("open container");
        w.append(c.id, enc, c.raw_len, &data)?;
        self.in_open.insert(c.id);
        self.stats.new_chunks.fetch_add(1, Ordering::Relaxed);
        self.stats
            .stored_chunk_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        if w.len() >= self.cfg.container_target {
            self.seal()?;
        }
        Ok(())
    }

    fn seal(&mut self) -> io::Result<()> {
        if let Some(w) = self.open.take() {
            let id = w.id();
            let entries = w.seal()?;
            failpoint("sealed-before-commit");
            self.catalog.commit_container(id, &entries)?;
            failpoint("container-committed");
            self.stats.containers_sealed.fetch_add(1, Ordering::Relaxed);
        }
        self.in_open.clear();
        Ok(())
    }
}

impl Handler<Batch> for Pack {
    type Result = ();

    fn handle(&mut self, b: Batch, _: &mut SyncContext<Self>) {
        let key = Arc::as_ptr(&b.job) as usize;
        match b.body {
            Body::Encoded(chunks) => {
                if self.failed.contains_key(&key) {
                    return;
                }
                for c in chunks {
                    if let Err(e) = self.append(c) {
                        tracing::error!(error = %e, "packing chunks failed");
                        if let Some(w) = self.open.take() {
                            let _ = w.discard();
                        }
                        self.in_open.clear();
                        self.failed.insert(key, format!("packing: {e}"));
                        return;
                    }
                }
            }
            Body::Finished(result) => {
                let result = match (self.failed.remove(&key), result) {
                    (Some(e), _) | (None, Err(e)) => {
                        // The open container holds only this layer's new chunks (containers
                        // are sealed at every layer's end): nothing refers to them.
                        if let Some(w) = self.open.take() {
                            if let Err(err) = w.discard() {
                                tracing::warn!(error = %err, "could not remove unused container");
                            }
                        }
                        self.in_open.clear();
                        Err(e)
                    }
                    (None, Ok(r)) => self
                        .seal()
                        .map(|_| r)
                        .map_err(|e| format!("sealing container: {e}")),
                };
                self.next.send(Batch {
                    job: b.job,
                    body: Body::Finished(result),
                });
            }
            _ => unreachable!("Pack receives encoded chunks only"),
        }
    }
}

// ---- Commit --------------------------------------------------------------------------------

/// Verify-before-discard: restores the layer from its committed chunks, compares the digest,
/// then commits the recipe and removes the raw blob. A layer that fails any step stays raw.
/// In: Finished.
pub struct Commit {
    catalog: Arc<dyn Catalog>,
    cfg: PipelineConfig,
    stats: Arc<StageStats>,
}

impl Actor for Commit {
    type Context = SyncContext<Self>;

    fn started(&mut self, _: &mut SyncContext<Self>) {
        background_priority();
    }
}

impl Handler<Batch> for Commit {
    type Result = ();

    fn handle(&mut self, b: Batch, _: &mut SyncContext<Self>) {
        let job = b.job;
        let Body::Finished(result) = b.body else {
            unreachable!("Commit receives finished layers only")
        };
        let outcome = match result
            .and_then(|(recipe, files)| self.verify_and_commit(&job, &recipe, &files))
        {
            Ok(o) => o,
            Err(reason) => {
                if let Err(e) = self.catalog.keep_raw(&job.digest, &reason) {
                    tracing::error!(digest = %job.digest, error = %e, "recording raw layer failed");
                }
                tracing::info!(digest = %job.digest, %reason, "layer kept raw");
                Outcome::Raw { reason }
            }
        };
        job.finish(outcome);
    }
}

impl Commit {
    fn verify_and_commit(
        &self,
        job: &JobCtx,
        recipe: &Recipe,
        files: &[FileEntry],
    ) -> Result<Outcome, String> {
        let reader = ChunkReader::new(self.catalog.clone(), self.cfg.containers.clone());
        let mut hasher = job.digest.algorithm().hasher();
        let mut n = 0u64;
        restore_layer(recipe, &reader, &mut |b| {
            hasher.update(b);
            n += b.len() as u64;
            Ok(())
        })
        .map_err(|e| {
            tracing::error!(digest = %job.digest, error = %e, "verify: restore failed");
            "verify: restore failed".to_string()
        })?;
        self.stats.verify_bytes.fetch_add(n, Ordering::Relaxed);
        let got = hasher.finish();
        if got != job.digest {
            // The reason is a metric label: keep it free of per-layer values.
            tracing::error!(digest = %job.digest, restored = %got, "verify: restore differs");
            return Err("verify: the restored bytes do not match the digest".to_string());
        }
        failpoint("verified-before-recipe-commit");
        self.catalog
            .commit_recipe(&job.digest, recipe, files)
            .map_err(|e| {
                tracing::error!(digest = %job.digest, error = %e, "committing recipe failed");
                "committing the recipe failed".to_string()
            })?;
        failpoint("recipe-committed-before-discard");
        if let Err(e) = std::fs::remove_file(&job.path) {
            tracing::warn!(path = %job.path.display(), error = %e, "could not remove raw blob");
        }
        Ok(Outcome::Deduplicated {
            encoding: recipe.encoding.label(),
        })
    }
}

// ---- wiring --------------------------------------------------------------------------------

/// The running pipeline.
#[derive(Clone)]
pub struct Pipeline {
    upload: Addr<Upload>,
    pub stats: Arc<StageStats>,
}

impl Pipeline {
    /// Start the stages (must run inside an actix `System`).
    pub fn start(catalog: Arc<dyn Catalog>, cfg: PipelineConfig) -> io::Result<Pipeline> {
        std::fs::create_dir_all(&cfg.containers)?;
        let stats = Arc::new(StageStats::default());
        let (c, s) = (cfg.clone(), stats.clone());
        let cat = catalog.clone();
        let commit = SyncArbiter::start(1, move || Commit {
            catalog: cat.clone(),
            cfg: c.clone(),
            stats: s.clone(),
        });
        let (c, s) = (cfg.clone(), stats.clone());
        let cat = catalog.clone();
        let pack = SyncArbiter::start(1, move || Pack {
            next: Bounded::new(commit.clone().recipient(), s.clone(), 3),
            catalog: cat.clone(),
            cfg: c.clone(),
            open: None,
            in_open: HashSet::new(),
            failed: HashMap::new(),
            stats: s.clone(),
        });
        let (c, s) = (cfg.clone(), stats.clone());
        let cat = catalog.clone();
        let similarity = SyncArbiter::start(1, move || Similarity {
            next: Bounded::new(pack.clone().recipient(), s.clone(), 2),
            catalog: cat.clone(),
            cfg: c.clone(),
            stats: s.clone(),
        });
        let (c, s) = (cfg.clone(), stats.clone());
        let chunk = SyncArbiter::start(1, move || Chunk {
            next: Bounded::new(similarity.clone().recipient(), s.clone(), 1),
            cfg: c.clone(),
            builders: HashMap::new(),
            stats: s.clone(),
        });
        let (c, s) = (cfg.clone(), stats.clone());
        let extract = SyncArbiter::start(1, move || Extract {
            next: Bounded::new(chunk.clone().recipient(), s.clone(), 0),
            cfg: c.clone(),
            stats: s.clone(),
        });
        let upload = Upload {
            extract,
            queue: VecDeque::new(),
            busy: false,
            stats: stats.clone(),
        }
        .start();
        Ok(Pipeline { upload, stats })
    }

    /// Submit a staged blob; resolves when it is deduplicated or kept raw.
    pub async fn dedup(&self, digest: Digest, path: PathBuf) -> Outcome {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let msg = BlobCommitted {
            digest,
            path,
            reply: tx,
        };
        if self.upload.send(msg).await.is_err() {
            return Outcome::Raw {
                reason: "pipeline stopped".into(),
            };
        }
        rx.await.unwrap_or(Outcome::Raw {
            reason: "pipeline dropped the layer".into(),
        })
    }
}

// ---- Upload --------------------------------------------------------------------------------

/// A blob was committed (its upload verified and made durable) and waits for deduplication.
pub struct BlobCommitted {
    pub digest: Digest,
    pub path: PathBuf,
    pub reply: Reply,
}

impl Message for BlobCommitted {
    type Result = ();
}

/// Takes committed blobs from the upload path and feeds Extract one layer at a time, in
/// arrival order. In: [`BlobCommitted`]. Out: [`Dedup`]. Its queue holds one small message per
/// waiting blob (its length is the `queued` gauge); blobs not yet deduplicated after a crash
/// are found again from the metadata at start-up, so the queue itself need not be durable.
/// If Extract is gone, the layer's outcome is "pipeline stopped" (it stays pending).
pub struct Upload {
    extract: Addr<Extract>,
    queue: VecDeque<BlobCommitted>,
    busy: bool,
    stats: Arc<StageStats>,
}

impl Actor for Upload {
    type Context = Context<Self>;
}

impl Upload {
    fn next(&mut self, ctx: &mut Context<Self>) {
        self.stats
            .queued
            .store(self.queue.len() as u64, Ordering::Relaxed);
        if self.busy {
            return;
        }
        let Some(b) = self.queue.pop_front() else {
            return;
        };
        self.busy = true;
        let msg = Dedup {
            digest: b.digest,
            path: b.path,
            reply: b.reply,
        };
        // Extract answers once it has read the whole layer: then the next one may start.
        self.extract
            .send(msg)
            .into_actor(self)
            .then(|_, act, ctx| {
                act.busy = false;
                act.next(ctx);
                fut::ready(())
            })
            .spawn(ctx);
    }
}

impl Handler<BlobCommitted> for Upload {
    type Result = ();

    fn handle(&mut self, msg: BlobCommitted, ctx: &mut Context<Self>) {
        self.queue.push_back(msg);
        self.next(ctx);
    }
}
