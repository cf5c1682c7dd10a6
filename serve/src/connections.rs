//! The worker's connections: the accept loop and what bounds each connection, so no client can
//! hold the port's resources. Entry point: [`serve`].
//!
//! - **A cap on connections** ([`ConnectionLimits::max_connections`]). Beyond it a connection is
//!   still accepted, into a small overflow pool that answers only the health endpoints
//!   (`/v2/health/*`, `grpc.health.v1.Health`) and `503` / `UNAVAILABLE` to everything else, so
//!   Kubernetes probes keep answering while the server is full; past the overflow pool too, a
//!   connection is closed at once.
//! - **Timeouts.** Request headers must arrive within `header_timeout` (HTTP/1.1); a request
//!   body must be complete within `body_timeout` of its headers, or the request fails (a
//!   slow-loris body is answered, not waited on forever); a connection with no request in flight
//!   and no bytes in either direction for `idle_timeout` is closed. HTTP/2 connections are pinged
//!   every `idle_timeout / 4` and closed when a ping goes unanswered.
//! - **`accept` errors** (`EMFILE` at the file-descriptor limit) back off exponentially up to a
//!   second instead of spinning, and the connection cap defaults to half the descriptor limit, so
//!   the repository scan and model loads always find descriptors.
//!
//! - **TLS** ([`Tls`], optional): the handshake runs in the connection's own task within
//!   `header_timeout`, with ALPN offering `h2` and `http/1.1` (`lantern-tls`).
//!
//! hyper-util's connection builder serves HTTP/1.1 and HTTP/2 (h2c without TLS) on the same
//! port, as `axum::serve` does; this loop replaces `axum::serve` because that offers neither
//! limits, timeouts nor TLS.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower_service::Service;

use crate::error::Result;

/// How many connections the server holds and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections served at once; more wait in the overflow pool (health only).
    pub max_connections: usize,
    /// Connections beyond `max_connections` that may still ask for health.
    pub overflow_connections: usize,
    /// Longest wait for a request's headers (HTTP/1.1).
    pub header_timeout: Duration,
    /// Longest wait, from its headers, for a request's whole body.
    pub body_timeout: Duration,
    /// A connection with nothing in flight and no traffic for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            overflow_connections: 64,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

impl ConnectionLimits {
    /// These limits with `max_connections` lowered, if need be, to half the process's
    /// file-descriptor limit (the rest is for model files, the repository scan and the overflow
    /// pool).
    pub fn within_descriptor_limit(self, descriptor_limit: Option<u64>) -> Self {
        let Some(limit) = descriptor_limit else { return self };
        let half = usize::try_from(limit / 2).unwrap_or(usize::MAX).max(1);
        Self {
            max_connections: self.max_connections.min(half),
            overflow_connections: self.overflow_connections.min(half / 8 + 1),
            ..self
        }
    }
}

/// A certificate and key to serve TLS with.
#[derive(Clone)]
pub struct Tls {
    acceptor: lantern_tls::TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// Reads a PEM certificate chain and its PEM private key (PKCS#8, PKCS#1 or SEC1), as a
    /// Kubernetes TLS Secret holds them (`tls.crt`, `tls.key`).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self> {
        Ok(Self { acceptor: lantern_tls::acceptor(cert, key)? })
    }
}

