//! Pack: appends new chunks to the open container in arrival order, and seals (fsync) and
//! commits the container (its chunk entries, the bases its deltas depend on and the features
//! of its whole chunks) when it reaches its target size and at the end of each layer. A delta
//! whose base is not stored whole, in the open container or the index, is stored whole
//! instead (one level of deltas); a chunk already stored is counted as a duplicate.
//!
//! - **In:** `Body::Encoded` and `Body::Finished`, from Similarity.
//! - **Out:** the layer's `Body::Finished` (its recipe once its chunks are committed, or why
//!   there is none), to Commit.
//! - **Bounds:** one thread ([`SyncArbiter`]), at nice 10. Its input is edge 2 (at most
//!   [`QUEUE_DEPTH`](crate::pipeline::QUEUE_DEPTH) batches from Similarity); towards Commit it
//!   keeps at most that many in flight (edge 3) and blocks when it has that many. One container
//!   is open at a time, up to `container_target` bytes.
//! - **Failure:** an error while packing a layer's chunks is logged, the open container is
//!   discarded and the layer marked failed: its further chunks are dropped and its `Finished`
//!   goes on as `Err("packing: ...")`. A layer that arrives failed also has its open container
//!   discarded (it holds only that layer's new chunks, as containers are sealed at every
//!   layer's end). A container that cannot be sealed or committed at the layer's end fails the
//!   layer ("sealing container: ..."). Commit then keeps the layer raw with the reason. Crash
//!   tests stop here at the failpoints `sealed-before-commit` and `container-committed`.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::prelude::*;

use crate::catalog::{Catalog, SealedContainer};
use crate::engine::chunk::ChunkId;
use crate::engine::container::{ChunkEncoding, ContainerWriter};
use crate::pipeline::{
    background_priority, failpoint, Batch, Body, Bounded, PipelineConfig, StageStats,
};
use crate::similarity::EncodedChunk;

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
    pub(crate) fn new(
        next: Bounded,
        catalog: Arc<dyn Catalog>,
        cfg: PipelineConfig,
        stats: Arc<StageStats>,
    ) -> Pack {
        Pack {
            next,
            catalog,
            cfg,
            open: None,
            in_open: HashMap::new(),
            open_bases: Vec::new(),
            open_features: Vec::new(),
            failed: HashMap::new(),
            stats,
        }
    }

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
                if enc == ChunkEncoding::FrameDelta {
                    self.stats.frame_deltas.fetch_add(1, Ordering::Relaxed);
                }
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
            self.open = Some(ContainerWriter::create(self.cfg.containers.dir(), id)?);
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
            // With a bucket, the container is uploaded before its chunks are committed.
            self.cfg.containers.publish(id)?;
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
