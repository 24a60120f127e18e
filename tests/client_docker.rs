//! Docker Engine (Debian's docker.io) against the real binary: import, build (legacy builder,
//! FROM + COPY), push, rmi, pull by tag and by digest (image id unchanged), cross-repository
//! mount on a push to a second repository, several tags; versions collected by retention and
//! garbage collection, the kept one pulled back with the same image id.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{run, tool, wait_dedup_idle, Server};

/// A private dockerd, stopped (and its directories removed) on drop.
struct Dockerd {
    child: Option<Child>,
    dir: PathBuf,
    host: String,
}

impl Dockerd {
    fn start() -> Dockerd {
        // Short paths: the exec-root holds unix sockets whose paths must stay short.
        // One per test: tests of this file run in one process, in parallel.
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = PathBuf::from(format!("/tmp/dk{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("d.sock");
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let child = Command::new(tool("dockerd"))
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .args(["--storage-driver=vfs", "--data-root"])
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("e"))
            .arg("--pidfile")
            .arg(dir.join("d.pid"))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start dockerd");
        let mut d = Dockerd {
            child: Some(child),
            host: format!("unix://{}", sock.display()),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if d.docker(&["info"]).status.success() {
                break;
            }
            if let Some(Ok(Some(st))) = d.child.as_mut().map(|c| c.try_wait()) {
                panic!("dockerd exited ({st}): {}", d.log());
            }
            assert!(Instant::now() < deadline, "dockerd not ready: {}", d.log());
            std::thread::sleep(Duration::from_millis(200));
        }
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    fn cmd(&self) -> Command {
        // Debian's client, not another `docker` earlier on PATH.
        let mut c = Command::new("/usr/bin/docker");
        c.arg("-H").arg(&self.host).env("DOCKER_BUILDKIT", "0");
        c.env("DOCKER_CONFIG", self.dir.join("cfg"));
        c
    }

    fn docker(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run docker")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = run(self.cmd().args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // Anything dockerd left mounted under its directories must go before removal.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let prefix = self.dir.to_string_lossy().to_string();
            let mut points: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|p| p.starts_with(&prefix))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for p in points {
                let _ = Command::new("umount").arg("-l").arg(p).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rootfs_tar(path: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut x = 0x1234_5678_9abc_def1u64;
    let big: Vec<u8> = (0..3_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    for (name, data) in [
        ("etc/os-release", b"NAME=stowage-test\n".to_vec()),
        ("usr/lib/big.bin", big),
        (
            "usr/share/doc/readme",
            b"hello from the base image\n".repeat(100),
        ),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.finish().unwrap();
}

#[test]
fn docker_build_push_rmi_pull() {
    let s = Server::start();
    let d = Dockerd::start();
    let ctx = tempfile::tempdir().unwrap();
    rootfs_tar(&ctx.path().join("rootfs.tar"));
    d.ok(&[
        "import",
        ctx.path().join("rootfs.tar").to_str().unwrap(),
        "stowage-test-base:1",
    ]);

    let build = ctx.path().join("build");
    std::fs::create_dir(&build).unwrap();
    std::fs::write(build.join("app.txt"), b"application file\n".repeat(5000)).unwrap();
    std::fs::write(
        build.join("data.bin"),
        (0..2_000_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    std::fs::write(
        build.join("Dockerfile"),
        "FROM stowage-test-base:1\nCOPY app.txt /opt/app/\nCOPY data.bin /opt/app/\n\
         ENV APP=stowage\nLABEL org.example.test=docker\n",
    )
    .unwrap();
    d.ok(&["build", "-t", "stowage-test-app:1", build.to_str().unwrap()]);

    let image = format!("{}/dock/app:v1", s.addr);
    d.ok(&["tag", "stowage-test-app:1", &image]);
    let id = d
        .ok(&["image", "inspect", "-f", "{{.Id}}", &image])
        .trim()
        .to_string();
    d.ok(&["push", &image]);
    let repo_digest = d
        .ok(&["image", "inspect", "-f", "{{index .RepoDigests 0}}", &image])
        .trim()
        .to_string();
    assert!(repo_digest.contains("@sha256:"), "{repo_digest}");

    // Second tag of the same image in the same repository.
    let image2 = format!("{}/dock/app:latest", s.addr);
    d.ok(&["tag", "stowage-test-app:1", &image2]);
    d.ok(&["push", &image2]);
    let tags: serde_json::Value = reqwest::blocking::get(s.url("/v2/dock/app/tags/list"))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["latest", "v1"]));

    // Push to another repository: layers are mounted, not uploaded again.
    let blobs_before = stats(&s)["blobs"].clone();
    let other = format!("{}/dock/other:v2", s.addr);
    d.ok(&["tag", "stowage-test-app:1", &other]);
    let out = d.ok(&["push", &other]);
    assert!(
        out.contains("Mounted from") || out.contains("Layer already exists"),
        "{out}"
    );
    assert_eq!(stats(&s)["blobs"], blobs_before, "no blob stored twice");

    // Docker compresses layers with Go's compress/gzip: every layer must be stored as
    // chunks (re-encoded exactly on pull), none kept raw.
    let st = wait_dedup_idle(&s.url("/_stats"));
    assert_eq!(st["layers"]["pending"], 0, "{st}");
    assert_eq!(st["layers"]["raw"], 0, "{}", st["layers"]);
    let encodings = st["layers"]["encodings"].as_object().unwrap();
    assert!(
        encodings.keys().any(|k| k.starts_with("gzip-go-")),
        "{}",
        st["layers"]
    );

    // Remove everything local, pull back: the same image id.
    for img in [
        &image,
        &image2,
        &other,
        "stowage-test-app:1",
        "stowage-test-base:1",
    ] {
        d.ok(&["rmi", "-f", img]);
    }
    assert!(!d.docker(&["image", "inspect", &image]).status.success());
    d.ok(&["pull", &image]);
    let pulled = d
        .ok(&["image", "inspect", "-f", "{{.Id}}", &image])
        .trim()
        .to_string();
    assert_eq!(pulled, id, "image id unchanged after push and pull");

    // By digest too.
    d.ok(&["rmi", "-f", &image]);
    d.ok(&["pull", &repo_digest]);
    let by_digest = d
        .ok(&["image", "inspect", "-f", "{{.Id}}", &repo_digest])
        .trim()
        .to_string();
    assert_eq!(by_digest, id);
    let label = d.ok(&[
        "image",
        "inspect",
        "-f",
        "{{index .Config.Labels \"org.example.test\"}}",
        &repo_digest,
    ]);
    assert_eq!(label.trim(), "docker");
}

fn stats(s: &Server) -> serde_json::Value {
    reqwest::blocking::get(s.url("/_stats"))
        .unwrap()
        .json()
        .unwrap()
}

/// Docker pushes two versions; retention keeps the last, a collection pass removes the other
/// (its layer's chunks and containers too), and docker pulls the kept one back with the same
/// image id, fsck clean.
#[test]
fn docker_versions_collected_and_the_kept_one_pulls_back() {
    let root = tempfile::tempdir().unwrap();
    let mut s = Server::start_at(
        root.path(),
        &[
            "--gc-interval",
            "0",
            "--gc-delay",
            "0s",
            "--retention",
            "dock/*=keep-last:1",
        ],
    );
    let d = Dockerd::start();
    let ctx = tempfile::tempdir().unwrap();
    rootfs_tar(&ctx.path().join("rootfs.tar"));
    d.ok(&[
        "import",
        ctx.path().join("rootfs.tar").to_str().unwrap(),
        "stowage-gc-base:1",
    ]);
    let mut ids = Vec::new();
    for v in 1..=2u32 {
        let build = ctx.path().join(format!("build{v}"));
        std::fs::create_dir(&build).unwrap();
        std::fs::write(
            build.join("data.bin"),
            (0..1_500_000u32)
                .map(|i| (i.wrapping_mul(2654435761).wrapping_add(v * 7919) >> 13) as u8)
                .collect::<Vec<u8>>(),
        )
        .unwrap();
        std::fs::write(
            build.join("Dockerfile"),
            "FROM stowage-gc-base:1\nCOPY data.bin /opt/app/\n",
        )
        .unwrap();
        let image = format!("{}/dock/gc:v{v}", s.addr);
        d.ok(&["build", "-t", &image, build.to_str().unwrap()]);
        ids.push(
            d.ok(&["image", "inspect", "-f", "{{.Id}}", &image])
                .trim()
                .to_string(),
        );
        d.ok(&["push", &image]);
        // Distinct push times: "the last pushed" is well defined.
        std::thread::sleep(Duration::from_millis(1100));
    }
    wait_dedup_idle(&s.url("/_stats"));
    let before = stats(&s);
    let report: serde_json::Value = reqwest::blocking::Client::new()
        .post(s.url("/_gc"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(report["retention"]["tags_deleted"], 1, "{report}");
    assert!(report["blobs_removed"].as_u64().unwrap() >= 2, "{report}");
    assert!(report["chunks_removed"].as_u64().unwrap() > 0, "{report}");
    let after = stats(&s);
    assert!(
        after["chunks"]["stored_bytes"].as_u64() < before["chunks"]["stored_bytes"].as_u64(),
        "{before} -> {after}"
    );
    for v in 1..=2 {
        d.ok(&["rmi", "-f", &format!("{}/dock/gc:v{v}", s.addr)]);
    }
    d.ok(&["rmi", "-f", "stowage-gc-base:1"]);
    assert!(!d
        .docker(&["pull", &format!("{}/dock/gc:v1", s.addr)])
        .status
        .success());
    let kept = format!("{}/dock/gc:v2", s.addr);
    d.ok(&["pull", &kept]);
    let pulled = d
        .ok(&["image", "inspect", "-f", "{{.Id}}", &kept])
        .trim()
        .to_string();
    assert_eq!(pulled, ids[1], "image id unchanged after the collection");
    assert!(s.stop());
    common::assert_fsck_clean(root.path(), "docker versions collected");
}

/// `docker login` then push and pull, with Basic authentication and with bearer tokens from
/// stowage's own token server, over plain HTTP and over TLS: refused before login, refused for
/// a user without push, the image id unchanged after the pull. (Docker takes 127.0.0.0/8 as
/// an insecure registry: it speaks TLS to it but does not check the certificate; skopeo and
/// python-dxf check it against the test CA in their tests.)
#[test]
fn docker_login_push_pull_with_basic_and_bearer_auth() {
    let d = Dockerd::start();
    let ctx = tempfile::tempdir().unwrap();
    rootfs_tar(&ctx.path().join("rootfs.tar"));
    d.ok(&[
        "import",
        ctx.path().join("rootfs.tar").to_str().unwrap(),
        "stowage-auth-base:1",
    ]);
    let id = d
        .ok(&["image", "inspect", "-f", "{{.Id}}", "stowage-auth-base:1"])
        .trim()
        .to_string();
    let certs = tempfile::tempdir().unwrap();
    let tls = common::test_ca(certs.path());
    for (token, https) in [(false, false), (true, false), (true, true)] {
        let dir = tempfile::tempdir().unwrap();
        let s = common::auth_server(
            dir.path(),
            &["writer", "reader"],
            common::TEAM_RULES,
            token,
            https.then_some(&tls),
        );
        let mode = match (token, https) {
            (false, _) => "basic",
            (true, false) => "bearer",
            (true, true) => "bearer-tls",
        };
        let image = format!("{}/team/app:{mode}", s.addr);
        d.ok(&["tag", "stowage-auth-base:1", &image]);
        let out = d.docker(&["push", &image]);
        assert!(
            !out.status.success(),
            "{mode}: a push without login went through"
        );
        let login = |user: &str| {
            let mut c = d.cmd();
            c.args(["login", "-u", user, "--password-stdin", &s.addr]);
            c.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = c.spawn().unwrap();
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(format!("pw-of-{user}\n").as_bytes())
                .unwrap();
            child.wait_with_output().unwrap()
        };
        let bad = {
            let mut c = d.cmd();
            c.args(["login", "-u", "writer", "--password-stdin", &s.addr]);
            c.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = c.spawn().unwrap();
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(b"wrong\n").unwrap();
            child.wait_with_output().unwrap()
        };
        assert!(
            !bad.status.success(),
            "{mode}: login with a wrong password succeeded"
        );
        let out = login("reader");
        assert!(
            out.status.success(),
            "{mode}: reader login: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = d.docker(&["push", &image]);
        assert!(!out.status.success(), "{mode}: reader pushed");
        let out = login("writer");
        assert!(
            out.status.success(),
            "{mode}: writer login: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        d.ok(&["push", &image]);
        d.ok(&["rmi", &image]);
        d.ok(&["logout", &s.addr]);
        assert!(
            !d.docker(&["pull", &image]).status.success(),
            "{mode}: pulled after logout"
        );
        assert!(login("reader").status.success());
        d.ok(&["pull", &image]);
        let got = d
            .ok(&["image", "inspect", "-f", "{{.Id}}", &image])
            .trim()
            .to_string();
        assert_eq!(got, id, "{mode}: image id after the pull");
        d.ok(&["rmi", &image]);
        d.ok(&["logout", &s.addr]);
    }
}
