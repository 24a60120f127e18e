//! The actor pipeline end to end over an in-memory catalog: layers go in staged, come out
//! deduplicated (raw blob removed) or raw with a reason, and restore bit for bit.

mod common;

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use stowage_actors::storage::containers::Containers;

use std::sync::atomic::Ordering::Relaxed;
use stowage_actors::digest::Digest;
use stowage_actors::engine::chunk::{ChunkId, ChunkParams};
use stowage_actors::engine::container::ChunkLoc;
use stowage_actors::engine::recipe::Recipe;
use stowage_actors::engine::tar::FileEntry;

use stowage_actors::pipeline::{
    Catalog, LayerPolicy, Outcome, Pipeline, PipelineConfig, SealedContainer, StageStats,
};
use stowage_actors::restore::{restore_layer, ChunkReader};

#[derive(Default)]
struct MemCatalog {
    chunks: Mutex<HashMap<ChunkId, ChunkLoc>>,
    features: Mutex<HashMap<(usize, u64), ChunkId>>,
    dependents: Mutex<HashMap<ChunkId, u64>>,
    next: Mutex<u64>,
    recipes: Mutex<HashMap<Digest, (Recipe, Vec<FileEntry>)>>,
    raw: Mutex<HashMap<Digest, String>>,
    /// Container allocations to refuse (a full disk, say) before working again.
    fail_allocations: Mutex<u32>,
}

impl Catalog for MemCatalog {
    fn chunk(&self, id: &ChunkId) -> io::Result<Option<ChunkLoc>> {
        Ok(self.chunks.lock().unwrap().get(id).copied())
    }
    fn allocate_container(&self) -> io::Result<u64> {
        let mut fail = self.fail_allocations.lock().unwrap();
        if *fail > 0 {
            *fail -= 1;
            return Err(io::Error::other("no space left (test)"));
        }
        let mut n = self.next.lock().unwrap();
        *n += 1;
        Ok(*n)
    }
    fn similar(&self, sf: &[u64]) -> io::Result<Vec<Option<ChunkId>>> {
        let m = self.features.lock().unwrap();
        Ok(sf
            .iter()
            .enumerate()
            .map(|(i, f)| m.get(&(i, *f)).copied())
            .collect())
    }
    fn commit_container(&self, sealed: &SealedContainer) -> io::Result<()> {
        let mut m = self.chunks.lock().unwrap();
        for (id, loc) in &sealed.entries {
            m.entry(*id).or_insert(*loc);
        }
        for (delta, base) in &sealed.bases {
            assert!(m[base].encoding.is_whole(), "{delta}: base {base} is whole");
            *self.dependents.lock().unwrap().entry(*base).or_default() += 1;
        }
        let mut f = self.features.lock().unwrap();
        for (id, sf) in &sealed.features {
            assert!(m[id].encoding.is_whole());
            for (i, v) in sf.iter().enumerate() {
                f.insert((i, *v), *id);
            }
        }
        Ok(())
    }
    fn commit_recipe(&self, blob: &Digest, r: &Recipe, files: &[FileEntry]) -> io::Result<()> {
        self.recipes
            .lock()
            .unwrap()
            .insert(blob.clone(), (r.clone(), files.to_vec()));
        Ok(())
    }
    fn keep_raw(&self, blob: &Digest, reason: &str) -> io::Result<()> {
        self.raw.lock().unwrap().insert(blob.clone(), reason.into());
        Ok(())
    }
}

fn layer(version: u8) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut x = 7u64;
    for i in 0..30 {
        let size = [100, 6000, 80_000, 400_000][i % 4];
        let mut data: Vec<u8> = (0..size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 16) as u8 + b'a'
            })
            .collect();
        if i == 5 {
            data[size / 3] = version;
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(size as u64);
        h.set_mode(0o755);
        h.set_cksum();
        b.append_data(&mut h, format!("app/file{i}"), &data[..])
            .unwrap();
    }
    b.into_inner().unwrap()
}

