//! Where the store keeps its containers: the data directory (the default), or an
//! S3-compatible bucket with the data directory's `containers/` a bounded cache.
//!
//! Flags and `STOWAGE_*` variables, or a `[storage]` table in the config file:
//!
//! ```toml
//! [storage]
//! url = "s3://registry/stowage"        # --storage
//! endpoint = "http://127.0.0.1:3900"   # --s3-endpoint (AWS when absent)
//! region = "garage"                    # --s3-region
//! path_style = true                    # --s3-path-style (Garage, MinIO)
//! access_key_id = "GK..."              # or AWS_ACCESS_KEY_ID
//! secret_access_key = "..."            # or AWS_SECRET_ACCESS_KEY
//! cache_bytes = 10737418240            # --cache-bytes
//! checkpoint_entries = 1000            # --checkpoint-entries
//! replica = false                      # --replica
//! writer_url = "http://writer:5000"    # --writer-url (a replica forwards writes there)
//! ```
//!
//! With a bucket, the metadata is journaled there too (`meta::journal`), with a checkpoint of
//! the local index every `checkpoint_entries` journal entries (or 10 minutes after an entry).

use clap::Args;
use serde::Deserialize;
use stowage_actors::storage::{Location, S3Options};

/// Storage flags, shared by `serve` and `fsck`.
#[derive(Args, Debug, Default, Clone)]
pub struct StorageArgs {
    /// Where containers are stored: `s3://BUCKET[/PREFIX]` for an S3-compatible bucket (the
    /// data directory then caches containers), or a directory [default: the data directory].
    /// Credentials come from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (or the config
    /// file's `[storage]`).
    #[arg(long, env = "STOWAGE_STORAGE")]
    pub storage: Option<String>,
    /// S3 endpoint, e.g. `http://127.0.0.1:3900` for Garage [default: AWS, or AWS_ENDPOINT_URL].
    #[arg(long, env = "STOWAGE_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region [default: AWS_REGION, or us-east-1].
    #[arg(long, env = "STOWAGE_S3_REGION")]
    pub s3_region: Option<String>,
    /// Path-style S3 requests (`endpoint/bucket/key`), as Garage and MinIO want
    /// [default: false, virtual-hosted].
    #[arg(long, env = "STOWAGE_S3_PATH_STYLE")]
    pub s3_path_style: Option<bool>,
    /// Bytes of containers the data directory caches when they live in a bucket
    /// [default: 10737418240].
    #[arg(long, env = "STOWAGE_CACHE_BYTES")]
    pub cache_bytes: Option<u64>,
    /// With a bucket: write a checkpoint of the metadata index once this many journal entries
    /// follow the last (a rebuild replays at most about this many) [default: 1000].
    #[arg(long, env = "STOWAGE_CHECKPOINT_ENTRIES")]
    pub checkpoint_entries: Option<u64>,
    /// With a bucket: serve pulls of the store another node writes, following its metadata
    /// journal (new entries are applied within about a second); pushes, deletes and
    /// collections are refused (405). One node per bucket writes; any number follow.
    #[arg(long, env = "STOWAGE_REPLICA")]
    pub replica: bool,
    /// On a replica: forward pushes, deletes and upload requests to the writer at this URL
    /// (e.g. `http://writer:5000`) instead of refusing them, so one name in front of all
    /// nodes takes pushes too.
    #[arg(long, env = "STOWAGE_WRITER_URL")]
    pub writer_url: Option<String>,
}

/// The config file's `[storage]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageFile {
    url: Option<String>,
    endpoint: Option<String>,
    region: Option<String>,
    path_style: Option<bool>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    cache_bytes: Option<u64>,
    checkpoint_entries: Option<u64>,
    replica: Option<bool>,
    writer_url: Option<String>,
}

/// The resolved storage settings.
#[derive(Clone, Debug)]
pub struct StorageConfig {
    /// None: containers in the data directory.
    pub location: Option<Location>,
    pub s3: S3Options,
    pub cache_bytes: u64,
    pub checkpoint_entries: u64,
    /// Follows the writer's journal and serves pulls only.
    pub replica: bool,
    /// A replica forwards writes there.
    pub writer_url: Option<String>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            location: None,
            s3: S3Options::default(),
            cache_bytes: 10 << 30,
            checkpoint_entries: 1000,
            replica: false,
            writer_url: None,
        }
    }
}

impl StorageConfig {
    pub fn resolve(args: &StorageArgs, file: Option<StorageFile>) -> anyhow::Result<StorageConfig> {
        let file = file.unwrap_or_default();
        let d = StorageConfig::default();
        let location = args
            .storage
            .clone()
            .or(file.url)
            .map(|s| Location::parse(&s))
            .transpose()?;
        let replica = args.replica || file.replica.unwrap_or(false);
        anyhow::ensure!(
            !replica || matches!(location, Some(Location::S3 { .. })),
            "--replica follows a store in a bucket: give --storage s3://BUCKET/PREFIX"
        );
        let writer_url = args.writer_url.clone().or(file.writer_url);
        anyhow::ensure!(
            writer_url.is_none() || replica,
            "--writer-url is where a replica forwards writes: give --replica too"
        );
        if let Some(u) = &writer_url {
            anyhow::ensure!(
                u.starts_with("http://") || u.starts_with("https://"),
                "--writer-url must be an http:// or https:// URL (got {u:?})"
            );
        }
        Ok(StorageConfig {
            location,
            s3: S3Options {
                endpoint: args.s3_endpoint.clone().or(file.endpoint),
                region: args.s3_region.clone().or(file.region),
                path_style: args.s3_path_style.or(file.path_style).unwrap_or(false),
                access_key_id: file.access_key_id,
                secret_access_key: file.secret_access_key,
                timeout: None,
            },
            cache_bytes: args
                .cache_bytes
                .or(file.cache_bytes)
                .unwrap_or(d.cache_bytes),
            checkpoint_entries: args
                .checkpoint_entries
                .or(file.checkpoint_entries)
                .unwrap_or(d.checkpoint_entries)
                .max(1),
            replica,
            writer_url,
        })
    }
}
