//! Checkpoints of the metadata store in the bucket, and rebuilding the local index from them.
//!
//! # Objects (magic `STOWCKPT`, version 1)
//!
//! `meta/checkpoints/<seq>` (20 decimal digits): a compacted copy of the LMDB file holding at
//! least the changes of journal entries up to `seq`:
//!
//! | bytes | field                                   |
//! |-------|-----------------------------------------|
//! | 8     | magic `STOWCKPT`                        |
//! | 2     | version, u16 little-endian (1)          |
//! | 8     | seq, u64 LE                             |
//! | n     | zstd frame: the LMDB file (`data.mdb`)  |
//!
//! `seq` is read before the copy is taken, so the copy may hold later entries too; replaying
//! entries is idempotent (see [`super::journal`]), so a rebuild replays every entry after `seq`.
//! The two newest checkpoints are kept, and the journal entries after the older of them: a
//! node rebuilding from the older one while the newer is written still finds every entry.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use stowage_actors::storage::blocking::BlockingBucket;

use super::journal::{self, JOURNAL_SEQ};
use super::table::Wtx;
use super::Meta;
use crate::error::{RegistryError, Result};

const MAGIC: &[u8; 8] = b"STOWCKPT";
const VERSION: u16 = 1;
const HEADER: usize = 8 + 2 + 8;
const PREFIX: &str = "meta/checkpoints";
/// Checkpoints kept.
const KEEP: usize = 2;
/// Journal entries applied per LMDB transaction while catching up.
const APPLY_BATCH: usize = 256;

fn key(seq: u64) -> String {
    format!("{PREFIX}/{seq:020}")
}

fn seq_of(key: &str) -> Option<u64> {
    let name = key.strip_prefix(PREFIX)?.strip_prefix('/')?;
    (name.len() == 20).then(|| name.parse().ok()).flatten()
}

fn store_err(what: &str) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |e| RegistryError::ObjectStore(format!("{what}: {e}"))
}

/// The checkpoints in the bucket, oldest first.
fn list(bucket: &BlockingBucket) -> Result<Vec<u64>> {
    let listed = bucket
        .call(|b| async move { b.list(PREFIX).await })
        .map_err(store_err("listing the metadata checkpoints"))?;
    let mut seqs: Vec<u64> = listed.iter().filter_map(|l| seq_of(&l.key)).collect();
    seqs.sort_unstable();
    Ok(seqs)
}

/// What bringing the local index up to date with the bucket did.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// The local index was made from this checkpoint (an empty data directory).
    pub checkpoint: Option<u64>,
    pub checkpoint_bytes: u64,
    /// Journal entries applied.
    pub replayed: u64,
    /// The last entry the index now holds.
    pub seq: u64,
    /// The bucket held no metadata while the local index held a store: the caller writes a
    /// first checkpoint.
    pub bootstrap: bool,
    pub seconds: f64,
}

/// Progress of a rebuild, for the command line.
pub enum Progress {
    Checkpoint { seq: u64, bytes: u64 },
    Replayed { done: u64, of: u64 },
}

/// Fetches the newest checkpoint into `dir/data.mdb` (which must not exist); returns its
/// sequence number and size, or None when the bucket holds none.
fn restore_checkpoint(bucket: &BlockingBucket, dir: &Path) -> Result<Option<(u64, u64)>> {
    let Some(&seq) = list(bucket)?.last() else {
        return Ok(None);
    };
    let data = bucket
        .call(|b| async move { b.get(&key(seq)).await })
        .map_err(store_err("reading a metadata checkpoint"))?;
    let bad = |why: String| RegistryError::Internal(format!("metadata checkpoint {seq}: {why}"));
    if data.len() < HEADER || &data[..8] != MAGIC {
        return Err(bad("not a checkpoint".into()));
    }
    let version = u16::from_le_bytes([data[8], data[9]]);
    if version != VERSION {
        return Err(bad(format!(
            "version {version}, this stowage reads {VERSION}"
        )));
    }
    let named = u64::from_le_bytes(data[10..18].try_into().expect("8 bytes"));
    if named != seq {
        return Err(bad(format!("holds entry {named}")));
    }
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join("data.mdb.restore");
    {
        let mut out = std::fs::File::create(&tmp)?;
        let mut dec = zstd::stream::Decoder::new(&data[HEADER..])?;
        std::io::copy(&mut dec, &mut out).map_err(|e| bad(e.to_string()))?;
        out.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join("data.mdb"))?;
    Ok(Some((seq, data.len() as u64)))
}

