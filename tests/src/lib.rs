//! Test harness for Drover's end-to-end tests: a fresh database per test (cloned from a
//! migrated template), real `drover-coordinator` and `drover-worker` processes, and gRPC
//! clients. Nothing here is mocked.
//!
//! Binaries are taken from the cargo target directory next to the test executable; the
//! test command (`scripts/test`) builds them first.

use anyhow::{anyhow, bail, Context, Result};
use drover_proto::auth::{AuthChannel, BearerToken};
use drover_proto::v1 as pb;
use drover_proto::v1::job_service_client::JobServiceClient;
use drover_proto::v1::worker_service_client::WorkerServiceClient;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub use drover_proto::v1;

/// `ms` milliseconds as a request's duration field.
pub fn ms(ms: u64) -> Option<drover_proto::Duration> {
    Some(drover_proto::durations::from_millis(ms))
}

/// A duration field in whole milliseconds (unset or invalid: 0).
pub fn ms_of(d: &Option<drover_proto::Duration>) -> u64 {
    drover_proto::durations::to_millis(d).unwrap_or(0)
}

pub mod chaos;
pub mod netns;
pub mod tls;

/// Admin connection for creating test databases. CI sets DATABASE_URL; locally the
/// machine's server on 127.0.0.1:5432 is used.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

async fn admin() -> Result<tokio_postgres::Client> {
    connect(&admin_url()).await.context("set DATABASE_URL")
}

/// A connection to `url`, its driver running on a task of its own.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    Ok(drover_stack::connect(url).await?)
}

/// Template database name: changes whenever the migrations change.
fn template_name() -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../coordinator/migrations");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("coordinator/migrations")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    for f in files {
        std::fs::read(&f).expect("migration file").hash(&mut h);
    }
    // The template also holds the harness's tokens.
    HARNESS_TOKENS.hash(&mut h);
    format!("drover_tmpl_{:016x}", h.finish())
}

/// A database of its own for one test, dropped afterwards.
pub struct TestDb {
    pub name: String,
    pub url: String,
    _guard: drover_stack::Db,
}

impl TestDb {
    pub async fn new() -> Result<TestDb> {
        let client = admin().await?;
        let tmpl = template_name();
        // Serialise template creation across test processes running in parallel.
        client
            .execute("SELECT pg_advisory_lock(7262001)", &[])
            .await?;
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&tmpl])
            .await?
            .is_some();
        if !exists {
            let building = format!("{tmpl}_building");
            // Separate statements: CREATE DATABASE cannot run in a (implicit) transaction.
            client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {building}"))
                .await?;
            client
                .batch_execute(&format!("CREATE DATABASE {building}"))
                .await?;
            drover_stack::database::migrate(&drover_pgserver::with_database(
                &admin_url(),
                &building,
            ))
            .await
            .context("migrating template")?;
            ensure_harness_tokens(&drover_pgserver::with_database(&admin_url(), &building)).await?;
            client
                .batch_execute(&format!("ALTER DATABASE {building} RENAME TO {tmpl}"))
                .await?;
        }
        let name = format!("drover_t_{}", uuid::Uuid::new_v4().simple());
        let r = client
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {tmpl}"))
            .await;
        client
            .execute("SELECT pg_advisory_unlock(7262001)", &[])
            .await?;
        r?;
        Ok(TestDb {
            url: drover_pgserver::with_database(&admin_url(), &name),
            _guard: drover_stack::Db::dropped_with_guard(&name, &admin_url()),
            name,
        })
    }

    /// Opens the outbox gate (V32) for good, as a coordinator with an event rule does while
    /// it runs: for tests that check the outbox rows a change writes.
    pub async fn want_outbox_events(&self) -> Result<()> {
        self.client()
            .await?
            .batch_execute("SELECT setval('drover_outbox_gate', 4000000000)")
            .await?;
        Ok(())
    }

    /// A connection to this test's database, for checks the API does not expose.
    pub async fn client(&self) -> Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }
}

