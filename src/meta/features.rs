//! The feature index: super-feature → candidate base chunk, for the Similarity stage.
//!
//! # On-disk format (`container_features` database, block version 1)
//!
//! One record per sealed container, written in the container's own commit: the key is the
//! container id (u64 big-endian), the value a block
//!
//! ```text
//! version u8 (= 1) | n × ( key u32 big-endian | chunk id prefix [8] )
//! ```
//!
//! with one entry per super-feature of each chunk the container stores whole. `key` is the
//! low 32 bits of super-feature `i` plus `i` (definition version 1 of
//! `stowage_actors::engine::features`); the prefix is the first 8 bytes of the chunk id, resolved
//! through `chunks` by prefix. A collision only proposes a poor base, whose delta is then
//! discarded: it never affects what is stored.
//!
//! Container ids only grow, so every commit appends one record at the end of the database and
//! rewrites no other page. (Version 2 stores kept one LMDB entry per super-feature; their random
//! keys made every container commit rewrite nearly every page of the index, and the freed pages
//! doubled its size on disk. They are regrouped by container when the store is upgraded.)
//!
//! # In memory
//!
//! Lookups go to a hash map built from the newest records at start-up and extended after each
//! container commit; the latest registration of a key wins, since the newest image versions are
//! the likeliest bases for the next. The map holds at most `capacity` entries (about 30 bytes
//! each): past it, the oldest containers' entries are forgotten, so bases are searched among the
//! most recently stored whole chunks. Their records stay on disk.

use std::collections::{HashMap, VecDeque};

use crate::error::{RegistryError, Result};

const BLOCK_VERSION: u8 = 1;
const ENTRY: usize = 4 + 8;

/// The key under which super-feature `i` of value `f` is registered.
pub fn feature_key(i: usize, f: u64) -> u32 {
    (f as u32).wrapping_add(i as u32)
}

/// Encode one container's entries as a block.
pub fn encode_block(entries: &[(u32, [u8; 8])]) -> Vec<u8> {
    let mut b = Vec::with_capacity(1 + entries.len() * ENTRY);
    b.push(BLOCK_VERSION);
    for (k, p) in entries {
        b.extend_from_slice(&k.to_be_bytes());
        b.extend_from_slice(p);
    }
    b
}

/// Decode a block written by [`encode_block`].
pub fn decode_block(b: &[u8]) -> Result<Vec<(u32, [u8; 8])>> {
    match b.split_first() {
        Some((&BLOCK_VERSION, rest)) if rest.len() % ENTRY == 0 => Ok(rest
            .chunks_exact(ENTRY)
            .map(|e| {
                (
                    u32::from_be_bytes(e[..4].try_into().expect("4 bytes")),
                    e[4..].try_into().expect("8 bytes"),
                )
            })
            .collect()),
        Some((&v, _)) if v != BLOCK_VERSION => Err(RegistryError::Internal(format!(
            "feature block version {v}, this stowage reads version {BLOCK_VERSION}"
        ))),
        _ => Err(RegistryError::Internal("corrupt feature block".into())),
    }
}

/// Number of entries in a block, without decoding it.
pub fn block_len(b: &[u8]) -> usize {
    b.len().saturating_sub(1) / ENTRY
}

/// The in-memory map, bounded to `capacity` entries by forgetting the oldest containers.
#[derive(Default)]
pub struct FeatureIndex {
    /// key → (chunk id prefix, container that registered it, truncated to 32 bits: only
    /// compared with the containers being forgotten, all far older).
    map: HashMap<u32, ([u8; 8], u32)>,
    /// The containers whose entries are in the map, oldest first, with their keys.
    order: VecDeque<(u32, Vec<u32>)>,
    entries: usize,
    capacity: usize,
}

impl FeatureIndex {
    pub fn new(capacity: usize) -> FeatureIndex {
        FeatureIndex {
            capacity,
            ..Default::default()
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Distinct keys held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Register a container's entries (containers in increasing id order), then forget the
    /// oldest containers while more than `capacity` entries are held.
    pub fn insert(&mut self, container: u64, entries: &[(u32, [u8; 8])]) {
        if self.capacity == 0 || entries.is_empty() {
            return;
        }
        let c = container as u32;
        for (k, p) in entries {
            self.map.insert(*k, (*p, c));
        }
        self.order
            .push_back((c, entries.iter().map(|(k, _)| *k).collect()));
        self.entries += entries.len();
        while self.entries > self.capacity {
            let Some((old, keys)) = self.order.pop_front() else {
                break;
            };
            self.entries -= keys.len();
            for k in keys {
                if self.map.get(&k).is_some_and(|(_, by)| *by == old) {
                    self.map.remove(&k);
                }
            }
        }
    }

    pub fn get(&self, key: u32) -> Option<[u8; 8]> {
        self.map.get(&key).map(|(p, _)| *p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_and_refuse_other_versions() {
        let e = vec![(7u32, [1u8; 8]), (u32::MAX, [2u8; 8])];
        let b = encode_block(&e);
        assert_eq!(b.len(), 1 + 2 * ENTRY);
        assert_eq!(block_len(&b), 2);
        assert_eq!(decode_block(&b).unwrap(), e);
        assert_eq!(decode_block(&encode_block(&[])).unwrap(), vec![]);
        let mut other = b.clone();
        other[0] = 2;
        assert!(decode_block(&other)
            .unwrap_err()
            .to_string()
            .contains("version 2"));
        assert!(decode_block(&b[..b.len() - 1]).is_err());
        assert!(decode_block(&[]).is_err());
    }

    #[test]
    fn the_latest_registration_wins_and_the_oldest_containers_are_forgotten() {
        let mut ix = FeatureIndex::new(4);
        ix.insert(1, &[(10, [1; 8]), (11, [1; 8])]);
        ix.insert(2, &[(11, [2; 8]), (12, [2; 8])]);
        assert_eq!(ix.get(10), Some([1; 8]));
        assert_eq!(ix.get(11), Some([2; 8]), "latest wins");
        // A third container pushes the total past 4: container 1 is forgotten, but key 11
        // stays with container 2, which registered it last.
        ix.insert(3, &[(13, [3; 8])]);
        assert_eq!(ix.get(10), None);
        assert_eq!(ix.get(11), Some([2; 8]));
        assert_eq!(ix.get(13), Some([3; 8]));
        assert_eq!(ix.len(), 3);
        let mut off = FeatureIndex::new(0);
        off.insert(1, &[(1, [1; 8])]);
        assert_eq!(off.get(1), None);
    }
}
