//! Users from an htpasswd file (`user:$2y$...`, bcrypt only, as distribution requires; what
//! `htpasswd -B` writes). The file is read again when it changes (checked at most once a
//! second) or on SIGHUP; a file that fails to read keeps the users loaded before.
//!
//! bcrypt is slow on purpose, and clients send their password with every request, so a
//! verified password is remembered (as its SHA-256, compared in constant time) for
//! [`REMEMBER`]; an unknown user costs one bcrypt check too, so timing does not tell which
//! users exist. Passwords are never logged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

/// How long a verified password is taken without bcrypt.
pub const REMEMBER: Duration = Duration::from_secs(300);
/// How often the file's modification time is looked at.
const STAT_EVERY: Duration = Duration::from_secs(1);
/// Checked against for unknown users (the hash of a random password), so they take as long.
const DUMMY: &str = "$2y$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW";

pub struct Htpasswd {
    path: PathBuf,
    state: Mutex<State>,
    /// Reloads after the first load that took, and that failed (the users before stayed).
    pub reloaded: AtomicU64,
    pub reload_failures: AtomicU64,
}

#[derive(Default)]
struct State {
    users: HashMap<String, String>,
    /// (modified, length) of the file as loaded.
    version: Option<(SystemTime, u64)>,
    checked: Option<Instant>,
    /// user -> (SHA-256 of the password, when verified)
    verified: HashMap<String, ([u8; 32], Instant)>,
}

fn parse(text: &str) -> (HashMap<String, String>, usize) {
    let mut users = HashMap::new();
    let mut skipped = 0;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once(':') {
            Some((u, h))
                if !u.is_empty() && ["$2a$", "$2b$", "$2y$"].iter().any(|p| h.starts_with(p)) =>
            {
                users.insert(u.to_string(), h.to_string());
            }
            _ => skipped += 1,
        }
    }
    (users, skipped)
}

fn version(path: &Path) -> std::io::Result<(SystemTime, u64)> {
    let m = std::fs::metadata(path)?;
    Ok((m.modified()?, m.len()))
}

impl Htpasswd {
    /// Load `path`; an unreadable file is an error at start-up.
    pub fn open(path: &Path) -> anyhow::Result<Htpasswd> {
        let h = Htpasswd {
            path: path.to_path_buf(),
            state: Mutex::new(State::default()),
            reloaded: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        };
        h.load()
            .map_err(|e| anyhow::anyhow!("htpasswd {}: {e}", path.display()))?;
        Ok(h)
    }

    /// Read the file again (on SIGHUP, or when it changed).
    pub fn reload(&self) -> std::io::Result<usize> {
        let r = self.load();
        match &r {
            Ok(_) => self.reloaded.fetch_add(1, Relaxed),
            Err(_) => self.reload_failures.fetch_add(1, Relaxed),
        };
        r
    }

    fn load(&self) -> std::io::Result<usize> {
        let v = version(&self.path)?;
        let text = std::fs::read_to_string(&self.path)?;
        let (users, skipped) = parse(&text);
        if skipped > 0 {
            tracing::warn!(file = %self.path.display(), skipped, "htpasswd lines that are not user:bcrypt-hash were ignored");
        }
        let n = users.len();
        let mut st = self.state.lock().expect("htpasswd lock");
        st.users = users;
        st.version = Some(v);
        st.checked = Some(Instant::now());
        st.verified.clear();
        tracing::info!(file = %self.path.display(), users = n, "htpasswd loaded");
        Ok(n)
    }

    fn refresh(&self) {
        let due = {
            let mut st = self.state.lock().expect("htpasswd lock");
            let due = st.checked.is_none_or(|t| t.elapsed() >= STAT_EVERY);
            if due {
                st.checked = Some(Instant::now());
            }
            due && version(&self.path).ok() != st.version
        };
        if due {
            if let Err(e) = self.reload() {
                tracing::error!(file = %self.path.display(), error = %e, "htpasswd not reloaded; the users loaded before stay");
            }
        }
    }

    /// Whether `user` is in the file (as last read).
    pub fn has_user(&self, user: &str) -> bool {
        self.refresh();
        self.state
            .lock()
            .expect("htpasswd lock")
            .users
            .contains_key(user)
    }

    /// Whether `user` has password `password`.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        self.refresh();
        let key: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        let hash = {
            let st = self.state.lock().expect("htpasswd lock");
            if let Some((k, at)) = st.verified.get(user) {
                if at.elapsed() < REMEMBER && bool::from(k.ct_eq(&key)) {
                    return true;
                }
            }
            st.users.get(user).cloned()
        };
        let ok = match &hash {
            Some(h) => bcrypt::verify(password, h).unwrap_or(false),
            None => {
                let _ = bcrypt::verify(password, DUMMY);
                false
            }
        };
        if ok {
            let mut st = self.state.lock().expect("htpasswd lock");
            // Only if the file did not change meanwhile.
            if st.users.get(user) == hash.as_ref() {
                st.verified.insert(user.to_string(), (key, Instant::now()));
            }
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_bcrypt_users_and_follows_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        let h = bcrypt::hash("s3cret", 4).unwrap();
        std::fs::write(&path, format!("# users\nalice:{h}\nbob:{{SHA}}x\n\n")).unwrap();
        let hp = Htpasswd::open(&path).unwrap();
        assert!(hp.verify("alice", "s3cret"));
        assert!(hp.verify("alice", "s3cret"), "remembered");
        assert!(!hp.verify("alice", "wrong"));
        assert!(!hp.verify("bob", "x"), "non-bcrypt entries are ignored");
        assert!(!hp.verify("nobody", "s3cret"));
        // Changed on disk: the old password stops working.
        let h2 = bcrypt::hash("n3w", 4).unwrap();
        std::fs::write(&path, format!("alice:{h2}\n")).unwrap();
        hp.reload().unwrap();
        assert!(!hp.verify("alice", "s3cret"));
        assert!(hp.verify("alice", "n3w"));
    }

    #[test]
    fn the_dummy_hash_is_a_valid_bcrypt_hash() {
        assert!(bcrypt::verify("x", DUMMY).is_ok());
    }
}
