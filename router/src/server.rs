//! The router's two listeners: the serving port (every request proxied, HTTP/1.1 and h2c side
//! by side, or both over TLS with [`Tls`]) and the admin port ([`crate::admin`]). Shutdown stops
//! accepting, lets the requests in flight finish within the grace period, then drops what is
//! left.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};

use super::admin;
use super::metrics::Metrics;
use super::pool::Pool;
use super::proxy::{HoldSettings, Proxy};

/// Where and how the router listens.
#[derive(Clone, Debug)]
pub struct Options {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub hold: HoldSettings,
    /// Most client connections at once; more wait to be accepted.
    pub max_connections: usize,
    /// How long an HTTP/1.1 client may take to send its request's headers.
    pub header_timeout: Duration,
    /// How long shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
    /// The models the pods serve, if known: a request naming another is answered 404 /
    /// `NOT_FOUND` by the router itself where it can read the name.
    pub models: Option<BTreeSet<String>>,
    /// TLS on the serving port and to the pods.
    pub tls: Option<Tls>,
}

/// TLS for a service whose pods serve it: clients get the service's certificate from the router,
/// and the router reaches the pods over TLS too, trusting the same certificate (pinned: the
/// pods serve the service's Secret, and no certificate names a pod's IP). The traffic stays
/// encrypted from the client to the pod.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: lantern_tls::TlsAcceptor,
    pub connector: lantern_tls::PinnedConnector,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// From a Kubernetes TLS Secret's `tls.crt` and `tls.key`.
    pub fn from_pem_files(cert: &std::path::Path, key: &std::path::Path) -> Result<Self, lantern_tls::Error> {
        Ok(Self { acceptor: lantern_tls::acceptor(cert, key)?, connector: lantern_tls::pinned_connector(cert)? })
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8500)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 8502)),
            hold: HoldSettings { timeout: Duration::from_secs(60), max_held: 1024 },
            max_connections: 10_000,
            header_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            models: None,
            tls: None,
        }
    }
}

/// A running router.
pub struct Running {
    addr: SocketAddr,
    admin_addr: SocketAddr,
    pool: Pool,
    metrics: Metrics,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The pods requests go to (a fixed list is set here; discovery sets it otherwise).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Stops accepting and waits for the requests in flight (up to the grace period).
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Binds both ports and starts serving with an empty pool.
pub async fn start(options: Options) -> std::io::Result<Running> {
    let listener = TcpListener::bind(options.listen).await?;
    let admin_listener = TcpListener::bind(options.admin_listen).await?;
    let (addr, admin_addr) = (listener.local_addr()?, admin_listener.local_addr()?);
    let metrics = Metrics::default();
    let pool = Pool::new(metrics.clone(), options.tls.as_ref().map(|tls| tls.connector.clone()));
    let proxy = Proxy::new(pool.clone(), options.hold, metrics.clone(), options.models.clone());
    tokio::spawn(admin::serve(admin_listener, pool.clone(), metrics.clone()));
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(serve(listener, proxy, options, stopped));
    tracing::info!(%addr, %admin_addr, "routing");
    Ok(Running { addr, admin_addr, pool, metrics, stop, task })
}

async fn serve(listener: TcpListener, proxy: Proxy, options: Options, mut stopped: oneshot::Receiver<()>) {
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(options.max_connections));
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(options.header_timeout);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Duration::from_secs(20));
    loop {
        let Ok(permit) = connections.clone().acquire_owned().await else { break };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stopped => break,
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let service = service_fn(move |request| {
            let proxy = proxy.clone();
            async move { proxy.handle(request).await }
        });
        let (builder, watcher, tls) = (builder.clone(), graceful.watcher(), options.tls.clone());
        let header_timeout = options.header_timeout;
        tokio::spawn(async move {
            let served = match tls {
                None => watcher.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned()).await,
                Some(tls) => match tokio::time::timeout(header_timeout, tls.acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        watcher.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned()).await
                    }
                    Ok(Err(error)) => Err(error.into()),
                    Err(_) => Err("the TLS handshake timed out".into()),
                },
            };
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "client connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(options.shutdown_grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(grace = ?options.shutdown_grace, "requests still in flight at the end of the grace period");
    }
}
