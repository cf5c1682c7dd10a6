//! Dynamic batching for one loaded model version. Requests wait in a bounded queue (full →
//! `RESOURCE_EXHAUSTED`) and a dedicated thread takes as many rows as fit in `max_batch_size`,
//! waiting at most `max_delay` for more. With a zero delay it takes whatever queued while the
//! previous batch ran, so batches grow with load.
//!
//! A lone request does not pay for the hand-off: when nothing is queued, the model is free and
//! its recent forward passes were short ([`INLINE_MAX`]), the caller runs the forward pass itself.
//! Under load the model is busy, requests queue, and the thread batches them.
//!
//! The thread ends when the last [`Batcher`] handle is dropped and the queue is drained; the model's
//! memory goes with it, and the `drained` receiver returned by [`Batcher::spawn`] fires.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use tokio::sync::oneshot;

use super::metrics::VersionMetrics;
use crate::error::{Error, Result};
use lantern_runtime::model::{TensorModel, VersionId};

/// Forward passes shorter than this (moving average) may run on the caller's task.
pub const INLINE_MAX: Duration = Duration::from_micros(200);

/// Batching knobs, per model version.
#[derive(Clone, Copy, Debug)]
pub struct BatchSettings {
    /// Most rows in one forward pass; a request with more rows is refused.
    pub max_batch_size: usize,
    /// Longest a batch waits for more rows once it has one. Non-zero disables the inline path.
    pub max_delay: Duration,
    /// Requests that may wait; one more is refused with `RESOURCE_EXHAUSTED`.
    pub queue_capacity: usize,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self { max_batch_size: 64, max_delay: Duration::ZERO, queue_capacity: 1024 }
    }
}

struct Job {
    rows: usize,
    input: Vec<f32>,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Vec<f32>>>,
}

/// What the callers and the batching thread share.
struct Shared {
    id: VersionId,
    model: Mutex<Box<dyn TensorModel>>,
    in_features: usize,
    metrics: VersionMetrics,
    /// Jobs sent to the thread and not yet taken.
    queued: AtomicUsize,
    /// Moving average of the forward pass time, in nanoseconds.
    forward_nanos: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Box<dyn TensorModel>> {
        self.model.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs one forward pass over `rows` rows and records how long it took; errors are the reason.
    fn forward(&self, model: &dyn TensorModel, input: Vec<f32>, rows: usize) -> Result<Vec<f32>, String> {
        self.metrics.batch_size.observe(rows as f64);
        let started = Instant::now();
        let output = forward(model, input, rows, self.in_features);
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let average = self.forward_nanos.load(Ordering::Relaxed);
        self.forward_nanos.store(if average == 0 { nanos } else { (average * 7 + nanos) / 8 }, Ordering::Relaxed);
        output.inspect_err(|reason| {
            tracing::error!(model = %self.id.model, version = self.id.version, %reason, "batch failed");
        })
    }

    fn failure(&self, reason: String) -> Error {
        Error::Inference { model: self.id.model.clone(), version: self.id.version, reason }
    }
}

/// Handle to a version's batching.
pub struct Batcher {
    // Declared before `queue` so the model is released before the thread sees the queue close.
    shared: Arc<Shared>,
    queue: SyncSender<Job>,
    settings: BatchSettings,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").field("id", &self.shared.id).field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Batcher {
    /// Starts the batching thread for `model`. The receiver fires once the thread has exited and
    /// the model is released.
    pub fn spawn(
        id: VersionId,
        model: Box<dyn TensorModel>,
        settings: BatchSettings,
        in_features: usize,
        metrics: VersionMetrics,
    ) -> Result<(Self, oneshot::Receiver<()>)> {
        let (queue, jobs) = mpsc::sync_channel(settings.queue_capacity);
        let (drained_tx, drained_rx) = oneshot::channel();
        let shared = Arc::new(Shared {
            id: id.clone(),
            model: Mutex::new(model),
            in_features,
            metrics,
            queued: AtomicUsize::new(0),
            forward_nanos: AtomicU64::new(0),
        });
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("batch-{}-{}", id.model, id.version))
            .spawn(move || {
                run(&thread_shared, &jobs, settings);
                drop(thread_shared);
                let _ = drained_tx.send(());
            })
            .map_err(|e| Error::io(format!("starting the batching thread of {} v{}", id.model, id.version), e))?;
        Ok((Self { shared, queue, settings }, drained_rx))
    }

