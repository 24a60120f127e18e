//! The local blob store: the files under `<root>/uploads/` and `<root>/staging/`.
//!
//! # On-disk layout (version 1)
//!
//! ```text
//! <root>/uploads/<upload-id>            bytes of an upload session, appended in order; only the
//!                                       first `UploadRecord::offset` bytes were acknowledged
//! <root>/uploads/staging-<uuid>         a blob being restored into `staging/` (see
//!                                       [`LocalStore::stage_with`]); swept as an orphan
//! <root>/staging/<algorithm>/<hex>      a committed blob, exactly the bytes that were pushed
//! ```
//!
//! Staged blobs are raw content (their digest is their own checksum), so they carry no magic
//! number; every other persisted format of stowage does. Blobs reach `staging/` by an atomic
//! rename of a fully fsynced upload file followed by an fsync of the directory, so a blob is
//! either wholly there or not at all, across `kill -9` and power loss (invariant 2). This is the
//! interface the deduplication pipeline sits behind: a blob leaves `staging/` only when its
//! deduplicated form has been verified (invariant 1).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::names::{Algorithm, Digest, UploadId};

pub struct LocalStore {
    root: PathBuf,
    uploads: PathBuf,
    staging: PathBuf,
}

/// fsync a directory so that a rename or create inside it is durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl LocalStore {
    /// The store at `root`, without creating anything (for offline tools).
    pub fn at(root: &Path) -> LocalStore {
        LocalStore {
            root: root.to_path_buf(),
            uploads: root.join("uploads"),
            staging: root.join("staging"),
        }
    }

    pub fn open(root: &Path) -> io::Result<LocalStore> {
        let uploads = root.join("uploads");
        let staging = root.join("staging");
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            fs::create_dir_all(staging.join(alg.as_str()))?;
        }
        fs::create_dir_all(&uploads)?;
        sync_dir(root)?;
        Ok(LocalStore {
            root: root.to_path_buf(),
            uploads,
            staging,
        })
    }

    pub fn upload_path(&self, id: &UploadId) -> PathBuf {
        self.uploads.join(id.to_string())
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.staging.join(d.algorithm().as_str()).join(d.hex())
    }

    pub fn has_upload(&self, id: &UploadId) -> bool {
        self.upload_path(id).exists()
    }

    /// Create the (empty) file of a new upload session, durably.
    pub fn create_upload(&self, id: &UploadId) -> io::Result<()> {
        File::create(self.upload_path(id))?.sync_all()?;
        sync_dir(&self.uploads)
    }

    /// Open an upload file for appending at `offset`, discarding any unacknowledged bytes past it.
    pub fn open_upload_at(&self, id: &UploadId, offset: u64) -> io::Result<File> {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.upload_path(id))?;
        let len = f.metadata()?.len();
        if len < offset {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("upload {id} holds {len} bytes but {offset} were acknowledged"),
            ));
        }
        if len > offset {
            f.set_len(offset)?;
        }
        f.seek(SeekFrom::Start(offset))?;
        Ok(f)
    }

    /// Hash the first `len` bytes of an upload (to resume after a restart, or for sha512).
    pub fn hash_upload(
        &self,
        id: &UploadId,
        alg: Algorithm,
        len: u64,
    ) -> io::Result<stowage_actors::digest::Hasher> {
        let mut h = alg.hasher();
        let mut f = File::open(self.upload_path(id))?.take(len);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(h)
    }

    pub fn remove_upload(&self, id: &UploadId) -> io::Result<()> {
        match fs::remove_file(self.upload_path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Move a complete, verified upload into `staging/` under its digest, durably. If the blob
    /// is already staged (the same bytes, by digest) the upload file is simply dropped.
    pub fn commit_upload(&self, id: &UploadId, d: &Digest) -> io::Result<()> {
        let from = self.upload_path(id);
        let to = self.blob_path(d);
        if to.exists() {
            return self.remove_upload(id);
        }
        File::open(&from)?.sync_all()?;
        fs::rename(&from, &to)?;
        sync_dir(to.parent().expect("staging path has a parent"))?;
        sync_dir(&self.uploads)
    }

    /// Write a blob into `staging/` durably, from `fill`: into a scratch file under `uploads/`
    /// first (removed on error, and by the orphan sweep after a crash), renamed into place only
    /// once `fill` returned Ok (having checked the digest) and the file is fsynced.
    pub fn stage_with(
        &self,
        d: &Digest,
        fill: &mut dyn FnMut(&mut File) -> io::Result<()>,
    ) -> io::Result<()> {
        let tmp = self
            .uploads
            .join(format!("staging-{}", uuid::Uuid::new_v4().simple()));
        let res = (|| {
            let mut f = File::create(&tmp)?;
            fill(&mut f)?;
            f.sync_all()
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let to = self.blob_path(d);
        fs::rename(&tmp, &to)?;
        sync_dir(to.parent().expect("staging path has a parent"))?;
        sync_dir(&self.uploads)
    }

    /// Open a staged blob, positioned at `offset`.
    pub fn open_blob(&self, d: &Digest, offset: u64) -> io::Result<File> {
        let mut f = File::open(self.blob_path(d))?;
        if offset > 0 {
            f.seek(SeekFrom::Start(offset))?;
        }
        Ok(f)
    }

    /// Every file under `staging/`, with the digest its name gives (None: not a digest).
    pub fn staged_files(&self) -> io::Result<Vec<(PathBuf, Option<Digest>)>> {
        let mut out = Vec::new();
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let dir = self.staging.join(alg.as_str());
            let entries = match fs::read_dir(&dir) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                r => r?,
            };
            for e in entries {
                let path = e?.path();
                let d = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| format!("{}:{n}", alg.as_str()).parse().ok());
                out.push((path, d));
            }
        }
        Ok(out)
    }

    /// Upload files whose names are not in `known` (left by a crash between creating the file
    /// and committing its session, or by an expired session).
    pub fn orphan_uploads(&self, known: &[UploadId]) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.uploads)? {
            let entry = entry?;
            let name = entry.file_name();
            let keep = name
                .to_str()
                .and_then(|n| n.parse::<UploadId>().ok())
                .is_some_and(|id| known.contains(&id));
            if !keep {
                out.push(entry.path());
            }
        }
        Ok(out)
    }

    /// Free and total bytes of the file system holding the root.
    pub fn disk_space(&self) -> io::Result<(u64, u64)> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(self.root.as_os_str().as_bytes())
            .map_err(|_| io::Error::other("path with a NUL byte"))?;
        // SAFETY: statvfs fills the struct it is given; the path is a valid C string.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let frsize = st.f_frsize as u64;
        Ok((st.f_bavail as u64 * frsize, st.f_blocks as u64 * frsize))
    }

    /// Bytes the whole root occupies (apparent sizes, as `du -sb` counts them). Files removed
    /// or renamed while it walks (uploads committed, containers compacted) are skipped.
    pub fn disk_usage(&self) -> io::Result<u64> {
        fn walk(p: &Path) -> io::Result<u64> {
            let gone = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
            let mut total = 0;
            let entries = match fs::read_dir(p) {
                Err(e) if gone(&e) => return Ok(0),
                r => r?,
            };
            for entry in entries {
                let entry = entry?;
                let md = match entry.metadata() {
                    Err(e) if gone(&e) => continue,
                    r => r?,
                };
                total += md.len();
                if md.is_dir() {
                    total += walk(&entry.path())?;
                }
            }
            Ok(total)
        }
        walk(&self.root)
    }
}
