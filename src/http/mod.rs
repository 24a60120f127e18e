//! The HTTP edge: OCI Distribution Spec 1.1 routes over the registry service.
//!
//! Handlers parse (names, digests, ranges, queries), call one [`Registry`] method and turn the
//! result into headers. Errors map to the spec's envelope in `crate::error`. Repository names
//! have any number of `/`-separated components, so routes are parsed from the end of the path.

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use actix_web::body::{BodySize, MessageBody, SizedStream};
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::header::{self, HeaderMap};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::json;

use crate::auth::{Action, Gate, Identity, Need};
use crate::error::{RegistryError, Result};
use crate::names::{parse_digest, Digest, Reference, RepoName, UploadId};
use crate::registry::{cursor, manifest, BlobContent, Page, Registry};

pub mod forward;
pub mod server;
pub mod wire;

const API_VERSION: (&str, &str) = ("Docker-Distribution-API-Version", "registry/2.0");
const OCTET_STREAM: &str = "application/octet-stream";

/// Register stowage's routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v2", web::to(base))
        .route("/v2/", web::to(base))
        .route("/v2/_catalog", web::get().to(catalog))
        .route("/v2/{tail:.*}", web::to(dispatch))
        .route("/_malformed/{reason}", web::to(malformed))
        .route("/_stats", web::get().to(stats))
        .route("/_gc", web::post().to(gc))
        .route("/metrics", web::get().to(metrics))
        .route("/_layers/{digest}/files", web::get().to(layer_files))
        .route("/token", web::get().to(token));
}

/// `GET /token`: the token server of the Docker token protocol, when stowage issues tokens.
async fn token(req: HttpRequest, gate: web::Data<Gate>) -> Result<HttpResponse> {
    let body = gate.issue_token(&req)?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(body))
}

/// Add the API version header to every response; count, time and log each request. A
/// request is timed to the last byte of its response (or until the client went away), so a
/// pull's blob GETs count what the client waited, not the response head.
/// The answer to a request head actix-http would have refused bare: [`wire::Wire`] hands
/// actix-http this request in its place.
async fn malformed(reason: web::Path<String>) -> Result<HttpResponse> {
    match wire::head::Malformed::from_slug(&reason) {
        Some(m) => Err(RegistryError::MalformedRequest {
            message: m.message(),
            head_too_large: m.too_large(),
        }),
        None => Err(RegistryError::NotFound(format!(
            "no route for {}",
            reason.as_str()
        ))),
    }
}

pub fn middleware<S, B>(
    req: actix_web::dev::ServiceRequest,
    srv: &S,
) -> impl std::future::Future<
    Output = std::result::Result<ServiceResponse<TimedBody<B>>, actix_web::Error>,
>
where
    S: Service<
        actix_web::dev::ServiceRequest,
        Response = ServiceResponse<B>,
        Error = actix_web::Error,
    >,
    B: actix_web::body::MessageBody,
{
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.path().to_string();
    let http = req
        .app_data::<web::Data<crate::metrics::HttpMetrics>>()
        .cloned();
    let fut = srv.call(req);
    async move {
        let mut res = fut.await?;
        res.headers_mut().insert(
            header::HeaderName::from_static("docker-distribution-api-version"),
            header::HeaderValue::from_static(API_VERSION.1),
        );
        let status = res.status();
        let label = crate::metrics::method_label(&method);
        if let Some(h) = &http {
            h.requests
                .with_label_values(&[label, status.as_str()])
                .inc();
        }
        let done = Done {
            start,
            latency: http.map(|h| {
                h.latency
                    .with_label_values(&[label, crate::metrics::route_label(&path)])
            }),
            method,
            path,
            status: status.as_u16(),
        };
        Ok(res.map_body(|_, body| TimedBody {
            inner: body,
            done: Some(done),
        }))
    }
}

/// What is recorded when a response ends.
struct Done {
    start: Instant,
    latency: Option<prometheus::Histogram>,
    method: actix_web::http::Method,
    path: String,
    status: u16,
}

