//! The worker agent: one session with the coordinator, and one task per running attempt.
//!
//! An attempt is *tracked* from assignment until the coordinator has acknowledged its
//! result, even after its process exited: while its log or result is still waiting to be
//! delivered (coordinator away), its lease is kept alive by heartbeats and it is listed in
//! the `Hello` of a reconnect, so the coordinator does not mistake it for an orphan.
//! A *slot* is offered again once its attempt's result is stored: with the result
//! (FinishAttempt's `return_slot`) or, where the answering coordinator did not take it so,
//! by a Credit message.
//!
//! With `lease_ahead`, the worker may hold that many jobs beyond its slots: a held job
//! waits for a slot (a semaphore of `slots` permits, taken in lease order) and starts the
//! moment one frees, so a slot does not stand empty while its next lease is on its way.
//! A held job that finds no slot within `lease_ahead_hold` is handed back (released, not
//! counted as a retry) so another worker can start it, and its room is held back
//! (*withheld*: no credit) until a job of this worker's runs shorter than the hold. The
//! room starts withheld (slow start): a worker leases ahead only once one of its jobs has
//! run shorter than the hold, so a worker of long jobs never holds one.

use crate::config::Config;
use crate::containment::{CgroupUsage, Containment, Limits as JobLimits};
use crate::jobsetup::JobSetup;
use crate::outputs;
use crate::process::{self, ChildSetup, ExitOutcome, OutputChunk, RunSpec, StreamKind, TailBuffer};
use crate::resources::{Limits, Monitor};
use crate::slots::{Slots, Workspace};
use crate::spool;
use drover_core::jobguard::Redactor;
use drover_proto::v1 as pb;
use drover_proto::v1::session_request::Msg as Out;
use drover_proto::v1::session_response::Msg as In;
use drover_proto::v1::worker_service_client::WorkerServiceClient;
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_retry::strategy::{jitter, ExponentialBackoff};
use tokio_retry::RetryIf;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tracing::Instrument;

/// How long connecting to a coordinator may take before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 ping interval and timeout: a coordinator that stopped answering (host gone,
/// network partitioned) is noticed within about twice this.
const KEEPALIVE: Duration = Duration::from_secs(3);
/// Bytes of log per AppendLogs call.
const LOG_BATCH_BYTES: usize = 2 * 1024 * 1024;

/// `AppendLogs` calls in flight per attempt: the next batch travels and is decoded while
/// the coordinator stores the one before it (a batch that gets there first waits for its
/// turn: coordinator/src/store/logs.rs), so the database is not left idle between them.
const LOG_BATCHES_IN_FLIGHT: usize = 2;
/// Largest spool frame made by merging queued pipe reads: one pipe read's worth, so the
/// log cap's head and tail stay within a chunk of their halves.
const MERGE_BYTES: usize = process::CHUNK_BYTES;
/// Bytes of output kept for classifying failures by pattern.
const TAIL_BYTES: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid coordinator address {0:?}: {1}")]
    Address(String, String),
    #[error("preparing {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}")]
    Token(String),
    #[error("{0}")]
    Setup(String),
}

/// Why a held job ended without starting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unheld {
    /// The coordinator stopped it (cancelled, or no longer ours), or the drain timed out.
    Stopped,
    /// The worker began draining: held jobs go back at once.
    Draining,
    /// No slot freed within `lease_ahead_hold`.
    Expired,
}

fn released() -> pb::finish_attempt_request::Result {
    pb::finish_attempt_request::Result::Released(pb::finish_attempt_request::Released {})
}

/// Why the agent stopped an attempt's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    /// The coordinator says the lease is no longer ours: report nothing more.
    Stale,
    Cancelled,
    /// The worker is shutting down and hands the attempt back.
    Shutdown,
}

struct Tracked {
    stop: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
}

#[derive(Default)]
struct State {
    attempts: HashMap<String, Tracked>,
    /// Attempts counted against the worker's room (slots plus lease_ahead): from their
    /// assignment until their result is sent (or, while draining, answered).
    live: u32,
    /// Room of held jobs handed back unstarted, not offered again until a short job ends.
    withheld: u32,
    /// Outbound half of the current session, if connected.
    session: Option<mpsc::UnboundedSender<pb::SessionRequest>>,
}

pub struct Agent {
    cfg: Config,
    /// Program allowlist, job environment, run_as user, secrets.
    setup: JobSetup,
    /// What every job's environment starts from (`JobSetup::base_env` of the worker's
    /// environment at start).
    base_env: BTreeMap<String, String>,
    worker_id: String,
    hostname: String,
    slots: u32,
    /// Jobs held beyond the slots (`lease_ahead`).
    ahead: u32,
    /// One permit per slot, taken to run a process and given back once it ended and its
    /// work directory is clean (before its result is reported).
    run_permits: Arc<Semaphore>,
    coordinators: Coordinators,
    /// READY=1 sent to systemd.
    ready: std::sync::Once,
    state: Mutex<State>,
    /// Signalled whenever an attempt stops being tracked.
    changed: Notify,
    draining: CancellationToken,
    monitor: Arc<Monitor>,
    /// Work directories and group files, one of each per slot.
    slot_dirs: Arc<Slots>,
    containment: Arc<Containment>,
}

type Client = WorkerServiceClient<drover_proto::auth::AuthChannel>;

