//! Which HTTP/1 request heads actix-http would refuse, found by its own rules.
//!
//! actix-http 3 (`h1/decoder.rs`) parses heads with httparse and then refuses: too many
//! headers or a head over its buffer (431); a syntax error httparse reports, a method or
//! target the `http` crate cannot hold; a repeated, signed or non-numeric `Content-Length`;
//! a repeated or unknown `Transfer-Encoding`, or one in HTTP/1.0, or one with
//! `Content-Length`; a repeated `Host`, or none in HTTP/1.1; an HTTP/1.0 POST without a
//! length (400). [`inspect`] applies the same rules to a held head. It only ever refuses
//! what actix-http refuses: a head it lets through reaches actix-http unchanged, so a rule
//! missed here still gets actix-http's own bare answer, never a wrong one.

use actix_web::http::{Method, Uri};

/// The longest head passed on (actix-http refuses from 128 KiB of unparsed input; real
/// clients send a few KiB).
pub const MAX_HEAD: usize = 64 * 1024;

/// actix-http's limit on the number of header fields.
const MAX_HEADERS: usize = 96;

/// What a held head is.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// More bytes are needed.
    Incomplete,
    /// A head actix-http accepts: `len` bytes, then a body framed as `body`.
    Complete { len: usize, body: Body },
    /// A head actix-http would answer with a bare error.
    Refuse(Malformed),
}

/// How the body after an accepted head is framed.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Body {
    None,
    Length(u64),
    Chunked,
    /// Not followed (an upgrade, CONNECT): the rest of the connection passes through.
    Opaque,
}

/// Why a head is refused; each becomes the envelope's message.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Malformed {
    HeadTooLarge,
    TooManyHeaders,
    Syntax,
    Target,
    ContentLength,
    TransferEncoding,
    LengthAndEncoding,
    Host,
    PostWithoutLength,
}

impl Malformed {
    const ALL: [Malformed; 9] = [
        Malformed::HeadTooLarge,
        Malformed::TooManyHeaders,
        Malformed::Syntax,
        Malformed::Target,
        Malformed::ContentLength,
        Malformed::TransferEncoding,
        Malformed::LengthAndEncoding,
        Malformed::Host,
        Malformed::PostWithoutLength,
    ];

    /// The name carried in the stand-in request's path.
    pub fn slug(self) -> &'static str {
        match self {
            Malformed::HeadTooLarge => "head-too-large",
            Malformed::TooManyHeaders => "too-many-headers",
            Malformed::Syntax => "syntax",
            Malformed::Target => "target",
            Malformed::ContentLength => "content-length",
            Malformed::TransferEncoding => "transfer-encoding",
            Malformed::LengthAndEncoding => "content-length-and-transfer-encoding",
            Malformed::Host => "host",
            Malformed::PostWithoutLength => "post-without-length",
        }
    }

    pub fn from_slug(s: &str) -> Option<Malformed> {
        Malformed::ALL.into_iter().find(|m| m.slug() == s)
    }

    /// 431 for heads too big to read, 400 for the rest (as actix-http and RFC 9110 answer).
    pub fn too_large(self) -> bool {
        matches!(self, Malformed::HeadTooLarge | Malformed::TooManyHeaders)
    }

    pub fn message(self) -> String {
        match self {
            Malformed::HeadTooLarge => {
                format!("the request line and headers are longer than {MAX_HEAD} bytes")
            }
            Malformed::TooManyHeaders => {
                format!("the request has more than {MAX_HEADERS} header fields")
            }
            Malformed::Syntax => "the request line or a header field is not valid HTTP/1.1".into(),
            Malformed::Target => "the request target is not a valid URI".into(),
            Malformed::ContentLength => {
                "Content-Length is repeated or not a non-negative decimal number".into()
            }
            Malformed::TransferEncoding => {
                "Transfer-Encoding is repeated, used in HTTP/1.0, or other than chunked".into()
            }
            Malformed::LengthAndEncoding => {
                "both Content-Length and Transfer-Encoding are set (RFC 9112 6.3 forbids it)".into()
            }
            Malformed::Host => "HTTP/1.1 needs exactly one Host header".into(),
            Malformed::PostWithoutLength => "an HTTP/1.0 POST needs a Content-Length".into(),
        }
    }
}

/// Judges the head at the start of `buf` (which may hold more than the head).
pub fn inspect(buf: &[u8]) -> Verdict {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Verdict::Refuse(Malformed::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Verdict::Incomplete,
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
            return Verdict::Refuse(Malformed::HeadTooLarge)
        }
        Ok(httparse::Status::Complete(len)) => len,
        Err(httparse::Error::TooManyHeaders) => return Verdict::Refuse(Malformed::TooManyHeaders),
        Err(_) => return Verdict::Refuse(Malformed::Syntax),
    };
    match judge(&req) {
        Ok(body) => Verdict::Complete { len, body },
        Err(m) => Verdict::Refuse(m),
    }
}

