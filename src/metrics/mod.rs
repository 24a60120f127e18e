//! `GET /metrics`: Prometheus text exposition, names prefixed `stowage_`, counters `_total`.
//!
//! Store-wide numbers (the same as `/_stats`) and the pipeline's counters are read at scrape
//! time into a fresh registry; HTTP request counters and latencies live in [`HttpMetrics`].

mod storage;

use std::sync::atomic::Ordering::Relaxed;

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry as PromRegistry, TextEncoder,
};

use crate::registry::{Registry, Stats};

/// Request counters and latency, updated by the HTTP middleware.
pub struct HttpMetrics {
    registry: PromRegistry,
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        let registry = PromRegistry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "stowage_http_requests_total",
                "HTTP requests by method and status",
            ),
            &["method", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "stowage_http_request_duration_seconds",
                "HTTP request time until the last byte of the response (or the client left), by \
                 method and route (blob, manifest, upload, other)",
            )
            .buckets(vec![0.001, 0.005, 0.02, 0.1, 0.5, 2.0, 10.0, 60.0]),
            &["method", "route"],
        )
        .expect("valid metric");
        // The series a registry's traffic is made of exist from the start, at zero: a series
        // born with its first request would hide that request from rate() (Prometheus needs
        // two samples), so the first pull after a start would never show on the dashboard.
        for (method, route) in [
            ("GET", "blob"),
            ("HEAD", "blob"),
            ("GET", "manifest"),
            ("HEAD", "manifest"),
            ("PUT", "manifest"),
            ("POST", "upload"),
            ("PATCH", "upload"),
            ("PUT", "upload"),
        ] {
            latency.with_label_values(&[method, route]);
        }
        for (method, status) in [
            ("GET", "200"),
            ("GET", "404"),
            ("HEAD", "200"),
            ("HEAD", "404"),
            ("POST", "202"),
            ("PATCH", "202"),
            ("PUT", "201"),
        ] {
            requests.with_label_values(&[method, status]);
        }
        registry
            .register(Box::new(requests.clone()))
            .expect("register");
        registry
            .register(Box::new(latency.clone()))
            .expect("register");
        HttpMetrics {
            registry,
            requests,
            latency,
        }
    }
}

/// The `method` label of a request: the methods the API uses, anything else `other` (a
/// client choosing the method must not create series at will).
pub fn method_label(m: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The `route` label of a request: what it is for, from its path.
pub fn route_label(path: &str) -> &'static str {
    let Some(rest) = path.strip_prefix("/v2/") else {
        return "other";
    };
    if rest.contains("/blobs/uploads") {
        "upload"
    } else if rest.contains("/blobs/") {
        "blob"
    } else if rest.contains("/manifests/") {
        "manifest"
    } else {
        "other"
    }
}

fn gauge(r: &PromRegistry, name: &str, help: &str, v: i64) {
    let g = IntGauge::new(name, help).expect("valid metric");
    g.set(v);
    r.register(Box::new(g)).expect("register");
}

fn counter(r: &PromRegistry, name: &str, help: &str, v: u64) {
    let c = IntCounter::new(name, help).expect("valid metric");
    c.inc_by(v);
    r.register(Box::new(c)).expect("register");
}

