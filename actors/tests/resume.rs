//! Resuming a re-encode at a recorded block boundary: a range of a layer's compressed stream
//! is re-encoded from the boundary before it, without the plaintext before that, and comes
//! out identical to the same bytes of the whole stream.

mod common;

use std::io::Write;

use stowage_actors::engine::recompress::{Compression, Encoding, LayerDecoder, Reencoder};

fn zlib_gzip(level: u32, input: &[u8]) -> Vec<u8> {
    let mut e = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::new(level));
    e.write_all(input).unwrap();
    e.finish().unwrap()
}

fn ingest(gz: &[u8]) -> (Encoding, Vec<u8>) {
    let mut d = LayerDecoder::new(Compression::detect(gz));
    let mut raw = Vec::new();
    for part in gz.chunks(100_003) {
        d.feed(part, &mut |b| raw.extend_from_slice(b)).unwrap();
    }
    (d.finish().unwrap(), raw)
}

/// Every place a resume can start from serves the stream's tail exactly, and ranges before the
/// first boundary find none.
fn check(name: &str, gz: &[u8]) {
    let (enc, raw) = ingest(gz);
    let Encoding::Gzip { members, .. } = &enc else {
        panic!("{name}: not gzip")
    };
    let splits = members[0].splits.len();
    assert!(splits >= 3, "{name}: {splits} boundaries recorded");
    let mut offsets = Vec::new();
    let probes = [
        0,
        1,
        100,
        gz.len() as u64 / 3,
        gz.len() as u64 / 2,
        gz.len() as u64 - 9,
        gz.len() as u64 - 1,
    ];
    for at in probes {
        let Some((mut r, resume)) = Reencoder::resume(&enc, at) else {
            assert!(
                at < gz.len() as u64 / 4,
                "{name}: no resume point before byte {at}"
            );
            continue;
        };
        assert!(
            resume.offset <= at && resume.offset > 0,
            "{name}: {resume:?} for {at}"
        );
        let mut out = Vec::new();
        for part in raw[resume.plain as usize..].chunks(65_536) {
            r.push(part, &mut out);
        }
        r.finish(&mut out);
        let want = &gz[resume.offset as usize..];
        assert!(
            out == want,
            "{name}: resumed at {resume:?}: {} bytes, want {}",
            out.len(),
            want.len()
        );
        offsets.push(resume.offset);
    }
    offsets.dedup();
    assert!(offsets.len() >= 3, "{name}: resumed from {offsets:?}");
}

#[test]
fn zlib_streams_resume_at_every_recorded_boundary() {
    let input = common::files_under(&["/usr/lib/x86_64-linux-gnu", "/usr/share/doc"], 24 << 20);
    check("zlib-6", &zlib_gzip(6, &input));
    check("zlib-9", &zlib_gzip(9, &input));
}

#[test]
fn go_streams_resume_at_every_recorded_boundary() {
    let input = common::files_under(&["/usr/lib/x86_64-linux-gnu", "/usr/share/doc"], 24 << 20);
    check("go-6", &common::go_gzip(6, &input));
    check("go-default", &common::go_gzip(-1, &input));
}

#[test]
fn streams_without_boundaries_do_not_resume() {
    let input = common::files_under(&["/usr/share/doc"], 12 << 20);
    // zlib level 1 has no boundaries recorded (its matcher keeps state across blocks).
    let (enc, _) = ingest(&zlib_gzip(1, &input));
    assert!(Reencoder::resume(&enc, 1 << 20).is_none());
}

#[test]
fn uncompressed_streams_resume_anywhere() {
    let input = [
        &b"plain "[..],
        &common::files_under(&["/usr/share/doc"], 4 << 20),
    ]
    .concat();
    let (enc, raw) = ingest(&input);
    assert_eq!(enc, Encoding::None);
    assert!(Reencoder::resume(&enc, 0).is_none(), "nothing to skip");
    let (mut r, resume) = Reencoder::resume(&enc, 12_345).unwrap();
    assert_eq!((resume.offset, resume.plain), (12_345, 12_345));
    let mut out = Vec::new();
    r.push(&raw[12_345..], &mut out);
    r.finish(&mut out);
    assert!(out == input[12_345..]);
}
