//! Runs a version's sentence encoder for the requests routed to it: each request's texts are one
//! batch, computed on the blocking pool one at a time (the encoder uses every compute thread).
//! The `drained` receiver fires once the last request holding the version is done and the model
//! is released.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::oneshot;

use super::metrics::VersionMetrics;
use crate::error::{Error, Result};
use crate::model::VersionId;
use crate::model::bert::SentenceEncoder;

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
        let inner = self.inner.clone();
        let enqueued = Instant::now();
        let (vectors, tokens) = tokio::task::spawn_blocking(move || {
            let encoder = inner.encoder.lock().unwrap_or_else(PoisonError::into_inner);
            inner.metrics.queue_duration.observe(enqueued.elapsed().as_secs_f64());
            inner.metrics.batch_size.observe(texts.len() as f64);
            encoder.encode(&texts)
        })
        .await
        .map_err(|e| Error::Shutdown(format!("embedding task of {:?} failed: {e}", self.inner.id.model)))??;
        Ok(Embeddings { version: self.inner.id.version, vectors, tokens })
    }
}
