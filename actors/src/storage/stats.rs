//! Counters of object-store requests, by operation: requests, failures, retries, bytes, and
//! a latency histogram, read by the metrics endpoint.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// One kind of object-store request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Put,
    Get,
    Head,
    List,
    Delete,
    /// One part of a multipart upload (its start and completion count as `Put`).
    UploadPart,
}

impl Op {
    pub const ALL: [Op; 6] = [
        Op::Put,
        Op::Get,
        Op::Head,
        Op::List,
        Op::Delete,
        Op::UploadPart,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::Head => "head",
            Op::List => "list",
            Op::Delete => "delete",
            Op::UploadPart => "upload_part",
        }
    }
}

/// Upper bounds of the latency buckets, in seconds (Prometheus `le`).
pub const LATENCY_BUCKETS: [f64; 11] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default)]
pub struct OpStats {
    requests: AtomicU64,
    failures: AtomicU64,
    retries: AtomicU64,
    bytes: AtomicU64,
    micros: AtomicU64,
    /// Requests at or under each bound of [`LATENCY_BUCKETS`] (not cumulative).
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
}

/// A reading of one operation's counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpReading {
    pub requests: u64,
    pub failures: u64,
    pub retries: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// Cumulative counts per bound of [`LATENCY_BUCKETS`], as Prometheus wants them.
    pub buckets: Vec<u64>,
}

#[derive(Default)]
pub struct Stats {
    ops: [OpStats; Op::ALL.len()],
}

impl Stats {
    fn of(&self, op: Op) -> &OpStats {
        &self.ops[Op::ALL
            .iter()
            .position(|o| *o == op)
            .expect("every op is listed")]
    }

    /// One request that took `took`, moving `bytes`, ended well or not.
    pub fn record(&self, op: Op, took: Duration, bytes: u64, ok: bool) {
        let s = self.of(op);
        s.requests.fetch_add(1, Relaxed);
        if !ok {
            s.failures.fetch_add(1, Relaxed);
        }
        s.bytes.fetch_add(bytes, Relaxed);
        s.micros
            .fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Relaxed);
        let secs = took.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            s.buckets[i].fetch_add(1, Relaxed);
        }
    }

    pub fn retried(&self, op: Op) {
        self.of(op).retries.fetch_add(1, Relaxed);
    }

    pub fn read(&self, op: Op) -> OpReading {
        let s = self.of(op);
        let mut total = 0;
        OpReading {
            requests: s.requests.load(Relaxed),
            failures: s.failures.load(Relaxed),
            retries: s.retries.load(Relaxed),
            bytes: s.bytes.load(Relaxed),
            seconds: s.micros.load(Relaxed) as f64 / 1e6,
            buckets: s
                .buckets
                .iter()
                .map(|b| {
                    total += b.load(Relaxed);
                    total
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let s = Stats::default();
        s.record(Op::Get, Duration::from_millis(3), 10, true);
        s.record(Op::Get, Duration::from_millis(300), 20, false);
        s.record(Op::Get, Duration::from_secs(60), 0, true);
        s.retried(Op::Get);
        let r = s.read(Op::Get);
        assert_eq!((r.requests, r.failures, r.retries, r.bytes), (3, 1, 1, 30));
        assert_eq!(r.buckets[0], 0);
        assert_eq!(r.buckets[1], 1);
        assert_eq!(
            *r.buckets.last().unwrap(),
            2,
            "over the last bound: only in the count"
        );
        assert_eq!(
            s.read(Op::Put),
            OpReading {
                buckets: vec![0; LATENCY_BUCKETS.len()],
                ..Default::default()
            }
        );
    }
}
