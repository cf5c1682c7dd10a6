//! The runtime's error type. Every failure carries the model, version or file it concerns; the
//! serving crate maps these to gRPC codes and HTTP statuses in one table.

use std::path::PathBuf;

/// Result alias for the runtime.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong loading and running models, classified by what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request's input cannot be used (shape, datatype, text); the message names the field.
    #[error("{0}")]
    InvalidArgument(String),

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

    /// A tensor computation or tensor file failed.
    #[error("{context}: {source}")]
    Candle {
        context: String,
        #[source]
        source: candle_core::Error,
    },

    /// A remote repository's store refused or failed a request (missing bucket, credentials,
    /// a server gone away).
    #[error("{context}: {source}")]
    Storage {
        context: String,
        #[source]
        source: object_store::Error,
    },

    /// The device models should run on cannot be used.
    #[error("device {device}: {reason}")]
    Device { device: String, reason: String },
}

impl Error {
    /// Wraps an I/O error with what was being done and to which path.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }

    /// Wraps a candle error with what was being done.
    pub fn candle(context: impl Into<String>, source: candle_core::Error) -> Self {
        Self::Candle { context: context.into(), source }
    }

    /// Wraps an object store's error with what was being done.
    pub fn storage(context: impl Into<String>, source: object_store::Error) -> Self {
        Self::Storage { context: context.into(), source }
    }

    /// An invalid-argument error from anything printable.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidArgument(message.into())
    }
}
