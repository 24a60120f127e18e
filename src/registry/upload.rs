//! Blob upload sessions: monolithic, chunked (PATCH with or without Content-Range), resumable
//! (status via GET, survives restarts), cancellable, and expired when abandoned.
//!
//! A session is an LMDB [`UploadRecord`] plus a file under `uploads/`. Every acknowledged
//! chunk is fsynced and its new offset committed before the 202 goes out (invariant 2). The
//! running sha256 lives in memory between chunks; after a restart it is recomputed from the
//! file. Requests on one session are serialized by a per-session async lock.
//!
//! With a bucket, each acknowledged chunk is also an object `uploads/<id>/<start>` (written
//! before the commit of its offset) and the session record is journaled: a node that lost its
//! data directory finds the session again (its file rebuilt from the chunks at start) and the
//! client resumes where it was. A blob pushed in one request is then copied inside the store
//! to its own object, not sent again.

use std::collections::HashMap;
use std::fmt::Display;
use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

use super::{blocking, Registry};
use crate::error::{RegistryError, Result};
use crate::meta::{now, UploadRecord};
use crate::names::{Algorithm, Digest, RepoName, UploadId};
use stowage_actors::digest::Hasher;

/// Bytes gathered from the request before one write to disk.
const WRITE_BATCH: usize = 1 << 20;

#[derive(Default)]
pub(crate) struct SessionState {
    /// The sha256 of the first `.0` bytes of the upload.
    hasher: Option<(u64, Hasher)>,
}

pub(crate) type Sessions = Mutex<HashMap<UploadId, Arc<tokio::sync::Mutex<SessionState>>>>;

/// Where an upload session stands.
pub struct UploadStatus {
    pub id: UploadId,
    /// Bytes received and acknowledged.
    pub offset: u64,
}

impl Registry {
    fn session(&self, id: &UploadId) -> Arc<tokio::sync::Mutex<SessionState>> {
        let mut map = self.inner.sessions.lock().expect("session map poisoned");
        map.entry(*id).or_default().clone()
    }

    fn forget_session(&self, id: &UploadId) {
        self.inner
            .sessions
            .lock()
            .expect("session map poisoned")
            .remove(id);
    }

    fn upload_record(&self, repo: &RepoName, id: &UploadId) -> Result<UploadRecord> {
        let m = &self.inner.meta;
        let t = m.read()?;
        match m.upload(&t, id)? {
            Some(rec) if &rec.repo == repo => Ok(rec),
            _ => Err(RegistryError::BlobUploadUnknown),
        }
    }

    /// Open a new upload session in `repo`, for `owner` (with authentication on).
    pub async fn start_upload(&self, repo: &RepoName, owner: Option<&str>) -> Result<UploadStatus> {
        let id = UploadId::new();
        let inner = self.inner.clone();
        let repo = repo.clone();
        let owner = owner.map(str::to_string);
        blocking(move || {
            inner.store.create_upload(&id)?;
            let mut w = inner.meta.write()?;
            let t = now();
            inner.meta.put_upload(
                &mut w,
                &id,
                &UploadRecord {
                    repo,
                    created: t,
                    updated: t,
                    offset: 0,
                    owner,
                },
            )?;
            w.commit()?;
            Ok(())
        })
        .await?;
        Ok(UploadStatus { id, offset: 0 })
    }

    /// Who started upload `id` in `repo` (with authentication on).
    pub fn upload_owner(&self, repo: &RepoName, id: &UploadId) -> Result<Option<String>> {
        Ok(self.upload_record(repo, id)?.owner)
    }

    pub fn upload_status(&self, repo: &RepoName, id: &UploadId) -> Result<UploadStatus> {
        let rec = self.upload_record(repo, id)?;
        Ok(UploadStatus {
            id: *id,
            offset: rec.offset,
        })
    }

