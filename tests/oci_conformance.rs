//! The official OCI distribution-spec conformance suite (v1.1.x, a Go test binary) against the
//! real server, with pull, push, content discovery and content management enabled.
//!
//! The suite's Go dependencies are not all packaged by Debian, so its binary is built outside
//! this repository (see README, "OCI conformance"). The test runs it from
//! `$STOWAGE_CONFORMANCE_BIN`, else `/work/oci-conformance/conformance.test`. It is ignored by
//! default; `scripts/test` runs it (`--ignored`) when the binary exists and says so when not.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::Server;

fn conformance_bin() -> Option<PathBuf> {
    let p = std::env::var_os("STOWAGE_CONFORMANCE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/oci-conformance/conformance.test"));
    p.exists().then_some(p)
}

#[test]
#[ignore = "needs the OCI conformance binary (STOWAGE_CONFORMANCE_BIN); scripts/test runs it when present"]
fn oci_distribution_conformance_suite() {
    run_suite(&Server::start(), &[]);
}

/// The same with authentication on: an htpasswd user (who may do everything, as no rule
/// says otherwise), passed to the suite as `OCI_USERNAME` / `OCI_PASSWORD`.
#[test]
#[ignore = "needs the OCI conformance binary (STOWAGE_CONFORMANCE_BIN); scripts/test runs it when present"]
fn oci_distribution_conformance_suite_with_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let pw = common::htpasswd(dir.path(), &["conformance"]);
    let s = Server::start_at(
        &dir.path().join("root"),
        &["--htpasswd", pw.to_str().unwrap()],
    );
    run_suite(
        &s,
        &[
            ("OCI_USERNAME", "conformance"),
            ("OCI_PASSWORD", "pw-of-conformance"),
        ],
    );
}

fn run_suite(s: &Server, env: &[(&str, &str)]) {
    let bin = conformance_bin()
        .expect("OCI conformance binary not found: set STOWAGE_CONFORMANCE_BIN (see README)");
    let reports = tempfile::tempdir().unwrap();
    let out = Command::new(&bin)
        .envs(env.iter().copied())
        .current_dir(reports.path())
        .env("OCI_ROOT_URL", s.url(""))
        .env("OCI_NAMESPACE", "conformance/repo")
        .env("OCI_CROSSMOUNT_NAMESPACE", "conformance/other")
        .env("OCI_TEST_PULL", "1")
        .env("OCI_TEST_PUSH", "1")
        .env("OCI_TEST_CONTENT_DISCOVERY", "1")
        .env("OCI_TEST_CONTENT_MANAGEMENT", "1")
        // stowage never mounts without `from` (repository isolation): expect 202 there.
        .env("OCI_AUTOMATIC_CROSSMOUNT", "0")
        .env("OCI_HIDE_SKIPPED_WORKFLOWS", "0")
        .env("OCI_DEBUG", "0")
        .env("OCI_REPORT_DIR", reports.path())
        .env("NO_COLOR", "1")
        .arg("-ginkgo.no-color")
        .output()
        .expect("run the conformance binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout
        .lines()
        .filter(|l| l.contains("Passed") || l.starts_with("Ran "))
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!("conformance: {summary}");
    assert!(
        out.status.success(),
        "conformance suite failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(summary.contains("| 0 Failed"), "{summary}");
}
