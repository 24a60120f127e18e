//! Retention and garbage collection against the real binary: versions pushed, old ones
//! deleted by a retention policy, space freed, the rest pulled back bit-exact (HTTP and
//! skopeo), fsck clean; `kill -9` at every durable step of a pass; pushes, deletes and passes
//! interleaved.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{
    assert_fsck_clean, digest_of, pseudo_random, push_blob, run, stowage, tool, wait_dedup_idle,
    Server,
};
use reqwest::blocking::Client;
use reqwest::StatusCode;
use serde_json::{json, Value};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// An image version: a base layer shared by all versions, an app layer of which a third
/// changes per version (so the old version's containers end up partly live), a config.
struct Image {
    layers: Vec<Vec<u8>>,
    config: Vec<u8>,
}

fn tar_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

fn image(version: u64, seed: u64) -> Image {
    let base = tar_of(&[("etc/base".into(), pseudo_random(300_000, seed))]);
    let app = tar_of(
        &(0..6u64)
            .map(|i| {
                let s = if i % 3 == 0 {
                    seed * 1000 + version * 10 + i
                } else {
                    seed * 1000 + i
                };
                (format!("srv/app/f{i}"), pseudo_random(120_000, s))
            })
            .collect::<Vec<_>>(),
    );
    let config =
        format!(r#"{{"architecture":"amd64","os":"linux","version":{version},"seed":{seed}}}"#);
    Image {
        layers: vec![base, app],
        config: config.into_bytes(),
    }
}

fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": digest_of(data), "size": data.len()})
}

fn manifest_of(img: &Image) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &img.config),
        "layers": img.layers.iter().map(|l| descriptor("application/vnd.oci.image.layer.v1.tar", l)).collect::<Vec<_>>(),
    }))
    .unwrap()
}