impl Drop for Done {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        if let Some(h) = &self.latency {
            h.observe(elapsed.as_secs_f64());
        }
        tracing::info!(
            method = %self.method,
            path = %self.path,
            status = self.status,
            ms = elapsed.as_millis() as u64,
            "request"
        );
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its request when its last byte is sent, or when it is
    /// dropped unfinished (the client went away).
    pub struct TimedBody<B> {
        #[pin]
        inner: B,
        done: Option<Done>,
    }
}

impl<B: actix_web::body::MessageBody> actix_web::body::MessageBody for TimedBody<B> {
    type Error = B::Error;

    fn size(&self) -> actix_web::body::BodySize {
        self.inner.size()
    }

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<bytes::Bytes, Self::Error>>> {
        let this = self.project();
        let r = this.inner.poll_next(cx);
        if let std::task::Poll::Ready(None) = r {
            this.done.take();
        }
        r
    }
}

async fn base(req: HttpRequest, gate: web::Data<Gate>) -> Result<HttpResponse> {
    gate.check(&req, Need::Login)?;
    Ok(HttpResponse::Ok()
        .insert_header(API_VERSION)
        .content_type("application/json")
        .body("{}"))
}

async fn stats(
    req: HttpRequest,
    gate: web::Data<Gate>,
    reg: web::Data<Registry>,
) -> Result<HttpResponse> {
    gate.check(&req, Need::Admin)?;
    Ok(HttpResponse::Ok().json(reg.stats().await?))
}

#[derive(serde::Deserialize)]
struct GcQuery {
    #[serde(default)]
    dry_run: bool,
}

/// `POST /_gc[?dry_run=true]`: run a collection pass now (after any pass in progress) and
/// answer its report.
async fn gc(
    req: HttpRequest,
    gate: web::Data<Gate>,
    reg: web::Data<Registry>,
    q: web::Query<GcQuery>,
) -> Result<HttpResponse> {
    gate.check(&req, Need::Admin)?;
    if reg.is_replica() {
        return Err(RegistryError::Unsupported(
            "garbage collection on a replica: the node that writes the store collects it".into(),
        ));
    }
    let opts = crate::registry::gc::GcOptions {
        dry_run: q.dry_run,
        delay: reg.config().gc_delay,
    };
    Ok(HttpResponse::Ok().json(reg.gc(opts).await?))
}

async fn metrics(
    req: HttpRequest,
    gate: web::Data<Gate>,
    reg: web::Data<Registry>,
    http: web::Data<crate::metrics::HttpMetrics>,
) -> Result<HttpResponse> {
    gate.check(&req, Need::Admin)?;
    serve_metrics(reg, http, gate).await
}

/// `/metrics` on its own listener (`--metrics-addr`): no authentication.
pub async fn open_metrics(
    reg: web::Data<Registry>,
    http: web::Data<crate::metrics::HttpMetrics>,
    gate: web::Data<Gate>,
) -> Result<HttpResponse> {
    serve_metrics(reg, http, gate).await
}

async fn serve_metrics(
    reg: web::Data<Registry>,
    http: web::Data<crate::metrics::HttpMetrics>,
    gate: web::Data<Gate>,
) -> Result<HttpResponse> {
    let stats = reg.stats().await?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::metrics::render(&reg, &stats, &http, &gate)))
}

/// Entries of a file index per page, by default and at most.
const FILES_PAGE: usize = 1000;
const FILES_PAGE_MAX: usize = 10_000;

