//! Keeps everything an attempt started inside the attempt, and applies its resource limits.
//!
//! A process group is not enough: `setsid` or a double fork leaves it, and the group kill
//! misses the daemon. So each attempt gets a cgroup of its own, joined by the child before
//! `exec`, and ending the attempt kills the whole cgroup:
//!
//! - **cgroup v2** (`cgroup.kill`): the attempt's v2 cgroup is killed in one write. Memory,
//!   pids and CPU limits use v2's `memory.max`, `pids.max`, `cpu.max` where the v2
//!   hierarchy offers those controllers (a pure v2 host).
//! - **hybrid** hosts (v2 mounted beside v1 controllers): the kill goes through v2, the
//!   limits through the v1 `memory` (`memory.limit_in_bytes`, OOM count in
//!   `memory.oom_control`), `pids` (`pids.max`) and `cpu` (`cpu.cfs_quota_us`) hierarchies.
//! - **subreaper** where no cgroup can be created (not root, no cgroup2 mount): the worker
//!   becomes a child subreaper, so orphans of its jobs are re-parented to it instead of
//!   init; at the end of an attempt every descendant of the worker whose environment names
//!   the attempt (`DROVER_ATTEMPT_ID`) is killed and reaped. No limits: a job asking for
//!   one is refused.
//!
//! Which one applies is detected once at start from `/proc/self/mountinfo` and
//! `/proc/self/cgroup`, logged, and reported to the coordinator in `Hello.containment`.
//!
//! An attempt without limits, where memory is not accounted in its v2 cgroup, runs in its
//! worker slot's cgroup (`slot-N`), kept from one attempt to the next: it is empty when
//! the next attempt starts (an attempt ends only once its cgroup is empty, and one that
//! still holds processes is not reused), and its CPU counter is read at the start.

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long to wait for a killed cgroup to become empty.
const EMPTY_WAIT: Duration = Duration::from_secs(10);

/// Limits asked for by a job; None means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    /// Thousandths of a CPU.
    pub cpu_millis: Option<u32>,
    pub pids: Option<u32>,
}

impl Limits {
    pub fn any(&self) -> bool {
        self.memory_bytes.is_some() || self.cpu_millis.is_some() || self.pids.is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    V1,
    V2,
}

/// A controller's directory for this worker, in the hierarchy that offers it.
#[derive(Debug, Clone)]
struct Ctl {
    flavor: Flavor,
    dir: PathBuf,
}

/// What this worker can do, detected at start.
#[derive(Debug, Clone, Default)]
pub struct Containment {
    /// This worker's directory in the v2 hierarchy (has `cgroup.kill`).
    kill: Option<PathBuf>,
    memory: Option<Ctl>,
    pids: Option<Ctl>,
    cpu: Option<Ctl>,
    /// No cgroups: the worker is a child subreaper and kills descendants by marker.
    subreaper: bool,
    /// The kept slot cgroups' files, open, by slot.
    slot_files: Arc<Mutex<HashMap<usize, Arc<SlotFiles>>>>,
}

/// One line of /proc/self/mountinfo that mounts a cgroup file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// Root of the mount within the hierarchy (usually "/").
    pub root: String,
    pub mount_point: PathBuf,
    /// True for cgroup2; for v1, `controllers` lists what it holds.
    pub v2: bool,
    pub controllers: Vec<String>,
    /// The file system's own options (for cgroup2, e.g. `nsdelegate`, `favordynmods`).
    pub super_options: Vec<String>,
}

