//! Near-duplicate deltas end to end through the real binary: a series of image versions is
//! stored mostly as deltas and pulls back bit for bit, fsck is clean, kill -9 in the middle of
//! delta encoding loses nothing acknowledged, and the repository policies (raw, chunks only,
//! minimum age) do what they say and report it.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{assert_fsck_clean, pull_blob as pull, push_blob as push, wait_dedup_idle, Server};
use reqwest::blocking::Client;
use reqwest::StatusCode;
use serde_json::Value;

/// One version of an image layer: a few large "binaries" whose every 20 KiB carries a version
/// stamp (so versions share few identical chunks but many similar ones), and a gzip file
/// (already-compressed content, which the default policy keeps out of similarity).
fn version(v: u32) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let add = |b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_mtime(1_700_000_000 + v as u64);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    for i in 0..4 {
        let size = 250_000 + i * 777;
        let mut data =
            common::xorshift_text(&mut x, size, b"0123456789abcdefghijklmnopqrstuvwxyz_\n");
        for at in (v as usize * 41..size - 16).step_by(20_000) {
            data[at..at + 12].copy_from_slice(format!("v{v:011}").as_bytes());
        }
        add(&mut b, &format!("usr/lib/libapp{i}.so"), &data);
    }
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    e.write_all(&common::pseudo_random(120_000, v as u64))
        .unwrap();
    add(&mut b, "usr/share/doc/changelog.gz", &e.finish().unwrap());
    b.into_inner().unwrap()
}

fn gzip(raw: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    e.write_all(raw).unwrap();
    e.finish().unwrap()
}

fn stats(s: &Server, c: &Client) -> Value {
    c.get(s.url("/_stats")).send().unwrap().json().unwrap()
}

fn push_series(s: &Server, c: &Client, repo: &str, versions: &[Vec<u8>]) -> Vec<String> {
    versions.iter().map(|b| push(s, c, repo, b)).collect()
}

#[test]
fn a_version_series_is_stored_as_deltas_and_pulls_back_exactly() {
    let versions: Vec<Vec<u8>> = (1..=6).map(|v| gzip(&version(v))).collect();
    let mut chunk_bytes = Vec::new();
    for similarity in ["true", "false"] {
        let root = tempfile::tempdir().unwrap();
        let mut s = Server::start_at(
            root.path(),
            &["--dedup", "inline", "--similarity", similarity],
        );
        let c = Client::new();
        let digests = push_series(&s, &c, "series/app", &versions);
        let st = stats(&s, &c);
        assert_eq!(st["layers"]["deduplicated"], 6, "{st}");
        let sim = &st["similarity"];
        if similarity == "true" {
            // Versions 2-6 change every large chunk a little: they become deltas.
            assert!(
                sim["chunks_delta"].as_u64().unwrap() > sim["chunks_whole"].as_u64().unwrap(),
                "{st}"
            );
            assert!(st["chunks"]["delta"].as_u64().unwrap() > 0, "{st}");
            assert!(st["chunks"]["bases"].as_u64().unwrap() > 0, "{st}");
            assert!(sim["delta_saved_bytes"].as_u64().unwrap() > 100_000, "{st}");
            assert!(sim["hit_rate"].as_f64().unwrap() > 0.5, "{st}");
            // The gzip file is recognised from its bytes and kept out of similarity.
            assert!(
                sim["skipped"]["compressed"]["chunks"].as_u64().unwrap() > 0,
                "{st}"
            );
            let m = c.get(s.url("/metrics")).send().unwrap().text().unwrap();
            for name in [
                "stowage_delta_saved_bytes_total",
                "stowage_pipeline_chunks_total{kind=\"delta\"}",
                "stowage_similarity_hits_total",
                "stowage_similarity_skipped_chunks_total{reason=\"compressed\"}",
                "stowage_chunks_delta ",
            ] {
                assert!(m.contains(name), "/metrics lacks {name}");
            }
        } else {
            assert_eq!(sim["chunks_delta"], 0, "{st}");
            assert_eq!(st["chunks"]["delta"], 0, "{st}");
        }
        chunk_bytes.push(st["chunks"]["stored_bytes"].as_u64().unwrap());
        for (b, d) in versions.iter().zip(&digests) {
            assert!(
                pull(&s, &c, "series/app", d) == *b,
                "{d} pulls back exactly"
            );
        }
        assert!(s.stop());
        assert_fsck_clean(root.path(), "similarity");
    }
    assert!(
        chunk_bytes[0] * 10 < chunk_bytes[1] * 7,
        "deltas store less than chunks alone: {chunk_bytes:?}"
    );
}

