//! Extract: the first sync stage. It reads a staged blob, identifies its compression from the
//! bytes, inflates it and splits the tar stream exactly (headers and small files into the
//! layer-wide inline stream, large files on their own), in batches of about [`BATCH_BYTES`].
//! A zstd stream of many frames whose frames are kept as they are (see
//! [`ZstdFrames`](crate::engine::zstd_frames::ZstdFrames)) is split at its frames instead.
//!
//! - **In:** [`Dedup`], from Upload, one layer at a time: Upload sends the next only once this
//!   stage has answered, which it does when it has read the whole layer.
//! - **Out:** `Body::Segments` while reading, then one `Body::EndOfLayer` with the layer's
//!   encoding and file index (or why there is none), to Chunk.
//! - **Bounds:** one thread ([`SyncArbiter`]), at nice 10. Its mailbox is actix's unbounded sync
//!   mailbox, but Upload keeps at most one [`Dedup`] in it. Towards Chunk it keeps at most
//!   [`QUEUE_DEPTH`](crate::pipeline::QUEUE_DEPTH) batches in flight (edge 0 of `queue_depth`)
//!   and blocks when it has that many, which holds back the reading of the blob.
//! - **Failure:** a blob that cannot be opened or read, or whose compressed stream is corrupt
//!   or cannot be re-created exactly ([`NotExact`](crate::engine::recompress::NotExact)), ends
//!   with `EndOfLayer(Err(reason))` after whatever segments were already sent; the failure
//!   travels down to Commit, which keeps the layer raw with that reason.

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::prelude::*;

use crate::digest::Digest;
use crate::engine::recompress::{Compression, Encoding, LayerDecoder};
use crate::engine::tar::{FileEntry, TarSink, TarSplitter};
use crate::engine::zstd_frames::StoredFrames;
use crate::pipeline::{
    background_priority, Batch, Body, Bounded, JobCtx, LayerPolicy, PipelineConfig, Reply,
    StageStats, BATCH_BYTES,
};

/// A piece of the split tar stream, as Extract sends it to Chunk.
pub(crate) enum Segment {
    Meta(Vec<u8>),
    FileStart(u64),
    FileData(Vec<u8>),
    FileEnd,
}

/// Reads a staged blob, identifies and inflates its compression, splits the tar stream.
/// Messages in: [`Dedup`] (from the server). Out: `Body::Segments`, `Body::EndOfLayer`.
pub struct Extract {
    next: Bounded,
    cfg: PipelineConfig,
    stats: Arc<StageStats>,
}

impl Actor for Extract {
    type Context = SyncContext<Self>;

    fn started(&mut self, _: &mut SyncContext<Self>) {
        background_priority();
    }
}

/// Deduplicate the staged blob `digest` at `path`; the outcome is sent on `reply`.
pub struct Dedup {
    pub digest: Digest,
    pub path: PathBuf,
    pub policy: LayerPolicy,
    pub reply: Reply,
}

impl Message for Dedup {
    type Result = ();
}

struct SegSink<'a> {
    batch: Vec<Segment>,
    bytes: usize,
    next: &'a mut Bounded,
    job: &'a Arc<JobCtx>,
}

impl SegSink<'_> {
    fn flush(&mut self) {
        if !self.batch.is_empty() {
            let items = std::mem::take(&mut self.batch);
            self.bytes = 0;
            self.next.send(Batch {
                queued: None,
                job: self.job.clone(),
                body: Body::Segments(items),
            });
        }
    }
    fn add(&mut self, s: Segment, n: usize) {
        self.batch.push(s);
        self.bytes += n;
        if self.bytes >= BATCH_BYTES {
            self.flush();
        }
    }
}

impl TarSink for SegSink<'_> {
    fn meta(&mut self, b: &[u8]) {
        self.add(Segment::Meta(b.to_vec()), b.len());
    }
    fn file_start(&mut self, size: u64) {
        self.add(Segment::FileStart(size), 0);
    }
    fn file_data(&mut self, b: &[u8]) {
        self.add(Segment::FileData(b.to_vec()), b.len());
    }
    fn file_end(&mut self) {
        self.add(Segment::FileEnd, 0);
    }
}

