//! zstd layers as container tools write them, through ingest (decompress, identify the
//! encoder frame by frame) and restore (re-encode), bit for bit: klauspost/compress/zstd
//! streams written by `tests/go/zstdwrite` (built at test time against Debian's
//! golang-github-klauspost-compress-dev, what Debian's skopeo, podman and buildah link),
//! zstd:chunked's frame-per-file shape with skippable frames, and the `zstd` CLI.

mod common;
use common::{files_under, ingest_and_restore, run_zstdwrite, zstdwrite};

use std::process::{Command, Stdio};

/// Real files of this machine: text, binaries, already-compressed bits.
fn corpus(n: usize) -> Vec<u8> {
    files_under(&["/usr/share/doc", "/usr/lib/x86_64-linux-gnu"], n)
}

fn go(bin: &std::path::Path, level: &str, script: Option<&str>, input: &[u8]) -> Vec<u8> {
    let mut args = vec!["-level".to_string(), level.to_string()];
    if let Some(s) = script {
        args.push("-script".into());
        args.push(s.into());
    }
    run_zstdwrite(bin, &args, None, input)
}

fn assert_exact(name: &str, stream: &[u8], want_labels: &[String]) {
    let (label, _, out) = ingest_and_restore(stream);
    assert!(
        want_labels.contains(&label),
        "{name}: encoded as {label}, expected one of {want_labels:?}"
    );
    if out != stream {
        let at = out.iter().zip(stream).position(|(a, b)| a != b);
        panic!(
            "{name}: re-encoded {} bytes vs {}, first difference at {at:?}",
            out.len(),
            stream.len()
        );
    }
}

#[test]
fn klauspost_streams_at_each_level_and_size() {
    let Some(bin) = zstdwrite() else { return };
    let big = corpus(24 << 20);
    let levels = ["default", "fastest", "better", "best"];
    for level in levels {
        let label = format!("zstd-kp-{level}");
        for n in [1, 100, 1500, 131_072, 131_073, 5_000_000, big.len()] {
            let input = &big[big.len() - n..];
            let z = go(bin, level, None, input);
            // Small inputs can come out the same at several levels (and releases); stowage
            // names the first it tries that writes these very bytes, so under a block any
            // level is right as long as the bytes are.
            let same: Vec<String> = levels
                .iter()
                .filter(|l| **l == level || n < 131_072)
                .map(|l| format!("zstd-kp-{l}"))
                .collect();
            assert_exact(&format!("{level} {n} bytes"), &z, &same);
        }
        // Flushed before closing (zstd:chunked's last frame does that), and a frame that
        // declares its size up front (ResetContentSize).
        let input = &big[..9_000_000];
        let z = go(bin, level, Some("w,f,c"), input);
        assert_exact(
            &format!("{level} flushed"),
            &z,
            std::slice::from_ref(&label),
        );
        let z = go(bin, level, Some("rs:9000000,w,c"), input);
        assert_exact(
            &format!("{level} content size"),
            &z,
            std::slice::from_ref(&label),
        );
        // containers/image compressing from local storage (podman, buildah push): the 8
        // bytes it peeked at are written, then the rest is copied in (ReadFrom).
        let z = go(bin, level, Some("w:8,rf,c"), input);
        assert_exact(
            &format!("{level} Write(8), ReadFrom"),
            &z,
            std::slice::from_ref(&label),
        );
    }
}

/// A layer of hundreds of megabytes, as a base image's is: one frame of many blocks, written
/// by the default level with the window sliding over its whole length.
#[test]
fn klauspost_stream_of_hundreds_of_megabytes() {
    let Some(bin) = zstdwrite() else { return };
    let input = files_under(&["/usr/lib", "/usr/share"], 256 << 20);
    assert!(input.len() > 200 << 20, "{} bytes of files", input.len());
    let z = go(bin, "default", None, &input);
    assert_exact(
        &format!("default {} bytes", input.len()),
        &z,
        &["zstd-kp-default".to_string()],
    );
}

