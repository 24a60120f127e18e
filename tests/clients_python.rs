//! The Python registry clients from PyPI against the real binary: oras-py (chunked artifact
//! push and pull) and python-dxf (blob store API: monolithic and streamed blob pushes, aliases,
//! deletes, mounts). The Python side lives in `tests/python/*.py`; the interpreter is the venv
//! `scripts/test` creates (`STOWAGE_TEST_PYTHON`, else `target/test-venv/bin/python`).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{digest_of, run, wait_dedup_idle, Server};
use reqwest::blocking::Client;
use reqwest::header::{ACCEPT, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::StatusCode;
use serde_json::Value;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MIB: usize = 1 << 20;

/// The venv interpreter with `oras` and `dxf` installed.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("STOWAGE_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/python");
    if p.exists() {
        return p;
    }
    panic!(
        "no Python with oras and python-dxf: STOWAGE_TEST_PYTHON is unset and {} does not exist; \
         run scripts/test, which creates that venv",
        p.display()
    );
}

/// `python tests/python/<script> args...`, panicking with its output on failure; its stdout.
fn py(script: &str, args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    // oras-py leaves temporary directories behind: give it one of ours, removed on return.
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = run(Command::new(python())
        .arg(script)
        .args(args)
        .env("TMPDIR", tmp.path())
        .env("PYTHONDONTWRITEBYTECODE", "1"));
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// `n` bytes from the kernel's random source (incompressible, so nothing can shortcut them).
fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n);
    fs::File::open("/dev/urandom")
        .unwrap()
        .take(n as u64)
        .read_to_end(&mut v)
        .unwrap();
    assert_eq!(v.len(), n);
    v
}

/// Every regular file below `dir`, by path relative to it.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
                out.insert(rel, fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn assert_same_tree(expected: &Path, got: &Path) {
    let (a, b) = (tree(expected), tree(got));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "pulled file set differs"
    );
    for (name, data) in &a {
        // Not assert_eq! on the bytes: a 10 MiB diff is useless output.
        assert!(
            data == &b[name],
            "{name}: pulled {} bytes (sha256 {}), pushed {} bytes (sha256 {})",
            b[name].len(),
            digest_of(&b[name]),
            data.len(),
            digest_of(data)
        );
    }
}

