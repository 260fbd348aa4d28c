//! The coordinator's error type, its kinds, and the one table that maps each kind to a
//! gRPC code and an HTTP status (used by the gRPC services and the HTTP routes alike).
//!
//! Errors from the database keep their source ([`Error::Database`], [`Error::Pool`]); their
//! kind follows from what happened (connection lost: unavailable; serialization failure:
//! aborted; anything else: internal). An internal error's text never reaches a client: it
//! is logged with a reference id, and the client gets `internal error (ref …)`; an
//! unavailable or aborted database gets a fixed message (the details go to the log).
//!
//! Invalid requests name the field: the message is `field: problem`, and the gRPC status
//! carries the same as `google.rpc.BadRequest` field violations ([`Error::field`]).

use axum::http::StatusCode;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// A submitted value failed validation (names the field).
    #[error(transparent)]
    Validation(#[from] drover_core::ValidationError),
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
    /// A bound on open calls (watches) was reached; the message names it.
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
    /// A statement failed; see [`Error::kind`] for what that means to the caller.
    #[error("{}", database_message(.0))]
    Database(#[from] tokio_postgres::Error),
    /// No pooled connection could be had (the database is down or overloaded).
    #[error("database unavailable: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A request id was used before for a different request (names the field).
    #[error("{0}")]
    RequestIdReused(String),
}

/// What kind of failure an error is: what the caller can do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Invalid,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    FailedPrecondition,
    AlreadyExists,
    ResourceExhausted,
    Aborted,
    Unavailable,
    Internal,
}

/// The one table: each kind's gRPC code and HTTP status.
pub const ERROR_TABLE: [(ErrorKind, Code, StatusCode); 10] = [
    (
        ErrorKind::Invalid,
        Code::InvalidArgument,
        StatusCode::BAD_REQUEST,
    ),
    (
        ErrorKind::Unauthenticated,
        Code::Unauthenticated,
        StatusCode::UNAUTHORIZED,
    ),
    (
        ErrorKind::PermissionDenied,
        Code::PermissionDenied,
        StatusCode::FORBIDDEN,
    ),
    (ErrorKind::NotFound, Code::NotFound, StatusCode::NOT_FOUND),
    (
        ErrorKind::FailedPrecondition,
        Code::FailedPrecondition,
        StatusCode::CONFLICT,
    ),
    (
        ErrorKind::AlreadyExists,
        Code::AlreadyExists,
        StatusCode::CONFLICT,
    ),
    (
        ErrorKind::ResourceExhausted,
        Code::ResourceExhausted,
        StatusCode::TOO_MANY_REQUESTS,
    ),
    (ErrorKind::Aborted, Code::Aborted, StatusCode::CONFLICT),
    (
        ErrorKind::Unavailable,
        Code::Unavailable,
        StatusCode::SERVICE_UNAVAILABLE,
    ),
    (
        ErrorKind::Internal,
        Code::Internal,
        StatusCode::INTERNAL_SERVER_ERROR,
    ),
];

impl ErrorKind {
    fn row(self) -> &'static (ErrorKind, Code, StatusCode) {
        ERROR_TABLE
            .iter()
            .find(|(k, _, _)| *k == self)
            // Every kind has a row (unit-tested).
            .unwrap_or(&ERROR_TABLE[ERROR_TABLE.len() - 1])
    }

    /// A short lower-case name (a metrics label).
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Invalid => "invalid",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::NotFound => "not_found",
            ErrorKind::FailedPrecondition => "failed_precondition",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::ResourceExhausted => "resource_exhausted",
            ErrorKind::Aborted => "aborted",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }

    pub fn grpc(self) -> Code {
        self.row().1
    }

    pub fn http(self) -> StatusCode {
        self.row().2
    }

    /// The kind a gRPC code stands for, if the table has it.
    pub fn from_grpc(code: Code) -> Option<ErrorKind> {
        ERROR_TABLE
            .iter()
            .find(|(_, c, _)| *c == code)
            .map(|(k, _, _)| *k)
    }
}