/// containers/storage's zstd:chunked writer: a frame per file's payload (restartCompression:
/// Close, Reset), tar headers in the frames between, `Write; Flush; Close` at the end, then
/// the table of contents and the footer as skippable frames.
#[test]
fn zstd_chunked_shape() {
    let Some(bin) = zstdwrite() else { return };
    let data = corpus(12 << 20);
    let sizes = [
        512usize, 300, 512, 70_000, 1024, 4_000_000, 512, 1, 512, 200_000,
    ];
    let mut script = Vec::new();
    for n in sizes {
        script.push(format!("w:{n}"));
        script.push("c".into());
        script.push("r".into());
    }
    script.push("w:1024,f,c".into());
    let total: usize = sizes.iter().sum::<usize>() + 1024;
    let mut stream = go(bin, "default", Some(&script.join(",")), &data[..total]);
    for payload in [&b"{\"version\":1,\"entries\":[]}"[..], &[7u8; 40][..]] {
        stream.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18]);
        stream.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        stream.extend_from_slice(payload);
    }
    assert_exact("zstd:chunked", &stream, &["zstd-kp-default".to_string()]);
}

/// libzstd's multi-threaded mode, as the `zstd` CLI of the libzstd stowage links (1.5.7)
/// writes a file by default (checksum, size in the header, jobs of `2^(windowLog + 2)`
/// bytes), on real files: several jobs, and one job at level 19.
#[test]
fn multithreaded_libzstd_frames_of_real_files() {
    use std::io::Write;
    let data = corpus(12 << 20);
    for (level, n) in [(3, data.len()), (1, 5 << 20), (19, 3 << 20)] {
        let input = &data[..n];
        let mut z = zstd::stream::write::Encoder::new(Vec::new(), level).unwrap();
        z.multithread(2).unwrap();
        z.include_checksum(true).unwrap();
        z.set_pledged_src_size(Some(n as u64)).unwrap();
        z.write_all(input).unwrap();
        let stream = z.finish().unwrap();
        assert_exact(
            &format!("libzstd -{level} multi-threaded, {n} bytes"),
            &stream,
            &[format!("zstd-{level}-mt")],
        );
    }
}

/// Whether a `zstd` CLI of this libzstd release writes bytes stowage re-creates at `level`
/// (see `actors/src/engine/zstd_frames/libzstd.rs`); None for a release not checked. Levels
/// 3-4 of the releases before 1.5.7 go through the port of their match finder
/// (`dfast_writer.rs`): not with `--long`. Levels 5-12 of 1.5.4 and 16-19 of 1.5.4-1.5.5 go
/// through the ports of their lazy match finders (`lazy.rs`) and optimal parser (`opt.rs`): not
/// with `--long`.
fn cli_reproduced(version: &str, level: i32, args: &[&str]) -> Option<bool> {
    let levels: Vec<i32> = match version {
        "1.5.7" => return Some(true),
        "1.5.6" => (1..=19).collect(),
        "1.5.5" => (1..=15).collect(),
        "1.5.4" => (1..=4).chain(13..=15).collect(),
        "1.5.2" => (13..=15).collect(),
        _ => return None,
    };
    let long = args.contains(&"--long");
    if cli_ported(version, level).is_some() {
        return Some(!long);
    }
    Some(levels.contains(&level) && !((3..=4).contains(&level) && long))
}

/// The label's suffix (`-1.5.4`, `-1.5.5`, not `-fixed`) where frames of this release at
/// `level` are re-created by the port of its match finder.
fn cli_ported(version: &str, level: i32) -> Option<&'static str> {
    match level {
        5..=12 if version == "1.5.4" => Some("-1.5.4"),
        16..=19 if ["1.5.4", "1.5.5"].contains(&version) => Some("-1.5.5"),
        _ => None,
    }
}

/// The `zstd` CLI's libzstd release, from `zstd --version` ("... v1.5.4, by Yann Collet ***").
fn cli_version() -> Option<String> {
    let out = Command::new("zstd").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = text.split_whitespace().find(|w| w.starts_with("v1."))?;
    Some(v.trim_start_matches('v').trim_end_matches(',').to_string())
}

