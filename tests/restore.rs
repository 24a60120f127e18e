//! Pulls of deduplicated layers under concurrency, through the real binary: concurrent pulls
//! of one layer share one restore (whole, by range, or leaving midway), a corrupt layer
//! aborts every reader, slow readers do not hold up other pulls, a manifest GET starts its
//! layers' restores, the hot tier keeps serving a layer it evicts mid-read, a kill -9 in
//! the middle of a restore leaves nothing to serve wrong, and concurrent pulls of long
//! klauspost zstd frames share one budget of segment threads.

mod common;

use std::io::{Read, Write};

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{pull_blob as pull, push_blob as push, Server};
use reqwest::blocking::Client;
use reqwest::header::RANGE;
use reqwest::StatusCode;
use serde_json::Value;

/// A gzip layer of `mb` files of 1 MiB of text (see `common::text_layer`).
fn big_layer(seed: u64, mb: usize) -> Vec<u8> {
    common::text_layer((0..mb as u64).map(|i| seed * 1000 + i))
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

fn stats(s: &Server, c: &Client) -> Value {
    c.get(s.url("/_stats")).send().unwrap().json().unwrap()
}

fn restore_count(s: &Server, c: &Client, what: &str) -> u64 {
    stats(s, c)["restore"][what].as_u64().unwrap()
}

/// A raw HTTP/1.1 GET whose body the caller reads at its own pace.
fn raw_get(s: &Server, path: &str) -> std::net::TcpStream {
    let mut sock = std::net::TcpStream::connect(&s.addr).unwrap();
    write!(sock, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut head = [0u8; 12];
    sock.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    sock
}

#[test]
fn concurrent_pulls_share_one_restore() {
    let root = tempfile::tempdir().unwrap();
    let s = Server::start_at(
        root.path(),
        &["--dedup", "inline", "--restore-threads", "1"],
    );
    let c = client();
    let blob = Arc::new(big_layer(1, 64));
    let d = push(&s, &c, "ci/app", &blob);
    assert_eq!(stats(&s, &c)["layers"]["deduplicated"], 1);
    let started = restore_count(&s, &c, "started");

    // Four clients at once: two whole, one Range, one leaving after its first megabyte.
    let go = Arc::new(Barrier::new(4));
    let url = s.url(&format!("/v2/ci/app/blobs/{d}"));
    let readers: Vec<_> = (0..4)
        .map(|i| {
            let (go, url, blob, c) = (go.clone(), url.clone(), blob.clone(), client());
            std::thread::spawn(move || {
                go.wait();
                match i {
                    0 | 1 => {
                        let got = c.get(&url).send().unwrap().bytes().unwrap();
                        assert!(got.as_ref() == blob.as_slice(), "reader {i}: bytes differ");
                    }
                    2 => {
                        let r = c
                            .get(&url)
                            .header(RANGE, "bytes=100000-999999")
                            .send()
                            .unwrap();
                        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
                        let got = r.bytes().unwrap();
                        // Before the layer's first restart point: it joins the restore.
                        assert!(got.as_ref() == &blob[100_000..1_000_000], "range differs");
                    }
                    _ => {
                        let mut r = c.get(&url).send().unwrap();
                        let mut first = vec![0u8; 1 << 20];
                        r.read_exact(&mut first).unwrap();
                        assert!(first == blob[..1 << 20]);
                        // Dropped here: the client goes away mid-layer.
                    }
                }
            })
        })
        .collect();
    for r in readers {
        r.join().unwrap();
    }
    let st = stats(&s, &c);
    assert_eq!(
        st["restore"]["started"].as_u64().unwrap() - started,
        1,
        "one restore for four pulls: {}",
        st["restore"]
    );
    assert_eq!(st["restore"]["joined"], 3, "{}", st["restore"]);
    assert_eq!(st["restore"]["failures"], 0);
    // Nothing left behind once the restore is done and nobody reads.
    assert_eq!(st["bytes"]["spool"], 0, "{}", st["bytes"]);
}

/// A range far into a cold layer is restored from the block boundary before it, not from
/// the layer's start, and its bytes are exact (end of the layer included).
#[test]
fn a_range_resumes_at_the_boundary_before_it() {
    let root = tempfile::tempdir().unwrap();
    let s = Server::start_at(root.path(), &["--dedup", "inline"]);
    let c = client();
    let blob = big_layer(7, 24);
    let d = push(&s, &c, "ci/app", &blob);
    assert_eq!(stats(&s, &c)["layers"]["deduplicated"], 1);
    let url = s.url(&format!("/v2/ci/app/blobs/{d}"));
    let n = blob.len();
    let mid = n * 2 / 3;
    for (range, want) in [
        ("bytes=-100".to_string(), &blob[n - 100..]),
        (
            format!("bytes={mid}-{}", mid + 99_999),
            &blob[mid..mid + 100_000],
        ),
        (format!("bytes={}-", n - 1), &blob[n - 1..]),
    ] {
        let r = c.get(&url).header(RANGE, &range).send().unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert!(r.bytes().unwrap().as_ref() == want, "{range}: bytes differ");
    }
    let st = stats(&s, &c);
    assert_eq!(st["restore"]["resumed"], 3, "{}", st["restore"]);
    assert_eq!(
        st["restore"]["started"], 0,
        "no whole restore: {}",
        st["restore"]
    );
    // Boundaries are recorded about every 4 MiB of the 24 MiB: each of the two ranges at the
    // end skipped all but the last two segments (16 MiB at least).
    let skipped = st["restore"]["resumed_skipped_bytes"].as_u64().unwrap();
    assert!(skipped > 30 << 20, "{skipped} bytes skipped");
    assert_eq!(st["restore"]["failures"], 0);
    // The whole layer still restores exact.
    assert!(pull(&s, &c, "ci/app", &d) == blob);
}

/// A layer whose container rotted: every concurrent reader's response is cut short (never a
/// complete response of wrong bytes), from one failed restore.
#[test]
fn a_corrupt_layer_aborts_every_reader() {
    let root = tempfile::tempdir().unwrap();
    let s = Server::start_at(
        root.path(),
        &["--dedup", "inline", "--restore-threads", "1"],
    );
    let c = client();
    let blob = Arc::new(big_layer(2, 32));
    let d = push(&s, &c, "rot/app", &blob);
    for e in std::fs::read_dir(root.path().join("containers")).unwrap() {
        let p = e.unwrap().path();
        let mut bytes = std::fs::read(&p).unwrap();
        let at = bytes.len() * 3 / 4;
        bytes[at] ^= 0x01;
        std::fs::write(&p, bytes).unwrap();
    }
    let go = Arc::new(Barrier::new(3));
    let url = s.url(&format!("/v2/rot/app/blobs/{d}"));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (go, url, c) = (go.clone(), url.clone(), client());
            std::thread::spawn(move || {
                go.wait();
                let r = c.get(&url).send().unwrap();
                assert_eq!(r.status(), StatusCode::OK);
                assert!(r.bytes().is_err(), "a reader got a complete response");
            })
        })
        .collect();
    for r in readers {
        r.join().unwrap();
    }
    let st = stats(&s, &c);
    let bad = st["restore"]["digest_mismatches"].as_u64().unwrap()
        + st["restore"]["failures"].as_u64().unwrap();
    assert_eq!(bad, 1, "one failed restore: {}", st["restore"]);
}

