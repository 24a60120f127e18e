//! Access control through the real binary: an authorization matrix (every route × every kind
//! of caller → the expected status, from a table; no unexpected grant), dedup isolation
//! between repositories under authentication, failed-login throttling, the catalog filtered
//! by what the caller may pull, and `/metrics` on its own listener.

mod common;

use std::io::Write;
use std::path::Path;

use common::{digest_of, tar_of, Server};
use reqwest::blocking::{Client, RequestBuilder};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const PASSWORD: &str = "pw-of-";

/// htpasswd written by Apache's own `htpasswd -B` (bcrypt), one user per name.
fn htpasswd(dir: &Path, users: &[&str]) -> std::path::PathBuf {
    let path = dir.join("htpasswd");
    for (i, u) in users.iter().enumerate() {
        let mut c = std::process::Command::new(common::tool("htpasswd"));
        c.args(["-B", "-C", "4", "-b"]);
        if i == 0 {
            c.arg("-c");
        }
        c.arg(&path).arg(u).arg(format!("{PASSWORD}{u}"));
        common::run(&mut c);
    }
    path
}

const CONFIG: &str = r#"
admins = ["admin"]
[groups]
writers = ["writer"]
[[access]]
repositories = ["team/**"]
users = ["reader"]
actions = ["pull"]
[[access]]
repositories = ["team/**"]
groups = ["writers"]
actions = ["pull", "push"]
[[access]]
repositories = ["team/**"]
users = ["deleter"]
actions = ["pull", "delete"]
[[access]]
repositories = ["other/**"]
users = ["other"]
actions = ["pull", "push"]
[[anonymous]]
repositories = ["public/**"]
actions = ["pull"]
"#;

fn start(dir: &Path, extra: &[&str]) -> Server {
    let pw = htpasswd(dir, &["admin", "reader", "writer", "deleter", "other"]);
    let cfg = dir.join("stowage.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let root = dir.join("root");
    let mut args = vec![
        "--htpasswd",
        pw.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--dedup",
        "inline",
    ];
    args.extend_from_slice(extra);
    Server::start_at(&root, &args)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Who {
    Anonymous,
    Reader,
    Writer,
    Deleter,
    Other,
    Admin,
    WrongPassword,
}

const EVERYONE: [Who; 7] = [
    Who::Anonymous,
    Who::Reader,
    Who::Writer,
    Who::Deleter,
    Who::Other,
    Who::Admin,
    Who::WrongPassword,
];

fn as_who(rb: RequestBuilder, who: Who) -> RequestBuilder {
    let user = match who {
        Who::Anonymous => return rb,
        Who::Reader => "reader",
        Who::Writer => "writer",
        Who::Deleter => "deleter",
        Who::Other => "other",
        Who::Admin => "admin",
        Who::WrongPassword => return rb.basic_auth("intruder", Some("not-the-password")),
    };
    rb.basic_auth(user, Some(format!("{PASSWORD}{user}")))
}

/// Push an image (one layer, one config) to `repo:tag` as admin; (manifest digest, layer digest).
fn push_image(s: &Server, c: &Client, repo: &str, tag: &str, seed: u64) -> (String, String) {
    let layer = tar_of("data.bin", &common::pseudo_random(300_000, seed));
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#).into_bytes();
    let mut digests = Vec::new();
    for blob in [&layer, &config] {
        let d = digest_of(blob);
        let r = as_who(
            c.post(s.url(&format!("/v2/{repo}/blobs/uploads/?digest={d}"))),
            Who::Admin,
        )
        .body(blob.to_vec())
        .send()
        .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "admin pushes a blob");
        digests.push((d, blob.len()));
    }
    let manifest = manifest_of(&digests[0], &digests[1]);
    let r = as_who(
        c.put(s.url(&format!("/v2/{repo}/manifests/{tag}"))),
        Who::Admin,
    )
    .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
    .body(manifest.clone())
    .send()
    .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "admin pushes a manifest");
    (digest_of(&manifest), digests[0].0.clone())
}

fn manifest_of(layer: &(String, usize), config: &(String, usize)) -> Vec<u8> {
    json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0, "size": config.1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.0, "size": layer.1}],
    })
    .to_string()
    .into_bytes()
}

