//! Runs a version's sentence encoder for the requests routed to it, batching texts across
//! requests. A request's texts are tokenized, or its token ids checked, (and refused) on the
//! blocking pool, then queued
//! (full → `RESOURCE_EXHAUSTED`) for one thread that owns the encoder. Each pass takes up to
//! [`limits::EMBEDDING_BATCH_TEXTS`] waiting texts, one from each waiting request in turn (so a
//! large request does not hold back small ones that arrive behind it), waiting at most the
//! version's batch delay for a full batch, sorts them by length so rows pad little, and embeds
//! them in one forward pass. A request is answered once all its texts are embedded, so concurrent
//! single-text requests share passes, and a large request costs one batch's memory at a time.
//! The `drained` receiver fires once the last handle is dropped, the queue is empty and the
//! encoder is released.

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::batcher::BatchSettings;
use super::limits;
use super::metrics::VersionMetrics;
use crate::error::{Error, Result};
use lantern_runtime::model::VersionId;
use lantern_runtime::model::bert::{EncoderInput, SentenceEncoder};

/// Embeddings of a request's texts.
#[derive(Clone, Debug, PartialEq)]
pub struct Embeddings {
    pub version: u64,
    /// One unit-length vector per text, in order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens the texts took.
    pub tokens: usize,
}

/// Handle to a version's sentence encoder; cheap to clone.
#[derive(Clone)]
pub struct Embedder {
    shared: Arc<Shared>,
    queue: SyncSender<Job>,
    capacity: usize,
}

/// What the callers and the batching thread share.
struct Shared {
    id: VersionId,
    dimension: usize,
    /// Read by tokenizing callers, and by the thread's forward passes.
    encoder: RwLock<SentenceEncoder>,
    metrics: VersionMetrics,
}

/// One request's tokenized texts and where its vectors go.
struct Job {
    sequences: Vec<Vec<u32>>,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>>>,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("id", &self.shared.id)
            .field("dimension", &self.shared.dimension)
            .finish_non_exhaustive()
    }
}

impl Embedder {
    /// Starts the version's batching thread; `settings` give its queue capacity and how long a
    /// pass waits for a full batch.
    pub fn spawn(
        id: VersionId,
        encoder: SentenceEncoder,
        settings: BatchSettings,
        metrics: VersionMetrics,
    ) -> Result<(Self, oneshot::Receiver<()>)> {
        let (queue, jobs) = mpsc::sync_channel(settings.queue_capacity);
        let (drained_tx, drained_rx) = oneshot::channel();
        let dimension = encoder.dimension();
        let shared = Arc::new(Shared { id: id.clone(), dimension, encoder: RwLock::new(encoder), metrics });
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("embed-{}-{}", id.model, id.version))
            .spawn(move || {
                run(&thread_shared, &jobs, settings.max_delay);
                drop(thread_shared);
                let _ = drained_tx.send(());
            })
            .map_err(|e| Error::io(format!("starting the embedding thread of {} v{}", id.model, id.version), e))?;
        Ok((Self { shared, queue, capacity: settings.queue_capacity }, drained_rx))
    }

    /// Width of the embeddings.
    pub fn dimension(&self) -> usize {
        self.shared.dimension
    }

    /// Embeds `input` (validated by the encoder), in passes shared with other requests.
    pub async fn embed(&self, input: EncoderInput) -> Result<Embeddings> {
        limits::check_embedding_texts(input.len())?;
        let shared = self.shared.clone();
        let sequences = tokio::task::spawn_blocking(move || {
            shared.encoder.read().unwrap_or_else(PoisonError::into_inner).sequences(&input)
        })
        .await
        .map_err(|e| self.gone(&e.to_string()))??;
        let tokens = sequences.iter().map(Vec::len).sum();
        let (reply, response) = oneshot::channel();
        let job = Job { sequences, enqueued: Instant::now(), reply };
        if let Err(e) = self.queue.try_send(job) {
            return Err(match e {
                TrySendError::Full(_) => Error::QueueFull {
                    model: self.shared.id.model.clone(),
                    version: self.shared.id.version,
                    capacity: self.capacity,
                },
                TrySendError::Disconnected(_) => self.gone("its thread stopped"),
            });
        }
        let vectors = response.await.map_err(|_| self.gone("its thread stopped"))??;
        Ok(Embeddings { version: self.shared.id.version, vectors, tokens })
    }

    fn gone(&self, why: &str) -> Error {
        Error::Shutdown(format!(
            "the embedding thread of {} v{} failed: {why}",
            self.shared.id.model, self.shared.id.version
        ))
    }
}

/// A queued request, partly embedded.
struct Pending {
    sequences: Vec<Vec<u32>>,
    enqueued: Instant,
    /// Taken when the request is answered.
    reply: Option<oneshot::Sender<Result<Vec<Vec<f32>>>>>,
    vectors: Vec<Vec<f32>>,
    /// Its texts not yet in a pass.
    next: usize,
    /// Its texts not yet embedded.
    left: usize,
}

