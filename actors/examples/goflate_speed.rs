//! Restore speed of a gzip layer: `goflate_speed LAYER.gz` inflates it while identifying
//! the encoder (as ingest does), then times the exact re-encoding (as a pull does).
use stowage_actors::engine::recompress::{Compression, LayerDecoder, Reencoder};

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: goflate_speed LAYER.gz");
    let gz = std::fs::read(path).unwrap();
    let t = std::time::Instant::now();
    let mut d = LayerDecoder::new(Compression::detect(&gz));
    let mut raw = Vec::new();
    for part in gz.chunks(1 << 20) {
        d.feed(part, &mut |b| raw.extend_from_slice(b)).unwrap();
    }
    let enc = d.finish().unwrap();
    let ingest = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    let mut r = Reencoder::new(&enc);
    let mut out = Vec::with_capacity(gz.len());
    for part in raw.chunks(1 << 20) {
        r.push(part, &mut out);
    }
    r.finish(&mut out);
    let restore = t.elapsed().as_secs_f64();
    assert!(out == gz, "re-encoded bytes differ");
    let mb = raw.len() as f64 / 1e6;
    println!(
        "{}: {:.0} MB plaintext; ingest (inflate + identify) {:.0} MB/s; exact restore {:.1} MB/s",
        enc.label(),
        mb,
        mb / ingest,
        mb / restore
    );
}
