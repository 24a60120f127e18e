//! `stowage synthetic-store` (hidden): write a large store directly, for measuring garbage
//! collection at a scale the real pipeline would take hours to reach (`benches/gc-memory`).
//!
//! The store holds `chunks` small whole chunks (64 bytes each, stored as is) in containers of
//! 4096, and layers of 1024 chunks each, one recipe per layer, linked into ten repositories.
//! Chunks are dealt to layers so that each container holds chunks of every kind of layer:
//! with `kept` = 0.4, two chunks in five belong to layers an image manifest (tagged) names; the
//! others belong to layers that were unlinked, so a collection pass removes three fifths of
//! the chunks and compacts every container to the rest.

use std::path::Path;

use stowage_actors::catalog::SealedContainer;
use stowage_actors::engine::chunk::ChunkId;
use stowage_actors::engine::container::{ChunkEncoding, ContainerWriter};
use stowage_actors::engine::recipe::Recipe;
use stowage_actors::engine::recompress::Encoding;

use crate::meta::{Descriptor, Meta};
use crate::names::{Digest, RepoName, Tag};

const PER_CONTAINER: u64 = 4096;
const PER_LAYER: u64 = 1024;
const CHUNK: usize = 64;

fn chunk_bytes(i: u64) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut b = Vec::with_capacity(CHUNK);
    b.extend_from_slice(&i.to_le_bytes());
    while b.len() < CHUNK {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.push(x as u8);
    }
    b
}

/// Write the store under `root` (which must not hold one yet).
pub fn build(root: &Path, chunks: u64, kept: f64, map_size: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        !root.join("meta").exists(),
        "{} already holds a store",
        root.display()
    );
    anyhow::ensure!((0.0..=1.0).contains(&kept), "kept must be in [0, 1]");
    crate::store::LocalStore::open(root)?;
    let containers = root.join("containers");
    std::fs::create_dir_all(&containers)?;
    let meta = Meta::open(&root.join("meta"), map_size)?;
    let layers = chunks.div_ceil(PER_LAYER);
    // Which layer chunk i belongs to: kept layers take the first `kept` share of every run
    // of ten chunks, the others the rest.
    let kept_layers = ((layers as f64) * kept).round() as u64;
    let layer_of = |i: u64| -> u64 {
        let kept_slot = (i % 10) < (kept * 10.0).round() as u64;
        let n = i / 10;
        if kept_slot && kept_layers > 0 {
            n % kept_layers
        } else if layers > kept_layers {
            kept_layers + n % (layers - kept_layers)
        } else {
            n % layers.max(1)
        }
    };
    let bar = indicatif::ProgressBar::new(chunks);
    let mut members: Vec<Vec<ChunkId>> = vec![Vec::new(); layers as usize];
    let mut i = 0u64;
    while i < chunks {
        let id = {
            let mut w = meta.write()?;
            let id = meta.next_counter(&mut w, "container")?;
            w.commit()?;
            id
        };
        let mut cw = ContainerWriter::create(&containers, id)?;
        let end = (i + PER_CONTAINER).min(chunks);
        for j in i..end {
            let data = chunk_bytes(j);
            let cid = ChunkId::of(&data)?;
            cw.append(cid, ChunkEncoding::Stored, CHUNK as u32, &data)?;
            members[layer_of(j) as usize].push(cid);
        }
        let entries = cw.seal()?;
        let mut w = meta.write()?;
        meta.add_container(
            &mut w,
            &SealedContainer {
                id,
                entries,
                ..Default::default()
            },
        )?;
        w.commit()?;
        bar.set_position(end);
        i = end;
    }
    bar.finish_and_clear();
    let mut w = meta.write()?;
    for (l, ids) in members.iter().enumerate() {
        let repo: RepoName = format!("synthetic/r{}", l % 10).parse()?;
        let d = Digest::sha256_of(format!("synthetic layer {l}").as_bytes());
        let raw_len = (ids.len() * CHUNK) as u64;
        meta.link_blob(&mut w, &repo, &d, raw_len)?;
        let recipe = Recipe {
            encoding: Encoding::None,
            raw_len,
            framing: vec![0, raw_len],
            inline: vec![],
            files: ids.iter().map(|id| (*id, CHUNK as u32)).collect(),
        };
        meta.commit_recipe(&mut w, &d, &recipe, &[])?;
        if (l as u64) < kept_layers {
            let config = format!(r#"{{"layer":{l}}}"#);
            let cd = Digest::sha256_of(config.as_bytes());
            meta.link_blob(&mut w, &repo, &cd, config.len() as u64)?;
            let body = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": cd.to_string(), "size": config.len()},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                            "digest": d.to_string(), "size": raw_len}],
            }))?;
            let desc = Descriptor {
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                digest: Digest::sha256_of(&body),
                size: body.len() as u64,
                artifact_type: None,
                annotations: None,
            };
            meta.put_manifest(&mut w, &repo, &desc, &body, None)?;
            meta.set_tag(
                &mut w,
                &repo,
                &format!("l{l}").parse::<Tag>()?,
                &desc.digest,
            )?;
        } else {
            meta.unlink_blob(&mut w, &repo, &d)?;
        }
    }
    w.commit()?;
    let t = meta.read()?;
    let c = meta.chunk_counts(&t)?;
    println!(
        "synthetic store: {} chunks in {} containers, {} layers ({} kept)",
        c.unique,
        chunks.div_ceil(PER_CONTAINER),
        layers,
        kept_layers
    );
    Ok(())
}
