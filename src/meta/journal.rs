//! The metadata journal: with the store on an object store, every durable change to the
//! metadata store reaches the bucket before its LMDB commit, so the local LMDB file is an index
//! any node can rebuild from the bucket (a checkpoint, see [`super::checkpoint`], then the
//! entries after it).
//!
//! # Entries (magic `STOWJRNL`, version 1)
//!
//! One object per durable write transaction, `meta/journal/<seq>` with `seq` written as 20
//! decimal digits (so names sort in order); sequence numbers start at 1 and have no gaps:
//!
//! | bytes | field                                                          |
//! |-------|----------------------------------------------------------------|
//! | 8     | magic `STOWJRNL`                                               |
//! | 2     | version, u16 little-endian (1)                                 |
//! | 8     | seq, u64 LE                                                    |
//! | 8     | writer: a random id of the process that wrote it, u64 LE       |
//! | n     | one zstd frame: the changes                                    |
//! | 8     | xxh3-64 of everything before, u64 LE                           |
//!
//! The changes are a varint count then, in commit order, each change: kind u8 (0 put, 1 delete,
//! 2 clear), table id u8 (see `Meta::open`), and for put and delete the key (varint length,
//! bytes), for put the value (varint length, bytes). Changes are physical (the values as
//! written), so applying entries in order is idempotent from any earlier state a checkpoint
//! holds. Upload sessions are journaled too (their acknowledged bytes are objects, see
//! `registry::durability`), so a session outlives its node.
//!
//! A commit holds LMDB's single write lock while its entry is written, so entries are in commit
//! order; an entry written whose LMDB commit then failed (a crash between the two) is applied at
//! the next start, like a write-ahead log's tail. A bucket error aborts the transaction: nothing
//! the client was told is stored can be missing from the bucket.
//!
//! Lazy transactions (pull times, which nothing depends on for correctness) are not written on
//! their own: their changes go out with the next durable entry, or with [`Meta::flush_journal`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use heed::RwTxn;
use stowage_actors::storage::blocking::BlockingBucket;
use stowage_actors::storage::Created;

use super::chunks::{put_varint, take_varint};
use super::table::Db;
use crate::error::{RegistryError, Result};

const MAGIC: &[u8; 8] = b"STOWJRNL";
const VERSION: u16 = 1;
const HEADER: usize = 8 + 2 + 8 + 8;
/// Key in `counters` of the last journal entry this LMDB holds (u64 LE); not journaled.
pub(super) const JOURNAL_SEQ: &[u8] = b"journal_seq";
pub(super) const PREFIX: &str = "meta/journal";
/// Entries fetched at once while catching up.
const FETCHES: usize = 16;

pub(super) fn key(seq: u64) -> String {
    format!("{PREFIX}/{seq:020}")
}

/// The sequence number in an entry's key.
pub(super) fn seq_of(key: &str) -> Option<u64> {
    let name = key.strip_prefix(PREFIX)?.strip_prefix('/')?;
    (name.len() == 20).then(|| name.parse().ok()).flatten()
}

/// One change to one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        table: u8,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        table: u8,
        key: Vec<u8>,
    },
    Clear {
        table: u8,
    },
}

