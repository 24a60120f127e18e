//! `stowage fsck`: offline check that every blob still produces its digest.
//!
//! Deduplicated blobs are restored from their recipes (every chunk read from its container,
//! decoded and re-encoded) and hashed; staged and raw blobs are hashed from `staging/`. Sealed
//! containers are checked for a readable header and index, and every indexed delta for a base
//! that is indexed and stored whole (invariant 5); each chunk's count of dependent deltas must
//! match the deltas found (a base is never removed while a delta depends on it). Reference
//! counts are checked against what they count (chunk references against the recipes, blob and
//! manifest link counts against the link tables), and files no record names (containers,
//! staged blobs) are reported. Progress goes
//! to stderr; the exit status is non-zero if anything is wrong.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use stowage_actors::storage::containers::Containers;

use indicatif::{ProgressBar, ProgressStyle};

use stowage_actors::engine::chunk::ChunkId;
use stowage_actors::engine::container::{read_index, ChunkLoc};
use stowage_actors::restore::{restore_layer_proving, ChunkReader};

use crate::meta::{BlobState, ChunkRecord, Meta};
use crate::names::Digest;
use crate::registry::dedup::MetaCatalog;
use crate::store::LocalStore;

pub struct FsckReport {
    pub blobs: u64,
    pub bytes: u64,
    pub problems: Vec<String>,
    /// Files no record names, which the next start or collection removes.
    pub strays: Vec<String>,
}

