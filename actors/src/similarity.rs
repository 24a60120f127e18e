//! Similarity: looks each chunk up in the chunk index and encodes the new ones, whole (zstd) or
//! as a zstd delta against a similar chunk stored whole, found through the super-feature index
//! (one level of deltas: a base is always a whole chunk). The selective policies (compressed
//! data, small files, a repository's policy) keep chunks out of the lookup; one skipped chunk
//! in [`SKIP_TRIAL_EVERY`] is tried anyway to estimate what the policy saves and costs.
//! A chunk that is a whole zstd frame of a layer kept as its frames is looked up by the
//! features of its plaintext instead, and may be kept as a frame delta
//! ([`crate::engine::frame_delta`]).
//!
//! - **In:** `Body::Chunks` and `Body::Finished`, from Chunk.
//! - **Out:** `Body::Encoded` for each batch of chunks (duplicates marked as already stored),
//!   and the layer's `Body::Finished` passed on as it came, to Pack.
//! - **Bounds:** one thread ([`SyncArbiter`]), at nice 10. Its input is edge 1 (at most
//!   [`QUEUE_DEPTH`](crate::pipeline::QUEUE_DEPTH) batches from Chunk); towards Pack it keeps at
//!   most that many in flight (edge 2) and blocks when it has that many. Its memory is bounded
//!   by the read session's cache ([`SIMILARITY_CACHE_BYTES`]) and the features of chunks not
//!   yet indexed (cleared past `PENDING_FEATURES` entries).
//! - **Failure:** this stage does not fail a layer. A failed chunk-index lookup treats the
//!   chunk as new (Pack looks again); a failed feature-index lookup is logged and treated as
//!   no match; an unreadable candidate base or a failed delta encoding is logged and that
//!   candidate skipped; a chunk without a good enough delta is stored whole. A base that does
//!   not make it into a container (its layer failed) is caught by Pack, which then stores the
//!   delta's chunk whole.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::prelude::*;

use crate::catalog::Catalog;
use crate::engine::chunk::ChunkId;
use crate::engine::container::{delta_record, encode_chunk, ChunkEncoding};
use crate::engine::delta::DeltaCoder;
use crate::engine::features::{pick_bases, super_features};
use crate::engine::frame_delta::{self, frame_plaintext, FrameRecipe};
use crate::engine::recipe::{NewChunk, Origin};
use crate::engine::zstd_frames::ZstdEncoder;
use crate::pipeline::{
    background_priority, failpoint, Batch, Body, Bounded, JobCtx, PipelineConfig, SkipReason,
    StageStats, SKIP_TRIAL_EVERY,
};
use crate::restore::{ChunkReader, ReadSession};

/// A chunk as Similarity sends it to Pack.
pub(crate) struct EncodedChunk {
    pub(crate) id: ChunkId,
    pub(crate) raw_len: u32,
    /// None: already stored (a duplicate).
    pub(crate) stored: Option<(ChunkEncoding, Vec<u8>)>,
    /// For a delta: its base, and the chunk encoded whole, used if the base is not available
    /// when the delta is packed.
    pub(crate) delta: Option<(ChunkId, (ChunkEncoding, Vec<u8>))>,
    /// Super-features, registered if the chunk is stored whole.
    pub(crate) features: Option<Vec<u64>>,
}

/// Looks each chunk up in the chunk index and encodes the new ones: whole (zstd), or as a zstd
/// delta against a similar chunk stored whole, found through the super-feature index, when
/// that is at most `threshold` of the whole encoding. Chunks the selective policies exclude
/// are stored whole without a lookup. In: Chunks, Finished. Out: Encoded, Finished.
///
/// State: a delta coder, a read session for bases (its cache also keeps the chunks this stage
/// encoded whole until they are indexed, so near-duplicates within a layer find each other)
/// and the features of those pending chunks. A base that does not make it into a container
/// (its layer failed) is caught by Pack, which then stores the chunk whole.
pub struct Similarity {
    next: Bounded,
    catalog: Arc<dyn Catalog>,
    cfg: PipelineConfig,
    stats: Arc<StageStats>,
    coder: DeltaCoder,
    reader: ChunkReader,
    bases: ReadSession,
    pending: HashMap<(usize, u64), ChunkId>,
    /// Skipped chunks seen per [`SkipReason`] (every [`SKIP_TRIAL_EVERY`]th is tried).
    skipped_seen: [u64; 3],
}

/// Bytes of recent whole chunks and bases the similarity stage keeps decoded.
pub const SIMILARITY_CACHE_BYTES: usize = 32 << 20;
/// Features of not-yet-indexed chunks kept in memory (cleared when exceeded).
const PENDING_FEATURES: usize = 1 << 20;

impl Actor for Similarity {
    type Context = SyncContext<Self>;

    fn started(&mut self, _: &mut SyncContext<Self>) {
        background_priority();
    }
}

impl Handler<Batch> for Similarity {
    type Result = ();

