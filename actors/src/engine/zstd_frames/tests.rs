use super::encoders::LIBZSTD_WINDOW_LOG;
use super::*;
use crate::engine::kpzstd::KpVersion;
use crate::engine::recompress::NotExact;
use std::io::Write;

fn text(n: usize, seed: u64) -> Vec<u8> {
    let words = ["frame", "skip", "zstd", "layer", "\n", "tar ", "chunk"];
    let mut x = seed;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        v.extend_from_slice(words[(x >> 60) as usize % words.len()].as_bytes());
    }
    v.truncate(n);
    v
}

fn skippable(data: &[u8]) -> Vec<u8> {
    let mut v = vec![0x50, 0x2a, 0x4d, 0x18];
    v.extend_from_slice(&(data.len() as u32).to_le_bytes());
    v.extend_from_slice(data);
    v
}

/// Ingest then re-create, feeding odd piece sizes both ways.
fn roundtrip(stream: &[u8], raw: &[u8]) -> Result<(ZstdEncoder, Vec<ZstdPart>), NotExact> {
    let mut d = ZstdDecoder::default();
    let mut got = Vec::new();
    for piece in stream.chunks(9_973) {
        d.feed(piece, &mut |b| got.extend_from_slice(b))?;
    }
    let (enc, parts, _) = d.finish()?;
    assert_eq!(got, raw, "decompressed bytes");
    let json = serde_json::to_string(&parts).unwrap();
    let parts: Vec<ZstdPart> = serde_json::from_str(&json).unwrap();
    for piece in [1usize << 20, 65_537, 777] {
        let mut e = FramesEncoder::new(enc, parts.clone());
        let mut out = Vec::new();
        for p in raw.chunks(piece) {
            e.push(p, &mut out);
        }
        e.finish(&mut out);
        assert!(
            out == stream,
            "re-created stream differs (pieces of {piece})"
        );
    }
    Ok((enc, parts))
}

#[test]
fn libzstd_levels_and_flags() {
    let raw = text(1_000_000, 1);
    for level in [1, 3, 9, 19] {
        let c = zstd::stream::encode_all(&raw[..], level).unwrap();
        let (enc, _) = roundtrip(&c, &raw).unwrap();
        assert_eq!(enc, ZstdEncoder::libzstd(level));
    }
    roundtrip(&zstd::stream::encode_all(&b""[..], 3).unwrap(), b"").unwrap();
    for flags in [
        0,
        FLAG_CHECKSUM,
        FLAG_CONTENT_SIZE | FLAG_CHECKSUM,
        FLAG_FLUSHED,
    ] {
        let enc = ZstdEncoder::libzstd(3);
        let c = encode_frame(&enc, &raw, FrameShape::flags(flags));
        let (_, parts) = roundtrip(&c, &raw).unwrap();
        assert_eq!(
            parts,
            vec![ZstdPart::Frame(raw.len() as u64, c.len() as u64, flags)]
        );
    }
}

#[test]
fn long_distance_libzstd() {
    // Repeats 6 MB apart: beyond the windows of levels 1 and 3, not of a long one.
    let mut raw = text(1 << 20, 5);
    raw.extend_from_slice(&crate::engine::test_bytes(5 << 20, 6));
    raw.extend_from_slice(&text(1 << 20, 5));
    for level in [1, 3] {
        let enc = ZstdEncoder::Libzstd {
            level,
            long: true,
            mt: false,
            fixed_blocks: false,
            ported: false,
            before_1_5_1: false,
        };
        let c = encode_frame(&enc, &raw, FrameShape::flags(FLAG_CHECKSUM));
        let (found, _) = roundtrip(&c, &raw).unwrap();
        assert_eq!(found, enc);
    }
}

/// libzstd's multi-threaded mode (the `zstd` CLI's default) writes other bytes than its
/// single-threaded one, the same with any number of workers: frames of several jobs (level 1
/// cuts 2 MiB jobs) and of less than one, with the size in the header as the CLI writes it
/// for a file and without it as for stdin, are found and re-created.
#[test]
fn multithreaded_libzstd() {
    let raw = text(5 << 20, 11);
    let mut multithreaded = 0;
    for (level, len) in [(1, raw.len()), (3, 300_000), (1, 3 << 20)] {
        let raw = &raw[..len];
        for flags in [FLAG_CHECKSUM | FLAG_CONTENT_SIZE, FLAG_CHECKSUM] {
            let mut z = zstd::stream::write::Encoder::new(Vec::new(), level).unwrap();
            z.multithread(2).unwrap();
            z.include_checksum(true).unwrap();
            z.include_contentsize(flags & FLAG_CONTENT_SIZE != 0)
                .unwrap();
            if flags & FLAG_CONTENT_SIZE != 0 {
                z.set_pledged_src_size(Some(raw.len() as u64)).unwrap();
            }
            z.write_all(raw).unwrap();
            let c = z.finish().unwrap();
            let single = encode_frame(&ZstdEncoder::libzstd(level), raw, FrameShape::flags(flags));
            let (enc, _) = roundtrip(&c, raw).unwrap();
            if c == single {
                // Less than a job with its size known: written as single-threaded.
                assert_eq!(enc, ZstdEncoder::libzstd(level), "{len} bytes");
            } else {
                let mt = ZstdEncoder::Libzstd {
                    level,
                    long: false,
                    mt: true,
                    fixed_blocks: false,
                    ported: false,
                    before_1_5_1: false,
                };
                assert_eq!(enc, mt, "level {level}, {len} bytes, flags {flags}");
                assert_eq!(enc.label(), format!("zstd-{level}-mt"));
                multithreaded += 1;
            }
        }
    }
    assert!(
        multithreaded >= 2,
        "frames of several jobs differ from single-threaded ones"
    );
}

