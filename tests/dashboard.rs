//! The shipped Grafana dashboard, the way an operator sees it: a real Prometheus scrapes the
//! real binary while a layer is pushed, deduplicated and pulled through the Restore actor, and
//! every panel's query is run against it. A query error fails, and the panels about pulls must
//! show what the pull did. A static check keeps every panel's unit true to its query.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{push_blob, Server};
use reqwest::blocking::Client;
use serde_json::Value;

/// Prometheus scrapes every second, so waits are bounded by a few of these.
const SCRAPE: Duration = Duration::from_secs(1);

fn dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/stowage.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// (panel title, panel unit, target refId, expr) for every target of the dashboard.
fn targets(dash: &Value) -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap().to_string();
        let unit = panel["fieldConfig"]["defaults"]["unit"]
            .as_str()
            .unwrap_or("")
            .to_string();
        for t in panel["targets"].as_array().unwrap() {
            out.push((
                title.clone(),
                unit.clone(),
                t["refId"].as_str().unwrap().to_string(),
                t["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

/// Grafana units that are a quantity per second.
const PER_SECOND: &[&str] = &["Bps", "binBps", "bps", "ops", "reqps", "rps", "wps", "iops"];

/// Every panel's unit is what its queries return: `rate()` is per second (or, divided by
/// another rate or taken of busy seconds, a ratio), `increase()` is a count over its window
/// and says so ("/ h", "per hour"), a quantile of a histogram has the histogram's unit, and no
/// panel puts per-second rates and plain values on one axis.
#[test]
fn every_panel_unit_matches_its_queries() {
    let dash = dashboard();
    let mut ids = std::collections::BTreeSet::new();
    for panel in dash["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{title:?}: duplicate panel id"
        );
        let unit = panel["fieldConfig"]["defaults"]["unit"]
            .as_str()
            .unwrap_or_else(|| panic!("{title:?} has no unit"));
        let exprs: Vec<&str> = panel["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["expr"].as_str().unwrap())
            .collect();
        let rates = exprs.iter().filter(|e| e.contains("rate(")).count();
        assert!(
            rates == 0 || rates == exprs.len(),
            "{title:?} mixes rates with plain values on one {unit:?} axis: {exprs:?}"
        );
        for (t, expr) in panel["targets"].as_array().unwrap().iter().zip(&exprs) {
            if expr.contains("histogram_quantile(") {
                assert_eq!(unit, "s", "{title:?}: a latency quantile is in seconds");
            } else if expr.contains("rate(") {
                let ratio = expr.contains(") / rate(") || expr.contains("_seconds_total");
                assert!(
                    PER_SECOND.contains(&unit) || (ratio && unit == "percentunit"),
                    "{title:?}: {expr} is per second, the unit {unit:?} is not"
                );
                if unit == "percentunit" {
                    assert!(ratio, "{title:?}: {expr} is not a ratio");
                }
            }
            if expr.contains("increase(") {
                assert!(
                    !PER_SECOND.contains(&unit),
                    "{title:?}: {expr} is a count over its window, the unit {unit:?} is per second"
                );
                let legend = t["legendFormat"].as_str().unwrap_or("");
                let said =
                    |s: &str| s.contains("/ h") || s.contains("per hour") || s.contains("/h");
                assert!(
                    !expr.contains("[1h]") || said(title) || said(legend),
                    "{title:?}: {expr} is per hour, neither title nor legend {legend:?} says so"
                );
            }
        }
    }
}

/// One series of an instant query's result: its labels and value.
type Series = (BTreeMap<String, String>, f64);

/// A `prometheus` child process with its own config and TSDB, killed (by its pid) on drop,
/// panics included.
struct Prometheus {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Start one scraping `target` every second and wait until it is ready.
    fn start(target: &str) -> Prometheus {
        let bin = common::tool("prometheus");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: stowage\n    metrics_path: /metrics\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let mut p = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let c = Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", p.log());
            }
            if let Ok(r) = c.get(format!("{}/-/ready", p.url)).send() {
                if r.status().is_success() {
                    return p;
                }
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 30 s:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("prometheus.log")
    }

    /// An instant query: its series as (labels, value), or Prometheus' error.
    fn query(&self, c: &Client, q: &str) -> Result<Vec<Series>, String> {
        let r = c
            .get(format!("{}/api/v1/query?query={}", self.url, urlencode(q)))
            .send()
            .map_err(|e| e.to_string())?;
        let status = r.status();
        let body: Value = r.json().map_err(|e| format!("{status}: {e}"))?;
        if body["status"] != "success" {
            return Err(format!("{status}: {body}"));
        }
        let data = &body["data"];
        match data["resultType"].as_str() {
            Some("vector") => Ok(data["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    let labels = s["metric"]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                        .collect();
                    (labels, sample(&s["value"]))
                })
                .collect()),
            Some("scalar") => Ok(vec![(BTreeMap::new(), sample(&data["result"]))]),
            other => Err(format!("unexpected result type {other:?}: {body}")),
        }
    }

    /// The one value of `q`, if it has exactly one series.
    fn value(&self, c: &Client, q: &str) -> Option<f64> {
        match self.query(c, q) {
            Ok(v) if v.len() == 1 => Some(v[0].1),
            Ok(_) => None,
            Err(e) => panic!("{q}: {e}"),
        }
    }

    /// Wait (bounded) until `q` has one series and `ok` holds for its value.
    fn wait_for(&self, c: &Client, q: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + 20 * SCRAPE;
        loop {
            let v = self.value(c, q);
            if let Some(v) = v.filter(|v| ok(*v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{q} is {v:?} after 20 scrape intervals"
            );
            std::thread::sleep(SCRAPE / 5);
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // Only our own child, by its pid (SIGKILL); reaped so nothing is left behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `[timestamp, "value"]` pair of the query API (NaN and ±Inf as Prometheus spells them).
fn sample(v: &Value) -> f64 {
    v[1].as_str().unwrap().parse().unwrap()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn stats(s: &Server, c: &Client) -> Value {
    c.get(s.url("/_stats"))
        .send()
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .unwrap()
}

/// Poll `/_stats` (bounded) until `ok` holds.
fn wait_stats(s: &Server, c: &Client, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = stats(s, c);
        if ok(&st) {
            return st;
        }
        assert!(Instant::now() < deadline, "{what}: {st}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn label<'a>(labels: &'a BTreeMap<String, String>, name: &str) -> &'a str {
    labels.get(name).map(String::as_str).unwrap_or("")
}

#[test]
fn every_panel_shows_what_a_pull_did() {
    let t0 = Instant::now();
    let root = tempfile::tempdir().unwrap();
    // No hot tier, so the pull is a restore through the Restore actor's spool.
    let s = Server::start_at(root.path(), &["--dedup", "inline", "--hot-bytes", "0"]);
    let prom = Prometheus::start(&s.addr);
    let c = Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let sel = format!("{{instance=\"{}\"}}", s.addr);

    // A first scrape before anything happens, so that rates start from it.
    prom.wait_for(&c, &format!("up{sel}"), |v| v == 1.0);

    // Two layers sharing four of their files: the second pushed dedups against the first.
    let shared = common::text_layer([1, 2, 3, 4]);
    let pulled = common::text_layer([1, 2, 3, 4, 5]);
    // Far above the 256 KiB up to which blobs are restored in memory, off the Restore actor.
    assert!(pulled.len() > 1 << 20, "{} bytes", pulled.len());
    let d = common::digest_of(&pulled);
    // No request before the pull: its blob GET must show on the latency panel although it is
    // the first since the start (the series exist at zero from the start, so Prometheus has a
    // sample before it).
    push_blob(&s, &c, "dash/app", &shared);
    assert_eq!(push_blob(&s, &c, "dash/app", &pulled), d);
    wait_stats(&s, &c, "both layers deduplicated", |st| {
        st["layers"]["deduplicated"] == 2 && st["layers"]["pending"] == 0
    });
    // Scraped before the pull: the pull's counters start from there.
    prom.wait_for(
        &c,
        &format!(
            "stowage_layers{{instance=\"{}\",state=\"deduplicated\"}}",
            s.addr
        ),
        |v| v == 2.0,
    );
    prom.wait_for(
        &c,
        &format!(
            "sum(stowage_http_request_duration_seconds_count{{instance=\"{}\",route=\"blob\"}})",
            s.addr
        ),
        |v| v == 0.0,
    );
    assert_eq!(stats(&s, &c)["restore"]["started"], 0);

    // The pull.
    let r = c
        .get(s.url(&format!("/v2/dash/app/blobs/{d}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    assert!(
        r.bytes().unwrap().as_ref() == &pulled[..],
        "pulled bytes differ"
    );
    // Its restore is counted once its digest is checked, just after the last byte.
    let st = wait_stats(&s, &c, "the pull counted as a restore", |st| {
        st["restore"]["layers"] == 1
    });
    assert_eq!(st["restore"]["started"], 1, "{}", st["restore"]);
    let restored = st["restore"]["bytes"].as_u64().unwrap();
    assert_eq!(restored, pulled.len() as u64, "{}", st["restore"]);
    // Scraped after the pull.
    prom.wait_for(&c, &format!("stowage_restore_bytes_total{sel}"), |v| {
        v == restored as f64
    });
    prom.wait_for(&c, &format!("stowage_restore_started_total{sel}"), |v| {
        v >= 1.0
    });

    // Every panel's every query, as Grafana sends it with "All" instances selected. The ranges
    // stay the dashboard's own ([5m], [1h]): the whole test lies within them.
    let dash = dashboard();
    let mut results = BTreeMap::new();
    let mut errors = Vec::new();
    for (title, _, ref_id, expr) in targets(&dash) {
        let q = expr.replace("$instance", ".*");
        match prom.query(&c, &q) {
            Ok(v) => {
                // What the panel shows, for the failure message of any assertion below.
                let shown: Vec<String> = v
                    .iter()
                    .map(|(l, x)| {
                        let l: Vec<String> = l
                            .iter()
                            .filter(|(k, _)| !["instance", "job"].contains(&k.as_str()))
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect();
                        format!("{{{}}} {x}", l.join(","))
                    })
                    .collect();
                eprintln!("{title} {ref_id}: {}", shown.join("  "));
                results.insert((title, ref_id), v);
            }
            Err(e) => errors.push(format!("panel {title:?} {ref_id}: {q}: {e}")),
        }
    }
    assert!(errors.is_empty(), "queries failed:\n{}", errors.join("\n"));
    let panel = |title: &str, ref_id: &str| -> &Vec<Series> {
        results
            .get(&(title.to_string(), ref_id.to_string()))
            .unwrap_or_else(|| panic!("no panel {title:?} with a target {ref_id}"))
    };
    let one = |title: &str, ref_id: &str| -> f64 {
        let v = panel(title, ref_id);
        assert_eq!(v.len(), 1, "{title:?} {ref_id}: {v:?}");
        v[0].1
    };

    let v = one("Restore throughput (bytes re-created from chunks)", "A");
    assert!(v > 0.0, "restore throughput {v}");

    let v = panel("Request latency p95 to the last byte, by route", "A");
    let blob = v
        .iter()
        .find(|(l, _)| label(l, "route") == "blob")
        .unwrap_or_else(|| panic!("no blob route in {v:?}"));
    assert!(blob.1.is_finite() && blob.1 > 0.0, "blob p95 {}", blob.1);

    let title = "Restore busy time by stage (100% = one thread busy all the time)";
    let v = panel(title, "A");
    let stages: BTreeMap<&str, f64> = v.iter().map(|(l, x)| (label(l, "stage"), *x)).collect();
    assert!(
        stages.get("encode").is_some_and(|x| *x > 0.0),
        "re-encoding time: {stages:?}"
    );

    let title = "Restores started, joined, announced; hot-tier hits";
    assert!(one(title, "A") > 0.0, "restores started");
    assert_eq!(one(title, "B"), 0.0, "nothing joined a restore");
    assert_eq!(one(title, "C"), 0.0, "no manifest GET announced a restore");
    assert_eq!(one(title, "D"), 0.0, "no hot tier");
    one(title, "E");

    let title = "Hot tier and spool";
    assert_eq!(one(title, "A"), 0.0, "no hot tier");
    assert!(one(title, "B") >= 0.0);

    let v = panel("Chunks: new vs duplicate", "A");
    let kinds: BTreeMap<&str, f64> = v.iter().map(|(l, x)| (label(l, "kind"), *x)).collect();
    assert_eq!(
        kinds.keys().copied().collect::<Vec<_>>(),
        ["duplicate", "new"],
        "{kinds:?}"
    );
    assert!(kinds.values().all(|x| *x > 0.0), "{kinds:?}");

    let v = panel("Layers by state", "A");
    let dedup = v
        .iter()
        .find(|(l, _)| label(l, "state") == "deduplicated")
        .map(|x| x.1);
    assert_eq!(dedup, Some(2.0), "{v:?}");

    let v = panel("HTTP requests by status", "A");
    assert!(
        v.iter()
            .any(|(l, x)| label(l, "status") == "200" && *x > 0.0),
        "{v:?}"
    );

    // Stored and logical bytes as `/_stats` says: the sample is from a scrape after `before`
    // was read, and `after` is read right after the query, so the value lies between them.
    let deadline = Instant::now() + 20 * SCRAPE;
    loop {
        let before = stats(&s, &c);
        let read_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        prom.wait_for(&c, &format!("timestamp(stowage_stored_bytes{sel})"), |t| {
            t > read_at
        });
        let stored = one_now(&prom, &c, "Stored bytes", "A", &dash);
        let logical = one_now(&prom, &c, "Stored bytes", "B", &dash);
        let ratio = one_now(&prom, &c, "Dedup ratio (logical / stored)", "A", &dash);
        let after = stats(&s, &c);
        let within = |v: f64, key: &str| {
            let (a, b) = (
                before["bytes"][key].as_f64().unwrap(),
                after["bytes"][key].as_f64().unwrap(),
            );
            a.min(b) <= v && v <= a.max(b)
        };
        if within(stored, "stored") && within(logical, "logical") {
            assert_eq!(logical, after["bytes"]["logical"].as_f64().unwrap());
            assert_eq!(logical, (shared.len() + pulled.len()) as f64);
            assert!(ratio > 1.0, "dedup ratio {ratio}");
            assert!(
                (ratio - logical / stored).abs() < 1e-3 * ratio,
                "dedup ratio {ratio} is not logical / stored ({logical} / {stored})"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus shows stored {stored}, logical {logical}; /_stats said {} then {}",
            before["bytes"],
            after["bytes"]
        );
    }
    eprintln!("dashboard test took {:?}", t0.elapsed());
}

/// The value of a panel's target (with all instances) now.
fn one_now(prom: &Prometheus, c: &Client, title: &str, ref_id: &str, dash: &Value) -> f64 {
    let (_, _, _, expr) = targets(dash)
        .into_iter()
        .find(|(t, _, r, _)| t == title && r == ref_id)
        .unwrap_or_else(|| panic!("no panel {title:?} with a target {ref_id}"));
    let q = expr.replace("$instance", ".*");
    prom.value(c, &q)
        .unwrap_or_else(|| panic!("{title:?} {ref_id}: not one series"))
}
