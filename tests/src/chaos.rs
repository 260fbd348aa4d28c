//! The chaos runner: Drover under random, seeded faults, then a check of its promises.
//!
//! It starts its own PostgreSQL server (so it can stop it), two coordinators sharing it and
//! four workers, each worker behind a [`Proxy`] the runner controls; workers 0 and 2 talk to
//! coordinator 0, workers 1 and 3 to coordinator 1. It submits jobs that each append
//! `job-id attempt-id attempt-number` to a shared ledger file, print numbered lines that
//! name the job and attempt, with short sleeps between them, and exit 0, 1 (transient) or
//! 127 (permanent) by a plan drawn from the seed. Meanwhile it injects faults, one at a time at seeded random moments:
//! SIGKILL of a worker or a coordinator (then a restart), PostgreSQL stop/start, a cut,
//! slowed or reset worker link, and SIGSTOP/SIGCONT of a worker. Then it lets every job
//! finish and checks what the brief promises; see [`check`].
//!
//! Used by `tests/tests/chaos.rs` (a short seeded run in CI) and by the `drover-chaos`
//! binary for long runs.

use crate::netns::{Host, Net};
use crate::{connect, spawn_coordinator, worker_launch, CoordinatorOpts, Proc, Proxy};
use anyhow::{bail, Context, Result};
use drover_pgserver::PgServer;
use drover_proto::v1 as pb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The retry policy every chaos job is submitted with; [`check`] verifies waits against
/// these numbers with its own arithmetic, not the product's.
pub const MAX_RETRIES: u32 = 3;
pub const INITIAL_BACKOFF_MS: u64 = 200;
pub const MULTIPLIER: f64 = 2.0;
pub const JITTER: f64 = 0.2;
/// Lost attempts that a job may have before it is parked (the product's limit).
pub const MAX_LOST: u32 = drover_core::retry::MAX_LOST_ATTEMPTS;
/// Lines each job prints; an attempt with a result must have stored exactly these.
pub const LINES: u32 = 30;
/// The concurrency key some jobs carry, and its limit: [`check`] verifies, from the
/// processes' own start and end times, that no more than this many ran at once.
pub const KEY: &str = "chaos:site";
pub const KEY_LIMIT: u32 = 2;
/// Percentage of jobs that carry [`KEY`].
const KEYED_PERCENT: u32 = 30;
/// A schedule firing every second throughout the faults, catching up every missed tick:
/// [`check`] verifies that each tick ran exactly once, as one job.
pub const SCHEDULE: &str = "chaos-ticks";
/// The environment variable that marks a tick's job (it names the tick ledger).
const TICK_ENV: &str = "CHAOS_TICKS";
/// How far behind the pause the last fired tick may be before the scheduler counts as
/// stalled (a liveness bound, generous for faults that were held up to 3 s).
const TICK_SLACK_MS: f64 = 10_000.0;

const WORKERS: usize = 4;
const SLOTS: u32 = 4;
const LEASE_TTL_MS: u64 = 2_000;

#[derive(Clone, Debug)]
pub struct Config {
    pub seed: u64,
    pub jobs: usize,
    /// How long faults are injected. Jobs are submitted during its first 80 %.
    pub chaos: Duration,
    /// How long every job may take to finish once the faults stop.
    pub drain_limit: Duration,
    /// Scratch directory (logs, ledger, database); a temporary one when None.
    pub dir: Option<PathBuf>,
    /// Hosts on a real (virtual) network instead of loopback proxies: PostgreSQL and
    /// coordinator 0 on one network namespace, coordinator 1 on another, each worker on
    /// its own, the runner on one more (tests/src/netns.rs). Link faults are then a
    /// host's link down (cut), tc netem or a bandwidth limit (delay), and a link flap
    /// (reset). Needs root; `run` fails with the reason where namespaces cannot be made.
    pub netns: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    KillWorker,
    KillCoordinator,
    StopPostgres,
    CutLink,
    DelayLink,
    ResetLink,
    PauseWorker,
}

const FAULTS: [Fault; 7] = [
    Fault::KillWorker,
    Fault::KillCoordinator,
    Fault::StopPostgres,
    Fault::CutLink,
    Fault::DelayLink,
    Fault::ResetLink,
    Fault::PauseWorker,
];

/// What a job's process does on each attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Exits 0.
    Succeed,
    /// Exits 1 on attempts numbered up to n (n ≤ MAX_RETRIES), then 0.
    Flaky(u32),
    /// Exits 127: permanent at once.
    Permanent,
    /// Exits 1 every time: parked after MAX_RETRIES retries.
    Hopeless,
}

impl Plan {
    fn draw(rng: &mut StdRng) -> Plan {
        match rng.random_range(0..100) {
            0..50 => Plan::Succeed,
            50..75 => Plan::Flaky(rng.random_range(1..=MAX_RETRIES)),
            75..87 => Plan::Permanent,
            _ => Plan::Hopeless,
        }
    }

    fn fail_until(self) -> u32 {
        match self {
            Plan::Succeed => 0,
            Plan::Flaky(n) => n,
            Plan::Permanent | Plan::Hopeless => u32::MAX,
        }
    }

    fn fail_code(self) -> i32 {
        match self {
            Plan::Permanent => 127,
            _ => 1,
        }
    }

    /// Attempts that run to a result (an exit code) under this plan, when `extra` of the
    /// attempts numbered up to `fail_until` ended without one (lost, released or
    /// cancelled: their numbers are used up, so fewer failures are left to run).
    pub fn planned_runs(self, extra: u32) -> u32 {
        match self {
            Plan::Succeed | Plan::Permanent => 1,
            Plan::Flaky(n) => n.saturating_sub(extra) + 1,
            Plan::Hopeless => MAX_RETRIES + 1,
        }
    }

    /// The exit code attempt number `n` ends with.
    pub fn exit_code(self, n: u32) -> i32 {
        if n <= self.fail_until() {
            self.fail_code()
        } else {
            0
        }
    }

    /// The attempt state an exit code is recorded as (no exit-code lists or patterns are
    /// configured, so only the built-in classification applies).
    pub fn result_state(code: i32) -> &'static str {
        match code {
            0 => "succeeded",
            126 | 127 => "failed_permanent",
            _ => "failed",
        }
    }

    pub fn expected_state(self) -> &'static str {
        match self {
            Plan::Succeed | Plan::Flaky(_) => "succeeded",
            Plan::Permanent | Plan::Hopeless => "permanent_failed",
        }
    }
}

/// One attempt as stored, times in milliseconds since the epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct AttemptRow {
    pub id: String,
    pub job_id: String,
    pub number: i32,
    pub state: String,
    pub started_ms: f64,
    pub finished_ms: Option<f64>,
    pub exit_code: Option<i32>,
}

/// An attempt's recorded result, as first observed and as finally stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub state: String,
    pub exit_code: Option<i32>,
    pub finished_ms: Option<f64>,
}

/// Everything [`check`] looks at.
#[derive(Debug, Default)]
pub struct Evidence {
    /// Job id returned by a submission → that submission's plan.
    pub plans: HashMap<String, Plan>,
    /// Submissions that returned a job (one per planned job; fewer distinct ids in
    /// `plans` means two submissions were merged into one job).
    pub submitted: usize,
    /// Job id → (state, reason).
    pub jobs: HashMap<String, (String, String)>,
    pub attempts: Vec<AttemptRow>,
    /// Attempt id → its stored stdout+stderr, in sequence order (attempts with any).
    pub logs: HashMap<String, Vec<u8>>,
    /// The ledger file: one line `job-id attempt-id attempt-number` per process started.
    pub ledger: String,
    /// Attempt id → result when first seen finished, by the observer during the run.
    pub first_seen: HashMap<String, Outcome>,
    /// Jobs still not terminal when the drain limit ran out, and that limit.
    pub not_terminal: Option<(i64, Duration)>,
    /// Jobs submitted with [`KEY`].
    pub keyed: HashSet<String>,
    /// The span file: `start|end attempt-id unix-ms` from each keyed job's process.
    pub spans: String,
    pub ticks: Ticks,
}

/// What the tick schedule did.
#[derive(Debug, Default)]
pub struct Ticks {
    /// When the schedule was created (the database's clock) and paused (the runner's).
    pub created_ms: f64,
    pub paused_ms: f64,
    /// Its recorded runs.
    pub runs: Vec<TickRun>,
    /// Jobs with the tick environment ([`TICK_ENV`]) → state.
    pub jobs: HashMap<String, String>,
    /// The tick ledger: `job-id scheduled_at` per run of a tick's job.
    pub ledger: String,
}

#[derive(Clone, Debug)]
pub struct TickRun {
    pub fire_ms: f64,
    pub status: String,
    pub manual: bool,
    pub job_id: Option<String>,
}

#[derive(Debug, Default)]
pub struct Summary {
    pub jobs_by_state: BTreeMap<String, u64>,
    pub attempts_by_state: BTreeMap<String, u64>,
    /// Processes started (ledger lines).
    pub executions: u64,
    /// Executions whose attempt ended lost, released or cancelled: the extra runs that
    /// crashes and partitions explain.
    pub extra_executions: u64,
    /// Finished attempts the observer saw during the run (their results were then
    /// compared with the final ones).
    pub observed: u64,
    /// Jobs that carried the concurrency key, and the most of their processes that ran at
    /// once (from the processes' own clocks).
    pub keyed_jobs: u64,
    pub key_peak: u32,
    /// Ticks the schedule fired.
    pub ticks: u64,
    pub violations: Vec<String>,
}

