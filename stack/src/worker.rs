//! Starting a `drover-worker` process.

use crate::error::Result;
use crate::process::{self, Proc};
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// How to start one worker. `name` is also its worker id; its files live in `dir`: the log
/// `<name>.log` and the state directory `<name>-state`.
#[derive(Clone, Debug)]
pub struct WorkerLaunch {
    pub binary: PathBuf,
    pub name: String,
    pub dir: PathBuf,
    /// Coordinator addresses, comma-separated, in order of preference.
    pub coordinators: String,
    pub slots: u32,
    pub queues: Vec<String>,
    /// More command-line arguments, after the others.
    pub args: Vec<String>,
    /// Its DROVER_WORKER_TOKEN.
    pub token: String,
    /// Environment, applied in order after the token (later entries win).
    pub env: Vec<(String, String)>,
    pub rust_log: String,
    /// Run inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
    /// Drop the caller's DROVER_* settings and die with the caller.
    pub isolated: bool,
}

impl WorkerLaunch {
    pub fn new(binary: &Path, name: &str, dir: &Path, coordinators: &str) -> WorkerLaunch {
        WorkerLaunch {
            binary: binary.to_path_buf(),
            name: name.to_string(),
            dir: dir.to_path_buf(),
            coordinators: coordinators.to_string(),
            slots: 1,
            queues: Vec::new(),
            args: Vec::new(),
            token: String::new(),
            env: Vec::new(),
            rust_log: "info".into(),
            netns: None,
            isolated: false,
        }
    }

    /// Its state directory (pids of its jobs, spooled results).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join(format!("{}-state", self.name))
    }

    pub fn start(&self) -> Result<Proc> {
        let log = self.dir.join(format!("{}.log", self.name));
        let mut cmd = process::command(&self.binary, self.netns.as_deref());
        if self.isolated {
            process::isolate(&mut cmd);
        }
        cmd.arg("--coordinator")
            .arg(&self.coordinators)
            .arg("--worker-id")
            .arg(&self.name)
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--slots")
            .arg(self.slots.to_string());
        for q in &self.queues {
            cmd.arg("--queue").arg(q);
        }
        cmd.args(&self.args)
            .env("RUST_LOG", &self.rust_log)
            .env("DROVER_WORKER_TOKEN", &self.token)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null());
        let child = process::spawn(cmd, "drover-worker", &log)?;
        Ok(Proc::new(&self.name, child, log))
    }
}

/// Jobs of workers that were SIGKILLed are still running: stops those of every worker
/// state directory under `dir` the way a restarted worker would, so nothing is left behind.
pub fn stop_leftover_jobs(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            stop_jobs_of(&e.path());
        }
    }
}

/// Stops the jobs a worker with this state directory left running.
pub fn stop_jobs_of(state_dir: &Path) {
    let pids = state_dir.join("pids");
    if pids.is_dir() {
        let _ = drover_worker::state_dir::kill_leftover_groups(&pids);
    }
}
