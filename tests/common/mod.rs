//! Shared harness for the end-to-end tests: start the real `stowage` binary on a free port with
//! a temporary root, find external clients, and clean up every process a test starts.
#![allow(dead_code)]

pub mod garage;

#[path = "../../actors/tests/common/files.rs"]
mod files;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `stowage serve`. Killed (SIGKILL) on drop if still running.
pub struct Server {
    child: Option<Child>,
    /// `127.0.0.1:PORT`
    pub addr: String,
    pub root: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    /// The lines the server prints after its address.
    lines: std::sync::Mutex<mpsc::Receiver<String>>,
}

impl Server {
    /// Start on a fresh temporary root.
    pub fn start() -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut s = Server::start_at(tmp.path(), &[]);
        s._tmp = Some(tmp);
        s
    }

    /// Start with `root` as data directory (kept by the caller) and extra `serve` flags.
    pub fn start_at(root: &Path, extra: &[&str]) -> Server {
        Server::start_with_env(root, extra, &[])
    }

    /// As [`Server::start_at`], with extra environment variables.
    pub fn start_with_env(root: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let s3 = s3_flags(root, extra);
        let mut child = Command::new(env!("CARGO_BIN_EXE_stowage"))
            // The hot tier off unless a test asks for it: by default its size follows the
            // store (10%), which would make what a pull restores depend on timing.
            .env("STOWAGE_RESTORE_CACHE_BYTES", "0")
            .envs(env.iter().copied())
            .arg("serve")
            .arg("--root")
            .arg(root)
            .args(["--addr", "127.0.0.1:0", "--workers", "2"])
            .args(extra)
            .args(&s3)
            .env(
                "STOWAGE_LOG",
                std::env::var("STOWAGE_LOG").unwrap_or("warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start stowage");
        // The server prints its address once it is accepting connections.
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("stowage did not report its address within 60 s");
            }
        };
        let addr = line
            .rsplit("://")
            .next()
            .expect("address line")
            .trim()
            .to_string();
        Server {
            child: Some(child),
            addr,
            root: root.to_path_buf(),
            _tmp: None,
            lines: std::sync::Mutex::new(rx),
        }
    }

    /// The next line the server prints on stdout (bounded wait).
    pub fn next_line(&self) -> String {
        self.lines
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(30))
            .expect("a line from stowage within 30 s")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Wait (bounded) for the server to exit on its own; whether it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while let Some(c) = self.child.as_mut() {
            if let Ok(Some(_)) = c.try_wait() {
                self.child = None;
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// The server's process id (for signals).
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        match self.child.take() {
            Some(mut c) => {
                // SAFETY: plain kill(2) on our own child's pid.
                unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
                c.wait().map(|s| s.success()).unwrap_or(false)
            }
            None => true,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// With `STOWAGE_TEST_S3_ENDPOINT` and `STOWAGE_TEST_S3_BUCKET` set (`scripts/test` runs the
/// real-client tests a second time so, against a Garage it started, with the `AWS_*`
/// credentials in the environment), the
/// flags that put a server's containers in that bucket, under a prefix of its own that a
/// restart on the same root finds again; none otherwise, or when the test chose a storage.
fn s3_flags(root: &Path, extra: &[&str]) -> Vec<String> {
    let (Ok(endpoint), Ok(bucket)) = (
        std::env::var("STOWAGE_TEST_S3_ENDPOINT"),
        std::env::var("STOWAGE_TEST_S3_BUCKET"),
    ) else {
        return Vec::new();
    };
    if extra.iter().any(|a| a.starts_with("--storage")) {
        return Vec::new();
    }
    // FNV-1a of the root's path: one prefix per root.
    let prefix = root
        .to_string_lossy()
        .bytes()
        .fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
        });
    vec![
        "--storage".into(),
        format!("s3://{bucket}/{prefix:016x}"),
        "--s3-endpoint".into(),
        endpoint,
        "--s3-region".into(),
        "garage".into(),
        "--s3-path-style".into(),
        "true".into(),
    ]
}

/// The path of an external tool the test needs. The test command (`scripts/test`) installs
/// all of them; a missing one is a failed test, not a skipped one.
pub fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed: run scripts/test, which installs every client the tests use");
}

/// How the titles of the dashboard panels about the S3 backend end.
pub const S3_PANELS: &str = "(S3 backend)";

