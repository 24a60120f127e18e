//! Online garbage collection: one pass walks tags → manifests → blobs → recipes → chunks →
//! delta bases → containers and removes what nothing reachable needs and the grace period
//! (`gc_delay`) no longer protects (DESIGN.md, *Lifecycle*).
//!
//! A pass, in order:
//! 1. **Retention** (see [`super::retention`]) deletes the tags and manifests the policies do
//!    not keep.
//! 2. **Links.** A repository's blob link that none of its manifests references, linked (or
//!    linked again) before the grace period and not named to a client by a HEAD or GET within
//!    it, is removed; manifests no repository links and repositories holding nothing go too.
//!    A manifest PUT refreshes the links of the blobs it names, in its transaction, so a link
//!    a new manifest needs is always younger than the pass's cutoff.
//! 3. **Blobs** no repository links, older than the grace period, are removed in batches: the
//!    record, and with a recipe, the recipe, file index and one reference per chunk use (the
//!    layers patched against it are stored again first). Staged files and cached copies are
//!    removed after each batch's commit, under the staging lock an upload's commit also takes,
//!    so an upload of the same digest never has its new file removed.
//! 4. **Chunks and containers**, with the deduplication pipeline held at its gate (layers in
//!    flight finish first; new ones wait; pushes do not): chunks with no references and no
//!    dependents go (a removed delta's base loses a dependent, and may go in turn); containers
//!    no chunk lives in are deleted, and those whose live fraction is below `gc_compact_below`
//!    are rewritten with their live chunks, the index repointed in one transaction before the
//!    old file is removed. Restores racing with it look a chunk up again when its container
//!    file is gone. Container files no record names (a crash) go too.
//!
//! Every step is durable before the next; `STOWAGE_FAILPOINT` can stop the process between
//! them (`gc-links-committed`, `gc-blobs-committed`, `gc-chunks-committed`,
//! `gc-compacted-before-commit`, `gc-compact-committed`) and the next pass finishes the work.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stowage_actors::storage::containers::Containers;

use serde::Serialize;

use stowage_actors::engine::chunk::ChunkId;
use stowage_actors::engine::container::{self, container_path, read_stored, split_delta};
use stowage_actors::pipeline::failpoint;

use super::retention::RetentionReport;
use super::{manifest, Inner, Registry};
use crate::error::{RegistryError, Result};
use crate::meta::{now, DeadChunk, Meta};
use crate::names::{Digest, RepoName};

/// Blobs handed to one blocking task (one staging-lock hold).
const BLOB_BATCH: usize = 64;
/// Chunk records one write transaction changes, about: each is a random page of the chunk
/// index, copied (4 KiB) until the commit, so this bounds a pass's memory.
const TXN_CHUNKS: u64 = 4096;
/// How long a pass waits for the pipeline's layers in flight before it leaves chunks and
/// containers for the next pass.
const GATE_WAIT: Duration = Duration::from_secs(300);

/// What a pass may do.
#[derive(Clone, Copy, Debug)]
pub struct GcOptions {
    /// Report what would go, change nothing.
    pub dry_run: bool,
    /// The grace period.
    pub delay: Duration,
}

/// What one pass did (or, in a dry run, would do). Field names are a public interface.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// Unix seconds the pass started.
    pub started: u64,
    pub seconds: f64,
    pub grace_seconds: u64,
    pub retention: RetentionReport,
    pub links_removed: u64,
    pub manifests_removed: u64,
    pub repositories_removed: u64,
    pub blobs_removed: u64,
    /// Sizes of the removed blobs, as pushed.
    pub blob_bytes_removed: u64,
    /// Removed blobs that were deduplicated (their recipes and file indexes went with them).
    pub recipes_removed: u64,
    /// Bytes of staged (raw) blob files and cached layer copies removed.
    pub raw_bytes_freed: u64,
    pub chunks_removed: u64,
    /// Stored (compressed) bytes of the removed chunks.
    pub chunk_bytes_removed: u64,
    pub containers_removed: u64,
    pub containers_compacted: u64,
    /// Container file bytes given back (removed files, and compaction's savings).
    pub container_bytes_freed: u64,
    /// Stray files (containers without a record, staged blobs without a record) removed.
    pub orphan_files_removed: u64,
    /// `done`, or why chunks and containers were left for the next pass.
    pub chunk_phase: String,
    pub stored_bytes_before: u64,
    pub stored_bytes_after: u64,
}

