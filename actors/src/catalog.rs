//! The metadata side of the pipeline: the [`Catalog`] trait the actors (and the restore path)
//! read and commit through, and the [`SealedContainer`] it commits. The server implements it
//! over LMDB; the tests implement it in memory.
//!
//! It is a module of its own so that `pipeline` and `restore`, which both use it, do not import
//! each other.

use std::io;

use crate::digest::Digest;
use crate::engine::chunk::ChunkId;
use crate::engine::container::ChunkLoc;
use crate::engine::recipe::Recipe;
use crate::engine::tar::FileEntry;

/// The metadata side the pipeline needs, implemented by the server over LMDB.
pub trait Catalog: Send + Sync + 'static {
    fn chunk(&self, id: &ChunkId) -> io::Result<Option<ChunkLoc>>;
    /// [`Catalog::chunk`] of each of `ids`, in order (the server looks them up in one read
    /// transaction: a restore reads thousands of small chunks a layer).
    fn chunks(&self, ids: &[ChunkId]) -> io::Result<Vec<Option<ChunkLoc>>> {
        ids.iter().map(|id| self.chunk(id)).collect()
    }
    /// The feature index: for each super-feature `i`, the chunk registered under `(i, sf[i])`.
    fn similar(&self, sf: &[u64]) -> io::Result<Vec<Option<ChunkId>>>;
    fn allocate_container(&self) -> io::Result<u64>;
    /// Record a sealed container's chunks, the bases its deltas depend on and the features of
    /// its whole chunks, in one transaction.
    fn commit_container(&self, sealed: &SealedContainer) -> io::Result<()>;
    /// Store the verified recipe and file index, count the chunk references and mark the blob
    /// deduplicated, in one transaction.
    fn commit_recipe(&self, blob: &Digest, recipe: &Recipe, files: &[FileEntry]) -> io::Result<()>;
    /// Keep the blob raw, for `reason`.
    fn keep_raw(&self, blob: &Digest, reason: &str) -> io::Result<()>;
}

/// A sealed container, as committed to the catalog.
#[derive(Debug, Default)]
pub struct SealedContainer {
    pub id: u64,
    pub entries: Vec<(ChunkId, ChunkLoc)>,
    /// (delta chunk, its base) for every delta in the container: the base must not be removed
    /// while the delta exists.
    pub bases: Vec<(ChunkId, ChunkId)>,
    /// Super-features of the whole chunks that may serve as future bases.
    pub features: Vec<(ChunkId, Vec<u64>)>,
}