/// Expected status per caller for a pull of a team repository.
fn team_pull(w: Who, ok: u16) -> u16 {
    match w {
        Who::Anonymous | Who::WrongPassword => 401,
        Who::Other => 403,
        _ => ok,
    }
}

fn team_action(w: Who, allowed: &[Who], ok: u16) -> u16 {
    match w {
        Who::Anonymous | Who::WrongPassword => 401,
        w if allowed.contains(&w) || w == Who::Admin => ok,
        _ => 403,
    }
}

fn admin_only(w: Who) -> u16 {
    match w {
        Who::Admin => 200,
        Who::Anonymous | Who::WrongPassword => 401,
        _ => 403,
    }
}

#[test]
fn authorization_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &[]);
    let c = Client::new();
    let (team_m, team_layer) = push_image(&s, &c, "team/app", "v1", 1);
    let (_, public_layer) = push_image(&s, &c, "public/app", "v1", 2);
    push_image(&s, &c, "other/app", "v1", 3);

    struct Case {
        name: &'static str,
        method: Method,
        path: String,
        body: Option<Vec<u8>>,
        expect: fn(Who) -> u16,
        /// Pushes what the request consumes (a manifest to delete) before each caller.
        setup: Option<fn(&Server, &Client) -> String>,
    }
    let cases = vec![
        Case {
            name: "base",
            method: Method::GET,
            path: "/v2/".into(),
            body: None,
            expect: |w| match w {
                Who::Anonymous | Who::WrongPassword => 401,
                _ => 200,
            },
            setup: None,
        },
        Case {
            name: "team manifest GET",
            method: Method::GET,
            path: "/v2/team/app/manifests/v1".into(),
            body: None,
            expect: |w| team_pull(w, 200),
            setup: None,
        },
        Case {
            name: "team manifest HEAD",
            method: Method::HEAD,
            path: format!("/v2/team/app/manifests/{team_m}"),
            body: None,
            expect: |w| team_pull(w, 200),
            setup: None,
        },
        Case {
            name: "team blob GET",
            method: Method::GET,
            path: format!("/v2/team/app/blobs/{team_layer}"),
            body: None,
            expect: |w| team_pull(w, 200),
            setup: None,
        },
        Case {
            name: "team tags",
            method: Method::GET,
            path: "/v2/team/app/tags/list".into(),
            body: None,
            expect: |w| team_pull(w, 200),
            setup: None,
        },
        Case {
            name: "team referrers",
            method: Method::GET,
            path: format!("/v2/team/app/referrers/{team_m}"),
            body: None,
            expect: |w| team_pull(w, 200),
            setup: None,
        },
        Case {
            name: "team upload start",
            method: Method::POST,
            path: "/v2/team/app/blobs/uploads/".into(),
            body: None,
            expect: |w| team_action(w, &[Who::Writer], 202),
            setup: None,
        },
        Case {
            name: "team manifest PUT",
            method: Method::PUT,
            path: "/v2/team/app/manifests/v2".into(),
            body: None,
            expect: |w| team_action(w, &[Who::Writer], 201),
            setup: None,
        },
        Case {
            name: "team manifest DELETE",
            method: Method::DELETE,
            path: String::new(),
            body: None,
            expect: |w| team_action(w, &[Who::Deleter], 202),
            setup: Some(|s, c| {
                use std::sync::atomic::{AtomicU64, Ordering};
                static SEED: AtomicU64 = AtomicU64::new(100);
                let (m, _) = push_image(
                    s,
                    c,
                    "team/app",
                    "doomed",
                    SEED.fetch_add(1, Ordering::Relaxed),
                );
                format!("/v2/team/app/manifests/{m}")
            }),
        },
        Case {
            name: "public manifest GET",
            method: Method::GET,
            path: "/v2/public/app/manifests/v1".into(),
            body: None,
            expect: |w| match w {
                Who::WrongPassword => 401,
                _ => 200,
            },
            setup: None,
        },
        Case {
            name: "public blob GET",
            method: Method::GET,
            path: format!("/v2/public/app/blobs/{public_layer}"),
            body: None,
            expect: |w| match w {
                Who::WrongPassword => 401,
                _ => 200,
            },
            setup: None,
        },
        Case {
            name: "public upload start",
            method: Method::POST,
            path: "/v2/public/app/blobs/uploads/".into(),
            body: None,
            expect: |w| match w {
                Who::Admin => 202,
                Who::Anonymous | Who::WrongPassword => 401,
                _ => 403,
            },
            setup: None,
        },
        Case {
            name: "other manifest GET",
            method: Method::GET,
            path: "/v2/other/app/manifests/v1".into(),
            body: None,
            expect: |w| match w {
                Who::Other | Who::Admin => 200,
                Who::Anonymous | Who::WrongPassword => 401,
                _ => 403,
            },
            setup: None,
        },
        Case {
            name: "catalog",
            method: Method::GET,
            path: "/v2/_catalog".into(),
            body: None,
            expect: |w| match w {
                Who::WrongPassword => 401,
                _ => 200,
            },
            setup: None,
        },
        Case {
            name: "stats",
            method: Method::GET,
            path: "/_stats".into(),
            body: None,
            expect: admin_only,
            setup: None,
        },
        Case {
            name: "gc",
            method: Method::POST,
            path: "/_gc?dry_run=true".into(),
            body: None,
            expect: admin_only,
            setup: None,
        },
        Case {
            name: "metrics",
            method: Method::GET,
            path: "/metrics".into(),
            body: None,
            expect: admin_only,
            setup: None,
        },
        Case {
            name: "layer files",
            method: Method::GET,
            path: format!("/_layers/{team_layer}/files"),
            body: None,
            expect: admin_only,
            setup: None,
        },
        Case {
            name: "layer files scoped",
            method: Method::GET,
            path: format!("/_layers/{team_layer}/files?repository=team/app"),
            body: None,
            expect: |w| team_pull(w, 200),
            setup: None,
        },
    ];
    let team_manifest_body = {
        let r = as_who(c.get(s.url("/v2/team/app/manifests/v1")), Who::Admin)
            .header("Accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .unwrap();
        r.bytes().unwrap().to_vec()
    };
    let mut checked = 0;
    let mut wrong = Vec::new();
    for case in &cases {
        for who in EVERYONE {
            let path = match case.setup {
                Some(f) => f(&s, &c),
                None => case.path.clone(),
            };
            let mut rb = as_who(c.request(case.method.clone(), s.url(&path)), who);
            if case.method == Method::PUT {
                rb = rb
                    .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                    .body(team_manifest_body.clone());
            } else if let Some(b) = &case.body {
                rb = rb.body(b.clone());
            }
            let r = rb.send().unwrap();
            let got = r.status().as_u16();
            let want = (case.expect)(who);
            if got == 401 {
                let challenge = r
                    .headers()
                    .get("www-authenticate")
                    .map(|v| v.to_str().unwrap().to_string());
                assert_eq!(
                    challenge.as_deref(),
                    Some("Basic realm=\"stowage\""),
                    "{}: 401 without its challenge",
                    case.name
                );
            }
            // Wrong passwords are refused with 401, or 429 once that user is throttled.
            let throttled = who == Who::WrongPassword && got == 429;
            if got != want && !throttled {
                wrong.push(format!("{} as {who:?}: {got}, expected {want}", case.name));
            }
            if got >= 400 && case.method != Method::HEAD {
                let v: Value = r.json().unwrap_or(Value::Null);
                let code = v["errors"][0]["code"].as_str().unwrap_or("");
                let want_code = match got {
                    401 => "UNAUTHORIZED",
                    403 => "DENIED",
                    _ => code,
                };
                assert_eq!(code, want_code, "{} as {who:?}: error code", case.name);
            }
            checked += 1;
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {checked} unexpected:\n{}",
        wrong.len(),
        wrong.join("\n")
    );

    // The catalog lists what the caller may pull, nothing else.
    let catalog = |who| -> Value {
        as_who(c.get(s.url("/v2/_catalog")), who)
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    assert_eq!(
        catalog(Who::Anonymous)["repositories"],
        json!(["public/app"])
    );
    assert_eq!(
        catalog(Who::Reader)["repositories"],
        json!(["public/app", "team/app"])
    );
    assert_eq!(
        catalog(Who::Other)["repositories"],
        json!(["other/app", "public/app"])
    );
    assert_eq!(
        catalog(Who::Admin)["repositories"],
        json!(["other/app", "public/app", "team/app"])
    );

    // Decisions are counted.
    let m = as_who(c.get(s.url("/metrics")), Who::Admin)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        m.contains("stowage_auth_decisions_total{reason=\"forbidden\",result=\"denied\"}"),
        "{m}"
    );
}

/// A repository's user cannot mount, HEAD, GET or list a layer only another repository holds,
/// even after pushing a near-copy of it (sharing most chunks); a mount without pull on `from`
/// is an ordinary upload.
#[test]
fn dedup_never_leaks_across_repositories() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &[]);
    let c = Client::new();
    let (_, secret) = push_image(&s, &c, "team/app", "v1", 7);
    // `other` pushes a layer sharing nearly all of its bytes with team's.
    let mut data = common::pseudo_random(300_000, 7);
    data[150_000] ^= 1;
    let near = tar_of("data.bin", &data);
    let d = digest_of(&near);
    let r = as_who(
        c.post(s.url(&format!("/v2/other/app/blobs/uploads/?digest={d}"))),
        Who::Other,
    )
    .body(near)
    .send()
    .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    for m in [Method::HEAD, Method::GET] {
        let r = as_who(
            c.request(m.clone(), s.url(&format!("/v2/other/app/blobs/{secret}"))),
            Who::Other,
        )
        .send()
        .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::NOT_FOUND,
            "{m} of another repository's layer"
        );
    }
    let r = as_who(
        c.post(s.url(&format!(
            "/v2/other/app/blobs/uploads/?mount={secret}&from=team/app"
        ))),
        Who::Other,
    )
    .send()
    .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::ACCEPTED,
        "no pull on team/app: an ordinary upload"
    );
    let r = as_who(
        c.head(s.url(&format!("/v2/other/app/blobs/{secret}"))),
        Who::Other,
    )
    .send()
    .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "nothing was mounted");
    let r = as_who(
        c.get(s.url(&format!("/_layers/{secret}/files?repository=other/app"))),
        Who::Other,
    )
    .send()
    .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "file index through a repository that lacks it"
    );
    // A writer with pull on the source mounts for real.
    let r = as_who(
        c.post(s.url(&format!(
            "/v2/team/copy/blobs/uploads/?mount={secret}&from=team/app"
        ))),
        Who::Writer,
    )
    .send()
    .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "authorized mount");
}