/// Render every metric in the text format.
pub fn render(
    reg: &Registry,
    stats: &Stats,
    http: &HttpMetrics,
    gate: &crate::auth::Gate,
) -> String {
    let r = PromRegistry::new();
    gauge(
        &r,
        "stowage_repositories",
        "Repositories",
        stats.repositories as i64,
    );
    gauge(
        &r,
        "stowage_manifests",
        "Distinct manifests",
        stats.manifests as i64,
    );
    gauge(&r, "stowage_tags", "Tags", stats.tags as i64);
    gauge(&r, "stowage_blobs", "Distinct blobs", stats.blobs as i64);
    gauge(
        &r,
        "stowage_uploads",
        "Upload sessions in progress",
        stats.uploads as i64,
    );
    gauge(
        &r,
        "stowage_logical_bytes",
        "Sum of the sizes of distinct blobs as pushed",
        stats.bytes.logical as i64,
    );
    gauge(
        &r,
        "stowage_stored_bytes",
        "Bytes the store occupies on disk, metadata included",
        stats.bytes.stored as i64,
    );
    let ratio = Gauge::new("stowage_dedup_ratio", "Logical bytes / stored bytes").expect("metric");
    ratio.set(stats.dedup_ratio);
    r.register(Box::new(ratio)).expect("register");

    let layers = IntGaugeVec::new(
        Opts::new("stowage_layers", "Blobs by storage state"),
        &["state"],
    )
    .expect("metric");
    layers
        .with_label_values(&["pending"])
        .set(stats.layers.pending as i64);
    layers
        .with_label_values(&["deduplicated"])
        .set(stats.layers.deduplicated as i64);
    layers
        .with_label_values(&["raw"])
        .set(stats.layers.raw as i64);
    r.register(Box::new(layers)).expect("register");
    let raw = IntGaugeVec::new(
        Opts::new("stowage_layers_raw", "Blobs kept raw, by reason"),
        &["reason"],
    )
    .expect("metric");
    for (reason, n) in &stats.layers.raw_reasons {
        raw.with_label_values(&[reason.as_str()]).set(*n as i64);
    }
    r.register(Box::new(raw)).expect("register");
    let enc = IntGaugeVec::new(
        Opts::new(
            "stowage_layers_deduplicated",
            "Deduplicated blobs by the encoding that re-creates them",
        ),
        &["encoding"],
    )
    .expect("metric");
    for (e, n) in &stats.layers.encodings {
        enc.with_label_values(&[e.as_str()]).set(*n as i64);
    }
    r.register(Box::new(enc)).expect("register");

    gauge(
        &r,
        "stowage_chunks_unique",
        "Distinct chunks stored",
        stats.chunks.unique as i64,
    );
    gauge(
        &r,
        "stowage_chunk_references",
        "Chunk references over all recipes",
        stats.chunks.total as i64,
    );
    gauge(
        &r,
        "stowage_chunk_stored_bytes",
        "Bytes of encoded chunk data",
        stats.chunks.stored_bytes as i64,
    );
    gauge(
        &r,
        "stowage_chunks_delta",
        "Distinct chunks stored as deltas",
        stats.chunks.delta as i64,
    );
    gauge(
        &r,
        "stowage_chunks_delta_bases",
        "Distinct chunks serving as the base of at least one delta",
        stats.chunks.bases as i64,
    );
    if let Some(sim) = &stats.similarity {
        gauge(
            &r,
            "stowage_feature_index_entries",
            "Super-feature keys in the in-memory feature index",
            sim.index_entries as i64,
        );
        gauge(
            &r,
            "stowage_feature_index_capacity",
            "Super-feature keys the in-memory feature index may hold",
            sim.index_capacity as i64,
        );
    }
    let pl = IntCounterVec::new(
        Opts::new(
            "stowage_policy_layers_total",
            "Layers each repository policy applied to, by effect",
        ),
        &["policy", "effect"],
    )
    .expect("metric");
    let pb = IntCounterVec::new(
        Opts::new(
            "stowage_policy_bytes_total",
            "Bytes of the layers each repository policy applied to, by effect",
        ),
        &["policy", "effect"],
    )
    .expect("metric");
    // Every configured policy has its series from the start, at 0 until it applies.
    for p in &reg.config().repo_policies {
        for effect in ["raw", "no_similarity", "deferred"] {
            pl.with_label_values(&[p.repositories.as_str(), effect]);
            pb.with_label_values(&[p.repositories.as_str(), effect]);
        }
    }
    for p in &stats.policies {
        pl.with_label_values(&[p.policy.as_str(), p.effect])
            .inc_by(p.layers);
        pb.with_label_values(&[p.policy.as_str(), p.effect])
            .inc_by(p.bytes);
    }
    r.register(Box::new(pl)).expect("register");
    r.register(Box::new(pb)).expect("register");

    if let Some(p) = reg.pipeline_stats() {
        let b = IntCounterVec::new(
            Opts::new(
                "stowage_pipeline_bytes_total",
                "Bytes through each pipeline stage",
            ),
            &["stage"],
        )
        .expect("metric");
        for (stage, v) in [
            ("extract", &p.extract_bytes),
            ("inflate", &p.raw_bytes),
            ("chunk", &p.chunk_bytes),
            ("similarity", &p.similarity_bytes),
            ("pack", &p.stored_chunk_bytes),
            ("verify", &p.verify_bytes),
        ] {
            b.with_label_values(&[stage]).inc_by(v.load(Relaxed));
        }
        r.register(Box::new(b)).expect("register");
        let c = IntCounterVec::new(
            Opts::new("stowage_pipeline_chunks_total", "Chunks by outcome"),
            &["kind"],
        )
        .expect("metric");
        c.with_label_values(&["cut"]).inc_by(p.chunks.load(Relaxed));
        c.with_label_values(&["new"])
            .inc_by(p.new_chunks.load(Relaxed));
        c.with_label_values(&["duplicate"])
            .inc_by(p.duplicate_chunks.load(Relaxed));
        c.with_label_values(&["whole"])
            .inc_by(p.chunks_whole.load(Relaxed));
        c.with_label_values(&["delta"])
            .inc_by(p.chunks_delta.load(Relaxed));
        c.with_label_values(&["frame_delta"])
            .inc_by(p.frame_deltas.load(Relaxed));
        c.with_label_values(&["delta_fallback"])
            .inc_by(p.delta_fallbacks.load(Relaxed));
        r.register(Box::new(c)).expect("register");
        counter(
            &r,
            "stowage_delta_saved_bytes_total",
            "Bytes deltas saved over storing their chunks whole",
            p.delta_saved_bytes.load(Relaxed),
        );
        counter(
            &r,
            "stowage_similarity_lookups_total",
            "Feature-index lookups for new chunks",
            p.similarity_lookups.load(Relaxed),
        );
        counter(
            &r,
            "stowage_similarity_hits_total",
            "Feature-index lookups that found a candidate base",
            p.similarity_hits.load(Relaxed),
        );
        let busy = prometheus::CounterVec::new(
            Opts::new(
                "stowage_pipeline_busy_seconds_total",
                "Time each pipeline stage spent working",
            ),
            &["stage"],
        )
        .expect("metric");
        busy.with_label_values(&["similarity"])
            .inc_by(p.similarity_nanos.load(Relaxed) as f64 / 1e9);
        r.register(Box::new(busy)).expect("register");
        let sk = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), &["reason"]).expect("metric")
        };
        let (chunks, bytes, lost) = (
            sk(
                "stowage_similarity_skipped_chunks_total",
                "New chunks the selective policies kept out of similarity",
            ),
            sk(
                "stowage_similarity_skipped_bytes_total",
                "Bytes of new chunks the selective policies kept out of similarity",
            ),
            sk(
                "stowage_similarity_skip_estimated_lost_bytes_total",
                "Estimated bytes deltas would have saved on skipped chunks (sampled)",
            ),
        );
        let saved = prometheus::CounterVec::new(
            Opts::new(
                "stowage_similarity_skip_estimated_saved_seconds_total",
                "Estimated similarity time the selective policies saved (sampled)",
            ),
            &["reason"],
        )
        .expect("metric");
        for reason in stowage_actors::pipeline::SkipReason::ALL {
            let st = &p.skipped[reason as usize];
            let l = [reason.label()];
            chunks.with_label_values(&l).inc_by(st.chunks.load(Relaxed));
            bytes.with_label_values(&l).inc_by(st.bytes.load(Relaxed));
            lost.with_label_values(&l)
                .inc_by(st.estimated_lost_bytes.load(Relaxed));
            saved
                .with_label_values(&l)
                .inc_by(st.estimated_saved_nanos.load(Relaxed) as f64 / 1e9);
        }
        for m in [chunks, bytes, lost] {
            r.register(Box::new(m)).expect("register");
        }
        r.register(Box::new(saved)).expect("register");
        gauge(
            &r,
            "stowage_pipeline_queued_blobs",
            "Committed blobs waiting for the Extract stage",
            p.queued.load(Relaxed) as i64,
        );
        counter(
            &r,
            "stowage_containers_sealed_total",
            "Containers sealed",
            p.containers_sealed.load(Relaxed),
        );
        let q = IntGaugeVec::new(
            Opts::new(
                "stowage_pipeline_queue_depth",
                "Batches in flight on each edge of the pipeline",
            ),
            &["edge"],
        )
        .expect("metric");
        for (i, edge) in [
            "extract_chunk",
            "chunk_similarity",
            "similarity_pack",
            "pack_commit",
        ]
        .iter()
        .enumerate()
        {
            q.with_label_values(&[*edge])
                .set(p.queue_depth[i].load(Relaxed));
        }
        r.register(Box::new(q)).expect("register");
    }
    counter(
        &r,
        "stowage_restore_layers_total",
        "Deduplicated layers restored for pulls",
        stats.restore.layers,
    );
    counter(
        &r,
        "stowage_restore_bytes_total",
        "Bytes of deduplicated layers re-created from chunks (once per restore, however many \
         pulls share it; hot-tier reads not included)",
        stats.restore.bytes,
    );
    counter(
        &r,
        "stowage_restore_digest_mismatches_total",
        "Restores whose bytes did not match the digest (response aborted)",
        stats.restore.digest_mismatches,
    );
    counter(
        &r,
        "stowage_restore_cache_hits_total",
        "Pulls of deduplicated layers served from the restored-layer cache",
        stats.restore.cache_hits,
    );
    gauge(
        &r,
        "stowage_restore_cache_bytes",
        "Bytes in the restored-layer cache (part of stowage_stored_bytes)",
        stats.restore.cache_bytes as i64,
    );
    counter(
        &r,
        "stowage_restore_failures_total",
        "Restores that failed (response aborted)",
        stats.restore.failures,
    );
    counter(
        &r,
        "stowage_restore_started_total",
        "Whole-layer restores started (each shared by every concurrent pull of its layer)",
        stats.restore.started,
    );
    counter(
        &r,
        "stowage_restore_joined_total",
        "Pulls that joined a restore of their layer already under way",
        stats.restore.joined,
    );
    counter(
        &r,
        "stowage_restore_announced_total",
        "Restores started by a manifest GET before the layer was asked for",
        stats.restore.announced,
    );
    counter(
        &r,
        "stowage_restore_abandoned_total",
        "Restores stopped early because nobody read them any more",
        stats.restore.abandoned,
    );
    counter(
        &r,
        "stowage_restore_paused_total",
        "Times a restore ahead of its readers yielded its thread to a waiting one",
        stats.restore.paused,
    );
    counter(
        &r,
        "stowage_restore_resumed_total",
        "Ranges restored from a block boundary before them instead of the layer's start",
        stats.restore.resumed,
    );
    counter(
        &r,
        "stowage_restore_resumed_skipped_bytes_total",
        "Uncompressed bytes before resumed ranges that were not restored",
        stats.restore.resumed_skipped_bytes,
    );
    {
        let g = prometheus::CounterVec::new(
            prometheus::Opts::new(
                "stowage_restore_stage_seconds_total",
                "Busy time of restores by stage: read (container files), decode (zstd and \
                 deltas), wait (re-encoder waiting for chunks), encode (exact re-encoding), \
                 hash, send (spool or client)",
            ),
            &["stage"],
        )
        .expect("valid metric");
        for (stage, secs) in &stats.restore.stage_seconds {
            g.with_label_values(&[*stage]).inc_by(*secs);
        }
        r.register(Box::new(g)).expect("register");
    }
    {
        let g = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "stowage_restore_zstd_long_frames_total",
                "Long zstd frames planned in segments, by how they were re-encoded: in \
                 segments, or whole because the --zstd-segment-cores threads were busy",
            ),
            &["how"],
        )
        .expect("valid metric");
        g.with_label_values(&["segments"])
            .inc_by(stats.restore.zstd_frames_segmented);
        g.with_label_values(&["whole"])
            .inc_by(stats.restore.zstd_frames_whole);
        r.register(Box::new(g)).expect("register");
    }
    gauge(
        &r,
        "stowage_restore_zstd_segment_threads",
        "Threads re-encoding segments of long zstd frames now (at most --zstd-segment-cores)",
        stats.restore.zstd_segment_threads as i64,
    );
    gauge(
        &r,
        "stowage_hot_bytes",
        "Bytes of exact layer copies in the hot tier (part of stowage_stored_bytes)",
        stats.bytes.hot as i64,
    );
    gauge(
        &r,
        "stowage_spool_bytes",
        "Bytes of restore spool files (temporary; part of stowage_stored_bytes)",
        stats.bytes.spool as i64,
    );

    gc_metrics(&r, stats);
    // Both families exist with every series at zero from the start (authentication off, or
    // nothing decided yet): a series born with its first event hides it from rate().
    {
        let c = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "stowage_auth_decisions_total",
                "Authentication and authorization decisions by result (allowed, denied) and \
                 reason (policy, admin, login, anyone, token_issued; anonymous, forbidden, \
                 insufficient_scope, bad_credentials, bad_token, malformed, throttled)",
            ),
            &["result", "reason"],
        )
        .expect("metric");
        for (result, reason) in crate::auth::DECISIONS {
            c.with_label_values(&[result, reason]);
        }
        for ((result, reason), n) in gate.decisions() {
            c.with_label_values(&[result, reason]).inc_by(n);
        }
        r.register(Box::new(c)).expect("register");
    }
    {
        let c = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "stowage_reloads_total",
                "Reloads of the htpasswd file and the TLS certificate (SIGHUP, or the file \
                 changed) by result: failed ones keep what was in use",
            ),
            &["what", "result"],
        )
        .expect("metric");
        for what in ["htpasswd", "tls"] {
            for result in ["ok", "failed"] {
                c.with_label_values(&[what, result]);
            }
        }
        for ((what, result), n) in gate.reloads() {
            c.with_label_values(&[what, result]).inc_by(n);
        }
        r.register(Box::new(c)).expect("register");
    }

    let mut families = r.gather();
    families.extend(http.registry.gather());
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut out)
        .expect("text encoding");
    let mut text = String::from_utf8(out).expect("UTF-8 exposition");
    text.push_str(&storage::render(reg.containers()));
    text.push_str(&storage::render_journal(reg.journal_reading().as_ref()));
    text.push_str(&storage::render_follow(reg.follow_stats()));
    text
}