impl Meta {
    /// Opens the metadata store at `dir` as the index of the store in `bucket`: an empty `dir`
    /// is made from the newest checkpoint; then every journal entry after what it holds is
    /// applied. A `writer`'s commits are then journaled; a replica only follows (see
    /// [`Meta::catch_up`]) and writes nothing of its own.
    pub fn open_journaled(
        dir: &Path,
        map_size: usize,
        bucket: Arc<BlockingBucket>,
        writer: bool,
        progress: &dyn Fn(Progress),
    ) -> Result<(Meta, Recovery)> {
        let start = Instant::now();
        let mut rec = Recovery::default();
        let fresh = !dir.join("data.mdb").exists();
        if fresh {
            if let Some((seq, bytes)) = restore_checkpoint(&bucket, dir)? {
                progress(Progress::Checkpoint { seq, bytes });
                rec.checkpoint = Some(seq);
                rec.checkpoint_bytes = bytes;
            }
        }
        let mut meta = Meta::open(dir, map_size)?;
        if !fresh {
            // An index so far behind that the entries it lacks were pruned (a node down for a
            // while): set aside, and made again from the newest checkpoint.
            let local = meta.journal_seq()?;
            let next = journal::list_after(&bucket, local)?.first().copied();
            if next.is_some_and(|n| n > local + 1) {
                meta.close();
                let aside = dir.join(format!("data.mdb.behind-{local}"));
                tracing::warn!(
                    local,
                    next,
                    aside = %aside.display(),
                    "the local index is older than the bucket's journal reaches back: rebuilding it"
                );
                std::fs::rename(dir.join("data.mdb"), &aside)?;
                let _ = std::fs::remove_file(dir.join("lock.mdb"));
                return Meta::open_journaled(dir, map_size, bucket, writer, progress);
            }
        }
        let entries = journal::list(&bucket)?;
        let checkpoints = list(&bucket)?;
        rec.replayed = meta.catch_up(&bucket, progress)?;
        let last_entry = entries.last().copied().unwrap_or(0);
        let newest_checkpoint = checkpoints.last().copied().unwrap_or(0);
        rec.seq = meta.journal_seq()?;
        if rec.seq < last_entry.max(newest_checkpoint) {
            return Err(RegistryError::Internal(format!(
                "the bucket's metadata reaches entry {} but the local index only {}",
                last_entry.max(newest_checkpoint),
                rec.seq
            )));
        }
        if writer && entries.is_empty() && checkpoints.is_empty() {
            let t = meta.read()?;
            rec.bootstrap = meta.counts(&t)?.blobs > 0 || meta.repos.len(&t)? > 0;
        }
        if writer {
            meta.journal = Some(journal::Journal::new(
                bucket,
                *meta.counters,
                rec.seq,
                newest_checkpoint,
            ));
        }
        rec.seconds = start.elapsed().as_secs_f64();
        Ok((meta, rec))
    }

    /// Applies the bucket's journal entries after the last this index holds; returns how many.
    /// A replica calls it again and again to follow the writer.
    pub fn catch_up(&self, bucket: &BlockingBucket, progress: &dyn Fn(Progress)) -> Result<u64> {
        let local = self.journal_seq()?;
        let after = journal::list_after(bucket, local)?;
        // Entries must follow on from what the index holds: a gap is metadata lost.
        if let Some(&first) = after.first() {
            if first != local + 1 {
                return Err(RegistryError::Internal(format!(
                    "the local index holds journal entries up to {local} but the bucket's next is \
                     {first}: entries are missing (stowage rebuild-index starts over from the \
                     newest checkpoint)"
                )));
            }
        }
        let total = after.len() as u64;
        let mut done = 0;
        for batch in after.chunks(APPLY_BATCH) {
            let fetched = journal::fetch(bucket, batch)?;
            self.apply(&fetched)?;
            done += fetched.len() as u64;
            progress(Progress::Replayed { done, of: total });
        }
        Ok(done)
    }

