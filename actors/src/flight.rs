//! Single-flight restores through a spool file, `<root>/cache/spool/<hex>-<n>.spool`.
//!
//! A deduplicated layer being pulled is restored once, however many clients ask for it at the
//! same time: the first request starts a [`Flight`] and every later one joins it. The restore
//! thread writes the layer's exact bytes into the flight's spool file at the re-encoder's pace
//! and publishes how far it got; each reader reads the file at its own pace from its own
//! offset (Range requests included). A slow or stalled client therefore holds an open file,
//! never a restore thread, and the others are not held up by it.
//!
//! Invariant 1 holds for every reader: the last byte of the layer is handed out only once the
//! restore matched the digest ([`Progress::Done`]); on a mismatch or a failure every reader
//! gets an error instead of it, so no response completes with wrong bytes.
//!
//! Life of a spool file: created (empty) with the flight; when the restore matches, it is
//! either adopted by the hot tier (renamed into `cache/<alg>/<hex>`) or, when a manifest GET
//! announced a pull that has not come yet ([`Flights::expect`]), kept until it has come or
//! [`LINGER`] has passed; otherwise, and on failure, it is unlinked. A flight leaves the map
//! before its file is renamed or unlinked, and readers open the file while they join under the
//! map's lock, so a reader always holds an open descriptor of the right bytes (an unlinked
//! file stays readable through it). A flight nobody reads any more, expected by no one and not
//! wanted by the hot tier stops its restore. Spool files are plain bytes with no header: they
//! are temporary, never trusted across a restart (removed at start-up), and while they exist
//! they count in the store's bytes like any file under the root.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{
    AtomicBool, AtomicU64, AtomicUsize,
    Ordering::{Relaxed, SeqCst},
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use crate::digest::Digest;

/// How long a restored layer announced by a manifest GET waits for its blob GETs.
pub const LINGER: Duration = Duration::from_secs(30);
/// Size of the pieces a reader reads from the spool.
pub const PIECE: usize = 256 * 1024;
/// Flights at a time (running, paused or waiting for a restore thread); a pull that would
/// start one more is refused with 429 until some finish.
pub const MAX_FLIGHTS: usize = 64;
/// How far a restore may run ahead of its fastest reader while other restores run or wait;
/// beyond that it yields its thread until its readers catch up or nothing else runs (see
/// `restore`). Small, since the kernel's socket buffers already hold a few MiB a slow client
/// has not read.
pub const AHEAD: u64 = 2 << 20;
/// A paused restore whose readers took nothing for this long is given up (they get an error).
pub const IDLE: Duration = Duration::from_secs(300);
/// How much of a layer a restore announced by a manifest GET writes before a pull of it comes:
/// a client that has the layer already never asks, and a wrong guess should cost little. The
/// restore then waits up to [`LINGER`] for the pull, and goes on when it comes.
pub const ANNOUNCED_HEAD: u64 = 4 << 20;

/// How far a flight got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Bytes written so far (not yet verified).
    Written(u64),
    /// The whole layer is in the spool and matched its digest.
    Done,
    /// The restore failed or did not match: readers must abort.
    Failed(String),
}

/// One layer being restored into its spool file.
#[derive(Debug)]
pub struct Flight {
    pub digest: Digest,
    pub size: u64,
    path: PathBuf,
    progress: watch::Sender<Progress>,
    /// Readers attached now.
    readers: AtomicUsize,
    /// Pulls announced by manifest GETs that have not joined yet.
    expected: AtomicUsize,
    /// The hot tier will keep the result: finish even when nobody reads.
    pub wanted: AtomicBool,
    /// Every reader that ever joined (pulls served by this one restore).
    joined: AtomicU64,
    done_at: Mutex<Option<Instant>>,
    /// The furthest any reader got, when, and a condition a paused restore waits on.
    read_upto: AtomicU64,
    last_read: Mutex<Instant>,
    wake: std::sync::Condvar,
}

impl Flight {
    /// The spool file, for the restore thread to write.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Nobody reads, expects or wants the result any more.
    pub fn abandoned(&self) -> bool {
        // SeqCst with the updates in `Flights::join`: a reader counted there is seen here
        // before the announced pull it claimed stops counting.
        self.readers.load(SeqCst) == 0
            && self.expected.load(SeqCst) == 0
            && !self.wanted.load(SeqCst)
    }

