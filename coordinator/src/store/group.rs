//! Ending attempts, with group commit: results that arrive while an earlier group is being
//! written are ended together, in one transaction of four statements (BEGIN, one locking
//! read, one write, COMMIT) in two round trips however many there are, instead of seven
//! statements and a durable commit each. A single result is a group of one and takes the
//! same path.
//!
//! Each result is still decided alone (the pure `drover_core::transition`) from its own
//! locked rows, and refused alone: a stale, forged or incomplete result in a group gets its
//! own error and the others commit. If the group's transaction fails as a whole (a
//! deadlock, a lost connection), every result in it is tried again in a group of its own,
//! so one bad row cannot fail its neighbours.
//!
//! A result that gives its worker's slot back (`return_slot`) has the slot refilled in the
//! same transaction: the dispatcher says what to claim for the workers whose slots come
//! back ([`Refill`]), the plain claim runs after the group's write and before COMMIT, and
//! the jobs claimed are delivered once it commits. A freed slot then costs no commit and
//! no round trip of its own. The claim turn ([`Store::claim_turn`]), which every dispatch
//! round also takes, keeps a refill and a round from claiming on the same credit.

use super::failures;
use super::jobs::{PlainClaim, CLAIM};
use super::{measured, parse_state, stale, Claim, EndRequest, Ended, Store, JOBS_CHANNEL};
use crate::auth::Principal;
use crate::error::{Error, ErrorKind, Result};
use deadpool_postgres::GenericClient;
use drover_core::{AttemptState, Counts, JobState, RetryPolicy};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::Json;
use tokio_postgres::Row;
use uuid::Uuid;

/// At most this many results share a transaction (bounds the statement's arrays and the
/// time the rows stay locked).
const MAX_GROUP: usize = 64;
/// Results waiting for the group writer; a full queue makes callers wait (backpressure).
const QUEUE: usize = 1024;

/// A plain claim to run inside a group's transaction: workers that take the same queues
/// and labels, each as (id, jobs it asks for, its slots, jobs it may hold ahead).
pub struct ClaimAsk {
    pub queues: Vec<String>,
    pub labels: Vec<String>,
    pub workers: Vec<(String, i64, i64, i64)>,
    pub lease_ttl: Duration,
}

/// What a group of results asks of the dispatcher (implemented by `dispatch::Dispatcher`).
/// Both calls are made while the group holds the claim turn.
pub trait Refill: Send + Sync {
    /// The claims to make for workers whose results give slots back, as (worker id,
    /// slots), counting the credit they hold already. Empty: nothing to claim.
    fn asks(&self, returning: &[(String, u32)]) -> Vec<ClaimAsk>;
    /// After COMMIT: the returned slots become credit, the jobs claimed (`claims[i]` for
    /// `asks[i]`, one [`Claim`] per worker) are taken from it and sent. Returns the workers
    /// whose slots were credited (their session is on this coordinator).
    fn settle(
        &self,
        returning: &[(String, u32)],
        asks: &[ClaimAsk],
        claims: Vec<Vec<Claim>>,
    ) -> HashSet<String>;
}

/// One result waiting to be ended.
pub(super) struct Pending {
    attempt_id: Uuid,
    worker: Option<Principal>,
    req: EndRequest,
    reply: oneshot::Sender<Result<Ended>>,
}

/// The group writer's inbox.
pub(super) type Queue = mpsc::Sender<Pending>;

/// Locks the group's attempts and their jobs (in attempt-id order) and reads what the
/// decisions need.
const LOCK: &str = include_str!("sql/attempts/lock_group.sql");
/// Attempts, jobs, outbox events and notifications of the whole group in one statement.
const WRITE: &str = include_str!("sql/attempts/end_group.sql");

/// The columns of [`WRITE`], one entry per result.
#[derive(Default)]
struct Writes {
    attempt_id: Vec<Uuid>,
    attempt_state: Vec<&'static str>,
    exit_code: Vec<Option<i32>>,
    signal: Vec<Option<i32>>,
    reason: Vec<String>,
    peak_rss: Vec<Option<i64>>,
    cpu_ms: Vec<Option<i64>>,
    fingerprint: Vec<Option<String>>,
    job_id: Vec<Uuid>,
    job_state: Vec<&'static str>,
    failures: Vec<i32>,
    lost: Vec<i32>,
    retry_in_ms: Vec<Option<f64>>,
    terminal: Vec<bool>,
    event: Vec<&'static str>,
    payload: Vec<Json<serde_json::Value>>,
    /// (channel, payload) pairs, each once.
    notify: Vec<(String, String)>,
    notified: HashSet<(String, String)>,
}

impl Writes {
    fn notify(&mut self, channel: &str, payload: String) {
        let k = (channel.to_string(), payload);
        if self.notified.insert(k.clone()) {
            self.notify.push(k);
        }
    }
}

