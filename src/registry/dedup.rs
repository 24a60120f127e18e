//! The registry's side of deduplication: the LMDB catalog the pipeline commits through, the
//! hand-off of committed blobs to the pipeline (background, or inline for tests), resuming
//! pending blobs at start-up, and serving deduplicated blobs through the Restore actor.
//!
//! Repository policies are decided per blob from every repository linking it. A blob already
//! deduplicated that comes to be linked from a `raw` repository (a mount, a push of a blob the
//! store has, a layer deduplicated while such a link was made, or a policy added before a
//! restart) is restored into `staging/`, verified, and kept raw from then on; its recipe and
//! chunk references stay. When no `raw` policy covers it any more (after a restart), the raw
//! copy goes and the recipe serves again. A layer whose deduplication a minimum age defers is
//! decided again when the wait ends, so one linked from a `raw` repository meanwhile is never
//! chunked.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use std::time::Duration;
use stowage_actors::engine::chunk::ChunkId;
use stowage_actors::engine::container::ChunkLoc;
use stowage_actors::engine::recipe::Recipe;
use stowage_actors::engine::tar::FileEntry;

use stowage_actors::catalog::{Catalog, SealedContainer};
use stowage_actors::pipeline::{LayerPolicy, Outcome};

use super::blocking;
use super::Registry;
use crate::config::{DedupMode, PolicyMode};
use crate::error::{RegistryError, Result};
use crate::meta::{BlobState, Meta};
use crate::names::{Digest, RepoName};

/// The pipeline's view of the metadata store.
pub struct MetaCatalog(pub Arc<Meta>);

fn io_err(e: RegistryError) -> io::Error {
    io::Error::other(e.to_string())
}

impl Catalog for MetaCatalog {
    fn chunk(&self, id: &ChunkId) -> io::Result<Option<ChunkLoc>> {
        let t = self.0.read().map_err(io_err)?;
        Ok(self.0.chunk(&t, id).map_err(io_err)?.map(|c| c.loc))
    }

    fn chunks(&self, ids: &[ChunkId]) -> io::Result<Vec<Option<ChunkLoc>>> {
        let t = self.0.read().map_err(io_err)?;
        ids.iter()
            .map(|id| Ok(self.0.chunk(&t, id).map_err(io_err)?.map(|c| c.loc)))
            .collect()
    }

    fn allocate_container(&self) -> io::Result<u64> {
        let mut w = self.0.write().map_err(io_err)?;
        let id = self.0.next_counter(&mut w, "container").map_err(io_err)?;
        w.commit().map_err(|e| io::Error::other(e.to_string()))?;
        Ok(id)
    }

    fn similar(&self, sf: &[u64]) -> io::Result<Vec<Option<ChunkId>>> {
        let t = self.0.read().map_err(io_err)?;
        self.0.similar(&t, sf).map_err(io_err)
    }

    fn commit_container(&self, sealed: &SealedContainer) -> io::Result<()> {
        let mut w = self.0.write().map_err(io_err)?;
        self.0.add_container(&mut w, sealed).map_err(io_err)?;
        w.commit().map_err(|e| io::Error::other(e.to_string()))?;
        self.0.index_container(sealed);
        Ok(())
    }

    fn commit_recipe(&self, blob: &Digest, recipe: &Recipe, files: &[FileEntry]) -> io::Result<()> {
        let mut w = self.0.write().map_err(io_err)?;
        self.0
            .commit_recipe(&mut w, blob, recipe, files)
            .map_err(io_err)?;
        w.commit().map_err(|e| io::Error::other(e.to_string()))
    }

    fn keep_raw(&self, blob: &Digest, reason: &str) -> io::Result<()> {
        let mut w = self.0.write().map_err(io_err)?;
        // A recipe committed meanwhile stands: another run of the same blob (pushed again
        // after a collection removed it while this run was queued) deduplicated it and
        // dropped the staged file this run could not read.
        if let Some(rec) = self.0.blob(&w, blob).map_err(io_err)? {
            if matches!(rec.state, BlobState::Deduplicated { .. }) {
                return Ok(());
            }
        }
        self.0
            .set_blob_state(
                &mut w,
                blob,
                BlobState::Raw {
                    reason: reason.to_string(),
                },
            )
            .map_err(io_err)?;
        w.commit().map_err(|e| io::Error::other(e.to_string()))
    }
}

