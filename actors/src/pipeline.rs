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

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;

use crate::digest::Digest;
use crate::engine::chunk::{ChunkId, ChunkParams};
use crate::engine::container::{
    delta_record, encode_chunk, ChunkEncoding, ChunkLoc, ContainerWriter,
};
use crate::engine::delta::DeltaCoder;
use crate::engine::features::{pick_bases, super_features, FeatureParams};
use crate::engine::recipe::{NewChunk, Origin, Recipe, RecipeBuilder};
use crate::engine::recompress::{Compression, Encoding, LayerDecoder};
use crate::engine::tar::{FileEntry, TarSink, TarSplitter};
use crate::restore::{restore_layer, ChunkReader, ReadSession};

/// Batches in flight on each edge between two stages.
pub const QUEUE_DEPTH: usize = 4;
/// Target size of a batch.
pub const BATCH_BYTES: usize = 1 << 20;

/// The metadata side the pipeline needs, implemented by the server over LMDB.
pub trait Catalog: Send + Sync + 'static {
    fn chunk(&self, id: &ChunkId) -> io::Result<Option<ChunkLoc>>;
    /// The feature index: for each super-feature `i`, the chunk registered under `(i, sf[i])`.
    fn similar(&self, sf: &[u64]) -> io::Result<Vec<Option<ChunkId>>>;
    fn allocate_container(&self) -> io::Result<u64>;
    /// Record a sealed container's chunks, the bases its deltas depend on and the features of
    /// its whole chunks, in one transaction.
    fn commit_container(&self, sealed: &SealedContainer) -> io::Result<()>;
    /// Store the verified recipe and file index, count the chunk references and mark the blob
    /// deduplicated, in one transaction.
    fn commit_recipe(&self, blob: &Digest, recipe: &Recipe, files: &[FileEntry]) -> io::Result<()>;
    /// Keep the blob raw, for `reason`.
    fn keep_raw(&self, blob: &Digest, reason: &str) -> io::Result<()>;
}

/// A sealed container, as committed to the catalog.
#[derive(Debug, Default)]
pub struct SealedContainer {
    pub id: u64,
    pub entries: Vec<(ChunkId, ChunkLoc)>,
    /// (delta chunk, its base) for every delta in the container: the base must not be removed
    /// while the delta exists.
    pub bases: Vec<(ChunkId, ChunkId)>,
    /// Super-features of the whole chunks that may serve as future bases.
    pub features: Vec<(ChunkId, Vec<u64>)>,
}

/// Pipeline settings.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    pub containers: PathBuf,
    pub chunk: ChunkParams,
    pub container_target: u64,
    pub zstd_level: i32,
    pub similarity: SimilarityConfig,
    /// Where a verified layer's pushed bytes go instead of being removed, when they fit.
    pub hot: Option<Arc<crate::cache::LayerCache>>,
}

/// Near-duplicate detection and its selective policies.
#[derive(Clone, Debug)]
pub struct SimilarityConfig {
    /// Off: chunk dedup only (every new chunk is stored whole).
    pub enabled: bool,
    pub features: FeatureParams,
    /// A delta is kept only when it is at most this fraction of the chunk compressed alone.
    pub threshold: f64,
    /// Candidate bases tried per chunk (the best-ranked ones); the smallest delta wins.
    pub candidates: usize,
    /// Skip files that start like a compressed format, and chunks zstd cannot shrink.
    pub skip_compressed: bool,
    /// Skip files smaller than this (bytes).
    pub min_file_size: u64,
}

impl Default for SimilarityConfig {
    fn default() -> Self {
        SimilarityConfig {
            enabled: true,
            features: FeatureParams::default(),
            threshold: 0.7,
            candidates: 2,
            skip_compressed: true,
            min_file_size: 0,
        }
    }
}

/// What the registry's policies decided for one layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerPolicy {
    /// Look for near-duplicates (false: chunk dedup only).
    pub similarity: bool,
}

impl Default for LayerPolicy {
    fn default() -> Self {
        LayerPolicy { similarity: true }
    }
}

