//! The HTTP listener beside gRPC, for people and scripts that don't speak gRPC:
//!
//! - `GET /healthz`: the process is up.
//! - `GET /readyz`: the database answers (503 otherwise).
//! - `GET /health`: the AdminService health report as JSON (503 when failing).
//! - `GET /metrics`: Prometheus metrics.
//! - `GET /jobs/{id}/logs[?attempt=N]`: an attempt's whole log (default: the latest) as a
//!   file download.
//! - `/api/v1/...`: the JSON API (see api.rs and its OpenAPI document).
//! - `/ui/...`: the dashboard (see dashboard.rs).

use crate::convert::parse_id;
use crate::error::Error;
use crate::store::Store;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use drover_transport::server::ChannelListener;
use serde::Deserialize;
use tokio_stream::wrappers::ReceiverStream;

/// The client's address, for handlers and the audit log (axum's `SocketAddr` connect info
/// only covers its own TCP listener).
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub std::net::SocketAddr);

impl<'a, Io>
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, ChannelListener<Io>>>
    for PeerAddr
where
    ChannelListener<Io>: axum::serve::Listener<Addr = std::net::SocketAddr>,
{
    fn connect_info(stream: axum::serve::IncomingStream<'a, ChannelListener<Io>>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

#[derive(Clone)]
pub struct HttpState {
    pub store: Store,
    pub log_cap_bytes: u64,
    pub admin: std::sync::Arc<crate::health::AdminApi>,
    pub dispatcher: std::sync::Arc<crate::dispatch::Dispatcher>,
    /// The gRPC services, called in-process by the JSON API and the dashboard.
    pub services: crate::api::Services,
    pub auth: std::sync::Arc<crate::auth::Auth>,
    /// The listener speaks TLS: session cookies get `Secure`.
    pub secure_cookies: bool,
    pub live: std::sync::Arc<crate::dashboard::LiveHeader>,
    pub max_log_streams: usize,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/jobs/{id}/logs", get(job_logs))
        .merge(crate::api::routes())
        .merge(crate::dashboard::routes())
        .with_state(state)
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        // The same table as the gRPC services (crate::error::ERROR_TABLE).
        let code = self.kind().http();
        (code, format!("{}\n", self.public_message())).into_response()
    }
}

async fn readyz(State(s): State<HttpState>) -> Response {
    match s.store.ping().await {
        Ok(()) => "ready\n".into_response(),
        Err(e) => {
            // The database's own text (host, reason) goes to the log, not to the prober.
            tracing::warn!(error = %e, "readiness: database unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response()
        }
    }
}

/// The AdminService health report as JSON; 503 when failing so probes can use it too.
async fn health(State(s): State<HttpState>) -> Response {
    let h = s.admin.health().await;
    let code = if h.status == drover_proto::v1::HealthStatus::Failing as i32 {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, axum::Json(drover_proto::json::health(&h))).into_response()
}

async fn metrics(State(s): State<HttpState>) -> Response {
    let body = crate::metrics::render(&s.store, &s.dispatcher).await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

#[derive(Deserialize)]
struct LogQuery {
    attempt: Option<u32>,
}

async fn job_logs(
    State(s): State<HttpState>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Response, Error> {
    let job_id = parse_id("id", &id)?;
    let attempts = s.store.list_attempts(job_id).await?;
    if attempts.is_empty() && s.store.get_job(job_id).await?.is_none() {
        return Err(Error::NotFound(format!("job {job_id} not found")));
    }
    let attempt = match q.attempt {
        Some(n) => attempts.into_iter().find(|a| a.number as u32 == n),
        None => attempts.into_iter().last(),
    }
    .ok_or_else(|| {
        Error::NotFound(match q.attempt {
            Some(n) => format!("attempt: job {job_id} has no attempt {n}"),
            None => format!("job {job_id} has not started yet: no log"),
        })
    })?;
    let filename = format!("job-{job_id}-attempt-{}.log", attempt.number);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Error>>(8);
    tokio::spawn(async move {
        let mut cursor = -1;
        loop {
            match crate::logs::next_chunks(&s.store, &attempt, &mut cursor, s.log_cap_bytes).await {
                Ok(chunks) if chunks.is_empty() => return,
                Ok(chunks) => {
                    for c in chunks {
                        if tx.send(Ok(Bytes::from(c.data))).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "text/plain; charset=utf-8".to_string(),
            ),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
}
