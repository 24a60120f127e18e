//! The registry with its containers in an S3 bucket (a real Garage): containers are uploaded
//! before they are committed, pulls fetch what the local cache lacks, garbage collection
//! deletes objects, fsck checks the bucket, and the metrics count object-store requests.
//!
//! Nothing durable lives only on the local disk: the metadata is journaled in the bucket, blobs
//! kept whole are objects, and a node on an empty data directory rebuilds its index from the
//! bucket and serves every image bit-exact.

mod common;

use std::path::Path;

use common::garage::{Garage, BUCKET};
use common::{digest_of, push_blob, text_layer, wait_dedup_idle, Server};
use reqwest::blocking::Client;
use reqwest::StatusCode;
use serde_json::{json, Value};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn flags(g: &Garage, prefix: &str) -> Vec<String> {
    flags_with(g, prefix, "inline", &[])
}

/// [`flags`] with another deduplication mode and more flags.
fn flags_with(g: &Garage, prefix: &str, dedup: &str, extra: &[&str]) -> Vec<String> {
    let mut f: Vec<String> = [
        "--storage",
        &format!("s3://{BUCKET}/{prefix}"),
        "--s3-endpoint",
        &g.endpoint,
        "--s3-region",
        "garage",
        "--s3-path-style",
        "true",
        "--dedup",
        dedup,
        "--gc-interval",
        "0",
        "--gc-delay",
        "0s",
        "--gc-compact-below",
        "0.9",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    f.extend(extra.iter().map(|s| s.to_string()));
    f
}

fn start(g: &Garage, root: &Path, prefix: &str) -> Server {
    start_with(g, root, flags(g, prefix))
}

fn start_with(g: &Garage, root: &Path, flags: Vec<String>) -> Server {
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let env = g.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start_with_env(root, &args, &env)
}

/// The container objects under `prefix`.
fn objects(g: &Garage, prefix: &str) -> Vec<String> {
    objects_under(g, prefix, "containers")
}

/// The objects under `prefix`/`under`.
fn objects_under(g: &Garage, prefix: &str, under: &str) -> Vec<String> {
    let b = g.bucket(prefix, None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut keys: Vec<String> = rt
        .block_on(b.list(under))
        .unwrap()
        .into_iter()
        .map(|l| l.key)
        .collect();
    keys.sort();
    keys
}

struct Image {
    layer: Vec<u8>,
    config: Vec<u8>,
}

fn image(seeds: &[u64]) -> Image {
    Image {
        layer: text_layer(seeds.iter().copied()),
        config: format!(r#"{{"architecture":"amd64","os":"linux","seeds":{seeds:?}}}"#)
            .into_bytes(),
    }
}

fn manifest(img: &Image) -> Vec<u8> {
    let d = |media: &str, b: &[u8]| json!({"mediaType": media, "digest": digest_of(b), "size": b.len()});
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": d("application/vnd.oci.image.config.v1+json", &img.config),
        "layers": [d("application/vnd.oci.image.layer.v1.tar+gzip", &img.layer)],
    }))
    .unwrap()
}

fn push(s: &Server, c: &Client, tag: &str, img: &Image) -> String {
    push_manifest(s, c, tag, img).0
}