/// Serves `app` on `listener` under `limits` until `shutdown` fires; then stops accepting, asks
/// every connection to finish what it has in flight, and returns when all have closed.
/// `health` answers connections beyond the cap; with `tls`, every connection is TLS.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    health: Router,
    limits: ConnectionLimits,
    tls: Option<Tls>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let served = Arc::new(Semaphore::new(limits.max_connections));
    let overflow = Arc::new(Semaphore::new(limits.overflow_connections));
    let (closing, closing_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    let mut backoff = Duration::ZERO;
    loop {
        let (tcp, _peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => { backoff = Duration::ZERO; accepted }
                Err(error) if is_connection_error(&error) => continue,
                Err(error) => {
                    backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                    tracing::warn!(%error, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            },
        };
        // Small request/response messages: Nagle's algorithm would add tens of milliseconds.
        let _ = tcp.set_nodelay(true);
        let (router, permit, connection_limits) = match served.clone().try_acquire_owned() {
            Ok(permit) => (app.clone(), permit, limits),
            Err(_) => match overflow.clone().try_acquire_owned() {
                Ok(permit) => {
                    tracing::debug!(max = limits.max_connections, "connection cap reached; serving health only");
                    let brief = Duration::from_secs(5).min(limits.idle_timeout);
                    (health.clone(), permit, ConnectionLimits { idle_timeout: brief, header_timeout: brief, ..limits })
                }
                Err(_) => continue, // dropping the stream closes it
            },
        };
        let closing = closing_rx.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(tcp, router, connection_limits, closing).await,
                Some(tls) => {
                    let handshake = tokio::time::timeout(connection_limits.header_timeout, tls.acceptor.accept(tcp));
                    match handshake.await {
                        Ok(Ok(stream)) => serve_connection(stream, router, connection_limits, closing).await,
                        Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
            drop(permit);
        });
    }
    let _ = closing.send(true);
    drop(closing_rx);
    // Every connection task holds a receiver: all are gone once every connection closed.
    closing.closed().await;
}

fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// Serves one connection until it ends, the server closes, or it idles out.
async fn serve_connection<S>(stream: S, router: Router, limits: ConnectionLimits, mut closing: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked { inner: stream, activity: activity.clone() });
    let service = ConnectionService { router, activity: activity.clone(), body_timeout: limits.body_timeout };
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.idle_timeout / 4)
        .keep_alive_timeout(limits.idle_timeout / 4);
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let check_every = (limits.idle_timeout / 4).max(Duration::from_millis(100));
    // Once the connection was asked to close, it gets this long to finish before it is dropped.
    let mut hard_deadline: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::trace!(%error, "connection ended with an error");
                }
                return;
            }
            changed = closing.changed(), if hard_deadline.is_none() => {
                if changed.is_ok() {
                    connection.as_mut().graceful_shutdown();
                }
            }
            () = tokio::time::sleep(check_every) => {
                match hard_deadline {
                    Some(deadline) if tokio::time::Instant::now() >= deadline => return,
                    Some(_) => {}
                    None if activity.is_idle(limits.idle_timeout) => {
                        tracing::debug!(idle_s = limits.idle_timeout.as_secs_f64(), "closing an idle connection");
                        connection.as_mut().graceful_shutdown();
                        hard_deadline = Some(tokio::time::Instant::now() + limits.header_timeout.min(Duration::from_secs(5)));
                    }
                    None => {}
                }
            }
        }
    }
}

/// When a connection last moved bytes, and how many of its requests are in flight.
struct Activity {
    opened: Instant,
    last_millis: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self { opened: Instant::now(), last_millis: AtomicU64::new(0), in_flight: AtomicUsize::new(0) }
    }

    fn touch(&self) {
        self.last_millis.store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn is_idle(&self, timeout: Duration) -> bool {
        let last = Duration::from_millis(self.last_millis.load(Ordering::Relaxed));
        self.in_flight.load(Ordering::Acquire) == 0 && self.opened.elapsed().saturating_sub(last) >= timeout
    }
}

/// Counts a request in flight until its response is ready (a streamed body then keeps the
/// connection active by its own bytes).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The router behind one connection: counts requests in flight and puts a deadline on bodies.
#[derive(Clone)]
struct ConnectionService {
    router: Router,
    activity: Arc<Activity>,
    body_timeout: Duration,
}

impl hyper::service::Service<http::Request<Incoming>> for ConnectionService {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: http::Request<Incoming>) -> Self::Future {
        let guard = InFlight::new(self.activity.clone());
        let timeout = self.body_timeout;
        let request = request.map(|body| Body::new(DeadlineBody::new(body, timeout)));
        let mut router = self.router.clone();
        Box::pin(async move {
            let response = router.call(request).await;
            drop(guard);
            response
        })
    }
}

/// A request body that fails once `timeout` has passed without it being complete.
struct DeadlineBody {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl DeadlineBody {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        Self { inner, deadline: Box::pin(tokio::time::sleep(timeout)), timeout }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|result| result.map_err(Into::into)));
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                let message = format!("the request body was not complete within {} s", self.timeout.as_secs_f64());
                Poll::Ready(Some(Err(message.into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> SizeHint {
        http_body::Body::size_hint(&self.inner)
    }
}

/// A stream that records when it last moved bytes.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_leaves_half_the_descriptors_to_the_rest_of_the_worker() {
        let limits = ConnectionLimits::default();
        assert_eq!(limits.within_descriptor_limit(None), limits);
        let small = limits.within_descriptor_limit(Some(1024));
        assert_eq!((small.max_connections, small.overflow_connections), (512, 64));
        let tiny = limits.within_descriptor_limit(Some(64));
        assert_eq!((tiny.max_connections, tiny.overflow_connections), (32, 5));
        assert_eq!(limits.within_descriptor_limit(Some(1 << 40)).max_connections, 4096);
    }

    #[test]
    fn a_connection_is_idle_only_with_nothing_in_flight_and_no_recent_bytes() {
        let activity = Arc::new(Activity::new());
        assert!(activity.is_idle(Duration::ZERO));
        assert!(!activity.is_idle(Duration::from_secs(60)));
        let request = InFlight::new(activity.clone());
        assert!(!activity.is_idle(Duration::ZERO));
        drop(request);
        assert!(activity.is_idle(Duration::ZERO));
    }
}
