//! Runs one attempt's program as a child process in a process group of its own.
//!
//! The group matters: a timeout, a cancel or a lost lease must stop everything the job
//! started, not only its first process. Stopping is SIGTERM to the group, `kill_grace` to
//! exit, then SIGKILL to the group. After the child exits for any reason the group is
//! SIGKILLed too, so no grandchild outlives its attempt. Only that group is ever signalled.
//!
//! stdout and stderr are read concurrently and forwarded as they arrive, byte for byte, in
//! chunks of at most [`CHUNK_BYTES`]. `run` returns once the child has exited and both
//! pipes are closed; a process that left the group and still holds a pipe open is given
//! [`PIPE_DRAIN_LIMIT`], then its output is no longer read.

use crate::containment::{self, AttemptCgroup};
use crate::spawn::{self, ChildProcess, SpawnSpec};
use nix::sys::signal::Signal;
use std::collections::{BTreeMap, VecDeque};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Largest chunk read from a pipe at once.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// After the child exited and its group was killed, how long to wait for the pipes to
/// close (a process that left the group could hold them open forever).
pub const PIPE_DRAIN_LIMIT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Stdout,
    Stderr,
}

/// Bytes exactly as the process wrote them to one stream; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunk {
    pub stream: StreamKind,
    pub data: Vec<u8>,
}

#[derive(Debug)]
pub struct RunSpec {
    /// argv[0] is looked up in PATH and run directly: no shell.
    pub argv: Vec<String>,
    /// Added to (overriding) the worker's own environment.
    pub env: BTreeMap<String, String>,
    /// Must exist; becomes the child's current directory.
    pub work_dir: PathBuf,
    pub timeout: Option<Duration>,
    /// Between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// Where to record the process group while it runs, so a restarted worker can kill
    /// what a crashed one left behind (see `state_dir::kill_leftover_groups`). Emptied, not
    /// deleted, when the group is gone, so the file can be reused by the next attempt.
    pub pgid_file: Option<GroupFile>,
    /// Told the process group id once the child is running.
    pub started: Option<tokio::sync::oneshot::Sender<i32>>,
    /// The attempt's cgroup: the child joins it before exec, and everything in it is
    /// killed when the attempt ends (see `containment`).
    pub cgroup: Option<Arc<AttemptCgroup>>,
    /// Without a cgroup: the attempt id whose descendants are killed at the end
    /// (`containment::kill_attempt_descendants`; the worker is a subreaper).
    pub subreaper_attempt: Option<String>,
    /// What the job's process starts with beyond argv and env.
    pub setup: ChildSetup,
}