/// How the titles of the dashboard panels about replicas of a store in S3 end.
pub const S3_REPLICA_PANELS: &str = "(S3 replicas)";

/// Every `stowage_*` metric the shipped dashboards' panels (those `panel` selects by title)
/// query is in the exposition `text`; returns how many were checked.
pub fn assert_dashboards_query_what_exists(text: &str, panel: impl Fn(&str) -> bool) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let dash: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        for p in dash["panels"].as_array().unwrap() {
            let title = p["title"].as_str().unwrap_or("");
            if !panel(title) {
                continue;
            }
            for target in p["targets"].as_array().unwrap() {
                for name in metric_names(target["expr"].as_str().unwrap()) {
                    assert!(
                        text.contains(&format!("\n{name}")) || text.starts_with(&name),
                        "{}: panel {title:?} queries {name}, which /metrics does not expose",
                        path.display(),
                    );
                    checked += 1;
                }
            }
        }
    }
    checked
}

/// `stowage_*` metric names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("stowage_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// Prometheus' own checker (`promtool check metrics`) accepts the exposition `text`.
pub fn assert_promtool_accepts(text: &str) {
    use std::io::Write;
    let mut p = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run a command, panicking with its output if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}

pub fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// Push `data` to `repo` as one monolithic upload; its digest.
pub fn push_blob(s: &Server, c: &reqwest::blocking::Client, repo: &str, data: &[u8]) -> String {
    let d = digest_of(data);
    let r = c
        .post(s.url(&format!("/v2/{repo}/blobs/uploads/?digest={d}")))
        .body(data.to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::CREATED, "monolithic push");
    d
}

/// An uncompressed tar layer holding one regular file.
pub fn tar_of(name: &str, data: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, name, data).expect("tar entry");
    b.into_inner().expect("tar")
}

/// `n` deterministic pseudo-random bytes (xorshift), different per seed.
pub fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `n` bytes drawn from `alphabet` by an xorshift generator whose state `x` carries over
/// between calls (text-like test content that compresses, deterministic per starting state).
pub fn xorshift_text(x: &mut u64, n: usize, alphabet: &[u8]) -> Vec<u8> {
    (0..n)
        .map(|_| {
            *x ^= *x << 13;
            *x ^= *x >> 7;
            *x ^= *x << 17;
            alphabet[(*x % alphabet.len() as u64) as usize]
        })
        .collect()
}

/// The first `n` bytes of this machine's Perl and Python modules, file after file: real
/// files, on which a fresh klauspost encoder falls in line with a long frame's blocks
/// (synthetic text rarely lets it; see README, *A long klauspost frame in segments*).
pub fn system_files(n: usize) -> Vec<u8> {
    let data = files::files_under(
        &["/usr/share/perl", "/usr/lib/python3", "/usr/lib/python3.11"],
        n,
    );
    assert!(data.len() == n, "too few files here for {n} bytes");
    data
}

/// Run the offline command `stowage ARGS --root ROOT` to completion.
pub fn stowage(args: &[&str], root: &Path) -> Output {
    // The offline commands that read the store find it where the server keeps it.
    let s3 = match args.first() {
        Some(&("fsck" | "gc" | "rebuild-index")) => s3_flags(root, args),
        _ => Vec::new(),
    };
    Command::new(env!("CARGO_BIN_EXE_stowage"))
        .args(args)
        .arg("--root")
        .arg(root)
        .args(s3)
        .output()
        .expect("run stowage")
}

