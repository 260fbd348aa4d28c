//! Starts a job's process without `fork()`, and the handle that waits for it.
//!
//! The worker is a large multi-threaded process: `fork()` copies its page tables, then
//! every page its threads write faults copy-on-write, and the child's `execve` throws the
//! copy away again. std's `Command` uses `fork()` as soon as there is a `pre_exec` hook
//! (or a uid/gid), and a job needs both (cgroup join, run_as). So this does what glibc's
//! `posix_spawn` does: `clone(CLONE_VM | CLONE_VFORK)`. The child runs in the parent's
//! memory on a stack of its own, and the calling thread is suspended until the child has
//! called `execve` (or exited). In the child, in this order:
//!
//! 1. signals: every disposition that is a handler goes back to SIG_DFL (a parent's
//!    handler must never run in a child that shares its memory), so does SIGPIPE (the
//!    Rust runtime ignores it in the worker; std's `Command` resets it too), then the
//!    signal mask is emptied. All signals are blocked in the parent thread around the
//!    clone, so none can be handled before this.
//! 2. `setpgid(0, 0)`: a process group of its own.
//! 3. joins each of the attempt's cgroups (while still root).
//! 4. `chdir` to the work directory, still with the worker's rights (as before, when std's
//!    `Command` changed directory before the `pre_exec` hooks dropped them).
//! 5. run_as: setgroups, setgid, setuid as raw system calls. glibc's wrappers make every
//!    thread of the process change its ids too, by signalling them: here those threads
//!    would be the parent's.
//! 6. stdin from /dev/null (one descriptor, opened at the first spawn and kept), stdout
//!    and stderr to the pipes (blocking on the child's side, non-blocking on ours).
//! 7. `execve`, trying each PATH candidate in turn when no program was resolved.
//!
//! Everything the child uses is made before the clone: it does not allocate, lock or
//! unwind. A failure writes its errno to a close-on-exec pipe and ends the child with
//! `exit_group(127)`; after the clone returns, the parent reads that pipe: end of file
//! means the exec succeeded.
//!
//! [`ChildProcess`] waits through a pidfd (readable once the process exited) and then
//! reaps that pid only, never -1 (see `containment::kill_attempt_descendants`).

use crate::containment::AttemptCgroup;
use nix::sched::{CloneCb, CloneFlags};
use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::raw::{c_char, c_int};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::unix::pipe;

/// The kernel's signal set size (`_NSIG / 8`: 64 signals), for the raw `rt_sigprocmask`
/// and `rt_sigaction` calls. Like the raw setgid/setuid numbers (16-bit ids on 32-bit x86
/// and arm), this holds for 64-bit Linux other than MIPS.
const SIGSET_BYTES: libc::c_long = 8;
/// One more than the highest signal number.
const NSIG: c_int = 65;
/// The child's stack. It only makes system calls; a guard page sits below.
const STACK_BYTES: usize = 64 * 1024;
/// execvp's search path when the environment has no PATH (glibc's default).
const DEFAULT_PATH: &[u8] = b"/bin:/usr/bin";

/// What to start.
#[derive(Debug)]
pub struct SpawnSpec<'a> {
    /// argv[0] is passed as given.
    pub argv: &'a [String],
    /// The file to execute. None: argv[0] is looked up in the child's PATH, as execvp does.
    pub program: Option<&'a Path>,
    /// Added to (overriding) the worker's environment, or all of it with `clear_env`.
    pub env: &'a BTreeMap<String, String>,
    pub clear_env: bool,
    pub work_dir: &'a Path,
    /// Joined before exec, before run_as drops the rights to.
    pub cgroup: Option<&'a AttemptCgroup>,
    /// uid, gid, supplementary groups.
    pub run_as: Option<(u32, u32, &'a [u32])>,
}

/// A started process: its pid, its output pipes, and its exit status once reaped. If it is
/// dropped before it was reaped, the process is SIGKILLed and reaped in the background.
#[derive(Debug)]
pub struct ChildProcess {
    pid: i32,
    /// Readable once the process has exited; None once reaped.
    pidfd: Option<AsyncFd<OwnedFd>>,
    status: Option<ExitStatus>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
}

