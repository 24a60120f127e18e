//! Content-defined chunking (FastCDC 2020) and chunk identities.
//!
//! A chunk's identity is its SHA-1 computed with collision detection (the `sha1collisiondetection`
//! crate, the SHAttered countermeasure): input that carries a known collision attack pattern is
//! refused rather than stored, so two different chunks cannot share an id by construction.

use std::fmt;

use sha1collisiondetection::Sha1CD;

/// The 20-byte identity of a chunk.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 20]);

impl ChunkId {
    /// Hash `data`; `Err` when the data carries a SHA-1 collision attack.
    pub fn of(data: &[u8]) -> Result<ChunkId, CollisionDetected> {
        let mut h = Sha1CD::default();
        h.update(data);
        let mut out = sha1collisiondetection::Output::default();
        match h.finalize_into_dirty_cd(&mut out) {
            Ok(()) => {
                let mut id = [0u8; 20];
                id.copy_from_slice(&out);
                Ok(ChunkId(id))
            }
            Err(_) => Err(CollisionDetected),
        }
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A chunk whose bytes carry a SHA-1 collision attack (refused, never stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("SHA-1 collision attack detected in chunk data")]
pub struct CollisionDetected;

/// FastCDC sizes. Defaults: min 4 KiB, average 16 KiB, max 64 KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkParams {
    pub min: usize,
    pub avg: usize,
    pub max: usize,
}

impl Default for ChunkParams {
    fn default() -> Self {
        ChunkParams {
            min: 4 * 1024,
            avg: 16 * 1024,
            max: 64 * 1024,
        }
    }
}

/// A push-based FastCDC 2020 chunker: feed bytes as they arrive, get chunk boundaries out.
/// Boundaries are identical to chunking the concatenated input in one call.
pub struct Chunker {
    p: ChunkParams,
    masks: (u64, u64),
    buf: Vec<u8>,
}

impl Chunker {
    pub fn new(p: ChunkParams) -> Chunker {
        let masks = fastcdc::v2020::select_masks(p.avg, fastcdc::v2020::Normalization::Level1);
        Chunker {
            p,
            masks,
            buf: Vec::with_capacity(p.max * 2),
        }
    }

    fn cut(&self, data: &[u8]) -> usize {
        let (ms, ml) = self.masks;
        fastcdc::v2020::cut(
            data,
            self.p.min,
            self.p.avg,
            self.p.max,
            ms,
            ml,
            ms << 1,
            ml << 1,
        )
        .1
    }

    /// Add bytes; `emit` receives every chunk completed so far.
    pub fn push(&mut self, mut data: &[u8], emit: &mut dyn FnMut(&[u8])) {
        while !data.is_empty() {
            let room = self.p.max - self.buf.len().min(self.p.max);
            let take = room.max(1).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            while self.buf.len() >= self.p.max {
                let n = self.cut(&self.buf);
                emit(&self.buf[..n]);
                self.buf.drain(..n);
            }
        }
    }

    /// End of stream: emit what is left.
    pub fn finish(&mut self, emit: &mut dyn FnMut(&[u8])) {
        while !self.buf.is_empty() {
            let n = self.cut(&self.buf);
            emit(&self.buf[..n]);
            self.buf.drain(..n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::test_bytes as data;

    #[test]
    fn push_in_pieces_matches_one_shot() {
        let d = data(1_000_000, 9);
        let p = ChunkParams::default();
        let one: Vec<usize> = fastcdc::v2020::FastCDC::new(&d, p.min, p.avg, p.max)
            .map(|c| c.length)
            .collect();
        for piece in [1usize, 1000, 4096, 65536, 300_000] {
            let mut c = Chunker::new(p);
            let mut lens = Vec::new();
            for part in d.chunks(piece) {
                c.push(part, &mut |ch| lens.push(ch.len()));
            }
            c.finish(&mut |ch| lens.push(ch.len()));
            assert_eq!(lens, one, "piece size {piece}");
        }
        assert!(one.iter().all(|&l| l <= p.max));
        let avg = d.len() / one.len();
        assert!((8 * 1024..32 * 1024).contains(&avg), "average {avg}");
    }

    #[test]
    fn an_insertion_changes_few_chunks() {
        let d = data(2_000_000, 5);
        let mut e = d.clone();
        e.splice(1_000_000..1_000_000, b"inserted bytes".iter().copied());
        let ids = |v: &[u8]| {
            let mut c = Chunker::new(ChunkParams::default());
            let mut ids = std::collections::HashSet::new();
            c.push(v, &mut |ch| {
                ids.insert(ChunkId::of(ch).unwrap());
            });
            c.finish(&mut |ch| {
                ids.insert(ChunkId::of(ch).unwrap());
            });
            ids
        };
        let (a, b) = (ids(&d), ids(&e));
        let new = b.difference(&a).count();
        assert!(new <= 3, "{new} new chunks after one insertion");
    }

    #[test]
    fn sha1_ids() {
        assert_eq!(
            ChunkId::of(b"abc").unwrap().to_string(),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
    }
}
