//! The metadata store: one LMDB environment (heed) under `<root>/meta/`.
//!
//! # On-disk format (magic `stowage-meta`, version 6)
//!
//! The named database `info` holds the key `format` whose value is the JSON
//! `{"magic":"stowage-meta","version":6}`; opening an environment with another magic or a newer
//! version is refused. Keys below are byte strings; `\0` separates parts (repository names,
//! tags and digests never contain it). Values are JSON documents of the record types in this
//! module.
//!
//! | database         | key                              | value                         |
//! |------------------|----------------------------------|-------------------------------|
//! | `repos`          | repository name                  | [`RepoRecord`]                |
//! | `blobs`          | digest                           | [`BlobRecord`]                |
//! | `blob_links`     | repo `\0` digest                 | [`LinkRecord`] (time of the last link) |
//! | `manifests`      | digest                           | [`ManifestRecord`]            |
//! | `manifest_bodies`| digest                           | the manifest bytes as pushed  |
//! | `manifest_links` | repo `\0` digest                 | [`ManifestLink`]              |
//! | `tags`           | repo `\0` tag                    | digest (UTF-8)                |
//! | `tag_times`      | repo `\0` tag                    | pushed, pulled: u64 LE each (see [`gc`]) |
//! | `referrers`      | repo `\0` subject `\0` referrer  | [`Descriptor`] JSON           |
//! | `uploads`        | upload id                        | [`UploadRecord`]              |
//! | `chunks`         | chunk id (20 bytes)              | [`ChunkRecord`] (binary varints, below) |
//! | `container_features` | container id (u64 big-endian) | feature block (see [`features`]) |
//! | `recipes`        | digest                           | recipe (binary, see `stowage_actors::engine::recipe`), whole or patched (see [`patch`]) |
//! | `layer_files`    | digest                           | JSON array of file entries, compressed, whole or patched (see [`patch`]) |
//! | `layer_sketches` | path-sketch hash u64 BE          | digest of a layer with that hash whose recipe and file index are whole (see [`patch`]) |
//! | `counters`       | name                             | u64 little-endian             |
//! | `containers`     | container id (u64 big-endian)    | [`ContainerRecord`]           |
//!
//! `counters` also holds `chunk_stats`: five u64 little-endian (unique chunks, recipe
//! references, stored bytes, delta chunks, chunks with dependents), changed in the same
//! transaction as the chunk records they total, and computed once when an older store is
//! opened. `/_stats` and `/metrics` read it instead of scanning the chunk index.
//!
//! Reference counts (`BlobRecord::links`, `ManifestRecord::links`) count the repositories that
//! link the object and change in the same transaction as the link (invariant 7); a chunk's
//! `refs` counts the recipe references to it and changes in the recipe's commit.
//!
//! A chunk record is: container | offset | stored_len | raw_len | encoding u8 | refs |
//! dependents, each number an unsigned LEB128 varint (typically 12-14 bytes in all).
//! `dependents` counts the delta chunks whose base it is (changed in the commit of the container
//! holding the delta): a chunk with dependents is never removed, whatever its `refs`
//! (invariant 5 and 7). Stores before version 5 wrote the same fields at fixed width (41 bytes,
//! little-endian: u64, u64, u32, u32, u8, u64, u64; version 1 wrote 0 dependents, the right
//! count for them); opening one rewrites its records. The chunk index is the largest table and
//! should stay in the page cache: compact records make it about 40% smaller.
//!
//! The feature index (super-feature → base chunk) is kept per container and looked up in
//! memory: see [`features`]. Version 2 stores kept it in a `features` database, one entry per
//! super-feature; opening one regroups those entries by container and empties it.
//!
//! Durability: the environment is opened without `NO_SYNC`/`NO_META_SYNC`, so a returned
//! commit is on disk (invariant 2).

pub mod checkpoint;
mod chunks;
pub mod features;
mod gc;
pub mod journal;
mod layers;
pub mod patch;
mod table;
mod upgrade;

pub use chunks::ChunkRecord;
pub use gc::{DeadChunk, RemovedBlob, TagEntry};
pub use table::Wtx;

use std::ops::Bound;
use std::path::Path;
use std::sync::Mutex;

use heed::{Env, EnvOpenOptions, RoTxn, WithoutTls};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use stowage_actors::engine::recipe::Recipe;
use stowage_actors::engine::tar::FileEntry;

use crate::error::{RegistryError, Result};
use crate::names::{Digest, RepoName, Tag, UploadId};

const MAGIC: &str = "stowage-meta";
/// 2: chunk records count dependents, the `features` database exists.
/// 3: the feature index is kept per container, in `container_features`.
/// 4: `counters` holds `chunk_stats`, kept with every change to `chunks`.
/// 5: chunk records are varints.
/// 6: `tag_times` exists; a blob link's time is its last link (a repeated push or mount
/// refreshes it), which garbage collection's grace period counts from.
const VERSION: u32 = 6;
/// Key in `counters` of the totals over `chunks` ([`ChunkCounts`]), so statistics and metrics
/// never scan the chunk index.
const CHUNK_STATS: &[u8] = b"chunk_stats";

#[derive(Serialize, Deserialize)]
struct FormatRecord {
    magic: String,
    version: u32,
}

/// A repository: created by its first blob link or manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RepoRecord {
    pub created: u64,
}