impl ChildProcess {
    pub fn id(&self) -> i32 {
        self.pid
    }

    /// Waits for the process to exit and reaps it. Cancel-safe: the status is kept once
    /// reaped, and later calls return it.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let Some(fd) = &self.pidfd else {
            return Err(io::Error::other("no pidfd for the child process"));
        };
        let s = wait_exit(self.pid, fd).await?;
        self.status = Some(s);
        self.pidfd = None;
        Ok(s)
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        let pid = self.pid;
        // Not reaped yet, so the pid still names our child and no other process.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        if !matches!(try_reap(pid), Ok(None)) {
            // Reaped now, or not ours to reap any more (ECHILD).
            return;
        }
        match (self.pidfd.take(), tokio::runtime::Handle::try_current()) {
            // Should the runtime be shutting down, the task never runs and the zombie
            // stays until the worker exits.
            (Some(fd), Ok(rt)) => {
                rt.spawn(async move {
                    let _ = wait_exit(pid, &fd).await;
                });
            }
            _ => {
                let spawned = std::thread::Builder::new()
                    .name("drover-reap".into())
                    .spawn(move || reap_blocking(pid));
                if let Err(e) = spawned {
                    tracing::warn!(pid, error = %e, "cannot reap a killed job process; it stays a zombie until the worker exits");
                }
            }
        }
    }
}

/// Waits until `pid`, whose pidfd is `fd`, has exited, and reaps it.
async fn wait_exit(pid: i32, fd: &AsyncFd<OwnedFd>) -> io::Result<ExitStatus> {
    loop {
        let mut ready = fd.readable().await?;
        if let Some(s) = try_reap(pid)? {
            return Ok(s);
        }
        ready.clear_ready();
    }
}

/// Reaps `pid` if it has exited.
fn try_reap(pid: i32) -> io::Result<Option<ExitStatus>> {
    let mut status: c_int = 0;
    loop {
        // SAFETY: waits for the one child `pid`; `status` is a valid place for the result.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Ok(Some(ExitStatus::from_raw(status)));
        }
        if r == 0 {
            return Ok(None);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Reaps `pid`, waiting for it to exit.
fn reap_blocking(pid: i32) {
    let mut status: c_int = 0;
    loop {
        // SAFETY: waits for the one child `pid`; `status` is a valid place for the result.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

fn cstring(bytes: impl Into<Vec<u8>>) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "nul byte found in provided data",
        )
    })
}

/// Pointers to each string, then a null pointer: an argv or envp for execve. Valid as long
/// as `strings` is.
fn pointers(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// The files execve tries, in order: `program`, or argv[0] if it has a slash, or argv[0] in
/// each directory of `path` (an empty entry is the current directory), as execvp does.
fn candidates(
    argv0: &str,
    program: Option<&Path>,
    path: Option<&OsStr>,
) -> io::Result<Vec<CString>> {
    if let Some(p) = program {
        return Ok(vec![cstring(p.as_os_str().as_bytes())?]);
    }
    if argv0.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    if argv0.contains('/') {
        return Ok(vec![cstring(argv0)?]);
    }
    let path = path.map_or(DEFAULT_PATH, OsStr::as_bytes);
    path.split(|&b| b == b':')
        .map(|dir| {
            let mut file = dir.to_vec();
            if !dir.is_empty() {
                file.push(b'/');
            }
            file.extend(argv0.as_bytes());
            cstring(file)
        })
        .collect()
}

/// The child's environment as `KEY=value` strings, and its PATH.
fn environment(
    env: &BTreeMap<String, String>,
    clear: bool,
) -> io::Result<(Vec<CString>, Option<OsString>)> {
    let mut vars: BTreeMap<OsString, OsString> = if clear {
        BTreeMap::new()
    } else {
        std::env::vars_os().collect()
    };
    vars.extend(env.iter().map(|(k, v)| (k.into(), v.into())));
    let path = vars.get(OsStr::new("PATH")).cloned();
    let strings = vars
        .into_iter()
        .map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend(v.into_vec());
            cstring(kv)
        })
        .collect::<io::Result<_>>()?;
    Ok((strings, path))
}

