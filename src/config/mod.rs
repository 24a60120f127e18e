//! Settings for `stowage serve`: defaults, an optional TOML file, `STOWAGE_*` environment
//! variables and command-line flags, in increasing order of precedence.
//!
//! Every setting has all four forms; the README's configuration table lists them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Deserialize;
use stowage_actors::engine::zstd_frames::SegmentCores;

mod retention;
mod storage;
pub use retention::RetentionPolicy;
pub use storage::{StorageArgs, StorageConfig};

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
    /// The hot tier: layers kept exact for the next pulls, as file reads (layers just
    /// deduplicated keep their pushed bytes; layers pulled more than once are kept once
    /// restored; what is quickest to restore per byte, least recently used among equals, goes
    /// first). A byte count, or `N%` of the logical bytes
    /// (the blobs as pushed, what a plain registry stores), so the tier never costs more than
    /// that share on top of the deduplicated store; `0`: none [default: 10%]. Also
    /// `--hot-bytes`.
    #[arg(long, alias = "hot-bytes", env = "STOWAGE_RESTORE_CACHE_BYTES")]
    pub restore_cache_bytes: Option<HotBudget>,
    /// Near-duplicate detection: store new chunks as zstd deltas against similar ones
    /// [default: true].
    #[arg(long, env = "STOWAGE_SIMILARITY")]
    pub similarity: Option<bool>,
    /// Features computed per chunk [default: 6].
    #[arg(long, env = "STOWAGE_SIMILARITY_FEATURES")]
    pub similarity_features: Option<usize>,
    /// Super-features the features are grouped into [default: 6].
    #[arg(long, env = "STOWAGE_SIMILARITY_SUPER_FEATURES")]
    pub similarity_super_features: Option<usize>,
    /// One position in 2^N is sampled for features [default: 7, i.e. 1/128].
    #[arg(long, env = "STOWAGE_SIMILARITY_SAMPLE_BITS")]
    pub similarity_sample_bits: Option<u32>,
    /// A delta is kept when at most this fraction of the chunk compressed alone [default: 0.7].
    #[arg(long, env = "STOWAGE_DELTA_THRESHOLD")]
    pub delta_threshold: Option<f64>,
    /// Candidate bases tried per new chunk; the smallest delta wins [default: 2].
    #[arg(long, env = "STOWAGE_SIMILARITY_CANDIDATES")]
    pub similarity_candidates: Option<usize>,
    /// Skip similarity for files that start like a compressed format (gzip, zip, zstd, xz,
    /// jpeg, png, woff2, ...) and chunks zstd cannot shrink [default: true].
    #[arg(long, env = "STOWAGE_SIMILARITY_SKIP_COMPRESSED")]
    pub similarity_skip_compressed: Option<bool>,
    /// Skip similarity for files smaller than this many bytes [default: 0].
    #[arg(long, env = "STOWAGE_SIMILARITY_MIN_FILE_SIZE")]
    pub similarity_min_file_size: Option<u64>,
    /// Frame deltas: a zstd:chunked layer's frame (kept as its frames, see `--zstd-frames`)
    /// may be stored as a delta of its plaintext against a similar stored frame's, re-encoded
    /// on every pull, when it saves at least this many bytes per byte of plaintext re-encoded
    /// by an encoder of 100 MB/s (a slower encoder's must save proportionally more; 0:
    /// whenever the delta meets `--delta-threshold`), or `off`. Smaller stores, slower pulls:
    /// see the README's zstd:chunked table [default: 0.1].
    #[arg(long, env = "STOWAGE_FRAME_DELTA_MIN_SAVING")]
    pub frame_delta_min_saving: Option<FrameDeltaSaving>,
    /// Super-feature entries the in-memory feature index holds, about 30 bytes each; past it
    /// bases are searched among the most recently stored chunks only [default: 2000000].
    #[arg(long, env = "STOWAGE_SIMILARITY_INDEX_ENTRIES")]
    pub similarity_index_entries: Option<usize>,
    /// zstd layers of many frames (zstd:chunked): `auto` keeps the compressed frames,
    /// deduplicated frame by frame and pulled without re-encoding, when their encoder
    /// re-encodes slowly (zstd:chunked's level) or is unknown; `store` always; `reencode`
    /// never (decompressed, deduplicated by content, re-encoded on pull) [default: auto].
    #[arg(long, env = "STOWAGE_ZSTD_FRAMES")]
    pub zstd_frames: Option<stowage_actors::pipeline::ZstdFrames>,
    /// Cores a pull may re-encode one long klauspost zstd frame (a `zstd` layer from skopeo,
    /// podman, buildah, BuildKit) on, in segments planned at ingest, and the segment threads
    /// all pulls together may run (a frame gets all its segments' threads or is re-encoded
    /// whole); 1 (or 0): never. Each segment after the first re-encodes one window (4-32 MiB)
    /// more, and a pull holds up to the layer's plaintext while the segments catch up
    /// [default: all cores (at most 8) for a `SpeedBestCompression` frame, whose re-encode is
    /// nearly all of its pull; all but one for a faster level's, the restore keeping one
    /// busy].
    #[arg(long, env = "STOWAGE_ZSTD_SEGMENT_CORES")]
    pub zstd_segment_cores: Option<u64>,
    /// Keep a layer as pushed when its encoder re-creates it slower than this many MB/s (the
    /// encoder's nominal speed on one core: about 3 for libzstd levels 16-19, 20 for libzstd
    /// 10-15 and gzip 7-9, 28 for klauspost's `SpeedBestCompression`): every pull of such a
    /// layer that the hot tier does not serve re-encodes it. 0: deduplicate whatever is
    /// re-created exactly [default: 0].
    #[arg(long, env = "STOWAGE_MIN_RESTORE_RATE")]
    pub min_restore_rate: Option<f64>,
    /// A repository policy, `PATTERN=MODE[@MIN_AGE]` (repeatable; in the environment,
    /// separated by `;`): repositories matching PATTERN (`*` matches anything) are stored
    /// `full` (chunks and deltas), `chunks` (no deltas) or `raw` (kept as pushed: hot
    /// repositories, for pull speed); layers are deduplicated only once MIN_AGE old (e.g.
    /// `1h`). The first matching policy applies; a blob in several repositories gets the most
    /// conservative of theirs.
    #[arg(long = "repo-policy", env = "STOWAGE_REPO_POLICY", value_delimiter = ';', value_parser = RepoPolicy::parse)]
    pub repo_policy: Vec<RepoPolicy>,
    /// How often garbage collection runs in the background (retention, then unreachable
    /// blobs, chunks and containers); `0` turns it off [default: 1h].
    #[arg(long, env = "STOWAGE_GC_INTERVAL", value_parser = humantime::parse_duration)]
    pub gc_interval: Option<Duration>,
    /// Grace period: nothing younger is collected (blob links, blobs, containers), and a blob
    /// a client was told exists (HEAD, GET) stays linked this long. Longer than any push takes
    /// between its blobs and its manifest [default: 1h].
    #[arg(long, env = "STOWAGE_GC_DELAY", value_parser = humantime::parse_duration)]
    pub gc_delay: Option<Duration>,
    /// Containers whose live fraction falls below this are rewritten with their live chunks
    /// only [default: 0.5].
    #[arg(long, env = "STOWAGE_GC_COMPACT_BELOW")]
    pub gc_compact_below: Option<f64>,
    /// A retention policy, `PATTERN=RULE[,RULE...]` (repeatable; in the environment, separated
    /// by `;`), rules `keep-last:N`, `keep-within:DUR`, `keep-pulled-last:N`,
    /// `keep-pulled-within:DUR`, `keep-tags:REGEX`, `untagged:DUR`, `keep-orphan-referrers`.
    /// First matching policy per repository; a repository matched by none keeps everything.
    #[arg(long = "retention", env = "STOWAGE_RETENTION", value_delimiter = ';', value_parser = RetentionPolicy::parse)]
    pub retention: Vec<RetentionPolicy>,
    /// htpasswd file of users (bcrypt entries, `htpasswd -B`): turns authentication on. Who
    /// may do what is set by `[[access]]`, `[[anonymous]]`, `admins` and `[groups]` in the
    /// config file (without them, every user may do everything). Re-read when it changes
    /// and on SIGHUP.
    #[arg(long, env = "STOWAGE_HTPASSWD")]
    pub htpasswd: Option<PathBuf>,
    /// TLS certificate chain (PEM): with `--tls-key`, the registry serves HTTPS (HTTP/2 and
    /// HTTP/1.1) instead of plain HTTP. Read again on SIGHUP.
    #[arg(long, env = "STOWAGE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of `--tls-cert`.
    #[arg(long, env = "STOWAGE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve `/metrics` on this address too, without authentication (for Prometheus); with
    /// authentication on, `/metrics` on the main address needs an admin.
    #[arg(long, env = "STOWAGE_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// How a repository policy stores layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    /// Chunks and near-duplicate deltas.
    Full,
    /// Chunk dedup only.
    Chunks,
    /// Kept as pushed.
    Raw,
}