/// Totals since start-up, for `/_stats` and `/metrics`.
#[derive(Default)]
pub struct GcStats {
    pub passes: AtomicU64,
    pub failures: AtomicU64,
    pub running: AtomicBool,
    pub last: Mutex<Option<GcReport>>,
    /// Sums over passes (not dry runs), by kind.
    pub totals: Mutex<GcTotals>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct GcTotals {
    pub seconds: f64,
    pub links: u64,
    pub manifests: u64,
    pub blobs: u64,
    pub blob_bytes: u64,
    pub recipes: u64,
    pub raw_bytes: u64,
    pub chunks: u64,
    pub chunk_bytes: u64,
    pub containers_removed: u64,
    pub containers_compacted: u64,
    pub container_bytes: u64,
    pub orphan_files: u64,
    /// Retention deletions by policy.
    pub retention: BTreeMap<String, super::retention::PolicyDeletions>,
}

impl GcTotals {
    fn add(&mut self, r: &GcReport) {
        self.seconds += r.seconds;
        self.links += r.links_removed;
        self.manifests += r.manifests_removed;
        self.blobs += r.blobs_removed;
        self.blob_bytes += r.blob_bytes_removed;
        self.recipes += r.recipes_removed;
        self.raw_bytes += r.raw_bytes_freed;
        self.chunks += r.chunks_removed;
        self.chunk_bytes += r.chunk_bytes_removed;
        self.containers_removed += r.containers_removed;
        self.containers_compacted += r.containers_compacted;
        self.container_bytes += r.container_bytes_freed;
        self.orphan_files += r.orphan_files_removed;
        for (p, d) in &r.retention.by_policy {
            let e = self.retention.entry(p.clone()).or_default();
            e.tags += d.tags;
            e.manifests += d.manifests;
        }
    }
}

/// Blob links named to clients (HEAD, GET) recently: kept through the grace period.
#[derive(Default)]
pub(crate) struct Touched(Mutex<HashMap<(RepoName, Digest), u64>>);

/// Entries past which the touched map drops those older than the grace period on insert
/// (passes prune it too), so it stays bounded with collection off.
const TOUCHED_BOUND: usize = 1 << 16;

impl Touched {
    pub(crate) fn touch(&self, repo: &RepoName, d: &Digest, grace: Duration) {
        let mut m = self.0.lock().expect("touched lock");
        let now = now();
        if m.len() >= TOUCHED_BOUND {
            let floor = now.saturating_sub(grace.as_secs());
            m.retain(|_, at| *at >= floor);
        }
        m.insert((repo.clone(), d.clone()), now);
    }
}

/// Progress of an offline pass (the command line's progress bar).
pub type Progress<'a> = &'a (dyn Fn(&str, u64, u64) + Sync);

impl Registry {
    /// Record that a client was told `repo` holds `d`.
    pub(crate) fn touch_blob(&self, repo: &RepoName, d: &Digest) {
        self.inner.touched.touch(repo, d, self.inner.cfg.gc_delay);
    }

    /// Run one pass now (waiting for a pass in progress to end first).
    pub async fn gc(&self, opts: GcOptions) -> Result<GcReport> {
        self.gc_with_progress(opts, &|_, _, _| {}).await
    }

    pub async fn gc_with_progress(
        &self,
        opts: GcOptions,
        progress: Progress<'_>,
    ) -> Result<GcReport> {
        let _one = self.inner.gc_pass.lock().await;
        let stats = &self.inner.gc_stats;
        stats.running.store(true, Relaxed);
        let res = self.gc_pass(opts, progress).await;
        stats.running.store(false, Relaxed);
        match &res {
            Ok(r) => {
                if !r.dry_run {
                    stats.passes.fetch_add(1, Relaxed);
                    stats.totals.lock().expect("gc totals lock").add(r);
                    // The store shrank: so does a hot tier sized as a share of it.
                    if let Err(e) = self.refresh_hot_budget().await {
                        tracing::warn!(error = %e, "could not size the hot tier");
                    }
                    // Space given back: layers that could not be packed for want of it are
                    // tried again.
                    let low = self
                        .inner
                        .store
                        .disk_space()
                        .map_or(true, |(free, total)| super::low_space(free, total));
                    if !low {
                        if let Err(e) = self.retry_transient_raw().await {
                            tracing::error!(error = %e, "queueing layers kept raw for want of space failed");
                        }
                    }
                }
                *stats.last.lock().expect("gc last lock") = Some(r.clone());
            }
            Err(e) => {
                stats.failures.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "garbage collection failed");
            }
        }
        res
    }