/// The coordinators this worker may talk to, and the one it uses now. Coordinators keep no
/// state of their own (it is all in PostgreSQL), so any of them can take over a session,
/// its running attempts and their reports.
struct Coordinators {
    addrs: Vec<String>,
    clients: Vec<Client>,
    current: std::sync::atomic::AtomicUsize,
}

impl Coordinators {
    fn current(&self) -> usize {
        self.current.load(std::sync::atomic::Ordering::Relaxed) % self.clients.len()
    }

    /// The client of the coordinator in use; unary calls take it afresh at every try, so
    /// they follow the session when it moves to another coordinator.
    fn client(&self) -> Client {
        self.clients[self.current()].clone()
    }

    /// Moves to the next address (after the last, back to the first).
    fn advance(&self, from: usize) {
        let next = (from + 1) % self.clients.len();
        self.current
            .store(next, std::sync::atomic::Ordering::Relaxed);
    }
}

fn retry_strategy() -> impl Iterator<Item = Duration> {
    // 100 ms doubling to 5 s; half fixed, half jittered so waits never collapse to zero.
    ExponentialBackoff::from_millis(2)
        .factor(50)
        .max_delay(Duration::from_secs(5))
        .map(|d| d / 2 + jitter(d / 2))
}

/// Errors worth retrying: the coordinator or its database is away, or the call raced.
fn transient(s: &Status) -> bool {
    !matches!(
        s.code(),
        Code::FailedPrecondition | Code::NotFound | Code::InvalidArgument | Code::PermissionDenied
    )
}

fn msg(m: Out) -> pb::SessionRequest {
    pb::SessionRequest { msg: Some(m) }
}

impl Agent {
    pub fn new(
        cfg: Config,
        worker_id: String,
        containment: Containment,
    ) -> Result<Arc<Agent>, AgentError> {
        let token = cfg
            .resolve_token()
            .and_then(|t| drover_proto::auth::BearerToken::new(t.as_deref()))
            .map_err(AgentError::Token)?;
        let mut clients = Vec::new();
        for addr in &cfg.coordinator {
            // Short connect and keep-alive timeouts: a coordinator host that vanished
            // (no reset, packets dropped) is given up within seconds, not minutes.
            let endpoint = cfg
                .client_tls()
                .endpoint(addr)
                .map_err(|e| AgentError::Address(addr.clone(), e.to_string()))?
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(KEEPALIVE)
                .keep_alive_timeout(KEEPALIVE)
                .keep_alive_while_idle(true);
            clients.push(
                WorkerServiceClient::with_interceptor(endpoint.connect_lazy(), token.clone())
                    .max_decoding_message_size(16 * 1024 * 1024),
            );
        }
        if clients.is_empty() {
            return Err(AgentError::Address(
                String::new(),
                "no coordinator address configured".into(),
            ));
        }
        let coordinators = Coordinators {
            addrs: cfg.coordinator.clone(),
            clients,
            current: Default::default(),
        };
        let hostname = hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default();
        let monitor = Monitor::new(
            cfg.work_root(),
            Limits {
                min_disk_free_bytes: cfg.min_disk_free_bytes,
                min_memory_available_bytes: cfg.min_memory_available_bytes,
            },
        );
        let slot_dirs = Slots::new(cfg.work_root(), cfg.pids_dir(), cfg.slots());
        let setup = JobSetup::from_config(&cfg, &worker_id).map_err(AgentError::Setup)?;
        let base_env = setup.base_env(crate::jobsetup::worker_environment());
        let ahead = cfg.lease_ahead;
        Ok(Arc::new(Agent {
            containment: Arc::new(containment),
            setup,
            base_env,
            monitor,
            slot_dirs,
            slots: cfg.slots(),
            ahead,
            run_permits: Arc::new(Semaphore::new(cfg.slots() as usize)),
            cfg,
            worker_id,
            hostname,
            coordinators,
            ready: std::sync::Once::new(),
            // Slow start: the room to hold ahead is offered once a job has run shorter
            // than the hold, so a worker of long jobs never holds one.
            state: Mutex::new(State {
                withheld: ahead,
                ..State::default()
            }),
            changed: Notify::new(),
            draining: CancellationToken::new(),
        }))
    }