fn put_manifest(
    s: &Server,
    c: &Client,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> StatusCode {
    c.put(s.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("Content-Type", media_type)
        .body(body.to_vec())
        .send()
        .unwrap()
        .status()
}

/// Push an image and tag it; its manifest digest.
fn push_image(s: &Server, c: &Client, repo: &str, tag: &str, img: &Image) -> String {
    for l in &img.layers {
        push_blob(s, c, repo, l);
    }
    push_blob(s, c, repo, &img.config);
    let m = manifest_of(img);
    assert_eq!(
        put_manifest(s, c, repo, tag, OCI_MANIFEST, &m),
        StatusCode::CREATED
    );
    digest_of(&m)
}

fn get(s: &Server, c: &Client, path: &str) -> (StatusCode, Vec<u8>) {
    let r = c
        .get(s.url(path))
        .header("Accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
        .send()
        .unwrap();
    let st = r.status();
    (st, r.bytes().map(|b| b.to_vec()).unwrap_or_default())
}

/// Every blob of `img` in `repo` comes back byte for byte.
fn assert_pulls(s: &Server, c: &Client, repo: &str, tag: &str, img: &Image) {
    let (st, m) = get(s, c, &format!("/v2/{repo}/manifests/{tag}"));
    assert_eq!(st, StatusCode::OK, "{repo}:{tag}");
    assert_eq!(m, manifest_of(img));
    for b in img.layers.iter().chain([&img.config]) {
        let (st, got) = get(s, c, &format!("/v2/{repo}/blobs/{}", digest_of(b)));
        assert_eq!(st, StatusCode::OK, "{repo}:{tag} blob");
        assert!(got == *b, "{repo}:{tag}: a blob came back different");
    }
}

fn gc(s: &Server, c: &Client, query: &str) -> Value {
    let r = c.post(s.url(&format!("/_gc{query}"))).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().unwrap()
}

fn stats(s: &Server, c: &Client) -> Value {
    c.get(s.url("/_stats")).send().unwrap().json().unwrap()
}

fn tags(s: &Server, c: &Client, repo: &str) -> Vec<String> {
    let v: Value = c
        .get(s.url(&format!("/v2/{repo}/tags/list")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    v["tags"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

const GC_FLAGS: &[&str] = &[
    "--dedup",
    "inline",
    "--gc-interval",
    "0",
    "--gc-delay",
    "0s",
    "--gc-compact-below",
    "0.9",
];

#[test]
fn retention_and_collection_free_space_and_keep_the_rest_exact() {
    let root = tempfile::tempdir().unwrap();
    let c = Client::new();
    let mut flags = GC_FLAGS.to_vec();
    flags.extend(["--retention", "ci/*=keep-last:2"]);
    let mut s = Server::start_at(root.path(), &flags);
    let versions: Vec<Image> = (1..=5).map(|v| image(v, 1)).collect();
    let mut digests = Vec::new();
    for (v, img) in versions.iter().enumerate() {
        digests.push(push_image(&s, &c, "ci/app", &format!("v{}", v + 1), img));
        // Distinct push times, so "the last two pushed" is well defined.
        std::thread::sleep(Duration::from_millis(1100));
    }
    // A repository no policy matches keeps everything.
    let other = image(1, 2);
    push_image(&s, &c, "other/app", "v1", &other);
    // A multi-arch index whose children are untagged, in a governed repository.
    let (arm, amd) = (image(1, 3), image(2, 3));
    let children: Vec<Vec<u8>> = [&arm, &amd]
        .iter()
        .map(|img| {
            for l in &img.layers {
                push_blob(&s, &c, "ci/multi", l);
            }
            push_blob(&s, &c, "ci/multi", &img.config);
            let m = manifest_of(img);
            assert_eq!(
                put_manifest(&s, &c, "ci/multi", &digest_of(&m), OCI_MANIFEST, &m),
                StatusCode::CREATED
            );
            m
        })
        .collect();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": children.iter().map(|m| descriptor(OCI_MANIFEST, m)).collect::<Vec<_>>(),
    }))
    .unwrap();
    assert_eq!(
        put_manifest(&s, &c, "ci/multi", "latest", OCI_INDEX, &index),
        StatusCode::CREATED
    );
    // Signatures (referrers) of v5, which stays, and of v1, which goes.
    let empty = b"{}".to_vec();
    push_blob(&s, &c, "ci/app", &empty);
    let sig = |subject: &str, n: u8| {
        let layer = vec![n; 64];
        push_blob(&s, &c, "ci/app", &layer);
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.sig",
            "config": descriptor("application/vnd.oci.empty.v1+json", &empty),
            "layers": [descriptor("application/vnd.example.sig", &layer)],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 1},
        }))
        .unwrap()
    };
    let (sig5, sig1) = (sig(&digests[4], 5), sig(&digests[0], 1));
    for m in [&sig5, &sig1] {
        assert_eq!(
            put_manifest(&s, &c, "ci/app", &digest_of(m), OCI_MANIFEST, m),
            StatusCode::CREATED
        );
    }
    // Past the (zero) grace period: links are compared with a cutoff in whole seconds.
    std::thread::sleep(Duration::from_millis(1100));
    let before = stats(&s, &c);

    // A dry run reports and changes nothing.
    let dry = gc(&s, &c, "?dry_run=true");
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["retention"]["tags_deleted"], 3, "{dry}");
    let would = dry["blobs_removed"].as_u64().unwrap();
    assert_eq!(tags(&s, &c, "ci/app").len(), 5);
    assert_eq!(stats(&s, &c)["chunks"], before["chunks"]);

    let report = gc(&s, &c, "");
    assert_eq!(report["retention"]["tags_deleted"], 3, "{report}");
    // v1-v3, and v1's signature, whose subject went.
    assert_eq!(report["retention"]["manifests_deleted"], 4, "{report}");
    assert_eq!(report["chunk_phase"], "done");
    assert!(report["blobs_removed"].as_u64().unwrap() >= 4, "{report}");
    assert_eq!(
        report["blobs_removed"].as_u64().unwrap(),
        would,
        "the dry run counted what the pass removes: {dry}"
    );
    assert!(report["chunks_removed"].as_u64().unwrap() > 0, "{report}");
    assert!(
        report["containers_removed"].as_u64().unwrap()
            + report["containers_compacted"].as_u64().unwrap()
            > 0,
        "{report}"
    );
    assert_eq!(tags(&s, &c, "ci/app"), ["v4", "v5"]);
    let after = stats(&s, &c);
    assert!(
        after["bytes"]["stored"].as_u64() < before["bytes"]["stored"].as_u64(),
        "{before} -> {after}"
    );
    assert_eq!(after["gc"]["passes"], 1);
    // What went is gone; what stays pulls back exactly.
    let v1_app = digest_of(&versions[0].layers[1]);
    assert_eq!(
        get(&s, &c, &format!("/v2/ci/app/blobs/{v1_app}")).0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&s, &c, "/v2/ci/app/manifests/v1").0,
        StatusCode::NOT_FOUND
    );
    assert_pulls(&s, &c, "ci/app", "v4", &versions[3]);
    assert_pulls(&s, &c, "ci/app", "v5", &versions[4]);
    assert_pulls(&s, &c, "other/app", "v1", &other);
    for (m, img) in children.iter().zip([&arm, &amd]) {
        assert_pulls(&s, &c, "ci/multi", &digest_of(m), img);
    }
    let (st, body) = get(&s, &c, &format!("/v2/ci/app/referrers/{}", digests[4]));
    assert_eq!(st, StatusCode::OK);
    let refs: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(refs["manifests"][0]["digest"], digest_of(&sig5));
    assert_eq!(
        get(
            &s,
            &c,
            &format!("/v2/ci/app/manifests/{}", digest_of(&sig1))
        )
        .0,
        StatusCode::NOT_FOUND
    );
    // skopeo reads the kept images as a client would.
    let out = tempfile::tempdir().unwrap();
    run(Command::new(tool("skopeo")).args([
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{}/ci/app:v4", s.addr),
        &format!("dir:{}", out.path().display()),
    ]));
    for l in &versions[3].layers {
        let name = out.path().join(common::sha256_hex(l));
        assert!(
            std::fs::read(&name).unwrap() == *l,
            "skopeo's copy of a layer differs"
        );
    }

    // The offline command is refused while the server holds the directory.
    let o = stowage(&["gc"], root.path());
    assert!(!o.status.success());
    assert!(s.stop());
    assert_fsck_clean(root.path(), "a collection");
    // Offline: nothing left to remove; its report on stdout.
    let o = stowage(
        &["gc", "--gc-delay", "0s", "--retention", "ci/*=keep-last:2"],
        root.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (r["blobs_removed"].as_u64(), r["chunks_removed"].as_u64()),
        (Some(0), Some(0)),
        "{r}"
    );
    assert_fsck_clean(root.path(), "an offline collection");

    // Compared with a store that only ever held what is kept.
    let fresh = tempfile::tempdir().unwrap();
    let f = Server::start_at(fresh.path(), GC_FLAGS);
    push_image(&f, &c, "ci/app", "v4", &versions[3]);
    push_image(&f, &c, "ci/app", "v5", &versions[4]);
    push_image(&f, &c, "other/app", "v1", &other);
    let fresh_chunks = stats(&f, &c)["chunks"]["stored_bytes"].as_u64().unwrap();
    let s2 = Server::start_at(root.path(), GC_FLAGS);
    let kept_chunks = stats(&s2, &c)["chunks"]["stored_bytes"].as_u64().unwrap();
    // The multi-arch images are kept too: at most their share more than the fresh store.
    assert!(
        kept_chunks <= fresh_chunks * 2,
        "{kept_chunks} vs {fresh_chunks}"
    );
}

