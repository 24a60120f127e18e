//! Property-style round trips of the engine without actix: many random layers (random tar
//! structure, sizes, long names, trailing bytes, compression and feed sizes) must restore bit
//! for bit; truncated and corrupted inputs must be refused cleanly, never mis-restored.

mod common;

use std::collections::HashMap;
use std::io::Write;

use stowage_actors::engine::chunk::{ChunkId, ChunkParams};
use stowage_actors::engine::recipe::{restore, Recipe, RecipeBuilder};
use stowage_actors::engine::recompress::{Compression, LayerDecoder, NotExact};
use stowage_actors::engine::tar::TarSplitter;

use common::Rng;

fn random_tar(r: &mut Rng) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..r.below(30) {
        let size = match r.below(5) {
            0 => 0,
            1 => r.below(600),
            2 => r.below(5000),
            3 => r.below(70_000),
            _ => r.below(400_000),
        } as usize;
        let compressible = r.below(2) == 0;
        let data = r.bytes(size, compressible);
        let depth = r.below(4) as usize;
        let long = "n".repeat(if r.below(4) == 0 { 120 } else { 5 });
        let path = format!("{}{long}{i}", "dir/".repeat(depth));
        let mut h = if r.below(2) == 0 {
            tar::Header::new_gnu()
        } else {
            tar::Header::new_ustar()
        };
        h.set_mode(0o600 + r.below(0o177) as u32);
        h.set_mtime(r.below(2_000_000_000));
        if r.below(8) == 0 {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            b.append_data(&mut h, format!("{path}/"), &[][..]).unwrap();
        } else {
            h.set_size(size as u64);
            b.append_data(&mut h, &path, &data[..]).unwrap();
        }
    }
    let mut t = b.into_inner().unwrap();
    if r.below(4) == 0 {
        let n = r.below(2000) as usize;
        let extra = r.bytes(n, false);
        t.extend_from_slice(&extra);
    }
    t
}

fn compress(raw: &[u8], r: &mut Rng) -> (Vec<u8>, &'static str) {
    match r.below(4) {
        0 => (raw.to_vec(), "none"),
        1 | 2 => {
            let level = 1 + r.below(9) as u32;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
            e.write_all(raw).unwrap();
            (e.finish().unwrap(), "gzip")
        }
        _ => (
            zstd::stream::encode_all(raw, 1 + r.below(19) as i32).unwrap(),
            "zstd",
        ),
    }
}

/// Ingest `blob` fed in random pieces; Ok(recipe, chunk store) or the refusal.
fn ingest(
    blob: &[u8],
    r: &mut Rng,
    params: ChunkParams,
) -> Result<(Recipe, HashMap<ChunkId, Vec<u8>>), NotExact> {
    let mut dec = LayerDecoder::new(Compression::detect(blob));
    let mut split = TarSplitter::new(params.min as u64);
    let mut b = RecipeBuilder::new(params);
    let mut store = HashMap::new();
    let mut rest = blob;
    while !rest.is_empty() {
        let n = (1 + r.below(200_000) as usize).min(rest.len());
        dec.feed(&rest[..n], &mut |raw| split.push(raw, &mut b))?;
        rest = &rest[n..];
        for c in b.take_chunks() {
            store.insert(c.id, c.data);
        }
    }
    split.finish(&mut b);
    let enc = dec.finish()?;
    let (recipe, last) = b.finish(enc);
    for c in last {
        store.insert(c.id, c.data);
    }
    Ok((recipe.expect("no collision"), store))
}

fn rebuild(recipe: &Recipe, store: &HashMap<ChunkId, Vec<u8>>) -> Vec<u8> {
    let mut it = recipe
        .read_order()
        .into_iter()
        .map(|(id, _)| Ok(store[&id].clone()));
    let mut out = Vec::new();
    restore(recipe, &mut it, &mut |b| {
        out.extend_from_slice(b);
        Ok(())
    })
    .unwrap();
    out
}

#[test]
fn random_layers_round_trip() {
    let params = [
        ChunkParams::default(),
        ChunkParams {
            min: 1024,
            avg: 4096,
            max: 16384,
        },
    ];
    for seed in 1..=60u64 {
        let mut r = Rng(seed.wrapping_mul(0x9e3779b97f4a7c15) | 1);
        let raw = random_tar(&mut r);
        let (blob, kind) = compress(&raw, &mut r);
        let p = params[(seed % 2) as usize];
        let (recipe, store) =
            ingest(&blob, &mut r, p).unwrap_or_else(|e| panic!("seed {seed} ({kind}): {e}"));
        assert_eq!(recipe.raw_len, raw.len() as u64, "seed {seed}");
        assert!(
            rebuild(&recipe, &store) == blob,
            "seed {seed} ({kind}) differs"
        );
        assert_eq!(Recipe::from_bytes(&recipe.to_bytes()).unwrap(), recipe);
    }
}

#[test]
fn truncated_and_corrupt_compressed_layers_are_refused() {
    for seed in 1..=30u64 {
        let mut r = Rng(seed.wrapping_mul(0x2545f4914f6cdd1d) | 1);
        let raw = random_tar(&mut r);
        if raw.len() < 2048 {
            continue;
        }
        let (blob, kind) = compress(&raw, &mut r);
        if kind == "none" {
            continue; // an uncompressed stream is restored as whatever bytes it is
        }
        let cut = 1 + r.below(blob.len() as u64 - 1) as usize;
        assert!(
            ingest(&blob[..cut], &mut r, ChunkParams::default()).is_err(),
            "seed {seed} ({kind}): truncated at {cut} of {} accepted",
            blob.len()
        );
        let mut bad = blob.clone();
        let at = r.below(bad.len() as u64) as usize;
        bad[at] ^= 1 << r.below(8);
        // A flipped bit is either refused, or (rarely, e.g. in a gzip header's mtime) still a
        // valid stream: then it must restore to exactly the corrupted bytes, never to others.
        if let Ok((recipe, store)) = ingest(&bad, &mut r, ChunkParams::default()) {
            assert!(rebuild(&recipe, &store) == bad, "seed {seed} ({kind})");
        }
    }
}
