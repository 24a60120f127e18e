//! Go's compress/gzip, reproduced bit for bit: fixtures are written at test
//! time by `tests/go/gzwrite` built with the machine's Go toolchain, and
//! every one must come out of `goflate` identical.

use std::path::Path;

use stowage_actors::engine::goflate;

mod common;
use common::{boundaries, files_under, gzwrite, ingest_and_restore, run_gzwrite};

fn go_gzip(bin: &Path, level: i32, chunk: usize, input: &[u8]) -> Vec<u8> {
    let args = [
        "-impl",
        "std",
        "-level",
        &level.to_string(),
        "-chunk",
        &chunk.to_string(),
    ];
    run_gzwrite(bin, &args.map(String::from), None, input)
}

fn our_gzip(level: i32, input: &[u8]) -> Vec<u8> {
    common::go_gzip(level, input)
}

fn assert_same(name: &str, level: i32, ours: &[u8], go: &[u8]) {
    if ours != go {
        let at = ours.iter().zip(go).position(|(a, b)| a != b);
        panic!(
            "{name} level {level}: {} bytes vs Go's {}, first difference at {at:?}",
            ours.len(),
            go.len()
        );
    }
}

fn xorshift(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn inputs() -> Vec<(&'static str, Vec<u8>)> {
    let text = files_under(&["/usr/share/common-licenses", "/usr/share/doc"], 3 << 20);
    let binaries = files_under(&["/usr/bin"], 6 << 20);
    let compressed = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&binaries[..2 << 20]).unwrap();
        e.finish().unwrap()
    };
    let mut mixed = Vec::new();
    for i in 0..40 {
        mixed.extend_from_slice(&text[i * 20_000..i * 20_000 + 9_000]);
        mixed.extend(std::iter::repeat_n(0u8, 1000 + i * 300));
        mixed.extend_from_slice(&binaries[i * 50_000..i * 50_000 + 30_000]);
        mixed.extend(xorshift(i as u64 + 1, 700));
    }
    vec![
        ("empty", Vec::new()),
        ("one byte", vec![b'x']),
        ("16 bytes", b"0123456789abcdef".to_vec()),
        ("200 bytes", text[..200].to_vec()),
        ("64 KiB", text[..65536].to_vec()),
        ("64 KiB - 1", text[..65535].to_vec()),
        ("64 KiB + 1", text[..65537].to_vec()),
        ("text", text),
        ("binaries", binaries),
        ("random", xorshift(7, 1 << 20)),
        ("zeros", vec![0u8; 3 << 20]),
        ("compressed", compressed),
        ("mixed", mixed),
    ]
}

#[test]
fn every_level_matches_go_on_every_input() {
    let Some(bin) = gzwrite() else { return };
    let inputs = inputs();
    for level in [-1].iter().chain(goflate::LEVELS.iter()) {
        for (name, input) in &inputs {
            let go = go_gzip(bin, *level, 32 * 1024, input);
            assert_same(name, *level, &our_gzip(*level, input), &go);
        }
    }
}

#[test]
fn write_sizes_do_not_matter_for_ordinary_inputs() {
    // io.Copy writes 32 KiB; tar writers hand over 512-byte headers and file
    // bodies of any size. The single-write model must give the same bytes.
    let Some(bin) = gzwrite() else { return };
    let input = files_under(&["/usr/share/doc", "/usr/lib/x86_64-linux-gnu"], 8 << 20);
    for chunk in [512, 4096, 7777, 1 << 20] {
        for level in [1, 2, 6, 9] {
            let go = go_gzip(bin, level, chunk, &input);
            assert_same(
                &format!("chunk {chunk}"),
                level,
                &our_gzip(level, &input),
                &go,
            );
        }
    }
}

#[test]
fn large_input_crosses_the_hash_offset_rebase() {
    // Go rebases its hash chains every 16 MiB of input; 300 MB crosses that
    // many times (and BestSpeed's table keeps its offsets across blocks).
    let Some(bin) = gzwrite() else { return };
    let base = files_under(&["/usr/lib", "/usr/bin", "/usr/share"], 120 << 20);
    let mut input = Vec::with_capacity(300 << 20);
    while input.len() < 300 << 20 {
        let take = base.len().min((300 << 20) - input.len());
        input.extend_from_slice(&base[..take]);
    }
    for level in [1, 6] {
        let go = go_gzip(bin, level, 32 * 1024, &input);
        assert_same("300 MB", level, &our_gzip(level, &input), &go);
        // And through ingest + restore, which re-encodes level 6 in parallel segments.
        let (label, splits, out) = ingest_and_restore(&go);
        assert_eq!(label, format!("gzip-go-{level}"));
        assert!(level != 6 || splits > 50, "{splits} split points");
        assert_same("300 MB restored", level, &out, &go);
    }
}

