//! A bounded cache of layers' exact bytes, `<root>/cache/<algorithm>/<hex>` (the hot tier):
//! deduplicated layers pulled more than once (admission counts recent pulls, see
//! [`LayerCache::note_pull`]), and layers just deduplicated whose pushed bytes are kept (CI
//! pulls what it just pushed), so that the next pull of a hot layer is a file read instead of
//! a restore. Its files are plain layer bytes (their digest is their checksum; whoever serves
//! them re-hashes them on the way out): a restore's verified spool file, fsynced and renamed
//! into place only after the restore matched the digest. A size of 0 disables the cache. Every
//! byte here counts in the store's `bytes.stored`.
//!
//! **Eviction weighs what a copy saves** (GreedyDual-Size): a layer's restore time per byte
//! (estimated from its encoding, `Recipe::restore_estimate`) is what each of its bytes here
//! saves a pull, and layers differ by two orders of magnitude (an uncompressed or fast-zstd
//! layer comes back at hundreds of MB/s, one written by klauspost's `SpeedBestCompression` at
//! ~10). Each entry's priority is the tier's inflation value plus its restore seconds per
//! byte, set when it is kept and again when it is used; the lowest goes first and raises the
//! inflation value to its priority, so a copy that is slow to re-create outlives cheap ones,
//! but not forever. Costs are rounded to powers of two; among equal costs this is LRU. Files
//! found at start have no cost known: they are given [`DEFAULT_RATE`]'s.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::digest::{Algorithm, Digest};

/// Layers whose pulls the admission filter remembers.
pub const PULL_MEMORY: usize = 65536;

/// The restore rate (bytes per second) assumed for copies whose restore time is unknown
/// (found on disk at start).
pub const DEFAULT_RATE: f64 = 100e6;

#[derive(Debug)]
pub struct LayerCache {
    dir: PathBuf,
    budget: std::sync::atomic::AtomicU64,
    state: Mutex<State>,
}

#[derive(Default, Debug)]
struct State {
    entries: HashMap<Digest, Entry>,
    /// Recent pulls of layers not (yet) hot: admission needs a second pull.
    pulls: HashMap<Digest, u32>,
    total: u64,
    clock: u64,
    /// GreedyDual's inflation value: the priority of the last copy evicted.
    inflation: f64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    size: u64,
    /// Restore seconds per byte: what keeping a byte of it saves a pull.
    cost: f64,
    /// `inflation + cost` when last kept or used.
    priority: f64,
    /// Last use (a counter): the tie-break, least recent first.
    used: u64,
}

impl State {
    fn touch(&mut self, d: &Digest) -> bool {
        self.clock += 1;
        let (now, inflation) = (self.clock, self.inflation);
        match self.entries.get_mut(d) {
            Some(e) => {
                e.priority = inflation + e.cost;
                e.used = now;
                true
            }
            None => false,
        }
    }

    fn insert(&mut self, d: Digest, size: u64, cost: f64) {
        self.clock += 1;
        let e = Entry {
            size,
            cost,
            priority: self.inflation + cost,
            used: self.clock,
        };
        if let Some(old) = self.entries.insert(d, e) {
            self.total -= old.size;
        }
        self.total += size;
    }
}

/// Restore seconds per byte of a copy of `size` bytes whose restore takes `restore`, rounded
/// to a power of two: copies of the same kind (encoder, level, about the same compression
/// ratio) weigh the same, and are evicted least recently used first.
fn cost_of(size: u64, restore: std::time::Duration) -> f64 {
    let c = restore.as_secs_f64() / size.max(1) as f64;
    if c > 0.0 {
        c.log2().round().exp2()
    } else {
        0.0
    }
}

