//! Deltas through the engine alone: random edits round-trip, one base serves many deltas, and
//! deltas still restore after their base's container is rewritten (compaction).

mod common;

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use stowage_actors::storage::containers::Containers;

use stowage_actors::digest::Digest;
use stowage_actors::engine::chunk::ChunkId;
use stowage_actors::engine::container::{
    container_path, delta_record, encode_chunk, rewrite, ChunkEncoding, ChunkLoc, ContainerWriter,
};
use stowage_actors::engine::delta::DeltaCoder;
use stowage_actors::engine::features::{super_features, FeatureParams};
use stowage_actors::engine::recipe::Recipe;
use stowage_actors::engine::tar::FileEntry;
use stowage_actors::pipeline::{Catalog, SealedContainer};
use stowage_actors::restore::{ChunkReader, ReadSession};

use common::Rng;

/// One random edit of the kinds image versions show.
fn edit(r: &mut Rng, data: &mut Vec<u8>) {
    let at = r.index(data.len().max(1));
    match r.index(4) {
        0 => {
            let n = 1 + r.index(40);
            let ins = r.bytes(n, true);
            data.splice(at..at, ins);
        }
        1 => {
            let n = (1 + r.index(40)).min(data.len() - at);
            data.drain(at..at + n);
        }
        2 => {
            for _ in 0..1 + r.index(8) {
                let i = r.index(data.len());
                data[i] ^= 1 << r.index(8);
            }
        }
        _ => {
            // A region moved elsewhere.
            let n = (64 + r.index(512)).min(data.len() - at);
            let region: Vec<u8> = data.drain(at..at + n).collect();
            let to = r.index(data.len() + 1);
            data.splice(to..to, region);
        }
    }
}

#[test]
fn deltas_round_trip_random_edits() {
    let mut r = Rng(0x5eed);
    let mut coder = DeltaCoder::new(3);
    let mut smaller = 0;
    for case in 0..300 {
        let n = 4096 + r.index(60_000);
        let base = r.bytes(n, true);
        let mut target = base.clone();
        for _ in 0..1 + r.index(6) {
            edit(&mut r, &mut target);
        }
        let d = coder.encode(&base, &target).unwrap();
        let back = coder.decode(&base, &d, target.len() as u32).unwrap();
        assert!(back == target, "case {case}");
        if d.len() * 5 < encode_chunk(&target, 3).1.len() {
            smaller += 1;
        }
    }
    assert!(smaller > 280, "only {smaller}/300 deltas clearly smaller");
}

#[derive(Default)]
struct MemCatalog {
    chunks: Mutex<HashMap<ChunkId, ChunkLoc>>,
}

impl Catalog for MemCatalog {
    fn chunk(&self, id: &ChunkId) -> io::Result<Option<ChunkLoc>> {
        Ok(self.chunks.lock().unwrap().get(id).copied())
    }
    fn similar(&self, sf: &[u64]) -> io::Result<Vec<Option<ChunkId>>> {
        Ok(vec![None; sf.len()])
    }
    fn allocate_container(&self) -> io::Result<u64> {
        unreachable!()
    }
    fn commit_container(&self, sealed: &SealedContainer) -> io::Result<()> {
        let mut m = self.chunks.lock().unwrap();
        for (id, loc) in &sealed.entries {
            m.insert(*id, *loc);
        }
        Ok(())
    }
    fn commit_recipe(&self, _: &Digest, _: &Recipe, _: &[FileEntry]) -> io::Result<()> {
        unreachable!()
    }
    fn keep_raw(&self, _: &Digest, _: &str) -> io::Result<()> {
        unreachable!()
    }
}

fn commit(cat: &MemCatalog, entries: Vec<(ChunkId, ChunkLoc)>) {
    cat.commit_container(&SealedContainer {
        entries,
        ..Default::default()
    })
    .unwrap();
}