    fn handle(&mut self, b: Batch, _: &mut SyncContext<Self>) {
        let body = match b.body {
            Body::Chunks(chunks) => {
                let t = std::time::Instant::now();
                let mut out = Vec::with_capacity(chunks.len());
                let mut bytes = 0u64;
                for c in chunks {
                    if matches!(self.catalog.chunk(&c.id), Ok(Some(_))) {
                        self.stats.duplicate_chunks.fetch_add(1, Ordering::Relaxed);
                        out.push(EncodedChunk {
                            id: c.id,
                            raw_len: c.data.len() as u32,
                            stored: None,
                            delta: None,
                            features: None,
                        });
                        continue;
                    }
                    bytes += c.data.len() as u64;
                    out.push(self.encode(&b.job, c));
                }
                self.stats
                    .similarity_bytes
                    .fetch_add(bytes, Ordering::Relaxed);
                self.stats
                    .similarity_nanos
                    .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                Body::Encoded(out)
            }
            other => other,
        };
        self.next.send(Batch {
            queued: None,
            job: b.job,
            body,
        });
    }
}

impl Similarity {
    pub(crate) fn new(
        next: Bounded,
        catalog: Arc<dyn Catalog>,
        cfg: PipelineConfig,
        stats: Arc<StageStats>,
    ) -> Similarity {
        Similarity {
            next,
            coder: DeltaCoder::new(cfg.zstd_level),
            reader: ChunkReader::new(catalog.clone(), cfg.containers.clone()),
            bases: ReadSession::new(SIMILARITY_CACHE_BYTES),
            pending: HashMap::new(),
            skipped_seen: [0; 3],
            catalog,
            cfg,
            stats,
        }
    }

    fn skip_reason(
        &self,
        job: &JobCtx,
        c: &NewChunk,
        whole: &(ChunkEncoding, Vec<u8>),
    ) -> Option<SkipReason> {
        let s = &self.cfg.similarity;
        if !job.policy.similarity {
            return Some(SkipReason::Repository);
        }
        if let Origin::File { size, compressed } = c.origin {
            if s.skip_compressed && compressed {
                return Some(SkipReason::Compressed);
            }
            if size < s.min_file_size {
                return Some(SkipReason::SmallFile);
            }
        }
        // Decided from the bytes: what zstd cannot shrink by 3% is compressed data.
        if s.skip_compressed && whole.1.len() * 100 > c.data.len() * 97 {
            return Some(SkipReason::Compressed);
        }
        None
    }

