//! The registry's listener: actix-server and actix-http put together as actix-web's
//! `HttpServer` does, with each connection read through a [`Wire`] so malformed request
//! heads get the registry's error envelope (see [`super::wire`]).
//!
//! Plain HTTP is HTTP/1.1 only (as `HttpServer::bind`); over TLS, ALPN chooses HTTP/2 or
//! HTTP/1.1, and HTTP/2 connections, which actix-http's h2 layer frames itself, are passed
//! through unwatched.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use actix_http::{body::MessageBody, HttpService, Protocol, Request, Response};
use actix_server::Server;
use actix_service::{
    fn_service, map_config, IntoServiceFactory, ServiceFactory, ServiceFactoryExt,
};
use actix_tls::accept::rustls_0_23::{Acceptor, TlsStream};
use actix_tls::accept::TlsError;
use actix_web::dev::AppConfig;
use actix_web::rt::net::TcpStream;

use super::wire::Wire;

/// How the listener is run.
pub struct Listen {
    pub addr: SocketAddr,
    pub workers: usize,
    pub shutdown_timeout: u64,
    /// TLS, with the ALPN protocols offered.
    pub tls: Option<rustls::ServerConfig>,
}

/// Connections waiting to be accepted (actix-web's default).
const BACKLOG: u32 = 1024;

/// Binds `listen.addr` and builds the server; returns it with the address bound.
pub fn serve<F, I, S, B>(listen: Listen, app: F) -> io::Result<(Server, SocketAddr)>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: std::fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    <S::Service as actix_service::Service<Request>>::Future: 'static,
    S::Service: 'static,
    B: MessageBody + 'static,
{
    let lst = listener(listen.addr)?;
    let addr = lst.local_addr()?;
    // actix-web's own mapping of an App to what actix-http serves.
    let app = move || {
        let app = app().into_factory().map_err(|e| e.into().error_response());
        map_config(app, |_| AppConfig::default())
    };
    let builder = Server::build()
        .workers(listen.workers)
        .shutdown_timeout(listen.shutdown_timeout)
        .backlog(BACKLOG);
    let builder = match listen.tls {
        None => builder.listen("stowage", lst, move || {
            fn_service(|io: TcpStream| async move {
                let _ = io.set_nodelay(true);
                let peer = io.peer_addr().ok();
                Ok((Wire::watch(io), Protocol::Http1, peer))
            })
            .and_then(HttpService::build().local_addr(addr).finish(app()))
        })?,
        Some(tls) => builder.listen("stowage-tls", lst, move || {
            let mut acceptor = Acceptor::new(tls.clone());
            acceptor.set_handshake_timeout(Duration::from_secs(3));
            acceptor
                .map_init_err(|_| ())
                .map_err(|e: TlsError<io::Error, Infallible>| match e {
                    TlsError::Tls(e) => actix_http::error::DispatchError::Io(e),
                    TlsError::Timeout => actix_http::error::DispatchError::Io(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "TLS handshake timed out",
                    )),
                    TlsError::Service(never) => match never {},
                })
                .and_then(fn_service(|io: TlsStream<TcpStream>| async move {
                    let (tcp, tls) = io.get_ref();
                    let _ = tcp.set_nodelay(true);
                    let peer = tcp.peer_addr().ok();
                    Ok(if tls.alpn_protocol() == Some(b"h2") {
                        (Wire::pipe(io), Protocol::Http2, peer)
                    } else {
                        (Wire::watch(io), Protocol::Http1, peer)
                    })
                }))
                .and_then(HttpService::build().local_addr(addr).finish(app()))
        })?,
    };
    Ok((builder.run(), addr))
}

/// A TCP listener as actix-web makes one: address reuse, a deep backlog.
fn listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)?.into_std()
}