    /// Append a chunk. `start` is the first byte of a Content-Range (which must equal the bytes
    /// received so far), `len` the declared length of the chunk.
    pub async fn patch_upload<S, E>(
        &self,
        repo: &RepoName,
        id: &UploadId,
        start: Option<u64>,
        len: Option<u64>,
        body: S,
    ) -> Result<UploadStatus>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let sess = self.session(id);
        let mut st = sess.lock().await;
        let mut rec = self.upload_record(repo, id)?;
        self.append_locked(&mut st, id, &mut rec, start, len, body)
            .await?;
        Ok(UploadStatus {
            id: *id,
            offset: rec.offset,
        })
    }

    /// Complete an upload: append the final chunk (if any), verify the digest, move the blob
    /// into the store and link it into the repository.
    pub async fn finish_upload<S, E>(
        &self,
        repo: &RepoName,
        id: &UploadId,
        digest: &Digest,
        start: Option<u64>,
        len: Option<u64>,
        body: S,
    ) -> Result<()>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let sess = self.session(id);
        let mut st = sess.lock().await;
        let mut rec = self.upload_record(repo, id)?;
        self.append_locked(&mut st, id, &mut rec, start, len, body)
            .await?;
        let size = rec.offset;
        let hasher = match (digest.algorithm(), st.hasher.take()) {
            (Algorithm::Sha256, Some((o, h))) if o == size => h,
            (alg, _) => {
                let inner = self.inner.clone();
                let id = *id;
                blocking(move || Ok(inner.store.hash_upload(&id, alg, size)?)).await?
            }
        };
        let actual = hasher.finish();
        let inner = self.inner.clone();
        let (repo, id, d) = (repo.clone(), *id, digest.clone());
        if actual != d {
            // The bytes can never become this blob: drop the session rather than keep junk.
            blocking(move || {
                let mut w = inner.meta.write()?;
                inner.meta.delete_upload(&mut w, &id)?;
                w.commit()?;
                inner.store.remove_upload(&id)?;
                inner.drop_upload_chunks(&id);
                Ok(())
            })
            .await?;
            self.forget_session(&id);
            return Err(RegistryError::DigestInvalid(format!(
                "uploaded content ({size} bytes) has digest {actual}, not {d}"
            )));
        }
        let digest = d.clone();
        let linked_repo = repo.clone();
        let fresh = blocking(move || {
            let m = &inner.meta;
            // With a bucket, a new blob is there before the commit that links it (uploaded
            // before the write lock is taken: content-addressed, so a race only repeats it).
            let known_before = {
                let t = m.read()?;
                m.blob(&t, &d)?.is_some()
            };
            if !known_before {
                inner.publish_upload_as_blob(&id, &d, size)?;
            }
            // A blob the store already has (staged or deduplicated) is only linked. The write
            // transaction is taken first so that the check and the link are one step; the
            // staging lock keeps a collection from removing a file of this digest meanwhile.
            let _staging = inner.staging_lock.lock().expect("staging lock");
            let mut w = m.write()?;
            let known = m.blob(&w, &d)?.is_some();
            if known {
                inner.store.remove_upload(&id)?;
            } else {
                if known_before {
                    // Collected meanwhile: uploaded after all.
                    inner.publish_upload_as_blob(&id, &d, size)?;
                }
                inner.store.commit_upload(&id, &d)?;
            }
            m.link_blob(&mut w, &repo, &d, size)?;
            m.delete_upload(&mut w, &id)?;
            w.commit()?;
            inner.drop_upload_chunks(&id);
            Ok(!known)
        })
        .await?;
        self.forget_session(&id);
        if fresh {
            self.after_commit(&digest, &linked_repo, size).await;
        } else {
            self.after_link(&digest, &linked_repo).await;
        }
        Ok(())
    }

    /// Monolithic upload (`POST ?digest=` with a body).
    pub async fn put_blob<S, E>(
        &self,
        repo: &RepoName,
        digest: &Digest,
        len: Option<u64>,
        body: S,
    ) -> Result<()>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let st = self.start_upload(repo, None).await?;
        let res = self
            .finish_upload(repo, &st.id, digest, None, len, body)
            .await;
        if res.is_err() {
            // Nothing of a failed monolithic upload is worth keeping.
            let _ = self.cancel_upload(repo, &st.id).await;
        }
        res
    }

    pub async fn cancel_upload(&self, repo: &RepoName, id: &UploadId) -> Result<()> {
        let sess = self.session(id);
        let _st = sess.lock().await;
        let inner = self.inner.clone();
        let (repo, id) = (repo.clone(), *id);
        let res = blocking(move || {
            let m = &inner.meta;
            let mut w = m.write()?;
            match m.upload(&w, &id)? {
                Some(rec) if rec.repo == repo => {}
                _ => return Err(RegistryError::BlobUploadUnknown),
            }
            m.delete_upload(&mut w, &id)?;
            w.commit()?;
            inner.store.remove_upload(&id)?;
            inner.drop_upload_chunks(&id);
            Ok(())
        })
        .await;
        self.forget_session(&id);
        res
    }

    async fn append_locked<S, E>(
        &self,
        st: &mut SessionState,
        id: &UploadId,
        rec: &mut UploadRecord,
        start: Option<u64>,
        expect: Option<u64>,
        mut body: S,
    ) -> Result<()>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: Display,
    {
        let offset = rec.offset;
        if let Some(s) = start {
            if s != offset {
                return Err(RegistryError::ChunkOutOfOrder {
                    message: format!(
                        "chunk starts at byte {s}, but the upload holds {offset} bytes"
                    ),
                    offset,
                });
            }
        }
        // Read the first piece before touching the file: most final PUTs carry no body.
        let mut first = match body.next().await {
            None => None,
            Some(Ok(b)) => Some(b),
            Some(Err(e)) => {
                return Err(RegistryError::BlobUploadInvalid(format!(
                    "reading request body: {e}"
                )))
            }
        };
        if first.is_none() {
            return match expect {
                Some(n) if n > 0 => Err(RegistryError::SizeInvalid(format!(
                    "declared {n} bytes, received none"
                ))),
                _ => Ok(()),
            };
        }
        let inner = self.inner.clone();
        let hasher = match st.hasher.take() {
            Some((o, h)) if o == offset => h,
            _ => {
                let (inner, id) = (inner.clone(), *id);
                blocking(move || Ok(inner.store.hash_upload(&id, Algorithm::Sha256, offset)?))
                    .await?
            }
        };
        let file = {
            let (inner, id) = (inner.clone(), *id);
            blocking(move || match inner.store.open_upload_at(&id, offset) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(RegistryError::BlobUploadUnknown)
                }
                r => Ok(r?),
            })
            .await?
        };
        let mut state = (file, hasher);
        let mut written = 0u64;
        let mut buf = BytesMut::new();
        loop {
            let next = match first.take() {
                Some(b) => Some(b),
                None => match body.next().await {
                    None => None,
                    Some(Ok(b)) => Some(b),
                    Some(Err(e)) => {
                        return Err(RegistryError::BlobUploadInvalid(format!(
                            "reading request body: {e}"
                        )))
                    }
                },
            };
            let done = next.is_none();
            if let Some(b) = next {
                buf.extend_from_slice(&b);
            }
            if buf.len() >= WRITE_BATCH || (done && !buf.is_empty()) {
                let chunk = buf.split().freeze();
                written += chunk.len() as u64;
                if expect.is_some_and(|n| written > n) {
                    break;
                }
                let (mut f, mut h) = state;
                state = blocking(move || {
                    f.write_all(&chunk)?;
                    h.update(&chunk);
                    Ok((f, h))
                })
                .await?;
            }
            if done {
                break;
            }
        }
        if let Some(n) = expect {
            if written != n {
                return Err(RegistryError::SizeInvalid(format!(
                    "declared {n} bytes, received {written}"
                )));
            }
        }
        let (file, hasher) = state;
        let new_offset = offset + written;
        let (id, mut updated) = (*id, rec.clone());
        updated.offset = new_offset;
        updated.updated = now();
        let updated = blocking(move || {
            file.sync_data()?;
            // With a bucket, the acknowledged bytes are there too: the session outlives its node.
            inner.publish_upload_chunk(&id, offset..new_offset)?;
            let mut w = inner.meta.write()?;
            inner.meta.put_upload(&mut w, &id, &updated)?;
            w.commit()?;
            Ok(updated)
        })
        .await?;
        *rec = updated;
        st.hasher = Some((new_offset, hasher));
        Ok(())
    }

    /// Remove sessions not written to for longer than the configured TTL. Sessions with a
    /// request in flight are left for the next sweep.
    pub async fn expire_uploads(&self) -> Result<usize> {
        let cutoff = now().saturating_sub(self.inner.cfg.upload_ttl.as_secs());
        let stale = {
            let t = self.inner.meta.read()?;
            self.inner.meta.stale_uploads(&t, cutoff)?
        };
        let mut removed = 0;
        for id in stale {
            let sess = self.session(&id);
            let Ok(_guard) = sess.try_lock() else {
                continue;
            };
            let inner = self.inner.clone();
            let gone = blocking(move || {
                let m = &inner.meta;
                let mut w = m.write()?;
                // Re-check under the write lock: a request may have touched it meanwhile.
                let still_stale = m.upload(&w, &id)?.is_some_and(|r| r.updated < cutoff);
                if still_stale {
                    m.delete_upload(&mut w, &id)?;
                    w.commit()?;
                    inner.store.remove_upload(&id)?;
                    inner.drop_upload_chunks(&id);
                }
                Ok(still_stale)
            })
            .await?;
            if gone {
                removed += 1;
                self.forget_session(&id);
                tracing::info!(upload = %id, "expired abandoned upload");
            }
        }
        Ok(removed)
    }

    /// At start-up: delete upload files no session knows (a crash between creating the file
    /// and committing its record) and sessions whose file is gone.
    pub(super) fn remove_orphan_uploads(&self) -> Result<()> {
        if self.is_replica() {
            // The writer's sessions, not this node's.
            return Ok(());
        }
        let m = &self.inner.meta;
        let known = {
            let t = m.read()?;
            m.upload_ids(&t)?
        };
        for path in self.inner.store.orphan_uploads(&known)? {
            tracing::info!(path = %path.display(), "removing orphan upload file");
            std::fs::remove_file(&path)?;
        }
        let mut w = m.write()?;
        for id in &known {
            if !self.inner.store.has_upload(id) {
                // With a bucket, the session's acknowledged bytes are there (its node was lost).
                let offset = m.upload(&w, id)?.map_or(0, |r| r.offset);
                if self.inner.restore_upload(id, offset)? {
                    tracing::info!(upload = %id, offset, "upload session restored from the bucket");
                    continue;
                }
                tracing::warn!(upload = %id, "upload session lost its file; removing it");
                m.delete_upload(&mut w, id)?;
            }
        }
        w.commit()?;
        Ok(())
    }
}
