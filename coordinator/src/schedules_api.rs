//! `drover.v1.ScheduleService`: job specs fired on a cron schedule.

use crate::audit::Audit;
use crate::config::Config;
use crate::convert::{self, ts};
use crate::dispatch::Dispatcher;
use crate::error::Error;
use crate::jobs_api::{flow_of, keys_from_pb, spec_from_pb};
use crate::store::schedules::{RunRow, ScheduleRow, StoredSpec};
use crate::store::Store;
use drover_core::schedule::{
    check_schedule_name, CatchUp, CronSchedule, Overlap, PARAM_SCHEDULED_AT, PARAM_SCHEDULED_DATE,
};
use drover_proto::v1 as pb;
use drover_proto::v1::schedule_service_server::ScheduleService;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// At most this many schedules are listed.
pub const MAX_LIST: i64 = 1000;
/// Runs shown by GetSchedule.
pub const SHOWN_RUNS: i64 = 20;
/// Fire times shown by GetSchedule.
pub const SHOWN_NEXT: usize = 5;

pub struct SchedulesApi {
    pub store: Store,
    pub dispatcher: Arc<Dispatcher>,
    pub config: Arc<Config>,
}

pub fn schedule_to_pb(s: &ScheduleRow) -> pb::Schedule {
    let mut spec = s.spec.to_job_spec();
    spec.idempotency_key = None;
    let flow = &s.spec.flow;
    pb::Schedule {
        name: s.name.clone(),
        cron: s.cron.clone(),
        timezone: s.timezone.clone(),
        spec: Some(pb::JobSpec {
            argv: spec.argv,
            env: spec.env.into_iter().collect(),
            queue: spec.queue,
            labels: spec.labels,
            params: spec.params.into_iter().collect(),
            timeout: drover_proto::durations::nonzero_millis(spec.timeout_ms.max(0) as u64),
            retry: Some(convert::policy_to_pb(&s.policy)),
            idempotency_key: String::new(),
            outputs: spec.outputs,
            concurrency_keys: flow.keys.iter().map(|(k, _)| k.clone()).collect(),
            // One limit field for all keys: the first key's (each key's own is in the
            // key's row; all share the submitted limit unless a pattern gave another).
            concurrency_limit: flow.keys.first().map_or(0, |(_, l)| *l),
            priority: flow.priority,
            after: Vec::new(),
            memory_limit_bytes: spec.limits.memory_bytes.unwrap_or(0),
            cpu_millis: spec.limits.cpu_millis.unwrap_or(0),
            pids_limit: spec.limits.pids.unwrap_or(0),
            secret_env: spec.secret_env.into_iter().collect(),
        }),
        catch_up: s.catch_up.as_str().into(),
        overlap: s.overlap.as_str().into(),
        paused: s.paused,
        next_fire_at: s.next_fire_at.map(ts),
        created_at: Some(ts(s.created_at)),
        dropped_ticks: s.dropped_ticks.max(0) as u64,
    }
}

fn run_to_pb(r: &RunRow) -> pb::ScheduleRun {
    pb::ScheduleRun {
        fire_time: Some(ts(r.fire_time)),
        status: r.status.clone(),
        job_id: r.job_id.map(|u| u.to_string()).unwrap_or_default(),
        job_state: r
            .job_state
            .map(|s| convert::job_state(s) as i32)
            .unwrap_or(0),
        manual: r.manual,
        reason: r.reason.clone(),
    }
}