/// A tar of one regular file.
fn tar_of_one(path: &str, data: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, path, data).unwrap();
    b.into_inner().unwrap()
}

fn gzip(raw: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    e.write_all(raw).unwrap();
    e.finish().unwrap()
}

fn config(containers: &Path) -> PipelineConfig {
    PipelineConfig {
        containers: Arc::new(Containers::local(containers)),
        chunk: ChunkParams::default(),
        container_target: 1 << 20,
        zstd_level: 3,
        similarity: Default::default(),
        hot: None,
        zstd_frames: Default::default(),
        zstd_segment_cores: stowage_actors::engine::zstd_frames::SegmentCores::Fixed(1),
        min_restore_rate: 0.0,
    }
}

/// Run a pipeline over `staged` blobs, one after the other with `policy`: their outcomes and
/// the pipeline's counters.
fn dedup_all(
    cat: &Arc<MemCatalog>,
    cfg: PipelineConfig,
    staged: &[(Digest, std::path::PathBuf)],
    policy: LayerPolicy,
) -> (Vec<Outcome>, Arc<StageStats>) {
    let (cat, staged) = (cat.clone(), staged.to_vec());
    actix::System::new().block_on(async move {
        let p = Pipeline::start(cat, cfg).unwrap();
        let mut out = Vec::new();
        for (d, path) in staged {
            out.push(p.dedup(d, path, policy.clone()).await);
        }
        (out, p.stats.clone())
    })
}

/// The bytes of committed layer `d`, restored from its recipe.
fn restored(cat: &Arc<MemCatalog>, containers: &Path, d: &Digest) -> Vec<u8> {
    let recipe = cat.recipes.lock().unwrap()[d].0.clone();
    let reader = ChunkReader::new(cat.clone(), Arc::new(Containers::local(containers)));
    let mut out = Vec::new();
    restore_layer(&recipe, &reader, &mut |b| {
        out.extend_from_slice(b);
        Ok(())
    })
    .unwrap();
    out
}

fn stage(dir: &Path, data: &[u8]) -> (Digest, std::path::PathBuf) {
    let d = Digest::sha256_of(data);
    let p = dir.join(d.hex());
    std::fs::write(&p, data).unwrap();
    (d, p)
}

/// A fresh store that deduplicated `blob` alone under `cfg` (given the containers' directory):
/// its directory (kept while the result lives), containers, catalog and staged blob.
fn deduplicate_one(
    blob: &[u8],
    cfg: impl FnOnce(&Path) -> PipelineConfig,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    Arc<MemCatalog>,
    (Digest, std::path::PathBuf),
) {
    let dir = tempfile::tempdir().unwrap();
    let containers = dir.path().join("containers");
    let cat = Arc::new(MemCatalog::default());
    let staged = [stage(dir.path(), blob)];
    let (outcomes, _) = dedup_all(&cat, cfg(&containers), &staged, LayerPolicy::default());
    assert!(
        matches!(&outcomes[0], Outcome::Deduplicated { .. }),
        "{outcomes:?}"
    );
    let [staged] = staged;
    (dir, containers, cat, staged)
}

