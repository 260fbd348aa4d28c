//! JobService's batch and wait calls: SubmitJobs, WatchJobs and WaitJob.

use crate::audit::Audit;
use crate::auth::Principal;
use crate::convert::{self, parse_id};
use crate::error::Error;
use crate::job_watch::{Full, JobEvent, WatchSlot};
use crate::jobs_api::JobsApi;
use crate::store::batch::BatchItem;
use crate::store::watch::RESYNC_LIMIT;
use crate::store::JobRow;
use chrono::Utc;
use drover_core::validate::check_name;
use drover_core::JobState;
use drover_proto::v1 as pb;
use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

/// Specs in one SubmitJobs call (its size is also bounded by the 4 MiB message limit).
pub const MAX_BATCH: usize = 1000;
/// Job ids one WatchJobs call may follow.
pub const MAX_WATCH_IDS: usize = 1000;
/// WaitJob's longest wait, and its wait when none is given.
pub const MAX_WAIT_MS: u64 = 3_600_000;
pub const DEFAULT_WAIT_MS: u64 = 60_000;
/// Updates buffered per WatchJobs stream; a slower client makes its watcher lag, and a
/// lagging watcher re-reads what it watches.
const WATCH_BUFFER: usize = 64;
/// A filter watch that lagged re-reads the jobs changed since its last sync, reaching this
/// far further back (a transaction stamps updated_at when it starts, not when it commits).
const RESYNC_MARGIN: chrono::TimeDelta = chrono::TimeDelta::seconds(30);
/// A filter watch re-reads at most this many jobs at once (it reads again after the next
/// lag; the client sees the newest states either way).
const RESYNC_MAX: usize = 100_000;

pub type WatchStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchJobsResponse, Status>> + Send>>;

fn item_error(index: usize, e: Error) -> pb::SubmitJobResult {
    let status = Status::from(e);
    pb::SubmitJobResult {
        index: index as u32,
        job: None,
        created: false,
        code: status.code() as i32,
        error: format!("specs[{index}]: {}", status.message()),
    }
}

/// What a WatchJobs call follows.
#[derive(Debug, Clone)]
enum Watched {
    Ids(Vec<Uuid>),
    Filter {
        queue: String,
        state: Option<JobState>,
        label: String,
    },
}

impl Watched {
    fn from_pb(r: pb::WatchJobsRequest) -> Result<Watched, Error> {
        let state = pb::JobState::try_from(r.state)
            .map_err(|_| Error::Invalid(format!("state: unknown value {}", r.state)))?;
        let state = convert::job_state_from(state);
        let filtered = !r.queue.is_empty() || state.is_some() || !r.label.is_empty();
        if r.ids.is_empty() {
            if !filtered {
                return Err(Error::Invalid(
                    "give job ids, or a filter (queue, state and/or label) to watch".into(),
                ));
            }
            if !r.queue.is_empty() {
                check_name("queue", &r.queue)?;
            }
            if !r.label.is_empty() {
                check_name("label", &r.label)?;
            }
            return Ok(Watched::Filter {
                queue: r.queue,
                state,
                label: r.label,
            });
        }
        if filtered {
            return Err(Error::Invalid(
                "ids: give job ids or a filter (queue, state, label), not both".into(),
            ));
        }
        if r.ids.len() > MAX_WATCH_IDS {
            return Err(Error::Invalid(format!(
                "ids: {} jobs; at most {MAX_WATCH_IDS} per watch",
                r.ids.len()
            )));
        }
        let mut ids = r
            .ids
            .iter()
            .enumerate()
            .map(|(i, s)| parse_id(&format!("ids[{i}]"), s))
            .collect::<Result<Vec<_>, _>>()?;
        ids.sort();
        ids.dedup();
        Ok(Watched::Ids(ids))
    }

    /// Whether a change (as announced) concerns this watch.
    fn concerns(&self, id: Uuid, state: JobState, queue: &str) -> bool {
        match self {
            Watched::Ids(ids) => ids.binary_search(&id).is_ok(),
            Watched::Filter {
                queue: q, state: s, ..
            } => (q.is_empty() || q == queue) && s.is_none_or(|s| s == state),
        }
    }

    /// Whether a job, as read, belongs to this watch (labels are only known once read).
    fn keeps(&self, j: &JobRow) -> bool {
        match self {
            Watched::Ids(_) => true,
            Watched::Filter { label, .. } => label.is_empty() || j.spec.labels.contains(label),
        }
    }
}

