//! Push dispatch: hands pending jobs to connected workers the moment both exist.
//!
//! Each connected worker holds *credits* (free room it announced: its slots, plus the jobs
//! it may hold ahead). The dispatcher runs a round whenever something may have changed — a
//! local submit, a NOTIFY from another coordinator, a worker returning credit, or the next
//! backoff expiring — and leases jobs for every worker with credit. There is no
//! fixed-interval polling on the hot path; a slow sweep only guards against a missed
//! notification.

use crate::error::Result;
use crate::store::{Claim, ClaimAsk, EndRequest, Refill, Store};
use drover_core::params::substitute_argv;
use drover_core::RawResult;
use drover_proto::v1::{session_response::Msg, Assignment, SessionResponse};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tonic::Status;

pub type Outbound = mpsc::Sender<Result<SessionResponse, Status>>;

/// One connected worker, as the dispatcher sees it.
pub struct Session {
    pub conn_id: u64,
    pub worker_id: String,
    pub queues: Vec<String>,
    pub labels: Vec<String>,
    /// Slots declared in Hello.
    pub slots: u32,
    /// Jobs the worker may hold beyond its slots (Hello's lease_ahead).
    pub ahead: u32,
    credits: Mutex<u32>,
    /// Paused or draining: takes no new jobs until a heartbeat says otherwise.
    paused: std::sync::atomic::AtomicBool,
    pub tx: Outbound,
    /// Cancelled when the session ends (disconnect, replaced, shutdown).
    pub closed: CancellationToken,
}

impl Session {
    /// Attempts the worker may hold: slots plus ahead. Credits never exceed it, nor do the
    /// attempts stored as running on the worker.
    fn capacity(&self) -> u32 {
        self.slots + self.ahead
    }

    /// The worker's ask for a claim: (id, jobs it asks for, its slots, jobs it may hold
    /// ahead).
    fn ask(&self, want: i64) -> (String, i64, i64, i64) {
        (
            self.worker_id.clone(),
            want,
            i64::from(self.slots),
            i64::from(self.ahead),
        )
    }

    pub fn add_credits(&self, n: u32) {
        if let Ok(mut c) = self.credits.lock() {
            *c = c.saturating_add(n).min(self.capacity());
        }
    }

    fn credits(&self) -> u32 {
        if self.paused.load(Ordering::Relaxed) {
            return 0;
        }
        self.credits.lock().map(|c| *c).unwrap_or(0)
    }

    /// Returns whether it was paused before.
    pub fn set_paused(&self, paused: bool) -> bool {
        self.paused.swap(paused, Ordering::Relaxed)
    }

    fn take_credits(&self, n: u32) {
        if let Ok(mut c) = self.credits.lock() {
            *c = c.saturating_sub(n);
        }
    }

    /// Sends without waiting: a worker that does not read its stream is treated as gone.
    pub fn send(&self, msg: Msg) -> bool {
        self.tx
            .try_send(Ok(SessionResponse { msg: Some(msg) }))
            .is_ok()
    }
}

/// A worker's room as its Hello declares it: slots, jobs it may hold beyond them
/// (lease_ahead), and how much of both is free now (its first credits).
#[derive(Debug, Clone, Copy)]
pub struct Room {
    pub slots: u32,
    pub ahead: u32,
    pub free: u32,
}

/// How a dispatch round ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Round {
    /// Some worker may still take more work now: run another round at once.
    More,
    /// No worker with credit was left wanting: nothing to do until credit returns.
    NoCredit,
    /// Some worker has credit but found no due job in these queues: sleep until the next
    /// one there is due.
    Starved(Vec<String>),
}

pub struct Dispatcher {
    /// Log followers' notifications (fed by this coordinator's writes and by LISTEN).
    pub logs: Arc<crate::log_watch::LogWatch>,
    /// Job state changes for watchers (fed by LISTEN on the states channel).
    pub jobs: Arc<crate::job_watch::JobWatch>,
    store: Store,
    lease_ttl: Duration,
    /// Safety-net sweep interval (`dispatch_sweep`): only matters if a notification
    /// was missed.
    sweep: Duration,
    sessions: Mutex<Vec<Arc<Session>>>,
    wake: Notify,
    next_conn: AtomicU64,
    rotate: AtomicUsize,
    /// Set by `close_all`: a session that registers afterwards (its request was already
    /// on an accepted connection) is closed at once, or it would hold shutdown forever.
    closing: std::sync::atomic::AtomicBool,
}