/// Releases before 1.5.7 cut whole 128 KiB blocks; at the levels whose match finders did not
/// change since, 1.5.7 with its pre-splitter off writes their bytes (`libzstd.rs`). Where the
/// content changes within blocks such a frame differs from 1.5.7's own, and it is found as
/// `fixed_blocks` and re-created, single- and multi-threaded, with and without `--long`
/// (and the long-distance parameters of those releases). Levels 3-4 are not tried that way
/// (no release writes those bytes), and a recipe written before the field reads as 1.5.7.
#[test]
fn libzstd_fixed_blocks() {
    // Text and random runs taking turns within blocks: where 1.5.7 cuts them short.
    let mut raw = Vec::new();
    for i in 0..36 {
        raw.extend_from_slice(&text(50_000, i));
        raw.extend_from_slice(&crate::engine::test_bytes(30_000, i));
    }
    let short = &raw[..900_000];
    let lib = |level, mt, fixed_blocks| ZstdEncoder::Libzstd {
        level,
        long: false,
        mt,
        fixed_blocks,
        ported: false,
        before_1_5_1: false,
    };
    let any = |level, long, mt, fixed_blocks| ZstdEncoder::Libzstd {
        level,
        long,
        mt,
        fixed_blocks,
        ported: false,
        before_1_5_1: false,
    };
    // Multi-threaded without the size (the CLI reading stdin) and more than a job (2 MiB at
    // level 1): other bytes than single-threaded. `--long` with the parameters of its day:
    // from the window without a content size, from the size with it.
    for (level, long, mt, raw, flags) in [
        (1, false, false, short, FLAG_CHECKSUM | FLAG_CONTENT_SIZE),
        (2, false, false, short, FLAG_CHECKSUM),
        (13, false, false, short, FLAG_CHECKSUM | FLAG_CONTENT_SIZE),
        (1, false, true, &raw[..], FLAG_CHECKSUM),
        (1, true, false, &raw[..], FLAG_CHECKSUM),
        (5, true, false, short, FLAG_CHECKSUM | FLAG_CONTENT_SIZE),
    ] {
        let fixed = any(level, long, mt, true);
        let c = encode_frame(&fixed, raw, FrameShape::flags(flags));
        let own = encode_frame(&any(level, long, mt, false), raw, FrameShape::flags(flags));
        assert_ne!(c, own, "{fixed:?}: 1.5.7 writes other bytes here");
        let (found, _) = roundtrip(&c, raw).unwrap();
        assert_eq!(found, fixed);
        assert_eq!(
            found.label(),
            format!(
                "zstd-{level}{}{}-fixed",
                if long { "-long" } else { "" },
                if mt { "-mt" } else { "" }
            )
        );
    }
    // A frame of no encoder tried names the releases that are.
    let c = zstd::stream::encode_all(short, -5).unwrap();
    match roundtrip(&c, short) {
        Err(NotExact::UnknownZstdEncoder(why)) => {
            assert!(why.contains("1.5.4 at 1-4 and 13-15"), "{why}")
        }
        other => panic!("level -5: {other:?}"),
    }
    let old: ZstdEncoder =
        serde_json::from_str(r#"{"lib":"libzstd","level":3,"mt":true}"#).unwrap();
    assert_eq!(old, lib(3, true, false));
    assert_eq!(
        serde_json::to_string(&ZstdEncoder::libzstd(3)).unwrap(),
        r#"{"lib":"libzstd","level":3}"#
    );
    let json = serde_json::to_string(&lib(1, true, true)).unwrap();
    assert_eq!(
        json,
        r#"{"lib":"libzstd","level":1,"mt":true,"fixed_blocks":true}"#
    );
    assert_eq!(
        serde_json::from_str::<ZstdEncoder>(&json).unwrap(),
        lib(1, true, true)
    );
}

/// libzstd 1.5.4 at levels 5-12 (`lazy.rs`, checked against Debian 12's `zstd` in
/// `tests/zstd_layers.rs`): its lazy match finders' frames differ from 1.5.5's and 1.5.7's,
/// and are found as `ported` and re-created at each strategy (`greedy`, `lazy`, `lazy2` with
/// rows of 16, 32 and 64): multi-threaded over three jobs at level 5 (8 MiB each, the later
/// ones on a prefix), single-threaded within the window and beyond it (libzstd's input buffer
/// refilled, the older segment searched).
#[test]
fn libzstd_lazy_match_finders_of_1_5_4() {
    let mut raw = Vec::new();
    while raw.len() < 18 << 20 {
        let i = raw.len() as u64;
        raw.extend_from_slice(&text(50_000, i % 11));
        raw.extend_from_slice(&crate::engine::test_bytes(40_000, i));
    }
    let enc = |level, mt, ported| ZstdEncoder::Libzstd {
        level,
        long: false,
        mt,
        fixed_blocks: true,
        ported,
        before_1_5_1: false,
    };
    for (level, mt, raw, flags) in [
        (5, true, &raw[..], FLAG_CHECKSUM),
        (
            7,
            false,
            &raw[..1_500_000],
            FLAG_CHECKSUM | FLAG_CONTENT_SIZE,
        ),
        (10, false, &raw[..], FLAG_CHECKSUM | FLAG_CONTENT_SIZE),
        (12, true, &raw[..3_000_000], FLAG_CONTENT_SIZE),
    ] {
        let new = enc(level, mt, true);
        let c = encode_frame(&new, raw, FrameShape::flags(flags));
        // Here with 40 KB runs of noise between texts, where the two releases differ.
        assert!(
            c != encode_frame(&enc(level, mt, false), raw, FrameShape::flags(flags)),
            "{level}: 1.5.5 writes other bytes here"
        );
        assert_eq!(zstd::stream::decode_all(&c[..]).unwrap(), raw);
        // As verify-before-discard: the encoder found on the frame's beginning, else the
        // others that wrote it alike. Multi-threaded is tried first: within one window and one
        // job a single-threaded frame is its frame; beyond, the single-threaded one follows.
        let mut d = ZstdDecoder::default();
        d.feed(&c, &mut |_| {}).unwrap();
        let (first, parts, others) = d.finish().unwrap();
        let found = std::iter::once(first)
            .chain(others)
            .find(|e| {
                let mut f = FramesEncoder::new(*e, parts.clone());
                let mut out = Vec::new();
                f.push(raw, &mut out);
                f.finish(&mut out);
                out == c
            })
            .expect("re-created");
        let beyond = !mt && raw.len() > 4 << 20;
        assert_eq!(found, enc(level, !beyond, true), "{level} {flags}");
    }
    assert_eq!(enc(5, true, true).label(), "zstd-5-mt-1.5.4");
}

/// libzstd 1.5.4-1.5.5 at levels 16-19 (`opt.rs`, checked against Debian 12's `zstd` in
/// `tests/zstd_layers.rs`): their optimal parser's frames differ from 1.5.6's and 1.5.7's, and
/// are found as `ported` and re-created: multi-threaded over two jobs at level 16 (the
/// second on a prefix of the first), with an incompressible run between (the post-splitter
/// stores it raw), and single-threaded within the window at each strategy (beyond it, from
/// Debian's CLI in `tests/zstd_layers.rs`).
#[test]
fn libzstd_optimal_parser_before_1_5_6() {
    let mut raw = Vec::new();
    for i in 0..40 {
        raw.extend_from_slice(&text(40_000, i % 9));
        raw.extend_from_slice(&crate::engine::test_bytes(
            if i == 5 { 300_000 } else { 3_000 },
            i,
        ));
    }
    let enc = |level, mt, ported| ZstdEncoder::Libzstd {
        level,
        long: false,
        mt,
        fixed_blocks: true,
        ported,
        before_1_5_1: false,
    };
    let job = 16 << 20; // level 16: 2^(window log 22 + 2)
    let mut two_jobs = Vec::new();
    while two_jobs.len() < job + (1 << 20) {
        two_jobs.extend_from_slice(&raw);
    }
    for (level, mt, raw, flags) in [
        (19, false, &raw[..], FLAG_CHECKSUM | FLAG_CONTENT_SIZE),
        (18, true, &raw[..], FLAG_CHECKSUM),
        (17, false, &raw[..1_000_000], FLAG_CONTENT_SIZE),
        (16, true, &two_jobs[..], FLAG_CHECKSUM | FLAG_CONTENT_SIZE),
    ] {
        let new = enc(level, mt, true);
        let c = encode_frame(&new, raw, FrameShape::flags(flags));
        assert!(
            c != encode_frame(&enc(level, mt, false), raw, FrameShape::flags(flags)),
            "{level}: 1.5.6 writes other bytes here"
        );
        // Multi-threaded is tried first: within one window (and one job) the single-threaded
        // frame is its frame.
        let (found, parts) = roundtrip(&c, raw).unwrap();
        assert_eq!(found, enc(level, true, true), "{level} {flags}");
        assert_eq!(found.label(), format!("zstd-{level}-mt-1.5.5"));
        assert!(encode_frame(&found, raw, FrameShape::flags(flags)) == c);
        assert_eq!(parts.len(), 1);
    }
}

/// libzstd 1.5.4-1.5.6 at levels 3-4 (`dfast_writer.rs`): their match finder takes a long
/// match at the next position where 1.5.7 keeps a longer short one, so on varied input their
/// frames differ from 1.5.7's. Written by the port (checked against those releases' CLIs in
/// `tests/zstd_layers.rs`), such frames are found as `fixed_blocks` and re-created:
/// multi-threaded over several jobs, with and without the content size, ending on a job's
/// edge, flushed, with incompressible blocks between (libzstd drops their repeat offsets),
/// and single-threaded, within the window and beyond it (libzstd's input buffer wrapping).
#[test]
fn libzstd_dfast_before_1_5_7() {
    let mut raw = Vec::new();
    for i in 0..120 {
        raw.extend_from_slice(&text(60_000, i));
        raw.extend_from_slice(&crate::engine::test_bytes(
            if i == 7 { 400_000 } else { 20_000 },
            i,
        ));
    }
    let lib = |level, mt| ZstdEncoder::Libzstd {
        level,
        long: false,
        mt,
        fixed_blocks: true,
        ported: false,
        before_1_5_1: false,
    };
    let job = 8 << 20; // 2^(window log 21 + 2)
    for (level, mt, raw, flags) in [
        (3, true, &raw[..], FLAG_CHECKSUM),
        (4, true, &raw[..], FLAG_CHECKSUM | FLAG_CONTENT_SIZE),
        (3, true, &raw[..job], FLAG_CHECKSUM),
        (3, true, &raw[..job], FLAG_CHECKSUM | FLAG_CONTENT_SIZE),
        (3, true, &raw[..job + 5], 0),
        (4, true, &raw[..3_000_000], FLAG_CHECKSUM | FLAG_FLUSHED),
        (
            3,
            false,
            &raw[..1_500_000],
            FLAG_CHECKSUM | FLAG_CONTENT_SIZE,
        ),
        (4, false, &raw[..1_200_000], FLAG_CONTENT_SIZE),
        // Beyond the window: two segments, the random run among the older one's blocks.
        (3, false, &raw[..], FLAG_CHECKSUM),
        (
            4,
            false,
            &raw[..7_000_000],
            FLAG_CHECKSUM | FLAG_CONTENT_SIZE | FLAG_FLUSHED,
        ),
    ] {
        let enc = lib(level, mt);
        let c = encode_frame(&enc, raw, FrameShape::flags(flags));
        let new = ZstdEncoder::Libzstd {
            level,
            long: false,
            mt,
            fixed_blocks: false,
            ported: false,
            before_1_5_1: false,
        };
        assert!(
            c != encode_frame(&new, raw, FrameShape::flags(flags)),
            "{enc:?} {flags}: 1.5.7 writes other bytes here"
        );
        let (found, parts) = roundtrip(&c, raw).unwrap();
        assert_eq!(found, enc, "{flags}");
        assert_eq!(
            found.label(),
            format!("zstd-{level}{}-fixed", if mt { "-mt" } else { "" })
        );
        assert_eq!(parts.len(), 1);
    }
    // On a job's edge: from a pipe an empty last block follows, with the size it does not.
    let piped = encode_frame(&lib(3, true), &raw[..job], FrameShape::flags(FLAG_CHECKSUM));
    let sized = encode_frame(
        &lib(3, true),
        &raw[..job],
        FrameShape::flags(FLAG_CHECKSUM | FLAG_CONTENT_SIZE),
    );
    assert_eq!(&piped[piped.len() - 7..piped.len() - 4], &[1, 0, 0]);
    assert_ne!(&sized[sized.len() - 7..sized.len() - 4], &[1, 0, 0]);
}

/// libzstd 1.4.8-1.5.0's frames at levels 1-15 (Debian 11's and Ubuntu 22.04's `zstd`) are
/// found as `before_1_5_1` and re-created (the fixtures: see `dfast_writer.rs`
/// `libzstd_1_4_8_frames_with_their_huffman_sort`; level 8's is the same input from a pipe).
#[test]
fn libzstd_1_4_8_frames() {
    let fixtures: [(&[u8], &str); 4] = [
        (
            include_bytes!("../../../testdata/zstd-1.4.8-level3-pipe.zst"),
            "zstd-3-1.4.8",
        ),
        (
            include_bytes!("../../../testdata/zstd-1.4.8-level1-file.zst"),
            "zstd-1-1.4.8",
        ),
        // Through the linked libzstd with 1.4.8's parameters and the patch's switch.
        (
            include_bytes!("../../../testdata/zstd-1.4.8-level8-pipe.zst"),
            "zstd-8-1.4.8",
        ),
        (
            include_bytes!("../../../testdata/zstd-1.4.8-level4-file.zst"),
            "zstd-4-1.4.8",
        ),
    ];
    for (frame, label) in fixtures {
        let raw = zstd::stream::decode_all(frame).unwrap();
        let (found, parts) = roundtrip(frame, &raw).unwrap();
        assert_eq!(found.label(), label);
        assert!(matches!(
            found,
            ZstdEncoder::Libzstd {
                fixed_blocks: true,
                before_1_5_1: true,
                ..
            }
        ));
        assert_eq!(parts.len(), 1);
    }
}

#[test]
fn klauspost_frames() {
    let raw = text(2_000_000, 8);
    for level in [KpZstdLevel::Default, KpZstdLevel::Fastest] {
        let enc = ZstdEncoder::Klauspost {
            level,
            version: KpVersion::default(),
        };
        let c = encode_frame(&enc, &raw, FrameShape::flags(FLAG_CHECKSUM));
        let (found, _) = roundtrip(&c, &raw).unwrap();
        // The newest release family writing the same bytes is recorded.
        assert!(
            matches!(found, ZstdEncoder::Klauspost { level: l, .. } if l == level),
            "{found:?}"
        );
        assert_eq!(found.label(), format!("zstd-kp-{}", level.kp().name()));
        // Frames of under a block carry their size unasked; later frames must match.
        let mut stream = Vec::new();
        for n in [100usize, 5000, 300_000] {
            stream.extend_from_slice(&encode_frame(
                &enc,
                &raw[..n],
                FrameShape::flags(FLAG_CHECKSUM),
            ));
        }
        let joined: Vec<u8> = [&raw[..100], &raw[..5000], &raw[..300_000]].concat();
        let (found, parts) = roundtrip(&stream, &joined).unwrap();
        assert_eq!(found.label(), enc.label());
        assert_eq!(parts.len(), 3);
    }
}

/// containers/image compressing from local storage (podman, buildah push): `Write` of the 8
/// bytes it peeked at, then `ReadFrom` of the rest, which writes those 8 out as a block first.
#[test]
fn klauspost_first_block_cut_short() {
    use crate::engine::kpzstd::{KpOptions, KpStreamEncoder};
    let raw = text(6_000_000, 9);
    for (level, cut, n) in [
        (KpZstdLevel::Default, 8usize, 300_000usize),
        (KpZstdLevel::Default, 8, raw.len()),
        (KpZstdLevel::Best, 8, 200_000),
        (KpZstdLevel::Fastest, 30_000, 1_000_000),
    ] {
        let mut e = KpStreamEncoder::new(&KpOptions {
            level: level.kp(),
            ..KpOptions::default()
        })
        .unwrap();
        let mut stream = Vec::new();
        e.write(&raw[..cut], &mut stream);
        e.read_from(&raw[cut..n], &mut stream);
        e.close(&mut stream);
        let (found, parts) = roundtrip(&stream, &raw[..n]).unwrap();
        assert!(
            matches!(found, ZstdEncoder::Klauspost { level: l, .. } if l == level),
            "{found:?}"
        );
        assert!(
            matches!(parts[..], [ZstdPart::CutFrame(_, _, _, c)] if c == cut as u64),
            "{level:?} {n}: {parts:?}"
        );
    }
}

/// A zstd:chunked-like stream from each klauspost release family, at `SpeedDefault` (zstd 3,
/// the default of containers/storage) and `SpeedBestCompression` (zstd 10+, what Fedora's
/// podman and buildah write zstd:chunked at): the first frames are small (several releases
/// and levels write them alike), later ones hold incompressible data and runs of zeros,
/// where releases differ. Whichever is chosen first, the one that wrote every frame must
/// end up recorded.
#[test]
fn klauspost_releases_told_apart_by_later_frames() {
    use crate::engine::kpzstd::{KpOptions, KpStreamEncoder};
    let frames: Vec<Vec<u8>> = vec![
        text(100, 1),
        text(3000, 2),
        crate::engine::test_bytes(300_000, 3),
        vec![0u8; 200_000],
        text(500_000, 4),
    ];
    let raw = frames.concat();
    let runs = [KpZstdLevel::Default, KpZstdLevel::Best]
        .into_iter()
        .flat_map(|l| KpVersion::distinct(l.kp()).into_iter().map(move |v| (l, v)));
    for (want, version) in runs {
        let mut e = KpStreamEncoder::new(&KpOptions {
            level: want.kp(),
            version,
            ..KpOptions::default()
        })
        .unwrap();
        let mut stream = Vec::new();
        for f in &frames {
            e.reset(None);
            e.write(f, &mut stream);
            e.close(&mut stream);
        }
        let (found, parts) =
            roundtrip(&stream, &raw).unwrap_or_else(|e| panic!("{version:?}: {e}"));
        assert_eq!(parts.len(), frames.len());
        let ZstdEncoder::Klauspost { level, version: v } = found else {
            panic!("{version:?}: {found:?}");
        };
        assert_eq!(level, want, "{version:?}");
        // The recorded release writes what `version` wrote (roundtrip re-created the stream).
        eprintln!("{want:?} {version:?} recorded as {v:?}");
    }
}

#[test]
fn the_window_table_is_libzstds() {
    let raw = text(300_000, 2);
    for level in 1..=19 {
        let enc = ZstdEncoder::libzstd(level);
        let mut w = FrameWriter::new(&enc, 0, FrameShape::flags(FLAG_CHECKSUM));
        let mut out = Vec::new();
        w.write(&raw, &mut out);
        w.finish(&mut out);
        let h = parse_header(&out).unwrap().unwrap();
        assert_eq!(
            h.window_log,
            Some(LIBZSTD_WINDOW_LOG[level as usize - 1]),
            "{level}"
        );
    }
}

#[test]
fn many_frames_and_skippable_frames() {
    // zstd:chunked's shape: a frame per file, big and small, then skippable frames.
    let enc = ZstdEncoder::libzstd(3);
    let mut stream = Vec::new();
    let mut raw = Vec::new();
    for (i, n) in [512usize, 70_000, 1, 9_000_000, 3_000, 0, 200_000, 5 << 20]
        .into_iter()
        .enumerate()
    {
        let part = text(n, i as u64 + 10);
        stream.extend_from_slice(&encode_frame(&enc, &part, FrameShape::flags(FLAG_CHECKSUM)));
        raw.extend_from_slice(&part);
        if i == 2 {
            stream.extend_from_slice(&skippable(b"in between"));
        }
    }
    stream.extend_from_slice(&skippable(&text(5_000, 99)));
    stream.extend_from_slice(&skippable(&[7u8; 40]));
    let (_, parts) = roundtrip(&stream, &raw).unwrap();
    assert_eq!(parts.len(), 11);

    // A range request resumes at the frame it falls in.
    let mut comp = 0;
    for (k, p) in parts.iter().enumerate().skip(1) {
        let before: u64 = parts[..k].iter().map(ZstdPart::comp_len).sum();
        let (mut e, at, plain) = FramesEncoder::resume(enc, &parts, before + 1).unwrap();
        assert_eq!(at, before);
        let mut out = Vec::new();
        e.push(&raw[plain as usize..], &mut out);
        e.finish(&mut out);
        assert!(out == stream[at as usize..], "resumed at part {k}");
        comp += p.comp_len();
    }
    assert!(comp > 0);
    assert!(FramesEncoder::resume(enc, &parts, 3).is_none());
}

/// Hundreds of frames of four shapes each keep their own, and a frame the chosen encoder does
/// not write (of another level, long after the alternatives were dropped) refuses the stream.
#[test]
fn frames_keep_their_shapes_and_a_late_odd_frame_is_refused() {
    let enc = ZstdEncoder::libzstd(1);
    let shapes = [
        FrameShape::flags(FLAG_CHECKSUM),
        FrameShape::flags(FLAG_CONTENT_SIZE),
        FrameShape::flags(FLAG_CHECKSUM | FLAG_CONTENT_SIZE),
        FrameShape::flags(0),
    ];
    let frames: Vec<(Vec<u8>, FrameShape)> = (0..700)
        .map(|i| (text(100 + (i * 37) % 20_000, i as u64), shapes[i % 4]))
        .collect();
    let write = |odd: Option<usize>| {
        let (mut stream, mut raw) = (Vec::new(), Vec::new());
        for (i, (part, shape)) in frames.iter().enumerate() {
            let e = if odd == Some(i) {
                ZstdEncoder::libzstd(19)
            } else {
                enc
            };
            stream.extend_from_slice(&encode_frame(&e, part, *shape));
            raw.extend_from_slice(part);
        }
        (stream, raw)
    };
    let (stream, raw) = write(None);
    let (_, parts) = roundtrip(&stream, &raw).unwrap();
    assert_eq!(parts.len(), frames.len());
    for (p, (_, shape)) in parts.iter().zip(&frames) {
        assert_eq!(p.shape(), Some(*shape));
    }
    for odd in [300, 650] {
        let (stream, raw) = write(Some(odd));
        let Err(NotExact::UnknownZstdEncoder(why)) = roundtrip(&stream, &raw) else {
            panic!("frame {odd}, of another level, is refused");
        };
        assert!(
            why.contains("a later zstd frame is not written like the first"),
            "{why}"
        );
    }
}

#[test]
fn bad_streams_are_refused() {
    let raw = text(100_000, 3);
    let c = zstd::stream::encode_all(&raw[..], 3).unwrap();
    let mut d = ZstdDecoder::default();
    d.feed(&c[..c.len() / 2], &mut |_| {}).unwrap();
    assert!(matches!(d.finish(), Err(NotExact::Corrupt(_))), "truncated");

    let mut trailing = c.clone();
    trailing.extend_from_slice(b"garbage!");
    let mut d = ZstdDecoder::default();
    assert!(matches!(
        d.feed(&trailing, &mut |_| {}),
        Err(NotExact::Unsupported(_))
    ));

    let mut big = skippable(b"");
    big[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut d = ZstdDecoder::default();
    assert!(matches!(
        d.feed(&big, &mut |_| {}),
        Err(NotExact::Unsupported(_))
    ));

    // A frame from an encoder stowage does not have: libzstd with another minimum match.
    let mut z = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    z.set_parameter(zstd::zstd_safe::CParameter::MinMatch(7))
        .unwrap();
    z.write_all(&raw).unwrap();
    let foreign = z.finish().unwrap();
    let mut d = ZstdDecoder::default();
    d.feed(&foreign, &mut |_| {}).unwrap_or(());
    let err = d.finish().unwrap_err();
    assert!(
        matches!(&err, NotExact::UnknownZstdEncoder(m) if m.contains("window 2 MiB")),
        "{err}"
    );
}

/// Plaintext on which klauspost 1.15.12 and 1.16.4 write the same first 4 MiB (the probe) at
/// `SpeedDefault`, and differ after it: 5 MiB of text, then 1 MiB of a 16-letter alphabet
/// (few matches: where 1.16.4's changes to literal blocks show), then 1 MiB of text.
fn late_divergence() -> Vec<u8> {
    let (mut x, alpha) = (1u64, 16);
    let mut raw = text(5 << 20, 3);
    raw.extend((0..1 << 20).map(|_| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        b'a' + ((x >> 33) % alpha) as u8
    }));
    raw.extend(text(1 << 20, 4));
    raw
}

#[test]
fn encoders_alike_on_a_long_frames_beginning_are_handed_on() {
    let raw = late_divergence();
    let enc = ZstdEncoder::Klauspost {
        level: KpZstdLevel::Default,
        version: KpVersion::V1_16_4,
    };
    let c = encode_frame(&enc, &raw, FrameShape::flags(FLAG_CHECKSUM));
    let mut d = ZstdDecoder::default();
    d.feed(&c, &mut |_| {}).unwrap();
    let (first, parts, others) = d.finish().unwrap();
    let recreate = |e: ZstdEncoder| {
        let mut f = FramesEncoder::new(e, parts.clone());
        let mut out = Vec::new();
        f.push(&raw, &mut out);
        f.finish(&mut out);
        out == c
    };
    // Ingest compares the probe only: 1.15.12 (tried first) wins it but is not the writer.
    assert!(
        matches!(
            first,
            ZstdEncoder::Klauspost {
                version: KpVersion::V1_15_12,
                ..
            }
        ),
        "{first:?}"
    );
    assert!(!recreate(first), "1.15.12 must differ after the probe");
    let alt = others.iter().copied().find(|&e| recreate(e));
    assert!(
        alt.is_some(),
        "no alternative re-creates the frame: {others:?}"
    );
}

/// Plaintext whose statistics change every few hundred KiB, as a layer's files do: text of
/// several vocabularies, random bytes (stored raw), skewed bytes, zeros, and short copies of
/// earlier pieces from up to a few MiB back.
fn varied(n: usize, seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(n + (2 << 20));
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    while v.len() < n {
        let r = next();
        let len = 50_000 + (r >> 40) as usize % 1_500_000;
        match r % 5 {
            0 => v.extend_from_slice(&text(len, r)),
            1 => v.extend_from_slice(&crate::engine::test_bytes(len / 4, r)),
            2 => v.extend((0..len).map(|i| ((i as u64).wrapping_mul(r) >> 7) as u8 % 23)),
            3 => v.resize(v.len() + len / 8, 0),
            _ => {
                let back = (next() as usize % (6 << 20)).min(v.len());
                let from = v.len() - back;
                let take = (len / 16).min(back);
                v.extend_from_within(from..from + take);
            }
        }
    }
    v.truncate(n);
    v
}

/// klauspost's `SpeedFastest` as Debian's 1.15.12 writes it.
const FASTEST: ZstdEncoder = ZstdEncoder::Klauspost {
    level: KpZstdLevel::Fastest,
    version: KpVersion::V1_15_12,
};

/// Ingest with segments planned for `parallel` cores.
fn ingest_split(stream: &[u8], raw: &[u8], parallel: u64) -> (ZstdEncoder, Vec<ZstdPart>) {
    let mut d = ZstdDecoder::default();
    d.set_stream_len(stream.len() as u64);
    d.set_segments(SegmentCores::Fixed(parallel));
    let mut got = Vec::new();
    for piece in stream.chunks(100_003) {
        d.feed(piece, &mut |b| got.extend_from_slice(b)).unwrap();
    }
    let (enc, parts, _) = d.finish().unwrap();
    assert!(got == raw, "decompressed bytes");
    (enc, parts)
}

fn restore(enc: ZstdEncoder, parts: &[ZstdPart], raw: &[u8], piece: usize) -> Vec<u8> {
    re_encode(FramesEncoder::new(enc, parts.to_vec()), raw, piece)
}

/// `raw` through `e` in pieces of `piece` bytes.
fn re_encode(mut e: FramesEncoder, raw: &[u8], piece: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for p in raw.chunks(piece) {
        e.push(p, &mut out);
    }
    e.finish(&mut out);
    out
}

/// A 30 MiB `SpeedFastest` frame planned in two segments, the second then moved to start
/// without its warm-up, so that it cannot come out right: the plaintext, the frame, the parts.
fn warmless_segments(seed: u64) -> (Vec<u8>, Vec<u8>, Vec<ZstdPart>) {
    let raw = varied(30 << 20, seed);
    let stream = encode_frame(&FASTEST, &raw, FrameShape::flags(FLAG_CHECKSUM));
    let (_, mut parts) = ingest_split(&stream, &raw, 2);
    let ZstdPart::Split(f) = &mut parts[0] else {
        panic!("no segments planned: {parts:?}");
    };
    f.splits[0][0] = f.splits[0][1];
    (raw, stream, parts)
}

/// A long klauspost frame is planned in segments at ingest (a fresh encoder warmed up on the
/// window before each start writes the frame's blocks from there), and the segments,
/// re-encoded in parallel, make the frame bit for bit: with a first block cut short, a
/// content size in the header, the frame's end flushed. (`SpeedFastest` here; on this
/// synthetic data a fresh `SpeedDefault` encoder's matches rarely fall in line with the
/// frame's: `tests/zstd_layers.rs` checks that level on real files, written by Go.)
#[test]
fn long_klauspost_frames_are_re_encoded_in_segments() {
    use crate::engine::kpzstd::{KpOptions, KpStreamEncoder};
    let raw = varied(56 << 20, 3);
    for (level, cut, size, flush, n) in [
        (KpZstdLevel::Fastest, None, false, false, 30 << 20),
        (KpZstdLevel::Fastest, None, false, true, 40 << 20),
        (KpZstdLevel::Fastest, Some(8), true, true, 40 << 20),
    ] {
        let raw = &raw[..n];
        let mut e = KpStreamEncoder::new(&KpOptions {
            level: level.kp(),
            ..KpOptions::default()
        })
        .unwrap();
        e.reset(size.then_some(n as u64));
        let mut stream = Vec::new();
        let cut = cut.unwrap_or(0);
        e.write(&raw[..cut], &mut stream);
        e.read_from(&raw[cut..], &mut stream);
        if flush {
            e.flush(&mut stream);
        }
        e.close(&mut stream);
        let (enc, parts) = ingest_split(&stream, raw, 2);
        let [ZstdPart::Split(f)] = &parts[..] else {
            panic!("{level:?}: no segments planned: {parts:?}");
        };
        let (block, window) = enc.kp_geometry().unwrap();
        assert_eq!(f.splits.len(), 1, "{level:?}: two cores, two segments");
        for &[warm, start, comp] in &f.splits {
            assert!(
                start >= warm + window
                    && start - warm <= window + (super::splits::SLIP + 1) * block
            );
            assert!(comp < stream.len() as u64);
        }
        let json = serde_json::to_string(&parts).unwrap();
        assert!(json.contains("\"splits\""), "{json}");
        let parts: Vec<ZstdPart> = serde_json::from_str(&json).unwrap();
        for piece in [1 << 20, 777_777] {
            assert!(
                restore(enc, &parts, raw, piece) == stream,
                "{level:?}: segments differ (pieces of {piece})"
            );
        }
        // Planned for four cores: as many segments as are three windows long or more.
        let (enc, parts4) = ingest_split(&stream, raw, 4);
        let most = (n as u64 / (3 * window)).min(4) as usize;
        assert_eq!(parts4[0].splits().len(), most - 1, "{level:?}: {parts4:?}");
        assert!(restore(enc, &parts4, raw, 1 << 20) == stream);
        // Without segments, the same frame too.
        let unsplit: Vec<ZstdPart> = parts.iter().map(ZstdPart::unsplit).collect();
        assert!(matches!(
            unsplit[..],
            [ZstdPart::Frame(..) | ZstdPart::CutFrame(..)]
        ));
        assert!(restore(enc, &unsplit, raw, 1 << 20) == stream);
    }
}

/// A segment start where a fresh encoder does not write the frame's blocks (here: no
/// warm-up at all) makes another stream, never the frame: segment 0 comes out right, the
/// rest does not, and it is the frame without segments that verification keeps.
#[test]
fn a_segment_without_its_warm_up_makes_another_stream() {
    let (raw, stream, parts) = warmless_segments(5);
    let second = parts[0].splits()[0][2] as usize;
    let out = restore(FASTEST, &parts, &raw, 1 << 20);
    assert!(out.len() >= second && out[..second] == stream[..second]);
    assert!(out != stream);
}

/// One core (or a frame too short for two segments of three windows each): no segments.
#[test]
fn no_segments_without_cores_or_length() {
    let raw = varied(30 << 20, 6);
    let enc = FASTEST;
    let stream = encode_frame(&enc, &raw, FrameShape::flags(FLAG_CHECKSUM));
    let (_, parts) = ingest_split(&stream, &raw, 1);
    assert!(matches!(parts[..], [ZstdPart::Frame(..)]), "{parts:?}");
    let short = &raw[..10 << 20];
    let stream = encode_frame(&enc, short, FrameShape::flags(FLAG_CHECKSUM));
    let (_, parts) = ingest_split(&stream, short, 8);
    assert!(matches!(parts[..], [ZstdPart::Frame(..)]), "{parts:?}");
}

/// Segments are proven by verification only: the layer's first alternative is the same
/// encoder with the frames re-encoded whole.
#[test]
fn the_frame_re_encoded_whole_is_the_first_alternative() {
    use crate::engine::recompress::{Encoding, LayerDecoder};
    let raw = varied(30 << 20, 7);
    let enc = FASTEST;
    let stream = encode_frame(&enc, &raw, FrameShape::flags(FLAG_CHECKSUM));
    let mut z = Box::<ZstdDecoder>::default();
    z.set_segments(SegmentCores::Fixed(2));
    let mut d = LayerDecoder::Zstd(z);
    d.set_stream_len(stream.len() as u64);
    for piece in stream.chunks(1 << 20) {
        d.feed(piece, &mut |_| {}).unwrap();
    }
    let (first, alternatives) = d.finish_with_alternatives().unwrap();
    let Encoding::ZstdFrames { encoder, parts } = first else {
        panic!("{first:?}");
    };
    assert!(!parts[0].splits().is_empty(), "{parts:?}");
    let unsplit: Vec<ZstdPart> = parts.iter().map(ZstdPart::unsplit).collect();
    assert_eq!(
        alternatives.first(),
        Some(&Encoding::ZstdFrames {
            encoder,
            parts: unsplit
        })
    );
}

/// A frame gets a thread for each of its segments from the budget, or none and is re-encoded
/// whole: told apart here by segments that cannot be right (no warm-up), so only the frame
/// re-encoded whole comes out exact. A second pull while the first holds the threads goes
/// whole; the threads come back with the frame. A re-encode that proves the segments is
/// never sent whole.
#[test]
fn segments_take_threads_from_the_budget_or_the_frame_goes_whole() {
    let (raw, stream, parts) = warmless_segments(8);
    let enc = FASTEST;
    let restore_with = |budget: &'static SegmentBudget| {
        re_encode(
            FramesEncoder::new(enc, parts.clone()).with_budget(budget),
            &raw,
            1 << 20,
        )
    };
    let one: &'static SegmentBudget = Box::leak(Box::new(SegmentBudget::new(1)));
    assert!(restore_with(one) == stream, "one thread: the frame whole");
    let r = one.reading();
    assert_eq!((r.segmented, r.whole, r.in_use), (0, 1, 0), "{r:?}");

    let two: &'static SegmentBudget = Box::leak(Box::new(SegmentBudget::new(2)));
    let mut first = FramesEncoder::new(enc, parts.clone()).with_budget(two);
    let mut first_out = Vec::new();
    first.push(&raw[..1 << 20], &mut first_out);
    assert_eq!(two.reading().in_use, 2, "the first pull holds both threads");
    assert!(restore_with(two) == stream, "the second pull: whole");
    for p in raw[1 << 20..].chunks(1 << 20) {
        first.push(p, &mut first_out);
    }
    first.finish(&mut first_out);
    assert!(first_out != stream, "the first pull: in (wrong) segments");
    let r = two.reading();
    assert_eq!((r.segmented, r.whole, r.in_use), (1, 1, 0), "{r:?}");
    assert!(restore_with(two) != stream, "threads free again: segments");

    // A re-encode that proves the segments (verification, fsck) gets them whatever the budget.
    let proving = FramesEncoder::new(enc, parts.clone())
        .with_budget(one)
        .proving();
    assert!(
        re_encode(proving, &raw, 1 << 20) != stream,
        "proving: in segments"
    );
    assert_eq!(one.reading().whole, 1, "{:?}", one.reading());
}