/// Directory holding the workspace's built binaries: next to the running executable,
/// or one level up when it is a test in `target/<profile>/deps`.
pub fn bin_dir() -> PathBuf {
    drover_stack::bins::bin_dir().expect("executable directory")
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the binaries first (cargo build --workspace --bins), \
         or run ./scripts/test",
        p.display()
    );
    p
}

pub use drover_stack::{free_port, Proc};

/// Settings for a test coordinator: short leases so lost-worker tests are quick.
#[derive(Clone, Debug)]
pub struct CoordinatorOpts {
    pub port: u16,
    pub lease_ttl_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub reaper_interval_ms: u64,
    /// Contents of a TOML config file to pass with --config.
    pub config_toml: Option<String>,
    /// Database other than the test's own (e.g. a private server the test stops).
    pub database_url: Option<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Run on a network-namespace host (namespace name, its address) instead of
    /// loopback: listens on that address (see [`netns`]).
    pub netns: Option<(String, String)>,
}

impl Default for CoordinatorOpts {
    fn default() -> Self {
        CoordinatorOpts {
            port: 0,
            lease_ttl_ms: 3_000,
            heartbeat_interval_ms: 500,
            reaper_interval_ms: 200,
            config_toml: None,
            database_url: None,
            env: Vec::new(),
            netns: None,
        }
    }
}

/// The per-test world: a database, a scratch directory, and the processes started.
pub struct Cluster {
    pub db: TestDb,
    pub dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        stop_leftover_jobs(self.dir.path());
    }
}

/// Jobs of workers a test SIGKILLed are still running: stops those of every worker state
/// directory under `dir` the way a restarted worker would, so nothing is left behind.
pub fn stop_leftover_jobs(dir: &Path) {
    drover_stack::worker::stop_leftover_jobs(dir)
}