/// actix-http's checks on a parsed head (`MessageType::set_headers` and `Request::decode`).
fn judge(req: &httparse::Request<'_, '_>) -> Result<Body, Malformed> {
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| Malformed::Syntax)?;
    Uri::try_from(req.path.unwrap_or_default()).map_err(|_| Malformed::Target)?;
    let http11 = req.version == Some(1);
    let (mut length, mut chunked, mut seen_te, mut seen_host) = (None, false, false, false);
    let (mut any_te, mut upgrade) = (false, false);
    for h in req.headers.iter() {
        let name = h.name;
        // `HeaderValue::to_str`: visible ASCII and tab only.
        let text = std::str::from_utf8(h.value)
            .ok()
            .filter(|s| s.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)));
        if name.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Err(Malformed::ContentLength);
            }
            let v = text.map(str::trim).ok_or(Malformed::ContentLength)?;
            if v.starts_with('+') {
                return Err(Malformed::ContentLength);
            }
            length = Some(v.parse::<u64>().map_err(|_| Malformed::ContentLength)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            any_te = true;
            if !http11 {
                continue;
            }
            if seen_te {
                return Err(Malformed::TransferEncoding);
            }
            seen_te = true;
            match text.map(str::trim) {
                Some(v) if v.eq_ignore_ascii_case("chunked") => chunked = true,
                Some(v) if v.eq_ignore_ascii_case("identity") => {}
                _ => return Err(Malformed::TransferEncoding),
            }
        } else if name.eq_ignore_ascii_case("host") {
            if seen_host {
                return Err(Malformed::Host);
            }
            seen_host = true;
        } else if name.eq_ignore_ascii_case("upgrade")
            || (name.eq_ignore_ascii_case("connection")
                && text.is_some_and(|v| {
                    v.split(',')
                        .any(|o| o.trim().eq_ignore_ascii_case("upgrade"))
                }))
        {
            upgrade = true;
        }
    }
    if http11 && !seen_host {
        return Err(Malformed::Host);
    }
    if any_te {
        // HTTP/1.0, or `identity`: actix-http wants the last coding to be chunked.
        if !http11 || !chunked {
            return Err(Malformed::TransferEncoding);
        }
        if length.is_some() {
            return Err(Malformed::LengthAndEncoding);
        }
    }
    if !http11 && method == Method::POST && length.is_none() && !upgrade {
        return Err(Malformed::PostWithoutLength);
    }
    Ok(if upgrade || method == Method::CONNECT {
        Body::Opaque
    } else if chunked {
        Body::Chunked
    } else {
        match length {
            Some(0) | None => Body::None,
            Some(n) => Body::Length(n),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(s: &str) -> Verdict {
        inspect(s.as_bytes())
    }

    #[test]
    fn accepts_what_clients_send() {
        let head =
            "PATCH /v2/a/blobs/uploads/x HTTP/1.1\r\nHost: r\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(
            verdict(head),
            Verdict::Complete {
                len: head.len() - 5,
                body: Body::Length(5)
            }
        );
        let head =
            "PUT /v2/a/blobs/uploads/x HTTP/1.1\r\nhost: r\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(
            verdict(head),
            Verdict::Complete {
                len: head.len(),
                body: Body::Chunked
            }
        );
        let head = "GET /v2/ HTTP/1.1\r\nHost: r\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            verdict(head),
            Verdict::Complete {
                len: head.len(),
                body: Body::None
            }
        );
        let head = "GET /v2/ HTTP/1.0\r\n\r\n";
        assert_eq!(
            verdict(head),
            Verdict::Complete {
                len: head.len(),
                body: Body::None
            }
        );
        let head = "GET /ws HTTP/1.1\r\nHost: r\r\nConnection: keep-alive, Upgrade\r\n\r\n";
        assert_eq!(
            verdict(head),
            Verdict::Complete {
                len: head.len(),
                body: Body::Opaque
            }
        );
        assert_eq!(
            verdict("GET /v2/ HTTP/1.1\r\nHost: r\r\n"),
            Verdict::Incomplete
        );
    }

    #[test]
    fn refuses_what_actix_http_refuses() {
        let cases = [
            ("GET /v2/ HTTP/1.1\r\nHost: r\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", Malformed::LengthAndEncoding),
            ("GET /v2/ HTTP/1.1\r\nHost: r\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", Malformed::ContentLength),
            ("GET /v2/ HTTP/1.1\r\nHost: r\r\nContent-Length: +3\r\n\r\n", Malformed::ContentLength),
            ("GET /v2/ HTTP/1.1\r\nHost: r\r\nContent-Length: x\r\n\r\n", Malformed::ContentLength),
            ("GET /v2/ HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: gzip\r\n\r\n", Malformed::TransferEncoding),
            ("GET /v2/ HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: identity\r\n\r\n", Malformed::TransferEncoding),
            ("GET /v2/ HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", Malformed::TransferEncoding),
            ("POST /v2/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", Malformed::TransferEncoding),
            ("GET /v2/ HTTP/1.1\r\n\r\n", Malformed::Host),
            ("GET /v2/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Malformed::Host),
            ("POST /v2/ HTTP/1.0\r\n\r\n", Malformed::PostWithoutLength),
            ("GET /v2/ HTTP/1.1\r\nHost r\r\n\r\n", Malformed::Syntax),
            ("GET /v2/ HTTP/3.1\r\nHost: r\r\n\r\n", Malformed::Syntax),
        ];
        for (head, want) in cases {
            assert_eq!(verdict(head), Verdict::Refuse(want), "{head:?}");
        }
        let long = format!("GET /{} HTTP/1.1\r\nHost: r\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(verdict(&long), Verdict::Refuse(Malformed::HeadTooLarge));
        assert_eq!(
            verdict(&long[..MAX_HEAD]),
            Verdict::Refuse(Malformed::HeadTooLarge)
        );
        let many: String = (0..100).map(|i| format!("X-{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\nHost: r\r\n{many}\r\n");
        assert_eq!(verdict(&many), Verdict::Refuse(Malformed::TooManyHeaders));
    }

    #[test]
    fn slugs_round_trip() {
        for m in Malformed::ALL {
            assert_eq!(Malformed::from_slug(m.slug()), Some(m));
        }
        assert_eq!(Malformed::from_slug("nonsense"), None);
    }
}
