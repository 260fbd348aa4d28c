//! The stack under test: a PostgreSQL server, a fresh database per stack, a coordinator and
//! workers as separate processes. Every process is killed when its guard is dropped, on
//! success and on error alike.

use crate::util;
use anyhow::{anyhow, Context, Result};
use drover_proto::auth::{AuthChannel, BearerToken};
use drover_proto::v1::job_service_client::JobServiceClient;
use drover_stack::tokens::{self, Grant};
use drover_stack::{CoordinatorLaunch, Db, WorkerLaunch};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

pub use drover_stack::{Proc, Server};

/// The bench binary itself (the jobs it runs are `drover-bench stamp` and the like) and the
/// drover binaries next to it (same target directory and profile).
#[derive(Clone, Debug)]
pub struct Bins {
    pub bench: PathBuf,
    pub drover: drover_stack::Bins,
}

impl Bins {
    pub fn locate() -> Result<Bins> {
        let bench = std::env::current_exe().context("locating the drover-bench binary")?;
        let drover = drover_stack::Bins::locate()
            .context("the bench uses the binaries in its own target directory (cargo build --release --bins)")?;
        Ok(Bins { bench, drover })
    }

    /// "release" or "debug", from the target directory the binaries are in.
    pub fn profile(&self) -> String {
        self.drover.profile()
    }
}

/// A connection to `url`, its driver running on a task of its own.
pub async fn sql(url: &str) -> Result<tokio_postgres::Client> {
    Ok(drover_stack::connect(url).await?)
}

/// Starts a coordinator on `db_url` whose files live in `dir` (log `<name>.log`), and
/// waits until it prints its address. Returns it, its gRPC address and HTTP base URL.
async fn start_coordinator(
    bins: &Bins,
    db_url: &str,
    dir: &Path,
    name: &str,
    env: &[(&str, String)],
) -> Result<(Proc, String, String)> {
    let mut launch = CoordinatorLaunch::new(&bins.drover.coordinator, name, dir, db_url);
    launch.env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    launch.rust_log = "warn".into();
    launch.isolated = true;
    let up = launch.start_within(Duration::from_secs(60)).await?;
    Ok((up.proc, up.addr, up.http))
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
    /// How each worker was started (to restart it alike) and when it last was.
    launches: BTreeMap<String, (WorkerLaunch, SystemTime)>,
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
        let admin_token = tokens::create(&db.url, &Grant::new("bench-admin", "admin", "")).await?;
        let worker_token =
            tokens::create(&db.url, &Grant::new("bench-worker", "worker", "*")).await?;
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
            launches: BTreeMap::new(),
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
        self.add_worker_with(name, slots, queues, &[])
    }

    /// [`Stack::add_worker`] with more command-line arguments for the worker.
    pub fn add_worker_with(
        &mut self,
        name: &str,
        slots: u32,
        queues: &[&str],
        args: &[&str],
    ) -> Result<()> {
        let addrs = if self.worker_addrs.is_empty() {
            self.addr.clone()
        } else {
            self.worker_addrs.join(",")
        };
        let mut launch = WorkerLaunch::new(&self.bins.drover.worker, name, &self.dir, &addrs);
        launch.slots = slots;
        launch.queues = queues.iter().map(|q| q.to_string()).collect();
        launch.args = args.iter().map(|a| a.to_string()).collect();
        launch.token = self.worker_token.clone();
        launch.rust_log = "warn".into();
        launch.isolated = true;
        self.workers.insert(name.to_string(), launch.start()?);
        self.launches
            .insert(name.to_string(), (launch, SystemTime::now()));
        Ok(())
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
        let (launch, started) = self
            .launches
            .get_mut(name)
            .ok_or_else(|| anyhow!("no worker named {name:?} in this stack"))?;
        *started = SystemTime::now();
        let proc = launch.start()?;
        // The old guard (already dead) is dropped here.
        self.workers.insert(name.to_string(), proc);
        Ok(())
    }

    /// Waits until the coordinator lists the named workers ALIVE, each heard from since it
    /// was last started.
    pub async fn wait_workers(&mut self, names: &[&str]) -> Result<()> {
        let mut ids = Vec::new();
        for name in names {
            let (_, started) = self
                .launches
                .get(*name)
                .ok_or_else(|| anyhow!("no worker named {name:?} in this stack"))?;
            ids.push((*name, *started));
        }
        let workers = &mut self.workers;
        drover_stack::ready::wait_workers_alive(
            &self.addr,
            &self.admin_token,
            &ids,
            Duration::from_secs(60),
            || {
                for (name, w) in workers.iter_mut() {
                    if w.exited() {
                        return Err(drover_stack::Error::Exited(format!(
                            "worker {name} exited; its log:\n{}",
                            w.log_tail(30)
                        )));
                    }
                }
                Ok(())
            },
        )
        .await
        .context("waiting for the workers")
    }

    /// Kills the workers, the job process groups they left (SIGKILLed workers leave their
    /// jobs running), then the coordinator. The database is dropped with `self.db`.
    pub fn stop(&mut self) {
        for w in self.workers.values_mut() {
            w.kill();
        }
        for (launch, _) in self.launches.values() {
            drover_stack::worker::stop_jobs_of(&launch.state_dir());
        }
        self.coordinator.kill();
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop();
    }
}