/// A store with three versions of which retention keeps one, and containers partly live.
fn store_to_collect(root: &Path) -> Vec<Image> {
    let c = Client::new();
    let mut s = Server::start_at(root, GC_FLAGS);
    let versions: Vec<Image> = (1..=3).map(|v| image(v, 7)).collect();
    for (v, img) in versions.iter().enumerate() {
        push_image(&s, &c, "ci/app", &format!("v{}", v + 1), img);
        std::thread::sleep(Duration::from_millis(1100));
    }
    wait_dedup_idle(&s.url("/_stats"));
    assert!(s.stop());
    versions
}

#[test]
fn a_pass_killed_at_every_durable_step_is_finished_by_the_next() {
    let c = Client::new();
    for point in [
        "gc-links-committed",
        "gc-blobs-committed",
        "gc-chunks-committed",
        "gc-compacted-before-commit",
        "gc-compact-committed",
    ] {
        let root = tempfile::tempdir().unwrap();
        let versions = store_to_collect(root.path());
        let mut flags = GC_FLAGS.to_vec();
        flags.extend(["--retention", "ci/*=keep-last:1"]);
        let mut s = Server::start_with_env(root.path(), &flags, &[("STOWAGE_FAILPOINT", point)]);
        let r = c.post(s.url("/_gc")).send();
        assert!(
            r.is_err() || !r.unwrap().status().is_success(),
            "{point}: the pass was not stopped"
        );
        assert!(
            s.wait_exit(Duration::from_secs(30)),
            "{point}: the process did not abort"
        );
        assert_fsck_clean(root.path(), point);
        let mut s = Server::start_at(root.path(), &flags);
        assert_pulls(&s, &c, "ci/app", "v3", &versions[2]);
        let report = gc(&s, &c, "");
        assert_eq!(report["chunk_phase"], "done", "{point}: {report}");
        assert_eq!(tags(&s, &c, "ci/app"), ["v3"], "{point}");
        assert_pulls(&s, &c, "ci/app", "v3", &versions[2]);
        let st = stats(&s, &c);
        assert_eq!(st["blobs"], 3, "{point}: only v3's blobs remain: {st}");
        // Another pass finds nothing left.
        let again = gc(&s, &c, "");
        assert_eq!(again["blobs_removed"], 0, "{point}: {again}");
        assert_eq!(again["chunks_removed"], 0, "{point}: {again}");
        assert!(s.stop());
        assert_fsck_clean(root.path(), point);
    }
}