impl Pending {
    fn new(job: Job) -> Self {
        let count = job.sequences.len();
        Self {
            sequences: job.sequences,
            enqueued: job.enqueued,
            reply: Some(job.reply),
            vectors: vec![Vec::new(); count],
            next: 0,
            left: count,
        }
    }

    fn answer(&mut self, result: Result<Vec<Vec<f32>>>) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(result);
        }
    }
}

/// The batching loop: passes over the waiting texts until every handle is gone and nothing is
/// left to embed.
fn run(shared: &Shared, jobs: &Receiver<Job>, max_delay: Duration) {
    let mut waiting: VecDeque<Pending> = VecDeque::new();
    loop {
        if waiting.is_empty() {
            match jobs.recv() {
                Ok(job) => waiting.push_back(Pending::new(job)),
                Err(_) => return,
            }
        }
        gather(jobs, &mut waiting, max_delay);
        let batch = take_batch(&mut waiting, limits::EMBEDDING_BATCH_TEXTS);
        for &(j, t) in &batch {
            if t == 0 {
                shared.metrics.queue_duration.observe(waiting[j].enqueued.elapsed().as_secs_f64());
            }
        }
        let rows: Vec<Vec<u32>> = batch.iter().map(|&(j, t)| waiting[j].sequences[t].clone()).collect();
        shared.metrics.batch_size.observe(rows.len() as f64);
        let embedded = shared.encoder.read().unwrap_or_else(PoisonError::into_inner).embed(&rows);
        match embedded {
            Ok(vectors) => {
                for ((j, t), vector) in batch.into_iter().zip(vectors) {
                    waiting[j].vectors[t] = vector;
                    waiting[j].left -= 1;
                }
            }
            // Every request with a text in the failed pass gets the failure.
            Err(error) => {
                let reason = error.to_string();
                for (j, _) in batch {
                    let pending = &mut waiting[j];
                    pending.answer(Err(Error::from(lantern_runtime::Error::ModelFile(reason.clone()))));
                    (pending.next, pending.left) = (pending.sequences.len(), 0);
                }
            }
        }
        // Answers and forgets the requests whose texts are all embedded.
        waiting.retain_mut(|pending| {
            let done = pending.left == 0;
            if done {
                let vectors = std::mem::take(&mut pending.vectors);
                pending.answer(Ok(vectors));
            }
            !done
        });
    }
}

/// Adds what queued meanwhile to `waiting`, waiting up to `max_delay` for a full batch.
fn gather(jobs: &Receiver<Job>, waiting: &mut VecDeque<Pending>, max_delay: Duration) {
    while let Ok(job) = jobs.try_recv() {
        waiting.push_back(Pending::new(job));
    }
    let deadline = Instant::now() + max_delay;
    while unscheduled(waiting) < limits::EMBEDDING_BATCH_TEXTS {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        match jobs.recv_timeout(deadline - now) {
            Ok(job) => waiting.push_back(Pending::new(job)),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
        }
    }
}

fn unscheduled(waiting: &VecDeque<Pending>) -> usize {
    waiting.iter().map(|p| p.sequences.len() - p.next).sum()
}

/// Up to `size` unscheduled texts as (request, text) pairs: one from each request in turn, in
/// arrival order, then sorted by length so the pass pads little.
fn take_batch(waiting: &mut VecDeque<Pending>, size: usize) -> Vec<(usize, usize)> {
    let mut batch = Vec::with_capacity(size);
    loop {
        let before = batch.len();
        for (j, pending) in waiting.iter_mut().enumerate() {
            if batch.len() < size && pending.next < pending.sequences.len() {
                batch.push((j, pending.next));
                pending.next += 1;
            }
        }
        if batch.len() == size || batch.len() == before {
            break;
        }
    }
    batch.sort_by_key(|&(j, t)| waiting[j].sequences[t].len());
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(lengths: &[usize]) -> Pending {
        let (reply, _) = oneshot::channel();
        let sequences = lengths.iter().map(|&n| vec![0; n]).collect();
        Pending::new(Job { sequences, enqueued: Instant::now(), reply })
    }

    #[test]
    fn a_pass_takes_one_text_from_each_waiting_request_in_turn_sorted_by_length() {
        let mut waiting: VecDeque<Pending> = [pending(&[9, 8, 7, 6, 5]), pending(&[3]), pending(&[4, 2])].into();
        let batch = take_batch(&mut waiting, 4);
        // Request 0's first two texts, request 1's only text, request 2's first; shortest first.
        assert_eq!(batch, [(1, 0), (2, 0), (0, 1), (0, 0)]);
        assert_eq!(take_batch(&mut waiting, 4), [(2, 1), (0, 4), (0, 3), (0, 2)]);
        assert!(take_batch(&mut waiting, 4).is_empty());
        assert_eq!(unscheduled(&waiting), 0);
    }
}
