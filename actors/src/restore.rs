//! Restoring a layer from its recipe: a reader thread fetches chunks ahead of the consumer, in
//! the order the recipe needs them (a bounded window of [`PREFETCH`] chunks), while the caller's
//! thread interleaves them and re-encodes the exact compressed stream.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::engine::chunk::ChunkId;
use crate::engine::container::{container_path, decode_chunk, read_stored};
use crate::engine::recipe::{restore, Recipe};
use crate::pipeline::Catalog;

/// Chunks read ahead of the re-encoder.
pub const PREFETCH: usize = 64;
/// Container files kept open by one reader.
const OPEN_FILES: usize = 16;

/// Reads chunks by id through the catalog's index.
#[derive(Clone)]
pub struct ChunkReader {
    catalog: Arc<dyn Catalog>,
    dir: PathBuf,
}

impl ChunkReader {
    pub fn new(catalog: Arc<dyn Catalog>, containers: PathBuf) -> ChunkReader {
        ChunkReader {
            catalog,
            dir: containers,
        }
    }

    fn read(&self, id: &ChunkId, files: &mut HashMap<u64, File>) -> io::Result<Vec<u8>> {
        let loc = self.catalog.chunk(id)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("chunk {id} is not in the index"),
            )
        })?;
        if !files.contains_key(&loc.container) {
            if files.len() >= OPEN_FILES {
                files.clear();
            }
            let f = File::open(container_path(&self.dir, loc.container))?;
            files.insert(loc.container, f);
        }
        let stored = read_stored(&files[&loc.container], &loc)?;
        decode_chunk(loc.encoding, &stored, loc.raw_len)
    }
}

/// Rebuild the layer described by `recipe`, handing its exact bytes to `out` in order.
pub fn restore_layer(
    recipe: &Recipe,
    reader: &ChunkReader,
    out: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let order = recipe.read_order();
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(PREFETCH);
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut files = HashMap::new();
            for (id, _) in order {
                let r = reader.read(&id, &mut files);
                let stop = r.is_err();
                if tx.send(r).is_err() || stop {
                    break;
                }
            }
        });
        let mut it = rx.iter();
        restore(recipe, &mut it, out)
    })
}
