//! The stack's error type: what failed to start, connect or answer, and why.
use std::path::PathBuf;

/// What can go wrong while starting, using or stopping the stack.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path} is missing: build the binaries first (cargo build --workspace --bins; the same profile as the running program)")]
    MissingBinary { path: PathBuf },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} did not start; its log ({log}):\n{tail}")]
    NotStarted {
        name: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Exited(String),
    #[error("{what}: {source}")]
    Postgres {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(transparent)]
    PgServer(#[from] drover_pgserver::PgServerError),
    #[error("{what}: {source}")]
    Coordinator {
        what: String,
        #[source]
        source: drover_coordinator::error::Error,
    },
    #[error("{what}: {source}")]
    Grpc {
        what: String,
        #[source]
        source: tonic::Status,
    },
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Names what failed for an I/O error.
pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

pub(crate) fn pg(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Error {
    let what = what.into();
    move |source| Error::Postgres { what, source }
}
