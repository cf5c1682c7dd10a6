//! The ranks of a data-parallel job, kept in lock-step over gRPC (`lantern.v1.CollectiveService`).
//!
//! Rendezvous: every rank serves the service on its own address and calls `Join` on rank 0 (the
//! coordinator), retrying while it is unreachable; rank 0 answers everyone once all ranks have
//! joined, with every address in rank order. Ranks must agree on the job and the step they resume
//! from. The ring is rank order: each rank streams chunks to the next (`Exchange`, one stream for
//! the whole job) and receives from the previous.
//!
//! [`Collective::all_reduce_mean`] averages a buffer across ranks with a ring all-reduce in buckets
//! of `BUCKET_VALUES` numbers: a reduce-scatter (n − 1 rounds, each rank adding the segment its
//! left neighbour sends) then an all-gather (n − 1 rounds passing the finished segments on). Every
//! rank ends with the same numbers. Each receive waits at most the timeout the caller gives, so a
//! dead or hung rank makes every other rank fail with an error naming the rank and the step.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lantern_proto::lantern::v1::collective_service_client::CollectiveServiceClient;
use lantern_proto::lantern::v1::collective_service_server::{CollectiveService, CollectiveServiceServer};
use lantern_proto::lantern::v1::{
    Chunk, ExchangeSummary, HeartbeatRequest, HeartbeatResponse, JoinRequest, JoinResponse,
};
use tokio::sync::{Mutex, mpsc, watch};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use super::progress::Progress;
use lantern_proto::auth::{SendToken, Token};

use crate::error::{Error, Result};
use crate::token::require_token;

/// Numbers per all-reduce bucket (4 MiB of f32): large models travel as many moderate messages.
const BUCKET_VALUES: usize = 1 << 20;
/// Largest gRPC message: one segment of a bucket plus framing.
const MAX_MESSAGE_BYTES: usize = 8 << 20;
/// HTTP/2 flow-control window of the stream to the right neighbour: a whole segment in flight.
const STREAM_WINDOW_BYTES: u32 = 8 << 20;
/// Chunks buffered towards the right neighbour.
const OUTBOX_CHUNKS: usize = 8;
/// How often ranks other than 0 report to rank 0.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// The most a finished rank waits for its last chunks to reach the right neighbour.
const FINISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where this rank stands and how long to wait for the others.
#[derive(Clone, Debug)]
pub struct Placement {
    pub rank: usize,
    pub world_size: usize,
    /// Rank 0's address, `host:port`.
    pub coordinator: String,
    /// This rank's listening address; port 0 picks a free port. Unset, rank 0 listens on the
    /// coordinator address (ranks on one machine) and the others on a free loopback port. On a
    /// cluster, where the coordinator is a Service in front of rank 0, every rank sets its own.
    pub address: Option<String>,
    /// Identifies the job's configuration; all ranks must send the same.
    pub job: String,
    /// The most the rendezvous waits, retries included.
    pub rendezvous_timeout: Duration,
    /// The job's token: this rank's endpoint answers only calls carrying it, and sends it.
    pub token: Option<String>,
}

/// A client of another rank's collective endpoint, sending the job's token.
type Client = CollectiveServiceClient<InterceptedService<Channel, SendToken>>;

/// Connects to `address` (`host:port`) as `endpoint` configures the connection.
async fn connect(
    address: &str,
    token: &SendToken,
    endpoint: impl FnOnce(tonic::transport::Endpoint) -> tonic::transport::Endpoint,
) -> std::result::Result<Client, tonic::transport::Error> {
    let channel = endpoint(tonic::transport::Endpoint::from_shared(format!("http://{address}"))?).connect().await?;
    Ok(CollectiveServiceClient::with_interceptor(channel, token.clone()))
}

/// This rank's side of the ring.
pub struct Collective {
    placement: Placement,
    runtime: tokio::runtime::Runtime,
    left: String,
    right: String,
    outbox: mpsc::Sender<Chunk>,
    /// Streams the outbox to the right neighbour; ends when the outbox closes and the neighbour
    /// has read everything.
    sending: tokio::task::JoinHandle<()>,
    inbox: mpsc::Receiver<std::result::Result<Chunk, Status>>,
    sent: u64,
    received: u64,
    /// The step of the last all-reduce, for heartbeats.
    step: Arc<AtomicU64>,
}