/// Validates a submitted schedule; errors name the field (`schedule.cron`, ...).
pub fn schedule_from_pb(
    s: Option<pb::Schedule>,
    config: &Config,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<ScheduleRow, Error> {
    let s = s.ok_or_else(|| Error::Invalid("schedule: required".into()))?;
    let field = |e: drover_core::ValidationError| {
        Error::Invalid(format!("schedule.{}: {}", e.field, e.message))
    };
    check_schedule_name(&s.name).map_err(field)?;
    let cron = CronSchedule::parse(s.cron.trim(), s.timezone.trim()).map_err(field)?;
    let catch_up: CatchUp = match s.catch_up.as_str() {
        "" => CatchUp::Skip,
        v => v.parse().map_err(field)?,
    };
    let overlap: Overlap = match s.overlap.as_str() {
        "" => Overlap::Allow,
        v => v.parse().map_err(field)?,
    };
    let mut pspec = s
        .spec
        .ok_or_else(|| Error::Invalid("schedule.spec: required".into()))?;
    // A tick's job cannot wait for jobs that exist when the schedule is made.
    if !pspec.after.is_empty() {
        return Err(Error::Invalid(
            "schedule.spec.after: not supported on schedules".into(),
        ));
    }
    // Refusals name the field inside the schedule, whichever form the error took.
    let in_spec = |e: Error| match e {
        Error::Invalid(m) => Error::Invalid(format!("schedule.spec.{m}")),
        Error::Validation(v) => Error::Invalid(format!("schedule.spec.{}: {}", v.field, v.message)),
        e => e,
    };
    let keys = keys_from_pb(Some(&pspec), config).map_err(in_spec)?;
    let given_priority = pspec.priority;
    if !pspec.idempotency_key.is_empty() {
        return Err(Error::Invalid(
            "schedule.spec.idempotency_key: must be empty (each tick makes a new job)".into(),
        ));
    }
    // The tick params are filled at each tick; validate argv with sample values so
    // {scheduled_at} and {scheduled_date} are known placeholders, then drop them.
    for (k, v) in cron.tick_params(now) {
        pspec.params.entry(k).or_insert(v);
    }
    let (mut spec, policy) = spec_from_pb(Some(pspec), config)
        .map_err(|e| Error::Invalid(format!("schedule.spec.{e}")))?;
    spec.params.remove(PARAM_SCHEDULED_AT);
    spec.params.remove(PARAM_SCHEDULED_DATE);
    let flow = flow_of(keys, given_priority, &spec.queue, config).map_err(in_spec)?;
    Ok(ScheduleRow {
        name: s.name,
        cron: s.cron.trim().to_string(),
        timezone: if s.timezone.trim().is_empty() {
            "UTC".into()
        } else {
            s.timezone.trim().to_string()
        },
        spec: StoredSpec::new(&spec, flow),
        policy,
        catch_up,
        overlap,
        paused: s.paused,
        next_fire_at: cron.next_after(now),
        dropped_ticks: 0,
        created_at: now,
    })
}

fn name_of(name: &str) -> Result<String, Error> {
    check_schedule_name(name).map_err(Error::from)?;
    Ok(name.to_string())
}

impl SchedulesApi {
    /// Audits the call on schedule `name` and refuses a queue-scoped token whose queues do
    /// not include the schedule's (its jobs go there).
    async fn scoped<T>(
        &self,
        req: &Request<T>,
        method: &'static str,
        name: &str,
    ) -> Result<Audit, Error> {
        let mut audit = Audit::start(&self.store, req, method);
        audit.target(format!("schedule {name}"));
        let s = self
            .store
            .get_schedule(name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("schedule {name:?} not found")))?;
        let principal = audit.principal().clone();
        principal
            .check_queue(&s.spec.queue)
            .map_err(|e| audit.refused(e))?;
        Ok(audit)
    }
}

#[tonic::async_trait]
impl ScheduleService for SchedulesApi {
    async fn create_schedule(
        &self,
        req: Request<pb::CreateScheduleRequest>,
    ) -> Result<Response<pb::CreateScheduleResponse>, Status> {
        let (principal, msg) = (crate::auth::Principal::of(&req), req.get_ref().clone());
        let act = async move {
            let mut audit = Audit::start(
                &self.store,
                &req,
                "/drover.v1.ScheduleService/CreateSchedule",
            );
            let row =
                schedule_from_pb(req.into_inner().schedule, &self.config, chrono::Utc::now())?;
            audit.target(format!("schedule {} (queue {})", row.name, row.spec.queue));
            let principal = audit.principal().clone();
            principal
                .check_queue(&row.spec.queue)
                .map_err(|e| audit.refused(e))?;
            let created = self.store.create_schedule(&row).await?;
            audit.ok();
            tracing::info!(schedule = %created.name, cron = %created.cron,
                timezone = %created.timezone, "schedule created");
            Ok::<_, Status>(pb::CreateScheduleResponse {
                schedule: Some(schedule_to_pb(&created)),
            })
        };
        crate::request_ids::once(
            &self.store,
            &principal,
            "/drover.v1.ScheduleService/CreateSchedule",
            &msg.request_id,
            &msg,
            act,
        )
        .await
        .map(Response::new)
    }