impl Registry {
    /// At start-up: remove container files that were never committed (a crash while packing,
    /// before the seal's LMDB commit; nothing can refer to them) and raw copies of blobs whose
    /// recipe is committed.
    pub(super) fn remove_uncommitted_containers(&self) -> Result<()> {
        let t = self.inner.meta.read()?;
        // Files that are not containers are not ours: left for the operator.
        for (id, path) in self.inner.containers.local_files()? {
            if !self.inner.meta.container_known(&t, id)? {
                tracing::info!(path = %path.display(), "removing uncommitted container");
                self.inner.containers.drop_local(id)?;
            }
        }
        // A crash between a recipe's commit and the removal of the raw blob leaves the raw
        // copy behind: it is redundant once the recipe is committed (and was verified).
        for (d, rec) in self.inner.meta.all_blobs(&t)? {
            if matches!(rec.state, BlobState::Deduplicated { .. }) {
                let p = self.staged_path(&d);
                if p.exists() {
                    tracing::info!(digest = %d, "removing raw copy of a deduplicated blob");
                    std::fs::remove_file(&p)?;
                }
            }
        }
        Ok(())
    }

    fn staged_path(&self, d: &Digest) -> PathBuf {
        self.inner.store.blob_path(d)
    }

    /// What the repository policies decide for a blob linked from `repos`: the first matching
    /// policy of each repository, the most conservative mode and the longest age among them.
    pub(crate) fn decide(&self, repos: &[RepoName]) -> Decision {
        let mut d = Decision {
            mode: PolicyMode::Full,
            min_age: Duration::ZERO,
            policy: None,
        };
        for repo in repos {
            let Some(p) = self
                .inner
                .cfg
                .repo_policies
                .iter()
                .find(|p| p.matches(repo.as_str()))
            else {
                continue;
            };
            if p.dedup > d.mode || d.policy.is_none() {
                d.mode = d.mode.max(p.dedup);
                d.policy = Some(p.repositories.clone());
            }
            d.min_age = d.min_age.max(p.min_age.unwrap_or_default());
        }
        d
    }

    fn count_policy(&self, d: &Decision, effect: &'static str, bytes: u64) {
        if let Some(name) = &d.policy {
            let mut m = self.inner.policy_stats.lock().expect("policy stats lock");
            let c = m.entry((name.clone(), effect)).or_default();
            c.layers += 1;
            c.bytes += bytes;
        }
    }

    fn any_raw_policy(&self) -> bool {
        self.inner
            .cfg
            .repo_policies
            .iter()
            .any(|p| p.dedup == PolicyMode::Raw)
    }

    /// A blob the store already had was linked into `repo` (a mount or a repeated push).
    pub(super) async fn after_link(&self, d: &Digest, repo: &RepoName) {
        if !self.any_raw_policy() {
            return;
        }
        let decision = self.decide(std::slice::from_ref(repo));
        if decision.mode == PolicyMode::Raw {
            self.keep_raw_copy(d.clone(), decision).await;
        }
    }

    /// The decision of the repositories linking `d` now, if it is to keep it raw.
    async fn raw_decision(&self, d: &Digest) -> Option<Decision> {
        if !self.any_raw_policy() {
            return None;
        }
        let (inner, d2) = (self.inner.clone(), d.clone());
        let repos = blocking(move || {
            let t = inner.meta.read()?;
            inner.meta.repos_linking(&t, &d2)
        })
        .await;
        match repos.map(|r| self.decide(&r)) {
            Ok(decision) if decision.mode == PolicyMode::Raw => Some(decision),
            Ok(_) => None,
            Err(e) => {
                tracing::error!(digest = %d, error = %e, "reading a blob's links failed");
                None
            }
        }
    }

    /// After `d` was deduplicated: a `raw` repository may have linked it meanwhile.
    async fn after_dedup(&self, d: &Digest) {
        // Deduplicated: the chunks hold it, its whole copy in the bucket goes (a failure
        // leaves it to garbage collection's sweep).
        let inner = self.inner.clone();
        let d2 = d.clone();
        let dropped = blocking(move || {
            let t = inner.meta.read()?;
            if let Some(BlobState::Deduplicated { .. }) = inner.meta.blob(&t, &d2)?.map(|r| r.state)
            {
                drop(t);
                inner.drop_deduplicated(std::slice::from_ref(&d2))?;
            }
            Ok(())
        })
        .await;
        if let Err(e) = dropped {
            tracing::warn!(digest = %d, error = %e, "dropping a deduplicated blob's object failed");
        }
        if let Some(decision) = self.raw_decision(d).await {
            self.keep_raw_copy(d.clone(), decision).await
        }
    }