/// A repository policy (`[[repo_policy]]` in the config file).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoPolicy {
    /// Repository name pattern; `*` matches any run of characters (`/` included).
    pub repositories: String,
    pub dedup: PolicyMode,
    /// Layers younger than this stay as pushed until they reach it.
    #[serde(default, with = "humantime_serde")]
    pub min_age: Option<Duration>,
}

impl RepoPolicy {
    /// `PATTERN=MODE[@MIN_AGE]`.
    pub fn parse(s: &str) -> Result<RepoPolicy, String> {
        let (pattern, rest) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected PATTERN=MODE[@MIN_AGE]"))?;
        let (mode, age) = match rest.split_once('@') {
            Some((m, a)) => (m, Some(a)),
            None => (rest, None),
        };
        let dedup = match mode {
            "full" => PolicyMode::Full,
            "chunks" => PolicyMode::Chunks,
            "raw" => PolicyMode::Raw,
            other => return Err(format!("{other:?}: the mode is full, chunks or raw")),
        };
        let min_age = age
            .map(|a| humantime::parse_duration(a).map_err(|e| format!("{a:?}: {e}")))
            .transpose()?;
        if pattern.is_empty() {
            return Err("empty repository pattern".into());
        }
        Ok(RepoPolicy {
            repositories: pattern.to_string(),
            dedup,
            min_age,
        })
    }