/// Four clients reading deduplicated layers at about 1 KB/s: a normal pull of another layer
/// still completes, exact, in about its time alone (loosely here; `benches/restore-load`
/// measures it), because restores spool at the re-encoder's pace instead of waiting for
/// their readers.
#[test]
fn slow_readers_do_not_hold_up_other_pulls() {
    let root = tempfile::tempdir().unwrap();
    let s = Server::start_at(
        root.path(),
        &["--dedup", "inline", "--restore-threads", "2"],
    );
    let c = client();
    let blobs: Vec<Vec<u8>> = (10..15).map(|i| big_layer(i, 24)).collect();
    let ds: Vec<String> = blobs.iter().map(|b| push(&s, &c, "slow/app", b)).collect();
    assert_eq!(stats(&s, &c)["layers"]["deduplicated"], 5);

    let t = Instant::now();
    assert!(pull(&s, &c, "slow/app", &ds[4]) == blobs[4]);
    let alone = t.elapsed();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let slow: Vec<_> = ds[..4]
        .iter()
        .map(|d| {
            let mut sock = raw_get(&s, &format!("/v2/slow/app/blobs/{d}"));
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if sock.read(&mut buf).unwrap_or(0) == 0 {
                        break;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
        })
        .collect();
    let t = Instant::now();
    assert!(pull(&s, &c, "slow/app", &ds[4]) == blobs[4]);
    let loaded = t.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in slow {
        h.join().unwrap();
    }
    eprintln!("alone {alone:?}, beside four slow readers {loaded:?}");
    // Generous: the restores of the slow readers' layers share the two cores meanwhile.
    assert!(
        loaded < alone * 4 + Duration::from_secs(3),
        "alone {alone:?}, beside four slow readers {loaded:?}"
    );
}

/// A manifest GET starts restoring its deduplicated layers; the blob GETs that follow attach
/// to those restores, so each layer is restored once.
#[test]
fn a_manifest_get_starts_its_layers_restores() {
    let root = tempfile::tempdir().unwrap();
    let s = Server::start_at(root.path(), &["--dedup", "inline"]);
    let c = client();
    let layers: Vec<Vec<u8>> = (20..22).map(|i| big_layer(i, 8)).collect();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let dc = push(&s, &c, "pre/app", config);
    let dl: Vec<String> = layers.iter().map(|l| push(&s, &c, "pre/app", l)).collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": dc, "size": config.len()},
        "layers": layers.iter().zip(&dl).map(|(l, d)| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": d, "size": l.len()})).collect::<Vec<_>>(),
    });
    let r = c
        .put(s.url("/v2/pre/app/manifests/v1"))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(serde_json::to_vec(&manifest).unwrap())
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        stats(&s, &c)["layers"]["deduplicated"],
        3,
        "config and layers"
    );

    let r = c
        .get(s.url("/v2/pre/app/manifests/v1"))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for (l, d) in layers.iter().zip(&dl) {
        assert!(pull(&s, &c, "pre/app", d) == *l);
    }
    let st = stats(&s, &c);
    assert_eq!(st["restore"]["announced"], 2, "{}", st["restore"]);
    assert_eq!(st["restore"]["started"], 2, "{}", st["restore"]);
    assert_eq!(st["restore"]["joined"], 2, "{}", st["restore"]);
    // The pulls came, so no spool file lingers for them: each is unlinked by its restore
    // thread just after the last byte is handed out, so poll a moment (far below the 30 s a
    // spool waits for an announced pull that does not come).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let bytes = stats(&s, &c)["bytes"].clone();
        if bytes["spool"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pulls came, yet the spool holds: {bytes}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The hot tier evicts a layer while a client is reading it: the reader still gets its exact
/// bytes (it holds the file open), and the budget holds.
#[test]
fn eviction_never_cuts_a_pull_short() {
    let root = tempfile::tempdir().unwrap();
    let blobs: Vec<Vec<u8>> = (30..33).map(|i| big_layer(i, 12)).collect();
    let budget = blobs.iter().map(|b| b.len()).max().unwrap() * 2;
    let s = Server::start_at(
        root.path(),
        &["--dedup", "inline", "--hot-bytes", &budget.to_string()],
    );
    let c = client();
    // Just pushed and deduplicated: the first is hot.
    let d0 = push(&s, &c, "hot/app", &blobs[0]);
    assert_eq!(stats(&s, &c)["bytes"]["hot"], blobs[0].len());
    let mut slow = c
        .get(s.url(&format!("/v2/hot/app/blobs/{d0}")))
        .send()
        .unwrap();
    let mut got = vec![0u8; 1 << 20];
    slow.read_exact(&mut got).unwrap();
    // Two more pushed: the first, least recently used, makes room for them.
    push(&s, &c, "hot/app", &blobs[1]);
    push(&s, &c, "hot/app", &blobs[2]);
    let st = stats(&s, &c);
    assert_eq!(
        st["bytes"]["hot"],
        blobs[1].len() + blobs[2].len(),
        "{}",
        st["bytes"]
    );
    slow.read_to_end(&mut got).unwrap();
    assert!(
        got == blobs[0],
        "the evicted layer's reader got different bytes"
    );
}

/// kill -9 while a restore is half spooled: after a restart nothing partial is left or served.
#[test]
fn kill_9_mid_restore_leaves_nothing_served_wrong() {
    let root = tempfile::tempdir().unwrap();
    let c = client();
    let blob = big_layer(40, 64);
    // Pushed without a hot tier (else the pushed bytes would stay hot).
    let mut s = Server::start_at(root.path(), &["--dedup", "inline"]);
    let d = push(&s, &c, "k/app", &blob);
    assert!(s.stop());
    let args = ["--dedup", "inline", "--hot-bytes", "200000000"];
    let mut s = Server::start_at(root.path(), &args);
    // Pulled once before (admission wants a second pull), so this restore is for the hot tier.
    assert!(pull(&s, &c, "k/app", &d) == blob);
    let hot_path = root.path().join("cache/sha256").join(&d[7..]);
    assert!(!hot_path.exists());
    let mut sock = raw_get(&s, &format!("/v2/k/app/blobs/{d}"));
    let mut some = [0u8; 65536];
    sock.read_exact(&mut some).unwrap();
    s.kill9();
    drop(sock);
    let s = Server::start_at(root.path(), &args);
    let spool = root.path().join("cache/spool");
    assert_eq!(
        std::fs::read_dir(&spool).unwrap().count(),
        0,
        "spool cleared"
    );
    if hot_path.exists() {
        // The restore finished before the kill: then the hot copy is whole.
        assert!(std::fs::read(&hot_path).unwrap() == blob);
    }
    assert!(pull(&s, &c, "k/app", &d) == blob);
}

/// Long klauspost zstd frames planned in segments take their threads from one budget for the
/// whole process (`--zstd-segment-cores`): two layers pulled at once both come back exact,
/// each in its segments or whole, as `/_stats` and the metrics count (here, at least one in
/// segments; usually one each way, as the pulls overlap).
#[test]
fn concurrent_pulls_of_segmented_frames_share_the_segment_threads() {
    use stowage_actors::engine::kpzstd::{KpLevel, KpOptions, KpStreamEncoder};
    let root = tempfile::tempdir().unwrap();
    let s = Server::start_at(
        root.path(),
        &["--dedup", "inline", "--zstd-segment-cores", "2"],
    );
    let c = client();
    let text = common::system_files(64 << 20);
    let layers: Vec<Arc<Vec<u8>>> = ["a", "b"]
        .iter()
        .map(|name| {
            let mut e = KpStreamEncoder::new(&KpOptions {
                level: KpLevel::Default,
                ..KpOptions::default()
            })
            .unwrap();
            let mut blob = Vec::new();
            e.write(&common::tar_of(name, &text), &mut blob);
            e.close(&mut blob);
            Arc::new(blob)
        })
        .collect();
    let digests: Vec<String> = layers.iter().map(|b| push(&s, &c, "ci/zstd", b)).collect();
    let st = stats(&s, &c);
    assert_eq!(st["layers"]["encodings"]["zstd-kp-default"], 2, "{st}");
    let go = Arc::new(Barrier::new(2));
    let pulls: Vec<_> = layers
        .iter()
        .zip(&digests)
        .map(|(blob, d)| {
            let (go, blob, c) = (go.clone(), blob.clone(), client());
            let url = s.url(&format!("/v2/ci/zstd/blobs/{d}"));
            std::thread::spawn(move || {
                go.wait();
                let got = c.get(&url).send().unwrap().bytes().unwrap();
                assert!(got.as_ref() == blob.as_slice(), "bytes differ");
            })
        })
        .collect();
    for p in pulls {
        p.join().unwrap();
    }
    let r = &stats(&s, &c)["restore"];
    let (segmented, whole) = (
        r["zstd_frames_segmented"].as_u64().unwrap(),
        r["zstd_frames_whole"].as_u64().unwrap(),
    );
    assert_eq!(
        segmented + whole,
        2,
        "both frames were planned in segments: {r}"
    );
    assert!(segmented >= 1, "{r}");
    assert_eq!(r["zstd_segment_threads"], 0, "{r}");
    let metrics = c.get(s.url("/metrics")).send().unwrap().text().unwrap();
    assert!(
        metrics.contains(&format!(
            "stowage_restore_zstd_long_frames_total{{how=\"segments\"}} {segmented}"
        )),
        "{metrics}"
    );
}