    /// Record a staged blob as kept raw by `decision`'s policy.
    async fn keep_raw_by_policy(&self, d: &Digest, decision: &Decision, size: u64) {
        self.count_policy(decision, "raw", size);
        let cat = MetaCatalog(self.inner.meta.clone());
        let d2 = d.clone();
        if let Err(e) = blocking(move || Ok(cat.keep_raw(&d2, POLICY_RAW)?)).await {
            tracing::error!(digest = %d, error = %e, "recording a layer kept raw by policy failed");
        }
    }

    /// Restore a deduplicated blob into `staging/` (verified against its digest), then record
    /// it as kept raw by policy (counted for `decision`'s policy), at most two at a time.
    /// Waits in inline mode; in the background otherwise.
    async fn keep_raw_copy(&self, d: Digest, decision: Decision) {
        let reg = self.clone();
        let work = async move {
            let Ok(_permit) = reg.inner.raw_copies.acquire().await else {
                return;
            };
            let inner = reg.inner.clone();
            let d2 = d.clone();
            let res = blocking(move || {
                let m = &inner.meta;
                let (size, recipe) = {
                    let t = m.read()?;
                    let size = match m.blob(&t, &d2)? {
                        Some(rec) if matches!(rec.state, BlobState::Deduplicated { .. }) => {
                            rec.size
                        }
                        _ => return Ok(None),
                    };
                    let recipe = m.recipe(&t, &d2)?.ok_or_else(|| {
                        RegistryError::Internal(format!("{d2} is deduplicated but has no recipe"))
                    })?;
                    (size, recipe)
                };
                let reader = stowage_actors::restore::ChunkReader::new(
                    Arc::new(MetaCatalog(m.clone())),
                    inner.containers.clone(),
                );
                inner.store.stage_with(&d2, &mut |f| {
                    let mut h = d2.algorithm().hasher();
                    let mut n = 0u64;
                    stowage_actors::restore::restore_layer(&recipe, &reader, &mut |b| {
                        h.update(b);
                        n += b.len() as u64;
                        io::Write::write_all(f, b)
                    })?;
                    let got = h.finish();
                    if got != d2 || n != size {
                        return Err(io::Error::other(format!(
                            "restored {n} bytes hashing to {got}, not {d2}"
                        )));
                    }
                    Ok(())
                })?;
                let mut w = m.write()?;
                if matches!(
                    m.blob(&w, &d2)?.map(|r| r.state),
                    Some(BlobState::Deduplicated { .. })
                ) {
                    m.set_blob_state(
                        &mut w,
                        &d2,
                        BlobState::Raw {
                            reason: POLICY_RAW.into(),
                        },
                    )?;
                }
                w.commit()?;
                Ok(Some(size))
            })
            .await;
            match res {
                Ok(Some(size)) => {
                    tracing::info!(digest = %d, "deduplicated blob now also kept raw, by policy");
                    reg.count_policy(&decision, "raw", size);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(digest = %d, error = %e, "keeping a raw copy failed")
                }
            }
        };
        if self.inner.cfg.dedup == DedupMode::Inline {
            work.await
        } else {
            actix_web::rt::spawn(work);
        }
    }

    /// Hand a freshly committed blob (linked from `repo`) to the pipeline, as configured.
    pub(super) async fn after_commit(&self, d: &Digest, repo: &RepoName, size: u64) {
        self.grow_hot_budget(size);
        let decision = self.decide(std::slice::from_ref(repo));
        self.schedule(d.clone(), size, decision, Duration::ZERO)
            .await;
    }

