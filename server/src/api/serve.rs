//! Serving the API so that no client can starve the node: a cap on open connections
//! (beyond it new ones wait in the listen backlog while the open ones are served), a
//! deadline for a request's headers (slowloris, and idle connections between
//! requests), and one for a write that makes no progress (a reader that never reads).
//! The peer port has its own listener and limits, so whatever clients do here, the
//! members keep reaching each other.
//!
//! Near the cap, a connection taken in gets a tenth of the header deadline (half a
//! second at least) for each of its requests: a client with a request to make sends
//! it at once, while connections that only hold a place are let go ten times faster,
//! so those waiting behind them in the backlog get in. (Connections taken in before
//! the pressure keep their deadline.) Over TLS the handshake has the same deadline,
//! before the first request's.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

pub use super::auth::Peer;
use super::tls::ApiTls;

/// The shortest header deadline near the connection cap.
const PRESSED_HEADER_TIMEOUT: Duration = Duration::from_millis(500);

/// How long open connections get to finish once the server stops.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// Limits of the client API's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServeLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Time a client has to send a request's headers, from when the connection opens
    /// or its previous response went out.
    pub header_timeout: Duration,
    /// Time a response write may make no progress before the connection is dropped.
    pub write_timeout: Duration,
}

/// Serves `router` on `listener` within `limits`, over TLS when `tls` is given, until
/// `shutdown` resolves, then lets open requests finish (10 s at most). Each request
/// carries the [`Peer`] address it came from.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    tls: Option<Arc<ApiTls>>,
    shutdown: impl Future<Output = ()>,
) {
    // HTTP/1 only: telling HTTP/1 from HTTP/2 waits for a client's first bytes with no
    // deadline, which would let a connection that sends nothing hold its place.
    let builder = |header_timeout| {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout);
        builder
    };
    let pressed_timeout = (limits.header_timeout / 10)
        .max(PRESSED_HEADER_TIMEOUT)
        .min(limits.header_timeout);
    let (relaxed, pressed) = (builder(limits.header_timeout), builder(pressed_timeout));
    let max_connections = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let permits = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut refusals = crate::throttle::Throttle::new(Duration::from_secs(60));
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // never closed
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors, most likely: wait a little instead of spinning,
                    // and say so at most once a minute.
                    if let Some(held) = refusals.allow(()) {
                        tracing::warn!(%error, held, "accepting an API connection failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Answers go out as soon as they are written, not held for coalescing (Nagle).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on an API connection");
        }
        // Seven eighths of the places taken: pressed.
        let (builder, header_timeout) =
            match permits.available_permits() < max_connections.div_ceil(8) {
                true => (&pressed, pressed_timeout),
                false => (&relaxed, limits.header_timeout),
            };
        let stream = Guarded::new(stream, permit, limits.write_timeout);
        let service = TowerToHyperService::new(router.clone().map_request(
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(Peer(peer));
                request
            },
        ));
        let Some(tls) = &tls else {
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::spawn(finish(graceful.watch(connection)));
            continue;
        };
        // The handshake runs in the connection's task, within the header deadline, so
        // a client that stalls in it holds only its own place.
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake with an API client failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake with an API client timed out");
                    return;
                }
            };
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            finish(watcher.watch(connection)).await;
        });
    }
    drop(listener);
    if tokio::time::timeout(CLOSE_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "API connections still open {CLOSE_GRACE:?} after the stop; they end with the process"
        );
    }
}

/// Serves a connection to its end.
async fn finish<E: std::fmt::Display>(connection: impl Future<Output = Result<(), E>>) {
    if let Err(error) = connection.await {
        tracing::debug!(%error, "API connection ended");
    }
}

/// An API connection: holds its place among the open ones, and fails a write that
/// has made no progress for the write timeout.
struct Guarded {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    write_timeout: Duration,
    /// Armed while a write is pending.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Guarded {
    fn new(stream: TcpStream, permit: OwnedSemaphorePermit, write_timeout: Duration) -> Guarded {
        Guarded {
            stream,
            _permit: permit,
            write_timeout,
            stalled: None,
        }
    }

    /// Turns a pending write into an error once it has been pending too long.
    fn check_stall<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let timeout = self.write_timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {timeout:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.check_stall(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.check_stall(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.stream).poll_flush(cx);
        self.check_stall(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