/// `GET /_layers/<digest>/files[?repository=NAME][&n=N][&start=K]`: a page of a layer's file
/// index (a JSON array; `Link: <…&start=…>; rel="next"` when more follow). With authentication
/// on, an admin's, or the pull of a repository that links the layer (named in `repository`); a
/// layer the repository does not link is unknown, as a blob GET would say. At most two are
/// built at a time (an index of many files is large while it is parsed).
async fn layer_files(
    req: HttpRequest,
    path: web::Path<String>,
    gate: web::Data<Gate>,
    reg: web::Data<Registry>,
) -> Result<HttpResponse> {
    let d = parse_digest(&path)?;
    let repo = query(&req).get("repository").cloned();
    match repo {
        Some(name) => {
            let repo: RepoName = name.parse()?;
            gate.check(&req, Need::Repo(repo.as_str(), Action::Pull))?;
            reg.stat_blob(&repo, &d)?;
        }
        None => {
            gate.check(&req, Need::Admin)?;
        }
    }
    let q = query(&req);
    let num = |k: &str, default: usize| -> Result<usize> {
        match q.get(k) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| RegistryError::PaginationInvalid(format!("{k}={v}"))),
        }
    };
    let n = num("n", FILES_PAGE)?.clamp(1, FILES_PAGE_MAX);
    let start = num("start", 0)?;
    static BUILDING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
    let _permit = BUILDING
        .acquire()
        .await
        .map_err(|e| RegistryError::Internal(e.to_string()))?;
    let reg2 = reg.clone();
    let d2 = d.clone();
    let (files, more) = web::block(move || reg2.layer_files(&d2, start, n))
        .await
        .map_err(|e| RegistryError::Internal(e.to_string()))??;
    let mut b = HttpResponse::Ok();
    if more {
        let mut next = format!("/_layers/{d}/files?n={n}&start={}", start + files.len());
        if let Some(r) = q.get("repository") {
            next.push_str(&format!("&repository={r}"));
        }
        b.insert_header((header::LINK, format!("<{next}>; rel=\"next\"")));
    }
    Ok(b.json(files))
}

