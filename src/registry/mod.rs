//! The registry service: the rules of the distribution spec over the metadata store and the
//! blob store. HTTP handlers call these methods and nothing below them.
//!
//! Blocking work (LMDB write transactions, which fsync on commit, and file I/O) runs on the
//! blocking thread pool, never on the async reactor.

pub(crate) mod dedup;
mod durability;
pub(crate) use durability::{blob_key, missing_blobs};
pub use durability::{FollowStats, FOLLOW_INTERVAL};
pub mod gc;
pub mod manifest;
mod restore;
pub(crate) mod retention;
mod upload;

use std::sync::Arc;
use stowage_actors::storage::containers::Containers;

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};
use serde::Serialize;

use stowage_actors::pipeline::{Pipeline, PipelineConfig};
use stowage_actors::restore::{Restore, RestoreStats};

use crate::config::Config;
use crate::error::{RegistryError, Result};
use crate::meta::{BlobState, Descriptor, Meta, MetaCounts};
use crate::names::{Digest, Reference, RepoName, Tag};
use crate::store::LocalStore;

pub(crate) struct Inner {
    pub(crate) cfg: Config,
    pub(crate) meta: Arc<Meta>,
    pub(crate) store: LocalStore,
    /// Sealed containers: the data directory's `containers/`, or a bucket it caches.
    pub(crate) containers: Arc<Containers>,
    pub(crate) sessions: upload::Sessions,
    pub(crate) pipeline: Option<Pipeline>,
    pub(crate) restore: Option<actix::Addr<Restore>>,
    pub(crate) restore_stats: Arc<RestoreStats>,
    pub(crate) layer_cache: Arc<stowage_actors::cache::LayerCache>,
    /// Restores under way, shared by concurrent pulls (`restore`).
    pub(crate) flights: Arc<stowage_actors::flight::Flights>,
    /// Raw copies being restored for `raw` repositories, at most two at a time (each holds a
    /// restore's chunk cache and re-encoder).
    pub(crate) raw_copies: tokio::sync::Semaphore,
    pub(crate) policy_stats:
        std::sync::Mutex<std::collections::BTreeMap<(String, &'static str), dedup::PolicyCount>>,
    /// One garbage collection pass at a time.
    pub(crate) gc_pass: tokio::sync::Mutex<()>,
    pub(crate) gc_stats: gc::GcStats,
    /// Held (shared) by every layer in the deduplication pipeline, from hand-off to outcome;
    /// garbage collection takes it exclusively to remove chunks and rewrite containers.
    pub(crate) dedup_gate: Arc<tokio::sync::RwLock<()>>,
    /// Taken by an upload's commit into `staging/` and by garbage collection's removals there.
    pub(crate) staging_lock: std::sync::Mutex<()>,
    pub(crate) touched: gc::Touched,
    /// A replica's progress following the writer.
    pub(crate) follow: durability::FollowStats,
    /// Pulls by tag not yet written (see `retention`).
    pub(crate) pulls: std::sync::Mutex<std::collections::HashMap<(RepoName, Tag), u64>>,
}

/// The registry service. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

/// Run blocking work off the reactor.
async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RegistryError::Internal(format!("blocking task failed: {e}")))?
}

/// A blob's bytes (or a range of them) ready to stream to a client.
pub struct BlobContent {
    /// The number of bytes `body` yields.
    pub len: u64,
    pub body: BoxStream<'static, std::io::Result<Bytes>>,
}

/// A manifest as stored.
pub struct ManifestContent {
    pub digest: Digest,
    pub media_type: String,
    pub body: Bytes,
}

/// What a manifest PUT tells the client.
pub struct PutManifestOutcome {
    pub digest: Digest,
    pub subject: Option<Digest>,
}

/// One page of a listing, and whether more follow.
pub struct Page {
    pub items: Vec<String>,
    pub more: bool,
}

/// `GET /_stats`. The field names are a public interface: operators' scripts read them.
#[derive(Serialize)]
pub struct Stats {
    pub repositories: u64,
    pub manifests: u64,
    pub tags: u64,
    pub blobs: u64,
    pub uploads: u64,
    pub bytes: ByteStats,
    pub layers: LayerStats,
    pub chunks: ChunkStats,
    /// `bytes.logical / bytes.stored`.
    pub dedup_ratio: f64,
    pub restore: RestoreCounts,
    /// Near-duplicate detection since start-up (absent without a pipeline).
    pub similarity: Option<SimilarityStats>,
    /// What each repository policy did since start-up.
    pub policies: Vec<PolicyStats>,
    /// Garbage collection since start-up.
    pub gc: GcSection,
    /// The file system holding the root.
    pub disk: DiskStats,
}