/// Moving a process into a cgroup (the child's `cgroup.procs` write before exec) waits for
/// an RCU grace period unless the cgroup2 hierarchy is mounted with `favordynmods`
/// (Linux 6.0+): about 7 ms per attempt measured here, all of it pickup latency; 0.1 ms
/// with the option. The price, per the kernel's docs, is slightly slower fork and exit.
/// Remounts with the option added (the other options kept); a failure (older kernel, no
/// rights) is logged and changes nothing.
pub fn favor_dynamic_modifications(m: &CgroupMount) {
    if !m.v2 || m.super_options.iter().any(|o| o == "favordynmods") {
        return;
    }
    let mut opts: Vec<&str> = m
        .super_options
        .iter()
        .map(String::as_str)
        .filter(|o| *o != "rw" && *o != "ro" && !o.is_empty())
        .collect();
    opts.push("favordynmods");
    let (Ok(target), Ok(data)) = (
        std::ffi::CString::new(m.mount_point.as_os_str().as_bytes()),
        std::ffi::CString::new(opts.join(",")),
    ) else {
        return;
    };
    // SAFETY: valid NUL-terminated strings that outlive the call; no other pointers.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT,
            data.as_ptr().cast(),
        )
    };
    if rc == 0 {
        tracing::info!(mount = %m.mount_point.display(),
            "cgroup2 remounted with favordynmods: joining an attempt's cgroup no longer waits for an RCU grace period");
    } else {
        tracing::warn!(mount = %m.mount_point.display(), error = %std::io::Error::last_os_error(),
            "could not turn on favordynmods; each attempt's cgroup join may add milliseconds of pickup latency");
    }
}

/// The cgroup file systems in a mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 5 || r.len() < 3 {
            continue;
        }
        let v2 = match r[0] {
            "cgroup2" => true,
            "cgroup" => false,
            _ => continue,
        };
        let controllers = if v2 {
            Vec::new()
        } else {
            r[2].split(',').map(str::to_string).collect()
        };
        out.push(CgroupMount {
            root: unescape_mount(l[3]),
            mount_point: PathBuf::from(unescape_mount(l[4])),
            v2,
            super_options: r[2].split(',').map(str::to_string).collect(),
            controllers,
        });
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Our own cgroup path in the v2 hierarchy ("0::/x") and per v1 controller.
pub fn parse_proc_cgroup(text: &str) -> (Option<String>, Vec<(Vec<String>, String)>) {
    let mut v2 = None;
    let mut v1 = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" && ctls.is_empty() {
            v2 = Some(path.to_string());
        } else {
            v1.push((
                ctls.split(',').map(str::to_string).collect(),
                path.to_string(),
            ));
        }
    }
    (v2, v1)
}

/// The directory of our own cgroup under a mount.
fn own_dir(m: &CgroupMount, own: &str) -> PathBuf {
    let rel = own.strip_prefix(m.root.as_str()).unwrap_or(own);
    m.mount_point.join(rel.trim_start_matches('/'))
}

/// The name of this worker's cgroup directory: its id and a hash of its state directory,
/// so two workers that share an id (a misconfiguration, but also parallel tests) never
/// touch each other's attempts, while a restarted worker finds what its crashed run left.
pub fn worker_cgroup_name(worker_id: &str, state_dir: &Path) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(state_dir.as_os_str().as_bytes());
    let tag: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    worker_dir_name(&format!("{worker_id}-{tag}"))
}

/// A cgroup directory name: only safe characters.
fn worker_dir_name(worker_id: &str) -> String {
    let clean: String = worker_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    format!("drover-{clean}")
}

fn write(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::write(path, value)
}

fn make_dir(dir: &Path) -> bool {
    match std::fs::create_dir_all(dir) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(dir = %dir.display(), error = %e, "cannot create cgroup");
            false
        }
    }
}