pub struct Report {
    pub seed: u64,
    pub faults: BTreeMap<Fault, u32>,
    pub summary: Summary,
    /// From the end of the faults until every job was terminal.
    pub drain: Duration,
    pub dir: PathBuf,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.summary.violations.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.summary;
        writeln!(f, "chaos seed {}", self.seed)?;
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, v)| format!("{k:?} {v}"))
            .collect();
        writeln!(f, "  faults injected: {}", faults.join(", "))?;
        writeln!(f, "  jobs: {:?}", s.jobs_by_state)?;
        writeln!(f, "  attempts: {:?}", s.attempts_by_state)?;
        writeln!(
            f,
            "  executions: {} ({} extra, each explained by a lost/released/cancelled attempt)",
            s.executions, s.extra_executions
        )?;
        writeln!(
            f,
            "  finished attempts seen by the observer during the run: {}",
            s.observed
        )?;
        writeln!(
            f,
            "  concurrency key {KEY} (limit {KEY_LIMIT}): {} jobs, at most {} processes at once",
            s.keyed_jobs, s.key_peak
        )?;
        writeln!(f, "  schedule ticks fired (each exactly once): {}", s.ticks)?;
        writeln!(
            f,
            "  time to drain after the faults: {:.1} s",
            self.drain.as_secs_f64()
        )?;
        writeln!(f, "  scratch directory: {}", self.dir.display())?;
        if s.violations.is_empty() {
            writeln!(f, "  all checks passed")
        } else {
            writeln!(f, "  {} VIOLATIONS:", s.violations.len())?;
            for v in &s.violations {
                writeln!(f, "    - {v}")?;
            }
            writeln!(f, "  reproduce with: drover-chaos --seed {}", self.seed)
        }
    }
}

/// The shell script each job runs. The plan arrives in its environment.
const SCRIPT: &str = r#"echo "$DROVER_JOB_ID $DROVER_ATTEMPT_ID $DROVER_ATTEMPT" >> "$CHAOS_LEDGER"
span() { [ -z "$CHAOS_SPANS" ] || echo "$1 $DROVER_ATTEMPT_ID $(date +%s%3N)" >> "$CHAOS_SPANS"; }
finish() { span end; exit "$1"; }
span start
i=1
while [ $i -le $CHAOS_LINES ]; do
  echo "line $i $DROVER_JOB_ID $DROVER_ATTEMPT_ID"
  if [ $((i % 10)) -eq 0 ]; then sleep "$CHAOS_NAP"; fi
  i=$((i + 1))
done
if [ "$DROVER_ATTEMPT" -le "$CHAOS_FAIL_UNTIL" ]; then finish "$CHAOS_FAIL_CODE"; fi
finish 0
"#;

/// What each tick of [`SCHEDULE`] runs: one ledger line naming its job and its tick.
const TICK_SCRIPT: &str = r#"echo "$DROVER_JOB_ID $1" >> "$CHAOS_TICKS""#;

/// What attempt `attempt` of job `job` prints: every line names both, so output stored
/// under another attempt or job differs.
pub fn expected_log(job: &str, attempt: &str) -> Vec<u8> {
    (1..=LINES)
        .map(|i| format!("line {i} {job} {attempt}\n"))
        .collect::<String>()
        .into_bytes()
}

fn job_spec(plan: Plan, nap_ms: u64, files: &Files, keyed: bool, key: String) -> pb::JobSpec {
    let ledger = &files.ledger;
    let mut env = vec![
        ("CHAOS_LEDGER", ledger.display().to_string()),
        ("CHAOS_LINES", LINES.to_string()),
        ("CHAOS_NAP", format!("{:.3}", nap_ms as f64 / 1000.0)),
        (
            "CHAOS_FAIL_UNTIL",
            plan.fail_until().min(1_000_000).to_string(),
        ),
        ("CHAOS_FAIL_CODE", plan.fail_code().to_string()),
    ];
    if keyed {
        env.push(("CHAOS_SPANS", files.spans.display().to_string()));
    }
    pb::JobSpec {
        argv: vec!["sh".into(), "-c".into(), SCRIPT.into()],
        env: env.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        retry: Some(pb::RetryPolicy {
            max_retries: Some(MAX_RETRIES),
            initial_backoff: Some(drover_proto::durations::from_millis(INITIAL_BACKOFF_MS)),
            multiplier: Some(MULTIPLIER),
            jitter: Some(JITTER),
            ..Default::default()
        }),
        idempotency_key: key,
        concurrency_keys: if keyed { vec![KEY.into()] } else { vec![] },
        concurrency_limit: if keyed { KEY_LIMIT } else { 0 },
        ..Default::default()
    }
}

/// The files the jobs write their side effects to.
struct Files {
    /// `job attempt number` per process started.
    ledger: PathBuf,
    /// `start|end attempt unix-ms` for processes of keyed jobs.
    spans: PathBuf,
    /// `job scheduled_at` per run of a tick's job.
    ticks: PathBuf,
}