impl LayerCache {
    /// Open (and index) the cache under `dir` with at most `budget` bytes.
    pub fn open(dir: PathBuf, budget: u64) -> io::Result<Arc<LayerCache>> {
        let mut st = State::default();
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let d = dir.join(alg.as_str());
            fs::create_dir_all(&d)?;
            for e in fs::read_dir(&d)? {
                let e = e?;
                let name = e.file_name().to_string_lossy().into_owned();
                match format!("{}:{name}", alg.as_str()).parse::<Digest>() {
                    Ok(digest) if budget > 0 => {
                        let size = e.metadata()?.len();
                        st.insert(digest, size, 1.0 / DEFAULT_RATE);
                    }
                    // Temporary files of interrupted writes, or everything when disabled.
                    _ => fs::remove_file(e.path())?,
                }
            }
        }
        let cache = Arc::new(LayerCache {
            dir,
            budget: budget.into(),
            state: Mutex::new(st),
        });
        cache.evict(0)?;
        Ok(cache)
    }

    fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.algorithm().as_str()).join(d.hex())
    }

    /// The cached file of `d`, if any (marking it used).
    pub fn lookup(&self, d: &Digest) -> Option<PathBuf> {
        let mut st = self.state.lock().expect("cache lock");
        st.touch(d).then(|| self.path(d))
    }

    /// Count a pull of `d` that the hot tier did not serve; returns its recent pulls, this one
    /// included. The counts are an admission filter, kept for at most [`PULL_MEMORY`] layers
    /// (halved when full, so old one-off pulls fade).
    pub fn note_pull(&self, d: &Digest) -> u32 {
        let mut st = self.state.lock().expect("cache lock");
        if st.pulls.len() >= PULL_MEMORY && !st.pulls.contains_key(d) {
            st.pulls.retain(|_, n| {
                *n /= 2;
                *n > 0
            });
        }
        let n = st.pulls.entry(d.clone()).or_default();
        *n += 1;
        *n
    }

    /// Whether a restored layer of `size` bytes pulled `pulls` times is to be kept hot:
    /// pulled more than once, and small enough for the budget.
    pub fn admits(&self, size: u64, pulls: u32) -> bool {
        let budget = self.budget();
        pulls >= 2 && budget > 0 && size <= budget / 2
    }

    /// The budget now, in bytes.
    pub fn budget(&self) -> u64 {
        self.budget.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Raise the budget by `more` bytes (the store grew).
    pub fn grow_budget(&self, more: u64) {
        self.budget
            .fetch_add(more, std::sync::atomic::Ordering::Relaxed);
    }

    /// Change the budget (it follows the store's size), evicting what no longer fits.
    pub fn set_budget(&self, budget: u64) -> io::Result<()> {
        self.budget
            .store(budget, std::sync::atomic::Ordering::Relaxed);
        self.evict(0)
    }

    /// Remove the entries of lowest priority until `incoming` more bytes fit.
    fn evict(&self, incoming: u64) -> io::Result<()> {
        let budget = self.budget();
        let mut st = self.state.lock().expect("cache lock");
        while st.total + incoming > budget && !st.entries.is_empty() {
            let (victim, e) = st
                .entries
                .iter()
                .min_by(|(_, a), (_, b)| {
                    a.priority.total_cmp(&b.priority).then(a.used.cmp(&b.used))
                })
                .map(|(d, e)| (d.clone(), *e))
                .expect("non-empty");
            st.entries.remove(&victim);
            st.total -= e.size;
            st.inflation = st.inflation.max(e.priority);
            match fs::remove_file(self.path(&victim)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// Keep the file at `path` (a layer just verified, durable already) as `d`'s hot copy when
    /// it fits, evicting what saves pulls least; `restore` is about how long re-creating it
    /// takes (its cost: `Recipe::restore_estimate`). False when it does not fit (the caller
    /// removes it). Renamed, not copied: `path` must be on the cache's file system.
    pub fn adopt(
        &self,
        d: &Digest,
        path: &std::path::Path,
        restore: std::time::Duration,
    ) -> io::Result<bool> {
        let size = fs::metadata(path)?.len();
        let budget = self.budget();
        if budget == 0 || size > budget / 2 {
            return Ok(false);
        }
        self.evict(size)?;
        fs::rename(path, self.path(d))?;
        let mut st = self.state.lock().expect("cache lock");
        st.pulls.remove(d);
        st.insert(d.clone(), size, cost_of(size, restore));
        Ok(true)
    }

    /// Drop the cached copy of `d` (its blob was garbage-collected). Returns the bytes freed.
    pub fn remove(&self, d: &Digest) -> io::Result<u64> {
        let mut st = self.state.lock().expect("cache lock");
        let Some(Entry { size, .. }) = st.entries.remove(d) else {
            return Ok(0);
        };
        st.total -= size;
        match fs::remove_file(self.path(d)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(size),
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.state.lock().expect("cache lock").total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn put(c: &LayerCache, dir: &std::path::Path, d: &Digest, bytes: &[u8]) -> bool {
        put_took(c, dir, d, bytes, Duration::from_millis(4))
    }

    fn put_took(
        c: &LayerCache,
        dir: &std::path::Path,
        d: &Digest,
        bytes: &[u8],
        took: Duration,
    ) -> bool {
        let p = dir.join("incoming");
        fs::write(&p, bytes).unwrap();
        let kept = c.adopt(d, &p, took).unwrap();
        let _ = fs::remove_file(&p);
        kept
    }

    #[test]
    fn bounded_lru_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let c = LayerCache::open(dir.path().join("cache"), 1000).unwrap();
        let ds: Vec<Digest> = (0..4u8).map(|i| Digest::sha256_of(&[i])).collect();
        for d in &ds[..2] {
            assert!(put(&c, dir.path(), d, &[1u8; 400]));
        }
        assert!(c.lookup(&ds[0]).is_some()); // ds[1] is now the least recently used
        assert!(put(&c, dir.path(), &ds[2], &[2u8; 400]));
        assert!(c.lookup(&ds[1]).is_none(), "LRU evicted");
        assert!(c.lookup(&ds[0]).is_some() && c.lookup(&ds[2]).is_some());
        assert!(c.bytes() <= 1000);
        let c2 = LayerCache::open(dir.path().join("cache"), 1000).unwrap();
        assert_eq!(c2.bytes(), 800);
        assert!(
            !put(&c2, dir.path(), &ds[3], &[3u8; 600]),
            "larger than half the budget"
        );
        let off = LayerCache::open(dir.path().join("cache"), 0).unwrap();
        assert_eq!(off.bytes(), 0);
        assert_eq!(
            fs::read_dir(dir.path().join("cache/sha256"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn copies_slow_to_restore_outlive_cheap_ones_but_not_forever() {
        let dir = tempfile::tempdir().unwrap();
        let c = LayerCache::open(dir.path().join("cache"), 1000).unwrap();
        let d = |i: u32| Digest::sha256_of(&i.to_le_bytes());
        let (slow, fast) = (Duration::from_secs(1), Duration::from_millis(10));
        assert!(put_took(&c, dir.path(), &d(0), &[0u8; 300], slow));
        assert!(put_took(&c, dir.path(), &d(1), &[1u8; 300], fast));
        assert!(put_took(&c, dir.path(), &d(2), &[2u8; 300], fast));
        // Room for one more: the older of the cheap ones goes, not the oldest.
        assert!(put_took(&c, dir.path(), &d(3), &[3u8; 300], fast));
        assert!(
            c.lookup(&d(1)).is_none(),
            "the least recent cheap copy went"
        );
        assert!(c.lookup(&d(0)).is_some(), "the slow one stays");
        // Cheap copies keep coming and are never used again: the inflation value rises past
        // the slow copy's priority (it is not used again either), and it goes too.
        let mut gone_after = None;
        for i in 4..1000u32 {
            assert!(put_took(&c, dir.path(), &d(i), &[4u8; 300], fast));
            let st = c.state.lock().unwrap();
            if !st.entries.contains_key(&d(0)) {
                gone_after = Some(i);
                break;
            }
        }
        let n = gone_after.expect("a slow copy not used again is evicted eventually");
        // 1 s vs 10 ms for the same size: ~100 cheap generations.
        assert!((50..400).contains(&n), "evicted after {n} cheap copies");
        assert!(c.bytes() <= 1000);
    }

    #[test]
    fn admission_needs_a_second_pull_and_a_budget() {
        let dir = tempfile::tempdir().unwrap();
        let c = LayerCache::open(dir.path().join("cache"), 1000).unwrap();
        let d = Digest::sha256_of(b"layer");
        let first = c.note_pull(&d);
        assert!(!c.admits(100, first), "pulled once");
        assert!(c.admits(100, c.note_pull(&d)), "pulled twice");
        assert!(!c.admits(600, 2), "larger than half the budget");
        let off = LayerCache::open(dir.path().join("off"), 0).unwrap();
        assert!(!off.admits(1, 5));
        // The memory of pulls is bounded: old one-off pulls fade when it is full.
        for i in 0..PULL_MEMORY as u32 + 10 {
            c.note_pull(&Digest::sha256_of(&i.to_le_bytes()));
        }
        assert!(c.state.lock().unwrap().pulls.len() <= PULL_MEMORY);
    }
}
