//! `drover.v1.WorkerService`: the worker agents' side of the API.

use crate::artifacts::{self, BlobStore};
use crate::convert::{self, parse_id};
use crate::dispatch::Dispatcher;
use crate::error::Error;
use crate::store::{ArtifactRow, ChunkIn, EndRequest, Heartbeat, Store, WorkerHello, WorkerReport};
use drover_core::validate::{check_name, check_relative_path, sanitize_reported};
use drover_core::RawResult;
use drover_proto::v1 as pb;
use drover_proto::v1::session_request::Msg as In;
use drover_proto::v1::session_response::Msg as Out;
use drover_proto::v1::worker_service_server::WorkerService;
use futures::StreamExt;
use prost::Message;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

/// Upper bound on one AppendLogs call (the gRPC message limit is set above this).
pub const MAX_APPEND_BYTES: usize = 8 * 1024 * 1024;
const MAX_SLOTS: u32 = 1024;
/// Bounds on what a worker reports about itself (stored, shown by `droverctl workers` and
/// `health`, and logged). Text beyond them is cut; lists beyond them are refused.
pub const MAX_HOSTNAME_BYTES: usize = 255;
pub const MAX_VERSION_BYTES: usize = 64;
pub const MAX_CONTAINMENT_BYTES: usize = 256;
pub const MAX_WORKER_LABELS: usize = 64;
pub const MAX_WORKER_QUEUES: usize = 64;
pub const MAX_REPORTED_ATTEMPTS: usize = 4096;
pub const MAX_PAUSED_REASON_BYTES: usize = 1024;
/// Per-job entries kept from one resource report, and its encoded size.
pub const MAX_REPORTED_JOBS: usize = 1024;
pub const MAX_RESOURCE_REPORT_BYTES: usize = 128 * 1024;
/// A spawn or output error's text, and the output tail used for classification.
pub const MAX_RESULT_TEXT_BYTES: usize = 4096;
pub const MAX_OUTPUT_TAIL_BYTES: usize = 64 * 1024;

pub struct WorkersApi {
    pub store: Store,
    pub dispatcher: Arc<Dispatcher>,
    pub coordinator_id: String,
    pub lease_ttl: Duration,
    pub heartbeat_interval: Duration,
    pub log_cap_bytes: u64,
    pub blobs: Arc<dyn BlobStore>,
    pub max_artifact_bytes: u64,
    /// Told of token revocations: an open session re-checks the token it opened with.
    pub auth: Arc<crate::auth::Auth>,
}

/// How often an open session re-checks its token even without a revocation heard (expiry,
/// or a revocation missed while the listener was away).
const TOKEN_RECHECK: Duration = Duration::from_secs(30);

fn parse_ids(field: &str, ids: &[String]) -> Result<Vec<Uuid>, Error> {
    ids.iter().map(|s| parse_id(field, s)).collect()
}

/// A worker's Hello as stored, with the jobs it may hold beyond its slots and how much of
/// its room (slots plus those) is free now.
struct Greeted {
    hello: WorkerHello,
    ahead: u32,
    free: u32,
}