/// The endpoints below `/v2/<name>/`.
#[derive(Debug, PartialEq, Eq)]
enum Endpoint<'a> {
    Tags,
    Manifest(&'a str),
    Blob(&'a str),
    Uploads,
    Upload(&'a str),
    Referrers(&'a str),
}

/// Split `<name>/<endpoint>` (the path after `/v2/`) from the end.
fn split_route(p: &str) -> Option<(&str, Endpoint<'_>)> {
    if let Some(name) = p.strip_suffix("/tags/list") {
        return Some((name, Endpoint::Tags));
    }
    if let Some(name) = p
        .strip_suffix("/blobs/uploads/")
        .or_else(|| p.strip_suffix("/blobs/uploads"))
    {
        return Some((name, Endpoint::Uploads));
    }
    let (head, last) = p.rsplit_once('/')?;
    let (name, kind) = head.rsplit_once('/')?;
    match kind {
        "manifests" => Some((name, Endpoint::Manifest(last))),
        "blobs" => Some((name, Endpoint::Blob(last))),
        "referrers" => Some((name, Endpoint::Referrers(last))),
        "uploads" => name
            .strip_suffix("/blobs")
            .map(|n| (n, Endpoint::Upload(last))),
        _ => None,
    }
}

fn query(req: &HttpRequest) -> HashMap<String, String> {
    web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .unwrap_or_default()
}

/// The action a request on `endpoint` needs.
fn action_of(m: &Method, endpoint: &Endpoint<'_>) -> Action {
    match endpoint {
        Endpoint::Upload(_) | Endpoint::Uploads => Action::Push,
        _ if m == Method::GET || m == Method::HEAD => Action::Pull,
        Endpoint::Manifest(_) | Endpoint::Blob(_) if m == Method::DELETE => Action::Delete,
        _ => Action::Push,
    }
}

async fn dispatch(
    req: HttpRequest,
    payload: web::Payload,
    gate: web::Data<Gate>,
    reg: web::Data<Registry>,
    writer: web::Data<Option<forward::Writer>>,
) -> Result<HttpResponse> {
    let tail = req.match_info().get("tail").unwrap_or("").to_string();
    let (name, endpoint) = split_route(&tail)
        .ok_or_else(|| RegistryError::NotFound(format!("no such endpoint: /v2/{tail}")))?;
    let repo: RepoName = name.parse()?;
    let m = req.method().clone();
    let who = gate.check(&req, Need::Repo(repo.as_str(), action_of(&m, &endpoint)))?;
    if reg.is_replica() && m != Method::GET && m != Method::HEAD {
        if let Some(w) = writer.as_ref() {
            return w.forward(&req, payload).await;
        }
        return Err(RegistryError::Unsupported(format!(
            "{m} on a replica: this node serves pulls of a store another node writes; push to that node"
        )));
    }
    match endpoint {
        Endpoint::Tags if m == Method::GET => tags_list(&req, &reg, &repo),
        Endpoint::Manifest(r) if m == Method::GET || m == Method::HEAD => {
            get_manifest(&req, &reg, &repo, &lookup_reference(r)?)
        }
        Endpoint::Manifest(r) if m == Method::PUT => {
            put_manifest(&req, payload, &reg, &repo, &r.parse()?).await
        }
        Endpoint::Manifest(r) if m == Method::DELETE => {
            reg.delete_manifest(&repo, &lookup_reference(r)?).await?;
            Ok(HttpResponse::Accepted().finish())
        }
        Endpoint::Blob(d) if m == Method::GET || m == Method::HEAD => {
            get_blob(&req, &reg, &repo, &parse_digest(d)?).await
        }
        Endpoint::Blob(d) if m == Method::DELETE => {
            reg.delete_blob(&repo, &parse_digest(d)?).await?;
            Ok(HttpResponse::Accepted().finish())
        }
        Endpoint::Uploads if m == Method::POST => {
            start_upload(&req, payload, &reg, &repo, &gate, &who).await
        }
        Endpoint::Upload(id) => {
            let id: UploadId = id.parse()?;
            // A session belongs to whoever started it: to anyone else it does not exist.
            if gate.enabled() {
                let owner = reg.upload_owner(&repo, &id)?;
                if owner.is_some_and(|o| o != who.name()) {
                    return Err(RegistryError::BlobUploadUnknown);
                }
            }
            match m {
                Method::GET => {
                    let st = reg.upload_status(&repo, &id)?;
                    Ok(upload_response(
                        StatusCode::NO_CONTENT,
                        &repo,
                        &id,
                        st.offset,
                    ))
                }
                Method::PATCH => {
                    let (start, len) = content_range(req.headers())?;
                    let len = len.or(content_length(req.headers())?);
                    let st = reg.patch_upload(&repo, &id, start, len, payload).await?;
                    Ok(upload_response(StatusCode::ACCEPTED, &repo, &id, st.offset))
                }
                Method::PUT => {
                    let q = query(&req);
                    let d = q.get("digest").ok_or_else(|| {
                        RegistryError::DigestInvalid("the final PUT needs ?digest=".into())
                    })?;
                    let d = parse_digest(d)?;
                    let (start, len) = content_range(req.headers())?;
                    let len = len.or(content_length(req.headers())?);
                    reg.finish_upload(&repo, &id, &d, start, len, payload)
                        .await?;
                    Ok(blob_created(&repo, &d))
                }
                Method::DELETE => {
                    reg.cancel_upload(&repo, &id).await?;
                    Ok(HttpResponse::NoContent().finish())
                }
                _ => Err(unsupported(&m, &tail)),
            }
        }
        Endpoint::Referrers(d) if m == Method::GET => referrers(&req, &reg, &repo, d),
        _ => Err(unsupported(&m, &tail)),
    }
}

/// A reference to look up: a tag that cannot exist is simply unknown (404), while a malformed
/// digest is still DIGEST_INVALID. (A PUT with an invalid tag is refused as MANIFEST_INVALID.)
fn lookup_reference(r: &str) -> Result<Reference> {
    r.parse().map_err(|e| match e {
        RegistryError::TagInvalid(t) => RegistryError::ManifestUnknown(t),
        e => e,
    })
}

fn unsupported(m: &Method, tail: &str) -> RegistryError {
    RegistryError::Unsupported(format!("{m} is not supported on /v2/{tail}"))
}

// ---- blobs --------------------------------------------------------------------------------

/// A body that declares a size but yields nothing: the answer to HEAD, whose Content-Length
/// must be the size GET would send.
struct HeadBody(u64);

impl MessageBody for HeadBody {
    type Error = std::convert::Infallible;

    fn size(&self) -> BodySize {
        BodySize::Sized(self.0)
    }

    fn poll_next(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Bytes, Self::Error>>> {
        Poll::Ready(None)
    }
}

/// Parse a single-range `Range: bytes=...` header against a blob of `size` bytes. `Ok(None)`
/// means "send it all" (no header, or one we do not understand, which RFC 9110 says to ignore).
fn parse_range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>> {
    let Some(v) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let unsatisfiable = || RegistryError::RangeInvalid(format!("{v} of {size} bytes"));
    let range = if a.is_empty() {
        let Ok(n) = b.parse::<u64>() else {
            return Ok(None);
        };
        if n == 0 || size == 0 {
            return Err(unsatisfiable());
        }
        let n = n.min(size);
        (size - n, n)
    } else {
        let Ok(start) = a.parse::<u64>() else {
            return Ok(None);
        };
        let end = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            match b.parse::<u64>() {
                Ok(e) if e >= start => e.min(size.saturating_sub(1)),
                _ => return Ok(None),
            }
        };
        if start >= size {
            return Err(unsatisfiable());
        }
        (start, end - start + 1)
    };
    Ok(Some(range))
}

fn digest_headers(b: &mut HttpResponseBuilder, d: &Digest) {
    b.insert_header(("Docker-Content-Digest", d.to_string()))
        .insert_header((header::ETAG, format!("\"{d}\"")));
}

async fn get_blob(
    req: &HttpRequest,
    reg: &Registry,
    repo: &RepoName,
    d: &Digest,
) -> Result<HttpResponse> {
    let size = reg.stat_blob(repo, d)?;
    let range = match parse_range(req.headers(), size) {
        Err(e @ RegistryError::RangeInvalid(_)) => {
            return Ok(HttpResponse::build(StatusCode::RANGE_NOT_SATISFIABLE)
                .insert_header((header::CONTENT_RANGE, format!("bytes */{size}")))
                .insert_header((header::ACCEPT_RANGES, "bytes"))
                .content_type("application/json")
                .body(
                    json!({"errors":[{"code":e.code(),"message":e.to_string(),"detail":null}]})
                        .to_string(),
                ))
        }
        r => r?,
    };
    let mut b = HttpResponse::build(if range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    });
    b.content_type(OCTET_STREAM)
        .insert_header((header::ACCEPT_RANGES, "bytes"));
    digest_headers(&mut b, d);
    if let Some((start, len)) = range {
        b.insert_header((
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", start + len - 1),
        ));
    }
    if req.method() == Method::HEAD {
        return Ok(b.body(HeadBody(range.map_or(size, |r| r.1))));
    }
    let BlobContent { len, body, .. } = reg.get_blob(repo, d, range).await?;
    Ok(b.body(SizedStream::new(len, body)))
}

fn blob_created(repo: &RepoName, d: &Digest) -> HttpResponse {
    let mut b = HttpResponse::Created();
    b.insert_header((header::LOCATION, format!("/v2/{repo}/blobs/{d}")));
    digest_headers(&mut b, d);
    b.finish()
}

// ---- uploads ------------------------------------------------------------------------------

fn upload_response(
    status: StatusCode,
    repo: &RepoName,
    id: &UploadId,
    offset: u64,
) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::LOCATION, format!("/v2/{repo}/blobs/uploads/{id}")))
        .insert_header(("Range", format!("0-{}", offset.saturating_sub(1))))
        .insert_header(("Docker-Upload-UUID", id.to_string()))
        .finish()
}

