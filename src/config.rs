//! Settings for `stowage serve`: defaults, an optional TOML file, `STOWAGE_*` environment
//! variables and command-line flags, in increasing order of precedence.
//!
//! Every setting has all four forms; the README's configuration table lists them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

/// `stowage serve` flags. Each is optional so that the config file can fill what is not given
/// here or in the environment (clap reads `STOWAGE_*` itself).
#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML configuration file (keys as in the README's table).
    #[arg(long, env = "STOWAGE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory [default: ./stowage-data].
    #[arg(long, env = "STOWAGE_ROOT")]
    pub root: Option<PathBuf>,
    /// Listen address [default: 127.0.0.1:5000]; port 0 picks a free port (printed on stdout).
    #[arg(long, env = "STOWAGE_ADDR")]
    pub addr: Option<SocketAddr>,
    /// Abandoned uploads older than this are removed [default: 24h].
    #[arg(long, env = "STOWAGE_UPLOAD_TTL", value_parser = humantime::parse_duration)]
    pub upload_ttl: Option<Duration>,
    /// How often expired uploads are looked for [default: 10m].
    #[arg(long, env = "STOWAGE_UPLOAD_SWEEP_INTERVAL", value_parser = humantime::parse_duration)]
    pub upload_sweep_interval: Option<Duration>,
    /// Largest manifest accepted, in bytes [default: 4194304].
    #[arg(long, env = "STOWAGE_MAX_MANIFEST_BYTES")]
    pub max_manifest_bytes: Option<u64>,
    /// LMDB map size in bytes: the most metadata the store can hold [default: 17179869184].
    #[arg(long, env = "STOWAGE_META_MAP_SIZE")]
    pub meta_map_size: Option<usize>,
    /// HTTP worker threads [default: number of CPUs].
    #[arg(long, env = "STOWAGE_WORKERS")]
    pub workers: Option<usize>,
    /// Seconds in-flight requests get to finish on SIGTERM/SIGINT [default: 30].
    #[arg(long, env = "STOWAGE_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Option<u64>,
    /// Log format: `text` or `json` [default: text]. The level comes from STOWAGE_LOG (e.g. `info`,
    /// `stowage=debug`).
    #[arg(long, env = "STOWAGE_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// When pushed blobs are deduplicated: `background` (after the push is acknowledged),
    /// `inline` (the final PUT waits for it; for tests) or `off` [default: background].
    #[arg(long, env = "STOWAGE_DEDUP")]
    pub dedup: Option<DedupMode>,
    /// FastCDC minimum chunk size in bytes [default: 4096].
    #[arg(long, env = "STOWAGE_CHUNK_MIN")]
    pub chunk_min: Option<usize>,
    /// FastCDC average chunk size in bytes [default: 16384].
    #[arg(long, env = "STOWAGE_CHUNK_AVG")]
    pub chunk_avg: Option<usize>,
    /// FastCDC maximum chunk size in bytes [default: 65536].
    #[arg(long, env = "STOWAGE_CHUNK_MAX")]
    pub chunk_max: Option<usize>,
    /// Size at which a container is sealed, in bytes [default: 4194304].
    #[arg(long, env = "STOWAGE_CONTAINER_SIZE")]
    pub container_size: Option<u64>,
    /// zstd level for chunks [default: 3].
    #[arg(long, env = "STOWAGE_CHUNK_ZSTD_LEVEL")]
    pub chunk_zstd_level: Option<i32>,
    /// Threads restoring deduplicated layers for pulls [default: 2].
    #[arg(long, env = "STOWAGE_RESTORE_THREADS")]
    pub restore_threads: Option<usize>,
    /// Bytes of restored layers kept for the next pulls (0: no cache) [default: 0].
    #[arg(long, env = "STOWAGE_RESTORE_CACHE_BYTES")]
    pub restore_cache_bytes: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DedupMode {
    #[default]
    Background,
    Inline,
    Off,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The config file: the same settings as the flags, snake_case keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    root: Option<PathBuf>,
    addr: Option<SocketAddr>,
    #[serde(default, with = "humantime_serde")]
    upload_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    upload_sweep_interval: Option<Duration>,
    max_manifest_bytes: Option<u64>,
    meta_map_size: Option<usize>,
    workers: Option<usize>,
    shutdown_timeout: Option<u64>,
    log_format: Option<LogFormat>,
    dedup: Option<DedupMode>,
    chunk_min: Option<usize>,
    chunk_avg: Option<usize>,
    chunk_max: Option<usize>,
    container_size: Option<u64>,
    chunk_zstd_level: Option<i32>,
    restore_threads: Option<usize>,
    restore_cache_bytes: Option<u64>,
}