#[derive(Serialize)]
pub struct GcSection {
    /// Passes completed (not dry runs) and failed.
    pub passes: u64,
    pub failures: u64,
    pub running: bool,
    /// Background interval (0: off) and grace period, in seconds.
    pub interval_seconds: u64,
    pub delay_seconds: u64,
    /// What the passes reclaimed, by kind, and retention deletions by policy.
    pub reclaimed: gc::GcTotals,
    /// The last pass's report (a dry run's too).
    pub last: Option<gc::GcReport>,
}

#[derive(Serialize)]
pub struct DiskStats {
    pub free_bytes: u64,
    pub total_bytes: u64,
    /// Less than [`LOW_SPACE_FRACTION`] of the file system is free.
    pub low_space: bool,
}

/// Below this fraction of free space, `/_stats` `disk.low_space` and its metric warn.
pub const LOW_SPACE_FRACTION: f64 = 0.05;

/// Whether `free` of `total` bytes is low (see [`LOW_SPACE_FRACTION`]).
pub fn low_space(free: u64, total: u64) -> bool {
    (free as f64) < LOW_SPACE_FRACTION * total as f64
}

#[derive(Serialize)]
pub struct SimilarityStats {
    /// New chunks stored whole / as deltas.
    pub chunks_whole: u64,
    pub chunks_delta: u64,
    /// Of the deltas, zstd frames kept as deltas of their plaintext (`--frame-delta-min-saving`).
    pub frame_deltas: u64,
    /// Bytes the deltas saved over storing their chunks whole.
    pub delta_saved_bytes: u64,
    /// Deltas stored whole because their base did not make it into a container.
    pub delta_fallbacks: u64,
    pub lookups: u64,
    pub hits: u64,
    /// `hits / lookups`.
    pub hit_rate: f64,
    /// New chunk bytes through the stage and its busy time.
    pub bytes: u64,
    pub seconds: f64,
    /// Keys in the in-memory feature index, and how many it may hold.
    pub index_entries: usize,
    pub index_capacity: usize,
    /// What the selective policies skipped, by reason, with estimates of what that saved
    /// (time) and cost (bytes deltas would have saved), from a sample of the skipped chunks.
    pub skipped: std::collections::BTreeMap<&'static str, SkipCounts>,
}

#[derive(Serialize)]
pub struct SkipCounts {
    pub chunks: u64,
    pub bytes: u64,
    pub estimated_saved_seconds: f64,
    pub estimated_lost_bytes: u64,
}

#[derive(Serialize)]
pub struct PolicyStats {
    /// The policy's repository pattern.
    pub policy: String,
    /// `raw`, `no_similarity` or `deferred`.
    pub effect: &'static str,
    pub layers: u64,
    pub bytes: u64,
}

/// Pulls served from deduplicated layers since start-up.
#[derive(Serialize)]
pub struct RestoreCounts {
    pub layers: u64,
    pub bytes: u64,
    /// Restores whose bytes did not match the digest (the response was aborted).
    pub digest_mismatches: u64,
    pub failures: u64,
    /// Pulls served from the cache of restored layers.
    pub cache_hits: u64,
    /// Bytes in the cache of restored layers (part of `bytes.stored`).
    pub cache_bytes: u64,
    /// The hot tier's budget now (it follows the store when set as a share of it).
    pub hot_budget: u64,
    /// Restores started (whole layers, spooled), pulls that joined one already under way,
    /// restores started by a manifest GET, and restores stopped because nobody read them.
    pub started: u64,
    pub joined: u64,
    pub announced: u64,
    pub abandoned: u64,
    /// Times a restore ahead of its readers yielded its thread to one waiting.
    pub paused: u64,
    /// Ranges restored from a block boundary before them rather than from the layer's start,
    /// and the uncompressed bytes they skipped.
    pub resumed: u64,
    pub resumed_skipped_bytes: u64,
    /// Busy time by stage, in seconds (read, decode, wait, encode, hash, send).
    pub stage_seconds: std::collections::BTreeMap<&'static str, f64>,
    /// Long zstd frames planned in segments that pulls re-encoded in segments, and whole
    /// because the `--zstd-segment-cores` threads were busy; the pulls' segment threads
    /// running now (verification and fsck always re-encode the segments, outside the budget).
    pub zstd_frames_segmented: u64,
    pub zstd_frames_whole: u64,
    pub zstd_segment_threads: u64,
}