    async fn list_schedules(
        &self,
        req: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        let r = req.into_inner();
        let pager = crate::paging::Pager::new("ListSchedules", &r, &r.page_token);
        let size = crate::paging::page_size("page_size", r.page_size, 1000, 1000)?;
        let after = pager.cursor::<String>()?;
        // At most MAX_LIST schedules: paged by name in memory.
        let rows = self.store.list_schedules(MAX_LIST).await?;
        let (rows, next) =
            crate::paging::page_sorted(rows, |s| s.name.clone(), after.as_ref(), size);
        Ok(Response::new(pb::ListSchedulesResponse {
            schedules: rows.iter().map(schedule_to_pb).collect(),
            next_page_token: pager.next(next.as_ref()),
        }))
    }

    async fn get_schedule(
        &self,
        req: Request<pb::GetScheduleRequest>,
    ) -> Result<Response<pb::GetScheduleResponse>, Status> {
        let name = name_of(&req.into_inner().name)?;
        let s = self
            .store
            .get_schedule(&name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("schedule {name:?} not found")))?;
        let next = if s.paused {
            Vec::new()
        } else {
            let cron = CronSchedule::parse(&s.cron, &s.timezone)
                .map_err(|e| Error::Internal(format!("stored schedule {name}: {e}")))?;
            match s.next_fire_at {
                Some(first) => {
                    let mut v = vec![first];
                    v.extend(cron.upcoming(first, SHOWN_NEXT - 1));
                    v
                }
                None => Vec::new(),
            }
        };
        let runs = self.store.schedule_runs(&name, SHOWN_RUNS).await?;
        Ok(Response::new(pb::GetScheduleResponse {
            schedule: Some(schedule_to_pb(&s)),
            next_fire_times: next.into_iter().map(ts).collect(),
            runs: runs.iter().map(run_to_pb).collect(),
        }))
    }

    async fn pause_schedule(
        &self,
        req: Request<pb::PauseScheduleRequest>,
    ) -> Result<Response<pb::PauseScheduleResponse>, Status> {
        let name = name_of(&req.get_ref().name)?;
        let mut audit = self
            .scoped(&req, "/drover.v1.ScheduleService/PauseSchedule", &name)
            .await?;
        let s = self.store.set_schedule_paused(&name, true).await?;
        audit.ok();
        tracing::info!(schedule = %name, "schedule paused");
        Ok(Response::new(pb::PauseScheduleResponse {
            schedule: Some(schedule_to_pb(&s)),
        }))
    }

    async fn resume_schedule(
        &self,
        req: Request<pb::ResumeScheduleRequest>,
    ) -> Result<Response<pb::ResumeScheduleResponse>, Status> {
        let name = name_of(&req.get_ref().name)?;
        let mut audit = self
            .scoped(&req, "/drover.v1.ScheduleService/ResumeSchedule", &name)
            .await?;
        let s = self.store.set_schedule_paused(&name, false).await?;
        audit.ok();
        tracing::info!(schedule = %name, "schedule resumed");
        Ok(Response::new(pb::ResumeScheduleResponse {
            schedule: Some(schedule_to_pb(&s)),
        }))
    }

    async fn delete_schedule(
        &self,
        req: Request<pb::DeleteScheduleRequest>,
    ) -> Result<Response<pb::DeleteScheduleResponse>, Status> {
        let name = name_of(&req.get_ref().name)?;
        let mut audit = self
            .scoped(&req, "/drover.v1.ScheduleService/DeleteSchedule", &name)
            .await?;
        self.store.delete_schedule(&name).await?;
        audit.ok();
        tracing::info!(schedule = %name, "schedule deleted");
        Ok(Response::new(pb::DeleteScheduleResponse {}))
    }

    async fn trigger_schedule(
        &self,
        req: Request<pb::TriggerScheduleRequest>,
    ) -> Result<Response<pb::TriggerScheduleResponse>, Status> {
        let (principal, msg) = (crate::auth::Principal::of(&req), req.get_ref().clone());
        let act = async move {
            let name = name_of(&req.get_ref().name)?;
            let mut audit = self
                .scoped(&req, "/drover.v1.ScheduleService/TriggerSchedule", &name)
                .await?;
            let job = self.store.trigger_schedule(&name).await?;
            audit.ok();
            crate::metrics::job_submitted(&job.spec.queue);
            tracing::info!(schedule = %name, job_id = %job.id, "schedule triggered");
            self.dispatcher.wake();
            Ok::<_, Status>(pb::TriggerScheduleResponse {
                job: Some(convert::job_to_pb(&job)),
            })
        };
        crate::request_ids::once(
            &self.store,
            &principal,
            "/drover.v1.ScheduleService/TriggerSchedule",
            &msg.request_id,
            &msg,
            act,
        )
        .await
        .map(Response::new)
    }
}