    /// Deduplicate `d` as `decision` says, once it is `min_age` old (`age` already elapsed).
    async fn schedule(&self, d: Digest, size: u64, decision: Decision, age: Duration) {
        let Some(p) = self.inner.pipeline.clone() else {
            return;
        };
        if self.inner.cfg.dedup == DedupMode::Off {
            return;
        }
        if decision.mode == PolicyMode::Raw {
            self.keep_raw_by_policy(&d, &decision, size).await;
            return;
        }
        let policy = LayerPolicy {
            similarity: decision.mode == PolicyMode::Full,
        };
        if !policy.similarity {
            self.count_policy(&decision, "no_similarity", size);
        }
        let path = self.staged_path(&d);
        if !path.exists() {
            // Staged on another node, or before the local index was rebuilt: in the bucket.
            let inner = self.inner.clone();
            let d2 = d.clone();
            match blocking(move || inner.fetch_blob(&d2)).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::error!(digest = %d, "a staged blob is neither here nor in the bucket");
                    return;
                }
                Err(e) => {
                    tracing::warn!(digest = %d, error = %e, "fetching a staged blob failed; retried at the next start");
                    return;
                }
            }
        }
        // Inline mode is for tests: the PUT waits for the commit, and ages are ignored.
        if self.inner.cfg.dedup == DedupMode::Inline {
            let _gate = self.inner.dedup_gate.read().await;
            log_outcome(&d, &p.dedup(d.clone(), path, policy).await);
            self.after_dedup(&d).await;
            return;
        }
        let wait = decision.min_age.saturating_sub(age);
        if !wait.is_zero() {
            self.count_policy(&decision, "deferred", size);
        }
        let reg = self.clone();
        actix_web::rt::spawn(async move {
            if !wait.is_zero() {
                actix_web::rt::time::sleep(wait).await;
                // Linked from a repository kept raw while it waited: kept raw as it is.
                if let Some(raw) = reg.raw_decision(&d).await {
                    reg.keep_raw_by_policy(&d, &raw, size).await;
                    return;
                }
            }
            let o = {
                let _gate = reg.inner.dedup_gate.read().await;
                p.dedup(d.clone(), path, policy).await
            };
            log_outcome(&d, &o);
            reg.after_dedup(&d).await;
        });
    }

    /// Queue every blob still waiting for deduplication (after a restart), and the blobs kept
    /// raw by a policy that no longer applies (marked pending again before this returns), in
    /// the order they were pushed. The queueing itself runs in the background.
    pub async fn resume_pending(&self) -> Result<usize> {
        if self.inner.pipeline.is_none() || self.inner.cfg.dedup == DedupMode::Off {
            return Ok(0);
        }
        let inner = self.inner.clone();
        let (mut blobs, links) = blocking(move || {
            let t = inner.meta.read()?;
            // Which repositories link a blob matters only to the repository policies.
            let links = if inner.cfg.repo_policies.is_empty() {
                Default::default()
            } else {
                inner.meta.all_blob_links(&t)?
            };
            Ok((inner.meta.all_blobs(&t)?, links))
        })
        .await?;
        blobs.sort_by_key(|(_, r)| r.created);
        let mut queue = Vec::new();
        let mut released = Vec::new();
        let mut raw_copies = Vec::new();
        for (d, rec) in blobs {
            let repos = links.get(&d).map(Vec::as_slice).unwrap_or_default();
            let decision = self.decide(repos);
            match &rec.state {
                BlobState::Staged => {}
                // Kept raw by a policy that no longer says so: pending again, or deduplicated
                // again at once if its recipe was kept.
                BlobState::Raw { reason }
                    if reason == POLICY_RAW && decision.mode != PolicyMode::Raw =>
                {
                    released.push(d.clone())
                }
                // Kept raw for want of space: tried again.
                BlobState::Raw { reason } if transient(reason) => released.push(d.clone()),
                // Deduplicated, and now linked from a repository kept raw.
                BlobState::Deduplicated { .. } if decision.mode == PolicyMode::Raw => {
                    raw_copies.push((d, decision));
                    continue;
                }
                _ => continue,
            }
            queue.push((d, rec, decision));
        }
        if !released.is_empty() {
            let inner = self.inner.clone();
            let recipes_back = blocking(move || {
                let m = &inner.meta;
                let mut w = m.write()?;
                let mut back = Vec::new();
                for d in &released {
                    match m.recipe(&w, d)? {
                        Some(r) => {
                            let encoding = r.encoding.label();
                            m.set_blob_state(&mut w, d, BlobState::Deduplicated { encoding })?;
                            back.push(d.clone());
                        }
                        None => m.set_blob_state(&mut w, d, BlobState::Staged)?,
                    }
                }
                w.commit()?;
                // The raw copies of blobs whose recipe serves again (after the commit: a crash
                // in between leaves them to the start-up sweep).
                for d in &back {
                    let p = inner.store.blob_path(d);
                    if let Err(e) = std::fs::remove_file(&p) {
                        tracing::warn!(digest = %d, error = %e, "removing a raw copy failed");
                    }
                }
                if let Err(e) = inner.drop_deduplicated(&back) {
                    tracing::warn!(error = %e, "dropping the objects of raw copies failed");
                }
                Ok(back)
            })
            .await?;
            queue.retain(|(d, _, _)| !recipes_back.contains(d));
        }
        for (d, decision) in raw_copies {
            self.keep_raw_copy(d, decision).await;
        }
        let now = crate::meta::now();
        let n = queue.len();
        let reg = self.clone();
        actix_web::rt::spawn(async move {
            for (d, rec, decision) in queue {
                let age = Duration::from_secs(now.saturating_sub(rec.created));
                reg.schedule(d, rec.size, decision, age).await;
            }
        });
        Ok(n)
    }
}

