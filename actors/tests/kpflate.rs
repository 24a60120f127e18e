//! klauspost/pgzip (and klauspost/compress/gzip) reproduced bit for bit: every
//! fixture is compressed at test time by `tests/go/gzwrite -impl pgzip` (or
//! `kpgzip`; built with the machine's Go toolchain against
//! GOPATH=/usr/share/gocode) and `kpflate` must produce the identical gzip member.
//!
//! The throughput comparison is `#[ignore]`d; run it with
//! `cargo test --release -p stowage-actors --test kpflate -- --ignored --nocapture`.

use std::path::{Path, PathBuf};
use std::time::Instant;

mod common;
use common::{gzwrite, ingest_and_restore, run_gzwrite};

use stowage_actors::engine::kpflate::{
    pgzip_block, pgzip_deflate, pgzip_deflate_parallel, pgzip_gzip, pgzip_header, KpError,
    PGZIP_DEFAULT_BLOCK, PGZIP_TAIL,
};

/// Every level pgzip accepts: HuffmanOnly, default (= 5), stored, 1..=9.
const LEVELS: [i32; 12] = [-2, -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9];

/// pgzip's output for `input`; `block` 0 keeps the library default, `blocks`
/// 0 the default concurrency.
fn go_pgzip(bin: &Path, level: i32, block: usize, blocks: usize, input: &[u8]) -> Vec<u8> {
    go_pgzip_procs(bin, level, block, blocks, None, input)
}

/// Like [`go_pgzip`], optionally with GOMAXPROCS set.
fn go_pgzip_procs(
    bin: &Path,
    level: i32,
    block: usize,
    blocks: usize,
    procs: Option<usize>,
    input: &[u8],
) -> Vec<u8> {
    let args = [
        "-impl".to_string(),
        "pgzip".into(),
        "-level".into(),
        level.to_string(),
        "-block".into(),
        block.to_string(),
        "-blocks".into(),
        blocks.to_string(),
    ];
    run_gzwrite(bin, &args, procs, input)
}

fn assert_same(name: &str, level: i32, block: usize, ours: &[u8], go: &[u8]) {
    if ours != go {
        let at = ours.iter().zip(go).position(|(a, b)| a != b);
        panic!(
            "{name} level {level} block {block}: {} bytes vs pgzip's {}, first difference at {at:?}",
            ours.len(),
            go.len()
        );
    }
}

/// Compares one input at the given levels with the default block size and,
/// for inputs of a few blocks, a small block size too.
fn check(bin: &Path, name: &str, input: &[u8], levels: &[i32]) {
    for &level in levels {
        let go = go_pgzip(bin, level, 0, 0, input);
        let ours = pgzip_gzip(level, PGZIP_DEFAULT_BLOCK, input).unwrap();
        assert_same(name, level, PGZIP_DEFAULT_BLOCK, &ours, &go);
    }
    eprintln!("{name}: {} bytes exact at levels {levels:?}", input.len());
}

fn check_block(bin: &Path, name: &str, input: &[u8], block: usize, levels: &[i32]) {
    for &level in levels {
        let go = go_pgzip(bin, level, block, 4, input);
        let ours = pgzip_gzip(level, block, input).unwrap();
        assert_same(name, level, block, &ours, &go);
    }
    eprintln!(
        "{name}: {} bytes in blocks of {block} exact at levels {levels:?}",
        input.len()
    );
}

/// Deterministic pseudo-random bytes (xorshift64*).
fn random(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Plain files under `dir` (recursively, sorted), up to `cap` bytes in all.
fn files(dir: &Path, cap: usize, filter: &dyn Fn(&Path) -> bool) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            let Ok(md) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if md.is_dir() {
                walk(&p, out);
            } else if md.is_file() {
                out.push(p);
            }
        }
    }
    let mut all = Vec::new();
    walk(dir, &mut all);
    let mut total = 0;
    let mut picked = Vec::new();
    for p in all.into_iter().filter(|p| filter(p)) {
        let Ok(md) = std::fs::metadata(&p) else {
            continue;
        };
        if total + md.len() as usize > cap {
            continue;
        }
        if std::fs::File::open(&p).is_err() {
            continue;
        }
        total += md.len() as usize;
        picked.push(p);
    }
    picked
}

/// Concatenated licences and plain-text documentation.
fn text(cap: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let docs = files(Path::new("/usr/share/common-licenses"), cap, &|_| true)
        .into_iter()
        .chain(files(Path::new("/usr/share/doc"), cap, &|p| {
            p.extension().is_none_or(|e| e != "gz")
        }));
    for p in docs {
        if out.len() >= cap {
            break;
        }
        out.extend(std::fs::read(p).unwrap_or_default());
    }
    out.truncate(cap);
    out
}

