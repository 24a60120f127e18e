//! The deduplication pipeline as actix actors:
//!
//! ```text
//! BlobCommitted ──> Upload ──(Dedup)──> Extract ──(Segments)──> Chunk ──(Chunks)──> Similarity
//!   ──(Encoded)──> Pack ──(Finished)──> Commit (restore + verify, recipe commit, raw blob dropped)
//! ```
//!
//! Each actor has a file of its own, with its messages, bounds and failure behaviour at the
//! top: [`upload`](crate::upload), [`extract`](crate::extract), [`chunk`](crate::chunk),
//! [`similarity`](crate::similarity), [`pack`](crate::pack), [`commit`](crate::commit). The
//! metadata they need is the [`Catalog`] (in [`catalog`](crate::catalog)). This module holds
//! what they share (the [`Batch`] they exchange, the credits that bound each edge, the
//! settings, the outcome and the counters) and [`Pipeline`], which wires them.
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

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;

use crate::digest::Digest;
use crate::engine::chunk::ChunkParams;
use crate::engine::features::FeatureParams;
use crate::engine::frame_delta;
use crate::engine::recipe::{NewChunk, Recipe};
use crate::engine::recompress::Encoding;
use crate::engine::tar::FileEntry;
use crate::engine::zstd_frames::ZstdEncoder;
pub use crate::engine::zstd_frames::{ZstdFrames, STORE_FRAMES_BELOW};
use crate::extract::Segment;
use crate::similarity::EncodedChunk;

// The items that moved to their own modules, still reachable under their old paths.
pub use crate::catalog::{Catalog, SealedContainer};
pub use crate::chunk::Chunk;
pub use crate::commit::Commit;
pub use crate::extract::{Dedup, Extract};
pub use crate::pack::Pack;
pub use crate::similarity::{Similarity, SIMILARITY_CACHE_BYTES};
pub use crate::upload::{BlobCommitted, Upload};

/// Batches in flight on each edge between two stages.
pub const QUEUE_DEPTH: usize = 4;
/// Target size of a batch.
pub const BATCH_BYTES: usize = 1 << 20;

/// Pipeline settings.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// Where sealed containers go (a directory, and a bucket when there is one).
    pub containers: Arc<crate::storage::containers::Containers>,
    pub chunk: ChunkParams,
    pub container_target: u64,
    pub zstd_level: i32,
    pub similarity: SimilarityConfig,
    /// Where a verified layer's pushed bytes go instead of being removed, when they fit.
    pub hot: Option<Arc<crate::cache::LayerCache>>,
    /// Which zstd layers of many frames keep their compressed frames.
    pub zstd_frames: ZstdFrames,
    /// Cores a long klauspost zstd frame's segments are planned for.
    pub zstd_segment_cores: crate::engine::zstd_frames::SegmentCores,
    /// Layers whose encoder re-creates them slower than this (MB/s, its nominal speed) are
    /// kept as pushed; 0: none.
    pub min_restore_rate: f64,
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
    /// Frame deltas (a zstd frame of a layer kept as its frames, stored as a delta of its
    /// plaintext and re-encoded on every read: see [`crate::engine::frame_delta`]): None, off;
    /// else the least a frame delta must save, in bytes per byte of plaintext re-encoded by an
    /// encoder of [`frame_delta::REFERENCE_RATE`] (slower ones must save proportionally more:
    /// [`frame_delta::required_saving`]).
    pub frame_delta_min_saving: Option<f64>,
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
            frame_delta_min_saving: Some(frame_delta::DEFAULT_MIN_SAVING),
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
    /// Of the deltas, frame deltas (see [`crate::engine::frame_delta`]).
    pub frame_deltas: AtomicU64,
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

pub(crate) type Reply = tokio::sync::oneshot::Sender<Outcome>;

pub(crate) struct JobCtx {
    pub(crate) digest: Digest,
    pub(crate) path: PathBuf,
    pub(crate) policy: LayerPolicy,
    pub(crate) reply: std::sync::Mutex<Option<Reply>>,
    /// Set by Extract: encodings that re-created every byte ingest compared as the recipe's
    /// did (see [`LayerDecoder::finish_with_alternatives`]). Commit tries them in turn when
    /// the recipe's does not reproduce the layer.
    ///
    /// [`LayerDecoder::finish_with_alternatives`]: crate::engine::recompress::LayerDecoder::finish_with_alternatives
    pub(crate) alternatives: std::sync::OnceLock<Vec<Encoding>>,
    /// Set by Extract for a layer kept as its compressed frames whose encoder is known: each
    /// file is one frame that encoder wrote, which Similarity may keep as a frame delta.
    pub(crate) frame_encoder: std::sync::OnceLock<ZstdEncoder>,
}

