//! zlib streams re-encoded from block boundaries: exact wherever zlib's lazy matcher was clean,
//! detected (never silently wrong) where it was not.

use std::io::Write;

use stowage_actors::engine::goflate::splice;

mod common;
use common::boundaries;
use stowage_actors::engine::pigz::{zlib_segment, ZLIB_LOOKAHEAD};

fn zlib_deflate(level: u32, input: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(level));
    e.write_all(input).unwrap();
    e.finish().unwrap()
}

fn corpus(limit: usize) -> Vec<u8> {
    common::files_under(&["/usr/share/doc", "/usr/lib/x86_64-linux-gnu"], limit)
}

#[test]
fn every_clean_boundary_is_exact_and_the_others_are_detected() {
    let input = corpus(6 << 20);
    for level in [4u32, 5, 6, 7, 8, 9] {
        let body = zlib_deflate(level, &input);
        let (plain, all) = boundaries(&body);
        assert_eq!(plain, input);
        let total = plain.len() as u64;
        let (mut exact, mut detected) = (0, 0);
        // Each boundary as the start of a one-block segment, checked against the stream.
        for w in all.windows(2) {
            let (s, e) = (w[0], w[1]);
            if e.plain + ZLIB_LOOKAHEAD > total {
                continue;
            }
            let lo = s.plain.saturating_sub(32768);
            let hi = e.plain + ZLIB_LOOKAHEAD;
            match zlib_segment(
                level as i32,
                total,
                &plain[lo as usize..hi as usize],
                lo,
                s,
                Some(e),
            ) {
                Ok(seg) => {
                    let mut out = vec![0u8; (s.bit / 8) as usize];
                    let mut bits = s.bit - s.bit % 8;
                    if s.bit % 8 != 0 {
                        out.push(body[(s.bit / 8) as usize] & ((1u8 << (s.bit % 8)) - 1));
                        bits = s.bit;
                    }
                    splice(&mut out, &mut bits, &seg);
                    let (from, to) = ((s.bit / 8) as usize, (e.bit / 8) as usize);
                    let diff = out[from..to]
                        .iter()
                        .zip(&body[from..to])
                        .position(|(a, b)| a != b);
                    assert!(
                        diff.is_none(),
                        "level {level}: segment {s:?}..{e:?} has the right length but differs at byte {diff:?} of {}",
                        to - from
                    );
                    exact += 1;
                }
                Err(_) => detected += 1,
            }
        }
        eprintln!("zlib level {level}: {exact} boundaries exact, {detected} detected as not");
        assert!(
            exact > detected,
            "level {level}: {exact} exact, {detected} not"
        );
    }
}

/// A zlib gzip layer (Python's gzip module, Jib, other zlib users) goes through ingest with
/// split points and restores in parallel segments, exactly, at levels 4-9; levels 1-3 stay
/// sequential.
#[test]
fn zlib_layers_restore_in_parallel_exactly() {
    let input = corpus(20 << 20);
    for level in [1u32, 4, 6, 9] {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        e.write_all(&input).unwrap();
        let gz = e.finish().unwrap();
        let (label, splits, out) = common::ingest_and_restore(&gz);
        assert_eq!(label, format!("gzip-zlib-{level}"));
        if level >= 4 {
            assert!(splits >= 3, "level {level}: {splits} split points");
        } else {
            assert_eq!(splits, 0, "level {level}");
        }
        assert!(out == gz, "level {level}: restored bytes differ");
    }
}