    /// Readers that joined so far.
    pub fn joined(&self) -> u64 {
        self.joined.load(Relaxed)
    }

    /// Publish progress (the restore thread, after each piece reached the file).
    pub fn publish(&self, p: Progress) {
        self.progress.send_replace(p);
    }

    fn finished(&self) -> bool {
        matches!(
            *self.progress.borrow(),
            Progress::Done | Progress::Failed(_)
        )
    }

    /// The furthest byte any reader has taken.
    pub fn read_upto(&self) -> u64 {
        self.read_upto.load(Relaxed)
    }

    fn advance(&self, upto: u64) {
        self.read_upto.fetch_max(upto, Relaxed);
        *self.last_read.lock().expect("flight lock") = Instant::now();
        self.wake.notify_all();
    }

    /// Announced by a manifest GET and not joined by any pull yet (nor wanted by the hot tier).
    pub fn unclaimed(&self) -> bool {
        self.joined() == 0 && !self.wanted.load(Relaxed)
    }

    /// For a paused restore: wait until a reader reaches `upto`, or `resume()` says to go on
    /// (checked every 100 ms), or nobody reads any more. False when the readers took nothing
    /// for `give_up` (since the flight began, when nobody has read yet): the restore should
    /// give up.
    pub fn wait_for_readers(
        &self,
        upto: u64,
        resume: impl Fn() -> bool,
        give_up: Duration,
    ) -> bool {
        let mut g = self.last_read.lock().expect("flight lock");
        loop {
            if self.read_upto() >= upto || resume() || self.abandoned() {
                return true;
            }
            if g.elapsed() >= give_up {
                return false;
            }
            g = self
                .wake
                .wait_timeout(g, Duration::from_millis(100))
                .expect("flight lock")
                .0;
        }
    }
}

/// The flights under way (and restored layers waiting for announced pulls).
#[derive(Debug)]
pub struct Flights {
    dir: PathBuf,
    map: Mutex<HashMap<Digest, Arc<Flight>>>,
    seq: AtomicU64,
    /// Restores started, and readers that joined a restore someone else started.
    pub started: AtomicU64,
    pub joins: AtomicU64,
}

/// What [`Flights::join`] found.
pub enum Joined {
    /// A new flight: the caller must start its restore (and the reader is its first reader).
    Started(Arc<Flight>, FlightReader),
    /// A flight already under way or lingering.
    Attached(FlightReader),
}

impl Flights {
    /// Open the spool directory, removing what an earlier run left there.
    pub fn open(dir: PathBuf) -> io::Result<Arc<Flights>> {
        std::fs::create_dir_all(&dir)?;
        for e in std::fs::read_dir(&dir)? {
            std::fs::remove_file(e?.path())?;
        }
        Ok(Arc::new(Flights {
            dir,
            map: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            started: AtomicU64::new(0),
            joins: AtomicU64::new(0),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Arc<Flight>>> {
        self.map.lock().expect("flights lock")
    }

    fn create(
        &self,
        map: &HashMap<Digest, Arc<Flight>>,
        d: &Digest,
        size: u64,
    ) -> io::Result<Arc<Flight>> {
        if map.len() >= MAX_FLIGHTS {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{MAX_FLIGHTS} layers are being restored already"),
            ));
        }
        let n = self.seq.fetch_add(1, Relaxed);
        let path = self.dir.join(format!("{}-{n}.spool", d.hex()));
        File::create(&path)?;
        self.started.fetch_add(1, Relaxed);
        Ok(Arc::new(Flight {
            digest: d.clone(),
            size,
            path,
            progress: watch::channel(Progress::Written(0)).0,
            readers: AtomicUsize::new(0),
            expected: AtomicUsize::new(0),
            wanted: AtomicBool::new(false),
            joined: AtomicU64::new(0),
            done_at: Mutex::new(None),
            read_upto: AtomicU64::new(0),
            last_read: Mutex::new(Instant::now()),
            wake: std::sync::Condvar::new(),
        }))
    }

    /// Join the flight of `d` (`size` bytes), or start one.
    pub fn join(&self, d: &Digest, size: u64) -> io::Result<Joined> {
        let mut map = self.lock();
        self.prune_locked(&mut map);
        if let Some(f) = map.get(d) {
            let f = f.clone();
            // The reader counts before the announced pull it claims stops counting: the
            // restore thread, which reads both without this lock, must never see neither and
            // stop a restore someone is joining.
            let reader = FlightReader::open(f.clone())?;
            let _ = f
                .expected
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1));
            self.joins.fetch_add(1, Relaxed);
            if f.finished() && f.expected.load(Relaxed) == 0 {
                // Every announced pull has come: the file goes once its readers have it open.
                map.remove(d);
                let _ = std::fs::remove_file(&f.path);
            }
            return Ok(Joined::Attached(reader));
        }
        let f = self.create(&map, d, size)?;
        let reader = FlightReader::open(f.clone())?;
        map.insert(d.clone(), f.clone());
        Ok(Joined::Started(f, reader))
    }