    async fn gc_pass(&self, opts: GcOptions, progress: Progress<'_>) -> Result<GcReport> {
        let started = Instant::now();
        let mut report = GcReport {
            dry_run: opts.dry_run,
            started: now(),
            grace_seconds: opts.delay.as_secs(),
            ..Default::default()
        };
        let inner = self.inner.clone();
        report.stored_bytes_before = background(move || Ok(inner.store.disk_usage()?)).await?;
        progress("retention", 0, 1);
        report.retention = self.apply_retention(opts.dry_run).await?;
        // Everything older than this is past the grace period.
        let cutoff = now().saturating_sub(opts.delay.as_secs());
        let inner = self.inner.clone();
        let planned = std::mem::take(&mut report.retention.planned);
        let swept = background(move || sweep_links(&inner, cutoff, opts.dry_run, &planned)).await?;
        report.links_removed = swept.links;
        report.manifests_removed = swept.manifests;
        report.repositories_removed = swept.repos;
        let doomed = swept.doomed;
        let deps = Arc::new(swept.deps);
        if opts.dry_run {
            let inner = self.inner.clone();
            let listed = doomed.clone();
            let sizes = background(move || {
                let t = inner.meta.read()?;
                let mut n = 0;
                for d in &listed {
                    n += inner.meta.blob(&t, d)?.map_or(0, |b| b.size);
                }
                Ok(n)
            })
            .await?;
            report.blobs_removed = doomed.len() as u64;
            report.blob_bytes_removed = sizes;
            report.chunk_phase = "dry run: chunks and containers not examined".into();
            report.seconds = started.elapsed().as_secs_f64();
            report.stored_bytes_after = report.stored_bytes_before;
            return Ok(report);
        }
        failpoint("gc-links-committed");
        let blobs = {
            let total = doomed.len() as u64;
            progress("blobs", 0, total);
            let mut out = BlobSweep::default();
            let all: Arc<HashSet<String>> =
                Arc::new(doomed.iter().map(|d| d.to_string()).collect());
            for (i, batch) in doomed.chunks(BLOB_BATCH).enumerate() {
                let (inner, deps, all) = (self.inner.clone(), deps.clone(), all.clone());
                let batch = batch.to_vec();
                let r =
                    background(move || sweep_blobs(&inner, &batch, cutoff, &deps, &all)).await?;
                out.add(&r);
                let done = ((i + 1) * BLOB_BATCH).min(doomed.len()) as u64;
                progress("blobs", done, total);
            }
            out
        };
        report.blobs_removed = blobs.blobs;
        report.blob_bytes_removed = blobs.bytes;
        report.recipes_removed = blobs.recipes;
        report.raw_bytes_freed = blobs.raw_bytes;
        // Chunks and containers, with the pipeline quiet.
        let gate = self.inner.dedup_gate.clone();
        match tokio::time::timeout(GATE_WAIT, gate.write_owned()).await {
            Err(_) => {
                report.chunk_phase =
                    "skipped: deduplication kept layers in flight; next pass".into();
            }
            Ok(guard) => {
                let inner = self.inner.clone();
                let compact_below = self.inner.cfg.gc_compact_below;
                let grace = opts.delay;
                progress("chunks", 0, 1);
                let r = background(move || {
                    let _guard = guard;
                    sweep_chunks(&inner, cutoff, grace, compact_below)
                })
                .await?;
                report.chunks_removed = r.chunks;
                report.chunk_bytes_removed = r.chunk_bytes;
                report.containers_removed = r.containers_removed;
                report.containers_compacted = r.containers_compacted;
                report.container_bytes_freed = r.container_bytes;
                report.orphan_files_removed = r.orphans;
                report.chunk_phase = if r.compaction_failures == 0 {
                    "done".into()
                } else {
                    format!(
                        "done; {} containers could not be compacted (see the log)",
                        r.compaction_failures
                    )
                };
                progress("chunks", 1, 1);
            }
        }
        let inner = self.inner.clone();
        report.stored_bytes_after = background(move || Ok(inner.store.disk_usage()?)).await?;
        report.seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            seconds = report.seconds,
            blobs = report.blobs_removed,
            chunks = report.chunks_removed,
            containers_removed = report.containers_removed,
            containers_compacted = report.containers_compacted,
            freed = report
                .stored_bytes_before
                .saturating_sub(report.stored_bytes_after),
            "garbage collection pass done"
        );
        Ok(report)
    }
}

