//! `drover.v1.JobService`: submitting, inspecting and following jobs.

use crate::artifacts::BlobStore;
use crate::audit::Audit;
use crate::config::Config;
use crate::convert::{self, parse_id};
use crate::dispatch::Dispatcher;
use crate::error::Error;
use crate::store::{JobFilter, Store};
use chrono::{DateTime, Utc};
use drover_core::validate::{check_name, validate_spec};
use drover_core::{JobSpec, JobState, RetryPolicy};
use drover_proto::v1 as pb;
use drover_proto::v1::job_service_server::JobService;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use uuid::Uuid;

pub const DEFAULT_QUEUE: &str = "default";
/// Concurrency keys with this prefix carry a queue's max_running.
pub const QUEUE_KEY_PREFIX: &str = "queue:";
const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 1000;
/// A ListJobs page stops before its jobs' variable-size fields pass this many bytes (well
/// under the 4 MiB message limit); the client follows next_page_token for the rest.
pub const MAX_PAGE_BYTES: i64 = 2 * 1024 * 1024;

pub struct JobsApi {
    pub store: Store,
    pub dispatcher: Arc<Dispatcher>,
    pub config: Arc<Config>,
    pub blobs: Arc<dyn BlobStore>,
}

/// Turns a submitted protobuf spec into a validated domain spec and policy: the server's
/// defaults, then the queue's, then what the job sets.
pub fn spec_from_pb(
    spec: Option<pb::JobSpec>,
    config: &Config,
) -> Result<(JobSpec, RetryPolicy), Error> {
    let spec = spec.ok_or_else(|| Error::Invalid("spec: required".into()))?;
    let queue = if spec.queue.is_empty() {
        DEFAULT_QUEUE.to_string()
    } else {
        spec.queue
    };
    let (base, queue_timeout) = config.queue_defaults(&queue);
    let asked = drover_core::ResourceLimits {
        memory_bytes: (spec.memory_limit_bytes > 0).then_some(spec.memory_limit_bytes),
        cpu_millis: (spec.cpu_millis > 0).then_some(spec.cpu_millis),
        pids: (spec.pids_limit > 0).then_some(spec.pids_limit),
    }
    .or(&config.queue_limits(&queue));
    let policy = match &spec.retry {
        Some(r) => convert::overrides_from_pb(r)?.apply(&base),
        None => base,
    };
    let timeout_ms = convert::millis_i64("timeout", &spec.timeout)?;
    let key = spec.idempotency_key.trim().to_string();
    let out = JobSpec {
        argv: spec.argv,
        env: spec.env.into_iter().collect(),
        queue,
        labels: spec.labels,
        params: spec.params.into_iter().collect(),
        timeout_ms: if timeout_ms == 0 {
            queue_timeout
        } else {
            timeout_ms
        },
        idempotency_key: (!key.is_empty()).then_some(key),
        outputs: spec.outputs,
        limits: asked,
        secret_env: spec.secret_env.into_iter().collect(),
    };
    validate_spec(&out)?;
    // Compiles the output patterns once, for every attempt of this job to use.
    crate::patterns::admit(&policy)?;
    Ok((out, policy))
}

/// Fills `waiting` of the pending jobs in `jobs` (one query for the page).
async fn with_waiting(store: &Store, mut jobs: Vec<pb::Job>) -> Result<Vec<pb::Job>, Error> {
    let ids: Vec<Uuid> = jobs
        .iter()
        .filter(|j| j.state == pb::JobState::Pending as i32)
        .filter_map(|j| Uuid::parse_str(&j.id).ok())
        .collect();
    if ids.is_empty() {
        return Ok(jobs);
    }
    let reasons = store.waiting_reasons(&ids).await?;
    for j in &mut jobs {
        if let Some(r) = Uuid::parse_str(&j.id).ok().and_then(|id| reasons.get(&id)) {
            j.waiting = r.clone();
        }
    }
    Ok(jobs)
}

