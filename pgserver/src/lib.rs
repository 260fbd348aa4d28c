//! Starts a private PostgreSQL server from the machine's server binaries: the database of
//! `droverctl dev` when `DATABASE_URL` is unset, and a server that tests can stop and
//! start to simulate an outage.
//!
//! The server listens on 127.0.0.1 only, on a port of its own (never the system server's),
//! with trust authentication for the `postgres` user. Its Unix socket, if any, lives in
//! the data directory so it cannot clash with the system server's socket. The server log
//! is `<data_dir>/server.log`.
//!
//! PostgreSQL refuses to run as root, so when we are root, `initdb` and `postgres` run as
//! the `postgres` user (via `runuser`), the data directory is handed to that user, and
//! every parent directory of the data directory that others cannot search gets the
//! search bit for others (`o+x`) so that user can reach it.

use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long the server gets to accept connections after being spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a fast shutdown may take before we escalate to an immediate one.
const FAST_STOP_TIMEOUT: Duration = Duration::from_secs(20);
const IMMEDIATE_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Drop cannot wait long: it may run on an async runtime thread.
const DROP_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest Unix socket path (sun_path is 108 bytes including the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum PgServerError {
    #[error(
        "PostgreSQL server binaries not found (looked in $DROVER_PG_BIN, \
         /usr/lib/postgresql/*/bin and PATH): install the postgresql package or set \
         DROVER_PG_BIN to the directory holding initdb and postgres"
    )]
    NoBinaries,
    #[error(
        "{dir} (from {origin}) has no PostgreSQL server binaries (initdb, postgres): \
         point {origin} at PostgreSQL's bin directory, e.g. /usr/lib/postgresql/15/bin"
    )]
    NotABinDir { dir: PathBuf, origin: &'static str },
    #[error(
        "running as root, but there is no 'postgres' user to run PostgreSQL as: install \
         the postgresql package (it creates that user) or run as a non-root user"
    )]
    NoPostgresUser,
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("initdb for {dir} failed: {output}")]
    Initdb { dir: PathBuf, output: String },
    #[error("pg_basebackup into {dir} failed: {output}")]
    BaseBackup { dir: PathBuf, output: String },
    #[error(
        "port {0} on 127.0.0.1 is already in use: pick another port (or none to get a \
         free one) or stop what listens there"
    )]
    PortInUse(u16),
    #[error(
        "a PostgreSQL server (pid {pid}) is already running on {dir}: stop it (another \
         droverctl dev?) or use another data directory"
    )]
    AlreadyRunning { pid: i32, dir: PathBuf },
    #[error("PostgreSQL exited during startup; see {log}: {tail}")]
    Exited { log: PathBuf, tail: String },
    #[error("PostgreSQL did not accept connections within {timeout:?}; see {log}")]
    NotReady { timeout: Duration, log: PathBuf },
    #[error("PostgreSQL (pid {pid}) did not shut down; kill it by hand and see {log}")]
    StillRunning { pid: u32, log: PathBuf },
    #[error("PostgreSQL query failed: {0}")]
    Db(#[from] tokio_postgres::Error),
}

/// Maps an I/O error to [`PgServerError::Io`] saying what we were doing.
fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PgServerError {
    let what = what.into();
    move |source| PgServerError::Io { what, source }
}

#[derive(Debug, Clone, Default)]
pub struct PgServerConfig {
    /// Created (and initialised with `initdb`) if it holds no cluster yet; reused otherwise.
    pub data_dir: PathBuf,
    /// None: pick a free port.
    pub port: Option<u16>,
    /// None: search $DROVER_PG_BIN, /usr/lib/postgresql/*/bin (newest first), PATH.
    pub bin_dir: Option<PathBuf>,
    /// Extra `-c name=value` server settings. The defaults are durable; tests may pass
    /// fsync=off, synchronous_commit=off, full_page_writes=off for speed.
    pub settings: Vec<(String, String)>,
}

/// A running (or stopped, between [`PgServer::stop`] and [`PgServer::restart`]) private
/// PostgreSQL server. Dropping it stops the server.
#[derive(Debug)]
pub struct PgServer {
    cfg: PgServerConfig,
    bin: PathBuf,
    port: u16,
    /// `postgres` itself, or `runuser` (which waits for `postgres`) when we are root.
    child: Option<Child>,
}