#[test]
fn pushes_deletes_and_passes_interleaved_lose_nothing_acknowledged() {
    let root = tempfile::tempdir().unwrap();
    let s = Server::start_at(
        root.path(),
        &[
            "--gc-interval",
            "0",
            "--gc-delay",
            "0s",
            "--gc-compact-below",
            "0.9",
        ],
    );
    let images: Vec<Image> = (1..=6).map(|v| image(v, 11)).collect();
    let addr = s.url("");
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        // Collector: passes back to back while the others work.
        let collector = scope.spawn(|| {
            let c = Client::new();
            let mut passes = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = c.post(format!("{addr}/_gc")).send().unwrap();
                assert_eq!(r.status(), StatusCode::OK);
                passes += 1;
            }
            passes
        });
        // Pusher/deleter, seeded: push versions (sharing layers), delete older ones by
        // digest, push deleted ones again.
        let c = Client::new();
        let mut x = 0x9E3779B97F4A7C15u64;
        let mut live: Vec<usize> = Vec::new();
        for _round in 0..24 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = (x % images.len() as u64) as usize;
            let repo = if x.is_multiple_of(2) {
                "mix/a"
            } else {
                "mix/b"
            };
            let tag = format!("v{v}");
            // A manifest can be refused when a pass unlinked a blob pushed a moment before it
            // (no grace period here): a client pushes again, as skopeo and docker do.
            let mut pushed = false;
            for _attempt in 0..5 {
                for l in &images[v].layers {
                    push_blob(&s, &c, repo, l);
                }
                push_blob(&s, &c, repo, &images[v].config);
                let m = manifest_of(&images[v]);
                if put_manifest(&s, &c, repo, &tag, OCI_MANIFEST, &m) == StatusCode::CREATED {
                    pushed = true;
                    break;
                }
            }
            assert!(pushed, "{repo}:{tag} could not be pushed");
            live.push(v * 2 + usize::from(repo == "mix/b"));
            if x.is_multiple_of(3) && live.len() > 2 {
                let gone = live.remove((x as usize / 3) % live.len());
                let (repo, v) = (if gone % 2 == 1 { "mix/b" } else { "mix/a" }, gone / 2);
                if !live.contains(&gone) {
                    let d = digest_of(&manifest_of(&images[v]));
                    let st = c
                        .delete(s.url(&format!("/v2/{repo}/manifests/{d}")))
                        .send()
                        .unwrap()
                        .status();
                    assert!(st == StatusCode::ACCEPTED || st == StatusCode::NOT_FOUND);
                }
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(collector.join().unwrap() > 0);
        // Every image still tagged pulls back exactly after the dust settles.
        wait_dedup_idle(&s.url("/_stats"));
        gc(&s, &c, "");
        for repo in ["mix/a", "mix/b"] {
            for tag in tags(&s, &c, repo) {
                let v: usize = tag[1..].parse().unwrap();
                assert_pulls(&s, &c, repo, &tag, &images[v]);
            }
        }
    });
    drop(s);
    assert_fsck_clean(root.path(), "interleaved pushes, deletes and passes");
}