#[derive(Serialize)]
pub struct ChunkStats {
    /// Chunk references over all recipes.
    pub total: u64,
    /// Distinct chunks stored.
    pub unique: u64,
    /// Bytes of stored (compressed) chunk data.
    pub stored_bytes: u64,
    /// Distinct chunks stored as deltas against a base.
    pub delta: u64,
    /// Distinct chunks serving as the base of at least one delta.
    pub bases: u64,
}

#[derive(Serialize)]
pub struct ByteStats {
    /// Sum of the sizes of distinct blobs, as pushed.
    pub logical: u64,
    /// Bytes the store occupies on disk, metadata included.
    pub stored: u64,
    /// Of `stored`: exact copies of layers in the hot tier.
    pub hot: u64,
    /// Of `stored`: spool files of restores under way (temporary).
    pub spool: u64,
}

#[derive(Serialize)]
pub struct LayerStats {
    pub pending: u64,
    pub deduplicated: u64,
    pub raw: u64,
    /// Raw blobs by reason.
    pub raw_reasons: std::collections::BTreeMap<String, u64>,
    /// Deduplicated blobs by the encoding they are re-created with.
    pub encodings: std::collections::BTreeMap<String, u64>,
}

/// Where sealed containers live: the data directory's `containers/`, another directory's, or a
/// bucket the data directory's `containers/` caches.
pub(crate) fn open_containers(
    root: &std::path::Path,
    storage: &crate::config::StorageConfig,
) -> Result<Containers> {
    use stowage_actors::storage::{blocking::BlockingBucket, Bucket, Location};
    let dir = root.join("containers");
    Ok(match &storage.location {
        None => {
            std::fs::create_dir_all(&dir)?;
            Containers::local(&dir)
        }
        Some(Location::Local(other)) => {
            let dir = other.join("containers");
            std::fs::create_dir_all(&dir)?;
            Containers::local(&dir)
        }
        Some(loc @ Location::S3 { .. }) => {
            let bucket = Bucket::open(loc, &storage.s3)
                .map_err(|e| RegistryError::Internal(format!("opening the bucket: {e}")))?;
            let bucket = Arc::new(BlockingBucket::new(Arc::new(bucket))?);
            Containers::with_bucket(&dir, bucket, storage.cache_bytes)?
        }
    })
}

/// The metadata store of `root`: with the containers in a bucket, the index of the metadata
/// journaled there (rebuilt from the bucket when `root` has none, brought up to date with it
/// otherwise); else the store itself.
pub(crate) fn open_meta(
    root: &std::path::Path,
    map_size: usize,
    containers: &Containers,
    writer: bool,
) -> Result<Meta> {
    let dir = root.join("meta");
    let Some(bucket) = containers.blocking() else {
        return Meta::open(&dir, map_size);
    };
    let progress = |p: crate::meta::checkpoint::Progress| match p {
        crate::meta::checkpoint::Progress::Checkpoint { seq, bytes } => tracing::info!(
            seq,
            mb = bytes as f64 / 1e6,
            "local index made from the bucket's metadata checkpoint"
        ),
        crate::meta::checkpoint::Progress::Replayed { done, of } => {
            tracing::info!(done, of, "metadata journal entries applied")
        }
    };
    let (meta, rec) = Meta::open_journaled(&dir, map_size, bucket.clone(), writer, &progress)?;
    tracing::info!(
        seq = rec.seq,
        replayed = rec.replayed,
        from_checkpoint = ?rec.checkpoint,
        seconds = rec.seconds,
        "local index up to date with the bucket"
    );
    if rec.bootstrap {
        // A store moved onto a bucket: its metadata goes there before anything is served.
        let (seq, bytes) = meta.checkpoint()?.expect("a journal");
        tracing::info!(seq, bytes, "first metadata checkpoint written");
    }
    Ok(meta)
}

/// Largest page a listing returns when the client gives no `n`.
pub const DEFAULT_PAGE: usize = 1000;