/// The process dies (as with kill -9) right after encoding its first delta. Every
/// acknowledged blob is still served exactly after the restart, the layer is deduplicated
/// again from the start, and fsck is clean.
#[test]
fn kill_9_during_delta_encoding_loses_nothing() {
    let v1 = gzip(&version(1));
    let v2 = gzip(&version(2));
    let root = tempfile::tempdir().unwrap();
    let c = Client::new();
    let d1 = {
        let mut s = Server::start_at(root.path(), &["--dedup", "inline"]);
        let d = push(&s, &c, "crash/app", &v1);
        assert!(s.stop());
        d
    };
    let mut s = Server::start_with_env(root.path(), &[], &[("STOWAGE_FAILPOINT", "delta-encoded")]);
    let d2 = push(&s, &c, "crash/app", &v2);
    assert!(
        s.wait_exit(Duration::from_secs(60)),
        "the delta-encoded failpoint was not reached"
    );
    let mut s = Server::start_at(root.path(), &[]);
    assert!(pull(&s, &c, "crash/app", &d2) == v2, "served from staging");
    let st = wait_dedup_idle(&s.url("/_stats"));
    assert_eq!(st["layers"]["deduplicated"], 2, "{st}");
    assert!(st["chunks"]["delta"].as_u64().unwrap() > 0, "{st}");
    assert!(
        st["similarity"]["index_entries"].as_u64().unwrap() > 0,
        "{st}"
    );
    assert_eq!(st["similarity"]["index_capacity"], 2_000_000, "{st}");
    assert!(pull(&s, &c, "crash/app", &d1) == v1);
    assert!(pull(&s, &c, "crash/app", &d2) == v2);
    assert!(s.stop());
    assert_fsck_clean(root.path(), "similarity");
}

#[test]
fn repository_policies_keep_raw_skip_deltas_and_defer_and_say_so() {
    let root = tempfile::tempdir().unwrap();
    let c = Client::new();
    let hot: Vec<Vec<u8>> = (1..=2).map(|v| gzip(&version(v))).collect();
    let ci: Vec<Vec<u8>> = (11..=12).map(|v| gzip(&version(v))).collect();
    let (dh, dc) = {
        let mut s = Server::start_at(
            root.path(),
            &[
                "--dedup",
                "inline",
                "--repo-policy",
                "hot/*=raw",
                "--repo-policy",
                "ci/*=chunks",
            ],
        );
        let dh = push_series(&s, &c, "hot/web", &hot);
        let dc = push_series(&s, &c, "ci/web", &ci);
        let st = stats(&s, &c);
        assert_eq!(
            st["layers"]["raw_reasons"]["policy: raw repository"], 2,
            "{st}"
        );
        assert_eq!(st["layers"]["deduplicated"], 2, "{st}");
        assert_eq!(st["similarity"]["chunks_delta"], 0, "{st}");
        assert!(
            st["similarity"]["skipped"]["repository"]["chunks"]
                .as_u64()
                .unwrap()
                > 0,
            "{st}"
        );
        let policies = st["policies"].as_array().unwrap();
        let find = |p: &str, e: &str| {
            policies
                .iter()
                .find(|x| x["policy"] == p && x["effect"] == e)
                .map(|x| x["layers"].as_u64().unwrap())
        };
        assert_eq!(find("hot/*", "raw"), Some(2), "{st}");
        assert_eq!(find("ci/*", "no_similarity"), Some(2), "{st}");
        let m = c.get(s.url("/metrics")).send().unwrap().text().unwrap();
        assert!(
            m.contains("stowage_policy_layers_total{effect=\"raw\",policy=\"hot/*\"} 2"),
            "{m}"
        );
        for (b, d) in hot.iter().zip(&dh).chain(ci.iter().zip(&dc)) {
            let repo = if dh.contains(d) { "hot/web" } else { "ci/web" };
            assert!(pull(&s, &c, repo, d) == *b);
        }
        assert!(s.stop());
        (dh, dc)
    };

    // Without the raw policy, the layers it kept are deduplicated at start-up; a minimum age
    // holds new layers back until they reach it.
    let mut s = Server::start_at(root.path(), &["--repo-policy", "young/*=full@3s"]);
    let st = wait_dedup_idle(&s.url("/_stats"));
    assert_eq!(st["layers"]["deduplicated"], 4, "{st}");
    let young = gzip(&version(21));
    let pushed = Instant::now();
    let dy = push(&s, &c, "young/app", &young);
    let st = stats(&s, &c);
    if pushed.elapsed() < Duration::from_secs(2) {
        assert_eq!(st["layers"]["pending"], 1, "held back by its age: {st}");
    }
    let st = wait_dedup_idle(&s.url("/_stats"));
    assert!(pushed.elapsed() >= Duration::from_secs(3), "{st}");
    assert_eq!(st["layers"]["deduplicated"], 5, "{st}");
    assert!(st["policies"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["policy"] == "young/*" && p["effect"] == "deferred"));
    assert!(pull(&s, &c, "young/app", &dy) == young);
    for (b, d) in hot.iter().zip(&dh) {
        assert!(pull(&s, &c, "hot/web", d) == *b);
    }
    for (b, d) in ci.iter().zip(&dc) {
        assert!(pull(&s, &c, "ci/web", d) == *b);
    }
    assert!(s.stop());
    assert_fsck_clean(root.path(), "similarity");
}