    pub fn matches(&self, repo: &str) -> bool {
        glob_match(self.repositories.as_bytes(), repo.as_bytes())
    }
}

/// `*` matches any run of bytes; everything else matches itself.
fn glob_match(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// The hot tier's budget: bytes, or a share of the logical bytes (the blobs as pushed).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HotBudget {
    Bytes(u64),
    Percent(f64),
}

impl HotBudget {
    /// The budget in bytes for a store holding `logical` bytes of blobs.
    pub fn resolve(self, logical: u64) -> u64 {
        match self {
            HotBudget::Bytes(n) => n,
            HotBudget::Percent(p) => (logical as f64 * p / 100.0) as u64,
        }
    }
}

impl std::str::FromStr for HotBudget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("{s:?}: expected a percentage like 10%"))?;
            if !(0.0..=1000.0).contains(&p) {
                return Err(format!("{s:?}: a percentage between 0% and 1000%"));
            }
            return Ok(HotBudget::Percent(p));
        }
        s.parse()
            .map(HotBudget::Bytes)
            .map_err(|_| format!("{s:?}: expected a byte count or a percentage like 10%"))
    }
}

impl<'de> Deserialize<'de> for HotBudget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(n) => Ok(HotBudget::Bytes(n)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// `--frame-delta-min-saving`: off, or the least a frame delta saves per byte re-encoded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FrameDeltaSaving {
    Off,
    MinSaving(f64),
}