fn hello_from_pb(h: pb::Hello) -> Result<Greeted, Error> {
    if h.worker_id.is_empty() || h.worker_id.len() > 128 {
        return Err(Error::Invalid(
            "hello.worker_id: must be 1 to 128 characters".into(),
        ));
    }
    if h.worker_id.chars().any(char::is_control) {
        return Err(Error::Invalid(
            "hello.worker_id: must not contain control characters".into(),
        ));
    }
    for (field, n, max) in [
        ("hello.labels", h.labels.len(), MAX_WORKER_LABELS),
        ("hello.queues", h.queues.len(), MAX_WORKER_QUEUES),
        (
            "hello.running_attempts",
            h.running_attempts.len(),
            MAX_REPORTED_ATTEMPTS,
        ),
    ] {
        if n > max {
            return Err(Error::Invalid(format!(
                "{field}: {n} entries; the limit is {max}"
            )));
        }
    }
    if h.slots == 0 || h.slots > MAX_SLOTS {
        return Err(Error::Invalid(format!(
            "hello.slots: must be 1 to {MAX_SLOTS}, got {}",
            h.slots
        )));
    }
    // More held than run would only queue work on one host that another could start.
    if h.lease_ahead > h.slots {
        return Err(Error::Invalid(format!(
            "hello.lease_ahead: must be 0 to hello.slots ({}), got {}",
            h.slots, h.lease_ahead
        )));
    }
    for (i, q) in h.queues.iter().enumerate() {
        check_name(&format!("hello.queues[{i}]"), q)?;
    }
    for (i, l) in h.labels.iter().enumerate() {
        check_name(&format!("hello.labels[{i}]"), l)?;
    }
    let protocol_version = drover_core::protocol::check_worker(h.protocol_version)
        .map_err(Error::FailedPrecondition)?;
    let running = parse_ids("hello.running_attempts", &h.running_attempts)?;
    let free = h.free_slots.min(h.slots + h.lease_ahead);
    Ok(Greeted {
        hello: WorkerHello {
            id: h.worker_id,
            hostname: sanitize_reported(&h.hostname, MAX_HOSTNAME_BYTES),
            labels: h.labels,
            queues: if h.queues.is_empty() {
                vec![crate::jobs_api::DEFAULT_QUEUE.to_string()]
            } else {
                h.queues
            },
            slots: h.slots as i32,
            version: sanitize_reported(&h.version, MAX_VERSION_BYTES),
            running,
            containment: sanitize_reported(&h.containment, MAX_CONTAINMENT_BYTES),
            protocol_version: protocol_version as i32,
        },
        ahead: h.lease_ahead,
        free,
    })
}

fn parse_heartbeat_ids(ids: &[String]) -> Result<Vec<Uuid>, Error> {
    if ids.len() > MAX_REPORTED_ATTEMPTS {
        return Err(Error::Invalid(format!(
            "heartbeat.running_attempts: {} entries; the limit is {MAX_REPORTED_ATTEMPTS}",
            ids.len()
        )));
    }
    parse_ids("heartbeat.running_attempts", ids)
}

/// A worker's resource report as stored: at most MAX_REPORTED_JOBS per-job entries with
/// sane ids, and no larger than MAX_RESOURCE_REPORT_BYTES encoded (else the per-job list
/// is dropped), so `droverctl health`/`workers` responses stay small.
fn bounded_resources(mut r: pb::HostResources) -> Vec<u8> {
    r.jobs.truncate(MAX_REPORTED_JOBS);
    for j in &mut r.jobs {
        j.attempt_id = sanitize_reported(&j.attempt_id, 64);
    }
    if r.encoded_len() > MAX_RESOURCE_REPORT_BYTES {
        r.jobs.clear();
    }
    r.encode_to_vec()
}

pub fn stop_msg(attempt_id: Uuid, code: tonic::Code, reason: &str) -> Out {
    Out::Stop(pb::StopAttempt {
        attempt_id: attempt_id.to_string(),
        code: code as i32,
        reason: reason.to_string(),
    })
}

/// Stop orders answering a heartbeat.
fn stop_orders(hb: &Heartbeat) -> Vec<Out> {
    let stale = hb.stale.iter().map(|id| {
        stop_msg(
            *id,
            tonic::Code::FailedPrecondition,
            "attempt is no longer current",
        )
    });
    let cancel = hb
        .cancel
        .iter()
        .map(|id| stop_msg(*id, tonic::Code::Cancelled, "job cancelled by operator"));
    stale.chain(cancel).collect()
}

type SessionStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::SessionResponse, Status>> + Send>>;

#[tonic::async_trait]
impl WorkerService for WorkersApi {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        req: Request<Streaming<pb::SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let principal = crate::auth::Principal::of(&req);
        let peer = req
            .extensions()
            .get::<drover_transport::PeerIdentity>()
            .cloned();
        let mut inbound = req.into_inner();
        let first = inbound.message().await?;
        let Some(pb::SessionRequest {
            msg: Some(In::Hello(hello)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "session: the first message must be a hello",
            ));
        };
        let Greeted { hello, ahead, free } = hello_from_pb(hello)?;
        // Before anything is recorded: a worker token says hello only as its own worker id.
        principal.check_worker(&hello.id)?;
        // With a client certificate, a worker may only be the worker it names.
        drover_transport::identity::check_worker_identity(peer.as_ref(), &hello.id)?;
        let (orphans, hb) = self
            .store
            .register_worker(&hello, &self.coordinator_id, self.lease_ttl)
            .await?;
        tracing::info!(worker_id = ?hello.id, hostname = ?hello.hostname, slots = hello.slots,
            lease_ahead = ahead, running = hello.running.len(), orphans_lost = orphans.len(),
            containment = ?hello.containment, "worker connected");