impl Registry {
    /// Open the store. With `actors`, start the deduplication pipeline and the restore actor
    /// (this must run inside an actix `System`); without, blobs stay as pushed (offline tools).
    pub fn open(cfg: Config, actors: bool) -> Result<Registry> {
        std::fs::create_dir_all(&cfg.root)?;
        let containers = Arc::new(open_containers(&cfg.root, &cfg.storage)?);
        let replica = cfg.storage.replica;
        let meta = Arc::new(open_meta(
            &cfg.root,
            cfg.meta_map_size,
            &containers,
            !replica,
        )?);
        if actors && !replica && cfg.similarity.enabled {
            meta.load_feature_index(cfg.similarity_index_entries)?;
        }
        let store = LocalStore::open(&cfg.root)?;
        let catalog: Arc<dyn stowage_actors::pipeline::Catalog> =
            Arc::new(dedup::MetaCatalog(meta.clone()));
        let logical = {
            let t = meta.read()?;
            meta.counts(&t)?.logical_bytes
        };
        let layer_cache = stowage_actors::cache::LayerCache::open(
            cfg.root.join("cache"),
            cfg.restore_cache_bytes.resolve(logical),
        )?;
        let flights = stowage_actors::flight::Flights::open(cfg.root.join("cache").join("spool"))?;
        let (pipeline, restore, restore_stats) = if actors {
            // A replica stores nothing: no pipeline.
            let p = (!replica)
                .then(|| {
                    Pipeline::start(
                        catalog.clone(),
                        PipelineConfig {
                            containers: containers.clone(),
                            chunk: cfg.chunk,
                            container_target: cfg.container_size,
                            zstd_level: cfg.chunk_zstd_level,
                            similarity: cfg.similarity.clone(),
                            hot: Some(layer_cache.clone()),
                            zstd_frames: cfg.zstd_frames,
                            zstd_segment_cores: cfg.zstd_segment_cores,
                            min_restore_rate: cfg.min_restore_rate,
                        },
                    )
                })
                .transpose()?;
            // Segment threads beside the restore threads, across all pulls.
            stowage_actors::engine::zstd_frames::SEGMENT_THREADS
                .set_limit(cfg.zstd_segment_cores.most());
            let (r, rs) = Restore::start(cfg.restore_threads, catalog, containers.clone());
            (p, Some(r), rs)
        } else {
            (None, None, Default::default())
        };
        let reg = Registry {
            inner: Arc::new(Inner {
                layer_cache,
                flights,
                cfg,
                meta,
                store,
                containers,
                sessions: Default::default(),
                pipeline,
                restore,
                restore_stats,
                raw_copies: tokio::sync::Semaphore::new(2),
                policy_stats: Default::default(),
                gc_pass: Default::default(),
                gc_stats: Default::default(),
                dedup_gate: Default::default(),
                staging_lock: Default::default(),
                touched: Default::default(),
                follow: Default::default(),
                pulls: Default::default(),
            }),
        };
        reg.remove_orphan_uploads()?;
        reg.remove_uncommitted_containers()?;
        Ok(reg)
    }

    /// Where sealed containers live.
    pub fn containers(&self) -> &Containers {
        &self.inner.containers
    }

    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// Flush the metadata store (every commit is already durable; this is belt and braces)
    /// and close it when no pipeline stage still holds it.
    pub fn close(self) {
        if let Ok(inner) = Arc::try_unwrap(self.inner) {
            drop(inner.pipeline);
            drop(inner.restore);
            match Arc::try_unwrap(inner.meta) {
                Ok(meta) => meta.close(),
                Err(meta) => meta.sync(),
            }
        }
    }

    // ---- blobs --------------------------------------------------------------------------

    /// Size of a blob linked in `repo`.
    pub fn stat_blob(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        Ok(self.blob_record(repo, digest)?.size)
    }

    fn blob_record(&self, repo: &RepoName, digest: &Digest) -> Result<crate::meta::BlobRecord> {
        // Before the lookup: a collection removing this link either saw the touch or committed
        // before the lookup (which then answers 404, and the client uploads the blob again).
        self.touch_blob(repo, digest);
        let m = &self.inner.meta;
        let t = m.read()?;
        if !m.blob_linked(&t, repo, digest)? {
            return Err(RegistryError::BlobUnknown(digest.clone()));
        }
        m.blob(&t, digest)?
            .ok_or_else(|| RegistryError::BlobUnknown(digest.clone()))
    }

