//! Schedules with real coordinators, workers and PostgreSQL: every tick fires exactly once
//! across coordinator crashes, catch-up policies after downtime, overlap policies, and the
//! operator's commands.

use chrono::{DateTime, Timelike, Utc};
use drover_tests::v1 as pb;
use drover_tests::*;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::Code;

fn every_second(name: &str, script: &str, catch_up: &str, overlap: &str) -> pb::Schedule {
    pb::Schedule {
        name: name.into(),
        cron: "* * * * * *".into(),
        timezone: "UTC".into(),
        spec: Some(sh(script)),
        catch_up: catch_up.into(),
        overlap: overlap.into(),
        ..Default::default()
    }
}

async fn create(c: &mut SchedulesClient, s: pb::Schedule) -> anyhow::Result<pb::Schedule> {
    Ok(c.create_schedule(pb::CreateScheduleRequest {
        schedule: Some(s),
        ..Default::default()
    })
    .await?
    .into_inner()
    .schedule
    .unwrap_or_default())
}

/// (fire_time, status, job_id, created_at) of every run, oldest tick first.
async fn runs(
    db: &tokio_postgres::Client,
    name: &str,
) -> anyhow::Result<Vec<(DateTime<Utc>, String, Option<uuid::Uuid>, DateTime<Utc>)>> {
    Ok(db
        .query(
            "SELECT fire_time, status, job_id, created_at FROM schedule_runs \
              WHERE schedule = $1 ORDER BY fire_time",
            &[&name],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}

async fn wait_until<F, Fut>(what: &str, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let start = Instant::now();
    loop {
        if f().await.unwrap_or(false) {
            return Ok(());
        }
        if start.elapsed() > PATIENCE {
            anyhow::bail!("gave up waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn fired_count(db: &tokio_postgres::Client, name: &str) -> anyhow::Result<i64> {
    Ok(db
        .query_one(
            "SELECT count(*) FROM schedule_runs WHERE schedule = $1 AND status = 'fired'",
            &[&name],
        )
        .await?
        .get(0))
}

async fn all_jobs_finished(db: &tokio_postgres::Client) -> anyhow::Result<bool> {
    let n: i64 = db
        .query_one(
            "SELECT count(*) FROM jobs WHERE state IN ('pending', 'running')",
            &[],
        )
        .await?
        .get(0);
    Ok(n == 0)
}

fn consecutive_seconds(ticks: &[DateTime<Utc>]) -> bool {
    ticks
        .windows(2)
        .all(|w| w[1] - w[0] == chrono::Duration::seconds(1))
}

#[tokio::test]
async fn one_second_schedule_fires_each_tick_once_while_coordinators_are_killed(
) -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let db = cl.db.client().await?;
    let o1 = CoordinatorOpts {
        port: free_port(),
        ..Default::default()
    };
    let o2 = CoordinatorOpts {
        port: free_port(),
        ..Default::default()
    };
    let (mut c1, a1) = cl.coordinator("c1", &o1)?;
    let (mut c2, a2) = cl.coordinator("c2", &o2)?;
    let _w1 = cl.worker("w1", &a1, 4, &[])?;
    let _w2 = cl.worker("w2", &a2, 4, &[])?;
    let out = cl.path("ticks.txt");
    let mut sc = schedules(&a2).await?;
    create(
        &mut sc,
        every_second(
            "tick",
            &format!("echo {{scheduled_at}} >> {}", out.display()),
            "all",
            "allow",
        ),
    )
    .await?;

    // Kill whichever coordinator leads (or not) twice, restarting each, while ticks fire.
    let mut seen = 0;
    for round in 0..2 {
        let want = seen + 3;
        wait_until("ticks before a kill", || async {
            Ok(fired_count(&db, "tick").await? >= want)
        })
        .await?;
        if round == 0 {
            c1.signal(nix::sys::signal::Signal::SIGKILL);
            c1.wait_exit(Duration::from_secs(10))?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            c1 = cl.coordinator("c1", &o1)?.0;
        } else {
            c2.signal(nix::sys::signal::Signal::SIGKILL);
            c2.wait_exit(Duration::from_secs(10))?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            c2 = cl.coordinator("c2", &o2)?.0;
        }
        seen = fired_count(&db, "tick").await?;
    }
    let want = seen + 3;
    wait_until("ticks after the restarts", || async {
        Ok(fired_count(&db, "tick").await? >= want)
    })
    .await?;
    sc = schedules(&a1).await?;
    sc.pause_schedule(pb::PauseScheduleRequest {
        name: "tick".into(),
    })
    .await?;
    wait_until("every fired job to finish", || all_jobs_finished(&db)).await?;

    let runs = runs(&db, "tick").await?;
    assert!(runs.iter().all(|r| r.1 == "fired"), "{runs:?}");
    let ticks: Vec<DateTime<Utc>> = runs.iter().map(|r| r.0).collect();
    assert!(
        consecutive_seconds(&ticks),
        "catch-up all: no tick may be missing: {ticks:?}"
    );
    // One job per tick, each with its own tick as scheduled_at.
    let jobs = db
        .query(
            "SELECT params->>'scheduled_at', state FROM jobs ORDER BY 1",
            &[],
        )
        .await?;
    assert_eq!(jobs.len(), ticks.len());
    let want_at: Vec<String> = ticks
        .iter()
        .map(|t| {
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                .replace('Z', "+00:00")
        })
        .collect();
    let got_at: Vec<String> = jobs.iter().map(|r| r.get::<_, String>(0)).collect();
    assert_eq!(got_at, want_at);
    // And from the jobs' own output: every tick ran, and a tick ran more than once only
    // when its job had more than one attempt (an attempt lost with a killed coordinator is
    // retried: execution is at-least-once, the tick -> job step is exactly-once).
    let text = std::fs::read_to_string(&out)?;
    let mut lines: BTreeMap<String, i64> = BTreeMap::new();
    for l in text.lines() {
        *lines.entry(l.to_string()).or_default() += 1;
    }
    assert_eq!(lines.keys().cloned().collect::<Vec<_>>(), want_at);
    let attempts: BTreeMap<String, i64> = db
        .query(
            "SELECT j.params->>'scheduled_at', count(a.id) FROM jobs j \
               JOIN attempts a ON a.job_id = j.id GROUP BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (tick, n) in &lines {
        assert!(
            *n <= attempts.get(tick).copied().unwrap_or(0),
            "tick {tick} ran {n} times with {:?} attempts",
            attempts.get(tick)
        );
    }
    drop((c1, c2));
    Ok(())
}

#[tokio::test]
async fn catch_up_policies_after_the_coordinator_was_down() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let db = cl.db.client().await?;
    let opts = CoordinatorOpts {
        port: free_port(),
        env: vec![
            ("DROVER_SCHEDULE_INTERVAL".into(), "200ms".into()),
            // Longer than any pass is late on a loaded machine, so only the outage
            // makes ticks missed.
            ("DROVER_SCHEDULE_MISFIRE_GRACE".into(), "3s".into()),
        ],
        ..Default::default()
    };
    let (mut coord, addr) = cl.coordinator("coord", &opts)?;
    let _w = cl.worker("w1", &addr, 8, &[])?;
    let mut sc = schedules(&addr).await?;
    for policy in ["skip", "once", "all"] {
        create(&mut sc, every_second(policy, "true", policy, "allow")).await?;
    }
    wait_until("ticks before the outage", || async {
        Ok(fired_count(&db, "skip").await? >= 3
            && fired_count(&db, "once").await? >= 3
            && fired_count(&db, "all").await? >= 3)
    })
    .await?;
    coord.kill();
    let down_since = Utc::now();
    tokio::time::sleep(Duration::from_secs(9)).await;
    let (_coord, addr) = cl.coordinator("coord", &opts)?;
    let mut sc = schedules(&addr).await?;
    wait_until("ticks after the outage", || async {
        let mut ok = true;
        for p in ["skip", "once", "all"] {
            let r = runs(&db, p).await?;
            ok &= r.iter().filter(|r| r.3 > down_since).count() >= 3;
        }
        Ok(ok)
    })
    .await?;
    for p in ["skip", "once", "all"] {
        sc.pause_schedule(pb::PauseScheduleRequest { name: p.into() })
            .await?;
    }
    let grace = chrono::Duration::milliseconds(3000);
    for p in ["skip", "once", "all"] {
        let r = runs(&db, p).await?;
        let ticks: Vec<DateTime<Utc>> = r.iter().map(|r| r.0).collect();
        let before: Vec<_> = ticks.iter().copied().filter(|t| *t < down_since).collect();
        // Ticks recorded late (older than the grace period when their run was created).
        let late: Vec<DateTime<Utc>> = r
            .iter()
            .filter(|r| r.0 < r.3 - grace)
            .map(|r| r.0)
            .collect();
        let after: Vec<_> = r
            .iter()
            .filter(|r| r.0 >= r.3 - grace && r.0 >= down_since)
            .map(|r| r.0)
            .collect();
        assert!(consecutive_seconds(&before), "{p}: {ticks:?}");
        assert!(consecutive_seconds(&after), "{p}: {ticks:?}");
        let dropped: i64 = db
            .query_one("SELECT dropped_ticks FROM schedules WHERE name = $1", &[&p])
            .await?
            .get(0);
        match p {
            "skip" => {
                assert!(late.is_empty(), "skip ran missed ticks {late:?}");
                assert!(dropped >= 4, "skip dropped {dropped}");
            }
            "once" => {
                assert_eq!(late.len(), 1, "once ran {late:?}");
                // The one it ran is the latest missed tick: right before the on-time ones.
                assert_eq!(
                    after[0] - late[0],
                    chrono::Duration::seconds(1),
                    "{ticks:?}"
                );
                assert!(dropped >= 3, "once dropped {dropped}");
            }
            _ => {
                assert!(late.len() >= 4, "all ran only {late:?}");
                assert!(consecutive_seconds(&ticks), "all left a gap: {ticks:?}");
                assert_eq!(dropped, 0);
            }
        }
        assert!(r.iter().all(|r| r.1 == "fired"));
    }
    Ok(())
}

#[tokio::test]
async fn overlap_skip_and_queue_never_run_two_at_once() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let db = cl.db.client().await?;
    let opts = CoordinatorOpts {
        env: vec![("DROVER_SCHEDULE_INTERVAL".into(), "200ms".into())],
        ..Default::default()
    };
    let (_coord, addr) = cl.coordinator("coord", &opts)?;
    let _w = cl.worker("w1", &addr, 8, &[])?;
    let mut sc = schedules(&addr).await?;
    for policy in ["skip", "queue"] {
        let file = cl.path(&format!("{policy}.txt"));
        let script = format!(
            "echo start $(date +%s%N) {{scheduled_at}} >> {f}; sleep 2.5; echo end $(date +%s%N) >> {f}",
            f = file.display()
        );
        create(&mut sc, every_second(policy, &script, "skip", policy)).await?;
    }
    wait_until("three runs of each", || async {
        Ok(fired_count(&db, "skip").await? >= 3 && fired_count(&db, "queue").await? >= 3)
    })
    .await?;
    for p in ["skip", "queue"] {
        sc.pause_schedule(pb::PauseScheduleRequest { name: p.into() })
            .await?;
    }
    wait_until("every job to finish", || all_jobs_finished(&db)).await?;
    for p in ["skip", "queue"] {
        // From the jobs' own timestamps: each start follows the previous end.
        let text = std::fs::read_to_string(cl.path(&format!("{p}.txt")))?;
        let mut running = 0;
        let mut starts = Vec::new();
        for l in text.lines() {
            let mut it = l.split_whitespace();
            match it.next() {
                Some("start") => {
                    running += 1;
                    starts.push(it.nth(1).unwrap_or_default().to_string());
                }
                Some("end") => running -= 1,
                _ => {}
            }
            assert!(running <= 1, "{p}: two runs at once:\n{text}");
        }
        let r = runs(&db, p).await?;
        if p == "skip" {
            let skipped: Vec<_> = r.iter().filter(|r| r.1 == "skipped").collect();
            assert!(!skipped.is_empty(), "no tick was skipped: {r:?}");
        } else {
            assert!(r.iter().all(|r| r.1 != "skipped"), "{r:?}");
            // A held tick fired later still carries its own fire time.
            let fired: Vec<String> = r
                .iter()
                .filter(|r| r.1 == "fired")
                .map(|r| {
                    r.0.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                        .replace('Z', "+00:00")
                })
                .collect();
            assert_eq!(starts, fired);
        }
    }
    Ok(())
}

fn droverctl(addr: &str, args: &[&str]) -> std::process::Output {
    Command::new(bin("droverctl"))
        .env("DROVER_TOKEN", ADMIN_TOKEN)
        .arg("--addr")
        .arg(addr)
        .args(args)
        .output()
        .expect("running droverctl")
}

#[tokio::test]
async fn operator_commands_and_bad_input() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_coord, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _w = cl.worker("w1", &addr, 2, &[])?;
    let out = droverctl(
        &addr,
        &[
            "schedule",
            "create",
            "daily",
            "--cron",
            "0 6 * * *",
            "--timezone",
            "Asia/Tokyo",
            "--",
            "echo",
            "--date",
            "{scheduled_date}",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let show = droverctl(&addr, &["schedule", "show", "daily", "-o", "json"]);
    assert!(show.status.success(), "{show:?}");
    let v: serde_json::Value = serde_json::from_slice(&show.stdout)?;
    let next = v["next_fire_times"].as_array().cloned().unwrap_or_default();
    assert_eq!(next.len(), 5);
    for t in &next {
        let t = DateTime::parse_from_rfc3339(t.as_str().unwrap_or_default())?;
        // 06:00 in Tokyo is 21:00 UTC the day before.
        assert_eq!(
            t.with_timezone(&Utc).format("%H:%M:%S").to_string(),
            "21:00:00"
        );
    }
    // Trigger: a job now, with scheduled_date filled from the fire time in Tokyo.
    let tokyo_date = || {
        (Utc::now() + chrono::Duration::hours(9))
            .format("%Y-%m-%d")
            .to_string()
    };
    let before = tokyo_date();
    let trig = droverctl(&addr, &["schedule", "trigger", "daily"]);
    assert!(trig.status.success(), "{trig:?}");
    let after = tokyo_date();
    let id = String::from_utf8(trig.stdout)?.trim().to_string();
    let mut api = jobs(&addr).await?;
    wait_state(&mut api, &id, pb::JobState::Succeeded).await?;
    let (stdout, _, _) = logs(&mut api, &id, 0).await?;
    let printed = String::from_utf8(stdout)?;
    assert!(
        printed.trim() == format!("--date {before}") || printed.trim() == format!("--date {after}"),
        "{printed:?}"
    );
    let show = droverctl(&addr, &["schedule", "show", "daily"]);
    let text = String::from_utf8(show.stdout)?;
    assert!(text.contains("(manual)") && text.contains(&id), "{text}");
    // Pause hides the next fire times; resume brings them back.
    assert!(droverctl(&addr, &["schedule", "pause", "daily"])
        .status
        .success());
    let mut sc = schedules(&addr).await?;
    let g = sc
        .get_schedule(pb::GetScheduleRequest {
            name: "daily".into(),
        })
        .await?
        .into_inner();
    assert!(g.schedule.unwrap_or_default().paused && g.next_fire_times.is_empty());
    assert!(droverctl(&addr, &["schedule", "resume", "daily"])
        .status
        .success());
    let list = droverctl(&addr, &["schedule", "list"]);
    assert!(String::from_utf8(list.stdout)?.contains("active"));

    // Refusals name the field; nothing is stored.
    let base = || pb::Schedule {
        name: "bad".into(),
        cron: "* * * * *".into(),
        spec: Some(sh("true")),
        ..Default::default()
    };
    let cases: Vec<(pb::Schedule, &str)> = vec![
        (
            pb::Schedule {
                name: "has space".into(),
                ..base()
            },
            "schedule.name",
        ),
        (
            pb::Schedule {
                name: "x".repeat(65),
                ..base()
            },
            "schedule.name",
        ),
        (
            pb::Schedule {
                cron: "* * *".into(),
                ..base()
            },
            "schedule.cron",
        ),
        (
            pb::Schedule {
                cron: format!("{} * * * *", "1,".repeat(200)),
                ..base()
            },
            "schedule.cron",
        ),
        (
            pb::Schedule {
                timezone: "Mars/Base".into(),
                ..base()
            },
            "schedule.timezone",
        ),
        (
            pb::Schedule {
                catch_up: "sometimes".into(),
                ..base()
            },
            "schedule.catch_up",
        ),
        (
            pb::Schedule {
                overlap: "maybe".into(),
                ..base()
            },
            "schedule.overlap",
        ),
        (
            pb::Schedule {
                spec: None,
                ..base()
            },
            "schedule.spec",
        ),
        (
            pb::Schedule {
                spec: Some(spec(&["echo", &"a".repeat(200 * 1024)])),
                ..base()
            },
            "schedule.spec.argv",
        ),
        (
            pb::Schedule {
                spec: Some(spec(&["echo", "{nope}"])),
                ..base()
            },
            "schedule.spec.argv[1]",
        ),
        (
            pb::Schedule {
                spec: Some(pb::JobSpec {
                    priority: 5000,
                    ..sh("true")
                }),
                ..base()
            },
            "schedule.spec.priority",
        ),
        (
            pb::Schedule {
                spec: Some(pb::JobSpec {
                    concurrency_keys: vec!["has space".into()],
                    ..sh("true")
                }),
                ..base()
            },
            "schedule.spec.concurrency_keys",
        ),
        (
            pb::Schedule {
                spec: Some(pb::JobSpec {
                    after: vec![uuid::Uuid::nil().to_string()],
                    ..sh("true")
                }),
                ..base()
            },
            "schedule.spec.after",
        ),
    ];
    for (s, field) in cases {
        let e = sc
            .create_schedule(pb::CreateScheduleRequest {
                schedule: Some(s),
                ..Default::default()
            })
            .await
            .expect_err(field);
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
        assert!(e.message().starts_with(field), "{field}: {}", e.message());
    }
    let dup = droverctl(
        &addr,
        &[
            "schedule",
            "create",
            "daily",
            "--cron",
            "0 6 * * *",
            "--",
            "true",
        ],
    );
    assert!(!dup.status.success());
    let bad = droverctl(
        &addr,
        &["schedule", "create", "x", "--cron", "0 6 * *", "--", "true"],
    );
    assert!(!bad.status.success());
    let err = String::from_utf8(bad.stderr)?;
    assert!(
        err.contains("schedule.cron") && err.lines().count() == 1,
        "{err}"
    );
    let list = sc
        .list_schedules(pb::ListSchedulesRequest {
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(list.schedules.len(), 1);
    assert!(droverctl(&addr, &["schedule", "delete", "daily"])
        .status
        .success());
    let e = sc
        .get_schedule(pb::GetScheduleRequest {
            name: "daily".into(),
        })
        .await
        .expect_err("deleted");
    assert_eq!(e.code(), Code::NotFound);
    // The triggered job is kept.
    get(&mut api, &id).await?;
    Ok(())
}

/// Exactly-once does not rest on the leader lock: many scheduling passes racing on one
/// schedule (as several coordinators that all believe they lead would) still create one
/// job per tick, with no tick lost.
#[tokio::test]
async fn racing_scheduler_passes_create_one_job_per_tick() -> anyhow::Result<()> {
    use drover_coordinator::{db, scheduler, store::Store};
    let tdb = TestDb::new().await?;
    db::migrate(&tdb.url).await?;
    let store = Store::new(db::pool(&tdb.url, 16)?);
    let cfg = drover_coordinator::Config::default();
    let mut s = drover_coordinator::schedules_api::schedule_from_pb(
        Some(every_second("race", "true", "all", "allow")),
        &cfg,
        Utc::now(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Start 20 ticks in the past so the first passes also race on catch-up.
    s.next_fire_at = Some(
        (Utc::now() - chrono::Duration::seconds(20))
            .with_nanosecond(0)
            .unwrap_or_else(Utc::now),
    );
    store.create_schedule(&s).await?;
    let grace = chrono::Duration::seconds(60);
    let stop = Instant::now() + Duration::from_secs(4);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            while Instant::now() < stop {
                n += scheduler::pass(&store, grace).await.unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(7)).await;
            }
            n
        }));
    }
    let mut fired = 0;
    for t in tasks {
        fired += t.await?;
    }
    let c = tdb.client().await?;
    let r = runs(&c, "race").await?;
    let ticks: Vec<DateTime<Utc>> = r.iter().map(|r| r.0).collect();
    assert!(ticks.len() >= 22, "{ticks:?}");
    assert!(consecutive_seconds(&ticks), "{ticks:?}");
    let jobs: i64 = c.query_one("SELECT count(*) FROM jobs", &[]).await?.get(0);
    let distinct: i64 = c
        .query_one(
            "SELECT count(DISTINCT params->>'scheduled_at') FROM jobs",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(jobs as usize, ticks.len());
    assert_eq!(distinct, jobs);
    assert_eq!(fired, ticks.len(), "passes reported {fired} jobs");
    Ok(())
}

/// A scheduled job is limited exactly as a submitted one: its concurrency key holds (from
/// the jobs' own clocks), and its priority, resource limits and secret references reach
/// the job it fires.
#[tokio::test]
async fn scheduled_jobs_carry_keys_priority_limits_and_secrets() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let db = cl.db.client().await?;
    let (_coord, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _w = cl.worker_with_env("w1", &addr, 4, &[], &[("DROVER_SECRET_TEST", "s3cret")])?;
    let file = cl.path("spans.txt");
    let script = format!(
        "echo start $(date +%s%N) >> {f}; sleep 0.5; echo end $(date +%s%N) >> {f}",
        f = file.display()
    );
    let out = droverctl(
        &addr,
        &[
            "schedule",
            "create",
            "polite",
            "--cron",
            "0 6 * * *",
            "--concurrency-key",
            "site:example",
            "--concurrency-limit",
            "1",
            "--priority",
            "7",
            "--memory",
            "512M",
            "--pids",
            "64",
            "--secret-env",
            "API_KEY=env:DROVER_SECRET_TEST",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    assert!(out.status.success(), "{out:?}");
    // GetSchedule shows what was stored.
    let mut sc = schedules(&addr).await?;
    let s = sc
        .get_schedule(pb::GetScheduleRequest {
            name: "polite".into(),
        })
        .await?
        .into_inner()
        .schedule
        .unwrap_or_default();
    let spec = s.spec.unwrap_or_default();
    assert_eq!(spec.concurrency_keys, vec!["site:example".to_string()]);
    assert_eq!(
        (spec.concurrency_limit, spec.priority, spec.pids_limit),
        (1, 7, 64)
    );
    assert_eq!(spec.memory_limit_bytes, 512 << 20);
    assert_eq!(
        spec.secret_env.get("API_KEY").map(String::as_str),
        Some("env:DROVER_SECRET_TEST")
    );
    // Three runs at once, key limit 1: they run one after another.
    let mut ids = Vec::new();
    for _ in 0..3 {
        let job = sc
            .trigger_schedule(pb::TriggerScheduleRequest {
                name: "polite".into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .job
            .unwrap_or_default();
        ids.push(uuid::Uuid::parse_str(&job.id)?);
        // Fire times are per microsecond; make sure the next trigger gets its own.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    wait_until("every job to finish", || all_jobs_finished(&db)).await?;
    let mut states = Vec::new();
    for r in db
        .query("SELECT state, reason FROM jobs ORDER BY created_at", &[])
        .await?
    {
        states.push((r.get::<_, String>(0), r.get::<_, String>(1)));
    }
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        states.iter().all(|(s, _)| s == "succeeded"),
        "{states:?}\n{text}"
    );
    let mut running = 0;
    for l in text.lines() {
        match l.split_whitespace().next() {
            Some("start") => running += 1,
            Some("end") => running -= 1,
            _ => {}
        }
        assert!(
            running <= 1,
            "two runs of key site:example at once:\n{text}"
        );
    }
    assert_eq!(text.lines().count(), 6, "{text}");
    for id in &ids {
        let r = db
            .query_one(
                "SELECT state, concurrency_keys, priority, limits::text, secret_env::text \
                   FROM jobs WHERE id = $1",
                &[id],
            )
            .await?;
        let state: String = r.get(0);
        let keys: Vec<String> = r.get(1);
        let priority: i32 = r.get(2);
        let limits: String = r.get(3);
        let secrets: String = r.get(4);
        assert_eq!(state, "succeeded", "{id}");
        assert_eq!(keys, vec!["site:example".to_string()]);
        assert_eq!(priority, 7);
        assert!(
            limits.contains("536870912") && limits.contains("64"),
            "{limits}"
        );
        assert!(secrets.contains("env:DROVER_SECRET_TEST"), "{secrets}");
    }
    Ok(())
}