/// `stowage serve` with JSON info logs on stderr captured in a file, so a test can see the
/// requests the clients really made. Killed on drop.
struct LoggedServer {
    child: Child,
    addr: String,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl LoggedServer {
    fn start() -> LoggedServer {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("stderr.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_stowage"))
            .arg("serve")
            .arg("--root")
            .arg(tmp.path().join("root"))
            .args([
                "--addr",
                "127.0.0.1:0",
                "--workers",
                "2",
                "--log-format",
                "json",
            ])
            .env("STOWAGE_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("start stowage");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "stowage did not report its address within 60 s; stderr:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        let addr = line
            .rsplit("http://")
            .next()
            .expect("address line")
            .trim()
            .to_string();
        LoggedServer {
            child,
            addr,
            log,
            _tmp: tmp,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The request log records so far: (method, path, status).
    fn requests(&self) -> Vec<(String, String, u64)> {
        fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["fields"]["message"] == "request")
            .map(|v| {
                let f = &v["fields"];
                (
                    f["method"].as_str().unwrap_or("").to_string(),
                    f["path"].as_str().unwrap_or("").to_string(),
                    f["status"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }
}

impl Drop for LoggedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get_json(c: &Client, url: &str) -> Value {
    let r = c.get(url).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK, "GET {url}");
    r.json().unwrap()
}

fn get_blob(c: &Client, url: &str, digest: &str) -> Vec<u8> {
    let r = c.get(url).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK, "GET {url}");
    let body = r.bytes().unwrap().to_vec();
    assert_eq!(digest_of(&body), digest, "GET {url} returned other bytes");
    body
}

#[test]
fn oras_py_chunked_push_and_pull() {
    const CHUNK: usize = MIB;
    let server = LoggedServer::start();
    let c = Client::new();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir_all(src.join("dir/sub")).unwrap();

    // Files: one > 10 MiB (11 PATCHes of 1 MiB, the last one short), one of 2 chunks, one
    // tiny, one empty (no PATCH at all), and a directory that oras-py sends as a tar.gz layer.
    let big = random_bytes(10 * MIB + 12_345);
    let medium = random_bytes(MIB + MIB / 2);
    fs::write(src.join("big.bin"), &big).unwrap();
    fs::write(src.join("medium.bin"), &medium).unwrap();
    fs::write(src.join("small.txt"), b"hello from oras-py\n").unwrap();
    fs::write(src.join("empty.txt"), b"").unwrap();
    let text: String = (0..3000)
        .map(|i| format!("line {i} of a text file\n"))
        .collect();
    fs::write(src.join("dir/a.txt"), &text).unwrap();
    fs::write(src.join("dir/sub/b.txt"), &text).unwrap();
    fs::write(src.join("dir/sub/random.bin"), random_bytes(200_000)).unwrap();
    let files = ["big.bin", "medium.bin", "small.txt", "empty.txt"];

    let reference = format!("{}/py/oras-artifact:v1", server.addr);
    let mut args = vec![
        "push",
        server.addr.as_str(),
        reference.as_str(),
        src.to_str().unwrap(),
        "1048576",
    ];
    args.extend(files);
    args.push("dir");
    let pushed = py("oras_roundtrip.py", &args);
    let manifest_digest = pushed.trim().to_string();
    assert!(
        manifest_digest.starts_with("sha256:"),
        "push printed {pushed:?}"
    );

    // The manifest through the HTTP API, as an OCI client asks for it.
    let r = c
        .get(server.url("/v2/py/oras-artifact/manifests/v1"))
        .header(ACCEPT, OCI_MANIFEST)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[CONTENT_TYPE], OCI_MANIFEST);
    assert_eq!(
        r.headers()["docker-content-digest"],
        manifest_digest.as_str()
    );
    let body = r.bytes().unwrap();
    assert_eq!(
        digest_of(&body),
        manifest_digest,
        "manifest bytes vs digest"
    );
    let m: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(m["schemaVersion"], 2);
    assert_eq!(m["mediaType"], OCI_MANIFEST);
    assert_eq!(m["annotations"]["org.example.test"], "clients_python");
    let config_digest = m["config"]["digest"].as_str().unwrap();
    get_blob(
        &c,
        &server.url(&format!("/v2/py/oras-artifact/blobs/{config_digest}")),
        config_digest,
    );
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), files.len() + 1, "one layer per pushed path");
    let mut layer_digests = Vec::new();
    for (layer, name) in layers.iter().zip(files.iter().chain(["dir"].iter())) {
        assert_eq!(
            layer["annotations"]["org.opencontainers.image.title"],
            *name
        );
        let digest = layer["digest"].as_str().unwrap().to_string();
        let size = layer["size"].as_u64().unwrap() as usize;
        if *name == "dir" {
            assert_eq!(
                layer["mediaType"],
                "application/vnd.oci.image.layer.v1.tar+gzip"
            );
        } else {
            let data = fs::read(src.join(name)).unwrap();
            assert_eq!(digest, digest_of(&data), "{name}: layer digest");
            assert_eq!(size, data.len(), "{name}: layer size");
        }
        layer_digests.push((digest, size));
    }

    // The upload really was chunked: one session per layer with ceil(size / 1 MiB) PATCHes,
    // each acknowledged with 202 (the config blob goes monolithic: POST then PUT).
    let reqs = server.requests();
    let mut per_session: HashMap<String, usize> = HashMap::new();
    for (method, path, status) in &reqs {
        if method == "PATCH" {
            assert_eq!(*status, 202, "PATCH {path}");
            assert!(
                path.starts_with("/v2/py/oras-artifact/blobs/uploads/"),
                "{path}"
            );
            *per_session.entry(path.clone()).or_default() += 1;
        }
    }
    let mut observed: Vec<usize> = per_session.values().copied().collect();
    observed.sort_unstable();
    let mut expected: Vec<usize> = layer_digests
        .iter()
        .map(|(_, size)| size.div_ceil(CHUNK))
        .filter(|&n| n > 0)
        .collect();
    expected.sort_unstable();
    let patches: usize = observed.iter().sum();
    eprintln!("oras-py: {patches} PATCH requests, per upload session {observed:?}");
    assert_eq!(observed, expected, "PATCHes per upload session");
    assert!(observed.contains(&11), "the > 10 MiB file took 11 PATCHes");
    let puts = reqs
        .iter()
        .filter(|(m, p, s)| m == "PUT" && p.contains("/blobs/uploads/") && *s == 201)
        .count();
    assert_eq!(puts, layers.len() + 1, "one completing PUT per blob");

    // Pull into another directory: every file byte for byte, the directory re-extracted.
    let out1 = work.path().join("out1");
    let pulled = py(
        "oras_roundtrip.py",
        &["pull", &server.addr, &reference, out1.to_str().unwrap()],
    );
    assert_eq!(pulled.lines().count(), layers.len(), "pulled: {pulled}");
    assert_same_tree(&src, &out1);

    // Pushing the same artifact again under another tag uploads nothing (HEAD finds blobs).
    let reference2 = format!("{}/py/oras-artifact:v2", server.addr);
    args[2] = &reference2;
    let again = py("oras_roundtrip.py", &args);
    assert_eq!(again.trim(), manifest_digest, "same manifest, same digest");
    let patches_after = server
        .requests()
        .iter()
        .filter(|(m, _, _)| m == "PATCH")
        .count();
    assert_eq!(patches_after, patches, "re-push must not upload again");
    let tags = get_json(&c, &server.url("/v2/py/oras-artifact/tags/list"));
    assert_eq!(tags["tags"], serde_json::json!(["v1", "v2"]));

    // Once the dedup pipeline is done with the layers, they still come back bit for bit.
    let stats = wait_dedup_idle(&server.url("/_stats"));
    eprintln!("oras-py: /_stats after push: {}", stats["layers"]);
    for (digest, size) in &layer_digests {
        let b = get_blob(
            &c,
            &server.url(&format!("/v2/py/oras-artifact/blobs/{digest}")),
            digest,
        );
        assert_eq!(b.len(), *size);
    }
    let out2 = work.path().join("out2");
    let ref_v2 = format!("{}/py/oras-artifact:v2", server.addr);
    py(
        "oras_roundtrip.py",
        &["pull", &server.addr, &ref_v2, out2.to_str().unwrap()],
    );
    assert_same_tree(&src, &out2);
}

/// Range requests on a blob of `data` (python-dxf has no ranged pull, so plain HTTP).
fn check_ranges(c: &Client, url: &str, data: &[u8]) {
    let n = data.len();
    for (range, start, end) in [
        ("bytes=100-199".to_string(), 100, 199),
        (format!("bytes={}-", n - 10), n - 10, n - 1),
        ("bytes=-10".to_string(), n - 10, n - 1),
        (
            format!("bytes={}-{}", MIB - 3, 2 * MIB + 5),
            MIB - 3,
            2 * MIB + 5,
        ),
        (format!("bytes=0-{}", n + 1000), 0, n - 1),
    ] {
        let r = c.get(url).header(RANGE, &range).send().unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            r.headers()[CONTENT_RANGE].to_str().unwrap(),
            format!("bytes {start}-{end}/{n}"),
            "{range}"
        );
        let body = r.bytes().unwrap_or_else(|e| panic!("{range}: {e}"));
        assert!(body[..] == data[start..=end], "{range}: wrong bytes");
    }
    let r = c
        .get(url)
        .header(RANGE, format!("bytes={n}-"))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        r.headers()[CONTENT_RANGE].to_str().unwrap(),
        format!("bytes */{n}")
    );
}

