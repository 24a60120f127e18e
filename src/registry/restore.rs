//! Serving deduplicated blobs: from the hot tier when a copy is there; small blobs (configs,
//! tiny layers) restored whole in memory on the blocking pool, never queued behind large
//! restores; everything else through a single-flight restore that concurrent pulls share and
//! that spools at the re-encoder's pace (`stowage_actors::flight`), or, when the disk has no
//! room for a spool, a restore straight to the client. A manifest GET announces the pulls of
//! its layers, whose restores then start before the client asks for them.

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};

use stowage_actors::engine::recipe::Recipe;
use stowage_actors::engine::recompress::Reencoder;
use stowage_actors::flight::{Flight, FlightReader, Joined};
use stowage_actors::restore::{RestoreLayer, SpoolJob, Target};

use super::dedup::MetaCatalog;
use super::{blocking, Registry};
use crate::error::{RegistryError, Result};
use crate::meta::BlobState;
use crate::names::{Digest, RepoName};

/// Deduplicated blobs up to this size (configs, small layers) are restored on the blocking
/// pool as they are asked for, never queued behind the Restore actor's large layers.
pub const SMALL_RESTORE: u64 = 256 * 1024;

/// Restores announced by manifest GETs run at most this many per restore thread at a time;
/// beyond that a manifest GET announces nothing (its layers are restored when asked for).
pub const ANNOUNCED_PER_THREAD: usize = 2;