impl Containment {
    /// Detects what this host offers and prepares this worker's cgroup directories.
    /// `favor_dynmods`: turn on cgroup2's `favordynmods` mount option if it is off (see
    /// [`favor_dynamic_modifications`]).
    pub fn detect(worker_id: &str, state_dir: &Path, favor_dynmods: bool) -> Containment {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mounts = parse_mountinfo(&mountinfo);
        let (own_v2, own_v1) = parse_proc_cgroup(&own);
        let name = worker_cgroup_name(worker_id, state_dir);
        let mut c = Containment::default();

        if let (Some(m), Some(own)) = (mounts.iter().find(|m| m.v2), own_v2.as_deref()) {
            let base = own_dir(m, own);
            let dir = base.join(&name);
            if make_dir(&dir) && dir.join("cgroup.kill").exists() {
                if favor_dynmods {
                    favor_dynamic_modifications(m);
                }
                let controllers =
                    std::fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
                let offered: Vec<&str> = controllers.split_whitespace().collect();
                let wanted: Vec<&str> = ["memory", "pids", "cpu"]
                    .into_iter()
                    .filter(|c| offered.contains(c))
                    .collect();
                if !wanted.is_empty() && enable_v2_controllers(&base, &dir, &wanted) {
                    for w in &wanted {
                        let ctl = Some(Ctl {
                            flavor: Flavor::V2,
                            dir: dir.clone(),
                        });
                        match *w {
                            "memory" => c.memory = ctl,
                            "pids" => c.pids = ctl,
                            _ => c.cpu = ctl,
                        }
                    }
                }
                c.kill = Some(dir);
            }
        }
        // v1 controllers for what v2 does not offer (hybrid hosts).
        for (want, slot) in [("memory", 0), ("pids", 1), ("cpu", 2)] {
            let have = match slot {
                0 => c.memory.is_some(),
                1 => c.pids.is_some(),
                _ => c.cpu.is_some(),
            };
            if have || c.kill.is_none() {
                // Without a v2 kill the subreaper does containment; v1 limits alone would
                // leave no way to kill the cgroup's members in one step, so none are used.
                continue;
            }
            let Some(m) = mounts
                .iter()
                .find(|m| !m.v2 && m.controllers.iter().any(|c| c == want))
            else {
                continue;
            };
            let own = own_v1
                .iter()
                .find(|(ctls, _)| ctls.iter().any(|c| c == want))
                .map(|(_, p)| p.as_str())
                .unwrap_or("/");
            let dir = own_dir(m, own).join(&name);
            if make_dir(&dir) {
                let ctl = Some(Ctl {
                    flavor: Flavor::V1,
                    dir,
                });
                match slot {
                    0 => c.memory = ctl,
                    1 => c.pids = ctl,
                    _ => c.cpu = ctl,
                }
            }
        }
        if c.kill.is_none() {
            match nix::sys::prctl::set_child_subreaper(true) {
                Ok(()) => c.subreaper = true,
                Err(e) => tracing::warn!(error = %e, "cannot become a child subreaper"),
            }
        }
        c
    }

    /// No cgroups at all, only the subreaper (what [`Self::detect`] falls back to).
    pub fn subreaper_only() -> Containment {
        let subreaper = nix::sys::prctl::set_child_subreaper(true).is_ok();
        Containment {
            subreaper,
            ..Containment::default()
        }
    }

    /// One line for logs, `Hello.containment` and `droverctl workers`, e.g.
    /// "cgroup v2 kill; limits: memory (v1), pids (v1), cpu (v1)".
    pub fn describe(&self) -> String {
        let mut s = if self.kill.is_some() {
            "cgroup v2 kill".to_string()
        } else if self.subreaper {
            "subreaper".to_string()
        } else {
            "process group only".to_string()
        };
        let limits: Vec<String> = [
            ("memory", &self.memory),
            ("pids", &self.pids),
            ("cpu", &self.cpu),
        ]
        .into_iter()
        .filter_map(|(n, c)| {
            c.as_ref()
                .map(|c| format!("{n} ({})", if c.flavor == Flavor::V1 { "v1" } else { "v2" }))
        })
        .collect();
        if limits.is_empty() {
            s.push_str("; no limits");
        } else {
            s.push_str("; limits: ");
            s.push_str(&limits.join(", "));
        }
        s
    }

    pub fn uses_cgroups(&self) -> bool {
        self.kill.is_some()
    }

    /// Why `limits` cannot be enforced here, if they cannot.
    pub fn refuse(&self, limits: &Limits) -> Option<String> {
        let mut missing = Vec::new();
        if limits.memory_bytes.is_some() && self.memory.is_none() {
            missing.push("memory");
        }
        if limits.cpu_millis.is_some() && self.cpu.is_none() {
            missing.push("cpus");
        }
        if limits.pids.is_some() && self.pids.is_none() {
            missing.push("pids");
        }
        (!missing.is_empty()).then(|| {
            format!(
                "this worker cannot enforce the {} limit (containment: {})",
                missing.join(", "),
                self.describe()
            )
        })
    }

    fn dirs(&self) -> Vec<(Option<Flavor>, PathBuf)> {
        let mut v: Vec<(Option<Flavor>, PathBuf)> = Vec::new();
        if let Some(k) = &self.kill {
            v.push((None, k.clone()));
        }
        for c in [&self.memory, &self.pids, &self.cpu].into_iter().flatten() {
            if c.flavor == Flavor::V1 && !v.iter().any(|(_, d)| d == &c.dir) {
                v.push((Some(Flavor::V1), c.dir.clone()));
            }
        }
        v
    }

