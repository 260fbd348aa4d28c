//! The JSON API under `/api/v1`: the gRPC services' own handlers, called in-process.
//!
//! Every route builds a `tonic::Request` carrying the caller's [`Principal`] (resolved by
//! the HTTP auth layer from a bearer token or a dashboard session) and its address, and
//! calls the same service method the gRPC listener would. Validation, queue scopes,
//! idempotency, audit entries and error kinds are therefore the gRPC ones; this module
//! only maps JSON to messages (proto3 field names, enums by name, RFC 3339 times; see
//! `drover_proto::jsonfmt`) and status codes to HTTP statuses ([`http_status`]).
//!
//! The OpenAPI document (`openapi.json`, committed as source) describes every route.

use crate::auth::Principal;
use crate::http::HttpState;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use drover_proto::v1 as pb;
use drover_proto::v1::admin_service_server::AdminService;
use drover_proto::v1::alert_service_server::AlertService;
use drover_proto::v1::job_service_server::JobService;
use drover_proto::v1::queue_service_server::QueueService;
use drover_proto::v1::schedule_service_server::ScheduleService;
use futures::StreamExt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tonic::{Code, Status};

/// The services both listeners serve.
#[derive(Clone)]
pub struct Services {
    pub jobs: Arc<crate::jobs_api::JobsApi>,
    pub admin: Arc<crate::health::AdminApi>,
    pub queues: Arc<crate::queues_api::QueuesApi>,
    pub alerts: Arc<crate::alerts_api::AlertsApi>,
    pub schedules: Arc<crate::schedules_api::SchedulesApi>,
}

/// The OpenAPI 3 document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Largest JSON request body accepted (a job spec is far smaller).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/health", get(health))
        .route("/api/v1/workers", get(list_workers))
        .route("/api/v1/jobs", get(list_jobs).post(submit_job))
        .route("/api/v1/jobs/retry", post(retry_jobs))
        .route("/api/v1/jobs/{id}", get(get_job))
        .route("/api/v1/jobs/{id}/retry", post(retry_job))
        .route("/api/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/api/v1/jobs/{id}/artifacts", get(list_artifacts))
        .route("/api/v1/jobs/{id}/artifacts/{*name}", get(get_artifact))
        .route("/api/v1/queues", get(list_queues))
        .route("/api/v1/queues/{queue}/pause", post(pause_queue))
        .route("/api/v1/queues/{queue}/resume", post(resume_queue))
        .route("/api/v1/failure-groups", get(list_failure_groups))
        .route("/api/v1/schedules", get(list_schedules))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// gRPC status -> HTTP status, for every code (the one table both the API and the
/// dashboard use).
pub fn http_status(code: Code) -> StatusCode {
    // Codes an `Error` kind produces take their row of the one error table, so the gRPC
    // and HTTP faces of an error never disagree; the rest come only from tonic itself or
    // a handler's own Status.
    if let Some(kind) = crate::error::ErrorKind::from_grpc(code) {
        return kind.http();
    }
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The gRPC code's name as it appears in error bodies ("NOT_FOUND").
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

/// A refused or failed call: `{"code": "NOT_FOUND", "message": "..."}` with the mapped
/// HTTP status; an invalid request also gets `"fields": [{"field": …, "description": …}]`
/// (the status's `google.rpc.BadRequest` field violations).
pub struct ApiError(pub Status);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        use tonic_types::StatusExt;
        let mut body = serde_json::json!({
            "code": code_name(self.0.code()),
            "message": self.0.message(),
        });
        if let Some(bad) = self.0.get_details_bad_request() {
            body["fields"] = bad
                .field_violations
                .iter()
                .map(|v| serde_json::json!({"field": v.field, "description": v.description}))
                .collect();
        }
        (http_status(self.0.code()), Json(body)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError(Status::invalid_argument(format!(
            "request body: {}",
            r.body_text()
        )))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError(Status::invalid_argument(format!(
            "query: {}",
            r.body_text()
        )))
    }
}