/// Step 2: remove unreferenced blob links past the grace period (in a dry run, only find
/// them), unlinked manifests and empty repositories. Returns the links removed, the blobs no
/// repository links any more that are past the grace period (patched layers first), and the
/// manifests and repositories removed.
///
/// A dry run changes nothing; it treats the manifests retention would delete (`planned`) as
/// gone, so that its report counts what the real pass would free.
fn sweep_links(
    inner: &Arc<Inner>,
    cutoff: u64,
    dry_run: bool,
    planned: &HashSet<(RepoName, Digest)>,
) -> Result<LinkSweep> {
    let m = &inner.meta;
    // Mark: what each repository's manifests reference.
    let mut candidates: Vec<(RepoName, Digest)> = Vec::new();
    {
        let t = m.read()?;
        for repo in m.all_repos(&t)? {
            let mut referenced: HashSet<Digest> = HashSet::new();
            let mut unreadable = false;
            for (d, _) in m.manifest_links_of(&t, &repo)? {
                if planned.contains(&(repo.clone(), d.clone())) {
                    continue;
                }
                match m.manifest(&t, &d)? {
                    Some((rec, body)) => match manifest::parse(Some(&rec.media_type), &body) {
                        Ok(p) => referenced.extend(p.blobs),
                        Err(_) => unreadable = true,
                    },
                    None => unreadable = true,
                }
            }
            if unreadable {
                tracing::warn!(%repo, "a manifest could not be read: its repository's blob links are all kept");
                continue;
            }
            for (d, link) in m.blob_links_of(&t, &repo)? {
                if !referenced.contains(&d) && link.created < cutoff {
                    candidates.push((repo.clone(), d));
                }
            }
        }
    }
    let touched_floor = cutoff;
    let mut touched = inner.touched.0.lock().expect("touched lock");
    touched.retain(|_, at| *at >= touched_floor);
    let candidates: Vec<_> = candidates
        .into_iter()
        .filter(|k| !touched.contains_key(k))
        .collect();
    if dry_run {
        drop(touched);
        let t = m.read()?;
        let mut unlinks: HashMap<Digest, u64> = HashMap::new();
        for (_, d) in &candidates {
            *unlinks.entry(d.clone()).or_default() += 1;
        }
        let mut doomed = Vec::new();
        for (d, rec) in m.all_blobs(&t)? {
            let left = rec.links - unlinks.get(&d).copied().unwrap_or(0).min(rec.links);
            if left == 0 && rec.created < cutoff {
                doomed.push(d);
            }
        }
        return Ok(LinkSweep {
            links: candidates.len() as u64,
            doomed,
            deps: HashMap::new(),
            manifests: 0,
            repos: 0,
        });
    }
    // Sweep, holding the touched map until the commit, so that no HEAD answers 200 for a link
    // being removed.
    let mut w = m.write()?;
    let mut removed = 0u64;
    for (repo, d) in &candidates {
        // Linked again since the mark (a push or a mount): the link is young now.
        match m.blob_link(&w, repo, d)? {
            Some(l) if l.created < cutoff => {}
            _ => continue,
        }
        if m.unlink_blob(&mut w, repo, d)? {
            removed += 1;
        }
    }
    // An empty transaction is aborted, not committed: a commit costs an fsync. (Either way it
    // ends here: a shadowed transaction would keep the writer lock.)
    if removed > 0 {
        w.commit()?;
    } else {
        w.abort();
    }
    drop(touched);
    let mut w = m.write()?;
    let manifests = m.remove_unlinked_manifests(&mut w)?;
    let repos = m.remove_empty_repos(&mut w)?;
    // Blobs no repository links, past the grace period.
    let mut doomed: Vec<Digest> = m
        .all_blobs(&w)?
        .into_iter()
        .filter(|(_, r)| r.links == 0 && r.created < cutoff)
        .map(|(d, _)| d)
        .collect();
    // No new layer may take one of them as its patch reference from now on, so the layers
    // patched against them are all known here.
    let deps = m.patch_dependents(&w)?;
    for d in &doomed {
        m.retire_reference(&mut w, d)?;
    }
    if manifests + repos > 0 || !doomed.is_empty() {
        w.commit()?;
    } else {
        w.abort();
    }
    // Patched layers before the layers they are patched against.
    let dependent: HashSet<&String> = deps.values().flatten().collect();
    doomed.sort_by_key(|d| !dependent.contains(&d.to_string()));
    Ok(LinkSweep {
        links: removed,
        doomed,
        deps,
        manifests,
        repos,
    })
}