    /// Kills and removes attempt cgroups a previous run of this worker left behind.
    /// Returns how many were removed.
    pub fn remove_leftovers(&self) -> usize {
        let mut n = 0;
        for (flavor, dir) in self.dirs() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if !p.is_dir() {
                    continue;
                }
                if flavor.is_none() {
                    let _ = write(&p.join("cgroup.kill"), "1");
                    wait_empty_blocking(&p);
                } else {
                    kill_members(&p, Signal::SIGKILL);
                }
                if remove_dir_retrying(&p) {
                    n += 1;
                }
            }
        }
        n
    }

    /// Creates the cgroup(s) for one attempt, with its limits applied. None when this
    /// worker has no cgroups (the subreaper contains it instead).
    ///
    /// An attempt in a worker slot (`slot`) with no limits, on a host where its memory
    /// is not accounted in the v2 cgroup, reuses the slot's cgroup (`slot-N`): making and
    /// removing a cgroup per attempt was a seventh of the worker's CPU with many short jobs
    /// (BENCHMARKS.md, session 10). Such a cgroup holds nothing that carries over from one
    /// attempt to the next but its CPU counter, which is read at the start and subtracted.
    pub fn attempt(
        &self,
        attempt_id: &str,
        limits: &Limits,
        slot: Option<usize>,
    ) -> Result<Option<AttemptCgroup>, String> {
        if let Some(why) = self.refuse(limits) {
            return Err(why);
        }
        let Some(kill_base) = &self.kill else {
            return Ok(None);
        };
        let memory_in_v2 = self.memory.as_ref().is_some_and(|c| c.flavor == Flavor::V2);
        if let Some(i) = slot.filter(|_| !limits.any() && !memory_in_v2) {
            if let Some(cg) = self.slot_cgroup(kill_base, i) {
                return Ok(Some(cg));
            }
        }
        let name = worker_dir_name(attempt_id);
        let mut cg = AttemptCgroup {
            v2: kill_base.join(&name),
            v1: Vec::new(),
            // A v1 memory cgroup is joined only for a memory limit (see below); on a v2
            // host the accounting is in the attempt's own cgroup, so it is always read.
            memory: self
                .memory
                .as_ref()
                .filter(|c| c.flavor == Flavor::V2 || limits.memory_bytes.is_some())
                .map(|c| (c.flavor, c.dir.join(&name))),
            cpu_v2: None,
            procs: Vec::new(),
            memory_limit: limits.memory_bytes,
            cpu_base_usec: 0,
            files: None,
        };
        let mk = |d: &Path| {
            if d.exists() {
                // A leftover with the same name (cannot normally happen): start clean.
                let _ = std::fs::remove_dir(d);
            }
            std::fs::create_dir(d).map_err(|e| format!("creating cgroup {}: {e}", d.display()))
        };
        mk(&cg.v2)?;
        // v1 cgroups only when limited: every cgroup.procs write the child makes waits for
        // an RCU grace period in the kernel (about 7 ms each, measured here), which is
        // pickup latency. Without a memory limit, peak memory comes from the sampler.
        let wanted = [
            (&self.memory, limits.memory_bytes.is_some()),
            (&self.pids, limits.pids.is_some()),
            (&self.cpu, limits.cpu_millis.is_some()),
        ];
        for (c, want) in wanted {
            let Some(c) = c.as_ref().filter(|_| want) else {
                continue;
            };
            if c.flavor == Flavor::V1 {
                let d = c.dir.join(&name);
                if !cg.v1.contains(&d) {
                    if let Err(e) = mk(&d) {
                        cg.remove();
                        return Err(e);
                    }
                    cg.v1.push(d);
                }
            }
        }
        if let Err(e) = apply_limits(self, &name, limits) {
            cg.remove();
            return Err(e);
        }
        if self.cpu.as_ref().is_some_and(|c| c.flavor == Flavor::V2) {
            cg.cpu_v2 = Some(cg.v2.clone());
        }
        for d in std::iter::once(&cg.v2).chain(cg.v1.iter()) {
            let p = d.join("cgroup.procs");
            match CString::new(p.as_os_str().as_bytes()) {
                Ok(s) => cg.procs.push(s),
                Err(_) => {
                    cg.remove();
                    return Err(format!("cgroup path {} contains NUL", p.display()));
                }
            }
        }
        Ok(Some(cg))
    }

    /// Slot `i`'s cgroup, made if missing. None (the attempt then gets a cgroup of its own)
    /// if it cannot be made, or still holds processes of an earlier attempt that would not
    /// die: a job never starts beside another's leftovers.
    fn slot_cgroup(&self, kill_base: &Path, i: usize) -> Option<AttemptCgroup> {
        let dir = kill_base.join(slot_dir_name(i));
        let files = self.slot_files(i, &dir)?;
        // Read through the open files; an error means the directory went away (someone
        // removed it): forget the files, and this attempt gets a cgroup of its own.
        let (populated, cpu) = match (files.populated(), files.cpu_usage_usec()) {
            (Ok(p), Ok(c)) => (p, c),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(dir = %dir.display(), error = %e, "slot cgroup unreadable; this attempt gets its own");
                if let Ok(mut m) = self.slot_files.lock() {
                    m.remove(&i);
                }
                return None;
            }
        };
        if populated {
            tracing::warn!(dir = %dir.display(), "slot cgroup still holds processes; this attempt gets its own");
            return None;
        }
        let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).ok()?;
        Some(AttemptCgroup {
            v2: dir,
            v1: Vec::new(),
            memory: None,
            // Its cpu.stat is read through `files`.
            cpu_v2: None,
            procs: vec![procs],
            memory_limit: None,
            // The counter only grows while a process is in the cgroup, and it is empty.
            cpu_base_usec: cpu,
            files: Some(files),
        })
    }

    /// Slot `i`'s open files, the cgroup made and its files opened the first time.
    fn slot_files(&self, i: usize, dir: &Path) -> Option<Arc<SlotFiles>> {
        let mut map = self.slot_files.lock().ok()?;
        if let Some(f) = map.get(&i) {
            return Some(f.clone());
        }
        match std::fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                tracing::debug!(dir = %dir.display(), error = %e, "cannot create slot cgroup");
                return None;
            }
        }
        match SlotFiles::open(dir) {
            Ok(f) => {
                let f = Arc::new(f);
                map.insert(i, f.clone());
                Some(f)
            }
            Err(e) => {
                tracing::debug!(dir = %dir.display(), error = %e, "cannot open slot cgroup files");
                None
            }
        }
    }
}

