//! The registry's side of deduplication: the LMDB catalog the pipeline commits through, the
//! hand-off of committed blobs to the pipeline (background, or inline for tests), resuming
//! pending blobs at start-up, and serving deduplicated blobs through the Restore actor.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};

use stowage_actors::engine::chunk::ChunkId;
use stowage_actors::engine::container::ChunkLoc;
use stowage_actors::engine::recipe::Recipe;
use stowage_actors::engine::tar::FileEntry;
use stowage_actors::pipeline::{Catalog, Outcome};
use stowage_actors::restore::RestoreLayer;

use super::Registry;
use crate::config::DedupMode;
use crate::error::{RegistryError, Result};
use crate::meta::{BlobState, Meta};
use crate::names::Digest;

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

    fn allocate_container(&self) -> io::Result<u64> {
        let mut w = self.0.write().map_err(io_err)?;
        let id = self.0.next_counter(&mut w, "container").map_err(io_err)?;
        w.commit().map_err(|e| io::Error::other(e.to_string()))?;
        Ok(id)
    }

    fn commit_container(&self, id: u64, entries: &[(ChunkId, ChunkLoc)]) -> io::Result<()> {
        let mut w = self.0.write().map_err(io_err)?;
        self.0.add_container(&mut w, id, entries).map_err(io_err)?;
        w.commit().map_err(|e| io::Error::other(e.to_string()))
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
        let dir = self.inner.cfg.root.join("containers");
        let t = self.inner.meta.read()?;
        for e in std::fs::read_dir(&dir)? {
            let path = e?.path();
            let id = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| u64::from_str_radix(n, 16).ok());
            let keep = match id {
                Some(id) => self.inner.meta.container_known(&t, id)?,
                None => true, // not ours: leave it for the operator
            };
            if !keep {
                tracing::info!(path = %path.display(), "removing uncommitted container");
                std::fs::remove_file(&path)?;
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

    /// Hand a freshly committed blob to the pipeline, as configured.
    pub(super) async fn after_commit(&self, d: &Digest) {
        let Some(p) = self.inner.pipeline.clone() else {
            return;
        };
        let path = self.staged_path(d);
        match self.inner.cfg.dedup {
            DedupMode::Off => {}
            DedupMode::Inline => log_outcome(d, &p.dedup(d.clone(), path).await),
            DedupMode::Background => {
                let d = d.clone();
                actix_web::rt::spawn(async move {
                    let o = p.dedup(d.clone(), path).await;
                    log_outcome(&d, &o);
                });
            }
        }
    }

    /// Queue every blob still waiting for deduplication (after a restart), one at a time.
    pub fn resume_pending(&self) -> Result<usize> {
        let Some(p) = self.inner.pipeline.clone() else {
            return Ok(0);
        };
        if self.inner.cfg.dedup == DedupMode::Off {
            return Ok(0);
        }
        let pending: Vec<Digest> = {
            let t = self.inner.meta.read()?;
            self.inner
                .meta
                .all_blobs(&t)?
                .into_iter()
                .filter(|(_, r)| r.state == BlobState::Staged)
                .map(|(d, _)| d)
                .collect()
        };
        let n = pending.len();
        let reg = self.clone();
        actix_web::rt::spawn(async move {
            for d in pending {
                let o = p.dedup(d.clone(), reg.staged_path(&d)).await;
                log_outcome(&d, &o);
            }
        });
        Ok(n)
    }

    /// Stream a deduplicated blob (or a range of it) from its recipe.
    pub(super) async fn restore_stream(
        &self,
        d: &Digest,
        size: u64,
        range: Option<(u64, u64)>,
    ) -> Result<BoxStream<'static, io::Result<Bytes>>> {
        if let Some(path) = self.inner.layer_cache.lookup(d) {
            let (start, len) = range.unwrap_or((0, size));
            let opened = tokio::task::spawn_blocking(move || -> io::Result<std::fs::File> {
                let mut f = std::fs::File::open(path)?;
                std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(start))?;
                Ok(f)
            })
            .await
            .map_err(|e| RegistryError::Internal(e.to_string()))?;
            if let Ok(f) = opened {
                self.inner
                    .restore_stats
                    .cache_hits
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(super::file_stream(
                    f,
                    len,
                    d,
                    range,
                    &self.inner.restore_stats,
                ));
            }
        }
        let recipe = {
            let t = self.inner.meta.read()?;
            self.inner.meta.recipe(&t, d)?.ok_or_else(|| {
                RegistryError::Internal(format!("{d} is deduplicated but has no recipe"))
            })?
        };
        let restore = self
            .inner
            .restore
            .as_ref()
            .ok_or_else(|| RegistryError::Internal("restore actor not running".into()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(stowage_actors::restore::RESTORE_CHANNEL);
        let cache = match range {
            None => self.inner.layer_cache.writer(d, size),
            Some(_) => None,
        };
        restore.do_send(RestoreLayer {
            recipe: Arc::new(recipe),
            digest: d.clone(),
            range,
            tx,
            cache,
        });
        Ok(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
        .boxed())
    }
}

fn log_outcome(d: &Digest, o: &Outcome) {
    match o {
        Outcome::Deduplicated { encoding } => {
            tracing::info!(digest = %d, %encoding, "blob deduplicated")
        }
        Outcome::Raw { reason } => tracing::info!(digest = %d, %reason, "blob kept raw"),
    }
}