#[test]
fn failed_logins_are_throttled_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &[]);
    let c = Client::new();
    for _ in 0..10 {
        let r = as_who(c.get(s.url("/v2/")), Who::WrongPassword)
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = as_who(c.get(s.url("/v2/")), Who::WrongPassword)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // Even the right password for that user waits out the window from that address, unchecked;
    // other users from the same address (a CI runner's neighbours) are not locked out.
    let r = c
        .get(s.url("/v2/"))
        .basic_auth("intruder", Some("pw-of-intruder"))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let r = as_who(c.get(s.url("/v2/")), Who::Writer).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Anonymous requests are not logins: still answered.
    let r = c.get(s.url("/v2/public/app/tags/list")).send().unwrap();
    assert_ne!(r.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[test]
fn metrics_on_their_own_listener_need_no_user() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &["--metrics-addr", "127.0.0.1:0"]);
    let line = s.next_line();
    let url = line.rsplit("http://").next().unwrap().trim().to_string();
    let r = Client::new().get(format!("http://{url}")).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().unwrap().contains("stowage_blobs"));
    let r = Client::new().get(s.url("/metrics")).send().unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "main listener: admins only"
    );
}

#[test]
fn the_htpasswd_file_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &[]);
    let c = Client::new();
    let ok = |who| as_who(c.get(s.url("/v2/")), who).send().unwrap().status();
    assert_eq!(ok(Who::Reader), StatusCode::OK);
    // Replace reader's password: the old one stops working without a restart.
    let path = dir.path().join("htpasswd");
    common::run(
        std::process::Command::new(common::tool("htpasswd"))
            .args(["-B", "-C", "4", "-b"])
            .arg(&path)
            .args(["reader", "changed"]),
    );
    // Modification times are coarse on some filesystems: make the change visible.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    writeln!(f, "# touched").unwrap();
    drop(f);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while ok(Who::Reader) == StatusCode::OK {
        assert!(
            std::time::Instant::now() < deadline,
            "old password still accepted"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let r = c
        .get(s.url("/v2/"))
        .basic_auth("reader", Some("changed"))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