impl Cluster {
    pub async fn new() -> Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("drover-test-").tempdir()?;
        Ok(Cluster {
            db: TestDb::new().await?,
            dir,
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts a coordinator on the test's database and waits until it listens.
    pub fn coordinator(&self, name: &str, opts: &CoordinatorOpts) -> Result<(Proc, String)> {
        spawn_coordinator(self.dir.path(), name, &self.db.url, opts)
    }

    /// Starts a worker process connected to `addr`.
    pub fn worker(&self, name: &str, addr: &str, slots: u32, extra: &[&str]) -> Result<Proc> {
        self.worker_with_env(name, addr, slots, extra, &[])
    }

    pub fn worker_with_env(
        &self,
        name: &str,
        addr: &str,
        slots: u32,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Proc> {
        spawn_worker(self.dir.path(), name, addr, slots, extra, env)
    }
}

/// Starts a coordinator whose files (log, config, artifacts) live in `dir`, on
/// `opts.database_url` or else `db_url`, and waits until it listens. Returns it and its
/// gRPC address.
pub fn spawn_coordinator(
    dir: &Path,
    name: &str,
    db_url: &str,
    opts: &CoordinatorOpts,
) -> Result<(Proc, String)> {
    let mut launch = drover_stack::CoordinatorLaunch::new(
        &bin("drover-coordinator"),
        name,
        dir,
        opts.database_url.as_deref().unwrap_or(db_url),
    );
    launch.port = if opts.port == 0 {
        free_port()
    } else {
        opts.port
    };
    if let Some((ns, ip)) = &opts.netns {
        launch.netns = Some(ns.clone());
        launch.ip = ip.clone();
    }
    launch.config_toml = opts.config_toml.clone();
    launch.env = [(
        "DROVER_LEASE_TTL".to_string(),
        format!("{}ms", opts.lease_ttl_ms),
    )]
    .into_iter()
    .chain(opts.env.iter().cloned())
    .chain([
        (
            "DROVER_HEARTBEAT_INTERVAL".to_string(),
            format!("{}ms", opts.heartbeat_interval_ms),
        ),
        (
            "DROVER_REAPER_INTERVAL".to_string(),
            format!("{}ms", opts.reaper_interval_ms),
        ),
    ])
    .collect();
    launch.rust_log = "info,drover_coordinator=debug".into();
    let started = launch.start()?;
    // Databases other than a test's own (cloned from the template) lack the harness's
    // tokens: add them now that the coordinator has migrated it.
    if let Some(url) = &opts.database_url {
        let url = url.clone();
        std::thread::spawn(move || -> Result<()> {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(ensure_harness_tokens(&url))
        })
        .join()
        .map_err(|_| anyhow!("adding harness tokens panicked"))??;
    }
    Ok((started.proc, started.addr))
}

// ---------------------------------------------------------------- access control

/// Tokens every test database has (fixed, so tests and spawned processes can use them
/// without a handshake). Only for tests: real tokens are random.
pub const ADMIN_TOKEN: &str =
    "drover_4290f731b947daf4d3054cf3745dbab0eb27e1179a538a0ada50682430baaa6d";
pub const OPERATOR_TOKEN: &str =
    "drover_475e01d47c1e8d42fbb3bd3e27311c4c4e7f4c36ab29427bfa9f6b560f5c9f8f";
pub const VIEWER_TOKEN: &str =
    "drover_66918e80993c420c72a3efcc2bf49b4a304d9aa7baf36d2a2ce28ef36d8b496e";
/// Role worker, pattern `*`: any worker id (the harness's workers and fake workers).
pub const WORKER_TOKEN: &str =
    "drover_a8cb296cd1c9ed0314d96f9f8166244830dae9fbe86e349c60599938de6e8511";

/// (name, role, worker pattern, secret)
const HARNESS_TOKENS: [(&str, &str, &str, &str); 4] = [
    ("harness-admin", "admin", "", ADMIN_TOKEN),
    ("harness-operator", "operator", "", OPERATOR_TOKEN),
    ("harness-viewer", "viewer", "", VIEWER_TOKEN),
    ("harness-worker", "worker", "*", WORKER_TOKEN),
];

/// Adds the harness's tokens to a migrated database (those already there are kept).
pub async fn ensure_harness_tokens(db_url: &str) -> Result<()> {
    for (name, role, pattern, secret) in HARNESS_TOKENS {
        match insert_token(db_url, name, role, &[], pattern, None, secret).await {
            Ok(()) | Err(drover_coordinator::error::Error::FailedPrecondition(_)) => {}
            Err(e) => bail!("adding token {name}: {e}"),
        }
    }
    Ok(())
}

async fn insert_token(
    db_url: &str,
    name: &str,
    role: &str,
    queues: &[&str],
    pattern: &str,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    secret: &str,
) -> Result<(), drover_coordinator::error::Error> {
    let grant = drover_stack::tokens::Grant {
        name: name.into(),
        role: role.into(),
        queues: queues.iter().map(|q| q.to_string()).collect(),
        worker_pattern: pattern.into(),
        expires_at,
    };
    drover_stack::tokens::insert_with_secret(db_url, &grant, secret).await
}

/// Creates a token in a test's database (as `drover-coordinator token create` would) and
/// returns its secret. `expires_in`: lifetime from now; may be zero (already expired).
pub async fn create_token(
    db_url: &str,
    name: &str,
    role: &str,
    queues: &[&str],
    worker_pattern: &str,
    expires_in: Option<Duration>,
) -> Result<String> {
    let secret = drover_coordinator::auth::new_token();
    let expires_at = expires_in
        .map(|d| chrono::Utc::now() + chrono::Duration::milliseconds(d.as_millis() as i64));
    insert_token(
        db_url,
        name,
        role,
        queues,
        worker_pattern,
        expires_at,
        &secret,
    )
    .await
    .map_err(|e| anyhow!("creating token {name}: {e}"))?;
    Ok(secret)
}

/// Starts a worker process connected to `addr`, its state and log in `dir`.
pub fn spawn_worker(
    dir: &Path,
    name: &str,
    addr: &str,
    slots: u32,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Result<Proc> {
    Ok(worker_launch(dir, name, addr, slots, extra, env).start()?)
}

/// How the harness starts a worker (see [`spawn_worker`]); callers may change it first.
pub fn worker_launch(
    dir: &Path,
    name: &str,
    addr: &str,
    slots: u32,
    extra: &[&str],
    env: &[(&str, &str)],
) -> drover_stack::WorkerLaunch {
    let mut launch = drover_stack::WorkerLaunch::new(&bin("drover-worker"), name, dir, addr);
    launch.slots = slots;
    launch.args = extra.iter().map(|a| a.to_string()).collect();
    launch.token = WORKER_TOKEN.into();
    launch.rust_log = "info,drover_worker=debug".into();
    launch.env = [("DROVER_WORKER_KILL_GRACE", "2s")]
        .iter()
        .chain(env)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    launch
}

pub async fn channel(addr: &str) -> Result<Channel> {
    let start = Instant::now();
    loop {
        match tonic::transport::Endpoint::from_shared(addr.to_string())?
            .connect()
            .await
        {
            Ok(c) => return Ok(c),
            Err(e) if start.elapsed() > Duration::from_secs(30) => {
                return Err(anyhow!("connecting to {addr}: {e}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The clients tests use. Name these aliases (not the generated types) in signatures, so
/// that how a client authenticates can change in one place. Each call carries a token.
pub type JobsClient = JobServiceClient<AuthChannel>;
pub type WorkersClient = WorkerServiceClient<AuthChannel>;
pub type AdminClient = drover_proto::v1::admin_service_client::AdminServiceClient<AuthChannel>;

/// A channel whose calls carry `token` (none: no authorization header).
pub async fn channel_as(addr: &str, token: Option<&str>) -> Result<AuthChannel> {
    let bearer = BearerToken::new(token).map_err(|e| anyhow!(e))?;
    Ok(InterceptedService::new(channel(addr).await?, bearer))
}

/// JobService as the harness's admin.
pub async fn jobs(addr: &str) -> Result<JobsClient> {
    jobs_as(addr, Some(ADMIN_TOKEN)).await
}

/// WorkerService with the harness's worker token (any worker id).
pub async fn workers(addr: &str) -> Result<WorkersClient> {
    workers_as(addr, Some(WORKER_TOKEN)).await
}

/// AdminService as the harness's admin.
pub async fn admin_api(addr: &str) -> Result<AdminClient> {
    admin_as(addr, Some(ADMIN_TOKEN)).await
}

/// GET on the coordinator's HTTP listener as the harness's admin.
pub async fn http_get(url: &str) -> Result<reqwest::Response> {
    http_get_as(url, Some(ADMIN_TOKEN)).await
}

pub async fn http_get_as(url: &str, token: Option<&str>) -> Result<reqwest::Response> {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    Ok(req.send().await?)
}

pub async fn jobs_as(addr: &str, token: Option<&str>) -> Result<JobsClient> {
    Ok(JobServiceClient::new(channel_as(addr, token).await?))
}

pub async fn workers_as(addr: &str, token: Option<&str>) -> Result<WorkersClient> {
    Ok(WorkerServiceClient::new(channel_as(addr, token).await?))
}

pub async fn admin_as(addr: &str, token: Option<&str>) -> Result<AdminClient> {
    Ok(AdminClient::new(channel_as(addr, token).await?))
}

pub type AlertsClient = drover_proto::v1::alert_service_client::AlertServiceClient<AuthChannel>;

/// Client of AlertService (failure groups, alert rules, notifications) as the harness's admin.
pub async fn alerts_api(addr: &str) -> Result<AlertsClient> {
    Ok(AlertsClient::new(
        channel_as(addr, Some(ADMIN_TOKEN)).await?,
    ))
}

/// Calls one RPC with hand-made protobuf (e.g. bytes where the API has a string, to send
/// invalid UTF-8), over the same kind of connection as [`jobs`].
pub async fn raw_unary<Req, Resp>(
    addr: &str,
    path: &'static str,
    req: Req,
) -> std::result::Result<Resp, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let ch = channel(addr)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    grpc.unary(
        {
            // As the harness's admin, so the request reaches the handler under test.
            let mut r = tonic::Request::new(req);
            if let Ok(v) = format!("Bearer {ADMIN_TOKEN}").parse() {
                r.metadata_mut().insert("authorization", v);
            }
            r
        },
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        codec,
    )
    .await
    .map(|r| r.into_inner())
}

pub type SchedulesClient =
    drover_proto::v1::schedule_service_client::ScheduleServiceClient<AuthChannel>;

/// ScheduleService as the harness's admin.
pub async fn schedules(addr: &str) -> Result<SchedulesClient> {
    Ok(SchedulesClient::new(
        channel_as(addr, Some(ADMIN_TOKEN)).await?,
    ))
}

pub type QueuesClient = drover_proto::v1::queue_service_client::QueueServiceClient<AuthChannel>;

/// QueueService as the harness's admin.
pub async fn queues(addr: &str) -> Result<QueuesClient> {
    Ok(QueuesClient::new(
        channel_as(addr, Some(ADMIN_TOKEN)).await?,
    ))
}

/// A job spec running `argv` with a fast retry policy for tests.
pub fn spec(argv: &[&str]) -> pb::JobSpec {
    pb::JobSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        retry: Some(pb::RetryPolicy {
            initial_backoff: Some(drover_proto::durations::from_millis(100)),
            jitter: Some(0.0),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn sh(script: &str) -> pb::JobSpec {
    spec(&["sh", "-c", script])
}

pub async fn submit(c: &mut JobsClient, spec: pb::JobSpec) -> Result<pb::Job> {
    c.submit_job(pb::SubmitJobRequest { spec: Some(spec) })
        .await?
        .into_inner()
        .job
        .context("no job in response")
}

pub async fn get(c: &mut JobsClient, id: &str) -> Result<(pb::Job, Vec<pb::Attempt>)> {
    let r = c
        .get_job(pb::GetJobRequest { id: id.to_string() })
        .await?
        .into_inner();
    Ok((r.job.context("no job")?, r.attempts))
}

/// Safety limit for waits: generous, so a loaded machine never fails a correct system.
pub const PATIENCE: Duration = Duration::from_secs(90);

/// Polls until `pred` holds for the job, or fails after PATIENCE.
pub async fn wait_for<F>(
    c: &mut JobsClient,
    id: &str,
    what: &str,
    pred: F,
) -> Result<(pb::Job, Vec<pb::Attempt>)>
where
    F: Fn(&pb::Job, &[pb::Attempt]) -> bool,
{
    let start = Instant::now();
    loop {
        // Tolerate a coordinator that is restarting.
        if let Ok((job, attempts)) = get(c, id).await {
            if pred(&job, &attempts) {
                return Ok((job, attempts));
            }
            if start.elapsed() > PATIENCE {
                bail!("job {id}: gave up waiting for {what}; now {job:?} {attempts:?}");
            }
        } else if start.elapsed() > PATIENCE {
            bail!("job {id}: gave up waiting for {what}; coordinator unreachable");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn is_state(j: &pb::Job, s: pb::JobState) -> bool {
    j.state == s as i32
}

pub async fn wait_state(
    c: &mut JobsClient,
    id: &str,
    s: pb::JobState,
) -> Result<(pb::Job, Vec<pb::Attempt>)> {
    wait_for(c, id, &format!("{s:?}"), |j, _| is_state(j, s)).await
}

/// The stored log of one attempt (or all, with 0), split by stream.
pub async fn logs(
    c: &mut JobsClient,
    id: &str,
    attempt: u32,
) -> Result<(Vec<u8>, Vec<u8>, Vec<pb::LogChunk>)> {
    let mut s = c
        .stream_logs(pb::StreamLogsRequest {
            job_id: id.to_string(),
            attempt,
            follow: false,
        })
        .await?
        .into_inner();
    let (mut out, mut err, mut all) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(ch) = s.message().await?.and_then(|r| r.chunk) {
        if ch.stream == pb::LogStream::Stderr as i32 {
            err.extend_from_slice(&ch.data);
        } else {
            out.extend_from_slice(&ch.data);
        }
        all.push(ch);
    }
    Ok((out, err, all))
}

/// Whether a process exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Waits (up to PATIENCE) for a process to be gone; false if it is still alive then.
/// Killed processes linger briefly until their parent (often init) reaps them.
pub async fn wait_dead(pid: i32) -> bool {
    let start = Instant::now();
    while process_alive(pid) {
        if start.elapsed() > PATIENCE {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    true
}

/// Reads a pid the job printed as the first line of the given attempt's stdout.
pub async fn pid_from_log(c: &mut JobsClient, id: &str, attempt: u32) -> Result<i32> {
    let start = Instant::now();
    loop {
        // NOT_FOUND until the attempt exists: the job may not have been leased yet.
        let text = match logs(c, id, attempt).await {
            Ok((out, _, _)) => String::from_utf8_lossy(&out).into_owned(),
            Err(e) => format!("({e})"),
        };
        if let Some(Ok(pid)) = text.lines().next().map(|l| l.trim().parse::<i32>()) {
            return Ok(pid);
        }
        if start.elapsed() > PATIENCE {
            bail!("job {id} printed no pid: {text:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A TCP proxy between a worker and its coordinator that a test can cut (a partition),
/// slow down (latency on every segment) or reset (drop the open connections once).
pub struct Proxy {
    pub addr: String,
    cut: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU64>,
    conns: Arc<std::sync::Mutex<Vec<tokio_util::sync::CancellationToken>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target` ("127.0.0.1:PORT").
    pub async fn start(target: &str) -> Result<Proxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = format!("http://{}", listener.local_addr()?);
        let target = target.trim_start_matches("http://").to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let conns = Arc::new(std::sync::Mutex::new(Vec::<
            tokio_util::sync::CancellationToken,
        >::new()));
        let (cut2, delay2, conns2) = (cut.clone(), delay_ms.clone(), conns.clone());
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if cut2.load(Ordering::SeqCst) {
                    continue; // dropped: the partition refuses new connections too
                }
                let token = tokio_util::sync::CancellationToken::new();
                if let Ok(mut all) = conns2.lock() {
                    all.retain(|t| !t.is_cancelled());
                    all.push(token.clone());
                }
                let (target, delay) = (target.clone(), delay2.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let (ir, iw) = inbound.into_split();
                    let (or, ow) = outbound.into_split();
                    tokio::select! {
                        _ = pump(ir, ow, delay.clone()) => {}
                        _ = pump(or, iw, delay) => {}
                        _ = token.cancelled() => {}
                    }
                });
            }
        });
        Ok(Proxy {
            addr,
            cut,
            delay_ms,
            conns,
            task,
        })
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.reset();
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// Drops the open connections; new ones are accepted.
    pub fn reset(&self) {
        if let Ok(mut all) = self.conns.lock() {
            for t in all.drain(..) {
                t.cancel();
            }
        }
    }

    /// Holds every segment this long before forwarding it (0: none).
    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }
}

/// Copies one direction of a proxied connection until either side closes.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay_ms: Arc<AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let d = delay_ms.load(Ordering::SeqCst);
        if d > 0 {
            tokio::time::sleep(Duration::from_millis(d)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}