    /// The last journal entry this index holds (0 for none).
    pub fn journal_seq(&self) -> Result<u64> {
        let t = self.read()?;
        Ok(self
            .counters
            .get(&t, JOURNAL_SEQ)?
            .and_then(|v| v.try_into().ok())
            .map_or(0, u64::from_le_bytes))
    }

    /// Applies journal entries (in order) without journaling them again.
    fn apply(&self, entries: &[(u64, Vec<journal::Op>)]) -> Result<()> {
        let mut w = self.write_unlogged()?;
        self.apply_into(&mut w, entries)?;
        w.commit()
    }

    /// A write transaction whose changes are not journaled (they come from the journal).
    pub(super) fn write_unlogged(&self) -> Result<Wtx<'_>> {
        Ok(Wtx::new(self.env.write_txn()?, None, false))
    }

    /// Applies journal entries in `w` (not journaled again).
    pub(super) fn apply_into(
        &self,
        w: &mut Wtx<'_>,
        entries: &[(u64, Vec<journal::Op>)],
    ) -> Result<()> {
        for (seq, ops) in entries {
            for op in ops {
                let id = match op {
                    journal::Op::Put { table, .. }
                    | journal::Op::Delete { table, .. }
                    | journal::Op::Clear { table } => *table,
                };
                let t = self.table(id).ok_or_else(|| {
                    RegistryError::Internal(format!("journal entry {seq}: unknown table {id}"))
                })?;
                match op {
                    journal::Op::Put { key, value, .. } => t.put(w, key, value)?,
                    journal::Op::Delete { key, .. } => {
                        t.delete(w, key)?;
                    }
                    journal::Op::Clear { .. } => t.clear(w)?,
                }
            }
            self.counters.put(w, JOURNAL_SEQ, &seq.to_le_bytes())?;
        }
        Ok(())
    }

    /// Writes a checkpoint of this index to the bucket (after shipping pending lazy changes),
    /// then drops the checkpoints and entries no longer needed. Returns the checkpoint's
    /// sequence number and size; None without a journal.
    pub fn checkpoint(&self) -> Result<Option<(u64, u64)>> {
        let Some(j) = &self.journal else {
            return Ok(None);
        };
        self.flush_journal()?;
        let seq = self.journal_seq()?;
        let copy = self.dir.join("checkpoint.mdb.tmp");
        let object = self.dir.join("checkpoint.obj.tmp");
        let _ = std::fs::remove_file(&copy);
        drop(
            self.env
                .copy_to_path(&copy, heed::CompactionOption::Enabled)?,
        );
        {
            let mut out = std::io::BufWriter::new(std::fs::File::create(&object)?);
            out.write_all(MAGIC)?;
            out.write_all(&VERSION.to_le_bytes())?;
            out.write_all(&seq.to_le_bytes())?;
            let mut enc = zstd::stream::Encoder::new(out, 3)?;
            let mut src = std::fs::File::open(&copy)?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = src.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                enc.write_all(&buf[..n])?;
            }
            enc.finish()?.flush()?;
        }
        let _ = std::fs::remove_file(&copy);
        let path = object.clone();
        let bytes = j
            .bucket()
            .call(|b| async move { b.put_file(&key(seq), &path).await });
        let _ = std::fs::remove_file(&object);
        let bytes = bytes.map_err(store_err("writing a metadata checkpoint"))?;
        j.checkpointed(seq, bytes);
        self.prune(j.bucket())?;
        Ok(Some((seq, bytes)))
    }

    /// Keeps the newest [`KEEP`] checkpoints and the entries after the oldest of them.
    fn prune(&self, bucket: &BlockingBucket) -> Result<()> {
        let checkpoints = list(bucket)?;
        if checkpoints.len() <= KEEP {
            return Ok(());
        }
        let floor = checkpoints[checkpoints.len() - KEEP];
        let mut doomed: Vec<String> = checkpoints[..checkpoints.len() - KEEP]
            .iter()
            .map(|&s| key(s))
            .collect();
        doomed.extend(
            journal::list(bucket)?
                .into_iter()
                .filter(|&s| s <= floor)
                .map(journal::key),
        );
        bucket
            .call(|b| async move { b.delete(&doomed).await })
            .map_err(store_err("dropping old metadata checkpoints"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::{parse_digest, RepoName};
    use stowage_actors::storage::{Bucket, Location, S3Options};

    fn bucket(dir: &Path) -> Arc<BlockingBucket> {
        let b = Bucket::open(&Location::Local(dir.to_path_buf()), &S3Options::default()).unwrap();
        Arc::new(BlockingBucket::new(Arc::new(b)).unwrap())
    }

    fn open(dir: &Path, b: &Arc<BlockingBucket>, writer: bool) -> (Meta, Recovery) {
        Meta::open_journaled(dir, 1 << 26, b.clone(), writer, &|_| {}).unwrap()
    }

    fn link(m: &Meta, repo: &str, n: u8) -> Result<()> {
        let d = parse_digest(&format!("sha256:{}", format!("{n:02x}").repeat(32))).unwrap();
        let repo: RepoName = repo.parse().unwrap();
        let mut w = m.write()?;
        m.link_blob(&mut w, &repo, &d, 5)?;
        w.commit()
    }

    fn linked(m: &Meta, repo: &str, n: u8) -> bool {
        let d = parse_digest(&format!("sha256:{}", format!("{n:02x}").repeat(32))).unwrap();
        let t = m.read().unwrap();
        m.blob_linked(&t, &repo.parse().unwrap(), &d).unwrap()
    }

    #[test]
    fn an_empty_index_rebuilds_from_checkpoint_and_journal_and_a_second_writer_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let b = bucket(&tmp.path().join("bucket"));
        let (a, rec) = open(&tmp.path().join("a"), &b, true);
        assert_eq!((rec.seq, rec.replayed, rec.checkpoint), (0, 0, None));
        // Another writer started on the same (empty) bucket.
        let (other, _) = open(&tmp.path().join("other"), &b, true);
        link(&a, "team/app", 1).unwrap();
        let err = link(&other, "team/app", 2).unwrap_err().to_string();
        assert!(err.contains("another node"), "{err}");
        assert!(
            !linked(&other, "team/app", 2),
            "the refused change was not committed"
        );

        link(&a, "team/app", 3).unwrap();
        let (seq, _) = a.checkpoint().unwrap().unwrap();
        assert_eq!(seq, 2);
        link(&a, "team/other", 4).unwrap();

        // A fresh index: the checkpoint, then the one entry after it.
        let (r, rec) = open(&tmp.path().join("rebuilt"), &b, false);
        assert_eq!((rec.checkpoint, rec.replayed, rec.seq), (Some(2), 1, 3));
        for (repo, n) in [("team/app", 1), ("team/app", 3), ("team/other", 4)] {
            assert!(linked(&r, repo, n), "{repo} {n}");
        }
        assert!(!linked(&r, "team/app", 2));
        // A replica follows what the writer adds.
        link(&a, "team/app", 5).unwrap();
        assert_eq!(r.catch_up(&b, &|_| {}).unwrap(), 1);
        assert!(linked(&r, "team/app", 5));
        assert_eq!(r.catch_up(&b, &|_| {}).unwrap(), 0);
    }

    #[test]
    fn an_index_older_than_the_journal_reaches_back_is_made_again() {
        let tmp = tempfile::tempdir().unwrap();
        let b = bucket(&tmp.path().join("bucket"));
        let (a, _) = open(&tmp.path().join("a"), &b, true);
        link(&a, "team/app", 1).unwrap();
        let (lagging, rec) = open(&tmp.path().join("lagging"), &b, false);
        assert_eq!(rec.seq, 1);
        lagging.close();
        // Three checkpoints: the oldest goes, with the entries up to the second.
        for n in 2..5 {
            link(&a, "team/app", n).unwrap();
            a.checkpoint().unwrap();
        }
        link(&a, "team/app", 5).unwrap();
        assert_eq!(journal::list(&b).unwrap(), vec![4, 5]);
        let (lagging, rec) = open(&tmp.path().join("lagging"), &b, false);
        assert_eq!((rec.checkpoint, rec.seq), (Some(4), 5));
        for n in 1..=5 {
            assert!(linked(&lagging, "team/app", n), "{n}");
        }
        assert!(tmp.path().join("lagging/data.mdb.behind-1").exists());
    }
}