/// Why the similarity stage skipped a chunk (index into [`StageStats::skipped`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// The file starts like a compressed format, or zstd could not shrink the chunk.
    Compressed = 0,
    /// The file is smaller than the configured minimum.
    SmallFile = 1,
    /// The layer's repository policy turned similarity off.
    Repository = 2,
}

impl SkipReason {
    pub const ALL: [SkipReason; 3] = [
        SkipReason::Compressed,
        SkipReason::SmallFile,
        SkipReason::Repository,
    ];

    pub fn label(self) -> &'static str {
        match self {
            SkipReason::Compressed => "compressed",
            SkipReason::SmallFile => "small_file",
            SkipReason::Repository => "repository",
        }
    }
}

/// What a policy that skips similarity saved and cost. One chunk in [`SKIP_TRIAL_EVERY`]
/// skipped ones is tried anyway (not stored differently): its time and the delta saving it
/// would have had, scaled up, estimate the work saved and the bytes the policy costs.
#[derive(Default, Debug)]
pub struct SkipStats {
    pub chunks: AtomicU64,
    pub bytes: AtomicU64,
    pub estimated_saved_nanos: AtomicU64,
    pub estimated_lost_bytes: AtomicU64,
}

/// Skipped chunks per trial (see [`SkipStats`]).
pub const SKIP_TRIAL_EVERY: u64 = 16;

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
    /// New chunks stored whole / as deltas (counted when packed).
    pub chunks_whole: AtomicU64,
    pub chunks_delta: AtomicU64,
    /// Bytes the deltas saved over storing the same chunks whole.
    pub delta_saved_bytes: AtomicU64,
    /// Deltas stored whole after all because their base did not make it into a container.
    pub delta_fallbacks: AtomicU64,
    /// Feature-index lookups, and those that found a candidate base.
    pub similarity_lookups: AtomicU64,
    pub similarity_hits: AtomicU64,
    /// New chunk bytes through the similarity stage, and its busy time.
    pub similarity_bytes: AtomicU64,
    pub similarity_nanos: AtomicU64,
    /// Chunks the selective policies kept out of similarity, per [`SkipReason`].
    pub skipped: [SkipStats; 3],
    /// Committed blobs waiting for Extract.
    pub queued: AtomicU64,
    /// Batches waiting on each edge: extract→chunk, chunk→similarity, similarity→pack, pack→commit.
    pub queue_depth: [AtomicI64; 4],
}

type Reply = tokio::sync::oneshot::Sender<Outcome>;

struct JobCtx {
    digest: Digest,
    path: PathBuf,
    policy: LayerPolicy,
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
/// Abort the process here, as `kill -9` would, when `STOWAGE_FAILPOINT` names this point (crash
/// tests). Unset in production.
pub fn failpoint(name: &str) {
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

    fn send(&mut self, mut b: Batch) {
        while self.inflight.len() >= QUEUE_DEPTH {
            self.wait_one();
        }
        self.stats.queue_depth[self.edge].fetch_add(1, Ordering::Relaxed);
        b.queued = Some(Queued {
            stats: self.stats.clone(),
            edge: self.edge,
        });
        self.inflight.push_back(Box::pin(self.next.send(b)));
    }

    fn wait_one(&mut self) {
        if let Some(r) = self.inflight.pop_front() {
            let _ = futures_executor::block_on(r);
        }
    }
}

/// Counts a batch on its edge's `queue_depth` from its send until the next stage is done with
/// it (dropped), so the gauge returns to 0 when the pipeline is idle, whether or not the
/// sender ever collects the reply.
struct Queued {
    stats: Arc<StageStats>,
    edge: usize,
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.stats.queue_depth[self.edge].fetch_sub(1, Ordering::Relaxed);
    }
}

