//! A Garage server (S3-compatible) for the tests: one node on loopback, a generated config,
//! the single-node layout, one key and one bucket, all made by `garage server --single-node
//! --default-bucket`. Garage is AGPL: it runs as a separate process, never linked.
//!
//! `scripts/test` installs the pinned version under `target/garage/`; `STOWAGE_TEST_GARAGE`
//! names another binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stowage_actors::storage::{Bucket, Location, S3Options};

/// The bucket every test server has; tests keep apart by prefix.
pub const BUCKET: &str = "stowage-test";
const KEY_ID: &str = "GK0123456789abcdef01234567";
const SECRET: &str = "8a3f0c1d2e4b5a6978c0d1e2f3a4b5c6d7e8f90123456789abcdef0123456789";

pub struct Garage {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    dir: tempfile::TempDir,
    config: PathBuf,
}

/// The Garage binary the tests use.
pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("STOWAGE_TEST_GARAGE") {
        return p.into();
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/garage/bin/garage");
    assert!(
        p.exists(),
        "{} is not installed: run scripts/test, which installs the pinned Garage",
        p.display()
    );
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Garage {
    pub fn start() -> Garage {
        let dir = tempfile::tempdir().expect("tempdir");
        let (rpc, s3) = (free_port(), free_port());
        let config = dir.path().join("garage.toml");
        std::fs::write(
            &config,
            format!(
                r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"
"#,
                meta = dir.path().join("meta").display(),
                data = dir.path().join("data").display(),
                secret = SECRET,
            ),
        )
        .expect("writing garage.toml");
        let mut g = Garage {
            child: None,
            endpoint: format!("http://127.0.0.1:{s3}"),
            dir,
            config,
        };
        g.restart();
        g
    }

    /// Starts the server again (after [`Garage::stop`]) on the same data and ports.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "garage is running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("garage.log"))
            .expect("garage log");
        let child = Command::new(binary())
            .arg("-c")
            .arg(&self.config)
            .args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_DEFAULT_ACCESS_KEY", KEY_ID)
            .env("GARAGE_DEFAULT_SECRET_KEY", SECRET)
            .env("GARAGE_DEFAULT_BUCKET", BUCKET)
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary().display()));
        self.child = Some(child);
        self.wait_ready();
    }

    /// Waits until the bucket answers an authenticated request (a HEAD of the bucket: 200).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = self.endpoint.trim_start_matches("http://").to_string();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("garage exited ({status}) at start:\n{}", self.log());
            }
            // Listening is enough to try; the key and bucket exist once a listed bucket shows.
            if std::net::TcpStream::connect(&addr).is_ok() && self.bucket_exists() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "garage not ready in 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn bucket_exists(&self) -> bool {
        Command::new(binary())
            .arg("-c")
            .arg(&self.config)
            .args(["bucket", "info", BUCKET])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("garage.log")).unwrap_or_default()
    }

    /// The environment a client of this Garage needs (as `stowage serve` reads it).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", KEY_ID.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.to_string()),
            ("AWS_REGION", "garage".to_string()),
        ]
    }

    /// How stowage reaches this Garage (requests given up after `timeout`, if set).
    pub fn s3_options(&self, timeout: Option<Duration>) -> S3Options {
        S3Options {
            endpoint: Some(self.endpoint.clone()),
            region: Some("garage".into()),
            path_style: true,
            access_key_id: Some(KEY_ID.into()),
            secret_access_key: Some(SECRET.into()),
            timeout,
        }
    }

    /// The test bucket under `prefix`, as a [`Bucket`].
    pub fn bucket(&self, prefix: &str, timeout: Option<Duration>) -> Bucket {
        let loc = Location::parse(&format!("s3://{BUCKET}/{prefix}")).unwrap();
        Bucket::open(&loc, &self.s3_options(timeout)).unwrap()
    }

    pub fn key_id(&self) -> &'static str {
        KEY_ID
    }

    pub fn secret(&self) -> &'static str {
        SECRET
    }

    /// Stops the server (SIGKILL, by its pid) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.stop();
    }
}