    /// The smallest delta for chunk `id` against the best-ranked candidate bases. `count`: a
    /// real lookup (false for the policies' trials, which must not skew the hit rate).
    /// `frames`: `data` is a frame's plaintext, and each base's plaintext is its frame's.
    fn try_delta(
        &mut self,
        id: &ChunkId,
        data: &[u8],
        sf: &[u64],
        count: bool,
        frames: bool,
    ) -> Option<(ChunkId, Vec<u8>)> {
        if count {
            self.stats
                .similarity_lookups
                .fetch_add(1, Ordering::Relaxed);
        }
        let indexed = match self.catalog.similar(sf) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "feature index lookup failed");
                vec![None; sf.len()]
            }
        };
        let pending = &self.pending;
        let cands = pick_bases(sf, self.cfg.similarity.candidates.max(1), |i, f| {
            pending
                .get(&(i, f))
                .copied()
                .or(indexed[i])
                .filter(|b| b != id)
        });
        if cands.is_empty() {
            return None;
        }
        if count {
            self.stats.similarity_hits.fetch_add(1, Ordering::Relaxed);
        }
        let mut best: Option<(ChunkId, Vec<u8>)> = None;
        for (base, _) in cands {
            let base_data = match self.reader.read(&base, &mut self.bases) {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!(%base, error = %e, "candidate base unreadable");
                    continue;
                }
            };
            let base_plain = if frames {
                match frame_plaintext(&base_data) {
                    Some(p) => bytes::Bytes::from(p),
                    None => continue,
                }
            } else {
                base_data
            };
            match self.coder.encode(&base_plain, data) {
                Ok(d) if best.as_ref().is_none_or(|(_, b)| d.len() < b.len()) => {
                    best = Some((base, d))
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "delta encoding failed"),
            }
        }
        best
    }

    fn encode(&mut self, job: &JobCtx, c: NewChunk) -> EncodedChunk {
        let whole = encode_chunk(&c.data, self.cfg.zstd_level);
        let raw_len = c.data.len() as u32;
        let plain = |whole, features| EncodedChunk {
            id: c.id,
            raw_len,
            stored: Some(whole),
            delta: None,
            features,
        };
        if !self.cfg.similarity.enabled {
            return plain(whole, None);
        }
        if let Some(enc) = self.frame_encoder(job, &c) {
            return self.encode_frame(c, enc, whole);
        }
        if let Some(reason) = self.skip_reason(job, &c, &whole) {
            let stats = self.stats.clone();
            let st = &stats.skipped[reason as usize];
            st.chunks.fetch_add(1, Ordering::Relaxed);
            st.bytes.fetch_add(c.data.len() as u64, Ordering::Relaxed);
            self.skipped_seen[reason as usize] += 1;
            if self.skipped_seen[reason as usize].is_multiple_of(SKIP_TRIAL_EVERY) {
                // A trial, stored whole regardless: what would similarity have done here?
                let t = std::time::Instant::now();
                let trial = super_features(&c.data, &self.cfg.similarity.features)
                    .and_then(|sf| self.try_delta(&c.id, &c.data, &sf, false, false));
                let lost = trial.map_or(0, |(_, d)| {
                    let size = (d.len() + 20) as f64;
                    if size <= whole.1.len() as f64 * self.cfg.similarity.threshold {
                        whole.1.len() as u64 - (d.len() as u64 + 20)
                    } else {
                        0
                    }
                });
                let nanos = t.elapsed().as_nanos() as u64;
                st.estimated_saved_nanos
                    .fetch_add(nanos * SKIP_TRIAL_EVERY, Ordering::Relaxed);
                st.estimated_lost_bytes
                    .fetch_add(lost * SKIP_TRIAL_EVERY, Ordering::Relaxed);
            }
            return plain(whole, None);
        }
        let Some(sf) = super_features(&c.data, &self.cfg.similarity.features) else {
            return plain(whole, None);
        };
        if let Some((base, d)) = self.try_delta(&c.id, &c.data, &sf, true, false) {
            let record = delta_record(&base, &d);
            if record.len() as f64 <= whole.1.len() as f64 * self.cfg.similarity.threshold {
                failpoint("delta-encoded");
                return EncodedChunk {
                    id: c.id,
                    raw_len,
                    stored: Some((ChunkEncoding::Delta, record)),
                    delta: Some((base, whole)),
                    features: Some(sf),
                };
            }
        }
        self.future_base(&c, &sf);
        plain(whole, Some(sf))
    }

    /// Chunk `c`, stored whole, is a future base: remember it until it is indexed.
    fn future_base(&mut self, c: &NewChunk, sf: &[u64]) {
        if self.pending.len() >= PENDING_FEATURES {
            self.pending.clear();
        }
        for (i, f) in sf.iter().enumerate() {
            self.pending.insert((i, *f), c.id);
        }
        self.bases.remember(c.id, &c.data);
    }

    /// The encoder of chunk `c` if it is a whole frame of a layer kept as its frames (each
    /// file is a frame; a chunk of all of a file is all of its frame) that may become a
    /// frame delta.
    fn frame_encoder(&self, job: &JobCtx, c: &NewChunk) -> Option<ZstdEncoder> {
        let whole_file = matches!(c.origin, Origin::File { size, .. } if size == c.data.len() as u64)
            && c.data.len() >= frame_delta::MIN_FRAME;
        whole_file
            .then(|| job.frame_delta_encoder(&self.cfg.similarity))
            .flatten()
    }

    /// Frame chunk `c`: a frame delta against a stored frame of similar plaintext, when `enc`
    /// re-creates the frame from its plaintext and the delta saves enough per byte re-encoded
    /// on read; else stored whole, its plaintext's features registered for later frames.
    fn encode_frame(
        &mut self,
        c: NewChunk,
        enc: ZstdEncoder,
        whole: (ChunkEncoding, Vec<u8>),
    ) -> EncodedChunk {
        let raw_len = c.data.len() as u32;
        let mut out = EncodedChunk {
            id: c.id,
            raw_len,
            stored: None,
            delta: None,
            features: None,
        };
        let sf = frame_plaintext(&c.data).and_then(|plain| {
            let sf = super_features(&plain, &self.cfg.similarity.features)?;
            Some((frame_delta::salted(sf), plain))
        });
        let Some((sf, plain)) = sf else {
            out.stored = Some(whole);
            return out;
        };
        let s = &self.cfg.similarity;
        let threshold = s.threshold;
        let min_saving = frame_delta::required_saving(enc, s.frame_delta_min_saving.unwrap_or(0.0));
        let kept = self
            .try_delta(&c.id, &plain, &sf, true, true)
            .and_then(|(base, d)| {
                // The recipe goes in front of the delta: at most 13 bytes.
                let size = 20 + 13 + d.len();
                let saved = whole.1.len() as f64 - size as f64;
                let worth = size as f64 <= whole.1.len() as f64 * threshold
                    && saved >= min_saving * plain.len() as f64;
                if !worth {
                    return None;
                }
                let recipe = FrameRecipe::find(enc, &c.data, &plain)?;
                Some((base, frame_delta::record(&base, &recipe, &d)))
            });
        match kept {
            Some((base, record)) => {
                failpoint("delta-encoded");
                out.stored = Some((ChunkEncoding::FrameDelta, record));
                out.delta = Some((base, whole));
            }
            None => {
                self.future_base(&c, &sf);
                out.stored = Some(whole);
            }
        }
        out.features = Some(sf);
        out
    }
}
