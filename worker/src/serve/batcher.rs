//! Dynamic batching for one loaded model version. A dedicated thread owns the model; requests
//! wait in a bounded queue (full → `RESOURCE_EXHAUSTED`), and the thread takes as many rows as fit
//! in `max_batch_size`, waiting at most `max_delay` for more. With a zero delay it takes whatever
//! queued while the previous batch ran, so batches grow with load and a lone request never waits.
//!
//! The thread ends when the last [`Batcher`] handle is dropped and the queue is drained; the model's
//! memory goes with it, and the `drained` receiver returned by [`Batcher::spawn`] fires.

use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use tokio::sync::oneshot;

use super::metrics::VersionMetrics;
use crate::error::{Error, Result};
use crate::model::TensorModel;

/// Batching knobs, per model version.
#[derive(Clone, Copy, Debug)]
pub struct BatchSettings {
    /// Most rows in one forward pass; a request with more rows is refused.
    pub max_batch_size: usize,
    /// Longest a batch waits for more rows once it has one.
    pub max_delay: Duration,
    /// Requests that may wait; one more is refused with `RESOURCE_EXHAUSTED`.
    pub queue_capacity: usize,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self { max_batch_size: 64, max_delay: Duration::ZERO, queue_capacity: 1024 }
    }
}

/// Identifies the model version in errors and the thread name.
#[derive(Clone, Debug)]
pub struct VersionId {
    pub model: String,
    pub version: u64,
}

struct Job {
    rows: usize,
    input: Vec<f32>,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Vec<f32>>>,
}

/// Handle to a version's batching thread.
#[derive(Debug)]
pub struct Batcher {
    id: VersionId,
    queue: SyncSender<Job>,
    settings: BatchSettings,
    in_features: usize,
}

impl Batcher {
    /// Starts the batching thread for `model`. The receiver fires once the thread has exited.
    pub fn spawn(
        id: VersionId,
        model: Box<dyn TensorModel>,
        settings: BatchSettings,
        in_features: usize,
        metrics: VersionMetrics,
    ) -> Result<(Self, oneshot::Receiver<()>)> {
        let (queue, jobs) = mpsc::sync_channel(settings.queue_capacity);
        let (drained_tx, drained_rx) = oneshot::channel();
        let thread_id = id.clone();
        std::thread::Builder::new()
            .name(format!("batch-{}-{}", id.model, id.version))
            .spawn(move || {
                run(&thread_id, model.as_ref(), &jobs, settings, in_features, &metrics);
                drop(model);
                let _ = drained_tx.send(());
            })
            .map_err(|e| Error::io(format!("starting the batching thread of {} v{}", id.model, id.version), e))?;
        Ok((Self { id, queue, settings, in_features }, drained_rx))
    }

    /// The largest request this batcher accepts, in rows.
    pub fn max_batch_size(&self) -> usize {
        self.settings.max_batch_size
    }

    /// Queues `rows` rows (row-major, `in_features` wide) and waits for the model's output rows.
    pub async fn submit(&self, rows: usize, input: Vec<f32>) -> Result<Vec<f32>> {
        debug_assert_eq!(input.len(), rows * self.in_features);
        if rows > self.settings.max_batch_size {
            return Err(Error::invalid(format!(
                "batch of {rows} rows exceeds the maximum batch size {} of {} v{}",
                self.settings.max_batch_size, self.id.model, self.id.version
            )));
        }
        let (reply, response) = oneshot::channel();
        let job = Job { rows, input, enqueued: Instant::now(), reply };
        self.queue.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => Error::QueueFull {
                model: self.id.model.clone(),
                version: self.id.version,
                capacity: self.settings.queue_capacity,
            },
            TrySendError::Disconnected(_) => self.gone(),
        })?;
        response.await.map_err(|_| self.gone())?
    }

    fn gone(&self) -> Error {
        Error::Shutdown(format!("the batching thread of {} v{} has stopped", self.id.model, self.id.version))
    }
}

fn run(
    id: &VersionId,
    model: &dyn TensorModel,
    jobs: &mpsc::Receiver<Job>,
    settings: BatchSettings,
    in_features: usize,
    metrics: &VersionMetrics,
) {
    let mut held: Option<Job> = None;
    loop {
        let first = match held.take() {
            Some(job) => job,
            None => match jobs.recv() {
                Ok(job) => job,
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
            let Ok(job) = next else { break };
            if rows + job.rows > settings.max_batch_size {
                held = Some(job);
                break;
            }
            rows += job.rows;
            batch.push(job);
        }
        execute(id, model, batch, in_features, metrics);
    }
}

/// Runs one batch and answers every job in it. Jobs whose caller went away are skipped.
fn execute(id: &VersionId, model: &dyn TensorModel, batch: Vec<Job>, in_features: usize, metrics: &VersionMetrics) {
    let batch: Vec<Job> = batch.into_iter().filter(|job| !job.reply.is_closed()).collect();
    if batch.is_empty() {
        return;
    }
    let now = Instant::now();
    let rows: usize = batch.iter().map(|job| job.rows).sum();
    for job in &batch {
        metrics.queue_duration.observe(now.duration_since(job.enqueued).as_secs_f64());
    }
    metrics.batch_size.observe(rows as f64);
    let mut input = Vec::with_capacity(rows * in_features);
    for job in &batch {
        input.extend_from_slice(&job.input);
    }
    match forward(model, input, rows, in_features) {
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
            tracing::error!(model = %id.model, version = id.version, %reason, "batch failed");
            for job in batch {
                let _ = job.reply.send(Err(Error::Inference {
                    model: id.model.clone(),
                    version: id.version,
                    reason: reason.clone(),
                }));
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
