//! The distribution API over plain HTTP against the real binary: every error path, the upload
//! protocol's corner cases, discovery and management, and durability across `kill -9`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::{digest_of, pseudo_random, push_blob, Server};
use reqwest::blocking::{Client, Response};
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE};
use reqwest::StatusCode;
use serde_json::{json, Value};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

fn client() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The OCI error code of an error response.
fn code(r: Response) -> String {
    let v: Value = r.json().expect("error body is JSON");
    v["errors"][0]["code"].as_str().unwrap_or("").to_string()
}

fn location(r: &Response) -> String {
    r.headers()[LOCATION].to_str().unwrap().to_string()
}

fn header(r: &Response, name: &str) -> String {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
        .to_string()
}

fn image_manifest(config: &(String, usize), layers: &[(String, usize)]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config.0, "size": config.1},
        "layers": layers.iter().map(|(d, n)| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": n
        })).collect::<Vec<_>>(),
    }))
    .unwrap()
}

/// Push a config and one layer, then a manifest under `tag`; returns the manifest digest.
fn push_image(s: &Server, c: &Client, repo: &str, tag: &str, layer: &[u8]) -> String {
    let cfg = format!("{{\"layer\":\"{}\"}}", digest_of(layer));
    let cd = push_blob(s, c, repo, cfg.as_bytes());
    let ld = push_blob(s, c, repo, layer);
    let m = image_manifest(&(cd, cfg.len()), &[(ld, layer.len())]);
    let r = c
        .put(s.url(&format!("/v2/{repo}/manifests/{tag}")))
        .header(CONTENT_TYPE, OCI_MANIFEST)
        .body(m.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    digest_of(&m)
}

#[test]
fn base_endpoint_and_unknown_routes() {
    let s = Server::start();
    let c = client();
    let r = c.get(s.url("/v2/")).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        header(&r, "docker-distribution-api-version"),
        "registry/2.0"
    );
    let r = c.get(s.url("/v2/a/nothing/here")).send().unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        header(&r, "docker-distribution-api-version"),
        "registry/2.0"
    );
}

#[test]
fn invalid_names_digests_and_tags() {
    let s = Server::start();
    let c = client();
    for bad in ["UPPER/case", "a//b", "-lead", "trail-", "a..b"] {
        let r = c
            .get(s.url(&format!("/v2/{bad}/tags/list")))
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(code(r), "NAME_INVALID", "{bad}");
    }
    let r = c.get(s.url("/v2/ok/blobs/sha256:1234")).send().unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(code(r), "DIGEST_INVALID");
    let r = c
        .get(s.url("/v2/ok/blobs/md5:d41d8cd98f00b204e9800998ecf8427e"))
        .send()
        .unwrap();
    assert_eq!(code(r), "DIGEST_INVALID");
    let r = c
        .put(s.url("/v2/ok/manifests/.bad-tag"))
        .header(CONTENT_TYPE, OCI_MANIFEST)
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(code(r), "MANIFEST_INVALID");
}

