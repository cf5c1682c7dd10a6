//! The pods requests may go to, their loads, and one HTTP/2 connection to each.
//!
//! [`Pool::set`] replaces the ready set (from discovery); a pod that leaves it takes no new
//! request, while requests already sent finish on their connection. [`Pool::choose`] picks a pod
//! ([`crate::balance`]) and counts the request against it until the returned [`InFlight`] is
//! dropped — at the end of the response body, so a stream counts for as long as it runs.
//! [`Pool::wait_for_pods`] is how a request is held while there is no pod.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use lantern_tls::PinnedConnector;
use tokio::sync::watch;

use super::balance::{self, Ring};
use super::metrics::Metrics;
use super::proxy::RequestBody;

/// How long connecting to a pod may take before the request tries another.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a pod that could not be connected to is passed over while other pods are open.
const EJECTION: Duration = Duration::from_secs(2);

/// One pod: its address, its requests in flight, and the connection to it.
#[derive(Debug)]
pub struct Pod {
    pub addr: SocketAddr,
    in_flight: AtomicUsize,
    /// Requests sent to it since it joined: the tie-break between equally loaded pods.
    routed: AtomicU64,
    /// Until when it is passed over, after a failed connection.
    ejected_until: std::sync::Mutex<Option<Instant>>,
    connection: tokio::sync::Mutex<Option<SendRequest<RequestBody>>>,
    /// TLS to the pod, or h2c without.
    tls: Option<PinnedConnector>,
}

impl Pod {
    fn new(addr: SocketAddr, tls: Option<PinnedConnector>) -> Self {
        Self {
            addr,
            tls,
            in_flight: AtomicUsize::new(0),
            routed: AtomicU64::new(0),
            ejected_until: std::sync::Mutex::new(None),
            connection: tokio::sync::Mutex::new(None),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    fn ejected(&self, now: Instant) -> bool {
        self.ejected_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_some_and(|until| now < until)
    }

    /// A sender on the pod's connection, connecting (h2c with prior knowledge, or HTTP/2 over
    /// TLS) when there is none or it has closed. An error means nothing was sent; the pod is then
    /// passed over for a while.
    pub async fn sender(&self) -> std::io::Result<SendRequest<RequestBody>> {
        let result = self.connect().await;
        let mut ejected = self.ejected_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *ejected = result.is_err().then(|| Instant::now() + EJECTION);
        result
    }

    async fn connect(&self) -> std::io::Result<SendRequest<RequestBody>> {
        let mut connection = self.connection.lock().await;
        if let Some(sender) = connection.as_ref().filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        let opened = async {
            let stream = tokio::net::TcpStream::connect(self.addr).await?;
            stream.set_nodelay(true)?;
            match &self.tls {
                None => http2(stream).await,
                Some(tls) => http2(tls.connect(self.addr.ip(), stream).await?).await,
            }
        };
        let (sender, driver) = tokio::time::timeout(CONNECT_TIMEOUT, opened)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting timed out"))??;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(error) = driver.await {
                tracing::debug!(%addr, %error, "connection to the pod ended");
            }
        });
        *connection = Some(sender.clone());
        Ok(sender)
    }
}

/// The connection being established and its driver.
type Handshake = (
    SendRequest<RequestBody>,
    hyper::client::conn::http2::Connection<TokioIo<Box<dyn Io>>, RequestBody, TokioExecutor>,
);

/// A byte stream to a pod: TCP, or TLS over it.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

/// An HTTP/2 client connection over `stream`.
async fn http2(stream: impl Io) -> std::io::Result<Handshake> {
    let stream: Box<dyn Io> = Box::new(stream);
    hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .adaptive_window(true)
        .keep_alive_interval(Duration::from_secs(20))
        .handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)
}

/// A request counted against its pod until dropped.
#[derive(Debug)]
pub struct InFlight {
    pub pod: Arc<Pod>,
    metrics: Metrics,
}

