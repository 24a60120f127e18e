//! Sealed containers where they live: files in `<root>/containers/`, and, with an object
//! store, objects `containers/<id>` in the bucket with the local directory only a cache.
//!
//! With a bucket, a sealed container is uploaded ([`Containers::publish`]) before the commit
//! that makes its chunks reachable, so no committed chunk exists only on this disk; a read of
//! a container not in the cache fetches the whole object (a few MiB) into it, by a temporary
//! name then a rename, one download per container however many readers want it. The cache
//! keeps at most `cache_bytes`, dropping the least recently used published containers (a file
//! open in a reader stays readable after its removal). Object keys use the file names
//! (`containers/<16 hex digits>`), so a local directory and a bucket hold the same layout.
//!
//! The calls block: they serve the pipeline's threads and the restore's readers, which are
//! synchronous (see [`BlockingBucket`]).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use super::blocking::{storage_io, BlockingBucket};
use super::Bucket;
use crate::engine::container::{container_id, container_path};

/// Containers a restore's prefetch downloads at once.
const PREFETCHES: usize = 4;

/// The object key of container `id`.
pub fn key(id: u64) -> String {
    format!("containers/{id:016x}")
}

pub struct Containers {
    dir: PathBuf,
    remote: Option<Remote>,
}

impl std::fmt::Debug for Containers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containers")
            .field("dir", &self.dir)
            .field(
                "bucket",
                &self.remote.as_ref().map(|r| r.bucket.bucket().kind()),
            )
            .finish()
    }
}

struct Remote {
    bucket: Arc<BlockingBucket>,
    /// Prefetches downloading at once.
    prefetches: Arc<tokio::sync::Semaphore>,
    cache_bytes: u64,
    cache: Mutex<Cache>,
    fetched: Condvar,
}

#[derive(Default)]
struct Cache {
    /// Published containers on disk: id -> (bytes, last use).
    files: HashMap<u64, (u64, u64)>,
    bytes: u64,
    clock: u64,
    /// Downloads under way.
    fetching: std::collections::HashSet<u64>,
    /// Counters for the metrics.
    hits: u64,
    misses: u64,
    evicted: u64,
    prefetched: u64,
}

/// A reading of the cache's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheReading {
    pub files: u64,
    pub bytes: u64,
    pub capacity: u64,
    pub hits: u64,
    pub misses: u64,
    pub evicted: u64,
    /// Downloads started ahead of a reader.
    pub prefetched: u64,
}

impl Containers {
    /// Containers in `dir` only.
    pub fn local(dir: &Path) -> Containers {
        Containers {
            dir: dir.to_path_buf(),
            remote: None,
        }
    }