/// Where a blob stands in the storage pipeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobState {
    /// Whole in `staging/`, as pushed, waiting for deduplication.
    Staged,
    /// Stored as chunks; its recipe is in `recipes` and `staging/` no longer holds it.
    Deduplicated { encoding: String },
    /// Kept whole in `staging/`, for `reason`.
    Raw { reason: String },
}

/// A content-addressed blob, stored once for all repositories.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BlobRecord {
    pub size: u64,
    pub created: u64,
    /// Number of repositories linking this blob.
    pub links: u64,
    pub state: BlobState,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinkRecord {
    pub created: u64,
}

/// A manifest, stored once for all repositories.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ManifestRecord {
    pub media_type: String,
    pub size: u64,
    /// Number of repositories linking this manifest.
    pub links: u64,
}

/// A manifest as linked into one repository, with what the referrers API needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ManifestLink {
    pub created: u64,
    pub subject: Option<Digest>,
}

/// An OCI content descriptor as the referrers API returns it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

/// An upload session. `offset` is the number of bytes acknowledged (fsynced) so far; bytes in
/// the upload file past it were never acknowledged and are discarded on the next write.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UploadRecord {
    pub repo: RepoName,
    pub created: u64,
    pub updated: u64,
    pub offset: u64,
    /// Who started it, with authentication on: only they may go on with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// A sealed container.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub created: u64,
    pub chunks: u64,
    pub bytes: u64,
}

/// Counts and sizes for `/_stats`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MetaCounts {
    pub repositories: u64,
    pub manifests: u64,
    pub tags: u64,
    pub blobs: u64,
    pub uploads: u64,
    pub logical_bytes: u64,
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn key2(a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + b.len() + 1);
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("metadata records serialize")
}

fn dec<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| RegistryError::Internal(format!("corrupt {what} record: {e}")))
}

fn utf8(bytes: &[u8]) -> Result<&str> {
    std::str::from_utf8(bytes).map_err(|_| RegistryError::Internal("non-UTF-8 key".into()))
}

use table::{Db, Table};

/// `stowage compact`: open the store at `dir` (upgrading it if needed), write a copy without
/// free pages beside it, fsync it and rename it over the original. The caller holds the root
/// lock, so no other process has the environment open. Returns the file's size before and
/// after.
pub fn compact(dir: &Path, map_size: usize) -> Result<(u64, u64)> {
    let data = dir.join("data.mdb");
    let tmp = dir.join("data.mdb.compact");
    let before = std::fs::metadata(&data)?.len();
    let _ = std::fs::remove_file(&tmp);
    let meta = Meta::open(dir, map_size)?;
    let copy = meta
        .env
        .copy_to_path(&tmp, heed::CompactionOption::Enabled)?;
    copy.sync_all()?;
    drop(copy);
    meta.close();
    std::fs::rename(&tmp, &data)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok((before, std::fs::metadata(&data)?.len()))
}

/// The LMDB environment and its databases.
pub struct Meta {
    env: Env<WithoutTls>,
    repos: Table,
    blobs: Table,
    blob_links: Table,
    manifests: Table,
    manifest_bodies: Table,
    manifest_links: Table,
    tags: Table,
    referrers: Table,
    uploads: Table,
    chunks: Table,
    recipes: Table,
    layer_files: Table,
    layer_sketches: Table,
    counters: Table,
    containers: Table,
    /// Version 2's feature index, emptied by the upgrade.
    features: Table,
    container_features: Table,
    tag_times: Table,
    index: Mutex<features::FeatureIndex>,
    dir: std::path::PathBuf,
    /// With the store on an object store: where durable commits go first.
    journal: Option<journal::Journal>,
}

