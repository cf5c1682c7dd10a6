//! Runs a version's sentence encoder for the requests routed to it, on the blocking pool. A
//! request's texts are tokenized (and refused) first, then embedded in batches of at most
//! [`limits::EMBEDDING_BATCH_TEXTS`] texts of similar length, one batch at a time (the encoder
//! uses every compute thread), so a large request costs one batch's memory, pads little, and lets
//! other requests' batches run between its own.
//! The `drained` receiver fires once the last request holding the version is done and the model
//! is released.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::oneshot;

use super::limits;
use super::metrics::VersionMetrics;
use crate::error::{Error, Result};
use lantern_runtime::model::VersionId;
use lantern_runtime::model::bert::SentenceEncoder;

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
    inner: Arc<Inner>,
}

struct Inner {
    id: VersionId,
    dimension: usize,
    encoder: Mutex<SentenceEncoder>,
    metrics: VersionMetrics,
    drained: Option<oneshot::Sender<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(drained) = self.drained.take() {
            let _ = drained.send(());
        }
    }
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("id", &self.inner.id)
            .field("dimension", &self.inner.dimension)
            .finish_non_exhaustive()
    }
}

impl Embedder {
    pub fn new(id: VersionId, encoder: SentenceEncoder, metrics: VersionMetrics) -> (Self, oneshot::Receiver<()>) {
        let (drained, released) = oneshot::channel();
        let dimension = encoder.dimension();
        let inner = Inner { id, dimension, encoder: Mutex::new(encoder), metrics, drained: Some(drained) };
        (Self { inner: Arc::new(inner) }, released)
    }

    /// Width of the embeddings.
    pub fn dimension(&self) -> usize {
        self.inner.dimension
    }

    /// Embeds `texts` (validated by the encoder) off the async runtime.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Embeddings> {
        limits::check_embedding_texts(texts.len())?;
        let inner = self.inner.clone();
        let enqueued = Instant::now();
        let failed = |e: tokio::task::JoinError| {
            Error::Shutdown(format!("embedding task of {:?} failed: {e}", self.inner.id.model))
        };
        let sequences = tokio::task::spawn_blocking(move || {
            inner.encoder.lock().unwrap_or_else(PoisonError::into_inner).tokenize(&texts)
        })
        .await
        .map_err(failed)??;
        let tokens = sequences.iter().map(Vec::len).sum();
        let mut vectors = vec![Vec::new(); sequences.len()];
        for batch in length_batches(&sequences, limits::EMBEDDING_BATCH_TEXTS) {
            let inner = self.inner.clone();
            let rows: Vec<Vec<u32>> = batch.iter().map(|&i| sequences[i].clone()).collect();
            let embedded = tokio::task::spawn_blocking(move || {
                let encoder = inner.encoder.lock().unwrap_or_else(PoisonError::into_inner);
                inner.metrics.queue_duration.observe(enqueued.elapsed().as_secs_f64());
                inner.metrics.batch_size.observe(rows.len() as f64);
                encoder.embed(&rows)
            })
            .await
            .map_err(failed)??;
            for (i, vector) in batch.into_iter().zip(embedded) {
                vectors[i] = vector;
            }
        }
        Ok(Embeddings { version: self.inner.id.version, vectors, tokens })
    }
}

/// The indices of `sequences` grouped into batches of at most `size`, shortest first, so each
/// batch pads its rows to a similar length.
fn length_batches(sequences: &[Vec<u32>], size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..sequences.len()).collect();
    order.sort_by_key(|&i| sequences[i].len());
    order.chunks(size.max(1)).map(<[usize]>::to_vec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_batched_by_length_and_every_one_is_in_exactly_one_batch() {
        let sequences: Vec<Vec<u32>> = [5, 1, 9, 3, 7].iter().map(|&n| vec![0; n]).collect();
        let batches = length_batches(&sequences, 2);
        assert_eq!(batches, vec![vec![1, 3], vec![0, 4], vec![2]]);
        assert_eq!(length_batches(&sequences, 32).len(), 1);
    }
}