fn tick_schedule(files: &Files) -> pb::Schedule {
    pb::Schedule {
        name: SCHEDULE.into(),
        cron: "* * * * * *".into(),
        catch_up: "all".into(),
        overlap: "allow".into(),
        spec: Some(pb::JobSpec {
            argv: ["sh", "-c", TICK_SCRIPT, "sh", "{scheduled_at}"]
                .map(String::from)
                .to_vec(),
            env: [("CHAOS_TICKS".to_string(), files.ticks.display().to_string())].into(),
            retry: Some(pb::RetryPolicy {
                max_retries: Some(MAX_RETRIES),
                initial_backoff: Some(drover_proto::durations::from_millis(INITIAL_BACKOFF_MS)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Calls `f` on each coordinator in turn until one answers (faults may hold one down).
async fn on_any<T, F, Fut>(addrs: &[String], limit: Duration, mut f: F) -> Result<T>
where
    F: FnMut(crate::SchedulesClient) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let start = Instant::now();
    let mut k = 0;
    loop {
        let addr = &addrs[k % addrs.len()];
        let tried = async { f(crate::schedules(addr).await?).await };
        match tokio::time::timeout(Duration::from_secs(5), tried).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if start.elapsed() > limit => return Err(e),
            Err(_) if start.elapsed() > limit => bail!("no coordinator answered within {limit:?}"),
            _ => {
                k += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

// ------------------------------------------------------------------------- the world

struct Coordinator {
    name: String,
    opts: CoordinatorOpts,
    proc: Option<Proc>,
}

/// How a worker reaches the coordinators, and where link faults are made.
enum Link {
    /// Loopback, through a proxy the runner controls.
    Proxy(Proxy),
    /// Its own host on the virtual network, given both coordinators' addresses.
    Host(Host, String),
}

struct Worker {
    name: String,
    link: Link,
    proc: Option<Proc>,
}

/// The processes under test. Dropping it stops them all, jobs of killed workers included.
struct World {
    dir: PathBuf,
    /// None only while a restart on its namespace host is under way.
    pg: Option<PgServer>,
    db_url: String,
    coordinators: Vec<Coordinator>,
    workers: Vec<Worker>,
    /// The database's host in namespace mode.
    db_host: Option<Host>,
}

impl Drop for World {
    fn drop(&mut self) {
        for w in &mut self.workers {
            if let Some(p) = &mut w.proc {
                p.signal(nix::sys::signal::Signal::SIGCONT);
                p.kill();
            }
        }
        crate::stop_leftover_jobs(&self.dir);
        for c in &mut self.coordinators {
            if let Some(p) = &mut c.proc {
                p.kill();
            }
        }
    }
}

async fn start_coordinator(dir: &Path, c: &Coordinator, db_url: &str) -> Result<Proc> {
    let (dir, name, opts, url) = (
        dir.to_path_buf(),
        c.name.clone(),
        c.opts.clone(),
        db_url.to_string(),
    );
    // Reading its first lines blocks; keep the proxies' runtime threads free.
    let (p, _) =
        tokio::task::spawn_blocking(move || spawn_coordinator(&dir, &name, &url, &opts)).await??;
    Ok(p)
}

/// The workers with an odd number lease ahead (`--lease-ahead 2`), with a hold short
/// enough that faults make held jobs go back, so the checks judge that path too.
fn worker_args(name: &str) -> &'static [&'static str] {
    if name.ends_with(['1', '3', '5', '7', '9']) {
        &["--lease-ahead", "2"]
    } else {
        &[]
    }
}

fn start_worker(dir: &Path, w: &Worker) -> Result<Proc> {
    let env = [
        ("DROVER_WORKER_KILL_GRACE", "500ms"),
        ("DROVER_WORKER_LEASE_AHEAD_HOLD", "300ms"),
    ];
    let args = worker_args(&w.name);
    let launch = match &w.link {
        Link::Proxy(p) => worker_launch(dir, &w.name, &p.addr, SLOTS, args, &env),
        Link::Host(host, addrs) => {
            let mut l = worker_launch(dir, &w.name, addrs, SLOTS, args, &env);
            l.netns = Some(host.ns.clone());
            l
        }
    };
    Ok(launch.start()?)
}

/// Host names in namespace mode: the database and coordinator 0, coordinator 1, the
/// workers, and the runner itself.
const NS_HOSTS: [&str; 7] = ["db", "c1", "w0", "w1", "w2", "w3", "ops"];

/// PostgreSQL on `host`, reachable from the other hosts; returns it and the URL of the
/// `drover` database.
fn start_pg_on(host: &Host, dir: &Path) -> Result<(PgServer, String)> {
    let data_dir = dir.join("pg");
    let ip = host.ip.clone();
    let pg = host.run(move || async move {
        let settings = [("fsync", "off"), ("listen_addresses", "*")];
        let pg = drover_stack::private_server(&data_dir, &settings)
            .await
            .context("starting PostgreSQL")?;
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(pg.data_dir().join("pg_hba.conf"))?
            .write_all(b"host all all 10.213.0.0/24 trust\n")?;
        connect(&pg.url("postgres"))
            .await?
            .execute("SELECT pg_reload_conf()", &[])
            .await?;
        pg.create_database("drover").await?;
        Ok(pg)
    })?;
    let url = format!("postgres://postgres@{ip}:{}/drover", pg.port());
    Ok((pg, url))
}

fn coordinator_addr(c: &Coordinator) -> String {
    let ip = c
        .opts
        .netns
        .as_ref()
        .map_or("127.0.0.1", |(_, ip)| ip.as_str());
    format!("http://{ip}:{}", c.opts.port)
}

impl World {
    async fn start(dir: &Path, net: Option<&Net>) -> Result<World> {
        let (pg, db_url, db_host) = match net {
            Some(net) => {
                let host = net.host("db").clone();
                let (pg, url) = start_pg_on(&host, dir)?;
                (pg, url, Some(host))
            }
            None => {
                let pg = drover_stack::private_server(&dir.join("pg"), &[("fsync", "off")])
                    .await
                    .context("starting PostgreSQL")?;
                pg.create_database("drover").await?;
                let url = pg.url("drover");
                (pg, url, None)
            }
        };
        let mut coordinators = Vec::new();
        for i in 0..2 {
            let netns = net.map(|n| {
                let h = n.host(if i == 0 { "db" } else { "c1" });
                (h.ns.clone(), h.ip.clone())
            });
            let mut c = Coordinator {
                name: format!("coord{i}"),
                opts: CoordinatorOpts {
                    // A host of its own: the usual port; on loopback: a free one.
                    port: if netns.is_some() {
                        50051
                    } else {
                        crate::free_port()
                    },
                    lease_ttl_ms: LEASE_TTL_MS,
                    heartbeat_interval_ms: 400,
                    reaper_interval_ms: 200,
                    database_url: Some(db_url.clone()),
                    netns,
                    ..Default::default()
                },
                proc: None,
            };
            c.proc = Some(start_coordinator(dir, &c, &db_url).await?);
            coordinators.push(c);
        }
        let addrs: Vec<String> = coordinators.iter().map(coordinator_addr).collect();
        let mut workers = Vec::new();
        for i in 0..WORKERS {
            let link = match net {
                // Each worker prefers one coordinator and fails over to the other.
                Some(net) => Link::Host(
                    net.host(&format!("w{i}")).clone(),
                    format!("{},{}", addrs[i % 2], addrs[(i + 1) % 2]),
                ),
                None => Link::Proxy(
                    Proxy::start(&format!("127.0.0.1:{}", coordinators[i % 2].opts.port)).await?,
                ),
            };
            let mut w = Worker {
                name: format!("w{i}"),
                link,
                proc: None,
            };
            w.proc = Some(start_worker(dir, &w)?);
            workers.push(w);
        }
        Ok(World {
            dir: dir.to_path_buf(),
            pg: Some(pg),
            db_url,
            coordinators,
            workers,
            db_host,
        })
    }

    fn addrs(&self) -> Vec<String> {
        self.coordinators.iter().map(coordinator_addr).collect()
    }

    fn pg(&mut self) -> Result<&mut PgServer> {
        self.pg
            .as_mut()
            .context("PostgreSQL was lost in an earlier restart")
    }

    async fn inject(&mut self, f: Fault, rng: &mut StdRng) -> Result<()> {
        let hold = Duration::from_millis(rng.random_range(300..3_000));
        match f {
            Fault::KillWorker => {
                let i = rng.random_range(0..self.workers.len());
                if let Some(mut p) = self.workers[i].proc.take() {
                    p.kill();
                }
                tokio::time::sleep(hold).await;
                self.workers[i].proc = Some(start_worker(&self.dir, &self.workers[i])?);
            }
            Fault::KillCoordinator => {
                let i = rng.random_range(0..self.coordinators.len());
                if let Some(mut p) = self.coordinators[i].proc.take() {
                    p.kill();
                }
                tokio::time::sleep(hold).await;
                let p = start_coordinator(&self.dir, &self.coordinators[i], &self.db_url).await?;
                self.coordinators[i].proc = Some(p);
            }
            Fault::StopPostgres => {
                if rng.random_bool(0.5) {
                    self.pg()?.stop().await?;
                } else {
                    self.pg()?.stop_immediate().await?;
                }
                tokio::time::sleep(hold).await;
                match self.db_host.clone() {
                    None => self.pg()?.restart().await?,
                    // The server must start on its own host: restart it from a thread
                    // in that host's namespace.
                    Some(host) => {
                        let mut pg = self.pg.take().context("no PostgreSQL")?;
                        let pg = tokio::task::spawn_blocking(move || {
                            host.run(move || async move {
                                pg.restart().await?;
                                Ok(pg)
                            })
                        })
                        .await??;
                        self.pg = Some(pg);
                    }
                }
            }
            Fault::CutLink => {
                let w = &self.workers[rng.random_range(0..self.workers.len())];
                match &w.link {
                    Link::Proxy(p) => {
                        p.cut();
                        tokio::time::sleep(hold).await;
                        p.restore();
                    }
                    Link::Host(h, _) => {
                        h.link_down()?;
                        tokio::time::sleep(hold).await;
                        h.link_up()?;
                    }
                }
            }
            Fault::DelayLink => {
                let w = &self.workers[rng.random_range(0..self.workers.len())];
                let delay = rng.random_range(50..800);
                match &w.link {
                    Link::Proxy(p) => {
                        p.set_delay(Duration::from_millis(delay));
                        tokio::time::sleep(hold).await;
                        p.set_delay(Duration::ZERO);
                    }
                    Link::Host(h, _) => {
                        // netem where the kernel has it, else a bandwidth limit.
                        if !h.netem(delay as u32, delay as u32 / 4, 2, 10)? {
                            h.throttle("1mbit", delay as u32)?;
                        }
                        tokio::time::sleep(hold).await;
                        h.clear_qdisc()?;
                    }
                }
            }
            Fault::ResetLink => {
                let w = &self.workers[rng.random_range(0..self.workers.len())];
                match &w.link {
                    Link::Proxy(p) => p.reset(),
                    // A short flap: the link goes down and comes back.
                    Link::Host(h, _) => {
                        h.link_down()?;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        h.link_up()?;
                    }
                }
            }
            Fault::PauseWorker => {
                // Sometimes longer than the lease: the paused worker's attempts are given
                // away and its late reports must be refused.
                let hold = Duration::from_millis(rng.random_range(300..2 * LEASE_TTL_MS + 1_000));
                let i = rng.random_range(0..self.workers.len());
                if let Some(p) = &self.workers[i].proc {
                    p.signal(nix::sys::signal::Signal::SIGSTOP);
                    tokio::time::sleep(hold).await;
                    p.signal(nix::sys::signal::Signal::SIGCONT);
                }
            }
        }
        Ok(())
    }
}

// ------------------------------------------------------------------ the workload

/// Submits every job, spread over `over`, each to one coordinator or, while that one is
/// away, the other; the idempotency key makes a re-sent submit return the same job.
async fn submit_all(
    addrs: Vec<String>,
    specs: Vec<(Plan, bool, pb::JobSpec)>,
    over: Duration,
    limit: Duration,
) -> Result<(HashMap<String, Plan>, HashSet<String>, usize)> {
    // Both coordinators are up when this starts; the channels reconnect on their own.
    let mut clients = Vec::new();
    for a in &addrs {
        let ch = tonic::transport::Endpoint::from_shared(a.clone())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect_lazy();
        let bearer = drover_proto::auth::BearerToken::new(Some(crate::ADMIN_TOKEN))
            .map_err(anyhow::Error::msg)?;
        clients.push(pb::job_service_client::JobServiceClient::with_interceptor(
            ch, bearer,
        ));
    }
    let gap = over / specs.len().max(1) as u32;
    let mut plans = HashMap::new();
    let mut keyed = HashSet::new();
    let mut submitted = 0;
    for (i, (plan, with_key, spec)) in specs.into_iter().enumerate() {
        let start = Instant::now();
        let mut k = i;
        let job = loop {
            let c = &mut clients[k % addrs.len()];
            let sent = tokio::time::timeout(Duration::from_secs(5), crate::submit(c, spec.clone()))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within 5 s")));
            match sent {
                Ok(job) => break job,
                Err(e) if start.elapsed() > limit => bail!("submitting job {i}: {e}"),
                Err(_) => {
                    k += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        if with_key {
            keyed.insert(job.id.clone());
        }
        plans.insert(job.id, plan);
        submitted += 1;
        tokio::time::sleep(gap).await;
    }
    Ok((plans, keyed, submitted))
}

const ATTEMPT_QUERY: &str = "SELECT id::text, job_id::text, number, state, \
       extract(epoch FROM started_at)::float8 * 1000, \
       extract(epoch FROM finished_at)::float8 * 1000, exit_code \
  FROM attempts WHERE job_id NOT IN (SELECT id FROM jobs WHERE env ? $1) \
 ORDER BY job_id, number";

async fn read_attempts(db: &tokio_postgres::Client) -> Result<Vec<AttemptRow>> {
    db.query(ATTEMPT_QUERY, &[&TICK_ENV])
        .await?
        .iter()
        .map(|r| {
            Ok(AttemptRow {
                id: r.try_get(0)?,
                job_id: r.try_get(1)?,
                number: r.try_get(2)?,
                state: r.try_get(3)?,
                started_ms: r.try_get(4)?,
                finished_ms: r.try_get(5)?,
                exit_code: r.try_get(6)?,
            })
        })
        .collect()
}

/// Records each attempt's result the first time it is seen finished, polling the
/// database throughout the run (skipping while it is down).
async fn observe(url: String, stop: CancellationToken, seen: Arc<Mutex<HashMap<String, Outcome>>>) {
    let mut db: Option<tokio_postgres::Client> = None;
    while !stop.is_cancelled() {
        if db.as_ref().is_none_or(|c| c.is_closed()) {
            db = connect(&url).await.ok();
        }
        if let Some(c) = &db {
            if let Ok(rows) = read_attempts(c).await {
                if let Ok(mut seen) = seen.lock() {
                    for a in rows.into_iter().filter(|a| a.state != "running") {
                        seen.entry(a.id).or_insert(Outcome {
                            state: a.state,
                            exit_code: a.exit_code,
                            finished_ms: a.finished_ms,
                        });
                    }
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

// -------------------------------------------------------------------------- run

/// Runs the whole scenario and returns what it saw. An `Err` is a failure of the runner
/// itself (a process that would not start, or no namespaces in namespace mode); broken
/// promises are `Report::summary.violations`. In namespace mode the runner works from a
/// host of its own (a thread in that namespace with a runtime of its own).
pub async fn run(cfg: &Config) -> Result<Report> {
    if !cfg.netns {
        return run_on(cfg, None).await;
    }
    let net = Net::new(&NS_HOSTS)?;
    let ops = net.host("ops").clone();
    let cfg = cfg.clone();
    // The namespaces outlive the run (dropped here, after the world it made).
    let net = Arc::new(net);
    let keep = net.clone();
    let r = tokio::task::spawn_blocking(move || {
        ops.run(move || async move { run_on(&cfg, Some(&net)).await })
    })
    .await?;
    drop(keep);
    r
}

async fn run_on(cfg: &Config, net: Option<&Net>) -> Result<Report> {
    let tmp;
    let dir = match &cfg.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new().prefix("drover-chaos-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let files = Files {
        ledger: dir.join("ledger.txt"),
        spans: dir.join("spans.txt"),
        ticks: dir.join("ticks.txt"),
    };
    for f in [&files.ledger, &files.spans, &files.ticks] {
        std::fs::write(f, b"")?;
    }
    let specs: Vec<(Plan, bool, pb::JobSpec)> = (0..cfg.jobs)
        .map(|i| {
            let plan = Plan::draw(&mut rng);
            let nap = rng.random_range(100..700);
            let keyed = rng.random_range(0..100) < KEYED_PERCENT;
            let key = format!("chaos-{}-{i}", cfg.seed);
            (plan, keyed, job_spec(plan, nap, &files, keyed, key))
        })
        .collect();

    let mut world = World::start(&dir, net).await?;
    let addrs = world.addrs();
    let schedule = tick_schedule(&files);
    on_any(&addrs, Duration::from_secs(30), |mut c| {
        let schedule = schedule.clone();
        async move {
            c.create_schedule(pb::CreateScheduleRequest {
                schedule: Some(schedule),
                ..Default::default()
            })
            .await?;
            Ok(())
        }
    })
    .await
    .context("creating the tick schedule")?;
    let stop = CancellationToken::new();
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let observer = tokio::spawn(observe(world.db_url.clone(), stop.clone(), seen.clone()));
    let submitter = tokio::spawn(submit_all(
        world.addrs(),
        specs,
        cfg.chaos.mul_f64(0.8),
        cfg.chaos + cfg.drain_limit,
    ));

    let mut faults: BTreeMap<Fault, u32> = BTreeMap::new();
    let chaos_end = Instant::now() + cfg.chaos;
    while Instant::now() < chaos_end {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1_200))).await;
        let f = FAULTS[rng.random_range(0..FAULTS.len())];
        world
            .inject(f, &mut rng)
            .await
            .with_context(|| format!("injecting {f:?} (seed {})", cfg.seed))?;
        *faults.entry(f).or_default() += 1;
    }
    let (plans, keyed, submitted) = submitter.await??;
    // Stop the ticks so the drain can end; every tick up to here must have run once.
    on_any(&addrs, cfg.drain_limit, |mut c| async move {
        c.pause_schedule(pb::PauseScheduleRequest {
            name: SCHEDULE.into(),
        })
        .await?;
        Ok(())
    })
    .await
    .context("pausing the tick schedule")?;
    let paused_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64()
        * 1000.0;

    // Drain: every job must reach a terminal state with no more faults.
    let drain_start = Instant::now();
    let db = connect(&world.db_url).await?;
    let mut not_terminal = None;
    loop {
        let open: i64 = db
            .query_one(
                "SELECT count(*) FROM jobs WHERE state NOT IN ('succeeded', 'permanent_failed', 'cancelled')",
                &[],
            )
            .await?
            .try_get(0)?;
        if open == 0 {
            break;
        }
        if drain_start.elapsed() > cfg.drain_limit {
            not_terminal = Some((open, cfg.drain_limit));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drain = drain_start.elapsed();
    stop.cancel();
    let _ = observer.await;

    let mut ev = Evidence {
        plans,
        keyed,
        submitted,
        attempts: read_attempts(&db).await?,
        not_terminal,
        ..Default::default()
    };
    for r in db
        .query(
            "SELECT id::text, state, reason, env ? $1 FROM jobs",
            &[&TICK_ENV],
        )
        .await?
    {
        if r.try_get(3)? {
            ev.ticks.jobs.insert(r.try_get(0)?, r.try_get(1)?);
        } else {
            ev.jobs
                .insert(r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?));
        }
    }
    ev.ticks.created_ms = db
        .query_one(
            "SELECT extract(epoch FROM created_at)::float8 * 1000 FROM schedules WHERE name = $1",
            &[&SCHEDULE],
        )
        .await?
        .try_get(0)?;
    ev.ticks.paused_ms = paused_ms;
    for r in db
        .query(
            "SELECT extract(epoch FROM fire_time)::float8 * 1000, status, manual, job_id::text \
               FROM schedule_runs WHERE schedule = $1 ORDER BY fire_time",
            &[&SCHEDULE],
        )
        .await?
    {
        ev.ticks.runs.push(TickRun {
            fire_ms: r.try_get(0)?,
            status: r.try_get(1)?,
            manual: r.try_get(2)?,
            job_id: r.try_get(3)?,
        });
    }
    ev.ticks.ledger = std::fs::read_to_string(&files.ticks)?;
    ev.spans = std::fs::read_to_string(&files.spans)?;
    for r in db
        .query(
            "SELECT a.id::text, string_agg(l.data, ''::bytea ORDER BY l.seq) \
               FROM attempts a JOIN log_chunks l ON l.attempt_id = a.id \
              GROUP BY a.id",
            &[],
        )
        .await?
    {
        ev.logs.insert(r.try_get(0)?, r.try_get(1)?);
    }
    ev.ledger = std::fs::read_to_string(&files.ledger)?;
    ev.first_seen = seen.lock().map(|s| s.clone()).unwrap_or_default();

    let summary = check(&ev);
    drop(world);
    Ok(Report {
        seed: cfg.seed,
        faults,
        summary,
        drain,
        dir: if cfg.dir.is_some() {
            dir
        } else {
            PathBuf::from("(removed)")
        },
    })
}

// ------------------------------------------------------------------------ checks

/// The smallest wait the policy allows before the retry that follows failure number `f`.
fn min_wait_ms(f: u32) -> f64 {
    INITIAL_BACKOFF_MS as f64 * MULTIPLIER.powi(f as i32 - 1) * (1.0 - JITTER)
}

/// Attempt states that carry a result the process itself produced (an exit code).
const RESULT_STATES: [&str; 4] = ["succeeded", "failed", "failed_permanent", "timed_out"];
/// Attempt states that explain a run beyond the plan's: the run's result was not kept.
const EXTRA_STATES: [&str; 3] = ["lost", "released", "cancelled"];

/// A ledger line: (job id, attempt id, attempt number), or the garbled text.
fn parse_ledger(text: &str) -> Vec<Result<(String, String, u32), String>> {
    text.lines()
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                [job, attempt, n] => match n.parse::<u32>() {
                    Ok(n) => Ok((job.to_string(), attempt.to_string(), n)),
                    Err(_) => Err(line.to_string()),
                },
                _ => Err(line.to_string()),
            }
        })
        .collect()
}

/// Checks the promises; every broken one is a line in `violations`.
///
/// - every job was terminal by the end of the drain, in the state its plan predicts; a
///   job parked for being lost more than MAX_LOST times is reported;
/// - the stored jobs are exactly the submitted ones (no job merged, none duplicated);
/// - every attempt with a result ended with the exit code (and state) the plan predicts
///   for its number; a Hopeless job failed exactly max_retries + 1 times;
/// - no job has two succeeded attempts, and a succeeded job's last attempt is the one;
/// - no attempt's result changed after the observer first saw it finished, and the
///   observer saw something;
/// - every ledger line (a process that ran) is well-formed and belongs to a recorded
///   attempt of that job, no attempt ran twice, every attempt that reported an exit code
///   ran, and each job's runs that ended in a result are exactly the plan's number (the
///   rest belong to lost/released/cancelled attempts);
/// - attempt numbers 1..n without gaps, every attempt in a known state;
/// - each retry after a failure started no sooner than the policy's wait;
/// - each attempt with a result stored exactly the lines that attempt printed (each line
///   names its job and attempt), and any other attempt's stored log is a prefix of them.
pub fn check(ev: &Evidence) -> Summary {
    let mut s = Summary::default();
    let v = &mut s.violations;
    for (state, _) in ev.jobs.values() {
        *s.jobs_by_state.entry(state.clone()).or_default() += 1;
    }
    for a in &ev.attempts {
        *s.attempts_by_state.entry(a.state.clone()).or_default() += 1;
    }
    if let Some((open, limit)) = ev.not_terminal {
        v.push(format!(
            "{open} jobs not terminal {limit:?} after the faults stopped"
        ));
    }
    if ev.plans.len() != ev.submitted {
        v.push(format!(
            "{} jobs were submitted but {} distinct job ids came back: submissions were merged",
            ev.submitted,
            ev.plans.len()
        ));
    }
    let mut stored: Vec<&String> = ev
        .jobs
        .keys()
        .filter(|j| !ev.plans.contains_key(*j))
        .collect();
    stored.sort();
    for job in stored {
        v.push(format!(
            "job {job} is stored but no submission returned it (a duplicate?)"
        ));
    }
    let mut by_job: BTreeMap<&str, Vec<&AttemptRow>> = BTreeMap::new();
    for a in &ev.attempts {
        by_job.entry(a.job_id.as_str()).or_default().push(a);
    }
    let attempt_by_id: HashMap<&str, &AttemptRow> =
        ev.attempts.iter().map(|a| (a.id.as_str(), a)).collect();
    let mut parked: BTreeSet<&str> = BTreeSet::new();

    for (job, plan) in &ev.plans {
        let Some((state, reason)) = ev.jobs.get(job) else {
            v.push(format!("job {job} was submitted but is not stored"));
            continue;
        };
        let attempts = by_job.get(job.as_str()).cloned().unwrap_or_default();
        let count = |st: &[&str]| {
            attempts
                .iter()
                .filter(|a| st.contains(&a.state.as_str()))
                .count()
        };
        let lost = count(&["lost"]) as u32;
        if state == "permanent_failed" && lost > MAX_LOST {
            parked.insert(job.as_str());
            v.push(format!(
                "job {job} ({plan:?}) was parked after {lost} losses ({reason})"
            ));
        } else if state != plan.expected_state() {
            v.push(format!(
                "job {job} ({plan:?}) ended {state} ({reason}), expected {}",
                plan.expected_state()
            ));
        }
        let succeeded = count(&["succeeded"]);
        if succeeded > 1 {
            v.push(format!("job {job} has {succeeded} succeeded attempts"));
        }
        if state == "succeeded" && attempts.last().map(|a| a.state.as_str()) != Some("succeeded") {
            v.push(format!("job {job} succeeded but its last attempt did not"));
        }
        let failures = count(&["failed", "timed_out", "failed_permanent"]) as u32;
        if *plan == Plan::Hopeless && !parked.contains(job.as_str()) {
            if failures != MAX_RETRIES + 1 {
                v.push(format!(
                    "job {job} (Hopeless) failed {failures} times; \
                     exactly max_retries + 1 = {} expected",
                    MAX_RETRIES + 1
                ));
            }
        } else if failures > MAX_RETRIES + 1 {
            v.push(format!(
                "job {job} failed {failures} times; max_retries is {MAX_RETRIES}"
            ));
        }
        if *plan == Plan::Permanent && failures > 1 {
            v.push(format!(
                "job {job} exited 127 yet was retried ({failures} failures)"
            ));
        }
        let counted = count(&RESULT_STATES) + count(&EXTRA_STATES) + count(&["running"]);
        if counted != attempts.len() {
            v.push(format!(
                "job {job} has attempts in unknown states: {attempts:?}"
            ));
        }
        for (i, a) in attempts.iter().enumerate() {
            if a.number != i as i32 + 1 {
                v.push(format!(
                    "job {job}: attempt numbers are not 1..n: {:?}",
                    attempts.iter().map(|a| a.number).collect::<Vec<_>>()
                ));
                break;
            }
        }
        // Each result is the one the plan fixes for that attempt number.
        for a in attempts
            .iter()
            .filter(|a| RESULT_STATES.contains(&a.state.as_str()))
        {
            let want = plan.exit_code(a.number.max(0) as u32);
            let want_state = Plan::result_state(want);
            if a.exit_code != Some(want) || a.state != want_state {
                v.push(format!(
                    "job {job} ({plan:?}) attempt #{} {} ended {} with exit code {:?}; \
                     the plan predicts {want_state} with exit code {want}",
                    a.number, a.id, a.state, a.exit_code
                ));
            }
        }
        // Retry waits: after the f-th failure, the next attempt waits at least the policy's
        // backoff (less the jitter it may take off).
        let mut f = 0;
        for w in attempts.windows(2) {
            let (prev, next) = (w[0], w[1]);
            if matches!(prev.state.as_str(), "failed" | "timed_out") {
                f += 1;
                if let Some(done) = prev.finished_ms {
                    let waited = next.started_ms - done;
                    // 1 ms: the timestamps are rounded to microseconds on their way here.
                    if waited + 1.0 < min_wait_ms(f) {
                        v.push(format!(
                            "job {job}: attempt {} started {waited:.0} ms after failure {f}; \
                             the policy's wait is at least {:.0} ms",
                            next.number,
                            min_wait_ms(f)
                        ));
                    }
                }
            }
        }
    }

    // Results never change once recorded; the observer must have seen results, or this
    // check would pass for want of evidence.
    s.observed = ev.first_seen.len() as u64;
    if ev.first_seen.is_empty() && ev.attempts.iter().any(|a| a.state != "running") {
        v.push(
            "the observer saw no finished attempt during the run, so results were never \
             compared over time"
                .to_string(),
        );
    }
    let mut first_seen: Vec<(&String, &Outcome)> = ev.first_seen.iter().collect();
    first_seen.sort_by_key(|(id, _)| *id);
    for (id, first) in first_seen {
        if let Some(a) = attempt_by_id.get(id.as_str()) {
            let now = Outcome {
                state: a.state.clone(),
                exit_code: a.exit_code,
                finished_ms: a.finished_ms,
            };
            if &now != first {
                v.push(format!(
                    "attempt {id}'s result was replaced: first {first:?}, now {now:?}"
                ));
            }
        } else {
            v.push(format!("attempt {id} was seen finished, then vanished"));
        }
    }

    // Side effects: every run is accounted for.
    let mut ran: BTreeSet<&str> = BTreeSet::new();
    let mut result_runs: HashMap<&str, u32> = HashMap::new();
    let ledger = parse_ledger(&ev.ledger);
    for line in &ledger {
        let (job, attempt, number) = match line {
            Ok(l) => l,
            Err(text) => {
                v.push(format!("ledger line is garbled: {text:?}"));
                continue;
            }
        };
        s.executions += 1;
        let Some(a) = attempt_by_id.get(attempt.as_str()) else {
            v.push(format!(
                "job {job} ran as attempt {attempt}, which is not recorded"
            ));
            continue;
        };
        if &a.job_id != job || a.number as u32 != *number {
            v.push(format!(
                "ledger says attempt {attempt} is job {job} #{number}; stored: job {} #{}",
                a.job_id, a.number
            ));
        }
        if !ran.insert(attempt.as_str()) {
            v.push(format!("attempt {attempt} of job {job} ran twice"));
        }
        let st = a.state.as_str();
        if RESULT_STATES.contains(&st) {
            *result_runs.entry(a.job_id.as_str()).or_default() += 1;
        } else if EXTRA_STATES.contains(&st) {
            s.extra_executions += 1;
        } else {
            v.push(format!("attempt {attempt} ran and is still {st}"));
        }
    }
    // Runs beyond the plan's: only lost/released/cancelled attempts may explain them, so
    // the runs that ended in a result are exactly the plan's (fewer for a parked job).
    for (job, plan) in &ev.plans {
        if !ev.jobs.contains_key(job) {
            continue;
        }
        let runs = result_runs.get(job.as_str()).copied().unwrap_or(0);
        let extra = by_job.get(job.as_str()).map_or(0, |a| {
            a.iter()
                .filter(|a| {
                    EXTRA_STATES.contains(&a.state.as_str())
                        && (a.number.max(0) as u32) <= plan.fail_until()
                })
                .count() as u32
        });
        let planned = plan.planned_runs(extra);
        let ok = if parked.contains(job.as_str()) {
            runs <= planned
        } else {
            runs == planned
        };
        if !ok {
            v.push(format!(
                "job {job} ({plan:?}) ran {runs} times to a recorded result; the plan \
                 makes {planned} such runs given its {extra} lost/released/cancelled \
                 attempts, and any other run must belong to one of those"
            ));
        }
    }
    for a in &ev.attempts {
        if a.exit_code.is_some() && !ran.contains(a.id.as_str()) {
            v.push(format!(
                "attempt {} of job {} reported exit code {:?} but never ran",
                a.id, a.job_id, a.exit_code
            ));
        }
        // Each line names its job and attempt, so output filed under another attempt or
        // job cannot match.
        let want = expected_log(&a.job_id, &a.id);
        let complete = RESULT_STATES.contains(&a.state.as_str());
        match ev.logs.get(&a.id) {
            Some(log) if *log == want => {}
            Some(log) if !complete && want.starts_with(log) => {}
            Some(log) => v.push(format!(
                "attempt {} ({}) of job {}: stored log is not what it printed \
                 ({} bytes, expected {}{}): {:?}",
                a.id,
                a.state,
                a.job_id,
                log.len(),
                if complete { "" } else { "a prefix of " },
                want.len(),
                String::from_utf8_lossy(log)
            )),
            None if complete => v.push(format!(
                "attempt {} ({}) of job {} has no stored log",
                a.id, a.state, a.job_id
            )),
            None => {}
        }
    }
    check_key(ev, &mut s);
    check_ticks(ev, &mut s);
    s
}

/// The most intervals `[start, end)` that overlap at one instant, that instant, and the
/// ids of the intervals open then.
fn peak<'a>(spans: &[(f64, f64, &'a str)]) -> (u32, f64, Vec<&'a str>) {
    let mut best = (0, 0.0, Vec::new());
    for &(t, _, _) in spans {
        let open: Vec<&str> = spans
            .iter()
            .filter(|(s, e, _)| *s <= t && t < *e)
            .map(|(_, _, id)| *id)
            .collect();
        if open.len() as u32 > best.0 {
            best = (open.len() as u32, t, open);
        }
    }
    best
}

/// The concurrency key's limit, checked twice: on Drover's own record (an attempt holds
/// the key from its lease to its end) and on the processes' clocks. A process whose
/// attempt ended `lost`, `released` or `cancelled` may outlive its lease (a paused or cut
/// off worker's child runs on), as an explained extra run does; every process of an
/// attempt with a result ran inside its lease, so those never exceed the limit.
fn check_key(ev: &Evidence, s: &mut Summary) {
    let v = &mut s.violations;
    s.keyed_jobs = ev.keyed.len() as u64;
    let keyed: Vec<&AttemptRow> = ev
        .attempts
        .iter()
        .filter(|a| ev.keyed.contains(&a.job_id))
        .collect();
    let held: Vec<(f64, f64, &str)> = keyed
        .iter()
        .map(|a| {
            (
                a.started_ms,
                a.finished_ms.unwrap_or(f64::INFINITY),
                a.id.as_str(),
            )
        })
        .collect();
    let (n, at, ids) = peak(&held);
    if n > KEY_LIMIT {
        v.push(format!(
            "{n} attempts of jobs with key {KEY} (limit {KEY_LIMIT}) were running at once \
             at {at:.0} ms, by Drover's record: {ids:?}"
        ));
    }
    let mut starts: HashMap<&str, f64> = HashMap::new();
    let mut ends: HashMap<&str, f64> = HashMap::new();
    for line in ev.spans.lines() {
        let parsed = match line.split(' ').collect::<Vec<_>>()[..] {
            [kind @ ("start" | "end"), attempt, ms] => {
                ms.parse::<f64>().ok().map(|ms| (kind, attempt, ms))
            }
            _ => None,
        };
        match parsed {
            Some(("start", attempt, ms)) => {
                starts.insert(attempt, ms);
            }
            Some((_, attempt, ms)) => {
                ends.insert(attempt, ms);
            }
            None => v.push(format!("span line is garbled: {line:?}")),
        }
    }
    let mut ran = Vec::new();
    for a in keyed
        .iter()
        .filter(|a| RESULT_STATES.contains(&a.state.as_str()))
    {
        match (starts.get(a.id.as_str()), ends.get(a.id.as_str())) {
            (Some(&start), Some(&end)) => ran.push((start, end, a.id.as_str())),
            _ => v.push(format!(
                "attempt {} ({}) of keyed job {} left no start and end time",
                a.id, a.state, a.job_id
            )),
        }
    }
    let (n, at, ids) = peak(&ran);
    s.key_peak = n;
    if n > KEY_LIMIT {
        v.push(format!(
            "{n} processes of jobs with key {KEY} (limit {KEY_LIMIT}) ran at once at \
             {at:.0} ms, by their own clocks: {ids:?}"
        ));
    }
}

/// Exactly-once ticks: with catch-up `all` and overlap `allow`, every second from the one
/// after the schedule's creation until shortly before its pause fired once, as one job,
/// whose process ran for that tick and no other; no job carries the tick environment
/// without a tick.
fn check_ticks(ev: &Evidence, s: &mut Summary) {
    let t = &ev.ticks;
    let v = &mut s.violations;
    s.ticks = t.runs.len() as u64;
    let Some(first) = t.runs.first() else {
        v.push(format!("schedule {SCHEDULE} fired no tick"));
        return;
    };
    for r in &t.runs {
        if r.status != "fired" || r.manual || r.job_id.is_none() {
            v.push(format!(
                "tick {:.0} is {}{}{}; catch-up all with overlap allow fires each tick as a job",
                r.fire_ms,
                r.status,
                if r.manual { ", manual" } else { "" },
                if r.job_id.is_none() {
                    ", without a job"
                } else {
                    ""
                }
            ));
        }
    }
    let first_due = (t.created_ms / 1000.0).floor() * 1000.0 + 1000.0;
    if (first.fire_ms - first_due).abs() > 0.5 {
        v.push(format!(
            "the first tick fired is {:.0}; the first after the schedule's creation is {first_due:.0}",
            first.fire_ms
        ));
    }
    for w in t.runs.windows(2) {
        let gap = w[1].fire_ms - w[0].fire_ms;
        if (gap - 1000.0).abs() > 0.5 {
            v.push(format!(
                "ticks {:.0} and {:.0} are {gap:.0} ms apart: {}",
                w[0].fire_ms,
                w[1].fire_ms,
                if gap > 1000.0 {
                    "the ticks between them never fired"
                } else {
                    "not one second"
                }
            ));
        }
    }
    if let Some(last) = t.runs.last() {
        if last.fire_ms < t.paused_ms - TICK_SLACK_MS {
            v.push(format!(
                "the last tick fired is {:.0}, {:.1} s before the schedule was paused: the \
                 scheduler stalled",
                last.fire_ms,
                (t.paused_ms - last.fire_ms) / 1000.0
            ));
        }
    }
    let mut tick_of: HashMap<&str, f64> = HashMap::new();
    for r in &t.runs {
        if let Some(job) = &r.job_id {
            if let Some(other) = tick_of.insert(job.as_str(), r.fire_ms) {
                v.push(format!(
                    "job {job} was created by ticks {other:.0} and {:.0}",
                    r.fire_ms
                ));
            }
            if !t.jobs.contains_key(job) {
                v.push(format!(
                    "tick {:.0} names job {job}, which is not stored",
                    r.fire_ms
                ));
            }
        }
    }
    let mut labelled: Vec<(&String, &String)> = t.jobs.iter().collect();
    labelled.sort();
    for (job, state) in labelled {
        if !tick_of.contains_key(job.as_str()) {
            v.push(format!(
                "job {job} carries the tick environment but no tick created it"
            ));
        }
        if state != "succeeded" {
            v.push(format!("tick job {job} ended {state}, not succeeded"));
        }
    }
    let mut jobs_of_tick: BTreeMap<i64, BTreeSet<&str>> = BTreeMap::new();
    let mut ran: HashSet<&str> = HashSet::new();
    for line in t.ledger.lines() {
        let parsed = line.split_once(' ').and_then(|(job, at)| {
            chrono::DateTime::parse_from_rfc3339(at)
                .ok()
                .map(|at| (job, at.timestamp_millis()))
        });
        let Some((job, at)) = parsed else {
            v.push(format!("tick ledger line is garbled: {line:?}"));
            continue;
        };
        ran.insert(job);
        jobs_of_tick.entry(at).or_default().insert(job);
        match tick_of.get(job) {
            None => v.push(format!(
                "a process ran for tick {at} as job {job}, which no tick created"
            )),
            Some(&fire) if (fire - at as f64).abs() > 0.5 => v.push(format!(
                "job {job} ran for tick {at} but was created for tick {fire:.0}"
            )),
            Some(_) => {}
        }
    }
    for (at, jobs) in &jobs_of_tick {
        if jobs.len() > 1 {
            v.push(format!("tick {at} ran as {} jobs: {jobs:?}", jobs.len()));
        }
    }
    for r in &t.runs {
        if let Some(job) = &r.job_id {
            if t.jobs.get(job).map(String::as_str) == Some("succeeded")
                && !ran.contains(job.as_str())
            {
                v.push(format!(
                    "tick {:.0}'s job {job} succeeded but its process never ran",
                    r.fire_ms
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(job: &str, n: i32, state: &str, started: f64, finished: f64) -> AttemptRow {
        AttemptRow {
            id: format!("{job}-a{n}"),
            job_id: job.into(),
            number: n,
            state: state.into(),
            started_ms: started,
            finished_ms: Some(finished),
            exit_code: match state {
                "succeeded" => Some(0),
                "failed" => Some(1),
                "failed_permanent" => Some(127),
                _ => None,
            },
        }
    }

    fn ledger_line(job: &str, n: u32) -> String {
        format!("{job} {job}-a{n} {n}\n")
    }

    /// A consistent history: a flaky job that failed once, was lost once, then succeeded;
    /// and a hopeless job that failed max_retries + 1 times.
    fn good() -> Evidence {
        let mut ev = Evidence::default();
        ev.plans.insert("j".into(), Plan::Flaky(1));
        ev.plans.insert("h".into(), Plan::Hopeless);
        ev.submitted = 2;
        ev.jobs
            .insert("j".into(), ("succeeded".into(), "exit code 0".into()));
        ev.jobs.insert(
            "h".into(),
            ("permanent_failed".into(), "exit code 1".into()),
        );
        ev.attempts = vec![
            attempt("h", 1, "failed", 0.0, 100.0),
            attempt("h", 2, "failed", 300.0, 400.0),
            attempt("h", 3, "failed", 800.0, 900.0),
            attempt("h", 4, "failed", 1_800.0, 1_900.0),
            attempt("j", 1, "failed", 0.0, 100.0),
            attempt("j", 2, "lost", 300.0, 2_000.0),
            attempt("j", 3, "succeeded", 2_100.0, 3_000.0),
        ];
        for a in &ev.attempts {
            if a.state != "lost" {
                ev.logs.insert(a.id.clone(), expected_log(&a.job_id, &a.id));
            }
        }
        // The lost attempt had sent its first ten lines.
        let partial: Vec<u8> = expected_log("j", "j-a2")
            .split_inclusive(|b| *b == b'\n')
            .take(10)
            .flatten()
            .copied()
            .collect();
        ev.logs.insert("j-a2".into(), partial);
        ev.ledger = [("h", 1), ("h", 2), ("h", 3), ("h", 4)]
            .into_iter()
            .chain([("j", 1), ("j", 2), ("j", 3)])
            .map(|(j, n)| ledger_line(j, n))
            .collect();
        ev.first_seen.insert(
            "j-a1".into(),
            Outcome {
                state: "failed".into(),
                exit_code: Some(1),
                finished_ms: Some(100.0),
            },
        );
        // Both jobs carry the key; two of their attempts hold it at once, never three.
        ev.keyed = ["j", "h"].map(String::from).into();
        ev.spans = ev
            .attempts
            .iter()
            .filter(|a| a.state != "lost")
            .map(|a| {
                let done = a.finished_ms.unwrap_or(0.0);
                format!(
                    "start {} {}\nend {} {}\n",
                    a.id,
                    a.started_ms + 5.0,
                    a.id,
                    done - 5.0
                )
            })
            .collect();
        // Ticks at 11, 12, 13 and 14 s, each run once by its own job.
        ev.ticks = Ticks {
            created_ms: 10_500.0,
            paused_ms: 14_200.0,
            runs: (1..=4)
                .map(|i| TickRun {
                    fire_ms: 10_000.0 + 1_000.0 * i as f64,
                    status: "fired".into(),
                    manual: false,
                    job_id: Some(format!("t{i}")),
                })
                .collect(),
            jobs: (1..=4)
                .map(|i| (format!("t{i}"), "succeeded".to_string()))
                .collect(),
            ledger: (1..=4)
                .map(|i| format!("t{i} {}\n", tick_time(10 + i)))
                .collect(),
        };
        ev
    }

    /// A tick's `{scheduled_at}` for second `s` of the epoch.
    fn tick_time(s: i64) -> String {
        chrono::DateTime::from_timestamp(s, 0)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default()
    }

    /// Index of attempt `n` of job `job` in `good()`'s attempts.
    fn at(ev: &Evidence, job: &str, n: i32) -> usize {
        ev.attempts
            .iter()
            .position(|a| a.job_id == job && a.number == n)
            .unwrap()
    }

    #[test]
    fn a_consistent_history_passes_and_counts_the_extra_run() {
        let s = check(&good());
        assert!(s.violations.is_empty(), "{:?}", s.violations);
        assert_eq!(s.executions, 7);
        assert_eq!(s.extra_executions, 1);
        assert_eq!(s.observed, 1);
        assert_eq!(s.keyed_jobs, 2);
        assert_eq!(s.key_peak, 2);
        assert_eq!(s.ticks, 4);
    }

    #[test]
    fn a_job_parked_after_many_losses_is_reported_not_counted_as_planned() {
        let mut ev = good();
        ev.jobs.get_mut("j").unwrap().0 = "permanent_failed".into();
        let j3 = at(&ev, "j", 3);
        ev.attempts.remove(j3);
        ev.logs.remove("j-a3");
        ev.ledger = ev.ledger.replace(&ledger_line("j", 3), "");
        for n in 3..=(MAX_LOST as i32 + 3) {
            let t = 3_000.0 + 200.0 * n as f64;
            ev.attempts.push(attempt("j", n, "lost", t, t + 100.0));
        }
        let v = check(&ev).violations;
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("was parked after 12 losses"), "{v:?}");
    }

    fn violations_after(f: impl FnOnce(&mut Evidence)) -> Vec<String> {
        let mut ev = good();
        f(&mut ev);
        check(&ev).violations
    }

    /// A way of breaking one promise in a consistent history.
    type Breakage = Box<dyn FnOnce(&mut Evidence)>;

    /// One broken history per violation `check` can report, each expected to be named.
    #[test]
    fn each_broken_promise_is_reported() {
        let cases: Vec<(&str, Breakage)> = vec![
            (
                "not terminal",
                Box::new(|e| e.not_terminal = Some((2, Duration::from_secs(120)))),
            ),
            (
                "distinct job ids came back",
                Box::new(|e| e.submitted = 3),
            ),
            (
                "job x is stored but no submission returned it",
                Box::new(|e| {
                    e.jobs.insert("x".into(), ("pending".into(), String::new()));
                }),
            ),
            (
                "job j was submitted but is not stored",
                Box::new(|e| {
                    e.jobs.remove("j");
                }),
            ),
            (
                "expected succeeded",
                Box::new(|e| e.jobs.get_mut("j").unwrap().0 = "permanent_failed".into()),
            ),
            (
                "was parked after",
                Box::new(|e| {
                    e.jobs.get_mut("j").unwrap().0 = "permanent_failed".into();
                    for n in 4..=(MAX_LOST as i32 + 4) {
                        e.attempts.push(attempt("j", n, "lost", 3_100.0, 3_200.0));
                    }
                }),
            ),
            (
                "2 succeeded attempts",
                Box::new(|e| {
                    let i = at(e, "j", 2);
                    e.attempts[i].state = "succeeded".into();
                }),
            ),
            (
                "succeeded but its last attempt did not",
                Box::new(|e| {
                    e.attempts
                        .push(attempt("j", 4, "released", 3_100.0, 3_200.0));
                }),
            ),
            (
                "failed 3 times; exactly max_retries + 1 = 4 expected",
                Box::new(|e| {
                    let i = at(e, "h", 4);
                    e.attempts.remove(i);
                    e.logs.remove("h-a4");
                    e.ledger = e.ledger.replace(&ledger_line("h", 4), "");
                }),
            ),
            (
                "failed 5 times; max_retries is 3",
                Box::new(|e| {
                    e.plans.insert("j".into(), Plan::Flaky(3));
                    for n in 4..=7 {
                        e.attempts.push(attempt("j", n, "failed", 9e3, 9e3));
                    }
                }),
            ),
            (
                "exited 127 yet was retried",
                Box::new(|e| {
                    e.plans.insert("h".into(), Plan::Permanent);
                    for a in e.attempts.iter_mut().filter(|a| a.job_id == "h") {
                        a.state = "failed_permanent".into();
                        a.exit_code = Some(127);
                    }
                }),
            ),
            (
                "attempts in unknown states",
                Box::new(|e| {
                    let i = at(e, "j", 2);
                    e.attempts[i].state = "limbo".into();
                }),
            ),
            (
                "not 1..n",
                Box::new(|e| {
                    let i = at(e, "j", 3);
                    e.attempts[i].number = 4;
                }),
            ),
            (
                "attempt #1 j-a1 ended failed with exit code Some(0); the plan predicts failed with exit code 1",
                Box::new(|e| {
                    let i = at(e, "j", 1);
                    e.attempts[i].exit_code = Some(0);
                }),
            ),
            (
                "attempt #1 j-a1 ended failed with exit code Some(1); the plan predicts succeeded",
                Box::new(|e| {
                    // A Succeed job that recorded a failure, then succeeded.
                    e.plans.insert("j".into(), Plan::Succeed);
                }),
            ),
            (
                "attempt #3 j-a3 ended failed with exit code Some(1)",
                Box::new(|e| {
                    // The result of another attempt filed under this one.
                    let i = at(e, "j", 3);
                    e.attempts[i].state = "failed".into();
                    e.attempts[i].exit_code = Some(1);
                }),
            ),
            (
                "policy's wait",
                Box::new(|e| {
                    let i = at(e, "j", 2);
                    e.attempts[i].started_ms = 150.0;
                }),
            ),
            (
                "observer saw no finished attempt",
                Box::new(|e| e.first_seen.clear()),
            ),
            (
                "result was replaced",
                Box::new(|e| {
                    let i = at(e, "j", 1);
                    e.attempts[i].finished_ms = Some(150.0);
                }),
            ),
            (
                "attempt j-a9 was seen finished, then vanished",
                Box::new(|e| {
                    e.first_seen.insert(
                        "j-a9".into(),
                        Outcome {
                            state: "failed".into(),
                            exit_code: Some(1),
                            finished_ms: Some(1.0),
                        },
                    );
                }),
            ),
            (
                "ledger line is garbled: \"j j-a3\"",
                Box::new(|e| e.ledger.push_str("j j-a3\n")),
            ),
            (
                "ledger line is garbled: \"j j-a3 three\"",
                Box::new(|e| e.ledger.push_str("j j-a3 three\n")),
            ),
            (
                "job j ran as attempt ghost, which is not recorded",
                Box::new(|e| e.ledger.push_str("j ghost 9\n")),
            ),
            (
                "ledger says attempt j-a3 is job h #3; stored: job j #3",
                Box::new(|e| {
                    e.ledger = e.ledger.replace(&ledger_line("j", 3), "h j-a3 3\n");
                }),
            ),
            (
                "attempt j-a3 of job j ran twice",
                Box::new(|e| e.ledger.push_str(&ledger_line("j", 3))),
            ),
            (
                "attempt j-a4 ran and is still running",
                Box::new(|e| {
                    let mut a = attempt("j", 4, "running", 3_100.0, 0.0);
                    a.finished_ms = None;
                    e.attempts.push(a);
                    e.ledger.push_str(&ledger_line("j", 4));
                }),
            ),
            (
                "job h (Hopeless) ran 3 times to a recorded result; the plan makes 4",
                Box::new(|e| {
                    // The last failure recorded as lost: one planned run short.
                    let i = at(e, "h", 4);
                    e.attempts[i].state = "lost".into();
                    e.attempts[i].exit_code = None;
                }),
            ),
            (
                "job j (Flaky(1)) ran 3 times to a recorded result",
                Box::new(|e| {
                    // The lost run recorded as a failure: one run beyond the plan's
                    // that no lost attempt explains.
                    let i = at(e, "j", 2);
                    e.attempts[i].state = "failed".into();
                    e.attempts[i].exit_code = Some(1);
                    e.logs.insert("j-a2".into(), expected_log("j", "j-a2"));
                }),
            ),
            (
                "attempt j-a3 of job j reported exit code Some(0) but never ran",
                Box::new(|e| {
                    e.ledger = e.ledger.replace(&ledger_line("j", 3), "");
                }),
            ),
            (
                "attempt j-a3 (succeeded) of job j: stored log is not what it printed",
                Box::new(|e| {
                    e.logs.insert("j-a3".into(), expected_log("j", "j-a1"));
                }),
            ),
            (
                "attempt h-a2 (failed) of job h: stored log is not what it printed",
                Box::new(|e| {
                    e.logs.insert("h-a2".into(), expected_log("j", "j-a1"));
                }),
            ),
            (
                "attempt j-a2 (lost) of job j: stored log is not what it printed",
                Box::new(|e| {
                    // A lost attempt's partial log that came from another attempt.
                    let other = expected_log("j", "j-a3");
                    e.logs.insert("j-a2".into(), other[..40].to_vec());
                }),
            ),
            (
                "attempt j-a3 (succeeded) of job j: stored log is not what it printed",
                Box::new(|e| {
                    let mut short = expected_log("j", "j-a3");
                    short.truncate(20);
                    e.logs.insert("j-a3".into(), short);
                }),
            ),
            (
                "attempt j-a3 (succeeded) of job j has no stored log",
                Box::new(|e| {
                    e.logs.remove("j-a3");
                }),
            ),
            (
                "attempt h-a1 (failed) of job h has no stored log",
                Box::new(|e| {
                    e.logs.remove("h-a1");
                }),
            ),
            (
                "3 attempts of jobs with key chaos:site (limit 2) were running at once at 50 ms",
                Box::new(|e| {
                    e.keyed.insert("x".into());
                    e.attempts.push(attempt("x", 1, "succeeded", 50.0, 60.0));
                }),
            ),
            (
                "3 processes of jobs with key chaos:site (limit 2) ran at once",
                Box::new(|e| {
                    // j's last attempt, by its own clock, ran beside h-a1 and j-a1.
                    e.spans = e.spans.replace("start j-a3 2105", "start j-a3 20");
                }),
            ),
            (
                "attempt h-a2 (failed) of keyed job h left no start and end time",
                Box::new(|e| e.spans = e.spans.replace("end h-a2", "end h-a9")),
            ),
            (
                "span line is garbled",
                Box::new(|e| e.spans.push_str("start h-a1\n")),
            ),
            (
                "fired no tick",
                Box::new(|e| e.ticks.runs.clear()),
            ),
            (
                "tick 12000 is skipped, without a job",
                Box::new(|e| {
                    e.ticks.runs[1].status = "skipped".into();
                    e.ticks.runs[1].job_id = None;
                }),
            ),
            (
                "the first tick fired is 11000; the first after the schedule's creation is 12000",
                Box::new(|e| e.ticks.created_ms = 11_000.0),
            ),
            (
                "ticks 12000 and 14000 are 2000 ms apart: the ticks between them never fired",
                Box::new(|e| {
                    e.ticks.runs.remove(2);
                }),
            ),
            (
                "the scheduler stalled",
                Box::new(|e| e.ticks.paused_ms = 30_000.0),
            ),
            (
                "job t1 was created by ticks 11000 and 12000",
                Box::new(|e| e.ticks.runs[1].job_id = Some("t1".into())),
            ),
            (
                "tick 13000 names job t3, which is not stored",
                Box::new(|e| {
                    e.ticks.jobs.remove("t3");
                }),
            ),
            (
                "job t9 carries the tick environment but no tick created it",
                Box::new(|e| {
                    e.ticks.jobs.insert("t9".into(), "succeeded".into());
                }),
            ),
            (
                "tick job t2 ended permanent_failed, not succeeded",
                Box::new(|e| {
                    e.ticks.jobs.insert("t2".into(), "permanent_failed".into());
                }),
            ),
            (
                "tick ledger line is garbled",
                Box::new(|e| e.ticks.ledger.push_str("t1 yesterday\n")),
            ),
            (
                "as job zz, which no tick created",
                Box::new(|e| e.ticks.ledger.push_str(&format!("zz {}\n", tick_time(11)))),
            ),
            (
                "job t2 ran for tick 11000 but was created for tick 12000",
                Box::new(|e| e.ticks.ledger.push_str(&format!("t2 {}\n", tick_time(11)))),
            ),
            (
                "tick 11000 ran as 2 jobs",
                Box::new(|e| e.ticks.ledger.push_str(&format!("t2 {}\n", tick_time(11)))),
            ),
            (
                "tick 14000's job t4 succeeded but its process never ran",
                Box::new(|e| e.ticks.ledger = e.ticks.ledger.replace("t4 ", "t3 ")),
            ),
        ];
        for (want, f) in cases {
            let v = violations_after(f);
            assert!(v.iter().any(|x| x.contains(want)), "{want}: {v:?}");
        }
    }

    #[test]
    fn plans_predict_each_attempts_exit_code() {
        assert_eq!(Plan::Succeed.exit_code(1), 0);
        assert_eq!(Plan::Flaky(2).exit_code(2), 1);
        assert_eq!(Plan::Flaky(2).exit_code(3), 0);
        assert_eq!(Plan::Permanent.exit_code(1), 127);
        assert_eq!(Plan::Hopeless.exit_code(4), 1);
        assert_eq!(Plan::Flaky(2).planned_runs(0), 3);
        // Attempt 1 lost: attempt 2 fails, attempt 3 succeeds.
        assert_eq!(Plan::Flaky(2).planned_runs(1), 2);
        assert_eq!(Plan::Succeed.planned_runs(3), 1);
        assert_eq!(Plan::Hopeless.planned_runs(2), MAX_RETRIES + 1);
        assert_eq!(Plan::result_state(127), "failed_permanent");
    }

    #[test]
    fn ledger_lines_parse_or_are_reported_garbled() {
        let l = parse_ledger("a b 1\nnot a line\n");
        assert_eq!(l[0], Ok(("a".into(), "b".into(), 1)));
        assert_eq!(l[1], Err("not a line".into()));
    }

    #[test]
    fn waits_follow_the_policy_arithmetic() {
        assert_eq!(min_wait_ms(1), 160.0);
        assert_eq!(min_wait_ms(3), 640.0);
    }
}