pub fn run(
    root: &Path,
    map_size: usize,
    storage: &crate::config::StorageConfig,
) -> anyhow::Result<FsckReport> {
    anyhow::ensure!(
        root.join("meta").exists(),
        "{} holds no stowage store",
        root.display()
    );
    let containers = Arc::new(crate::registry::open_containers(root, storage)?);
    let meta = Arc::new(crate::registry::open_meta(
        root,
        map_size,
        &containers,
        true,
    )?);
    let store = LocalStore::at(root);
    let blobs = {
        let t = meta.read()?;
        meta.all_blobs(&t)?
    };
    let total: u64 = blobs.iter().map(|(_, b)| b.size).sum();
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template(
            "fsck {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
        )
        .expect("progress template"),
    );
    let mut problems = Vec::new();

    let chunks: HashMap<ChunkId, ChunkRecord> = {
        let t = meta.read()?;
        meta.all_chunks(&t)?.into_iter().collect()
    };
    let mut dependents: HashMap<ChunkId, u64> = HashMap::new();
    // Every container here, then (with a bucket) every committed one that is not, fetched.
    let mut seen = std::collections::HashSet::new();
    for e in std::fs::read_dir(containers.dir())? {
        let p = e?.path();
        if let Some(id) = stowage_actors::engine::container::container_id(&p) {
            seen.insert(id);
        }
        match read_index(&p) {
            Err(err) => problems.push(format!("container {}: {err}", p.display())),
            Ok((_, index)) => check_deltas(&p, &index, &chunks, &mut dependents, &mut problems),
        }
    }
    if containers.bucket().is_some() {
        let committed: Vec<u64> = {
            let t = meta.read()?;
            meta.all_containers(&t)?
                .into_iter()
                .map(|(id, _)| id)
                .collect()
        };
        for id in committed.into_iter().filter(|id| !seen.contains(id)) {
            let p = containers.path(id);
            match containers.open(id).and_then(|_| read_index(&p)) {
                Err(err) => problems.push(format!("container {id:016x} (from the bucket): {err}")),
                Ok((_, index)) => check_deltas(&p, &index, &chunks, &mut dependents, &mut problems),
            }
        }
    }
    for (id, rec) in &chunks {
        let found = dependents.get(id).copied().unwrap_or(0);
        if rec.dependents != found {
            problems.push(format!(
                "chunk {id}: the index counts {} dependent deltas, the containers hold {found}",
                rec.dependents
            ));
        }
    }

    {
        let t = meta.read()?;
        let (kept, counted) = (meta.chunk_counts(&t)?, meta.scan_chunk_counts(&t)?);
        if kept != counted {
            problems.push(format!(
                "chunk totals kept for statistics are {kept:?}, the chunk index holds {counted:?}"
            ));
        }
        for (container, block) in meta.feature_blocks(&t)? {
            match block {
                Err(e) => problems.push(format!("feature block of container {container}: {e}")),
                Ok(_) if !meta.container_known(&t, container)? => problems.push(format!(
                    "feature block of container {container}, which was never committed"
                )),
                Ok(_) => {}
            }
        }
    }

    let mut strays = Vec::new();
    check_references(
        &meta,
        root,
        &containers,
        &chunks,
        &mut problems,
        &mut strays,
    )?;
    let reader = ChunkReader::new(Arc::new(MetaCatalog(meta.clone())), containers.clone());
    let mut bytes = 0u64;
    for (d, rec) in &blobs {
        bar.set_message(d.hex()[..12].to_string());
        let mut h = d.algorithm().hasher();
        let mut n = 0u64;
        let res: anyhow::Result<()> = match &rec.state {
            BlobState::Deduplicated { .. } => (|| {
                let recipe = {
                    let t = meta.read()?;
                    // The file index is read too: it may be a patch against another layer's.
                    meta.layer_files(&t, d)?
                        .ok_or_else(|| anyhow::anyhow!("no file index"))?;
                    meta.recipe(&t, d)?
                }
                .ok_or_else(|| anyhow::anyhow!("no recipe"))?;
                restore_layer_proving(&recipe, &reader, &mut |b| {
                    h.update(b);
                    n += b.len() as u64;
                    bar.inc(b.len() as u64);
                    Ok(())
                })?;
                Ok(())
            })(),
            BlobState::Staged | BlobState::Raw { .. } => (|| {
                let mut f: Box<dyn Read> = match (store.open_blob(d, 0), containers.blocking()) {
                    (Ok(f), _) => Box::new(f),
                    // Only in the bucket (a rebuilt index, or another node's push).
                    (Err(e), Some(b)) if e.kind() == std::io::ErrorKind::NotFound => {
                        let key = crate::registry::blob_key(d);
                        let data = b.call(|b| async move { b.get(&key).await })?;
                        Box::new(std::io::Cursor::new(data))
                    }
                    (Err(e), _) => return Err(e.into()),
                };
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let k = f.read(&mut buf)?;
                    if k == 0 {
                        break;
                    }
                    h.update(&buf[..k]);
                    n += k as u64;
                    bar.inc(k as u64);
                }
                Ok(())
            })(),
        };
        bytes += n;
        match res {
            Err(e) => problems.push(format!("{d}: {e}")),
            Ok(()) => check(d, h.finish(), n, rec.size, &mut problems),
        }
    }
    bar.finish_and_clear();
    for d in crate::registry::missing_blobs(&meta, &containers)? {
        problems.push(format!("{d}: kept whole, but not in the bucket"));
    }
    Ok(FsckReport {
        blobs: blobs.len() as u64,
        bytes,
        problems,
        strays,
    })
}

/// Check the deltas of one container (only the copies the index points at count).
fn check_deltas(
    path: &Path,
    index: &[(ChunkId, ChunkLoc)],
    chunks: &HashMap<ChunkId, ChunkRecord>,
    dependents: &mut HashMap<ChunkId, u64>,
    problems: &mut Vec<String>,
) {
    let deltas: Vec<_> = index
        .iter()
        .filter(|(id, loc)| {
            !loc.encoding.is_whole() && chunks.get(id).is_some_and(|r| r.loc == *loc)
        })
        .collect();
    if deltas.is_empty() {
        return;
    }
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return problems.push(format!("container {}: {e}", path.display())),
    };
    for (id, loc) in deltas {
        let mut base = [0u8; 20];
        if let Err(e) = std::os::unix::fs::FileExt::read_exact_at(&f, &mut base, loc.offset) {
            problems.push(format!("delta {id}: {e}"));
            continue;
        }
        let base = ChunkId(base);
        match chunks.get(&base) {
            None => problems.push(format!("delta {id}: its base {base} is not in the index")),
            Some(b) if !b.loc.encoding.is_whole() => {
                problems.push(format!("delta {id}: its base {base} is itself a delta"))
            }
            Some(_) => *dependents.entry(base).or_default() += 1,
        }
    }
}

