//! Layer recipes: how to rebuild a layer's exact bytes from chunks.
//!
//! A layer's uncompressed stream is split (see [`super::tar`]) into an *inline* stream (tar
//! framing and small files) and *file* contents. The inline stream is chunked as one
//! content-defined stream across the layer; each large file is chunked on its own, so a file's
//! chunks do not depend on its neighbours. `framing` says how to interleave them again:
//! `framing[0]` bytes of the inline stream, `framing[1]` bytes of file contents,
//! `framing[2]` inline bytes, and so on. The result goes through the exact re-encoder.
//!
//! # Binary format (magic `STWGRCP\0`, version 2), little-endian
//!
//! ```text
//! magic [8] | version u32 | zstd frame (content size declared) of the body:
//! encoding JSON: len u32, bytes | raw_len u64 | framing: count u32, u64 each |
//! inline: count u32, chunk ids [20] each, then lengths u32 each | files: the same
//! ```
//!
//! Ids and lengths are kept in separate runs so the lengths (mostly equal to the maximum or
//! small) and the framing compress; the ids do not. Version 1 (still read) had no zstd frame
//! and stored each reference as id then length.

use std::io;

use super::chunk::{ChunkId, ChunkParams, Chunker, CollisionDetected};
use super::recompress::{Encoding, Reencoder};
use super::tar::TarSink;

pub const MAGIC: &[u8; 8] = b"STWGRCP\0";
pub const VERSION: u32 = 2;
/// Largest decoded recipe body accepted (a recipe of a 1 TiB layer is far below).
const MAX_BODY: u64 = 1 << 30;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipe {
    pub encoding: Encoding,
    /// Length of the uncompressed stream.
    pub raw_len: u64,
    pub framing: Vec<u64>,
    pub inline: Vec<(ChunkId, u32)>,
    pub files: Vec<(ChunkId, u32)>,
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("recipe: {msg}"))
}