/// The jobs a submitted job runs after (`after[i]` names a bad one).
pub fn after_from_pb(spec: Option<&pb::JobSpec>) -> Result<Vec<Uuid>, Error> {
    let Some(spec) = spec else {
        return Ok(Vec::new());
    };
    let max = crate::store::flow::MAX_AFTER;
    if spec.after.len() > max {
        return Err(Error::Invalid(format!(
            "after: {} jobs; the limit is {max}",
            spec.after.len()
        )));
    }
    spec.after
        .iter()
        .enumerate()
        .map(|(i, s)| parse_id(&format!("after[{i}]"), s))
        .collect()
}

/// A submitted job's concurrency keys with the limit each gets (submit, else config).
/// A job's flow control from its validated keys and given priority (0: the queue's
/// default), with the rate limits and priority aging the configuration gives. Submits and
/// schedules share it, so a scheduled job is limited exactly as a submitted one.
pub fn flow_of(
    keys: Vec<(String, u32)>,
    given_priority: i32,
    queue: &str,
    config: &Config,
) -> Result<crate::store::flow::Flow, Error> {
    drover_core::flow::check_priority("priority", given_priority).map_err(Error::from)?;
    let priority = if given_priority != 0 {
        given_priority
    } else {
        config.queues.get(queue).map(|q| q.priority).unwrap_or(0)
    };
    let rate_patterns = config.rate_patterns().map_err(Error::Internal)?;
    let rates = keys
        .iter()
        .map(|(k, _)| drover_core::flow::rate_for(k, &rate_patterns).map(|r| (r.per_sec, r.burst)))
        .collect();
    Ok(crate::store::flow::Flow {
        keys,
        rates,
        priority,
        priority_shift_ms: drover_core::flow::priority_shift_ms(
            priority,
            config.priority_aging.as_millis() as u64,
        ),
        after: Vec::new(),
    })
}

pub fn keys_from_pb(
    spec: Option<&pb::JobSpec>,
    config: &Config,
) -> Result<Vec<(String, u32)>, Error> {
    let Some(spec) = spec else {
        return Ok(Vec::new());
    };
    let keys = drover_core::flow::check_keys(&spec.concurrency_keys)?;
    drover_core::flow::check_limit("concurrency_limit", spec.concurrency_limit)?;
    let patterns: Vec<(String, u32)> = config
        .concurrency_limits
        .iter()
        .map(|(p, l)| (p.clone(), *l))
        .collect();
    if let Some(i) = keys.iter().position(|k| k.starts_with(QUEUE_KEY_PREFIX)) {
        return Err(Error::Invalid(format!(
            "concurrency_keys[{i}]: the prefix {QUEUE_KEY_PREFIX:?} is reserved for \
             queues.<name>.max_running"
        )));
    }
    let rates = config.rate_patterns().map_err(Error::Internal)?;
    let mut out: Vec<(String, u32)> = keys
        .into_iter()
        .map(|k| {
            // A key with a rate limit and no concurrency limit is limited by rate only.
            let l = if spec.concurrency_limit == 0
                && drover_core::flow::pattern_limit(&k, &patterns).is_none()
                && drover_core::flow::rate_for(&k, &rates).is_some()
            {
                drover_core::flow::MAX_CONCURRENCY_LIMIT
            } else {
                drover_core::flow::limit_for(&k, spec.concurrency_limit, &patterns)
            };
            (k, l)
        })
        .collect();
    let queue = if spec.queue.is_empty() {
        DEFAULT_QUEUE
    } else {
        spec.queue.as_str()
    };
    if let Some(max) = config.queues.get(queue).and_then(|q| q.max_running) {
        out.push((format!("{QUEUE_KEY_PREFIX}{queue}"), max));
    }
    Ok(out)
}

fn page_token(j: &crate::store::JobRow) -> String {
    format!("{}_{}", j.created_at.timestamp_micros(), j.id)
}