    /// Containers in `bucket`, with `dir` a cache of at most `cache_bytes`. The files already
    /// in `dir` are taken as cached (they were published before they were committed).
    pub fn with_bucket(
        dir: &Path,
        bucket: Arc<BlockingBucket>,
        cache_bytes: u64,
    ) -> io::Result<Containers> {
        std::fs::create_dir_all(dir)?;
        let mut cache = Cache::default();
        let mut found: Vec<(std::time::SystemTime, u64, u64)> = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if let Some(id) = container_id(&e.path()) {
                let md = e.metadata()?;
                found.push((md.modified().unwrap_or(std::time::UNIX_EPOCH), id, md.len()));
            }
        }
        found.sort();
        for (_, id, len) in found {
            cache.clock += 1;
            cache.files.insert(id, (len, cache.clock));
            cache.bytes += len;
        }
        let c = Containers {
            dir: dir.to_path_buf(),
            remote: Some(Remote {
                bucket: bucket.clone(),
                prefetches: Arc::new(tokio::sync::Semaphore::new(PREFETCHES)),
                cache_bytes,
                cache: Mutex::new(cache),
                fetched: Condvar::new(),
            }),
        };
        // Fail at start, not at the first seal, when the bucket cannot be reached or read.
        bucket
            .call(|b| async move { b.head("containers/.reachable").await })
            .map_err(|e| io::Error::other(format!("the bucket cannot be reached: {e}")))?;
        Ok(c)
    }

    /// The local directory (the store, or the cache).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, id: u64) -> PathBuf {
        container_path(&self.dir, id)
    }

    /// The container files in the local directory, by id (other files are left out).
    pub fn local_files(&self) -> io::Result<Vec<(u64, PathBuf)>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let path = e?.path();
            if let Some(id) = container_id(&path) {
                out.push((id, path));
            }
        }
        Ok(out)
    }

    pub fn bucket(&self) -> Option<&Arc<Bucket>> {
        self.remote.as_ref().map(|r| r.bucket.bucket())
    }

    /// The bucket, for synchronous callers (None for a local directory).
    pub fn blocking(&self) -> Option<&Arc<BlockingBucket>> {
        self.remote.as_ref().map(|r| &r.bucket)
    }

    /// Makes sealed container `id` durable where it must be before it is committed: uploads
    /// it to the bucket (nothing to do for a local directory: it is fsynced).
    pub fn publish(&self, id: u64) -> io::Result<()> {
        let Some(r) = &self.remote else {
            return Ok(());
        };
        let path = self.path(id);
        let size = r
            .bucket
            .call(|b| async move { b.put_file(&key(id), &path).await })?;
        self.cached(id, size);
        Ok(())
    }

    /// Records `id` (of `size` bytes) as in the cache, then trims the cache to its budget.
    fn cached(&self, id: u64, size: u64) {
        let Some(r) = &self.remote else { return };
        let mut evict = Vec::new();
        {
            let mut c = r.cache.lock().expect("cache lock");
            c.clock += 1;
            let clock = c.clock;
            if let Some((old, _)) = c.files.insert(id, (size, clock)) {
                c.bytes -= old;
            }
            c.bytes += size;
            while c.bytes > r.cache_bytes && c.files.len() > 1 {
                let (&victim, &(len, _)) = c
                    .files
                    .iter()
                    .filter(|(v, _)| **v != id)
                    .min_by_key(|(_, (_, used))| *used)
                    .expect("more than one file");
                c.files.remove(&victim);
                c.bytes -= len;
                c.evicted += 1;
                evict.push(victim);
            }
        }
        for victim in evict {
            if let Err(e) = std::fs::remove_file(self.path(victim)) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(container = victim, error = %e, "dropping a cached container failed");
                }
            }
        }
    }

    /// Opens container `id` for reading, fetching it from the bucket if it is not here.
    pub fn open(&self, id: u64) -> io::Result<File> {
        match File::open(self.path(id)) {
            Ok(f) => {
                if let Some(r) = &self.remote {
                    let mut c = r.cache.lock().expect("cache lock");
                    c.clock += 1;
                    let clock = c.clock;
                    c.hits += 1;
                    if let Some(e) = c.files.get_mut(&id) {
                        e.1 = clock;
                    }
                }
                Ok(f)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && self.remote.is_some() => {
                self.fetch(id)?;
                File::open(self.path(id))
            }
            Err(e) => Err(e),
        }
    }

    /// Starts downloading container `id` into the cache if it is neither there nor on its way,
    /// and returns at once; a reader that needs it meanwhile waits for that download. Without
    /// a bucket, nothing to do.
    pub fn prefetch(self: &Arc<Self>, id: u64) {
        let Some(r) = &self.remote else { return };
        {
            let mut c = r.cache.lock().expect("cache lock");
            if c.files.contains_key(&id) || c.fetching.contains(&id) || self.path(id).exists() {
                return;
            }
            c.fetching.insert(id);
            c.prefetched += 1;
        }
        let (this, permits) = (self.clone(), r.prefetches.clone());
        r.bucket.runtime().spawn(async move {
            let _permit = permits.acquire_owned().await;
            let bucket = this
                .remote
                .as_ref()
                .expect("a bucket")
                .bucket
                .bucket()
                .clone();
            let fetched = match bucket.get(&key(id)).await {
                Ok(data) => tokio::task::spawn_blocking({
                    let this = this.clone();
                    move || this.keep_fetched(id, &data)
                })
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e.to_string()))),
                Err(e) => Err(storage_io(e)),
            };
            let r = this.remote.as_ref().expect("a bucket");
            let mut c = r.cache.lock().expect("cache lock");
            c.fetching.remove(&id);
            r.fetched.notify_all();
            drop(c);
            match fetched {
                Ok(size) => this.cached(id, size),
                // The reader that needs it fetches it again and reports the error.
                Err(e) => {
                    tracing::debug!(container = id, error = %e, "prefetching a container failed")
                }
            }
        });
    }

    /// Downloads container `id` into the cache (once, however many ask at the same time).
    fn fetch(&self, id: u64) -> io::Result<()> {
        let r = self.remote.as_ref().expect("a bucket");
        {
            let mut c = r.cache.lock().expect("cache lock");
            c.misses += 1;
            while c.fetching.contains(&id) {
                c = r.fetched.wait(c).expect("cache lock");
            }
            if self.path(id).exists() {
                return Ok(());
            }
            c.fetching.insert(id);
        }
        let result = self.download(id);
        let mut c = r.cache.lock().expect("cache lock");
        c.fetching.remove(&id);
        r.fetched.notify_all();
        drop(c);
        let size = result?;
        self.cached(id, size);
        Ok(())
    }

    fn download(&self, id: u64) -> io::Result<u64> {
        let r = self.remote.as_ref().expect("a bucket");
        let data = r.bucket.call(|b| async move { b.get(&key(id)).await })?;
        self.keep_fetched(id, &data)
    }

    /// Puts the fetched bytes of container `id` in the cache directory: a temporary name,
    /// then a rename, so a reader never opens a part.
    fn keep_fetched(&self, id: u64, data: &[u8]) -> io::Result<u64> {
        let tmp = self
            .dir
            .join(format!(".fetch-{id:016x}-{}", std::process::id()));
        std::fs::write(&tmp, data)?;
        std::fs::rename(&tmp, self.path(id))?;
        Ok(data.len() as u64)
    }

    /// Removes the local file of container `id` (an uncommitted one, at start); its object,
    /// if any, is left to garbage collection.
    pub fn drop_local(&self, id: u64) -> io::Result<()> {
        match std::fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        if let Some(r) = &self.remote {
            let mut c = r.cache.lock().expect("cache lock");
            if let Some((len, _)) = c.files.remove(&id) {
                c.bytes -= len;
            }
        }
        Ok(())
    }

    /// Removes containers `ids`: their files at once, and their objects once a grace period
    /// has passed (see [`super::trash`]: a node may still read them by an older index).
    pub fn remove(&self, ids: &[u64]) -> io::Result<()> {
        for id in ids {
            match std::fs::remove_file(self.path(*id)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        if let Some(r) = &self.remote {
            {
                let mut c = r.cache.lock().expect("cache lock");
                for id in ids {
                    if let Some((len, _)) = c.files.remove(id) {
                        c.bytes -= len;
                    }
                }
            }
            let keys: Vec<String> = ids.iter().map(|id| key(*id)).collect();
            super::trash::defer(&r.bucket, &keys)?;
        }
        Ok(())
    }

    /// The ids of the containers in the bucket and not waiting in its trash (None without one).
    pub fn published(&self) -> io::Result<Option<Vec<(u64, u64)>>> {
        let Some(r) = &self.remote else {
            return Ok(None);
        };
        let listed = r
            .bucket
            .call(|b| async move { b.list("containers").await })?;
        let trashed = super::trash::pending(&r.bucket)?;
        Ok(Some(
            listed
                .into_iter()
                .filter(|l| !trashed.contains(&l.key))
                .filter_map(|l| {
                    let name = l.key.strip_prefix("containers/")?;
                    container_id(Path::new(name)).map(|id| (id, l.size))
                })
                .collect(),
        ))
    }

    /// Deletes the objects whose removal is older than `grace` (see [`super::trash`]); returns
    /// how many went (0 without a bucket).
    pub fn empty_trash(&self, grace: std::time::Duration) -> io::Result<usize> {
        match &self.remote {
            Some(r) => super::trash::empty(&r.bucket, grace),
            None => Ok(0),
        }
    }

    /// The cache's counters (None without a bucket).
    pub fn cache_reading(&self) -> Option<CacheReading> {
        let r = self.remote.as_ref()?;
        let c = r.cache.lock().expect("cache lock");
        Some(CacheReading {
            files: c.files.len() as u64,
            bytes: c.bytes,
            capacity: r.cache_bytes,
            hits: c.hits,
            misses: c.misses,
            evicted: c.evicted,
            prefetched: c.prefetched,
        })
    }
}