impl Store {
    /// Ends an attempt: stores its result and moves the job on (retry, success, permanent
    /// failure, cancellation), with the outbox event, in one transaction shared with the
    /// results that arrive at the same moment (see the module comment). Checks made on the
    /// locked rows: the attempt is still running (fencing), `worker` may act for its
    /// worker id, its lease has expired (`only_if_expired`), its log is complete.
    pub(super) async fn end_attempt_grouped(
        &self,
        attempt_id: Uuid,
        worker: Option<&Principal>,
        req: &EndRequest,
    ) -> Result<Ended> {
        let queue = self.finishes.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(run(self.clone(), rx));
            tx
        });
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            attempt_id,
            worker: worker.cloned(),
            req: req.clone(),
            reply,
        };
        queue
            .send(pending)
            .await
            .map_err(|_| Error::Unavailable("the coordinator is shutting down".into()))?;
        answer
            .await
            .map_err(|_| Error::Unavailable("the coordinator is shutting down".into()))?
    }

    /// Ends a group and answers each caller.
    async fn end_group(&self, group: Vec<Pending>) {
        // A result sent twice (a worker retrying after a lost response) waits for the
        // next round, so it is judged against the first one's outcome.
        let mut seen = HashSet::new();
        let (group, again): (Vec<_>, Vec<_>) =
            group.into_iter().partition(|p| seen.insert(p.attempt_id));
        if group.len() > 1 {
            let n = group.len();
            match measured("end_attempts_group", self.end_many(&group, true)).await {
                Ok(results) => {
                    crate::metrics::finish_group(n);
                    for (p, r) in group.into_iter().zip(results) {
                        self.answer(p, r).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, results = n,
                        "a group of attempt results failed together; ending them one by one");
                    // Without refills: a failing claim must not fail the results again.
                    for p in group {
                        self.end_one(p, false).await;
                    }
                }
            }
        } else {
            for p in group {
                self.end_one(p, true).await;
            }
        }
        for p in again {
            self.end_one(p, true).await;
        }
    }

    async fn end_one(&self, p: Pending, refill: bool) {
        crate::metrics::finish_group(1);
        let r = match self.end_many(std::slice::from_ref(&p), refill).await {
            Ok(mut v) => v
                .pop()
                .unwrap_or_else(|| Err(Error::Internal("a group of one gave no result".into()))),
            Err(e) => Err(e),
        };
        self.answer(p, r).await;
    }

    /// Sends a result to its caller. A result that could not be applied (an internal
    /// error: an unreadable stored policy, a value out of the database's range) does not
    /// leave the job running: it ends `failed_permanent` with the error as the reason.
    async fn answer(&self, p: Pending, r: Result<Ended>) {
        let r = match r {
            Err(e) if e.kind() == ErrorKind::Internal => {
                tracing::error!(attempt_id = %p.attempt_id, error = ?e,
                    "attempt result could not be applied; failing the job");
                let why = match e {
                    Error::Internal(why) => why,
                    e => e.to_string(),
                };
                self.end_attempt_unapplied(p.attempt_id, &why).await
            }
            other => other,
        };
        // The caller may have gone (its request was cancelled): the result stands.
        let _ = p.reply.send(r);
    }

    /// One transaction for the group. `Err` means nothing was written; otherwise one
    /// result per entry of `group`, in order. With `refill`, slots given back are claimed
    /// for in the same transaction (see the module comment).
    async fn end_many(&self, group: &[Pending], refill: bool) -> Result<Vec<Result<Ended>>> {
        // Only the plain claim runs here: room it leaves stays credit, and the dispatch
        // round the result wakes claims keyed jobs in a transaction of their own.
        let refill = self
            .refill
            .get()
            .and_then(std::sync::Weak::upgrade)
            .filter(|_| refill && group.iter().any(|p| p.req.return_slot));
        // Taken before any row lock, in the order a dispatch round takes them.
        let _turn = match &refill {
            Some(_) => Some(self.claim_turn().await),
            None => None,
        };
        let mut tx = Pipelined::new(self.hot.get().await?);
        let ids: Vec<Uuid> = group.iter().map(|p| p.attempt_id).collect();
        // BEGIN and the locking read go out together: one round trip, not two.
        let lock = tx.c().prepare_cached(LOCK).await?;
        let lock_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&ids];
        let (begun, rows) = tokio::join!(
            tx.c().batch_execute("BEGIN"),
            tx.c().query(&lock, &lock_params)
        );
        begun?;
        let rows = rows?;
        let mut by_id: HashMap<Uuid, &Row> = HashMap::with_capacity(rows.len());
        for r in &rows {
            by_id.insert(r.try_get("id")?, r);
        }
        let mut w = Writes::default();
        let mut out = Vec::with_capacity(group.len());
        for p in group {
            let r = match by_id.get(&p.attempt_id) {
                None => Err(Error::NotFound(format!(
                    "attempt {} does not exist",
                    p.attempt_id
                ))),
                Some(row) => decide(tx.c(), row, p, &mut w).await,
            };
            out.push(r);
        }
        // A database error in one result's statements aborted the transaction: nothing
        // can be written, so the group fails as a whole (and is retried one by one).
        if let Some(Err(e)) = out
            .iter()
            .position(|r| matches!(r, Err(Error::Database(_))))
            .map(|i| out.swap_remove(i))
        {
            return Err(e);
        }
        // Workers whose results give a slot back, with how many (only when refilling).
        let mut returning: Vec<(String, u32)> = Vec::new();
        for (p, r) in group.iter().zip(&out).filter(|_| refill.is_some()) {
            if let (
                true,
                Ok(Ended {
                    worker_id: Some(w), ..
                }),
            ) = (p.req.return_slot, r)
            {
                match returning.iter_mut().find(|(id, _)| id == w) {
                    Some((_, n)) => *n += 1,
                    None => returning.push((w.clone(), 1)),
                }
            }
        }
        let asks = match &refill {
            Some(r) if !returning.is_empty() => r.asks(&returning),
            _ => Vec::new(),
        };
        if w.attempt_id.is_empty() {
            tx.c().batch_execute("COMMIT").await?;
            tx.done();
        } else {
            let (channels, payloads): (Vec<String>, Vec<String>) =
                std::mem::take(&mut w.notify).into_iter().unzip();
            let write = tx.c().prepare_cached(WRITE).await?;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 18] = [
                &w.attempt_id,
                &w.attempt_state,
                &w.exit_code,
                &w.signal,
                &w.reason,
                &w.peak_rss,
                &w.cpu_ms,
                &w.fingerprint,
                &w.job_id,
                &w.job_state,
                &w.failures,
                &w.lost,
                &w.retry_in_ms,
                &w.terminal,
                &w.event,
                &w.payload,
                &channels,
                &payloads,
            ];
            let claims: Vec<PlainClaim> = asks
                .iter()
                .map(|a| PlainClaim::new(&a.workers, &a.queues, &a.labels, a.lease_ttl))
                .collect();
            let claim = match claims.is_empty() {
                true => None,
                false => Some(tx.c().prepare_cached(CLAIM).await?),
            };
            let claim_params: Vec<_> = claims.iter().map(PlainClaim::params).collect();
            // The write, the claims after it and COMMIT go out together. If any statement
            // fails, PostgreSQL ends the aborted transaction at COMMIT with a rollback:
            // nothing is written, whichever failed.
            let (wrote, claimed, committed) = tokio::join!(
                tx.c().query_one(&write, &params),
                futures::future::join_all(
                    claim
                        .iter()
                        .flat_map(|st| claim_params.iter().map(move |p| (st, p)))
                        .map(|(st, p)| tx.c().query(st, p))
                ),
                tx.c().batch_execute("COMMIT")
            );
            committed?;
            tx.done();
            wrote?;
            let claimed = claimed.into_iter().collect::<Result<Vec<_>, _>>()?;
            if let Some(refill) = &refill {
                // Committed: the attempts are leased. One unreadable claim (a row the
                // code cannot read) delivers nothing; its attempts are reaped as lost
                // when their lease runs out, as a claim's would be.
                let claims = claims
                    .iter()
                    .zip(&claimed)
                    .map(|(c, rows)| {
                        c.claims(rows).unwrap_or_else(|e| {
                            tracing::error!(error = %e, "jobs claimed with results could not be read");
                            Vec::new()
                        })
                    })
                    .collect();
                let credited = refill.settle(&returning, &asks, claims);
                for (p, r) in group.iter().zip(out.iter_mut()) {
                    if let (true, Ok(ended)) = (p.req.return_slot, r) {
                        ended.slot_returned = ended
                            .worker_id
                            .as_ref()
                            .is_some_and(|w| credited.contains(w));
                    }
                }
            }
        }
        Ok(out)
    }
}