fn parse_page_token(t: &str) -> Result<(DateTime<Utc>, Uuid), Error> {
    let bad = || Error::Invalid("page_token: not a token from a previous ListJobs".into());
    let (micros, id) = t.split_once('_').ok_or_else(bad)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    let ts = DateTime::from_timestamp_micros(micros).ok_or_else(bad)?;
    Ok((ts, Uuid::parse_str(id).map_err(|_| bad())?))
}

type ArtifactStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::GetArtifactResponse, Status>> + Send>>;

type LogStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::StreamLogsResponse, Status>> + Send>>;

impl JobsApi {
    async fn retry_job_act(
        &self,
        req: Request<pb::RetryJobRequest>,
    ) -> Result<pb::RetryJobResponse, Status> {
        let mut audit = Audit::start(&self.store, &req, "/drover.v1.JobService/RetryJob");
        let r = req.into_inner();
        let id = parse_id("id", &r.id)?;
        audit.target(format!("job {id}"));
        self.check_job_queue(&mut audit, id).await?;
        let max = drover_core::validate::MAX_PARAMS_COUNT;
        if r.set_params.len() > max {
            return Err(Error::Invalid(format!(
                "set_params: {} params; the limit is {max}",
                r.set_params.len()
            ))
            .into());
        }
        let job = self
            .store
            .retry_job(id, &r.set_params.into_iter().collect())
            .await?;
        audit.target(format!("job {id} -> {}", job.id));
        audit.ok();
        crate::metrics::job_submitted(&job.spec.queue);
        tracing::info!(job_id = %job.id, retry_of = %id, "job retried manually");
        self.dispatcher.wake();
        Ok(pb::RetryJobResponse {
            job: Some(convert::job_to_pb(&job)),
        })
    }

    async fn retry_jobs_act(
        &self,
        req: Request<pb::RetryJobsRequest>,
    ) -> Result<pb::RetryJobsResponse, Status> {
        let mut audit = Audit::start(&self.store, &req, "/drover.v1.JobService/RetryJobs");
        let r = req.into_inner();
        audit.target(format!("queue {:?}", r.queue));
        if !audit.principal().queue_scope().is_empty() && r.queue.is_empty() {
            let e = Error::PermissionDenied(format!(
                "queue: token {:?} may act only on queues {}; name one",
                audit.principal().name(),
                audit.principal().queue_scope().join(", ")
            ));
            return Err(audit.refused(e).into());
        }
        let principal = audit.principal().clone();
        if !r.queue.is_empty() {
            principal
                .check_queue(&r.queue)
                .map_err(|e| audit.refused(e))?;
        }
        let state =
            match pb::JobState::try_from(r.state) {
                Ok(pb::JobState::Unspecified) => JobState::PermanentFailed,
                Ok(s) => match convert::job_state_from(s) {
                    Some(s) if s.is_terminal() => s,
                    _ => return Err(Error::Invalid(
                        "state: must be a finished state (permanent_failed, cancelled, succeeded)"
                            .into(),
                    )
                    .into()),
                },
                Err(_) => {
                    return Err(Error::Invalid(format!("state: unknown value {}", r.state)).into())
                }
            };
        if !r.queue.is_empty() {
            check_name("queue", &r.queue).map_err(Error::from)?;
        }
        let within_ms = convert::millis("finished_within", &r.finished_within)?;
        let limit = match r.limit {
            0 => 100,
            n if n > MAX_PAGE => {
                return Err(Error::Invalid(format!("limit: at most {MAX_PAGE}")).into())
            }
            n => n,
        };
        let within = (within_ms > 0).then(|| Duration::from_millis(within_ms));
        let matched = if r.fingerprint.is_empty() {
            self.store
                .finished_jobs(
                    state,
                    (!r.queue.is_empty()).then_some(r.queue.as_str()),
                    within,
                    i64::from(limit),
                )
                .await?
        } else {
            // The jobs of one failure group that were not retried yet.
            crate::alerts_api::check_fingerprint("fingerprint", &r.fingerprint)?;
            if within.is_some() {
                return Err(Error::Invalid(
                    "finished_within: not supported together with fingerprint".into(),
                )
                .into());
            }
            self.store
                .jobs_with_fingerprint(
                    &r.fingerprint,
                    (!r.queue.is_empty()).then_some(r.queue.as_str()),
                    Some(state),
                    true,
                    None,
                    i64::from(limit),
                )
                .await?
        };
        let mut created = Vec::new();
        if !r.dry_run {
            for j in &matched {
                let job = self.store.retry_job(j.id, &Default::default()).await?;
                crate::metrics::job_submitted(&job.spec.queue);
                created.push(job);
            }
            if !created.is_empty() {
                tracing::info!(count = created.len(), "jobs retried in bulk");
                self.dispatcher.wake();
            }
        }
        audit.target(format!(
            "queue {:?}: {} matched, {} created",
            r.queue,
            matched.len(),
            created.len()
        ));
        audit.ok();
        Ok(pb::RetryJobsResponse {
            matched: matched.iter().map(convert::job_to_pb).collect(),
            created: created.iter().map(convert::job_to_pb).collect(),
        })
    }

