//! What garbage collection and retention read and change in the metadata store: per-repository
//! listings (tags with their push and pull times, manifest links, blob links), the removal of
//! unreachable blobs with their recipes and file indexes (re-storing the layers patched against
//! them), of dead chunks and of containers, and the repointing of a compacted container.
//!
//! Every reference count changes in the transaction that changes what it counts (invariant 7):
//! a removed recipe drops its chunks' `refs`, a removed delta its base's `dependents`. Callers
//! remove files only after the transaction that stops referencing them has committed.
//!
//! `tag_times` (added in version 6): key repo `\0` tag, value pushed u64 LE | pulled u64 LE
//! (unix seconds; pulled 0 = never). Written with the tag; pull times are recorded in batches.
//! A tag without an entry (pushed by an older stowage) counts as pushed when its manifest was
//! linked.

use std::collections::{HashMap, HashSet};

use heed::RoTxn;

use stowage_actors::engine::chunk::ChunkId;
use stowage_actors::engine::container::ChunkLoc;
use stowage_actors::engine::tar::FileEntry;

use super::*;

/// A tag of a repository with what retention judges it by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagEntry {
    pub tag: String,
    pub digest: Digest,
    /// Unix seconds of the last push of the tag.
    pub pushed: u64,
    /// Unix seconds of the last pull by tag (0: never).
    pub pulled: u64,
}

/// A blob whose records are gone: what is left to remove on disk.
#[derive(Clone, Debug)]
pub struct RemovedBlob {
    pub digest: Digest,
    pub size: u64,
    /// It had a recipe (its chunk references were dropped).
    pub recipe: bool,
    /// Chunk references dropped (what its transaction touched in the chunk index).
    pub chunk_refs: u64,
}

/// A chunk garbage collection found dead (no references, no dependents).
#[derive(Clone, Copy, Debug)]
pub struct DeadChunk {
    pub id: ChunkId,
    pub loc: ChunkLoc,
}

fn times_value(pushed: u64, pulled: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&pushed.to_le_bytes());
    v[8..].copy_from_slice(&pulled.to_le_bytes());
    v
}

fn times_decode(v: &[u8]) -> Option<(u64, u64)> {
    let v: &[u8; 16] = v.try_into().ok()?;
    Some((
        u64::from_le_bytes(v[..8].try_into().expect("8 bytes")),
        u64::from_le_bytes(v[8..].try_into().expect("8 bytes")),
    ))
}

impl Meta {
    // ---- tag times ----------------------------------------------------------------------

    /// Record a push of `repo:tag` now (the pull time is kept).
    pub(super) fn tag_pushed(&self, w: &mut Wtx<'_>, repo: &RepoName, tag: &Tag) -> Result<()> {
        let k = key2(repo.as_str(), tag.as_str());
        let pulled = self
            .tag_times
            .get(w, &k)?
            .and_then(times_decode)
            .map_or(0, |t| t.1);
        self.tag_times.put(w, &k, &times_value(now(), pulled))?;
        Ok(())
    }

    pub(super) fn forget_tag_times(&self, w: &mut Wtx<'_>, key: &[u8]) -> Result<()> {
        self.tag_times.delete(w, key)?;
        Ok(())
    }

    /// Record pulls by tag (batched by the caller): the latest time per tag wins; tags deleted
    /// meanwhile are skipped.
    pub fn record_pulls(&self, w: &mut Wtx<'_>, pulls: &[(RepoName, Tag, u64)]) -> Result<()> {
        for (repo, tag, at) in pulls {
            let k = key2(repo.as_str(), tag.as_str());
            if self.tags.get(w, &k)?.is_none() {
                continue;
            }
            let (pushed, pulled): (u64, u64) = self
                .tag_times
                .get(w, &k)?
                .and_then(times_decode)
                .unwrap_or_default();
            if *at > pulled {
                self.tag_times.put(w, &k, &times_value(pushed, *at))?;
            }
        }
        Ok(())
    }

    /// Every tag of `repo` with its push and pull times.
    pub fn tag_entries(&self, t: &RoTxn<'_>, repo: &RepoName) -> Result<Vec<TagEntry>> {
        let prefix = key2(repo.as_str(), "");
        let mut out = Vec::new();
        for item in self.tags.prefix_iter(t, &prefix)? {
            let (k, v) = item?;
            let tag = utf8(&k[prefix.len()..])?.to_string();
            let digest: Digest = utf8(v)?
                .parse()
                .map_err(|e| RegistryError::Internal(format!("corrupt tag record: {e}")))?;
            let (pushed, pulled) = match self.tag_times.get(t, k)?.and_then(times_decode) {
                Some(times) => times,
                None => (
                    self.manifest_link(t, repo, &digest)?
                        .map_or(0, |l| l.created),
                    0,
                ),
            };
            out.push(TagEntry {
                tag,
                digest,
                pushed,
                pulled,
            });
        }
        Ok(out)
    }

