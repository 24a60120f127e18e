//! In-place upgrades of stores written by older versions (see the version list in [`super`]).

use std::ops::Bound;

use super::*;

impl Meta {
    /// Version 4 → 5: rewrite every fixed-width chunk record as varints, in batches so memory
    /// stays bounded on a large index.
    pub(super) fn compact_chunk_records(&self, w: &mut Wtx<'_>) -> Result<()> {
        const BATCH: usize = 65536;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let mut batch = Vec::with_capacity(BATCH);
            {
                let lower = match &after {
                    Some(k) => Bound::Excluded(k.as_slice()),
                    None => Bound::Unbounded,
                };
                for item in self.chunks.range(w, &(lower, Bound::Unbounded))? {
                    let (k, v) = item?;
                    batch.push((k.to_vec(), ChunkRecord::decode_fixed(v)?));
                    if batch.len() == BATCH {
                        break;
                    }
                }
            }
            let Some((last, _)) = batch.last() else {
                return Ok(());
            };
            after = Some(last.clone());
            let done = batch.len() < BATCH;
            for (k, rec) in &batch {
                self.chunks.put(w, k, &rec.encode())?;
            }
            if done {
                return Ok(());
            }
        }
    }

    /// Version 2 → 3: move each entry of `features` into its chunk's container's block.
    pub(super) fn regroup_features(&self, w: &mut Wtx<'_>) -> Result<()> {
        let mut by_container: std::collections::BTreeMap<u64, Vec<(u32, [u8; 8])>> =
            Default::default();
        for item in self.features.iter(w)? {
            let (k, v) = item?;
            let (Ok(k), Ok(prefix)) = (<[u8; 4]>::try_from(k), <[u8; 8]>::try_from(v)) else {
                continue;
            };
            if let Some(item) = self.chunks.prefix_iter(w, &prefix)?.next() {
                let (_, rec) = item?;
                let rec = ChunkRecord::decode(rec)?;
                by_container
                    .entry(rec.loc.container)
                    .or_default()
                    .push((u32::from_be_bytes(k), prefix));
            }
        }
        for (c, entries) in &by_container {
            self.container_features
                .put(w, &c.to_be_bytes(), &features::encode_block(entries))?;
        }
        self.features.clear(w)?;
        Ok(())
    }
}