impl Collective {
    /// Serves this rank's endpoint, joins the job at `step` and opens the stream to the right
    /// neighbour. Blocks until every rank has joined or the rendezvous timeout passes. Rank 0
    /// records the other ranks' heartbeats in `progress`; the others send one every second.
    pub fn join(placement: Placement, step: u64, progress: Option<Arc<Progress>>) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("collective-{}", placement.rank))
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the collective's runtime", e))?;
        let (inbox_tx, inbox) = mpsc::channel(OUTBOX_CHUNKS * 2);
        let addresses = runtime.block_on(rendezvous(&placement, step, inbox_tx, progress))?;
        let n = placement.world_size;
        let (left, right) =
            (addresses[(placement.rank + n - 1) % n].clone(), addresses[(placement.rank + 1) % n].clone());
        let (outbox, outgoing) = mpsc::channel(OUTBOX_CHUNKS);
        let target = right.clone();
        let token = send_token(&placement)?;
        let ring_token = token.clone();
        let sending = runtime.spawn(async move {
            let stream = tokio_stream::wrappers::ReceiverStream::new(outgoing);
            let connected = connect(&target, &ring_token, |e| {
                e.tcp_nodelay(true)
                    .initial_stream_window_size(Some(STREAM_WINDOW_BYTES))
                    .initial_connection_window_size(Some(STREAM_WINDOW_BYTES))
            })
            .await;
            match connected {
                Ok(client) => {
                    let mut client = client.max_encoding_message_size(MAX_MESSAGE_BYTES);
                    // A failure shows at the next send; at the end of a job the neighbour may
                    // simply have exited first.
                    if let Err(status) = client.exchange(stream).await {
                        tracing::debug!(%target, %status, "the stream to the right neighbour ended");
                    }
                }
                Err(error) => tracing::warn!(%target, %error, "cannot reach the right neighbour"),
            }
        });
        let current = Arc::new(AtomicU64::new(step));
        if placement.rank != 0 {
            runtime.spawn(send_heartbeats(placement.coordinator.clone(), token, placement.rank, current.clone()));
        }
        tracing::info!(rank = placement.rank, world_size = n, %left, %right, "joined the ring");
        Ok(Self { placement, runtime, left, right, outbox, sending, inbox, sent: 0, received: 0, step: current })
    }

    /// Leaves the ring once the right neighbour has read every chunk sent to it (or
    /// `FINISH_TIMEOUT` passed): a rank that finishes first must not take the last chunks of the
    /// final all-reduce down with its process.
    pub fn finish(self) {
        let Self { runtime, outbox, sending, right, .. } = self;
        drop(outbox);
        if runtime.block_on(async { tokio::time::timeout(FINISH_TIMEOUT, sending).await }).is_err() {
            tracing::warn!(%right, "the right neighbour did not read the last chunks in time");
        }
    }

    /// Replaces `values` with their mean over all ranks, waiting at most `timeout` for each piece
    /// from the left neighbour.
    pub fn all_reduce_mean(&mut self, values: &mut [f32], step: u64, timeout: Duration) -> Result<()> {
        self.step.store(step, Ordering::Relaxed);
        let n = self.placement.world_size;
        for bucket in values.chunks_mut(BUCKET_VALUES) {
            let bounds: Vec<usize> = (0..=n).map(|i| i * bucket.len() / n).collect();
            let segment = |i: usize| bounds[i]..bounds[i + 1];
            let rank = self.placement.rank;
            for round in 0..n - 1 {
                self.send(&bucket[segment((rank + n - round) % n)], step)?;
                let incoming = self.receive(step, timeout)?;
                for (value, add) in bucket[segment((rank + n - round - 1) % n)].iter_mut().zip(incoming) {
                    *value += add;
                }
            }
            for round in 0..n - 1 {
                self.send(&bucket[segment((rank + 1 + n - round) % n)], step)?;
                let incoming = self.receive(step, timeout)?;
                bucket[segment((rank + n - round) % n)].copy_from_slice(&incoming);
            }
        }
        let scale = 1.0 / n as f32;
        values.iter_mut().for_each(|v| *v *= scale);
        Ok(())
    }

    fn send(&mut self, values: &[f32], step: u64) -> Result<()> {
        let chunk = Chunk { sequence: self.sent, step, values: bytemuck::cast_slice(values).to_vec() };
        self.sent += 1;
        let right = self.neighbour(1);
        self.outbox.blocking_send(chunk).map_err(|_| Error::Training {
            step,
            reason: format!("the stream to rank {right} ({}) broke: that rank stopped", self.right),
        })
    }

    fn receive(&mut self, step: u64, timeout: Duration) -> Result<Vec<f32>> {
        let left = self.neighbour(self.placement.world_size - 1);
        let fail = |reason: String| Error::Training { step, reason };
        let waited = self.runtime.block_on(async { tokio::time::timeout(timeout, self.inbox.recv()).await });
        let chunk = match waited {
            Err(_) => {
                return Err(fail(format!("rank {left} ({}) sent nothing for {} s", self.left, timeout.as_secs_f64())));
            }
            Ok(None) => return Err(fail(format!("rank {left} ({}) is gone", self.left))),
            Ok(Some(Err(status))) => {
                return Err(fail(format!("the stream from rank {left} ({}) failed: {}", self.left, status.message())));
            }
            Ok(Some(Ok(chunk))) => chunk,
        };
        if chunk.sequence != self.received || chunk.step != step {
            return Err(fail(format!(
                "rank {left} sent chunk {} of step {}, expected chunk {} of step {step}",
                chunk.sequence, chunk.step, self.received
            )));
        }
        self.received += 1;
        if chunk.values.len() % 4 != 0 {
            return Err(fail(format!("rank {left} sent {} bytes, not whole f32 values", chunk.values.len())));
        }
        Ok(chunk.values.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }

    /// The rank `offset` places to the right.
    fn neighbour(&self, offset: usize) -> usize {
        (self.placement.rank + offset) % self.placement.world_size
    }
}

