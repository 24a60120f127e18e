//! How fast stowage gives back a compressed layer's exact bytes.
//!
//! `layer_restore [--plain OUT] LAYER...` inflates each layer while identifying its encoder
//! (as ingest does), then times the exact re-encoding from the plaintext (as a pull does) and
//! prints one JSON line per layer: encoding label (or the reason it stays raw), plaintext and
//! compressed bytes, segments planned for long zstd frames, ingest and restore MB/s (of the
//! first encoding, or of the alternative
//! ingest found alike that re-creates the layer, as verification picks). A raw layer's line
//! has the plaintext read before ingest gave up (`plain_read`) and the seconds that took
//! (`decided_s`) instead. `--plain OUT` also
//! writes the last layer's plaintext to OUT (benches/encoder-table times the original encoder
//! on it). `--segment-cores N` plans long zstd frames' segments for N cores instead of this
//! machine's default (`SegmentCores::Auto`). `--repeat N` times the
//! re-encode N times and reports the median (this machine is noisy; also what a profiler
//! of the re-encoder wants).
use std::time::Instant;

use stowage_actors::engine::recompress::{Compression, Encoding, LayerDecoder, Reencoder};
use stowage_actors::engine::zstd_frames::SegmentCores;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut plain_out = None;
    let mut cores = None;
    let mut repeat = 1usize;
    loop {
        match args.first().map(String::as_str) {
            Some("--plain") => {
                plain_out = Some(args.remove(1));
                args.remove(0);
            }
            Some("--segment-cores") => {
                cores = Some(args.remove(1).parse::<u64>().expect("--segment-cores N"));
                args.remove(0);
            }
            Some("--repeat") => {
                repeat = args.remove(1).parse::<usize>().expect("--repeat N").max(1);
                args.remove(0);
            }
            _ => break,
        }
    }
    for path in args {
        let gz = std::fs::read(&path).expect("read layer");
        let t = Instant::now();
        let mut d = LayerDecoder::new(Compression::detect(&gz));
        // As ingest does: the blob's length lets a long zstd frame be planned in segments.
        d.set_stream_len(gz.len() as u64);
        if let Some(n) = cores {
            d.set_segments(SegmentCores::Fixed(n));
        }
        let mut raw = Vec::new();
        let mut failed = None;
        for part in gz.chunks(1 << 20) {
            if let Err(e) = d.feed(part, &mut |b| raw.extend_from_slice(b)) {
                failed = Some(e.to_string());
                break;
            }
        }
        let (enc, alternatives) = match failed {
            Some(e) => (Err(e), Vec::new()),
            None => match d.finish_with_alternatives() {
                Ok((enc, alts)) => (Ok(enc), alts),
                Err(e) => (Err(e.to_string()), Vec::new()),
            },
        };
        let ingest = t.elapsed().as_secs_f64();
        let mb = raw.len() as f64 / 1e6;
        let line = match enc {
            Ok(first) => {
                // As verification does: the encodings ingest found alike, in turn, until one
                // re-creates the layer; the one that does is timed.
                let (mut enc, mut restore, mut out) = (first, 0.0, Vec::new());
                for candidate in std::iter::once(enc.clone()).chain(alternatives) {
                    let mut times = Vec::with_capacity(repeat);
                    for _ in 0..repeat {
                        let t = Instant::now();
                        let mut r = Reencoder::new(&candidate);
                        out = Vec::with_capacity(gz.len());
                        let (mut differs, mut checked) = (false, 0);
                        for part in raw.chunks(1 << 20) {
                            r.push(part, &mut out);
                            // As verification does: a wrong guess is given up where it
                            // differs (the new bytes only: comparing all of `out` each time
                            // was quadratic, a third of a fast encoder's measured time).
                            if !gz[checked.min(gz.len())..].starts_with(&out[checked..]) {
                                differs = true;
                                break;
                            }
                            checked = out.len();
                        }
                        if !differs {
                            r.finish(&mut out);
                        }
                        times.push(t.elapsed().as_secs_f64());
                        if out != gz {
                            break;
                        }
                    }
                    times.sort_by(f64::total_cmp);
                    (enc, restore) = (candidate, times[times.len() / 2]);
                    if out == gz {
                        break;
                    }
                }
                // Segments planned for the frames (a long klauspost frame's).
                let segments: usize = match &enc {
                    Encoding::ZstdFrames { parts, .. } => parts
                        .iter()
                        .map(|p| p.splits().len())
                        .filter(|&n| n > 0)
                        .map(|n| n + 1)
                        .sum(),
                    _ => 0,
                };
                serde_json::json!({
                    "layer": path, "encoding": enc.label(), "exact": out == gz, "segments": segments,
                    "plain": raw.len(), "compressed": gz.len(),
                    "ingest_mbps": mb / ingest, "restore_mbps": mb / restore,
                })
            }
            // Ingest stops at what gives the encoder away: the plaintext is not all read, so
            // how much was and how long deciding took (not a rate of the whole layer).
            Err(reason) => serde_json::json!({
                "layer": path, "encoding": "raw", "reason": reason, "exact": false,
                "plain_read": raw.len(), "compressed": gz.len(), "decided_s": ingest,
            }),
        };
        println!("{line}");
        if let Some(p) = &plain_out {
            std::fs::write(p, &raw).expect("write plaintext");
        }
    }
}
