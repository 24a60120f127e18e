//! What reaches the bucket with the store on an object store, beyond the containers: blobs
//! kept whole (staged, or raw) as objects `blobs/<algorithm>/<hex>`, and checkpoints of the
//! metadata journal (see `meta::journal`, `meta::checkpoint`).
//!
//! A pushed blob is uploaded before the commit that links it, so an acknowledged blob is in the
//! bucket whether or not it is deduplicated yet; once its recipe is committed the object goes
//! (the chunks hold it). A node that lacks the local copy of a blob kept whole fetches it from
//! the bucket into `staging/`. Collected objects are dropped through the bucket's trash
//! (deleted after the collection grace period), so a replica that has not caught up still
//! finds them; the whole copies of deduplicated blobs go at once (they would double the
//! bucket meanwhile), and a replica that misses one catches up and restores the blob.

use std::collections::HashSet;
use std::io;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use stowage_actors::storage::blocking::BlockingBucket;
use stowage_actors::storage::containers::Containers;
use stowage_actors::storage::trash;

use super::{blocking, Inner, Registry};
use crate::error::{RegistryError, Result};
use crate::meta::{BlobState, Meta};
use crate::names::{Digest, UploadId};

/// A checkpoint is written once `checkpoint_entries` journal entries follow the last, or once
/// any entry is this old without one.
pub const CHECKPOINT_AGE: Duration = Duration::from_secs(600);

/// The object key of blob `d` kept whole.
pub fn blob_key(d: &Digest) -> String {
    format!("blobs/{}/{}", d.algorithm().as_str(), d.hex())
}

fn store_err(what: &str, e: io::Error) -> RegistryError {
    RegistryError::ObjectStore(format!("{what}: {e}"))
}

impl Inner {
    /// Uploads the file at `path`, the bytes of blob `d`, to the bucket (nothing to do without
    /// one).
    pub(crate) fn publish_blob(&self, d: &Digest, path: &Path) -> Result<()> {
        let Some(b) = self.containers.blocking() else {
            return Ok(());
        };
        let (key, path) = (blob_key(d), path.to_path_buf());
        b.call(|b| async move { b.put_file(&key, &path).await })
            .map_err(|e| store_err("uploading a blob", e))?;
        Ok(())
    }

    /// Drops the objects of blobs `ds`, collected: once a grace period has passed (a replica
    /// may still serve them meanwhile).
    pub(crate) fn unpublish_blobs(&self, ds: &[Digest]) -> Result<()> {
        let Some(b) = self.containers.blocking() else {
            return Ok(());
        };
        let keys: Vec<String> = ds.iter().map(blob_key).collect();
        trash::defer(b, &keys).map_err(|e| store_err("dropping blob objects", e))
    }

    /// Drops the objects of blobs `ds` whose recipes hold them now, at once: they would double
    /// the bucket for the grace period. A replica that has not applied the recipe yet and finds
    /// the object gone catches up and restores instead (see `Registry::get_blob`).
    pub(crate) fn drop_deduplicated(&self, ds: &[Digest]) -> Result<()> {
        let Some(b) = self.containers.blocking() else {
            return Ok(());
        };
        if ds.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = ds.iter().map(blob_key).collect();
        b.call(|b| async move { b.delete(&keys).await })
            .map(|_| ())
            .map_err(|e| store_err("dropping blob objects", e))
    }

    /// Makes sure blob `d`'s whole copy is in `staging/`, fetching it from the bucket when only
    /// the bucket has it. False when neither has it.
    pub(crate) fn fetch_blob(&self, d: &Digest) -> Result<bool> {
        let path = self.store.blob_path(d);
        if path.exists() {
            return Ok(true);
        }
        let Some(b) = self.containers.blocking() else {
            return Ok(false);
        };
        let key = blob_key(d);
        let data = match b.call(|b| async move { b.get(&key).await }) {
            Ok(data) => data,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(store_err("fetching a blob", e)),
        };
        let mut h = d.algorithm().hasher();
        h.update(&data);
        let got = h.finish();
        if got != *d {
            return Err(RegistryError::Internal(format!(
                "the bucket's copy of {d} hashes to {got}"
            )));
        }
        self.store
            .stage_with(d, &mut |f| io::Write::write_all(f, &data))?;
        Ok(true)
    }
}

/// A replica's progress following the writer's journal.
#[derive(Debug, Default)]
pub struct FollowStats {
    /// The last entry applied.
    pub applied: std::sync::atomic::AtomicU64,
    /// When the bucket was last read without error (Unix seconds).
    pub synced: std::sync::atomic::AtomicU64,
    pub failures: std::sync::atomic::AtomicU64,
}

/// How often a replica looks for new journal entries.
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// The object of the chunk of upload `id` that starts at byte `start`.
fn upload_chunk_key(id: &UploadId, start: u64) -> String {
    format!("uploads/{id}/{start:020}")
}