fn send_token(placement: &Placement) -> Result<SendToken> {
    Ok(SendToken::new(placement.token.as_deref())?)
}

/// Reports this rank's step to rank 0 every second, for as long as the runtime lives.
async fn send_heartbeats(coordinator: String, token: SendToken, rank: usize, step: Arc<AtomicU64>) {
    let mut client = None;
    loop {
        tokio::time::sleep(HEARTBEAT_INTERVAL).await;
        if client.is_none() {
            client = connect(&coordinator, &token, |e| e).await.ok();
        }
        if let Some(connected) = client.as_mut() {
            let beat = HeartbeatRequest { rank: rank as u32, step: step.load(Ordering::Relaxed) };
            if connected.heartbeat(beat).await.is_err() {
                client = None;
            }
        }
    }
}

/// Serves this rank's endpoint and joins; returns every rank's address.
async fn rendezvous(
    placement: &Placement,
    step: u64,
    inbox: mpsc::Sender<std::result::Result<Chunk, Status>>,
    progress: Option<Arc<Progress>>,
) -> Result<Vec<String>> {
    let listen = match (&placement.address, placement.rank) {
        (Some(address), _) => address.as_str(),
        (None, 0) => placement.coordinator.as_str(),
        (None, _) => "127.0.0.1:0",
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::io(format!("binding the collective endpoint {listen}"), e))?;
    let bound = listener.local_addr().map_err(|e| Error::io("reading the collective endpoint's address", e))?;
    let service = Endpoint {
        rendezvous: (placement.rank == 0).then(|| Arc::new(Rendezvous::new(placement.world_size))),
        inbox,
        connected: Mutex::new(false),
        progress,
    };
    let mut router =
        tonic::service::Routes::new(CollectiveServiceServer::new(service).max_decoding_message_size(MAX_MESSAGE_BYTES))
            .into_axum_router();
    if let Some(token) = &placement.token {
        let token = Arc::new(Token::new(token));
        router = router.layer(axum::middleware::from_fn_with_state(token, require_token));
    }
    // Without TCP_NODELAY, Nagle's algorithm and delayed ACKs stall every flow-control window.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "the collective endpoint stopped");
        }
    });
    let request = JoinRequest {
        rank: placement.rank as u32,
        world_size: placement.world_size as u32,
        address: bound.to_string(),
        job: placement.job.clone(),
        step,
    };
    let fail = |reason: String| Error::Training { step, reason };
    let deadline = Instant::now() + placement.rendezvous_timeout;
    let mut attempts = 0;
    let mut delay = Duration::from_millis(100);
    loop {
        attempts += 1;
        let last_error = match connect(&placement.coordinator, &send_token(placement)?, |e| e).await {
            Ok(mut client) => {
                let mut call = Request::new(request.clone());
                call.set_timeout(deadline.saturating_duration_since(Instant::now()));
                match client.join(call).await {
                    Ok(response) => return Ok(response.into_inner().addresses),
                    Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                        return Err(fail(format!(
                            "the rendezvous refused rank {}: {}",
                            placement.rank,
                            status.message()
                        )));
                    }
                    Err(status) => status.message().to_owned(),
                }
            }
            Err(error) => error.to_string(),
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(fail(format!(
                "the coordinator {} did not complete the rendezvous of {} ranks after {attempts} attempts in {} s: {last_error}",
                placement.coordinator,
                placement.world_size,
                placement.rendezvous_timeout.as_secs_f64()
            )));
        }
        tokio::time::sleep(delay.min(remaining)).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Rank 0's record of who has joined.
