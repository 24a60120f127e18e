//! A bounded cache of layers' exact bytes, `<root>/cache/<algorithm>/<hex>` (the hot tier):
//! deduplicated layers that were pulled whole, and layers just deduplicated whose pushed bytes
//! are kept (CI pulls what it just pushed), so that the next pull of a hot layer is a file
//! read instead of a restore. Its files are plain layer bytes (their digest is their checksum;
//! whoever serves them re-hashes them on the way out), written to a temporary name, fsynced and
//! renamed into place only after the restore matched the digest. Least recently used entries
//! go first when the configured size would be exceeded; a size of 0 disables the cache. Every
//! byte here counts in the store's `bytes.stored`.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::digest::{Algorithm, Digest};

#[derive(Debug)]
pub struct LayerCache {
    dir: PathBuf,
    budget: u64,
    state: Mutex<State>,
}

#[derive(Default, Debug)]
struct State {
    /// size and last use (a counter) of each cached layer
    entries: HashMap<Digest, (u64, u64)>,
    total: u64,
    clock: u64,
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
                        st.clock += 1;
                        st.total += size;
                        st.entries.insert(digest, (size, st.clock));
                    }
                    // Temporary files of interrupted writes, or everything when disabled.
                    _ => fs::remove_file(e.path())?,
                }
            }
        }
        let cache = Arc::new(LayerCache {
            dir,
            budget,
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
        st.clock += 1;
        let now = st.clock;
        let e = st.entries.get_mut(d)?;
        e.1 = now;
        Some(self.path(d))
    }

    /// A writer for `d` of `size` bytes, when it can fit at all.
    pub fn writer(self: &Arc<Self>, d: &Digest, size: u64) -> Option<CacheWriter> {
        if self.budget == 0 || size > self.budget / 2 {
            return None;
        }
        let tmp = self.dir.join(d.algorithm().as_str()).join(format!(
            "{}.tmp-{}",
            d.hex(),
            std::process::id()
        ));
        let file = File::create(&tmp).ok()?;
        Some(CacheWriter {
            cache: self.clone(),
            digest: d.clone(),
            tmp,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            written: 0,
        })
    }

    /// Remove least recently used entries until `incoming` more bytes fit.
    fn evict(&self, incoming: u64) -> io::Result<()> {
        let mut st = self.state.lock().expect("cache lock");
        while st.total + incoming > self.budget && !st.entries.is_empty() {
            let (victim, (size, _)) = st
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(d, v)| (d.clone(), *v))
                .expect("non-empty");
            st.entries.remove(&victim);
            st.total -= size;
            match fs::remove_file(self.path(&victim)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// Keep the file at `path` (a pushed layer just deduplicated and verified, durable already)
    /// as `d`'s hot copy when it fits, evicting the least recently used; false when it does not
    /// fit (the caller removes it). Renamed, not copied: `path` must be on the cache's file
    /// system.
    pub fn adopt(&self, d: &Digest, path: &std::path::Path) -> io::Result<bool> {
        let size = fs::metadata(path)?.len();
        if self.budget == 0 || size > self.budget / 2 {
            return Ok(false);
        }
        self.evict(size)?;
        fs::rename(path, self.path(d))?;
        let mut st = self.state.lock().expect("cache lock");
        st.clock += 1;
        let now = st.clock;
        if let Some((old, _)) = st.entries.insert(d.clone(), (size, now)) {
            st.total -= old;
        }
        st.total += size;
        Ok(true)
    }

    /// Drop the cached copy of `d` (its blob was garbage-collected). Returns the bytes freed.
    pub fn remove(&self, d: &Digest) -> io::Result<u64> {
        let mut st = self.state.lock().expect("cache lock");
        let Some((size, _)) = st.entries.remove(d) else {
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

/// Writes one restored layer into the cache; only [`CacheWriter::commit`] makes it visible.
/// Dropped without commit, it removes its temporary file.
pub struct CacheWriter {
    cache: Arc<LayerCache>,
    digest: Digest,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    written: u64,
}

impl CacheWriter {
    pub fn write(&mut self, b: &[u8]) {
        if let Some(o) = self.out.as_mut() {
            if o.write_all(b).is_err() {
                self.out = None;
            } else {
                self.written += b.len() as u64;
            }
        }
    }

    /// The layer matched its digest: make it durable and visible, evicting as needed.
    pub fn commit(mut self) -> io::Result<()> {
        let Some(out) = self.out.take() else {
            return Err(io::Error::other("cache write failed earlier"));
        };
        let f = out.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        self.cache.evict(self.written)?;
        let dest = self.cache.path(&self.digest);
        fs::rename(&self.tmp, &dest)?;
        let mut st = self.cache.state.lock().expect("cache lock");
        st.clock += 1;
        let now = st.clock;
        if let Some((old, _)) = st.entries.insert(self.digest.clone(), (self.written, now)) {
            st.total -= old;
        }
        st.total += self.written;
        Ok(())
    }
}

impl Drop for CacheWriter {
    fn drop(&mut self) {
        if self.tmp.exists() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_lru_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let c = LayerCache::open(dir.path().to_path_buf(), 1000).unwrap();
        let ds: Vec<Digest> = (0..4u8).map(|i| Digest::sha256_of(&[i])).collect();
        for d in &ds[..2] {
            let mut w = c.writer(d, 400).unwrap();
            w.write(&[1u8; 400]);
            w.commit().unwrap();
        }
        assert!(c.lookup(&ds[0]).is_some()); // ds[1] is now the least recently used
        let mut w = c.writer(&ds[2], 400).unwrap();
        w.write(&[2u8; 400]);
        w.commit().unwrap();
        assert!(c.lookup(&ds[1]).is_none(), "LRU evicted");
        assert!(c.lookup(&ds[0]).is_some() && c.lookup(&ds[2]).is_some());
        assert!(c.bytes() <= 1000);
        // An abandoned write leaves nothing.
        let mut w = c.writer(&ds[3], 100).unwrap();
        w.write(b"partial");
        drop(w);
        assert!(c.lookup(&ds[3]).is_none());
        let c2 = LayerCache::open(dir.path().to_path_buf(), 1000).unwrap();
        assert_eq!(c2.bytes(), 800);
        assert!(
            c2.writer(&ds[3], 600).is_none(),
            "larger than half the budget"
        );
        let off = LayerCache::open(dir.path().to_path_buf(), 0).unwrap();
        assert_eq!(off.bytes(), 0);
        assert_eq!(fs::read_dir(dir.path().join("sha256")).unwrap().count(), 0);
    }
}