impl InFlight {
    fn new(pod: Arc<Pod>, metrics: Metrics) -> Self {
        pod.in_flight.fetch_add(1, Ordering::AcqRel);
        pod.routed.fetch_add(1, Ordering::Relaxed);
        metrics.started(pod.addr);
        Self { pod, metrics }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.pod.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.metrics.finished(self.pod.addr);
    }
}

/// The ready pods and the ring over them.
#[derive(Debug, Default)]
struct Ready {
    pods: Vec<Arc<Pod>>,
    ring: Ring,
}

/// The pods of one service.
#[derive(Clone, Debug)]
pub struct Pool {
    ready: Arc<RwLock<Ready>>,
    /// TLS to the pods, or h2c without.
    tls: Option<PinnedConnector>,
    /// How many pods are ready, for requests held until there is one.
    count: watch::Sender<usize>,
    metrics: Metrics,
}

impl Pool {
    pub fn new(metrics: Metrics, tls: Option<PinnedConnector>) -> Self {
        Self { ready: Arc::default(), tls, count: watch::Sender::new(0), metrics }
    }

    /// Makes `addrs` the ready pods; pods that stay keep their connection and their count.
    pub fn set(&self, mut addrs: Vec<SocketAddr>) {
        addrs.sort_unstable();
        addrs.dedup();
        let mut ready = self.ready.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if ready.pods.iter().map(|p| p.addr).eq(addrs.iter().copied()) {
            return;
        }
        let pods: Vec<Arc<Pod>> = addrs
            .iter()
            .map(|&addr| {
                ready
                    .pods
                    .iter()
                    .find(|p| p.addr == addr)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Pod::new(addr, self.tls.clone())))
            })
            .collect();
        let names: Vec<String> = addrs.iter().map(SocketAddr::to_string).collect();
        *ready = Ready { ring: Ring::new(&names), pods };
        self.metrics.set_ready(addrs.len());
        self.count.send_replace(addrs.len());
        tracing::info!(pods = ?addrs, "ready pods changed");
    }

    /// The ready pods now, with their loads.
    pub fn pods(&self) -> Vec<Arc<Pod>> {
        self.ready.read().unwrap_or_else(std::sync::PoisonError::into_inner).pods.clone()
    }

    /// A ready pod not in `tried`, counted as taking a request: the affinity `key`'s pod within
    /// the load bound, or the less loaded of two at random, passing over pods that failed to
    /// connect lately while others are open. `None` when every ready pod was tried.
    pub fn choose(&self, key: Option<u64>, tried: &[SocketAddr]) -> Option<InFlight> {
        let ready = self.ready.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let untried: Vec<usize> = (0..ready.pods.len()).filter(|&i| !tried.contains(&ready.pods[i].addr)).collect();
        let now = Instant::now();
        let healthy: Vec<usize> = untried.iter().copied().filter(|&i| !ready.pods[i].ejected(now)).collect();
        let open = if healthy.is_empty() { untried } else { healthy };
        let loads: Vec<(usize, u64)> =
            open.iter().map(|&i| (ready.pods[i].in_flight(), ready.pods[i].routed.load(Ordering::Relaxed))).collect();
        let chosen = match key {
            // The ring covers every ready pod; used while none is tried or passed over.
            Some(key) if tried.is_empty() && open.len() == ready.pods.len() => {
                ready.ring.pick(key, &ready.pods.iter().map(|p| p.in_flight()).collect::<Vec<_>>())
            }
            _ => balance::two_choices(&loads, |n| rand::random_range(0..n)).map(|i| open[i]),
        }?;
        self.metrics.routed(key.is_some() && tried.is_empty());
        Some(InFlight::new(ready.pods[chosen].clone(), self.metrics.clone()))
    }

    /// Waits until at least one pod is ready, up to `limit`; false when none came.
    pub async fn wait_for_pods(&self, limit: Duration) -> bool {
        let mut count = self.count.subscribe();
        tokio::time::timeout(limit, count.wait_for(|&n| n > 0)).await.is_ok_and(|r| r.is_ok())
    }
}