/// Debian's `zstd` CLI (1.5.4 on Debian 12): its frames are re-created where its release writes
/// 1.5.7's bytes with fixed blocks (levels 1-2 and 13-15 for 1.5.4), at 3-4 and 16-19 through
/// the ports of its match finders, multi-threaded as the CLI runs by default and
/// single-threaded, with `--long` and without, from a pipe and from a file; at the other
/// levels they are refused with a reason that names what was tried, never restored wrong.
#[test]
fn zstd_cli_frames_are_reproduced_or_refused_with_a_reason() {
    let Some(version) = cli_version() else {
        assert!(std::env::var_os("CI").is_none(), "CI installs zstd");
        eprintln!("NOT RUN: no zstd CLI");
        return;
    };
    eprintln!("zstd CLI {version}");
    let big = corpus(20 << 20);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("layer.tar");
    // From a pipe (no content size), except the `FILE` cases: with a file the header holds
    // its size, and with `--long` the frame is then a single segment without a window.
    for args in [
        &["-1"][..],
        &["-1", "--single-thread"],
        &["-2"],
        &["-3"],
        &["-13"],
        &["-19"],
        &["-19", "FILE"],
        &["-16", "FILE", "BIG"],
        &["-18", "--single-thread", "FILE"],
        &["-17", "--single-thread"],
        &["-19", "--single-thread", "BIG"],
        &["-5"],
        &["-8", "FILE", "BIG"],
        &["-12", "--single-thread", "FILE", "BIG"],
        &["-6", "--single-thread"],
        &["--long", "-1"],
        &["--long", "-13", "FILE"],
        &["--long", "-19"],
        &["-3", "FILE"],
        &["-3", "BIG"],
        &["-4", "FILE", "BIG"],
        &["-3", "--single-thread"],
        &["-4", "--single-thread", "FILE", "BIG"],
        &["-4", "--single-thread", "FILE", "SMALL"],
        &["--long", "-3"],
        // One block from a pipe: the CLI hands the data over, then the end.
        &["-3", "TINY"],
        &["-3", "--single-thread", "TINY"],
        &["-7", "TINY"],
    ] {
        // 3 MiB, 20 MiB (several multi-threaded jobs at -3), 1.5 MiB or 100 kB.
        let len = if args.contains(&"BIG") {
            20 << 20
        } else if args.contains(&"SMALL") {
            1_500_000
        } else if args.contains(&"TINY") {
            100_000
        } else {
            3 << 20
        };
        let data = &big[..len];
        let level: i32 = args
            .iter()
            .find_map(|a| a.strip_prefix('-')?.parse().ok())
            .unwrap();
        let from_file = args.contains(&"FILE");
        if from_file {
            std::fs::write(&file, data).unwrap();
        }
        let mut child = Command::new("zstd")
            .args(["-q", "-c"])
            .args(
                args.iter()
                    .filter(|a| !["FILE", "BIG", "SMALL", "TINY"].contains(a)),
            )
            .args(from_file.then_some(&file))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = if from_file { Vec::new() } else { data.to_vec() };
        let w = std::thread::spawn(move || {
            use std::io::Write;
            stdin.write_all(&input).unwrap();
        });
        let out = child.wait_with_output().unwrap();
        w.join().unwrap();
        let stream = out.stdout;
        use stowage_actors::engine::recompress::{Compression, LayerDecoder, Reencoder};
        let mut d = LayerDecoder::new(Compression::detect(&stream));
        let mut raw = Vec::new();
        let fed = d.feed(&stream, &mut |b| raw.extend_from_slice(b));
        let reencoded = |enc: &stowage_actors::engine::recompress::Encoding| {
            let mut r = Reencoder::new(enc);
            let mut back = Vec::new();
            r.push(&raw, &mut back);
            r.finish(&mut back);
            back
        };
        // As verify-before-discard: the encoding found, else the others that wrote the
        // beginning alike, in turn (a multi-threaded frame at levels 16-19 begins as the
        // single-threaded one does for a window of 4-8 MiB).
        let found = fed
            .and_then(|_| d.finish_with_alternatives())
            .map(|(enc, others)| {
                std::iter::once(enc.clone())
                    .chain(others)
                    .find(|e| reencoded(e) == stream)
                    .ok_or(enc)
            });
        let reproduced = match found {
            Ok(Err(enc)) => {
                eprintln!("zstd {args:?}: raw: found {} but differs", enc.label());
                false
            }
            Ok(Ok(enc)) => {
                let label = enc.label();
                eprintln!("zstd {args:?}: reproduced as {label}");
                let mt = if args.contains(&"--single-thread") {
                    ""
                } else {
                    "-mt"
                };
                let long = if args.contains(&"--long") {
                    "-long"
                } else {
                    ""
                };
                let fixed = if version == "1.5.7" {
                    ""
                } else {
                    cli_ported(&version, level).unwrap_or("-fixed")
                };
                assert!(
                    label == format!("zstd-{level}{long}{mt}{fixed}")
                        || label == format!("zstd-{level}{long}{fixed}")
                        // Single-threaded within one window: one job's frame.
                        || (cli_ported(&version, level).is_some()
                            && label == format!("zstd-{level}{long}-mt{fixed}")),
                    "zstd {version} {args:?}: {label}"
                );
                true
            }
            Err(e) => {
                let reason = e.to_string();
                assert!(reason.contains("libzstd 1.5.7"), "{reason}");
                assert!(reason.contains("1.5.4 at 1-4 and 13-15"), "{reason}");
                assert!(reason.contains("checksum"), "{reason}");
                eprintln!("zstd {args:?}: raw: {reason}");
                false
            }
        };
        if let Some(expected) = cli_reproduced(&version, level, args) {
            assert_eq!(reproduced, expected, "zstd {version} {args:?}");
        }
    }
}