        let slots = hello.slots.max(0) as u32;
        let (tx, rx) = mpsc::channel(256 + 2 * (slots + ahead) as usize);
        let welcome = Out::Welcome(pb::Welcome {
            coordinator_id: self.coordinator_id.clone(),
            heartbeat_interval: Some(drover_proto::durations::from_std(self.heartbeat_interval)),
            lease_ttl: Some(drover_proto::durations::from_std(self.lease_ttl)),
        });
        let _ = tx.try_send(Ok(pb::SessionResponse { msg: Some(welcome) }));
        for m in stop_orders(&hb) {
            let _ = tx.try_send(Ok(pb::SessionResponse { msg: Some(m) }));
        }
        for e in &orphans {
            crate::metrics::ended(e);
        }
        if !orphans.is_empty() {
            self.dispatcher.wake();
        }
        let session = self.dispatcher.register(
            hello.id.clone(),
            hello.queues.clone(),
            hello.labels.clone(),
            crate::dispatch::Room { slots, ahead, free },
            tx,
        );

        let store = self.store.clone();
        let dispatcher = self.dispatcher.clone();
        let coordinator_id = self.coordinator_id.clone();
        let ttl = self.lease_ttl;
        let auth = self.auth.clone();
        let token_id = principal.token_id();
        let mut token_checked = (auth.generation(), std::time::Instant::now());
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = inbound.message() => m,
                    _ = session.closed.cancelled() => break,
                };
                match msg {
                    Ok(Some(pb::SessionRequest { msg: Some(m) })) => match m {
                        In::Heartbeat(hb) => {
                            // The session authenticated once, when it opened: a token
                            // revoked or expired since then ends it, so a revoked worker
                            // gets no more jobs and renews no leases.
                            if let Some(id) = token_id {
                                let generation = auth.generation();
                                if generation != token_checked.0
                                    || token_checked.1.elapsed() >= TOKEN_RECHECK
                                {
                                    token_checked = (generation, std::time::Instant::now());
                                    if let Ok(false) = store.token_is_live(id).await {
                                        tracing::warn!(worker_id = ?session.worker_id, token_id = %id,
                                            "closing worker session: its token was revoked or expired");
                                        break;
                                    }
                                }
                            }
                            let ids = match parse_heartbeat_ids(&hb.running_attempts) {
                                Ok(ids) => ids,
                                Err(e) => {
                                    tracing::warn!(worker_id = ?session.worker_id, error = ?e.to_string(), "bad heartbeat");
                                    continue;
                                }
                            };
                            let report = WorkerReport {
                                resources: hb.resources.map(bounded_resources).unwrap_or_default(),
                                paused_reason: sanitize_reported(
                                    &hb.paused_reason,
                                    MAX_PAUSED_REASON_BYTES,
                                ),
                                draining: hb.draining,
                            };
                            // A paused or draining worker gets no new jobs, whatever its credits.
                            let was_paused =
                                session.set_paused(!hb.paused_reason.is_empty() || hb.draining);
                            if was_paused && hb.paused_reason.is_empty() && !hb.draining {
                                dispatcher.wake();
                            }
                            match store
                                .heartbeat(&session.worker_id, &ids, ttl, Some(&report))
                                .await
                            {
                                Ok(hb) => {
                                    for m in stop_orders(&hb) {
                                        session.send(m);
                                    }
                                }
                                // The worker keeps running; its next heartbeat may succeed.
                                Err(e) => tracing::warn!(error = %e, "heartbeat not recorded"),
                            }
                        }
                        In::Credit(c) => {
                            session.add_credits(c.slots);
                            dispatcher.wake();
                        }
                        In::Hello(_) => {
                            tracing::warn!(worker_id = ?session.worker_id, "duplicate hello ignored")
                        }
                    },
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            dispatcher.unregister(session.conn_id);
            session.closed.cancel();
            // Leases are left to expire (or to the worker's reconnect): the worker may
            // still be running its jobs and be on its way to another coordinator.
            if let Err(e) = store
                .worker_disconnected(&session.worker_id, &coordinator_id)
                .await
            {
                tracing::debug!(error = %e, "could not record worker disconnect");
            }
            tracing::info!(worker_id = %session.worker_id, "worker disconnected");
        });

        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn append_logs(
        &self,
        req: Request<pb::AppendLogsRequest>,
    ) -> Result<Response<pb::AppendLogsResponse>, Status> {
        let principal = crate::auth::Principal::of(&req);
        let r = req.into_inner();
        let attempt_id = parse_id("attempt_id", &r.attempt_id)?;
        let total: usize = r.chunks.iter().map(|c| c.data.len()).sum();
        if total > MAX_APPEND_BYTES {
            return Err(Error::Invalid(format!(
                "chunks: {total} bytes in one call; the limit is {MAX_APPEND_BYTES}"
            ))
            .into());
        }
        let chunks = r
            .chunks
            .into_iter()
            .map(|c| {
                let stream = match pb::LogStream::try_from(c.stream) {
                    Ok(pb::LogStream::Stdout) => 1,
                    Ok(pb::LogStream::Stderr) => 2,
                    _ => {
                        return Err(Error::Invalid(format!(
                            "chunks.stream: must be stdout or stderr, got {}",
                            c.stream
                        )))
                    }
                };
                let seq = i64::try_from(c.seq)
                    .map_err(|_| Error::Invalid("chunks.seq: out of range".into()))?;
                Ok(ChunkIn {
                    seq,
                    stream,
                    time: c
                        .time
                        .as_ref()
                        .and_then(convert::from_ts)
                        .unwrap_or_else(chrono::Utc::now),
                    data: c.data,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let t0 = std::time::Instant::now();
        self.store
            .append_logs_as(attempt_id, Some(&principal), &chunks, self.log_cap_bytes)
            .await?;
        tracing::debug!(%attempt_id, chunks = chunks.len(), bytes = total,
            store_ms = t0.elapsed().as_secs_f64() * 1e3, "log chunks stored");
        crate::metrics::log_bytes(total as u64);
        Ok(Response::new(pb::AppendLogsResponse {}))
    }

    async fn finish_attempt(
        &self,
        req: Request<pb::FinishAttemptRequest>,
    ) -> Result<Response<pb::FinishAttemptResponse>, Status> {
        use pb::finish_attempt_request::Result as R;
        let principal = crate::auth::Principal::of(&req);
        let r = req.into_inner();
        let attempt_id = parse_id("attempt_id", &r.attempt_id)?;
        let raw = match r.result {
            Some(R::Exited(pb::ExitStatus {
                code: Some(code), ..
            })) => RawResult::Exited(code),
            Some(R::Exited(pb::ExitStatus {
                signal: Some(sig), ..
            })) => RawResult::Signaled(sig),
            Some(R::Exited(_)) => {
                return Err(Status::invalid_argument(
                    "result.exited: set code or signal",
                ))
            }
            Some(R::SpawnError(e)) => {
                RawResult::SpawnError(sanitize_reported(&e, MAX_RESULT_TEXT_BYTES))
            }
            Some(R::TimedOut(_)) => RawResult::TimedOut,
            Some(R::Cancelled(_)) => RawResult::Cancelled,
            Some(R::Released(_)) => RawResult::Released,
            Some(R::OutputError(e)) => {
                RawResult::OutputError(sanitize_reported(&e, MAX_RESULT_TEXT_BYTES))
            }
            None => return Err(Status::invalid_argument("result: required")),
        };
        // The worker's cgroup saw the kernel kill a process for the memory limit: that
        // (not the bare exit code or signal) is why the attempt failed.
        let raw = match raw {
            RawResult::Exited(code) if code != 0 && r.oom_limit_bytes > 0 => {
                RawResult::OutOfMemory {
                    limit_bytes: r.oom_limit_bytes,
                }
            }
            RawResult::Signaled(_) if r.oom_limit_bytes > 0 => RawResult::OutOfMemory {
                limit_bytes: r.oom_limit_bytes,
            },
            other => other,
        };
        let tail = &r.output_tail[r.output_tail.len().saturating_sub(MAX_OUTPUT_TAIL_BYTES)..];
        let count = i64::try_from(r.log_chunk_count)
            .map_err(|_| Status::invalid_argument("log_chunk_count: out of range"))?;
        let cpu_ms = convert::millis_i64("cpu_time", &r.cpu_time)?;
        let req = EndRequest {
            raw,
            output_tail: String::from_utf8_lossy(tail).into_owned(),
            log_chunk_count: Some(count),
            only_if_expired: false,
            usage: (r.peak_rss_bytes > 0 || cpu_ms > 0)
                .then_some((r.peak_rss_bytes as i64, cpu_ms)),
            return_slot: r.return_slot,
        };
        let ended = self
            .store
            .end_attempt_as(attempt_id, Some(&principal), &req)
            .await?;
        crate::metrics::ended(&ended);
        tracing::info!(job_id = %ended.job_id, %attempt_id, attempt_state = %ended.attempt_state,
            job_state = %ended.job_state, reason = %ended.reason, "attempt finished");
        // A slot of the worker is free now (running attempts bound what it can lease),
        // and the job may be pending again. Asked to, the slot was claimed for with the
        // result or goes back into the session's credit here, so the worker sends no
        // Credit for it.
        let slot_returned = r.return_slot
            && (ended.slot_returned
                || ended
                    .worker_id
                    .as_deref()
                    .is_some_and(|w| self.dispatcher.return_slot(w)));
        self.dispatcher.wake();
        Ok(Response::new(pb::FinishAttemptResponse {
            state: convert::attempt_state(ended.attempt_state) as i32,
            reason: ended.reason,
            slot_returned,
        }))
    }

    async fn upload_artifact(
        &self,
        req: Request<Streaming<pb::UploadArtifactRequest>>,
    ) -> Result<Response<pb::UploadArtifactResponse>, Status> {
        use pb::upload_artifact_request::Part;
        let principal = crate::auth::Principal::of(&req);
        let mut parts = req.into_inner();
        let Some(pb::UploadArtifactRequest {
            part: Some(Part::Header(h)),
        }) = parts.message().await?
        else {
            return Err(Status::invalid_argument(
                "upload: the first message must be the header",
            ));
        };
        let attempt_id = parse_id("header.attempt_id", &h.attempt_id)?;
        check_relative_path("header.name", &h.name).map_err(Error::from)?;
        if h.size > self.max_artifact_bytes {
            return Err(Error::Invalid(format!(
                "header.size: {} bytes is larger than max_artifact_bytes ({})",
                h.size, self.max_artifact_bytes
            ))
            .into());
        }
        // Fenced: only the attempt holding the lease may add files.
        let (job_id, number) = self
            .store
            .running_attempt_job_as(attempt_id, Some(&principal))
            .await?;
        let key = artifacts::key(job_id, attempt_id, &h.name);
        let body = futures::stream::unfold(parts, |mut parts| async move {
            match parts.message().await {
                Ok(Some(pb::UploadArtifactRequest {
                    part: Some(Part::Data(d)),
                })) => Some((Ok(d), parts)),
                Ok(Some(_)) => Some((
                    Err(Error::Invalid(
                        "upload: only data may follow the header".into(),
                    )),
                    parts,
                )),
                Ok(None) => None,
                Err(e) => Some((
                    Err(Error::Aborted(format!("upload interrupted: {e}"))),
                    parts,
                )),
            }
        })
        .boxed();
        let stored = self.blobs.put(&key, body, self.max_artifact_bytes).await?;
        if stored.size != h.size || stored.sha256 != h.sha256.to_ascii_lowercase() {
            let _ = self.blobs.delete(&key).await;
            return Err(Error::Invalid(format!(
                "{}: received {} bytes with sha256 {}, but the header said {} bytes with {}",
                h.name, stored.size, stored.sha256, h.size, h.sha256
            ))
            .into());
        }
        let row = ArtifactRow {
            attempt_id,
            job_id,
            attempt_number: number,
            name: h.name.clone(),
            size: stored.size as i64,
            sha256: stored.sha256,
            created_at: chrono::Utc::now(),
        };
        if let Err(e) = self.store.record_artifact_as(&row, Some(&principal)).await {
            let _ = self.blobs.delete(&key).await;
            return Err(e.into());
        }
        tracing::info!(%job_id, %attempt_id, name = %h.name, size = row.size, "artifact stored");
        Ok(Response::new(pb::UploadArtifactResponse {}))
    }
}