#[test]
fn one_base_many_deltas_and_a_rewritten_base_container() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Arc::new(MemCatalog::default());
    let mut r = Rng(42);
    let mut coder = DeltaCoder::new(3);

    // Container 1: the base (and an unrelated chunk that compaction will drop).
    let base = r.bytes(32_000, true);
    let base_id = ChunkId::of(&base).unwrap();
    let junk = r.bytes(10_000, true);
    let mut w = ContainerWriter::create(dir.path(), 1).unwrap();
    let (enc, data) = encode_chunk(&base, 3);
    w.append(base_id, enc, base.len() as u32, &data).unwrap();
    let (enc, data) = encode_chunk(&junk, 3);
    w.append(ChunkId::of(&junk).unwrap(), enc, junk.len() as u32, &data)
        .unwrap();
    commit(&cat, w.seal().unwrap());

    // Container 2: fifty deltas against the same base.
    let mut targets = Vec::new();
    let mut w = ContainerWriter::create(dir.path(), 2).unwrap();
    for _ in 0..50 {
        let mut t = base.clone();
        for _ in 0..3 {
            edit(&mut r, &mut t);
        }
        let id = ChunkId::of(&t).unwrap();
        let d = coder.encode(&base, &t).unwrap();
        w.append(
            id,
            ChunkEncoding::Delta,
            t.len() as u32,
            &delta_record(&base_id, &d),
        )
        .unwrap();
        targets.push((id, t));
    }
    commit(&cat, w.seal().unwrap());

    let reader = ChunkReader::new(cat.clone(), Arc::new(Containers::local(dir.path())));
    let check = |reader: &ChunkReader| {
        let mut s = ReadSession::new(1 << 20);
        for (id, t) in &targets {
            assert!(reader.read(id, &mut s).unwrap() == *t, "{id}");
        }
    };
    check(&reader);

    // Compaction: container 1 rewritten as container 3 without the junk, index repointed, the
    // old file removed. Deltas name their base by id, so they restore unchanged.
    let moved = rewrite(&container_path(dir.path(), 1), dir.path(), 3, &|id| {
        *id == base_id
    })
    .unwrap();
    assert_eq!(moved.len(), 1);
    commit(&cat, moved);
    std::fs::remove_file(container_path(dir.path(), 1)).unwrap();
    assert_eq!(cat.chunk(&base_id).unwrap().unwrap().container, 3);
    check(&reader);
}

#[test]
fn a_delta_whose_base_is_a_delta_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cat = Arc::new(MemCatalog::default());
    let mut r = Rng(7);
    let mut coder = DeltaCoder::new(3);
    let a = r.bytes(20_000, true);
    let mut b = a.clone();
    edit(&mut r, &mut b);
    let mut c = b.clone();
    edit(&mut r, &mut c);
    let (ia, ib, ic) = (
        ChunkId::of(&a).unwrap(),
        ChunkId::of(&b).unwrap(),
        ChunkId::of(&c).unwrap(),
    );
    let mut w = ContainerWriter::create(dir.path(), 1).unwrap();
    let (enc, data) = encode_chunk(&a, 3);
    w.append(ia, enc, a.len() as u32, &data).unwrap();
    let db = coder.encode(&a, &b).unwrap();
    w.append(
        ib,
        ChunkEncoding::Delta,
        b.len() as u32,
        &delta_record(&ia, &db),
    )
    .unwrap();
    // A chain (c against the delta b) breaks invariant 5: the reader must refuse it.
    let dc = coder.encode(&b, &c).unwrap();
    w.append(
        ic,
        ChunkEncoding::Delta,
        c.len() as u32,
        &delta_record(&ib, &dc),
    )
    .unwrap();
    commit(&cat, w.seal().unwrap());
    let reader = ChunkReader::new(cat.clone(), Arc::new(Containers::local(dir.path())));
    let mut s = ReadSession::new(0);
    assert!(reader.read(&ib, &mut s).unwrap() == b);
    let err = reader.read(&ic, &mut s).unwrap_err();
    assert!(err.to_string().contains("itself a delta"), "{err}");
}

#[test]
fn similar_chunks_from_edits_find_each_other() {
    let p = FeatureParams::default();
    let mut r = Rng(3);
    let mut found = 0;
    for _ in 0..100 {
        let base = r.bytes(16_384, true);
        let mut t = base.clone();
        for _ in 0..3 {
            edit(&mut r, &mut t);
        }
        let (a, b) = (
            super_features(&base, &p).unwrap(),
            super_features(&t, &p).unwrap(),
        );
        if a.iter().zip(&b).any(|(x, y)| x == y) {
            found += 1;
        }
    }
    assert!(
        found >= 95,
        "{found}/100 edited chunks share a super-feature"
    );
}
