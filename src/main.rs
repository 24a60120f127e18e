//! `stowage`: a deduplicating OCI container registry.

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
        Command::Fsck { root } => {
            init_logging(LogFormat::Text);
            let _lock = lock::RootLock::acquire(&root)?;
            let started = std::time::Instant::now();
            let r = fsck::run(&root, Config::default().meta_map_size)?;
            let secs = started.elapsed().as_secs_f64();
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

    let data = web::Data::new(reg.clone());
    let http_metrics = web::Data::new(metrics::HttpMetrics::default());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(http_metrics.clone())
            .wrap_fn(http::middleware)
            .configure(http::configure)
    })
    .workers(cfg.workers)
    .shutdown_timeout(cfg.shutdown_timeout)
    .bind(cfg.addr)
    .map_err(|e| anyhow::anyhow!("binding {}: {e}", cfg.addr))?;
    for addr in server.addrs() {
        // Tests and scripts read this line to learn the port when --addr ends in :0.
        println!("stowage listening on http://{addr}");
        tracing::info!(%addr, "listening");
    }
    std::io::stdout().flush()?;
    // actix-web stops gracefully on SIGTERM and SIGINT: in-flight requests get
    // `shutdown_timeout` seconds to finish.
    server.run().await?;
    sweeper.abort();
    let _ = sweeper.await;
    tracing::info!("shutting down");
    reg.close();
    Ok(())
}