/// The one message type between stages: a job's batch of work.
pub struct Batch {
    job: Arc<JobCtx>,
    body: Body,
    /// Set by the sender: keeps the batch counted while queued or handled.
    queued: Option<Queued>,
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
    /// For a delta: its base, and the chunk encoded whole, used if the base is not available
    /// when the delta is packed.
    delta: Option<(ChunkId, (ChunkEncoding, Vec<u8>))>,
    /// Super-features, registered if the chunk is stored whole.
    features: Option<Vec<u64>>,
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
    pub policy: LayerPolicy,
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
                queued: None,
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
            policy: msg.policy,
            reply: std::sync::Mutex::new(Some(msg.reply)),
        });
        let end = self.extract(&job);
        self.next.send(Batch {
            queued: None,
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
                    queued: None,
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
            queued: None,
            job: job.clone(),
            body: Body::Chunks(chunks),
        });
    }
}

// ---- Similarity ----------------------------------------------------------------------------

/// Looks each chunk up in the chunk index and encodes the new ones: whole (zstd), or as a zstd
/// delta against a similar chunk stored whole, found through the super-feature index, when
/// that is at most `threshold` of the whole encoding. Chunks the selective policies exclude
/// are stored whole without a lookup. In: Chunks, Finished. Out: Encoded, Finished.
///
/// State: a delta coder, a read session for bases (its cache also keeps the chunks this stage
/// encoded whole until they are indexed, so near-duplicates within a layer find each other)
/// and the features of those pending chunks. A base that does not make it into a container
/// (its layer failed) is caught by Pack, which then stores the chunk whole.
pub struct Similarity {
    next: Bounded,
    catalog: Arc<dyn Catalog>,
    cfg: PipelineConfig,
    stats: Arc<StageStats>,
    coder: DeltaCoder,
    reader: ChunkReader,
    bases: ReadSession,
    pending: HashMap<(usize, u64), ChunkId>,
    /// Skipped chunks seen per [`SkipReason`] (every [`SKIP_TRIAL_EVERY`]th is tried).
    skipped_seen: [u64; 3],
}

/// Bytes of recent whole chunks and bases the similarity stage keeps decoded.
pub const SIMILARITY_CACHE_BYTES: usize = 32 << 20;
/// Features of not-yet-indexed chunks kept in memory (cleared when exceeded).
const PENDING_FEATURES: usize = 1 << 20;

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
                let t = std::time::Instant::now();
                let mut out = Vec::with_capacity(chunks.len());
                let mut bytes = 0u64;
                for c in chunks {
                    if matches!(self.catalog.chunk(&c.id), Ok(Some(_))) {
                        self.stats.duplicate_chunks.fetch_add(1, Ordering::Relaxed);
                        out.push(EncodedChunk {
                            id: c.id,
                            raw_len: c.data.len() as u32,
                            stored: None,
                            delta: None,
                            features: None,
                        });
                        continue;
                    }
                    bytes += c.data.len() as u64;
                    out.push(self.encode(&b.job, c));
                }
                self.stats
                    .similarity_bytes
                    .fetch_add(bytes, Ordering::Relaxed);
                self.stats
                    .similarity_nanos
                    .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                Body::Encoded(out)
            }
            other => other,
        };
        self.next.send(Batch {
            queued: None,
            job: b.job,
            body,
        });
    }
}

impl Similarity {
    fn skip_reason(
        &self,
        job: &JobCtx,
        c: &NewChunk,
        whole: &(ChunkEncoding, Vec<u8>),
    ) -> Option<SkipReason> {
        let s = &self.cfg.similarity;
        if !job.policy.similarity {
            return Some(SkipReason::Repository);
        }
        if let Origin::File { size, compressed } = c.origin {
            if s.skip_compressed && compressed {
                return Some(SkipReason::Compressed);
            }
            if size < s.min_file_size {
                return Some(SkipReason::SmallFile);
            }
        }
        // Decided from the bytes: what zstd cannot shrink by 3% is compressed data.
        if s.skip_compressed && whole.1.len() * 100 > c.data.len() * 97 {
            return Some(SkipReason::Compressed);
        }
        None
    }