/// A tar of regular files from `dir` whose names start with one of `prefixes`.
fn tar_of(dir: &str, prefixes: &str, cap: usize) -> Vec<u8> {
    let picked = files(Path::new(dir), cap, &|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.chars().next())
            .is_some_and(|c| prefixes.contains(c))
    });
    let mut b = tar::Builder::new(Vec::new());
    for p in picked {
        let name = p.strip_prefix("/").unwrap();
        b.append_path_with_name(&p, name).unwrap();
    }
    b.into_inner().unwrap()
}

/// An already compressed file (the biggest changelog.gz we can find).
fn gz_file() -> Vec<u8> {
    let mut best: Option<(u64, PathBuf)> = None;
    for p in files(Path::new("/usr/share/doc"), usize::MAX, &|p| {
        p.extension().is_some_and(|e| e == "gz")
    }) {
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        if best.as_ref().is_none_or(|(l, _)| len > *l) {
            best = Some((len, p));
        }
    }
    let mut data = std::fs::read(best.expect("a .gz under /usr/share/doc").1).unwrap();
    // Make it span a few blocks.
    while data.len() < 3 << 20 {
        data.extend_from_within(..data.len().min(1 << 20));
    }
    data
}

#[test]
fn header_and_framing() {
    assert_eq!(
        pgzip_header(-1),
        [0x1f, 0x8b, 8, 0, 0x00, 0x09, 0x6e, 0x88, 0, 255]
    );
    assert_eq!(pgzip_header(9)[8], 2);
    assert_eq!(pgzip_header(1)[8], 4);
    assert_eq!(pgzip_header(6)[8], 0);
    for level in LEVELS {
        // Empty input: an empty stored block (sync marker), then an empty final fixed block.
        assert_eq!(
            pgzip_deflate(level, PGZIP_DEFAULT_BLOCK, b"").unwrap(),
            [0, 0, 0, 0xff, 0xff, 3, 0]
        );
    }
    assert_eq!(
        pgzip_deflate(10, PGZIP_DEFAULT_BLOCK, b""),
        Err(KpError::Level(10))
    );
    assert_eq!(
        pgzip_deflate(-3, PGZIP_DEFAULT_BLOCK, b""),
        Err(KpError::Level(-3))
    );
    assert_eq!(
        pgzip_deflate(6, PGZIP_TAIL, b"x"),
        Err(KpError::BlockSize(PGZIP_TAIL))
    );
    let mut out = vec![1, 2, 3];
    assert_eq!(
        pgzip_block(11, b"", b"abc", true, &mut out),
        Err(KpError::Level(11))
    );
    assert_eq!(out, [1, 2, 3]);

    // The body is the concatenation of the blocks, each byte aligned.
    let input = text(3 << 20);
    let block = 100_000;
    let whole = pgzip_deflate(6, block, &input).unwrap();
    let mut parts = Vec::new();
    let mut start = 0;
    loop {
        let end = (start + block).min(input.len());
        let dict = if start == 0 {
            &input[..0]
        } else {
            &input[start - PGZIP_TAIL..start]
        };
        let last = end - start < block;
        pgzip_block(6, dict, &input[start..end], last, &mut parts).unwrap();
        if last {
            break;
        }
        start = end;
    }
    assert_eq!(whole, parts);
    assert_eq!(whole, pgzip_deflate_parallel(6, block, &input).unwrap());

    // And it inflates back.
    let gz = pgzip_gzip(-1, block, &input).unwrap();
    let mut back = Vec::new();
    use std::io::Read;
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(back, input);
}

#[test]
fn small_and_edge_sizes() {
    let Some(bin) = gzwrite() else { return };
    let text = text(3 << 20);
    check(bin, "empty", b"", &LEVELS);
    check(bin, "one byte", b"x", &LEVELS);
    for len in [2, 12, 13, 32, 33, 100, 127, 128, 129, 1000, 16384, 16385] {
        check(bin, &format!("text[..{len}]"), &text[..len], &LEVELS);
    }
    for len in [
        32767, 32768, 32769, 65534, 65535, 65536, 65537, 131070, 200_000,
    ] {
        check(bin, &format!("text[..{len}]"), &text[..len], &LEVELS);
    }
    check(bin, "64 KiB", &text[..64 << 10], &LEVELS);
    check(bin, "1 MiB", &text[..1 << 20], &LEVELS);
    check(bin, "1 MiB + 1", &text[..(1 << 20) + 1], &LEVELS);
    check(bin, "2 MiB", &text[..2 << 20], &LEVELS);
    // Final block exactly a block, and a final block of at most the tail size.
    check_block(bin, "2 blocks exactly", &text[..40_000], 20_000, &LEVELS);
    check_block(bin, "short last block", &text[..40_100], 20_000, &LEVELS);
    check_block(bin, "many blocks", &text[..1 << 20], 16_385, &LEVELS);
}