/// The same descriptor, numbered above stdin, stdout and stderr, so the child's dup2s onto
/// 0, 1 and 2 cannot overwrite one of them before it was copied.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // F_DUPFD_CLOEXEC from 3.
    fd.try_clone()
}

/// A pipe, both ends close-on-exec and above stdio: (read, write).
fn pipe_fds() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    Ok((above_stdio(r)?, above_stdio(w)?))
}

/// An output pipe for the child: (our read end, non-blocking and registered with the
/// runtime; the child's write end, blocking as a program expects its stdout to be).
/// Set here in one `fcntl` rather than checked by tokio (an `fstat` and two `fcntl`s).
fn output_pipe() -> io::Result<(pipe::Receiver, OwnedFd)> {
    let (r, w) = pipe_fds()?;
    nix::fcntl::fcntl(
        &r,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    Ok((pipe::Receiver::from_owned_fd_unchecked(r)?, w))
}

/// The child's stdin: /dev/null, opened once and kept (close-on-exec, above stdio).
fn dev_null() -> io::Result<RawFd> {
    static NULL: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();
    if let Some(fd) = NULL.get() {
        return Ok(fd.as_raw_fd());
    }
    let fd = above_stdio(std::fs::File::open("/dev/null")?.into())?;
    // Two first spawns at once: one descriptor is kept, the other closed.
    Ok(NULL.get_or_init(|| fd).as_raw_fd())
}

/// The child's stack: an anonymous mapping with an inaccessible guard page below it, so an
/// overflow faults instead of writing over the parent's memory.
struct ChildStack {
    base: *mut libc::c_void,
    guard: usize,
    len: usize,
}

impl ChildStack {
    fn new() -> io::Result<ChildStack> {
        // SAFETY: sysconf has no memory effects.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = STACK_BYTES.div_ceil(page) * page + page;
        // SAFETY: a new private anonymous mapping; no existing memory is affected.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = ChildStack {
            base,
            guard: page,
            len,
        };
        // SAFETY: the first page of the mapping made above, which nothing uses yet.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    fn usable(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes long, readable and writable above the guard
        // page, and only reachable through this exclusive borrow while it lives.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.base.cast::<u8>().add(self.guard),
                self.len - self.guard,
            )
        }
    }
}

// SAFETY: the mapping is owned by this value alone (nothing else holds its address once a
// clone has returned), so moving it to another thread is sound.
unsafe impl Send for ChildStack {}

/// Stacks of finished spawns, kept for the next: a fresh mapping per spawn cost an mmap, an
/// mprotect, page faults and an munmap whose TLB shootdown reaches every thread of the
/// worker (a twentieth of its CPU with many short jobs).
static STACKS: std::sync::Mutex<Vec<ChildStack>> = std::sync::Mutex::new(Vec::new());

/// At most this many stacks are kept (one per spawn in progress at once is enough).
const STACKS_KEPT: usize = 64;

impl ChildStack {
    fn take() -> io::Result<ChildStack> {
        let kept = STACKS.lock().ok().and_then(|mut v| v.pop());
        match kept {
            Some(s) => Ok(s),
            None => ChildStack::new(),
        }
    }

