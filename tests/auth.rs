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

fn htpasswd(dir: &Path, users: &[&str]) -> std::path::PathBuf {
    common::htpasswd(dir, users)
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

// ---- bearer tokens ----------------------------------------------------------------------------

fn start_tokens(dir: &Path, token_section: &str) -> Server {
    let pw = htpasswd(
        dir,
        &["admin", "reader", "writer", "deleter", "other", "intruder"],
    );
    let cfg = dir.join("stowage.toml");
    std::fs::write(&cfg, format!("{CONFIG}\n[token]\n{token_section}\n")).unwrap();
    let root = dir.join("root");
    Server::start_at(
        &root,
        &[
            "--htpasswd",
            pw.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
            "--dedup",
            "inline",
        ],
    )
}

/// The challenge's parameters.
fn challenge(r: &reqwest::blocking::Response) -> std::collections::HashMap<String, String> {
    let v = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    let rest = v
        .strip_prefix("Bearer ")
        .unwrap_or_else(|| panic!("not a Bearer challenge: {v}"));
    rest.split("\",")
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.trim_matches('"').to_string())
        })
        .collect()
}

/// A token from stowage's `/token` for `who` and `scope`.
fn token_for(s: &Server, c: &Client, who: Who, scope: &str) -> String {
    let r = as_who(
        c.get(s.url(&format!("/token?service=stowage&scope={scope}"))),
        who,
    )
    .send()
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "token for {who:?}");
    let v: Value = r.json().unwrap();
    assert!(v["expires_in"].as_u64().unwrap() > 0);
    v["token"].as_str().unwrap().to_string()
}

