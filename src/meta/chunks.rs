//! The chunk index (`chunks`), its totals (`counters`/`chunk_stats`), the container table
//! (`containers`) and the per-container feature blocks (`container_features`), with the
//! in-memory feature index built from them. Record formats are described in the module
//! header of [`super`].

use std::ops::Bound;

use heed::RoTxn;

use stowage_actors::catalog::SealedContainer;
use stowage_actors::engine::chunk::ChunkId;
use stowage_actors::engine::container::{ChunkEncoding, ChunkLoc};

use super::*;

/// A chunk in the index: where it is and how many recipe references it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRecord {
    pub loc: ChunkLoc,
    pub refs: u64,
    /// Delta chunks stored against this one.
    pub dependents: u64,
}

impl ChunkRecord {
    /// Fixed width of the records of stores before version 5.
    pub(super) const FIXED_LEN: usize = 8 + 8 + 4 + 4 + 1 + 8 + 8;

    pub(super) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(16);
        let l = &self.loc;
        for v in [l.container, l.offset, l.stored_len as u64, l.raw_len as u64] {
            put_varint(&mut b, v);
        }
        b.push(l.encoding as u8);
        put_varint(&mut b, self.refs);
        put_varint(&mut b, self.dependents);
        b
    }

    pub(super) fn decode(b: &[u8]) -> Result<ChunkRecord> {
        let corrupt = || RegistryError::Internal("corrupt chunk record".into());
        let mut r = b;
        let mut next = || take_varint(&mut r).ok_or_else(corrupt);
        let (container, offset, stored_len, raw_len) = (next()?, next()?, next()?, next()?);
        let (&encoding, rest) = r.split_first().ok_or_else(corrupt)?;
        r = rest;
        let mut next = || take_varint(&mut r).ok_or_else(corrupt);
        let (refs, dependents) = (next()?, next()?);
        if !r.is_empty() {
            return Err(corrupt());
        }
        Ok(ChunkRecord {
            loc: ChunkLoc {
                container,
                offset,
                stored_len: u32::try_from(stored_len).map_err(|_| corrupt())?,
                raw_len: u32::try_from(raw_len).map_err(|_| corrupt())?,
                encoding: ChunkEncoding::from_u8(encoding)
                    .map_err(|e| RegistryError::Internal(e.to_string()))?,
            },
            refs,
            dependents,
        })
    }

    /// A record as stores before version 5 wrote it.
    pub(super) fn decode_fixed(b: &[u8]) -> Result<ChunkRecord> {
        if b.len() != Self::FIXED_LEN {
            return Err(RegistryError::Internal("corrupt chunk record".into()));
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        Ok(ChunkRecord {
            loc: ChunkLoc {
                container: u64_at(0),
                offset: u64_at(8),
                stored_len: u32_at(16),
                raw_len: u32_at(20),
                encoding: ChunkEncoding::from_u8(b[24])
                    .map_err(|e| RegistryError::Internal(e.to_string()))?,
            },
            refs: u64_at(25),
            dependents: u64_at(33),
        })
    }
}

pub(super) fn put_varint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push(v as u8 | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

pub(super) fn take_varint(r: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for (i, &byte) in r.iter().enumerate().take(10) {
        v |= ((byte & 0x7f) as u64) << (7 * i);
        if byte & 0x80 == 0 {
            *r = &r[i + 1..];
            return Some(v);
        }
    }
    None
}

/// Counts over the chunk index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkCounts {
    /// Distinct chunks.
    pub unique: u64,
    /// References from recipes.
    pub refs: u64,
    pub stored_bytes: u64,
    /// Chunks stored as deltas.
    pub deltas: u64,
    /// Chunks some delta depends on.
    pub bases: u64,
}