    /// Keeps the stack for another spawn (the child that used it has exec'd or exited).
    fn give_back(self) {
        if let Ok(mut v) = STACKS.lock() {
            if v.len() < STACKS_KEPT {
                v.push(self);
            }
        }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; no borrow of it outlives self.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Everything the child needs, made before the clone.
struct ChildArgs<'a> {
    candidates: &'a [CString],
    argv: &'a [*const c_char],
    envp: &'a [*const c_char],
    work_dir: &'a CString,
    cgroup: Option<&'a AttemptCgroup>,
    run_as: Option<(libc::uid_t, libc::gid_t, &'a [libc::gid_t], libc::c_int)>,
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    /// Where a failure's errno goes.
    report: RawFd,
}

/// Starts `spec` as described in the module documentation. Must be called within a tokio
/// runtime (the pipes and the pidfd are registered with it).
pub fn spawn(spec: &SpawnSpec<'_>) -> io::Result<ChildProcess> {
    // Checked here: registering the pipes outside a runtime would panic.
    tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
    let argv0 = spec.argv.first().map(String::as_str).unwrap_or_default();
    let argv_c = spec
        .argv
        .iter()
        .map(|a| cstring(a.as_str()))
        .collect::<io::Result<Vec<_>>>()?;
    let argv = pointers(&argv_c);
    let (env_c, path) = environment(spec.env, spec.clear_env)?;
    let envp = pointers(&env_c);
    let candidates = candidates(argv0, spec.program, path.as_deref())?;
    let work_dir = cstring(spec.work_dir.as_os_str().as_bytes())?;
    let run_as = match spec.run_as {
        Some((uid, gid, groups)) => {
            let n = c_int::try_from(groups.len())
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            Some((uid, gid, groups, n))
        }
        None => None,
    };
    // Registered before the clone: a failure then leaves no process behind.
    let (out_r, out_w) = output_pipe()?;
    let (err_r, err_w) = output_pipe()?;
    let (report_r, report_w) = pipe_fds()?;
    let null = dev_null()?;
    let mut stack = ChildStack::take()?;
    let args = ChildArgs {
        candidates: &candidates,
        argv: &argv,
        envp: &envp,
        work_dir: &work_dir,
        cgroup: spec.cgroup,
        run_as,
        stdin: null,
        stdout: out_w.as_raw_fd(),
        stderr: err_w.as_raw_fd(),
        report: report_w.as_raw_fd(),
    };
    let pid = clone_vfork(&args, &mut stack)?;
    // The child has exec'd or exited: its copies of these are closed, so only ours remain,
    // and its stack is free again.
    drop((out_w, err_w, report_w));
    stack.give_back();
    match read_report(report_r) {
        Ok(None) => {}
        Ok(Some(errno)) => {
            // It has exited (or is about to): reap it now.
            reap_blocking(pid);
            return Err(io::Error::from_raw_os_error(errno));
        }
        Err(e) => {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
            reap_blocking(pid);
            return Err(e);
        }
    }
    // From here a failure drops `child`, which kills and reaps the process.
    let mut child = ChildProcess {
        pid,
        pidfd: None,
        status: None,
        stdout: None,
        stderr: None,
    };
    let pidfd = pidfd_open(pid)?;
    // SAFETY: an OwnedFd stays open, and names the same descriptor, until it is dropped,
    // which happens only with the AsyncFd that owns it.
    let registered = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) };
    child.pidfd = Some(registered.map_err(|e| e.into_parts().1)?);
    child.stdout = Some(out_r);
    child.stderr = Some(err_r);
    Ok(child)
}

/// The errno the child reported, or None at end of file (it exec'd).
fn read_report(fd: OwnedFd) -> io::Result<Option<c_int>> {
    let mut file = std::fs::File::from(fd);
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    match got {
        0 => Ok(None),
        4 => Ok(Some(c_int::from_ne_bytes(buf))),
        _ => Err(io::Error::other(
            "short error report from the child process",
        )),
    }
}

fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags, no pointers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: a descriptor just opened (close-on-exec) that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Runs `child` in a CLONE_VM | CLONE_VFORK child with all signals blocked in this thread
/// meanwhile; returns once the child has exec'd or exited.
fn clone_vfork(args: &ChildArgs<'_>, stack: &mut ChildStack) -> io::Result<i32> {
    let all: u64 = !0;
    let mut old: u64 = 0;
    // SAFETY: both pointers are to 8-byte signal sets, the size passed.
    if unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all,
            &mut old,
            SIGSET_BYTES,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    let cb: CloneCb<'_> = Box::new(|| child(args));
    // SAFETY: CLONE_VM | CLONE_VFORK suspends this thread until the child has exec'd or
    // exited, so everything `args` borrows (and `stack`) outlives the child's use of it,
    // and nothing else in this thread runs meanwhile. The child runs `child`, which makes
    // only async-signal-safe system calls on memory prepared here, never allocates,
    // never returns into Rust code that could unwind (it exits with exit_group), and
    // resets signal handlers before unblocking signals. SIGCHLD makes it an ordinary child
    // for waitpid.
    let res = unsafe {
        nix::sched::clone(
            cb,
            stack.usable(),
            CloneFlags::CLONE_VM | CloneFlags::CLONE_VFORK,
            Some(libc::SIGCHLD),
        )
    };
    // SAFETY: restores the mask saved above, from a valid 8-byte set.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &old,
            std::ptr::null_mut::<u64>(),
            SIGSET_BYTES,
        )
    };
    Ok(res?.as_raw())
}