/// Garbage collection, retention and free space.
fn gc_metrics(r: &PromRegistry, stats: &Stats) {
    let g = &stats.gc;
    counter(
        r,
        "stowage_gc_passes_total",
        "Garbage collection passes completed",
        g.passes,
    );
    counter(
        r,
        "stowage_gc_failures_total",
        "Garbage collection passes that failed",
        g.failures,
    );
    gauge(
        r,
        "stowage_gc_running",
        "1 while a garbage collection pass runs",
        i64::from(g.running),
    );
    let secs = prometheus::Counter::new(
        "stowage_gc_seconds_total",
        "Time spent in garbage collection passes",
    )
    .expect("metric");
    secs.inc_by(g.reclaimed.seconds);
    r.register(Box::new(secs)).expect("register");
    let last = prometheus::Gauge::new(
        "stowage_gc_last_duration_seconds",
        "Duration of the last garbage collection pass",
    )
    .expect("metric");
    last.set(g.last.as_ref().map_or(0.0, |l| l.seconds));
    r.register(Box::new(last)).expect("register");
    let objects = IntCounterVec::new(
        Opts::new(
            "stowage_gc_reclaimed_objects_total",
            "Objects garbage collection removed, by kind",
        ),
        &["kind"],
    )
    .expect("metric");
    let t = &g.reclaimed;
    for (kind, v) in [
        ("blob_links", t.links),
        ("manifests", t.manifests),
        ("blobs", t.blobs),
        ("recipes", t.recipes),
        ("chunks", t.chunks),
        ("containers_removed", t.containers_removed),
        ("containers_compacted", t.containers_compacted),
        ("orphan_files", t.orphan_files),
    ] {
        objects.with_label_values(&[kind]).inc_by(v);
    }
    r.register(Box::new(objects)).expect("register");
    let bytes = IntCounterVec::new(
        Opts::new(
            "stowage_gc_reclaimed_bytes_total",
            "Bytes garbage collection reclaimed, by kind (blobs: logical sizes; raw, chunks, \
             containers: bytes on disk)",
        ),
        &["kind"],
    )
    .expect("metric");
    for (kind, v) in [
        ("blobs", t.blob_bytes),
        ("raw", t.raw_bytes),
        ("chunks", t.chunk_bytes),
        ("containers", t.container_bytes),
    ] {
        bytes.with_label_values(&[kind]).inc_by(v);
    }
    r.register(Box::new(bytes)).expect("register");
    let retention = IntCounterVec::new(
        Opts::new(
            "stowage_retention_deleted_total",
            "Tags and manifests retention deleted, by policy",
        ),
        &["policy", "kind"],
    )
    .expect("metric");
    for (policy, d) in &t.retention {
        retention
            .with_label_values(&[policy.as_str(), "tags"])
            .inc_by(d.tags);
        retention
            .with_label_values(&[policy.as_str(), "manifests"])
            .inc_by(d.manifests);
    }
    r.register(Box::new(retention)).expect("register");
    gauge(
        r,
        "stowage_disk_free_bytes",
        "Free bytes on the file system holding the root",
        stats.disk.free_bytes as i64,
    );
    gauge(
        r,
        "stowage_disk_total_bytes",
        "Size of the file system holding the root",
        stats.disk.total_bytes as i64,
    );
    gauge(
        r,
        "stowage_disk_low_space",
        "1 when less than 5% of the file system is free",
        i64::from(stats.disk.low_space),
    );
}