impl Handler<Dedup> for Extract {
    type Result = ();

    fn handle(&mut self, msg: Dedup, _: &mut SyncContext<Self>) {
        let job = Arc::new(JobCtx {
            digest: msg.digest,
            path: msg.path,
            policy: msg.policy,
            reply: std::sync::Mutex::new(Some(msg.reply)),
            alternatives: Default::default(),
            frame_encoder: Default::default(),
        });
        let end = self.extract(&job);
        self.next.send(Batch {
            queued: None,
            job,
            body: Body::EndOfLayer(end),
        });
    }
}

impl Extract {
    pub(crate) fn new(next: Bounded, cfg: PipelineConfig, stats: Arc<StageStats>) -> Extract {
        Extract { next, cfg, stats }
    }

    fn extract(&mut self, job: &Arc<JobCtx>) -> Result<(Encoding, Vec<FileEntry>), String> {
        let mut f = File::open(&job.path).map_err(|e| format!("opening staged blob: {e}"))?;
        let mut buf = vec![0u8; BATCH_BYTES];
        let mut n = read_full(&mut f, &mut buf).map_err(|e| e.to_string())?;
        let compression = Compression::detect(&buf[..n]);
        let inline_below = self.cfg.chunk.min as u64;
        let mut sink = SegSink {
            batch: Vec::new(),
            bytes: 0,
            next: &mut self.next,
            job,
        };
        if compression == Compression::Zstd {
            let deltas = job.frame_deltas_on(&self.cfg.similarity);
            let plan = StoredFrames::plan(&job.path, self.cfg.zstd_frames, deltas)
                .map_err(|e| format!("reading staged blob: {e}"))?;
            if let Some(plan) = plan {
                if let Some(enc) = plan.encoder() {
                    let _ = job.frame_encoder.set(enc);
                }
                let stats = &self.stats;
                let len = f.metadata().map_err(|e| e.to_string())?.len();
                stats.extract_bytes.fetch_add(len, Ordering::Relaxed);
                let end = plan.split(&job.path, &mut sink, &mut |raw| {
                    stats
                        .raw_bytes
                        .fetch_add(raw.len() as u64, Ordering::Relaxed);
                });
                sink.flush();
                return end.map_err(|e| e.to_string());
            }
        }
        let mut decoder = LayerDecoder::new(compression);
        if let Ok(m) = f.metadata() {
            decoder.set_stream_len(m.len());
        }
        decoder.set_segments(self.cfg.zstd_segment_cores);
        let mut split = TarSplitter::new(inline_below);
        let mut failure = None;
        while n > 0 {
            self.stats
                .extract_bytes
                .fetch_add(n as u64, Ordering::Relaxed);
            let stats = &self.stats;
            if let Err(e) = decoder.feed(&buf[..n], &mut |raw| {
                stats
                    .raw_bytes
                    .fetch_add(raw.len() as u64, Ordering::Relaxed);
                split.push(raw, &mut sink)
            }) {
                failure = Some(e.to_string());
                break;
            }
            n = read_full(&mut f, &mut buf).map_err(|e| e.to_string())?;
        }
        let summary = split.finish(&mut sink);
        sink.flush();
        if let Some(f) = failure {
            return Err(f);
        }
        let (enc, alternatives) = decoder
            .finish_with_alternatives()
            .map_err(|e| e.to_string())?;
        let rate = enc.nominal_restore_rate() / 1e6;
        if rate < self.cfg.min_restore_rate {
            return Err(format!(
                "{} re-creates the layer at about {rate} MB/s, under --min-restore-rate {}: \
                 kept as pushed",
                enc.label(),
                self.cfg.min_restore_rate
            ));
        }
        let _ = job.alternatives.set(alternatives);
        Ok((enc, summary.files))
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