/// Mount blob `d` of repository `from` into `repo` (a cross-repository mount the server must
/// grant).
fn mount(s: &Server, c: &Client, repo: &str, d: &str, from: &str) {
    let r = c
        .post(s.url(&format!("/v2/{repo}/blobs/uploads/?mount={d}&from={from}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "mount {d} from {from}");
}

/// The promotion flow: a layer deduplicated in a CI repository is mounted into (or pushed
/// again to) a repository kept raw for pull speed. It is restored into staging and kept raw;
/// once no raw policy covers it (after a restart) its recipe serves again, with no raw copy.
#[test]
fn a_deduplicated_layer_promoted_into_a_raw_repository_is_kept_raw() {
    let root = tempfile::tempdir().unwrap();
    let c = Client::new();
    let (a, b) = (gzip(&version(31)), gzip(&version(32)));
    let staged = |d: &str| root.path().join("staging/sha256").join(&d[7..]).exists();
    let policy_raw = |st: &Value| st["layers"]["raw_reasons"]["policy: raw repository"].clone();
    let (da, db) = {
        let mut s = Server::start_at(
            root.path(),
            &["--dedup", "inline", "--repo-policy", "prod/*=raw"],
        );
        let da = push(&s, &c, "ci/app", &a);
        let db = push(&s, &c, "ci/app", &b);
        let st = stats(&s, &c);
        assert_eq!(st["layers"]["deduplicated"], 2, "{st}");
        assert!(!staged(&da) && !staged(&db));
        // Promotion by cross-repository mount, and by pushing the same bytes again.
        mount(&s, &c, "prod/app", &da, "ci/app");
        push(&s, &c, "prod/app", &b);
        let st = stats(&s, &c);
        assert_eq!(policy_raw(&st), 2, "{st}");
        assert_eq!(st["layers"]["deduplicated"], 0, "{st}");
        assert!(staged(&da) && staged(&db), "restored into staging");
        assert!(pull(&s, &c, "prod/app", &da) == a);
        assert!(pull(&s, &c, "ci/app", &db) == b);
        assert!(s.stop());
        (da, db)
    };
    assert_fsck_clean(root.path(), "similarity");

    // The policy is gone: the recipes serve again and the raw copies are removed.
    let mut s = Server::start_at(root.path(), &["--dedup", "inline"]);
    let st = wait_dedup_idle(&s.url("/_stats"));
    assert_eq!(st["layers"]["deduplicated"], 2, "{st}");
    assert!(policy_raw(&st).is_null(), "{st}");
    assert!(!staged(&da) && !staged(&db));
    assert!(pull(&s, &c, "prod/app", &da) == a);
    assert!(pull(&s, &c, "prod/app", &db) == b);
    assert!(s.stop());

    // Added back: kept raw again at start-up.
    let mut s = Server::start_at(
        root.path(),
        &["--dedup", "inline", "--repo-policy", "prod/*=raw"],
    );
    let st = stats(&s, &c);
    assert_eq!(policy_raw(&st), 2, "{st}");
    assert!(staged(&da) && staged(&db));
    assert!(s.stop());
    assert_fsck_clean(root.path(), "similarity");
}

/// A layer whose deduplication a minimum age defers, mounted meanwhile into a repository
/// kept raw, is kept raw without ever being chunked.
#[test]
fn a_deferred_layer_linked_into_a_raw_repository_is_kept_raw_as_pushed() {
    let root = tempfile::tempdir().unwrap();
    let c = Client::new();
    let a = gzip(&version(41));
    let mut s = Server::start_at(
        root.path(),
        &[
            "--repo-policy",
            "ci/*=full@4s",
            "--repo-policy",
            "prod/*=raw",
        ],
    );
    let pushed = Instant::now();
    let da = push(&s, &c, "ci/app", &a);
    mount(&s, &c, "prod/app", &da, "ci/app");
    assert!(
        pushed.elapsed() < Duration::from_secs(4),
        "the mount came after the deferral; the machine is too slow for this test"
    );
    let st = wait_dedup_idle(&s.url("/_stats"));
    assert!(
        pushed.elapsed() >= Duration::from_secs(4),
        "{:?} {st}",
        pushed.elapsed()
    );
    assert_eq!(
        st["layers"]["raw_reasons"]["policy: raw repository"], 1,
        "{st}"
    );
    assert_eq!(st["layers"]["deduplicated"], 0, "{st}");
    assert_eq!(st["chunks"]["unique"], 0, "never chunked: {st}");
    assert!(pull(&s, &c, "prod/app", &da) == a);
    assert!(pull(&s, &c, "ci/app", &da) == a);
    assert!(s.stop());
    assert_fsck_clean(root.path(), "similarity");
}