/// How the child is set up before exec.
#[derive(Debug, Default)]
pub struct ChildSetup {
    /// The file to execute (argv[0] already resolved and checked); argv[0] is passed as
    /// given. None: argv[0] is looked up by exec.
    pub program: Option<PathBuf>,
    /// Start from `env` alone, not the worker's environment.
    pub clear_env: bool,
    /// Switch to this uid, gid and supplementary groups before exec.
    pub run_as: Option<(u32, u32, Vec<u32>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitOutcome {
    /// Exited normally with this code.
    Exited(i32),
    /// Killed by a signal we did not send.
    Signaled(i32),
    /// Could not be started; the message names the program and the OS error.
    SpawnError(String),
    /// Killed by us because the timeout elapsed.
    TimedOut,
    /// Killed by us because `stop` was triggered (or it already was: nothing was started).
    Stopped,
}

/// The last `cap` bytes of a process's combined output.
#[derive(Debug, Clone)]
pub struct TailBuffer {
    cap: usize,
    buf: VecDeque<u8>,
}

impl TailBuffer {
    pub fn new(cap: usize) -> Self {
        TailBuffer {
            cap,
            buf: VecDeque::with_capacity(cap),
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        let data = &data[data.len().saturating_sub(self.cap)..];
        let overflow = (self.buf.len() + data.len()).saturating_sub(self.cap);
        self.buf.drain(..overflow);
        self.buf.extend(data);
    }

    pub fn contents(&self) -> Vec<u8> {
        self.buf.iter().copied().collect()
    }
}

/// Reads a small file (of /proc or /sys) into `buf`, returning its length (at most
/// `buf.len()`). For the worker's per-attempt reads of such files, `read_to_string`'s stat
/// and growing reads cost more than the reading itself.
pub(crate) fn read_small(path: &Path, buf: &mut [u8]) -> std::io::Result<usize> {
    read_from_start(&std::fs::File::open(path)?, buf)
}

/// Reads an open file from offset 0 into `buf` (at most `buf.len()` bytes): /proc and
/// cgroupfs files regenerate their text for a read at 0, so one descriptor can be read
/// again and again.
pub(crate) fn read_from_start(file: &std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut len = 0;
    while len < buf.len() {
        match file.read_at(&mut buf[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(len)
}

/// A process's start time in clock ticks since boot (/proc/<pid>/stat field 22): with the
/// pid it identifies one process, even after the pid is reused.
pub fn process_start_time(pid: i32) -> Option<u64> {
    // The line is a few hundred bytes (the command name is at most 16).
    let mut buf = [0u8; 2048];
    let len = read_small(Path::new(&format!("/proc/{pid}/stat")), &mut buf).ok()?;
    // The command name may hold any bytes, ')' too: the fields follow the last ')'.
    let close = buf[..len].iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&buf[close + 1..len]).ok()?;
    // After the command come: state (field 3) ... starttime (field 22).
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Width of a group record: "<pgid> <start time>" padded with spaces, then a newline.
const GROUP_RECORD_BYTES: usize = 48;

/// Writes (or, with None, blanks) the process-group record at `path`, in place and always
/// at the same length. Truncating instead freed the file's block and allocated it again at
/// every attempt, and ext4 flushes a truncated-and-rewritten file when it is closed: about
/// a tenth of the worker's CPU with many short jobs (BENCHMARKS.md).
pub fn write_group_record(
    path: &std::path::Path,
    group: Option<(i32, u64)>,
) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    open_group_record(path)?.write_all_at(group_record(group).as_bytes(), 0)
}

/// Opens (creating) a group record for writing in place, never truncated.
fn open_group_record(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// Where an attempt's process group is recorded: a slot's file, kept open from attempt to
/// attempt (two `open`s and two `close`s fewer per attempt), or a file opened at each write.
#[derive(Clone, Debug)]
pub struct GroupFile {
    pub path: PathBuf,
    open: Option<Arc<std::fs::File>>,
}

impl GroupFile {
    /// Opened at each write.
    pub fn at(path: PathBuf) -> Self {
        GroupFile { path, open: None }
    }

    /// Opened (created if missing) now and kept open.
    pub fn kept_open(path: PathBuf) -> std::io::Result<Self> {
        let file = open_group_record(&path)?;
        Ok(GroupFile {
            path,
            open: Some(Arc::new(file)),
        })
    }

    /// Writes (or, with None, blanks) the record: see [`write_group_record`].
    pub fn write(&self, group: Option<(i32, u64)>) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        match &self.open {
            Some(f) => f.write_all_at(group_record(group).as_bytes(), 0),
            None => write_group_record(&self.path, group),
        }
    }
}

/// The record's text: "<pgid> <start time>" padded to [`GROUP_RECORD_BYTES`].
fn group_record(group: Option<(i32, u64)>) -> String {
    let text = group
        .map(|(pgid, start)| format!("{pgid} {start}"))
        .unwrap_or_default();
    let mut record = format!("{text:<width$}", width = GROUP_RECORD_BYTES - 1);
    record.push('\n');
    record
}

fn signal_group(pgid: i32, sig: Signal) {
    // killpg(0) or (1) would hit our own group or everything: never.
    if pgid <= 1 {
        return;
    }
    // ESRCH (group already gone) is fine.
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), sig);
}

/// Cleans up if `run` is abandoned part-way (its future dropped): kills the group, stops
/// the pipe readers, removes the group record. Dropping the child (which kills it) alone
/// would miss grandchildren.
struct Cleanup {
    /// Set while the group may still need killing.
    pgid: Option<i32>,
    cgroup: Option<Arc<AttemptCgroup>>,
    pgid_file: Option<GroupFile>,
    give_up: CancellationToken,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            signal_group(pgid, Signal::SIGKILL);
            if let Some(cg) = &self.cgroup {
                cg.kill();
            }
        }
        self.give_up.cancel();
        if let Some(file) = &self.pgid_file {
            let _ = file.write(None);
        }
    }
}

/// Read buffers of finished pumps, kept for the next: a zeroed 64 KiB buffer per stream
/// per attempt cost a memset, and page faults whenever malloc had given the memory back
/// in between (together a twentieth of the worker's CPU with many short jobs).
static BUFFERS: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// At most this many buffers are kept (two per attempt running at once is enough).
const BUFFERS_KEPT: usize = 128;

/// A [`CHUNK_BYTES`] buffer from [`BUFFERS`], given back when dropped. Its bytes are
/// whatever the last reader left: only the part a read just filled is ever looked at.
struct ReadBuf(Vec<u8>);

impl ReadBuf {
    fn take() -> ReadBuf {
        let kept = BUFFERS.lock().ok().and_then(|mut v| v.pop());
        ReadBuf(kept.unwrap_or_else(|| vec![0u8; CHUNK_BYTES]))
    }
}

impl Drop for ReadBuf {
    fn drop(&mut self) {
        if let Ok(mut v) = BUFFERS.lock() {
            if v.len() < BUFFERS_KEPT {
                v.push(std::mem::take(&mut self.0));
            }
        }
    }
}

/// Reads a pipe to EOF (or until `give_up`), forwarding each read as one chunk. If the
/// receiver is gone, keeps draining so the child never blocks on a full pipe.
async fn pump(
    mut pipe: impl AsyncRead + Unpin,
    stream: StreamKind,
    out: mpsc::Sender<OutputChunk>,
    give_up: CancellationToken,
) {
    let mut out = Some(out);
    let mut kept = ReadBuf::take();
    let buf = &mut kept.0;
    loop {
        let n = tokio::select! {
            // Checked first: a process outside the group could keep the pipe full forever.
            biased;
            _ = give_up.cancelled() => break,
            r = pipe.read(buf) => match r {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, ?stream, "reading child output");
                    break;
                }
            },
        };
        if let Some(tx) = &out {
            let chunk = OutputChunk {
                stream,
                data: buf[..n].to_vec(),
            };
            if tx.send(chunk).await.is_err() {
                out = None;
            }
        }
    }
}