    /// A blob linked in `repo`, whole or the byte range `[start, start+len)`.
    pub async fn get_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<(u64, u64)>,
    ) -> Result<BlobContent> {
        let rec = self.blob_record(repo, digest)?;
        let (start, len) = range.unwrap_or((0, rec.size));
        if matches!(rec.state, BlobState::Deduplicated { .. }) {
            let body = self.restore_stream(digest, rec.size, range).await?;
            return Ok(BlobContent { len, body });
        }
        let inner = self.inner.clone();
        let d = digest.clone();
        let opened = blocking(move || match inner.store.open_blob(&d, start) {
            Ok(f) => Ok(Some(f)),
            // Only in the bucket (another node's, or a rebuilt index's): fetched into staging/;
            // or deduplicated (and its raw copy dropped) since we looked.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if inner.fetch_blob(&d)? {
                    Ok(Some(inner.store.open_blob(&d, start)?))
                } else {
                    Ok(None)
                }
            }
            Err(e) => Err(e.into()),
        })
        .await?;
        let Some(file) = opened else {
            if self.is_replica() {
                // Deduplicated on the writer (its whole copy dropped) by an entry not applied
                // here yet: applied now, so the recipe is here to restore from.
                self.follow().await?;
            }
            let body = self.restore_stream(digest, rec.size, range).await?;
            return Ok(BlobContent { len, body });
        };
        let body = file_stream(file, len, digest, range, &self.inner.restore_stats);
        Ok(BlobContent { len, body })
    }

    /// Unlink a blob from `repo` (the bytes stay until garbage collection).
    pub async fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        let inner = self.inner.clone();
        let (repo, d) = (repo.clone(), digest.clone());
        blocking(move || {
            let m = &inner.meta;
            let mut w = m.write()?;
            if !m.unlink_blob(&mut w, &repo, &d)? {
                return Err(RegistryError::BlobUnknown(d));
            }
            w.commit()?;
            Ok(())
        })
        .await
    }

    /// Cross-repository mount: link `digest` into `repo` if `from` links it. Returns false when
    /// `from` does not link it (the caller then opens a normal upload session).
    pub async fn mount_blob(
        &self,
        repo: &RepoName,
        from: &RepoName,
        digest: &Digest,
    ) -> Result<bool> {
        let inner = self.inner.clone();
        let (to, from, d) = (repo.clone(), from.clone(), digest.clone());
        let mounted = blocking(move || {
            let m = &inner.meta;
            let mut w = m.write()?;
            if !m.blob_linked(&w, &from, &d)? {
                return Ok(false);
            }
            let Some(rec) = m.blob(&w, &d)? else {
                return Ok(false);
            };
            m.link_blob(&mut w, &to, &d, rec.size)?;
            w.commit()?;
            Ok(true)
        })
        .await?;
        if mounted {
            self.after_link(digest, repo).await;
        }
        Ok(mounted)
    }

    // ---- manifests ----------------------------------------------------------------------

    fn resolve(
        &self,
        t: &heed::RoTxn<'_>,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Digest> {
        let m = &self.inner.meta;
        let not_found = || RegistryError::ManifestUnknown(reference.to_string());
        match reference {
            Reference::Tag(tag) => m.tag(t, repo, tag)?.ok_or_else(not_found),
            Reference::Digest(d) => {
                if m.manifest_link(t, repo, d)?.is_some() {
                    Ok(d.clone())
                } else {
                    Err(not_found())
                }
            }
        }
    }

    pub fn get_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<ManifestContent> {
        let m = &self.inner.meta;
        let t = m.read()?;
        let digest = self.resolve(&t, repo, reference)?;
        if let Reference::Tag(tag) = reference {
            self.note_pull(repo, tag);
        }
        let (rec, body) = m
            .manifest(&t, &digest)?
            .ok_or_else(|| RegistryError::ManifestUnknown(reference.to_string()))?;
        Ok(ManifestContent {
            digest,
            media_type: rec.media_type,
            body: Bytes::from(body),
        })
    }

    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<PutManifestOutcome> {
        let parsed = manifest::parse(content_type, &body)?;
        let digest = match reference {
            Reference::Digest(d) => {
                let actual = Digest::of(d.algorithm(), &body);
                if &actual != d {
                    return Err(RegistryError::DigestInvalid(format!(
                        "manifest body has digest {actual}, not {d}"
                    )));
                }
                actual
            }
            Reference::Tag(_) => Digest::sha256_of(&body),
        };
        let desc = Descriptor {
            media_type: parsed.media_type.clone(),
            digest: digest.clone(),
            size: body.len() as u64,
            artifact_type: parsed.artifact_type.clone(),
            annotations: parsed.annotations.clone(),
        };
        let inner = self.inner.clone();
        let (repo, reference) = (repo.clone(), reference.clone());
        let subject = parsed.subject.clone();
        blocking(move || {
            let m = &inner.meta;
            let mut w = m.write()?;
            let wrong_size = |what: &str, d: &Digest, said: u64, is: u64| {
                RegistryError::ManifestInvalid(format!(
                    "the {what} descriptor of {d} says {said} bytes; it has {is}"
                ))
            };
            for (b, &size) in parsed.blobs.iter().zip(&parsed.blob_sizes) {
                // Refreshed: a collection's cutoff is older than any link a new manifest names.
                if !m.refresh_blob_link(&mut w, &repo, b)? {
                    return Err(RegistryError::ManifestBlobUnknown(b.clone()));
                }
                // Clients verify sizes: a manifest that misstates one would fail every pull.
                match m.blob(&w, b)? {
                    Some(rec) if rec.size != size => {
                        return Err(wrong_size("blob", b, size, rec.size))
                    }
                    Some(_) => {}
                    None => return Err(RegistryError::ManifestBlobUnknown(b.clone())),
                }
            }
            for (c, &size) in parsed.children.iter().zip(&parsed.child_sizes) {
                if m.manifest_link(&w, &repo, c)?.is_none() {
                    return Err(RegistryError::ManifestBlobUnknown(c.clone()));
                }
                if let Some((rec, _)) = m.manifest(&w, c)? {
                    if rec.size != size {
                        return Err(wrong_size("manifest", c, size, rec.size));
                    }
                }
            }
            m.put_manifest(&mut w, &repo, &desc, &body, parsed.subject.as_ref())?;
            if let Reference::Tag(tag) = &reference {
                m.set_tag(&mut w, &repo, tag, &desc.digest)?;
            }
            w.commit()?;
            Ok(())
        })
        .await?;
        Ok(PutManifestOutcome { digest, subject })
    }

    /// DELETE by digest unlinks the manifest (and its tags) from the repository; DELETE by tag
    /// removes only the tag.
    pub async fn delete_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
        let inner = self.inner.clone();
        let (repo, reference) = (repo.clone(), reference.clone());
        blocking(move || {
            let m = &inner.meta;
            let mut w = m.write()?;
            let found = match &reference {
                Reference::Tag(tag) => m.delete_tag(&mut w, &repo, tag)?,
                Reference::Digest(d) => m.unlink_manifest(&mut w, &repo, d)?,
            };
            if !found {
                return Err(RegistryError::ManifestUnknown(reference.to_string()));
            }
            w.commit()?;
            Ok(())
        })
        .await
    }

    pub fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>> {
        let m = &self.inner.meta;
        let t = m.read()?;
        let mut all = m.referrers(&t, repo, subject)?;
        if let Some(at) = artifact_type {
            all.retain(|d| d.artifact_type.as_deref() == Some(at));
        }
        Ok(all)
    }

    // ---- listings -----------------------------------------------------------------------

    pub fn tags(&self, repo: &RepoName, last: Option<&str>, n: Option<usize>) -> Result<Page> {
        let m = &self.inner.meta;
        let t = m.read()?;
        if !m.repo_exists(&t, repo)? {
            return Err(RegistryError::NameUnknown(repo.to_string()));
        }
        let (items, more) = m.list_tags(&t, repo, last, n.unwrap_or(DEFAULT_PAGE))?;
        Ok(Page { items, more })
    }

    /// Repositories after `last`, those `visible` says the caller may see.
    pub fn catalog(
        &self,
        last: Option<&str>,
        n: Option<usize>,
        visible: &dyn Fn(&str) -> bool,
    ) -> Result<Page> {
        let m = &self.inner.meta;
        let t = m.read()?;
        let (items, more) = m.list_repos(&t, last, n.unwrap_or(DEFAULT_PAGE), visible)?;
        Ok(Page { items, more })
    }

    /// The file index (path, size, mode, sha256 of each regular file) of a deduplicated layer.
    /// The HTTP edge scopes `GET /_layers/<digest>/files` (admins, or pull on a repository
    /// linking the layer).
    pub fn layer_files(
        &self,
        digest: &Digest,
        start: usize,
        n: usize,
    ) -> Result<(Vec<stowage_actors::engine::tar::FileEntry>, bool)> {
        let m = &self.inner.meta;
        let t = m.read()?;
        let rec = m
            .blob(&t, digest)?
            .ok_or_else(|| RegistryError::BlobUnknown(digest.clone()))?;
        match m.layer_files_page(&t, digest, start, n)? {
            Some(page) => Ok(page),
            None => Err(RegistryError::NotFound(format!(
                "no file index for {digest}: it is {}",
                match rec.state {
                    BlobState::Staged => "waiting for deduplication".to_string(),
                    BlobState::Raw { reason } => format!("kept raw ({reason})"),
                    BlobState::Deduplicated { .. } => "deduplicated without an index".to_string(),
                }
            ))),
        }
    }

    // ---- statistics ---------------------------------------------------------------------

    pub fn pipeline_stats(&self) -> Option<&stowage_actors::pipeline::StageStats> {
        self.inner.pipeline.as_ref().map(|p| p.stats.as_ref())
    }

    pub async fn stats(&self) -> Result<Stats> {
        let inner = self.inner.clone();
        blocking(move || {
            let t = inner.meta.read()?;
            let counts: MetaCounts = inner.meta.counts(&t)?;
            let cc = inner.meta.chunk_counts(&t)?;
            let mut layers = LayerStats {
                pending: 0,
                deduplicated: 0,
                raw: 0,
                raw_reasons: Default::default(),
                encodings: Default::default(),
            };
            for (_, b) in inner.meta.all_blobs(&t)? {
                match b.state {
                    BlobState::Staged => layers.pending += 1,
                    BlobState::Deduplicated { encoding } => {
                        layers.deduplicated += 1;
                        *layers.encodings.entry(encoding).or_default() += 1;
                    }
                    BlobState::Raw { reason } => {
                        layers.raw += 1;
                        *layers.raw_reasons.entry(reason).or_default() += 1;
                    }
                }
            }
            drop(t);
            // With a bucket, the cached containers are a copy: the committed ones count at
            // their chunk bytes instead (their objects, less headers and indexes).
            let stored = match inner.containers.cache_reading() {
                None => inner.store.disk_usage()?,
                Some(cache) => {
                    let t = inner.meta.read()?;
                    let in_bucket: u64 = inner
                        .meta
                        .all_containers(&t)?
                        .iter()
                        .map(|(_, r)| r.bytes)
                        .sum();
                    (inner.store.disk_usage()? + in_bucket).saturating_sub(cache.bytes)
                }
            };
            let (free, total) = inner.store.disk_space()?;
            let g = &inner.gc_stats;
            let gc = {
                use std::sync::atomic::Ordering::Relaxed;
                GcSection {
                    passes: g.passes.load(Relaxed),
                    failures: g.failures.load(Relaxed),
                    running: g.running.load(Relaxed),
                    interval_seconds: inner.cfg.gc_interval.as_secs(),
                    delay_seconds: inner.cfg.gc_delay.as_secs(),
                    reclaimed: {
                        let mut t = g.totals.lock().expect("gc totals lock").clone();
                        // Every configured policy shows, with zeros until it deletes.
                        for p in &inner.cfg.retention {
                            t.retention.entry(p.repositories.clone()).or_default();
                        }
                        t
                    },
                    last: g.last.lock().expect("gc last lock").clone(),
                }
            };
            Ok(Stats {
                repositories: counts.repositories,
                manifests: counts.manifests,
                tags: counts.tags,
                blobs: counts.blobs,
                uploads: counts.uploads,
                bytes: ByteStats {
                    logical: counts.logical_bytes,
                    stored,
                    hot: inner.layer_cache.bytes(),
                    spool: inner.flights.spool_bytes(),
                },
                layers,
                chunks: ChunkStats {
                    total: cc.refs,
                    unique: cc.unique,
                    stored_bytes: cc.stored_bytes,
                    delta: cc.deltas,
                    bases: cc.bases,
                },
                similarity: inner
                    .pipeline
                    .as_ref()
                    .map(|p| similarity_stats(&p.stats, inner.meta.feature_index_size())),
                policies: inner
                    .policy_stats
                    .lock()
                    .expect("policy stats lock")
                    .iter()
                    .map(|((policy, effect), c)| PolicyStats {
                        policy: policy.clone(),
                        effect,
                        layers: c.layers,
                        bytes: c.bytes,
                    })
                    .collect(),
                gc,
                disk: DiskStats {
                    free_bytes: free,
                    total_bytes: total,
                    low_space: low_space(free, total),
                },
                dedup_ratio: if stored == 0 {
                    0.0
                } else {
                    counts.logical_bytes as f64 / stored as f64
                },
                restore: {
                    use std::sync::atomic::Ordering::Relaxed;
                    let r = &inner.restore_stats;
                    let segments = stowage_actors::engine::zstd_frames::SEGMENT_THREADS.reading();
                    RestoreCounts {
                        layers: r.layers.load(Relaxed),
                        bytes: r.bytes.load(Relaxed),
                        digest_mismatches: r.mismatches.load(Relaxed),
                        failures: r.failures.load(Relaxed),
                        cache_hits: r.cache_hits.load(Relaxed),
                        cache_bytes: inner.layer_cache.bytes(),
                        hot_budget: inner.layer_cache.budget(),
                        started: inner.flights.started.load(Relaxed),
                        joined: inner.flights.joins.load(Relaxed),
                        announced: r.announced.load(Relaxed),
                        abandoned: r.abandoned.load(Relaxed),
                        paused: r.paused.load(Relaxed),
                        resumed: r.resumed.load(Relaxed),
                        resumed_skipped_bytes: r.resumed_skipped_bytes.load(Relaxed),
                        stage_seconds: r.times.seconds().into_iter().collect(),
                        zstd_frames_segmented: segments.segmented,
                        zstd_frames_whole: segments.whole,
                        zstd_segment_threads: segments.in_use,
                    }
                },
            })
        })
        .await
    }
}

