//! Deduplicated layers: recipes (`recipes`), file indexes (`layer_files`) and the path
//! sketches (`layer_sketches`) that pick the reference a new recipe or index is patched against
//! (see [`super::patch`]).

use heed::RoTxn;

use super::*;

impl Meta {
    /// Commit a verified recipe: store it and the file index, add one reference per use to
    /// each chunk, and mark the blob deduplicated.
    pub fn commit_recipe(
        &self,
        w: &mut Wtx<'_>,
        d: &Digest,
        recipe: &Recipe,
        files: &[FileEntry],
    ) -> Result<()> {
        let dk = d.to_string();
        let Some(v) = self.blobs.get(w, dk.as_bytes())? else {
            return Err(RegistryError::Internal(format!("no blob record for {dk}")));
        };
        let mut rec: BlobRecord = dec("blob", v)?;
        if matches!(rec.state, BlobState::Deduplicated { .. })
            || self.recipes.get(w, dk.as_bytes())?.is_some()
        {
            // Deduplicated meanwhile (the same blob pushed again while its first run was in
            // flight), or before (a raw copy kept by policy, released): the committed recipe
            // stands, and its references are counted once.
            rec.state = BlobState::Deduplicated {
                encoding: recipe.encoding.label(),
            };
            self.blobs.put(w, dk.as_bytes(), &enc(&rec))?;
            return Ok(());
        }
        let mut refs = 0;
        for (id, uses) in recipe.chunk_uses() {
            let mut c = self.chunk(w, &id)?.ok_or_else(|| {
                RegistryError::Internal(format!("recipe of {dk} names unknown chunk {id}"))
            })?;
            c.refs += uses;
            refs += uses;
            self.chunks.put(w, &id.0, &c.encode())?;
        }
        self.update_chunk_counts(w, |c| c.refs += refs)?;
        self.put_layer_meta(w, &dk, recipe, files)?;
        rec.state = BlobState::Deduplicated {
            encoding: recipe.encoding.label(),
        };
        self.blobs.put(w, dk.as_bytes(), &enc(&rec))?;
        Ok(())
    }

    pub fn set_blob_state(&self, w: &mut Wtx<'_>, d: &Digest, state: BlobState) -> Result<()> {
        let dk = d.to_string();
        if let Some(v) = self.blobs.get(w, dk.as_bytes())? {
            let mut rec: BlobRecord = dec("blob", v)?;
            rec.state = state;
            self.blobs.put(w, dk.as_bytes(), &enc(&rec))?;
        }
        Ok(())
    }

    pub fn recipe(&self, t: &RoTxn<'_>, d: &Digest) -> Result<Option<Recipe>> {
        let dk = d.to_string();
        let Some(v) = self.recipes.get(t, dk.as_bytes())? else {
            return Ok(None);
        };
        let bad = |e: std::io::Error| RegistryError::Internal(format!("recipe of {d}: {e}"));
        match patch::parse(patch::RECIPE, v)? {
            patch::Stored::Whole(payload) => Recipe::from_bytes(payload).map(Some).map_err(bad),
            patch::Stored::Patch { reference, frame } => {
                let ref_body = self.whole_recipe_body(t, reference)?.ok_or_else(|| {
                    RegistryError::Internal(format!(
                        "recipe of {d}: its reference {reference} is missing or not whole"
                    ))
                })?;
                Recipe::from_body(&patch::unpatch(&ref_body, frame)?)
                    .map(Some)
                    .map_err(bad)
            }
        }
    }

    pub fn layer_files(&self, t: &RoTxn<'_>, d: &Digest) -> Result<Option<serde_json::Value>> {
        match self.file_index_json(t, d)? {
            Some(json) => dec("file index", &json).map(Some),
            None => Ok(None),
        }
    }

    /// Entries `start..start + n` of a layer's file index, and whether more follow. Only
    /// that page is built: the others are skipped as they are parsed.
    pub fn layer_files_page(
        &self,
        t: &RoTxn<'_>,
        d: &Digest,
        start: usize,
        n: usize,
    ) -> Result<Option<(Vec<stowage_actors::engine::tar::FileEntry>, bool)>> {
        let Some(json) = self.file_index_json(t, d)? else {
            return Ok(None);
        };
        let mut de = serde_json::Deserializer::from_slice(&json);
        let page = serde::de::DeserializeSeed::deserialize(Page { start, n }, &mut de)
            .map_err(|e| RegistryError::Internal(format!("corrupt file index of {d}: {e}")))?;
        Ok(Some(page))
    }