impl JobCtx {
    /// Whether frame deltas are on for this layer under `s`: they are, and so is similarity,
    /// for the registry and the layer's repository.
    pub(crate) fn frame_deltas_on(&self, s: &SimilarityConfig) -> bool {
        s.enabled && s.frame_delta_min_saving.is_some() && self.policy.similarity
    }

    /// The encoder of this layer's frames if they may become frame deltas under `s`: a layer
    /// kept as its frames, of a known encoder, with frame deltas on for it.
    pub(crate) fn frame_delta_encoder(&self, s: &SimilarityConfig) -> Option<ZstdEncoder> {
        let on = self.frame_deltas_on(s);
        on.then(|| self.frame_encoder.get().copied()).flatten()
    }

    pub(crate) fn finish(&self, o: Outcome) {
        if let Some(tx) = self.reply.lock().expect("reply lock").take() {
            let _ = tx.send(o);
        }
    }
}

/// Test hook, unset in normal operation. When the environment variable `STOWAGE_FAILPOINT`
/// names this point (`NAME`), the process aborts here, as `kill -9` would at that instant: the
/// crash tests stop the pipeline and garbage collection deterministically between their
/// durable steps. `NAME:pause=MS` instead pauses this thread for MS milliseconds here and goes
/// on, as a step slowed by a loaded machine would (tests of what a slow step must not change).
pub fn failpoint(name: &str) {
    static POINT: std::sync::OnceLock<Option<(String, Option<u64>)>> = std::sync::OnceLock::new();
    let point = POINT.get_or_init(|| {
        let v = std::env::var("STOWAGE_FAILPOINT").ok()?;
        Some(match v.split_once(":pause=") {
            Some((n, ms)) => (
                n.to_string(),
                Some(ms.parse().expect("STOWAGE_FAILPOINT pause in ms")),
            ),
            None => (v, None),
        })
    });
    match point {
        Some((n, None)) if n == name => {
            tracing::warn!(failpoint = name, "aborting at failpoint");
            std::process::abort();
        }
        Some((n, Some(ms))) if n == name => {
            tracing::warn!(failpoint = name, ms, "pausing at failpoint");
            std::thread::sleep(std::time::Duration::from_millis(*ms));
        }
        _ => {}
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
pub(crate) struct Bounded {
    next: Recipient<Batch>,
    inflight: VecDeque<Pending>,
    stats: Arc<StageStats>,
    edge: usize,
}

impl Bounded {
    pub(crate) fn new(next: Recipient<Batch>, stats: Arc<StageStats>, edge: usize) -> Self {
        Bounded {
            next,
            inflight: VecDeque::new(),
            stats,
            edge,
        }
    }

    pub(crate) fn send(&mut self, mut b: Batch) {
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
pub(crate) struct Queued {
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
    pub(crate) job: Arc<JobCtx>,
    pub(crate) body: Body,
    /// Set by the sender: keeps the batch counted while queued or handled.
    pub(crate) queued: Option<Queued>,
}

impl Message for Batch {
    type Result = ();
}

pub(crate) enum Body {
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
        std::fs::create_dir_all(cfg.containers.dir())?;
        let stats = Arc::new(StageStats::default());
        let (c, s) = (cfg.clone(), stats.clone());
        let cat = catalog.clone();
        let commit = SyncArbiter::start(1, move || Commit::new(cat.clone(), c.clone(), s.clone()));
        let (c, s) = (cfg.clone(), stats.clone());
        let cat = catalog.clone();
        let pack = SyncArbiter::start(1, move || {
            let next = Bounded::new(commit.clone().recipient(), s.clone(), 3);
            Pack::new(next, cat.clone(), c.clone(), s.clone())
        });
        let (c, s) = (cfg.clone(), stats.clone());
        let cat = catalog.clone();
        let similarity = SyncArbiter::start(1, move || {
            let next = Bounded::new(pack.clone().recipient(), s.clone(), 2);
            Similarity::new(next, cat.clone(), c.clone(), s.clone())
        });
        let (c, s) = (cfg.clone(), stats.clone());
        let chunk = SyncArbiter::start(1, move || {
            let next = Bounded::new(similarity.clone().recipient(), s.clone(), 1);
            Chunk::new(next, c.clone(), s.clone())
        });
        let (c, s) = (cfg.clone(), stats.clone());
        let extract = SyncArbiter::start(1, move || {
            let next = Bounded::new(chunk.clone().recipient(), s.clone(), 0);
            Extract::new(next, c.clone(), s.clone())
        });
        let upload = Upload::new(extract, stats.clone()).start();
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
