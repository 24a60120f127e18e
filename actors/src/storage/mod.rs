//! Where the store's objects live: a local directory or an S3-compatible bucket, behind one
//! interface ([`Bucket`]), built on the `object_store` crate (its local file system with fsync,
//! its S3 client: SigV4, multipart uploads, retries of transient failures).
//!
//! Every request is counted by operation (requests, failures, bytes, latency) and every HTTP
//! attempt by the S3 client, so retries show as attempts beyond requests ([`stats`]).
//!
//! Keys are `/`-separated paths under the bucket's prefix. Objects are written whole (a put
//! is atomic: readers see the old object, or none, or the new one, never a part); files larger
//! than [`PART_SIZE`] go up as multipart uploads, aborted when any part fails, so a failed
//! upload leaves no object behind.

pub mod blocking;
pub mod containers;
pub mod stats;
pub mod trash;

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt, TryStreamExt};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

pub use stats::{Op, OpReading, Stats};

/// Size of each part of a multipart upload (S3 wants at least 5 MiB but the last).
pub const PART_SIZE: usize = 16 * 1024 * 1024;

/// Parts of one multipart upload in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

/// Keys deleted per batch (S3's DeleteObjects takes up to 1,000).
const DELETE_BATCH: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object {0} not found")]
    NotFound(String),
    #[error("invalid storage location {0:?}: {1}")]
    Location(String, String),
    #[error("object store ({0}): {1}")]
    Store(&'static str, String),
    #[error("reading {0}: {1}")]
    Io(String, std::io::Error),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Where the objects are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A directory of this machine.
    Local(std::path::PathBuf),
    /// `s3://BUCKET/PREFIX`.
    S3 { bucket: String, prefix: String },
}

impl Location {
    /// `s3://bucket[/prefix]`, `file:///path`, or a plain path.
    pub fn parse(s: &str) -> Result<Location> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let valid = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                });
            if !valid {
                return Err(StorageError::Location(
                    s.into(),
                    "a bucket name is 3-63 lowercase letters, digits, '-' or '.'".into(),
                ));
            }
            return Ok(Location::S3 {
                bucket: bucket.into(),
                prefix: prefix.trim_matches('/').into(),
            });
        }
        if s.contains("://") && !s.starts_with("file://") {
            return Err(StorageError::Location(
                s.into(),
                "only s3:// and local paths are supported".into(),
            ));
        }
        let path = s.strip_prefix("file://").unwrap_or(s);
        if path.is_empty() {
            return Err(StorageError::Location(s.into(), "empty path".into()));
        }
        Ok(Location::Local(path.into()))
    }
}

/// How to reach S3: what the URL does not say. Credentials not given here come from the usual
/// `AWS_*` environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
/// `AWS_REGION`, `AWS_ENDPOINT_URL`, ...).
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// e.g. `http://127.0.0.1:3900`; `http://` endpoints are allowed.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`), which Garage and MinIO want; otherwise
    /// virtual-hosted (`bucket.endpoint/key`).
    pub path_style: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Give up on a request after this long, retries included.
    pub timeout: Option<Duration>,
}

/// Counts every HTTP attempt the S3 client makes (retries included).
#[derive(Debug)]
struct CountAttempts {
    client: object_store::client::HttpClient,
    attempts: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl object_store::client::HttpService for CountAttempts {
    async fn call(
        &self,
        req: object_store::client::HttpRequest,
    ) -> Result<object_store::client::HttpResponse, object_store::client::HttpError> {
        self.attempts.fetch_add(1, Relaxed);
        self.client.execute(req).await
    }
}

#[derive(Debug)]
struct Connector {
    attempts: Arc<AtomicU64>,
}

impl object_store::client::HttpConnector for Connector {
    fn connect(
        &self,
        options: &object_store::ClientOptions,
    ) -> object_store::Result<object_store::client::HttpClient> {
        let client = object_store::client::ReqwestConnector::default().connect(options)?;
        Ok(object_store::client::HttpClient::new(CountAttempts {
            client,
            attempts: self.attempts.clone(),
        }))
    }
}

/// The store's objects, wherever they live.
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    kind: &'static str,
    stats: Arc<Stats>,
    /// HTTP attempts (S3 only).
    attempts: Arc<AtomicU64>,
}