impl Dispatcher {
    pub fn new(store: Store, lease_ttl: Duration, sweep: Duration) -> Arc<Self> {
        let d = Arc::new(Dispatcher {
            logs: Arc::default(),
            jobs: Arc::default(),
            store,
            lease_ttl,
            sweep,
            sessions: Mutex::new(Vec::new()),
            wake: Notify::new(),
            next_conn: AtomicU64::new(1),
            rotate: AtomicUsize::new(0),
            closing: std::sync::atomic::AtomicBool::new(false),
        });
        // Results that give slots back are refilled in their own transaction.
        let weak: std::sync::Weak<dyn Refill> = Arc::downgrade(&(d.clone() as Arc<dyn Refill>));
        d.store.set_refill(weak);
        d
    }

    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Adds a worker's session. A previous session of the same worker id is closed: the
    /// worker reconnected and the old stream is dead or about to be.
    pub fn register(
        &self,
        worker_id: String,
        queues: Vec<String>,
        labels: Vec<String>,
        room: Room,
        tx: Outbound,
    ) -> Arc<Session> {
        let Room {
            slots,
            ahead,
            free: credits,
        } = room;
        let s = Arc::new(Session {
            conn_id: self.next_conn.fetch_add(1, Ordering::Relaxed),
            worker_id,
            queues,
            labels,
            slots,
            ahead,
            credits: Mutex::new(credits.min(slots + ahead)),
            paused: std::sync::atomic::AtomicBool::new(false),
            tx,
            closed: CancellationToken::new(),
        });
        if let Ok(mut all) = self.sessions.lock() {
            all.retain(|o| {
                let same = o.worker_id == s.worker_id;
                if same {
                    o.closed.cancel();
                }
                !same
            });
            if self.closing.load(Ordering::Relaxed) {
                s.closed.cancel();
            } else {
                all.push(s.clone());
            }
        }
        self.wake();
        s
    }

    pub fn unregister(&self, conn_id: u64) {
        if let Ok(mut all) = self.sessions.lock() {
            all.retain(|o| o.conn_id != conn_id);
        }
    }

    fn session_of(&self, worker_id: &str) -> Option<Arc<Session>> {
        self.sessions
            .lock()
            .ok()
            .and_then(|all| all.iter().find(|s| s.worker_id == worker_id).cloned())
    }

    /// Sends a stop order to a worker, if its session is on this coordinator.
    pub fn stop_attempt(&self, worker_id: &str, msg: Msg) -> bool {
        self.session_of(worker_id).is_some_and(|s| s.send(msg))
    }

    /// Adds one credit to a worker's session (its FinishAttempt asked for the slot to be
    /// offered again); false if no session of that worker is on this coordinator.
    pub fn return_slot(&self, worker_id: &str) -> bool {
        self.session_of(worker_id)
            .map(|s| s.add_credits(1))
            .is_some()
    }