/// A stream of frames, one per file, as `zstd -c FILE...` writes it. Each frame declares
/// its size, and the size picks the strategy: at level 4 a 140 kB file's frame is `greedy`
/// and a 1.2 MB one's `dfast`, at level 12 a 138-byte one's `btopt`. Ingest keeps every
/// writer that wrote the first frames alike, including the ones whose match finder is ported,
/// until a frame tells them apart, here after its first 64 (`WEIGH_FRAMES`). Each frame is
/// then re-encoded by the writer its size calls for. With libzstd 1.5.7 (linked) or 1.5.4
/// (Debian 12's CLI), every level tried is exact. Other releases are printed, not judged.
/// Before 2026-12-06 Debian's 1.5.4 streams of this shape were refused at each level tried
/// (1-4, 9, 12, 15): "a later zstd frame is not written like the first".
#[test]
fn zstd_cli_frames_one_per_file_are_reproduced() {
    let Some(version) = cli_version() else {
        assert!(std::env::var_os("CI").is_none(), "CI installs zstd");
        eprintln!("NOT RUN: no zstd CLI");
        return;
    };
    let judged = ["1.5.4", "1.5.7"].contains(&version.as_str());
    let big = corpus(4 << 20);
    // 70 small files first (beyond the 64 frames weighed), then larger ones.
    let mut sizes: Vec<usize> = (0..70)
        .map(|i| [138, 3_040, 700, 11_861, 60][i % 5])
        .collect();
    sizes.extend([40_000, 142_384, 300_000, 1_200_000]);
    let dir = tempfile::tempdir().unwrap();
    let (mut files, mut at) = (Vec::new(), 0);
    for (i, n) in sizes.iter().enumerate() {
        let f = dir.path().join(format!("f{i:03}"));
        std::fs::write(&f, &big[at..at + n]).unwrap();
        at += n;
        files.push(f);
    }
    for level in [2, 4, 9, 12, 15, 19] {
        // Level 19 re-encodes at about 2 MB/s: its stream leaves the largest file out.
        let files = &files[..files.len() - usize::from(level == 19)];
        let out = Command::new("zstd")
            .args(["-q", "-c", &format!("-{level}")])
            .args(files)
            .output()
            .unwrap();
        assert!(out.status.success());
        let stream = out.stdout;
        use stowage_actors::engine::recompress::{Compression, LayerDecoder, Reencoder};
        let mut d = LayerDecoder::new(Compression::detect(&stream));
        let mut raw = Vec::new();
        let found = d
            .feed(&stream, &mut |b| raw.extend_from_slice(b))
            .and_then(|_| d.finish_with_alternatives());
        // As verify-before-discard: the encoding found, else the others in turn.
        let exact = found.as_ref().ok().and_then(|(enc, others)| {
            std::iter::once(enc).chain(others).find(|e| {
                let mut r = Reencoder::new(e);
                let mut back = Vec::new();
                r.push(&raw, &mut back);
                r.finish(&mut back);
                back == stream
            })
        });
        match (&found, exact) {
            (_, Some(enc)) => eprintln!("zstd {version} -{level}: exact as {}", enc.label()),
            (Ok((enc, _)), None) => {
                eprintln!("zstd {version} -{level}: found {} but differs", enc.label())
            }
            (Err(e), None) => eprintln!("zstd {version} -{level}: raw: {e}"),
        }
        if judged {
            assert!(
                exact.is_some(),
                "zstd {version} -{level}: {:?}",
                found.err()
            );
        }
    }
}