    /// Tells systemd the worker is up, once.
    fn signal_ready(&self) {
        self.ready.call_once(|| {
            drover_telemetry::sdnotify::ready();
        });
    }

    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps a session open until `shutdown`, then drains: takes no new jobs, lets running
    /// ones finish for up to `drain_timeout`, stops and hands back the rest (released: not
    /// counted as a retry), and returns once every result was delivered or refused.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let monitor = tokio::spawn(self.monitor.clone().run());
        let session = tokio::spawn(self.clone().session_loop());
        shutdown.cancelled().await;
        self.draining.cancel();
        let running = self.lock().attempts.len();
        tracing::info!(
            running,
            drain_timeout = %drover_core::duration::format(self.cfg.drain_timeout),
            "draining"
        );
        let deadline = tokio::time::sleep(self.cfg.drain_timeout);
        tokio::pin!(deadline);
        let mut timed_out = false;
        loop {
            let changed = self.changed.notified();
            if self.lock().attempts.is_empty() {
                break;
            }
            if timed_out {
                changed.await;
                continue;
            }
            tokio::select! {
                _ = changed => {}
                _ = &mut deadline => {
                    timed_out = true;
                    self.hand_back_all();
                }
            }
        }
        session.abort();
        monitor.abort();
        tracing::info!("drained");
    }

    /// Stops every running attempt; each is then reported as released.
    fn hand_back_all(&self) {
        let stops: Vec<_> = self
            .lock()
            .attempts
            .values()
            .map(|t| (t.stop.clone(), t.reason.clone()))
            .collect();
        tracing::info!(
            count = stops.len(),
            "drain timeout: handing back running attempts"
        );
        for (stop, reason) in stops {
            if let Ok(mut r) = reason.lock() {
                r.get_or_insert(StopReason::Shutdown);
            }
            stop.cancel();
        }
    }

    /// Keeps one session open, moving to the next coordinator address whenever the
    /// current one fails or ends. The next address is tried at once; only after every
    /// address failed in a row does the worker wait (backoff). Running attempts go on
    /// meanwhile and are listed in the next coordinator's `Hello`.
    async fn session_loop(self: Arc<Self>) {
        let mut backoff = retry_strategy();
        let n = self.coordinators.clients.len();
        let mut failed_in_a_row = 0usize;
        loop {
            let i = self.coordinators.current();
            let addr = self.coordinators.addrs[i].clone();
            let mut welcomed = false;
            match self.clone().one_session(i, &mut welcomed).await {
                Ok(()) => tracing::info!(coordinator = %addr, "coordinator ended the session"),
                Err(e) => {
                    tracing::warn!(coordinator = %addr, error = %e, "coordinator session failed; reconnecting")
                }
            }
            self.lock().session = None;
            // Connected, or failed and retrying: either way the worker is up (systemd).
            self.signal_ready();
            if welcomed {
                backoff = retry_strategy();
                failed_in_a_row = 0;
            }
            failed_in_a_row += 1;
            if n > 1 {
                self.coordinators.advance(i);
                tracing::info!(next = %self.coordinators.addrs[self.coordinators.current()],
                    "trying the next coordinator");
            }
            if failed_in_a_row.is_multiple_of(n) {
                let wait = backoff.next().unwrap_or(Duration::from_secs(5));
                tokio::time::sleep(wait).await;
            }
        }
    }

    /// One session with coordinator `i`; `welcomed` tells whether it got as far as Welcome.
    async fn one_session(self: Arc<Self>, i: usize, welcomed: &mut bool) -> Result<(), Status> {
        let (mut session, rx) = Session::open(self.clone());
        let opened = self.coordinators.clients[i]
            .clone()
            .session(UnboundedReceiverStream::new(rx))
            .await;
        let result = match opened {
            Ok(inbound) => session.run(inbound.into_inner()).await,
            Err(e) => Err(e),
        };
        *welcomed = session.welcomed;
        result
    }

    fn stop(&self, s: &pb::StopAttempt) {
        let reason = if s.code == Code::Cancelled as i32 {
            StopReason::Cancelled
        } else {
            StopReason::Stale
        };
        tracing::info!(attempt_id = %s.attempt_id, reason = %s.reason, "coordinator stopped attempt");
        if let Some(t) = self.lock().attempts.get(&s.attempt_id) {
            if let Ok(mut r) = t.reason.lock() {
                r.get_or_insert(reason);
            }
            t.stop.cancel();
        }
    }

    fn accept(self: Arc<Self>, a: pb::Assignment) {
        let tracked = Tracked {
            stop: CancellationToken::new(),
            reason: Arc::new(Mutex::new(None)),
        };
        let (stop, reason) = (tracked.stop.clone(), tracked.reason.clone());
        let refuse = {
            let mut st = self.lock();
            let refuse = self.draining.is_cancelled()
                || !self.monitor.paused_reason().is_empty()
                || self.free_room(&st) == 0
                || st.attempts.contains_key(&a.attempt_id);
            if !refuse {
                st.live += 1;
                st.attempts.insert(a.attempt_id.clone(), tracked);
            }
            refuse
        };
        if refuse {
            // Hand it straight back; released attempts do not count as retries.
            tracing::info!(attempt_id = %a.attempt_id, "no slot (or draining): releasing");
            tokio::spawn(async move {
                self.report_unstarted(a.attempt_id, released()).await;
            });
            return;
        }
        let span = tracing::info_span!("run_attempt", job_id = %a.job_id,
            attempt_id = %a.attempt_id, worker_id = %self.worker_id);
        drover_telemetry::set_parent(&span, &a.trace_parent);
        tokio::spawn(
            async move {
                let id = a.attempt_id.clone();
                match self.slot_for(&stop).await {
                    Ok(permit) => self.run_attempt(a, stop, reason, permit).await,
                    Err(why) => self.unhold(a.attempt_id, why, &reason).await,
                }
                self.lock().attempts.remove(&id);
                self.changed.notify_waiters();
            }
            .instrument(span),
        );
    }

    /// A slot to run in: at once when one is free; for a job leased ahead, the moment one
    /// frees (in lease order), unless the job is stopped, the worker drains or the hold
    /// runs out first.
    async fn slot_for(&self, stop: &CancellationToken) -> Result<OwnedSemaphorePermit, Unheld> {
        if let Ok(p) = self.run_permits.clone().try_acquire_owned() {
            return Ok(p);
        }
        tracing::debug!("every slot busy: held until one frees");
        tokio::select! {
            biased;
            _ = stop.cancelled() => Err(Unheld::Stopped),
            _ = self.draining.cancelled() => Err(Unheld::Draining),
            p = self.run_permits.clone().acquire_owned() => p.map_err(|_| Unheld::Draining),
            _ = tokio::time::sleep(self.cfg.lease_ahead_hold) => Err(Unheld::Expired),
        }
    }

    /// Ends a held job that never started: reports it (cancelled, or released: not counted
    /// as a retry) and frees its room. The room of one whose hold ran out is withheld.
    async fn unhold(
        self: &Arc<Self>,
        attempt_id: String,
        why: Unheld,
        reason: &Mutex<Option<StopReason>>,
    ) {
        use pb::finish_attempt_request::Result as R;
        let stop_reason = reason.lock().ok().and_then(|r| *r);
        let result = match why {
            Unheld::Stopped => match stop_reason {
                Some(StopReason::Cancelled) => {
                    Some(R::Cancelled(pb::finish_attempt_request::Cancelled {}))
                }
                Some(StopReason::Shutdown) => Some(released()),
                // Not ours any more: nothing to report.
                _ => None,
            },
            Unheld::Draining => Some(released()),
            Unheld::Expired => {
                tracing::info!(%attempt_id, hold = %drover_core::duration::format(self.cfg.lease_ahead_hold),
                    "held job handed back: no slot freed within lease_ahead_hold");
                {
                    let mut st = self.lock();
                    st.live = st.live.saturating_sub(1);
                    st.withheld += 1;
                }
                self.report_unstarted(attempt_id, released()).await;
                return;
            }
        };
        if let Some(result) = result {
            self.report_unstarted(attempt_id, result).await;
        }
        self.free_slot();
    }

    /// Reports an attempt that never ran (no process, no log).
    async fn report_unstarted(
        &self,
        attempt_id: String,
        result: pb::finish_attempt_request::Result,
    ) {
        let req = pb::FinishAttemptRequest {
            attempt_id,
            result: Some(result),
            ..Default::default()
        };
        if let Err(e) = self
            .call(|mut c| {
                let req = req.clone();
                async move { c.finish_attempt(req).await }
            })
            .await
        {
            tracing::warn!(attempt_id = %req.attempt_id, error = %e, "result refused");
        }
    }

    /// Room for more attempts: slots plus lease_ahead, less the attempts counted against
    /// them and the room withheld.
    fn free_room(&self, st: &State) -> u32 {
        (self.slots + self.ahead).saturating_sub(st.live + st.withheld)
    }

    /// Offers the room withheld at start or after held jobs were handed back: a job that
    /// ran shorter than the hold just ended, so jobs leased ahead are likely to start in
    /// time.
    fn restore_ahead(&self) {
        let mut st = self.lock();
        let n = std::mem::take(&mut st.withheld);
        if n == 0 || self.draining.is_cancelled() {
            return;
        }
        tracing::debug!(room = n, "leasing ahead again");
        if let Some(tx) = &st.session {
            let _ = tx.send(msg(Out::Credit(pb::Credit { slots: n })));
        }
    }

    /// Calls the coordinator until it answers; gives up only on a definite refusal.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: Fn(WorkerServiceClient<drover_proto::auth::AuthChannel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        RetryIf::start(
            retry_strategy(),
            || f(self.coordinators.client()),
            |e: &Status| {
                tracing::debug!(error = %e, "call to coordinator failed; retrying");
                transient(e)
            },
        )
        .await
        .map(|r| r.into_inner())
    }

    /// Runs the attempt and reports its result, then offers the coordinator the slot again.
    /// The credit goes last: the coordinator counts free room from the attempts stored as
    /// running, so a credit sent before the result is stored finds no room, and the claim it
    /// prompts is wasted (measured: more than half of all claims, BENCHMARKS.md).
    async fn run_attempt(
        self: &Arc<Self>,
        a: pb::Assignment,
        stop: CancellationToken,
        reason: Arc<Mutex<Option<StopReason>>>,
        permit: OwnedSemaphorePermit,
    ) {
        if !self.attempt_and_report(a, stop, reason, permit).await {
            self.free_slot();
        }
    }

    /// Returns whether the slot was already given back (with the result).
    async fn attempt_and_report(
        self: &Arc<Self>,
        a: pb::Assignment,
        stop: CancellationToken,
        reason: Arc<Mutex<Option<StopReason>>>,
        permit: OwnedSemaphorePermit,
    ) -> bool {
        let attempt_id = a.attempt_id.clone();
        tracing::info!(argv = ?a.argv, "starting attempt");
        let started = std::time::Instant::now();
        let mut permit = Some(permit);
        let mut output_error: Option<String> = None;
        let (outcome, tail, chunks, cg_usage) = match self.slot_dirs.open(&attempt_id) {
            Err(e) => {
                let root = self.cfg.work_root();
                let why = format!("creating work directory in {}: {e}", root.display());
                (ExitOutcome::SpawnError(why), Vec::new(), 0, None)
            }
            Ok(mut ws) => {
                let mut r = match self.setup.prepare_work_dir(&ws.work_dir) {
                    Err(e) => {
                        let why =
                            format!("preparing work directory {}: {e}", ws.work_dir.display());
                        Some((ExitOutcome::SpawnError(why), Vec::new(), 0, None))
                    }
                    Ok(()) => self.execute(&a, &ws, stop, reason.clone()).await,
                };
                if let Some((ExitOutcome::Exited(0), _, _, _)) = &r {
                    if !a.outputs.is_empty() {
                        if let Err(e) = self.upload_outputs(&a, &ws.work_dir).await {
                            tracing::warn!(error = %e, "outputs not kept");
                            output_error = Some(e);
                        }
                    }
                }
                if let Some((o, _, _, _)) = &mut r {
                    if let Some(e) = &output_error {
                        *o = ExitOutcome::SpawnError(e.clone());
                    }
                }
                // The work directory is emptied in every case, before anything is reported
                // (and so before the slot's credit goes back).
                ws.release().await;
                // The slot is free: a held job starts in it while this result is reported.
                drop(permit.take());
                match r {
                    Some(r) => r,
                    None => return false, // stale lease: nothing more to report
                }
            }
        };
        // Given back before the slot counts as free (below), on every path.
        drop(permit);
        let stop_reason = reason.lock().ok().and_then(|r| *r);
        if stop_reason == Some(StopReason::Stale) {
            return false;
        }
        use pb::finish_attempt_request::Result as R;
        let result = match outcome {
            ExitOutcome::Exited(code) => R::Exited(pb::ExitStatus {
                code: Some(code),
                signal: None,
            }),
            ExitOutcome::Signaled(sig) => R::Exited(pb::ExitStatus {
                code: None,
                signal: Some(sig),
            }),
            ExitOutcome::SpawnError(e) if output_error.is_some() => R::OutputError(e),
            ExitOutcome::SpawnError(e) => R::SpawnError(e),
            ExitOutcome::TimedOut => R::TimedOut(pb::finish_attempt_request::TimedOut {}),
            ExitOutcome::Stopped => match stop_reason {
                Some(StopReason::Cancelled) => {
                    R::Cancelled(pb::finish_attempt_request::Cancelled {})
                }
                _ => R::Released(pb::finish_attempt_request::Released {}),
            },
        };
        let usage = self.monitor.untrack(&attempt_id);
        // The cgroup's own accounting, where there is one, counts every process the
        // attempt had (also short-lived ones the sampler never saw).
        let cg = cg_usage.unwrap_or_default();
        let failed = matches!(
            &result,
            R::Exited(pb::ExitStatus { code: Some(c), .. }) if *c != 0
        ) || matches!(
            &result,
            R::Exited(pb::ExitStatus {
                signal: Some(_),
                ..
            })
        );
        let oom_limit_bytes = match (cg.oom_kills, a.memory_limit_bytes) {
            (n, limit) if n > 0 && failed && limit > 0 => limit,
            _ => 0,
        };
        let req = pb::FinishAttemptRequest {
            attempt_id: attempt_id.clone(),
            result: Some(result),
            output_tail: tail,
            log_chunk_count: chunks,
            peak_rss_bytes: cg.peak_memory_bytes.unwrap_or(usage.peak_rss_bytes),
            cpu_time: Some(drover_proto::durations::from_millis(
                cg.cpu_time_ms.unwrap_or(usage.cpu_time_ms),
            )),
            oom_limit_bytes,
            return_slot: !self.draining.is_cancelled(),
        };
        // From here the slot counts as free: the coordinator, asked to, offers it again
        // once the result is stored, and that assignment can arrive before this call's
        // answer. (Until the result is stored the attempt counts as running there, so no
        // assignment takes the slot early.) Not while draining: no new jobs then.
        if req.return_slot {
            self.release_live();
        }
        let returned = match self
            .call(|mut c| {
                let req = req.clone();
                async move { c.finish_attempt(req).await }
            })
            .await
        {
            Ok(r) => {
                tracing::info!(state = r.state, reason = %r.reason, "result recorded");
                r.slot_returned
            }
            Err(e) => {
                tracing::warn!(error = %e, "result refused");
                false
            }
        };
        // Another coordinator answered (or an older one that does not return slots): the
        // session's coordinator still needs the credit.
        if req.return_slot && !returned {
            self.send_credit();
        }
        if started.elapsed() < self.cfg.lease_ahead_hold {
            self.restore_ahead();
        }
        req.return_slot
    }

    /// Uploads the files matching the job's output globs. Any failure is returned as the
    /// reason the attempt's outputs were not kept.
    async fn upload_outputs(&self, a: &pb::Assignment, work_dir: &Path) -> Result<(), String> {
        let dir = work_dir.to_path_buf();
        let globs = a.outputs.clone();
        let files = tokio::task::spawn_blocking(move || outputs::collect(&dir, &globs))
            .await
            .map_err(|e| e.to_string())??;
        for f in files {
            let header = pb::ArtifactHeader {
                attempt_id: a.attempt_id.clone(),
                name: f.name.clone(),
                size: f.size,
                sha256: f.sha256.clone(),
            };
            let path = f.path.clone();
            self.call(|mut c| {
                let header = header.clone();
                let path = path.clone();
                async move {
                    // Re-read the file on every try: a failed upload stored nothing.
                    let file = tokio::fs::File::open(&path)
                        .await
                        .map_err(|e| Status::internal(format!("{}: {e}", path.display())))?;
                    let head = futures::stream::once(async move {
                        pb::UploadArtifactRequest {
                            part: Some(pb::upload_artifact_request::Part::Header(header)),
                        }
                    });
                    // A read error ends the body early; the coordinator then sees a size or
                    // checksum mismatch and refuses the file.
                    let body = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024)
                        .take_while(|r| std::future::ready(r.is_ok()))
                        .filter_map(|r| std::future::ready(r.ok()))
                        .map(|b| pb::UploadArtifactRequest {
                            part: Some(pb::upload_artifact_request::Part::Data(b.to_vec())),
                        });
                    c.upload_artifact(head.chain(body)).await
                }
            })
            .await
            .map_err(|e| format!("uploading {}: {}", f.name, e.message()))?;
            tracing::info!(name = %f.name, size = f.size, "output uploaded");
        }
        Ok(())
    }

    fn free_slot(&self) {
        self.release_live();
        self.send_credit();
    }

    /// One process fewer counts against the slots.
    fn release_live(&self) {
        let mut st = self.lock();
        st.live = st.live.saturating_sub(1);
    }

    /// Offers the coordinator one slot again on the session (not while draining).
    fn send_credit(&self) {
        let st = self.lock();
        if let Some(tx) = &st.session {
            if !self.draining.is_cancelled() {
                let _ = tx.send(msg(Out::Credit(pb::Credit { slots: 1 })));
            }
        }
    }

    /// Runs the process with its output going to the spool, and ships the spool to the
    /// coordinator. Returns None if the lease turned out to be stale.
    async fn execute(
        self: &Arc<Self>,
        a: &pb::Assignment,
        ws: &Workspace,
        stop: CancellationToken,
        reason: Arc<Mutex<Option<StopReason>>>,
    ) -> Option<(ExitOutcome, Vec<u8>, u64, Option<CgroupUsage>)> {
        let attempt_id = a.attempt_id.clone();
        let work_dir = ws.work_dir.clone();
        // The job's environment: the inherited minimum, its own env, its secrets (read
        // here; a reference that cannot be resolved fails the job for good), DROVER_*.
        let mut env = self.base_env.clone();
        env.extend(a.env.clone());
        let secrets = match self.setup.resolve_secrets(a.secret_env.iter()) {
            Ok(s) => s,
            Err(e) => {
                return Some((ExitOutcome::SpawnError(e), Vec::new(), 0, None));
            }
        };
        let redactors = [
            Redactor::new(secrets.values().map(|v| v.as_bytes().to_vec())),
            Redactor::new(secrets.values().map(|v| v.as_bytes().to_vec())),
        ];
        env.extend(secrets);
        env.insert("DROVER_JOB_ID".into(), a.job_id.clone());
        env.insert("DROVER_ATTEMPT_ID".into(), attempt_id.clone());
        env.insert("DROVER_ATTEMPT".into(), a.attempt_number.to_string());
        env.insert("DROVER_WORK_DIR".into(), work_dir.display().to_string());
        // An instrumented CLI joins the trace as a child of this attempt.
        if let Some(tp) = drover_telemetry::traceparent() {
            env.insert("TRACEPARENT".into(), tp);
        }
        let program = match a.argv.first() {
            Some(p) => {
                match self
                    .setup
                    .resolve_program(p, env.get("PATH").map(String::as_str), &work_dir)
                {
                    Ok(path) => path,
                    Err(e) => {
                        tracing::warn!(%attempt_id, error = %e, "job refused");
                        return Some((ExitOutcome::SpawnError(e), Vec::new(), 0, None));
                    }
                }
            }
            None => {
                return Some((
                    ExitOutcome::SpawnError("argv is empty".into()),
                    Vec::new(),
                    0,
                    None,
                ));
            }
        };
        let limits = JobLimits {
            memory_bytes: (a.memory_limit_bytes > 0).then_some(a.memory_limit_bytes),
            cpu_millis: (a.cpu_millis > 0).then_some(a.cpu_millis),
            pids: (a.pids_limit > 0).then_some(a.pids_limit),
        };
        // A limit that cannot be enforced here is refused, never silently ignored.
        let cgroup = match self.containment.attempt(&attempt_id, &limits, ws.slot()) {
            Ok(cg) => cg.map(Arc::new),
            Err(why) => {
                return Some((ExitOutcome::SpawnError(why), Vec::new(), 0, None));
            }
        };
        let (mut writer, mut reader) =
            spool::create(&self.cfg.spool_dir(), &attempt_id, self.cfg.max_spool_bytes);

        // Ships spooled chunks in order; a refusal means our lease is gone.
        let sender = {
            let agent = self.clone();
            let attempt_id = attempt_id.clone();
            let stop = stop.clone();
            let reason = reason.clone();
            tokio::spawn(async move {
                // Sends in order, acknowledged in order. Each send is a task of its own,
                // so it travels while the next batch is read from disk.
                let mut in_flight = std::collections::VecDeque::new();
                let mut ended = false;
                loop {
                    while !ended && in_flight.len() < LOG_BATCHES_IN_FLIGHT {
                        // With nothing in flight, wait for output; otherwise take only what
                        // is already written (a refusal must be seen at once).
                        let batch = if in_flight.is_empty() {
                            reader.next_batch(LOG_BATCH_BYTES).await
                        } else if reader.has_more() {
                            reader.next_batch_ahead(LOG_BATCH_BYTES).await
                        } else {
                            break;
                        };
                        match batch {
                            Ok(b) if b.is_empty() => ended = true,
                            Ok(b) => {
                                let last = b.last().map(|c| c.seq).unwrap_or(0);
                                let req = append_request(&attempt_id, b);
                                let agent = agent.clone();
                                in_flight.push_back(tokio::spawn(async move {
                                    let r = agent
                                        .call(|mut c| {
                                            let req = req.clone();
                                            async move { c.append_logs(req).await }
                                        })
                                        .await;
                                    (last, r)
                                }));
                            }
                            Err(e) => {
                                tracing::error!(%attempt_id, error = %e, "reading log spool");
                                ended = true;
                            }
                        }
                    }
                    let Some(sent) = in_flight.pop_front() else {
                        break;
                    };
                    match sent.await {
                        Ok((last, Ok(_))) => reader.ack(last),
                        Ok((_, Err(e))) => {
                            tracing::warn!(%attempt_id, error = %e, "log refused: lease lost; stopping process");
                            if let Ok(mut r) = reason.lock() {
                                r.get_or_insert(StopReason::Stale);
                            }
                            stop.cancel();
                            break;
                        }
                        Err(e) => {
                            tracing::error!(%attempt_id, error = %e, "log sender failed");
                            break;
                        }
                    }
                }
                // Sends still in flight after a refusal are not waited for.
                for t in &in_flight {
                    t.abort();
                }
                let _ = reader.remove();
            })
        };

        let (tx, rx) = mpsc::channel::<OutputChunk>(64);
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let spec = RunSpec {
            argv: a.argv.clone(),
            env,
            work_dir: work_dir.clone(),
            timeout: Some(drover_proto::durations::or_zero(&a.timeout)).filter(|t| !t.is_zero()),
            kill_grace: self.cfg.kill_grace,
            pgid_file: Some(ws.group_file.clone()),
            started: Some(started_tx),
            cgroup: cgroup.clone(),
            subreaper_attempt: cgroup.is_none().then(|| attempt_id.clone()),
            setup: ChildSetup {
                program: Some(program),
                clear_env: true,
                run_as: self
                    .setup
                    .run_as
                    .as_ref()
                    .map(|r| (r.uid, r.gid, r.groups.clone())),
            },
        };
        let monitor = self.monitor.clone();
        let tracked_id = attempt_id.clone();
        tokio::spawn(async move {
            if let Ok(pgid) = started_rx.await {
                monitor.track(&tracked_id, pgid);
            }
        });
        // The pump writes output to local disk only, so the child never waits on the network.
        // Secret values are masked before output reaches the disk or the network.
        let pump = tokio::spawn(async move {
            let mut tail = TailBuffer::new(TAIL_BYTES);
            let mut merged = Merged::new(rx);
            let mut redactors = redactors;
            let index = |s: StreamKind| usize::from(s == StreamKind::Stderr);
            while let Some(chunk) = merged.next().await {
                let r = &mut redactors[index(chunk.stream)];
                // Without secrets the chunk goes on as it is, uncopied.
                let data = if r.is_empty() {
                    chunk.data
                } else {
                    r.push(&chunk.data)
                };
                if data.is_empty() {
                    continue;
                }
                tail.push(&data);
                let now = now_unix_ms();
                if let Err(e) = writer.append(chunk.stream, &data, now).await {
                    tracing::error!(error = %e, "writing log spool");
                }
            }
            for stream in [StreamKind::Stdout, StreamKind::Stderr] {
                let rest = redactors[index(stream)].finish();
                if !rest.is_empty() {
                    tail.push(&rest);
                    if let Err(e) = writer.append(stream, &rest, now_unix_ms()).await {
                        tracing::error!(error = %e, "writing log spool");
                    }
                }
            }
            let count = writer.finish().await.unwrap_or(0);
            (tail.contents(), count)
        });
        let outcome = process::run(spec, tx, stop).await;
        let cg_usage = cgroup.as_ref().map(|cg| {
            let u = cg.usage();
            cg.remove();
            u
        });
        let (tail, count) = pump.await.unwrap_or_default();
        tracing::debug!(?outcome, chunks = count, "process ended; output spooled");
        let _ = sender.await;
        tracing::debug!("output shipped");
        if reason.lock().ok().and_then(|r| *r) == Some(StopReason::Stale) {
            return None;
        }
        Some((outcome, tail, count, cg_usage))
    }
}