    // ---- listings -----------------------------------------------------------------------

    /// Every repository name.
    pub fn all_repos(&self, t: &RoTxn<'_>) -> Result<Vec<RepoName>> {
        let mut out = Vec::new();
        for item in self.repos.iter(t)? {
            let (k, _) = item?;
            out.push(
                utf8(k)?
                    .parse()
                    .map_err(|_| RegistryError::Internal("corrupt repository key".into()))?,
            );
        }
        Ok(out)
    }

    /// The manifests linked in `repo`.
    pub fn manifest_links_of(
        &self,
        t: &RoTxn<'_>,
        repo: &RepoName,
    ) -> Result<Vec<(Digest, ManifestLink)>> {
        self.links_of(&self.manifest_links, "manifest link", t, repo)
    }

    /// The blobs linked in `repo`.
    pub fn blob_links_of(
        &self,
        t: &RoTxn<'_>,
        repo: &RepoName,
    ) -> Result<Vec<(Digest, LinkRecord)>> {
        self.links_of(&self.blob_links, "blob link", t, repo)
    }

    /// The records of a link table (`repo \0 digest` keys) under `repo`.
    fn links_of<T: DeserializeOwned>(
        &self,
        db: &Db,
        what: &str,
        t: &RoTxn<'_>,
        repo: &RepoName,
    ) -> Result<Vec<(Digest, T)>> {
        let prefix = key2(repo.as_str(), "");
        let mut out = Vec::new();
        for item in db.prefix_iter(t, &prefix)? {
            let (k, v) = item?;
            let d = utf8(&k[prefix.len()..])?
                .parse()
                .map_err(|_| RegistryError::Internal(format!("corrupt {what} key")))?;
            out.push((d, dec(what, v)?));
        }
        Ok(out)
    }

    /// Set the time of `repo`'s link to `d` to now; false if there is no such link.
    pub fn refresh_blob_link(&self, w: &mut Wtx<'_>, repo: &RepoName, d: &Digest) -> Result<bool> {
        let k = key2(repo.as_str(), &d.to_string());
        if self.blob_links.get(w, &k)?.is_none() {
            return Ok(false);
        }
        self.blob_links
            .put(w, &k, &enc(&LinkRecord { created: now() }))?;
        Ok(true)
    }

    /// The blob link of `repo` to `d`, if any.
    pub fn blob_link(
        &self,
        t: &RoTxn<'_>,
        repo: &RepoName,
        d: &Digest,
    ) -> Result<Option<LinkRecord>> {
        self.blob_links
            .get(t, &key2(repo.as_str(), &d.to_string()))?
            .map(|v| dec("blob link", v))
            .transpose()
    }

    /// Links per blob and per manifest, counted from the link tables (for fsck), and every
    /// manifest record's own count.
    #[allow(clippy::type_complexity)]
    pub fn link_counts(
        &self,
        t: &RoTxn<'_>,
    ) -> Result<(
        HashMap<String, u64>,
        HashMap<String, u64>,
        HashMap<String, u64>,
    )> {
        let count = |db: &Db| -> Result<HashMap<String, u64>> {
            let mut out: HashMap<String, u64> = HashMap::new();
            for item in db.iter(t)? {
                let (k, _) = item?;
                if let Some((_, d)) = utf8(k)?.split_once('\0') {
                    *out.entry(d.to_string()).or_default() += 1;
                }
            }
            Ok(out)
        };
        let (blobs, manifests) = (count(&self.blob_links)?, count(&self.manifest_links)?);
        let mut records = HashMap::new();
        for item in self.manifests.iter(t)? {
            let (k, v) = item?;
            records.insert(
                utf8(k)?.to_string(),
                dec::<ManifestRecord>("manifest", v)?.links,
            );
        }
        Ok((blobs, manifests, records))
    }

