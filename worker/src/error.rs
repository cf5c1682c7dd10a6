//! The worker's error type. Every failure carries the model, version or file it concerns; the
//! mapping to gRPC codes and HTTP statuses lives in one place, [`crate::serve::status`].

use std::path::PathBuf;

/// Result alias for the worker library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the worker, classified by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model is not in the repository (or not served by this worker).
    #[error("model {model:?} is not served here")]
    ModelNotFound { model: String },

    /// The model exists but has no such version on disk.
    #[error("model {model:?} has no version {version}")]
    VersionNotFound { model: String, version: u64 },

    /// The request named a label the model's serving config does not define.
    #[error("model {model:?} has no label {label:?}")]
    LabelNotFound { model: String, label: String },

    /// The model or version exists but cannot take requests now (loading, failed, unloaded).
    #[error("model {model:?}: {reason}")]
    Unavailable { model: String, reason: String },

    /// The request itself is wrong; the message names the offending field.
    #[error("{0}")]
    InvalidArgument(String),

    /// The version's queue is full.
    #[error("model {model:?} version {version}: queue full ({capacity} requests waiting)")]
    QueueFull { model: String, version: u64, capacity: usize },

    /// A request would take more of a bounded resource than is left (configs, connections).
    #[error("{0}")]
    LimitExceeded(String),

    /// A manifest or serving config that cannot be used.
    #[error("{path}: {reason}", path = path.display())]
    Manifest { path: PathBuf, reason: String },

    /// A file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A model version could not be loaded (digest mismatch, corrupt weights, shape mismatch).
    #[error("model {model:?} version {version}: {reason}")]
    Load { model: String, version: u64, reason: String },

    /// A model's files (weights, tokenizer, chat template) cannot be used.
    #[error("{0}")]
    ModelFile(String),

    /// A model failed while running a batch.
    #[error("model {model:?} version {version}: inference failed: {reason}")]
    Inference { model: String, version: u64, reason: String },

    /// The server is shutting down or a worker task vanished.
    #[error("{0}")]
    Shutdown(String),

    /// The device models should run on cannot be used.
    #[error("device {device}: {reason}")]
    Device { device: String, reason: String },

    /// The server could not be assembled.
    #[error("starting the server: {0}")]
    Startup(String),

    /// A training job's configuration cannot be used; `field` is its path in the config file.
    #[error("training config: {field}: {reason}")]
    Config { field: String, reason: String },

    /// Training stopped at `step`.
    #[error("training stopped at step {step}: {reason}")]
    Training { step: u64, reason: String },
}

impl Error {
    /// Wraps an I/O error with what was being done and to which path.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }

    /// A configuration error naming the field.
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config { field: field.into(), reason: reason.into() }
    }

    /// An invalid-argument error from anything printable.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidArgument(message.into())
    }
}