struct Rd<'a>(&'a [u8]);

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(bad("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    /// Version 1: (id, len) pairs.
    fn refs_v1(&mut self) -> io::Result<Vec<(ChunkId, u32)>> {
        let n = self.u32()? as usize;
        let mut v = Vec::with_capacity(n.min(1 << 20));
        for _ in 0..n {
            let mut id = [0u8; 20];
            id.copy_from_slice(self.take(20)?);
            v.push((ChunkId(id), self.u32()?));
        }
        Ok(v)
    }
    /// Version 2: all ids, then all lengths.
    fn refs(&mut self) -> io::Result<Vec<(ChunkId, u32)>> {
        let n = self.u32()? as usize;
        let ids = self.take(
            n.checked_mul(20)
                .ok_or_else(|| bad("too many references"))?,
        )?;
        let lens = self.take(n * 4)?;
        Ok(ids
            .chunks_exact(20)
            .zip(lens.chunks_exact(4))
            .map(|(id, l)| {
                (
                    ChunkId(id.try_into().expect("20 bytes")),
                    u32::from_le_bytes(l.try_into().expect("4 bytes")),
                )
            })
            .collect())
    }
}

impl Recipe {
    /// About how long re-creating the layer takes (see [`Encoding::nominal_restore_rate`]):
    /// what a hot copy of it saves a pull.
    pub fn restore_estimate(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(
            self.raw_len as f64 / self.encoding.nominal_restore_rate(),
        )
    }

    /// The version 2 body, uncompressed: what [`Recipe::to_bytes`] compresses. Successive
    /// versions of a layer share long runs of it (the ids of their unchanged chunks), so the
    /// metadata store may keep a recipe as a patch against a similar recipe's body.
    pub fn body(&self) -> Vec<u8> {
        let enc = serde_json::to_vec(&self.encoding).expect("encoding serializes");
        let mut b =
            Vec::with_capacity(64 + enc.len() + 24 * (self.inline.len() + self.files.len()));
        b.extend_from_slice(&(enc.len() as u32).to_le_bytes());
        b.extend_from_slice(&enc);
        b.extend_from_slice(&self.raw_len.to_le_bytes());
        b.extend_from_slice(&(self.framing.len() as u32).to_le_bytes());
        for f in &self.framing {
            b.extend_from_slice(&f.to_le_bytes());
        }
        for refs in [&self.inline, &self.files] {
            b.extend_from_slice(&(refs.len() as u32).to_le_bytes());
            for (id, _) in refs {
                b.extend_from_slice(&id.0);
            }
            for (_, len) in refs {
                b.extend_from_slice(&len.to_le_bytes());
            }
        }
        b
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let body =
            zstd::bulk::compress(&self.body(), 9).expect("zstd compresses into a growable buffer");
        let mut out = Vec::with_capacity(12 + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    pub fn from_bytes(b: &[u8]) -> io::Result<Recipe> {
        let mut r = Rd(b);
        if r.take(8)? != MAGIC {
            return Err(bad("bad magic"));
        }
        let v = r.u32()?;
        let body;
        let (mut r, v1) = match v {
            1 => (r, true),
            2 => {
                let size = zstd::zstd_safe::get_frame_content_size(r.0)
                    .ok()
                    .flatten()
                    .filter(|&n| n <= MAX_BODY)
                    .ok_or_else(|| bad("body size missing or too large"))?;
                body = zstd::bulk::decompress(r.0, size as usize)
                    .map_err(|e| bad(&format!("body: {e}")))?;
                (Rd(&body), false)
            }
            _ => return Err(bad(&format!("version {v} not supported"))),
        };
        Self::read_body(&mut r, v1)
    }

    /// Parse a body written by [`Recipe::body`].
    pub fn from_body(b: &[u8]) -> io::Result<Recipe> {
        let mut r = Rd(b);
        let recipe = Self::read_body(&mut r, false)?;
        if !r.0.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(recipe)
    }

    fn read_body(r: &mut Rd<'_>, v1: bool) -> io::Result<Recipe> {
        let n = r.u32()? as usize;
        let encoding = serde_json::from_slice(r.take(n)?).map_err(|e| bad(&e.to_string()))?;
        let raw_len = r.u64()?;
        let nf = r.u32()? as usize;
        let mut framing = Vec::with_capacity(nf.min(1 << 20));
        for _ in 0..nf {
            framing.push(r.u64()?);
        }
        let (inline, files) = if v1 {
            (r.refs_v1()?, r.refs_v1()?)
        } else {
            (r.refs()?, r.refs()?)
        };
        Ok(Recipe {
            encoding,
            raw_len,
            framing,
            inline,
            files,
        })
    }

    /// Every chunk reference in the order a restore reads them.
    pub fn read_order(&self) -> Vec<(ChunkId, u32)> {
        self.read_order_from(0)
    }

    /// The chunk references a restore from uncompressed offset `from` reads, in order: those
    /// with at least one byte at or after `from`.
    pub fn read_order_from(&self, from: u64) -> Vec<(ChunkId, u32)> {
        let opens = self.opens(from);
        let mut out = Vec::with_capacity(opens.len());
        out.extend(opens.iter().filter(|o| o.needed).map(|o| o.chunk));
        out
    }

    /// The chunks in the order the framing opens them (each stream takes its next chunk when
    /// the current one is used up), with whether any of their bytes lies at or after `from`.
    fn opens(&self, from: u64) -> Vec<Open> {
        let mut out: Vec<Open> = Vec::with_capacity(self.inline.len() + self.files.len());
        // Per stream: next reference, bytes left in the current chunk, its index in `out`.
        let mut idx = [0usize; 2];
        let mut left = [0u64; 2];
        let mut cur = [0usize; 2];
        let mut pos = 0u64;
        for (k, &n) in self.framing.iter().enumerate() {
            let s = k % 2;
            let refs = if s == 0 { &self.inline } else { &self.files };
            let mut need = n;
            while need > 0 {
                if left[s] == 0 {
                    let Some(&(id, len)) = refs.get(idx[s]) else {
                        break;
                    };
                    cur[s] = out.len();
                    out.push(Open {
                        chunk: (id, len),
                        needed: false,
                    });
                    idx[s] += 1;
                    left[s] = len as u64;
                }
                let t = need.min(left[s]);
                if pos + t > from {
                    out[cur[s]].needed = true;
                }
                pos += t;
                need -= t;
                left[s] -= t;
            }
        }
        out
    }

    /// Distinct chunk ids with how often the recipe uses each.
    pub fn chunk_uses(&self) -> std::collections::HashMap<ChunkId, u64> {
        let mut m = std::collections::HashMap::new();
        for (id, _) in self.inline.iter().chain(&self.files) {
            *m.entry(*id).or_insert(0) += 1;
        }
        m
    }
}

/// A chunk as the framing opens it, for a restore from an offset.
struct Open {
    chunk: (ChunkId, u32),
    /// Some byte of it is at or after the offset (else the restore skips it unread).
    needed: bool,
}

/// A chunk produced while building a recipe.
pub struct NewChunk {
    pub id: ChunkId,
    pub data: Vec<u8>,
    /// Where the chunk came from, for the selective deduplication policies.
    pub origin: Origin,
}

/// Where a chunk came from: the inline stream (tar framing and small files) or a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Inline,
    File {
        size: u64,
        /// The file starts with the magic bytes of a compressed format (see
        /// [`super::features::compressed_format`]).
        compressed: bool,
    },
}

/// Builds a recipe from the split stream: the Chunk stage's logic, as a [`TarSink`].
pub struct RecipeBuilder {
    params: ChunkParams,
    inline: Chunker,
    file: Chunker,
    framing: Vec<u64>,
    run: u64,
    in_file: bool,
    inline_refs: Vec<(ChunkId, u32)>,
    file_refs: Vec<(ChunkId, u32)>,
    raw_len: u64,
    /// Chunks produced since the last [`RecipeBuilder::take_chunks`].
    out: Vec<NewChunk>,
    collision: bool,
    /// Size and first bytes of the current file (to recognise compressed formats).
    file_size: u64,
    file_head: Vec<u8>,
    /// Files up to this size are one chunk each (0: none), gathered here.
    whole_files_up_to: u64,
    whole_file: Option<Vec<u8>>,
}

fn emit(
    refs: &mut Vec<(ChunkId, u32)>,
    out: &mut Vec<NewChunk>,
    collision: &mut bool,
    origin: Origin,
    data: &[u8],
) {
    match ChunkId::of(data) {
        Ok(id) => {
            refs.push((id, data.len() as u32));
            out.push(NewChunk {
                id,
                data: data.to_vec(),
                origin,
            });
        }
        Err(CollisionDetected) => *collision = true,
    }
}

impl RecipeBuilder {
    pub fn new(params: ChunkParams) -> RecipeBuilder {
        RecipeBuilder {
            params,
            inline: Chunker::new(params),
            file: Chunker::new(params),
            framing: Vec::new(),
            run: 0,
            in_file: false,
            inline_refs: Vec::new(),
            file_refs: Vec::new(),
            raw_len: 0,
            out: Vec::new(),
            collision: false,
            file_size: 0,
            file_head: Vec::new(),
            whole_files_up_to: 0,
            whole_file: None,
        }
    }

    /// Keep each file of at most `max` bytes as one chunk instead of cutting it by content:
    /// a layer kept as its zstd frames (a file per frame) whose frames may become frame
    /// deltas, which take a whole frame.
    pub fn whole_files_up_to(mut self, max: u64) -> RecipeBuilder {
        self.whole_files_up_to = max;
        self
    }

    fn file_origin(&self) -> Origin {
        Origin::File {
            size: self.file_size,
            compressed: super::features::compressed_format(&self.file_head).is_some(),
        }
    }

    /// Chunks completed so far (each once).
    pub fn take_chunks(&mut self) -> Vec<NewChunk> {
        std::mem::take(&mut self.out)
    }

    /// Finish: flush the chunkers and return the recipe (or the collision error) and the last
    /// chunks.
    pub fn finish(
        mut self,
        encoding: Encoding,
    ) -> (Result<Recipe, CollisionDetected>, Vec<NewChunk>) {
        let (refs, out, col) = (&mut self.inline_refs, &mut self.out, &mut self.collision);
        self.inline
            .finish(&mut |c| emit(refs, out, col, Origin::Inline, c));
        self.framing.push(self.run);
        if self.collision {
            return (Err(CollisionDetected), self.out);
        }
        let recipe = Recipe {
            encoding,
            raw_len: self.raw_len,
            framing: self.framing,
            inline: self.inline_refs,
            files: self.file_refs,
        };
        (Ok(recipe), self.out)
    }

    pub fn params(&self) -> ChunkParams {
        self.params
    }
}

impl TarSink for RecipeBuilder {
    fn meta(&mut self, bytes: &[u8]) {
        self.raw_len += bytes.len() as u64;
        self.run += bytes.len() as u64;
        let (refs, out, col) = (&mut self.inline_refs, &mut self.out, &mut self.collision);
        self.inline
            .push(bytes, &mut |c| emit(refs, out, col, Origin::Inline, c));
    }

    fn file_start(&mut self, size: u64) {
        self.framing.push(self.run);
        self.run = 0;
        self.in_file = true;
        self.file_size = size;
        self.file_head.clear();
        self.whole_file =
            (size > 0 && size <= self.whole_files_up_to).then(|| Vec::with_capacity(size as usize));
    }

    fn file_data(&mut self, bytes: &[u8]) {
        self.raw_len += bytes.len() as u64;
        self.run += bytes.len() as u64;
        if self.file_head.len() < super::features::MAGIC_LEN {
            let take = (super::features::MAGIC_LEN - self.file_head.len()).min(bytes.len());
            self.file_head.extend_from_slice(&bytes[..take]);
        }
        if let Some(whole) = &mut self.whole_file {
            whole.extend_from_slice(bytes);
            return;
        }
        let origin = self.file_origin();
        let (refs, out, col) = (&mut self.file_refs, &mut self.out, &mut self.collision);
        self.file
            .push(bytes, &mut |c| emit(refs, out, col, origin, c));
    }

    fn file_end(&mut self) {
        let origin = self.file_origin();
        let (refs, out, col) = (&mut self.file_refs, &mut self.out, &mut self.collision);
        match self.whole_file.take() {
            Some(whole) if !whole.is_empty() => emit(refs, out, col, origin, &whole),
            Some(_) => {}
            None => self.file.finish(&mut |c| emit(refs, out, col, origin, c)),
        }
        self.framing.push(self.run);
        self.run = 0;
        self.in_file = false;
    }
}

/// Rebuild a layer's exact (compressed) bytes. `chunks` yields the raw bytes of each chunk of
/// [`Recipe::read_order`], in that order; `out` receives the layer's bytes.
pub fn restore<C: AsRef<[u8]> + Default>(
    recipe: &Recipe,
    chunks: &mut dyn Iterator<Item = io::Result<C>>,
    out: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    restore_from(recipe, 0, Reencoder::new(&recipe.encoding), chunks, out)
}

/// [`restore`] from uncompressed offset `from` on, through `enc` (a re-encoder resumed there,
/// see [`Reencoder::resume`]): `chunks` yields the chunks of [`Recipe::read_order_from`];
/// those wholly before `from` are skipped unread. A chunk is any owner of its bytes (the
/// restore reader hands on slices of the runs it read at once).
pub fn restore_from<C: AsRef<[u8]> + Default>(
    recipe: &Recipe,
    from: u64,
    mut enc: Reencoder,
    chunks: &mut dyn Iterator<Item = io::Result<C>>,
    out: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let opens = recipe.opens(from);
    let mut opened = opens.iter();
    let mut buf = Vec::with_capacity(512 * 1024);
    // The current chunk of each stream: its bytes (empty when skipped unread), its length
    // and how much of it is used.
    let mut cur: [(C, usize, usize); 2] = Default::default();
    let mut raw_total = 0u64;
    for (k, &n) in recipe.framing.iter().enumerate() {
        let (data, len, pos) = &mut cur[k % 2];
        let mut need = n;
        while need > 0 {
            if *pos == *len {
                let o = opened
                    .next()
                    .ok_or_else(|| bad("fewer chunks than the framing needs"))?;
                if o.needed {
                    *data = chunks
                        .next()
                        .ok_or_else(|| bad("fewer chunks than the read order"))??;
                    *len = data.as_ref().len();
                    if *len != o.chunk.1 as usize {
                        return Err(bad("a chunk's length differs from its reference"));
                    }
                } else {
                    *data = C::default();
                    *len = o.chunk.1 as usize;
                }
                *pos = 0;
                if *len == 0 {
                    return Err(bad("empty chunk"));
                }
            }
            let t = (need as usize).min(*len - *pos);
            // The part of these `t` bytes at or after `from`.
            let skip = from.saturating_sub(raw_total).min(t as u64) as usize;
            if skip < t {
                if data.as_ref().is_empty() {
                    return Err(bad("a skipped chunk holds bytes after the resume point"));
                }
                enc.push(&data.as_ref()[*pos + skip..*pos + t], &mut buf);
            }
            *pos += t;
            need -= t as u64;
            raw_total += t as u64;
            if buf.len() >= 256 * 1024 {
                out(&buf)?;
                buf.clear();
            }
        }
    }
    if raw_total != recipe.raw_len {
        return Err(bad("framing does not add up to the layer length"));
    }
    enc.finish(&mut buf);
    out(&buf)
}

#[cfg(test)]
mod tests {
    use super::super::recompress::{Compression, LayerDecoder};
    use super::super::tar::TarSplitter;
    use super::*;
    use std::collections::HashMap;

    fn build(layer: &[u8], params: ChunkParams) -> (Recipe, HashMap<ChunkId, Vec<u8>>) {
        let mut dec = LayerDecoder::new(Compression::detect(layer));
        let mut split = TarSplitter::new(params.min as u64);
        let mut b = RecipeBuilder::new(params);
        let mut store = HashMap::new();
        for part in layer.chunks(100_000) {
            dec.feed(part, &mut |raw| split.push(raw, &mut b)).unwrap();
            for c in b.take_chunks() {
                store.insert(c.id, c.data);
            }
        }
        split.finish(&mut b);
        let enc = dec.finish().unwrap();
        let (recipe, last) = b.finish(enc);
        for c in last {
            store.insert(c.id, c.data);
        }
        (recipe.unwrap(), store)
    }

    fn rebuild(r: &Recipe, store: &HashMap<ChunkId, Vec<u8>>) -> Vec<u8> {
        let mut it = r
            .read_order()
            .into_iter()
            .map(|(id, _)| Ok(store[&id].clone()));
        let mut out = Vec::new();
        restore(r, &mut it, &mut |b| {
            out.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        out
    }

    fn layer_tar(version: u8) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut x = 99u64;
        let mut rnd = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        };
        for i in 0..40 {
            let size = [10, 3000, 5000, 70_000, 300_000][i % 5];
            let mut data = rnd(size);
            if i == 7 && version > 0 {
                data[size / 2] ^= version;
            }
            let mut h = tar::Header::new_gnu();
            h.set_size(size as u64);
            h.set_mode(0o644);
            h.set_mtime(1_700_000_000 + version as u64);
            h.set_cksum();
            b.append_data(&mut h, format!("usr/lib/f{i}.bin"), &data[..])
                .unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn roundtrip_tar_gzip_and_serialization() {
        let raw = layer_tar(0);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        std::io::Write::write_all(&mut gz, &raw).unwrap();
        let gz = gz.finish().unwrap();
        for layer in [&raw, &gz] {
            let (r, store) = build(layer, ChunkParams::default());
            assert_eq!(r.raw_len, raw.len() as u64);
            assert!(rebuild(&r, &store) == *layer);
            let again = Recipe::from_bytes(&r.to_bytes()).unwrap();
            assert_eq!(again, r);
            assert_eq!(Recipe::from_body(&r.body()).unwrap(), r);
            let mut long = r.body();
            long.push(0);
            assert!(
                Recipe::from_body(&long).is_err(),
                "trailing bytes are refused"
            );
        }
        assert!(Recipe::from_bytes(b"STWGRCP\0\x09\0\0\0").is_err());
        assert!(Recipe::from_bytes(b"garbage").is_err());
        let (r, _) = build(&gz, ChunkParams::default());
        let mut b = r.to_bytes();
        let n = b.len();
        b[n - 3] ^= 0xff;
        assert!(Recipe::from_bytes(&b).is_err(), "a damaged body is refused");
        assert!(Recipe::from_bytes(&r.to_bytes()[..n / 2]).is_err());
    }

    /// A restore from an offset reads only the chunks holding bytes at or after it and
    /// yields the layer's tail: at chunk edges, mid-chunk, in tar headers and file data.
    #[test]
    fn restores_from_an_offset_skip_what_comes_before() {
        let raw = layer_tar(0);
        let (r, store) = build(&raw, ChunkParams::default());
        let all = r.read_order().len();
        for from in [
            1,
            511,
            512,
            4096,
            70_001,
            raw.len() as u64 / 2,
            raw.len() as u64 - 1,
        ] {
            let order = r.read_order_from(from);
            assert!(order.len() <= all);
            let mut it = order.iter().map(|(id, _)| Ok(store[id].clone()));
            let (enc, resume) = Reencoder::resume(&r.encoding, from).unwrap();
            assert_eq!(resume.plain, from);
            let mut out = Vec::new();
            restore_from(&r, from, enc, &mut it, &mut |b| {
                out.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
            assert!(out == raw[from as usize..], "from {from}");
            assert!(
                it.next().is_none(),
                "from {from}: every chunk of the order used"
            );
        }
        let late = r.read_order_from(raw.len() as u64 - 1).len();
        assert!(
            late < all / 4,
            "{late} of {all} chunks read for the last byte"
        );
    }

    /// A multi-member gzip layer (eStargz's shape: a member per stretch of the tar, an empty
    /// footer member with an Extra field last) resumes at each member's first byte, the footer
    /// included, reading only the chunks from there on.
    #[test]
    fn multi_member_layers_restore_from_a_member() {
        use std::io::Write;
        let raw = layer_tar(0);
        let mut gz = Vec::new();
        let mut starts = Vec::new();
        let cuts = [0, 700, 5_000, raw.len() / 3, raw.len() / 2, raw.len()];
        for w in cuts.windows(2) {
            starts.push(gz.len() as u64);
            let mut e = flate2::GzBuilder::new()
                .mtime(0)
                .write(Vec::new(), flate2::Compression::new(6));
            e.write_all(&raw[w[0]..w[1]]).unwrap();
            gz.extend(e.finish().unwrap());
        }
        starts.push(gz.len() as u64);
        let footer = flate2::GzBuilder::new()
            .extra(&b"SG\x16\x000000000000001234STARGZ"[..])
            .write(Vec::new(), flate2::Compression::new(0));
        gz.extend(footer.finish().unwrap());
        let (r, store) = build(&gz, ChunkParams::default());
        assert!(rebuild(&r, &store) == gz);
        let all = r.read_order().len();
        for &at in &starts[1..] {
            let (enc, resume) = Reencoder::resume(&r.encoding, at).unwrap();
            assert_eq!(resume.offset, at);
            let order = r.read_order_from(resume.plain);
            let mut it = order.iter().map(|(id, _)| Ok(store[id].clone()));
            let mut out = Vec::new();
            restore_from(&r, resume.plain, enc, &mut it, &mut |b| {
                out.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
            assert!(out == gz[at as usize..], "from member at {at}");
            assert!(it.next().is_none(), "every chunk of the order used");
        }
        assert!(
            r.read_order_from(raw.len() as u64).is_empty(),
            "the footer needs none"
        );
        assert!(r.read_order_from(raw.len() as u64 / 2).len() < all);
    }

    /// Recipes written by version 1 (stores from before recipes were compressed) still read.
    #[test]
    fn version_1_recipes_still_read() {
        let (r, _) = build(&layer_tar(0), ChunkParams::default());
        let enc = serde_json::to_vec(&r.encoding).unwrap();
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&(enc.len() as u32).to_le_bytes());
        b.extend_from_slice(&enc);
        b.extend_from_slice(&r.raw_len.to_le_bytes());
        b.extend_from_slice(&(r.framing.len() as u32).to_le_bytes());
        for f in &r.framing {
            b.extend_from_slice(&f.to_le_bytes());
        }
        for refs in [&r.inline, &r.files] {
            b.extend_from_slice(&(refs.len() as u32).to_le_bytes());
            for (id, len) in refs {
                b.extend_from_slice(&id.0);
                b.extend_from_slice(&len.to_le_bytes());
            }
        }
        assert_eq!(Recipe::from_bytes(&b).unwrap(), r);
        assert!(r.to_bytes().len() < b.len());
    }

    #[test]
    fn a_changed_file_leaves_the_others_shared() {
        let (a, sa) = build(&layer_tar(0), ChunkParams::default());
        let (b, sb) = build(&layer_tar(1), ChunkParams::default());
        let new: usize = sb
            .keys()
            .filter(|k| !sa.contains_key(k))
            .map(|k| sb[k].len())
            .sum();
        let total: usize = sb.values().map(Vec::len).sum();
        assert!(new * 10 < total, "{new} of {total} bytes new");
        assert!(rebuild(&b, &sb) == layer_tar(1));
        assert_eq!(a.framing.len(), b.framing.len());
    }

    #[test]
    fn non_tar_and_empty() {
        let junk: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let (r, s) = build(&junk, ChunkParams::default());
        assert_eq!(r.framing.len(), 1);
        assert!(rebuild(&r, &s) == junk);
        let (r, s) = build(b"", ChunkParams::default());
        assert!(rebuild(&r, &s).is_empty());
    }

    /// With whole files up to a size, such a file is one chunk however long (a frame of a
    /// zstd:chunked layer, for frame deltas); a larger one is still cut by content.
    #[test]
    fn whole_files_are_one_chunk_each_up_to_the_limit() {
        let data = |n, seed| super::super::test_bytes(n, seed);
        let files = [data(200_000, 1), data(30_000, 2), data(900_000, 3)];
        let chunk_lens = |b: &mut RecipeBuilder| {
            for f in &files {
                b.file_start(f.len() as u64);
                for piece in f.chunks(7_000) {
                    b.file_data(piece);
                }
                b.file_end();
            }
            let lens: Vec<usize> = b.take_chunks().iter().map(|c| c.data.len()).collect();
            lens
        };
        let cut = chunk_lens(&mut RecipeBuilder::new(ChunkParams::default()));
        assert!(
            cut.len() > 6 && cut.iter().all(|&n| n <= 64 << 10),
            "{cut:?}"
        );
        let mut b = RecipeBuilder::new(ChunkParams::default()).whole_files_up_to(300_000);
        let whole = chunk_lens(&mut b);
        assert_eq!(&whole[..2], [200_000, 30_000]);
        assert!(whole[2..].iter().all(|&n| n <= 64 << 10), "{whole:?}");
        assert_eq!(whole.iter().sum::<usize>(), 1_130_000);
        let (recipe, _) = b.finish(Encoding::None);
        assert_eq!(recipe.unwrap().raw_len, 1_130_000);
    }

    #[test]
    fn missing_chunks_are_an_error() {
        let (r, _) = build(&layer_tar(0), ChunkParams::default());
        let mut it = std::iter::empty::<io::Result<Vec<u8>>>();
        assert!(restore(&r, &mut it, &mut |_| Ok(())).is_err());
    }
}