    async fn cancel_job_act(
        &self,
        req: Request<pb::CancelJobRequest>,
    ) -> Result<pb::CancelJobResponse, Status> {
        let mut audit = Audit::start(&self.store, &req, "/drover.v1.JobService/CancelJob");
        let id = parse_id("id", &req.into_inner().id)?;
        audit.target(format!("job {id}"));
        self.check_job_queue(&mut audit, id).await?;
        let (job, stop) = self.store.cancel_job(id).await?;
        audit.ok();
        if let Some((attempt_id, worker_id)) = stop {
            tracing::info!(job_id = %id, %attempt_id, %worker_id, "cancel requested");
            // Whichever coordinator holds the worker's session hears the NOTIFY sent by
            // cancel_job; heartbeats carry the order too, should that be missed.
        } else {
            tracing::info!(job_id = %id, "pending job cancelled");
        }
        Ok(pb::CancelJobResponse {
            job: Some(convert::job_to_pb(&job)),
        })
    }

    /// Validates a submitted spec and resolves everything the store needs: defaults
    /// (server, then queue), concurrency keys with their limits and rates, priority and
    /// dependencies. The caller checks the queue against the principal's scope.
    pub(crate) fn prepare_submit(
        &self,
        pspec: Option<pb::JobSpec>,
    ) -> Result<(JobSpec, RetryPolicy, crate::store::flow::Flow), Error> {
        let after = after_from_pb(pspec.as_ref())?;
        let keys = keys_from_pb(pspec.as_ref(), &self.config)?;
        let given_priority = pspec.as_ref().map(|s| s.priority).unwrap_or(0);
        drover_core::flow::check_priority("priority", given_priority)?;
        let (spec, policy) = spec_from_pb(pspec, &self.config)?;
        let mut flow = flow_of(keys, given_priority, &spec.queue, &self.config)?;
        flow.after = after;
        Ok((spec, policy, flow))
    }

    /// Refuses an operator limited to some queues acting on a job of another queue.
    async fn check_job_queue(&self, audit: &mut Audit, id: Uuid) -> Result<(), Error> {
        if audit.principal().queue_scope().is_empty() {
            return Ok(());
        }
        let job = self
            .store
            .get_job(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("job {id} not found")))?;
        let principal = audit.principal().clone();
        principal
            .check_queue(&job.spec.queue)
            .map_err(|e| audit.refused(e))
    }
}

