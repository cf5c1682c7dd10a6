//! The serving crate's error type: what a request or the server can run into, on top of the
//! runtime's errors. [`crate::status`] maps every variant to a gRPC code and an HTTP status.

/// Result alias for the serving crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong serving, classified by what the caller should do about it.
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

    /// A model failed while running a batch.
    #[error("model {model:?} version {version}: inference failed: {reason}")]
    Inference { model: String, version: u64, reason: String },

    /// The server is shutting down or a worker task vanished.
    #[error("{0}")]
    Shutdown(String),

    /// The server could not be assembled.
    #[error("starting the server: {0}")]
    Startup(String),

    /// The serving port's certificate or key cannot be used.
    #[error("TLS on the serving port")]
    Tls(#[from] lantern_tls::Error),

    /// A credentials file cannot be used.
    #[error(transparent)]
    Token(#[from] lantern_proto::auth::TokenError),

    /// Loading or running a model failed, or a request's input did not fit it.
    #[error(transparent)]
    Runtime(#[from] lantern_runtime::Error),
}

impl Error {
    /// Wraps an I/O error with what was being done and to which path.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Runtime(lantern_runtime::Error::io(context, source))
    }

    /// An invalid-argument error from anything printable.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidArgument(message.into())
    }

    /// Whether the request itself was wrong, here or in the runtime.
    pub fn is_invalid_argument(&self) -> bool {
        matches!(self, Self::InvalidArgument(_) | Self::Runtime(lantern_runtime::Error::InvalidArgument(_)))
    }
}