/// Who is calling: the principal the auth layer resolved and the client's address.
#[derive(Clone)]
pub struct Caller {
    pub principal: Principal,
    pub peer: Option<SocketAddr>,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Caller {
            // Absent only if the auth layer did not run (a bug): then nothing is allowed.
            principal: parts
                .extensions
                .get::<Principal>()
                .cloned()
                .unwrap_or_else(Principal::anonymous),
            peer: parts
                .extensions
                .get::<ConnectInfo<crate::http::PeerAddr>>()
                .map(|c| c.0 .0),
        })
    }
}

impl Caller {
    /// A request for a service method, as the gRPC listener would hand it over.
    pub fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.extensions_mut().insert(self.principal.clone());
        r.extensions_mut()
            .insert(tonic::transport::server::TcpConnectInfo {
                local_addr: None,
                remote_addr: self.peer,
            });
        r
    }

    /// Calls a service method in-process.
    pub async fn call<Req, Resp, F, Fut>(&self, msg: Req, f: F) -> Result<Resp, ApiError>
    where
        F: FnOnce(tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        f(self.request(msg))
            .await
            .map(tonic::Response::into_inner)
            .map_err(ApiError)
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(t)| t).map_err(ApiError::from)
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t).map_err(ApiError::from)
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn health(State(s): State<HttpState>, c: Caller) -> ApiResult<pb::GetHealthResponse> {
    let svc = &*s.services.admin;
    c.call(pb::GetHealthRequest {}, |r| svc.get_health(r))
        .await
        .map(Json)
}

async fn list_workers(
    State(s): State<HttpState>,
    c: Caller,
    q: Result<Query<pb::ListWorkersRequest>, QueryRejection>,
) -> ApiResult<pb::ListWorkersResponse> {
    let svc = &*s.services.admin;
    c.call(query(q)?, |r| svc.list_workers(r)).await.map(Json)
}

async fn list_jobs(
    State(s): State<HttpState>,
    c: Caller,
    q: Result<Query<pb::ListJobsRequest>, QueryRejection>,
) -> ApiResult<pb::ListJobsResponse> {
    let svc = &*s.services.jobs;
    c.call(query(q)?, |r| svc.list_jobs(r)).await.map(Json)
}

async fn submit_job(
    State(s): State<HttpState>,
    c: Caller,
    b: Result<Json<pb::SubmitJobRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let svc = &*s.services.jobs;
    let out = c.call(body(b)?, |r| svc.submit_job(r)).await?;
    // 201 for a new job, 200 when an idempotency key matched an existing one.
    let code = if out.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(out)).into_response())
}

async fn get_job(
    State(s): State<HttpState>,
    c: Caller,
    Path(id): Path<String>,
) -> ApiResult<pb::GetJobResponse> {
    let svc = &*s.services.jobs;
    c.call(pb::GetJobRequest { id }, |r| svc.get_job(r))
        .await
        .map(Json)
}

/// An optional JSON body: an empty one means the message's defaults.
fn optional_body<T: Default + serde::de::DeserializeOwned>(b: &Bytes) -> Result<T, ApiError> {
    if b.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(b)
        .map_err(|e| ApiError(Status::invalid_argument(format!("request body: {e}"))))
}

async fn retry_job(
    State(s): State<HttpState>,
    c: Caller,
    Path(id): Path<String>,
    b: Bytes,
) -> ApiResult<pb::RetryJobResponse> {
    let mut msg: pb::RetryJobRequest = optional_body(&b)?;
    msg.id = id;
    let svc = &*s.services.jobs;
    c.call(msg, |r| svc.retry_job(r)).await.map(Json)
}

async fn retry_jobs(
    State(s): State<HttpState>,
    c: Caller,
    b: Result<Json<pb::RetryJobsRequest>, JsonRejection>,
) -> ApiResult<pb::RetryJobsResponse> {
    let svc = &*s.services.jobs;
    c.call(body(b)?, |r| svc.retry_jobs(r)).await.map(Json)
}

async fn cancel_job(
    State(s): State<HttpState>,
    c: Caller,
    Path(id): Path<String>,
    b: Bytes,
) -> ApiResult<pb::CancelJobResponse> {
    let mut msg: pb::CancelJobRequest = optional_body(&b)?;
    msg.id = id;
    let svc = &*s.services.jobs;
    c.call(msg, |r| svc.cancel_job(r)).await.map(Json)
}