/// By default a `SpeedBestCompression` frame is planned for every core, a faster level's for
/// all but one; a fixed number holds for every encoder.
#[test]
fn auto_segments_give_a_slow_encoders_frame_every_core() {
    let cores = std::thread::available_parallelism()
        .map_or(1, |n| n.get() as u64)
        .clamp(1, 8);
    let kp = |level| ZstdEncoder::Klauspost {
        level,
        version: KpVersion::V1_15_12,
    };
    let auto = SegmentCores::Auto;
    assert_eq!(auto.for_encoder(&kp(KpZstdLevel::Best)), cores);
    assert_eq!(
        auto.for_encoder(&kp(KpZstdLevel::Better)),
        (cores - 1).max(1)
    );
    assert_eq!(
        auto.for_encoder(&kp(KpZstdLevel::Default)),
        (cores - 1).max(1)
    );
    assert_eq!(auto.for_encoder(&FASTEST), (cores - 1).max(1));
    assert_eq!(auto.most(), cores);
    assert_eq!(
        SegmentCores::Fixed(3).for_encoder(&kp(KpZstdLevel::Best)),
        3
    );
    assert_eq!(SegmentCores::Fixed(3).for_encoder(&FASTEST), 3);
    assert_eq!(SegmentCores::Fixed(0).most(), 1);
}