impl Inner {
    /// Uploads bytes `range` of upload `id`'s file, acknowledged by the commit that follows,
    /// as an object of their own (nothing to do without a bucket).
    pub(crate) fn publish_upload_chunk(&self, id: &UploadId, range: Range<u64>) -> Result<()> {
        let Some(b) = self.containers.blocking() else {
            return Ok(());
        };
        if range.is_empty() {
            return Ok(());
        }
        let (key, path) = (
            upload_chunk_key(id, range.start),
            self.store.upload_path(id),
        );
        b.call(|b| async move { b.put_file_range(&key, &path, Some(range)).await })
            .map_err(|e| store_err("uploading an upload's chunk", e))?;
        Ok(())
    }

    /// The chunk objects of upload `id`: (start, size), in order.
    fn upload_chunks(&self, b: &BlockingBucket, id: &UploadId) -> Result<Vec<(u64, u64)>> {
        let under = format!("uploads/{id}");
        let listed = b
            .call(|b| async move { b.list(&under).await })
            .map_err(|e| store_err("listing an upload's chunks", e))?;
        let mut out: Vec<(u64, u64)> = listed
            .iter()
            .filter_map(|l| Some((l.key.rsplit('/').next()?.parse().ok()?, l.size)))
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// Makes upload `id`'s bytes (`size` of them, digest `d`) the object of blob `d`: a copy
    /// inside the store when one chunk object holds them all (a push in one PATCH or PUT:
    /// nothing sent twice), else an upload of the local file.
    pub(crate) fn publish_upload_as_blob(
        &self,
        id: &UploadId,
        d: &Digest,
        size: u64,
    ) -> Result<()> {
        let Some(b) = self.containers.blocking() else {
            return Ok(());
        };
        if self.upload_chunks(b, id)? == [(0, size)] {
            let (from, to) = (upload_chunk_key(id, 0), blob_key(d));
            b.call(|b| async move { b.copy(&from, &to).await })
                .map_err(|e| store_err("copying an upload to its blob", e))?;
            return Ok(());
        }
        self.publish_blob(d, &self.store.upload_path(id))
    }

    /// Drops upload `id`'s chunk objects (its session is over); a failure leaves them to
    /// garbage collection.
    pub(crate) fn drop_upload_chunks(&self, id: &UploadId) {
        let Some(b) = self.containers.blocking() else {
            return;
        };
        let r = self.upload_chunks(b, id).and_then(|chunks| {
            let keys: Vec<String> = chunks
                .iter()
                .map(|(s, _)| upload_chunk_key(id, *s))
                .collect();
            b.call(|b| async move { b.delete(&keys).await })
                .map_err(|e| store_err("dropping an upload's chunks", e))
        });
        if let Err(e) = r {
            tracing::warn!(upload = %id, error = %e, "dropping an upload's chunk objects failed");
        }
    }

    /// Writes upload `id`'s file (`offset` bytes acknowledged) from its chunk objects: a session
    /// that lives on after its node was lost. False when the bucket does not hold them all.
    pub(crate) fn restore_upload(&self, id: &UploadId, offset: u64) -> Result<bool> {
        let Some(b) = self.containers.blocking() else {
            return Ok(false);
        };
        let chunks = self.upload_chunks(b, id)?;
        let mut at = 0;
        for (start, size) in &chunks {
            if *start != at {
                return Ok(false);
            }
            at += size;
        }
        if at < offset {
            return Ok(false);
        }
        self.store.create_upload(id)?;
        let mut f = self.store.open_upload_at(id, 0)?;
        for (start, _) in chunks {
            let key = upload_chunk_key(id, start);
            let data = b
                .call(|b| async move { b.get(&key).await })
                .map_err(|e| store_err("fetching an upload's chunk", e))?;
            io::Write::write_all(&mut f, &data)?;
        }
        f.set_len(offset)?;
        f.sync_all()?;
        Ok(true)
    }
}

impl Registry {
    /// Whether this node follows another's store (pulls only).
    pub fn is_replica(&self) -> bool {
        self.inner.cfg.storage.replica
    }

    /// A replica: applies the journal entries the writer added since the last call.
    pub async fn follow(&self) -> Result<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let inner = self.inner.clone();
        let r = blocking(move || {
            let Some(b) = inner.containers.blocking() else {
                return Ok((0, 0));
            };
            let n = inner.meta.catch_up(b, &|_| {})?;
            Ok((n, inner.meta.journal_seq()?))
        })
        .await;
        let f = &self.inner.follow;
        match r {
            Ok((n, seq)) => {
                f.applied.store(seq, Relaxed);
                f.synced.store(crate::meta::now(), Relaxed);
                Ok(n)
            }
            Err(e) => {
                f.failures.fetch_add(1, Relaxed);
                Err(e)
            }
        }
    }

