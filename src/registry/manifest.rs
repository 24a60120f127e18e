//! Manifest parsing and validation: Docker v2 schema 2 and manifest lists, OCI image manifests
//! and indexes, OCI 1.1 artifacts (`artifactType`, `subject`). Schema 1 is refused.
//!
//! Validation is structural here; whether the referenced blobs and manifests exist in the
//! repository is checked by the registry service against the metadata store.

use serde::Deserialize;

use crate::error::{RegistryError, Result};
use crate::names::Digest;

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
const DOCKER_FOREIGN_LAYER: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// Media types a manifest PUT may carry.
pub const MANIFEST_TYPES: [&str; 4] = [DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Image,
    Index,
}

/// A descriptor as it appears inside a manifest.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: Option<String>,
    digest: String,
    size: i64,
    #[serde(default)]
    urls: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    manifests: Option<Vec<RawDescriptor>>,
    subject: Option<RawDescriptor>,
    annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

/// What the registry must check and record about a manifest.
#[derive(Debug)]
pub struct ParsedManifest {
    pub media_type: String,
    /// Blobs (config and layers) that must be linked in the repository.
    pub blobs: Vec<Digest>,
    /// The size each descriptor of `blobs` declares (clients verify it: it must be the blob's).
    pub blob_sizes: Vec<u64>,
    /// Child manifests (of an index) that must be in the repository.
    pub children: Vec<Digest>,
    /// The size each descriptor of `children` declares.
    pub child_sizes: Vec<u64>,
    pub subject: Option<Digest>,
    /// `artifactType`, or for an image manifest without one, its config media type (what the
    /// referrers API reports).
    pub artifact_type: Option<String>,
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

fn strip_params(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

fn descriptor_digest(d: &RawDescriptor, what: &str) -> Result<Digest> {
    if d.size < 0 {
        return Err(RegistryError::ManifestInvalid(format!(
            "{what} descriptor has a negative size"
        )));
    }
    d.digest
        .parse()
        .map_err(|e| RegistryError::ManifestInvalid(format!("{what} descriptor: {e}")))
}

/// Parse and validate a manifest body pushed with `content_type`.
pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<ParsedManifest> {
    let raw: RawManifest = serde_json::from_slice(body)
        .map_err(|e| RegistryError::ManifestInvalid(format!("not a valid manifest JSON: {e}")))?;
    let header_type = content_type
        .map(strip_params)
        .filter(|t| !t.is_empty() && *t != "application/json" && *t != "application/octet-stream");
    for t in [header_type, raw.media_type.as_deref()]
        .into_iter()
        .flatten()
    {
        if t == DOCKER_SCHEMA1 || t == DOCKER_SCHEMA1_SIGNED {
            return Err(RegistryError::ManifestInvalid(
                "Docker schema 1 manifests are not supported: push with a client that writes \
                 schema 2 or OCI manifests"
                    .into(),
            ));
        }
    }
    match raw.schema_version {
        Some(2) => {}
        Some(1) => {
            return Err(RegistryError::ManifestInvalid(
                "Docker schema 1 manifests are not supported: push with a client that writes \
                 schema 2 or OCI manifests"
                    .into(),
            ))
        }
        Some(v) => {
            return Err(RegistryError::ManifestInvalid(format!(
                "schemaVersion {v} is not supported (2 is)"
            )))
        }
        None => {
            return Err(RegistryError::ManifestInvalid(
                "schemaVersion is missing".into(),
            ))
        }
    }
    if let (Some(h), Some(m)) = (header_type, raw.media_type.as_deref()) {
        if h != m {
            return Err(RegistryError::ManifestInvalid(format!(
                "Content-Type {h} does not match the manifest's mediaType {m}"
            )));
        }
    }
    let media_type = match header_type.or(raw.media_type.as_deref()) {
        Some(t) => t.to_string(),
        // No type given anywhere: OCI allows omitting mediaType; tell index from manifest.
        None if raw.manifests.is_some() => OCI_INDEX.to_string(),
        None => OCI_MANIFEST.to_string(),
    };
    let kind = match media_type.as_str() {
        DOCKER_MANIFEST | OCI_MANIFEST => Kind::Image,
        DOCKER_LIST | OCI_INDEX => Kind::Index,
        other => {
            return Err(RegistryError::ManifestInvalid(format!(
                "unsupported manifest media type {other} (supported: {})",
                MANIFEST_TYPES.join(", ")
            )))
        }
    };

    let mut blobs = Vec::new();
    let mut blob_sizes = Vec::new();
    let mut children = Vec::new();
    let mut child_sizes = Vec::new();
    let mut artifact_type = raw.artifact_type.clone();
    match kind {
        Kind::Image => {
            if raw.manifests.is_some() {
                return Err(RegistryError::ManifestInvalid(format!(
                    "{media_type} must not have a manifests field"
                )));
            }
            let config = raw.config.as_ref().ok_or_else(|| {
                RegistryError::ManifestInvalid(format!("{media_type} needs a config descriptor"))
            })?;
            blobs.push(descriptor_digest(config, "config")?);
            blob_sizes.push(config.size as u64);
            if artifact_type.is_none() {
                artifact_type = config.media_type.clone();
            }
            let layers = raw.layers.as_ref().ok_or_else(|| {
                RegistryError::ManifestInvalid(format!("{media_type} needs a layers array"))
            })?;
            if media_type == DOCKER_MANIFEST && layers.is_empty() {
                return Err(RegistryError::ManifestInvalid(
                    "a Docker image manifest needs at least one layer".into(),
                ));
            }
            for l in layers {
                let d = descriptor_digest(l, "layer")?;
                // Foreign (non-distributable) layers live elsewhere, at their URLs.
                let foreign = l.media_type.as_deref() == Some(DOCKER_FOREIGN_LAYER)
                    || (!l.urls.is_empty()
                        && l.media_type
                            .as_deref()
                            .is_some_and(|t| t.contains("nondistributable")));
                if !foreign {
                    blobs.push(d);
                    blob_sizes.push(l.size as u64);
                }
            }
        }
        Kind::Index => {
            if raw.config.is_some() || raw.layers.is_some() {
                return Err(RegistryError::ManifestInvalid(format!(
                    "{media_type} must not have config or layers"
                )));
            }
            let manifests = raw.manifests.as_ref().ok_or_else(|| {
                RegistryError::ManifestInvalid(format!("{media_type} needs a manifests array"))
            })?;
            for m in manifests {
                children.push(descriptor_digest(m, "manifest")?);
                child_sizes.push(m.size as u64);
            }
        }
    }
    let subject = raw
        .subject
        .as_ref()
        .map(|s| descriptor_digest(s, "subject"))
        .transpose()?;
    Ok(ParsedManifest {
        media_type,
        blobs,
        blob_sizes,
        children,
        child_sizes,
        subject,
        artifact_type,
        annotations: raw.annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> String {
        Digest::sha256_of(s.as_bytes()).to_string()
    }

    #[test]
    fn oci_image_with_subject() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"a/b",
            "config":{{"mediaType":"c","digest":"{}","size":2}},
            "layers":[{{"mediaType":"l","digest":"{}","size":3}}],
            "subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":4}}}}"#,
            d("c"),
            d("l"),
            d("s")
        );
        let m = parse(Some(OCI_MANIFEST), body.as_bytes()).unwrap();
        assert_eq!(m.blobs.len(), 2);
        assert_eq!(m.subject.unwrap().to_string(), d("s"));
        assert_eq!(m.artifact_type.as_deref(), Some("a/b"));
    }

    #[test]
    fn artifact_type_defaults_to_config_type() {
        let body = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"cfg/x","digest":"{}","size":2}},"layers":[]}}"#,
            d("c")
        );
        let m = parse(None, body.as_bytes()).unwrap();
        assert_eq!(m.media_type, OCI_MANIFEST);
        assert_eq!(m.artifact_type.as_deref(), Some("cfg/x"));
    }

    #[test]
    fn index_children() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[{{"mediaType":"{DOCKER_MANIFEST}","digest":"{}","size":5}}]}}"#,
            d("m")
        );
        let m = parse(Some(DOCKER_LIST), body.as_bytes()).unwrap();
        assert_eq!(m.children.len(), 1);
    }

    #[test]
    fn refusals() {
        let bad = |ct: Option<&str>, body: &str| match parse(ct, body.as_bytes()) {
            Err(RegistryError::ManifestInvalid(msg)) => msg,
            other => panic!("expected MANIFEST_INVALID, got {other:?}"),
        };
        assert!(bad(None, "{").contains("JSON"));
        assert!(bad(None, r#"{"schemaVersion":1,"fsLayers":[]}"#).contains("schema 1"));
        assert!(bad(Some(DOCKER_SCHEMA1_SIGNED), r#"{"schemaVersion":2}"#).contains("schema 1"));
        let body = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#);
        assert!(bad(Some(OCI_MANIFEST), &body).contains("does not match"));
        assert!(bad(Some(OCI_MANIFEST), r#"{"schemaVersion":2,"layers":[]}"#).contains("config"));
        let body = r#"{"schemaVersion":2,"config":{"digest":"sha256:xyz","size":1},"layers":[]}"#;
        assert!(bad(Some(OCI_MANIFEST), body).contains("config descriptor"));
        assert!(bad(Some("text/plain"), r#"{"schemaVersion":2}"#).contains("unsupported"));
    }
}