fn errno() -> c_int {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// The child from the clone on: sets up and execs; on failure reports the errno and exits.
/// Never returns (the return value only satisfies the clone callback's type).
fn child(args: &ChildArgs<'_>) -> isize {
    // SAFETY: runs in the vfork child as `clone_vfork` describes.
    let e = unsafe { child_setup_and_exec(args) };
    let bytes = e.to_ne_bytes();
    // SAFETY: writes 4 bytes from a live buffer to the report pipe, then ends the child
    // without running anything of the parent's (no atexit handlers, no unwinding).
    unsafe {
        libc::write(args.report, bytes.as_ptr().cast(), bytes.len());
        libc::syscall(libc::SYS_exit_group, 127);
    }
    127
}

/// Returns only on failure, with the errno.
///
/// # Safety
/// Only in the CLONE_VM | CLONE_VFORK child, with `args` prepared by `spawn`.
unsafe fn child_setup_and_exec(a: &ChildArgs<'_>) -> c_int {
    // SAFETY: (all below) system calls on valid NUL-terminated strings, null-terminated
    // pointer arrays and descriptors made by `spawn`, which outlive the child's use.
    unsafe {
        if let Err(e) = reset_signals() {
            return e;
        }
        if libc::setpgid(0, 0) != 0 {
            return errno();
        }
        if let Some(cg) = a.cgroup {
            if let Err(e) = cg.join_in_child() {
                return e.raw_os_error().unwrap_or(libc::EIO);
            }
        }
        if libc::chdir(a.work_dir.as_ptr()) != 0 {
            return errno();
        }
        // Groups, then gid, then uid: after setuid the others are no longer allowed.
        if let Some((uid, gid, groups, n)) = a.run_as {
            if libc::syscall(libc::SYS_setgroups, n, groups.as_ptr()) != 0
                || libc::syscall(libc::SYS_setgid, gid) != 0
                || libc::syscall(libc::SYS_setuid, uid) != 0
            {
                return errno();
            }
        }
        // All above 2 (`above_stdio`), so none is overwritten before it is copied.
        for (fd, target) in [(a.stdin, 0), (a.stdout, 1), (a.stderr, 2)] {
            if libc::dup2(fd, target) < 0 {
                return errno();
            }
        }
        // As execvp: a candidate that is not there (or not accessible) is skipped; EACCES
        // wins over ENOENT at the end.
        let mut eacces = false;
        let mut last = libc::ENOENT;
        for path in a.candidates {
            libc::execve(path.as_ptr(), a.argv.as_ptr(), a.envp.as_ptr());
            match errno() {
                libc::EACCES => eacces = true,
                e @ (libc::ENOENT
                | libc::ENOTDIR
                | libc::ESTALE
                | libc::ENODEV
                | libc::ETIMEDOUT) => last = e,
                e => return e,
            }
        }
        if eacces {
            libc::EACCES
        } else {
            last
        }
    }
}

/// Every signal that has a handler (and SIGPIPE) back to SIG_DFL, then an empty mask.
/// Ignored signals stay ignored, as with std's `Command`.
///
/// # Safety
/// Only in the vfork child (it changes this process's dispositions).
unsafe fn reset_signals() -> Result<(), c_int> {
    // All zero is SIG_DFL with no flags and an empty mask in the kernel's struct sigaction
    // on every Linux architecture; 64 bytes is more than any of them reads.
    let default = [0u64; 8];
    for sig in 1..NSIG {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: sigaction only reads the disposition into `old`, a valid struct.
        let keep = unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && (old.sa_sigaction == libc::SIG_DFL
                    || (old.sa_sigaction == libc::SIG_IGN && sig != libc::SIGPIPE))
        };
        if keep {
            continue;
        }
        // Not kept: a handler, SIGPIPE, or one of glibc's own signals (32 and 33, which its
        // sigaction refuses to show): the raw call sets those too.
        // SAFETY: `default` is a valid (all zero) kernel sigaction; no old one is read.
        let r = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                default.as_ptr(),
                std::ptr::null_mut::<u64>(),
                SIGSET_BYTES,
            )
        };
        if r != 0 {
            return Err(errno());
        }
    }
    let empty: u64 = 0;
    // SAFETY: a valid 8-byte signal set, the size passed.
    if unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty,
            std::ptr::null_mut::<u64>(),
            SIGSET_BYTES,
        )
    } != 0
    {
        return Err(errno());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;
    use tokio::io::{AsyncRead, AsyncReadExt};

    struct Job {
        argv: Vec<String>,
        program: Option<PathBuf>,
        env: BTreeMap<String, String>,
        clear_env: bool,
        dir: PathBuf,
        cgroup: Option<AttemptCgroup>,
        run_as: Option<(u32, u32, Vec<u32>)>,
    }

    fn job(argv: &[&str], dir: &Path) -> Job {
        Job {
            argv: argv.iter().map(|a| a.to_string()).collect(),
            program: None,
            env: BTreeMap::new(),
            clear_env: false,
            dir: dir.to_path_buf(),
            cgroup: None,
            run_as: None,
        }
    }

    fn start(j: &Job) -> io::Result<ChildProcess> {
        spawn(&SpawnSpec {
            argv: &j.argv,
            program: j.program.as_deref(),
            env: &j.env,
            clear_env: j.clear_env,
            work_dir: &j.dir,
            cgroup: j.cgroup.as_ref(),
            run_as: j.run_as.as_ref().map(|(u, g, gs)| (*u, *g, gs.as_slice())),
        })
    }

    async fn read_all(p: Option<impl AsyncRead + Unpin>) -> String {
        let mut s = String::new();
        if let Some(mut p) = p {
            p.read_to_string(&mut s).await.expect("read pipe");
        }
        s
    }

    /// Runs to the end: (status, stdout, stderr).
    async fn output(j: &Job) -> (ExitStatus, String, String) {
        let mut c = start(j).expect("spawn");
        let (out, err) = tokio::join!(read_all(c.stdout.take()), read_all(c.stderr.take()));
        (c.wait().await.expect("wait"), out, err)
    }

    /// Gone from /proc: exited and reaped (not a zombie). Polled, bounded.
    async fn reaped(pid: i32) -> bool {
        for _ in 0..500 {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// A line of /proc/self/status as the child saw it.
    fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("{key} missing in {status}"))
            .trim()
    }

    #[tokio::test]
    async fn errors_carry_the_os_error() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data.txt");
        std::fs::write(&data, "not a program").unwrap();
        let lookup = job(&["drover-test-no-such-program"], d.path());
        let mut missing = job(&["x"], d.path());
        missing.program = Some("/no/such/program".into());
        let mut not_executable = job(&["x"], d.path());
        not_executable.program = Some(data.clone());
        let data_str = data.display().to_string();
        let by_path = job(&[data_str.as_str()], d.path());
        let no_dir = job(&["true"], &d.path().join("gone"));
        for (j, errno) in [
            (lookup, libc::ENOENT),
            (missing, libc::ENOENT),
            (not_executable, libc::EACCES),
            (by_path, libc::EACCES),
            (no_dir, libc::ENOENT),
        ] {
            let e = start(&j).expect_err("must not start");
            assert_eq!(e.raw_os_error(), Some(errno), "{:?}: {e}", j.argv);
        }
    }

    /// The open-file flags (octal) of descriptor `fd` in the child, from /proc.
    async fn child_fd_flags(fd: u32, d: &Path) -> u32 {
        let path = format!("/proc/self/fdinfo/{fd}");
        let (status, out, _) = output(&job(&["cat", path.as_str()], d)).await;
        assert!(status.success(), "{out}");
        u32::from_str_radix(status_field(&out, "flags"), 8).expect("octal flags")
    }

    #[tokio::test]
    async fn the_child_gets_blocking_stdio_and_the_same_dev_null_each_time() {
        let d = tempfile::tempdir().unwrap();
        // Our ends of the pipes are non-blocking; the child's must not be, or a program
        // writing faster than we read would get EAGAIN.
        for fd in [0, 1, 2] {
            let flags = child_fd_flags(fd, d.path()).await;
            assert_eq!(
                flags & libc::O_NONBLOCK as u32,
                0,
                "fd {fd}: flags {flags:o}"
            );
        }
        let (_, out, _) = output(&job(&["readlink", "/proc/self/fd/0"], d.path())).await;
        assert_eq!(out.trim(), "/dev/null");
        // One kept descriptor, not one opened (and left open) per spawn.
        let first = dev_null().unwrap();
        output(&job(&["true"], d.path())).await;
        assert_eq!(dev_null().unwrap(), first);
    }

    #[tokio::test]
    async fn environment_is_exactly_what_was_given() {
        let d = tempfile::tempdir().unwrap();
        let mut j = job(&["env"], d.path());
        j.clear_env = true;
        j.env.insert("A".into(), "1".into());
        j.env.insert("B".into(), "two words".into());
        j.env.insert("EMPTY".into(), String::new());
        let (s, out, _) = output(&j).await;
        assert!(s.success());
        assert_eq!(out, "A=1\nB=two words\nEMPTY=\n");

        // Without clear_env: the worker's environment with `env` on top.
        let mut j = job(&["env"], d.path());
        j.env.insert("PATH".into(), "/usr/bin:/bin".into());
        j.env.insert("DROVER_SPAWN_TEST".into(), "x".into());
        let (_, out, _) = output(&j).await;
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines.contains(&"PATH=/usr/bin:/bin"), "{out}");
        assert!(lines.contains(&"DROVER_SPAWN_TEST=x"), "{out}");
        assert_eq!(
            lines.len(),
            std::env::vars_os().count() + 1 + usize::from(std::env::var_os("PATH").is_none())
        );
    }

    #[tokio::test]
    async fn argv0_is_passed_as_given_and_cwd_is_the_work_dir() {
        let d = tempfile::tempdir().unwrap();
        let mut j = job(&["custom-name", "-c", "echo \"$0\"; pwd -P"], d.path());
        j.program = Some("/bin/sh".into());
        let (s, out, _) = output(&j).await;
        assert_eq!(s.code(), Some(0));
        let real = std::fs::canonicalize(d.path()).unwrap();
        assert_eq!(out, format!("custom-name\n{}\n", real.display()));
    }

    #[tokio::test]
    async fn stdin_is_null_and_stderr_is_separate() {
        let d = tempfile::tempdir().unwrap();
        let (s, out, err) = output(&job(
            &["sh", "-c", "cat; echo out; echo err >&2; exit 3"],
            d.path(),
        ))
        .await;
        assert_eq!(
            (s.code(), out.as_str(), err.as_str()),
            (Some(3), "out\n", "err\n")
        );
    }

    #[tokio::test]
    async fn the_child_leads_its_own_process_group_and_dropping_kills_and_reaps_it() {
        let d = tempfile::tempdir().unwrap();
        let c = start(&job(&["sleep", "1000"], d.path())).unwrap();
        let pid = c.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let (_, rest) = stat.rsplit_once(')').unwrap();
        let pgrp: i32 = rest.split_whitespace().nth(2).unwrap().parse().unwrap();
        assert_eq!(pgrp, pid);
        assert_ne!(pgrp, nix::unistd::getpgrp().as_raw());
        drop(c);
        assert!(reaped(pid).await, "{pid} still there");
    }

    #[tokio::test]
    async fn dropped_outside_the_runtime_it_is_killed_and_reaped_too() {
        let d = tempfile::tempdir().unwrap();
        let c = start(&job(&["sleep", "1000"], d.path())).unwrap();
        let pid = c.id();
        std::thread::spawn(move || drop(c)).join().unwrap();
        assert!(reaped(pid).await, "{pid} still there");
    }

    #[tokio::test]
    async fn wait_is_cancel_safe_and_repeatable() {
        let d = tempfile::tempdir().unwrap();
        let mut c = start(&job(&["sh", "-c", "sleep 0.2; exit 5"], d.path())).unwrap();
        let early = tokio::time::timeout(Duration::from_millis(20), c.wait()).await;
        assert!(early.is_err(), "exited early: {early:?}");
        assert_eq!(c.wait().await.unwrap().code(), Some(5));
        assert_eq!(c.wait().await.unwrap().code(), Some(5));
        assert!(reaped(c.id()).await);
    }

    #[tokio::test]
    async fn signals_are_reset_and_the_parents_mask_restored() {
        // tokio's SIGCHLD handler is installed, and the Rust runtime ignores SIGPIPE.
        let mut sigchld =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).unwrap();
        let mask = || {
            // SAFETY: sigset_t is plain data; all zero is a valid (empty) set.
            let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
            // SAFETY: reads this thread's mask into a valid set.
            assert_eq!(
                unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut set) },
                0
            );
            (1..NSIG)
                // SAFETY: only reads the valid set.
                .filter(|&s| unsafe { libc::sigismember(&set, s) } == 1)
                .collect::<Vec<_>>()
        };
        let before = mask();
        let d = tempfile::tempdir().unwrap();
        let (s, status, _) = output(&job(&["cat", "/proc/self/status"], d.path())).await;
        assert_eq!(mask(), before, "the parent thread's mask was not restored");
        assert!(s.success());
        assert_eq!(status_field(&status, "SigBlk"), "0000000000000000");
        assert_eq!(status_field(&status, "SigCgt"), "0000000000000000");
        let ignored = u64::from_str_radix(status_field(&status, "SigIgn"), 16).unwrap();
        assert_eq!(
            ignored & (1 << (libc::SIGPIPE - 1)),
            0,
            "SIGPIPE still ignored"
        );

        // Jobs that get SIGCHLDs of their own still exit normally and report their status.
        let jobs: Vec<Job> = (0..8)
            .map(|i| {
                let script = format!("sleep 0.05 & wait; true & wait; exit {i}");
                job(&["sh", "-c", &script], d.path())
            })
            .collect();
        let results = futures::future::join_all(jobs.iter().map(output)).await;
        for (i, (s, _, _)) in results.into_iter().enumerate() {
            assert_eq!(s.code(), Some(i as i32));
        }
        // Our own children's exits were signalled to us, not swallowed in a child.
        tokio::time::timeout(Duration::from_secs(5), sigchld.recv())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn the_child_is_in_the_attempt_cgroup_before_exec() {
        let name = format!("drover-spawn-test-{}", std::process::id());
        let Some(cg) = AttemptCgroup::scratch(&name) else {
            eprintln!("no cgroup2 or no rights to make a cgroup: skipped");
            return;
        };
        let d = tempfile::tempdir().unwrap();
        let mut j = job(&["cat", "/proc/self/cgroup"], d.path());
        j.cgroup = Some(cg);
        let (s, out, _) = output(&j).await;
        if let Some(cg) = &j.cgroup {
            cg.kill_and_wait().await;
            cg.remove();
        }
        assert!(s.success());
        let v2 = out
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or_default();
        assert!(v2.ends_with(&format!("/{name}")), "{out}");
    }

    #[tokio::test]
    async fn run_as_drops_to_the_given_ids() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("not root: skipped");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let mut j = job(&["cat", "/proc/self/status"], d.path());
        j.run_as = Some((65534, 65533, vec![100, 65533]));
        let (s, status, _) = output(&j).await;
        assert!(s.success());
        let ids = |key| {
            status_field(&status, key)
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids("Uid"), ["65534"; 4]);
        assert_eq!(ids("Gid"), ["65533"; 4]);
        assert_eq!(ids("Groups"), ["100", "65533"]);
        assert_eq!(status_field(&status, "CapEff"), "0000000000000000");
        // The worker itself keeps its ids (no glibc setxid broadcast reached its threads).
        assert!(nix::unistd::geteuid().is_root());
    }
}
