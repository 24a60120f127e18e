//! Shared by the engine's integration tests: the Go fixture writer, the ingest + restore path
//! and a deterministic random source.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use stowage_actors::engine::goflate::Split;
use stowage_actors::engine::inflate::BlockInflate;

use stowage_actors::engine::recompress::{Compression, LayerDecoder, Reencoder};

mod files;
#[allow(unused_imports)] // not every test binary reads files
pub use files::files_under;

pub fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/go")
}

/// Builds `tests/go/gzwrite` once per test binary (under the binary's own name, so test
/// binaries running at the same time do not race); None, with a NOT RUN note, without Go
/// (outside CI: CI must have it).
pub fn gzwrite() -> Option<&'static Path> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| go_tool("gzwrite")).as_deref()
}

/// Builds `tests/go/zstdwrite` (klauspost/compress/zstd's streaming Encoder) once per test
/// binary, like [`gzwrite`]; None, with a NOT RUN note, without Go (outside CI).
pub fn zstdwrite() -> Option<&'static Path> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| go_tool("zstdwrite")).as_deref()
}

/// Builds `tests/go/estargzwrite` (containerd/stargz-snapshotter's estargz package, from
/// Debian's golang-github-containerd-stargz-snapshotter-dev) once per test binary, like
/// [`gzwrite`]; None, with a NOT RUN note, without Go or that package (outside CI: CI must
/// have both, scripts/test installs them).
pub fn estargzwrite() -> Option<&'static Path> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        let pkg = "/usr/share/gocode/src/github.com/containerd/stargz-snapshotter/estargz";
        if !Path::new(pkg).is_dir() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must have {pkg} (golang-github-containerd-stargz-snapshotter-dev)"
            );
            eprintln!(
                "NOT RUN: no {pkg}; scripts/test installs \
                 golang-github-containerd-stargz-snapshotter-dev"
            );
            return None;
        }
        go_tool("estargzwrite")
    })
    .as_deref()
}

/// `go build` of `tests/go/<name>` in GOPATH mode against Debian's packages.
fn go_tool(name: &str) -> Option<PathBuf> {
    match go_build(Path::new("go"), name, env!("CARGO_CRATE_NAME")) {
        Ok(bin) => Some(bin),
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("CI must have Go to check the exact encoders: {e}")
        }
        Err(e) => {
            eprintln!("NOT RUN: no Go toolchain ({e}); scripts/test installs golang-go");
            None
        }
    }
}

/// `go build` of `tests/go/<name>` with the toolchain `go` (its own, `GOTOOLCHAIN=local`), in
/// GOPATH mode against Debian's packages, as `<target>/go/<name>-<suffix>`. Err when `go`
/// cannot be run; a failed build panics.
pub fn go_build(go: &Path, name: &str, suffix: &str) -> std::io::Result<PathBuf> {
    let dir = target_dir();
    std::fs::create_dir_all(&dir)?;
    let bin = dir.join(format!("{name}-{suffix}"));
    let status = Command::new(go)
        .args(["build", "-o"])
        .arg(&bin)
        .arg(format!("./tests/go/{name}"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOTOOLCHAIN", "local")
        .env("GOCACHE", dir.join("cache"))
        .status()?;
    assert!(
        status.success(),
        "go build of {name} with {}: {status}",
        go.display()
    );
    Ok(bin)
}

/// Run the zstdwrite fixture writer with `args` (and GOMAXPROCS if given) on `input`.
pub fn run_zstdwrite(bin: &Path, args: &[String], procs: Option<usize>, input: &[u8]) -> Vec<u8> {
    run_gzwrite(bin, args, procs, input)
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

/// Run the gzwrite fixture writer with `args` (and GOMAXPROCS if given) on `input`.
pub fn run_gzwrite(bin: &Path, args: &[String], procs: Option<usize>, input: &[u8]) -> Vec<u8> {
    let mut cmd = Command::new(bin);
    if let Some(p) = procs {
        cmd.env("GOMAXPROCS", p.to_string());
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(&data).unwrap();
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "{} {args:?} failed", bin.display());
    out.stdout
}

/// The plaintext of a raw deflate stream and every block boundary in it, from the inflater.
pub fn boundaries(deflate: &[u8]) -> (Vec<u8>, Vec<Split>) {
    let mut inf = BlockInflate::new();
    let mut plain = Vec::new();
    let mut splits = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut input = deflate;
    loop {
        let st = inf.run(input, &mut buf).unwrap();
        plain.extend_from_slice(&buf[..st.produced]);
        input = &input[st.consumed..];
        if let Some((plain, bit)) = st.boundary {
            splits.push(Split { plain, bit });
        }
        if st.stream_end {
            break;
        }
    }
    (plain, splits)
}

/// A deterministic xorshift64 random source for generated test inputs.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// An index below `n`.
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// `n` bytes: text-like (compressible) or uniform.
    pub fn bytes(&mut self, n: usize, compressible: bool) -> Vec<u8> {
        (0..n)
            .map(|_| {
                let v = self.next() as u8;
                if compressible {
                    b"abcd efgh\n"[(v % 10) as usize]
                } else {
                    v
                }
            })
            .collect()
    }
}

/// A gzip stream as Go's compress/gzip writes it at `level`, made by our Go encoder.
pub fn go_gzip(level: i32, input: &[u8]) -> Vec<u8> {
    use stowage_actors::engine::recompress::{go_gzip, GoStdVariant};
    go_gzip(GoStdVariant::Go1_8, level, input)
}