/// Output chunks as received from the process, with those already queued from the same
/// stream merged (into frames of at most MERGE_BYTES): a chatty job then makes fewer, larger spool frames and
/// log rows than one per pipe read (often a line each). Order is kept exactly.
struct Merged {
    rx: mpsc::Receiver<OutputChunk>,
    held: Option<OutputChunk>,
}

impl Merged {
    fn new(rx: mpsc::Receiver<OutputChunk>) -> Self {
        Merged { rx, held: None }
    }

    async fn next(&mut self) -> Option<OutputChunk> {
        let mut chunk = match self.held.take() {
            Some(c) => c,
            None => self.rx.recv().await?,
        };
        while chunk.data.len() < MERGE_BYTES {
            match self.rx.try_recv() {
                Ok(next)
                    if next.stream == chunk.stream
                        && chunk.data.len() + next.data.len() <= MERGE_BYTES =>
                {
                    chunk.data.extend_from_slice(&next.data)
                }
                Ok(next) => {
                    self.held = Some(next);
                    break;
                }
                Err(_) => break,
            }
        }
        Some(chunk)
    }
}

/// One open session with a coordinator, from Hello on: one method per kind of message the
/// coordinator sends, and heartbeats in between.
struct Session {
    agent: Arc<Agent>,
    tx: mpsc::UnboundedSender<pb::SessionRequest>,
    heartbeat: tokio::time::Interval,
    welcomed: bool,
}

