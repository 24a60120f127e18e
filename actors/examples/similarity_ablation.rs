//! Similarity ablation on an OCI layout: how much near-duplicate deltas save over chunk dedup
//! alone, for several super-feature parameter sets, with the engine alone (no server).
//!
//! `similarity_ablation LAYOUT [FEATURES/SUPER/SAMPLE_BITS[/THRESHOLD[/CANDIDATES]] ...]` reads the layout's
//! images in index order (their layers in manifest order, each layer once, as a push would),
//! chunks every layer as the pipeline does and prints one JSON line per parameter set: bytes
//! of unique chunks stored whole (chunk dedup only), bytes stored with deltas, the saving,
//! how many chunks became deltas, the similarity hit rate and the throughput of the
//! similarity stage (features + lookups + delta encoding) over the chunks it saw.
//! Environment: `ABLATION_LAYERS=1` also prints what each layer adds; `ABLATION_LEVEL` and
//! `ABLATION_DELTA_LEVEL` set the zstd levels of whole chunks and deltas (default 3, as the
//! server). `ABLATION_BLOCK=N` (with `ABLATION_BLOCK_LEVEL`, default 3) also estimates
//! compressing whole chunks together in blocks of N bytes instead of one by one: the JSON gains
//! `block_chunk_only_bytes` and `block_with_delta_bytes` (whole-chunk blocks plus the deltas).
//! `benches/similarity-ablation` runs it on the make-dataset layout.
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Instant;

use stowage_actors::engine::chunk::{ChunkId, ChunkParams};
use stowage_actors::engine::container::encode_chunk;
use stowage_actors::engine::delta::DeltaCoder;
use stowage_actors::engine::features::{pick_bases, super_features, FeatureParams};
use stowage_actors::engine::recipe::{NewChunk, Origin, RecipeBuilder};
use stowage_actors::engine::recompress::{Compression, LayerDecoder};
use stowage_actors::engine::tar::TarSplitter;

fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    std::fs::read(layout.join("blobs/sha256").join(hex)).expect("read blob")
}

fn layers(layout: &Path) -> Vec<String> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
            .expect("index json");
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for m in index["manifests"].as_array().expect("manifests") {
        let man: serde_json::Value =
            serde_json::from_slice(&blob(layout, m["digest"].as_str().expect("digest")))
                .expect("manifest json");
        for l in man["layers"].as_array().expect("layers") {
            let d = l["digest"].as_str().expect("layer digest").to_string();
            if seen.insert(d.clone()) {
                out.push(d);
            }
        }
    }
    out
}

fn chunks_of(gz: &[u8], params: ChunkParams, out: &mut dyn FnMut(Vec<NewChunk>)) {
    let mut dec = LayerDecoder::new(Compression::detect(gz));
    let mut split = TarSplitter::new(params.min as u64);
    let mut b = RecipeBuilder::new(params);
    for part in gz.chunks(1 << 20) {
        dec.feed(part, &mut |raw| split.push(raw, &mut b))
            .expect("layer decodes");
        out(b.take_chunks());
    }
    split.finish(&mut b);
    let (_, last) = b.finish(dec.finish().expect("layer decodes"));
    out(last);
}

fn env_num(name: &str, default: i32) -> i32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Set {
    fp: FeatureParams,
    threshold: f64,
    candidates: usize,
}