impl Meta {
    pub fn open(dir: &Path, map_size: usize) -> Result<Meta> {
        std::fs::create_dir_all(dir)?;
        // SAFETY: the environment is opened once per process (the registry holds the only
        // handle) and the directory is ours alone.
        let env = unsafe {
            EnvOpenOptions::new()
                .read_txn_without_tls()
                .map_size(map_size)
                .max_dbs(32)
                .max_readers(512)
                .open(dir)?
        };
        let mut w = env.write_txn()?;
        let info: Db = env.create_database(&mut w, Some("info"))?;
        let mut stored_version = VERSION;
        if let Some(v) = info.get(&w, b"format")? {
            let f: FormatRecord = dec("format", v)?;
            stored_version = f.version;
            if f.magic != MAGIC || f.version > VERSION {
                return Err(RegistryError::Internal(format!(
                    "{} holds {} version {}, this stowage reads {MAGIC} up to version {VERSION}",
                    dir.display(),
                    f.magic,
                    f.version
                )));
            }
        }
        // New stores, and older stores upgraded in place (below): version 2 only added;
        // 3 regroups the feature index, 4 counts the chunk totals, 5 rewrites chunk records.
        info.put(
            &mut w,
            b"format",
            &enc(&FormatRecord {
                magic: MAGIC.into(),
                version: VERSION,
            }),
        )?;
        let meta = Meta {
            repos: Table::new(env.create_database(&mut w, Some("repos"))?, 1, true),
            blobs: Table::new(env.create_database(&mut w, Some("blobs"))?, 2, true),
            blob_links: Table::new(env.create_database(&mut w, Some("blob_links"))?, 3, true),
            manifests: Table::new(env.create_database(&mut w, Some("manifests"))?, 4, true),
            manifest_bodies: Table::new(
                env.create_database(&mut w, Some("manifest_bodies"))?,
                5,
                true,
            ),
            manifest_links: Table::new(
                env.create_database(&mut w, Some("manifest_links"))?,
                6,
                true,
            ),
            tags: Table::new(env.create_database(&mut w, Some("tags"))?, 7, true),
            referrers: Table::new(env.create_database(&mut w, Some("referrers"))?, 9, true),
            uploads: Table::new(env.create_database(&mut w, Some("uploads"))?, 10, true),
            chunks: Table::new(env.create_database(&mut w, Some("chunks"))?, 11, true),
            recipes: Table::new(env.create_database(&mut w, Some("recipes"))?, 12, true),
            layer_files: Table::new(env.create_database(&mut w, Some("layer_files"))?, 13, true),
            layer_sketches: Table::new(
                env.create_database(&mut w, Some("layer_sketches"))?,
                14,
                true,
            ),
            counters: Table::new(env.create_database(&mut w, Some("counters"))?, 15, true),
            containers: Table::new(env.create_database(&mut w, Some("containers"))?, 16, true),
            features: Table::new(env.create_database(&mut w, Some("features"))?, 18, false),
            container_features: Table::new(
                env.create_database(&mut w, Some("container_features"))?,
                17,
                true,
            ),
            tag_times: Table::new(env.create_database(&mut w, Some("tag_times"))?, 8, true),
            index: Mutex::new(features::FeatureIndex::new(0)),
            dir: dir.to_path_buf(),
            journal: None,
            env: env.clone(),
        };
        let mut w = Wtx::new(w, None, false);
        if stored_version < 5 {
            meta.compact_chunk_records(&mut w)?;
        }
        if stored_version == 2 {
            meta.regroup_features(&mut w)?;
        }
        if meta.counters.get(&w, CHUNK_STATS)?.is_none() {
            let c = meta.scan_chunk_counts(&w)?;
            meta.counters.put(&mut w, CHUNK_STATS, &c.encode())?;
        }
        w.commit()?;
        Ok(meta)
    }

