//! `stowage`: a deduplicating OCI container registry.

mod auth;
mod config;
mod error;
mod fsck;
mod http;
mod lock;
mod meta;
mod metrics;
mod names;
mod registry;
mod store;
mod synthetic;

use std::io::Write;

use actix_web::{web, App, HttpServer};
use clap::{Parser, Subcommand};

use config::{Config, LogFormat, ServeArgs};
use registry::Registry;

#[derive(Parser)]
#[command(
    name = "stowage",
    version,
    about = "A deduplicating OCI container registry"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry.
    Serve(Box<ServeArgs>),
    /// Check offline that every blob (deduplicated or not) still produces its digest.
    Fsck {
        /// Data directory [default: ./stowage-data].
        #[arg(long, env = "STOWAGE_ROOT", default_value = "./stowage-data")]
        root: std::path::PathBuf,
        /// Where the containers are, as for `serve`.
        #[command(flatten)]
        storage: config::StorageArgs,
    },
    /// Collect garbage offline: apply the retention policies, then remove unreachable blobs,
    /// chunks and containers older than the grace period, and compact sparse containers.
    /// Refused while a server holds the directory (use `POST /_gc` then).
    Gc {
        /// Settings as for `serve` (root, retention policies, gc_delay, gc_compact_below).
        #[command(flatten)]
        args: Box<ServeArgs>,
        /// Report what would go; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write a large synthetic store for benchmarks (`benches/gc-memory`).
    #[command(hide = true)]
    SyntheticStore {
        #[arg(long)]
        root: std::path::PathBuf,
        /// Chunks to write.
        #[arg(long, default_value_t = 1_000_000)]
        chunks: u64,
        /// Share of the chunks in layers a tagged manifest keeps.
        #[arg(long, default_value_t = 0.4)]
        kept: f64,
    },
    /// Rebuild the local index (the metadata store under ROOT/meta) from the bucket: its newest
    /// metadata checkpoint, then every journal entry after it. `serve` does this by itself on
    /// an empty data directory; this starts over when the local index is damaged or stale (the
    /// old one is kept beside it). Offline: refused while a server holds the directory.
    RebuildIndex {
        /// Data directory [default: ./stowage-data].
        #[arg(long, env = "STOWAGE_ROOT", default_value = "./stowage-data")]
        root: std::path::PathBuf,
        /// The bucket, as for `serve` (`--storage s3://...`).
        #[command(flatten)]
        storage: config::StorageArgs,
    },
    /// Rewrite the metadata store without its free pages (offline). LMDB reuses freed pages
    /// but never shrinks its file; this gives the space back after heavy churn.
    Compact {
        /// Data directory [default: ./stowage-data].
        #[arg(long, env = "STOWAGE_ROOT", default_value = "./stowage-data")]
        root: std::path::PathBuf,
    },
}