    /// A layer's file index as stored (JSON), unpatched.
    fn file_index_json(&self, t: &RoTxn<'_>, d: &Digest) -> Result<Option<Vec<u8>>> {
        let dk = d.to_string();
        let Some(v) = self.layer_files.get(t, dk.as_bytes())? else {
            return Ok(None);
        };
        let json = match patch::parse(patch::FILE_INDEX, v)? {
            patch::Stored::Whole(payload) => patch::decompress_json(payload)?,
            patch::Stored::Patch { reference, frame } => {
                let ref_json = self.whole_file_index_json(t, reference)?.ok_or_else(|| {
                    RegistryError::Internal(format!(
                        "file index of {d}: its reference {reference} is missing or not whole"
                    ))
                })?;
                patch::unpatch(&ref_json, frame)?
            }
        };
        Ok(Some(json))
    }

    /// The raw form (uncompressed body) of a layer's recipe, if it is stored whole.
    pub(super) fn whole_recipe_body(&self, t: &RoTxn<'_>, dk: &str) -> Result<Option<Vec<u8>>> {
        match self.recipes.get(t, dk.as_bytes())? {
            Some(v) => match patch::parse(patch::RECIPE, v)? {
                patch::Stored::Whole(payload) => Recipe::from_bytes(payload)
                    .map(|r| Some(r.body()))
                    .map_err(|e| RegistryError::Internal(format!("recipe of {dk}: {e}"))),
                patch::Stored::Patch { .. } => Ok(None),
            },
            None => Ok(None),
        }
    }

    /// The raw form (JSON) of a layer's file index, if it is stored whole.
    pub(super) fn whole_file_index_json(&self, t: &RoTxn<'_>, dk: &str) -> Result<Option<Vec<u8>>> {
        match self.layer_files.get(t, dk.as_bytes())? {
            Some(v) => match patch::parse(patch::FILE_INDEX, v)? {
                patch::Stored::Whole(payload) => patch::decompress_json(payload).map(Some),
                patch::Stored::Patch { .. } => Ok(None),
            },
            None => Ok(None),
        }
    }

    /// Store a deduplicated layer's recipe and file index: each as a patch against the whole
    /// value of the layer whose path sketch matches best, when that is smaller; else whole. A
    /// layer with both stored whole registers its sketch, to serve as the next reference.
    pub(super) fn put_layer_meta(
        &self,
        w: &mut Wtx<'_>,
        dk: &str,
        recipe: &Recipe,
        files: &[FileEntry],
    ) -> Result<()> {
        let json = enc(&files);
        let index_whole = patch::whole(patch::FILE_INDEX, &patch::compress_json(&json)?);
        let recipe_whole = patch::whole(patch::RECIPE, &recipe.to_bytes());
        let sketch = patch::sketch(files);
        let mut votes: std::collections::HashMap<Vec<u8>, usize> = Default::default();
        for h in &sketch {
            if let Some(d) = self.layer_sketches.get(w, &h.to_be_bytes())? {
                *votes.entry(d.to_vec()).or_default() += 1;
            }
        }
        let best = votes
            .into_iter()
            .filter(|(_, n)| *n >= patch::MIN_SHARED)
            .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)));
        let (mut index_patch, mut recipe_patch) = (None, None);
        if let Some((reference, _)) = best {
            // A reference that cannot be read only costs the saving.
            let reference = utf8(&reference)?.to_string();
            if let Ok(Some(ref_json)) = self.whole_file_index_json(w, &reference) {
                index_patch = patch::patch(
                    patch::FILE_INDEX,
                    &json,
                    &reference,
                    &ref_json,
                    index_whole.len(),
                );
            }
            if let Ok(Some(ref_body)) = self.whole_recipe_body(w, &reference) {
                recipe_patch = patch::patch(
                    patch::RECIPE,
                    &recipe.body(),
                    &reference,
                    &ref_body,
                    recipe_whole.len(),
                );
            }
        }
        let whole = index_patch.is_none() && recipe_patch.is_none();
        self.layer_files
            .put(w, dk.as_bytes(), &index_patch.unwrap_or(index_whole))?;
        self.recipes
            .put(w, dk.as_bytes(), &recipe_patch.unwrap_or(recipe_whole))?;
        if whole {
            for h in &sketch {
                self.layer_sketches
                    .put(w, &h.to_be_bytes(), dk.as_bytes())?;
            }
        }
        Ok(())
    }
}

/// Deserializes one page of a JSON array of file entries, skipping the rest unbuilt.
struct Page {
    start: usize,
    n: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for Page {
    type Value = (Vec<stowage_actors::engine::tar::FileEntry>, bool);

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Page {
    type Value = (Vec<stowage_actors::engine::tar::FileEntry>, bool);

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of file entries")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(self.n.min(4096));
        let mut i = 0usize;
        let mut more = false;
        loop {
            if i < self.start || out.len() >= self.n {
                if seq.next_element::<serde::de::IgnoredAny>()?.is_none() {
                    break;
                }
                more |= i >= self.start;
            } else {
                match seq.next_element()? {
                    Some(e) => out.push(e),
                    None => break,
                }
            }
            i += 1;
        }
        Ok((out, more))
    }
}