#[test]
fn layers_deduplicate_and_restore_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let containers = dir.path().join("containers");
    let cat = Arc::new(MemCatalog::default());
    let cfg = config(&containers);
    let blobs = [
        gzip(&layer(1)),
        gzip(&layer(2)),
        layer(3),
        b"{\"config\":true}".to_vec(),
        // A gzip stream no zlib level reproduces (stored blocks from level 0).
        {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(0));
            e.write_all(&layer(4)).unwrap();
            e.finish().unwrap()
        },
    ];
    let staged: Vec<_> = blobs.iter().map(|b| stage(dir.path(), b)).collect();
    let (outcomes, stats) = dedup_all(&cat, cfg, &staged, LayerPolicy::default());
    let new = stats.new_chunks.load(Relaxed);
    let dup = stats.duplicate_chunks.load(Relaxed);
    assert!(
        dup > new / 2,
        "layers 2 and 3 share most chunks: {new} new, {dup} dup"
    );
    for (i, o) in outcomes.iter().take(4).enumerate() {
        assert!(matches!(o, Outcome::Deduplicated { .. }), "blob {i}: {o:?}");
        assert!(!staged[i].1.exists(), "raw blob {i} removed after verify");
    }
    match &outcomes[4] {
        Outcome::Raw { reason } => assert!(reason.contains("zlib"), "{reason}"),
        o => panic!("{o:?}"),
    }
    assert!(staged[4].1.exists(), "a raw layer keeps its blob");

    for (i, blob) in blobs.iter().take(4).enumerate() {
        let files = cat.recipes.lock().unwrap()[&staged[i].0].1.clone();
        assert!(
            restored(&cat, &containers, &staged[i].0) == *blob,
            "blob {i} restores bit for bit"
        );
        if i < 3 {
            assert_eq!(files.len(), 30);
        }
    }
}

/// A restore that stops early (a served range, a client that went away) must not leave its
/// reader thread blocked: many early stops in a row all return.
#[test]
fn early_stops_do_not_hang() {
    let dir = tempfile::tempdir().unwrap();
    let containers = dir.path().join("containers");
    let cat = Arc::new(MemCatalog::default());
    let cfg = config(&containers);
    let blob = gzip(&layer(9));
    let staged = [stage(dir.path(), &blob)];
    let outcome = dedup_all(&cat, cfg, &staged, LayerPolicy::default()).0[0].clone();
    assert!(
        matches!(outcome, Outcome::Deduplicated { .. }),
        "{outcome:?}"
    );
    let recipe = cat
        .recipes
        .lock()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .0
        .clone();
    let reader = ChunkReader::new(cat.clone(), Arc::new(Containers::local(&containers)));
    for _ in 0..20 {
        let r = restore_layer(&recipe, &reader, &mut |_| {
            Err(io::Error::new(io::ErrorKind::BrokenPipe, "stop"))
        });
        assert!(r.is_err());
    }
}

/// A version series: every version rewrites a few bytes in every 20 KiB of its files (a
/// rebuilt binary, bumped version strings), so few chunks are identical but most are similar.
fn version(v: u32) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut x = 99u64;
    for i in 0..6 {
        let size = 300_000 + i * 1000;
        let mut data: Vec<u8> = (0..size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 40) as u8 + b'0'
            })
            .collect();
        for at in (v as usize * 37..size - 16).step_by(20_000) {
            data[at..at + 12].copy_from_slice(format!("v{v:011}").as_bytes());
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(size as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, format!("lib/part{i}.so"), &data[..])
            .unwrap();
    }
    b.into_inner().unwrap()
}

fn run_series(policy: LayerPolicy) -> (Arc<MemCatalog>, u64, u64, u64, bool) {
    let dir = tempfile::tempdir().unwrap();
    let containers = dir.path().join("containers");
    let cat = Arc::new(MemCatalog::default());
    let cfg = config(&containers);
    let blobs: Vec<Vec<u8>> = (1..=5).map(|v| gzip(&version(v))).collect();
    let staged: Vec<_> = blobs.iter().map(|b| stage(dir.path(), b)).collect();
    let (outcomes, s) = dedup_all(&cat, cfg, &staged, policy);
    for o in &outcomes {
        assert!(matches!(o, Outcome::Deduplicated { .. }), "{o:?}");
    }
    let (whole, delta, saved) = (
        s.chunks_whole.load(Relaxed),
        s.chunks_delta.load(Relaxed),
        s.delta_saved_bytes.load(Relaxed),
    );
    let exact = blobs
        .iter()
        .zip(&staged)
        .all(|(blob, (d, _))| restored(&cat, &containers, d) == *blob);
    (cat, whole, delta, saved, exact)
}