impl Registry {
    /// Stream a deduplicated blob (or a range of it).
    pub(super) async fn restore_stream(
        &self,
        d: &Digest,
        size: u64,
        range: Option<(u64, u64)>,
    ) -> Result<BoxStream<'static, io::Result<Bytes>>> {
        if let Some(body) = self.hot_stream(d, size, range).await? {
            return Ok(body);
        }
        if size <= SMALL_RESTORE {
            let recipe = self.recipe_of(d)?;
            return self.restore_small(d, size, recipe, range).await;
        }
        if let Some((start, _)) = range {
            // A range past the layer's start that no restore under way will reach: restore it
            // from the block boundary before it instead of the whole layer up to it.
            if start > 0 && !self.inner.flights.has(d) {
                let recipe = self.recipe_of(d)?;
                if Reencoder::resume(&recipe.encoding, start).is_some() {
                    return self.restore_direct_with(d, recipe, range);
                }
            }
        }
        let cache = &self.inner.layer_cache;
        let admitted = cache.admits(size, cache.note_pull(d));
        let (start, len) = range.unwrap_or((0, size));
        if !self.spool_room(size) {
            return self.restore_direct(d, range);
        }
        let joined = self
            .inner
            .flights
            .join(d, size)
            .map_err(|e| match e.kind() {
                io::ErrorKind::WouldBlock => RegistryError::TooManyRequests(e.to_string()),
                _ => e.into(),
            })?;
        let reader = match joined {
            Joined::Started(flight, reader) => {
                flight.wanted.store(admitted, Relaxed);
                self.start_flight(flight)?;
                reader
            }
            Joined::Attached(reader) => {
                if admitted {
                    reader.flight().wanted.store(true, Relaxed);
                }
                reader
            }
        };
        Ok(flight_stream(reader, start, start + len))
    }

    /// Forget restored layers whose announced pulls did not come.
    pub fn prune_flights(&self) {
        self.inner.flights.prune();
    }

    /// A new blob of `size` bytes was committed: a hot tier sized as a share of the store
    /// grows by that share at once. Blobs leave the store only through a collection pass,
    /// which recounts (`refresh_hot_budget`), so no periodic scan of the blobs is needed.
    pub(super) fn grow_hot_budget(&self, size: u64) {
        if let crate::config::HotBudget::Percent(_) = self.inner.cfg.restore_cache_bytes {
            let more = self.inner.cfg.restore_cache_bytes.resolve(size);
            self.inner.layer_cache.grow_budget(more);
        }
    }

    /// Set the hot tier's budget from the store's logical bytes now (when it is a share of
    /// them), evicting what no longer fits.
    pub async fn refresh_hot_budget(&self) -> Result<u64> {
        let inner = self.inner.clone();
        blocking(move || {
            let logical = {
                let t = inner.meta.read()?;
                inner.meta.counts(&t)?.logical_bytes
            };
            let budget = inner.cfg.restore_cache_bytes.resolve(logical);
            inner.layer_cache.set_budget(budget)?;
            Ok(budget)
        })
        .await
    }

    /// The hot copy of `d`, if there is one.
    async fn hot_stream(
        &self,
        d: &Digest,
        size: u64,
        range: Option<(u64, u64)>,
    ) -> Result<Option<BoxStream<'static, io::Result<Bytes>>>> {
        let Some(path) = self.inner.layer_cache.lookup(d) else {
            return Ok(None);
        };
        let (start, len) = range.unwrap_or((0, size));
        let opened = tokio::task::spawn_blocking(move || -> io::Result<std::fs::File> {
            let mut f = std::fs::File::open(path)?;
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(start))?;
            Ok(f)
        })
        .await
        .map_err(|e| RegistryError::Internal(e.to_string()))?;
        // Evicted since the lookup: restore it.
        let Ok(f) = opened else { return Ok(None) };
        self.inner.restore_stats.cache_hits.fetch_add(1, Relaxed);
        Ok(Some(super::file_stream(
            f,
            len,
            d,
            range,
            &self.inner.restore_stats,
        )))
    }

    fn recipe_of(&self, d: &Digest) -> Result<Recipe> {
        let t = self.inner.meta.read()?;
        self.inner.meta.recipe(&t, d)?.ok_or_else(|| {
            RegistryError::Internal(format!("{d} is deduplicated but has no recipe"))
        })
    }

    /// Whether the disk has room for a spool of `size` bytes and stays above the low-space
    /// mark. A pull must work on a full disk too: then it restores straight to the client.
    fn spool_room(&self, size: u64) -> bool {
        match self.inner.store.disk_space() {
            Ok((free, total)) => free > size && !super::low_space(free - size, total),
            Err(_) => false,
        }
    }

    /// Queue the restore of a new flight; its verified result goes to the hot tier when the
    /// flight is wanted there by then.
    fn start_flight(&self, flight: Arc<Flight>) -> Result<()> {
        let flights = self.inner.flights.clone();
        let fail = |e: &RegistryError| {
            flights.finish(&flight, Err(e.to_string()), |_| false);
        };
        let restore = match self.inner.restore.as_ref() {
            Some(r) => r,
            None => {
                let e = RegistryError::Internal("restore actor not running".into());
                fail(&e);
                return Err(e);
            }
        };
        let recipe = match self.recipe_of(&flight.digest) {
            Ok(r) => r,
            Err(e) => {
                fail(&e);
                return Err(e);
            }
        };
        let (cache, f2, d) = (
            self.inner.layer_cache.clone(),
            flight.clone(),
            flight.digest.clone(),
        );
        let cost = recipe.restore_estimate();
        let adopt = Box::new(move |path: &std::path::Path| {
            if !f2.wanted.load(Relaxed) {
                return false;
            }
            let kept = std::fs::File::open(path)
                .and_then(|f| f.sync_all())
                .and_then(|()| cache.adopt(&d, path, cost));
            match kept {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(digest = %d, error = %e, "could not keep the restored layer hot");
                    false
                }
            }
        });
        restore.do_send(RestoreLayer {
            recipe: Arc::new(recipe),
            digest: flight.digest.clone(),
            target: Target::Spool(SpoolJob::new(flight, flights.clone(), adopt)),
        });
        Ok(())
    }

    /// Restore straight to one client (no spool).
    fn restore_direct(
        &self,
        d: &Digest,
        range: Option<(u64, u64)>,
    ) -> Result<BoxStream<'static, io::Result<Bytes>>> {
        let recipe = self.recipe_of(d)?;
        self.restore_direct_with(d, recipe, range)
    }

    fn restore_direct_with(
        &self,
        d: &Digest,
        recipe: Recipe,
        range: Option<(u64, u64)>,
    ) -> Result<BoxStream<'static, io::Result<Bytes>>> {
        let restore = self
            .inner
            .restore
            .as_ref()
            .ok_or_else(|| RegistryError::Internal("restore actor not running".into()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(stowage_actors::restore::RESTORE_CHANNEL);
        restore.do_send(RestoreLayer {
            recipe: Arc::new(recipe),
            digest: d.clone(),
            target: Target::Direct { range, tx },
        });
        Ok(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
        .boxed())
    }

    /// Restore a small blob whole in memory, check its digest, then serve it (or its range).
    /// A mismatch fails the request before any byte is sent (invariant 1).
    async fn restore_small(
        &self,
        d: &Digest,
        size: u64,
        recipe: Recipe,
        range: Option<(u64, u64)>,
    ) -> Result<BoxStream<'static, io::Result<Bytes>>> {
        let inner = self.inner.clone();
        let d2 = d.clone();
        let bytes = blocking(move || {
            let reader = stowage_actors::restore::ChunkReader::new(
                Arc::new(MetaCatalog(inner.meta.clone())),
                inner.containers.clone(),
            );
            let mut out = Vec::with_capacity(size as usize);
            let stats = &inner.restore_stats;
            let restored = stowage_actors::restore::restore_layer_timed(
                &recipe,
                &reader,
                &stats.times,
                &mut |b| {
                    out.extend_from_slice(b);
                    Ok(())
                },
            );
            if let Err(e) = restored {
                stats.failures.fetch_add(1, Relaxed);
                return Err(RegistryError::Internal(format!("restoring {d2}: {e}")));
            }
            let t = std::time::Instant::now();
            let got = Digest::of(d2.algorithm(), &out);
            stats
                .times
                .hash
                .fetch_add(t.elapsed().as_nanos() as u64, Relaxed);
            if got != d2 {
                stats.mismatches.fetch_add(1, Relaxed);
                tracing::error!(digest = %d2, restored = %got, "restored blob does not match its digest; request failed");
                return Err(RegistryError::Internal(format!(
                    "restored bytes of {d2} do not match the digest"
                )));
            }
            stats.layers.fetch_add(1, Relaxed);
            Ok(Bytes::from(out))
        })
        .await?;
        let body = match range {
            Some((start, len)) => bytes.slice(start as usize..(start + len) as usize),
            None => bytes,
        };
        self.inner
            .restore_stats
            .bytes
            .fetch_add(body.len() as u64, Relaxed);
        Ok(futures_util::stream::once(async move { Ok(body) }).boxed())
    }

    /// A manifest was fetched from `repo`: start restoring its layers that are deduplicated,
    /// not hot and not small, so the blob GETs that follow attach to work under way. Bounded:
    /// at most [`ANNOUNCED_PER_THREAD`] restores per restore thread run or wait at a time, and
    /// only while the disk has room. An index announces nothing (its platform's manifest will).
    pub fn announce_pulls(&self, repo: &RepoName, media_type: &str, body: &Bytes) {
        if self.inner.restore.is_none() {
            return;
        }
        let Ok(parsed) = super::manifest::parse(Some(media_type), body) else {
            return;
        };
        if parsed.blobs.is_empty() {
            return;
        }
        // Synchronous, so that the blob GETs that follow find the restores started: a read
        // transaction and a few empty files.
        let found = (|| -> Result<Vec<(Digest, u64)>> {
            let m = &self.inner.meta;
            let t = m.read()?;
            let mut out = Vec::new();
            for d in parsed.blobs {
                // Linked here (repository isolation), deduplicated, not small.
                if !m.blob_linked(&t, repo, &d)? {
                    continue;
                }
                if let Some(rec) = m.blob(&t, &d)? {
                    if matches!(rec.state, BlobState::Deduplicated { .. })
                        && rec.size > SMALL_RESTORE
                    {
                        out.push((d, rec.size));
                    }
                }
            }
            Ok(out)
        })();
        let Ok(found) = found else { return };
        let cap = ANNOUNCED_PER_THREAD * self.inner.cfg.restore_threads.max(1);
        for (d, size) in found {
            if self.inner.layer_cache.lookup(&d).is_some() {
                continue;
            }
            if self.inner.flights.running() >= cap || !self.spool_room(size) {
                break;
            }
            match self.inner.flights.expect(&d, size) {
                Ok(Some(flight)) => {
                    self.inner.restore_stats.announced.fetch_add(1, Relaxed);
                    if let Err(e) = self.start_flight(flight) {
                        tracing::warn!(digest = %d, error = %e, "could not start an announced restore");
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(digest = %d, error = %e, "no announced restore");
                    break;
                }
            }
        }
    }
}

/// A reader of a flight as a response body, from `start` to `end`.
fn flight_stream(
    reader: FlightReader,
    start: u64,
    end: u64,
) -> BoxStream<'static, io::Result<Bytes>> {
    futures_util::stream::unfold(Some((reader, start)), move |st| async move {
        let (mut reader, pos) = st?;
        match reader.read(pos, end).await {
            Ok(Some(b)) => {
                let next = pos + b.len() as u64;
                Some((Ok(b), Some((reader, next))))
            }
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    })
    .boxed()
}