/// Whether a layer was kept raw for a passing condition (the disk or the metadata map was
/// full): such layers are deduplicated again at the next start, and after a collection pass
/// when space is back.
pub fn transient(reason: &str) -> bool {
    [
        "No space left on device",
        "Disk quota exceeded",
        "MDB_MAP_FULL",
        "map full",
    ]
    .iter()
    .any(|m| reason.contains(m))
}

impl Registry {
    /// Queue again the layers kept raw for want of space (after a collection freed some).
    pub(crate) async fn retry_transient_raw(&self) -> Result<usize> {
        if self.inner.pipeline.is_none() || self.inner.cfg.dedup == DedupMode::Off {
            return Ok(0);
        }
        let inner = self.inner.clone();
        let again = blocking(move || {
            let m = &inner.meta;
            let found: Vec<_> = {
                let t = m.read()?;
                m.all_blobs(&t)?
                    .into_iter()
                    .filter(
                        |(_, r)| matches!(&r.state, BlobState::Raw { reason } if transient(reason)),
                    )
                    .collect()
            };
            if found.is_empty() {
                return Ok(Vec::new());
            }
            let mut w = m.write()?;
            let mut again = Vec::new();
            for (d, _) in found {
                // Checked again in the transaction: another pass may have queued it.
                if let Some(rec) = m.blob(&w, &d)? {
                    if matches!(&rec.state, BlobState::Raw { reason } if transient(reason)) {
                        m.set_blob_state(&mut w, &d, BlobState::Staged)?;
                        again.push((d, rec.size));
                    }
                }
            }
            w.commit()?;
            Ok(again)
        })
        .await?;
        let n = again.len();
        for (d, size) in again {
            let decision = self.decision_for(&d).await;
            self.schedule(d, size, decision, Duration::MAX).await;
        }
        if n > 0 {
            tracing::info!(layers = n, "layers kept raw for want of space queued again");
        }
        Ok(n)
    }

    /// The policy decision for `d` from the repositories linking it now.
    async fn decision_for(&self, d: &Digest) -> Decision {
        if self.inner.cfg.repo_policies.is_empty() {
            return self.decide(&[]);
        }
        let (inner, d2) = (self.inner.clone(), d.clone());
        let repos = blocking(move || {
            let t = inner.meta.read()?;
            inner.meta.repos_linking(&t, &d2)
        })
        .await
        .unwrap_or_default();
        self.decide(&repos)
    }
}

/// The raw reason of layers a `raw` repository policy keeps as pushed.
pub const POLICY_RAW: &str = "policy: raw repository";

/// What the repository policies decided for one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decision {
    pub mode: PolicyMode,
    pub min_age: Duration,
    /// The pattern of the policy that set the mode (None: no policy matched).
    pub policy: Option<String>,
}

/// What each policy did since start-up, by (policy, effect): `raw` (kept as pushed),
/// `no_similarity` (chunk dedup only), `deferred` (waited for its minimum age).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PolicyCount {
    pub layers: u64,
    pub bytes: u64,
}

fn log_outcome(d: &Digest, o: &Outcome) {
    match o {
        Outcome::Deduplicated { encoding } => {
            tracing::info!(digest = %d, %encoding, "blob deduplicated")
        }
        Outcome::Raw { reason } => tracing::info!(digest = %d, %reason, "blob kept raw"),
    }
}