/// A kept slot cgroup's files, open for all its attempts: reading and writing through
/// these spares an open, a walk of the cgroupfs path and a close each time, four times
/// per attempt.
#[derive(Debug)]
struct SlotFiles {
    events: std::fs::File,
    kill: std::fs::File,
    cpu: std::fs::File,
}

impl SlotFiles {
    fn open(dir: &Path) -> std::io::Result<SlotFiles> {
        Ok(SlotFiles {
            events: std::fs::File::open(dir.join("cgroup.events"))?,
            kill: std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.kill"))?,
            // v2's cpu.stat has usage_usec even without the cpu controller.
            cpu: std::fs::File::open(dir.join("cpu.stat"))?,
        })
    }

    fn populated(&self) -> std::io::Result<bool> {
        Ok(is_populated(&read_open_cgroup_file(&self.events)?))
    }

    fn cpu_usage_usec(&self) -> std::io::Result<u64> {
        usage_usec(&read_open_cgroup_file(&self.cpu)?)
            .ok_or_else(|| std::io::Error::other("cpu.stat has no usage_usec"))
    }

    fn kill(&self) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.kill.write_at(b"1", 0).map(|_| ())
    }
}

/// A cgroup file's whole text, read again from its start through an open descriptor.
fn read_open_cgroup_file(f: &std::fs::File) -> std::io::Result<String> {
    let mut buf = [0u8; 1024];
    let len = crate::process::read_from_start(f, &mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
}

fn is_populated(events: &str) -> bool {
    events.lines().any(|l| l.trim() == "populated 1")
}

fn usage_usec(cpu_stat: &str) -> Option<u64> {
    cpu_stat
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse().ok())
}

/// A slot's cgroup directory name; attempts' are `drover-<id>` ([`worker_dir_name`]).
fn slot_dir_name(i: usize) -> String {
    format!("slot-{i}")
}