impl Session {
    /// Queues the Hello and makes this the agent's session; returns the outbound stream.
    fn open(agent: Arc<Agent>) -> (Session, mpsc::UnboundedReceiver<pb::SessionRequest>) {
        let (tx, rx) = mpsc::unbounded_channel();
        {
            // Hello and the session handle are set together, so no credit is sent before
            // the hello that accounts for it.
            let mut st = agent.lock();
            let hello = pb::Hello {
                worker_id: agent.worker_id.clone(),
                hostname: agent.hostname.clone(),
                labels: agent.cfg.labels.clone(),
                queues: agent.cfg.queues.clone(),
                slots: agent.slots,
                lease_ahead: agent.ahead,
                running_attempts: st.attempts.keys().cloned().collect(),
                free_slots: if agent.draining.is_cancelled() {
                    0
                } else {
                    agent.free_room(&st)
                },
                version: env!("CARGO_PKG_VERSION").to_string(),
                containment: agent.containment.describe(),
                protocol_version: drover_core::protocol::CURRENT,
            };
            let _ = tx.send(msg(Out::Hello(hello)));
            st.session = Some(tx.clone());
        }
        let session = Session {
            agent,
            tx,
            heartbeat: heartbeat_every(Duration::from_secs(2)),
            welcomed: false,
        };
        (session, rx)
    }

