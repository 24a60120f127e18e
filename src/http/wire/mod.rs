//! The connection as actix-http reads it: request heads looked at before it parses them.
//!
//! actix-http answers a request head it cannot parse (longer than its buffer, too many
//! headers, `Transfer-Encoding` with `Content-Length`, ...) itself, with a bare 400 or 431,
//! before any handler or middleware runs, and offers no hook for that answer. [`Wire`] sits
//! between the socket (or the TLS stream) and actix-http: it holds each HTTP/1 request head
//! until it is complete, judges it by actix-http's rules ([`head`]), and in place of a head
//! actix-http would refuse hands on a well-formed stand-in, `GET /_malformed/<reason>` with
//! `Connection: close`, which the registry answers with its error envelope; the input ends
//! there. Accepted heads pass unchanged; bodies pass through while their framing
//! (`Content-Length`, or chunked: [`chunked`]) is followed to find the next head. What it
//! does not follow (an upgrade, CONNECT, chunked framing actix-http would refuse, HTTP/2)
//! turns it into a plain pipe for the rest of the connection, where actix-http decides as
//! it always has.

pub mod chunked;
pub mod head;

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use chunked::{Chunked, Step};
use head::{Body, Malformed, Verdict};

/// The path the stand-in request names (`/_malformed/<reason>`).
pub const STAND_IN_PATH: &str = "/_malformed/";

/// How much is read from the socket at a time while a head is held.
const READ_AHEAD: usize = 8 * 1024;

/// A head still incomplete is judged again after this many more bytes.
const JUDGE_EVERY: usize = 4 * 1024;

#[derive(Debug)]
enum State {
    /// Reading a request head; `Wire::held` has what came of it so far.
    Head,
    /// Handing on this many more bytes of an accepted head from `Wire::held`, then its body.
    Release(usize, Body),
    /// This many more body bytes.
    Length(u64),
    Chunked(Chunked),
    /// Not followed: everything passes through.
    Pipe,
    /// The stand-in for a refused head being handed on; then end of input.
    StandIn,
    Ended,
}

pub struct Wire<T> {
    io: T,
    /// Read from `io` and not yet handed on (a held head, or what followed a body).
    held: BytesMut,
    /// How far `held` was searched for the end of the head.
    searched: usize,
    /// How much of `held` was there when the head was last judged (0: not yet).
    judged: usize,
    state: State,
}

impl<T> Wire<T> {
    /// A connection whose HTTP/1 heads are looked at.
    pub fn watch(io: T) -> Self {
        Wire::with_state(io, State::Head)
    }

    /// A connection passed through unwatched (HTTP/2 over TLS).
    pub fn pipe(io: T) -> Self {
        Wire::with_state(io, State::Pipe)
    }

    fn with_state(io: T, state: State) -> Self {
        Wire {
            io,
            held: BytesMut::new(),
            searched: 0,
            judged: 0,
            state,
        }
    }

    /// The state after a head's bytes, from how its body is framed.
    fn body(&mut self, body: Body) -> State {
        self.searched = 0;
        self.judged = 0;
        match body {
            Body::None => State::Head,
            Body::Length(n) => State::Length(n),
            Body::Chunked => State::Chunked(Chunked::default()),
            Body::Opaque => State::Pipe,
        }
    }

    /// Whether to judge the held bytes now: the first bytes of a head (what is not HTTP at
    /// all, a TLS hello on the plain port say, is answered at once, not after the client's
    /// timeout), an empty line seen, the limit reached, or another [`JUDGE_EVERY`] bytes
    /// (httparse finds a bad request line before the head ends; judging at every byte of a
    /// slowly sent head would cost its square).
    fn time_to_judge(&mut self) -> bool {
        let from = self.searched.saturating_sub(2);
        let ended = self.held[from..]
            .windows(2)
            .any(|w| w == b"\n\n" || w == b"\n\r");
        self.searched = self.held.len();
        let due = self.judged == 0
            || ended
            || self.held.len() >= head::MAX_HEAD
            || self.held.len() - self.judged >= JUDGE_EVERY;
        if due {
            self.judged = self.held.len();
        }
        due
    }

    fn refuse(&mut self, why: Malformed) {
        tracing::debug!(
            reason = why.slug(),
            "malformed request head answered in place of actix-http"
        );
        self.held.clear();
        self.held.extend_from_slice(
            format!(
                "GET {STAND_IN_PATH}{} HTTP/1.1\r\nHost: stowage\r\nConnection: close\r\n\r\n",
                why.slug()
            )
            .as_bytes(),
        );
        self.state = State::StandIn;
    }