    pub fn read(&self) -> Result<RoTxn<'_, WithoutTls>> {
        Ok(self.env.read_txn()?)
    }

    /// A write transaction; with a journal its commit reaches the bucket first.
    pub fn write(&self) -> Result<Wtx<'_>> {
        self.resolve_journal()?;
        Ok(Wtx::new(
            self.env.write_txn()?,
            self.journal.as_ref(),
            false,
        ))
    }

    /// An entry whose write failed ambiguously: if it did land, its changes are applied here
    /// before anything else is written (the bucket is the truth).
    fn resolve_journal(&self) -> Result<()> {
        let Some(j) = &self.journal else {
            return Ok(());
        };
        if !j.unsure() {
            return Ok(());
        }
        // Under LMDB's write lock (taken before the journal's, as commits do), so no other
        // transaction runs between finding out and applying.
        let mut w = self.write_unlogged()?;
        if let Some(entry) = j.resolve()? {
            tracing::warn!(
                seq = entry.0,
                "a journal entry whose write failed had landed: applied"
            );
            self.apply_into(&mut w, &[entry])?;
        }
        w.commit()
    }

    /// A write transaction whose changes nothing depends on for correctness (pull times): with
    /// a journal they go out with the next durable commit, not one of their own.
    pub fn write_lazy(&self) -> Result<Wtx<'_>> {
        self.resolve_journal()?;
        Ok(Wtx::new(self.env.write_txn()?, self.journal.as_ref(), true))
    }

    /// Writes the changes of lazy transactions not yet in the journal.
    pub fn flush_journal(&self) -> Result<()> {
        match &self.journal {
            Some(j) if j.has_pending() => self.write()?.commit(),
            _ => Ok(()),
        }
    }

    /// The journal's position and counters (None without one).
    pub fn journal_reading(&self) -> Option<journal::JournalReading> {
        self.journal.as_ref().map(|j| j.reading())
    }

    /// The table with journal id `id`.
    fn table(&self, id: u8) -> Option<&Table> {
        [
            &self.repos,
            &self.blobs,
            &self.blob_links,
            &self.manifests,
            &self.manifest_bodies,
            &self.manifest_links,
            &self.tags,
            &self.tag_times,
            &self.referrers,
            &self.uploads,
            &self.chunks,
            &self.recipes,
            &self.layer_files,
            &self.layer_sketches,
            &self.counters,
            &self.containers,
            &self.container_features,
            &self.features,
        ]
        .into_iter()
        .find(|t| t.id == id)
    }

    pub fn sync(&self) {
        let _ = self.env.force_sync();
    }

    /// Flush and close the environment (on shutdown).
    pub fn close(self) {
        if let Err(e) = self.flush_journal() {
            tracing::warn!(error = %e, "writing the last pull times to the journal failed");
        }
        let _ = self.env.force_sync();
        self.env.prepare_for_closing().wait();
    }

    // ---- repositories -------------------------------------------------------------------

    pub fn repo_exists(&self, t: &RoTxn<'_>, repo: &RepoName) -> Result<bool> {
        Ok(self.repos.get(t, repo.as_str().as_bytes())?.is_some())
    }

    fn ensure_repo(&self, w: &mut Wtx<'_>, repo: &RepoName) -> Result<()> {
        let k = repo.as_str().as_bytes();
        if self.repos.get(w, k)?.is_none() {
            self.repos.put(w, k, &enc(&RepoRecord { created: now() }))?;
        }
        Ok(())
    }

    /// Repository names in lexical order, after `last`, at most `n`; and whether more follow.
    /// Up to `n` repositories after `last` for which `visible` holds, and whether more follow.
    pub fn list_repos(
        &self,
        t: &RoTxn<'_>,
        last: Option<&str>,
        n: usize,
        visible: &dyn Fn(&str) -> bool,
    ) -> Result<(Vec<String>, bool)> {
        let lower = match last {
            Some(l) => Bound::Excluded(l.as_bytes()),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        let mut more = false;
        for item in self.repos.range(t, &(lower, Bound::Unbounded))? {
            let (k, _) = item?;
            let name = utf8(k)?;
            if !visible(name) {
                continue;
            }
            if out.len() == n {
                more = true;
                break;
            }
            out.push(name.to_string());
        }
        Ok((out, more))
    }

    // ---- blobs --------------------------------------------------------------------------

    pub fn blob(&self, t: &RoTxn<'_>, d: &Digest) -> Result<Option<BlobRecord>> {
        self.blobs
            .get(t, d.to_string().as_bytes())?
            .map(|v| dec("blob", v))
            .transpose()
    }

    pub fn blob_linked(&self, t: &RoTxn<'_>, repo: &RepoName, d: &Digest) -> Result<bool> {
        Ok(self
            .blob_links
            .get(t, &key2(repo.as_str(), &d.to_string()))?
            .is_some())
    }

    /// Record a blob (if new) and link it into `repo` (if not yet linked).
    pub fn link_blob(&self, w: &mut Wtx<'_>, repo: &RepoName, d: &Digest, size: u64) -> Result<()> {
        self.ensure_repo(w, repo)?;
        let dk = d.to_string();
        let mut rec = match self.blobs.get(w, dk.as_bytes())? {
            Some(v) => dec::<BlobRecord>("blob", v)?,
            None => BlobRecord {
                size,
                created: now(),
                links: 0,
                state: BlobState::Staged,
            },
        };
        let lk = key2(repo.as_str(), &dk);
        if self.blob_links.get(w, &lk)?.is_none() {
            rec.links += 1;
        }
        // Linked again (a repeated push or a mount): the grace period starts again, so a
        // collection cannot unlink it before the manifest that needs it arrives.
        self.blob_links
            .put(w, &lk, &enc(&LinkRecord { created: now() }))?;
        self.blobs.put(w, dk.as_bytes(), &enc(&rec))?;
        Ok(())
    }

    /// Every blob's linking repositories (for the policies, at start-up).
    pub fn all_blob_links(
        &self,
        t: &RoTxn<'_>,
    ) -> Result<std::collections::HashMap<Digest, Vec<RepoName>>> {
        let mut out: std::collections::HashMap<Digest, Vec<RepoName>> = Default::default();
        for item in self.blob_links.iter(t)? {
            let (k, _) = item?;
            let Some((repo, d)) = utf8(k)?.split_once('\0') else {
                continue;
            };
            let (Ok(repo), Ok(d)) = (repo.parse::<RepoName>(), d.parse::<Digest>()) else {
                return Err(RegistryError::Internal("corrupt blob link key".into()));
            };
            out.entry(d).or_default().push(repo);
        }
        Ok(out)
    }

    /// The repositories linking `d` (a scan of every link: for the repository policies).
    pub fn repos_linking(&self, t: &RoTxn<'_>, d: &Digest) -> Result<Vec<RepoName>> {
        let dk = d.to_string();
        let mut out = Vec::new();
        for item in self.blob_links.iter(t)? {
            let (k, _) = item?;
            if let Some((repo, digest)) = utf8(k)?.split_once('\0') {
                if digest == dk {
                    out.push(
                        repo.parse()
                            .map_err(|_| RegistryError::Internal("corrupt blob link key".into()))?,
                    );
                }
            }
        }
        Ok(out)
    }

    /// Remove `repo`'s link to a blob. Returns false if it was not linked. The blob record
    /// stays (with its count lowered) until garbage collection.
    pub fn unlink_blob(&self, w: &mut Wtx<'_>, repo: &RepoName, d: &Digest) -> Result<bool> {
        let dk = d.to_string();
        if !self.blob_links.delete(w, &key2(repo.as_str(), &dk))? {
            return Ok(false);
        }
        if let Some(v) = self.blobs.get(w, dk.as_bytes())? {
            let mut rec: BlobRecord = dec("blob", v)?;
            rec.links = rec.links.saturating_sub(1);
            self.blobs.put(w, dk.as_bytes(), &enc(&rec))?;
        }
        Ok(true)
    }

    // ---- manifests ----------------------------------------------------------------------

    pub fn manifest_link(
        &self,
        t: &RoTxn<'_>,
        repo: &RepoName,
        d: &Digest,
    ) -> Result<Option<ManifestLink>> {
        self.manifest_links
            .get(t, &key2(repo.as_str(), &d.to_string()))?
            .map(|v| dec("manifest link", v))
            .transpose()
    }

    pub fn manifest(&self, t: &RoTxn<'_>, d: &Digest) -> Result<Option<(ManifestRecord, Vec<u8>)>> {
        let k = d.to_string();
        let Some(rec) = self.manifests.get(t, k.as_bytes())? else {
            return Ok(None);
        };
        let rec: ManifestRecord = dec("manifest", rec)?;
        let body = self
            .manifest_bodies
            .get(t, k.as_bytes())?
            .ok_or_else(|| RegistryError::Internal(format!("manifest {k} has no body")))?;
        Ok(Some((rec, body.to_vec())))
    }

    /// Store a manifest (if new), link it into `repo`, and register it as a referrer of its
    /// subject.
    pub fn put_manifest(
        &self,
        w: &mut Wtx<'_>,
        repo: &RepoName,
        desc: &Descriptor,
        body: &[u8],
        subject: Option<&Digest>,
    ) -> Result<()> {
        self.ensure_repo(w, repo)?;
        let dk = desc.digest.to_string();
        let mut rec = match self.manifests.get(w, dk.as_bytes())? {
            Some(v) => dec::<ManifestRecord>("manifest", v)?,
            None => {
                self.manifest_bodies.put(w, dk.as_bytes(), body)?;
                ManifestRecord {
                    media_type: desc.media_type.clone(),
                    size: body.len() as u64,
                    links: 0,
                }
            }
        };
        let lk = key2(repo.as_str(), &dk);
        if self.manifest_links.get(w, &lk)?.is_none() {
            rec.links += 1;
            self.manifest_links.put(
                w,
                &lk,
                &enc(&ManifestLink {
                    created: now(),
                    subject: subject.cloned(),
                }),
            )?;
        }
        self.manifests.put(w, dk.as_bytes(), &enc(&rec))?;
        if let Some(s) = subject {
            let rk = key2(&key2_str(repo.as_str(), &s.to_string()), &dk);
            self.referrers.put(w, &rk, &enc(desc))?;
        }
        Ok(())
    }

    /// Unlink a manifest from `repo`: its tags there and its referrer entry go with it.
    /// Returns false if it was not linked.
    pub fn unlink_manifest(&self, w: &mut Wtx<'_>, repo: &RepoName, d: &Digest) -> Result<bool> {
        let dk = d.to_string();
        let lk = key2(repo.as_str(), &dk);
        let Some(link) = self.manifest_links.get(w, &lk)? else {
            return Ok(false);
        };
        let link: ManifestLink = dec("manifest link", link)?;
        self.manifest_links.delete(w, &lk)?;
        if let Some(s) = link.subject {
            let rk = key2(&key2_str(repo.as_str(), &s.to_string()), &dk);
            self.referrers.delete(w, &rk)?;
        }
        for tag in self.tags_pointing_to(w, repo, d)? {
            let k = key2(repo.as_str(), &tag);
            self.tags.delete(w, &k)?;
            self.forget_tag_times(w, &k)?;
        }
        if let Some(v) = self.manifests.get(w, dk.as_bytes())? {
            let mut rec: ManifestRecord = dec("manifest", v)?;
            rec.links = rec.links.saturating_sub(1);
            self.manifests.put(w, dk.as_bytes(), &enc(&rec))?;
        }
        Ok(true)
    }

    fn tags_pointing_to(&self, t: &RoTxn<'_>, repo: &RepoName, d: &Digest) -> Result<Vec<String>> {
        let prefix = key2(repo.as_str(), "");
        let target = d.to_string();
        let mut out = Vec::new();
        for item in self.tags.prefix_iter(t, &prefix)? {
            let (k, v) = item?;
            if v == target.as_bytes() {
                out.push(utf8(&k[prefix.len()..])?.to_string());
            }
        }
        Ok(out)
    }

    /// Referrer descriptors of `subject` in `repo`, in digest order.
    pub fn referrers(
        &self,
        t: &RoTxn<'_>,
        repo: &RepoName,
        subject: &Digest,
    ) -> Result<Vec<Descriptor>> {
        let prefix = key2(&key2_str(repo.as_str(), &subject.to_string()), "");
        let mut out = Vec::new();
        for item in self.referrers.prefix_iter(t, &prefix)? {
            let (_, v) = item?;
            out.push(dec("referrer", v)?);
        }
        Ok(out)
    }

    // ---- tags ---------------------------------------------------------------------------

    pub fn tag(&self, t: &RoTxn<'_>, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        match self.tags.get(t, &key2(repo.as_str(), tag.as_str()))? {
            Some(v) => utf8(v)?
                .parse()
                .map(Some)
                .map_err(|e| RegistryError::Internal(format!("corrupt tag record: {e}"))),
            None => Ok(None),
        }
    }

    pub fn set_tag(&self, w: &mut Wtx<'_>, repo: &RepoName, tag: &Tag, d: &Digest) -> Result<()> {
        self.tags.put(
            w,
            &key2(repo.as_str(), tag.as_str()),
            d.to_string().as_bytes(),
        )?;
        self.tag_pushed(w, repo, tag)
    }

    pub fn delete_tag(&self, w: &mut Wtx<'_>, repo: &RepoName, tag: &Tag) -> Result<bool> {
        let k = key2(repo.as_str(), tag.as_str());
        self.forget_tag_times(w, &k)?;
        Ok(self.tags.delete(w, &k)?)
    }

    /// Tags of `repo` in lexical order, after `last`, at most `n`; and whether more follow.
    pub fn list_tags(
        &self,
        t: &RoTxn<'_>,
        repo: &RepoName,
        last: Option<&str>,
        n: usize,
    ) -> Result<(Vec<String>, bool)> {
        let prefix = key2(repo.as_str(), "");
        let mut out = Vec::new();
        let mut more = false;
        for item in self.tags.prefix_iter(t, &prefix)? {
            let (k, _) = item?;
            let tag = utf8(&k[prefix.len()..])?;
            if last.is_some_and(|l| tag <= l) {
                continue;
            }
            if out.len() == n {
                more = true;
                break;
            }
            out.push(tag.to_string());
        }
        Ok((out, more))
    }

    // ---- uploads ------------------------------------------------------------------------

    pub fn upload(&self, t: &RoTxn<'_>, id: &UploadId) -> Result<Option<UploadRecord>> {
        self.uploads
            .get(t, id.to_string().as_bytes())?
            .map(|v| dec("upload", v))
            .transpose()
    }

    pub fn put_upload(&self, w: &mut Wtx<'_>, id: &UploadId, rec: &UploadRecord) -> Result<()> {
        self.uploads.put(w, id.to_string().as_bytes(), &enc(rec))?;
        Ok(())
    }

    pub fn delete_upload(&self, w: &mut Wtx<'_>, id: &UploadId) -> Result<bool> {
        Ok(self.uploads.delete(w, id.to_string().as_bytes())?)
    }

    /// Upload sessions last written before `cutoff` (unix seconds).
    pub fn stale_uploads(&self, t: &RoTxn<'_>, cutoff: u64) -> Result<Vec<UploadId>> {
        let mut out = Vec::new();
        for item in self.uploads.iter(t)? {
            let (k, v) = item?;
            let rec: UploadRecord = dec("upload", v)?;
            if rec.updated < cutoff {
                out.push(utf8(k)?.parse()?);
            }
        }
        Ok(out)
    }

    /// Every upload id the store knows of.
    pub fn upload_ids(&self, t: &RoTxn<'_>) -> Result<Vec<UploadId>> {
        let mut out = Vec::new();
        for item in self.uploads.iter(t)? {
            let (k, _) = item?;
            out.push(utf8(k)?.parse()?);
        }
        Ok(out)
    }

    /// Every blob with its record (for the scheduler, fsck and statistics).
    pub fn all_blobs(&self, t: &RoTxn<'_>) -> Result<Vec<(Digest, BlobRecord)>> {
        let mut out = Vec::new();
        for item in self.blobs.iter(t)? {
            let (k, v) = item?;
            let d = utf8(k)?
                .parse()
                .map_err(|e| RegistryError::Internal(format!("corrupt blob key: {e}")))?;
            out.push((d, dec("blob", v)?));
        }
        Ok(out)
    }

    // ---- statistics ---------------------------------------------------------------------

    pub fn counts(&self, t: &RoTxn<'_>) -> Result<MetaCounts> {
        let mut logical = 0u64;
        for item in self.blobs.iter(t)? {
            let (_, v) = item?;
            let rec: BlobRecord = dec("blob", v)?;
            logical += rec.size;
        }
        Ok(MetaCounts {
            repositories: self.repos.len(t)?,
            manifests: self.manifests.len(t)?,
            tags: self.tags.len(t)?,
            blobs: self.blobs.len(t)?,
            uploads: self.uploads.len(t)?,
            logical_bytes: logical,
        })
    }
}