fn check(d: &Digest, got: Digest, n: u64, size: u64, problems: &mut Vec<String>) {
    if &got != d {
        problems.push(format!("{d}: content hashes to {got}"));
    } else if n != size {
        problems.push(format!("{d}: {n} bytes, the record says {size}"));
    }
}

/// Reference counts against what they count (chunk references against the recipes, link
/// counts against the link tables), and files no record names (containers, staged blobs): a
/// crash leaves those behind; the next start or collection pass removes them, so they are
/// reported as strays, not problems.
fn check_references(
    meta: &Meta,
    root: &Path,
    containers: &Containers,
    chunks: &HashMap<ChunkId, ChunkRecord>,
    problems: &mut Vec<String>,
    strays: &mut Vec<String>,
) -> anyhow::Result<()> {
    let t = meta.read()?;
    let mut uses: HashMap<ChunkId, u64> = HashMap::new();
    for dk in meta.recipe_digests(&t)? {
        let Ok(d) = dk.parse::<Digest>() else {
            problems.push(format!("recipe under a key that is not a digest: {dk:?}"));
            continue;
        };
        if meta.blob(&t, &d)?.is_none() {
            problems.push(format!("recipe of {d}, which has no blob record"));
        }
        match meta.recipe(&t, &d) {
            Ok(Some(r)) => {
                for (id, n) in r.chunk_uses() {
                    *uses.entry(id).or_default() += n;
                }
            }
            Ok(None) => {}
            Err(e) => problems.push(format!("recipe of {d}: {e}")),
        }
    }
    for (id, rec) in chunks {
        let n = uses.remove(id).unwrap_or(0);
        if rec.refs != n {
            problems.push(format!(
                "chunk {id}: the index counts {} references, the recipes make {n}",
                rec.refs
            ));
        }
    }
    for id in uses.keys() {
        problems.push(format!("chunk {id} is used by a recipe but not indexed"));
    }
    let (blob_links, manifest_links, manifest_records) = meta.link_counts(&t)?;
    let blobs: HashMap<String, u64> = meta
        .all_blobs(&t)?
        .into_iter()
        .map(|(d, r)| (d.to_string(), r.links))
        .collect();
    for (d, links) in &blobs {
        let n = blob_links.get(d).copied().unwrap_or(0);
        if *links != n {
            problems.push(format!(
                "blob {d}: its record counts {links} links, there are {n}"
            ));
        }
    }
    for d in blob_links.keys().filter(|d| !blobs.contains_key(*d)) {
        problems.push(format!("blob link to {d}, which has no record"));
    }
    for (d, links) in &manifest_records {
        let n = manifest_links.get(d).copied().unwrap_or(0);
        if *links != n {
            problems.push(format!(
                "manifest {d}: its record counts {links} links, there are {n}"
            ));
        }
    }
    for d in manifest_links
        .keys()
        .filter(|d| !manifest_records.contains_key(*d))
    {
        problems.push(format!("manifest link to {d}, which has no record"));
    }
    // Files no record names.
    for (id, p) in containers.local_files()? {
        if !meta.container_known(&t, id)? {
            strays.push(format!("container file {} has no record", p.display()));
        }
    }
    for (id, _) in containers.published()?.unwrap_or_default() {
        if !meta.container_known(&t, id)? {
            strays.push(format!(
                "object containers/{id:016x} in the bucket has no record"
            ));
        }
    }
    for (p, d) in LocalStore::at(root).staged_files()? {
        match d {
            Some(d) if meta.blob(&t, &d)?.is_some() => {}
            _ => strays.push(format!("staged file {} has no blob record", p.display())),
        }
    }
    Ok(())
}