/// The `zstd` CLI's multi-threaded frame (its default) of a release before 1.5.7 at a level
/// whose jobs (16 MiB at level 13) are longer than the probe: on real files its beginning is
/// the single-threaded frame's (with fixed blocks the first job is written alike), so
/// single-threaded (tried first) wins the probe, and the multi-threaded mode, handed on as an
/// alternative, re-creates the frame where the first does not (verify-before-discard tries
/// them in turn). Seen on the benchmark's layers written by Debian 12's `zstd -13`.
#[test]
fn a_long_multithreaded_libzstd_frame_is_handed_on_from_single_threaded() {
    use stowage_actors::engine::zstd_frames::{
        encode_frame, FrameShape, FramesEncoder, ZstdDecoder, ZstdEncoder, FLAG_CHECKSUM,
    };
    let raw = corpus(20 << 20);
    let lib = |mt| ZstdEncoder::Libzstd {
        level: 13,
        long: false,
        mt,
        fixed_blocks: true,
        ported: false,
        before_1_5_1: false,
    };
    let c = encode_frame(&lib(true), &raw, FrameShape::flags(FLAG_CHECKSUM));
    let mut d = ZstdDecoder::default();
    for piece in c.chunks(100_003) {
        d.feed(piece, &mut |_| {}).unwrap();
    }
    let (first, parts, others) = d.finish().unwrap();
    let recreate = |e: ZstdEncoder| {
        let mut f = FramesEncoder::new(e, parts.clone());
        let mut out = Vec::new();
        f.push(&raw, &mut out);
        f.finish(&mut out);
        out == c
    };
    assert_eq!(first, lib(false));
    assert!(
        !recreate(first),
        "single-threaded differs after the first job"
    );
    assert!(others.contains(&lib(true)), "{others:?}");
    assert!(recreate(lib(true)));
}