/// What a failed statement means to the caller.
fn database_kind(e: &tokio_postgres::Error) -> ErrorKind {
    // A closed connection or I/O failure means the database went away: retryable.
    let Some(db) = e.as_db_error() else {
        return ErrorKind::Unavailable;
    };
    if e.is_closed() {
        return ErrorKind::Unavailable;
    }
    match db.code().code() {
        // admin_shutdown, crash_shutdown, cannot_connect_now
        "57P01" | "57P02" | "57P03" => ErrorKind::Unavailable,
        // serialization_failure, deadlock_detected
        "40001" | "40P01" => ErrorKind::Aborted,
        _ => ErrorKind::Internal,
    }
}

fn database_message(e: &tokio_postgres::Error) -> String {
    match database_kind(e) {
        ErrorKind::Unavailable => format!("database unavailable: {e}"),
        ErrorKind::Aborted => format!("{e}; retry"),
        _ => format!("database error: {e}"),
    }
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Invalid(_) | Error::Validation(_) => ErrorKind::Invalid,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::PermissionDenied(_) => ErrorKind::PermissionDenied,
            Error::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            Error::AlreadyExists(_) | Error::RequestIdReused(_) => ErrorKind::AlreadyExists,
            Error::ResourceExhausted(_) => ErrorKind::ResourceExhausted,
            Error::Aborted(_) => ErrorKind::Aborted,
            Error::Unavailable(_) | Error::Pool(_) => ErrorKind::Unavailable,
            Error::Internal(_) => ErrorKind::Internal,
            Error::Database(e) => database_kind(e),
        }
    }

    /// The text a client may see. An internal error is logged here, with its source,
    /// under a reference id that the client gets instead.
    pub fn public_message(&self) -> String {
        match (self, self.kind()) {
            (_, ErrorKind::Internal) => {}
            // The database's own text (host names, statement details) stays in the log.
            (Error::Database(_) | Error::Pool(_), kind) => {
                tracing::warn!(error = %self, "database error");
                return match kind {
                    ErrorKind::Aborted => "conflict with a concurrent change; retry".into(),
                    _ => "database unavailable; retry".into(),
                };
            }
            _ => return self.to_string(),
        }
        let reference = uuid::Uuid::new_v4().simple().to_string();
        let reference = &reference[..12];
        tracing::error!(reference, error = %self, detail = ?self, "internal error");
        format!("internal error (ref {reference})")
    }
}

/// Characters of a field path (`spec.retry.jitter`, `after[2]`, `schedule.spec.argv`).
fn is_field_path(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']' | '-'))
}