    /// Handles messages until the coordinator ends the session (Ok) or it fails.
    async fn run(
        &mut self,
        mut inbound: tonic::Streaming<pb::SessionResponse>,
    ) -> Result<(), Status> {
        loop {
            tokio::select! {
                m = inbound.message() => match m? {
                    Some(pb::SessionResponse { msg: Some(m) }) => self.on_message(m),
                    Some(_) => {}
                    None => return Ok(()),
                },
                _ = self.heartbeat.tick() => self.send_heartbeat(),
            }
        }
    }

    fn on_message(&mut self, m: In) {
        match m {
            In::Welcome(w) => self.on_welcome(&w),
            In::Assign(a) => self.on_assign(a),
            In::Stop(s) => self.on_stop(&s),
        }
    }

    /// The coordinator took the Hello: heartbeats from now on at the interval it asks for.
    fn on_welcome(&mut self, w: &pb::Welcome) {
        self.welcomed = true;
        self.agent.signal_ready();
        tracing::info!(coordinator = %w.coordinator_id, "connected to coordinator");
        let every =
            drover_proto::durations::or_zero(&w.heartbeat_interval).max(Duration::from_millis(100));
        self.heartbeat = heartbeat_every(every);
    }

    fn on_assign(&self, a: pb::Assignment) {
        self.agent.clone().accept(a);
    }