struct Rendezvous {
    world_size: usize,
    joined: Mutex<Vec<Option<JoinRequest>>>,
    /// Set once: every address, or why the ranks cannot train together.
    outcome: watch::Sender<Option<std::result::Result<Vec<String>, String>>>,
}

impl Rendezvous {
    fn new(world_size: usize) -> Self {
        Self { world_size, joined: Mutex::new(vec![None; world_size]), outcome: watch::channel(None).0 }
    }

    async fn join(&self, request: JoinRequest) -> std::result::Result<Vec<String>, Status> {
        let mut outcome = self.outcome.subscribe();
        {
            let mut joined = self.joined.lock().await;
            let rank = request.rank as usize;
            if request.world_size as usize != self.world_size || rank >= self.world_size {
                return Err(Status::failed_precondition(format!(
                    "rank {rank} of {} joined a job of {} ranks",
                    request.world_size, self.world_size
                )));
            }
            joined[rank] = Some(request);
            if joined.iter().all(Option::is_some) {
                let requests: Vec<&JoinRequest> = joined.iter().flatten().collect();
                let first = requests[0];
                let verdict = match requests.iter().find(|r| r.job != first.job || r.step != first.step) {
                    Some(odd) => Err(format!(
                        "rank {} has job {} at step {}, rank 0 job {} at step {}",
                        odd.rank, odd.job, odd.step, first.job, first.step
                    )),
                    None => Ok(requests.iter().map(|r| r.address.clone()).collect()),
                };
                self.outcome.send_replace(Some(verdict));
            }
        }
        let settled = outcome.wait_for(Option::is_some).await.map_err(|_| Status::aborted("the rendezvous ended"))?;
        match settled.clone().expect("wait_for returned a settled outcome; this is a bug") {
            Ok(addresses) => Ok(addresses),
            Err(reason) => Err(Status::failed_precondition(reason)),
        }
    }
}

/// One rank's gRPC endpoint.
struct Endpoint {
    rendezvous: Option<Arc<Rendezvous>>,
    inbox: mpsc::Sender<std::result::Result<Chunk, Status>>,
    /// Whether the left neighbour's stream has arrived (only one is accepted).
    connected: Mutex<bool>,
    /// Rank 0: where heartbeats go.
    progress: Option<Arc<Progress>>,
}

#[tonic::async_trait]
impl CollectiveService for Endpoint {
    async fn join(&self, request: Request<JoinRequest>) -> std::result::Result<Response<JoinResponse>, Status> {
        let rendezvous =
            self.rendezvous.as_ref().ok_or_else(|| Status::failed_precondition("only rank 0 runs the rendezvous"))?;
        let addresses = rendezvous.join(request.into_inner()).await?;
        Ok(Response::new(JoinResponse { addresses }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> std::result::Result<Response<HeartbeatResponse>, Status> {
        let progress =
            self.progress.as_ref().ok_or_else(|| Status::failed_precondition("only rank 0 takes heartbeats"))?;
        let beat = request.into_inner();
        progress.heartbeat(beat.rank as usize, beat.step);
        Ok(Response::new(HeartbeatResponse {}))
    }

    async fn exchange(
        &self,
        request: Request<Streaming<Chunk>>,
    ) -> std::result::Result<Response<ExchangeSummary>, Status> {
        {
            let mut connected = self.connected.lock().await;
            if *connected {
                return Err(Status::already_exists("the left neighbour's stream is already open"));
            }
            *connected = true;
        }
        let mut stream = request.into_inner();
        let mut chunks = 0;
        loop {
            match stream.message().await {
                Ok(Some(chunk)) => {
                    chunks += 1;
                    if self.inbox.send(Ok(chunk)).await.is_err() {
                        break;
                    }
                }
                Ok(None) => {
                    let _ = self.inbox.send(Err(Status::cancelled("the rank closed its stream"))).await;
                    break;
                }
                Err(status) => {
                    let _ = self.inbox.send(Err(status)).await;
                    break;
                }
            }
        }
        Ok(Response::new(ExchangeSummary { chunks }))
    }
}