/// Finds the directory holding `initdb` and `postgres`: `explicit`, else $DROVER_PG_BIN,
/// else the newest /usr/lib/postgresql/*/bin, else PATH.
pub fn find_bin_dir(explicit: Option<&Path>) -> Result<PathBuf, PgServerError> {
    if let Some(d) = explicit {
        return checked_bin_dir(d, "bin_dir");
    }
    // A variable the operator set must not be ignored silently.
    if let Some(d) = std::env::var_os("DROVER_PG_BIN").filter(|d| !d.is_empty()) {
        return checked_bin_dir(Path::new(&d), "DROVER_PG_BIN");
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(Vec<u32>, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name();
                let version = name
                    .to_str()?
                    .split('.')
                    .map(|p| p.parse().ok())
                    .collect::<Option<Vec<u32>>>()?;
                Some((version, e.path().join("bin")))
            })
            .filter(|(_, d)| is_bin_dir(d))
            .collect();
        versions.sort();
        if let Some((_, d)) = versions.pop() {
            return Ok(d);
        }
    }
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).find(|d| is_bin_dir(d)))
        .ok_or(PgServerError::NoBinaries)
}

fn is_bin_dir(d: &Path) -> bool {
    d.join("initdb").is_file() && d.join("postgres").is_file()
}

fn checked_bin_dir(d: &Path, origin: &'static str) -> Result<PathBuf, PgServerError> {
    if is_bin_dir(d) {
        Ok(d.to_path_buf())
    } else {
        Err(PgServerError::NotABinDir {
            dir: d.to_path_buf(),
            origin,
        })
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A command for a PostgreSQL program, run as the postgres user when we are root.
fn pg_command(program: &Path) -> Command {
    let mut c = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    // The postgres user may not be able to enter our working directory.
    c.current_dir("/").stdin(Stdio::null());
    c
}

fn free_port() -> Result<u16, PgServerError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("picking a free port"))?;
    Ok(l.local_addr().map_err(io("picking a free port"))?.port())
}

/// Fails early, with a clear message, if something already listens on `port`.
fn check_port_free(port: u16) -> Result<(), PgServerError> {
    match TcpListener::bind(("127.0.0.1", port)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(PgServerError::PortInUse(port)),
        Err(e) => Err(io(format!("checking port {port}"))(e)),
    }
}

/// Whether `pid` is a live PostgreSQL process (not a stale pid reused by something else).
fn is_live_postgres(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => {}
        Err(_) => return false,
    }
    match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(comm) => comm.starts_with("postgres") || comm.starts_with("postmaster"),
        // Without /proc we cannot tell; assume it is alive.
        Err(_) => true,
    }
}

/// The parent pid of `pid`, from /proc (None where there is no /proc).
fn parent_pid(pid: i32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Replaces the database (path) of a postgres:// URL, keeping host and query.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    let mut out = format!("{}/{}", &base[..host_end], db);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// The first line of postmaster.pid: the postmaster's pid.
fn read_pid_file(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// The last lines of `path` from byte `from` on (what this start of the server logged).
fn log_tail(path: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.seek(SeekFrom::Start(from));
        let _ = f.take(1 << 20).read_to_string(&mut text);
    }
    tail_lines(&text, 5)
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(n)..].join(" | ");
    if tail.is_empty() {
        "(no output)".into()
    } else {
        tail
    }
}

