//! Upload: the async actor, on the server's event loop, between the upload path and the sync
//! stages. It queues committed blobs and feeds Extract one layer at a time, in arrival order,
//! so the sync stages never hold more than one layer's worth of batches per edge.
//!
//! - **In:** [`BlobCommitted`], from [`Pipeline::dedup`](crate::pipeline::Pipeline::dedup).
//! - **Out:** [`Dedup`] to Extract, the next one only once Extract has answered the previous
//!   (it answers when it has read the whole layer).
//! - **Bounds:** its queue is not bounded in length but holds one small message per waiting
//!   blob (the blob itself stays in staging); its length is the `queued` gauge. Blobs not yet
//!   deduplicated after a crash are found again from the metadata at start-up, so the queue
//!   itself need not be durable.
//! - **Failure:** if Extract is gone, the [`Dedup`] and its reply channel are dropped and
//!   [`Pipeline::dedup`](crate::pipeline::Pipeline::dedup) answers `Raw` ("pipeline dropped the
//!   layer"); if Upload itself is gone, it answers `Raw` ("pipeline stopped"). Neither records
//!   the layer as kept raw: it stays pending.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::prelude::*;

use crate::digest::Digest;
use crate::extract::{Dedup, Extract};
use crate::pipeline::{LayerPolicy, Reply, StageStats};

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
/// If Extract is gone, the layer's outcome is "pipeline dropped the layer" (it stays pending).
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
    pub(crate) fn new(extract: Addr<Extract>, stats: Arc<StageStats>) -> Upload {
        Upload {
            extract,
            queue: VecDeque::new(),
            busy: false,
            stats,
        }
    }

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