impl JobsApi {
    fn open_watch(&self, who: &Principal) -> Result<WatchSlot, Error> {
        let (per, total) = (
            self.config.max_watches_per_principal,
            self.config.max_watches,
        );
        self.dispatcher
            .jobs
            .open(who.name(), per, total)
            .map_err(|full| {
                Error::ResourceExhausted(match full {
                    Full::Principal(n) => format!(
                        "{:?} already has {n} watches (WatchJobs/WaitJob) open; the limit is \
                         {per} (max_watches_per_principal): close some first",
                        who.name()
                    ),
                    Full::Total(n) => format!(
                        "this coordinator already serves {n} watches (WatchJobs/WaitJob); the \
                         limit is {total} (max_watches): try again later"
                    ),
                })
            })
    }

    pub(crate) async fn submit_jobs_call(
        &self,
        req: Request<pb::SubmitJobsRequest>,
    ) -> Result<Response<pb::SubmitJobsResponse>, Status> {
        let span = tracing::info_span!("submit_jobs", jobs = tracing::field::Empty);
        if let Some(tp) = req
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
        {
            drover_telemetry::set_parent(&span, tp);
        }
        let trace_parent = span.in_scope(drover_telemetry::traceparent);
        let mut audit = Audit::start(&self.store, &req, "/drover.v1.JobService/SubmitJobs");
        let specs = req.into_inner().specs;
        audit.target(format!("{} specs", specs.len()));
        if specs.is_empty() {
            return Err(
                Error::Invalid(format!("specs: empty; give 1 to {MAX_BATCH} job specs")).into(),
            );
        }
        if specs.len() > MAX_BATCH {
            return Err(Error::Invalid(format!(
                "specs: {} specs; at most {MAX_BATCH} per call, send the rest in further calls",
                specs.len()
            ))
            .into());
        }
        span.record("jobs", specs.len());
        let principal = audit.principal().clone();
        let mut results: Vec<Option<pb::SubmitJobResult>> = vec![None; specs.len()];
        let mut items = Vec::with_capacity(specs.len());
        let mut positions = Vec::with_capacity(specs.len());
        let mut refused_scope = 0usize;
        for (i, ps) in specs.into_iter().enumerate() {
            let prepared = self
                .prepare_submit(Some(ps))
                .and_then(|(spec, policy, flow)| {
                    principal.check_queue(&spec.queue).inspect_err(|_| {
                        refused_scope += 1;
                    })?;
                    Ok(BatchItem {
                        spec,
                        policy,
                        flow,
                        trace_parent: None,
                    })
                });
            match prepared {
                Ok(item) => {
                    items.push(item);
                    positions.push(i);
                }
                Err(e) => results[i] = Some(item_error(i, e)),
            }
        }
        if items.iter().any(|i| !i.flow.keys.is_empty()) {
            self.store.keyed_job_submitted();
        }
        let stored = if items.is_empty() {
            Vec::new()
        } else {
            use tracing::Instrument;
            self.store
                .submit_batch(&items, trace_parent.as_deref())
                .instrument(span.clone())
                .await?
        };
        let (mut created, mut existing) = (0usize, 0usize);
        for (r, i) in stored.into_iter().zip(positions) {
            results[i] = Some(match r {
                Ok((job, new)) => {
                    if new {
                        created += 1;
                        crate::metrics::job_submitted(&job.spec.queue);
                    } else {
                        existing += 1;
                    }
                    pb::SubmitJobResult {
                        index: i as u32,
                        job: Some(convert::job_to_pb(&job)),
                        created: new,
                        code: 0,
                        error: String::new(),
                    }
                }
                Err(e) => item_error(i, e),
            });
        }
        let results: Vec<pb::SubmitJobResult> = results
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.unwrap_or_else(|| item_error(i, Error::Internal("no result".into()))))
            .collect();
        let failed = results.len() - created - existing;
        audit.target(format!(
            "{} specs: {created} created, {existing} existing, {failed} refused \
             ({refused_scope} out of the token's queues)",
            results.len()
        ));
        audit.ok();
        if created > 0 {
            tracing::info!(created, existing, failed, "jobs submitted in a batch");
            self.dispatcher.wake();
        }
        Ok(Response::new(pb::SubmitJobsResponse { results }))
    }

    pub(crate) async fn watch_jobs_call(
        &self,
        req: Request<pb::WatchJobsRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let principal = Principal::of(&req);
        let watched = Watched::from_pb(req.into_inner())?;
        if let Watched::Filter { queue, .. } = &watched {
            // A token limited to some queues watches one of them, by name.
            if !principal.queue_scope().is_empty() {
                if queue.is_empty() {
                    return Err(Error::PermissionDenied(format!(
                        "queue: token {:?} may watch only queues {}; name one",
                        principal.name(),
                        principal.queue_scope().join(", ")
                    ))
                    .into());
                }
                principal.check_queue(queue)?;
            }
        }
        let slot = self.open_watch(&principal)?;
        // Subscribe before reading, so a change between the read and the first
        // notification is not lost.
        let rx = self.dispatcher.jobs.subscribe();
        let mut initial = Vec::new();
        if let Watched::Ids(ids) = &watched {
            let jobs = self.store.get_jobs(ids).await?;
            if jobs.len() < ids.len() {
                let found: HashSet<Uuid> = jobs.iter().map(|j| j.id).collect();
                if let Some(missing) = ids.iter().find(|i| !found.contains(i)) {
                    return Err(Error::NotFound(format!("job {missing} not found")).into());
                }
            }
            initial = jobs;
        }
        let (tx, out) = mpsc::channel(WATCH_BUFFER);
        let store = self.store.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = follow(store, watched, initial, rx, &tx).await {
                let _ = tx.send(Err(e.into())).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }

    pub(crate) async fn wait_job_call(
        &self,
        req: Request<pb::WaitJobRequest>,
    ) -> Result<Response<pb::WaitJobResponse>, Status> {
        let principal = Principal::of(&req);
        let r = req.into_inner();
        let id = parse_id("id", &r.id)?;
        let wait_ms = match convert::millis("timeout", &r.timeout)? {
            0 => DEFAULT_WAIT_MS,
            t if t > MAX_WAIT_MS => {
                return Err(Error::Invalid(format!(
                    "timeout: at most {}s (one hour); call again to wait longer",
                    MAX_WAIT_MS / 1000
                ))
                .into())
            }
            t => t,
        };
        let _slot = self.open_watch(&principal)?;
        let mut rx = self.dispatcher.jobs.subscribe();
        let mut job = read_job(&self.store, id).await?;
        let deadline = tokio::time::sleep(Duration::from_millis(wait_ms));
        tokio::pin!(deadline);
        while !job.state.is_terminal() {
            let again = tokio::select! {
                _ = &mut deadline => {
                    return Err(Status::deadline_exceeded(format!(
                        "job {id} is still {} after {wait_ms} ms; call WaitJob again to keep \
                         waiting",
                        job.state
                    )));
                }
                e = rx.recv() => match e {
                    Ok(JobEvent::Changed { id: changed, .. }) => changed == id,
                    Ok(JobEvent::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => true,
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(Error::Unavailable("coordinator shutting down".into()).into())
                    }
                },
            };
            if again {
                job = read_job(&self.store, id).await?;
            }
        }
        Ok(Response::new(pb::WaitJobResponse {
            job: Some(convert::job_to_pb(&job)),
        }))
    }
}

