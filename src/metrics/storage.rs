//! Object-store and container-cache metrics, when containers live in a bucket: written as
//! exposition text (the counters are kept by `stowage_actors::storage`, the histogram
//! pre-bucketed there).

use std::fmt::Write as _;

use stowage_actors::storage::containers::Containers;
use stowage_actors::storage::stats::LATENCY_BUCKETS;
use stowage_actors::storage::Op;

/// The exposition text of the object-store metrics (empty without a bucket).
pub fn render(containers: &Containers) -> String {
    let (Some(bucket), Some(cache)) = (containers.bucket(), containers.cache_reading()) else {
        return String::new();
    };
    let mut s = String::new();
    let readings: Vec<_> = Op::ALL
        .iter()
        .map(|op| (op.as_str(), bucket.stats().read(*op)))
        .collect();
    let family = |s: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(
        &mut s,
        "stowage_object_requests_total",
        "counter",
        "Object-store requests by operation (put, get, head, list, delete, upload_part) and result",
    );
    for (op, r) in &readings {
        let _ = writeln!(
            s,
            "stowage_object_requests_total{{op=\"{op}\",result=\"ok\"}} {}",
            r.requests - r.failures
        );
        let _ = writeln!(
            s,
            "stowage_object_requests_total{{op=\"{op}\",result=\"error\"}} {}",
            r.failures
        );
    }
    family(
        &mut s,
        "stowage_object_bytes_total",
        "counter",
        "Bytes moved by object-store requests, by operation",
    );
    for (op, r) in &readings {
        let _ = writeln!(s, "stowage_object_bytes_total{{op=\"{op}\"}} {}", r.bytes);
    }
    family(
        &mut s,
        "stowage_object_request_duration_seconds",
        "histogram",
        "Object-store request time by operation, retries included",
    );
    for (op, r) in &readings {
        for (le, n) in LATENCY_BUCKETS.iter().zip(&r.buckets) {
            let _ = writeln!(
                s,
                "stowage_object_request_duration_seconds_bucket{{op=\"{op}\",le=\"{le}\"}} {n}"
            );
        }
        let _ = writeln!(
            s,
            "stowage_object_request_duration_seconds_bucket{{op=\"{op}\",le=\"+Inf\"}} {}",
            r.requests
        );
        let _ = writeln!(
            s,
            "stowage_object_request_duration_seconds_sum{{op=\"{op}\"}} {}",
            r.seconds
        );
        let _ = writeln!(
            s,
            "stowage_object_request_duration_seconds_count{{op=\"{op}\"}} {}",
            r.requests
        );
    }
    family(
        &mut s,
        "stowage_object_http_attempts_total",
        "counter",
        "HTTP requests the S3 client sent, retries included (retries: this minus the requests)",
    );
    let _ = writeln!(
        s,
        "stowage_object_http_attempts_total {}",
        bucket.attempts()
    );
    for (name, kind, help, v) in [
        (
            "stowage_container_cache_bytes",
            "gauge",
            "Bytes of containers cached in the data directory",
            cache.bytes,
        ),
        (
            "stowage_container_cache_capacity_bytes",
            "gauge",
            "The container cache's budget (--cache-bytes)",
            cache.capacity,
        ),
        (
            "stowage_container_cache_files",
            "gauge",
            "Containers cached in the data directory",
            cache.files,
        ),
        (
            "stowage_container_cache_hits_total",
            "counter",
            "Container opens served from the cache",
            cache.hits,
        ),
        (
            "stowage_container_cache_misses_total",
            "counter",
            "Container opens that fetched from the bucket",
            cache.misses,
        ),
        (
            "stowage_container_cache_evictions_total",
            "counter",
            "Containers dropped from the cache to keep its budget",
            cache.evicted,
        ),
        (
            "stowage_container_cache_prefetches_total",
            "counter",
            "Container downloads started ahead of a restore's reader",
            cache.prefetched,
        ),
    ] {
        family(&mut s, name, kind, help);
        let _ = writeln!(s, "{name} {v}");
    }
    s
}

/// The exposition text of the metadata journal's metrics (empty without one).
pub fn render_journal(r: Option<&crate::meta::journal::JournalReading>) -> String {
    let Some(r) = r else {
        return String::new();
    };
    let mut s = String::new();
    let mut metric =
        |name: &str, kind: &str, help: &str, v: u64| scalar(&mut s, name, kind, help, v);
    metric(
        "stowage_journal_entries_total",
        "counter",
        "Metadata journal entries written to the bucket since start-up",
        r.entries,
    );
    metric(
        "stowage_journal_bytes_total",
        "counter",
        "Bytes of metadata journal entries written since start-up",
        r.bytes,
    );
    metric(
        "stowage_journal_failures_total",
        "counter",
        "Commits refused because their journal entry could not be written",
        r.failures,
    );
    metric(
        "stowage_journal_seq",
        "gauge",
        "The last metadata journal entry written",
        r.seq,
    );
    metric(
        "stowage_journal_entries_since_checkpoint",
        "gauge",
        "Journal entries a rebuild of the local index would replay after the newest checkpoint",
        r.since_checkpoint,
    );
    metric(
        "stowage_checkpoints_total",
        "counter",
        "Metadata checkpoints written since start-up",
        r.checkpoints,
    );
    metric(
        "stowage_checkpoint_bytes_total",
        "counter",
        "Bytes of metadata checkpoints written since start-up",
        r.checkpoint_bytes,
    );
    s
}

/// The exposition text of a replica's progress (empty on the writer).
pub fn render_follow(f: Option<&crate::registry::FollowStats>) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(f) = f else {
        return String::new();
    };
    let mut s = String::new();
    let mut metric =
        |name: &str, kind: &str, help: &str, v: u64| scalar(&mut s, name, kind, help, v);
    metric(
        "stowage_replica_applied_seq",
        "gauge",
        "The last entry of the writer's metadata journal this replica applied",
        f.applied.load(Relaxed),
    );
    metric(
        "stowage_replica_synced_timestamp_seconds",
        "gauge",
        "When this replica last read the writer's journal without error",
        f.synced.load(Relaxed),
    );
    metric(
        "stowage_replica_failures_total",
        "counter",
        "Attempts to follow the writer's journal that failed",
        f.failures.load(Relaxed),
    );
    s
}

/// One metric family of one unlabelled sample.
fn scalar(s: &mut String, name: &str, kind: &str, help: &str, v: u64) {
    let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
}
