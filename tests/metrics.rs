//! `/metrics` against the real binary, validated by Prometheus' own `promtool check metrics`.

mod common;

use std::io::Write;

use common::{digest_of, Server};

#[test]
fn metrics_pass_promtool_and_count_the_pipeline() {
    let s = Server::start_at(
        &tempfile::tempdir().unwrap().keep(),
        &[
            "--dedup",
            "inline",
            "--repo-policy",
            "hot/*=raw",
            "--retention",
            "ci/*=keep-last:3",
            "--gc-interval",
            "0",
        ],
    );
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
    // And one that stays raw (no zlib level re-creates stored deflate blocks).
    let mut gz0 = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(0));
    gz0.write_all(b"kept raw").unwrap();
    let raw = gz0.finish().unwrap();
    let r = c
        .post(s.url(&format!("/v2/m/blobs/uploads/?digest={}", digest_of(&raw))))
        .body(raw)
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

    // Once the pipeline is idle, no batch is counted in flight on any edge.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = c.get(s.url("/metrics")).send().unwrap().text().unwrap();
        let busy: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("stowage_pipeline_queue_depth{") && !l.ends_with(" 0"))
            .collect();
        if busy.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "queue depth stays up when idle: {busy:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let r = c.post(s.url("/_gc")).send().unwrap();
    assert_eq!(r.status(), 200);
    // Methods a client makes up share one label.
    for m in ["FOO1", "FOO2"] {
        let method = reqwest::Method::from_bytes(m.as_bytes()).unwrap();
        c.request(method, s.url("/v2/")).send().unwrap();
    }
    let r = c.get(s.url("/metrics")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = r.text().unwrap();
    for needle in [
        "stowage_layers{state=\"deduplicated\"} 1",
        "stowage_blobs 2",
        "stowage_restore_layers_total 1",
        "stowage_pipeline_bytes_total{stage=\"inflate\"} 300008",
        "stowage_http_requests_total{method=\"POST\",status=\"201\"} 2",
        "stowage_dedup_ratio",
        "stowage_pipeline_queue_depth{edge=\"chunk_similarity\"}",
        "stowage_policy_layers_total{effect=\"raw\",policy=\"hot/*\"} 0",
        "stowage_gc_passes_total 1",
        "stowage_http_request_duration_seconds_count{method=\"GET\",route=\"blob\"} 1",
        "stowage_http_requests_total{method=\"other\",status=\"200\"} 2",
        "stowage_gc_reclaimed_objects_total{kind=\"chunks\"} 0",
        "stowage_gc_reclaimed_bytes_total{kind=\"containers\"} 0",
        "stowage_retention_deleted_total{kind=\"tags\",policy=\"ci/*\"} 0",
        "stowage_disk_free_bytes",
        "stowage_disk_low_space 0",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }

    // Every metric the shipped Grafana dashboards query exists (the S3 backend's panels are
    // checked against a server on S3, in tests/s3_backend.rs).
    let checked = common::assert_dashboards_query_what_exists(&text, |title| {
        !title.ends_with(common::S3_PANELS) && !title.ends_with(common::S3_REPLICA_PANELS)
    });
    assert!(checked >= 10, "dashboards reference {checked} metrics");

    common::assert_promtool_accepts(&text);
}

/// Request latency is measured to the last byte: a client that takes its time reading a blob
/// is recorded as slow, not at the moment the response head went out.
#[test]
fn a_slow_reader_is_timed_to_the_last_byte() {
    use std::io::{Read, Write as _};
    let s = Server::start_at(&tempfile::tempdir().unwrap().keep(), &["--dedup", "off"]);
    let c = reqwest::blocking::Client::new();
    // Far more than the loopback socket buffers hold.
    let blob = common::pseudo_random(64 << 20, 9);
    let d = common::push_blob(&s, &c, "slow", &blob);
    let mut sock = std::net::TcpStream::connect(&s.addr).unwrap();
    write!(
        sock,
        "GET /v2/slow/blobs/{d} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    // The reader dawdles before taking the body.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let mut got = Vec::new();
    sock.read_to_end(&mut got).unwrap();
    assert!(got.len() > blob.len(), "the whole response arrived");
    let text = c.get(s.url("/metrics")).send().unwrap().text().unwrap();
    let sum: f64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "stowage_http_request_duration_seconds_sum{method=\"GET\",route=\"blob\"} ",
            )
        })
        .expect("a blob GET was timed")
        .parse()
        .unwrap();
    assert!(
        sum >= 1.4,
        "recorded {sum} s for a response the client took 1.5 s to read"
    );
}
