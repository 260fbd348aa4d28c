//! Child processes of the stack: logs to a file, killed when dropped.

use crate::error::{io, Error, Result};
use std::io::BufReader;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process whose stderr goes to a log file; SIGKILLed and reaped when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
    /// A coordinator's HTTP base URL (empty for other processes).
    pub http: String,
    /// A coordinator's stdout, kept open so that it never prints to a closed pipe.
    pub(crate) stdout: Option<BufReader<ChildStdout>>,
}

impl Proc {
    pub fn new(name: impl Into<String>, child: Child, log: PathBuf) -> Proc {
        Proc {
            name: name.into(),
            child,
            log,
            http: String::new(),
            stdout: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it has exited (or cannot be asked).
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Result<Option<i32>> {
        let start = Instant::now();
        loop {
            if let Some(s) = self
                .child
                .try_wait()
                .map_err(io(format!("waiting for {}", self.name)))?
            {
                return Ok(s.code());
            }
            if start.elapsed() > limit {
                return Err(Error::Timeout(format!(
                    "{} did not exit within {limit:?}",
                    self.name
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        // A failing test shows what the process said last.
        if std::thread::panicking() {
            eprintln!(
                "---- last lines of {} ({}) ----\n{}",
                self.name,
                self.log.display(),
                self.log_tail(60)
            );
        }
    }
}

/// Picks a free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A log file, appended to across restarts.
pub fn append_to(log: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io(format!("opening {}", log.display())))
}

/// A command for `program`, run in network namespace `netns` when given.
pub(crate) fn command(program: &Path, netns: Option<&str>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Keeps the caller's own settings out of a child (a DROVER_* variable would change what
/// is measured) and SIGKILLs the child when the thread that spawned it dies.
pub(crate) fn isolate(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("DROVER_") || k == "DATABASE_URL" {
            cmd.env_remove(k);
        }
    }
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}

/// Spawns `cmd` with stdin closed and stderr appended to `log`.
pub(crate) fn spawn(mut cmd: Command, name: &str, log: &Path) -> Result<Child> {
    cmd.stdin(Stdio::null())
        .stderr(append_to(log)?)
        .spawn()
        .map_err(io(format!("spawning {name}")))
}
