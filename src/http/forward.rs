//! A replica's writes, forwarded to the writer (`--writer-url`): one name in front of several
//! nodes serves pushes too. The request goes on as it came (method, path and query, headers but
//! the hop-by-hop ones, the body streamed); the writer's answer comes back whole (answers to
//! writes are small). Upload URLs the writer hands out are paths (`/v2/.../uploads/<id>`), so a
//! client's next request reaches this node again and is forwarded again.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;

use crate::error::{RegistryError, Result};

/// Headers that describe one connection, not the request.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

/// Where a replica forwards writes.
pub struct Writer {
    client: reqwest::Client,
    base: String,
}

impl Writer {
    pub fn new(url: &str) -> Writer {
        Writer {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("an HTTP client"),
            base: url.trim_end_matches('/').to_string(),
        }
    }

    /// Sends `req` with `payload` to the writer; its answer.
    pub async fn forward(
        &self,
        req: &HttpRequest,
        mut payload: web::Payload,
    ) -> Result<HttpResponse> {
        let unreachable = |e: reqwest::Error| {
            RegistryError::ObjectStore(format!("forwarding to the writer: {e}"))
        };
        let url = format!("{}{}", self.base, req.uri());
        let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes())
            .map_err(|e| RegistryError::Internal(e.to_string()))?;
        let mut out = self.client.request(method, &url);
        for (name, value) in req.headers() {
            if !HOP_BY_HOP.contains(&name.as_str()) {
                out = out.header(name.as_str(), value.as_bytes());
            }
        }
        if let Some(n) = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
        {
            out = out.header("content-length", n);
        }
        // The payload is this worker's own (not Send): it is read here and handed over.
        let (tx, rx) =
            tokio::sync::mpsc::channel::<std::result::Result<bytes::Bytes, std::io::Error>>(4);
        actix_web::rt::spawn(async move {
            while let Some(piece) = payload.next().await {
                let piece = piece.map_err(|e| std::io::Error::other(e.to_string()));
                let failed = piece.is_err();
                if tx.send(piece).await.is_err() || failed {
                    break;
                }
            }
        });
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|piece| (piece, rx))
        });
        let answer = out
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .map_err(unreachable)?;
        let status = StatusCode::from_u16(answer.status().as_u16())
            .map_err(|e| RegistryError::Internal(e.to_string()))?;
        let mut back = HttpResponse::build(status);
        for (name, value) in answer.headers() {
            if !HOP_BY_HOP.contains(&name.as_str()) {
                back.append_header((name.as_str(), value.as_bytes()));
            }
        }
        let bytes = answer.bytes().await.map_err(unreachable)?;
        Ok(back.body(bytes))
    }
}