    /// The smallest delta for chunk `id` against the best-ranked candidate bases. `count`: a
    /// real lookup (false for the policies' trials, which must not skew the hit rate).
    fn try_delta(
        &mut self,
        id: &ChunkId,
        data: &[u8],
        sf: &[u64],
        count: bool,
    ) -> Option<(ChunkId, Vec<u8>)> {
        if count {
            self.stats
                .similarity_lookups
                .fetch_add(1, Ordering::Relaxed);
        }
        let indexed = match self.catalog.similar(sf) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "feature index lookup failed");
                vec![None; sf.len()]
            }
        };
        let pending = &self.pending;
        let cands = pick_bases(sf, self.cfg.similarity.candidates.max(1), |i, f| {
            pending
                .get(&(i, f))
                .copied()
                .or(indexed[i])
                .filter(|b| b != id)
        });
        if cands.is_empty() {
            return None;
        }
        if count {
            self.stats.similarity_hits.fetch_add(1, Ordering::Relaxed);
        }
        let mut best: Option<(ChunkId, Vec<u8>)> = None;
        for (base, _) in cands {
            let base_data = match self.reader.read(&base, &mut self.bases) {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!(%base, error = %e, "candidate base unreadable");
                    continue;
                }
            };
            match self.coder.encode(&base_data, data) {
                Ok(d) if best.as_ref().is_none_or(|(_, b)| d.len() < b.len()) => {
                    best = Some((base, d))
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "delta encoding failed"),
            }
        }
        best
    }

    fn encode(&mut self, job: &JobCtx, c: NewChunk) -> EncodedChunk {
        let whole = encode_chunk(&c.data, self.cfg.zstd_level);
        let raw_len = c.data.len() as u32;
        let plain = |whole, features| EncodedChunk {
            id: c.id,
            raw_len,
            stored: Some(whole),
            delta: None,
            features,
        };
        if !self.cfg.similarity.enabled {
            return plain(whole, None);
        }
        if let Some(reason) = self.skip_reason(job, &c, &whole) {
            let stats = self.stats.clone();
            let st = &stats.skipped[reason as usize];
            st.chunks.fetch_add(1, Ordering::Relaxed);
            st.bytes.fetch_add(c.data.len() as u64, Ordering::Relaxed);
            self.skipped_seen[reason as usize] += 1;
            if self.skipped_seen[reason as usize].is_multiple_of(SKIP_TRIAL_EVERY) {
                // A trial, stored whole regardless: what would similarity have done here?
                let t = std::time::Instant::now();
                let trial = super_features(&c.data, &self.cfg.similarity.features)
                    .and_then(|sf| self.try_delta(&c.id, &c.data, &sf, false));
                let lost = trial.map_or(0, |(_, d)| {
                    let size = (d.len() + 20) as f64;
                    if size <= whole.1.len() as f64 * self.cfg.similarity.threshold {
                        whole.1.len() as u64 - (d.len() as u64 + 20)
                    } else {
                        0
                    }
                });
                let nanos = t.elapsed().as_nanos() as u64;
                st.estimated_saved_nanos
                    .fetch_add(nanos * SKIP_TRIAL_EVERY, Ordering::Relaxed);
                st.estimated_lost_bytes
                    .fetch_add(lost * SKIP_TRIAL_EVERY, Ordering::Relaxed);
            }
            return plain(whole, None);
        }
        let Some(sf) = super_features(&c.data, &self.cfg.similarity.features) else {
            return plain(whole, None);
        };
        if let Some((base, d)) = self.try_delta(&c.id, &c.data, &sf, true) {
            let record = delta_record(&base, &d);
            if record.len() as f64 <= whole.1.len() as f64 * self.cfg.similarity.threshold {
                failpoint("delta-encoded");
                return EncodedChunk {
                    id: c.id,
                    raw_len,
                    stored: Some((ChunkEncoding::Delta, record)),
                    delta: Some((base, whole)),
                    features: Some(sf),
                };
            }
        }
        // Stored whole: a future base. Remember it until it is indexed.
        if self.pending.len() >= PENDING_FEATURES {
            self.pending.clear();
        }
        for (i, f) in sf.iter().enumerate() {
            self.pending.insert((i, *f), c.id);
        }
        self.bases.remember(c.id, &c.data);
        plain(whole, Some(sf))
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
    /// Chunks in the open container: whether each is stored whole.
    in_open: HashMap<ChunkId, bool>,
    /// Deltas and features of the open container, committed with it.
    open_bases: Vec<(ChunkId, ChunkId)>,
    open_features: Vec<(ChunkId, Vec<u64>)>,
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
    /// Whether `base` is stored whole in the open container or the index (invariant 5).
    fn base_available(&self, base: &ChunkId) -> io::Result<bool> {
        Ok(match self.in_open.get(base) {
            Some(whole) => *whole,
            None => self
                .catalog
                .chunk(base)?
                .is_some_and(|l| l.encoding.is_whole()),
        })
    }

    fn append(&mut self, c: EncodedChunk) -> io::Result<()> {
        let Some((mut enc, mut data)) = c.stored else {
            return Ok(());
        };
        if self.in_open.contains_key(&c.id) || self.catalog.chunk(&c.id)?.is_some() {
            self.stats.duplicate_chunks.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let mut base = None;
        if let Some((b, whole)) = c.delta {
            if self.base_available(&b)? {
                self.stats.chunks_delta.fetch_add(1, Ordering::Relaxed);
                self.stats.delta_saved_bytes.fetch_add(
                    (whole.1.len() as u64).saturating_sub(data.len() as u64),
                    Ordering::Relaxed,
                );
                base = Some(b);
            } else {
                self.stats.delta_fallbacks.fetch_add(1, Ordering::Relaxed);
                (enc, data) = whole;
            }
        }
        if base.is_none() {
            self.stats.chunks_whole.fetch_add(1, Ordering::Relaxed);
        }
        if self.open.is_none() {
            let id = self.catalog.allocate_container()?;
            self.open = Some(ContainerWriter::create(&self.cfg.containers, id)?);
        }
        let w = self.open.as_mut().expect("open container");
        w.append(c.id, enc, c.raw_len, &data)?;
        self.in_open.insert(c.id, base.is_none());
        match base {
            Some(b) => self.open_bases.push((c.id, b)),
            None => {
                if let Some(f) = c.features {
                    self.open_features.push((c.id, f));
                }
            }
        }
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
            let sealed = SealedContainer {
                id,
                entries,
                bases: std::mem::take(&mut self.open_bases),
                features: std::mem::take(&mut self.open_features),
            };
            self.catalog.commit_container(&sealed)?;
            failpoint("container-committed");
            self.stats.containers_sealed.fetch_add(1, Ordering::Relaxed);
        }
        self.clear_open();
        Ok(())
    }

    fn clear_open(&mut self) {
        self.in_open.clear();
        self.open_bases.clear();
        self.open_features.clear();
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
                        self.clear_open();
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
                        self.clear_open();
                        Err(e)
                    }
                    (None, Ok(r)) => self
                        .seal()
                        .map(|_| r)
                        .map_err(|e| format!("sealing container: {e}")),
                };
                self.next.send(Batch {
                    queued: None,
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
        // The pushed bytes, verified redundant now, stay hot when the budget allows.
        let kept = match &self.cfg.hot {
            Some(hot) => hot.adopt(&job.digest, &job.path).unwrap_or_else(|e| {
                tracing::warn!(digest = %job.digest, error = %e, "could not keep a layer hot");
                false
            }),
            None => false,
        };
        if !kept {
            if let Err(e) = std::fs::remove_file(&job.path) {
                tracing::warn!(path = %job.path.display(), error = %e, "could not remove raw blob");
            }
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
            in_open: HashMap::new(),
            open_bases: Vec::new(),
            open_features: Vec::new(),
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
            coder: DeltaCoder::new(c.zstd_level),
            reader: ChunkReader::new(cat.clone(), c.containers.clone()),
            bases: ReadSession::new(SIMILARITY_CACHE_BYTES),
            pending: HashMap::new(),
            skipped_seen: [0; 3],
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
    pub async fn dedup(&self, digest: Digest, path: PathBuf, policy: LayerPolicy) -> Outcome {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let msg = BlobCommitted {
            digest,
            path,
            policy,
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
    pub policy: LayerPolicy,
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
            policy: b.policy,
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
