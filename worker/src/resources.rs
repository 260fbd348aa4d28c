//! The host's health as the worker reports it: CPU, load, memory, swap and free space on
//! the work directory's disk (sysinfo), and each running attempt's process group (summed
//! from /proc: RSS, CPU). Sampled once a second by one task; heartbeats carry the latest.

use drover_proto::v1 as pb;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use sysinfo::{Disks, System};

pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// What is known about one attempt's processes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
    /// CPU time used so far by the group's live processes (highest seen).
    pub cpu_time_ms: u64,
    pub cpu_percent: f64,
}

struct Tracked {
    pgid: i32,
    usage: Usage,
    last: Option<(Instant, u64)>,
}

/// Thresholds below which the worker takes no new jobs.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub min_disk_free_bytes: u64,
    pub min_memory_available_bytes: u64,
}

#[derive(Default)]
struct Latest {
    host: pb::HostResources,
    paused_reason: String,
}

pub struct Monitor {
    work_root: PathBuf,
    limits: Limits,
    attempts: Mutex<HashMap<String, Tracked>>,
    latest: Mutex<Latest>,
}

impl Monitor {
    pub fn new(work_root: PathBuf, limits: Limits) -> Arc<Monitor> {
        Arc::new(Monitor {
            work_root,
            limits,
            attempts: Mutex::new(HashMap::new()),
            latest: Mutex::new(Latest::default()),
        })
    }

    pub fn track(&self, attempt_id: &str, pgid: i32) {
        if let Ok(mut a) = self.attempts.lock() {
            a.insert(
                attempt_id.to_string(),
                Tracked {
                    pgid,
                    usage: Usage::default(),
                    last: None,
                },
            );
        }
    }

    /// Stops tracking an attempt; returns what was measured.
    pub fn untrack(&self, attempt_id: &str) -> Usage {
        self.attempts
            .lock()
            .ok()
            .and_then(|mut a| a.remove(attempt_id))
            .map(|t| t.usage)
            .unwrap_or_default()
    }

    /// The latest host sample and, if the worker should take no new jobs, why.
    pub fn latest(&self) -> (pb::HostResources, String) {
        self.latest
            .lock()
            .map(|l| (l.host.clone(), l.paused_reason.clone()))
            .unwrap_or_default()
    }

    pub fn paused_reason(&self) -> String {
        self.latest().1
    }

    /// Samples forever; run on its own task.
    pub async fn run(self: Arc<Self>) {
        let (system, disks) = match (System::new(), Disks::new_with_refreshed_list()) {
            (Ok(s), Ok(d)) => (s, d),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot read host resources; reporting none");
                return;
            }
        };
        let sys = Arc::new(Mutex::new((system, disks)));
        loop {
            let me = self.clone();
            let sys = sys.clone();
            // sysinfo's refreshes block.
            let _ = tokio::task::spawn_blocking(move || {
                if let Ok(mut s) = sys.lock() {
                    let (system, disks) = &mut *s;
                    me.sample(system, disks);
                }
            })
            .await;
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }

    fn sample(&self, sys: &mut System, disks: &mut Disks) {
        sys.refresh_cpu_usage();
        sys.refresh_memory();
        disks.refresh(true);
        let (disk_free, disk_total) = disk_of(disks, &self.work_root);
        let groups = group_usage();
        let now = Instant::now();
        let mut jobs = Vec::new();
        if let Ok(mut attempts) = self.attempts.lock() {
            for (id, t) in attempts.iter_mut() {
                let (rss, ticks) = groups.get(&t.pgid).copied().unwrap_or((0, 0));
                let cpu_ms = ticks * 1000 / clock_ticks();
                t.usage.rss_bytes = rss;
                t.usage.peak_rss_bytes = t.usage.peak_rss_bytes.max(rss);
                t.usage.cpu_time_ms = t.usage.cpu_time_ms.max(cpu_ms);
                if let Some((at, prev)) = t.last {
                    let secs = now.duration_since(at).as_secs_f64();
                    if secs > 0.0 {
                        t.usage.cpu_percent = cpu_ms.saturating_sub(prev) as f64 / 10.0 / secs;
                    }
                }
                t.last = Some((now, cpu_ms));
                jobs.push(pb::JobResources {
                    attempt_id: id.clone(),
                    cpu_percent: t.usage.cpu_percent,
                    rss_bytes: rss,
                    peak_rss_bytes: t.usage.peak_rss_bytes,
                });
            }
        }
        let host = pb::HostResources {
            sampled_at: Some(now_ts()),
            cpu_percent: f64::from(sys.global_cpu_usage()),
            load1: System::load_average().map(|l| l.one).unwrap_or(0.0),
            memory_used_bytes: sys.used_memory(),
            memory_total_bytes: sys.total_memory(),
            swap_used_bytes: sys.used_swap(),
            swap_total_bytes: sys.total_swap(),
            disk_free_bytes: disk_free,
            disk_total_bytes: disk_total,
            running_jobs: jobs.len() as u32,
            jobs,
        };
        let reason = pause_reason(&self.limits, disk_free, sys.available_memory());
        if let Ok(mut l) = self.latest.lock() {
            if reason != l.paused_reason {
                if reason.is_empty() {
                    tracing::info!("resources back above thresholds: taking jobs again");
                } else {
                    tracing::warn!(%reason, "taking no new jobs");
                }
            }
            *l = Latest {
                host,
                paused_reason: reason,
            };
        }
    }
}