fn sign_hs256(secret: &[u8], claims: &Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(secret).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &key,
    )
    .unwrap()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn bearer_token_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_tokens(dir.path(), "");
    let c = Client::new();
    push_image(&s, &c, "team/app", "v1", 1);
    push_image(&s, &c, "other/app", "v1", 3);
    push_image(&s, &c, "public/app", "v1", 2);

    // The challenge sends clients to this server's /token with the scope they need.
    let r = c.get(s.url("/v2/team/app/manifests/v1")).send().unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let ch = challenge(&r);
    assert_eq!(ch["realm"], s.url("/token"));
    assert_eq!(ch["service"], "stowage");
    assert_eq!(ch["scope"], "repository:team/app:pull");
    let r = c.get(s.url("/v2/")).send().unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(!challenge(&r).contains_key("scope"));

    let secret = std::fs::read(s.root.join("auth/token-secret")).unwrap();
    let claims = |sub: &str, name: &str, actions: &[&str], iss: &str, aud: &str, exp: u64| {
        json!({"iss": iss, "sub": sub, "aud": aud, "exp": exp, "nbf": unix_now() - 10, "iat": unix_now() - 10,
               "jti": "t", "access": [{"type": "repository", "name": name, "actions": actions}]})
    };
    let now = unix_now();
    let bearers: Vec<(&str, Option<String>)> = vec![
        ("anonymous", None),
        (
            "anonymous token",
            Some(token_for(
                &s,
                &c,
                Who::Anonymous,
                "repository:team/app:pull,push",
            )),
        ),
        (
            "reader token",
            Some(token_for(
                &s,
                &c,
                Who::Reader,
                "repository:team/app:pull,push",
            )),
        ),
        (
            "writer token",
            Some(token_for(
                &s,
                &c,
                Who::Writer,
                "repository:team/app:pull,push",
            )),
        ),
        (
            "token for another repository",
            Some(token_for(
                &s,
                &c,
                Who::Other,
                "repository:other/app:pull,push",
            )),
        ),
        (
            "expired token",
            Some(sign_hs256(
                &secret,
                &claims(
                    "writer",
                    "team/app",
                    &["pull", "push"],
                    "stowage",
                    "stowage",
                    now - 60,
                ),
            )),
        ),
        (
            "token of an unknown key",
            Some(sign_hs256(
                b"some other secret, not stowage's",
                &claims(
                    "writer",
                    "team/app",
                    &["pull", "push"],
                    "stowage",
                    "stowage",
                    now + 300,
                ),
            )),
        ),
        (
            "token for another service",
            Some(sign_hs256(
                &secret,
                &claims(
                    "writer",
                    "team/app",
                    &["pull", "push"],
                    "stowage",
                    "elsewhere",
                    now + 300,
                ),
            )),
        ),
        (
            "token of another issuer",
            Some(sign_hs256(
                &secret,
                &claims(
                    "writer",
                    "team/app",
                    &["pull", "push"],
                    "mallory",
                    "stowage",
                    now + 300,
                ),
            )),
        ),
        ("garbage", Some("not.a.token".into())),
    ];
    // (what, bearer name) -> expected status for: pull team/app, push team/app, pull other/app.
    let expect = |name: &str| -> [u16; 3] {
        match name {
            // A user's token from stowage: the rules decide (403 beyond them); an anonymous
            // token lacking the scope: 401 (log in for a better one).
            "reader token" => [200, 403, 403],
            "writer token" => [200, 202, 403],
            "token for another repository" => [403, 403, 200],
            _ => [401, 401, 401],
        }
    };
    let mut wrong = Vec::new();
    for (name, bearer) in &bearers {
        let requests = [
            c.get(s.url("/v2/team/app/manifests/v1")),
            c.post(s.url("/v2/team/app/blobs/uploads/")),
            c.get(s.url("/v2/other/app/manifests/v1")),
        ];
        for (i, rb) in requests.into_iter().enumerate() {
            let rb = match bearer {
                Some(t) => rb.bearer_auth(t),
                None => rb,
            };
            let r = rb
                .header("Accept", "application/vnd.oci.image.manifest.v1+json")
                .send()
                .unwrap();
            let got = r.status().as_u16();
            if got == 401 || got == 403 {
                let ch = challenge(&r);
                assert!(
                    ch.contains_key("realm") && ch.contains_key("scope"),
                    "{name}: {ch:?}"
                );
                if bearer.is_some() {
                    assert!(
                        ch.contains_key("error"),
                        "{name}: a refused token says why: {ch:?}"
                    );
                }
            }
            if got != expect(name)[i] {
                wrong.push(format!(
                    "{name} request {i}: {got}, expected {}",
                    expect(name)[i]
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "unexpected:\n{}", wrong.join("\n"));

    // Anonymous tokens get what anonymous may do; a wrong password gets no token at all.
    let t = token_for(&s, &c, Who::Anonymous, "repository:public/app:pull,push");
    let r = c
        .get(s.url("/v2/public/app/manifests/v1"))
        .bearer_auth(&t)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = as_who(
        c.get(s.url("/token?scope=repository:team/app:pull")),
        Who::WrongPassword,
    )
    .send()
    .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Operator endpoints: an admin's token, not a user's.
    let t = token_for(&s, &c, Who::Admin, "registry:catalog:*");
    assert_eq!(
        c.get(s.url("/_stats"))
            .bearer_auth(&t)
            .send()
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let t = token_for(&s, &c, Who::Writer, "registry:catalog:*");
    assert_eq!(
        c.get(s.url("/_stats"))
            .bearer_auth(&t)
            .send()
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
    // The catalog with a user's token lists what that user may pull.
    let v: Value = c
        .get(s.url("/v2/_catalog"))
        .bearer_auth(&t)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["repositories"], json!(["public/app", "team/app"]));
}

/// Tokens of an external token server, checked against its public key without calling it.
#[test]
fn tokens_of_an_external_server() {
    let dir = tempfile::tempdir().unwrap();
    let openssl = common::tool("openssl");
    let key = dir.path().join("key.pem");
    let public = dir.path().join("public.pem");
    let out = common::run(std::process::Command::new(&openssl).args([
        "ecparam",
        "-genkey",
        "-name",
        "prime256v1",
        "-noout",
    ]));
    std::fs::write(dir.path().join("ec.pem"), &out.stdout).unwrap();
    common::run(
        std::process::Command::new(&openssl)
            .args(["pkcs8", "-topk8", "-nocrypt", "-in"])
            .arg(dir.path().join("ec.pem"))
            .arg("-out")
            .arg(&key),
    );
    common::run(
        std::process::Command::new(&openssl)
            .args(["ec", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(&public),
    );
    let s = start_tokens(
        dir.path(),
        &format!("realm = \"https://auth.example.com/token\"\nservice = \"registry.example.com\"\nissuer = \"auth.example.com\"\npublic_keys = [\"{}\"]", public.display()),
    );
    let c = Client::new();
    push_image(&s, &c, "team/app", "v1", 1);
    let r = c.get(s.url("/v2/team/app/manifests/v1")).send().unwrap();
    let ch = challenge(&r);
    assert_eq!(ch["realm"], "https://auth.example.com/token");
    assert_eq!(ch["service"], "registry.example.com");
    assert_eq!(
        c.get(s.url("/token")).send().unwrap().status(),
        StatusCode::NOT_FOUND,
        "no token server here"
    );

    let sign = |pem: &[u8], iss: &str, name: &str| {
        let k = jsonwebtoken::EncodingKey::from_ec_pem(pem).unwrap();
        let claims = json!({"iss": iss, "sub": "ci", "aud": "registry.example.com", "exp": unix_now() + 300,
                            "nbf": unix_now() - 10, "iat": unix_now() - 10, "jti": "x",
                            "access": [{"type": "repository", "name": name, "actions": ["pull"]}]});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
            &claims,
            &k,
        )
        .unwrap()
    };
    let pem = std::fs::read(&key).unwrap();
    let get = |t: &str| {
        c.get(s.url("/v2/team/app/manifests/v1"))
            .bearer_auth(t)
            .header("Accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(
        get(&sign(&pem, "auth.example.com", "team/app")),
        StatusCode::OK
    );
    assert_eq!(
        get(&sign(&pem, "auth.example.com", "team/other")),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&sign(&pem, "someone.else", "team/app")),
        StatusCode::UNAUTHORIZED
    );
    let out = common::run(std::process::Command::new(&openssl).args([
        "ecparam",
        "-genkey",
        "-name",
        "prime256v1",
        "-noout",
    ]));
    let other_ec = dir.path().join("other-ec.pem");
    std::fs::write(&other_ec, &out.stdout).unwrap();
    let other = common::run(
        std::process::Command::new(&openssl)
            .args(["pkcs8", "-topk8", "-nocrypt", "-in"])
            .arg(&other_ec),
    )
    .stdout;
    assert_eq!(
        get(&sign(&other, "auth.example.com", "team/app")),
        StatusCode::UNAUTHORIZED,
        "unknown key"
    );
}

// ---- TLS ---------------------------------------------------------------------------------------

/// The serial of the certificate the server presents.
fn served_serial(addr: &str) -> String {
    let out = std::process::Command::new(common::tool("openssl"))
        .args(["s_client", "-connect", addr])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let mut x = std::process::Command::new(common::tool("openssl"))
        .args(["x509", "-noout", "-serial"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    x.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    String::from_utf8(x.wait_with_output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string()
}

/// HTTPS with a test CA: credentials accepted over TLS, plain HTTP refused on the TLS port, a
/// renewed certificate served after SIGHUP without a restart (and a broken one ignored).
#[test]
fn tls_serves_and_reloads_its_certificate_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let ca = common::test_ca(dir.path());
    let (cert, key) = (dir.path().join("tls.pem"), dir.path().join("tls-key.pem"));
    std::fs::copy(&ca.cert, &cert).unwrap();
    std::fs::copy(&ca.key, &key).unwrap();
    let pw = htpasswd(dir.path(), &["writer"]);
    let s = Server::start_at(
        &dir.path().join("root"),
        &[
            "--htpasswd",
            pw.to_str().unwrap(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let curl = |user: &str| {
        let out = common::run(
            std::process::Command::new(common::tool("curl"))
                .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
                .arg(&ca.ca)
                .args(["-u", user])
                .arg(format!("https://{}/v2/", s.addr)),
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(curl("writer:pw-of-writer"), "200");
    assert_eq!(curl("writer:wrong"), "401");
    // HTTP/2 is offered by ALPN and served; HTTP/1.1 heads get the same checks as in plain.
    let out = common::run(
        std::process::Command::new(common::tool("curl"))
            .args([
                "-sS",
                "--http2",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
            ])
            .arg("--cacert")
            .arg(&ca.ca)
            .args(["-u", "writer:pw-of-writer"])
            .arg(format!("https://{}/v2/", s.addr)),
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "2 200");
    let out = common::run(
        std::process::Command::new(common::tool("curl"))
            .args(["-sS", "--http1.1", "--cacert"])
            .arg(&ca.ca)
            .args(["-u", "writer:pw-of-writer", "-H", "Content-Length: 1"])
            .args(["-H", "Transfer-Encoding: chunked", "--data-binary", "x"])
            .arg(format!("https://{}/v2/", s.addr)),
    );
    let body = String::from_utf8(out.stdout).unwrap();
    assert!(
        body.contains("\"UNSUPPORTED\"")
            && body.contains("both Content-Length and Transfer-Encoding"),
        "{body}"
    );
    let plain = Client::new().get(format!("http://{}/v2/", s.addr)).send();
    assert!(
        plain.map_or(true, |r| !r.status().is_success()),
        "plain HTTP answered on the TLS port"
    );
    assert_eq!(served_serial(&s.addr), "serial=01");

    let reloads = |result: &str| -> u64 {
        let out = common::run(
            std::process::Command::new(common::tool("curl"))
                .args(["-sS", "--cacert"])
                .arg(&ca.ca)
                .args(["-u", "writer:pw-of-writer"])
                .arg(format!("https://{}/metrics", s.addr)),
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let series = format!("stowage_reloads_total{{result=\"{result}\",what=\"tls\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .unwrap_or_else(|| panic!("no {series} in {text}"))
            .parse()
            .unwrap()
    };
    // A broken certificate on SIGHUP: the one in use stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    // SAFETY: kill(2) on the server this test started.
    unsafe { libc::kill(s.pid(), libc::SIGHUP) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while reloads("failed") == 0 {
        assert!(std::time::Instant::now() < deadline, "SIGHUP not handled");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        served_serial(&s.addr),
        "serial=01",
        "the broken one was not taken"
    );
    // A renewed certificate: served after the next SIGHUP.
    let renewed = common::server_cert(dir.path(), 2);
    std::fs::copy(&renewed.cert, &cert).unwrap();
    std::fs::copy(&renewed.key, &key).unwrap();
    assert_eq!(
        curl("writer:pw-of-writer"),
        "200",
        "still serving after a broken reload"
    );
    unsafe { libc::kill(s.pid(), libc::SIGHUP) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while served_serial(&s.addr) != "serial=02" {
        assert!(
            std::time::Instant::now() < deadline,
            "renewed certificate not served"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(curl("writer:pw-of-writer"), "200");
}

/// An upload session belongs to its repository and to the user who started it: another user
/// with push on the same repository cannot see, continue, finish or cancel it.
#[test]
fn upload_sessions_belong_to_their_user() {
    let dir = tempfile::tempdir().unwrap();
    let pw = htpasswd(dir.path(), &["alice", "bob"]);
    let cfg = dir.path().join("stowage.toml");
    std::fs::write(
        &cfg,
        "[[access]]\nrepositories = [\"team/**\"]\nusers = [\"alice\", \"bob\"]\nactions = [\"pull\", \"push\"]\n",
    )
    .unwrap();
    let s = Server::start_at(
        &dir.path().join("root"),
        &[
            "--htpasswd",
            pw.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    let c = Client::new();
    let as_user = |rb: RequestBuilder, u: &str| rb.basic_auth(u, Some(format!("pw-of-{u}")));
    let r = as_user(c.post(s.url("/v2/team/app/blobs/uploads/")), "alice")
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let url = if loc.starts_with("http") {
        loc
    } else {
        s.url(&loc)
    };
    let data = b"alice's bytes".to_vec();
    let d = digest_of(&data);
    for (m, body) in [
        (Method::GET, None),
        (Method::PATCH, Some(data.clone())),
        (Method::DELETE, None),
    ] {
        let mut rb = as_user(c.request(m.clone(), &url), "bob");
        if let Some(b) = body {
            rb = rb.body(b);
        }
        let r = rb.send().unwrap();
        assert_eq!(
            r.status(),
            StatusCode::NOT_FOUND,
            "bob's {m} of alice's upload"
        );
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    let r = as_user(c.put(format!("{url}{sep}digest={d}")), "bob")
        .body(data.clone())
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "bob finishing alice's upload"
    );
    let r = as_user(c.put(format!("{url}{sep}digest={d}")), "alice")
        .body(data)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "alice finishes her own");
}