    /// A manifest GET announced a pull of `d`: start its restore unless one is under way (then
    /// only note that a pull is announced). Returns the new flight the caller must start.
    ///
    /// At most one pull is pending per layer: a client may fetch a manifest more than once
    /// before its blobs, and a restored layer kept for pulls that never come costs disk. Pulls
    /// arriving together join the restore while it runs anyway.
    pub fn expect(&self, d: &Digest, size: u64) -> io::Result<Option<Arc<Flight>>> {
        let mut map = self.lock();
        self.prune_locked(&mut map);
        if let Some(f) = map.get(d) {
            f.expected.store(1, Relaxed);
            return Ok(None);
        }
        let f = self.create(&map, d, size)?;
        f.expected.store(1, Relaxed);
        map.insert(d.clone(), f.clone());
        Ok(Some(f))
    }

    /// Whether `f` is abandoned (nobody reads, expects or wants it); if so it leaves the map
    /// at once. Decided under the lock [`Flights::join`] counts its readers under, so a pull
    /// arriving as the restore stops starts a flight of its own: checked without the lock, a
    /// pull could join between the check and [`Flights::finish`] and get the stopping
    /// restore's error after its response had begun.
    pub fn leave_if_abandoned(&self, f: &Arc<Flight>) -> bool {
        let mut map = self.lock();
        if f.abandoned() {
            Self::forget(&mut map, f);
            true
        } else {
            false
        }
    }

    /// Whether a flight of `d` exists (under way, queued or lingering for its pulls).
    pub fn has(&self, d: &Digest) -> bool {
        self.lock().contains_key(d)
    }

    /// Flights not yet finished (restores under way or queued).
    pub fn running(&self) -> usize {
        self.lock().values().filter(|f| !f.finished()).count()
    }

    /// The restore of `f` ended. On success, `adopt` may take the spool file (the hot tier
    /// renames it; it returns whether it did). Otherwise the file lingers for announced pulls,
    /// or goes.
    pub fn finish(
        &self,
        f: &Arc<Flight>,
        result: Result<(), String>,
        adopt: impl FnOnce(&Path) -> bool,
    ) {
        match result {
            Ok(()) => {
                let lingers = {
                    let mut map = self.lock();
                    f.publish(Progress::Done);
                    *f.done_at.lock().expect("flight lock") = Some(Instant::now());
                    let lingers = f.expected.load(Relaxed) > 0 && !f.wanted.load(Relaxed);
                    if !lingers {
                        Self::forget(&mut map, f);
                    }
                    lingers
                };
                if !lingers && !adopt(&f.path) {
                    let _ = std::fs::remove_file(&f.path);
                }
            }
            Err(e) => {
                let mut map = self.lock();
                f.publish(Progress::Failed(e));
                Self::forget(&mut map, f);
                let _ = std::fs::remove_file(&f.path);
            }
        }
    }

    fn forget(map: &mut HashMap<Digest, Arc<Flight>>, f: &Arc<Flight>) {
        if map.get(&f.digest).is_some_and(|g| Arc::ptr_eq(g, f)) {
            map.remove(&f.digest);
        }
    }

    /// Drop restored layers whose announced pulls did not come within [`LINGER`].
    pub fn prune(&self) {
        let mut map = self.lock();
        self.prune_locked(&mut map);
    }

    fn prune_locked(&self, map: &mut HashMap<Digest, Arc<Flight>>) {
        map.retain(|_, f| {
            let expired = f
                .done_at
                .lock()
                .expect("flight lock")
                .is_some_and(|t| t.elapsed() >= LINGER);
            if expired {
                let _ = std::fs::remove_file(&f.path);
            }
            !expired
        });
    }