/// Why the worker should take no new jobs, or "" if it may.
pub fn pause_reason(limits: &Limits, disk_free: u64, memory_available: u64) -> String {
    if disk_free < limits.min_disk_free_bytes {
        return format!(
            "work directory disk has {} MiB free, below min_disk_free_bytes ({} MiB)",
            disk_free >> 20,
            limits.min_disk_free_bytes >> 20
        );
    }
    if memory_available < limits.min_memory_available_bytes {
        return format!(
            "{} MiB of memory available, below min_memory_available_bytes ({} MiB)",
            memory_available >> 20,
            limits.min_memory_available_bytes >> 20
        );
    }
    String::new()
}

fn now_ts() -> drover_proto::Timestamp {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    drover_proto::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Free and total bytes of the disk whose mount point holds `path` (longest match).
fn disk_of(disks: &Disks, path: &Path) -> (u64, u64) {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    disks
        .iter()
        .filter(|d| path.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map(|d| (d.available_space(), d.total_space()))
        .unwrap_or((0, 0))
}

fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .map(|t| t as u64)
        .unwrap_or(100)
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .filter(|p| *p > 0)
        .map(|p| p as u64)
        .unwrap_or(4096)
}

/// RSS bytes and CPU ticks (user + system) summed per process group, from /proc.
pub fn group_usage() -> HashMap<i32, (u64, u64)> {
    let page = page_size();
    let mut out: HashMap<i32, (u64, u64)> = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        // Fields after the command: state(3) ppid(4) pgrp(5) ... utime(14) stime(15) ... rss(24)
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let Some(pgrp) = f.get(2).and_then(|v| v.parse::<i32>().ok()) else {
            continue;
        };
        let entry = out.entry(pgrp).or_default();
        entry.0 += num(21) * page;
        entry.1 += num(11) + num(12);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_say_why() {
        let l = Limits {
            min_disk_free_bytes: 2 << 30,
            min_memory_available_bytes: 128 << 20,
        };
        assert_eq!(pause_reason(&l, 3 << 30, 1 << 30), "");
        assert!(pause_reason(&l, 1 << 30, 1 << 30).contains("min_disk_free_bytes"));
        assert!(pause_reason(&l, 3 << 30, 64 << 20).contains("min_memory_available_bytes"));
    }

    #[test]
    fn a_process_groups_memory_and_cpu_are_measured() {
        // Our own process group, after touching 30 MB and burning some CPU.
        let block = vec![1u8; 30_000_000];
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_add(i ^ (x >> 3));
        }
        let pgrp = nix::unistd::getpgrp().as_raw();
        let (rss, ticks) = group_usage().get(&pgrp).copied().unwrap_or((0, 0));
        assert!(rss >= 30_000_000, "measured {rss} bytes");
        assert!(ticks > 0, "no CPU time measured ({x})");
        assert_eq!(block.len(), 30_000_000);
    }

    #[tokio::test]
    async fn monitor_reports_host_and_tracked_attempts() {
        let d = tempfile::tempdir().unwrap();
        let m = Monitor::new(
            d.path().to_path_buf(),
            Limits {
                min_disk_free_bytes: u64::MAX,
                min_memory_available_bytes: 0,
            },
        );
        m.track("a1", std::process::id() as i32);
        let mut sys = System::new().unwrap();
        let mut disks = Disks::new_with_refreshed_list().unwrap();
        m.sample(&mut sys, &mut disks);
        let (host, reason) = m.latest();
        assert!(host.memory_total_bytes > 0);
        assert!(host.disk_total_bytes > 0);
        assert_eq!(host.jobs.len(), 1);
        assert!(reason.contains("min_disk_free_bytes"), "{reason}");
        assert_eq!(host.jobs[0].attempt_id, "a1");
        assert_eq!(m.untrack("a1").peak_rss_bytes, host.jobs[0].peak_rss_bytes);
        assert!(
            m.latest().0.jobs.len() == 1,
            "latest sample unchanged until the next one"
        );
    }
}