/// SIGTERM to the group, then SIGKILL to the group if the child is still there after
/// `grace`.
async fn terminate(
    child: &mut ChildProcess,
    pgid: i32,
    cgroup: Option<&AttemptCgroup>,
    grace: Duration,
) -> std::io::Result<ExitStatus> {
    signal_group(pgid, Signal::SIGTERM);
    if let Some(cg) = cgroup {
        // Also those that left the group (setsid): they get the same chance to clean up.
        cg.signal_all(Signal::SIGTERM);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            signal_group(pgid, Signal::SIGKILL);
            if let Some(cg) = cgroup {
                cg.kill();
            }
            child.wait().await
        }
    }
}

/// Runs the program to completion, sending its output to `out`. Returns once the process
/// has exited, its group was killed and its output has been read.
pub async fn run(
    mut spec: RunSpec,
    out: mpsc::Sender<OutputChunk>,
    stop: CancellationToken,
) -> ExitOutcome {
    let started = spec.started.take();
    let Some(program) = spec.argv.first() else {
        return ExitOutcome::SpawnError("argv is empty".into());
    };
    // Cancelled before it began (e.g. while waiting for a slot): start nothing.
    if stop.is_cancelled() {
        return ExitOutcome::Stopped;
    }
    let run_as = spec.setup.run_as.as_ref();
    let mut child = match spawn::spawn(&SpawnSpec {
        argv: &spec.argv,
        program: spec.setup.program.as_deref(),
        env: &spec.env,
        clear_env: spec.setup.clear_env,
        work_dir: &spec.work_dir,
        cgroup: spec.cgroup.as_deref(),
        run_as: run_as.map(|(uid, gid, groups)| (*uid, *gid, groups.as_slice())),
    }) {
        Ok(c) => c,
        Err(e) => return ExitOutcome::SpawnError(format!("{program}: {e}")),
    };
    let cgroup = spec.cgroup.clone();
    // The child made its own group (setpgid(0, 0)) before exec, so its pid is the pgid.
    let pgid = child.id();
    let give_up = CancellationToken::new();
    let mut cleanup = Cleanup {
        pgid: Some(pgid),
        cgroup: cgroup.clone(),
        pgid_file: spec.pgid_file.clone(),
        give_up: give_up.clone(),
    };
    if let Some(tx) = started {
        let _ = tx.send(pgid);
    }
    if let (Some(file), Some(start)) = (&spec.pgid_file, process_start_time(pgid)) {
        if let Err(e) = file.write(Some((pgid, start))) {
            tracing::warn!(error = %e, path = %file.path.display(), "could not record process group");
        }
    }
    // Own tasks, so both pipes are read in parallel with each other and with the wait.
    let mut pumps: Vec<JoinHandle<()>> = Vec::new();
    if let Some(p) = child.stdout.take() {
        let g = give_up.clone();
        pumps.push(tokio::spawn(pump(p, StreamKind::Stdout, out.clone(), g)));
    }
    if let Some(p) = child.stderr.take() {
        let g = give_up.clone();
        pumps.push(tokio::spawn(pump(p, StreamKind::Stderr, out, g)));
    }

    let timeout = async {
        match spec.timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let (status, ours) = tokio::select! {
        // A child that has already exited wins over a timeout or stop firing at once.
        biased;
        s = child.wait() => (s, None),
        _ = stop.cancelled() => (terminate(&mut child, pgid, cgroup.as_deref(), spec.kill_grace).await, Some(ExitOutcome::Stopped)),
        _ = timeout => (terminate(&mut child, pgid, cgroup.as_deref(), spec.kill_grace).await, Some(ExitOutcome::TimedOut)),
    };
    // The child is reaped, but while any member remains the kernel keeps the pgid from
    // being reused, so this reaches only what the job left behind.
    signal_group(pgid, Signal::SIGKILL);
    // What left the group (setsid, double fork) is still in the cgroup, or still marked
    // with the attempt id under the subreaper.
    if let Some(cg) = &cgroup {
        cg.kill_and_wait().await;
    } else if let Some(id) = spec.subreaper_attempt.clone() {
        let _ =
            tokio::task::spawn_blocking(move || containment::kill_attempt_descendants(&id)).await;
    }
    cleanup.pgid = None;

    let drained = tokio::time::timeout(
        PIPE_DRAIN_LIMIT,
        futures::future::join_all(pumps.iter_mut()),
    )
    .await;
    if drained.is_err() {
        tracing::warn!(
            pgid,
            "output pipes still open after the process group was killed (a process left the group); no longer reading them"
        );
        give_up.cancel();
        // Each pump finishes the send it is in; after that the senders are gone.
        futures::future::join_all(pumps).await;
    }
    drop(cleanup);

    if let Some(o) = ours {
        return o;
    }
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => ExitOutcome::Exited(code),
            (None, Some(sig)) => ExitOutcome::Signaled(sig),
            (None, None) => ExitOutcome::SpawnError(format!("{program}: unknown exit status {s}")),
        },
        Err(e) => ExitOutcome::SpawnError(format!("waiting for {program}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(script: &str, dir: &std::path::Path) -> RunSpec {
        RunSpec {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            env: BTreeMap::new(),
            work_dir: dir.to_path_buf(),
            timeout: None,
            kill_grace: Duration::from_millis(300),
            pgid_file: None,
            started: None,
            cgroup: None,
            subreaper_attempt: None,
            setup: ChildSetup::default(),
        }
    }

    #[derive(Default)]
    struct Collected {
        out: Vec<u8>,
        err: Vec<u8>,
        largest_chunk: usize,
        empty_chunks: usize,
    }

    async fn drain(rx: &mut mpsc::Receiver<OutputChunk>, c: &mut Collected) {
        while let Some(chunk) = rx.recv().await {
            c.largest_chunk = c.largest_chunk.max(chunk.data.len());
            c.empty_chunks += usize::from(chunk.data.is_empty());
            match chunk.stream {
                StreamKind::Stdout => c.out.extend(chunk.data),
                StreamKind::Stderr => c.err.extend(chunk.data),
            }
        }
    }

    async fn collect(spec: RunSpec, stop: CancellationToken) -> (ExitOutcome, Collected) {
        let (tx, mut rx) = mpsc::channel(8);
        let run = tokio::spawn(run(spec, tx, stop));
        let mut c = Collected::default();
        drain(&mut rx, &mut c).await;
        (run.await.expect("run task"), c)
    }

    /// Reads stdout chunks until a whole line is there.
    async fn read_line(rx: &mut mpsc::Receiver<OutputChunk>) -> String {
        let mut line = Vec::new();
        while !line.ends_with(b"\n") {
            let c = rx.recv().await.expect("output ended before a line");
            if c.stream == StreamKind::Stdout {
                line.extend(c.data);
            }
        }
        String::from_utf8(line)
            .expect("utf-8 line")
            .trim()
            .to_string()
    }

    /// The fields of /proc/<pid>/stat after the command: state first.
    fn stat_fields(pid: i32) -> Option<Vec<String>> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (_, rest) = s.rsplit_once(')')?;
        Some(rest.split_whitespace().map(str::to_string).collect())
    }

    /// Gone or a zombie (an orphan waits for init to reap it).
    fn dead(pid: i32) -> bool {
        stat_fields(pid).is_none_or(|f| f[0] == "Z")
    }

    /// Non-zombie processes whose process group is `pgid`.
    fn live_members(pgid: i32) -> Vec<i32> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| {
                stat_fields(pid).is_some_and(|f| f[0] != "Z" && f[2].parse::<i32>() == Ok(pgid))
            })
            .collect()
    }

    /// Polls (a signalled process takes a moment to die), bounded so a failure ends.
    async fn eventually(mut f: impl FnMut() -> bool) -> bool {
        for _ in 0..500 {
            if f() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[tokio::test]
    async fn output_is_exact_per_stream() {
        let d = tempfile::tempdir().unwrap();
        // Every byte value, non-UTF-8, more than a pipe buffer and a chunk.
        let payload: Vec<u8> = (0..1_500_000u32).map(|i| (i * 7 % 256) as u8).collect();
        std::fs::write(d.path().join("payload"), &payload).unwrap();
        let mut s = spec(
            "printf 'a\\377\\000b'; head -c 3000000 /dev/zero; cat payload >&2 & cat payload; wait; echo $X; pwd",
            d.path(),
        );
        s.env.insert("X".into(), "from-env".into());
        let (o, c) = collect(s, CancellationToken::new()).await;
        assert_eq!(o, ExitOutcome::Exited(0));
        assert_eq!(c.err, payload);
        let mut want = b"a\xff\x00b".to_vec();
        want.extend(std::iter::repeat_n(0u8, 3_000_000));
        want.extend(&payload);
        want.extend(format!("from-env\n{}\n", d.path().display()).as_bytes());
        assert!(c.out == want, "stdout differs (len {})", c.out.len());
        assert!(c.largest_chunk <= CHUNK_BYTES);
        assert_eq!(c.empty_chunks, 0);
    }

    #[tokio::test]
    async fn a_reused_read_buffer_shows_only_what_this_attempt_wrote() {
        let d = tempfile::tempdir().unwrap();
        // Fills the kept buffers with a long line, then a short one must come out alone.
        let (_, c) = collect(
            spec("printf '%0500d' 7", d.path()),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(c.out.len(), 500);
        let (_, c) = collect(spec("printf xy", d.path()), CancellationToken::new()).await;
        assert_eq!(c.out, b"xy");
        assert!(c.err.is_empty());
    }

    #[tokio::test]
    async fn exit_code_is_propagated() {
        let d = tempfile::tempdir().unwrap();
        for code in [0, 1, 42, 255] {
            let (o, _) = collect(
                spec(&format!("exit {code}"), d.path()),
                CancellationToken::new(),
            )
            .await;
            assert_eq!(o, ExitOutcome::Exited(code));
        }
    }

    #[tokio::test]
    async fn programs_that_cannot_start_are_spawn_errors() {
        let d = tempfile::tempdir().unwrap();
        let not_executable = d.path().join("data.txt");
        std::fs::write(&not_executable, "not a program").unwrap();
        let cases = [
            ("drover-test-no-such-program".to_string(), "os error 2"),
            ("/no/such/program".to_string(), "os error 2"),
            (not_executable.display().to_string(), "os error 13"),
        ];
        for (program, os_error) in cases {
            let s = RunSpec {
                argv: vec![program.clone()],
                ..spec("", d.path())
            };
            let (o, _) = collect(s, CancellationToken::new()).await;
            assert!(
                matches!(&o, ExitOutcome::SpawnError(m) if m.contains(&program) && m.contains(os_error)),
                "{program}: {o:?}"
            );
        }
    }

    #[tokio::test]
    async fn timeout_kills_the_group_including_grandchildren() {
        let d = tempfile::tempdir().unwrap();
        // Everything ignores SIGTERM (inherited), so only the SIGKILL after grace works.
        let mut s = spec("trap '' TERM; sleep 1000 & echo $!; sleep 1000", d.path());
        s.timeout = Some(Duration::from_secs(1));
        let (pgid_tx, pgid_rx) = tokio::sync::oneshot::channel();
        s.started = Some(pgid_tx);
        let (o, c) = collect(s, CancellationToken::new()).await;
        assert_eq!(o, ExitOutcome::TimedOut);
        let pgid = pgid_rx.await.unwrap();
        assert!(
            eventually(|| live_members(pgid).is_empty()).await,
            "left running: {:?}",
            live_members(pgid)
        );
        // On a very loaded machine the timeout could come before the echo; the group
        // check above still holds then.
        if let Ok(pid) = String::from_utf8_lossy(&c.out).trim().parse::<i32>() {
            assert!(eventually(|| dead(pid)).await, "grandchild {pid} survived");
        }
    }

    #[tokio::test]
    async fn stop_sigkills_a_group_that_ignores_sigterm() {
        let d = tempfile::tempdir().unwrap();
        let s = spec("trap '' TERM; sleep 1000 & echo $!; sleep 1000", d.path());
        let stop = CancellationToken::new();
        let (tx, mut rx) = mpsc::channel(8);
        let run = tokio::spawn(run(s, tx, stop.clone()));
        // A line arrives while the process still runs: output is not held back.
        let grandchild: i32 = read_line(&mut rx).await.parse().unwrap();
        assert!(!dead(grandchild));
        stop.cancel();
        while rx.recv().await.is_some() {}
        assert_eq!(run.await.unwrap(), ExitOutcome::Stopped);
        assert!(eventually(|| dead(grandchild)).await, "grandchild survived");
    }

    #[tokio::test]
    async fn grandchildren_die_when_the_child_exits() {
        let d = tempfile::tempdir().unwrap();
        // The background sleep also holds stdout open: run must not wait for it.
        let (o, c) = collect(
            spec("sleep 1000 & echo $!; exit 0", d.path()),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(o, ExitOutcome::Exited(0));
        let pid: i32 = String::from_utf8_lossy(&c.out).trim().parse().unwrap();
        assert!(eventually(|| dead(pid)).await, "grandchild {pid} survived");
    }

    #[tokio::test]
    async fn a_process_that_left_the_group_is_not_killed_nor_waited_for() {
        let d = tempfile::tempdir().unwrap();
        // setsid gives the sleep a session (and group) of its own; it still holds stdout.
        // The child waits until it has left, else the group kill rightly gets it first.
        let script = "setsid sh -c 'echo $$ > escaped; exec sleep 1000' & \
            n=0; while [ ! -s escaped ] && [ $n -lt 1000 ]; do sleep 0.01; n=$((n+1)); done; \
            cat escaped";
        let (o, c) = collect(spec(script, d.path()), CancellationToken::new()).await;
        assert_eq!(o, ExitOutcome::Exited(0));
        let pid: i32 = String::from_utf8_lossy(&c.out).trim().parse().unwrap();
        let alive = !dead(pid);
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        assert!(alive, "a process outside the group was killed");
    }

    #[tokio::test]
    async fn dropping_run_kills_the_group() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("pgid");
        let mut s = spec("sleep 1000 & echo $!; sleep 1000", d.path());
        s.pgid_file = Some(GroupFile::at(file.clone()));
        let (pgid_tx, pgid_rx) = tokio::sync::oneshot::channel();
        s.started = Some(pgid_tx);
        let (tx, mut rx) = mpsc::channel(8);
        let run = tokio::spawn(run(s, tx, CancellationToken::new()));
        let grandchild: i32 = read_line(&mut rx).await.parse().unwrap();
        let pgid = pgid_rx.await.unwrap();
        run.abort();
        assert!(run.await.unwrap_err().is_cancelled());
        assert_eq!(
            std::fs::read_to_string(&file).unwrap().trim(),
            "",
            "record cleared"
        );
        assert!(eventually(|| dead(grandchild)).await, "grandchild survived");
        assert!(eventually(|| live_members(pgid).is_empty()).await);
        // The pipe readers stop too, so the output channel closes.
        while rx.recv().await.is_some() {}
    }

    #[tokio::test]
    async fn already_stopped_starts_nothing() {
        let d = tempfile::tempdir().unwrap();
        let marker = d.path().join("ran");
        let stop = CancellationToken::new();
        stop.cancel();
        let (o, c) = collect(spec("touch ran", d.path()), stop).await;
        assert_eq!(o, ExitOutcome::Stopped);
        assert!(c.out.is_empty() && !marker.exists());
    }

    #[tokio::test]
    async fn process_group_is_recorded_while_running() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("pgid");
        // A file opened at each write, then a slot's kept open for two attempts in turn.
        let kept = GroupFile::kept_open(file.clone()).unwrap();
        for group_file in [GroupFile::at(file.clone()), kept.clone(), kept] {
            let mut s = spec("echo $$; sleep 1000", d.path());
            s.pgid_file = Some(group_file);
            let stop = CancellationToken::new();
            let (tx, mut rx) = mpsc::channel(8);
            let run = tokio::spawn(run(s, tx, stop.clone()));
            let pid: i32 = read_line(&mut rx).await.parse().unwrap();
            let recorded = std::fs::read_to_string(&file).unwrap();
            let start = process_start_time(pid).unwrap();
            assert_eq!(recorded.trim_end(), format!("{pid} {start}"));
            stop.cancel();
            while rx.recv().await.is_some() {}
            assert_eq!(run.await.unwrap(), ExitOutcome::Stopped);
            assert_eq!(
                std::fs::read_to_string(&file).unwrap().trim(),
                "",
                "record cleared"
            );
        }
    }

    #[tokio::test]
    async fn external_signal_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let (o, _) = collect(spec("kill -9 $$", d.path()), CancellationToken::new()).await;
        assert_eq!(o, ExitOutcome::Signaled(9));
    }

    #[tokio::test]
    async fn dropped_receiver_does_not_block_the_child() {
        let d = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let o = run(
            spec("head -c 5000000 /dev/zero; echo done >&2", d.path()),
            tx,
            CancellationToken::new(),
        )
        .await;
        assert_eq!(o, ExitOutcome::Exited(0));
    }

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut t = TailBuffer::new(5);
        t.push(b"abc");
        assert_eq!(t.contents(), b"abc");
        t.push(b"defg");
        assert_eq!(t.contents(), b"cdefg");
        t.push(b"0123456789");
        assert_eq!(t.contents(), b"56789");
        t.push(b"");
        assert_eq!(t.contents(), b"56789");
    }
}