fn parse(arg: &str) -> Set {
    let v: Vec<&str> = arg.split('/').collect();
    Set {
        fp: FeatureParams {
            features: v[0].parse().expect("features"),
            super_features: v[1].parse().expect("super-features"),
            sample_bits: v[2].parse().expect("sample bits"),
        },
        threshold: v.get(3).map_or(0.7, |t| t.parse().expect("threshold")),
        candidates: v.get(4).map_or(2, |t| t.parse().expect("candidates")),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let layout = Path::new(&args[0]);
    let sets: Vec<Set> = if args.len() > 1 {
        args[1..].iter().map(|a| parse(a)).collect()
    } else {
        vec![Set {
            fp: FeatureParams::default(),
            threshold: 0.7,
            candidates: 2,
        }]
    };
    let params = ChunkParams::default();
    let layers = layers(layout);
    for set in sets {
        set.fp.validate().expect("valid parameters");
        let mut stored: HashSet<ChunkId> = HashSet::new();
        let mut whole_data: HashMap<ChunkId, Vec<u8>> = HashMap::new();
        let mut index: HashMap<(usize, u64), ChunkId> = HashMap::new();
        let mut coder = DeltaCoder::new(env_num("ABLATION_DELTA_LEVEL", 3));
        let (mut only, mut with_delta, mut raw) = (0u64, 0u64, 0u64);
        let (mut new, mut deltas, mut lookups, mut hits) = (0u64, 0u64, 0u64, 0u64);
        let mut busy = 0f64;
        let verbose = std::env::var_os("ABLATION_LAYERS").is_some();
        let level = env_num("ABLATION_LEVEL", 3);
        let block = env_num("ABLATION_BLOCK", 0) as usize;
        let blevel = env_num("ABLATION_BLOCK_LEVEL", 3);
        let (mut buf, mut buf_only) = (Vec::new(), Vec::new());
        let (mut blocked, mut blocked_only, mut delta_bytes) = (0u64, 0u64, 0u64);
        let block_size = |b: &[u8]| {
            zstd::bulk::compress(b, blevel)
                .expect("zstd compresses")
                .len() as u64
        };
        for d in &layers {
            let gz = blob(layout, d);
            let (o0, w0) = (only, with_delta);
            chunks_of(&gz, params, &mut |batch| {
                for c in batch {
                    if !stored.insert(c.id) {
                        continue;
                    }
                    new += 1;
                    raw += c.data.len() as u64;
                    let t = Instant::now();
                    let (_, whole) = encode_chunk(&c.data, level);
                    only += whole.len() as u64;
                    let skip = matches!(
                        c.origin,
                        Origin::File {
                            compressed: true,
                            ..
                        }
                    );
                    let sf = if skip {
                        None
                    } else {
                        super_features(&c.data, &set.fp)
                    };
                    let mut size = whole.len() as u64;
                    let mut is_delta = false;
                    if let Some(sf) = &sf {
                        lookups += 1;
                        let cands =
                            pick_bases(sf, set.candidates, |i, f| index.get(&(i, f)).copied());
                        let best = cands
                            .iter()
                            .map(|(b, _)| {
                                coder
                                    .encode(&whole_data[b], &c.data)
                                    .expect("delta encodes")
                            })
                            .min_by_key(|d| d.len());
                        if let Some(delta) = best {
                            hits += 1;
                            if ((delta.len() + 20) as f64) < whole.len() as f64 * set.threshold {
                                size = (delta.len() + 20) as u64;
                                is_delta = true;
                                deltas += 1;
                            }
                        }
                    }
                    if !is_delta {
                        if let Some(sf) = sf {
                            for (i, f) in sf.into_iter().enumerate() {
                                index.insert((i, f), c.id);
                            }
                            whole_data.insert(c.id, c.data.clone());
                        }
                    }
                    busy += t.elapsed().as_secs_f64();
                    with_delta += size;
                    if block > 0 {
                        buf_only.extend_from_slice(&c.data);
                        if buf_only.len() >= block {
                            blocked_only += block_size(&buf_only);
                            buf_only.clear();
                        }
                        if is_delta {
                            delta_bytes += size;
                        } else {
                            buf.extend_from_slice(&c.data);
                            if buf.len() >= block {
                                blocked += block_size(&buf);
                                buf.clear();
                            }
                        }
                    }
                }
            });
            if verbose {
                eprintln!(
                    "{} {:>10} compressed, chunk-only +{:>10}, with deltas +{:>10}",
                    &d[7..19],
                    gz.len(),
                    only - o0,
                    with_delta - w0
                );
            }
        }
        let mut line = serde_json::json!({
                "features": set.fp.features, "super_features": set.fp.super_features,
                "sample": format!("1/{}", 1u64 << set.fp.sample_bits), "threshold": set.threshold,
                "candidates": set.candidates,
                "layers": layers.len(), "new_chunks": new, "new_raw_bytes": raw,
                "chunk_only_bytes": only, "with_delta_bytes": with_delta,
                "delta_saving": 1.0 - with_delta as f64 / only as f64,
                "delta_chunks": deltas, "hit_rate": hits as f64 / lookups.max(1) as f64,
                "similarity_mbps": raw as f64 / 1e6 / busy,
        });
        if block > 0 {
            line["block"] = serde_json::json!(block);
            line["block_level"] = serde_json::json!(blevel);
            line["block_chunk_only_bytes"] =
                serde_json::json!(blocked_only + block_size(&buf_only));
            line["block_with_delta_bytes"] =
                serde_json::json!(blocked + block_size(&buf) + delta_bytes);
        }
        println!("{line}");
    }
}