/// Long klauspost frames of real files (Python and Perl sources and modules, as in the
/// images of the benchmark's dataset), written by Go at `SpeedDefault` and `SpeedFastest`:
/// ingest finds where a fresh encoder takes up the frame's blocks (planned here for two
/// cores), and the frame re-encoded in segments, each on its own thread, is the Go frame bit
/// for bit, as is the frame re-encoded whole. (Whether a fresh encoder ever falls in line
/// with the frame's depends on the data: on this machine's shared libraries it does not, and
/// such a frame is re-encoded whole.)
#[test]
fn long_klauspost_frames_in_segments() {
    use stowage_actors::engine::zstd_frames::{SegmentCores, ZstdDecoder, ZstdPart};
    let Some(bin) = zstdwrite() else { return };
    let input = files_under(
        &["/usr/lib/python3.11", "/usr/lib/python3", "/usr/share/perl"],
        64 << 20,
    );
    assert!(input.len() >= 60 << 20, "too few files for the corpus");
    let mut split = Vec::new();
    for level in ["default", "fastest"] {
        let z = go(bin, level, None, &input);
        let mut d = ZstdDecoder::default();
        d.set_stream_len(z.len() as u64);
        d.set_segments(SegmentCores::Fixed(2));
        let mut raw = Vec::new();
        for piece in z.chunks(100_003) {
            d.feed(piece, &mut |b| raw.extend_from_slice(b)).unwrap();
        }
        let (enc, parts, _) = d.finish().unwrap();
        assert!(raw == input);
        assert!(
            matches!(&parts[..], [ZstdPart::Frame(..)] | [ZstdPart::Split(_)]),
            "{level}: {parts:?}"
        );
        if !parts[0].splits().is_empty() {
            // Two cores: two segments.
            assert_eq!(parts[0].splits().len(), 1, "{level}: {parts:?}");
            split.push(level);
        }
        let unsplit: Vec<ZstdPart> = parts.iter().map(ZstdPart::unsplit).collect();
        for parts in [parts, unsplit] {
            assert!(
                pulled(enc, parts, &raw) == z,
                "{level}: re-encoded frame differs"
            );
        }
    }
    assert!(!split.is_empty(), "no segments planned at either level");
}

/// `SpeedBestCompression` re-encodes at 20-30 MB/s a core, nearly all of its pull, so by
/// default (`SegmentCores::Auto`) its long frames are planned for every core, where a faster
/// level's get all but one (none on two cores). A frame of real files as klauspost 1.17.11
/// writes it (an 8 MiB window; the port writes Go's bytes, `tests/kpzstd.rs`), ingested with
/// the defaults: segments on a machine of two cores or more, none on one, and the frame
/// re-encoded exactly either way.
#[test]
fn a_long_best_frame_is_planned_for_every_core_by_default() {
    use stowage_actors::engine::kpzstd::{encode_stream, KpLevel, KpOptions, KpVersion};
    use stowage_actors::engine::zstd_frames::{ZstdDecoder, ZstdPart};
    let input = files_under(
        &["/usr/lib/python3.11", "/usr/lib/python3", "/usr/share/perl"],
        64 << 20,
    );
    assert!(input.len() >= 60 << 20, "too few files for the corpus");
    let z = encode_stream(
        &KpOptions {
            level: KpLevel::Best,
            version: KpVersion::V1_17_11,
            ..KpOptions::default()
        },
        &input,
    );
    let mut d = ZstdDecoder::default();
    d.set_stream_len(z.len() as u64);
    let mut raw = Vec::new();
    for piece in z.chunks(100_003) {
        d.feed(piece, &mut |b| raw.extend_from_slice(b)).unwrap();
    }
    let (enc, parts, _) = d.finish().unwrap();
    assert!(raw == input);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores >= 2 {
        assert!(matches!(&parts[..], [ZstdPart::Split(_)]), "{parts:?}");
        assert!(!parts[0].splits().is_empty());
    } else {
        assert!(matches!(&parts[..], [ZstdPart::Frame(..)]), "{parts:?}");
    }
    assert!(pulled(enc, parts, &raw) == z, "re-encoded frame differs");
}

/// The frames `enc` writes from `raw` as `parts` describe them, fed a MiB at a time as a pull
/// gathers the plaintext (segments, if planned, on threads of their own).
fn pulled(
    enc: stowage_actors::engine::zstd_frames::ZstdEncoder,
    parts: Vec<stowage_actors::engine::zstd_frames::ZstdPart>,
    raw: &[u8],
) -> Vec<u8> {
    let mut e = stowage_actors::engine::zstd_frames::FramesEncoder::new(enc, parts);
    let mut out = Vec::new();
    for piece in raw.chunks(1 << 20) {
        e.push(piece, &mut out);
    }
    e.finish(&mut out);
    out
}