#[test]
fn a_version_series_is_stored_as_deltas_and_restores_exactly() {
    let (cat, whole, delta, saved, exact) = run_series(LayerPolicy::default());
    assert!(exact, "every version restores bit for bit");
    // Versions 2-5 change every chunk a little: nearly all their chunks become deltas.
    assert!(delta > 3 * whole / 2, "{whole} whole, {delta} deltas");
    assert!(saved > 0);
    let deps: u64 = cat.dependents.lock().unwrap().values().sum();
    assert_eq!(deps, delta, "every delta is counted against its base");

    let (_, whole_off, delta_off, _, exact) = run_series(LayerPolicy { similarity: false });
    assert!(exact);
    assert_eq!(delta_off, 0, "a chunks-only policy stores no deltas");
    assert_eq!(whole_off, whole + delta);
}

/// A layer whose packing fails leaves its chunks' features in the similarity stage's memory;
/// the next similar layer's deltas against them must not be stored against bases that never
/// reached a container: Pack stores those chunks whole, and the layer restores exactly.
#[test]
fn deltas_against_bases_that_never_reached_a_container_are_stored_whole() {
    let dir = tempfile::tempdir().unwrap();
    let containers = dir.path().join("containers");
    let cat = Arc::new(MemCatalog::default());
    *cat.fail_allocations.lock().unwrap() = 1;
    let cfg = config(&containers);
    let blobs: Vec<Vec<u8>> = (1..=2).map(|v| gzip(&version(v))).collect();
    let staged: Vec<_> = blobs.iter().map(|b| stage(dir.path(), b)).collect();
    let (outcomes, s) = dedup_all(&cat, cfg, &staged, LayerPolicy::default());
    let (fallbacks, deltas) = (
        s.delta_fallbacks.load(Relaxed),
        s.chunks_delta.load(Relaxed),
    );
    assert!(
        matches!(&outcomes[0], Outcome::Raw { reason } if reason.contains("packing")),
        "{:?}",
        outcomes[0]
    );
    assert!(
        matches!(outcomes[1], Outcome::Deduplicated { .. }),
        "{:?}",
        outcomes[1]
    );
    assert!(
        fallbacks > 0,
        "the second layer's deltas fell back to whole chunks"
    );
    assert_eq!(deltas, 0, "no delta names a base that was never stored");
    assert!(restored(&cat, &containers, &staged[1].0) == blobs[1]);
}

/// klauspost releases that write the same first 4 MiB of a long zstd frame (all ingest
/// compares) but not the same frame: verification tries the others ingest found alike, and
/// the layer is deduplicated under the one that re-creates it instead of being kept raw.
#[test]
fn a_zstd_layer_whose_first_encoder_guess_fails_is_verified_under_another() {
    use stowage_actors::engine::kpzstd::{KpLevel, KpOptions, KpStreamEncoder, KpVersion};
    use stowage_actors::engine::recompress::{Compression, LayerDecoder, Reencoder};
    // 5 MiB of text, 1 MiB of few matches (where 1.16.4 writes literal blocks differently
    // from 1.15.12), 1 MiB of text, as one file.
    let words = ["frame", "skip", "zstd", "layer", "\n", "tar ", "chunk"];
    let mut x = 3u64;
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x
    };
    let mut data = Vec::new();
    while data.len() < 5 << 20 {
        data.extend_from_slice(words[(next() >> 60) as usize % words.len()].as_bytes());
    }
    data.extend((0..1 << 20).map(|_| b'a' + ((next() >> 33) % 16) as u8));
    for _ in 0..200_000 {
        data.extend_from_slice(words[(next() >> 60) as usize % words.len()].as_bytes());
    }
    let tar = tar_of_one("app/data.txt", &data);
    let mut e = KpStreamEncoder::new(&KpOptions {
        level: KpLevel::Default,
        version: KpVersion::V1_16_4,
        ..KpOptions::default()
    })
    .unwrap();
    let mut blob = Vec::new();
    e.write(&tar, &mut blob);
    e.close(&mut blob);

    // The premise: ingest's first choice does not re-create the layer, another it found does.
    let mut d = LayerDecoder::new(Compression::detect(&blob));
    d.feed(&blob, &mut |_| {}).unwrap();
    let (first, alternatives) = d.finish_with_alternatives().unwrap();
    let recreates = |enc| {
        let mut r = Reencoder::new(enc);
        let mut out = Vec::new();
        r.push(&tar, &mut out);
        r.finish(&mut out);
        out == blob
    };
    assert!(!recreates(&first), "premise: {} differs", first.label());
    assert!(
        alternatives.iter().any(recreates),
        "premise: an alternative re-creates it"
    );

    let (_dir, containers, cat, staged) = deduplicate_one(&blob, config);
    assert!(!staged.1.exists(), "raw blob removed after verify");
    assert!(
        restored(&cat, &containers, &staged.0) == blob,
        "restores bit for bit"
    );
}