/// What step 2 did and found.
struct LinkSweep {
    links: u64,
    /// Blobs no repository links, past the grace period (patched layers first).
    doomed: Vec<Digest>,
    /// Layers patched against each layer (reference → dependents).
    deps: HashMap<String, HashSet<String>>,
    manifests: u64,
    repos: u64,
}

#[derive(Default)]
struct BlobSweep {
    blobs: u64,
    bytes: u64,
    recipes: u64,
    raw_bytes: u64,
}

impl BlobSweep {
    fn add(&mut self, o: &BlobSweep) {
        self.blobs += o.blobs;
        self.bytes += o.bytes;
        self.recipes += o.recipes;
        self.raw_bytes += o.raw_bytes;
    }
}

/// Step 3, one batch: remove the records, commit, then the files. `deps` lists the layers
/// patched against each layer, `doomed` every blob this pass removes (their dependents are not
/// stored again).
fn sweep_blobs(
    inner: &Arc<Inner>,
    batch: &[Digest],
    cutoff: u64,
    deps: &HashMap<String, HashSet<String>>,
    doomed: &HashSet<String>,
) -> Result<BlobSweep> {
    let m = &inner.meta;
    let _staging = inner.staging_lock.lock().expect("staging lock");
    let mut out = BlobSweep::default();
    let mut rest = batch;
    while !rest.is_empty() {
        let mut removed = Vec::new();
        let mut w = m.write()?;
        let mut touched = 0u64;
        while let Some((d, tail)) = rest.split_first() {
            if touched >= TXN_CHUNKS {
                break;
            }
            rest = tail;
            match m.blob(&w, d)? {
                Some(r) if r.links == 0 && r.created < cutoff => {}
                _ => continue,
            }
            let living: Option<HashSet<String>> = deps
                .get(&d.to_string())
                .map(|s| s.iter().filter(|x| !doomed.contains(*x)).cloned().collect());
            if let Some(r) = m.remove_blob(&mut w, d, living.as_ref())? {
                touched += r.chunk_refs;
                removed.push(r);
            }
        }
        w.commit()?;
        failpoint("gc-blobs-committed");
        remove_blob_files(inner, &removed, &mut out)?;
    }
    Ok(out)
}

/// After the commit that removed their records: the staged files and cached copies.
fn remove_blob_files(
    inner: &Arc<Inner>,
    removed: &[crate::meta::RemovedBlob],
    out: &mut BlobSweep,
) -> Result<()> {
    for r in removed {
        out.blobs += 1;
        out.bytes += r.size;
        out.recipes += u64::from(r.recipe);
        let p = inner.store.blob_path(&r.digest);
        if let Ok(md) = std::fs::metadata(&p) {
            remove_if_present(&p)?;
            out.raw_bytes += md.len();
        }
        out.raw_bytes += inner.layer_cache.remove(&r.digest)?;
    }
    let digests: Vec<_> = removed.iter().map(|r| r.digest.clone()).collect();
    inner.unpublish_blobs(&digests)?;
    Ok(())
}

#[derive(Default)]
struct ChunkSweep {
    compaction_failures: u64,
    chunks: u64,
    chunk_bytes: u64,
    containers_removed: u64,
    containers_compacted: u64,
    container_bytes: u64,
    orphans: u64,
}

/// The base a stored delta names (its record starts with the base's id).
fn delta_base(containers: &Containers, c: &DeadChunk) -> Result<Option<ChunkId>> {
    if c.loc.encoding.is_whole() {
        return Ok(None);
    }
    let f = containers.open(c.loc.container)?;
    let stored = read_stored(&f, &c.loc)?;
    Ok(Some(split_delta(&stored)?.0))
}