    pub fn follow_stats(&self) -> Option<&FollowStats> {
        self.is_replica().then_some(&self.inner.follow)
    }

    /// The metadata journal's position and counters (None without a bucket).
    pub fn journal_reading(&self) -> Option<crate::meta::journal::JournalReading> {
        self.inner.meta.journal_reading()
    }

    /// Writes a metadata checkpoint when enough journal entries, or old enough ones, follow the
    /// last (with the store on an object store; nothing to do otherwise).
    pub async fn maybe_checkpoint(&self, last: &mut Instant) -> Result<()> {
        let Some(r) = self.inner.meta.journal_reading() else {
            return Ok(());
        };
        if r.since_checkpoint == 0 {
            *last = Instant::now();
            return Ok(());
        }
        let every = self.inner.cfg.storage.checkpoint_entries;
        if r.since_checkpoint < every && last.elapsed() < CHECKPOINT_AGE {
            return Ok(());
        }
        let inner = self.inner.clone();
        let done = blocking(move || inner.meta.checkpoint()).await?;
        if let Some((seq, bytes)) = done {
            tracing::info!(seq, bytes, "metadata checkpoint written");
        }
        *last = Instant::now();
        Ok(())
    }
}

/// The blob objects in the bucket: (digest, when written); None without a bucket.
fn blob_objects(containers: &Containers) -> Result<Option<Vec<(Digest, SystemTime)>>> {
    let Some(b) = containers.blocking() else {
        return Ok(None);
    };
    let listed = b
        .call(|b| async move { b.list("blobs").await })
        .map_err(|e| store_err("listing blob objects", e))?;
    Ok(Some(
        listed
            .into_iter()
            .filter_map(|l| {
                let rest = l.key.strip_prefix("blobs/")?;
                let (alg, hex) = rest.split_once('/')?;
                let d = crate::names::parse_digest(&format!("{alg}:{hex}")).ok()?;
                Some((d, l.modified))
            })
            .collect(),
    ))
}

/// Blobs kept whole whose object is missing from the bucket (for fsck; empty without one).
pub(crate) fn missing_blobs(meta: &Meta, containers: &Containers) -> Result<Vec<Digest>> {
    let Some(objects) = blob_objects(containers)? else {
        return Ok(Vec::new());
    };
    let present: HashSet<Digest> = objects.into_iter().map(|(d, _)| d).collect();
    let t = meta.read()?;
    Ok(meta
        .all_blobs(&t)?
        .into_iter()
        .filter(|(d, rec)| {
            !matches!(rec.state, BlobState::Deduplicated { .. }) && !present.contains(d)
        })
        .map(|(d, _)| d)
        .collect())
}

/// Garbage collection's sweep of blob objects no blob needs: those of deduplicated blobs (a
/// crash between the recipe's commit and the object's removal), and those with no record
/// written more than `grace` ago (an upload whose link never committed). Returns how many went.
pub(crate) fn sweep_blob_objects(inner: &Arc<Inner>, grace: Duration) -> Result<u64> {
    let (Some(objects), Some(b)) = (
        blob_objects(&inner.containers)?,
        inner.containers.blocking(),
    ) else {
        return Ok(0);
    };
    let trashed = trash::pending(b).map_err(|e| store_err("reading the trash", e))?;
    let m = &inner.meta;
    let t = m.read()?;
    let now = SystemTime::now();
    let (mut deduplicated, mut unknown) = (Vec::new(), Vec::new());
    for (d, written) in objects {
        if trashed.contains(&blob_key(&d)) {
            continue;
        }
        let old = now.duration_since(written).unwrap_or_default() > grace;
        match m.blob(&t, &d)?.map(|r| r.state) {
            Some(BlobState::Deduplicated { .. }) => deduplicated.push(d),
            None if old => unknown.push(d),
            _ => {}
        }
    }
    drop(t);
    // Chunks of upload sessions no record names any more, older than the grace period.
    let uploads = b
        .call(|b| async move { b.list("uploads").await })
        .map_err(|e| store_err("listing upload chunks", e))?;
    let t = m.read()?;
    let mut stray = Vec::new();
    for l in uploads {
        let Some(id) = l
            .key
            .split('/')
            .nth(1)
            .and_then(|s| s.parse::<UploadId>().ok())
        else {
            continue;
        };
        let old = now.duration_since(l.modified).unwrap_or_default() > grace;
        if old && m.upload(&t, &id)?.is_none() {
            stray.push(l.key);
        }
    }
    drop(t);
    let strays = stray.len();
    b.call(|b| async move { b.delete(&stray).await })
        .map_err(|e| store_err("dropping stray upload chunks", e))?;
    inner.drop_deduplicated(&deduplicated)?;
    inner.unpublish_blobs(&unknown)?;
    Ok((deduplicated.len() + unknown.len() + strays) as u64)
}