/// Pushes `img` as `tag`; returns its manifest's digest and bytes.
fn push_manifest(s: &Server, c: &Client, tag: &str, img: &Image) -> (String, Vec<u8>) {
    push_blob(s, c, "s3/app", &img.layer);
    push_blob(s, c, "s3/app", &img.config);
    let m = manifest(img);
    let r = c
        .put(s.url(&format!("/v2/s3/app/manifests/{tag}")))
        .header("Content-Type", OCI_MANIFEST)
        .body(m.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    (digest_of(&m), m)
}

/// Waits (at most 10 s) until `tag` is served by `s` (a replica following a writer); how long.
fn wait_for_tag(s: &Server, c: &Client, tag: &str) -> std::time::Duration {
    let start = std::time::Instant::now();
    loop {
        let r = c
            .get(s.url(&format!("/v2/s3/app/manifests/{tag}")))
            .header("Accept", OCI_MANIFEST)
            .send()
            .unwrap();
        if r.status() == StatusCode::OK {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "{tag} not served within 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `tag` answers with exactly `manifest`.
fn assert_tag(s: &Server, c: &Client, tag: &str, manifest: &[u8]) {
    let r = c
        .get(s.url(&format!("/v2/s3/app/manifests/{tag}")))
        .header("Accept", OCI_MANIFEST)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{tag}");
    assert!(r.bytes().unwrap() == manifest, "{tag} came back different");
}

fn assert_pulls(s: &Server, c: &Client, img: &Image) {
    for b in [&img.layer, &img.config] {
        let r = c
            .get(s.url(&format!("/v2/s3/app/blobs/{}", digest_of(b))))
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.bytes().unwrap() == *b, "a blob came back different");
    }
}

fn metric(s: &Server, name: &str) -> f64 {
    let text = reqwest::blocking::get(s.url("/metrics"))
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
}

/// The object-store metrics are written by hand: Prometheus' own checker reads them.
fn promtool_accepts(s: &Server) {
    let text = reqwest::blocking::get(s.url("/metrics"))
        .unwrap()
        .text()
        .unwrap();
    assert!(text.contains("stowage_object_request_duration_seconds_bucket{op=\"get\",le=\"+Inf\"}"));
    common::assert_promtool_accepts(&text);
    let checked = common::assert_dashboards_query_what_exists(&text, |title| {
        title.ends_with(common::S3_PANELS)
    });
    assert!(checked >= 8, "the S3 panels reference {checked} metrics");
}

fn wipe_cache(root: &Path) {
    for e in std::fs::read_dir(root.join("containers")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
}

fn fsck(g: &Garage, root: &Path, prefix: &str) -> String {
    offline(g, root, prefix, "fsck")
}

/// Runs `stowage COMMAND --root ROOT` with the bucket flags; its output (it must succeed).
fn offline(g: &Garage, root: &Path, prefix: &str, command: &str) -> String {
    let flags = flags(g, prefix);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stowage"))
        .arg(command)
        .arg("--root")
        .arg(root)
        .args(&flags[..8])
        .envs(g.env())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{command} failed:\n{text}");
    text
}

#[test]
fn containers_live_in_the_bucket_and_pulls_fetch_them() {
    let g = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let c = Client::new();
    let (v1, v2) = (image(&[1, 2, 3]), image(&[2, 3, 4]));

    let mut s = start(&g, &root, "e2e");
    let m1 = push(&s, &c, "v1", &v1);
    push(&s, &c, "v2", &v2);
    let st: Value = wait_dedup_idle(&s.url("/_stats"));
    assert_eq!(st["layers"]["deduplicated"], 4, "layers and configs: {st}");
    let uploaded = objects(&g, "e2e");
    assert!(!uploaded.is_empty(), "sealed containers are in the bucket");
    assert!(
        metric(
            &s,
            "stowage_object_requests_total{op=\"put\",result=\"ok\"}"
        ) >= 1.0
    );
    assert_pulls(&s, &c, &v1);
    assert_pulls(&s, &c, &v2);
    assert!(s.stop());

    // The cache lost: every pull fetches its containers from the bucket.
    wipe_cache(&root);
    let mut s = start(&g, &root, "e2e");
    assert_pulls(&s, &c, &v1);
    assert_pulls(&s, &c, &v2);
    // Each container came from the bucket: on a reader's miss, or prefetched ahead of it.
    assert!(metric(&s, "stowage_container_cache_prefetches_total") >= 1.0);
    assert!(metric(&s, "stowage_container_cache_misses_total") >= 1.0);
    assert!(
        metric(
            &s,
            "stowage_object_requests_total{op=\"get\",result=\"ok\"}"
        ) >= 1.0
    );
    promtool_accepts(&s);
    assert!(s.stop());
    let report = fsck(&g, &root, "e2e");
    assert!(
        !report.contains("STRAY") && !report.contains("PROBLEM"),
        "{report}"
    );

    // Collection: v1 goes; the bucket keeps only what v2 needs, which still pulls exact from
    // the bucket alone.
    let s = start(&g, &root, "e2e");
    let r = c
        .delete(s.url(&format!("/v2/s3/app/manifests/{m1}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let report: Value = c.post(s.url("/_gc")).send().unwrap().json().unwrap();
    assert!(
        report["containers_removed"].as_u64().unwrap_or(0)
            + report["containers_compacted"].as_u64().unwrap_or(0)
            > 0,
        "{report}"
    );
    let after = objects(&g, "e2e");
    assert_ne!(after, uploaded, "collection changed the bucket");
    // With no grace period, the trash was emptied in the same pass: the whole copies of the
    // deduplicated blobs and the removed containers are gone.
    assert!(objects_under(&g, "e2e", "trash").is_empty());
    assert!(objects_under(&g, "e2e", "blobs").is_empty());
    drop(s);
    wipe_cache(&root);
    let s = start(&g, &root, "e2e");
    assert_pulls(&s, &c, &v2);
    drop(s);
    let report = fsck(&g, &root, "e2e");
    assert!(
        !report.contains("STRAY") && !report.contains("PROBLEM"),
        "{report}"
    );
}

/// A bucket that cannot be reached stops the start with a clear message.
#[test]
fn an_unreachable_bucket_fails_the_start() {
    let mut g = Garage::start();
    g.stop();
    let dir = tempfile::tempdir().unwrap();
    let flags = flags(&g, "down");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stowage"))
        .arg("serve")
        .arg("--root")
        .arg(dir.path())
        .args(["--addr", "127.0.0.1:0"])
        .args(&flags)
        .envs(g.env())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the bucket cannot be reached"), "{err}");
}

/// The data directory lost: a node started on an empty one rebuilds its index from the bucket
/// (the newest checkpoint, then the journal after it) and serves every image bit-exact, blobs
/// still waiting for deduplication included; `stowage rebuild-index` does the same offline.
#[test]
fn a_node_on_an_empty_directory_serves_everything_from_the_bucket() {
    let g = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let (first, second, third) = (
        dir.path().join("first"),
        dir.path().join("second"),
        dir.path().join("third"),
    );
    let c = Client::new();
    let (v1, v2, v3) = (image(&[1, 2, 3]), image(&[2, 3, 4]), image(&[4, 5, 6]));
    let prefix = "lost";

    // A checkpoint every 4 entries: this push makes several, and the older ones are pruned.
    let mut s = start_with(
        &g,
        &first,
        flags_with(&g, prefix, "inline", &["--checkpoint-entries", "4"]),
    );
    let (_, m1) = push_manifest(&s, &c, "v1", &v1);
    let (_, m2) = push_manifest(&s, &c, "v2", &v2);
    wait_dedup_idle(&s.url("/_stats"));
    assert!(metric(&s, "stowage_journal_entries_total") >= 4.0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while metric(&s, "stowage_checkpoints_total") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint written"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    promtool_accepts(&s);
    assert!(s.stop());
    let checkpoints = objects_under(&g, prefix, "meta/checkpoints");
    assert!(
        (1..=2).contains(&checkpoints.len()),
        "the two newest checkpoints are kept: {checkpoints:?}"
    );
    // Deduplicated blobs need no whole copy in the bucket: theirs went with their recipes.
    assert!(objects_under(&g, prefix, "blobs").is_empty());

    // v3 is pushed with deduplication off (it stays staged), and the node is killed: no clean
    // shutdown, no checkpoint after it; only the journal and the staged blob objects have it.
    let mut s = start_with(&g, &first, flags_with(&g, prefix, "off", &[]));
    let (_, m3) = push_manifest(&s, &c, "v3", &v3);
    let blobs = objects_under(&g, prefix, "blobs");
    for b in [&v3.layer, &v3.config] {
        let key = digest_of(b).replace(':', "/");
        assert!(
            blobs.iter().any(|k| k.ends_with(&key)),
            "v3's staged blobs are in the bucket: {blobs:?}"
        );
    }
    s.kill9();
    std::fs::remove_dir_all(&first).unwrap();

    // Another node, on an empty directory.
    let s = start(&g, &second, prefix);
    for (tag, m) in [("v1", &m1), ("v2", &m2), ("v3", &m3)] {
        assert_tag(&s, &c, tag, m);
    }
    assert_pulls(&s, &c, &v1);
    assert_pulls(&s, &c, &v2);
    assert_pulls(&s, &c, &v3);
    // v3's staged blobs were fetched from the bucket and deduplicated here.
    let st: Value = wait_dedup_idle(&s.url("/_stats"));
    assert_eq!(st["layers"]["deduplicated"], 6, "{st}");
    assert_eq!(st["tags"], 3, "{st}");
    drop(s);
    let report = fsck(&g, &second, prefix);
    assert!(!report.contains("PROBLEM"), "{report}");

    // Offline, on a third empty directory.
    let out = offline(&g, &third, prefix, "rebuild-index");
    assert!(out.contains("3 tags"), "{out}");
    let report = fsck(&g, &third, prefix);
    assert!(!report.contains("PROBLEM"), "{report}");
    let s = start(&g, &third, prefix);
    assert_tag(&s, &c, "v3", &m3);
    assert_pulls(&s, &c, &v3);
}

/// Two nodes on one bucket: a writer and a replica following its journal. What the writer
/// acknowledges is pullable from the replica within seconds; the replica refuses pushes; the
/// writer killed (-9) in the middle of pushes loses nothing it acknowledged: a new writer on an
/// empty directory serves all of it, and the replica goes on following.
#[test]
fn a_replica_serves_what_the_writer_pushed_and_a_killed_writer_loses_nothing_acknowledged() {
    let g = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let c = Client::new();
    let prefix = "pair";
    let mut writer = start(&g, &dir.path().join("writer"), prefix);
    let replica = start_with(
        &g,
        &dir.path().join("replica"),
        flags_with(&g, prefix, "inline", &["--replica"]),
    );

    let v1 = image(&[1, 2]);
    let (_, m1) = push_manifest(&writer, &c, "v1", &v1);
    eprintln!(
        "replica saw the push after {:?}",
        wait_for_tag(&replica, &c, "v1")
    );
    assert_tag(&replica, &c, "v1", &m1);
    assert_pulls(&replica, &c, &v1);
    assert!(metric(&replica, "stowage_replica_applied_seq") >= 1.0);
    let text = reqwest::blocking::get(replica.url("/metrics"))
        .unwrap()
        .text()
        .unwrap();
    common::assert_promtool_accepts(&text);
    let checked = common::assert_dashboards_query_what_exists(&text, |title| {
        title.ends_with(common::S3_REPLICA_PANELS)
    });
    assert_eq!(checked, 2, "the replica panels' metrics");
    let r = c
        .post(replica.url("/v2/s3/app/blobs/uploads/"))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(r.text().unwrap().contains("UNSUPPORTED"));

    // Pushes go on in another thread; the writer is killed once two are acknowledged.
    let images: Vec<Image> = (2..9u64).map(|i| image(&[i, i + 1, 100 + i])).collect();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let pusher = {
        let (acked, addr) = (acked.clone(), writer.addr.clone());
        let manifests: Vec<(String, Image)> = images
            .iter()
            .enumerate()
            .map(|(i, img)| {
                (
                    format!("k{i}"),
                    Image {
                        layer: img.layer.clone(),
                        config: img.config.clone(),
                    },
                )
            })
            .collect();
        std::thread::spawn(move || {
            let c = Client::new();
            let url = |p: &str| format!("http://{addr}{p}");
            for (tag, img) in manifests {
                for b in [&img.layer, &img.config] {
                    let ok = c
                        .post(url(&format!(
                            "/v2/s3/app/blobs/uploads/?digest={}",
                            digest_of(b)
                        )))
                        .body(b.clone())
                        .send()
                        .is_ok_and(|r| r.status() == StatusCode::CREATED);
                    if !ok {
                        return;
                    }
                }
                let m = manifest(&img);
                let ok = c
                    .put(url(&format!("/v2/s3/app/manifests/{tag}")))
                    .header("Content-Type", OCI_MANIFEST)
                    .body(m.clone())
                    .send()
                    .is_ok_and(|r| r.status() == StatusCode::CREATED);
                if !ok {
                    return;
                }
                acked.lock().unwrap().push((tag, m, img));
            }
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while acked.lock().unwrap().len() < 2 {
        assert!(std::time::Instant::now() < deadline, "pushes stalled");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    writer.kill9();
    pusher.join().unwrap();
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(
        acked.len() < images.len(),
        "the kill came before the last push"
    );
    std::fs::remove_dir_all(dir.path().join("writer")).unwrap();

    // A new writer on an empty directory: everything acknowledged is there, bit-exact.
    let writer = start(&g, &dir.path().join("writer2"), prefix);
    assert_tag(&writer, &c, "v1", &m1);
    for (tag, m, img) in &acked {
        assert_tag(&writer, &c, tag, m);
        assert_pulls(&writer, &c, img);
    }
    // It writes on from where the journal ends, and the replica follows.
    let v9 = image(&[9, 10]);
    let (_, m9) = push_manifest(&writer, &c, "v9", &v9);
    wait_for_tag(&replica, &c, "v9");
    assert_tag(&replica, &c, "v9", &m9);
    assert_pulls(&replica, &c, &v9);
    for (tag, m, img) in &acked {
        assert_tag(&replica, &c, tag, m);
        assert_pulls(&replica, &c, img);
    }
}

/// The bucket down in the middle of a node's life: what was acknowledged still pulls (from the
/// local cache), a push gets a clean 503 and is not acknowledged, and once the bucket is back
/// the push succeeds and a node on an empty directory finds everything.
#[test]
fn a_bucket_outage_refuses_pushes_cleanly_and_loses_nothing_acknowledged() {
    let mut g = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let c = Client::new();
    let prefix = "outage";
    let s = start(&g, &dir.path().join("node"), prefix);
    let (v1, v2) = (image(&[1, 2]), image(&[3, 4]));
    let (_, m1) = push_manifest(&s, &c, "v1", &v1);

    g.stop();
    assert_tag(&s, &c, "v1", &m1);
    assert_pulls(&s, &c, &v1);
    let started = std::time::Instant::now();
    let r = c
        .post(s.url(&format!(
            "/v2/s3/app/blobs/uploads/?digest={}",
            digest_of(&v2.layer)
        )))
        .body(v2.layer.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = r.text().unwrap();
    assert!(body.contains("object store"), "{body}");
    eprintln!("refused after {:?}: {body}", started.elapsed());
    let r = c
        .head(s.url(&format!("/v2/s3/app/blobs/{}", digest_of(&v2.layer))))
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "a refused blob is not there"
    );

    g.restart();
    let (_, m2) = push_manifest(&s, &c, "v2", &v2);
    drop(s);
    let s = start(&g, &dir.path().join("empty"), prefix);
    assert_tag(&s, &c, "v1", &m1);
    assert_tag(&s, &c, "v2", &m2);
    assert_pulls(&s, &c, &v1);
    assert_pulls(&s, &c, &v2);
}

/// Pushes a blob in two PATCHes (POST, PATCH, PATCH, PUT), following the Location headers.
fn push_chunked(s: &Server, c: &Client, data: &[u8]) {
    let r = c.post(s.url("/v2/s3/app/blobs/uploads/")).send().unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let mut at = r.headers()["location"].to_str().unwrap().to_string();
    let half = data.len() / 2;
    for (start, piece) in [(0, &data[..half]), (half, &data[half..])] {
        at = patch_chunk(s, c, &at, start, piece);
    }
    finish_upload(s, c, &at, data);
}

/// PATCHes `piece` at byte `start` of the upload at `at`; the next location.
fn patch_chunk(s: &Server, c: &Client, at: &str, start: usize, piece: &[u8]) -> String {
    let r = c
        .patch(s.url(at))
        .header("Content-Type", "application/octet-stream")
        .header(
            "Content-Range",
            format!("{start}-{}", start + piece.len() - 1),
        )
        .body(piece.to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    r.headers()["location"].to_str().unwrap().to_string()
}

/// Completes the upload at `at`, which holds `data`.
fn finish_upload(s: &Server, c: &Client, at: &str, data: &[u8]) {
    let sep = if at.contains('?') { '&' } else { '?' };
    let r = c
        .put(s.url(&format!("{at}{sep}digest={}", digest_of(data))))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

/// A replica told where the writer is forwards writes there: a chunked push and a monolithic one
/// through the replica land on the writer; the same image pushed at once through both nodes
/// loses nothing; both nodes serve everything.
#[test]
fn a_replica_forwards_pushes_to_the_writer() {
    let g = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let c = Client::new();
    let prefix = "forward";
    let writer = start(&g, &dir.path().join("writer"), prefix);
    let url = format!("http://{}", writer.addr);
    let replica = start_with(
        &g,
        &dir.path().join("replica"),
        flags_with(&g, prefix, "inline", &["--replica", "--writer-url", &url]),
    );

    let v1 = image(&[1, 2]);
    push_chunked(&replica, &c, &v1.layer);
    push_blob(&replica, &c, "s3/app", &v1.config);
    let m1 = manifest(&v1);
    let r = c
        .put(replica.url("/v2/s3/app/manifests/v1"))
        .header("Content-Type", OCI_MANIFEST)
        .body(m1.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_tag(&writer, &c, "v1", &m1);
    assert_pulls(&writer, &c, &v1);

    // The same image through both nodes at once, under two tags.
    let v2 = image(&[3, 4, 5]);
    let m2 = manifest(&v2);
    std::thread::scope(|scope| {
        for (node, tag) in [(&writer, "a"), (&replica, "b")] {
            let (c, v2) = (&c, &v2);
            scope.spawn(move || {
                push(node, c, tag, v2);
            });
        }
    });
    for tag in ["a", "b"] {
        assert_tag(&writer, &c, tag, &m2);
    }
    wait_for_tag(&replica, &c, "b");
    for tag in ["v1", "a", "b"] {
        let m = if tag == "v1" { &m1 } else { &m2 };
        assert_tag(&replica, &c, tag, m);
    }
    assert_pulls(&replica, &c, &v1);
    assert_pulls(&replica, &c, &v2);
}

/// What a collection removes from the bucket waits out the grace period in the trash: right
/// after the pass the objects are still there (a replica reading by an older index finds them),
/// and the first pass after the grace period deletes them.
#[test]
fn collected_objects_stay_in_the_bucket_for_the_grace_period() {
    let g = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let c = Client::new();
    let prefix = "grace";
    let grace = std::time::Duration::from_secs(3);
    let mut f = flags(&g, prefix);
    let at = f.iter().position(|a| a == "--gc-delay").unwrap();
    f[at + 1] = "3s".into();
    let s = start_with(&g, &dir.path().join("node"), f);
    let (v1, v2) = (image(&[1, 2, 3]), image(&[7, 8, 9]));
    let m1 = push(&s, &c, "v1", &v1);
    push(&s, &c, "v2", &v2);
    wait_dedup_idle(&s.url("/_stats"));
    let pushed = unix_now();
    let r = c
        .delete(s.url(&format!("/v2/s3/app/manifests/{m1}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    wait_past_grace(pushed, grace);
    let before = objects(&g, prefix);
    let report: Value = c.post(s.url("/_gc")).send().unwrap().json().unwrap();
    assert!(
        report["containers_removed"].as_u64().unwrap_or(0)
            + report["containers_compacted"].as_u64().unwrap_or(0)
            > 0,
        "{report}"
    );
    let trashed = objects_under(&g, prefix, "trash");
    assert!(!trashed.is_empty(), "the removals are in the trash");
    let during = objects(&g, prefix);
    for k in &before {
        assert!(
            during.contains(k),
            "{k} deleted before the grace period ended"
        );
    }
    std::thread::sleep(grace + std::time::Duration::from_millis(500));
    let _: Value = c.post(s.url("/_gc")).send().unwrap().json().unwrap();
    assert!(objects_under(&g, prefix, "trash").is_empty());
    let after = objects(&g, prefix);
    assert!(
        before.iter().any(|k| !after.contains(k)),
        "the trash was emptied after the grace period"
    );
    assert_pulls(&s, &c, &v2);
}

/// Unix seconds now.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Wait until what was written by unix second `at` is past a grace period of `grace` for the
/// next pass. A pass keeps what is not older than its cutoff, `now - grace` in whole seconds,
/// so a link made in the pass's own second (pushes and a pass within one second) is kept.
fn wait_past_grace(at: u64, grace: std::time::Duration) {
    while unix_now() <= at + grace.as_secs() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// With no grace period, a pass empties the trash it fills, however long it takes: the trash is
/// aged by the grace period itself, not by the time since the pass began (which counts the
/// pass's own duration). The pass is slowed by two seconds after its chunk removals commit, as
/// a loaded machine would slow it, before it removes containers.
#[test]
fn a_slow_pass_with_no_grace_period_empties_the_trash_it_fills() {
    let g = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let c = Client::new();
    let prefix = "slow";
    let args = flags(&g, prefix);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut env = g.env();
    env.push(("STOWAGE_FAILPOINT", "gc-chunks-committed:pause=2000".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s = Server::start_with_env(&dir.path().join("node"), &args, &env);
    let (v1, v2) = (image(&[1, 2, 3]), image(&[7, 8, 9]));
    let m1 = push(&s, &c, "v1", &v1);
    push(&s, &c, "v2", &v2);
    wait_dedup_idle(&s.url("/_stats"));
    let pushed = unix_now();
    let before = objects(&g, prefix);
    let r = c
        .delete(s.url(&format!("/v2/s3/app/manifests/{m1}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    wait_past_grace(pushed, std::time::Duration::ZERO);
    let started = std::time::Instant::now();
    let report: Value = c.post(s.url("/_gc")).send().unwrap().json().unwrap();
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(2),
        "the pass was not slowed: {report}"
    );
    assert!(
        report["containers_removed"].as_u64().unwrap_or(0) > 0,
        "{report}"
    );
    assert!(objects_under(&g, prefix, "trash").is_empty());
    assert!(objects_under(&g, prefix, "blobs").is_empty());
    let after = objects(&g, prefix);
    assert!(
        before.iter().any(|k| !after.contains(k)),
        "the removed containers are gone from the bucket"
    );
    assert_pulls(&s, &c, &v2);
}

/// An upload session outlives its node: half a blob acknowledged, the node killed and its data
/// directory lost, a new node on an empty one reports the same offset and takes the rest.
#[test]
fn an_upload_session_resumes_on_a_new_node_after_the_first_is_lost() {
    let g = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    let c = Client::new();
    let prefix = "resume";
    let mut s = start(&g, &dir.path().join("first"), prefix);
    let img = image(&[1, 2, 3]);
    let r = c.post(s.url("/v2/s3/app/blobs/uploads/")).send().unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let at = r.headers()["location"].to_str().unwrap().to_string();
    let half = img.layer.len() / 2;
    patch_chunk(&s, &c, &at, 0, &img.layer[..half]);
    s.kill9();
    std::fs::remove_dir_all(dir.path().join("first")).unwrap();

    let s = start(&g, &dir.path().join("second"), prefix);
    let r = c.get(s.url(&at)).send().unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT, "the session is known");
    assert_eq!(
        r.headers()["range"].to_str().unwrap(),
        format!("0-{}", half - 1)
    );
    let at = patch_chunk(&s, &c, &at, half, &img.layer[half..]);
    finish_upload(&s, &c, &at, &img.layer);
    push_blob(&s, &c, "s3/app", &img.config);
    assert_pulls(&s, &c, &img);
    // The session's chunks went with it.
    assert!(objects_under(&g, prefix, "uploads").is_empty());
}
