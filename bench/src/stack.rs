//! The stack under test: a PostgreSQL server, a fresh database per stack, a coordinator and
//! workers as separate processes. Every process is killed when its guard is dropped, on
//! success and on error alike.

use crate::util;
use anyhow::{anyhow, bail, Context, Result};
use drover_pgserver::{PgServer, PgServerConfig};
use drover_proto::auth::{AuthChannel, BearerToken};
use drover_proto::v1::job_service_client::JobServiceClient;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// The drover binaries next to the bench binary (same target directory and profile).
#[derive(Clone, Debug)]
pub struct Bins {
    pub bench: PathBuf,
    pub coordinator: PathBuf,
    pub worker: PathBuf,
}

impl Bins {
    pub fn locate() -> Result<Bins> {
        let bench = std::env::current_exe().context("locating the drover-bench binary")?;
        let dir = bench
            .parent()
            .ok_or_else(|| anyhow!("{} has no parent directory", bench.display()))?;
        let find = |name: &str| {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                bail!(
                    "{} is missing: build the binaries first with `cargo build --release --bins` \
                     (the bench uses the ones in its own target directory, {})",
                    p.display(),
                    dir.display()
                )
            }
        };
        Ok(Bins {
            coordinator: find("drover-coordinator")?,
            worker: find("drover-worker")?,
            bench,
        })
    }

    /// "release" or "debug", from the target directory the binaries are in.
    pub fn profile(&self) -> String {
        self.bench
            .parent()
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "?".into())
    }
}

/// Where the bench's databases live: a private server, or the one DATABASE_URL names.
pub enum Server {
    Private(PgServer),
    External { admin_url: String },
}

impl Server {
    pub async fn start(tmp: &Path) -> Result<Server> {
        match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => {
                // Fail early with a clear message if it does not answer.
                sql(&url).await?;
                Ok(Server::External { admin_url: url })
            }
            _ => {
                // Durability defaults are kept on purpose: the headline numbers are for a
                // server that fsyncs its commits.
                let pg = PgServer::start(PgServerConfig {
                    data_dir: tmp.join("pg"),
                    port: None,
                    bin_dir: None,
                    settings: Vec::new(),
                })
                .await
                .context("starting a private PostgreSQL (or set DATABASE_URL)")?;
                Ok(Server::Private(pg))
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Server::Private(_) => "private server started by the bench".into(),
            Server::External { .. } => "DATABASE_URL".into(),
        }
    }

    /// A URL for server-wide queries (version, settings).
    pub fn admin_url(&self) -> String {
        match self {
            Server::Private(pg) => pg.url("postgres"),
            Server::External { admin_url } => admin_url.clone(),
        }
    }

    pub fn url(&self, db: &str) -> String {
        match self {
            Server::Private(pg) => pg.url(db),
            Server::External { admin_url } => drover_pgserver::with_database(admin_url, db),
        }
    }

    /// Creates a fresh database and returns a guard that drops it.
    pub async fn create_db(&self, name: &str) -> Result<Db> {
        match self {
            Server::Private(pg) => {
                pg.create_database(name)
                    .await
                    .with_context(|| format!("creating database {name}"))?;
            }
            Server::External { admin_url } => {
                let c = sql(admin_url).await?;
                c.batch_execute(&format!("CREATE DATABASE {name}"))
                    .await
                    .with_context(|| format!("creating database {name} on DATABASE_URL"))?;
            }
        }
        Ok(Db {
            name: name.to_string(),
            url: self.url(name),
            admin_url: match self {
                Server::Private(_) => None,
                Server::External { admin_url } => Some(admin_url.clone()),
            },
        })
    }

    /// The private server's postmaster, for CPU accounting.
    pub fn postmaster_pid(&self) -> Option<i32> {
        match self {
            Server::Private(pg) => pg.recorded_pid(),
            Server::External { .. } => None,
        }
    }

    pub async fn stop(self) -> Result<()> {
        if let Server::Private(mut pg) = self {
            pg.stop().await.context("stopping the private PostgreSQL")?;
        }
        Ok(())
    }
}

/// A connection to `url`, its driver running on a task of its own.
pub async fn sql(url: &str) -> Result<tokio_postgres::Client> {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to PostgreSQL at {url}"))?;
    tokio::spawn(conn);
    Ok(c)
}