/// Whether [`Bucket::create`] wrote the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    New,
    /// An object was already there (the caller decides whether it is the same).
    Existed,
}

/// An object found by [`Bucket::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The key under the bucket's prefix.
    pub key: String,
    pub size: u64,
    /// When it was written.
    pub modified: std::time::SystemTime,
}

impl Bucket {
    pub fn open(location: &Location, s3: &S3Options) -> Result<Bucket> {
        let attempts = Arc::new(AtomicU64::new(0));
        let err = |e: object_store::Error| StorageError::Store("open", e.to_string());
        let (store, prefix, kind): (Arc<dyn ObjectStore>, String, &'static str) = match location {
            Location::Local(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StorageError::Io(dir.display().to_string(), e))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map_err(err)?
                    .with_automatic_cleanup(true)
                    .with_fsync(true);
                (Arc::new(fs), String::new(), "local")
            }
            Location::S3 { bucket, prefix } => {
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_http_connector(Connector {
                        attempts: attempts.clone(),
                    })
                    .with_retry(object_store::RetryConfig {
                        max_retries: 5,
                        retry_timeout: s3.timeout.unwrap_or(Duration::from_secs(120)),
                        ..Default::default()
                    });
                if let Some(e) = &s3.endpoint {
                    b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
                }
                b = b.with_virtual_hosted_style_request(!s3.path_style);
                if let Some(r) = &s3.region {
                    b = b.with_region(r);
                }
                if let Some(k) = &s3.access_key_id {
                    b = b.with_access_key_id(k);
                }
                if let Some(k) = &s3.secret_access_key {
                    b = b.with_secret_access_key(k);
                }
                (Arc::new(b.build().map_err(err)?), prefix.clone(), "s3")
            }
        };
        Ok(Bucket {
            store,
            prefix,
            kind,
            stats: Arc::new(Stats::default()),
            attempts,
        })
    }

    /// `local` or `s3`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// HTTP requests the S3 client made, retries included (0 for a local directory).
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Relaxed)
    }

    fn key(&self, key: &str) -> Key {
        if self.prefix.is_empty() {
            Key::from(key)
        } else {
            Key::from(format!("{}/{key}", self.prefix))
        }
    }

    /// Times `f` as one `op` request moving `bytes(result)` bytes.
    async fn timed<T>(
        &self,
        op: Op,
        key: &str,
        f: impl std::future::Future<Output = object_store::Result<T>>,
        bytes: impl FnOnce(&T) -> u64,
    ) -> Result<T> {
        let start = Instant::now();
        let r = f.await;
        let moved = r.as_ref().map(bytes).unwrap_or(0);
        let ok = matches!(&r, Ok(_) | Err(object_store::Error::NotFound { .. }));
        self.stats.record(op, start.elapsed(), moved, ok);
        r.map_err(|e| match e {
            object_store::Error::NotFound { .. } => StorageError::NotFound(key.into()),
            e => StorageError::Store(op.as_str(), e.to_string()),
        })
    }

    /// Writes `data` at `key`, replacing what was there.
    pub async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let n = data.len() as u64;
        self.timed(
            Op::Put,
            key,
            self.store.put(&self.key(key), data.into()),
            |_| n,
        )
        .await
        .map(|_| ())
    }

    /// Writes `data` at `key` unless an object is there already: a conditional put
    /// (`If-None-Match: *`). Where the store enforces it (a local directory, AWS S3, MinIO) of
    /// two writers racing exactly one gets [`Created::New`]; a store that ignores the condition
    /// (Garage 2.5) lets the later write replace the earlier and both see `New`. Fine for
    /// content-addressed objects (the same key holds the same bytes); never a lock unless
    /// [`Bucket::enforces_create`] says so.
    pub async fn create(&self, key: &str, data: Bytes) -> Result<Created> {
        let n = data.len() as u64;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let start = Instant::now();
        let r = self.store.put_opts(&self.key(key), data.into(), opts).await;
        let ok = matches!(&r, Ok(_) | Err(object_store::Error::AlreadyExists { .. }));
        self.stats
            .record(Op::Put, start.elapsed(), if r.is_ok() { n } else { 0 }, ok);
        match r {
            Ok(_) => Ok(Created::New),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Created::Existed),
            Err(e) => Err(StorageError::Store("put", e.to_string())),
        }
    }

    /// Whether [`Bucket::create`] is enforced by the store, found by trying: two creates of
    /// one fresh key under `probe/`, then its removal.
    pub async fn enforces_create(&self) -> Result<bool> {
        let key = format!("probe/create-{}", uuid_like());
        self.create(&key, Bytes::from_static(b"first")).await?;
        let second = self.create(&key, Bytes::from_static(b"second")).await?;
        self.delete(&[key]).await?;
        Ok(second == Created::Existed)
    }

    /// Uploads the file at `path` to `key`, as a multipart upload when it is larger than
    /// [`PART_SIZE`] (parts read one at a time, a few in flight); returns its size.
    pub async fn put_file(&self, key: &str, path: &std::path::Path) -> Result<u64> {
        self.put_file_range(key, path, None).await
    }

    /// Uploads bytes `range` of the file at `path` (all of it for None) to `key`, as
    /// [`Bucket::put_file`] does; returns how many.
    pub async fn put_file_range(
        &self,
        key: &str,
        path: &std::path::Path,
        range: Option<Range<u64>>,
    ) -> Result<u64> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let io = |e| StorageError::Io(path.display().to_string(), e);
        let mut file = tokio::fs::File::open(path).await.map_err(io)?;
        let size = match range {
            Some(r) => {
                file.seek(std::io::SeekFrom::Start(r.start))
                    .await
                    .map_err(io)?;
                r.end - r.start
            }
            None => file.metadata().await.map_err(io)?.len(),
        };
        let mut file = file.take(size);
        if size <= PART_SIZE as u64 {
            let mut buf = Vec::with_capacity(size as usize);
            file.read_to_end(&mut buf).await.map_err(io)?;
            if buf.len() as u64 != size {
                return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            self.put(key, buf.into()).await?;
            return Ok(size);
        }
        let start = Instant::now();
        let mut upload = self
            .timed(
                Op::Put,
                key,
                self.store.put_multipart(&self.key(key)),
                |_| 0,
            )
            .await?;
        let mut in_flight = FuturesUnordered::new();
        let mut sent = 0u64;
        let result: Result<()> = async {
            while sent < size {
                let want = PART_SIZE.min((size - sent) as usize);
                let mut part = vec![0u8; want];
                file.read_exact(&mut part).await.map_err(io)?;
                sent += want as u64;
                let stats = self.stats.clone();
                let fut = upload.put_part(PutPayload::from(part));
                in_flight.push(async move {
                    let t = Instant::now();
                    let r = fut.await;
                    stats.record(Op::UploadPart, t.elapsed(), want as u64, r.is_ok());
                    r
                });
                while in_flight.len() >= PARTS_IN_FLIGHT {
                    if let Some(r) = in_flight.next().await {
                        r.map_err(|e| StorageError::Store("upload_part", e.to_string()))?;
                    }
                }
            }
            while let Some(r) = in_flight.next().await {
                r.map_err(|e| StorageError::Store("upload_part", e.to_string()))?;
            }
            Ok(())
        }
        .await;
        drop(in_flight);
        if let Err(e) = result {
            // Leave no parts behind (they cost storage until aborted).
            if let Err(abort) = upload.abort().await {
                tracing::warn!(key, error = %abort, "aborting a failed multipart upload failed");
            }
            return Err(e);
        }
        let r = upload.complete().await;
        self.stats.record(Op::Put, start.elapsed(), 0, r.is_ok());
        r.map_err(|e| StorageError::Store("put", e.to_string()))?;
        Ok(size)
    }

    /// Copies object `from` to `to` inside the store (S3's CopyObject: no bytes through here).
    pub async fn copy(&self, from: &str, to: &str) -> Result<()> {
        self.timed(
            Op::Put,
            to,
            self.store.copy(&self.key(from), &self.key(to)),
            |_| 0,
        )
        .await
    }

    pub async fn get(&self, key: &str) -> Result<Bytes> {
        let k = self.key(key);
        self.timed(
            Op::Get,
            key,
            async { self.store.get(&k).await?.bytes().await },
            |b| b.len() as u64,
        )
        .await
    }

    /// Bytes `range` of the object at `key` (a ranged GET).
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        self.timed(
            Op::Get,
            key,
            self.store.get_range(&self.key(key), range),
            |b| b.len() as u64,
        )
        .await
    }

    /// The size of the object at `key`, if there is one.
    pub async fn head(&self, key: &str) -> Result<Option<u64>> {
        match self
            .timed(Op::Head, key, self.store.head(&self.key(key)), |_| 0)
            .await
        {
            Ok(meta) => Ok(Some(meta.size)),
            Err(StorageError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every object whose key starts with `prefix/` (a directory-like prefix), in no set order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        self.list_from(prefix, None).await
    }

    /// The objects under `prefix/` whose keys sort after `after` (S3's `start-after`: a
    /// follower lists only what is new).
    pub async fn list_after(&self, prefix: &str, after: &str) -> Result<Vec<Listed>> {
        self.list_from(prefix, Some(after)).await
    }

    async fn list_from(&self, prefix: &str, after: Option<&str>) -> Result<Vec<Listed>> {
        let under = self.key(prefix);
        let strip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        let start = Instant::now();
        let r: object_store::Result<Vec<_>> = match after {
            Some(a) => {
                self.store
                    .list_with_offset(Some(&under), &self.key(a))
                    .try_collect()
                    .await
            }
            None => self.store.list(Some(&under)).try_collect().await,
        };
        self.stats.record(Op::List, start.elapsed(), 0, r.is_ok());
        let metas = r.map_err(|e| StorageError::Store("list", e.to_string()))?;
        Ok(metas
            .into_iter()
            .map(|m| Listed {
                key: m.location.as_ref()[strip..].to_string(),
                size: m.size,
                modified: m.last_modified.into(),
            })
            .collect())
    }

    /// Deletes `keys` in batches; keys with no object are not an error. Returns how many
    /// were asked to go.
    pub async fn delete(&self, keys: &[String]) -> Result<usize> {
        for batch in keys.chunks(DELETE_BATCH) {
            let paths: Vec<object_store::Result<Key>> =
                batch.iter().map(|k| Ok(self.key(k))).collect();
            let start = Instant::now();
            let results: Vec<object_store::Result<Key>> = self
                .store
                .delete_stream(futures_util::stream::iter(paths).boxed())
                .collect()
                .await;
            let failed = results
                .into_iter()
                .filter_map(Result::err)
                .find(|e| !matches!(e, object_store::Error::NotFound { .. }));
            self.stats
                .record(Op::Delete, start.elapsed(), 0, failed.is_none());
            if let Some(e) = failed {
                return Err(StorageError::Store("delete", e.to_string()));
            }
        }
        Ok(keys.len())
    }
}

/// A key part no other process picks: time, pid and a counter.
pub(crate) fn uuid_like() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{nanos:x}-{:x}-{:x}",
        std::process::id(),
        NEXT.fetch_add(1, Relaxed)
    )
}