#[test]
fn random_bytes() {
    let Some(bin) = gzwrite() else { return };
    let data = random(3 << 20, 0x1234_5678);
    check(bin, "random", &data, &LEVELS);
    // Random with some repeats: stresses the stored/Huffman/dynamic choices.
    let mut mixed = Vec::new();
    for i in 0..40 {
        let chunk = random(30_000 + i * 997, i as u64 + 7);
        mixed.extend_from_slice(&chunk);
        let from = mixed.len() / 3;
        mixed.extend_from_within(from..from + 5000 + i * 13);
    }
    check(bin, "random+repeats", &mixed, &LEVELS);
    check_block(bin, "random+repeats", &mixed, 70_000, &LEVELS);
}

#[test]
fn text_files() {
    let Some(bin) = gzwrite() else { return };
    let data = text(6 << 20);
    check(bin, "text", &data, &LEVELS);
}

#[test]
fn tar_of_binaries() {
    let Some(bin) = gzwrite() else { return };
    let data = tar_of("/usr/bin", "abc", 8 << 20);
    check(bin, "tar /usr/bin/[abc]*", &data, &LEVELS);
}

#[test]
fn compressed_data() {
    let Some(bin) = gzwrite() else { return };
    check(bin, "changelog.gz", &gz_file(), &LEVELS);
}

#[test]
fn zeros_and_runs() {
    let Some(bin) = gzwrite() else { return };
    check(bin, "zeros", &vec![0u8; 3 << 20], &LEVELS);
    check(bin, "zeros 64 KiB", &[0u8; 65536], &LEVELS);
    let mut runs = Vec::new();
    for i in 0..3000u32 {
        runs.extend(std::iter::repeat_n((i % 7) as u8, (i as usize * 37) % 1500));
        runs.extend_from_slice(&i.to_le_bytes());
    }
    check(bin, "runs", &runs, &LEVELS);
}

/// Seeded mixtures of text, noise, zeros and self-repeats at random sizes and
/// block sizes: exercises stored/fixed/dynamic choices and table reuse.
/// Set `KPFLATE_MIXTURES=n` for a longer soak than the default 12 cases.
#[test]
fn mixtures() {
    let Some(bin) = gzwrite() else { return };
    let text = text(2 << 20);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: u64| {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        seed.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    };
    // KPFLATE_MIXTURES=n runs more cases (a longer soak).
    let cases = std::env::var("KPFLATE_MIXTURES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    for case in 0..cases {
        let target = next(600_000) as usize + 1;
        let mut data = Vec::with_capacity(target);
        while data.len() < target {
            let len = next(20_000) as usize + 1;
            match next(5) {
                0 => {
                    let at = next((text.len() - len) as u64) as usize;
                    data.extend_from_slice(&text[at..at + len]);
                }
                1 => data.extend(random(len, next(u64::MAX))),
                2 => data.extend(std::iter::repeat_n(next(256) as u8, len)),
                3 if !data.is_empty() => {
                    let at = next(data.len() as u64) as usize;
                    let end = (at + len).min(data.len());
                    data.extend_from_within(at..end);
                }
                _ => {
                    // Text with a small alphabet, few distinct symbols.
                    let alphabet = next(6) + 2;
                    data.extend((0..len).map(|_| b'a' + next(alphabet) as u8));
                }
            }
        }
        data.truncate(target);
        let block = PGZIP_TAIL + 1 + next(150_000) as usize;
        check_block(bin, &format!("mixture {case}"), &data, block, &LEVELS);
    }
}

/// 20-40 MB of real files at the default level (and level 9 on part of it).
#[test]
fn large_default_level() {
    let Some(bin) = gzwrite() else { return };
    let data = tar_of(
        "/usr/lib/x86_64-linux-gnu",
        "abcdefghijklmnopqrstuvwxyz",
        32 << 20,
    );
    assert!(
        data.len() > 20 << 20,
        "only {} bytes of libraries",
        data.len()
    );
    check(bin, "tar of libraries", &data, &[-1]);
    let go = go_pgzip(bin, -1, 0, 0, &data);
    let par = pgzip_deflate_parallel(-1, PGZIP_DEFAULT_BLOCK, &data).unwrap();
    assert_eq!(&go[10..go.len() - 8], &par[..]);
    check(bin, "tar of libraries[..8 MiB]", &data[..8 << 20], &[6, 9]);
}