#[tonic::async_trait]
impl JobService for JobsApi {
    async fn submit_job(
        &self,
        req: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        // Continue the caller's trace if it sent one (W3C traceparent metadata).
        let span = tracing::info_span!("submit_job", job_id = tracing::field::Empty);
        if let Some(tp) = req
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
        {
            drover_telemetry::set_parent(&span, tp);
        }
        let trace_parent = span.in_scope(drover_telemetry::traceparent);
        let mut audit = Audit::start(&self.store, &req, "/drover.v1.JobService/SubmitJob");
        let (spec, policy, flow) = self.prepare_submit(req.into_inner().spec)?;
        audit.target(format!("queue {}", spec.queue));
        let principal = audit.principal().clone();
        principal
            .check_queue(&spec.queue)
            .map_err(|e| audit.refused(e))?;
        if !flow.keys.is_empty() {
            self.store.keyed_job_submitted();
        }
        let (job, created) = self
            .store
            .submit_grouped(crate::store::batch::BatchItem {
                spec,
                policy,
                flow,
                trace_parent,
            })
            .instrument(span.clone())
            .await?;
        span.record("job_id", tracing::field::display(job.id));
        audit.target(format!("job {}", job.id));
        audit.ok();
        if created {
            crate::metrics::job_submitted(&job.spec.queue);
            tracing::info!(job_id = %job.id, queue = %job.spec.queue, "job submitted");
            self.dispatcher.wake();
        }
        Ok(Response::new(pb::SubmitJobResponse {
            job: Some(convert::job_to_pb(&job)),
            created,
        }))
    }