/// Step 4, with the pipeline held at its gate.
/// `cutoff`: records created before it are past the grace period; `grace`: that period, for
/// objects aged by the bucket's clock (trash records, blob objects without a record).
fn sweep_chunks(
    inner: &Arc<Inner>,
    cutoff: u64,
    grace: std::time::Duration,
    compact_below: f64,
) -> Result<ChunkSweep> {
    let m: &Meta = &inner.meta;
    let containers: &Containers = &inner.containers;
    let dir = containers.dir().to_path_buf();
    let mut out = ChunkSweep::default();
    let young: HashSet<u64> = {
        let t = m.read()?;
        m.all_containers(&t)?
            .into_iter()
            .filter(|(_, r)| r.created >= cutoff)
            .map(|(id, _)| id)
            .collect()
    };
    // Dead chunks, a batch at a time through the index; a removed delta may leave its base
    // dead: those are gathered for a second round (one level: invariant 5).
    let mut after: Option<ChunkId> = None;
    let mut bases_left: Vec<DeadChunk> = Vec::new();
    let mut pruned: HashSet<u64> = HashSet::new();
    loop {
        let (dead, next_after) = {
            let t = m.read()?;
            m.dead_chunks_after(&t, after.as_ref(), TXN_CHUNKS as usize, &|c| {
                young.contains(&c)
            })?
        };
        let (bases, n, bytes) = remove_chunks(m, containers, &dead, &young)?;
        pruned.extend(
            dead.iter()
                .filter(|c| c.loc.encoding.is_whole())
                .map(|c| c.loc.container),
        );
        out.chunks += n;
        out.chunk_bytes += bytes;
        bases_left.extend(bases);
        match next_after {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    let mut dead = bases_left;
    while !dead.is_empty() {
        let mut next = Vec::new();
        for batch in dead.chunks(TXN_CHUNKS as usize) {
            let (bases, n, bytes) = remove_chunks(m, containers, batch, &young)?;
            pruned.extend(batch.iter().map(|c| c.loc.container));
            out.chunks += n;
            out.chunk_bytes += bytes;
            next.extend(bases);
        }
        dead = next;
    }
    // The feature blocks of the containers that lost chunks forget them.
    if !pruned.is_empty() {
        let mut w = m.write()?;
        for c in &pruned {
            m.prune_feature_block(&mut w, *c)?;
        }
        w.commit()?;
    }
    failpoint("gc-chunks-committed");
    // Containers: empty ones go, sparse ones are rewritten.
    let (records, live) = {
        let t = m.read()?;
        (m.all_containers(&t)?, m.live_per_container(&t)?)
    };
    let (mut empty, mut sparse) = (Vec::new(), Vec::new());
    for (id, rec) in &records {
        if young.contains(id) {
            continue;
        }
        // With a bucket the file may not be cached here: its recorded size stands in.
        let file_len =
            std::fs::metadata(container_path(&dir, *id)).map_or(rec.bytes, |md| md.len());
        let (n, bytes) = live.get(id).copied().unwrap_or((0, 0));
        if n == 0 {
            empty.push((*id, file_len));
        } else if rec.bytes > 0 && (bytes as f64) < compact_below * rec.bytes as f64 {
            sparse.push((*id, file_len));
        }
    }
    if !empty.is_empty() {
        let mut w = m.write()?;
        for (id, _) in &empty {
            m.forget_container(&mut w, *id)?;
        }
        w.commit()?;
        let ids: Vec<u64> = empty.iter().map(|(id, _)| *id).collect();
        containers.remove(&ids)?;
        for (_, file_len) in &empty {
            out.containers_removed += 1;
            out.container_bytes += file_len;
        }
    }
    for (old, old_len) in sparse {
        let new = {
            let mut w = m.write()?;
            let id = m.next_counter(&mut w, "container")?;
            w.commit()?;
            id
        };
        // A record is copied when the index still places its chunk in this container (a
        // container may also hold copies the index never pointed at).
        let t = m.read()?;
        // A record that cannot be read is copied: the repointing then fails on it too, and
        // the old file stays.
        let keep = |id: &ChunkId| match m.chunk(&t, id) {
            Ok(Some(r)) => r.loc.container == old,
            Ok(None) => false,
            Err(_) => true,
        };
        // With a bucket: fetched into the cache first, and the new one uploaded before the
        // commit that points the chunks at it.
        let rewritten = containers
            .open(old)
            .and_then(|_| container::rewrite(&container_path(&dir, old), &dir, new, &keep))
            .and_then(|e| containers.publish(new).map(|_| e));
        drop(t);
        let entries = match rewritten {
            Ok(e) => e,
            // Out of space, say: this container stays as it is; the others are still tried
            // (the empty ones above already gave space back).
            Err(e) => {
                tracing::warn!(container = old, error = %e, "compacting a container failed");
                remove_if_present(&container_path(&dir, new))?;
                out.compaction_failures += 1;
                continue;
            }
        };
        failpoint("gc-compacted-before-commit");
        let mut w = m.write()?;
        m.repoint_container(&mut w, old, new, &entries)?;
        w.commit()?;
        failpoint("gc-compact-committed");
        containers.remove(&[old])?;
        let new_len = std::fs::metadata(container_path(&dir, new)).map_or(0, |md| md.len());
        out.containers_compacted += 1;
        out.container_bytes += old_len.saturating_sub(new_len);
    }
    // Container files no record names: the pipeline is quiet, so none is being written.
    let known_now: HashSet<u64> = {
        let t = m.read()?;
        m.all_containers(&t)?
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    };
    for (id, path) in containers.local_files()? {
        if !known_now.contains(&id) {
            let len = std::fs::metadata(&path).map_or(0, |md| md.len());
            containers.drop_local(id)?;
            out.orphans += 1;
            out.container_bytes += len;
        }
    }
    // Objects no record names (uploaded, then the process stopped before the commit).
    if let Some(published) = containers.published()? {
        let stray: Vec<(u64, u64)> = published
            .into_iter()
            .filter(|(id, _)| !known_now.contains(id))
            .collect();
        let ids: Vec<u64> = stray.iter().map(|(id, _)| *id).collect();
        containers.remove(&ids)?;
        out.orphans += stray.len() as u64;
        out.container_bytes += stray.iter().map(|(_, len)| len).sum::<u64>();
    }
    sync_dir(&dir)?;
    // Staged files no blob record names (a crash between a batch's commit and its removals).
    let _staging = inner.staging_lock.lock().expect("staging lock");
    let t = m.read()?;
    for (path, d) in inner.store.staged_files()? {
        let Some(d) = d else { continue };
        if m.blob(&t, &d)?.is_none() {
            remove_if_present(&path)?;
            out.orphans += 1;
        }
    }
    drop(t);
    // Blob objects no blob needs whole (with a bucket); then the objects removed more than a
    // grace period ago. (The grace period itself, not the time since `cutoff`: that also
    // counts this pass's own duration, which kept a pass with no grace period from emptying
    // the trash it had just filled whenever it took a second or more.)
    out.orphans += super::durability::sweep_blob_objects(inner, grace)?;
    inner.containers.empty_trash(grace)?;
    Ok(out)
}

fn remove_if_present(p: &std::path::Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RegistryError::from(e)),
        _ => Ok(()),
    }
}

