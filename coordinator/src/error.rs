//! The coordinator's error type and how each kind maps to a gRPC status.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; the message names the field.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// The caller's token does not allow this (wrong worker id, queue out of scope).
    #[error("{0}")]
    PermissionDenied(String),
    /// A report carried a lease token that is not the job's current attempt, or the
    /// operation does not fit the object's state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// What the request would create exists already, differently (an idempotency key
    /// reused with another spec).
    #[error("{0}")]
    AlreadyExists(String),
    /// A bound on open calls (streams, watches) was reached; the message names it.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The request was fine but must be retried after something else happens first.
    #[error("{0}")]
    Aborted(String),
    /// PostgreSQL is unreachable; callers should retry.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<drover_core::ValidationError> for Error {
    fn from(e: drover_core::ValidationError) -> Self {
        Error::Invalid(e.to_string())
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        // A closed connection or I/O failure means the database went away: retryable.
        if e.is_closed() || e.as_db_error().is_none() {
            return Error::Unavailable(e.to_string());
        }
        let db = e.as_db_error().map(|d| d.code().code().to_string());
        match db.as_deref() {
            // admin_shutdown, crash_shutdown, cannot_connect_now, serialization, deadlock
            Some("57P01") | Some("57P02") | Some("57P03") => Error::Unavailable(e.to_string()),
            Some("40001") | Some("40P01") => Error::Aborted(format!("{e}; retry")),
            _ => Error::Internal(format!("{e:?}")),
        }
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Error::Unavailable(e.to_string())
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::Invalid(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Aborted(_) => Code::Aborted,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Internal(_) => Code::Internal,
        };
        if code == Code::Internal {
            tracing::error!(error = %e, "internal error");
        }
        Status::new(code, e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