/// The resolved settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub root: PathBuf,
    pub addr: SocketAddr,
    pub upload_ttl: Duration,
    pub upload_sweep_interval: Duration,
    pub max_manifest_bytes: u64,
    pub meta_map_size: usize,
    pub workers: usize,
    pub shutdown_timeout: u64,
    pub log_format: LogFormat,
    pub dedup: DedupMode,
    pub chunk: stowage_actors::engine::chunk::ChunkParams,
    pub container_size: u64,
    pub chunk_zstd_level: i32,
    pub restore_threads: usize,
    pub restore_cache_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from("./stowage-data"),
            addr: "127.0.0.1:5000".parse().expect("default address"),
            upload_ttl: Duration::from_secs(24 * 3600),
            upload_sweep_interval: Duration::from_secs(600),
            max_manifest_bytes: 4 * 1024 * 1024,
            meta_map_size: 16 << 30,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            shutdown_timeout: 30,
            log_format: LogFormat::Text,
            dedup: DedupMode::Background,
            chunk: Default::default(),
            container_size: 4 << 20,
            chunk_zstd_level: 3,
            restore_threads: 2,
            restore_cache_bytes: 0,
        }
    }
}

impl Config {
    /// Defaults, then the config file (if any), then environment and flags (already merged by
    /// clap, flags winning).
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<Config> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let d = Config::default();
        let cfg = Config {
            root: args.root.clone().or(file.root).unwrap_or(d.root),
            addr: args.addr.or(file.addr).unwrap_or(d.addr),
            upload_ttl: args.upload_ttl.or(file.upload_ttl).unwrap_or(d.upload_ttl),
            upload_sweep_interval: args
                .upload_sweep_interval
                .or(file.upload_sweep_interval)
                .unwrap_or(d.upload_sweep_interval),
            max_manifest_bytes: args
                .max_manifest_bytes
                .or(file.max_manifest_bytes)
                .unwrap_or(d.max_manifest_bytes),
            meta_map_size: args
                .meta_map_size
                .or(file.meta_map_size)
                .unwrap_or(d.meta_map_size),
            workers: args.workers.or(file.workers).unwrap_or(d.workers).max(1),
            shutdown_timeout: args
                .shutdown_timeout
                .or(file.shutdown_timeout)
                .unwrap_or(d.shutdown_timeout),
            log_format: args.log_format.or(file.log_format).unwrap_or(d.log_format),
            dedup: args.dedup.or(file.dedup).unwrap_or(d.dedup),
            chunk: stowage_actors::engine::chunk::ChunkParams {
                min: args.chunk_min.or(file.chunk_min).unwrap_or(d.chunk.min),
                avg: args.chunk_avg.or(file.chunk_avg).unwrap_or(d.chunk.avg),
                max: args.chunk_max.or(file.chunk_max).unwrap_or(d.chunk.max),
            },
            container_size: args
                .container_size
                .or(file.container_size)
                .unwrap_or(d.container_size),
            chunk_zstd_level: args
                .chunk_zstd_level
                .or(file.chunk_zstd_level)
                .unwrap_or(d.chunk_zstd_level),
            restore_threads: args
                .restore_threads
                .or(file.restore_threads)
                .unwrap_or(d.restore_threads)
                .max(1),
            restore_cache_bytes: args
                .restore_cache_bytes
                .or(file.restore_cache_bytes)
                .unwrap_or(d.restore_cache_bytes),
        };
        let c = cfg.chunk;
        anyhow::ensure!(
            (64..=1 << 20).contains(&c.min)
                && (256..=4 << 20).contains(&c.avg)
                && (1024..=16 << 20).contains(&c.max)
                && c.min < c.avg
                && c.avg < c.max
                && c.min.is_multiple_of(2)
                && c.avg.is_multiple_of(2)
                && c.max.is_multiple_of(2),
            "chunk sizes must be even with 64 <= min < avg < max <= 16 MiB (got {c:?})"
        );
        anyhow::ensure!(
            !cfg.upload_sweep_interval.is_zero(),
            "upload_sweep_interval must be positive"
        );
        Ok(cfg)
    }
}

fn load_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading config {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stowage.toml");
        std::fs::write(
            &path,
            "root = \"/srv/file\"\naddr = \"127.0.0.1:6000\"\nupload_ttl = \"2h\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            root: Some("/srv/flag".into()),
            ..Default::default()
        };
        let cfg = Config::resolve(&args).unwrap();
        assert_eq!(cfg.root, PathBuf::from("/srv/flag"));
        assert_eq!(cfg.addr, "127.0.0.1:6000".parse().unwrap());
        assert_eq!(cfg.upload_ttl, Duration::from_secs(7200));
        assert_eq!(cfg.max_manifest_bytes, 4 * 1024 * 1024);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stowage.toml");
        std::fs::write(&path, "rot = \"/x\"\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..Default::default()
        };
        let err = Config::resolve(&args).unwrap_err().to_string();
        assert!(err.contains("unknown field"), "{err}");
    }
}