impl PgServer {
    /// Creates the cluster if `data_dir` holds none, starts the server and waits until it
    /// accepts connections.
    pub async fn start(mut cfg: PgServerConfig) -> Result<PgServer, PgServerError> {
        let bin = find_bin_dir(cfg.bin_dir.as_deref())?;
        // Relative paths would be resolved against the server's working directory.
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(io(format!("creating {}", cfg.data_dir.display())))?;
        cfg.data_dir = cfg
            .data_dir
            .canonicalize()
            .map_err(io(format!("resolving {}", cfg.data_dir.display())))?;
        if let Some(port) = cfg.port {
            check_port_free(port)?;
        }
        let fixed_port = cfg.port;
        let mut server = PgServer {
            cfg,
            bin,
            port: 0,
            child: None,
        };
        server.init().await?;
        // A picked port can be taken by someone else before postgres binds it: try again.
        let mut attempts = if fixed_port.is_some() { 1 } else { 3 };
        loop {
            server.port = match fixed_port {
                Some(p) => p,
                None => free_port()?,
            };
            attempts -= 1;
            match server.spawn().await {
                Err(PgServerError::PortInUse(_)) if attempts > 0 => {}
                Err(PgServerError::Exited { ref tail, .. })
                    if attempts > 0 && tail.contains("could not bind") => {}
                Err(e) => return Err(e),
                Ok(()) => {
                    tracing::info!(
                        port = server.port,
                        log = %server.log_path().display(),
                        "private PostgreSQL started"
                    );
                    return Ok(server);
                }
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.cfg.data_dir
    }

    pub fn log_path(&self) -> PathBuf {
        self.cfg.data_dir.join("server.log")
    }

    /// The postmaster's pid as it recorded it in `postmaster.pid` (e.g. for CPU accounting).
    pub fn recorded_pid(&self) -> Option<i32> {
        read_pid_file(&self.cfg.data_dir.join("postmaster.pid"))
    }

    /// `postgres://postgres@127.0.0.1:PORT/DATABASE`; `database` must be URL-safe.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Whether the server process is still running (false after stop or a crash).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// Prepares the data directory and runs initdb unless it already holds a cluster.
    async fn init(&self) -> Result<(), PgServerError> {
        prepare_dir(&self.cfg.data_dir)?;
        let dir = &self.cfg.data_dir;
        if dir.join("PG_VERSION").exists() {
            return Ok(());
        }
        let mut cmd = pg_command(&self.bin.join("initdb"));
        // --no-locale: the same collation everywhere, whatever the machine's locale.
        cmd.args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-locale"]);
        // Skipping the final fsync is only fine when the server will not fsync either.
        if self.setting("fsync") == Some("off") {
            cmd.arg("--no-sync");
        }
        cmd.arg("-D").arg(dir);
        let out = tokio::process::Command::from(cmd)
            .output()
            .await
            .map_err(io(if is_root() {
                "running initdb via runuser"
            } else {
                "running initdb"
            }))?;
        if !out.status.success() {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return Err(PgServerError::Initdb {
                dir: dir.clone(),
                output: tail_lines(&text, 8),
            });
        }
        Ok(())
    }

    fn setting(&self, name: &str) -> Option<&str> {
        self.cfg
            .settings
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Spawns the postmaster on `self.port` and waits until it accepts connections.
    async fn spawn(&mut self) -> Result<(), PgServerError> {
        let dir = self.cfg.data_dir.clone();
        check_port_free(self.port)?;

        // A postmaster.pid left by a crash stops the server from starting (as root,
        // postgres cannot even tell that the pid is gone), so remove it if it is stale.
        let pid_file = dir.join("postmaster.pid");
        if let Some(pid) = read_pid_file(&pid_file) {
            if is_live_postgres(pid) {
                return Err(PgServerError::AlreadyRunning { pid, dir });
            }
            tracing::info!(pid, "removing stale {}", pid_file.display());
            let _ = std::fs::remove_file(&pid_file);
        }

        let log = self.log_path();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io(format!("opening {}", log.display())))?;
        let log_start = out.metadata().map(|m| m.len()).unwrap_or(0);
        let err = out.try_clone().map_err(io("opening the server log"))?;

        let mut cmd = pg_command(&self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(&dir)
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                socket_dir_setting(&dir)
            ));
        for (k, v) in &self.cfg.settings {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        // Own process group: a Ctrl-C in the terminal must reach only us, so that we
        // shut down the server after the services that use it (runuser would also
        // answer SIGINT with SIGKILL for postgres).
        cmd.process_group(0).stdout(out).stderr(err);
        let child = cmd.spawn().map_err(io(if is_root() {
            "starting postgres via runuser"
        } else {
            "starting postgres"
        }))?;
        self.child = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if !self.is_running() {
                return Err(PgServerError::Exited {
                    tail: log_tail(&log, log_start),
                    log,
                });
            }
            if self.answers().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(PgServerError::NotReady {
                    timeout: READY_TIMEOUT,
                    log,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether our server (not some other one on the port) accepts connections.
    async fn answers(&self) -> bool {
        let attempt = async {
            let (c, conn) =
                tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            let row = c.query_one("SHOW data_directory", &[]).await?;
            Ok::<String, tokio_postgres::Error>(row.get(0))
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(served)) => same_dir(Path::new(&served), &self.cfg.data_dir),
            _ => false,
        }
    }

    /// The postmaster's pid, if it is running. As root our child is runuser, so the pid
    /// comes from postmaster.pid, checked to be runuser's child.
    fn postmaster_pid(&mut self) -> Option<Pid> {
        if !self.is_running() {
            return None;
        }
        let child = self.child.as_ref()?.id();
        if !is_root() {
            return Some(Pid::from_raw(child as i32));
        }
        let pid = self.recorded_pid()?;
        match parent_pid(pid) {
            Some(parent) if parent != child => None,
            _ => Some(Pid::from_raw(pid)),
        }
    }

    /// Sends `sig` to the postmaster; before it wrote its pid file, runuser gets SIGTERM
    /// instead (it passes that on to postgres).
    fn signal(&mut self, sig: Signal) {
        if let Some(pid) = self.postmaster_pid() {
            let _ = kill(pid, sig);
        } else if let Some(child) = self.child.as_ref() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        }
    }

    async fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.is_running() {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    fn wait_exit_blocking(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.is_running() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Fast shutdown (clients are disconnected, a checkpoint is written), waiting until
    /// the server has exited. Does nothing if it is not running.
    pub async fn stop(&mut self) -> Result<(), PgServerError> {
        self.shutdown(Signal::SIGINT, FAST_STOP_TIMEOUT).await
    }

    /// Immediate shutdown, like a crash: no checkpoint, recovery runs at the next start.
    pub async fn stop_immediate(&mut self) -> Result<(), PgServerError> {
        self.shutdown(Signal::SIGQUIT, IMMEDIATE_STOP_TIMEOUT).await
    }

    async fn shutdown(&mut self, sig: Signal, limit: Duration) -> Result<(), PgServerError> {
        if !self.is_running() {
            return Ok(());
        }
        self.signal(sig);
        if self.wait_exit(limit).await {
            return Ok(());
        }
        self.signal(Signal::SIGQUIT);
        if self.wait_exit(IMMEDIATE_STOP_TIMEOUT).await {
            return Ok(());
        }
        Err(PgServerError::StillRunning {
            pid: self.child.as_ref().map_or(0, |c| c.id()),
            log: self.log_path(),
        })
    }

    /// Starts the server again on the same port and data directory (stopping it first if
    /// it is running).
    pub async fn restart(&mut self) -> Result<(), PgServerError> {
        self.stop().await?;
        self.spawn().await
    }

    /// Starts a streaming replica of `primary` in `cfg.data_dir` (which must be empty or
    /// absent): a base backup with `pg_basebackup -R` (so it starts as a standby following
    /// the primary), then the server. With `synchronous_standby_names` set on the primary
    /// (e.g. `*`), every commit the primary acknowledges is on this replica too.
    pub async fn start_replica(
        mut cfg: PgServerConfig,
        primary: &PgServer,
    ) -> Result<PgServer, PgServerError> {
        let bin = find_bin_dir(cfg.bin_dir.as_deref())?;
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(io(format!("creating {}", cfg.data_dir.display())))?;
        cfg.data_dir = cfg
            .data_dir
            .canonicalize()
            .map_err(io(format!("resolving {}", cfg.data_dir.display())))?;
        prepare_dir(&cfg.data_dir)?;
        let mut cmd = pg_command(&bin.join("pg_basebackup"));
        cmd.args(["-h", "127.0.0.1", "-U", "postgres", "-X", "stream", "-R"])
            .args(["-c", "fast", "-p", &primary.port.to_string()])
            .arg("-D")
            .arg(&cfg.data_dir);
        let out = tokio::process::Command::from(cmd)
            .output()
            .await
            .map_err(io("running pg_basebackup"))?;
        if !out.status.success() {
            return Err(PgServerError::BaseBackup {
                dir: cfg.data_dir.clone(),
                output: tail_lines(
                    &format!(
                        "{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    ),
                    8,
                ),
            });
        }
        cfg.bin_dir = Some(bin);
        PgServer::start(cfg).await
    }

    /// Promotes a standby to primary and waits until it accepts writes.
    pub async fn promote(&self) -> Result<(), PgServerError> {
        let (c, conn) =
            tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        c.execute("SELECT pg_promote(true, 60)", &[]).await?;
        Ok(())
    }

    /// Creates database `name` unless it exists.
    pub async fn create_database(&self, name: &str) -> Result<(), PgServerError> {
        let (c, conn) =
            tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        let exists = c
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .await?
            .is_some();
        if exists {
            return Ok(());
        }
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match c.batch_execute(&format!("CREATE DATABASE {quoted}")).await {
            // Someone else created it since we looked.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {
                Ok(())
            }
            r => Ok(r?),
        }
    }
}

/// Hands an (existing) data directory to the postgres user when we are root, lets that
/// user reach it, and makes it private (PostgreSQL refuses one others can read).
fn prepare_dir(dir: &Path) -> Result<(), PgServerError> {
    if is_root() {
        let user = nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .ok_or(PgServerError::NoPostgresUser)?;
        nix::unistd::chown(dir, Some(user.uid), Some(user.gid))
            .map_err(|e| io(format!("handing {} to user postgres", dir.display()))(e.into()))?;
        // The postgres user must be able to reach the directory through its parents
        // (a tempdir is 0700 root): grant search, never read or write.
        for parent in dir.ancestors().skip(1) {
            if let Ok(meta) = std::fs::metadata(parent) {
                let mode = meta.permissions().mode();
                if mode & 0o001 == 0 {
                    let _ = std::fs::set_permissions(
                        parent,
                        std::fs::Permissions::from_mode(mode | 0o001),
                    );
                }
            }
        }
    }
    // PostgreSQL refuses a data directory others can read.
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    Ok(())
}

/// The unix_socket_directories value: the data directory, or none at all (we connect over
/// TCP) when its path cannot be used for a socket.
fn socket_dir_setting(dir: &Path) -> String {
    let s = dir.to_string_lossy();
    let socket_path_len = s.len() + "/.s.PGSQL.65535".len();
    if socket_path_len > MAX_SOCKET_PATH || s.contains([',', '"']) {
        String::new()
    } else {
        format!("\"{s}\"")
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

impl Drop for PgServer {
    /// Best effort, so that no server outlives us: fast shutdown, then immediate, then
    /// SIGKILL.
    fn drop(&mut self) {
        if !self.is_running() {
            return;
        }
        for sig in [Signal::SIGINT, Signal::SIGQUIT] {
            self.signal(sig);
            if self.wait_exit_blocking(DROP_STOP_TIMEOUT) {
                return;
            }
        }
        if let Some(pid) = self.postmaster_pid() {
            let _ = kill(pid, Signal::SIGKILL);
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast_settings() -> Vec<(String, String)> {
        ["fsync", "synchronous_commit", "full_page_writes"]
            .iter()
            .map(|k| (k.to_string(), "off".to_string()))
            .collect()
    }

    fn config(data_dir: PathBuf) -> PgServerConfig {
        PgServerConfig {
            data_dir,
            settings: fast_settings(),
            ..Default::default()
        }
    }

    async fn select_one(url: &str) -> Result<i32, tokio_postgres::Error> {
        let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        c.query_one("SELECT 1", &[]).await.map(|r| r.get(0))
    }

    /// Processes (other than zombies) whose command line mentions `dir`.
    fn processes_using(dir: &Path) -> Vec<String> {
        let needle = dir.to_string_lossy().into_owned();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                if cmdline.contains(&needle) {
                    found.push(cmdline);
                }
            }
        }
        found
    }

    #[tokio::test]
    async fn starts_stops_and_restarts_on_the_same_port() {
        let d = tempfile::tempdir().unwrap();
        let data_dir = d.path().join("pg");
        let mut pg = PgServer::start(config(data_dir.clone())).await.unwrap();
        assert!(pg.is_running());
        assert!(pg.log_path().exists());
        assert_eq!(select_one(&pg.url("postgres")).await.unwrap(), 1);

        pg.create_database("app").await.unwrap();
        pg.create_database("app").await.unwrap();
        assert_eq!(select_one(&pg.url("app")).await.unwrap(), 1);

        let port = pg.port();
        pg.stop().await.unwrap();
        assert!(!pg.is_running());
        assert!(select_one(&pg.url("app")).await.is_err());
        pg.stop().await.unwrap();

        pg.restart().await.unwrap();
        assert_eq!(pg.port(), port);
        assert_eq!(select_one(&pg.url("app")).await.unwrap(), 1);

        // A crash-like stop, then recovery on restart.
        pg.stop_immediate().await.unwrap();
        assert!(select_one(&pg.url("app")).await.is_err());
        pg.restart().await.unwrap();
        assert_eq!(select_one(&pg.url("app")).await.unwrap(), 1);

        assert!(!processes_using(&data_dir).is_empty());
        drop(pg);
        assert_eq!(processes_using(&data_dir), Vec::<String>::new());
    }

    #[tokio::test]
    async fn reuses_a_data_dir_despite_a_stale_pid_file() {
        let d = tempfile::tempdir().unwrap();
        let data_dir = d.path().join("pg");
        let pg = PgServer::start(config(data_dir.clone())).await.unwrap();
        pg.create_database("kept").await.unwrap();
        drop(pg);

        // As if a crashed run left its pid file behind, naming a pid that is now some
        // other process (ours).
        std::fs::write(
            data_dir.join("postmaster.pid"),
            format!("{}\n{}\n", std::process::id(), data_dir.display()),
        )
        .unwrap();
        let pg = PgServer::start(config(data_dir.clone())).await.unwrap();
        assert_eq!(select_one(&pg.url("kept")).await.unwrap(), 1);

        // A second server on a data directory in use is refused with a clear error.
        let err = PgServer::start(config(data_dir.clone())).await.unwrap_err();
        assert!(matches!(err, PgServerError::AlreadyRunning { .. }), "{err}");
        assert_eq!(select_one(&pg.url("kept")).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn relative_data_dir_and_fixed_port() {
        let d = tempfile::tempdir().unwrap();
        let port = free_port().unwrap();
        // Relative to the working directory of the test, like droverctl's .drover-dev/pg.
        let cwd = std::env::current_dir().unwrap();
        let relative = pathdiff(&d.path().join("pg"), &cwd);
        let pg = PgServer::start(PgServerConfig {
            data_dir: relative,
            port: Some(port),
            ..config(PathBuf::new())
        })
        .await
        .unwrap();
        assert_eq!(pg.port(), port);
        assert_eq!(pg.data_dir(), d.path().join("pg"));
        assert_eq!(select_one(&pg.url("postgres")).await.unwrap(), 1);

        // The port is taken now.
        let err = PgServer::start(PgServerConfig {
            data_dir: d.path().join("other"),
            port: Some(port),
            ..config(PathBuf::new())
        })
        .await
        .unwrap_err();
        assert!(
            matches!(err, PgServerError::PortInUse(p) if p == port),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_server_that_fails_to_start_is_reported_with_its_log() {
        let d = tempfile::tempdir().unwrap();
        let mut cfg = config(d.path().join("pg"));
        cfg.settings.push(("no_such_setting".into(), "1".into()));
        let err = PgServer::start(cfg).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, PgServerError::Exited { .. }), "{msg}");
        assert!(
            msg.contains("server.log") && msg.contains("no_such_setting"),
            "{msg}"
        );
        assert_eq!(processes_using(d.path()), Vec::<String>::new());
    }

    /// `to` relative to `from` (both absolute).
    fn pathdiff(to: &Path, from: &Path) -> PathBuf {
        let to: Vec<_> = to.components().collect();
        let from: Vec<_> = from.components().collect();
        let common = to.iter().zip(&from).take_while(|(a, b)| a == b).count();
        let mut p = PathBuf::new();
        for _ in common..from.len() {
            p.push("..");
        }
        for c in &to[common..] {
            p.push(c);
        }
        p
    }

    #[test]
    fn a_bin_dir_without_binaries_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let err = find_bin_dir(Some(d.path())).unwrap_err();
        assert!(matches!(err, PgServerError::NotABinDir { .. }));
        assert!(err.to_string().contains("bin_dir"), "{err}");
    }

    #[test]
    fn socket_dir_falls_back_to_none_for_long_paths() {
        assert_eq!(socket_dir_setting(Path::new("/tmp/x/pg")), "\"/tmp/x/pg\"");
        let long = PathBuf::from(format!("/{}", "a".repeat(100)));
        assert_eq!(socket_dir_setting(&long), "");
    }

    #[test]
    fn tail_lines_keeps_the_last_non_empty_lines() {
        assert_eq!(tail_lines("a\n\nb\nc\n", 2), "b | c");
        assert_eq!(tail_lines("", 2), "(no output)");
    }
}