/// `usage_usec` of a v2 cgroup's `cpu.stat` (present even without the cpu controller).
fn cpu_usage_usec(dir: &Path) -> Option<u64> {
    usage_usec(&read_cgroup_file(&dir.join("cpu.stat")))
}

/// On a pure v2 host the controllers must be enabled top-down, and a cgroup with processes
/// cannot pass them on: the worker moves itself into a leaf (`<dir>/agent`) first.
fn enable_v2_controllers(base: &Path, dir: &Path, wanted: &[&str]) -> bool {
    let spec: String = wanted.iter().map(|c| format!("+{c} ")).collect();
    let agent = dir.join("agent");
    let ok = make_dir(&agent)
        && write(&agent.join("cgroup.procs"), &std::process::id().to_string()).is_ok()
        && write(&base.join("cgroup.subtree_control"), spec.trim()).is_ok()
        && write(&dir.join("cgroup.subtree_control"), spec.trim()).is_ok();
    if !ok {
        tracing::info!(dir = %dir.display(), "cgroup v2 controllers cannot be delegated; no v2 limits");
    }
    ok
}

fn apply_limits(c: &Containment, name: &str, l: &Limits) -> Result<(), String> {
    let w = |p: PathBuf, v: String| {
        write(&p, &v).map_err(|e| format!("setting {} to {v}: {e}", p.display()))
    };
    if let (Some(bytes), Some(ctl)) = (l.memory_bytes, &c.memory) {
        let d = ctl.dir.join(name);
        match ctl.flavor {
            Flavor::V1 => {
                w(d.join("memory.limit_in_bytes"), bytes.to_string())?;
                // With swap accounting, also bound swap, so the limit is a real one.
                let _ = write(&d.join("memory.memsw.limit_in_bytes"), &bytes.to_string());
            }
            Flavor::V2 => {
                w(d.join("memory.max"), bytes.to_string())?;
                let _ = write(&d.join("memory.swap.max"), "0");
            }
        }
    }
    if let (Some(n), Some(ctl)) = (l.pids, &c.pids) {
        w(ctl.dir.join(name).join("pids.max"), n.to_string())?;
    }
    if let (Some(m), Some(ctl)) = (l.cpu_millis, &c.cpu) {
        let d = ctl.dir.join(name);
        let period: u64 = 100_000;
        let quota = (u64::from(m) * period / 1000).max(1000);
        match ctl.flavor {
            Flavor::V1 => {
                w(d.join("cpu.cfs_period_us"), period.to_string())?;
                w(d.join("cpu.cfs_quota_us"), quota.to_string())?;
            }
            Flavor::V2 => w(d.join("cpu.max"), format!("{quota} {period}"))?,
        }
    }
    Ok(())
}

fn kill_members(dir: &Path, sig: Signal) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            if pid > 1 {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
            }
        }
    }
}