async fn read_job(store: &crate::store::Store, id: Uuid) -> Result<JobRow, Error> {
    store
        .get_job(id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("job {id} not found")))
}

/// Sends a watch's updates until its client goes away (or, for given jobs, until all of
/// them are finished). Each job is sent when its state differs from the last one sent.
async fn follow(
    store: crate::store::Store,
    watched: Watched,
    initial: Vec<JobRow>,
    mut rx: broadcast::Receiver<JobEvent>,
    tx: &mpsc::Sender<Result<pb::WatchJobsResponse, Status>>,
) -> Result<(), Error> {
    // Last state sent per job. Bounded for filter watches: forgetting only risks a
    // repeated message, never a missed one.
    let mut last: HashMap<Uuid, JobState> = HashMap::new();
    const LAST_MAX: usize = 100_000;
    let mut synced_at = Utc::now();
    let send = |job: &JobRow, initial: bool| pb::WatchJobsResponse {
        job: Some(convert::job_to_pb(job)),
        initial,
    };
    for j in &initial {
        last.insert(j.id, j.state);
        if tx.send(Ok(send(j, true))).await.is_err() {
            return Ok(());
        }
    }
    let all_done =
        |last: &HashMap<Uuid, JobState>| last.values().all(|s| s.is_terminal()) && !last.is_empty();
    if matches!(watched, Watched::Ids(_)) && all_done(&last) {
        return Ok(());
    }
    loop {
        let event = tokio::select! {
            _ = tx.closed() => return Ok(()),
            e = rx.recv() => e,
        };
        let fresh: Vec<JobRow> = match event {
            Ok(JobEvent::Changed { id, state, queue }) => {
                if !watched.concerns(id, state, &queue) {
                    continue;
                }
                store.get_job(id).await?.into_iter().collect()
            }
            Ok(JobEvent::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => {
                if let Err(broadcast::error::RecvError::Lagged(n)) = event {
                    tracing::debug!(missed = n, "watch lagged; re-reading from the database");
                }
                let now = Utc::now();
                let jobs = match &watched {
                    Watched::Ids(ids) => {
                        let open: Vec<Uuid> = ids
                            .iter()
                            .filter(|i| last.get(i).is_none_or(|s| !s.is_terminal()))
                            .copied()
                            .collect();
                        store.get_jobs(&open).await?
                    }
                    Watched::Filter {
                        queue,
                        state,
                        label,
                    } => {
                        // Every job of the filter changed since the last sync, page by page.
                        let mut all = Vec::new();
                        let (mut t, mut id) = (synced_at - RESYNC_MARGIN, Uuid::nil());
                        loop {
                            let page = store
                                .changed_jobs(queue, state.map(|s| s.as_str()), label, t, id)
                                .await?;
                            let full = page.len() as i64 >= RESYNC_LIMIT;
                            if let Some(l) = page.last() {
                                (t, id) = (l.updated_at, l.id);
                            }
                            all.extend(page);
                            if !full || all.len() >= RESYNC_MAX {
                                break;
                            }
                        }
                        all
                    }
                };
                synced_at = now;
                jobs
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        };
        for j in fresh {
            if !watched.keeps(&j) || last.get(&j.id) == Some(&j.state) {
                continue;
            }
            if last.len() >= LAST_MAX {
                last.clear();
            }
            last.insert(j.id, j.state);
            if tx.send(Ok(send(&j, false))).await.is_err() {
                return Ok(());
            }
        }
        if matches!(watched, Watched::Ids(_)) && all_done(&last) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(ids: &[&str], queue: &str, state: pb::JobState, label: &str) -> pb::WatchJobsRequest {
        pb::WatchJobsRequest {
            ids: ids.iter().map(|s| s.to_string()).collect(),
            queue: queue.into(),
            state: state as i32,
            label: label.into(),
        }
    }

    #[test]
    fn a_watch_needs_ids_or_a_filter_and_not_both() {
        let u = Uuid::now_v7().to_string();
        assert!(Watched::from_pb(req(&[], "", pb::JobState::Unspecified, "")).is_err());
        assert!(Watched::from_pb(req(&[&u], "q", pb::JobState::Unspecified, "")).is_err());
        assert!(Watched::from_pb(req(&[&u], "", pb::JobState::Unspecified, "")).is_ok());
        assert!(Watched::from_pb(req(&[], "", pb::JobState::Succeeded, "")).is_ok());
        assert!(Watched::from_pb(req(&[], "bad queue", pb::JobState::Unspecified, "")).is_err());
        assert!(Watched::from_pb(req(&["nope"], "", pb::JobState::Unspecified, "")).is_err());
        let many: Vec<String> = (0..=MAX_WATCH_IDS)
            .map(|_| Uuid::now_v7().to_string())
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(Watched::from_pb(req(&many, "", pb::JobState::Unspecified, "")).is_err());
    }

    #[test]
    fn filters_match_announced_changes() {
        let w = Watched::from_pb(req(&[], "etl", pb::JobState::Succeeded, "")).unwrap();
        let id = Uuid::now_v7();
        assert!(w.concerns(id, JobState::Succeeded, "etl"));
        assert!(!w.concerns(id, JobState::Running, "etl"));
        assert!(!w.concerns(id, JobState::Succeeded, "other"));
        let w = Watched::Ids(vec![id]);
        assert!(w.concerns(id, JobState::Running, "any"));
        assert!(!w.concerns(Uuid::now_v7(), JobState::Running, "any"));
    }
}