async fn list_artifacts(
    State(s): State<HttpState>,
    c: Caller,
    Path(job_id): Path<String>,
    q: Result<Query<pb::ListArtifactsRequest>, QueryRejection>,
) -> ApiResult<pb::ListArtifactsResponse> {
    let mut msg = query(q)?;
    msg.job_id = job_id;
    let svc = &*s.services.jobs;
    c.call(msg, |r| svc.list_artifacts(r)).await.map(Json)
}

/// An artifact's bytes as a download; its SHA-256 in the `x-drover-sha256` header.
async fn get_artifact(
    State(s): State<HttpState>,
    c: Caller,
    Path((job_id, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let svc = &*s.services.jobs;
    let mut stream = c
        .call(
            pb::GetArtifactRequest {
                job_id,
                name: name.clone(),
            },
            |r| svc.get_artifact(r),
        )
        .await?;
    let first = match stream.next().await {
        Some(Ok(m)) => m,
        Some(Err(e)) => return Err(ApiError(e)),
        None => return Err(ApiError(Status::internal("artifact stream ended at once"))),
    };
    let meta = first.artifact.unwrap_or_default();
    let head = futures::stream::iter([Ok::<_, Status>(Bytes::from(first.data))]);
    let rest = stream.map(|m| m.map(|m| Bytes::from(m.data)));
    let file = name.rsplit('/').next().unwrap_or(&name).replace('"', "");
    let mut resp = Body::from_stream(head.chain(rest)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&meta.size.to_string()) {
        h.insert(header::CONTENT_LENGTH, v);
    }
    if let Ok(v) = header::HeaderValue::from_str(&format!("attachment; filename=\"{file}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Ok(v) = header::HeaderValue::from_str(&meta.sha256) {
        h.insert("x-drover-sha256", v);
    }
    Ok(resp)
}

async fn list_queues(
    State(s): State<HttpState>,
    c: Caller,
    q: Result<Query<pb::ListQueuesRequest>, QueryRejection>,
) -> ApiResult<pb::ListQueuesResponse> {
    let svc = &*s.services.queues;
    c.call(query(q)?, |r| svc.list_queues(r)).await.map(Json)
}

async fn pause_queue(
    State(s): State<HttpState>,
    c: Caller,
    Path(queue): Path<String>,
    b: Bytes,
) -> ApiResult<pb::PauseQueueResponse> {
    let mut msg: pb::PauseQueueRequest = optional_body(&b)?;
    msg.queue = queue;
    let svc = &*s.services.queues;
    c.call(msg, |r| svc.pause_queue(r)).await.map(Json)
}

async fn resume_queue(
    State(s): State<HttpState>,
    c: Caller,
    Path(queue): Path<String>,
) -> ApiResult<pb::ResumeQueueResponse> {
    let svc = &*s.services.queues;
    c.call(pb::ResumeQueueRequest { queue }, |r| svc.resume_queue(r))
        .await
        .map(Json)
}

async fn list_failure_groups(
    State(s): State<HttpState>,
    c: Caller,
    q: Result<Query<pb::ListFailureGroupsRequest>, QueryRejection>,
) -> ApiResult<pb::ListFailureGroupsResponse> {
    let svc = &*s.services.alerts;
    c.call(query(q)?, |r| svc.list_failure_groups(r))
        .await
        .map(Json)
}

async fn list_schedules(
    State(s): State<HttpState>,
    c: Caller,
    q: Result<Query<pb::ListSchedulesRequest>, QueryRejection>,
) -> ApiResult<pb::ListSchedulesResponse> {
    let svc = &*s.services.schedules;
    c.call(query(q)?, |r| svc.list_schedules(r)).await.map(Json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_maps_to_an_error_status_except_ok() {
        for n in 1..=16 {
            let code = Code::from_i32(n);
            assert!(
                http_status(code).as_u16() >= 400,
                "{code:?} maps to {}",
                http_status(code)
            );
            assert_ne!(code_name(code), "OK");
        }
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn the_openapi_document_is_json_and_lists_every_api_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
        let paths = doc["paths"].as_object().expect("paths");
        for (route, _) in crate::auth::HTTP_RULES {
            if let Some(rest) = route.strip_prefix("/api/v1") {
                let rest = rest.replace("{*name}", "{name}");
                assert!(paths.contains_key(&rest), "openapi.json lacks {rest}");
            }
        }
    }
}