fn content_length(h: &HeaderMap) -> Result<Option<u64>> {
    match h.get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| RegistryError::SizeInvalid("malformed Content-Length".into())),
    }
}

/// `Content-Range: <start>-<end>` (inclusive; a `bytes ` prefix and `/total` suffix are
/// tolerated) → (start, length).
fn content_range(h: &HeaderMap) -> Result<(Option<u64>, Option<u64>)> {
    let Some(v) = h.get(header::CONTENT_RANGE) else {
        return Ok((None, None));
    };
    let bad = || RegistryError::RangeNotSatisfiable("malformed Content-Range".into());
    let s = v.to_str().map_err(|_| bad())?.trim();
    let s = s
        .strip_prefix("bytes")
        .map_or(s, |r| r.trim_start_matches([' ', '=']));
    let s = s.split('/').next().unwrap_or(s);
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let a: u64 = a.trim().parse().map_err(|_| bad())?;
    let b: u64 = b.trim().parse().map_err(|_| bad())?;
    if b < a {
        return Err(bad());
    }
    Ok((Some(a), Some(b - a + 1)))
}

async fn start_upload(
    req: &HttpRequest,
    payload: web::Payload,
    reg: &Registry,
    repo: &RepoName,
    gate: &Gate,
    who: &Identity,
) -> Result<HttpResponse> {
    let q = query(req);
    if let (Some(mount), Some(from)) = (q.get("mount"), q.get("from")) {
        let d = parse_digest(mount)?;
        let from: RepoName = from.parse()?;
        // A mount needs pull on `from`; without it, it is an ordinary upload (as the spec
        // says of a mount that cannot be done), telling nothing of what `from` holds.
        if gate.may_pull(who, from.as_str()) && reg.mount_blob(repo, &from, &d).await? {
            return Ok(blob_created(repo, &d));
        }
    }
    if let Some(d) = q.get("digest") {
        let d = parse_digest(d)?;
        let len = content_length(req.headers())?;
        reg.put_blob(repo, &d, len, payload).await?;
        return Ok(blob_created(repo, &d));
    }
    let owner = gate.enabled().then(|| who.name());
    let st = reg.start_upload(repo, owner).await?;
    Ok(upload_response(
        StatusCode::ACCEPTED,
        repo,
        &st.id,
        st.offset,
    ))
}