    /// Bytes in spool files now.
    pub fn spool_bytes(&self) -> u64 {
        std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}

/// One reader of a flight: its own descriptor of the spool file and its own pace.
pub struct FlightReader {
    flight: Arc<Flight>,
    file: Arc<File>,
    rx: watch::Receiver<Progress>,
}

impl FlightReader {
    fn open(flight: Arc<Flight>) -> io::Result<FlightReader> {
        let file = Arc::new(File::open(&flight.path)?);
        flight.readers.fetch_add(1, SeqCst);
        flight.joined.fetch_add(1, Relaxed);
        let rx = flight.progress.subscribe();
        Ok(FlightReader { flight, file, rx })
    }

    pub fn flight(&self) -> &Arc<Flight> {
        &self.flight
    }

    /// The next piece of the layer from `pos`, not past `end`: waits while the restore has not
    /// got there. The layer's last byte only comes once the digest matched. `None` at `end`.
    pub async fn read(&mut self, pos: u64, end: u64) -> io::Result<Option<Bytes>> {
        let size = self.flight.size;
        let end = end.min(size);
        loop {
            if pos >= end {
                return Ok(None);
            }
            let ready = match &*self.rx.borrow_and_update() {
                Progress::Done => size,
                // Held back until verified: everything but the last byte.
                Progress::Written(n) => (*n).min(size.saturating_sub(1)),
                Progress::Failed(e) => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e.clone()))
                }
            };
            let upto = ready.min(end);
            if pos < upto {
                let len = ((upto - pos) as usize).min(PIECE);
                let file = self.file.clone();
                let piece = tokio::task::spawn_blocking(move || -> io::Result<Vec<u8>> {
                    let mut buf = vec![0u8; len];
                    file.read_exact_at(&mut buf, pos)?;
                    Ok(buf)
                })
                .await
                .map_err(io::Error::other)??;
                self.flight.advance(pos + len as u64);
                return Ok(Some(Bytes::from(piece)));
            }
            if self.rx.changed().await.is_err() {
                return Err(io::Error::other("restore ended without a result"));
            }
        }
    }
}

impl Drop for FlightReader {
    fn drop(&mut self) {
        self.flight.readers.fetch_sub(1, Relaxed);
        self.flight.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    async fn read_all(r: &mut FlightReader, start: u64, end: u64) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut pos = start;
        while let Some(b) = r.read(pos, end).await? {
            pos += b.len() as u64;
            out.extend_from_slice(&b);
        }
        Ok(out)
    }

    #[test]
    fn readers_share_one_restore_and_get_the_last_byte_only_when_verified() {
        let dir = tempfile::tempdir().unwrap();
        let flights = Flights::open(dir.path().join("spool")).unwrap();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let d = Digest::sha256_of(&data);
        let Joined::Started(f, mut r1) = flights.join(&d, data.len() as u64).unwrap() else {
            panic!("first join starts")
        };
        let Joined::Attached(mut r2) = flights.join(&d, data.len() as u64).unwrap() else {
            panic!("second join attaches")
        };
        assert_eq!(flights.started.load(Relaxed), 1);
        // Everything written but not verified: a reader gets all but the last byte.
        std::fs::write(f.path(), &data).unwrap();
        f.publish(Progress::Written(data.len() as u64));
        let rt = rt();
        let mut head = Vec::new();
        let mut pos = 0;
        while (pos as usize) < data.len() - 1 {
            let b = rt.block_on(r1.read(pos, u64::MAX)).unwrap().unwrap();
            pos += b.len() as u64;
            head.extend_from_slice(&b);
        }
        assert_eq!(head, data[..data.len() - 1]);
        flights.finish(&f, Ok(()), |_| false);
        let rest = rt.block_on(read_all(&mut r1, pos, u64::MAX)).unwrap();
        assert_eq!(rest, data[data.len() - 1..]);
        // A range reader, after the file was unlinked: its descriptor still reads.
        assert!(!f.path().exists());
        let range = rt.block_on(read_all(&mut r2, 1000, 5000)).unwrap();
        assert_eq!(range, data[1000..5000]);
        // The flight is gone: the next pull starts another.
        assert!(matches!(
            flights.join(&d, data.len() as u64).unwrap(),
            Joined::Started(..)
        ));
    }