fn init_logging(format: LogFormat) {
    // actix-http logs malformed requests at ERROR: clients probing TLS on a plain-HTTP port
    // (skopeo, podman, buildah with --tls-verify=false do) are not server errors.
    let filter = tracing_subscriber::EnvFilter::try_from_env("STOWAGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        .add_directive(
            "actix_http::h1::dispatcher=off"
                .parse()
                .expect("valid directive"),
        );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// glibc gives each thread that allocates its own malloc arena and keeps freed memory there.
/// With actix workers, the pipeline's sync arbiters and the rayon pool of the parallel
/// re-encoders, that tripled peak RSS in the benchmark (178 MB against 85 MB with two arenas,
/// same push and pull times). An operator's own MALLOC_ARENA_MAX wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

fn main() -> anyhow::Result<()> {
    limit_malloc_arenas();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let cfg = Config::resolve(&args)?;
            init_logging(cfg.log_format);
            actix_web::rt::System::new().block_on(serve(cfg))
        }
        Command::Gc { args, dry_run } => {
            let cfg = Config::resolve(&args)?;
            init_logging(cfg.log_format);
            let _lock = lock::RootLock::acquire(&cfg.root)?;
            anyhow::ensure!(
                cfg.root.join("meta").exists(),
                "{} holds no stowage store",
                cfg.root.display()
            );
            actix_web::rt::System::new().block_on(offline_gc(cfg, dry_run))
        }
        Command::SyntheticStore { root, chunks, kept } => {
            init_logging(LogFormat::Text);
            let _lock = lock::RootLock::acquire(&root)?;
            synthetic::build(&root, chunks, kept, Config::default().meta_map_size)
        }
        Command::RebuildIndex { root, storage } => {
            init_logging(LogFormat::Text);
            let _lock = lock::RootLock::acquire(&root)?;
            let storage = config::StorageConfig::resolve(&storage, None)?;
            rebuild_index(&root, &storage)
        }
        Command::Compact { root } => {
            init_logging(LogFormat::Text);
            let _lock = lock::RootLock::acquire(&root)?;
            let dir = root.join("meta");
            anyhow::ensure!(dir.exists(), "{} holds no stowage store", root.display());
            eprintln!("compact: rewriting {} ...", dir.display());
            let (before, after) = meta::compact(&dir, Config::default().meta_map_size)?;
            println!(
                "compact: {} bytes -> {} bytes ({:.1} MB given back)",
                before,
                after,
                before.saturating_sub(after) as f64 / 1e6
            );
            Ok(())
        }
        Command::Fsck { root, storage } => {
            init_logging(LogFormat::Text);
            let _lock = lock::RootLock::acquire(&root)?;
            let started = std::time::Instant::now();
            let storage = config::StorageConfig::resolve(&storage, None)?;
            let r = fsck::run(&root, Config::default().meta_map_size, &storage)?;
            let secs = started.elapsed().as_secs_f64();
            for p in &r.strays {
                eprintln!("fsck: STRAY {p} (removed at the next start or collection)");
            }
            for p in &r.problems {
                eprintln!("fsck: PROBLEM {p}");
            }
            println!(
                "fsck: {} blobs, {} bytes checked in {secs:.1} s ({:.0} MB/s), {} problems",
                r.blobs,
                r.bytes,
                r.bytes as f64 / secs.max(1e-9) / 1e6,
                r.problems.len()
            );
            if !r.problems.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// `stowage gc`: one pass with a progress bar on stderr, the report as JSON on stdout.
async fn offline_gc(cfg: Config, dry_run: bool) -> anyhow::Result<()> {
    let reg = Registry::open(cfg.clone(), false)
        .map_err(|e| anyhow::anyhow!("opening {}: {e}", cfg.root.display()))?;
    let bar = indicatif::ProgressBar::new(1);
    bar.set_style(
        indicatif::ProgressStyle::with_template("gc: {msg:10} [{bar:40}] {pos}/{len} {elapsed}")
            .expect("valid template"),
    );
    let progress = |phase: &str, done: u64, total: u64| {
        bar.set_message(phase.to_string());
        bar.set_length(total.max(1));
        bar.set_position(done);
    };
    let opts = registry::gc::GcOptions {
        dry_run,
        delay: cfg.gc_delay,
    };
    let report = reg.gc_with_progress(opts, &progress).await;
    bar.finish_and_clear();
    let report = report.map_err(|e| anyhow::anyhow!("gc: {e}"))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    eprintln!(
        "gc: {} blobs, {} chunks, {} containers removed, {} compacted; {:.1} MB -> {:.1} MB in {:.1} s{}",
        report.blobs_removed,
        report.chunks_removed,
        report.containers_removed,
        report.containers_compacted,
        report.stored_bytes_before as f64 / 1e6,
        report.stored_bytes_after as f64 / 1e6,
        report.seconds,
        if dry_run { " (dry run)" } else { "" }
    );
    reg.close();
    Ok(())
}

fn rebuild_index(root: &std::path::Path, storage: &config::StorageConfig) -> anyhow::Result<()> {
    use meta::checkpoint::Progress;
    let containers = registry::open_containers(root, storage)?;
    let Some(bucket) = containers.blocking() else {
        anyhow::bail!("rebuild-index rebuilds from a bucket: give --storage s3://BUCKET/PREFIX");
    };
    let dir = root.join("meta");
    let data = dir.join("data.mdb");
    if data.exists() {
        let kept = dir.join(format!("data.mdb.before-rebuild-{}", meta::now()));
        std::fs::rename(&data, &kept)?;
        let _ = std::fs::remove_file(dir.join("lock.mdb"));
        eprintln!("rebuild-index: the old index is kept as {}", kept.display());
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "rebuild-index: {msg} [{bar:30}] {pos}/{len} entries",
        )
        .expect("valid template"),
    );
    let progress = |p: Progress| match p {
        Progress::Checkpoint { seq, bytes } => bar.println(format!(
            "rebuild-index: checkpoint at entry {seq} fetched ({:.1} MB)",
            bytes as f64 / 1e6
        )),
        Progress::Replayed { done, of } => {
            bar.set_length(of);
            bar.set_position(done);
            bar.set_message("replaying the journal");
        }
    };
    let (meta, rec) = meta::Meta::open_journaled(
        &dir,
        config::Config::default().meta_map_size,
        bucket.clone(),
        false,
        &progress,
    )?;
    bar.finish_and_clear();
    let counts = {
        let t = meta.read()?;
        meta.counts(&t)?
    };
    meta.close();
    println!(
        "rebuild-index: {} repositories, {} manifests, {} tags, {} blobs; checkpoint {}, {} journal entries replayed, index at entry {} in {:.1} s",
        counts.repositories,
        counts.manifests,
        counts.tags,
        counts.blobs,
        rec.checkpoint.map_or("none".to_string(), |s| s.to_string()),
        rec.replayed,
        rec.seq,
        rec.seconds
    );
    Ok(())
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let _lock = lock::RootLock::acquire(&cfg.root)?;
    let reg = Registry::open(cfg.clone(), true)
        .map_err(|e| anyhow::anyhow!("opening {}: {e}", cfg.root.display()))?;
    let pending = reg.resume_pending().await?;
    tracing::info!(root = %cfg.root.display(), pending, dedup = ?cfg.dedup, "store opened");

    let sweeper = {
        let reg = reg.clone();
        let every = cfg.upload_sweep_interval;
        actix_web::rt::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if let Err(e) = reg.expire_uploads().await {
                    tracing::error!(error = %e, "upload expiry failed");
                }
            }
        })
    };

    // Restored layers whose announced pulls never came.
    let spool_pruner = {
        let reg = reg.clone();
        actix_web::rt::spawn(async move {
            let mut tick = tokio::time::interval(stowage_actors::flight::LINGER / 2);
            loop {
                tick.tick().await;
                reg.prune_flights();
            }
        })
    };

    // Pull times by tag, written in batches.
    let pull_times = {
        let reg = reg.clone();
        actix_web::rt::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                if let Err(e) = reg.flush_pull_times().await {
                    tracing::error!(error = %e, "recording pull times failed");
                }
            }
        })
    };
    // A replica follows the writer's journal.
    let follower = reg.is_replica().then(|| {
        let reg = reg.clone();
        actix_web::rt::spawn(async move {
            let mut tick = tokio::time::interval(registry::FOLLOW_INTERVAL);
            loop {
                tick.tick().await;
                if let Err(e) = reg.follow().await {
                    tracing::error!(error = %e, "following the writer's journal failed");
                }
            }
        })
    });
    // With the store on an object store: metadata checkpoints, so a rebuild replays little.
    let checkpoints = {
        let reg = reg.clone();
        actix_web::rt::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
            let mut last = std::time::Instant::now();
            loop {
                tick.tick().await;
                if let Err(e) = reg.maybe_checkpoint(&mut last).await {
                    tracing::error!(error = %e, "writing a metadata checkpoint failed");
                }
            }
        })
    };
    let collector = (!cfg.gc_interval.is_zero() && !cfg.storage.replica).then(|| {
        let reg = reg.clone();
        let (every, delay) = (cfg.gc_interval, cfg.gc_delay);
        actix_web::rt::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                let opts = registry::gc::GcOptions {
                    dry_run: false,
                    delay,
                };
                // Failures are logged and counted by the pass itself.
                let _ = reg.gc(opts).await;
            }
        })
    });

    let gate = web::Data::new(if cfg.htpasswd.is_some() || cfg.token.is_some() {
        auth::Gate::new(
            cfg.htpasswd.as_deref(),
            cfg.token.as_ref(),
            &cfg.access,
            &cfg.root.join("auth"),
        )?
    } else {
        auth::Gate::off()
    });
    let certificate = match &cfg.tls {
        Some((cert, key)) => Some(auth::tls::Certificate::open(cert, key)?),
        None => None,
    };
    let gate = web::Data::new(
        std::sync::Arc::into_inner(gate.into_inner())
            .expect("the gate is not shared yet")
            .with_certificate(certificate.clone()),
    );
    if gate.enabled() && certificate.is_none() && !cfg.addr.ip().is_loopback() {
        tracing::warn!(addr = %cfg.addr, "authentication is on over plain HTTP on a non-loopback address: passwords travel in clear text; put TLS in front");
    }
    // SIGHUP: read the htpasswd file and the TLS certificate again.
    let hup = {
        let gate = gate.clone();
        actix_web::rt::spawn(async move {
            let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            while s.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading");
                gate.reload();
            }
        })
    };

    let data = web::Data::new(reg.clone());
    // A replica forwards writes to the writer, when told where it is.
    let writer = web::Data::new(
        cfg.storage
            .writer_url
            .as_deref()
            .map(http::forward::Writer::new),
    );
    let http_metrics = web::Data::new(metrics::HttpMetrics::default());
    let mut metrics_addrs = Vec::new();
    let metrics_server = match cfg.metrics_addr {
        Some(addr) => {
            let (data, http_metrics, gate) = (data.clone(), http_metrics.clone(), gate.clone());
            let s = HttpServer::new(move || {
                App::new()
                    .app_data(data.clone())
                    .app_data(http_metrics.clone())
                    .app_data(gate.clone())
                    .route("/metrics", web::get().to(http::open_metrics))
            })
            .workers(1)
            .bind(addr)
            .map_err(|e| anyhow::anyhow!("binding the metrics address {addr}: {e}"))?;
            metrics_addrs = s.addrs();
            Some(s.run())
        }
        None => None,
    };
    let metrics_handle = metrics_server.as_ref().map(|s| s.handle());
    let metrics_task = metrics_server.map(actix_web::rt::spawn);
    let tls = match &certificate {
        Some(c) => Some(c.server_config()?),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let (server, addr) = http::server::serve(
        http::server::Listen {
            addr: cfg.addr,
            workers: cfg.workers,
            shutdown_timeout: cfg.shutdown_timeout,
            tls,
        },
        move || {
            App::new()
                .app_data(data.clone())
                .app_data(http_metrics.clone())
                .app_data(gate.clone())
                .app_data(writer.clone())
                .wrap_fn(http::middleware)
                .configure(http::configure)
        },
    )
    .map_err(|e| anyhow::anyhow!("binding {}: {e}", cfg.addr))?;
    // Tests and scripts read this line to learn the port when --addr ends in :0.
    println!("stowage listening on {scheme}://{addr}");
    tracing::info!(%addr, "listening");
    for addr in metrics_addrs {
        // After the main address: scripts read the first line for it.
        println!("stowage metrics on http://{addr}/metrics");
        tracing::info!(%addr, "metrics listening");
    }
    std::io::stdout().flush()?;
    // actix-web stops gracefully on SIGTERM and SIGINT: in-flight requests get
    // `shutdown_timeout` seconds to finish.
    server.await?;
    hup.abort();
    if let Some(h) = metrics_handle {
        h.stop(true).await;
    }
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    sweeper.abort();
    spool_pruner.abort();
    let _ = sweeper.await;
    pull_times.abort();
    checkpoints.abort();
    if let Some(f) = follower {
        f.abort();
    }
    if let Some(c) = collector {
        c.abort();
        let _ = c.await;
    }
    if let Err(e) = reg.flush_pull_times().await {
        tracing::error!(error = %e, "recording pull times failed");
    }
    tracing::info!("shutting down");
    reg.close();
    Ok(())
}
