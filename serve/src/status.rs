//! The one table from serving and runtime errors to gRPC status codes and HTTP statuses. Both protocols, the
//! metrics' `code` label and the tests read it from here.

use http::StatusCode;
use tonic::Code;

use lantern_runtime::Error as RuntimeError;

use crate::error::Error;

/// The gRPC code for an error.
pub fn grpc_code(err: &Error) -> Code {
    match err {
        Error::ModelNotFound { .. } | Error::VersionNotFound { .. } | Error::LabelNotFound { .. } => Code::NotFound,
        Error::Unavailable { .. } | Error::Shutdown(_) => Code::Unavailable,
        Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::QueueFull { .. } | Error::LimitExceeded(_) => Code::ResourceExhausted,
        Error::Inference { .. } | Error::Startup(_) | Error::Tls(_) | Error::Token(_) => Code::Internal,
        Error::Runtime(err) => runtime_code(err),
    }
}

/// The gRPC code for a runtime error: the caller's input, or the server's fault.
fn runtime_code(err: &RuntimeError) -> Code {
    match err {
        RuntimeError::InvalidArgument(_) => Code::InvalidArgument,
        RuntimeError::Storage { .. } => Code::Unavailable,
        RuntimeError::Manifest { .. }
        | RuntimeError::Io { .. }
        | RuntimeError::Load { .. }
        | RuntimeError::ModelFile(_)
        | RuntimeError::Candle { .. }
        | RuntimeError::Device { .. } => Code::Internal,
    }
}

/// The HTTP status for a gRPC code, as the REST API answers it.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The canonical upper-case name of a code (`NOT_FOUND`), for metric labels.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        tonic::Status::new(grpc_code(&err), err.to_string())
    }
}