fn key2_str(a: &str, b: &str) -> String {
    let mut s = String::with_capacity(a.len() + b.len() + 1);
    s.push_str(a);
    s.push('\0');
    s.push_str(b);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use stowage_actors::catalog::SealedContainer;
    use stowage_actors::engine::chunk::ChunkId;
    use stowage_actors::engine::container::{ChunkEncoding, ChunkLoc};
    use stowage_actors::engine::recompress::Encoding;

    #[test]
    fn a_recipe_committed_twice_counts_its_chunks_once() {
        let dir = tempfile::tempdir().unwrap();
        let m = Meta::open(dir.path(), 1 << 26).unwrap();
        let repo: RepoName = "r".parse().unwrap();
        let blob = Digest::sha256_of(b"layer");
        let id = ChunkId::of(b"chunk").unwrap();
        let loc = ChunkLoc {
            container: 1,
            offset: 32,
            stored_len: 5,
            raw_len: 5,
            encoding: ChunkEncoding::Stored,
        };
        let recipe = Recipe {
            encoding: Encoding::None,
            raw_len: 10,
            framing: vec![10],
            inline: vec![(id, 5), (id, 5)],
            files: vec![],
        };
        let mut w = m.write().unwrap();
        m.link_blob(&mut w, &repo, &blob, 10).unwrap();
        let sealed = SealedContainer {
            id: 1,
            entries: vec![(id, loc)],
            ..Default::default()
        };
        m.add_container(&mut w, &sealed).unwrap();
        m.commit_recipe(&mut w, &blob, &recipe, &[]).unwrap();
        m.commit_recipe(&mut w, &blob, &recipe, &[]).unwrap();
        w.commit().unwrap();
        let t = m.read().unwrap();
        assert_eq!(m.chunk(&t, &id).unwrap().unwrap().refs, 2);
        let kept = m.chunk_counts(&t).unwrap();
        assert_eq!(kept, m.scan_chunk_counts(&t).unwrap());
        assert_eq!((kept.unique, kept.refs, kept.stored_bytes), (1, 2, 5));
        assert!(matches!(
            m.blob(&t, &blob).unwrap().unwrap().state,
            BlobState::Deduplicated { .. }
        ));
    }

    /// Make the store say it is at `version`, which kept no chunk totals.
    fn pretend_version(m: &Meta, w: &mut Wtx<'_>, version: u32) {
        let info: Db = m.env.open_database(w, Some("info")).unwrap().unwrap();
        let format = enc(&FormatRecord {
            magic: MAGIC.into(),
            version,
        });
        info.put(w, b"format", &format).unwrap();
        m.counters.delete(w, CHUNK_STATS).unwrap();
    }

    /// A chunk record as stores before version 5 wrote it.
    fn fixed(r: &ChunkRecord) -> Vec<u8> {
        let mut b = Vec::with_capacity(ChunkRecord::FIXED_LEN);
        b.extend_from_slice(&r.loc.container.to_le_bytes());
        b.extend_from_slice(&r.loc.offset.to_le_bytes());
        b.extend_from_slice(&r.loc.stored_len.to_le_bytes());
        b.extend_from_slice(&r.loc.raw_len.to_le_bytes());
        b.push(r.loc.encoding as u8);
        b.extend_from_slice(&r.refs.to_le_bytes());
        b.extend_from_slice(&r.dependents.to_le_bytes());
        b
    }

    fn whole_chunk(container: u64, data: &[u8]) -> (ChunkId, ChunkLoc) {
        (
            ChunkId::of(data).unwrap(),
            ChunkLoc {
                container,
                offset: 32,
                stored_len: data.len() as u32,
                raw_len: data.len() as u32,
                encoding: ChunkEncoding::Stored,
            },
        )
    }

    #[test]
    fn the_feature_index_is_rebuilt_from_its_blocks_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (whole_chunk(1, b"a"), whole_chunk(2, b"b"));
        {
            let m = Meta::open(dir.path(), 1 << 26).unwrap();
            m.load_feature_index(100).unwrap();
            for (c, sf) in [(a, vec![7, 8]), (b, vec![7, 9])] {
                let sealed = SealedContainer {
                    id: c.1.container,
                    entries: vec![c],
                    features: vec![(c.0, sf)],
                    ..Default::default()
                };
                let mut w = m.write().unwrap();
                m.add_container(&mut w, &sealed).unwrap();
                w.commit().unwrap();
                m.index_container(&sealed);
            }
            let t = m.read().unwrap();
            assert_eq!(
                m.similar(&t, &[7, 8]).unwrap(),
                vec![Some(b.0), Some(a.0)],
                "the latest registration wins"
            );
        }
        let m = Meta::open(dir.path(), 1 << 26).unwrap();
        m.load_feature_index(100).unwrap();
        let t = m.read().unwrap();
        assert_eq!(m.similar(&t, &[7, 8]).unwrap(), vec![Some(b.0), Some(a.0)]);
        assert_eq!(m.feature_index_size(), (3, 100));
        drop(t);
        // With room for one container only, the newest is loaded.
        m.load_feature_index(2).unwrap();
        let t = m.read().unwrap();
        assert_eq!(m.similar(&t, &[7, 8]).unwrap(), vec![Some(b.0), None]);
    }

    #[test]
    fn a_version_2_feature_index_is_regrouped_by_container() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (whole_chunk(1, b"a"), whole_chunk(2, b"b"));
        {
            let m = Meta::open(dir.path(), 1 << 26).unwrap();
            let mut w = m.write().unwrap();
            for c in [a, b] {
                let sealed = SealedContainer {
                    id: c.1.container,
                    entries: vec![c],
                    ..Default::default()
                };
                m.add_container(&mut w, &sealed).unwrap();
            }
            // What version 2 wrote: fixed-width chunk records, one feature entry per
            // super-feature, and its format record.
            for c in [a, b] {
                let r = m.chunk(&w, &c.0).unwrap().unwrap();
                m.chunks.put(&mut w, &c.0 .0, &fixed(&r)).unwrap();
            }
            for (i, f, c) in [(0usize, 7u64, a.0), (1, 8, a.0), (1, 9, b.0)] {
                m.features
                    .put(
                        &mut w,
                        &features::feature_key(i, f).to_be_bytes(),
                        &c.0[..8],
                    )
                    .unwrap();
            }
            pretend_version(&m, &mut w, 2);
            w.commit().unwrap();
        }
        let m = Meta::open(dir.path(), 1 << 26).unwrap();
        m.load_feature_index(100).unwrap();
        let t = m.read().unwrap();
        assert_eq!(
            m.chunk_counts(&t).unwrap().unique,
            2,
            "totals counted at upgrade"
        );
        assert_eq!(
            m.features.len(&t).unwrap(),
            0,
            "version 2's entries are moved"
        );
        let blocks: Vec<_> = m
            .feature_blocks(&t)
            .unwrap()
            .into_iter()
            .map(|(c, n)| (c, n.unwrap()))
            .collect();
        assert_eq!(blocks, vec![(1, 2), (2, 1)]);
        assert_eq!(m.similar(&t, &[7, 8]).unwrap(), vec![Some(a.0), Some(a.0)]);
        assert_eq!(m.similar(&t, &[1, 9]).unwrap(), vec![None, Some(b.0)]);
    }

    #[test]
    fn a_new_layer_version_stores_its_recipe_and_file_index_as_patches() {
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
                .map(|id| (*id, whole_chunk(1, &id.0).1))
                .collect(),
            ..Default::default()
        };
        m.add_container(&mut w, &sealed).unwrap();
        // Versions 1-3 of a layer: 300 files each, one chunk per file; each version changes
        // a few files (new chunk, new hash).
        let version = |v: u32| {
            let chunk = |i: usize| {
                ids[if i % 100 == 7 {
                    300 + v as usize * 10 + i / 100
                } else {
                    i
                }]
            };
            let files: Vec<FileEntry> = (0..300)
                .map(|i| FileEntry {
                    path: format!("usr/share/app/f{i}"),
                    size: 20,
                    mode: 0o644,
                    sha256: format!("sha256:{}", hex::encode(chunk(i).0)) + &"0".repeat(24),
                })
                .collect();
            let recipe = Recipe {
                encoding: stowage_actors::engine::recompress::Encoding::None,
                raw_len: 300 * 20,
                framing: vec![0, 300 * 20],
                inline: vec![],
                files: (0..300).map(|i| (chunk(i), 20)).collect(),
            };
            (Digest::sha256_of(&v.to_le_bytes()), recipe, files)
        };
        let layers: Vec<_> = (1..=3).map(version).collect();
        for (d, recipe, files) in &layers {
            m.link_blob(&mut w, &repo, d, 6000).unwrap();
            m.commit_recipe(&mut w, d, recipe, files).unwrap();
        }
        w.commit().unwrap();
        let t = m.read().unwrap();
        assert_eq!(
            m.chunk_counts(&t).unwrap(),
            m.scan_chunk_counts(&t).unwrap()
        );
        assert_eq!(m.chunk_counts(&t).unwrap().refs, 900);
        for (n, (d, recipe, files)) in layers.iter().enumerate() {
            assert_eq!(m.recipe(&t, d).unwrap().as_ref(), Some(recipe));
            assert_eq!(
                m.layer_files(&t, d).unwrap().unwrap(),
                serde_json::to_value(files).unwrap()
            );
            let r = m
                .recipes
                .get(&t, d.to_string().as_bytes())
                .unwrap()
                .unwrap();
            let f = m
                .layer_files
                .get(&t, d.to_string().as_bytes())
                .unwrap()
                .unwrap();
            let first = layers[0].0.to_string();
            match (patch::parse(patch::RECIPE, r).unwrap(), n) {
                (patch::Stored::Whole(_), 0) => {}
                // Versions 2 and 3 both name version 1: a patch never serves as reference.
                (patch::Stored::Patch { reference, .. }, 1 | 2) => assert_eq!(reference, first),
                _ => panic!("layer {n}'s recipe stored unexpectedly"),
            }
            assert!(matches!(
                (patch::parse(patch::FILE_INDEX, f).unwrap(), n),
                (patch::Stored::Whole(_), 0) | (patch::Stored::Patch { .. }, 1 | 2)
            ));
            if n > 0 {
                assert!(
                    r.len() * 5 < layers[0].1.to_bytes().len(),
                    "recipe patch {}",
                    r.len()
                );
            }
        }
    }

    #[test]
    fn chunk_records_are_varints_and_older_fixed_records_are_rewritten() {
        let rec = |container, refs| ChunkRecord {
            loc: ChunkLoc {
                container,
                offset: 4 << 20,
                stored_len: 9000,
                raw_len: u32::MAX,
                encoding: ChunkEncoding::Delta,
            },
            refs,
            dependents: 3,
        };
        for r in [rec(1, 0), rec(u64::MAX, u64::MAX), rec(300, 1 << 40)] {
            assert_eq!(ChunkRecord::decode(&r.encode()).unwrap(), r);
        }
        assert_eq!(rec(7, 2).encode().len(), 1 + 4 + 2 + 5 + 1 + 1 + 1);
        let b = rec(7, 2).encode();
        assert!(ChunkRecord::decode(&b[..b.len() - 1]).is_err(), "truncated");
        assert!(
            ChunkRecord::decode(&[b.clone(), vec![0]].concat()).is_err(),
            "trailing"
        );
        assert!(ChunkRecord::decode(&[0xff; 12]).is_err(), "overlong varint");

        // A version 4 store: fixed-width records (and a format record saying so).
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<ChunkId> = (0u32..70_000)
            .map(|i| ChunkId::of(&i.to_le_bytes()).unwrap())
            .collect();
        {
            let m = Meta::open(dir.path(), 1 << 28).unwrap();
            let mut w = m.write().unwrap();
            for (n, id) in ids.iter().enumerate() {
                m.chunks
                    .put(&mut w, &id.0, &fixed(&rec(n as u64, 1)))
                    .unwrap();
            }
            pretend_version(&m, &mut w, 4);
            w.commit().unwrap();
        }
        let m = Meta::open(dir.path(), 1 << 28).unwrap();
        let t = m.read().unwrap();
        for (n, id) in ids.iter().enumerate().step_by(997) {
            assert_eq!(m.chunk(&t, id).unwrap(), Some(rec(n as u64, 1)));
        }
        let c = m.chunk_counts(&t).unwrap();
        assert_eq!(
            (c.unique, c.refs, c.deltas, c.bases),
            (70_000, 70_000, 70_000, 70_000)
        );
    }
}