    pub fn session_count(&self) -> usize {
        self.sessions.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Closes every session (coordinator shutdown): workers will reconnect elsewhere.
    pub fn close_all(&self) {
        if let Ok(mut all) = self.sessions.lock() {
            // Under the lock, so no register can slip in between.
            self.closing.store(true, Ordering::Relaxed);
            for s in all.drain(..) {
                s.closed.cancel();
            }
        }
    }

    fn with_credit(&self) -> Vec<Arc<Session>> {
        let mut v: Vec<Arc<Session>> = self
            .sessions
            .lock()
            .map(|all| all.iter().filter(|s| s.credits() > 0).cloned().collect())
            .unwrap_or_default();
        if !v.is_empty() {
            // Rotate so no worker is always first in line.
            let k = self.rotate.fetch_add(1, Ordering::Relaxed) % v.len();
            v.rotate_left(k);
        }
        v
    }

    /// One dispatch round: leases work for every worker with credit, in one claim per
    /// set of workers that take the same queues and labels.
    async fn round(&self) -> Result<Round> {
        let mut exhausted: HashSet<(Vec<String>, Vec<String>)> = HashSet::new();
        let mut more = false;
        let mut back = Vec::new();
        let mut failed = None;
        // Most rounds under load find every slot filled (results refill their own).
        if self.with_credit().is_empty() {
            return Ok(Round::NoCredit);
        }
        // Held only while claiming: the hand-backs below go through the group writer,
        // which may be waiting for this turn. Credit is read again under it.
        let turn = self.store.claim_turn().await;
        for group in claim_groups(self.with_credit()) {
            let key = (group[0].queues.clone(), group[0].labels.clone());
            let asks: Vec<_> = group
                .iter()
                .map(|s| s.ask(i64::from(s.credits())))
                .collect();
            let claims = match self
                .store
                .claim_for(&asks, &key.0, &key.1, self.lease_ttl)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            for ((s, claim), (_, want, _, _)) in group.iter().zip(claims).zip(asks.iter()) {
                let (short, again) = account(s, &claim, *want);
                if short {
                    exhausted.insert(key.clone());
                }
                more |= again;
                more |= self.deliver(s, claim.jobs, &mut back);
            }
        }
        drop(turn);
        // Also after a failed claim: what earlier claims could not deliver goes back.
        for (attempt_id, raw) in back {
            hand_back(&self.store, attempt_id, raw).await;
        }
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(if more {
            Round::More
        } else if exhausted.is_empty() {
            Round::NoCredit
        } else {
            let mut queues: Vec<String> = exhausted.into_iter().flat_map(|(q, _)| q).collect();
            queues.sort();
            queues.dedup();
            Round::Starved(queues)
        })
    }

    /// Sends a worker the jobs claimed for it (their credit already taken). Jobs that
    /// cannot be sent go into `back`, to be handed back. Returns whether one went back (so
    /// another round should follow at once).
    fn deliver(
        &self,
        s: &Session,
        claimed: Vec<crate::store::Claimed>,
        back: &mut Vec<(uuid::Uuid, RawResult)>,
    ) -> bool {
        let mut more = false;
        for c in claimed {
            crate::metrics::job_leased(c.waited);
            let argv = match substitute_argv(&c.argv, &c.params) {
                Ok(a) => a,
                // Validated at submit, so this means the stored row was edited by hand.
                Err((i, e)) => {
                    back.push((
                        c.attempt_id,
                        RawResult::SpawnError(format!("argv[{i}]: {e}")),
                    ));
                    s.add_credits(1);
                    continue;
                }
            };
            // The lease continues the submit's trace; the worker continues the lease's.
            let span = tracing::info_span!("lease", job_id = %c.job_id,
                attempt_id = %c.attempt_id, worker_id = %s.worker_id);
            if let Some(tp) = &c.trace_parent {
                drover_telemetry::set_parent(&span, tp);
            }
            let trace_parent = span.in_scope(|| {
                tracing::debug!("assigned");
                drover_telemetry::traceparent()
            });
            let sent = s.send(Msg::Assign(Assignment {
                attempt_id: c.attempt_id.to_string(),
                job_id: c.job_id.to_string(),
                attempt_number: c.number as u32,
                argv,
                env: c.env.into_iter().collect(),
                timeout: drover_proto::durations::nonzero_millis(c.timeout_ms.max(0) as u64),
                outputs: c.outputs,
                trace_parent: trace_parent.unwrap_or_default(),
                memory_limit_bytes: c.limits.memory_bytes.unwrap_or(0),
                cpu_millis: c.limits.cpu_millis.unwrap_or(0),
                pids_limit: c.limits.pids.unwrap_or(0),
                secret_env: c.secret_env.into_iter().collect(),
            }));
            if !sent {
                // The worker went away between claim and send: hand the job back
                // without charging it a retry.
                back.push((c.attempt_id, RawResult::Released));
                more = true;
            }
        }
        more
    }

    /// Runs dispatch rounds until shutdown.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let pause = match self.round().await {
                Ok(Round::More) => Duration::ZERO,
                // Every worker is full: returned credit wakes the loop, so there is no
                // next due time to look up (under load this is most rounds).
                Ok(Round::NoCredit) => self.sweep,
                Ok(Round::Starved(queues)) => match self.store.next_due(&queues).await {
                    Ok(Some(t)) => (t - chrono::Utc::now())
                        .to_std()
                        .unwrap_or(Duration::ZERO)
                        .min(self.sweep),
                    Ok(None) => self.sweep,
                    Err(_) => Duration::from_secs(1),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "dispatch round failed; retrying");
                    Duration::from_secs(1)
                }
            };
            if pause.is_zero() {
                if shutdown.is_cancelled() {
                    return;
                }
                continue;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

/// Takes a claim's jobs from the session's credit. Returns (short, again): fewer due jobs
/// than room (none left for workers like this one), and room for all it asked (it may
/// take more at once).
fn account(s: &Session, claim: &Claim, want: i64) -> (bool, bool) {
    s.take_credits(claim.jobs.len() as u32);
    let short = (claim.jobs.len() as i64) < claim.room;
    // Otherwise room was short of the credit: a result is still on its way (a slot comes
    // back once its result is stored: with the result, or by the worker's Credit; an
    // older or careless worker's credit may come sooner), and its FinishAttempt wakes the
    // loop once stored. Asking again before then would find no room either.
    (short, !short && claim.room == want && want > 0)
}

/// Slots that results give back are claimed for in the results' own transaction
/// (store/group.rs), under the claim turn, so no round runs meanwhile.
impl Refill for Dispatcher {
    fn asks(&self, returning: &[(String, u32)]) -> Vec<ClaimAsk> {
        let mut asks: Vec<ClaimAsk> = Vec::new();
        for (worker_id, n) in returning {
            let Some(s) = self.session_of(worker_id) else {
                continue;
            };
            if s.closed.is_cancelled() || s.paused.load(Ordering::Relaxed) {
                continue;
            }
            let want = i64::from(s.credits().saturating_add(*n).min(s.capacity()));
            let worker = s.ask(want);
            match asks
                .iter_mut()
                .find(|a| a.queues == s.queues && a.labels == s.labels)
            {
                Some(a) => a.workers.push(worker),
                None => asks.push(ClaimAsk {
                    queues: s.queues.clone(),
                    labels: s.labels.clone(),
                    workers: vec![worker],
                    lease_ttl: self.lease_ttl,
                }),
            }
        }
        asks
    }

    fn settle(
        &self,
        returning: &[(String, u32)],
        asks: &[ClaimAsk],
        claims: Vec<Vec<Claim>>,
    ) -> HashSet<String> {
        let mut sessions: HashMap<&str, Arc<Session>> = HashMap::new();
        for (worker_id, n) in returning {
            if let Some(s) = self.session_of(worker_id) {
                s.add_credits(*n);
                sessions.insert(worker_id, s);
            }
        }
        let mut back = Vec::new();
        for (ask, claims) in asks.iter().zip(claims) {
            for ((worker_id, want, _, _), claim) in ask.workers.iter().zip(claims) {
                match sessions.get(worker_id.as_str()) {
                    Some(s) => {
                        account(s, &claim, *want);
                        self.deliver(s, claim.jobs, &mut back);
                    }
                    // Gone since the ask: nobody to send to.
                    None => back.extend(
                        claim
                            .jobs
                            .iter()
                            .map(|c| (c.attempt_id, RawResult::Released)),
                    ),
                }
            }
        }
        if !back.is_empty() {
            // Through the group writer, which is the caller: not awaited here.
            let store = self.store.clone();
            tokio::spawn(async move {
                for (attempt_id, raw) in back {
                    hand_back(&store, attempt_id, raw).await;
                }
            });
        }
        sessions.into_keys().map(str::to_string).collect()
    }
}

/// Ends an attempt that was claimed but never reached its worker.
async fn hand_back(store: &Store, attempt_id: uuid::Uuid, raw: RawResult) {
    match store.end_attempt(attempt_id, &EndRequest::bare(raw)).await {
        Ok(ended) => crate::metrics::ended(&ended),
        // The lease reaper will mark it lost after its TTL.
        Err(e) => {
            tracing::warn!(%attempt_id, error = %e, "could not hand back undelivered attempt")
        }
    }
}

/// Sessions with credit grouped for one claim each: those taking the same queues and
/// labels together (in the order given), a worker id at most once per group.
fn claim_groups(sessions: Vec<Arc<Session>>) -> Vec<Vec<Arc<Session>>> {
    let mut groups: Vec<Vec<Arc<Session>>> = Vec::new();
    for s in sessions {
        if s.closed.is_cancelled() || s.credits() == 0 {
            continue;
        }
        let fits = |g: &Vec<Arc<Session>>| {
            g[0].queues == s.queues
                && g[0].labels == s.labels
                && g.iter().all(|o| o.worker_id != s.worker_id)
        };
        match groups.iter_mut().find(|g| fits(g)) {
            Some(g) => g.push(s),
            None => groups.push(vec![s]),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_session_registered_after_close_all_is_closed_at_once() {
        // The pool never connects here: registering touches no database.
        let pool = crate::db::pool("postgres://nobody@127.0.0.1:1/none", 2).unwrap();
        let d = Dispatcher::new(
            Store::new(pool),
            Duration::from_secs(8),
            Duration::from_secs(5),
        );
        let (tx, _rx) = mpsc::channel(1);
        let room = Room {
            slots: 1,
            ahead: 0,
            free: 1,
        };
        let before = d.register("w1".into(), vec![], vec![], room, tx.clone());
        assert!(!before.closed.is_cancelled());
        assert_eq!(d.session_count(), 1);
        d.close_all();
        assert!(before.closed.is_cancelled());
        // A session request that was already on an accepted connection.
        let late = d.register("w2".into(), vec![], vec![], room, tx);
        assert!(
            late.closed.is_cancelled(),
            "would hold the shutdown forever"
        );
        assert_eq!(d.session_count(), 0);
    }
}