/// A transaction driven by hand, so that BEGIN can share a round trip with the first
/// statement and COMMIT with the last (tokio-postgres pipelines requests made at once on
/// one connection); the group's four statements then cost two round trips. A connection
/// left inside the transaction — an error or a cancelled future before COMMIT went out —
/// is never returned to the pool: it is closed, and PostgreSQL rolls back.
struct Pipelined {
    client: Option<deadpool_postgres::Object>,
}

impl Pipelined {
    fn new(client: deadpool_postgres::Object) -> Self {
        Pipelined {
            client: Some(client),
        }
    }

    fn c(&self) -> &deadpool_postgres::Object {
        // Present until `done` or drop, both of which end the value's use.
        self.client.as_ref().expect("connection present until done")
    }

    /// The transaction has ended (COMMIT was answered): the connection may be reused.
    fn done(&mut self) {
        drop(self.client.take());
    }
}

impl Drop for Pipelined {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            drop(deadpool_postgres::Object::take(c));
        }
    }
}

/// Checks one result against its locked rows, decides the transition and adds its writes.
/// A failure with output gets its fingerprint (and its group updated) here, in the same
/// transaction; the success path runs no statement.
async fn decide(tx: &impl GenericClient, row: &Row, p: &Pending, w: &mut Writes) -> Result<Ended> {
    let (attempt_id, req) = (p.attempt_id, &p.req);
    let worker_id: String = row.try_get("worker_id")?;
    if let Some(principal) = &p.worker {
        principal.check_worker(&worker_id)?;
    }
    let state: AttemptState = parse_state(&row.try_get::<_, String>("state")?)?;
    let job_id: Uuid = row.try_get("job_id")?;
    if state != AttemptState::Running {
        return Err(stale(attempt_id, state));
    }
    if req.only_if_expired && !row.try_get::<_, bool>("expired")? {
        return Err(Error::FailedPrecondition(format!(
            "attempt {attempt_id}'s lease was renewed"
        )));
    }
    if let Some(expected) = req.log_chunk_count {
        let have: i64 = row.try_get("log_chunks")?;
        if have < expected {
            return Err(Error::Aborted(format!(
                "log of attempt {attempt_id} is incomplete: {have} of {expected} chunks \
                 stored; send the rest first"
            )));
        }
    }
    let Json(policy): Json<serde_json::Value> = row.try_get("retry_policy")?;
    let policy: RetryPolicy = serde_json::from_value(policy)
        .map_err(|e| Error::Internal(format!("stored retry policy is unreadable: {e}")))?;
    let queue: String = row.try_get("queue")?;
    // The decision is pure (drover_core::transition); this only reads and writes.
    let t = drover_core::transition(
        &policy,
        &crate::patterns::get(&policy),
        Counts {
            failures: row.try_get("failure_count")?,
            lost: row.try_get("lost_count")?,
        },
        &req.raw,
        &req.output_tail,
        row.try_get("cancel_requested")?,
        rand::random::<f64>(),
    );
    let failure = if drover_core::fingerprint::applies(t.attempt_state, &req.output_tail) {
        Some(
            failures::record(
                tx,
                job_id,
                attempt_id,
                &queue,
                &t.cause,
                &req.output_tail,
                t.exit_code,
            )
            .await?,
        )
    } else {
        None
    };
    let mut payload = json!({
        "attempt_id": attempt_id,
        "attempt_state": t.attempt_state.as_str(),
        "reason": t.reason,
    });
    if let (Some(f), Some(obj)) = (&failure, payload.as_object_mut()) {
        obj.insert("fingerprint".into(), json!(f.fingerprint));
        obj.insert("sample".into(), json!(f.sample));
        obj.insert("new_fingerprint".into(), json!(f.new_group));
    }
    let (peak_rss, cpu_ms) = match req.usage {
        Some((rss, cpu)) => (Some(rss), Some(cpu)),
        None => (None, None),
    };
    w.attempt_id.push(attempt_id);
    w.attempt_state.push(t.attempt_state.as_str());
    w.exit_code.push(t.exit_code);
    w.signal.push(t.signal);
    w.reason.push(t.reason.clone());
    w.peak_rss.push(peak_rss);
    w.cpu_ms.push(cpu_ms);
    w.fingerprint.push(failure.map(|f| f.fingerprint));
    w.job_id.push(job_id);
    w.job_state.push(t.job_state.as_str());
    w.failures.push(t.counts.failures);
    w.lost.push(t.counts.lost);
    w.retry_in_ms
        .push(t.not_before.map(|d| d.as_millis() as f64));
    w.terminal.push(t.job_state.is_terminal());
    w.event.push(t.event);
    w.payload.push(Json(payload));
    // Wakes every coordinator's dispatcher: at once for an immediate retry, or to re-arm
    // its timer for a backoff.
    if t.job_state == JobState::Pending {
        w.notify(JOBS_CHANNEL, queue);
    }
    // Log followers learn that the attempt (and maybe the job) ended.
    w.notify(crate::log_watch::LOGS_CHANNEL, job_id.to_string());
    Ok(Ended {
        job_id,
        duration: Some(Duration::from_secs_f64(
            row.try_get::<_, f64>("ran")?.max(0.0),
        )),
        attempt_state: t.attempt_state,
        job_state: t.job_state,
        reason: t.reason,
        worker_id: Some(worker_id),
        slot_returned: false,
    })
}

/// Receives results and ends them in groups until every sender is gone.
async fn run(store: Store, mut rx: mpsc::Receiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        store.end_group(group).await;
    }
}
