//! Chunk: cuts file contents and the layer's inline stream into content-defined chunks
//! (FastCDC, named by SHA-1 with collision detection) and builds the layer's recipe, one
//! [`RecipeBuilder`] per layer in flight.
//!
//! - **In:** `Body::Segments` and `Body::EndOfLayer`, from Extract.
//! - **Out:** `Body::Chunks` (the chunks each batch completed), then one `Body::Finished`
//!   with the layer's recipe and file index (or why there is none), to Similarity.
//! - **Bounds:** one thread ([`SyncArbiter`]), at nice 10. Its input is edge 0 (at most
//!   [`QUEUE_DEPTH`](crate::pipeline::QUEUE_DEPTH) batches from Extract); towards Similarity it
//!   keeps at most that many in flight (edge 1) and blocks when it has that many.
//! - **Failure:** an `EndOfLayer` that carries Extract's failure, or a recipe that cannot be
//!   built, becomes `Finished(Err(reason))`; Commit then keeps the layer raw with that reason.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::prelude::*;

use crate::engine::frame_delta;
use crate::engine::recipe::{NewChunk, RecipeBuilder};
use crate::engine::tar::TarSink;
use crate::extract::Segment;
use crate::pipeline::{
    background_priority, Batch, Body, Bounded, JobCtx, PipelineConfig, StageStats,
};

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

/// A layer's recipe builder: a layer kept as its zstd frames whose frames may become frame
/// deltas (which take a whole frame) gets a chunk per frame, up to
/// [`frame_delta::MAX_FRAME_CHUNK`], instead of frames cut by content.
fn builder(cfg: &PipelineConfig, job: &JobCtx) -> RecipeBuilder {
    let b = RecipeBuilder::new(cfg.chunk);
    if job.frame_delta_encoder(&cfg.similarity).is_some() {
        b.whole_files_up_to(frame_delta::MAX_FRAME_CHUNK as u64)
    } else {
        b
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
                    .or_insert_with(|| builder(&self.cfg, &b.job));
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
                    .unwrap_or_else(|| builder(&self.cfg, &b.job));
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
    pub(crate) fn new(next: Bounded, cfg: PipelineConfig, stats: Arc<StageStats>) -> Chunk {
        Chunk {
            next,
            cfg,
            builders: HashMap::new(),
            stats,
        }
    }

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
