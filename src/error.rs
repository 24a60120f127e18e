//! The one error type of the registry and its one mapping to OCI error codes and HTTP statuses.
//!
//! Every layer returns [`RegistryError`]; the HTTP layer turns it into the spec's envelope
//! `{"errors":[{"code","message","detail"}]}` here and nowhere else.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use stowage_actors::digest::Digest;

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("blob unknown to registry")]
    BlobUnknown(Digest),
    #[error("blob upload invalid: {0}")]
    BlobUploadInvalid(String),
    #[error("blob upload unknown to registry")]
    BlobUploadUnknown,
    #[error("provided digest did not match uploaded content: {0}")]
    DigestInvalid(String),
    #[error("manifest references a blob unknown to this repository: {0}")]
    ManifestBlobUnknown(Digest),
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    #[error("manifest unknown to registry")]
    ManifestUnknown(String),
    #[error("invalid repository name: {0}")]
    NameInvalid(String),
    #[error("repository name not known to registry")]
    NameUnknown(String),
    #[error("invalid tag {0:?}: tags match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}")]
    TagInvalid(String),
    #[error("provided length did not match content length: {0}")]
    SizeInvalid(String),
    #[error("{what} is larger than the limit of {limit} bytes")]
    TooLarge { what: &'static str, limit: u64 },
    /// An upload chunk's range that does not fit the upload.
    #[error("requested range not satisfiable: {0}")]
    RangeNotSatisfiable(String),
    /// A blob GET's `Range` outside the blob (the spec has no code of its own for it: the
    /// blob's size is what the range misses).
    #[error("requested range not satisfiable: {0}")]
    RangeInvalid(String),
    #[error("chunk out of order: {message}")]
    ChunkOutOfOrder { message: String, offset: u64 },
    #[error("{0}")]
    NotFound(String),
    #[error("invalid pagination: {0}")]
    PaginationInvalid(String),
    #[error("the operation is unsupported: {0}")]
    Unsupported(String),
    #[error("the registry is out of space ({0}); the request is refused and nothing acknowledged was lost: retry once space is freed")]
    StorageFull(String),
    #[error("authentication required: {message}")]
    Unauthorized {
        message: String,
        /// The `WWW-Authenticate` challenge.
        challenge: String,
    },
    #[error("requested access to the resource is denied: {0}")]
    Denied(String),
    /// A valid bearer token that does not grant the access (RFC 6750: 403 with a challenge
    /// naming the scope needed, so a client may fetch a token for it).
    #[error("requested access to the resource is denied: {message}")]
    InsufficientScope { message: String, challenge: String },
    #[error("too many requests: {0}; retry shortly")]
    TooManyRequests(String),
    /// A request head that is not HTTP/1.1 the server reads (found before any route: see
    /// `http::wire`); 431 when it is too large, 400 otherwise.
    #[error("malformed request: {message}")]
    MalformedRequest {
        message: String,
        head_too_large: bool,
    },
    /// The object store failed or could not be reached: nothing of the request was
    /// acknowledged, and it may be retried.
    #[error("the object store is unavailable ({0}); nothing of this request was stored: retry")]
    ObjectStore(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl RegistryError {
    /// The OCI distribution-spec error code.
    pub fn code(&self) -> &'static str {
        use RegistryError::*;
        match self {
            BlobUnknown(_) => "BLOB_UNKNOWN",
            BlobUploadInvalid(_) | ChunkOutOfOrder { .. } => "BLOB_UPLOAD_INVALID",
            BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            DigestInvalid(_) => "DIGEST_INVALID",
            ManifestBlobUnknown(_) => "MANIFEST_BLOB_UNKNOWN",
            ManifestInvalid(_) => "MANIFEST_INVALID",
            ManifestUnknown(_) => "MANIFEST_UNKNOWN",
            NameInvalid(_) => "NAME_INVALID",
            NameUnknown(_) => "NAME_UNKNOWN",
            TagInvalid(_) => "MANIFEST_INVALID",
            SizeInvalid(_) | TooLarge { .. } | RangeInvalid(_) => "SIZE_INVALID",
            RangeNotSatisfiable(_) => "BLOB_UPLOAD_INVALID",
            Unsupported(_) | NotFound(_) | MalformedRequest { .. } => "UNSUPPORTED",
            PaginationInvalid(_) => "PAGINATION_NUMBER_INVALID",
            StorageFull(_) | Denied(_) | InsufficientScope { .. } => "DENIED",
            Unauthorized { .. } => "UNAUTHORIZED",
            TooManyRequests(_) => "TOOMANYREQUESTS",
            ObjectStore(_) | Internal(_) => "UNKNOWN",
        }
    }

    pub fn status(&self) -> StatusCode {
        use RegistryError::*;
        match self {
            BlobUnknown(_) | BlobUploadUnknown | ManifestUnknown(_) | NameUnknown(_)
            | NotFound(_) => StatusCode::NOT_FOUND,
            BlobUploadInvalid(_)
            | DigestInvalid(_)
            | ManifestBlobUnknown(_)
            | ManifestInvalid(_)
            | NameInvalid(_)
            | TagInvalid(_)
            | SizeInvalid(_)
            | PaginationInvalid(_) => StatusCode::BAD_REQUEST,
            TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RangeNotSatisfiable(_) | RangeInvalid(_) | ChunkOutOfOrder { .. } => {
                StatusCode::RANGE_NOT_SATISFIABLE
            }
            Unsupported(_) => StatusCode::METHOD_NOT_ALLOWED,
            MalformedRequest {
                head_too_large: true,
                ..
            } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            MalformedRequest { .. } => StatusCode::BAD_REQUEST,
            StorageFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Denied(_) | InsufficientScope { .. } => StatusCode::FORBIDDEN,
            TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ObjectStore(_) => StatusCode::SERVICE_UNAVAILABLE,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Machine-readable detail for the envelope's `detail` field.
    fn detail(&self) -> serde_json::Value {
        use RegistryError::*;
        match self {
            BlobUnknown(d) | ManifestBlobUnknown(d) => json!({ "digest": d.to_string() }),
            ManifestUnknown(r) => json!({ "reference": r }),
            NameUnknown(n) => json!({ "name": n }),
            TooLarge { limit, .. } => json!({ "limit": limit }),
            _ => serde_json::Value::Null,
        }
    }
}

impl From<std::io::Error> for RegistryError {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                RegistryError::StorageFull(e.to_string())
            }
            _ => RegistryError::Internal(format!("i/o: {e}")),
        }
    }
}

impl From<heed::Error> for RegistryError {
    fn from(e: heed::Error) -> Self {
        match e {
            heed::Error::Io(e) => e.into(),
            heed::Error::Mdb(heed::MdbError::MapFull) => {
                RegistryError::StorageFull("the metadata map is full: raise --meta-map-size".into())
            }
            e => RegistryError::Internal(format!("metadata store: {e}")),
        }
    }
}

impl ResponseError for RegistryError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, code = self.code(), "request refused");
        }
        let mut resp = HttpResponse::build(status);
        if let RegistryError::ChunkOutOfOrder { offset, .. } = self {
            // Tell the client where the upload stands so it can resume from there.
            let end = offset.saturating_sub(1);
            resp.insert_header(("Range", format!("0-{end}")));
        }
        if let RegistryError::Unauthorized { challenge, .. }
        | RegistryError::InsufficientScope { challenge, .. } = self
        {
            resp.insert_header(("WWW-Authenticate", challenge.as_str()));
        }
        resp.json(json!({
            "errors": [{
                "code": self.code(),
                "message": self.to_string(),
                "detail": self.detail(),
            }]
        }))
    }
}
