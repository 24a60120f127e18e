//! Shared by the exact-encoder tests: the Go fixture writer and the ingest + restore path.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use stowage_actors::engine::recompress::{Compression, LayerDecoder, Reencoder};

pub fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/go")
}

/// Builds `tests/go/gzwrite` once per test binary (under the binary's own name, so test
/// binaries running at the same time do not race); None, with a NOT RUN note, without Go
/// (outside CI: CI must have it).
pub fn gzwrite() -> Option<&'static Path> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = target_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join(format!("gzwrite-{}", env!("CARGO_CRATE_NAME")));
        let status = Command::new("go")
            .args(["build", "-o"])
            .arg(&bin)
            .arg("./tests/go/gzwrite")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("GO111MODULE", "off")
            .env("GOPATH", "/usr/share/gocode")
            .env("GOCACHE", dir.join("cache"))
            .status();
        match status {
            Ok(s) if s.success() => Some(bin),
            Ok(s) => panic!("go build of gzwrite failed: {s}"),
            Err(e) if std::env::var_os("CI").is_some() => {
                panic!("CI must have Go to check the exact encoders: {e}")
            }
            Err(e) => {
                eprintln!("NOT RUN: no Go toolchain ({e}); scripts/test installs golang-go");
                None
            }
        }
    })
    .as_deref()
}

/// What a layer goes through: inflate while identifying the encoder, then re-encode from
/// the plaintext on pull. Returns the encoding's label, its Go split points and the bytes.
pub fn ingest_and_restore(compressed: &[u8]) -> (String, usize, Vec<u8>) {
    let mut d = LayerDecoder::new(Compression::detect(compressed));
    let mut raw = Vec::new();
    for part in compressed.chunks(100_003) {
        d.feed(part, &mut |b| raw.extend_from_slice(b)).unwrap();
    }
    let enc = d.finish().unwrap();
    let mut r = Reencoder::new(&enc);
    let mut out = Vec::new();
    for part in raw.chunks(70_001) {
        r.push(part, &mut out);
    }
    r.finish(&mut out);
    let splits = serde_json::to_value(&enc).unwrap()["members"][0]["splits"]
        .as_array()
        .map_or(0, |a| a.len());
    (enc.label(), splits, out)
}