impl std::str::FromStr for FrameDeltaSaving {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "off" {
            return Ok(FrameDeltaSaving::Off);
        }
        match s.parse::<f64>() {
            Ok(m) if (0.0..=1.0).contains(&m) => Ok(FrameDeltaSaving::MinSaving(m)),
            _ => Err(format!(
                "{s:?}: expected off or bytes saved per byte, from 0 to 1"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for FrameDeltaSaving {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Number(n) => n.to_string(),
            Raw::Text(t) => t,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
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
    restore_cache_bytes: Option<HotBudget>,
    similarity: Option<bool>,
    similarity_features: Option<usize>,
    similarity_super_features: Option<usize>,
    similarity_sample_bits: Option<u32>,
    delta_threshold: Option<f64>,
    similarity_candidates: Option<usize>,
    similarity_skip_compressed: Option<bool>,
    similarity_min_file_size: Option<u64>,
    frame_delta_min_saving: Option<FrameDeltaSaving>,
    similarity_index_entries: Option<usize>,
    zstd_frames: Option<stowage_actors::pipeline::ZstdFrames>,
    zstd_segment_cores: Option<u64>,
    min_restore_rate: Option<f64>,
    #[serde(default)]
    repo_policy: Vec<RepoPolicy>,
    #[serde(default, with = "humantime_serde")]
    gc_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    gc_delay: Option<Duration>,
    gc_compact_below: Option<f64>,
    #[serde(default)]
    retention: Vec<RetentionPolicy>,
    htpasswd: Option<PathBuf>,
    metrics_addr: Option<SocketAddr>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    #[serde(default)]
    access: Vec<crate::auth::policy::AccessRule>,
    #[serde(default)]
    anonymous: Vec<crate::auth::policy::AnonymousRule>,
    #[serde(default)]
    admins: Vec<String>,
    #[serde(default)]
    groups: std::collections::HashMap<String, Vec<String>>,
    token: Option<crate::auth::TokenConfig>,
    storage: Option<storage::StorageFile>,
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
    pub restore_cache_bytes: HotBudget,
    pub similarity: stowage_actors::pipeline::SimilarityConfig,
    pub similarity_index_entries: usize,
    pub zstd_frames: stowage_actors::pipeline::ZstdFrames,
    pub zstd_segment_cores: stowage_actors::engine::zstd_frames::SegmentCores,
    /// MB/s; 0: off.
    pub min_restore_rate: f64,
    pub repo_policies: Vec<RepoPolicy>,
    /// Zero: no background collection.
    pub gc_interval: Duration,
    pub gc_delay: Duration,
    pub gc_compact_below: f64,
    pub retention: Vec<RetentionPolicy>,
    /// Authentication is on when set.
    pub htpasswd: Option<PathBuf>,
    pub access: crate::auth::AccessConfig,
    /// Bearer tokens (`[token]`): authentication is on when set.
    pub token: Option<crate::auth::TokenConfig>,
    pub metrics_addr: Option<SocketAddr>,
    /// HTTPS when set: (certificate chain, private key).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Where containers are stored.
    pub storage: StorageConfig,
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
            restore_cache_bytes: HotBudget::Percent(10.0),
            similarity: Default::default(),
            similarity_index_entries: 2_000_000,
            zstd_frames: Default::default(),
            zstd_segment_cores: SegmentCores::Auto,
            min_restore_rate: 0.0,
            repo_policies: Vec::new(),
            gc_interval: Duration::from_secs(3600),
            gc_delay: Duration::from_secs(3600),
            gc_compact_below: 0.5,
            retention: Vec::new(),
            htpasswd: None,
            access: Default::default(),
            token: None,
            metrics_addr: None,
            tls: None,
            storage: StorageConfig::default(),
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
            similarity: {
                let ds = &d.similarity;
                stowage_actors::pipeline::SimilarityConfig {
                    enabled: args.similarity.or(file.similarity).unwrap_or(ds.enabled),
                    features: stowage_actors::engine::features::FeatureParams {
                        features: args
                            .similarity_features
                            .or(file.similarity_features)
                            .unwrap_or(ds.features.features),
                        super_features: args
                            .similarity_super_features
                            .or(file.similarity_super_features)
                            .unwrap_or(ds.features.super_features),
                        sample_bits: args
                            .similarity_sample_bits
                            .or(file.similarity_sample_bits)
                            .unwrap_or(ds.features.sample_bits),
                    },
                    threshold: args
                        .delta_threshold
                        .or(file.delta_threshold)
                        .unwrap_or(ds.threshold),
                    candidates: args
                        .similarity_candidates
                        .or(file.similarity_candidates)
                        .unwrap_or(ds.candidates),
                    skip_compressed: args
                        .similarity_skip_compressed
                        .or(file.similarity_skip_compressed)
                        .unwrap_or(ds.skip_compressed),
                    min_file_size: args
                        .similarity_min_file_size
                        .or(file.similarity_min_file_size)
                        .unwrap_or(ds.min_file_size),
                    frame_delta_min_saving: match args
                        .frame_delta_min_saving
                        .or(file.frame_delta_min_saving)
                    {
                        Some(FrameDeltaSaving::Off) => None,
                        Some(FrameDeltaSaving::MinSaving(m)) => Some(m),
                        None => ds.frame_delta_min_saving,
                    },
                }
            },
            similarity_index_entries: args
                .similarity_index_entries
                .or(file.similarity_index_entries)
                .unwrap_or(d.similarity_index_entries),
            zstd_frames: args
                .zstd_frames
                .or(file.zstd_frames)
                .unwrap_or(d.zstd_frames),
            zstd_segment_cores: args
                .zstd_segment_cores
                .or(file.zstd_segment_cores)
                .map_or(d.zstd_segment_cores, |n| SegmentCores::Fixed(n.clamp(1, 8))),
            min_restore_rate: args
                .min_restore_rate
                .or(file.min_restore_rate)
                .unwrap_or(d.min_restore_rate)
                .max(0.0),
            repo_policies: if args.repo_policy.is_empty() {
                file.repo_policy
            } else {
                args.repo_policy.clone()
            },
            gc_interval: args
                .gc_interval
                .or(file.gc_interval)
                .unwrap_or(d.gc_interval),
            gc_delay: args.gc_delay.or(file.gc_delay).unwrap_or(d.gc_delay),
            gc_compact_below: args
                .gc_compact_below
                .or(file.gc_compact_below)
                .unwrap_or(d.gc_compact_below),
            retention: if args.retention.is_empty() {
                file.retention
            } else {
                args.retention.clone()
            },
            htpasswd: args.htpasswd.clone().or(file.htpasswd),
            access: crate::auth::AccessConfig {
                access: file.access,
                anonymous: file.anonymous,
                admins: file.admins,
                groups: file.groups,
            },
            token: file.token,
            storage: StorageConfig::resolve(&args.storage, file.storage)?,
            metrics_addr: args.metrics_addr.or(file.metrics_addr),
            tls: match (
                args.tls_cert.clone().or(file.tls_cert),
                args.tls_key.clone().or(file.tls_key),
            ) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                _ => anyhow::bail!("TLS needs both tls_cert and tls_key"),
            },
        };
        crate::auth::Policy::new(&cfg.access).map_err(|e| anyhow::anyhow!("access rules: {e}"))?;
        let a = &cfg.access;
        anyhow::ensure!(
            cfg.htpasswd.is_some()
                || cfg.token.is_some()
                || (a.access.is_empty() && a.anonymous.is_empty() && a.admins.is_empty()),
            "access rules need an htpasswd file (htpasswd / --htpasswd) or a [token] section: without one nobody is authenticated"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&cfg.gc_compact_below),
            "gc_compact_below must be in [0, 1] (got {})",
            cfg.gc_compact_below
        );
        cfg.similarity
            .features
            .validate()
            .map_err(|e| anyhow::anyhow!("similarity: {e}"))?;
        anyhow::ensure!(
            (1..=16).contains(&cfg.similarity.candidates),
            "similarity_candidates must be between 1 and 16 (got {})",
            cfg.similarity.candidates
        );
        anyhow::ensure!(
            cfg.similarity.threshold > 0.0 && cfg.similarity.threshold <= 1.0,
            "delta_threshold must be in (0, 1] (got {})",
            cfg.similarity.threshold
        );
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

    /// `ServeArgs` reading a `stowage.toml` of `text` (kept while the directory lives).
    fn with_file(text: &str) -> (tempfile::TempDir, ServeArgs) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stowage.toml");
        std::fs::write(&path, text).unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..Default::default()
        };
        (dir, args)
    }

    #[test]
    fn flags_win_over_file_over_defaults() {
        let (_dir, file) =
            with_file("root = \"/srv/file\"\naddr = \"127.0.0.1:6000\"\nupload_ttl = \"2h\"\n");
        let args = ServeArgs {
            root: Some("/srv/flag".into()),
            ..file
        };
        let cfg = Config::resolve(&args).unwrap();
        assert_eq!(cfg.root, PathBuf::from("/srv/flag"));
        assert_eq!(cfg.addr, "127.0.0.1:6000".parse().unwrap());
        assert_eq!(cfg.upload_ttl, Duration::from_secs(7200));
        assert_eq!(cfg.max_manifest_bytes, 4 * 1024 * 1024);
    }

    #[test]
    fn zstd_segment_cores_from_flag_and_file() {
        let d = Config::resolve(&ServeArgs::default()).unwrap();
        assert_eq!(d.zstd_segment_cores, SegmentCores::Auto);
        let (_dir, file) = with_file("zstd_segment_cores = 4\n");
        assert_eq!(
            Config::resolve(&file).unwrap().zstd_segment_cores,
            SegmentCores::Fixed(4)
        );
        for (flag, want) in [(2, 2), (0, 1), (64, 8)] {
            let args = ServeArgs {
                config: file.config.clone(),
                zstd_segment_cores: Some(flag),
                ..Default::default()
            };
            assert_eq!(
                Config::resolve(&args).unwrap().zstd_segment_cores,
                SegmentCores::Fixed(want)
            );
        }
    }

    #[test]
    fn min_restore_rate_off_by_default_from_flag_and_file() {
        assert_eq!(
            Config::resolve(&ServeArgs::default())
                .unwrap()
                .min_restore_rate,
            0.0
        );
        let (_dir, file) = with_file("min_restore_rate = 10.0\n");
        assert_eq!(Config::resolve(&file).unwrap().min_restore_rate, 10.0);
        let args = ServeArgs {
            config: file.config.clone(),
            min_restore_rate: Some(2.5),
            ..Default::default()
        };
        assert_eq!(Config::resolve(&args).unwrap().min_restore_rate, 2.5);
    }

    #[test]
    fn frame_deltas_on_by_default_off_or_a_saving_from_flag_and_file() {
        use clap::Parser;
        let min = |a: &ServeArgs| {
            Config::resolve(a)
                .unwrap()
                .similarity
                .frame_delta_min_saving
        };
        assert_eq!(
            min(&ServeArgs::default()),
            Some(stowage_actors::engine::frame_delta::DEFAULT_MIN_SAVING)
        );
        let (_dir, file) = with_file("frame_delta_min_saving = \"off\"\n");
        assert_eq!(min(&file), None);
        let (_dir2, file) = with_file("frame_delta_min_saving = 0.25\n");
        assert_eq!(min(&file), Some(0.25));
        let (_dir3, file) = with_file("frame_delta_min_saving = 0\n");
        assert_eq!(min(&file), Some(0.0), "an integer in the file");
        let flag = ServeArgs {
            frame_delta_min_saving: Some("off".parse().unwrap()),
            ..file
        };
        assert_eq!(min(&flag), None, "the flag over the file");
        #[derive(Parser, Debug)]
        struct Cli {
            #[command(flatten)]
            _args: ServeArgs,
        }
        for bad in ["1.5", "-0.1", "never"] {
            let flag = format!("--frame-delta-min-saving={bad}");
            let e = Cli::try_parse_from(["serve", flag.as_str()]);
            assert!(e
                .unwrap_err()
                .to_string()
                .contains("expected off or bytes saved"));
        }
        let (_dir4, file) = with_file("frame_delta_min_saving = 2\n");
        assert!(Config::resolve(&file).is_err());
    }

    #[test]
    fn zstd_frames_policy_from_flag_and_file() {
        use clap::Parser;
        use stowage_actors::pipeline::ZstdFrames;
        assert_eq!(
            Config::resolve(&ServeArgs::default()).unwrap().zstd_frames,
            ZstdFrames::Auto
        );
        let (_dir, file) = with_file("zstd_frames = \"reencode\"\n");
        let cfg = Config::resolve(&file).unwrap();
        assert_eq!(cfg.zstd_frames, ZstdFrames::Reencode);
        let flag = ServeArgs {
            zstd_frames: Some("store".parse().unwrap()),
            ..file
        };
        assert_eq!(
            Config::resolve(&flag).unwrap().zstd_frames,
            ZstdFrames::Store
        );
        #[derive(Parser, Debug)]
        struct Cli {
            #[command(flatten)]
            _args: ServeArgs,
        }
        let bad = Cli::try_parse_from(["serve", "--zstd-frames", "sometimes"]);
        assert!(bad
            .unwrap_err()
            .to_string()
            .contains("expected auto, store or reencode"));
    }

    #[test]
    fn hot_budget_in_bytes_or_a_share_of_the_store() {
        assert_eq!(
            Config::resolve(&ServeArgs::default())
                .unwrap()
                .restore_cache_bytes,
            HotBudget::Percent(10.0),
            "default: a tenth of the logical bytes"
        );
        assert_eq!("0".parse(), Ok(HotBudget::Bytes(0)));
        assert_eq!("5%".parse(), Ok(HotBudget::Percent(5.0)));
        assert_eq!(HotBudget::Percent(10.0).resolve(1_000_000), 100_000);
        assert_eq!(HotBudget::Bytes(42).resolve(1_000_000), 42);
        assert!("lots".parse::<HotBudget>().is_err());
        assert!("-5%".parse::<HotBudget>().is_err());
        for (text, want) in [
            ("restore_cache_bytes = 1000\n", HotBudget::Bytes(1000)),
            ("restore_cache_bytes = \"25%\"\n", HotBudget::Percent(25.0)),
        ] {
            let (_dir, args) = with_file(text);
            assert_eq!(Config::resolve(&args).unwrap().restore_cache_bytes, want);
        }
    }

    #[test]
    fn repository_policies_from_flags_and_file() {
        let p = RepoPolicy::parse("ci/*=chunks@1h").unwrap();
        assert_eq!(p.dedup, PolicyMode::Chunks);
        assert_eq!(p.min_age, Some(Duration::from_secs(3600)));
        assert!(p.matches("ci/app") && p.matches("ci/a/b") && !p.matches("prod/ci/app"));
        assert!(RepoPolicy::parse("hot=raw").unwrap().matches("hot"));
        assert!(!RepoPolicy::parse("hot=raw").unwrap().matches("hotter"));
        assert!(RepoPolicy::parse("*cache*=full")
            .unwrap()
            .matches("a/cache/b"));
        assert!(RepoPolicy::parse("x=fast").is_err());
        assert!(RepoPolicy::parse("x=raw@soon").is_err());
        assert!(RepoPolicy::parse("nothing").is_err());

        let (_dir, args) = with_file(
            "similarity_super_features = 4\nsimilarity_features = 8\n\n\
             [[repo_policy]]\nrepositories = \"hot/*\"\ndedup = \"raw\"\n\n\
             [[repo_policy]]\nrepositories = \"*\"\ndedup = \"full\"\nmin_age = \"10m\"\n",
        );
        let cfg = Config::resolve(&args).unwrap();
        assert_eq!(cfg.similarity.features.super_features, 4);
        assert_eq!(cfg.repo_policies.len(), 2);
        assert_eq!(cfg.repo_policies[0].dedup, PolicyMode::Raw);
        assert_eq!(cfg.repo_policies[1].min_age, Some(Duration::from_secs(600)));
        let bad = ServeArgs {
            similarity_features: Some(7),
            similarity_super_features: Some(3),
            ..Default::default()
        };
        assert!(Config::resolve(&bad).is_err());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let (_dir, args) = with_file("rot = \"/x\"\n");
        let err = Config::resolve(&args).unwrap_err().to_string();
        assert!(err.contains("unknown field"), "{err}");
    }
}