/// A small cgroup file's text ("" if it cannot be read).
fn read_cgroup_file(path: &Path) -> String {
    let mut buf = [0u8; 1024];
    let len = crate::process::read_small(path, &mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

fn populated(dir: &Path) -> bool {
    is_populated(&read_cgroup_file(&dir.join("cgroup.events")))
}

fn wait_empty_blocking(dir: &Path) {
    let start = std::time::Instant::now();
    while populated(dir) && start.elapsed() < EMPTY_WAIT {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn remove_dir_retrying(dir: &Path) -> bool {
    for _ in 0..200 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return true,
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    tracing::warn!(dir = %dir.display(), "could not remove cgroup");
    false
}

/// What the cgroup's own accounting says about an attempt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupUsage {
    pub peak_memory_bytes: Option<u64>,
    pub cpu_time_ms: Option<u64>,
    /// Processes the kernel killed for exceeding the memory limit.
    pub oom_kills: u64,
}

/// One attempt's cgroups.
#[derive(Debug)]
pub struct AttemptCgroup {
    v2: PathBuf,
    v1: Vec<PathBuf>,
    memory: Option<(Flavor, PathBuf)>,
    cpu_v2: Option<PathBuf>,
    /// `cgroup.procs` of each, made before the clone: the child must not allocate.
    procs: Vec<CString>,
    pub memory_limit: Option<u64>,
    /// CPU time the cgroup had counted before this attempt (earlier attempts in the slot).
    cpu_base_usec: u64,
    /// A slot's cgroup (kept for the slot's next attempt instead of removed): its files,
    /// open.
    files: Option<Arc<SlotFiles>>,
}

impl AttemptCgroup {
    /// Moves the calling process into every cgroup of the attempt. Runs in the child
    /// between clone and exec (see `spawn`): only async-signal-safe calls, no allocation.
    ///
    /// # Safety
    /// Call only in a child process before exec.
    pub unsafe fn join_in_child(&self) -> std::io::Result<()> {
        for p in &self.procs {
            // SAFETY: p is a valid NUL-terminated path; the buffer is static.
            let fd = unsafe { libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: writes one byte from a static buffer to the descriptor opened above.
            let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
            let err = std::io::Error::last_os_error();
            // SAFETY: closes the descriptor opened above, used nowhere else.
            unsafe { libc::close(fd) };
            if n != 1 {
                return Err(err);
            }
        }
        Ok(())
    }

    /// Sends `sig` to every process in the attempt (also those that left its group).
    pub fn signal_all(&self, sig: Signal) {
        kill_members(&self.v2, sig);
    }

    /// SIGKILLs everything in the attempt at once.
    pub fn kill(&self) {
        let killed = match &self.files {
            Some(f) => f.kill(),
            None => write(&self.v2.join("cgroup.kill"), "1"),
        };
        if let Err(e) = killed {
            tracing::warn!(dir = %self.v2.display(), error = %e, "cgroup.kill failed; killing members");
            kill_members(&self.v2, Signal::SIGKILL);
        }
    }

    /// Kills everything and waits until the cgroup is empty.
    pub async fn kill_and_wait(&self) {
        self.kill();
        let start = std::time::Instant::now();
        while self.populated() && start.elapsed() < EMPTY_WAIT {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn populated(&self) -> bool {
        match &self.files {
            Some(f) => f.populated().unwrap_or(false),
            None => populated(&self.v2),
        }
    }

    /// Peak memory, CPU time and OOM kills so far.
    pub fn usage(&self) -> CgroupUsage {
        let mut u = CgroupUsage::default();
        let read = |p: PathBuf| read_cgroup_file(&p);
        let field = |text: &str, key: &str| {
            text.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse::<u64>().ok()).flatten()
            })
        };
        if let Some((flavor, dir)) = &self.memory {
            match flavor {
                Flavor::V1 => {
                    u.peak_memory_bytes = read(dir.join("memory.max_usage_in_bytes"))
                        .trim()
                        .parse()
                        .ok();
                    u.oom_kills =
                        field(&read(dir.join("memory.oom_control")), "oom_kill").unwrap_or(0);
                }
                Flavor::V2 => {
                    u.peak_memory_bytes = read(dir.join("memory.peak")).trim().parse().ok();
                    u.oom_kills = field(&read(dir.join("memory.events")), "oom_kill").unwrap_or(0);
                }
            }
        }
        let cpu_dir = self.cpu_v2.as_ref().unwrap_or(&self.v2);
        let usec = match &self.files {
            Some(f) => f.cpu_usage_usec().ok(),
            None => cpu_usage_usec(cpu_dir),
        };
        u.cpu_time_ms = usec.map(|us| us.saturating_sub(self.cpu_base_usec) / 1000);
        u
    }

    /// Removes the (empty) cgroup directories; a slot's stays for its next attempt.
    pub fn remove(&self) {
        if self.files.is_some() {
            return;
        }
        for d in self.v1.iter().chain(std::iter::once(&self.v2)) {
            if d.exists() {
                remove_dir_retrying(d);
            }
        }
    }
}

/// Subreaper containment: kills every descendant of this worker whose environment names
/// `attempt_id`, and reaps those that became our children. Returns how many were killed.
pub fn kill_attempt_descendants(attempt_id: &str) -> usize {
    let me = std::process::id() as i32;
    let marker = format!("DROVER_ATTEMPT_ID={attempt_id}");
    let mut killed = 0;
    // Killing a parent re-parents its children to us; repeat until none is left.
    for _ in 0..50 {
        let found = descendants_with_marker(me, marker.as_bytes());
        if found.is_empty() {
            break;
        }
        for (pid, _) in &found {
            let _ = nix::sys::signal::kill(Pid::from_raw(*pid), Signal::SIGKILL);
            killed += 1;
        }
        for (pid, ppid) in found {
            if ppid == me {
                // Known pid only: waitpid(-1) would steal tokio's children's statuses.
                let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
            }
        }
    }
    killed
}

/// (pid, ppid) of live descendants of `root` whose environment contains `marker`.
fn descendants_with_marker(root: i32, marker: &[u8]) -> Vec<(i32, i32)> {
    let mut parent = std::collections::HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            if f.len() > 1 && f[0] != "Z" {
                if let Ok(ppid) = f[1].parse::<i32>() {
                    parent.insert(pid, ppid);
                }
            }
        }
    }
    let is_descendant = |mut pid: i32| {
        for _ in 0..4096 {
            match parent.get(&pid) {
                Some(&p) if p == root => return true,
                Some(&p) if p > 1 => pid = p,
                _ => return false,
            }
        }
        false
    };
    parent
        .iter()
        .filter(|(&pid, _)| is_descendant(pid))
        .filter(|(&pid, _)| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|&b| b == 0).any(|kv| kv == marker))
                .unwrap_or(false)
        })
        .map(|(&pid, &ppid)| (pid, ppid))
        .collect()
}

