//! Real files from this machine as test data, shared by the engine's integration tests and,
//! through `#[path]`, by the server's (`tests/common`).

use std::path::PathBuf;

/// Real files from this machine, concatenated (depth first, sorted) up to `limit` bytes.
pub fn files_under(dirs: &[&str], limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = dirs.iter().rev().map(PathBuf::from).collect();
    while let Some(p) = stack.pop() {
        if out.len() >= limit {
            break;
        }
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&p)
                .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            entries.sort();
            entries.reverse();
            stack.extend(entries);
        } else if meta.is_file() {
            if let Ok(b) = std::fs::read(&p) {
                out.extend_from_slice(&b);
            }
        }
    }
    out.truncate(limit);
    out
}