/// `tar` as zstd:chunked lays it out: a zstd frame per tar entry (header and contents) written
/// by klauspost's `SpeedBestCompression`, then a skippable frame (its table of contents).
fn chunked_like(tar: &[u8]) -> Vec<u8> {
    use stowage_actors::engine::zstd_frames::{encode_frame, FrameShape, KpZstdLevel, ZstdEncoder};
    let mut starts: Vec<usize> = tar::Archive::new(tar)
        .entries()
        .unwrap()
        .map(|e| e.unwrap().raw_header_position() as usize)
        .collect();
    starts.push(tar.len());
    let best = ZstdEncoder::Klauspost {
        level: KpZstdLevel::Best,
        version: Default::default(),
    };
    let mut out = Vec::new();
    for w in starts.windows(2) {
        out.extend(encode_frame(&best, &tar[w[0]..w[1]], FrameShape::flags(0)));
    }
    out.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, b't', b'o', b'c', b'!']);
    out
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                dir_bytes(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
    })
}

#[test]
fn zstd_chunked_frames_are_stored_as_they_are_and_repeat_across_versions() {
    use stowage_actors::engine::recompress::Encoding;
    let dir = tempfile::tempdir().unwrap();
    let containers = dir.path().join("containers");
    let cat = Arc::new(MemCatalog::default());
    let blobs = [chunked_like(&layer(1)), chunked_like(&layer(2))];
    let staged: Vec<_> = blobs.iter().map(|b| stage(dir.path(), b)).collect();
    let cfg = || config(&containers);
    let (outcomes, _) = dedup_all(&cat, cfg(), &staged[..1], LayerPolicy::default());
    assert!(
        matches!(&outcomes[0], Outcome::Deduplicated { .. }),
        "{outcomes:?}"
    );
    let first = dir_bytes(&containers);
    let (outcomes, _) = dedup_all(&cat, cfg(), &staged[1..], LayerPolicy::default());
    assert!(
        matches!(&outcomes[0], Outcome::Deduplicated { .. }),
        "{outcomes:?}"
    );
    let second = dir_bytes(&containers) - first;

    for ((d, path), blob) in staged.iter().zip(&blobs) {
        assert!(!path.exists(), "raw blob removed after verify");
        assert!(
            restored(&cat, &containers, d) == *blob,
            "restores bit for bit"
        );
        let (recipe, files) = cat.recipes.lock().unwrap()[d].clone();
        let Encoding::ZstdStoredFrames { frames, encoder } = &recipe.encoding else {
            panic!("stored as frames: {:?}", recipe.encoding.label());
        };
        assert_eq!(*frames, 30, "a frame per entry");
        assert_eq!(encoder.map(|e| e.label()).as_deref(), Some("zstd-kp-best"));
        assert_eq!(
            recipe.raw_len,
            blob.len() as u64,
            "the compressed stream is the recipe's"
        );
        assert_eq!(
            files.len(),
            30,
            "the file index comes from the decompressed tar"
        );
        assert!(files.iter().all(|f| f.sha256.starts_with("sha256:")));
    }
    // One file of thirty changed: its frame, and the inline chunk around it, are new.
    assert!(
        second * 5 < first,
        "the second version adds {second} bytes to the first's {first}"
    );
}

