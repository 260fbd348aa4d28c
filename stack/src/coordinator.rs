//! Starting a `drover-coordinator` process and waiting until it listens.

use crate::error::{io, Error, Result};
use crate::process::{self, Proc};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Stdio};
use std::time::Duration;

/// How to start one coordinator. Its files live in `dir`: the log `<name>.log`, the config
/// `<name>.toml` (when `config_toml` is given) and `artifacts/`.
#[derive(Clone, Debug)]
pub struct CoordinatorLaunch {
    pub binary: PathBuf,
    pub name: String,
    pub dir: PathBuf,
    pub database_url: String,
    /// Address both listeners bind to.
    pub ip: String,
    /// gRPC port; 0 lets the coordinator pick one. The HTTP listener always picks its own.
    pub port: u16,
    /// Contents of a TOML config file to pass with --config.
    pub config_toml: Option<String>,
    /// Environment, applied in order (later entries win).
    pub env: Vec<(String, String)>,
    pub rust_log: String,
    /// Run inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
    /// Drop the caller's DROVER_* settings and die with the caller (see
    /// [`process::isolate`]).
    pub isolated: bool,
}

impl CoordinatorLaunch {
    pub fn new(binary: &Path, name: &str, dir: &Path, database_url: &str) -> CoordinatorLaunch {
        CoordinatorLaunch {
            binary: binary.to_path_buf(),
            name: name.to_string(),
            dir: dir.to_path_buf(),
            database_url: database_url.to_string(),
            ip: "127.0.0.1".into(),
            port: 0,
            config_toml: None,
            env: Vec::new(),
            rust_log: "info".into(),
            netns: None,
            isolated: false,
        }
    }

    /// Starts it and blocks until it prints its addresses (or exits).
    pub fn start(&self) -> Result<Listening> {
        let (proc, stdout) = self.spawn()?;
        let read = read_addrs(stdout);
        self.finish(proc, read)
    }

    /// Starts it and waits up to `limit` for its addresses without blocking the runtime;
    /// kills it if they do not come.
    pub async fn start_within(&self, limit: Duration) -> Result<Listening> {
        let (mut proc, stdout) = self.spawn()?;
        let reader = tokio::task::spawn_blocking(move || read_addrs(stdout));
        let read = match tokio::time::timeout(limit, reader).await {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => {
                proc.kill();
                return Err(Error::Invalid(format!(
                    "reading the coordinator's address: {e}"
                )));
            }
            Err(_) => {
                proc.kill();
                return Err(Error::Timeout(format!(
                    "{} did not start listening within {limit:?}; its log:\n{}",
                    self.name,
                    proc.log_tail(30)
                )));
            }
        };
        self.finish(proc, read)
    }

    fn spawn(&self) -> Result<(Proc, ChildStdout)> {
        let log = self.dir.join(format!("{}.log", self.name));
        let mut cmd = process::command(&self.binary, self.netns.as_deref());
        if self.isolated {
            process::isolate(&mut cmd);
        }
        if let Some(toml) = &self.config_toml {
            let path = self.dir.join(format!("{}.toml", self.name));
            std::fs::write(&path, toml).map_err(io(format!("writing {}", path.display())))?;
            cmd.arg("--config").arg(path);
        }
        cmd.arg("--listen")
            .arg(format!("{}:{}", self.ip, self.port))
            .arg("--http-listen")
            .arg(format!("{}:0", self.ip))
            .arg("--database-url")
            .arg(&self.database_url)
            // Artifacts in scratch, never under the default /var/lib/drover.
            .env("DROVER_ARTIFACT_DIR", self.dir.join("artifacts"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", &self.rust_log)
            .stdout(Stdio::piped());
        let mut child = process::spawn(cmd, "drover-coordinator", &log)?;
        let stdout = child.stdout.take();
        let mut proc = Proc::new(&self.name, child, log);
        match stdout {
            Some(s) => Ok((proc, s)),
            None => {
                proc.kill();
                Err(Error::Invalid("coordinator has no stdout pipe".into()))
            }
        }
    }

    /// Checks the lines read; on success keeps the pipe open in `proc`.
    fn finish(&self, mut proc: Proc, read: Read) -> Result<Listening> {
        let (addr, http, reader) = read;
        match (addr, http) {
            (Some(addr), Some(http)) => {
                proc.stdout = Some(reader);
                proc.http = http.clone();
                Ok(Listening { proc, addr, http })
            }
            _ => {
                proc.kill();
                Err(Error::NotStarted {
                    name: self.name.clone(),
                    log: proc.log.clone(),
                    tail: proc.log_tail(60),
                })
            }
        }
    }
}

/// A coordinator that listens, its gRPC address (`http://ip:port`) and HTTP base URL.
pub struct Listening {
    pub proc: Proc,
    pub addr: String,
    pub http: String,
}

type Read = (Option<String>, Option<String>, BufReader<ChildStdout>);

/// The coordinator prints `DROVER_ADDR=...` and `DROVER_HTTP=...` once it listens. Both
/// lines are read before going on; the reader is returned so the pipe stays open.
fn read_addrs(stdout: ChildStdout) -> Read {
    let mut reader = BufReader::new(stdout);
    let (mut addr, mut http) = (String::new(), String::new());
    let _ = reader.read_line(&mut addr);
    let _ = reader.read_line(&mut http);
    let addr = addr.trim().strip_prefix("DROVER_ADDR=").map(str::to_string);
    let http = http.trim().strip_prefix("DROVER_HTTP=").map(str::to_string);
    (addr, http, reader)
}