#[test]
fn nested_repository_names() {
    let s = Server::start();
    let c = client();
    let repo = "a/b/c/d/e/f/g/h";
    let d = push_image(&s, &c, repo, "v1", b"nested layer");
    let r = c
        .get(s.url(&format!("/v2/{repo}/manifests/v1")))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "docker-content-digest"), d);
    let v: Value = c
        .get(s.url(&format!("/v2/{repo}/tags/list")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v, json!({"name": repo, "tags": ["v1"]}));
    // A repository whose name contains an endpoint word is still routed by its last segments.
    let repo2 = "x/manifests/blobs";
    push_image(&s, &c, repo2, "t", b"tricky");
    let r = c
        .get(s.url(&format!("/v2/{repo2}/manifests/t")))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[test]
fn blob_get_head_range_and_isolation() {
    let s = Server::start();
    let c = client();
    let data = pseudo_random(100_000, 1);
    let d = push_blob(&s, &c, "iso/a", &data);

    let r = c
        .head(s.url(&format!("/v2/iso/a/blobs/{d}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-length"), "100000");
    assert_eq!(header(&r, "docker-content-digest"), d);
    assert_eq!(header(&r, "content-type"), "application/octet-stream");

    let r = c
        .get(s.url(&format!("/v2/iso/a/blobs/{d}")))
        .send()
        .unwrap();
    assert_eq!(r.bytes().unwrap().as_ref(), &data[..]);

    let r = c
        .get(s.url(&format!("/v2/iso/a/blobs/{d}")))
        .header(RANGE, "bytes=1000-1999")
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&r, "content-range"), "bytes 1000-1999/100000");
    assert_eq!(r.bytes().unwrap().as_ref(), &data[1000..2000]);

    let r = c
        .get(s.url(&format!("/v2/iso/a/blobs/{d}")))
        .header(RANGE, "bytes=-10")
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().unwrap().as_ref(), &data[99_990..]);

    let r = c
        .get(s.url(&format!("/v2/iso/a/blobs/{d}")))
        .header(RANGE, "bytes=100000-")
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&r, "content-range"), "bytes */100000");
    assert_eq!(code(r), "SIZE_INVALID", "a GET's range is not an upload's");

    // Invariant 6: another repository cannot read it without a link.
    let r = c
        .get(s.url(&format!("/v2/iso/b/blobs/{d}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(code(r), "BLOB_UNKNOWN");
    let r = c
        .head(s.url(&format!("/v2/iso/b/blobs/{d}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // DELETE unlinks from the repository only.
    let r = c
        .delete(s.url(&format!("/v2/iso/a/blobs/{d}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = c
        .get(s.url(&format!("/v2/iso/a/blobs/{d}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = c
        .delete(s.url(&format!("/v2/iso/a/blobs/{d}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(code(r), "BLOB_UNKNOWN");
}

#[test]
fn chunked_upload_status_order_and_cancel() {
    let s = Server::start();
    let c = client();
    let data = pseudo_random(300_000, 2);
    let d = digest_of(&data);
    let r = c.post(s.url("/v2/up/blobs/uploads/")).send().unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "range"), "0-0");
    assert!(r.headers().contains_key("docker-upload-uuid"));
    let loc = location(&r);

    let r = c
        .patch(s.url(&loc))
        .header(CONTENT_RANGE, "0-99999")
        .header(CONTENT_TYPE, "application/octet-stream")
        .body(data[..100_000].to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "range"), "0-99999");
    let loc = location(&r);

    // Out of order (a gap) and overlapping chunks: 416, and the upload is unharmed.
    for bad in ["150000-159999", "50000-59999"] {
        let r = c
            .patch(s.url(&loc))
            .header(CONTENT_RANGE, bad)
            .body(vec![0u8; 10_000])
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{bad}");
        assert_eq!(header(&r, "range"), "0-99999");
    }
    let r = c.get(s.url(&loc)).send().unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "range"), "0-99999");

    // A PATCH without Content-Range streams onto the end.
    let r = c
        .patch(s.url(&loc))
        .body(data[100_000..200_000].to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "range"), "0-199999");

    // The final PUT carries the last chunk.
    let r = c
        .put(s.url(&format!("{loc}?digest={d}")))
        .header(CONTENT_RANGE, "200000-299999")
        .body(data[200_000..].to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "docker-content-digest"), d);
    assert_eq!(location(&r), format!("/v2/up/blobs/{d}"));
    let got = c
        .get(s.url(&format!("/v2/up/blobs/{d}")))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(got.as_ref(), &data[..]);

    // The session is gone once complete.
    let r = c.get(s.url(&loc)).send().unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(code(r), "BLOB_UPLOAD_UNKNOWN");

    // Cancel.
    let r = c.post(s.url("/v2/up/blobs/uploads/")).send().unwrap();
    let loc = location(&r);
    let r = c.delete(s.url(&loc)).send().unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = c.patch(s.url(&loc)).body("x").send().unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(code(r), "BLOB_UPLOAD_UNKNOWN");

    // An upload is bound to its repository.
    let r = c.post(s.url("/v2/up/blobs/uploads/")).send().unwrap();
    let id = location(&r).rsplit('/').next().unwrap().to_string();
    let r = c
        .get(s.url(&format!("/v2/other/blobs/uploads/{id}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = c
        .get(s.url("/v2/up/blobs/uploads/not-a-uuid"))
        .send()
        .unwrap();
    assert_eq!(code(r), "BLOB_UPLOAD_UNKNOWN");
}

#[test]
fn wrong_digest_and_size_lose_nothing() {
    let s = Server::start();
    let c = client();
    let data = b"some bytes".to_vec();
    let wrong = digest_of(b"other bytes");
    let r = c
        .post(s.url(&format!("/v2/w/blobs/uploads/?digest={wrong}")))
        .body(data.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(code(r), "DIGEST_INVALID");
    let r = c
        .head(s.url(&format!("/v2/w/blobs/{wrong}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // POST then PUT with body, wrong digest.
    let r = c.post(s.url("/v2/w/blobs/uploads/")).send().unwrap();
    let loc = location(&r);
    let r = c
        .put(s.url(&format!("{loc}?digest={wrong}")))
        .body(data.clone())
        .send()
        .unwrap();
    assert_eq!(code(r), "DIGEST_INVALID");

    // PUT without digest.
    let r = c.post(s.url("/v2/w/blobs/uploads/")).send().unwrap();
    let loc = location(&r);
    let r = c.put(s.url(&loc)).body(data.clone()).send().unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(code(r), "DIGEST_INVALID");

    // Content-Range length disagreeing with the body.
    let r = c
        .patch(s.url(&loc))
        .header(CONTENT_RANGE, "0-99")
        .body(vec![1u8; 10])
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(code(r), "SIZE_INVALID");
    let r = c.get(s.url(&loc)).send().unwrap();
    assert_eq!(
        header(&r, "range"),
        "0-0",
        "nothing of the bad chunk was kept"
    );

    // The sha512 path.
    let d512 = {
        use sha2::Digest as _;
        format!("sha512:{}", hex::encode(sha2::Sha512::digest(&data)))
    };
    let r = c
        .post(s.url(&format!("/v2/w/blobs/uploads/?digest={d512}")))
        .body(data.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let got = c
        .get(s.url(&format!("/v2/w/blobs/{d512}")))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(got.as_ref(), &data[..]);
}

/// A client sends half a chunk and drops the connection; it asks where the upload stands and
/// resumes from there.
#[test]
fn resume_after_dropped_connection() {
    let s = Server::start();
    let c = client();
    let data = pseudo_random(2_000_000, 3);
    let d = digest_of(&data);
    let r = c.post(s.url("/v2/resume/blobs/uploads/")).send().unwrap();
    let loc = location(&r);
    let r = c
        .patch(s.url(&loc))
        .header(CONTENT_RANGE, "0-999999")
        .body(data[..1_000_000].to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    // Raw socket: declare 1 MB, send 300 KB, vanish.
    let mut sock = TcpStream::connect(&s.addr).unwrap();
    write!(
        sock,
        "PATCH {loc} HTTP/1.1\r\nHost: {}\r\nContent-Range: 1000000-1999999\r\n\
         Content-Length: 1000000\r\nContent-Type: application/octet-stream\r\n\r\n",
        s.addr
    )
    .unwrap();
    sock.write_all(&data[1_000_000..1_300_000]).unwrap();
    sock.flush().unwrap();
    drop(sock);

    // The status reports only what was acknowledged. (The server may still be finishing the
    // aborted request; the per-session lock orders us after it.)
    let r = c.get(s.url(&loc)).send().unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "range"), "0-999999");

    let r = c
        .patch(s.url(&loc))
        .header(CONTENT_RANGE, "1000000-1999999")
        .body(data[1_000_000..].to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = c.put(s.url(&format!("{loc}?digest={d}"))).send().unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let got = c
        .get(s.url(&format!("/v2/resume/blobs/{d}")))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert!(got.as_ref() == &data[..], "resumed blob differs");
}

#[test]
fn two_clients_push_the_same_blob_at_once() {
    let s = Server::start();
    let data = pseudo_random(3_000_000, 4);
    let d = digest_of(&data);
    std::thread::scope(|scope| {
        for repo in ["same/one", "same/two", "same/one"] {
            let (s, data, d) = (&s, &data, &d);
            scope.spawn(move || {
                let c = client();
                let r = c
                    .post(s.url(&format!("/v2/{repo}/blobs/uploads/")))
                    .send()
                    .unwrap();
                let loc = location(&r);
                for (i, part) in data.chunks(500_000).enumerate() {
                    let start = i * 500_000;
                    let r = c
                        .patch(s.url(&loc))
                        .header(CONTENT_RANGE, format!("{start}-{}", start + part.len() - 1))
                        .body(part.to_vec())
                        .send()
                        .unwrap();
                    assert_eq!(r.status(), StatusCode::ACCEPTED);
                }
                let r = c.put(s.url(&format!("{loc}?digest={d}"))).send().unwrap();
                assert_eq!(r.status(), StatusCode::CREATED);
            });
        }
    });
    let c = client();
    for repo in ["same/one", "same/two"] {
        let got = c
            .get(s.url(&format!("/v2/{repo}/blobs/{d}")))
            .send()
            .unwrap()
            .bytes()
            .unwrap();
        assert!(got.as_ref() == &data[..]);
    }
    let st: Value = c.get(s.url("/_stats")).send().unwrap().json().unwrap();
    assert_eq!(st["blobs"], 1, "stored once: {st}");
    assert_eq!(st["bytes"]["logical"], 3_000_000);
    assert_eq!(st["uploads"], 0);
}

#[test]
fn cross_repository_mount() {
    let s = Server::start();
    let c = client();
    let d = push_blob(&s, &c, "src/repo", b"mount me");
    let r = c
        .post(s.url(&format!(
            "/v2/dst/repo/blobs/uploads/?mount={d}&from=src/repo"
        )))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(location(&r), format!("/v2/dst/repo/blobs/{d}"));
    let r = c
        .get(s.url(&format!("/v2/dst/repo/blobs/{d}")))
        .send()
        .unwrap();
    assert_eq!(r.bytes().unwrap().as_ref(), b"mount me");

    // Not in the source repository (or no source): an ordinary upload session.
    let other = digest_of(b"not there");
    let r = c
        .post(s.url(&format!(
            "/v2/dst/repo/blobs/uploads/?mount={other}&from=src/repo"
        )))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(location(&r).starts_with("/v2/dst/repo/blobs/uploads/"));
    let r = c
        .post(s.url(&format!("/v2/third/blobs/uploads/?mount={d}")))
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::ACCEPTED,
        "no `from`: no mount (isolation)"
    );
}

#[test]
fn manifests_validation() {
    let s = Server::start();
    let c = client();
    let cfg = push_blob(&s, &c, "m/v", b"{}");
    let layer = push_blob(&s, &c, "m/v", b"layer");

    // Blobs missing from the repository (a manifest pushed before its blobs).
    let missing = digest_of(b"never pushed");
    let m = image_manifest(&(cfg.clone(), 2), &[(missing.clone(), 12)]);
    let r = c
        .put(s.url("/v2/m/v/manifests/early"))
        .header(CONTENT_TYPE, OCI_MANIFEST)
        .body(m)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().unwrap();
    assert_eq!(v["errors"][0]["code"], "MANIFEST_BLOB_UNKNOWN");
    assert_eq!(v["errors"][0]["detail"]["digest"], missing);
    let r = c.get(s.url("/v2/m/v/manifests/early")).send().unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(code(r), "MANIFEST_UNKNOWN");

    // A blob linked only in another repository does not count.
    let foreign = push_blob(&s, &c, "m/other", b"elsewhere");
    let m = image_manifest(&(cfg.clone(), 2), &[(foreign, 9)]);
    let r = c
        .put(s.url("/v2/m/v/manifests/x"))
        .header(CONTENT_TYPE, OCI_MANIFEST)
        .body(m)
        .send()
        .unwrap();
    assert_eq!(code(r), "MANIFEST_BLOB_UNKNOWN");

    // A descriptor whose size is not the blob's (clients verify it: every pull would fail).
    for m in [
        image_manifest(&(cfg.clone(), 2), &[(layer.clone(), 6)]),
        image_manifest(&(cfg.clone(), 3), &[(layer.clone(), 5)]),
    ] {
        let r = c
            .put(s.url("/v2/m/v/manifests/misstated"))
            .header(CONTENT_TYPE, OCI_MANIFEST)
            .body(m)
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(code(r), "MANIFEST_INVALID");
    }

    let good = image_manifest(&(cfg.clone(), 2), &[(layer.clone(), 5)]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (OCI_MANIFEST, b"{not json".to_vec(), "MANIFEST_INVALID"),
        (OCI_INDEX, good.clone(), "MANIFEST_INVALID"), // media type mismatch
        (
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            br#"{"schemaVersion":1,"name":"m/v","tag":"x","fsLayers":[]}"#.to_vec(),
            "MANIFEST_INVALID",
        ),
        (
            OCI_MANIFEST,
            br#"{"schemaVersion":2,"layers":[]}"#.to_vec(),
            "MANIFEST_INVALID",
        ),
    ];
    for (ct, body, want) in cases {
        let r = c
            .put(s.url("/v2/m/v/manifests/x"))
            .header(CONTENT_TYPE, ct)
            .body(body)
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{ct}");
        assert_eq!(code(r), want, "{ct}");
    }
    let r = c
        .put(s.url("/v2/m/v/manifests/x"))
        .header(
            CONTENT_TYPE,
            "application/vnd.docker.distribution.manifest.v1+json",
        )
        .body(r#"{"schemaVersion":1}"#)
        .send()
        .unwrap();
    let v: Value = r.json().unwrap();
    assert!(v["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("schema 1"));

    // By digest: the body must hash to it.
    let r = c
        .put(s.url(&format!("/v2/m/v/manifests/{}", digest_of(b"other"))))
        .header(CONTENT_TYPE, OCI_MANIFEST)
        .body(good.clone())
        .send()
        .unwrap();
    assert_eq!(code(r), "DIGEST_INVALID");

    let d = digest_of(&good);
    let r = c
        .put(s.url(&format!("/v2/m/v/manifests/{d}")))
        .header(CONTENT_TYPE, OCI_MANIFEST)
        .body(good.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(location(&r), format!("/v2/m/v/manifests/{d}"));

    // Returned byte for byte, with its type, digest and length; HEAD agrees.
    let r = c
        .get(s.url(&format!("/v2/m/v/manifests/{d}")))
        .send()
        .unwrap();
    assert_eq!(header(&r, "content-type"), OCI_MANIFEST);
    assert_eq!(header(&r, "docker-content-digest"), d);
    assert_eq!(r.bytes().unwrap().as_ref(), &good[..]);
    let r = c
        .head(s.url(&format!("/v2/m/v/manifests/{d}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-length"), good.len().to_string());

    // Docker schema 2 with a manifest list over it.
    let dm = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": cfg, "size": 2},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": layer, "size": 5}],
    }))
    .unwrap();
    let r = c
        .put(s.url("/v2/m/v/manifests/docker"))
        .header(CONTENT_TYPE, DOCKER_MANIFEST)
        .body(dm.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let list = |child: &str| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
            "manifests": [{"mediaType": DOCKER_MANIFEST, "digest": child, "size": dm.len(),
                           "platform": {"architecture": "amd64", "os": "linux"}}],
        }))
        .unwrap()
    };
    let r = c
        .put(s.url("/v2/m/v/manifests/list"))
        .header(
            CONTENT_TYPE,
            "application/vnd.docker.distribution.manifest.list.v2+json",
        )
        .body(list(&digest_of(b"no such child")))
        .send()
        .unwrap();
    assert_eq!(code(r), "MANIFEST_BLOB_UNKNOWN");
    let r = c
        .put(s.url("/v2/m/v/manifests/list"))
        .header(
            CONTENT_TYPE,
            "application/vnd.docker.distribution.manifest.list.v2+json",
        )
        .body(list(&digest_of(&dm)))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = c.get(s.url("/v2/m/v/manifests/list")).send().unwrap();
    assert_eq!(
        header(&r, "content-type"),
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
}

#[test]
fn manifest_size_limit() {
    let s = Server::start();
    let c = client();
    let cfg = push_blob(&s, &c, "big", b"{}");
    // A valid manifest padded by annotations to just under 4 MiB is accepted...
    let mk = |target: usize| {
        let base = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": 2},
            "layers": [], "annotations": {"pad": ""},
        }))
        .unwrap();
        let pad = "p".repeat(target - base.len());
        serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": 2},
            "layers": [], "annotations": {"pad": pad},
        }))
        .unwrap()
    };
    let ok = mk(4 * 1024 * 1024);
    assert_eq!(ok.len(), 4 * 1024 * 1024);
    let r = c
        .put(s.url("/v2/big/manifests/ok"))
        .header(CONTENT_TYPE, OCI_MANIFEST)
        .body(ok.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = c.get(s.url("/v2/big/manifests/ok")).send().unwrap();
    assert!(r.bytes().unwrap().as_ref() == &ok[..]);
    // ...one byte more is refused with 413.
    let r = c
        .put(s.url("/v2/big/manifests/toolarge"))
        .header(CONTENT_TYPE, OCI_MANIFEST)
        .body(mk(4 * 1024 * 1024 + 1))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(code(r), "SIZE_INVALID");
}

#[test]
fn tags_catalog_pagination_and_deletes() {
    let s = Server::start();
    let c = client();
    let d = push_image(&s, &c, "pg/app", "b", b"layer-1");
    for t in ["a", "c", "latest"] {
        let m = c
            .get(s.url("/v2/pg/app/manifests/b"))
            .send()
            .unwrap()
            .bytes()
            .unwrap();
        let r = c
            .put(s.url(&format!("/v2/pg/app/manifests/{t}")))
            .header(CONTENT_TYPE, OCI_MANIFEST)
            .body(m)
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let v: Value = c
        .get(s.url("/v2/pg/app/tags/list"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["tags"], json!(["a", "b", "c", "latest"]));

    let r = c.get(s.url("/v2/pg/app/tags/list?n=2")).send().unwrap();
    assert_eq!(
        header(&r, "link"),
        "</v2/pg/app/tags/list?n=2&last=b>; rel=\"next\""
    );
    let v: Value = r.json().unwrap();
    assert_eq!(v["tags"], json!(["a", "b"]));
    let r = c
        .get(s.url("/v2/pg/app/tags/list?n=2&last=b"))
        .send()
        .unwrap();
    assert!(!r.headers().contains_key("link"), "last page has no Link");
    let v: Value = r.json().unwrap();
    assert_eq!(v["tags"], json!(["c", "latest"]));

    let r = c.get(s.url("/v2/pg/app/tags/list?n=many")).send().unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(code(r), "PAGINATION_NUMBER_INVALID");

    let r = c.get(s.url("/v2/no/such/tags/list")).send().unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(code(r), "NAME_UNKNOWN");

    for repo in ["pg/zzz", "pg/aaa", "pg/mmm"] {
        push_blob(&s, &c, repo, b"x");
    }
    let r = c.get(s.url("/v2/_catalog?n=2")).send().unwrap();
    assert_eq!(
        header(&r, "link"),
        "</v2/_catalog?n=2&last=pg/app>; rel=\"next\""
    );
    let v: Value = r.json().unwrap();
    assert_eq!(v["repositories"], json!(["pg/aaa", "pg/app"]));
    let v: Value = c
        .get(s.url("/v2/_catalog?n=10&last=pg/app"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["repositories"], json!(["pg/mmm", "pg/zzz"]));

    // Deleting a tag that shares its digest with other tags leaves them (and the manifest).
    let r = c
        .delete(s.url("/v2/pg/app/manifests/latest"))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = c.get(s.url("/v2/pg/app/manifests/latest")).send().unwrap();
    assert_eq!(code(r), "MANIFEST_UNKNOWN");
    let r = c.get(s.url("/v2/pg/app/manifests/a")).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .get(s.url(&format!("/v2/pg/app/manifests/{d}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .delete(s.url("/v2/pg/app/manifests/latest"))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Deleting the manifest by digest removes it and every tag pointing to it.
    let r = c
        .delete(s.url(&format!("/v2/pg/app/manifests/{d}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = c
        .get(s.url(&format!("/v2/pg/app/manifests/{d}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let v: Value = c
        .get(s.url("/v2/pg/app/tags/list"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["tags"], json!([]));
}

#[test]
fn referrers_api() {
    let s = Server::start();
    let c = client();
    let subject = push_image(&s, &c, "ref/app", "v1", b"subject layer");
    let empty = push_blob(&s, &c, "ref/app", b"{}");
    let art = |atype: &str, note: &str| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": atype,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
            "layers": [],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 1},
            "annotations": {"note": note},
        }))
        .unwrap()
    };
    let sig = art("application/vnd.example.signature", "sig");
    let sbom = art("application/vnd.example.sbom", "sbom");
    for m in [&sig, &sbom] {
        let r = c
            .put(s.url(&format!("/v2/ref/app/manifests/{}", digest_of(m))))
            .header(CONTENT_TYPE, OCI_MANIFEST)
            .body(m.clone())
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(header(&r, "oci-subject"), subject);
    }
    let r = c
        .get(s.url(&format!("/v2/ref/app/referrers/{subject}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type"), OCI_INDEX);
    let v: Value = r.json().unwrap();
    assert_eq!(v["mediaType"], OCI_INDEX);
    let ms = v["manifests"].as_array().unwrap();
    assert_eq!(ms.len(), 2);
    let sig_desc = ms.iter().find(|m| m["digest"] == digest_of(&sig)).unwrap();
    assert_eq!(
        sig_desc["artifactType"],
        "application/vnd.example.signature"
    );
    assert_eq!(sig_desc["size"], sig.len());
    assert_eq!(sig_desc["annotations"]["note"], "sig");

    let r = c
        .get(s.url(&format!(
            "/v2/ref/app/referrers/{subject}?artifactType=application/vnd.example.sbom"
        )))
        .send()
        .unwrap();
    assert_eq!(header(&r, "oci-filters-applied"), "artifactType");
    let v: Value = r.json().unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(v["manifests"][0]["digest"], digest_of(&sbom));

    // Unknown subject: an empty index, not an error.
    let r = c
        .get(s.url(&format!("/v2/ref/app/referrers/{}", digest_of(b"nothing"))))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().unwrap();
    assert_eq!(v["manifests"], json!([]));

    // Deleting a referrer removes it from the list.
    let r = c
        .delete(s.url(&format!("/v2/ref/app/manifests/{}", digest_of(&sig))))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let v: Value = c
        .get(s.url(&format!("/v2/ref/app/referrers/{subject}")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
}

#[test]
fn streamed_patch_with_chunked_transfer_encoding() {
    let s = Server::start();
    let data = pseudo_random(1_500_000, 5);
    let d = digest_of(&data);
    let c = client();
    let r = c.post(s.url("/v2/stream/blobs/uploads/")).send().unwrap();
    let loc = location(&r);
    // Raw HTTP/1.1 with Transfer-Encoding: chunked and no Content-Length, as docker sends.
    let mut sock = TcpStream::connect(&s.addr).unwrap();
    write!(
        sock,
        "PATCH {loc} HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        s.addr
    )
    .unwrap();
    for part in data.chunks(100_003) {
        write!(sock, "{:x}\r\n", part.len()).unwrap();
        sock.write_all(part).unwrap();
        sock.write_all(b"\r\n").unwrap();
    }
    sock.write_all(b"0\r\n\r\n").unwrap();
    let mut resp = String::new();
    sock.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 202"), "{resp}");
    assert!(resp.to_lowercase().contains("range: 0-1499999"), "{resp}");
    let r = c
        .put(s.url(&format!("{loc}?digest={d}")))
        .header(CONTENT_LENGTH, "0")
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

/// Everything acknowledged survives `kill -9`; an upload in progress can be resumed.
#[test]
fn acknowledged_data_survives_kill_9() {
    let root = tempfile::tempdir().unwrap();
    let mut s = Server::start_at(root.path(), &[]);
    let c = client();
    let d = push_image(&s, &c, "crash/app", "v1", &pseudo_random(500_000, 6));
    let part = pseudo_random(700_000, 7);
    let r = c
        .post(s.url("/v2/crash/app/blobs/uploads/"))
        .send()
        .unwrap();
    let loc = location(&r);
    let r = c
        .patch(s.url(&loc))
        .header(CONTENT_RANGE, "0-399999")
        .body(part[..400_000].to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    s.kill9();

    let s = Server::start_at(root.path(), &[]);
    let r = c.get(s.url("/v2/crash/app/manifests/v1")).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "docker-content-digest"), d);
    let m: Value = r.json().unwrap();
    for l in m["layers"].as_array().unwrap() {
        let ld = l["digest"].as_str().unwrap();
        let b = c
            .get(s.url(&format!("/v2/crash/app/blobs/{ld}")))
            .send()
            .unwrap()
            .bytes()
            .unwrap();
        assert_eq!(digest_of(&b), ld);
    }
    let r = c.get(s.url(&loc)).send().unwrap();
    assert_eq!(header(&r, "range"), "0-399999");
    let r = c
        .patch(s.url(&loc))
        .header(CONTENT_RANGE, "400000-699999")
        .body(part[400_000..].to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = c
        .put(s.url(&format!("{loc}?digest={}", digest_of(&part))))
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "resumed after restart, digest verified"
    );
}

#[test]
fn graceful_shutdown_and_upload_expiry() {
    let root = tempfile::tempdir().unwrap();
    let mut s = Server::start_at(
        root.path(),
        &["--upload-ttl", "1s", "--upload-sweep-interval", "1s"],
    );
    let c = client();
    let r = c.post(s.url("/v2/exp/blobs/uploads/")).send().unwrap();
    let loc = location(&r);
    // Wait (bounded) for the sweeper to remove the abandoned session.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = c.get(s.url(&loc)).send().unwrap();
        if r.status() == StatusCode::NOT_FOUND {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "upload never expired");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let left = std::fs::read_dir(root.path().join("uploads"))
        .unwrap()
        .count();
    assert_eq!(left, 0, "the upload file went with its session");
    assert!(s.stop(), "SIGTERM gives a clean exit");
}

/// Sends `raw` on a new connection and reads until the server closes it.
fn raw_exchange(addr: &str, raw: &[u8]) -> String {
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.write_all(raw).unwrap();
    let mut resp = Vec::new();
    sock.read_to_end(&mut resp).unwrap();
    String::from_utf8_lossy(&resp).into_owned()
}

/// Request heads actix-http would answer itself with a bare 400 or 431 get the error
/// envelope, also after good requests on the same connection, and the connection closes.
#[test]
fn malformed_heads_get_the_error_envelope() {
    let s = Server::start();
    let host = &s.addr;
    let many: String = (0..100).map(|i| format!("X-{i}: v\r\n")).collect();
    let cases: Vec<(String, &str, &str)> = vec![
        (
            format!("GET /v2/{} HTTP/1.1\r\nHost: {host}\r\n\r\n", "a".repeat(70_000)),
            "431",
            "longer than",
        ),
        (
            format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\nX-Big: {}\r\n\r\n", "b".repeat(200_000)),
            "431",
            "longer than",
        ),
        (
            format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\n{many}\r\n"),
            "431",
            "header fields",
        ),
        (
            format!("POST /v2/x/blobs/uploads/ HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            "400",
            "both Content-Length and Transfer-Encoding",
        ),
        (
            format!("PUT /v2/x/manifests/t HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
            "400",
            "Content-Length",
        ),
        ("GET /v2/ HTTP/1.1\r\n\r\n".to_string(), "400", "Host"),
        (format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\nBad Header: x\r\n\r\n"), "400", "not valid HTTP/1.1"),
    ];
    for (raw, status, message) in &cases {
        let resp = raw_exchange(host, raw.as_bytes());
        let short = &raw[..raw.len().min(80)];
        assert!(
            resp.starts_with(&format!("HTTP/1.1 {status} ")),
            "{short:?}: {resp}"
        );
        let (head, body) = resp.split_once("\r\n\r\n").unwrap();
        assert!(
            head.to_lowercase()
                .contains("content-type: application/json"),
            "{short:?}: {head}"
        );
        let v: Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{short:?}: {e}: {body}"));
        assert_eq!(v["errors"][0]["code"], "UNSUPPORTED", "{short:?}");
        let text = v["errors"][0]["message"].as_str().unwrap();
        assert!(text.contains(message), "{short:?}: {text}");
    }

    // Good requests first on the same connection (with a chunked body holding bytes that look
    // like a head), then a bad one: each good one answered, the bad one enveloped, then close.
    let inner = "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
    let good = format!(
        "GET /v2/ HTTP/1.1\r\nHost: {host}\r\n\r\nPOST /v2/x/blobs/uploads/ HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{inner}\r\n0\r\n\r\n",
        inner.len()
    );
    let bad = format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
    let after = format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let resp = raw_exchange(host, format!("{good}{bad}{after}").as_bytes());
    let statuses: Vec<&str> = resp
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &resp[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "202", "400"], "{resp}");
    assert!(
        resp.contains("both Content-Length and Transfer-Encoding"),
        "{resp}"
    );

    // A TLS hello on the plain port (clients try HTTPS first) is answered at once, while the
    // client still waits for its server hello: not after the server's request timeout.
    let mut sock = TcpStream::connect(host).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    sock.write_all(&[
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ])
    .unwrap();
    let mut first = [0u8; 12];
    sock.read_exact(&mut first)
        .expect("an answer before the client gives up");
    assert_eq!(&first, b"HTTP/1.1 400");

    // The server still serves.
    let r = client().get(s.url("/v2/")).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
