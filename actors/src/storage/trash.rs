//! Deferred deletion of objects: what garbage collection removes from the bucket goes into a
//! trash record first, and is deleted only once the record is older than a grace period, so a
//! node still reading by an older index (a replica that has not applied the collection yet, a
//! restore under way) finds every object it may still ask for.
//!
//! # Objects (magic `stowage-trash 1`)
//!
//! `trash/<unix milliseconds, 16 digits>-<a name no other process picks>`: the text `stowage-trash 1`, a newline, then
//! one object key per line. A record is written whole (one put); emptying the trash deletes the
//! keys of every record written more than the grace period ago, then the record.

use std::collections::HashSet;
use std::io;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::blocking::BlockingBucket;

const PREFIX: &str = "trash";
const MAGIC: &str = "stowage-trash 1";

/// Schedules `keys` for deletion.
pub fn defer(bucket: &BlockingBucket, keys: &[String]) -> io::Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut text = String::from(MAGIC);
    for k in keys {
        text.push('\n');
        text.push_str(k);
    }
    let millis = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let key = format!("{PREFIX}/{millis:016}-{}", super::uuid_like());
    let body = Bytes::from(text);
    bucket.call(|b| async move { b.put(&key, body).await })
}

fn keys_of(record: &[u8]) -> io::Result<Vec<String>> {
    let text =
        std::str::from_utf8(record).map_err(|_| io::Error::other("a trash record is not UTF-8"))?;
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC) {
        return Err(io::Error::other("not a trash record"));
    }
    Ok(lines
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// The records, each with whether it is older than `grace`.
fn records(bucket: &BlockingBucket, grace: Duration) -> io::Result<Vec<(String, bool)>> {
    let listed = bucket.call(|b| async move { b.list(PREFIX).await })?;
    let now = SystemTime::now();
    Ok(listed
        .into_iter()
        .map(|l| {
            let old = now.duration_since(l.modified).unwrap_or_default() >= grace;
            (l.key, old)
        })
        .collect())
}

fn read(bucket: &BlockingBucket, key: &str) -> io::Result<Vec<String>> {
    let k = key.to_string();
    keys_of(&bucket.call(|b| async move { b.get(&k).await })?)
}

/// Deletes what the records older than `grace` hold, and those records; returns how many
/// objects went.
pub fn empty(bucket: &BlockingBucket, grace: Duration) -> io::Result<usize> {
    let mut n = 0;
    for (record, old) in records(bucket, grace)? {
        if !old {
            continue;
        }
        let keys = read(bucket, &record)?;
        n += keys.len();
        bucket.call(|b| async move { b.delete(&keys).await })?;
        bucket.call(|b| async move { b.delete(&[record]).await })?;
    }
    Ok(n)
}

/// Every key waiting in the trash.
pub fn pending(bucket: &BlockingBucket) -> io::Result<HashSet<String>> {
    let mut out = HashSet::new();
    for (record, _) in records(bucket, Duration::ZERO)? {
        out.extend(read(bucket, &record)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Bucket, Location, S3Options};
    use std::sync::Arc;

    #[test]
    fn deferred_objects_stay_until_their_record_is_old_enough() {
        let dir = tempfile::tempdir().unwrap();
        let b = Bucket::open(
            &Location::Local(dir.path().to_path_buf()),
            &S3Options::default(),
        )
        .unwrap();
        let b = BlockingBucket::new(Arc::new(b)).unwrap();
        for k in ["containers/a", "containers/b"] {
            let k = k.to_string();
            b.call(|b| async move { b.put(&k, Bytes::from_static(b"x")).await })
                .unwrap();
        }
        defer(&b, &["containers/a".into(), "containers/b".into()]).unwrap();
        assert_eq!(
            pending(&b).unwrap(),
            HashSet::from(["containers/a".to_string(), "containers/b".to_string()])
        );
        assert_eq!(empty(&b, Duration::from_secs(3600)).unwrap(), 0);
        assert!(b
            .call(|b| async move { b.head("containers/a").await })
            .unwrap()
            .is_some());
        assert_eq!(empty(&b, Duration::ZERO).unwrap(), 2);
        assert!(b
            .call(|b| async move { b.head("containers/a").await })
            .unwrap()
            .is_none());
        assert!(pending(&b).unwrap().is_empty());
        assert!(keys_of(b"something else\nx").is_err());
    }
}