#[test]
fn python_dxf_blobs_and_aliases() {
    let server = Server::start();
    let c = Client::new();
    let work = tempfile::tempdir().unwrap();
    let big = random_bytes(6 * MIB + 777);
    let small = b"a small blob from python-dxf\n".to_vec();
    fs::write(work.path().join("big.bin"), &big).unwrap();
    fs::write(work.path().join("small.bin"), &small).unwrap();
    let repo = "py/dxf-store";

    // push_blob, blob_size, pull_blob, set_alias, get_alias, list_aliases, mount_blob.
    let out = py(
        "dxf_ops.py",
        &["push", &server.addr, repo, work.path().to_str().unwrap()],
    );
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let (d_big, d_small) = (digest_of(&big), digest_of(&small));
    assert_eq!(v["blobs"]["big"]["digest"], d_big.as_str());
    assert_eq!(v["blobs"]["small"]["digest"], d_small.as_str());
    let d_streamed = v["blobs"]["streamed"]["digest"]
        .as_str()
        .unwrap()
        .to_string();

    // The alias is a Docker schema 2 manifest, served back byte for byte.
    let r = c
        .get(server.url(&format!("/v2/{repo}/manifests/v1")))
        .header(ACCEPT, DOCKER_MANIFEST)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[CONTENT_TYPE], DOCKER_MANIFEST);
    assert_eq!(r.text().unwrap(), v["manifest"].as_str().unwrap());

    // Ranged reads, from staging and again once dedup has processed the blobs.
    let big_url = server.url(&format!("/v2/{repo}/blobs/{d_big}"));
    check_ranges(&c, &big_url, &big);
    wait_dedup_idle(&server.url("/_stats"));
    check_ranges(&c, &big_url, &big);
    get_blob(&c, &big_url, &d_big);

    // The mirror repository got only what was mounted into it.
    let mirror = format!("{repo}-mirror");
    get_blob(
        &c,
        &server.url(&format!("/v2/{mirror}/blobs/{d_small}")),
        &d_small,
    );
    let r = c
        .get(server.url(&format!("/v2/{mirror}/blobs/{d_big}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "big was never linked");
    let catalog = get_json(&c, &server.url("/v2/_catalog"));
    assert_eq!(catalog["repositories"], serde_json::json!([repo, mirror]));

    // del_alias and del_blob (each checked inside the script), then what must remain.
    let out = py(
        "dxf_ops.py",
        &["delete", &server.addr, repo, "v1", &d_big, &d_small],
    );
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["remaining_aliases"], serde_json::json!(["v2"]));
    for d in [&d_big, &d_small] {
        let r = c
            .head(server.url(&format!("/v2/{repo}/blobs/{d}")))
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{d} deleted from {repo}");
    }
    let r = c
        .get(server.url(&format!("/v2/{repo}/manifests/v1")))
        .header(ACCEPT, DOCKER_MANIFEST)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "alias v1 deleted");
    // Deleting from one repository leaves the other's link, and the other alias, intact.
    get_blob(
        &c,
        &server.url(&format!("/v2/{mirror}/blobs/{d_small}")),
        &d_small,
    );
    get_blob(
        &c,
        &server.url(&format!("/v2/{repo}/blobs/{d_streamed}")),
        &d_streamed,
    );
}

/// oras-py (`login`, chunked push, pull; plain HTTP) and python-dxf (`authenticate`; it sends
/// credentials only over TLS, so over HTTPS with a test CA) with Basic authentication and with
/// bearer tokens from stowage's `/token`.
#[test]
fn oras_and_dxf_with_basic_and_bearer_auth() {
    let certs = tempfile::tempdir().unwrap();
    let tls = common::test_ca(certs.path());
    for (token, https) in [(false, false), (true, false), (false, true), (true, true)] {
        let dir = tempfile::tempdir().unwrap();
        let s = common::auth_server(
            dir.path(),
            &["writer", "reader"],
            common::TEAM_RULES,
            token,
            https.then_some(&tls),
        );
        let work = tempfile::tempdir().unwrap();
        let w = work.path().to_str().unwrap();
        if https {
            let out = py(
                "auth_clients.py",
                &["dxf", &s.addr, w, tls.ca.to_str().unwrap()],
            );
            assert!(out.contains("dxf ok"), "{out}");
        } else {
            let backend = if token { "token" } else { "basic" };
            let out = py("auth_clients.py", &["oras", &s.addr, w, backend]);
            assert!(out.contains("oras ok"), "{out}");
        }
    }
}