fn similarity_stats(
    p: &stowage_actors::pipeline::StageStats,
    (index_entries, index_capacity): (usize, usize),
) -> SimilarityStats {
    use std::sync::atomic::Ordering::Relaxed;
    use stowage_actors::pipeline::SkipReason;
    let (lookups, hits) = (
        p.similarity_lookups.load(Relaxed),
        p.similarity_hits.load(Relaxed),
    );
    SimilarityStats {
        chunks_whole: p.chunks_whole.load(Relaxed),
        chunks_delta: p.chunks_delta.load(Relaxed),
        frame_deltas: p.frame_deltas.load(Relaxed),
        delta_saved_bytes: p.delta_saved_bytes.load(Relaxed),
        delta_fallbacks: p.delta_fallbacks.load(Relaxed),
        lookups,
        hits,
        hit_rate: if lookups == 0 {
            0.0
        } else {
            hits as f64 / lookups as f64
        },
        bytes: p.similarity_bytes.load(Relaxed),
        seconds: p.similarity_nanos.load(Relaxed) as f64 / 1e9,
        index_entries,
        index_capacity,
        skipped: SkipReason::ALL
            .iter()
            .map(|r| {
                let s = &p.skipped[*r as usize];
                (
                    r.label(),
                    SkipCounts {
                        chunks: s.chunks.load(Relaxed),
                        bytes: s.bytes.load(Relaxed),
                        estimated_saved_seconds: s.estimated_saved_nanos.load(Relaxed) as f64 / 1e9,
                        estimated_lost_bytes: s.estimated_lost_bytes.load(Relaxed),
                    },
                )
            })
            .collect(),
    }
}

