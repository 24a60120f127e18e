//! A [`Bucket`] for synchronous callers: the pipeline's threads, the restore's readers and the
//! metadata journal block on object-store requests, which run on a small runtime of their own
//! (so a caller on an async thread never blocks that thread's runtime on itself).

use std::io;
use std::sync::Arc;

use super::{Bucket, StorageError};

pub struct BlockingBucket {
    bucket: Arc<Bucket>,
    /// Always there but while dropping (see `Drop`).
    rt: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for BlockingBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingBucket")
            .field("kind", &self.bucket.kind())
            .finish()
    }
}

impl Drop for BlockingBucket {
    /// The registry may be dropped on an async thread, where a runtime may not block to stop.
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// An object-store error as an I/O error (a missing object is `NotFound`).
pub fn storage_io(e: StorageError) -> io::Error {
    match e {
        StorageError::NotFound(k) => io::Error::new(
            io::ErrorKind::NotFound,
            format!("object {k} not in the bucket"),
        ),
        StorageError::Io(_, e) => e,
        e => io::Error::other(e.to_string()),
    }
}

impl BlockingBucket {
    pub fn new(bucket: Arc<Bucket>) -> io::Result<BlockingBucket> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("stowage-storage")
            .enable_all()
            .build()?;
        Ok(BlockingBucket {
            bucket,
            rt: Some(rt),
        })
    }

    pub fn bucket(&self) -> &Arc<Bucket> {
        &self.bucket
    }

    /// The storage runtime (for requests started and not waited for).
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("the storage runtime")
    }

    /// Runs `f(bucket)` on the storage runtime and waits for it (from any thread).
    pub fn call<T, F, Fut>(&self, f: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Bucket>) -> Fut,
        Fut: std::future::Future<Output = Result<T, StorageError>> + Send + 'static,
    {
        let fut = f(self.bucket.clone());
        futures_executor::block_on(self.runtime().spawn(fut))
            .map_err(|e| io::Error::other(format!("storage task: {e}")))?
            .map_err(storage_io)
    }
}