// ---- manifests ----------------------------------------------------------------------------

fn get_manifest(
    req: &HttpRequest,
    reg: &Registry,
    repo: &RepoName,
    reference: &Reference,
) -> Result<HttpResponse> {
    let m = reg.get_manifest(repo, reference)?;
    let mut b = HttpResponse::Ok();
    b.content_type(m.media_type.as_str());
    digest_headers(&mut b, &m.digest);
    if req.method() == Method::HEAD {
        return Ok(b.body(HeadBody(m.body.len() as u64)));
    }
    reg.announce_pulls(repo, &m.media_type, &m.body);
    Ok(b.body(m.body))
}

/// Reads and drops what is left of a refused body, up to a few times `limit`, so the client,
/// still sending, reads the refusal instead of a reset connection (a body larger than that is
/// cut off: the connection closes).
async fn drain(payload: &mut web::Payload, limit: u64) {
    let mut left = limit.saturating_mul(4).max(16 << 20);
    while let Some(Ok(chunk)) = payload.next().await {
        left = left.saturating_sub(chunk.len() as u64);
        if left == 0 {
            break;
        }
    }
}

async fn put_manifest(
    req: &HttpRequest,
    mut payload: web::Payload,
    reg: &Registry,
    repo: &RepoName,
    reference: &Reference,
) -> Result<HttpResponse> {
    let limit = reg.config().max_manifest_bytes;
    let too_large = || RegistryError::TooLarge {
        what: "manifest",
        limit,
    };
    if content_length(req.headers())?.is_some_and(|n| n > limit) {
        drain(&mut payload, limit).await;
        return Err(too_large());
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| RegistryError::ManifestInvalid(format!("reading request body: {e}")))?;
        if (body.len() + chunk.len()) as u64 > limit {
            drain(&mut payload, limit).await;
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let out = reg
        .put_manifest(repo, reference, content_type, body.freeze())
        .await?;
    let mut b = HttpResponse::Created();
    b.insert_header((
        header::LOCATION,
        format!("/v2/{repo}/manifests/{}", out.digest),
    ));
    digest_headers(&mut b, &out.digest);
    if let Some(s) = &out.subject {
        b.insert_header(("OCI-Subject", s.to_string()));
    }
    Ok(b.finish())
}

// ---- discovery ----------------------------------------------------------------------------

/// `n` and `last` of a listing request. A missing `n` means the default page size.
fn page_params(req: &HttpRequest) -> Result<(Option<usize>, Option<String>)> {
    let q = query(req);
    let n = match q.get("n") {
        None => None,
        Some(s) => Some(
            s.parse::<usize>()
                .map_err(|_| RegistryError::PaginationInvalid(format!("n={s} is not a number")))?,
        ),
    };
    Ok((n, q.get("last").cloned()))
}

/// Attach `Link: <path?n=N&last=X>; rel="next"` when more results follow.
fn paginate(b: &mut HttpResponseBuilder, path: &str, n: Option<usize>, page: &Page) {
    if let (true, Some(last)) = (page.more, page.items.last()) {
        let n = n.unwrap_or(crate::registry::DEFAULT_PAGE);
        b.insert_header((
            header::LINK,
            format!("<{path}?n={n}&last={last}>; rel=\"next\""),
        ));
    }
}

fn tags_list(req: &HttpRequest, reg: &Registry, repo: &RepoName) -> Result<HttpResponse> {
    let (n, last) = page_params(req)?;
    let page = reg.tags(repo, cursor(last.as_deref()), n)?;
    let mut b = HttpResponse::Ok();
    paginate(&mut b, &format!("/v2/{repo}/tags/list"), n, &page);
    Ok(b.json(json!({ "name": repo.as_str(), "tags": page.items })))
}

/// The catalog lists the repositories the caller may pull.
async fn catalog(
    req: HttpRequest,
    gate: web::Data<Gate>,
    reg: web::Data<Registry>,
) -> Result<HttpResponse> {
    let who = gate.check(&req, Need::Anyone)?;
    let (n, last) = page_params(&req)?;
    let page = reg.catalog(cursor(last.as_deref()), n, &|r| gate.may_pull(&who, r))?;
    let mut b = HttpResponse::Ok();
    paginate(&mut b, "/v2/_catalog", n, &page);
    Ok(b.json(json!({ "repositories": page.items })))
}

fn referrers(req: &HttpRequest, reg: &Registry, repo: &RepoName, d: &str) -> Result<HttpResponse> {
    let subject = parse_digest(d)?;
    let q = query(req);
    let filter = q.get("artifactType").map(String::as_str);
    let manifests = reg.referrers(repo, &subject, filter)?;
    let mut b = HttpResponse::Ok();
    b.content_type(manifest::OCI_INDEX);
    if filter.is_some() {
        b.insert_header(("OCI-Filters-Applied", "artifactType"));
    }
    Ok(b.body(
        json!({
            "schemaVersion": 2,
            "mediaType": manifest::OCI_INDEX,
            "manifests": manifests,
        })
        .to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    #[test]
    fn routes_from_the_end() {
        assert_eq!(split_route("a/b/tags/list"), Some(("a/b", Endpoint::Tags)));
        assert_eq!(
            split_route("a/manifests/manifests/latest"),
            Some(("a/manifests", Endpoint::Manifest("latest")))
        );
        assert_eq!(
            split_route("x/blobs/uploads/"),
            Some(("x", Endpoint::Uploads))
        );
        assert_eq!(
            split_route("x/blobs/uploads"),
            Some(("x", Endpoint::Uploads))
        );
        assert_eq!(
            split_route("x/y/blobs/uploads/abc"),
            Some(("x/y", Endpoint::Upload("abc")))
        );
        assert_eq!(
            split_route("x/blobs/sha256:00"),
            Some(("x", Endpoint::Blob("sha256:00")))
        );
        assert_eq!(
            split_route("x/referrers/sha256:00"),
            Some(("x", Endpoint::Referrers("sha256:00")))
        );
        assert_eq!(split_route("x/other/y"), None);
        assert_eq!(split_route("x"), None);
    }

    fn range(v: &str, size: u64) -> Result<Option<(u64, u64)>> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
        parse_range(&h, size)
    }

    #[test]
    fn ranges() {
        assert_eq!(range("bytes=0-9", 100).unwrap(), Some((0, 10)));
        assert_eq!(range("bytes=90-200", 100).unwrap(), Some((90, 10)));
        assert_eq!(range("bytes=10-", 100).unwrap(), Some((10, 90)));
        assert_eq!(range("bytes=-10", 100).unwrap(), Some((90, 10)));
        assert_eq!(range("bytes=-1000", 100).unwrap(), Some((0, 100)));
        assert!(range("bytes=100-", 100).is_err());
        assert!(range("bytes=0-0", 0).is_err());
        assert_eq!(range("items=0-1", 100).unwrap(), None);
        assert_eq!(range("bytes=5-1", 100).unwrap(), None);
        assert_eq!(range("bytes=0-1,5-6", 100).unwrap(), None);
    }

    #[test]
    fn content_ranges() {
        let mut h = HeaderMap::new();
        assert_eq!(content_range(&h).unwrap(), (None, None));
        h.insert(header::CONTENT_RANGE, HeaderValue::from_static("0-99"));
        assert_eq!(content_range(&h).unwrap(), (Some(0), Some(100)));
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_static("bytes 100-199/*"),
        );
        assert_eq!(content_range(&h).unwrap(), (Some(100), Some(100)));
        h.insert(header::CONTENT_RANGE, HeaderValue::from_static("9-1"));
        assert!(content_range(&h).is_err());
    }
}