pub(super) fn encode(seq: u64, writer: u64, ops: &[&[Op]]) -> Vec<u8> {
    let mut body = Vec::new();
    put_varint(&mut body, ops.iter().map(|o| o.len() as u64).sum());
    for op in ops.iter().flat_map(|o| o.iter()) {
        match op {
            Op::Put { table, key, value } => {
                body.extend_from_slice(&[0, *table]);
                put_varint(&mut body, key.len() as u64);
                body.extend_from_slice(key);
                put_varint(&mut body, value.len() as u64);
                body.extend_from_slice(value);
            }
            Op::Delete { table, key } => {
                body.extend_from_slice(&[1, *table]);
                put_varint(&mut body, key.len() as u64);
                body.extend_from_slice(key);
            }
            Op::Clear { table } => body.extend_from_slice(&[2, *table]),
        }
    }
    let mut out = Vec::with_capacity(HEADER + body.len() / 2 + 16);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&writer.to_le_bytes());
    out.extend_from_slice(&zstd::bulk::compress(&body, 3).expect("zstd compresses to memory"));
    let sum = xxhash_rust::xxh3::xxh3_64(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// Decodes entry `bytes` (named `seq`): its changes.
pub(super) fn decode(seq: u64, bytes: &[u8]) -> Result<Vec<Op>> {
    let bad = |why: &str| RegistryError::Internal(format!("journal entry {seq}: {why}"));
    if bytes.len() < HEADER + 8 || &bytes[..8] != MAGIC {
        return Err(bad("not a journal entry"));
    }
    let (data, sum) = bytes.split_at(bytes.len() - 8);
    if xxhash_rust::xxh3::xxh3_64(data).to_le_bytes() != sum {
        return Err(bad("checksum mismatch"));
    }
    let version = u16::from_le_bytes([data[8], data[9]]);
    if version != VERSION {
        return Err(bad(&format!(
            "version {version}, this stowage reads {VERSION}"
        )));
    }
    let named = u64::from_le_bytes(data[10..18].try_into().expect("8 bytes"));
    if named != seq {
        return Err(bad(&format!("holds entry {named}")));
    }
    let body = zstd::stream::decode_all(&data[HEADER..]).map_err(|e| bad(&e.to_string()))?;
    let mut r = &body[..];
    let trunc = || bad("truncated");
    let n = take_varint(&mut r).ok_or_else(trunc)?;
    let mut ops = Vec::with_capacity(n.min(1 << 20) as usize);
    let bytes_of = |r: &mut &[u8]| -> Result<Vec<u8>> {
        let len = take_varint(r).ok_or_else(trunc)? as usize;
        if r.len() < len {
            return Err(trunc());
        }
        let (v, rest) = r.split_at(len);
        *r = rest;
        Ok(v.to_vec())
    };
    for _ in 0..n {
        if r.len() < 2 {
            return Err(trunc());
        }
        let (kind, table) = (r[0], r[1]);
        r = &r[2..];
        ops.push(match kind {
            0 => Op::Put {
                table,
                key: bytes_of(&mut r)?,
                value: bytes_of(&mut r)?,
            },
            1 => Op::Delete {
                table,
                key: bytes_of(&mut r)?,
            },
            2 => Op::Clear { table },
            k => return Err(bad(&format!("unknown change kind {k}"))),
        });
    }
    Ok(ops)
}

/// Counts for the metrics.
#[derive(Debug, Default)]
pub struct JournalStats {
    pub entries: AtomicU64,
    pub bytes: AtomicU64,
    pub failures: AtomicU64,
    pub checkpoints: AtomicU64,
    pub checkpoint_bytes: AtomicU64,
}

/// A reading of the journal's position and counters.
#[derive(Debug, Clone, Default)]
pub struct JournalReading {
    /// The last entry written.
    pub seq: u64,
    /// Entries written since the last checkpoint.
    pub since_checkpoint: u64,
    pub entries: u64,
    pub bytes: u64,
    pub failures: u64,
    pub checkpoints: u64,
    pub checkpoint_bytes: u64,
}

struct State {
    /// The sequence number of the next entry.
    next: u64,
    /// Changes of lazy transactions committed locally and not yet written.
    pending: Vec<Op>,
    /// The entry the last checkpoint holds.
    checkpoint: u64,
    /// An entry whose write failed in a way that left unknown whether it is in the bucket.
    unknown: Option<u64>,
}

/// Whether an entry is in the bucket.
enum Landed {
    Yes,
    No,
    /// Another writer's entry holds the key.
    Other,
    Unknown(std::io::Error),
}

/// Where durable commits write their entries.
pub struct Journal {
    bucket: Arc<BlockingBucket>,
    counters: Db,
    writer: u64,
    state: Mutex<State>,
    pub(super) stats: JournalStats,
}

impl Journal {
    /// A journal whose last entry is `last` and whose newest checkpoint holds `checkpoint`.
    pub(super) fn new(
        bucket: Arc<BlockingBucket>,
        counters: Db,
        last: u64,
        checkpoint: u64,
    ) -> Journal {
        let mut id = [0u8; 8];
        let _ = getrandom::fill(&mut id);
        Journal {
            bucket,
            counters,
            writer: u64::from_le_bytes(id),
            state: Mutex::new(State {
                next: last + 1,
                pending: Vec::new(),
                checkpoint,
                unknown: None,
            }),
            stats: JournalStats::default(),
        }
    }

    pub(super) fn bucket(&self) -> &Arc<BlockingBucket> {
        &self.bucket
    }

    /// Commits `txn` whose changes are `ops`: lazily (kept for the next entry), or by writing
    /// an entry and then committing.
    pub(super) fn commit(&self, mut txn: RwTxn<'_>, ops: Vec<Op>, lazy: bool) -> Result<()> {
        let mut st = self.state.lock().expect("journal lock");
        if lazy || (ops.is_empty() && st.pending.is_empty()) {
            txn.commit()?;
            st.pending.extend(ops);
            return Ok(());
        }
        let seq = st.next;
        self.counters
            .put(&mut txn, JOURNAL_SEQ, &seq.to_le_bytes())?;
        let entry = Bytes::from(encode(seq, self.writer, &[&st.pending, &ops]));
        let n = entry.len() as u64;
        // A conditional put: where the store enforces it (AWS S3, MinIO, a directory) a second
        // writer on the bucket finds its entry taken and fails instead of overwriting it.
        let k = key(seq);
        let written = self.bucket.call({
            let (k, entry) = (k.clone(), entry.clone());
            |b| async move { b.create(&k, entry).await }
        });
        let landed = match written {
            Ok(Created::New) => Landed::Yes,
            // Ours (a retried request whose first attempt landed), or another writer's.
            Ok(Created::Existed) => self.landed(&k, &entry),
            // It may have landed all the same (the answer was lost).
            Err(_) => self.landed(&k, &entry),
        };
        match landed {
            Landed::Yes => {}
            Landed::No => {
                // The transaction is dropped (aborted); pending changes wait for the next entry.
                self.stats.failures.fetch_add(1, Relaxed);
                return Err(RegistryError::ObjectStore(format!(
                    "writing metadata journal entry {seq} failed"
                )));
            }
            Landed::Unknown(e) => {
                // Found out before the next transaction starts (see `Meta::write`).
                st.unknown = Some(seq);
                self.stats.failures.fetch_add(1, Relaxed);
                return Err(RegistryError::ObjectStore(format!(
                    "writing metadata journal entry {seq}: {e}"
                )));
            }
            Landed::Other => {
                self.stats.failures.fetch_add(1, Relaxed);
                return Err(RegistryError::Internal(format!(
                    "metadata journal entry {seq} was written by another node: two writers on one \
                     bucket (start every node but one with --replica); this change is dropped"
                )));
            }
        }
        st.pending.clear();
        st.next += 1;
        self.stats.entries.fetch_add(1, Relaxed);
        self.stats.bytes.fetch_add(n, Relaxed);
        // Written: a failed LMDB commit now is replayed from the entry at the next start.
        txn.commit()?;
        Ok(())
    }

    /// Reads entry `k` back: whether it holds `entry`.
    fn landed(&self, k: &str, entry: &Bytes) -> Landed {
        let k = k.to_string();
        match self.bucket.call(|b| async move { b.get(&k).await }) {
            Ok(d) if d == *entry => Landed::Yes,
            Ok(_) => Landed::Other,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Landed::No,
            Err(e) => Landed::Unknown(e),
        }
    }

    /// An entry whose write left unknown whether it landed: resolved before the next write
    /// transaction. Returns the entry's changes if it did land (to apply here, with the lazy
    /// changes committed since, which are newer), None if it did not.
    pub(super) fn resolve(&self) -> Result<Option<(u64, Vec<Op>)>> {
        let mut st = self.state.lock().expect("journal lock");
        let Some(seq) = st.unknown else {
            return Ok(None);
        };
        let k = key(seq);
        match self.bucket.call(|b| async move { b.get(&k).await }) {
            Ok(d) => {
                let mut ops = decode(seq, &d)?;
                ops.extend(st.pending.iter().cloned());
                st.unknown = None;
                st.next = seq + 1;
                Ok(Some((seq, ops)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                st.unknown = None;
                Ok(None)
            }
            Err(e) => Err(RegistryError::ObjectStore(format!(
                "finding out whether metadata journal entry {seq} was written: {e}"
            ))),
        }
    }

    pub(super) fn unsure(&self) -> bool {
        self.state.lock().expect("journal lock").unknown.is_some()
    }

    pub(super) fn checkpointed(&self, seq: u64, bytes: u64) {
        let mut st = self.state.lock().expect("journal lock");
        st.checkpoint = st.checkpoint.max(seq);
        self.stats.checkpoints.fetch_add(1, Relaxed);
        self.stats.checkpoint_bytes.fetch_add(bytes, Relaxed);
    }

    pub(super) fn has_pending(&self) -> bool {
        !self.state.lock().expect("journal lock").pending.is_empty()
    }

    pub fn reading(&self) -> JournalReading {
        let st = self.state.lock().expect("journal lock");
        let seq = st.next - 1;
        JournalReading {
            seq,
            since_checkpoint: seq.saturating_sub(st.checkpoint),
            entries: self.stats.entries.load(Relaxed),
            bytes: self.stats.bytes.load(Relaxed),
            failures: self.stats.failures.load(Relaxed),
            checkpoints: self.stats.checkpoints.load(Relaxed),
            checkpoint_bytes: self.stats.checkpoint_bytes.load(Relaxed),
        }
    }
}

/// The sequence numbers of the entries in the bucket, in order.
pub(super) fn list(bucket: &BlockingBucket) -> Result<Vec<u64>> {
    let listed = bucket
        .call(|b| async move { b.list(PREFIX).await })
        .map_err(|e| RegistryError::ObjectStore(format!("listing the metadata journal: {e}")))?;
    let mut seqs: Vec<u64> = listed.iter().filter_map(|l| seq_of(&l.key)).collect();
    seqs.sort_unstable();
    Ok(seqs)
}

/// The sequence numbers of the entries after `seq`, in order (listed from there on).
pub(super) fn list_after(bucket: &BlockingBucket, seq: u64) -> Result<Vec<u64>> {
    let from = key(seq);
    let listed = bucket
        .call(|b| async move { b.list_after(PREFIX, &from).await })
        .map_err(|e| RegistryError::ObjectStore(format!("listing the metadata journal: {e}")))?;
    let mut seqs: Vec<u64> = listed
        .iter()
        .filter_map(|l| seq_of(&l.key))
        .filter(|&s| s > seq)
        .collect();
    seqs.sort_unstable();
    Ok(seqs)
}

/// Fetches and decodes entries `seqs`, a few at a time, in order.
pub(super) fn fetch(bucket: &BlockingBucket, seqs: &[u64]) -> Result<Vec<(u64, Vec<Op>)>> {
    use futures_util::stream::{self, StreamExt, TryStreamExt};
    let want = seqs.to_vec();
    let got: Vec<(u64, Bytes)> = bucket
        .call(|b| async move {
            stream::iter(want)
                .map(|seq| {
                    let b = b.clone();
                    async move { b.get(&key(seq)).await.map(|d| (seq, d)) }
                })
                .buffered(FETCHES)
                .try_collect()
                .await
        })
        .map_err(|e| RegistryError::ObjectStore(format!("reading the metadata journal: {e}")))?;
    got.into_iter()
        .map(|(seq, d)| Ok((seq, decode(seq, &d)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_damage_is_refused() {
        let ops = vec![
            Op::Put {
                table: 2,
                key: b"sha256:ab".to_vec(),
                value: vec![7; 300],
            },
            Op::Delete {
                table: 7,
                key: b"repo\0tag".to_vec(),
            },
            Op::Clear { table: 10 },
            Op::Put {
                table: 11,
                key: vec![],
                value: vec![],
            },
        ];
        let e = encode(42, 9, &[&ops[..1], &ops[1..]]);
        assert_eq!(decode(42, &e).unwrap(), ops);
        assert!(decode(43, &e)
            .unwrap_err()
            .to_string()
            .contains("holds entry 42"));
        let mut bad = e.clone();
        bad[HEADER + 2] ^= 1;
        assert!(decode(42, &bad)
            .unwrap_err()
            .to_string()
            .contains("checksum"));
        assert!(decode(42, &e[..e.len() - 1]).is_err());
        assert_eq!(decode(1, &encode(1, 0, &[])).unwrap(), vec![]);
    }

    #[test]
    fn keys_sort_by_sequence_and_parse_back() {
        assert_eq!(key(12), "meta/journal/00000000000000000012");
        assert_eq!(seq_of(&key(12)), Some(12));
        assert_eq!(seq_of("meta/journal/12"), None);
        assert_eq!(seq_of("meta/checkpoints/00000000000000000012"), None);
        assert!(key(9) < key(10));
    }
}