/// `stowage fsck` exits 0 on `root`; `context` names the case in the failure message.
pub fn assert_fsck_clean(root: &Path, context: &str) {
    let out = stowage(&["fsck"], root);
    assert!(
        out.status.success(),
        "{context}: fsck failed\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Wait (bounded, 120 s) until the dedup pipeline has processed every staged layer, so the
/// next reads are served from the deduplicated form. Returns the last `/_stats`.
pub fn wait_dedup_idle(stats_url: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let s: serde_json::Value = reqwest::blocking::get(stats_url)
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.json())
            .expect("GET /_stats");
        let pending = s["layers"]["pending"].as_u64().unwrap_or(0);
        if pending == 0 || std::time::Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A gzip (level 6) layer of one 1 MiB text file per seed, `opt/data/file-<seed>`: layers
/// built from overlapping seeds share files, and their restores re-encode for a while.
pub fn text_layer(seeds: impl IntoIterator<Item = u64>) -> Vec<u8> {
    use std::io::Write;
    let mut b = tar::Builder::new(Vec::new());
    for seed in seeds {
        let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
        let data = xorshift_text(&mut x, 1 << 20, b"abcdefghijklmnop \n");
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, format!("opt/data/file-{seed}"), &data[..])
            .unwrap();
    }
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    e.write_all(&b.into_inner().unwrap()).unwrap();
    e.finish().unwrap()
}

/// GET a blob linked in `repo`: it must answer 200; its bytes.
pub fn pull_blob(s: &Server, c: &reqwest::blocking::Client, repo: &str, d: &str) -> Vec<u8> {
    let r = c
        .get(s.url(&format!("/v2/{repo}/blobs/{d}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    r.bytes().unwrap().to_vec()
}

/// An htpasswd file under `dir` written by Apache's own `htpasswd -B` (bcrypt, cost 4 to keep
/// tests fast): each user's password is `pw-of-<user>`.
pub fn htpasswd(dir: &Path, users: &[&str]) -> PathBuf {
    let path = dir.join("htpasswd");
    for (i, u) in users.iter().enumerate() {
        let mut c = Command::new(tool("htpasswd"));
        c.args(["-B", "-C", "4", "-b"]);
        if i == 0 {
            c.arg("-c");
        }
        c.arg(&path).arg(u).arg(format!("pw-of-{u}"));
        run(&mut c);
    }
    path
}

/// A test certificate authority and a server certificate it signed for 127.0.0.1, made with
/// the openssl command line.
pub struct TestCa {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Make a CA under `dir` and a server certificate (`serial`) for 127.0.0.1 signed by it.
pub fn test_ca(dir: &Path) -> TestCa {
    let ca = dir.join("ca.pem");
    let ca_key = dir.join("ca-key.pem");
    let openssl = tool("openssl");
    if !ca.exists() {
        run(Command::new(&openssl)
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=stowage test CA", "-keyout"])
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca));
    }
    server_cert(dir, 1)
}

/// A server certificate for 127.0.0.1 with serial `serial`, signed by the CA under `dir`.
pub fn server_cert(dir: &Path, serial: u32) -> TestCa {
    let openssl = tool("openssl");
    let (ca, ca_key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    let key = dir.join(format!("server-{serial}-key.pem"));
    let csr = dir.join(format!("server-{serial}.csr"));
    let cert = dir.join(format!("server-{serial}.pem"));
    let ext = dir.join("san.ext");
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(Command::new(&openssl)
        .args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    run(Command::new(&openssl)
        .args(["x509", "-req", "-days", "2", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(&ca)
        .arg("-CAkey")
        .arg(&ca_key)
        .args(["-set_serial", &serial.to_string(), "-extfile"])
        .arg(&ext)
        .arg("-out")
        .arg(&cert));
    TestCa { ca, cert, key }
}

/// Access rules the client tests share: `writer` may pull and push `team/**`, `reader` may
/// pull it.
pub const TEAM_RULES: &str = "[[access]]\nrepositories = [\"team/**\"]\nusers = [\"writer\"]\nactions = [\"pull\", \"push\"]\n\
     [[access]]\nrepositories = [\"team/**\"]\nusers = [\"reader\"]\nactions = [\"pull\"]\n";

/// A server with authentication on, under `dir`: users `users` (passwords `pw-of-<user>`),
/// the access `rules` (TOML), bearer tokens from its own `/token` when `token`, and HTTPS
/// with `tls` when given.
pub fn auth_server(
    dir: &Path,
    users: &[&str],
    rules: &str,
    token: bool,
    tls: Option<&TestCa>,
) -> Server {
    let pw = htpasswd(dir, users);
    let cfg = dir.join("stowage.toml");
    let token_section = if token { "[token]\n" } else { "" };
    std::fs::write(&cfg, format!("{rules}{token_section}")).unwrap();
    let mut args = vec![
        "--htpasswd".to_string(),
        pw.display().to_string(),
        "--config".into(),
        cfg.display().to_string(),
    ];
    if let Some(t) = tls {
        args.extend(["--tls-cert".into(), t.cert.display().to_string()]);
        args.extend(["--tls-key".into(), t.key.display().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_at(&dir.join("root"), &args)
}