/// With frame deltas on, the frame of the one file that changed between two zstd:chunked
/// versions is stored as a delta of its plaintext against the first version's frame, and
/// re-encoded exactly on read; off (the default), it is stored whole.
#[test]
fn a_changed_frame_is_a_frame_delta_when_they_are_on() {
    use stowage_actors::engine::container::ChunkEncoding;
    for min_saving in [Some(0.05), None] {
        let dir = tempfile::tempdir().unwrap();
        let containers = dir.path().join("containers");
        let cat = Arc::new(MemCatalog::default());
        let blobs = [chunked_like(&layer(1)), chunked_like(&layer(2))];
        let staged: Vec<_> = blobs.iter().map(|b| stage(dir.path(), b)).collect();
        let mut cfg = config(&containers);
        cfg.similarity.frame_delta_min_saving = min_saving;
        let (outcomes, stats) = dedup_all(&cat, cfg, &staged, LayerPolicy::default());
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, Outcome::Deduplicated { .. })),
            "{outcomes:?}"
        );
        for ((d, _), blob) in staged.iter().zip(&blobs) {
            assert!(restored(&cat, &containers, d) == *blob, "bit for bit");
        }
        let frame_deltas: Vec<ChunkLoc> = cat
            .chunks
            .lock()
            .unwrap()
            .values()
            .filter(|l| l.encoding == ChunkEncoding::FrameDelta)
            .copied()
            .collect();
        if min_saving.is_none() {
            assert!(frame_deltas.is_empty(), "off by default");
            assert_eq!(stats.chunks_delta.load(Relaxed), 0);
            continue;
        }
        // File 5 (6000 bytes, one byte changed): its frame, about 3 KB, as a delta of tens.
        assert_eq!(frame_deltas.len(), 1, "{frame_deltas:?}");
        let l = frame_deltas[0];
        assert!(
            l.stored_len * 20 < l.raw_len,
            "{} stored for a frame of {}",
            l.stored_len,
            l.raw_len
        );
        assert_eq!(stats.chunks_delta.load(Relaxed), 1);
        assert_eq!(stats.frame_deltas.load(Relaxed), 1);
    }
}

#[test]
fn zstd_frames_are_reencoded_when_the_policy_says_so() {
    use stowage_actors::engine::recompress::Encoding;
    use stowage_actors::pipeline::ZstdFrames;
    let blob = chunked_like(&layer(1));
    let (_dir, containers, cat, staged) = deduplicate_one(&blob, |containers| PipelineConfig {
        zstd_frames: ZstdFrames::Reencode,
        ..config(containers)
    });
    let recipe = cat.recipes.lock().unwrap()[&staged.0].0.clone();
    assert!(
        matches!(recipe.encoding, Encoding::ZstdFrames { .. }),
        "{}",
        recipe.encoding.label()
    );
    assert!(restored(&cat, &containers, &staged.0) == blob);
}