impl Error {
    /// The field an invalid request names, and the problem with it: from a validation
    /// error, or from an `Invalid` message of the form `field: problem`.
    pub fn field(&self) -> Option<(String, String)> {
        match self {
            Error::Validation(v) => Some((v.field.clone(), v.message.clone())),
            Error::Invalid(m) | Error::RequestIdReused(m) => {
                let (field, problem) = m.split_once(": ")?;
                is_field_path(field).then(|| (field.to_string(), problem.to_string()))
            }
            _ => None,
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let message = e.public_message();
        match e.field() {
            Some((field, problem)) => Status::with_error_details(
                e.kind().grpc(),
                message,
                ErrorDetails::with_bad_request_violation(field, problem),
            ),
            None => Status::new(e.kind().grpc(), message),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: [ErrorKind; 10] = [
        ErrorKind::Invalid,
        ErrorKind::Unauthenticated,
        ErrorKind::PermissionDenied,
        ErrorKind::NotFound,
        ErrorKind::FailedPrecondition,
        ErrorKind::AlreadyExists,
        ErrorKind::ResourceExhausted,
        ErrorKind::Aborted,
        ErrorKind::Unavailable,
        ErrorKind::Internal,
    ];

    #[test]
    fn every_kind_has_one_row() {
        for k in KINDS {
            assert_eq!(
                ERROR_TABLE.iter().filter(|(r, _, _)| *r == k).count(),
                1,
                "{k:?}"
            );
        }
        assert_eq!(ERROR_TABLE.len(), KINDS.len());
    }

    #[test]
    fn the_table() {
        let want = [
            (ErrorKind::Invalid, Code::InvalidArgument, 400),
            (ErrorKind::Unauthenticated, Code::Unauthenticated, 401),
            (ErrorKind::PermissionDenied, Code::PermissionDenied, 403),
            (ErrorKind::NotFound, Code::NotFound, 404),
            (ErrorKind::FailedPrecondition, Code::FailedPrecondition, 409),
            (ErrorKind::AlreadyExists, Code::AlreadyExists, 409),
            (ErrorKind::ResourceExhausted, Code::ResourceExhausted, 429),
            (ErrorKind::Aborted, Code::Aborted, 409),
            (ErrorKind::Unavailable, Code::Unavailable, 503),
            (ErrorKind::Internal, Code::Internal, 500),
        ];
        for (k, code, http) in want {
            assert_eq!(k.grpc(), code, "{k:?}");
            assert_eq!(k.http().as_u16(), http, "{k:?}");
            assert_eq!(ErrorKind::from_grpc(code), Some(k));
        }
        assert_eq!(ErrorKind::from_grpc(Code::DeadlineExceeded), None);
    }

    #[test]
    fn errors_map_through_the_table() {
        let cases = [
            (
                Error::Invalid("argv: required".into()),
                Code::InvalidArgument,
            ),
            (
                Error::Validation(drover_core::ValidationError {
                    field: "argv".into(),
                    message: "required".into(),
                }),
                Code::InvalidArgument,
            ),
            (Error::NotFound("job x".into()), Code::NotFound),
            (Error::PermissionDenied("no".into()), Code::PermissionDenied),
            (
                Error::FailedPrecondition("stale".into()),
                Code::FailedPrecondition,
            ),
            (Error::Aborted("again".into()), Code::Aborted),
            (Error::Unavailable("down".into()), Code::Unavailable),
        ];
        for (e, code) in cases {
            let msg = e.to_string();
            let s = Status::from(e);
            assert_eq!(s.code(), code);
            // What the client reads is the error's own text.
            assert_eq!(s.message(), msg);
        }
    }

    #[test]
    fn internal_errors_reach_the_client_as_a_reference_only() {
        let s = Status::from(Error::Internal("secret table layout".into()));
        assert_eq!(s.code(), Code::Internal);
        assert!(
            s.message().starts_with("internal error (ref "),
            "{}",
            s.message()
        );
        assert!(!s.message().contains("secret"), "{}", s.message());
    }

    #[test]
    fn invalid_requests_carry_the_field_in_details() {
        let cases = [
            (
                Error::Invalid("page_token: not ours".into()),
                "page_token",
                "not ours",
            ),
            (
                Error::Validation(drover_core::ValidationError {
                    field: "spec.retry.jitter".into(),
                    message: "must be between 0 and 1".into(),
                }),
                "spec.retry.jitter",
                "must be between 0 and 1",
            ),
            (
                Error::Invalid("after[2]: not a job id".into()),
                "after[2]",
                "not a job id",
            ),
        ];
        for (e, field, problem) in cases {
            let s = Status::from(e);
            assert_eq!(s.code(), Code::InvalidArgument);
            assert_eq!(s.message(), format!("{field}: {problem}"));
            let bad = s.get_details_bad_request().expect("BadRequest details");
            assert_eq!(bad.field_violations.len(), 1);
            assert_eq!(bad.field_violations[0].field, field);
            assert_eq!(bad.field_violations[0].description, problem);
        }
        // A message without a field gets no details (nothing to point at).
        let s = Status::from(Error::Invalid("no field here".into()));
        assert!(s.get_details_bad_request().is_none());
    }

    #[test]
    fn validation_errors_keep_their_source() {
        use std::error::Error as _;
        let v = drover_core::ValidationError {
            field: "retry.jitter".into(),
            message: "must be between 0 and 1".into(),
        };
        let e = Error::from(v.clone());
        assert_eq!(e.to_string(), v.to_string());
        assert_eq!(e.kind(), ErrorKind::Invalid);
        // transparent: the source is the validation error's own source (none), and the
        // value itself is kept.
        assert!(e.source().is_none());
        assert!(matches!(e, Error::Validation(ref got) if *got == v));
    }
}
