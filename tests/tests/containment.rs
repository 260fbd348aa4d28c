//! Containment and resource limits: nothing a job starts outlives its attempt (a cgroup per
//! attempt where the worker can create one, a child subreaper where not), memory/pids/CPU
//! limits are applied through the cgroup, and a worker that cannot enforce a limit refuses
//! the job instead of ignoring it.
//!
//! These tests need root and a cgroup2 mount (this project's machines: the hybrid layout).

use drover_tests::v1 as pb;
use drover_tests::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The cgroup2 mount point, from mountinfo.
fn cgroup2_mount() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if !right.starts_with("cgroup2 ") {
            return None;
        }
        left.split(' ').nth(4).map(PathBuf::from)
    })
}

/// Reads a pid a job wrote to a file (the job writes it before it can end).
async fn read_pid(path: &Path) -> anyhow::Result<i32> {
    let start = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if let Ok(pid) = s.trim().parse() {
                return Ok(pid);
            }
        }
        anyhow::ensure!(start.elapsed() < PATIENCE, "no pid in {}", path.display());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn worker_containment(addr: &str, id: &str) -> anyhow::Result<String> {
    let mut admin = admin_api(addr).await?;
    let start = Instant::now();
    loop {
        let ws = admin
            .list_workers(pb::ListWorkersRequest {
                ..Default::default()
            })
            .await?
            .into_inner()
            .workers;
        if let Some(w) = ws.iter().find(|w| w.id == id) {
            return Ok(w.containment.clone());
        }
        anyhow::ensure!(start.elapsed() < PATIENCE, "worker {id} never registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A job that starts a `setsid` daemon and a double-forked process (both write their pid
/// to a file and sleep), then ends as `ending` says.
fn escaping_job(dir: &Path, tag: &str, ending: &str, queue: &str) -> pb::JobSpec {
    let d = dir.display();
    let script = format!(
        "setsid sh -c 'echo $$ > {d}/{tag}.daemon; exec sleep 1000' </dev/null >/dev/null 2>&1 & \
         (sh -c 'echo $$ > {d}/{tag}.double; exec sleep 1000' </dev/null >/dev/null 2>&1 &) ; \
         while [ ! -s {d}/{tag}.daemon ] || [ ! -s {d}/{tag}.double ]; do sleep 0.02; done; \
         {ending}"
    );
    let mut s = sh(&script);
    s.queue = queue.into();
    s.retry = Some(pb::RetryPolicy {
        max_retries: Some(0),
        ..Default::default()
    });
    s
}

#[tokio::test]
async fn daemons_and_double_forks_never_outlive_their_attempt() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _cg = cl.worker("w-cgroup", &addr, 4, &["--queue", "cg"])?;
    let _sr = cl.worker_with_env(
        "w-subreaper",
        &addr,
        4,
        &["--queue", "sr"],
        &[("DROVER_WORKER_CONTAINMENT", "subreaper")],
    )?;
    let shown = worker_containment(&addr, "w-cgroup").await?;
    assert!(shown.starts_with("cgroup v2 kill"), "{shown}");
    let shown = worker_containment(&addr, "w-subreaper").await?;
    assert!(shown.starts_with("subreaper"), "{shown}");
    // And the operator sees it.
    let out = std::process::Command::new(bin("droverctl"))
        .env("DROVER_TOKEN", ADMIN_TOKEN)
        .env("DROVER_ADDR", &addr)
        .arg("workers")
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("containment: cgroup v2 kill"), "{text}");
    assert!(text.contains("containment: subreaper; no limits"), "{text}");

    let mut api = jobs(&addr).await?;
    let dir = cl.path("pids-out");
    std::fs::create_dir_all(&dir)?;
    for queue in ["cg", "sr"] {
        let endings = [
            ("ok", "exit 0", pb::JobState::Succeeded),
            ("fail", "exit 3", pb::JobState::PermanentFailed),
            ("timeout", "sleep 1000", pb::JobState::PermanentFailed),
            ("cancel", "sleep 1000", pb::JobState::Cancelled),
        ];
        for (tag, ending, want) in endings {
            let tag = format!("{queue}-{tag}");
            let mut s = escaping_job(&dir, &tag, ending, queue);
            if tag.ends_with("timeout") {
                s.timeout = ms(5000);
            }
            let job = submit(&mut api, s).await?;
            let daemon = read_pid(&dir.join(format!("{tag}.daemon"))).await?;
            let double = read_pid(&dir.join(format!("{tag}.double"))).await?;
            if ending == "sleep 1000" {
                // Still running: the escaped processes are alive until the attempt ends.
                assert!(process_alive(daemon) && process_alive(double));
            }
            if tag.ends_with("cancel") {
                api.cancel_job(pb::CancelJobRequest {
                    id: job.id.clone(),
                    ..Default::default()
                })
                .await?;
            }
            let (j, a) = wait_state(&mut api, &job.id, want).await?;
            assert!(
                wait_dead(daemon).await,
                "{tag}: setsid daemon {daemon} survived ({j:?} {a:?})"
            );
            assert!(
                wait_dead(double).await,
                "{tag}: double-forked {double} survived"
            );
        }
    }

    // Every attempt's own cgroup was removed after it ended; the slots' cgroups, kept for
    // their next attempts, are empty.
    if let Some(m) = cgroup2_mount() {
        let dir = m.join(drover_worker::containment::worker_cgroup_name(
            "w-cgroup",
            &cl.path("w-cgroup-state"),
        ));
        let start = Instant::now();
        loop {
            let left: Vec<_> = std::fs::read_dir(&dir)?
                .flatten()
                .filter(|e| e.path().is_dir())
                .filter(|e| {
                    let kept = e.file_name().to_string_lossy().starts_with("slot-");
                    let events = std::fs::read_to_string(e.path().join("cgroup.events"));
                    !kept || !events.is_ok_and(|t| t.contains("populated 0"))
                })
                .map(|e| e.file_name())
                .collect();
            if left.is_empty() {
                break;
            }
            anyhow::ensure!(start.elapsed() < PATIENCE, "cgroups left behind: {left:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_job_over_its_memory_limit_ends_out_of_memory() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _w = cl.worker("w", &addr, 2, &[])?;
    let mut api = jobs(&addr).await?;

    // 400 MiB under a 100 MiB limit: the kernel kills it.
    let mut s = spec(&["python3", "-c", "b = bytearray(400 << 20); print(len(b))"]);
    s.memory_limit_bytes = 100 << 20;
    let job = submit(&mut api, s).await?;
    let (j, a) = wait_state(&mut api, &job.id, pb::JobState::PermanentFailed).await?;
    assert_eq!(a.len(), 1, "not retried by default: {a:?}");
    assert!(
        a[0].reason.contains("out of memory (limit 100M)"),
        "attempt reason: {:?}",
        a[0].reason
    );
    assert!(
        j.reason.contains("out of memory (limit 100M)"),
        "{}",
        j.reason
    );
    assert_eq!(a[0].state, pb::AttemptState::FailedPermanent as i32);
    // Peak memory from the cgroup's accounting: near the limit, not zero.
    assert!(
        a[0].peak_rss_bytes > 50 << 20,
        "peak {}",
        a[0].peak_rss_bytes
    );
    assert!(
        a[0].peak_rss_bytes <= 101 << 20,
        "peak {}",
        a[0].peak_rss_bytes
    );

    // With retry_out_of_memory the same failure is retried per the policy.
    let mut s = spec(&["python3", "-c", "bytearray(400 << 20)"]);
    s.memory_limit_bytes = 100 << 20;
    s.retry = Some(pb::RetryPolicy {
        max_retries: Some(1),
        initial_backoff: ms(50),
        retry_out_of_memory: Some(true),
        ..Default::default()
    });
    let job = submit(&mut api, s).await?;
    let (_, a) = wait_state(&mut api, &job.id, pb::JobState::PermanentFailed).await?;
    assert_eq!(a.len(), 2, "{a:?}");
    assert!(a
        .iter()
        .all(|a| a.reason.contains("out of memory (limit 100M)")));

    // Under the limit the same program succeeds, and its memory is accounted.
    let mut s = spec(&["python3", "-c", "b = bytearray(30 << 20)"]);
    s.memory_limit_bytes = 100 << 20;
    let job = submit(&mut api, s).await?;
    let (_, a) = wait_state(&mut api, &job.id, pb::JobState::Succeeded).await?;
    assert!(
        a[0].peak_rss_bytes > 25 << 20,
        "peak {}",
        a[0].peak_rss_bytes
    );
    // CPU time from the cgroup's accounting (python's start alone takes some).
    assert!(ms_of(&a[0].cpu_time) > 0, "cpu {:?}", a[0].cpu_time);
    Ok(())
}

#[tokio::test]
async fn pids_and_cpu_limits_apply_to_the_attempt() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _w = cl.worker("w", &addr, 2, &[])?;
    let shown = worker_containment(&addr, "w").await?;
    let mut api = jobs(&addr).await?;

    // 40 background processes under a limit of 10: forks fail.
    let mut s = sh("for i in $(seq 40); do sleep 5 & done; wait");
    s.pids_limit = 10;
    s.retry = Some(pb::RetryPolicy {
        max_retries: Some(0),
        ..Default::default()
    });
    let job = submit(&mut api, s).await?;
    wait_state(&mut api, &job.id, pb::JobState::PermanentFailed).await?;
    let (_, err, _) = logs(&mut api, &job.id, 0).await?;
    assert!(
        String::from_utf8_lossy(&err).contains("fork"),
        "{}",
        String::from_utf8_lossy(&err)
    );

    // The CPU quota is set on the attempt's own cgroup (0.5 CPU = 50 ms per 100 ms).
    let script = if shown.contains("cpu (v1)") {
        // /sys/fs/cgroup/cpu is the mount (or a link to cpu,cpuacct) on common layouts.
        "p=$(grep -E '^[0-9]+:([^:]*,)?cpu(,[^:]*)?:' /proc/self/cgroup | cut -d: -f3); \
         cat /sys/fs/cgroup/cpu$p/cpu.cfs_quota_us"
    } else {
        "cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/cpu.max"
    };
    let mut s = sh(script);
    s.cpu_millis = 500;
    let job = submit(&mut api, s).await?;
    wait_state(&mut api, &job.id, pb::JobState::Succeeded).await?;
    let (out, _, _) = logs(&mut api, &job.id, 0).await?;
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.trim() == "50000" || out.trim() == "50000 100000",
        "quota: {out:?} ({shown})"
    );
    Ok(())
}

#[tokio::test]
async fn a_worker_without_cgroups_refuses_jobs_with_limits() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _w = cl.worker_with_env(
        "w",
        &addr,
        1,
        &[],
        &[("DROVER_WORKER_CONTAINMENT", "subreaper")],
    )?;
    let mut api = jobs(&addr).await?;
    let marker = cl.path("ran");
    let mut s = sh(&format!("touch {}", marker.display()));
    s.memory_limit_bytes = 1 << 30;
    let job = submit(&mut api, s).await?;
    let (j, a) = wait_state(&mut api, &job.id, pb::JobState::PermanentFailed).await?;
    assert_eq!(a.len(), 1, "refused permanently, not retried");
    assert!(
        j.reason.contains("cannot enforce the memory limit") && j.reason.contains("subreaper"),
        "{}",
        j.reason
    );
    assert!(!marker.exists(), "the job must not have run");
    // A job without limits runs.
    let job = submit(&mut api, sh("true")).await?;
    wait_state(&mut api, &job.id, pb::JobState::Succeeded).await?;
    Ok(())
}

/// The cgroup v2 path (`0::<path>`) a job printed from /proc/self/cgroup, and the rest of
/// its output.
fn printed_cgroup(out: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(out);
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_default()
        .to_string();
    (path, text.into_owned())
}

#[tokio::test]
async fn a_slot_cgroup_is_reused_empty_and_counts_only_its_attempts_cpu() -> anyhow::Result<()> {
    let Some(m) = cgroup2_mount() else {
        anyhow::bail!("no cgroup2 mount on this machine");
    };
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _w = cl.worker("w", &addr, 1, &[])?;
    let mut api = jobs(&addr).await?;
    let dir = tempfile::tempdir()?;
    let d = dir.path().display();

    // The first job burns CPU and leaves a daemon behind.
    let first = submit(
        &mut api,
        sh(&format!(
            "cat /proc/self/cgroup; \
             setsid sh -c 'echo $$ > {d}/daemon; exec sleep 1000' </dev/null >/dev/null 2>&1 & \
             i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; \
             while [ ! -s {d}/daemon ]; do sleep 0.02; done"
        )),
    )
    .await?;
    let (_, a1) = wait_state(&mut api, &first.id, pb::JobState::Succeeded).await?;
    let daemon = read_pid(&dir.path().join("daemon")).await?;
    // The second runs in the same slot and lists the processes in its cgroup.
    let second = submit(
        &mut api,
        sh(&format!(
            "cat /proc/self/cgroup; echo pids; cat {}$(sed -n 's/^0:://p' /proc/self/cgroup)/cgroup.procs",
            m.display()
        )),
    )
    .await?;
    let (_, a2) = wait_state(&mut api, &second.id, pb::JobState::Succeeded).await?;

    let (cg1, _) = printed_cgroup(&logs(&mut api, &first.id, 0).await?.0);
    let (cg2, out2) = printed_cgroup(&logs(&mut api, &second.id, 0).await?.0);
    // This project's machines account memory in v1, so the slot's cgroup is reused.
    assert!(cg1.ends_with("/slot-0"), "{cg1}");
    assert_eq!(cg1, cg2);
    let pids: Vec<i32> = out2
        .split_once("pids\n")
        .map(|(_, p)| p.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default();
    assert!(!pids.is_empty(), "{out2}");
    assert!(
        !pids.contains(&daemon),
        "the first job's daemon {daemon} in {pids:?}"
    );
    assert!(!process_alive(daemon));
    // CPU time is each attempt's own: the busy loop's is not counted again.
    let (cpu1, cpu2) = (ms_of(&a1[0].cpu_time), ms_of(&a2[0].cpu_time));
    assert!(cpu1 >= 50, "first job's cpu {cpu1} ms");
    assert!(
        cpu2 < cpu1 / 2,
        "second job's cpu {cpu2} ms, first's {cpu1} ms"
    );
    Ok(())
}

#[tokio::test]
async fn a_restarted_worker_kills_and_removes_leftover_cgroups() -> anyhow::Result<()> {
    let Some(m) = cgroup2_mount() else {
        anyhow::bail!("no cgroup2 mount on this machine");
    };
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    // What a crashed worker named "w-crash" would have left: an attempt cgroup with a
    // process in it.
    let stale = m
        .join(drover_worker::containment::worker_cgroup_name(
            "w-crash",
            &cl.path("w-crash-state"),
        ))
        .join("drover-stale-attempt");
    std::fs::create_dir_all(&stale)?;
    let mut sleeper = std::process::Command::new("sleep").arg("1000").spawn()?;
    let pid = sleeper.id() as i32;
    std::fs::write(stale.join("cgroup.procs"), pid.to_string())?;
    let _w = cl.worker("w-crash", &addr, 1, &[])?;
    worker_containment(&addr, "w-crash").await?;
    // Our own child: reap it, then check it was killed (not exited by itself).
    let status = tokio::task::spawn_blocking(move || sleeper.wait()).await??;
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert!(!stale.exists(), "leftover cgroup removed");
    Ok(())
}

#[tokio::test]
async fn droverctl_submits_limits_and_refuses_bad_ones() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let ctl = |args: &[&str]| {
        std::process::Command::new(bin("droverctl"))
            .env("DROVER_TOKEN", ADMIN_TOKEN)
            .env("DROVER_ADDR", &addr)
            .args(args)
            .output()
    };
    let out = ctl(&[
        "submit", "--memory", "100M", "--cpus", "0.5", "--pids", "64", "--", "true",
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = ctl(&["-o", "json", "show", &id])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["memory_limit_bytes"], 100u64 << 20);
    assert_eq!(v["cpu_millis"], 500);
    assert_eq!(v["pids_limit"], 64);
    let out = ctl(&["show", &id])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("memory 100M, cpus 0.5, pids 64"), "{text}");
    for (args, needle) in [
        (vec!["submit", "--memory", "4X", "--", "true"], "--memory"),
        (vec!["submit", "--cpus", "two", "--", "true"], "--cpus"),
        (
            vec!["submit", "--memory", "1K", "--", "true"],
            "memory_limit_bytes",
        ),
    ] {
        let out = ctl(&args)?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    Ok(())
}
