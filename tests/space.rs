//! Running out of disk space is a phase, not a fate: on a size-limited tmpfs, pushes refused
//! for space get a clear error and lose nothing acknowledged, reads keep working, free space
//! and a low-space warning show in `/_stats`, a collection pass runs on the full disk and
//! frees it, pushes work again, and layers whose packing failed for want of space are
//! deduplicated once space is back.
//!
//! Mounting a tmpfs needs root (CAP_SYS_ADMIN): the test is ignored by default and
//! `scripts/test` runs it (`--ignored`) when it runs as root.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{digest_of, pseudo_random, tar_of, Server};
use reqwest::blocking::Client;
use reqwest::StatusCode;
use serde_json::{json, Value};

struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size_mb: u64) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mounting a tmpfs failed: this test needs root"
        );
        Tmpfs(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// Push one layer and a manifest tagged `tag`; the status of the first request that failed.
fn push_version(
    s: &Server,
    c: &Client,
    tag: &str,
    layer: &[u8],
) -> Result<(), (StatusCode, Value)> {
    let config = format!(r#"{{"tag":"{tag}"}}"#).into_bytes();
    for blob in [layer, &config[..]] {
        let r = c
            .post(s.url(&format!(
                "/v2/ci/app/blobs/uploads/?digest={}",
                digest_of(blob)
            )))
            .body(blob.to_vec())
            .send()
            .unwrap();
        if r.status() != StatusCode::CREATED {
            let st = r.status();
            return Err((st, r.json().unwrap_or(Value::Null)));
        }
    }
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest_of(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest_of(layer), "size": layer.len()}],
    }))
    .unwrap();
    let r = c
        .put(s.url(&format!("/v2/ci/app/manifests/{tag}")))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(m)
        .send()
        .unwrap();
    if r.status() != StatusCode::CREATED {
        let st = r.status();
        return Err((st, r.json().unwrap_or(Value::Null)));
    }
    Ok(())
}

fn stats(s: &Server, c: &Client) -> Value {
    c.get(s.url("/_stats")).send().unwrap().json().unwrap()
}

#[test]
#[ignore = "needs root to mount a size-limited tmpfs; scripts/test runs it as root"]
fn a_full_disk_refuses_pushes_clearly_and_a_collection_brings_it_back() {
    let fs = Tmpfs::mount(48);
    let c = Client::new();
    let s = Server::start_at(
        fs.path(),
        &[
            "--gc-interval",
            "0",
            "--gc-delay",
            "0s",
            "--retention",
            "ci/*=keep-last:1",
            "--meta-map-size",
            "268435456",
        ],
    );
    // Incompressible 6 MB layers: each needs its staged copy and, while it is packed, as
    // much again in containers.
    let layers: Vec<Vec<u8>> = (0..12)
        .map(|v| tar_of("blob.bin", &pseudo_random(6 << 20, 100 + v)))
        .collect();
    let mut pushed = Vec::new();
    let mut refusal = None;
    for (v, l) in layers.iter().enumerate() {
        match push_version(&s, &c, &format!("v{v}"), l) {
            Ok(()) => pushed.push(v),
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
        common::wait_dedup_idle(&s.url("/_stats"));
    }
    let (status, body) = refusal.expect("the disk never filled up");
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert_eq!(body["errors"][0]["code"], "DENIED", "{body}");
    let msg = body["errors"][0]["message"].as_str().unwrap();
    assert!(msg.contains("out of space"), "{msg}");
    let st = stats(&s, &c);
    assert_eq!(st["disk"]["low_space"], true, "{st}");
    // Everything acknowledged still reads back.
    for v in &pushed {
        let d = digest_of(&layers[*v]);
        let got = c
            .get(s.url(&format!("/v2/ci/app/blobs/{d}")))
            .send()
            .unwrap();
        assert_eq!(got.status(), StatusCode::OK);
        assert!(got.bytes().unwrap().as_ref() == &layers[*v][..]);
    }
    // A pass on the full disk keeps the last version and frees the rest.
    let r = c.post(s.url("/_gc")).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let report: Value = r.json().unwrap();
    assert!(
        report["stored_bytes_after"].as_u64() < report["stored_bytes_before"].as_u64(),
        "{report}"
    );
    // Pushes work again, and nothing stays raw for want of space.
    let next = pushed.len();
    push_version(&s, &c, &format!("v{next}"), &layers[next]).expect("a push after the pass");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let st = common::wait_dedup_idle(&s.url("/_stats"));
        let stuck = st["layers"]["raw_reasons"]
            .as_object()
            .map(|m| m.keys().any(|k| k.contains("No space left")))
            .unwrap_or(false);
        if !stuck {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "layers stay raw for want of space: {st}"
        );
        let _ = c.post(s.url("/_gc")).send().unwrap();
    }
    let d = digest_of(&layers[next]);
    let got = c
        .get(s.url(&format!("/v2/ci/app/blobs/{d}")))
        .send()
        .unwrap();
    assert!(got.bytes().unwrap().as_ref() == &layers[next][..]);
}