/// Stream `len` bytes of an open file (positioned at the range's start). A whole blob is hashed
/// as it is sent: bytes that no longer match their digest (disk corruption) end the response
/// with an error instead of its last bytes (invariant 1).
fn file_stream(
    file: std::fs::File,
    len: u64,
    digest: &Digest,
    range: Option<(u64, u64)>,
    stats: &Arc<RestoreStats>,
) -> BoxStream<'static, std::io::Result<Bytes>> {
    let reader = tokio::io::AsyncReadExt::take(tokio::fs::File::from_std(file), len);
    let body = tokio_util::io::ReaderStream::with_capacity(reader, 256 * 1024);
    match range {
        Some(_) => body.boxed(),
        None => verified(body, digest.clone(), stats.clone()),
    }
}

/// Pass `body` through while hashing it. The last piece is held back until the digest is
/// checked: on a mismatch the stream ends with an error instead, so the client never receives
/// the full Content-Length of wrong bytes (counted and logged).
fn verified(
    body: impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + Unpin + 'static,
    digest: Digest,
    stats: Arc<RestoreStats>,
) -> BoxStream<'static, std::io::Result<Bytes>> {
    struct St<B> {
        body: B,
        hasher: Option<stowage_actors::digest::Hasher>,
        held: Option<Bytes>,
        digest: Digest,
        stats: Arc<RestoreStats>,
    }
    let st = St {
        body,
        hasher: Some(digest.algorithm().hasher()),
        held: None,
        digest,
        stats,
    };
    futures_util::stream::unfold(st, |mut st| async move {
        loop {
            st.hasher.as_ref()?;
            match st.body.next().await {
                Some(Ok(b)) => {
                    if let Some(h) = st.hasher.as_mut() {
                        h.update(&b);
                    }
                    if let Some(prev) = st.held.replace(b) {
                        return Some((Ok(prev), st));
                    }
                }
                Some(Err(e)) => {
                    st.hasher = None;
                    return Some((Err(e), st));
                }
                None => {
                    let got = st.hasher.take()?.finish();
                    if got == st.digest {
                        return st.held.take().map(|b| (Ok(b), st));
                    }
                    st.stats
                        .mismatches
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::error!(digest = %st.digest, stored = %got, "stored blob does not match its digest; response aborted");
                    let e = std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "stored bytes do not match the digest",
                    );
                    return Some((Err(e), st));
                }
            }
        }
    })
    .boxed()
}

/// Parse a tag from a listing cursor without failing on junk (an unknown `last` simply starts
/// the listing after it, as the spec allows).
pub fn cursor(last: Option<&str>) -> Option<&str> {
    last.filter(|l| !l.is_empty())
}