    #[test]
    fn a_failed_restore_aborts_every_reader_before_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let flights = Flights::open(dir.path().join("spool")).unwrap();
        let d = Digest::sha256_of(b"x");
        let Joined::Started(f, mut r) = flights.join(&d, 10).unwrap() else {
            panic!()
        };
        std::fs::write(f.path(), b"0123456789").unwrap();
        f.publish(Progress::Written(10));
        flights.finish(&f, Err("digest mismatch".into()), |_| false);
        let rt = rt();
        let mut pos = 0;
        let err = loop {
            match rt.block_on(r.read(pos, u64::MAX)) {
                Ok(Some(b)) => pos += b.len() as u64,
                Ok(None) => panic!("completed with unverified bytes"),
                Err(e) => break e,
            }
        };
        assert!(pos < 10, "the last byte was never served");
        assert!(err.to_string().contains("mismatch"));
        assert_eq!(
            std::fs::read_dir(dir.path().join("spool")).unwrap().count(),
            0
        );
    }

    #[test]
    fn an_announced_pull_keeps_a_restored_layer_until_it_comes() {
        let dir = tempfile::tempdir().unwrap();
        let flights = Flights::open(dir.path().join("spool")).unwrap();
        let d = Digest::sha256_of(b"layer");
        let f = flights.expect(&d, 5).unwrap().expect("new flight");
        assert!(
            flights.expect(&d, 5).unwrap().is_none(),
            "second announcement"
        );
        assert!(!f.abandoned());
        std::fs::write(f.path(), b"layer").unwrap();
        flights.finish(&f, Ok(()), |_| false);
        assert!(f.path().exists(), "lingers for the announced pull");
        let rt = rt();
        let Joined::Attached(mut r) = flights.join(&d, 5).unwrap() else {
            panic!("attaches to the restored layer")
        };
        assert_eq!(rt.block_on(read_all(&mut r, 0, 5)).unwrap(), b"layer");
        assert!(
            !f.path().exists(),
            "gone once it came: one pull pending at most"
        );
        assert_eq!(flights.started.load(Relaxed), 1);
        assert_eq!(f.joined(), 1);
    }

    #[test]
    fn a_flight_nobody_reads_is_abandoned() {
        let dir = tempfile::tempdir().unwrap();
        let flights = Flights::open(dir.path().join("spool")).unwrap();
        let d = Digest::sha256_of(b"y");
        let Joined::Started(f, r) = flights.join(&d, 10).unwrap() else {
            panic!()
        };
        assert!(!f.abandoned());
        drop(r);
        assert!(f.abandoned());
        f.wanted.store(true, Relaxed);
        assert!(!f.abandoned(), "the hot tier wants it");
    }

    /// A pull arriving as a restore nobody reads stops never joins the stopping restore: it
    /// either counts as a reader before the restore looks (which then goes on), or finds the
    /// flight gone and starts its own.
    #[test]
    fn a_pull_never_joins_a_restore_that_is_stopping() {
        let dir = tempfile::tempdir().unwrap();
        let flights = Flights::open(dir.path().join("spool")).unwrap();
        let d = Digest::sha256_of(b"z");
        let Joined::Started(f, r) = flights.join(&d, 10).unwrap() else {
            panic!()
        };
        drop(r);
        // A reader joins before the restore looks: it goes on.
        let Joined::Attached(r2) = flights.join(&d, 10).unwrap() else {
            panic!("joins the flight under way")
        };
        assert!(!flights.leave_if_abandoned(&f));
        assert!(flights.has(&d));
        drop(r2);
        // Nobody reads: the flight leaves at once, and the next pull starts a new one.
        assert!(flights.leave_if_abandoned(&f));
        assert!(!flights.has(&d));
        let Joined::Started(g, _r3) = flights.join(&d, 10).unwrap() else {
            panic!("a new flight, not the stopping one")
        };
        assert!(!Arc::ptr_eq(&f, &g));
        // The stopped restore's end fails its own flight only.
        flights.finish(&f, Err("nobody reads it any more".into()), |_| false);
        assert!(flights.has(&d));
        assert!(g.path().exists());
    }
}