    fn on_stop(&self, s: &pb::StopAttempt) {
        self.agent.stop(s);
    }

    fn send_heartbeat(&self) {
        let ids: Vec<String> = self.agent.lock().attempts.keys().cloned().collect();
        let (resources, paused_reason) = self.agent.monitor.latest();
        let _ = self.tx.send(msg(Out::Heartbeat(pb::Heartbeat {
            running_attempts: ids,
            resources: Some(resources),
            paused_reason,
            draining: self.agent.draining.is_cancelled(),
        })));
    }
}

/// A heartbeat timer that does not burst after a stall.
fn heartbeat_every(every: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval(every);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

/// An AppendLogs request carrying spooled chunks.
fn append_request(attempt_id: &str, batch: Vec<spool::SpooledChunk>) -> pb::AppendLogsRequest {
    pb::AppendLogsRequest {
        attempt_id: attempt_id.to_string(),
        chunks: batch
            .into_iter()
            .map(|c| pb::LogChunk {
                attempt_id: String::new(),
                attempt_number: 0,
                seq: c.seq,
                stream: match c.stream {
                    StreamKind::Stdout => pb::LogStream::Stdout as i32,
                    StreamKind::Stderr => pb::LogStream::Stderr as i32,
                },
                data: c.data,
                time: Some(drover_proto::Timestamp {
                    seconds: c.time_unix_ms.div_euclid(1000),
                    nanos: (c.time_unix_ms.rem_euclid(1000) * 1_000_000) as i32,
                }),
            })
            .collect(),
    }
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(stream: StreamKind, data: &[u8]) -> OutputChunk {
        OutputChunk {
            stream,
            data: data.to_vec(),
        }
    }

    #[tokio::test]
    async fn merging_keeps_every_byte_in_order_and_streams_apart() {
        let (tx, rx) = mpsc::channel(16);
        for c in [
            chunk(StreamKind::Stdout, b"a"),
            chunk(StreamKind::Stdout, b"b"),
            chunk(StreamKind::Stderr, b"c"),
            chunk(StreamKind::Stderr, b"d"),
            chunk(StreamKind::Stdout, b"e"),
        ] {
            tx.send(c).await.unwrap();
        }
        drop(tx);
        let mut m = Merged::new(rx);
        let mut got = Vec::new();
        while let Some(c) = m.next().await {
            got.push((c.stream, c.data));
        }
        assert_eq!(
            got,
            vec![
                (StreamKind::Stdout, b"ab".to_vec()),
                (StreamKind::Stderr, b"cd".to_vec()),
                (StreamKind::Stdout, b"e".to_vec()),
            ]
        );
    }

    #[tokio::test]
    async fn merged_frames_stay_near_the_limit() {
        let (tx, rx) = mpsc::channel(64);
        let piece = vec![b'x'; 24 * 1024];
        for _ in 0..10 {
            tx.send(chunk(StreamKind::Stdout, &piece)).await.unwrap();
        }
        drop(tx);
        let mut m = Merged::new(rx);
        let mut sizes = Vec::new();
        while let Some(c) = m.next().await {
            sizes.push(c.data.len());
        }
        assert_eq!(sizes.iter().sum::<usize>(), 10 * piece.len());
        assert!(sizes.iter().all(|&n| n <= MERGE_BYTES), "{sizes:?}");
        assert!(sizes.len() < 10, "nothing was merged: {sizes:?}");
    }
}