/// A bench database; dropped (on an external server) when the guard goes. A private
/// server's databases go with its data directory.
pub struct Db {
    pub name: String,
    pub url: String,
    admin_url: Option<String>,
}

impl Drop for Db {
    fn drop(&mut self) {
        let Some(admin) = self.admin_url.take() else {
            return;
        };
        let name = self.name.clone();
        // Drop cannot await: use a runtime of our own on a thread of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(c) = sql(&admin).await {
                    if let Err(e) = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await
                    {
                        eprintln!("drover-bench: could not drop database {name}: {e}");
                    }
                }
            });
        })
        .join();
    }
}

/// A child process, SIGKILLed and reaped when dropped.
pub struct Proc {
    child: Child,
    pub log: PathBuf,
    /// Kept open so the coordinator never writes to a closed pipe.
    _stdout: Option<BufReader<ChildStdout>>,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns with stderr to `log`. The child gets SIGKILL if the bench dies (the bench runs
/// on one thread, the one that spawns).
fn spawn(mut cmd: Command, name: &str, log: &Path, env: &[(&str, String)]) -> Result<Child> {
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    // A DROVER_* setting in the caller's environment would change what is measured.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("DROVER_") || k == "DATABASE_URL" {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stderr(err)
        .env("RUST_LOG", "warn");
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    cmd.spawn().with_context(|| format!("spawning {name}"))
}

/// Starts a coordinator on `db_url` whose files live in `dir` (log `<name>.log`), and
/// waits until it prints its address.
async fn start_coordinator(
    bins: &Bins,
    db_url: &str,
    dir: &Path,
    name: &str,
    env: &[(&str, String)],
) -> Result<(Proc, String, String)> {
    let log = dir.join(format!("{name}.log"));
    // Artifacts in scratch, never under the default /var/lib/drover.
    let mut env = env.to_vec();
    env.push((
        "DROVER_ARTIFACT_DIR",
        dir.join("artifacts").display().to_string(),
    ));
    let mut cmd = Command::new(&bins.coordinator);
    cmd.args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .arg("--database-url")
        .arg(db_url)
        .stdout(Stdio::piped());
    let mut child = spawn(cmd, "drover-coordinator", &log, &env)?;
    let stdout = child.stdout.take();
    let mut coordinator = Proc {
        child,
        log,
        _stdout: None,
    };
    let Some(stdout) = stdout else {
        bail!("coordinator has no stdout pipe");
    };
    // It prints DROVER_ADDR=... as its first line once it listens. Read it on a
    // blocking thread; if it never comes, killing the coordinator ends the read.
    let reader = tokio::task::spawn_blocking(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        let n = r.read_line(&mut line);
        // The second line is DROVER_HTTP=... (the HTTP listener's base URL).
        let mut http = String::new();
        let _ = r.read_line(&mut http);
        line.push_str(&http);
        (n, line, r)
    });
    let (n, line, reader) = match tokio::time::timeout(Duration::from_secs(60), reader).await {
        Ok(r) => r.context("reading the coordinator's address")?,
        Err(_) => {
            coordinator.kill();
            bail!(
                "coordinator did not start listening within 60 s; its log:\n{}",
                coordinator.log_tail(30)
            );
        }
    };
    let mut lines = line.lines();
    let first = lines.next().unwrap_or("").trim().to_string();
    let http = lines
        .next()
        .and_then(|l| l.trim().strip_prefix("DROVER_HTTP="))
        .unwrap_or("")
        .to_string();
    let addr = match (n, first.strip_prefix("DROVER_ADDR=")) {
        (Ok(_), Some(a)) => a.to_string(),
        _ => {
            coordinator.kill();
            bail!(
                "coordinator did not start; its log ({}):\n{}",
                coordinator.log.display(),
                coordinator.log_tail(30)
            );
        }
    };
    coordinator._stdout = Some(reader);
    Ok((coordinator, addr, http))
}

struct WorkerSpec {
    slots: u32,
    queues: Vec<String>,
    state_dir: PathBuf,
}

/// Makes a token offline with `drover-coordinator token create` (the bootstrap path);
/// returns the secret it prints.
fn create_token(bins: &Bins, db_url: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(&bins.coordinator)
        .arg("--database-url")
        .arg(db_url)
        .args(["token", "create"])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .context("running drover-coordinator token create")?;
    let secret = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || secret.is_empty() {
        bail!(
            "drover-coordinator token create failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(secret)
}

/// A database, a coordinator and its workers.
pub struct Stack {
    pub bins: Bins,
    pub dir: PathBuf,
    pub addr: String,
    pub jobs: JobServiceClient<AuthChannel>,
    /// Access control is on, as in production: `jobs` carries an admin token, the workers
    /// this worker token (any worker id).
    pub worker_token: String,
    /// The HTTP listener's base URL (the dashboard rows).
    pub http: String,
    /// The admin token `jobs` carries (for clients of other coordinators, and clients
    /// the bench starts, e.g. Python's).
    pub admin_token: String,
    pub sql: tokio_postgres::Client,
    pub coordinator: Proc,
    pub started: Instant,
    /// The private PostgreSQL's postmaster (None on DATABASE_URL's server).
    pub postmaster: Option<i32>,
    pub workers: BTreeMap<String, Proc>,
    specs: BTreeMap<String, WorkerSpec>,
    /// Settings the coordinator started with (for more coordinators on the same database).
    env: Vec<(&'static str, String)>,
    /// Coordinator addresses workers started from now on are given (default: `addr`).
    pub worker_addrs: Vec<String>,
    // Dropped last: the processes above must be gone before their database is.
    _db: Db,
}

impl Stack {
    /// Creates database `drover_bench_<random>_<tag>`, starts a coordinator on it with the
    /// given extra environment, and connects.
    pub async fn start(
        server: &Server,
        bins: &Bins,
        tmp: &Path,
        tag: &str,
        env: &[(&'static str, String)],
    ) -> Result<Stack> {
        let name = format!(
            "drover_bench_{}_{tag}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        say!("[stack] {tag}: database {name}, starting the coordinator");
        let db = server.create_db(&name).await?;
        let dir = tmp.join(tag);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let (coordinator, addr, http) =
            start_coordinator(bins, &db.url, &dir, "coordinator", env).await?;
        let admin_token =
            create_token(bins, &db.url, &["--name", "bench-admin", "--role", "admin"])?;
        let worker_token = create_token(
            bins,
            &db.url,
            &[
                "--name",
                "bench-worker",
                "--role",
                "worker",
                "--worker",
                "*",
            ],
        )?;
        let bearer = BearerToken::new(Some(&admin_token)).map_err(anyhow::Error::msg)?;
        // (kept for clients the bench starts itself)
        let channel = tonic::transport::Endpoint::from_shared(addr.clone())
            .context("coordinator address")?
            .connect()
            .await
            .with_context(|| format!("connecting to the coordinator at {addr}"))?;
        let sql = sql(&db.url).await?;
        Ok(Stack {
            bins: bins.clone(),
            dir,
            addr,
            jobs: JobServiceClient::with_interceptor(channel, bearer)
                .max_decoding_message_size(64 << 20),
            worker_token,
            http,
            admin_token,
            sql,
            coordinator,
            started: Instant::now(),
            postmaster: server.postmaster_pid(),
            workers: BTreeMap::new(),
            specs: BTreeMap::new(),
            env: env.to_vec(),
            worker_addrs: Vec::new(),
            _db: db,
        })
    }

    /// Starts another coordinator on the same database; returns it and its address.
    pub async fn add_coordinator(&self, name: &str) -> Result<(Proc, String)> {
        let (p, addr, _) =
            start_coordinator(&self.bins, &self._db.url, &self.dir, name, &self.env).await?;
        Ok((p, addr))
    }

    /// A JobService client with the admin token for coordinator `addr`.
    pub async fn jobs_at(&self, addr: &str) -> Result<JobServiceClient<AuthChannel>> {
        let bearer = BearerToken::new(Some(&self.admin_token)).map_err(anyhow::Error::msg)?;
        let channel = tonic::transport::Endpoint::from_shared(addr.to_string())
            .context("coordinator address")?
            .connect()
            .await
            .with_context(|| format!("connecting to the coordinator at {addr}"))?;
        Ok(JobServiceClient::with_interceptor(channel, bearer).max_decoding_message_size(64 << 20))
    }

    /// Starts worker `name` (also its --worker-id) with its own state directory.
    pub fn add_worker(&mut self, name: &str, slots: u32, queues: &[&str]) -> Result<()> {
        let spec = WorkerSpec {
            slots,
            queues: queues.iter().map(|q| q.to_string()).collect(),
            state_dir: self.dir.join(format!("{name}-state")),
        };
        let proc = self.spawn_worker(name, &spec)?;
        self.workers.insert(name.to_string(), proc);
        self.specs.insert(name.to_string(), spec);
        Ok(())
    }

    fn spawn_worker(&self, name: &str, spec: &WorkerSpec) -> Result<Proc> {
        let log = self.dir.join(format!("{name}.log"));
        let mut cmd = Command::new(&self.bins.worker);
        let addrs = if self.worker_addrs.is_empty() {
            self.addr.clone()
        } else {
            self.worker_addrs.join(",")
        };
        cmd.arg("--coordinator")
            .arg(addrs)
            .arg("--worker-id")
            .arg(name)
            .arg("--state-dir")
            .arg(&spec.state_dir)
            .arg("--slots")
            .arg(spec.slots.to_string())
            .stdout(Stdio::null());
        for q in &spec.queues {
            cmd.arg("--queue").arg(q);
        }
        let child = spawn(
            cmd,
            "drover-worker",
            &log,
            &[("DROVER_WORKER_TOKEN", self.worker_token.clone())],
        )?;
        Ok(Proc {
            child,
            log,
            _stdout: None,
        })
    }

    pub fn worker_pid(&self, name: &str) -> Result<i32> {
        self.workers
            .get(name)
            .map(Proc::pid)
            .ok_or_else(|| anyhow!("no worker named {name:?} in this stack"))
    }

    /// CPU seconds used so far by each part of the stack, the bench itself and the whole
    /// machine; a difference of two shows where a row's time went.
    pub fn cpu(&self) -> Result<BTreeMap<String, f64>> {
        let mut m = BTreeMap::new();
        m.insert(
            "coordinator".to_string(),
            util::cpu_seconds(self.coordinator.pid())?,
        );
        for (name, w) in &self.workers {
            let (own, jobs) = util::cpu_times(w.pid())?;
            m.insert(format!("worker {name}"), own);
            m.insert(format!("jobs of {name}"), jobs);
        }
        if let Some(pm) = self.postmaster {
            m.insert("postgres".to_string(), util::postgres_cpu_seconds(pm)?);
        }
        let (own, children) = util::cpu_times(std::process::id() as i32)?;
        m.insert("bench".to_string(), own + children);
        m.insert("machine".to_string(), util::machine_busy_seconds()?);
        Ok(m)
    }

    /// SIGKILLs a worker and reaps it. Its jobs' process groups keep running, as after a
    /// real crash.
    pub fn kill_worker(&mut self, name: &str) -> Result<()> {
        let w = self
            .workers
            .get_mut(name)
            .ok_or_else(|| anyhow!("no worker named {name:?} in this stack"))?;
        w.kill();
        Ok(())
    }

    /// Starts a worker again with the same id and state directory.
    pub fn restart_worker(&mut self, name: &str) -> Result<()> {
        let spec = self
            .specs
            .get(name)
            .ok_or_else(|| anyhow!("no worker named {name:?} in this stack"))?;
        let proc = self.spawn_worker(name, spec)?;
        // The old guard (already dead) is dropped here.
        self.workers.insert(name.to_string(), proc);
        Ok(())
    }

    /// Waits until the named workers have a session with the coordinator.
    pub async fn wait_workers(&mut self, names: &[&str]) -> Result<()> {
        let ids: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n: i64 = self
                .sql
                .query_one(
                    "SELECT count(*) FROM workers WHERE id = ANY($1) AND connected",
                    &[&ids],
                )
                .await
                .context("counting connected workers")?
                .try_get(0)?;
            if n as usize == ids.len() {
                return Ok(());
            }
            for (name, w) in self.workers.iter_mut() {
                if w.exited() {
                    bail!("worker {name} exited; its log:\n{}", w.log_tail(30));
                }
            }
            if Instant::now() > deadline {
                bail!("workers {names:?} did not all connect within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the workers, the job process groups they left (SIGKILLed workers leave their
    /// jobs running), then the coordinator. The database is dropped with `self.db`.
    pub fn stop(&mut self) {
        for w in self.workers.values_mut() {
            w.kill();
        }
        for spec in self.specs.values() {
            let _ = drover_worker::state_dir::kill_leftover_groups(&spec.state_dir.join("pids"));
        }
        self.coordinator.kill();
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop();
    }
}