fn sync_dir(p: &std::path::Path) -> Result<()> {
    std::fs::File::open(p)?.sync_all()?;
    Ok(())
}

/// Remove one batch of dead chunks in one transaction (each checked again); returns the bases
/// this left dead (outside `young` containers), and the chunks and stored bytes removed.
fn remove_chunks(
    m: &Meta,
    containers: &Containers,
    batch: &[DeadChunk],
    young: &HashSet<u64>,
) -> Result<(Vec<DeadChunk>, u64, u64)> {
    if batch.is_empty() {
        return Ok((Vec::new(), 0, 0));
    }
    let bases: Vec<Option<ChunkId>> = batch
        .iter()
        .map(|c| delta_base(containers, c))
        .collect::<Result<_>>()?;
    let (mut next, mut n, mut bytes) = (Vec::new(), 0u64, 0u64);
    let mut w = m.write()?;
    for (c, base) in batch.iter().zip(&bases) {
        let (gone, dead_base) = m.remove_chunk(&mut w, &c.id, base.as_ref())?;
        if gone {
            n += 1;
            bytes += c.loc.stored_len as u64;
        }
        if let Some(b) = dead_base {
            if !young.contains(&b.loc.container) {
                next.push(b);
            }
        }
    }
    w.commit()?;
    Ok((next, n, bytes))
}

/// Run a step of a pass on a thread of its own at background priority (nice 10, like the
/// deduplication pipeline), so that a pass takes the CPU pulls and pushes leave.
async fn background<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("stowage-gc".into())
        .spawn(move || {
            stowage_actors::pipeline::background_priority();
            let _ = tx.send(f());
        })?;
    rx.await
        .map_err(|_| RegistryError::Internal("a garbage collection step panicked".into()))?
}