    /// Hands on up to `n` held bytes.
    fn give(&mut self, n: usize, buf: &mut ReadBuf<'_>) -> usize {
        let n = n.min(self.held.len()).min(buf.remaining());
        buf.put_slice(&self.held[..n]);
        self.held.advance(n);
        n
    }
}

impl<T: AsyncRead + Unpin> Wire<T> {
    /// Reads more of a head into `held`; `Ok(0)` at end of input.
    fn poll_hold(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let start = self.held.len();
        self.held.resize(start + READ_AHEAD, 0);
        let mut rb = ReadBuf::new(&mut self.held[start..]);
        let res = Pin::new(&mut self.io).poll_read(cx, &mut rb);
        let n = rb.filled().len();
        self.held.truncate(start + n);
        ready!(res)?;
        Poll::Ready(Ok(n))
    }

    /// Reads from the socket straight into `buf`, at most `limit` bytes; returns the bytes read.
    fn poll_direct(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        limit: usize,
    ) -> Poll<io::Result<usize>> {
        let before = buf.filled().len();
        let limit = limit.min(buf.remaining());
        let mut part = buf.take(limit);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut part))?;
        let n = part.filled().len();
        // SAFETY: `part` is `buf`'s unfilled space, and `poll_read` initialised these `n` bytes.
        unsafe { buf.assume_init(n) };
        buf.set_filled(before + n);
        Poll::Ready(Ok(n))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Wire<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            match this.state {
                State::Head => {
                    if !this.held.is_empty() && this.time_to_judge() {
                        match head::inspect(&this.held) {
                            Verdict::Complete { len, body } => {
                                this.state = State::Release(len, body);
                                continue;
                            }
                            Verdict::Refuse(why) => {
                                this.refuse(why);
                                continue;
                            }
                            Verdict::Incomplete => {}
                        }
                    }
                    if ready!(this.poll_hold(cx))? == 0 {
                        if this.held.is_empty() {
                            return Poll::Ready(Ok(()));
                        }
                        // The peer stopped inside a head: actix-http sees it as before.
                        this.state = State::Pipe;
                    }
                }
                State::Release(n, body) => {
                    let given = this.give(n, buf);
                    this.state = if given == n {
                        this.body(body)
                    } else {
                        State::Release(n - given, body)
                    };
                    return Poll::Ready(Ok(()));
                }
                State::Length(left) => {
                    let limit = usize::try_from(left).unwrap_or(usize::MAX);
                    let n = if this.held.is_empty() {
                        ready!(this.poll_direct(cx, buf, limit))?
                    } else {
                        this.give(limit, buf)
                    };
                    if n > 0 {
                        let left = left - n as u64;
                        this.state = if left == 0 {
                            this.body(Body::None)
                        } else {
                            State::Length(left)
                        };
                    }
                    return Poll::Ready(Ok(()));
                }
                State::Chunked(ref mut framing) => {
                    let before = buf.filled().len();
                    let step = if this.held.is_empty() {
                        let mut framing = framing.clone();
                        let n = ready!(this.poll_direct(cx, buf, usize::MAX))?;
                        let step = framing.advance(&buf.filled()[before..before + n]);
                        if let Step::Done(used) = step {
                            // What follows the body is the next head: hold it back.
                            this.held.extend_from_slice(&buf.filled()[before + used..]);
                            buf.set_filled(before + used);
                        }
                        this.state = State::Chunked(framing);
                        step
                    } else {
                        let n = this.held.len().min(buf.remaining());
                        let step = framing.advance(&this.held[..n]);
                        let give = match step {
                            Step::Done(used) => used,
                            _ => n,
                        };
                        this.give(give, buf);
                        step
                    };
                    match step {
                        Step::More => {}
                        Step::Done(_) => this.state = this.body(Body::None),
                        Step::Lost => this.state = State::Pipe,
                    }
                    return Poll::Ready(Ok(()));
                }
                State::Pipe => {
                    if !this.held.is_empty() {
                        this.give(usize::MAX, buf);
                        return Poll::Ready(Ok(()));
                    }
                    return Pin::new(&mut this.io).poll_read(cx, buf);
                }
                State::StandIn => {
                    this.give(usize::MAX, buf);
                    if this.held.is_empty() {
                        this.state = State::Ended;
                    }
                    return Poll::Ready(Ok(()));
                }
                State::Ended => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Wire<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// What actix-http would read through a [`Wire`] from `input` fed in pieces of `piece`
    /// bytes, read with a buffer of `read` bytes.
    async fn through(input: &[u8], piece: usize, read: usize) -> Vec<u8> {
        let mut wire = Wire::watch(pieces(input, piece));
        let mut out = Vec::new();
        let mut buf = vec![0u8; read];
        loop {
            let n = wire.read(&mut buf).await.unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    /// A reader giving `input` in pieces (as a socket would).
    fn pieces(input: &[u8], piece: usize) -> impl AsyncRead + Unpin {
        let parts: Vec<Vec<u8>> = input.chunks(piece.max(1)).map(<[u8]>::to_vec).collect();
        Pieces(parts.into_iter().collect())
    }

    struct Pieces(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(mut p) = self.0.pop_front() {
                let n = p.len().min(buf.remaining());
                buf.put_slice(&p[..n]);
                if n < p.len() {
                    self.0.push_front(p.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    fn sizes() -> impl Iterator<Item = (usize, usize)> {
        [1, 2, 3, 7, 64, 4096]
            .into_iter()
            .flat_map(|p| [1, 5, 16, 8192].into_iter().map(move |r| (p, r)))
    }

    #[actix_web::test]
    async fn passes_good_requests_unchanged() {
        // A body holding what looks like a bad head must not be judged.
        let body = b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        let mut input = Vec::new();
        input.extend_from_slice(b"GET /v2/ HTTP/1.1\r\nHost: r\r\n\r\n");
        input.extend_from_slice(
            format!(
                "PATCH /v2/a/blobs/uploads/u HTTP/1.1\r\nHost: r\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        input.extend_from_slice(body);
        input.extend_from_slice(b"GET /v2/ HTTP/1.1\r\nHost: r\r\nContent-Length: 3\r\n\r\nTE+");
        input.extend_from_slice(
            b"PUT /v2/a/blobs/uploads/u HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        input.extend_from_slice(b"4\r\nGET \r\n0\r\n\r\n");
        input.extend_from_slice(b"HEAD /v2/a/blobs/x HTTP/1.1\r\nHost: r\r\n\r\n");
        for (piece, read) in sizes() {
            assert_eq!(
                through(&input, piece, read).await,
                input,
                "pieces {piece}, reads {read}"
            );
        }
    }

    #[actix_web::test]
    async fn stands_in_for_a_bad_head_after_good_ones() {
        let good = b"GET /v2/ HTTP/1.1\r\nHost: r\r\nContent-Length: 2\r\n\r\nok";
        let mut input = good.to_vec();
        input.extend_from_slice(b"POST /v2/ HTTP/1.1\r\nHost: r\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v2/ HTTP/1.1\r\nHost: r\r\n\r\n");
        let mut want = good.to_vec();
        want.extend_from_slice(b"GET /_malformed/content-length-and-transfer-encoding HTTP/1.1\r\nHost: stowage\r\nConnection: close\r\n\r\n");
        for (piece, read) in sizes() {
            assert_eq!(
                through(&input, piece, read).await,
                want,
                "pieces {piece}, reads {read}"
            );
        }
    }

    #[actix_web::test]
    async fn stands_in_at_once_for_what_is_not_http() {
        // The start of a TLS ClientHello, as a client trying HTTPS first sends: answered
        // without waiting for a head that will never end.
        let hello = [
            0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 7, 7,
        ];
        let mut wire = Wire::watch(pieces(&hello, hello.len()));
        let mut buf = vec![0u8; 4096];
        let n = wire.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"GET /_malformed/syntax "),
            "{:?}",
            &buf[..n]
        );
    }

    #[actix_web::test]
    async fn stands_in_for_an_endless_head() {
        let mut input = b"GET /".to_vec();
        input.resize(200_000, b'a');
        let out = through(&input, 4096, 8192).await;
        assert_eq!(
            out,
            b"GET /_malformed/head-too-large HTTP/1.1\r\nHost: stowage\r\nConnection: close\r\n\r\n"
        );
    }

    #[actix_web::test]
    async fn an_unfollowed_body_is_piped() {
        let input = b"PUT /x HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET / HTTP/1.1\r\n\r\n";
        for (piece, read) in sizes() {
            assert_eq!(through(input, piece, read).await, input.to_vec());
        }
    }
}