/// Single-core MB/s per level, ours against Go's. pgzip keeps two blocks in
/// flight even with `-blocks 1`, so Go also runs with GOMAXPROCS=1. The input
/// is a tar of libraries, or the file named by `KPFLATE_BENCH_INPUT`.
#[test]
#[ignore]
fn throughput() {
    let Some(bin) = gzwrite() else { return };
    let (what, data) = match std::env::var_os("KPFLATE_BENCH_INPUT") {
        Some(p) => (p.to_string_lossy().into_owned(), std::fs::read(&p).unwrap()),
        None => (
            "tar of libraries".to_string(),
            tar_of(
                "/usr/lib/x86_64-linux-gnu",
                "abcdefghijklmnopqrstuvwxyz",
                64 << 20,
            ),
        ),
    };
    let mb = data.len() as f64 / 1e6;
    eprintln!("input: {what}, {mb:.1} MB");
    let levels: Vec<i32> = match std::env::var("KPFLATE_BENCH_LEVELS") {
        Ok(l) => l.split(',').map(|x| x.trim().parse().unwrap()).collect(),
        Err(_) => LEVELS.to_vec(),
    };
    for level in levels {
        let t = Instant::now();
        let go = go_pgzip_procs(bin, level, PGZIP_DEFAULT_BLOCK, 1, Some(1), &data);
        let go_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let ours = pgzip_gzip(level, PGZIP_DEFAULT_BLOCK, &data).unwrap();
        let ours_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let par = pgzip_deflate_parallel(level, PGZIP_DEFAULT_BLOCK, &data).unwrap();
        let par_s = t.elapsed().as_secs_f64();
        assert_same(&what, level, PGZIP_DEFAULT_BLOCK, &ours, &go);
        assert_eq!(&ours[10..ours.len() - 8], &par[..]);
        eprintln!(
            "level {level:>2}: ours {:>6.1} MB/s (parallel {:>6.1}), Go GOMAXPROCS=1 {:>6.1} MB/s, ratio {:.3}",
            mb / ours_s,
            mb / par_s,
            mb / go_s,
            ours.len() as f64 / data.len() as f64
        );
    }
}

/// podman, buildah, skopeo and umoci layers: identified at ingest as pgzip and restored
/// exactly (blocks re-encoded in parallel), including sizes around the block size.
#[test]
fn pgzip_layers_are_identified_and_restored_exactly() {
    let Some(bin) = gzwrite() else { return };
    let data = tar_of("/usr/lib/x86_64-linux-gnu", "lmnop", 6 << 20);
    let cases: Vec<(&str, &[u8])> = vec![
        ("empty", &data[..0]),
        ("100 KB", &data[..100_000]),
        ("one block", &data[..PGZIP_DEFAULT_BLOCK]),
        ("two blocks + 1", &data[..2 * PGZIP_DEFAULT_BLOCK + 1]),
        ("whole", &data[..]),
    ];
    for level in [-1, 1, 6, 9] {
        for (name, input) in &cases {
            let go = go_pgzip(bin, level, 0, 0, input);
            let (label, _, out) = ingest_and_restore(&go);
            // Small inputs can come out the same at several levels: any of them is exact.
            assert!(label.starts_with("gzip-pgzip-"), "{name}: {label}");
            if *name == "whole" {
                let shown = if level == -1 { 5 } else { level };
                assert_eq!(label, format!("gzip-pgzip-{shown}"), "{name}");
            }
            assert_same(name, level, PGZIP_DEFAULT_BLOCK, &out, &go);
        }
    }
    // umoci: SetConcurrency(256 KiB, 2 * NumCPU).
    for block in [256 << 10, 512 << 10] {
        let go = go_pgzip(bin, -1, block, 4, &data);
        let (label, _, out) = ingest_and_restore(&go);
        assert_eq!(label, "gzip-pgzip-5", "{block}-byte blocks");
        assert_same("umoci-style blocks", -1, block, &out, &go);
    }
}

/// klauspost/compress/gzip (klauspost's flate as one stream, no pgzip blocks, under pgzip's
/// header): identified at ingest as such at every level and restored exactly.
#[test]
fn kpgzip_layers_are_identified_and_restored_exactly() {
    let Some(bin) = gzwrite() else { return };
    let data = tar_of("/usr/lib/x86_64-linux-gnu", "lmnop", 6 << 20);
    for level in LEVELS {
        for (name, len) in [("empty", 0), ("100 KB", 100_000), ("whole", data.len())] {
            let args = ["-impl", "kpgzip", "-level", &level.to_string()].map(String::from);
            let go = run_gzwrite(bin, &args, None, &data[..len]);
            let (label, _, out) = ingest_and_restore(&go);
            if name == "whole" {
                let shown = if level == -1 { 5 } else { level };
                assert_eq!(label, format!("gzip-kp-{shown}"), "{name}");
            } else {
                // Small inputs can come out the same at several levels, or as pgzip's one block.
                assert!(label.starts_with("gzip-"), "{name} level {level}: {label}");
            }
            assert_same(name, level, 0, &out, &go);
        }
    }
}