/// A chunk whose stored bytes changed (a flipped bit on disk, in a chunk kept as is, so that
/// nothing but its id can tell) fails a restore that checks chunks, whichever side checks
/// them: the reader for a re-encoded (gzip) layer, the writer for a copied (uncompressed) one.
#[test]
fn a_chunk_read_back_with_other_bytes_fails_a_checked_restore() {
    use stowage_actors::engine::container::ChunkEncoding;
    use stowage_actors::engine::recompress::Reencoder;
    use stowage_actors::restore::{restore_tail_timed, StageTimes};
    let mut x = 11u64;
    let noise: Vec<u8> = (0..300_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let tar = tar_of_one("noise.bin", &noise);
    for (blob, copies) in [(tar.clone(), true), (gzip(&tar), false)] {
        let (_dir, containers, cat, staged) = deduplicate_one(&blob, config);
        let recipe = cat.recipes.lock().unwrap()[&staged.0].0.clone();
        assert_eq!(Reencoder::new(&recipe.encoding).copies(), copies);
        let restore = |verify| {
            let reader = ChunkReader::new(cat.clone(), Arc::new(Containers::local(&containers)));
            let mut out = Vec::new();
            let r = restore_tail_timed(
                &recipe,
                0,
                Reencoder::new(&recipe.encoding),
                verify,
                &reader,
                &StageTimes::default(),
                &mut |b| {
                    out.extend_from_slice(b);
                    Ok(())
                },
            );
            r.map(|()| out)
        };
        assert!(restore(true).unwrap() == blob, "restores while intact");

        // Flip a byte in the middle of a file chunk stored as it is.
        let file_chunk = recipe.files[recipe.files.len() / 2].0;
        let loc = cat.chunks.lock().unwrap()[&file_chunk];
        assert_eq!(
            loc.encoding,
            ChunkEncoding::Stored,
            "noise is stored as it is"
        );
        let path = Containers::local(&containers).path(loc.container);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[(loc.offset + u64::from(loc.stored_len) / 2) as usize] ^= 1;
        std::fs::write(&path, bytes).unwrap();

        let e = restore(true).unwrap_err().to_string();
        assert!(
            e.contains("read back with other bytes"),
            "copies {copies}: {e}"
        );
        // Unchecked, the change goes through (the layer digest is what catches it then).
        assert!(restore(false).unwrap() != blob);
    }
}

/// A long one-frame klauspost layer (64 MB of this machine's Python and Perl modules at
/// `SpeedDefault`, as `skopeo copy --dest-compress-format zstd` writes it) with segments
/// planned for two cores: ingest records them, verify-before-discard proves them, and the
/// layer restores bit for bit through them.
#[test]
fn a_long_klauspost_layer_is_deduplicated_with_segments_and_restores_exactly() {
    use stowage_actors::engine::kpzstd::{KpOptions, KpStreamEncoder};
    use stowage_actors::engine::recompress::Encoding;
    let data = common::files_under(
        &["/usr/share/perl", "/usr/lib/python3", "/usr/lib/python3.11"],
        64 << 20,
    );
    assert!(data.len() >= 60 << 20, "too few files for the layer");
    let tar = tar_of_one("usr/lib/modules.bin", &data);
    let mut e = KpStreamEncoder::new(&KpOptions::default()).unwrap();
    let mut blob = Vec::new();
    e.write(&tar, &mut blob);
    e.close(&mut blob);
    let (_dir, containers, cat, staged) = deduplicate_one(&blob, |containers| PipelineConfig {
        zstd_segment_cores: stowage_actors::engine::zstd_frames::SegmentCores::Fixed(2),
        min_restore_rate: 0.0,
        ..config(containers)
    });
    let recipe = cat.recipes.lock().unwrap()[&staged.0].0.clone();
    let Encoding::ZstdFrames { parts, .. } = &recipe.encoding else {
        panic!("{}", recipe.encoding.label());
    };
    assert_eq!(parts[0].splits().len(), 1, "{parts:?}");
    assert!(restored(&cat, &containers, &staged.0) == blob);
    // In segments, not whole: the process's segment threads are not limited here.
    let segments = stowage_actors::engine::zstd_frames::SEGMENT_THREADS.reading();
    assert!(
        segments.segmented >= 1 && segments.whole == 0,
        "{segments:?}"
    );
}