#[test]
fn go_layers_are_identified_and_restored_exactly() {
    let Some(bin) = gzwrite() else { return };
    let small = files_under(&["/usr/share/doc"], 300_000);
    let big = files_under(&["/usr/lib/x86_64-linux-gnu", "/usr/share/doc"], 9 << 20);
    for level in [-1].iter().chain(goflate::LEVELS.iter()) {
        for input in [&small, &big] {
            let go = go_gzip(bin, *level, 32 * 1024, input);
            let (label, splits, out) = ingest_and_restore(&go);
            let shown = if *level == -1 { 6 } else { *level };
            if input.len() > 8 << 20 && goflate::splittable(*level) {
                assert!(
                    splits > 0,
                    "level {level}: parallel restore has no split points"
                );
            }
            assert_eq!(label, format!("gzip-go-{shown}"), "{} bytes", input.len());
            assert_same(&label, *level, &out, &go);
        }
    }
}

/// Cut at the given boundaries, re-encode each part on its own and splice.
fn reencode_in_segments(level: i32, plain: &[u8], cuts: &[goflate::Split]) -> Vec<u8> {
    let total = plain.len() as u64;
    let mut out = Vec::new();
    let mut bits = 0u64;
    let mut start = goflate::Split { plain: 0, bit: 0 };
    for i in 0..=cuts.len() {
        let end = cuts.get(i).copied();
        let lo = start.plain.saturating_sub(goflate::HISTORY_BEFORE);
        let hi = end.map_or(total, |e| (e.plain + goflate::LOOKAHEAD_AFTER).min(total));
        let seg = goflate::encode_segment(
            level,
            total,
            &plain[lo as usize..hi as usize],
            lo,
            start,
            end,
        )
        .unwrap_or_else(|e| panic!("level {level} segment {i} at {start:?}: {e}"));
        goflate::splice(&mut out, &mut bits, &seg);
        if let Some(e) = end {
            start = e;
        }
    }
    out
}

#[test]
fn go_streams_reencode_exactly_from_any_block_boundary() {
    let Some(bin) = gzwrite() else { return };
    let input = files_under(&["/usr/lib/x86_64-linux-gnu", "/usr/share/doc"], 6 << 20);
    for level in [4, 5, 6, 7, 8, 9] {
        let go = go_gzip(bin, level, 32 * 1024, &input);
        let body = &go[10..go.len() - 8];
        let (plain, all) = boundaries(body);
        assert_eq!(plain, input);
        // Every usable boundary (not in the last 64 KiB), each segment one block.
        let cuts: Vec<_> = all
            .iter()
            .copied()
            .filter(|s| s.plain + 2 * 32768 < plain.len() as u64)
            .collect();
        assert!(cuts.len() > 20, "level {level}: {} blocks", cuts.len());
        let out = reencode_in_segments(level, &plain, &cuts);
        assert_same("segments", level, &out, body);
    }
}

/// Single-core MB/s per level, ours against Go's (GOMAXPROCS=1), on a tar of libraries or the
/// file named by `GOFLATE_BENCH_INPUT`. Run with
/// `cargo test --release -p stowage-actors --test goflate -- --ignored --nocapture throughput`.
#[test]
#[ignore]
fn throughput() {
    let Some(bin) = gzwrite() else { return };
    let input = match std::env::var_os("GOFLATE_BENCH_INPUT") {
        Some(p) => std::fs::read(p).unwrap(),
        None => files_under(&["/usr/lib/x86_64-linux-gnu"], 48 << 20),
    };
    let mb = input.len() as f64 / 1e6;
    eprintln!("{mb:.0} MB input; MB/s, single core");
    for level in goflate::LEVELS {
        let t = std::time::Instant::now();
        let ours = our_gzip(level, &input);
        let ours_s = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        let args = ["-impl", "std", "-level", &level.to_string()];
        let go = run_gzwrite(bin, &args.map(String::from), Some(1), &input);
        let go_s = t.elapsed().as_secs_f64();
        assert_same("throughput input", level, &ours, &go);
        eprintln!(
            "level {level:>2}: ours {:>6.1}  Go {:>6.1}",
            mb / ours_s,
            mb / go_s
        );
    }
}

/// A restore whose plaintext ends early (corrupt chunks) must end with a short stream that
/// fails the digest check, not a panic in the parallel re-encoders.
#[test]
fn truncated_plaintext_ends_the_stream_without_panicking() {
    use stowage_actors::engine::kpflate;
    use stowage_actors::engine::recompress::{Compression, LayerDecoder, Reencoder};
    let input = files_under(&["/usr/lib/x86_64-linux-gnu", "/usr/share/doc"], 10 << 20);
    let go = our_gzip(6, &input);
    let pg = {
        let mut v = kpflate::pgzip_header(-1).to_vec();
        v.extend(kpflate::pgzip_deflate(-1, kpflate::PGZIP_DEFAULT_BLOCK, &input).unwrap());
        let mut crc = flate2::Crc::new();
        crc.update(&input);
        v.extend(crc.sum().to_le_bytes());
        v.extend((input.len() as u32).to_le_bytes());
        v
    };
    for gz in [go, pg] {
        let mut d = LayerDecoder::new(Compression::detect(&gz));
        d.feed(&gz, &mut |_| {}).unwrap();
        let enc = d.finish().unwrap();
        let mut r = Reencoder::new(&enc);
        let mut out = Vec::new();
        r.push(&input[..input.len() / 2], &mut out);
        r.finish(&mut out);
        assert!(out.len() < gz.len(), "{}: {} bytes", enc.label(), out.len());
    }
}