    /// Runs `rows` rows (row-major, `in_features` wide) through the model and returns its output
    /// rows: inline when the model is idle and fast, otherwise through the queue.
    pub async fn submit(&self, rows: usize, input: Vec<f32>) -> Result<Vec<f32>> {
        let shared = &self.shared;
        debug_assert_eq!(input.len(), rows * shared.in_features);
        if rows > self.settings.max_batch_size {
            return Err(Error::invalid(format!(
                "batch of {rows} rows exceeds the maximum batch size {} of {} v{}",
                self.settings.max_batch_size, shared.id.model, shared.id.version
            )));
        }
        let may_inline = self.settings.max_delay.is_zero()
            && shared.queued.load(Ordering::Acquire) == 0
            && shared.forward_nanos.load(Ordering::Relaxed) <= INLINE_MAX.as_nanos() as u64;
        if may_inline && let Ok(model) = shared.model.try_lock() {
            shared.metrics.queue_duration.observe(0.0);
            return shared.forward(model.as_ref(), input, rows).map_err(|reason| shared.failure(reason));
        }
        let (reply, response) = oneshot::channel();
        let job = Job { rows, input, enqueued: Instant::now(), reply };
        shared.queued.fetch_add(1, Ordering::AcqRel);
        if let Err(e) = self.queue.try_send(job) {
            shared.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(match e {
                TrySendError::Full(_) => Error::QueueFull {
                    model: shared.id.model.clone(),
                    version: shared.id.version,
                    capacity: self.settings.queue_capacity,
                },
                TrySendError::Disconnected(_) => self.gone(),
            });
        }
        response.await.map_err(|_| self.gone())?
    }

    fn gone(&self) -> Error {
        Error::Shutdown(format!(
            "the batching thread of {} v{} has stopped",
            self.shared.id.model, self.shared.id.version
        ))
    }
}

fn run(shared: &Shared, jobs: &mpsc::Receiver<Job>, settings: BatchSettings) {
    let take = |job: Job| {
        shared.queued.fetch_sub(1, Ordering::AcqRel);
        job
    };
    let mut held: Option<Job> = None;
    loop {
        let first = match held.take() {
            Some(job) => job,
            None => match jobs.recv() {
                Ok(job) => take(job),
                Err(_) => return,
            },
        };
        let mut rows = first.rows;
        let mut batch = vec![first];
        let deadline = Instant::now() + settings.max_delay;
        while rows < settings.max_batch_size {
            let next = match deadline.checked_duration_since(Instant::now()) {
                Some(wait) if !wait.is_zero() => jobs.recv_timeout(wait),
                _ => jobs.try_recv().map_err(|_| RecvTimeoutError::Timeout),
            };
            let Ok(job) = next.map(take) else { break };
            if rows + job.rows > settings.max_batch_size {
                held = Some(job);
                break;
            }
            rows += job.rows;
            batch.push(job);
        }
        execute(shared, batch);
    }
}

/// Runs one batch and answers every job in it. Jobs whose caller went away are skipped.
fn execute(shared: &Shared, batch: Vec<Job>) {
    let batch: Vec<Job> = batch.into_iter().filter(|job| !job.reply.is_closed()).collect();
    if batch.is_empty() {
        return;
    }
    let model = shared.lock();
    let now = Instant::now();
    let rows: usize = batch.iter().map(|job| job.rows).sum();
    let mut input = Vec::with_capacity(rows * shared.in_features);
    for job in &batch {
        shared.metrics.queue_duration.observe(now.duration_since(job.enqueued).as_secs_f64());
        input.extend_from_slice(&job.input);
    }
    match shared.forward(model.as_ref(), input, rows) {
        Ok(output) => {
            let width = output.len() / rows;
            let mut offset = 0;
            for job in batch {
                let end = offset + job.rows * width;
                let _ = job.reply.send(Ok(output[offset..end].to_vec()));
                offset = end;
            }
        }
        Err(reason) => {
            for job in batch {
                let _ = job.reply.send(Err(shared.failure(reason.clone())));
            }
        }
    }
}

fn forward(model: &dyn TensorModel, input: Vec<f32>, rows: usize, in_features: usize) -> Result<Vec<f32>, String> {
    let run = || -> candle_core::Result<Vec<f32>> {
        let x = Tensor::from_vec(input, (rows, in_features), &Device::Cpu)?;
        let y = model.forward(&x)?;
        if y.dims().first() != Some(&rows) {
            candle_core::bail!("the model returned shape {:?} for {rows} rows", y.dims());
        }
        y.flatten_all()?.to_vec1::<f32>()
    };
    run().map_err(|e| e.to_string())
}