impl ChunkCounts {
    pub(super) fn encode(&self) -> [u8; 40] {
        let mut b = [0u8; 40];
        for (i, v) in [
            self.unique,
            self.refs,
            self.stored_bytes,
            self.deltas,
            self.bases,
        ]
        .into_iter()
        .enumerate()
        {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    pub(super) fn decode(b: &[u8]) -> Option<ChunkCounts> {
        let b: &[u8; 40] = b.try_into().ok()?;
        let at = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        Some(ChunkCounts {
            unique: at(0),
            refs: at(1),
            stored_bytes: at(2),
            deltas: at(3),
            bases: at(4),
        })
    }
}

impl Meta {
    /// Build the in-memory feature index from the newest containers' blocks, up to `capacity`
    /// entries (0: no similarity lookups).
    pub fn load_feature_index(&self, capacity: usize) -> Result<usize> {
        let mut index = features::FeatureIndex::new(capacity);
        let t = self.read()?;
        let mut from = None;
        let mut total = 0usize;
        for item in self.container_features.rev_iter(&t)? {
            if total >= capacity {
                break;
            }
            let (k, v) = item?;
            total += features::block_len(v);
            from = Some(k.to_vec());
        }
        if let Some(from) = from {
            let range = (Bound::Included(from.as_slice()), Bound::Unbounded);
            for item in self.container_features.range(&t, &range)? {
                let (k, v) = item?;
                index.insert(container_key(k)?, &features::decode_block(v)?);
            }
        }
        let n = index.len();
        *self.index.lock().expect("feature index lock") = index;
        Ok(n)
    }

    /// Every container's feature block, decoded (for fsck).
    pub fn feature_blocks(&self, t: &RoTxn<'_>) -> Result<Vec<(u64, Result<usize>)>> {
        let mut out = Vec::new();
        for item in self.container_features.iter(t)? {
            let (k, v) = item?;
            out.push((
                container_key(k)?,
                features::decode_block(v).map(|e| e.len()),
            ));
        }
        Ok(out)
    }

    /// Distinct keys in the in-memory feature index, and its capacity.
    pub fn feature_index_size(&self) -> (usize, usize) {
        let ix = self.index.lock().expect("feature index lock");
        (ix.len(), ix.capacity())
    }

    pub fn chunk(&self, t: &RoTxn<'_>, id: &ChunkId) -> Result<Option<ChunkRecord>> {
        self.chunks
            .get(t, &id.0)?
            .map(ChunkRecord::decode)
            .transpose()
    }

    /// Record a sealed container and add its chunks (a chunk already indexed keeps its first
    /// location), count each new delta as a dependent of its base, and register the features
    /// of its whole chunks. A container file without a record was never committed and can be
    /// removed.
    pub fn add_container(&self, w: &mut Wtx<'_>, sealed: &SealedContainer) -> Result<()> {
        let rec = ContainerRecord {
            created: now(),
            chunks: sealed.entries.len() as u64,
            bytes: sealed
                .entries
                .iter()
                .map(|(_, l)| l.stored_len as u64)
                .sum(),
        };
        self.containers
            .put(w, &sealed.id.to_be_bytes(), &enc(&rec))?;
        let added = self.add_chunks(w, &sealed.entries)?;
        for (delta, base) in &sealed.bases {
            if !added.contains(delta) {
                continue;
            }
            let mut b = self.chunk(w, base)?.ok_or_else(|| {
                RegistryError::Internal(format!("delta {delta} names unknown base {base}"))
            })?;
            if !b.loc.encoding.is_whole() {
                return Err(RegistryError::Internal(format!(
                    "delta {delta} names base {base}, itself a delta"
                )));
            }
            if b.dependents == 0 {
                self.update_chunk_counts(w, |c| c.bases += 1)?;
            }
            b.dependents += 1;
            self.chunks.put(w, &base.0, &b.encode())?;
        }
        let entries = feature_entries(sealed);
        if !entries.is_empty() {
            self.container_features.put(
                w,
                &sealed.id.to_be_bytes(),
                &features::encode_block(&entries),
            )?;
        }
        Ok(())
    }

    /// Make a committed container's whole chunks findable by their super-features.
    pub fn index_container(&self, sealed: &SealedContainer) {
        self.index
            .lock()
            .expect("feature index lock")
            .insert(sealed.id, &feature_entries(sealed));
    }

    /// For each super-feature `i` of `sf`, the chunk registered under it.
    pub fn similar(&self, t: &RoTxn<'_>, sf: &[u64]) -> Result<Vec<Option<ChunkId>>> {
        let prefixes: Vec<Option<[u8; 8]>> = {
            let ix = self.index.lock().expect("feature index lock");
            sf.iter()
                .enumerate()
                .map(|(i, f)| ix.get(features::feature_key(i, *f)))
                .collect()
        };
        let mut out = Vec::with_capacity(sf.len());
        for prefix in prefixes {
            let mut found = None;
            if let Some(prefix) = prefix {
                if let Some(item) = self.chunks.prefix_iter(t, &prefix)?.next() {
                    let (k, _) = item?;
                    if k.len() == 20 {
                        found = Some(ChunkId(k.try_into().expect("20 bytes")));
                    }
                }
            }
            out.push(found);
        }
        Ok(out)
    }

    pub fn container_known(&self, t: &RoTxn<'_>, id: u64) -> Result<bool> {
        Ok(self.containers.get(t, &id.to_be_bytes())?.is_some())
    }

    /// Index the chunks not indexed yet; returns those.
    pub(super) fn add_chunks(
        &self,
        w: &mut Wtx<'_>,
        entries: &[(ChunkId, ChunkLoc)],
    ) -> Result<std::collections::HashSet<ChunkId>> {
        let mut added = std::collections::HashSet::new();
        let mut new = ChunkCounts::default();
        for (id, loc) in entries {
            if self.chunks.get(w, &id.0)?.is_none() {
                let rec = ChunkRecord {
                    loc: *loc,
                    refs: 0,
                    dependents: 0,
                };
                self.chunks.put(w, &id.0, &rec.encode())?;
                added.insert(*id);
                new.unique += 1;
                new.stored_bytes += loc.stored_len as u64;
                new.deltas += u64::from(!loc.encoding.is_whole());
            }
        }
        self.update_chunk_counts(w, |c| {
            c.unique += new.unique;
            c.stored_bytes += new.stored_bytes;
            c.deltas += new.deltas;
        })?;
        Ok(added)
    }

    /// Change the totals over `chunks` (in the transaction that changes the records).
    pub(super) fn update_chunk_counts(
        &self,
        w: &mut Wtx<'_>,
        f: impl FnOnce(&mut ChunkCounts),
    ) -> Result<()> {
        let mut c = self
            .counters
            .get(w, CHUNK_STATS)?
            .and_then(ChunkCounts::decode)
            .ok_or_else(|| RegistryError::Internal("corrupt chunk_stats counter".into()))?;
        f(&mut c);
        self.counters.put(w, CHUNK_STATS, &c.encode())?;
        Ok(())
    }

    /// The next value of a named counter (starting at 1).
    pub fn next_counter(&self, w: &mut Wtx<'_>, name: &str) -> Result<u64> {
        let cur = match self.counters.get(w, name.as_bytes())? {
            Some(v) if v.len() == 8 => u64::from_le_bytes(v.try_into().expect("8 bytes")),
            _ => 0,
        };
        self.counters
            .put(w, name.as_bytes(), &(cur + 1).to_le_bytes())?;
        Ok(cur + 1)
    }

    /// Every chunk record (for fsck).
    pub fn all_chunks(&self, t: &RoTxn<'_>) -> Result<Vec<(ChunkId, ChunkRecord)>> {
        let mut out = Vec::new();
        for item in self.chunks.iter(t)? {
            let (k, v) = item?;
            let id: [u8; 20] = k
                .try_into()
                .map_err(|_| RegistryError::Internal("corrupt chunk key".into()))?;
            out.push((ChunkId(id), ChunkRecord::decode(v)?));
        }
        Ok(out)
    }

    /// Totals over the chunk index, as kept in `counters`.
    pub fn chunk_counts(&self, t: &RoTxn<'_>) -> Result<ChunkCounts> {
        self.counters
            .get(t, CHUNK_STATS)?
            .and_then(ChunkCounts::decode)
            .ok_or_else(|| RegistryError::Internal("corrupt chunk_stats counter".into()))
    }

    /// Totals over the chunk index, counted record by record (at upgrade, and by fsck).
    pub fn scan_chunk_counts(&self, t: &RoTxn<'_>) -> Result<ChunkCounts> {
        let mut c = ChunkCounts::default();
        for item in self.chunks.iter(t)? {
            let (_, v) = item?;
            let r = ChunkRecord::decode(v)?;
            c.unique += 1;
            c.refs += r.refs;
            c.stored_bytes += r.loc.stored_len as u64;
            if !r.loc.encoding.is_whole() {
                c.deltas += 1;
            }
            if r.dependents > 0 {
                c.bases += 1;
            }
        }
        Ok(c)
    }
}

/// A container id, as keyed in `containers` and `container_features`.
pub(super) fn container_key(k: &[u8]) -> Result<u64> {
    k.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| RegistryError::Internal("corrupt container key".into()))
}

/// The feature-index entries of a container's whole chunks.
pub(super) fn feature_entries(sealed: &SealedContainer) -> Vec<(u32, [u8; 8])> {
    let mut out = Vec::new();
    for (id, sf) in &sealed.features {
        let prefix: [u8; 8] = id.0[..8].try_into().expect("8 bytes");
        for (i, f) in sf.iter().enumerate() {
            out.push((features::feature_key(i, *f), prefix));
        }
    }
    out
}