#[cfg(test)]
impl AttemptCgroup {
    /// A bare v2 cgroup below this process's own, for tests elsewhere; None without a
    /// cgroup2 mount or the rights to make one. `remove` it afterwards.
    pub(crate) fn scratch(name: &str) -> Option<AttemptCgroup> {
        let mounts = parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").ok()?);
        let (own, _) = parse_proc_cgroup(&std::fs::read_to_string("/proc/self/cgroup").ok()?);
        let m = mounts.iter().find(|m| m.v2)?;
        let dir = own_dir(m, &own?).join(name);
        std::fs::create_dir(&dir).ok()?;
        let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).ok()?;
        Some(AttemptCgroup {
            v2: dir,
            v1: Vec::new(),
            memory: None,
            cpu_v2: None,
            procs: vec![procs],
            memory_limit: None,
            cpu_base_usec: 0,
            files: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup_mounts_in_a_hybrid_layout() {
        let text = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
            35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
            39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n\
            32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n\
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:1 - cgroup2 cgroup2 rw\n\
            50 23 0:50 / /mnt/with\\040space rw - ext4 /dev/sda1 rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 4);
        assert!(m[0].controllers.contains(&"memory".to_string()) && !m[0].v2);
        assert!(m[2].controllers.contains(&"cpu".to_string()));
        assert!(m[3].v2);
        assert_eq!(m[3].mount_point, PathBuf::from("/sys/fs/cgroup/unified"));
    }

    #[test]
    fn own_cgroup_paths() {
        let (v2, v1) = parse_proc_cgroup("4:memory:/a/b\n2:cpu,cpuacct:/\n0::/user.slice\n");
        assert_eq!(v2.as_deref(), Some("/user.slice"));
        assert_eq!(v1[0], (vec!["memory".to_string()], "/a/b".to_string()));
        let m = CgroupMount {
            root: "/a".into(),
            mount_point: "/sys/fs/cgroup/memory".into(),
            v2: false,
            controllers: vec!["memory".into()],
            super_options: vec!["rw".into(), "memory".into()],
        };
        // A container sees its own cgroup as the mount's root.
        assert_eq!(
            own_dir(&m, "/a/b"),
            PathBuf::from("/sys/fs/cgroup/memory/b")
        );
    }

    #[test]
    fn worker_dir_names_are_safe() {
        assert_eq!(worker_dir_name("host-1"), "drover-host-1");
        assert_eq!(worker_dir_name("../x/y"), "drover-.._x_y");
        assert!(!worker_dir_name("a/b\nc").contains(['/', '\n']));
    }

    #[test]
    fn refusal_names_the_missing_limits() {
        let c = Containment::default();
        assert_eq!(c.refuse(&Limits::default()), None);
        let why = c
            .refuse(&Limits {
                memory_bytes: Some(1 << 20),
                pids: Some(10),
                ..Limits::default()
            })
            .unwrap();
        assert!(why.contains("memory, pids"), "{why}");
    }
}
