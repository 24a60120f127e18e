//! End-to-end tests with the real container clients from Debian: skopeo, podman, buildah and
//! umoci push to, pull from, copy within and delete from a real `stowage` over plain HTTP.
//!
//! Every test starts its own server and keeps all client state (storage roots, HOME,
//! registries.conf, signature policy) in its own temporary directory. No container is run:
//! images are built from scratch (umoci, buildah) without network access.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{digest_of, run, sha256_hex, tool, wait_dedup_idle, Server};
use reqwest::blocking::Client;
use reqwest::StatusCode;
use serde_json::Value;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// A private environment for the clients of one test.
struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().expect("tempdir");
        let e = Env { tmp };
        fs::create_dir_all(e.path("home")).unwrap();
        // No search registries, no mirrors, nothing from the host's configuration.
        fs::write(e.path("registries.conf"), "").unwrap();
        fs::write(e.path("containers.conf"), "").unwrap();
        // podman and buildah refuse a REGISTRY_AUTH_FILE that does not exist.
        fs::write(e.path("auth.json"), r#"{"auths":{}}"#).unwrap();
        fs::write(
            e.path("policy.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .unwrap();
        e
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn cmd(&self, name: &str) -> Command {
        let mut c = Command::new(tool(name));
        c.env("HOME", self.path("home"))
            .env("XDG_CONFIG_HOME", self.path("home/.config"))
            .env("CONTAINERS_REGISTRIES_CONF", self.path("registries.conf"))
            .env("CONTAINERS_CONF", self.path("containers.conf"))
            .env("TMPDIR", self.tmp.path())
            // Logins stay in the test's own file, not the host's /run/containers/<uid>.
            .env("REGISTRY_AUTH_FILE", self.path("auth.json"))
            .stdin(Stdio::null());
        c
    }

    fn skopeo(&self) -> Command {
        let mut c = self.cmd("skopeo");
        c.arg("--policy").arg(self.path("policy.json"));
        c
    }

    fn umoci(&self) -> Command {
        self.cmd("umoci")
    }

    fn podman(&self) -> Command {
        let mut c = self.cmd("podman");
        c.arg("--root")
            .arg(self.path("storage"))
            .arg("--runroot")
            .arg(self.path("run"))
            .arg("--tmpdir")
            .arg(self.path("libpod-tmp"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "none",
            ]);
        c
    }

    /// buildah sharing podman's storage, so podman can use what buildah commits.
    fn buildah(&self) -> Command {
        let mut c = self.cmd("buildah");
        c.arg("--root")
            .arg(self.path("storage"))
            .arg("--runroot")
            .arg(self.path("run"))
            .args(["--storage-driver", "vfs"]);
        c
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn json_out(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Deterministic pseudo-random bytes (xorshift64*), so no test depends on a random source.
fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A small directory tree: a couple of text files, a nested directory and a ~2 MB random file.
fn make_tree(dir: &Path, seed: u64) {
    fs::create_dir_all(dir.join("etc/app")).unwrap();
    fs::create_dir_all(dir.join("usr/share/doc")).unwrap();
    fs::write(dir.join("etc/app/config.toml"), format!("seed = {seed}\n")).unwrap();
    fs::write(
        dir.join("usr/share/doc/README"),
        "stowage client test\n".repeat(200),
    )
    .unwrap();
    fs::write(dir.join("random.bin"), pseudo_random(seed, 2 * 1024 * 1024)).unwrap();
}

/// An OCI image layout at `layout` with tag `tag` and one gzip layer holding a tree at `/data`.
fn make_layout(env: &Env, layout: &Path, tag: &str, seed: u64) {
    let tree = env.path(&format!("tree-{seed}"));
    make_tree(&tree, seed);
    run(env.umoci().arg("init").arg("--layout").arg(layout));
    let image = format!("{}:{tag}", layout.display());
    run(env.umoci().args(["new", "--image", &image]));
    run(env
        .umoci()
        .args(["insert", "--image", &image])
        .arg(&tree)
        .arg("/data"));
    run(env.umoci().args([
        "config",
        "--image",
        &image,
        "--config.label",
        "test=stowage",
    ]));
}

/// The image tagged `tag` in an OCI layout.
struct OciImage {
    manifest_digest: String,
    manifest: Vec<u8>,
    config: String,
    layers: Vec<String>,
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').expect("digest");
    layout.join("blobs").join(alg).join(hex)
}

fn read_blob(layout: &Path, digest: &str) -> Vec<u8> {
    let b = fs::read(blob_path(layout, digest)).unwrap_or_else(|e| panic!("blob {digest}: {e}"));
    assert_eq!(
        digest_of(&b),
        digest,
        "layout blob content matches its name"
    );
    b
}

fn oci_image(layout: &Path, tag: &str) -> OciImage {
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).expect("index.json");
    let desc = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no {tag} in {index}"));
    let manifest_digest = desc["digest"].as_str().unwrap().to_string();
    let manifest = read_blob(layout, &manifest_digest);
    let m: Value = serde_json::from_slice(&manifest).unwrap();
    OciImage {
        manifest_digest,
        config: m["config"]["digest"].as_str().unwrap().to_string(),
        layers: m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect(),
        manifest,
    }
}

fn client() -> Client {
    Client::builder().build().unwrap()
}

fn stats(s: &Server) -> Value {
    let r = client().get(s.url("/_stats")).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK, "/_stats");
    r.json().expect("/_stats is JSON")
}

/// GET a blob through `repo` and check it is served whole and matches its digest.
/// Once dedup is idle, every blob pushed so far is stored as chunks (none kept raw), and the
/// layers were recognised as written by klauspost/pgzip (what containers/image compresses with).
fn assert_all_deduplicated_as_pgzip(s: &Server) {
    let st = wait_dedup_idle(&s.url("/_stats"));
    let layers = &st["layers"];
    assert_eq!(layers["pending"], 0, "{layers}");
    assert_eq!(layers["raw"], 0, "{layers}");
    let encodings = layers["encodings"].as_object().unwrap();
    assert!(
        encodings.keys().any(|k| k.starts_with("gzip-pgzip-")),
        "{layers}"
    );
}

fn fetch_blob(s: &Server, repo: &str, digest: &str) -> Vec<u8> {
    let r = client()
        .get(s.url(&format!("/v2/{repo}/blobs/{digest}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "GET {repo} blob {digest}");
    let body = r.bytes().unwrap().to_vec();
    assert_eq!(digest_of(&body), digest, "{repo} blob {digest} content");
    body
}

/// GET a manifest by tag or digest; returns (Content-Type, Docker-Content-Digest, body).
fn fetch_manifest(s: &Server, repo: &str, reference: &str) -> (String, String, Vec<u8>) {
    let r = client()
        .get(s.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("Accept", MANIFEST_ACCEPT)
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "GET {repo} manifest {reference}"
    );
    let h = |n: &str| {
        r.headers()
            .get(n)
            .unwrap_or_else(|| panic!("manifest response lacks {n}"))
            .to_str()
            .unwrap()
            .to_string()
    };
    let (ct, dcd) = (h("content-type"), h("docker-content-digest"));
    let body = r.bytes().unwrap().to_vec();
    assert_eq!(
        dcd,
        digest_of(&body),
        "Docker-Content-Digest of {repo}:{reference}"
    );
    (ct, dcd, body)
}

fn docker_ref(s: &Server, name: &str) -> String {
    format!("docker://{}/{name}", s.addr)
}

fn inspect_raw(env: &Env, reference: &str) -> Vec<u8> {
    run(env
        .skopeo()
        .args(["inspect", "--raw", "--tls-verify=false", reference]))
    .stdout
}

fn inspect(env: &Env, reference: &str) -> Value {
    json_out(&run(env.skopeo().args([
        "inspect",
        "--tls-verify=false",
        reference,
    ])))
}

fn gunzip(path: &Path) -> Vec<u8> {
    let f = fs::File::open(path).unwrap();
    run(Command::new(tool("gzip")).arg("-dc").stdin(f)).stdout
}

#[test]
fn skopeo_push_inspect_pull_mount_delete() {
    let env = Env::new();
    let mut s = Server::start();
    let src = env.path("src");
    make_layout(&env, &src, "v1", 1);
    let img = oci_image(&src, "v1");
    assert_eq!(img.layers.len(), 1, "umoci insert made one layer");
    let oci_src = format!("oci:{}:v1", src.display());

    // Push.
    let app = docker_ref(&s, "test/app:v1");
    run(env
        .skopeo()
        .args(["copy", "--dest-tls-verify=false", &oci_src, &app]));

    // The raw manifest is byte for byte the one in the layout (skopeo pushes it unchanged).
    let raw = inspect_raw(&env, &app);
    assert_eq!(
        digest_of(&raw),
        img.manifest_digest,
        "pushed manifest digest"
    );
    assert_eq!(raw, img.manifest, "raw manifest bytes");
    let (ct, dcd, body) = fetch_manifest(&s, "test/app", "v1");
    assert_eq!(ct, OCI_MANIFEST);
    assert_eq!(dcd, img.manifest_digest);
    assert_eq!(body, img.manifest);
    // umoci writes pgzip with 256 KiB blocks: stored as chunks too; what follows pulls from them.
    assert_all_deduplicated_as_pgzip(&s);

    let info = inspect(&env, &app);
    assert_eq!(info["Digest"], img.manifest_digest.as_str());
    assert_eq!(info["Layers"], serde_json::json!(img.layers));
    assert_eq!(
        info["Labels"]["test"], "stowage",
        "config read through the registry"
    );
    assert_eq!(info["RepoTags"], serde_json::json!(["v1"]));

    // A second tag, and list-tags.
    run(env.skopeo().args([
        "copy",
        "--dest-tls-verify=false",
        &oci_src,
        &docker_ref(&s, "test/app:v2"),
    ]));
    let tags = json_out(&run(env.skopeo().args([
        "list-tags",
        "--tls-verify=false",
        &docker_ref(&s, "test/app"),
    ])));
    assert_eq!(tags["Tags"], serde_json::json!(["v1", "v2"]), "{tags}");

    // Pull back into a fresh layout: every blob identical to the source.
    let out = env.path("out");
    run(env.skopeo().args([
        "copy",
        "--src-tls-verify=false",
        &app,
        &format!("oci:{}:v1", out.display()),
    ]));
    let back = oci_image(&out, "v1");
    assert_eq!(back.manifest_digest, img.manifest_digest);
    assert_eq!(back.manifest, img.manifest);
    assert_eq!(back.config, img.config);
    assert_eq!(back.layers, img.layers);
    for d in std::iter::once(&img.config).chain(&img.layers) {
        assert_eq!(
            read_blob(&out, d),
            read_blob(&src, d),
            "blob {d} round trip"
        );
    }

    // Copy registry → registry into another repository: the blobs are mounted, not stored twice.
    let before = stats(&s);
    let other = docker_ref(&s, "other/app:v1");
    run(env.skopeo().args([
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &app,
        &other,
    ]));
    let after = stats(&s);
    assert_eq!(
        after["blobs"], before["blobs"],
        "cross-repository copy stored no new blob: before {before}, after {after}"
    );
    assert_eq!(
        after["bytes"]["logical"], before["bytes"]["logical"],
        "logical bytes unchanged: before {before}, after {after}"
    );
    assert_eq!(digest_of(&inspect_raw(&env, &other)), img.manifest_digest);
    for d in std::iter::once(&img.config).chain(&img.layers) {
        let r = client()
            .head(s.url(&format!("/v2/other/app/blobs/{d}")))
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "HEAD other/app blob {d}");
        assert_eq!(
            fetch_blob(&s, "other/app", d),
            read_blob(&src, d),
            "other/app blob {d}"
        );
    }

    // A deeply nested repository name.
    let nested = docker_ref(&s, "a/b/c/d/e/f/g/h:v1");
    run(env
        .skopeo()
        .args(["copy", "--dest-tls-verify=false", &oci_src, &nested]));
    assert_eq!(inspect_raw(&env, &nested), img.manifest);
    let tags = json_out(&run(env.skopeo().args([
        "list-tags",
        "--tls-verify=false",
        &docker_ref(&s, "a/b/c/d/e/f/g/h"),
    ])));
    assert_eq!(tags["Tags"], serde_json::json!(["v1"]));
    let catalog: Value = client()
        .get(s.url("/v2/_catalog"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    for repo in ["a/b/c/d/e/f/g/h", "other/app", "test/app"] {
        assert!(
            catalog["repositories"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == repo),
            "{repo} in {catalog}"
        );
    }

    // Delete (skopeo deletes the manifest by digest): gone from test/app, v2 with it, while
    // other/app still serves its copy.
    run(env.skopeo().args(["delete", "--tls-verify=false", &app]));
    for tag in ["v1", "v2"] {
        let out = env
            .skopeo()
            .args([
                "inspect",
                "--raw",
                "--tls-verify=false",
                &docker_ref(&s, &format!("test/app:{tag}")),
            ])
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "test/app:{tag} still inspectable after delete"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("manifest unknown"), "stderr: {err}");
    }
    let r = client()
        .get(s.url(&format!("/v2/test/app/manifests/{}", img.manifest_digest)))
        .header("Accept", MANIFEST_ACCEPT)
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "deleted manifest by digest"
    );
    assert_eq!(
        inspect_raw(&env, &other),
        img.manifest,
        "other/app unaffected"
    );
    for d in &img.layers {
        fetch_blob(&s, "other/app", d);
    }

    assert!(s.stop(), "server exits cleanly on SIGTERM");
}

#[test]
fn podman_push_pull_and_manifest_list() {
    let env = Env::new();
    let mut s = Server::start();
    let src = env.path("src");
    make_layout(&env, &src, "v1", 2);
    let img = oci_image(&src, "v1");
    let image_id = img.config.trim_start_matches("sha256:").to_string();

    // Load the layout into podman's storage: the image id is the config digest. podman names
    // the image after the layout's path, which must be lowercase: use a relative one.
    let out = run(env
        .podman()
        .current_dir(env.tmp.path())
        .args(["pull", "-q", "oci:src:v1"]));
    assert_eq!(stdout(&out).lines().last(), Some(image_id.as_str()));

    // Push, remove locally, pull back: same image id.
    let name = format!("{}/pod/app:v1", s.addr);
    let digestfile = env.path("push.digest");
    run(env
        .podman()
        .args(["push", "--tls-verify=false", "--digestfile"])
        .arg(&digestfile)
        .args([&image_id, &name]));
    let pushed = fs::read_to_string(&digestfile).unwrap();
    let info = inspect(&env, &format!("docker://{name}"));
    assert_eq!(info["Digest"], pushed.trim(), "{info}");
    // podman recompresses the layer from its storage: what it pushed must still inflate to the
    // diff id the (unchanged) config names.
    let config: Value = serde_json::from_slice(&read_blob(&src, &img.config)).unwrap();
    let layers = info["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{info}");
    let layer = layers[0].as_str().unwrap();
    let gz = env.path("pushed-layer.gz");
    fs::write(&gz, fetch_blob(&s, "pod/app", layer)).unwrap();
    assert_eq!(digest_of(&gunzip(&gz)), config["rootfs"]["diff_ids"][0]);
    // The pull below is served from chunks, re-encoded as pgzip.
    assert_all_deduplicated_as_pgzip(&s);
    run(env.podman().args(["rmi", "-f", &image_id]));
    let exists = env
        .podman()
        .args(["image", "exists", &image_id])
        .status()
        .unwrap();
    assert!(!exists.success(), "image removed locally");
    let out = run(env
        .podman()
        .args(["pull", "-q", "--tls-verify=false", &name]));
    assert_eq!(stdout(&out).lines().last(), Some(image_id.as_str()));
    let out = run(env
        .podman()
        .args(["inspect", "--format", "{{.Id}} {{.Digest}}", &name]));
    assert_eq!(stdout(&out), format!("{image_id} {}", pushed.trim()));

    // Two single-arch images built from scratch, combined into a manifest list.
    let mut ids = Vec::new();
    for arch in ["amd64", "arm64"] {
        let ctr = stdout(&run(env
            .buildah()
            .args(["from", "--arch", arch, "scratch"])));
        let file = env.path(&format!("arch-{arch}.txt"));
        fs::write(&file, format!("built for {arch}\n").repeat(100)).unwrap();
        run(env
            .buildah()
            .args(["copy", &ctr])
            .arg(&file)
            .arg("/arch.txt"));
        run(env
            .buildah()
            .args(["config", "--arch", arch, "--os", "linux", &ctr]));
        let id = stdout(&run(env.buildah().args([
            "commit",
            "-q",
            &ctr,
            &format!("localhost/multi-{arch}:v1"),
        ])));
        run(env.buildah().args(["rm", &ctr]));
        ids.push((arch, id));
    }
    run(env
        .podman()
        .args(["manifest", "create", "localhost/list:v1"]));
    for (arch, _) in &ids {
        run(env.podman().args([
            "manifest",
            "add",
            "localhost/list:v1",
            &format!("containers-storage:localhost/multi-{arch}:v1"),
        ]));
    }
    let list_digestfile = env.path("list.digest");
    run(env
        .podman()
        .args([
            "manifest",
            "push",
            "--all",
            "--tls-verify=false",
            "--digestfile",
        ])
        .arg(&list_digestfile)
        .args(["localhost/list:v1", &docker_ref(&s, "pod/list:v1")]));
    let list_digest = fs::read_to_string(&list_digestfile).unwrap();

    let raw = inspect_raw(&env, &docker_ref(&s, "pod/list:v1"));
    assert_eq!(digest_of(&raw), list_digest.trim(), "pushed list digest");
    let index: Value = serde_json::from_slice(&raw).unwrap();
    let media_type = index["mediaType"].as_str().unwrap_or_default().to_string();
    assert!(
        media_type == OCI_INDEX || media_type == DOCKER_LIST,
        "list media type: {index}"
    );
    let (ct, _, body) = fetch_manifest(&s, "pod/list", "v1");
    assert_eq!(ct, media_type, "Content-Type of the list is its media type");
    assert_eq!(body, raw);

    let children = index["manifests"].as_array().unwrap();
    assert_eq!(children.len(), 2, "{index}");
    let archs: BTreeSet<&str> = children
        .iter()
        .map(|c| c["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(archs, BTreeSet::from(["amd64", "arm64"]));
    for child in children {
        let digest = child["digest"].as_str().unwrap();
        let arch = child["platform"]["architecture"].as_str().unwrap();
        let raw = inspect_raw(&env, &docker_ref(&s, &format!("pod/list@{digest}")));
        assert_eq!(digest_of(&raw), digest, "child {arch}");
        assert_eq!(raw.len() as u64, child["size"].as_u64().unwrap());
        let (ct, _, _) = fetch_manifest(&s, "pod/list", digest);
        assert_eq!(
            ct,
            child["mediaType"].as_str().unwrap(),
            "child {arch} Content-Type"
        );
        let m: Value = serde_json::from_slice(&raw).unwrap();
        let config = m["config"]["digest"].as_str().unwrap();
        let expected_id = &ids.iter().find(|(a, _)| a == &arch).unwrap().1;
        assert_eq!(
            config,
            format!("sha256:{expected_id}"),
            "child {arch} config"
        );
        let cfg: Value = serde_json::from_slice(&fetch_blob(&s, "pod/list", config)).unwrap();
        assert_eq!(cfg["architecture"], arch);
        for l in m["layers"].as_array().unwrap() {
            fetch_blob(&s, "pod/list", l["digest"].as_str().unwrap());
        }
        // Platform selection through the list.
        let out = run(env.skopeo().args([
            "--override-arch",
            arch,
            "inspect",
            "--tls-verify=false",
            &docker_ref(&s, "pod/list:v1"),
        ]));
        let info = json_out(&out);
        // skopeo reports the list's digest, and the chosen image's layers and platform.
        assert_eq!(info["Digest"], list_digest.trim());
        assert_eq!(
            info["Architecture"], arch,
            "{arch} resolved through the list"
        );
        let child_layers: Vec<&Value> = m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| &l["digest"])
            .collect();
        assert_eq!(info["Layers"], serde_json::json!(child_layers));
    }

    // The whole list copies out again.
    let out_dir = env.path("list-out");
    run(env.skopeo().args([
        "copy",
        "--all",
        "--src-tls-verify=false",
        &docker_ref(&s, "pod/list:v1"),
        &format!("oci:{}:v1", out_dir.display()),
    ]));
    let out_index: Value =
        serde_json::from_slice(&fs::read(out_dir.join("index.json")).unwrap()).unwrap();
    let top = out_index["manifests"][0]["digest"].as_str().unwrap();
    assert_eq!(top, list_digest.trim(), "list copied unchanged");
    for child in children {
        read_blob(&out_dir, child["digest"].as_str().unwrap());
    }

    run(env.buildah().args(["rm", "--all"]));
    assert!(s.stop(), "server exits cleanly on SIGTERM");
}

#[test]
fn buildah_commit_push_and_pull_back() {
    let env = Env::new();
    let mut s = Server::start();
    let tree = env.path("tree");
    make_tree(&tree, 3);

    let ctr = stdout(&run(env.buildah().args(["from", "scratch"])));
    run(env
        .buildah()
        .args(["copy", &ctr])
        .arg(tree.join("etc"))
        .arg("/etc"));
    run(env
        .buildah()
        .args(["copy", &ctr])
        .arg(tree.join("random.bin"))
        .arg("/data/random.bin"));
    run(env
        .buildah()
        .args(["copy", &ctr])
        .arg(tree.join("usr"))
        .arg("/usr"));
    run(env.buildah().args([
        "config",
        "--label",
        "built-by=buildah",
        "--env",
        "A=b",
        &ctr,
    ]));
    let image_id = stdout(&run(env.buildah().args([
        "commit",
        "-q",
        &ctr,
        "localhost/bud:v1",
    ])));
    run(env.buildah().args(["rm", &ctr]));

    let local = json_out(&run(env.buildah().args([
        "inspect",
        "--type",
        "image",
        "localhost/bud:v1",
    ])));
    assert_eq!(local["FromImageID"], image_id.as_str());
    let diff_ids: Vec<String> = local["OCIv1"]["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    assert_eq!(diff_ids.len(), 1, "one layer: {local}");

    let name = docker_ref(&s, "bud/app:v1");
    let digestfile = env.path("push.digest");
    run(env
        .buildah()
        .args(["push", "--tls-verify=false", "--digestfile"])
        .arg(&digestfile)
        .args(["localhost/bud:v1", &name]));
    let pushed = fs::read_to_string(&digestfile).unwrap().trim().to_string();

    let info = inspect(&env, &name);
    assert_eq!(info["Digest"], pushed.as_str(), "{info}");
    assert_eq!(info["Labels"]["built-by"], "buildah");
    assert_eq!(info["Env"], serde_json::json!(["A=b"]));
    let layers = info["Layers"].as_array().unwrap().clone();
    assert_eq!(layers.len(), 1);
    let layer = layers[0].as_str().unwrap().to_string();
    assert_all_deduplicated_as_pgzip(&s);

    // Pull back with skopeo: the manifest buildah wrote, its config (the image id) and a layer
    // that decompresses to exactly the diff id buildah computed.
    let out = env.path("out");
    run(env.skopeo().args([
        "copy",
        "--src-tls-verify=false",
        &name,
        &format!("oci:{}:v1", out.display()),
    ]));
    let back = oci_image(&out, "v1");
    assert_eq!(back.manifest_digest, pushed, "manifest digest preserved");
    assert_eq!(back.config, format!("sha256:{image_id}"));
    assert_eq!(back.layers, vec![layer.clone()]);
    read_blob(&out, &layer);
    let tar = gunzip(&blob_path(&out, &layer));
    assert_eq!(
        format!("sha256:{}", sha256_hex(&tar)),
        diff_ids[0],
        "layer diff id"
    );
    let rand = pseudo_random(3, 2 * 1024 * 1024);
    assert!(
        tar.windows(4096).any(|w| w == &rand[..4096]),
        "layer holds the random file"
    );
    assert_eq!(fetch_blob(&s, "bud/app", &layer), read_blob(&out, &layer));

    // And buildah itself pulls it into a fresh storage.
    let mut pull = env.cmd("buildah");
    pull.arg("--root")
        .arg(env.path("storage2"))
        .arg("--runroot")
        .arg(env.path("run2"))
        .args([
            "--storage-driver",
            "vfs",
            "pull",
            "-q",
            "--tls-verify=false",
        ])
        .arg(name.trim_start_matches("docker://"));
    let out = run(&mut pull);
    assert_eq!(stdout(&out).lines().last(), Some(image_id.as_str()));

    assert!(s.stop(), "server exits cleanly on SIGTERM");
}

/// skopeo (`--dest-creds`, `--creds`), podman (`login`) and buildah (`--creds`) against
/// authentication, Basic and bearer: refused without credentials or without push, the image
/// pulled back exact, anonymous pulls of a public repository.
#[test]
fn skopeo_podman_buildah_with_basic_and_bearer_auth() {
    let env = Env::new();
    let src = env.path("src");
    make_layout(&env, &src, "v1", 11);
    let img = oci_image(&src, "v1");
    let oci_src = format!("oci:{}:v1", src.display());
    for token in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let rules = "[[access]]\nrepositories = [\"team/**\", \"public/**\"]\nusers = [\"writer\"]\nactions = [\"pull\", \"push\"]\n\
             [[access]]\nrepositories = [\"team/**\"]\nusers = [\"reader\"]\nactions = [\"pull\"]\n\
             [[anonymous]]\nrepositories = [\"public/**\"]\nactions = [\"pull\"]\n";
        let s = common::auth_server(dir.path(), &["writer", "reader"], rules, token, None);
        let mode = if token { "bearer" } else { "basic" };
        let app = docker_ref(&s, "team/app:v1");
        let copy = |args: &[&str]| {
            env.skopeo()
                .args(["copy", "--src-tls-verify=false", "--dest-tls-verify=false"])
                .args(args)
                .output()
                .unwrap()
        };
        assert!(
            !copy(&[&oci_src, &app]).status.success(),
            "{mode}: anonymous push"
        );
        assert!(
            !copy(&["--dest-creds", "reader:pw-of-reader", &oci_src, &app])
                .status
                .success(),
            "{mode}: reader pushed"
        );
        assert!(
            !copy(&["--dest-creds", "writer:wrong", &oci_src, &app])
                .status
                .success(),
            "{mode}: wrong password pushed"
        );
        let out = copy(&["--dest-creds", "writer:pw-of-writer", &oci_src, &app]);
        assert!(
            out.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let info = json_out(&run(env.skopeo().args([
            "inspect",
            "--tls-verify=false",
            "--creds",
            "reader:pw-of-reader",
            &app,
        ])));
        assert_eq!(info["Digest"], img.manifest_digest.as_str(), "{mode}");
        let out = env
            .skopeo()
            .args(["inspect", "--tls-verify=false", &app])
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "{mode}: anonymous inspect of team/app"
        );

        // podman: login, pull, tag, push to a public repository, pull it anonymously.
        let reg = s.addr.clone();
        let out = env
            .podman()
            .args([
                "login",
                "--tls-verify=false",
                "-u",
                "reader",
                "-p",
                "pw-of-reader",
                &reg,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{mode}: podman login: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let app = format!("{reg}/team/app:v1");
        run(env.podman().args(["pull", "--tls-verify=false", &app]));
        let public = format!("{reg}/public/app:{mode}");
        run(env.podman().args(["tag", &app, &public]));
        let out = env
            .podman()
            .args(["push", "--tls-verify=false", &public])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{mode}: reader pushed to public/");
        run(env.podman().args([
            "login",
            "--tls-verify=false",
            "-u",
            "writer",
            "-p",
            "pw-of-writer",
            &reg,
        ]));
        run(env.podman().args(["push", "--tls-verify=false", &public]));
        run(env.podman().args(["logout", &reg]));
        run(env.podman().args(["rmi", &public, &app]));
        run(env.podman().args(["pull", "--tls-verify=false", &public]));

        // buildah with --creds.
        let b = format!("localhost/buildah-{mode}:1");
        let ctr =
            String::from_utf8(run(env.buildah().args(["from", "--pull-never", &public])).stdout)
                .unwrap();
        run(env.buildah().args(["commit", ctr.trim(), &b]));
        let dest = docker_ref(&s, &format!("team/buildah:{mode}"));
        let out = env
            .buildah()
            .args(["push", "--tls-verify=false", &b, &dest])
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "{mode}: buildah pushed without credentials"
        );
        run(env.buildah().args([
            "push",
            "--tls-verify=false",
            "--creds",
            "writer:pw-of-writer",
            &b,
            &dest,
        ]));
        run(env.buildah().args(["rm", ctr.trim()]));
        run(env.podman().args(["rmi", &public, &b]));
    }
}

/// skopeo over HTTPS with a test CA (`--dest-cert-dir`, `--cert-dir`) and credentials: the
/// certificate is verified (a client without the CA refuses it), the image round-trips.
#[test]
fn skopeo_over_tls_with_a_test_ca() {
    let env = Env::new();
    let src = env.path("src");
    make_layout(&env, &src, "v1", 12);
    let img = oci_image(&src, "v1");
    let certs = env.path("certs");
    fs::create_dir_all(&certs).unwrap();
    let tls = common::test_ca(&certs);
    // containers/image reads a directory of CA certificates named *.crt.
    let ca_dir = env.path("ca-dir");
    fs::create_dir_all(&ca_dir).unwrap();
    fs::copy(&tls.ca, ca_dir.join("ca.crt")).unwrap();
    let srv = env.path("srv");
    fs::create_dir_all(&srv).unwrap();
    let s = common::auth_server(&srv, &["writer"], "", false, Some(&tls));
    let app = docker_ref(&s, "team/tls:v1");
    let oci_src = format!("oci:{}:v1", src.display());
    let out = env
        .skopeo()
        .args([
            "copy",
            "--dest-creds",
            "writer:pw-of-writer",
            &oci_src,
            &app,
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a certificate from an unknown CA was accepted"
    );
    run(env
        .skopeo()
        .args([
            "copy",
            "--dest-creds",
            "writer:pw-of-writer",
            "--dest-cert-dir",
        ])
        .arg(&ca_dir)
        .args([&oci_src, &app]));
    let info = json_out(&run(env
        .skopeo()
        .args(["inspect", "--creds", "writer:pw-of-writer", "--cert-dir"])
        .arg(&ca_dir)
        .arg(&app)));
    assert_eq!(info["Digest"], img.manifest_digest.as_str());
}

/// What stowage's stats say of the layers once dedup is idle: none pending, none raw, and
/// the encodings seen.
fn assert_all_deduplicated(s: &Server) -> Value {
    let st = wait_dedup_idle(&s.url("/_stats"));
    let layers = st["layers"].clone();
    assert_eq!(layers["pending"], 0, "{layers}");
    assert_eq!(layers["raw"], 0, "{layers}");
    layers["encodings"].clone()
}

/// The first layer of `repo:tag` as the registry serves it.
fn first_layer(s: &Server, repo: &str, tag: &str) -> (String, Vec<u8>) {
    let (_, _, body) = fetch_manifest(s, repo, tag);
    let m: Value = serde_json::from_slice(&body).unwrap();
    let digest = m["layers"][0]["digest"].as_str().unwrap().to_string();
    let blob = fetch_blob(s, repo, &digest);
    (digest, blob)
}

/// zstd from the clients that write it (containers/image and containers/storage compress
/// with klauspost/compress/zstd): skopeo `zstd` and `zstd:chunked`, podman and buildah
/// `--compression-format zstd`. Every layer is deduplicated, not kept raw, and comes back
/// bit for bit; a range inside a zstd:chunked layer (what a partial pull asks for) too. The
/// zstd:chunked layer keeps its compressed frames (the default `--zstd-frames auto`).
#[test]
fn zstd_and_zstd_chunked_from_skopeo_podman_buildah() {
    let env = Env::new();
    let mut s = Server::start();
    // Built with buildah: umoci's layer tars end without the end-of-archive blocks, and
    // skopeo 1.9's zstd:chunked writer then waits forever for the next tar header.
    let tree = env.path("tree");
    make_tree(&tree, 7);
    let ctr = stdout(&run(env.buildah().args(["from", "scratch"])));
    run(env.buildah().args(["copy", &ctr]).arg(&tree).arg("/data"));
    let image_id = stdout(&run(env.buildah().args([
        "commit",
        "-q",
        &ctr,
        "localhost/zsrc:v1",
    ])));
    let src = env.path("src");
    let oci_src = format!("oci:{}:v1", src.display());
    run(env.buildah().args(["push", &image_id, &oci_src]));
    let img = oci_image(&src, "v1");
    let config: Value = serde_json::from_slice(&read_blob(&src, &img.config)).unwrap();
    let diff_id = config["rootfs"]["diff_ids"][0]
        .as_str()
        .unwrap()
        .to_string();

    let mut pushed = Vec::new();
    for (repo, format) in [("zst/plain", "zstd"), ("zst/chunked", "zstd:chunked")] {
        run(env.skopeo().args([
            "copy",
            "--dest-tls-verify=false",
            "--dest-compress-format",
            format,
            &oci_src,
            &docker_ref(&s, &format!("{repo}:v1")),
        ]));
        let (digest, blob) = first_layer(&s, repo, "v1");
        assert_eq!(
            &blob[..4],
            &[0x28, 0xb5, 0x2f, 0xfd],
            "{format} layer is zstd"
        );
        let plain = zstd::stream::decode_all(&blob[..]).unwrap();
        assert_eq!(
            digest_of(&plain),
            diff_id,
            "{format} layer holds the image's tar"
        );
        pushed.push((repo, digest, blob));
    }
    // zstd:chunked is a frame per file plus skippable frames: many frames.
    let chunked = &pushed[1].2;
    let frames = chunked
        .windows(4)
        .filter(|w| *w == [0x28, 0xb5, 0x2f, 0xfd])
        .count();
    assert!(frames > 3, "zstd:chunked has a frame per file ({frames})");

    // podman and buildah push from their (shared) storage with zstd.
    assert_eq!(img.config, format!("sha256:{image_id}"));
    let pod = format!("{}/zst/podman:v1", s.addr);
    run(env.podman().args([
        "push",
        "--tls-verify=false",
        "--compression-format",
        "zstd",
        &image_id,
        &pod,
    ]));
    let bud = format!("{}/zst/buildah:v1", s.addr);
    run(env.buildah().args([
        "push",
        "--tls-verify=false",
        "--compression-format",
        "zstd",
        &image_id,
        &format!("docker://{bud}"),
    ]));
    for repo in ["zst/podman", "zst/buildah"] {
        let (digest, blob) = first_layer(&s, repo, "v1");
        assert_eq!(
            &blob[..4],
            &[0x28, 0xb5, 0x2f, 0xfd],
            "{repo} layer is zstd"
        );
        pushed.push((repo, digest, blob));
    }

    let encodings = assert_all_deduplicated(&s);
    assert!(
        encodings
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("zstd-kp-")),
        "klauspost zstd recognised: {encodings}"
    );
    // zstd:chunked's frames (klauspost's slowest level) are kept as they are (--zstd-frames).
    assert!(
        encodings.get("zstd-stored-frames").is_some(),
        "zstd:chunked stored as its frames: {encodings}"
    );

    // Everything comes back from chunks bit for bit (fetch_blob checks each digest).
    for (repo, digest, blob) in &pushed {
        assert!(fetch_blob(&s, repo, digest) == *blob, "{repo} {digest}");
    }
    // A range in the middle of the zstd:chunked layer, as a partial pull asks for one file.
    let (repo, digest, blob) = &pushed[1];
    let (from, to) = (blob.len() / 2, blob.len() / 2 + 999);
    let r = client()
        .get(s.url(&format!("/v2/{repo}/blobs/{digest}")))
        .header("Range", format!("bytes={from}-{to}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert!(
        r.bytes().unwrap()[..] == blob[from..=to],
        "range of zstd:chunked"
    );

    // Pulled back by podman: the same image id, from zstd layers re-created from chunks.
    run(env.podman().args(["rmi", "-f", &image_id]));
    let out = run(env
        .podman()
        .args(["pull", "-q", "--tls-verify=false", &pod]));
    assert_eq!(stdout(&out).lines().last(), Some(image_id.as_str()));
    // And skopeo copies the zstd:chunked image out to a layout, every blob identical.
    let out_dir = env.path("out");
    run(env.skopeo().args([
        "copy",
        "--src-tls-verify=false",
        &docker_ref(&s, "zst/chunked:v1"),
        &format!("oci:{}:v1", out_dir.display()),
    ]));
    let back = oci_image(&out_dir, "v1");
    assert_eq!(back.layers, vec![pushed[1].1.clone()]);
    assert!(read_blob(&out_dir, &pushed[1].1) == pushed[1].2);
    assert!(s.stop(), "server stopped cleanly");
    common::assert_fsck_clean(&s.root, "zstd layers from the clients");
}

/// A tree of text files (program sources, say) at `dir`; `edits` of them changed a little.
fn text_tree(dir: &Path, edits: usize) {
    fs::create_dir_all(dir.join("src")).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..24 {
        let mut text = common::xorshift_text(&mut x, 24_000, b"abcdefgh ijklmnop\n(){};=");
        if i < edits {
            text[12_000..12_016].copy_from_slice(b"changed in v2 ..");
        }
        fs::write(dir.join(format!("src/file{i}.c")), text).unwrap();
    }
}

/// Frame deltas, with the defaults, with skopeo's zstd:chunked at level 3 (`SpeedDefault`
/// frames, which `auto` keeps as frames because frame deltas are on): the second version's
/// changed files' frames are stored as deltas of their plaintext against the first version's
/// frames, both versions pull back bit for bit, and once the first version is deleted and
/// collected, the frames the second's deltas are made against are kept: it still pulls, and
/// fsck finds the store clean.
#[test]
fn zstd_chunked_frame_deltas_pull_exactly_and_keep_their_bases_through_gc() {
    let env = Env::new();
    let root = tempfile::tempdir().unwrap();
    let mut s = Server::start_at(root.path(), &["--gc-interval", "0", "--gc-delay", "0s"]);
    let mut layers = Vec::new();
    for (tag, edits) in [("v1", 0), ("v2", 5)] {
        let tree = env.path(&format!("tree-{tag}"));
        text_tree(&tree, edits);
        let ctr = stdout(&run(env.buildah().args(["from", "scratch"])));
        run(env.buildah().args(["copy", &ctr]).arg(&tree).arg("/data"));
        let id = stdout(&run(env.buildah().args(["commit", "-q", &ctr])));
        let src = env.path(&format!("src-{tag}"));
        let oci_src = format!("oci:{}:{tag}", src.display());
        run(env.buildah().args(["push", &id, &oci_src]));
        run(env.skopeo().args([
            "copy",
            "--dest-tls-verify=false",
            "--dest-compress-format",
            "zstd:chunked",
            "--dest-compress-level",
            "3",
            &oci_src,
            &docker_ref(&s, &format!("zst/fd:{tag}")),
        ]));
        layers.push(first_layer(&s, "zst/fd", tag));
    }
    let encodings = assert_all_deduplicated(&s);
    assert!(
        encodings.get("zstd-stored-frames").is_some(),
        "zstd:chunked stored as its frames: {encodings}"
    );
    let st: Value = client()
        .get(s.url("/_stats"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let deltas = st["similarity"]["chunks_delta"].as_u64().unwrap();
    // zstd:chunked cuts larger files into frames where their content says (a 24 KB file is
    // one frame or two), so an edit may move a cut: most changed frames find their base.
    assert!(deltas >= 3, "the 5 changed files' frames as deltas: {st}");
    assert_eq!(
        st["similarity"]["frame_deltas"].as_u64(),
        Some(deltas),
        "{st}"
    );
    assert!(
        st["similarity"]["delta_saved_bytes"].as_u64().unwrap() > 30_000,
        "{st}"
    );
    for (digest, blob) in &layers {
        assert!(fetch_blob(&s, "zst/fd", digest) == *blob, "{digest}");
    }

    // v1 goes; its frames that v2's deltas are made against stay.
    let (_, v1, _) = fetch_manifest(&s, "zst/fd", "v1");
    let r = client()
        .delete(s.url(&format!("/v2/zst/fd/manifests/{v1}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // Past the (zero) grace period: links are compared with a cutoff in whole seconds.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = client().post(s.url("/_gc")).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let report: Value = r.json().unwrap();
    assert!(
        report["blobs_removed"].as_u64().unwrap() >= 1,
        "v1's layer collected: {report}"
    );
    let (digest, blob) = &layers[1];
    assert!(fetch_blob(&s, "zst/fd", digest) == *blob, "v2 after GC");
    assert!(s.stop(), "server stopped cleanly");
    common::assert_fsck_clean(root.path(), "frame deltas after GC");
}
