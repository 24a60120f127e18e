//! Commit: verify before discard. It restores the whole layer from its committed chunks,
//! compares the restored bytes with the pushed ones and their digest with the blob's (when
//! ingest found several encoders alike on what it compared, each in turn until one re-creates
//! the layer), then commits the recipe and file index and drops the raw blob (or adopts it
//! into the hot tier when that has room). Nothing is discarded before the restored layer
//! matched its digest.
//!
//! - **In:** `Body::Finished`, from Pack.
//! - **Out:** the layer's [`Outcome`], on the reply channel of the [`Dedup`](crate::extract::Dedup)
//!   that started it: `Deduplicated` with the recipe's encoding, or `Raw` with the reason.
//! - **Bounds:** one thread ([`SyncArbiter`]), at nice 10. Its input is edge 3 (at most
//!   [`QUEUE_DEPTH`](crate::pipeline::QUEUE_DEPTH) batches from Pack); it sends nothing on.
//! - **Failure:** a layer that failed upstream, or fails here (the restore fails, the digest
//!   differs, the recipe cannot be committed), is kept raw: the reason is recorded through
//!   [`Catalog::keep_raw`] (a failure to record it is logged) and the outcome is `Raw`. The
//!   reasons given here are metric labels, free of per-layer values. Once the recipe is
//!   committed, a raw blob that cannot be removed is only logged. Crash tests stop here at
//!   the failpoints `verified-before-recipe-commit` and `recipe-committed-before-discard`.

use std::io::{BufRead, Read};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::prelude::*;

use crate::catalog::Catalog;
use crate::engine::recipe::Recipe;
use crate::engine::tar::FileEntry;
use crate::pipeline::{
    background_priority, failpoint, Batch, Body, JobCtx, Outcome, PipelineConfig, StageStats,
};
use crate::restore::{restore_layer_proving, ChunkReader};

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
    pub(crate) fn new(
        catalog: Arc<dyn Catalog>,
        cfg: PipelineConfig,
        stats: Arc<StageStats>,
    ) -> Commit {
        Commit {
            catalog,
            cfg,
            stats,
        }
    }

    fn verify_and_commit(
        &self,
        job: &JobCtx,
        recipe: &Recipe,
        files: &[FileEntry],
    ) -> Result<Outcome, String> {
        let reader = ChunkReader::new(self.catalog.clone(), self.cfg.containers.clone());
        let alternatives = job.alternatives.get().map_or(&[][..], Vec::as_slice);
        let mut verified = None;
        if self.reproduces(job, &reader, recipe)? {
            verified = Some(recipe.clone());
        } else {
            for encoding in alternatives {
                let alt = Recipe {
                    encoding: encoding.clone(),
                    ..recipe.clone()
                };
                if self.reproduces(job, &reader, &alt)? {
                    tracing::info!(
                        digest = %job.digest,
                        first = %recipe.encoding.label(),
                        encoding = %alt.encoding.label(),
                        "verify: an alternative encoder re-created the layer"
                    );
                    verified = Some(alt);
                    break;
                }
            }
        }
        let Some(recipe) = verified else {
            // The reason is a metric label: keep it free of per-layer values.
            tracing::error!(
                digest = %job.digest,
                encoding = %recipe.encoding.label(),
                alternatives = alternatives.len(),
                "verify: restore differs"
            );
            return Err(unproven(&recipe.encoding));
        };
        let recipe = &recipe;
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
            Some(hot) => hot
                .adopt(&job.digest, &job.path, recipe.restore_estimate())
                .unwrap_or_else(|e| {
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

    /// Whether `recipe` restores the layer exactly: the restored bytes are compared with the
    /// pushed blob as they come (a wrong encoder is given up at its first differing byte), and
    /// their digest with the blob's.
    fn reproduces(
        &self,
        job: &JobCtx,
        reader: &ChunkReader,
        recipe: &Recipe,
    ) -> Result<bool, String> {
        let mut pushed = std::io::BufReader::with_capacity(
            1 << 20,
            std::fs::File::open(&job.path).map_err(|e| format!("opening staged blob: {e}"))?,
        );
        let mut hasher = job.digest.algorithm().hasher();
        let mut n = 0u64;
        let mut expect = Vec::new();
        let restored = restore_layer_proving(recipe, reader, &mut |b| {
            expect.resize(b.len(), 0);
            match pushed.read_exact(&mut expect) {
                Ok(()) if expect == b => {}
                Err(e) if e.kind() != std::io::ErrorKind::UnexpectedEof => return Err(e),
                _ => return Err(std::io::Error::other(Differs)),
            }
            hasher.update(b);
            n += b.len() as u64;
            Ok(())
        });
        self.stats.verify_bytes.fetch_add(n, Ordering::Relaxed);
        match restored {
            Ok(()) => {}
            Err(e) if e.get_ref().is_some_and(|e| e.is::<Differs>()) => return Ok(false),
            Err(e) => {
                tracing::error!(digest = %job.digest, error = %e, "verify: restore failed");
                return Err("verify: restore failed".to_string());
            }
        }
        let rest = pushed
            .fill_buf()
            .map_err(|e| format!("reading staged blob: {e}"))?;
        Ok(rest.is_empty() && hasher.finish() == job.digest)
    }
}

/// A restore gave a byte the pushed blob does not have there.
#[derive(Debug)]
struct Differs;

impl std::fmt::Display for Differs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the restored bytes differ from the pushed ones")
    }
}

impl std::error::Error for Differs {}

/// The raw reason of a layer no encoder re-created in full. Ingest judges an encoder on the
/// layer's beginning (a multi-threaded libzstd frame on its first MiB): an encoder that wrote
/// that alike and the rest otherwise is most often another release of it (libzstd 1.5.1-1.5.2
/// at levels 1-2 write 1.5.7's bytes for a few MB), so the reason names the encoding. It is a
/// metric label: the encoding's label, nothing of the layer.
fn unproven(encoding: &crate::engine::recompress::Encoding) -> String {
    format!(
        "verify: the restored bytes do not match the digest: {} wrote the layer's beginning \
         alike but not all of it (another release of that encoder?)",
        encoding.label()
    )
}
