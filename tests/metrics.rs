//! `/metrics` against the real binary, validated by Prometheus' own `promtool check metrics`.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{digest_of, tool, Server};

#[test]
fn metrics_pass_promtool_and_count_the_pipeline() {
    let s = Server::start_at(&tempfile::tempdir().unwrap().keep(), &["--dedup", "inline"]);
    let c = reqwest::blocking::Client::new();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    gz.write_all(&vec![b'x'; 300_000]).unwrap();
    let blob = gz.finish().unwrap();
    let d = digest_of(&blob);
    let r = c
        .post(s.url(&format!("/v2/m/blobs/uploads/?digest={d}")))
        .body(blob.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let got = c
        .get(s.url(&format!("/v2/m/blobs/{d}")))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert!(got.as_ref() == &blob[..]);

    let r = c.get(s.url("/metrics")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = r.text().unwrap();
    for needle in [
        "stowage_layers{state=\"deduplicated\"} 1",
        "stowage_blobs 1",
        "stowage_restore_layers_total 1",
        "stowage_pipeline_bytes_total{stage=\"inflate\"} 300000",
        "stowage_http_requests_total{method=\"POST\",status=\"201\"} 1",
        "stowage_dedup_ratio",
        "stowage_pipeline_queue_depth{edge=\"chunk_similarity\"}",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }

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
