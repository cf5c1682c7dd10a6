//! The training crate's error type. Configuration errors name the field; everything that stops a
//! running job names the step.

use std::path::PathBuf;

/// Result alias for the training crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong configuring or running a training job.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The job's configuration cannot be used; `field` is its path in the job file.
    #[error("training config: {field}: {reason}")]
    Config { field: String, reason: String },

    /// Training stopped at `step`.
    #[error("training stopped at step {step}: {reason}")]
    Training { step: u64, reason: String },

    /// A training state (weights, optimizer moments) cannot be used.
    #[error("{path}: {reason}", path = path.display())]
    State { path: PathBuf, reason: String },

    /// A file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A tensor computation or tensor file failed.
    #[error("{context}: {source}")]
    Candle {
        context: String,
        #[source]
        source: candle_core::Error,
    },

    /// Something the job needs could not be built (its endpoints, its byte tokenizer).
    #[error("{0}")]
    Startup(String),

    /// The job's token cannot be used.
    #[error(transparent)]
    Token(#[from] lantern_proto::auth::TokenError),

    /// The model runtime failed (loading a base, publishing a version). Boxed: the runtime's
    /// error holds a candle error of its own, and would double this one's size.
    #[error(transparent)]
    Runtime(Box<lantern_runtime::Error>),
}

impl From<lantern_runtime::Error> for Error {
    fn from(error: lantern_runtime::Error) -> Self {
        Self::Runtime(Box::new(error))
    }
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

    /// Wraps a candle error with what was being done.
    pub fn candle(context: impl Into<String>, source: candle_core::Error) -> Self {
        Self::Candle { context: context.into(), source }
    }
}

impl From<lantern_contract::ContractError> for Error {
    fn from(error: lantern_contract::ContractError) -> Self {
        Self::Config { field: error.field, reason: error.reason }
    }
}
