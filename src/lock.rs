//! One process per data directory.
//!
//! `serve`, `fsck` and `compact` hold an exclusive flock(2) on `<root>/lock` for as long as
//! they run; a second one on the same directory stops with an error naming the holder's pid
//! (written into the file). Two servers on one directory would each resume the other's
//! pending layers and sweep the other's uploads, and `compact` replaces the metadata file,
//! which no other process may have open. The kernel drops the lock when its holder exits,
//! `kill -9` included, so a stale lock file never blocks a restart.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

/// Held until dropped.
pub struct RootLock {
    _file: File,
}

impl RootLock {
    pub fn acquire(root: &Path) -> anyhow::Result<RootLock> {
        std::fs::create_dir_all(root)?;
        let path = root.join("lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::WouldBlock {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                anyhow::bail!(
                    "{} is in use by another stowage process (pid {})",
                    root.display(),
                    pid.trim()
                );
            }
            anyhow::bail!("locking {}: {err}", path.display());
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        Ok(RootLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = RootLock::acquire(dir.path()).unwrap();
        let err = RootLock::acquire(dir.path()).err().unwrap().to_string();
        assert!(
            err.contains(&format!(
                "in use by another stowage process (pid {})",
                std::process::id()
            )),
            "{err}"
        );
        drop(first);
        RootLock::acquire(dir.path()).unwrap();
    }
}