    async fn get_job(
        &self,
        req: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        let id = parse_id("id", &req.into_inner().id)?;
        let d = self
            .store
            .job_detail(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("job {id} not found")))?;
        // Why a pending job waits is read only for one: its statement costs more to plan
        // than the other four together take.
        let job = with_waiting(&self.store, vec![convert::job_to_pb(&d.job)])
            .await?
            .pop();
        Ok(Response::new(pb::GetJobResponse {
            job,
            attempts: d.attempts.iter().map(convert::attempt_to_pb).collect(),
            retried_by: d.retried_by.iter().map(Uuid::to_string).collect(),
            waiting_for: d.waiting_for.iter().map(Uuid::to_string).collect(),
        }))
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let r = req.into_inner();
        let pager = crate::paging::Pager::new("ListJobs", &r, &r.page_token);
        let size = match r.page_size {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => {
                return Err(Error::Invalid(format!("page_size: at most {MAX_PAGE}")).into())
            }
            n => n,
        };
        let state = pb::JobState::try_from(r.state)
            .map_err(|_| Error::Invalid(format!("state: unknown value {}", r.state)))?;
        if !r.queue.is_empty() {
            check_name("queue", &r.queue).map_err(Error::from)?;
        }
        if !r.label.is_empty() {
            check_name("label", &r.label).map_err(Error::from)?;
        }
        let param = if r.param.is_empty() {
            None
        } else {
            Some(
                drover_core::validate::parse_param_filter("param", &r.param)
                    .map_err(Error::from)?,
            )
        };
        let time = |field: &str, t: &Option<prost_types::Timestamp>| {
            t.as_ref()
                .map(|t| {
                    DateTime::<Utc>::from_timestamp(t.seconds, t.nanos.max(0) as u32)
                        .ok_or_else(|| Error::Invalid(format!("{field}: out of range")))
                })
                .transpose()
        };
        let filter = JobFilter {
            state: convert::job_state_from(state),
            queue: (!r.queue.is_empty()).then_some(r.queue),
            label: (!r.label.is_empty()).then_some(r.label),
            param,
            created_after: time("created_after", &r.created_after)?,
            created_before: time("created_before", &r.created_before)?,
            after: pager
                .cursor::<String>()?
                .map(|c| parse_page_token(&c))
                .transpose()?,
            limit: i64::from(size) + 1,
            max_bytes: MAX_PAGE_BYTES,
        };
        let (mut jobs, cut) = self.store.list_jobs(&filter).await?;
        // One more than asked means more follow; so does a page cut short by its size.
        let next = if jobs.len() > size as usize || cut {
            jobs.truncate(size as usize);
            pager.next(jobs.last().map(page_token).as_ref())
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListJobsResponse {
            jobs: with_waiting(&self.store, jobs.iter().map(convert::job_to_pb).collect()).await?,
            next_page_token: next,
        }))
    }

    async fn retry_job(
        &self,
        req: Request<pb::RetryJobRequest>,
    ) -> Result<Response<pb::RetryJobResponse>, Status> {
        let (principal, msg) = (crate::auth::Principal::of(&req), req.get_ref().clone());
        let method = "/drover.v1.JobService/RetryJob";
        let act = self.retry_job_act(req);
        crate::request_ids::once(&self.store, &principal, method, &msg.request_id, &msg, act)
            .await
            .map(Response::new)
    }

    async fn retry_jobs(
        &self,
        req: Request<pb::RetryJobsRequest>,
    ) -> Result<Response<pb::RetryJobsResponse>, Status> {
        let (principal, msg) = (crate::auth::Principal::of(&req), req.get_ref().clone());
        let method = "/drover.v1.JobService/RetryJobs";
        // A dry run changes nothing: it is answered afresh each time.
        let id = if msg.dry_run {
            ""
        } else {
            msg.request_id.as_str()
        };
        let act = self.retry_jobs_act(req);
        crate::request_ids::once(&self.store, &principal, method, id, &msg, act)
            .await
            .map(Response::new)
    }

    async fn cancel_job(
        &self,
        req: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let (principal, msg) = (crate::auth::Principal::of(&req), req.get_ref().clone());
        let method = "/drover.v1.JobService/CancelJob";
        let act = self.cancel_job_act(req);
        crate::request_ids::once(&self.store, &principal, method, &msg.request_id, &msg, act)
            .await
            .map(Response::new)
    }

    async fn list_artifacts(
        &self,
        req: Request<pb::ListArtifactsRequest>,
    ) -> Result<Response<pb::ListArtifactsResponse>, Status> {
        let r = req.into_inner();
        let pager = crate::paging::Pager::new("ListArtifacts", &r, &r.page_token);
        let job_id = parse_id("job_id", &r.job_id)?;
        let size = crate::paging::page_size("page_size", r.page_size, MAX_PAGE, MAX_PAGE)?;
        let after = pager.cursor::<String>()?;
        if self.store.get_job(job_id).await?.is_none() {
            return Err(Error::NotFound(format!("job {job_id} not found")).into());
        }
        // A job keeps few artifacts (its declared outputs): paged by name in memory.
        let rows = self.store.list_artifacts(job_id).await?;
        let (rows, next) =
            crate::paging::page_sorted(rows, |a| a.name.clone(), after.as_ref(), size);
        Ok(Response::new(pb::ListArtifactsResponse {
            artifacts: rows.iter().map(convert::artifact_to_pb).collect(),
            next_page_token: pager.next(next.as_ref()),
        }))
    }

    type GetArtifactStream = ArtifactStream;

    async fn get_artifact(
        &self,
        req: Request<pb::GetArtifactRequest>,
    ) -> Result<Response<Self::GetArtifactStream>, Status> {
        use futures::StreamExt;
        let r = req.into_inner();
        let job_id = parse_id("job_id", &r.job_id)?;
        drover_core::validate::check_relative_path("name", &r.name).map_err(Error::from)?;
        let rows = self.store.list_artifacts(job_id).await?;
        let Some(row) = rows.iter().find(|a| a.name == r.name) else {
            let names: Vec<&str> = rows.iter().map(|a| a.name.as_str()).collect();
            return Err(Error::NotFound(format!(
                "name: job {job_id} has no artifact {:?} (it has: {})",
                r.name,
                if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                }
            ))
            .into());
        };
        let blob = self
            .blobs
            .get(&crate::artifacts::key(job_id, row.attempt_id, &row.name))
            .await?;
        let mut first = Some(convert::artifact_to_pb(row));
        let head = futures::stream::once(async { Ok(Vec::new()) });
        let stream = head.chain(blob).map(move |chunk| match chunk {
            Ok(data) => Ok(pb::GetArtifactResponse {
                artifact: first.take(),
                data,
            }),
            Err(e) => Err(Status::from(e)),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn submit_jobs(
        &self,
        req: Request<pb::SubmitJobsRequest>,
    ) -> Result<Response<pb::SubmitJobsResponse>, Status> {
        self.submit_jobs_call(req).await
    }

    type WatchJobsStream = crate::watch_api::WatchStream;

    async fn watch_jobs(
        &self,
        req: Request<pb::WatchJobsRequest>,
    ) -> Result<Response<Self::WatchJobsStream>, Status> {
        self.watch_jobs_call(req).await
    }

    async fn wait_job(
        &self,
        req: Request<pb::WaitJobRequest>,
    ) -> Result<Response<pb::WaitJobResponse>, Status> {
        self.wait_job_call(req).await
    }

    type StreamLogsStream = LogStream;

    async fn stream_logs(
        &self,
        req: Request<pb::StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        let client = req.remote_addr().map(|a| a.ip());
        let r = req.into_inner();
        let job_id = parse_id("job_id", &r.job_id)?;
        let job = self
            .store
            .get_job(job_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("job {job_id} not found")))?;
        if r.attempt > 0 && r.attempt as i32 > job.attempt_count {
            return Err(Error::NotFound(format!(
                "attempt: job {job_id} has {} attempt(s), not {}",
                job.attempt_count, r.attempt
            ))
            .into());
        }
        let watch = self.dispatcher.logs.clone();
        let max = self.config.max_log_streams_per_client;
        let slot = watch.open_stream(client, max).map_err(|open| {
            Status::resource_exhausted(format!(
                "this client ({}) already has {open} log streams open; the limit is {max} \
                 (max_log_streams_per_client): close some first",
                client
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "unknown address".into())
            ))
        })?;
        let (tx, rx) = mpsc::channel(crate::logs::STREAM_BUFFER);
        let store = self.store.clone();
        let cap = self.config.log_cap_bytes;
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) =
                crate::logs::follow(store, &watch, job_id, r.attempt, r.follow, cap, &tx).await
            {
                let _ = tx.send(Err(e.into())).await;
            }
        });
        let stream = futures::StreamExt::map(ReceiverStream::new(rx), |r| {
            r.map(|chunk| pb::StreamLogsResponse { chunk: Some(chunk) })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn page_tokens_round_trip(micros in -62_000_000_000_000_000i64..200_000_000_000_000_000i64, id in any::<u128>()) {
            let id = Uuid::from_u128(id);
            let t = format!("{micros}_{id}");
            if let Some(ts) = DateTime::from_timestamp_micros(micros) {
                prop_assert_eq!(parse_page_token(&t).ok(), Some((ts, id)));
            }
        }

        #[test]
        fn any_other_token_is_a_named_error(t in ".{0,80}") {
            if let Err(e) = parse_page_token(&t) {
                prop_assert!(e.to_string().starts_with("page_token:"));
            }
        }

        #[test]
        fn sql_looking_tokens_are_refused(inj in "[0-9]{1,5}_' (OR|;) 1=1 --.{0,10}") {
            prop_assert!(parse_page_token(&inj).is_err());
        }
    }

    #[test]
    fn submitted_limits_take_queue_defaults() {
        let mut cfg = Config::default();
        cfg.queues.insert(
            "big".into(),
            crate::config::QueueConfig {
                memory: Some("4G".into()),
                pids: Some(512),
                ..Default::default()
            },
        );
        let (spec, _) = spec_from_pb(
            Some(pb::JobSpec {
                argv: vec!["true".into()],
                queue: "big".into(),
                memory_limit_bytes: 1 << 30,
                cpu_millis: 2000,
                ..Default::default()
            }),
            &cfg,
        )
        .unwrap();
        assert_eq!(
            spec.limits.memory_bytes,
            Some(1 << 30),
            "the job's own wins"
        );
        assert_eq!(spec.limits.cpu_millis, Some(2000));
        assert_eq!(spec.limits.pids, Some(512), "the queue's default fills in");
    }
}