    /// Digests with a recipe.
    pub fn recipe_digests(&self, t: &RoTxn<'_>) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for item in self.recipes.iter(t)? {
            out.push(utf8(item?.0)?.to_string());
        }
        Ok(out)
    }

    // ---- sweeping records ---------------------------------------------------------------

    /// Remove manifests no repository links any more (their bodies go with them). Returns
    /// how many.
    pub fn remove_unlinked_manifests(&self, w: &mut Wtx<'_>) -> Result<u64> {
        let mut gone = Vec::new();
        for item in self.manifests.iter(w)? {
            let (k, v) = item?;
            let rec: ManifestRecord = dec("manifest", v)?;
            if rec.links == 0 {
                gone.push(k.to_vec());
            }
        }
        for k in &gone {
            self.manifests.delete(w, k)?;
            self.manifest_bodies.delete(w, k)?;
        }
        Ok(gone.len() as u64)
    }

    /// Remove repositories that link nothing and tag nothing. Returns how many.
    pub fn remove_empty_repos(&self, w: &mut Wtx<'_>) -> Result<u64> {
        let mut uploading = HashSet::new();
        for item in self.uploads.iter(w)? {
            let (_, v) = item?;
            uploading.insert(dec::<UploadRecord>("upload", v)?.repo);
        }
        let mut gone = Vec::new();
        for repo in self.all_repos(w)? {
            let prefix = key2(repo.as_str(), "");
            let empty = self.blob_links.prefix_iter(w, &prefix)?.next().is_none()
                && self
                    .manifest_links
                    .prefix_iter(w, &prefix)?
                    .next()
                    .is_none()
                && self.tags.prefix_iter(w, &prefix)?.next().is_none();
            if empty && !uploading.contains(&repo) {
                gone.push(repo);
            }
        }
        for repo in &gone {
            self.repos.delete(w, repo.as_str().as_bytes())?;
        }
        Ok(gone.len() as u64)
    }

    /// The layers whose recipe or file index is stored as a patch against `reference`'s, for
    /// every reference (scanned once per collection).
    pub fn patch_dependents(&self, t: &RoTxn<'_>) -> Result<HashMap<String, HashSet<String>>> {
        let mut out: HashMap<String, HashSet<String>> = HashMap::new();
        for (db, magic) in [
            (&self.recipes, patch::RECIPE),
            (&self.layer_files, patch::FILE_INDEX),
        ] {
            for item in db.iter(t)? {
                let (k, v) = item?;
                if let patch::Stored::Patch { reference, .. } = patch::parse(magic, v)? {
                    out.entry(reference.to_string())
                        .or_default()
                        .insert(utf8(k)?.to_string());
                }
            }
        }
        Ok(out)
    }

    /// A deduplicated layer's file index as entries.
    fn file_entries(&self, t: &RoTxn<'_>, d: &Digest) -> Result<Vec<FileEntry>> {
        match self.layer_files(t, d)? {
            Some(v) => serde_json::from_value(v)
                .map_err(|e| RegistryError::Internal(format!("file index of {d}: {e}"))),
            None => Ok(Vec::new()),
        }
    }

    /// Stop `d` from serving as the reference of new patches: drop its path-sketch entries.
    pub fn retire_reference(&self, w: &mut Wtx<'_>, d: &Digest) -> Result<()> {
        let dk = d.to_string();
        for h in patch::sketch(&self.file_entries(w, d)?) {
            let k = h.to_be_bytes();
            if self.layer_sketches.get(w, &k)? == Some(dk.as_bytes()) {
                self.layer_sketches.delete(w, &k)?;
            }
        }
        Ok(())
    }

    /// Remove the blob `d` if no repository links it: its record, and with a recipe, the
    /// recipe, file index and one reference per chunk use. Layers patched against it
    /// (`dependents`, from [`Meta::patch_dependents`]) that remain are stored again, whole or
    /// against another reference, first. Returns None when the blob is linked again or gone.
    pub fn remove_blob(
        &self,
        w: &mut Wtx<'_>,
        d: &Digest,
        dependents: Option<&HashSet<String>>,
    ) -> Result<Option<RemovedBlob>> {
        let dk = d.to_string();
        let Some(v) = self.blobs.get(w, dk.as_bytes())? else {
            return Ok(None);
        };
        let rec: BlobRecord = dec("blob", v)?;
        if rec.links > 0 {
            return Ok(None);
        }
        let has_recipe = self.recipes.get(w, dk.as_bytes())?.is_some();
        let mut chunk_refs = 0u64;
        if has_recipe {
            self.retire_reference(w, d)?;
            // Read the layers patched against this one while it can still be read.
            let mut restore = Vec::new();
            for dep in dependents.into_iter().flatten() {
                let Ok(dep_d) = dep.parse::<Digest>() else {
                    continue;
                };
                if let Some(recipe) = self.recipe(w, &dep_d)? {
                    let files = self.file_entries(w, &dep_d)?;
                    restore.push((dep.clone(), recipe, files));
                }
            }
            let recipe = self
                .recipe(w, d)?
                .ok_or_else(|| RegistryError::Internal(format!("recipe of {d} cannot be read")))?;
            let mut refs = 0u64;
            for (id, uses) in recipe.chunk_uses() {
                let Some(mut c) = self.chunk(w, &id)? else {
                    return Err(RegistryError::Internal(format!(
                        "recipe of {d} names unknown chunk {id}"
                    )));
                };
                c.refs = c.refs.checked_sub(uses).ok_or_else(|| {
                    RegistryError::Internal(format!(
                        "chunk {id} has fewer references than {d} uses"
                    ))
                })?;
                refs += uses;
                self.chunks.put(w, &id.0, &c.encode())?;
            }
            self.update_chunk_counts(w, |c| c.refs -= refs)?;
            chunk_refs = refs;
            self.recipes.delete(w, dk.as_bytes())?;
            self.layer_files.delete(w, dk.as_bytes())?;
            for (dep, recipe, files) in restore {
                self.put_layer_meta(w, &dep, &recipe, &files)?;
            }
        }
        self.blobs.delete(w, dk.as_bytes())?;
        Ok(Some(RemovedBlob {
            digest: d.clone(),
            size: rec.size,
            recipe: has_recipe,
            chunk_refs,
        }))
    }

    // ---- chunks and containers ----------------------------------------------------------

    /// Chunks with no references and no dependents, outside `spared` containers (too young,
    /// or being written).
    #[cfg(test)]
    pub fn dead_chunks(
        &self,
        t: &RoTxn<'_>,
        spared: &dyn Fn(u64) -> bool,
    ) -> Result<Vec<DeadChunk>> {
        Ok(self.dead_chunks_after(t, None, usize::MAX, spared)?.0)
    }

    /// At most `limit` dead chunks (as [`Meta::dead_chunks`]) after the chunk id `after`, in
    /// key order, and where the next call should start (None: the index is done). Garbage
    /// collection walks the index this way, a batch at a time, so its memory stays bounded.
    pub fn dead_chunks_after(
        &self,
        t: &RoTxn<'_>,
        after: Option<&ChunkId>,
        limit: usize,
        spared: &dyn Fn(u64) -> bool,
    ) -> Result<(Vec<DeadChunk>, Option<ChunkId>)> {
        let mut out = Vec::new();
        let lower = match after {
            Some(id) => std::ops::Bound::Excluded(&id.0[..]),
            None => std::ops::Bound::Unbounded,
        };
        for item in self.chunks.range(t, &(lower, std::ops::Bound::Unbounded))? {
            let (k, v) = item?;
            if out.len() >= limit {
                // More follow: the next call resumes after the last one returned.
                let last = out.last().map(|c: &DeadChunk| c.id);
                return Ok((out, last));
            }
            let r = ChunkRecord::decode(v)?;
            if r.refs == 0 && r.dependents == 0 && !spared(r.loc.container) {
                let id: [u8; 20] = k
                    .try_into()
                    .map_err(|_| RegistryError::Internal("corrupt chunk key".into()))?;
                out.push(DeadChunk {
                    id: ChunkId(id),
                    loc: r.loc,
                });
            }
        }
        Ok((out, None))
    }

    /// Remove `id` if it is still dead; a delta's base (`base`, read from its container) loses
    /// a dependent. Returns whether it was removed, and the base if that left it dead too.
    pub fn remove_chunk(
        &self,
        w: &mut Wtx<'_>,
        id: &ChunkId,
        base: Option<&ChunkId>,
    ) -> Result<(bool, Option<DeadChunk>)> {
        let Some(r) = self.chunk(w, id)? else {
            return Ok((false, None));
        };
        if r.refs > 0 || r.dependents > 0 {
            return Ok((false, None));
        }
        self.chunks.delete(w, &id.0)?;
        let delta = !r.loc.encoding.is_whole();
        self.update_chunk_counts(w, |c| {
            c.unique -= 1;
            c.stored_bytes -= r.loc.stored_len as u64;
            c.deltas -= u64::from(delta);
        })?;
        let mut dead_base = None;
        if let (true, Some(b)) = (delta, base) {
            if let Some(mut br) = self.chunk(w, b)? {
                br.dependents = br.dependents.saturating_sub(1);
                if br.dependents == 0 {
                    self.update_chunk_counts(w, |c| c.bases -= 1)?;
                    if br.refs == 0 {
                        dead_base = Some(DeadChunk {
                            id: *b,
                            loc: br.loc,
                        });
                    }
                }
                self.chunks.put(w, &b.0, &br.encode())?;
            }
        }
        Ok((true, dead_base))
    }

    /// Every container record.
    pub fn all_containers(&self, t: &RoTxn<'_>) -> Result<Vec<(u64, ContainerRecord)>> {
        let mut out = Vec::new();
        for item in self.containers.iter(t)? {
            let (k, v) = item?;
            out.push((chunks::container_key(k)?, dec("container", v)?));
        }
        Ok(out)
    }

    /// Live chunks and their stored bytes per container, as the chunk index places them.
    pub fn live_per_container(&self, t: &RoTxn<'_>) -> Result<HashMap<u64, (u64, u64)>> {
        let mut out: HashMap<u64, (u64, u64)> = HashMap::new();
        for item in self.chunks.iter(t)? {
            let (_, v) = item?;
            let r = ChunkRecord::decode(v)?;
            let e = out.entry(r.loc.container).or_default();
            e.0 += 1;
            e.1 += r.loc.stored_len as u64;
        }
        Ok(out)
    }

    /// Point the chunks of container `old` at their copies in `new` (written by
    /// `container::rewrite`), record `new`, carry over the feature entries of its whole chunks,
    /// and forget `old`. A chunk that no longer lives in `old` keeps its place. Returns how
    /// many chunks moved.
    pub fn repoint_container(
        &self,
        w: &mut Wtx<'_>,
        old: u64,
        new: u64,
        entries: &[(ChunkId, ChunkLoc)],
    ) -> Result<u64> {
        let mut moved = 0u64;
        let mut bytes = 0u64;
        let mut kept_prefixes = HashSet::new();
        for (id, loc) in entries {
            if let Some(mut r) = self.chunk(w, id)? {
                if r.loc.container == old {
                    r.loc = *loc;
                    self.chunks.put(w, &id.0, &r.encode())?;
                    moved += 1;
                    bytes += loc.stored_len as u64;
                    if loc.encoding.is_whole() {
                        kept_prefixes.insert(<[u8; 8]>::try_from(&id.0[..8]).expect("8 bytes"));
                    }
                }
            }
        }
        let created = match self.containers.get(w, &old.to_be_bytes())? {
            Some(v) => dec::<ContainerRecord>("container", v)?.created,
            None => now(),
        };
        self.containers.put(
            w,
            &new.to_be_bytes(),
            &enc(&ContainerRecord {
                created,
                chunks: moved,
                bytes,
            }),
        )?;
        if let Some(block) = self.container_features.get(w, &old.to_be_bytes())? {
            let kept: Vec<(u32, [u8; 8])> = features::decode_block(block)?
                .into_iter()
                .filter(|(_, p)| kept_prefixes.contains(p))
                .collect();
            if !kept.is_empty() {
                let block = features::encode_block(&kept);
                self.container_features.put(w, &new.to_be_bytes(), &block)?;
            }
        }
        self.forget_container(w, old)?;
        Ok(moved)
    }

    /// Drop from a container's feature block the entries of chunks no longer stored whole in
    /// it (removed by a collection), so they are not loaded as bases after a restart. (The
    /// in-memory index keeps them until then; a lookup through a removed chunk finds nothing.)
    pub fn prune_feature_block(&self, w: &mut Wtx<'_>, container: u64) -> Result<()> {
        let key = container.to_be_bytes();
        let Some(block) = self.container_features.get(w, &key)? else {
            return Ok(());
        };
        let entries = features::decode_block(block)?;
        let mut kept = Vec::with_capacity(entries.len());
        for (k, prefix) in entries {
            let live = match self.chunks.prefix_iter(w, &prefix)?.next() {
                Some(item) => {
                    let r = ChunkRecord::decode(item?.1)?;
                    r.loc.container == container && r.loc.encoding.is_whole()
                }
                None => false,
            };
            if live {
                kept.push((k, prefix));
            }
        }
        if kept.is_empty() {
            self.container_features.delete(w, &key)?;
        } else {
            self.container_features
                .put(w, &key, &features::encode_block(&kept))?;
        }
        Ok(())
    }

    /// Drop the records of a container no chunk lives in any more.
    pub fn forget_container(&self, w: &mut Wtx<'_>, id: u64) -> Result<()> {
        self.containers.delete(w, &id.to_be_bytes())?;
        self.container_features.delete(w, &id.to_be_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stowage_actors::catalog::SealedContainer;
    use stowage_actors::engine::container::ChunkEncoding;
    use stowage_actors::engine::recipe::Recipe;
    use stowage_actors::engine::recompress::Encoding;

    fn loc(container: u64, offset: u64, encoding: ChunkEncoding) -> ChunkLoc {
        ChunkLoc {
            container,
            offset,
            stored_len: 100,
            raw_len: 100,
            encoding,
        }
    }

    fn recipe(ids: &[ChunkId]) -> Recipe {
        Recipe {
            encoding: Encoding::None,
            raw_len: 100 * ids.len() as u64,
            framing: vec![0, 100 * ids.len() as u64],
            inline: vec![],
            files: ids.iter().map(|id| (*id, 100)).collect(),
        }
    }

    fn refs(m: &Meta, t: &RoTxn<'_>, id: &ChunkId) -> Option<(u64, u64)> {
        m.chunk(t, id).unwrap().map(|r| (r.refs, r.dependents))
    }

    #[test]
    fn reference_counts_through_push_mount_repush_delete_and_collection() {
        let dir = tempfile::tempdir().unwrap();
        let m = Meta::open(dir.path(), 1 << 26).unwrap();
        let (r1, r2): (RepoName, RepoName) = ("a".parse().unwrap(), "b".parse().unwrap());
        let ids: Vec<ChunkId> = (0u8..4).map(|i| ChunkId::of(&[i]).unwrap()).collect();
        let (l1, l2) = (Digest::sha256_of(b"l1"), Digest::sha256_of(b"l2"));
        let mut w = m.write().unwrap();
        // Container 1: chunks 0-2 whole; container 2: chunk 3 as a delta against chunk 0.
        let c1 = SealedContainer {
            id: 1,
            entries: (0..3)
                .map(|i| (ids[i], loc(1, 32 + 200 * i as u64, ChunkEncoding::Zstd)))
                .collect(),
            ..Default::default()
        };
        let c2 = SealedContainer {
            id: 2,
            entries: vec![(ids[3], loc(2, 32, ChunkEncoding::Delta))],
            bases: vec![(ids[3], ids[0])],
            ..Default::default()
        };
        m.add_container(&mut w, &c1).unwrap();
        m.add_container(&mut w, &c2).unwrap();
        m.link_blob(&mut w, &r1, &l1, 200).unwrap();
        m.commit_recipe(&mut w, &l1, &recipe(&ids[..2]), &[])
            .unwrap();
        m.link_blob(&mut w, &r1, &l2, 300).unwrap();
        m.commit_recipe(&mut w, &l2, &recipe(&[ids[1], ids[2], ids[3]]), &[])
            .unwrap();
        // A mount and a repeated push add links, not chunk references.
        m.link_blob(&mut w, &r2, &l1, 200).unwrap();
        m.link_blob(&mut w, &r2, &l1, 200).unwrap();
        w.commit().unwrap();
        let t = m.read().unwrap();
        assert_eq!(m.blob(&t, &l1).unwrap().unwrap().links, 2);
        assert_eq!(refs(&m, &t, &ids[0]), Some((1, 1)));
        assert_eq!(refs(&m, &t, &ids[1]), Some((2, 0)));
        drop(t);

        // Unlinked from one repository: still linked from the other, nothing to remove.
        let mut w = m.write().unwrap();
        assert!(m.unlink_blob(&mut w, &r1, &l1).unwrap());
        assert!(m.remove_blob(&mut w, &l1, None).unwrap().is_none());
        assert!(m.unlink_blob(&mut w, &r2, &l1).unwrap());
        let gone = m.remove_blob(&mut w, &l1, None).unwrap().unwrap();
        assert!(gone.recipe);
        w.commit().unwrap();
        let t = m.read().unwrap();
        assert_eq!(
            refs(&m, &t, &ids[0]),
            Some((0, 1)),
            "a base with a dependent"
        );
        assert_eq!(refs(&m, &t, &ids[1]), Some((1, 0)));
        assert_eq!(
            m.chunk_counts(&t).unwrap(),
            m.scan_chunk_counts(&t).unwrap()
        );
        // Chunk 0 has no references but a dependent: not dead.
        let dead = m.dead_chunks(&t, &|_| false).unwrap();
        assert!(dead.is_empty(), "{dead:?}");
        drop(t);

        // The second layer goes: its delta dies, then the base it leaves without dependents.
        let mut w = m.write().unwrap();
        m.unlink_blob(&mut w, &r1, &l2).unwrap();
        m.remove_blob(&mut w, &l2, None).unwrap().unwrap();
        w.commit().unwrap();
        let t = m.read().unwrap();
        let mut dead: Vec<ChunkId> = m
            .dead_chunks(&t, &|_| false)
            .unwrap()
            .iter()
            .map(|c| c.id)
            .collect();
        dead.sort();
        let mut expect = vec![ids[1], ids[2], ids[3]];
        expect.sort();
        assert_eq!(dead, expect);
        drop(t);
        let mut w = m.write().unwrap();
        let mut next = None;
        for id in &dead {
            let base = (*id == ids[3]).then_some(ids[0]);
            let (gone, dead_base) = m.remove_chunk(&mut w, id, base.as_ref()).unwrap();
            assert!(gone);
            next = next.or(dead_base);
        }
        assert_eq!(next.map(|c| c.id), Some(ids[0]));
        assert!(m.remove_chunk(&mut w, &ids[0], None).unwrap().0);
        w.commit().unwrap();
        let t = m.read().unwrap();
        let c = m.chunk_counts(&t).unwrap();
        assert_eq!(c, m.scan_chunk_counts(&t).unwrap());
        assert_eq!((c.unique, c.refs, c.deltas, c.bases), (0, 0, 0, 0));
        assert!(m.live_per_container(&t).unwrap().is_empty());
    }

    #[test]
    fn compaction_repoints_live_chunks_and_keeps_their_features() {
        let dir = tempfile::tempdir().unwrap();
        let m = Meta::open(dir.path(), 1 << 26).unwrap();
        m.load_feature_index(100).unwrap();
        let ids: Vec<ChunkId> = (0u8..3).map(|i| ChunkId::of(&[i]).unwrap()).collect();
        let sealed = SealedContainer {
            id: 1,
            entries: (0..3)
                .map(|i| (ids[i], loc(1, 32 + 200 * i as u64, ChunkEncoding::Zstd)))
                .collect(),
            features: vec![(ids[0], vec![5]), (ids[2], vec![6])],
            ..Default::default()
        };
        let mut w = m.write().unwrap();
        m.add_container(&mut w, &sealed).unwrap();
        // Chunk 2 died; 0 and 1 move to container 9.
        m.remove_chunk(&mut w, &ids[2], None).unwrap();
        let moved = m
            .repoint_container(
                &mut w,
                1,
                9,
                &[
                    (ids[0], loc(9, 32, ChunkEncoding::Zstd)),
                    (ids[1], loc(9, 232, ChunkEncoding::Zstd)),
                ],
            )
            .unwrap();
        w.commit().unwrap();
        assert_eq!(moved, 2);
        let t = m.read().unwrap();
        assert_eq!(m.chunk(&t, &ids[1]).unwrap().unwrap().loc.container, 9);
        let containers: Vec<u64> = m.all_containers(&t).unwrap().iter().map(|c| c.0).collect();
        assert_eq!(containers, vec![9]);
        let blocks: Vec<(u64, usize)> = m
            .feature_blocks(&t)
            .unwrap()
            .into_iter()
            .map(|(c, n)| (c, n.unwrap()))
            .collect();
        assert_eq!(blocks, vec![(9, 1)], "only the live chunk's features move");
        drop(t);
        m.load_feature_index(100).unwrap();
        let t = m.read().unwrap();
        assert_eq!(m.similar(&t, &[5]).unwrap(), vec![Some(ids[0])]);
        assert_eq!(m.similar(&t, &[6, 6]).unwrap()[0], None);
    }

    #[test]
    fn removed_chunks_leave_their_containers_feature_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let m = Meta::open(dir.path(), 1 << 26).unwrap();
        let ids: Vec<ChunkId> = (0u8..2).map(|i| ChunkId::of(&[i]).unwrap()).collect();
        let sealed = SealedContainer {
            id: 1,
            entries: (0..2)
                .map(|i| (ids[i], loc(1, 32 + 200 * i as u64, ChunkEncoding::Zstd)))
                .collect(),
            features: vec![(ids[0], vec![5, 6]), (ids[1], vec![7, 8])],
            ..Default::default()
        };
        let mut w = m.write().unwrap();
        m.add_container(&mut w, &sealed).unwrap();
        m.remove_chunk(&mut w, &ids[1], None).unwrap();
        m.prune_feature_block(&mut w, 1).unwrap();
        w.commit().unwrap();
        let t = m.read().unwrap();
        let blocks: Vec<(u64, usize)> = m
            .feature_blocks(&t)
            .unwrap()
            .into_iter()
            .map(|(c, n)| (c, n.unwrap()))
            .collect();
        assert_eq!(blocks, vec![(1, 2)], "chunk 0's two super-features stay");
        drop(t);
        let mut w = m.write().unwrap();
        m.remove_chunk(&mut w, &ids[0], None).unwrap();
        m.prune_feature_block(&mut w, 1).unwrap();
        w.commit().unwrap();
        assert!(m.feature_blocks(&m.read().unwrap()).unwrap().is_empty());
    }

    #[test]
    fn patched_recipes_survive_the_removal_of_their_reference_layer() {
        let dir = tempfile::tempdir().unwrap();
        let m = Meta::open(dir.path(), 1 << 26).unwrap();
        let repo: RepoName = "r".parse().unwrap();
        let ids: Vec<ChunkId> = (0u32..400)
            .map(|i| ChunkId::of(&i.to_le_bytes()).unwrap())
            .collect();
        let mut w = m.write().unwrap();
        let sealed = SealedContainer {
            id: 1,
            entries: ids
                .iter()
                .map(|id| (*id, loc(1, 32, ChunkEncoding::Stored)))
                .collect(),
            ..Default::default()
        };
        m.add_container(&mut w, &sealed).unwrap();
        let version = |v: usize| {
            let chunk = |i: usize| {
                ids[if i % 100 == 7 {
                    300 + v * 10 + i / 100
                } else {
                    i
                }]
            };
            let files: Vec<FileEntry> = (0..300)
                .map(|i| FileEntry {
                    path: format!("usr/lib/app/f{i}"),
                    size: 100,
                    mode: 0o644,
                    sha256: format!("sha256:{}", hex::encode(chunk(i).0)) + &"0".repeat(24),
                })
                .collect();
            let r = recipe(&(0..300).map(chunk).collect::<Vec<_>>());
            (Digest::sha256_of(&v.to_le_bytes()), r, files)
        };
        let layers: Vec<_> = (0..3).map(version).collect();
        for (d, r, files) in &layers {
            m.link_blob(&mut w, &repo, d, 30_000).unwrap();
            m.commit_recipe(&mut w, d, r, files).unwrap();
        }
        w.commit().unwrap();
        let t = m.read().unwrap();
        let deps = m.patch_dependents(&t).unwrap();
        let first = layers[0].0.to_string();
        assert_eq!(
            deps[&first].len(),
            2,
            "versions 2 and 3 are patched against 1"
        );
        drop(t);
        // Version 1 goes; 2 and 3 are stored again (one whole, the other patched against it).
        let mut w = m.write().unwrap();
        m.unlink_blob(&mut w, &repo, &layers[0].0).unwrap();
        m.retire_reference(&mut w, &layers[0].0).unwrap();
        m.remove_blob(&mut w, &layers[0].0, deps.get(&first))
            .unwrap()
            .unwrap();
        w.commit().unwrap();
        let t = m.read().unwrap();
        for (d, r, files) in &layers[1..] {
            assert_eq!(m.recipe(&t, d).unwrap().as_ref(), Some(r));
            assert_eq!(m.file_entries(&t, d).unwrap(), *files);
        }
        assert!(m.recipe(&t, &layers[0].0).unwrap().is_none());
        assert!(!m.patch_dependents(&t).unwrap().contains_key(&first));
        assert_eq!(
            m.chunk_counts(&t).unwrap(),
            m.scan_chunk_counts(&t).unwrap()
        );
        assert_eq!(m.chunk_counts(&t).unwrap().refs, 600);
    }

    #[test]
    fn tag_times_follow_pushes_pulls_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let m = Meta::open(dir.path(), 1 << 26).unwrap();
        let repo: RepoName = "r".parse().unwrap();
        let (a, b): (Tag, Tag) = ("a".parse().unwrap(), "b".parse().unwrap());
        let d = Digest::sha256_of(b"m");
        let mut w = m.write().unwrap();
        m.set_tag(&mut w, &repo, &a, &d).unwrap();
        m.record_pulls(
            &mut w,
            &[(repo.clone(), a.clone(), 42), (repo.clone(), b.clone(), 43)],
        )
        .unwrap();
        w.commit().unwrap();
        let t = m.read().unwrap();
        let e = m.tag_entries(&t, &repo).unwrap();
        assert_eq!(e.len(), 1, "a pull of a missing tag records nothing");
        assert_eq!((e[0].tag.as_str(), e[0].pulled), ("a", 42));
        assert!(e[0].pushed >= now() - 5);
        drop(t);
        let mut w = m.write().unwrap();
        m.delete_tag(&mut w, &repo, &a).unwrap();
        m.set_tag(&mut w, &repo, &a, &d).unwrap();
        w.commit().unwrap();
        let t = m.read().unwrap();
        assert_eq!(
            m.tag_entries(&t, &repo).unwrap()[0].pulled,
            0,
            "deleted with the tag"
        );
    }
}
