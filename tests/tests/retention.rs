//! Retention with the real stack: finished jobs deleted per final state (and nothing else),
//! departed workers and old samples forgotten, log partitions created ahead, written on
//! demand, dropped whole, and read across; a database with logs from before partitioning
//! migrates and keeps them.

use drover_tests::v1 as pb;
use drover_tests::*;
use std::time::{Duration, Instant};

/// A job that waits for `flag` to exist before it prints `line`, then waits for `done`
/// (if given) before it exits.
fn gated(flag: &std::path::Path, line: &str, done: Option<&std::path::Path>) -> pb::JobSpec {
    let mut script = format!("while [ ! -f \"$FLAG\" ]; do sleep 0.05; done; echo {line}");
    if done.is_some() {
        script.push_str("; while [ ! -f \"$DONE\" ]; do sleep 0.05; done");
    }
    let mut s = sh(&script);
    s.env.insert("FLAG".into(), flag.display().to_string());
    if let Some(d) = done {
        s.env.insert("DONE".into(), d.display().to_string());
    }
    s
}

fn uuid(id: &str) -> anyhow::Result<uuid::Uuid> {
    Ok(id.parse()?)
}

async fn exists(api: &mut JobsClient, id: &str) -> anyhow::Result<bool> {
    match api.get_job(pb::GetJobRequest { id: id.into() }).await {
        Ok(_) => Ok(true),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
        Err(s) => Err(s.into()),
    }
}

/// Polls until `cond` holds, or fails after PATIENCE saying `what`.
async fn until<F, Fut>(what: &str, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let start = Instant::now();
    while !cond().await? {
        anyhow::ensure!(start.elapsed() < PATIENCE, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test]
async fn retention_deletes_exactly_the_old_finished_jobs() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let opts = CoordinatorOpts {
        config_toml: Some(
            "retention_interval = \"200ms\"\n[retention]\nsucceeded = \"1h\"\n\
             permanent_failed = \"2h\"\ncancelled = \"1h\"\nbatch_size = 2\n"
                .into(),
        ),
        ..Default::default()
    };
    let (_c, addr) = cl.coordinator("coord", &opts)?;
    let _w = cl.worker("w1", &addr, 4, &[])?;
    let mut api = jobs(&addr).await?;
    let db = cl.db.client().await?;
    let hold = cl.path("hold");
    let first = cl.path("first");

    // Old and finished: deleted (with a file it kept and its log).
    let mut s = sh("echo old; echo kept > out.txt");
    s.outputs = vec!["out.txt".into()];
    let old_ok = submit(&mut api, s).await?;
    let mut old_ok_more = Vec::new();
    for _ in 0..4 {
        old_ok_more.push(submit(&mut api, sh("echo more")).await?);
    }
    let mut s = sh("exit 3");
    s.retry.get_or_insert_with(Default::default).max_retries = Some(0);
    let old_failed = submit(&mut api, s.clone()).await?;
    // Failed within its (longer) horizon: kept.
    let young_failed = submit(&mut api, s).await?;
    let recent_ok = submit(&mut api, sh("echo recent")).await?;
    // Runs until the test ends: what depends on it stays pending.
    let running = submit(&mut api, gated(&hold, "running", None)).await?;
    let cancelled = submit(&mut api, gated(&hold, "never", None)).await?;
    // A retry chain whose newest job still runs keeps its old, failed ancestor.
    let mut s = sh("if [ -f \"$FIRST\" ]; then exec sleep 600; fi; touch \"$FIRST\"; exit 3");
    s.env.insert("FIRST".into(), first.display().to_string());
    s.retry.get_or_insert_with(Default::default).max_retries = Some(0);
    let chain_old = submit(&mut api, s).await?;
    for j in old_ok_more.iter().chain([&old_ok, &recent_ok]) {
        wait_state(&mut api, &j.id, pb::JobState::Succeeded).await?;
    }
    for j in [&old_failed, &young_failed, &chain_old] {
        wait_state(&mut api, &j.id, pb::JobState::PermanentFailed).await?;
    }
    let chain_new = api
        .retry_job(pb::RetryJobRequest {
            id: chain_old.id.clone(),
            set_params: Default::default(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .job
        .ok_or_else(|| anyhow::anyhow!("no job"))?;
    wait_state(&mut api, &chain_new.id, pb::JobState::Running).await?;
    wait_state(&mut api, &running.id, pb::JobState::Running).await?;
    wait_state(&mut api, &cancelled.id, pb::JobState::Running).await?;
    api.cancel_job(pb::CancelJobRequest {
        id: cancelled.id.clone(),
        ..Default::default()
    })
    .await?;
    wait_state(&mut api, &cancelled.id, pb::JobState::Cancelled).await?;
    // An old, succeeded job a pending job still depends on (with the running one) is kept.
    let dep_ok = submit(&mut api, sh("echo dep")).await?;
    wait_state(&mut api, &dep_ok.id, pb::JobState::Succeeded).await?;
    let mut s = sh("echo after");
    s.after = vec![dep_ok.id.clone(), running.id.clone()];
    let waiting = submit(&mut api, s).await?;
    assert!(artifact_files(&cl).len() == 1, "the kept file exists");

    // Age them. A pending job given an old finish time (which it cannot have) is still
    // not finished, so it is kept.
    let age = |ids: Vec<&str>, by: &'static str| {
        let ids: Vec<uuid::Uuid> = ids.iter().map(|i| i.parse().unwrap_or_default()).collect();
        let db = &db;
        async move {
            db.execute(
                &format!(
                    "UPDATE jobs SET finished_at = now() - interval '{by}' WHERE id = ANY($1)"
                ),
                &[&ids],
            )
            .await
        }
    };
    let mut old: Vec<&str> = old_ok_more.iter().map(|j| j.id.as_str()).collect();
    old.push(&old_ok.id);
    age(old.clone(), "90 minutes").await?;
    age(vec![&young_failed.id], "90 minutes").await?;
    age(vec![&old_failed.id, &chain_old.id], "3 hours").await?;
    age(vec![&cancelled.id, &dep_ok.id, &waiting.id], "5 hours").await?;
    old.extend([old_failed.id.as_str(), cancelled.id.as_str()]);

    for id in &old {
        until(&format!("job {id} deleted"), || {
            let mut api = api.clone();
            let id = id.to_string();
            async move { Ok(!exists(&mut api, &id).await?) }
        })
        .await?;
    }
    // A few more passes, then: exactly those are gone, with everything they had.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for j in [
        &young_failed,
        &recent_ok,
        &running,
        &chain_old,
        &chain_new,
        &dep_ok,
        &waiting,
    ] {
        assert!(exists(&mut api, &j.id).await?, "job {} was deleted", j.id);
    }
    let ids: Vec<uuid::Uuid> = old.iter().map(|i| uuid(i)).collect::<Result<_, _>>()?;
    for table in ["attempts", "artifacts"] {
        let n: i64 = db
            .query_one(
                &format!("SELECT count(*) FROM {table} WHERE job_id = ANY($1)"),
                &[&ids],
            )
            .await?
            .get(0);
        assert_eq!(n, 0, "{table} of deleted jobs left");
    }
    let n: i64 = db
        .query_one(
            "SELECT count(*) FROM log_chunks l WHERE NOT EXISTS \
               (SELECT 1 FROM attempts a WHERE a.id = l.attempt_id)",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(n, 0, "log chunks without an attempt");
    until("the deleted job's file removed", || async {
        Ok(artifact_files(&cl).is_empty())
    })
    .await?;
    let (j, _) = get(&mut api, &waiting.id).await?;
    assert_eq!(j.state, pb::JobState::Pending as i32);
    std::fs::write(&hold, b"go")?;
    Ok(())
}

fn artifact_files(cl: &Cluster) -> Vec<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push(p);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&cl.path("artifacts"), &mut out);
    out
}

#[tokio::test]
async fn departed_workers_and_old_samples_are_forgotten() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let db = cl.db.client().await?;
    let opts = CoordinatorOpts {
        config_toml: Some(
            "retention_interval = \"200ms\"\n[retention]\nworkers = \"1h\"\nsamples = \"2h\"\n"
                .into(),
        ),
        ..Default::default()
    };
    let (_c, addr) = cl.coordinator("coord", &opts)?;
    let _w = cl.worker("w1", &addr, 1, &[])?;
    let mut wapi = admin_api(&addr).await?;
    until("w1 registered", || {
        let mut wapi = wapi.clone();
        async move {
            let ws = wapi
                .list_workers(pb::ListWorkersRequest::default())
                .await?
                .into_inner()
                .workers;
            Ok(ws.iter().any(|w| w.id == "w1"))
        }
    })
    .await?;
    db.batch_execute(
        "INSERT INTO workers (id, hostname, slots, last_seen_at) VALUES \
           ('gone', 'h', 1, now() - interval '2 hours'), \
           ('recent', 'h', 1, now() - interval '30 minutes'); \
         INSERT INTO worker_samples (worker_id, at, resources) VALUES \
           ('gone', now() - interval '3 hours', ''), \
           ('w1', now() - interval '3 hours', ''), \
           ('w1', now() - interval '1 hour', '')",
    )
    .await?;
    until("the departed worker forgotten", || async {
        Ok(db
            .query_opt("SELECT 1 FROM workers WHERE id = 'gone'", &[])
            .await?
            .is_none())
    })
    .await?;
    until("old samples deleted", || async {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM worker_samples WHERE at < now() - interval '2 hours'",
                &[],
            )
            .await?
            .get(0);
        Ok(n == 0)
    })
    .await?;
    let ids: Vec<String> = db
        .query("SELECT id FROM workers ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, ["recent", "w1"]);
    let young: i64 = db
        .query_one(
            "SELECT count(*) FROM worker_samples WHERE worker_id = 'w1' \
               AND at BETWEEN now() - interval '90 minutes' AND now() - interval '30 minutes'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(young, 1, "a sample within the horizon was deleted");
    let listed = wapi
        .list_workers(pb::ListWorkersRequest::default())
        .await?
        .into_inner()
        .workers;
    assert!(listed.iter().any(|w| w.id == "w1"));
    Ok(())
}

/// Partitions of log_chunks: (name, lower bound as text).
async fn partitions(db: &tokio_postgres::Client) -> anyhow::Result<Vec<String>> {
    Ok(db
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
              WHERE i.inhparent = 'log_chunks'::regclass ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

#[tokio::test]
async fn log_partitions_are_made_ahead_dropped_whole_and_read_across() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let db = cl.db.client().await?;
    let opts = CoordinatorOpts {
        // Logs kept 7 days (the default), one partition a day.
        config_toml: Some("retention_interval = \"200ms\"\n".into()),
        ..Default::default()
    };
    let (_c, addr) = cl.coordinator("coord", &opts)?;
    let _w = cl.worker("w1", &addr, 4, &[])?;
    let mut api = jobs(&addr).await?;
    // Made ahead: today's and the next days'.
    let today = chrono::Utc::now()
        .format("log_chunks_p%Y%m%d_000000")
        .to_string();
    let made = partitions(&db).await?;
    assert!(made.contains(&today), "{made:?}");
    assert!(made.len() >= 4, "{made:?}");

    // Two attempts that started (as far as their logs know) ten days ago: one finishes,
    // one keeps running, so their partition is held back.
    let (go, done) = (cl.path("go"), cl.path("done"));
    let short = submit(&mut api, gated(&go, "short-lived", None)).await?;
    let long = submit(&mut api, gated(&go, "long-running", Some(&done))).await?;
    wait_state(&mut api, &short.id, pb::JobState::Running).await?;
    wait_state(&mut api, &long.id, pb::JobState::Running).await?;
    let ten_days_ago = chrono::Utc::now() - chrono::Duration::days(10);
    let old_name = format!("log_chunks_p{}", ten_days_ago.format("%Y%m%d_000000"));
    db.execute(
        "UPDATE attempts SET log_part = date_trunc('day', now() - interval '10 days', 'UTC') \
           + interval '1 hour' WHERE job_id = ANY($1)",
        &[&vec![uuid(&short.id)?, uuid(&long.id)?]],
    )
    .await?;
    std::fs::write(&go, b"go")?;
    wait_state(&mut api, &short.id, pb::JobState::Succeeded).await?;
    until("the long job's line stored", || {
        let mut api = api.clone();
        let id = long.id.clone();
        async move { Ok(logs(&mut api, &id, 0).await?.0 == b"long-running\n") }
    })
    .await?;
    // No partition existed that far back: the first write made it.
    assert!(partitions(&db).await?.contains(&old_name));
    assert_eq!(logs(&mut api, &short.id, 0).await?.0, b"short-lived\n");
    let in_old: i64 = db
        .query_one(&format!("SELECT count(*) FROM {old_name}"), &[])
        .await?
        .get(0);
    assert_eq!(in_old, 2);

    // The short one finished 9 days ago: past retention by more than a partition, while
    // its partition is held back by the long run, so its log goes row by row.
    db.execute(
        "UPDATE attempts SET finished_at = now() - interval '9 days' WHERE job_id = $1",
        &[&uuid(&short.id)?],
    )
    .await?;
    wait_for(&mut api, &short.id, "log purged", |_, a| {
        a.first().map(|a| a.logs_purged) == Some(true)
    })
    .await?;
    assert!(logs(&mut api, &short.id, 0).await?.0.is_empty());
    assert!(
        partitions(&db).await?.contains(&old_name),
        "dropped while held"
    );
    assert_eq!(logs(&mut api, &long.id, 0).await?.0, b"long-running\n");

    // A job whose attempts are in two partitions reads as one log.
    let (flag, mark) = (cl.path("flag2"), cl.path("mark"));
    let mut s = sh("if [ -f \"$MARK\" ]; then echo two; exit 0; fi; \
         while [ ! -f \"$FLAG\" ]; do sleep 0.05; done; touch \"$MARK\"; echo one; exit 3");
    s.env.insert("FLAG".into(), flag.display().to_string());
    s.env.insert("MARK".into(), mark.display().to_string());
    let across = submit(&mut api, s).await?;
    wait_state(&mut api, &across.id, pb::JobState::Running).await?;
    db.execute(
        "UPDATE attempts SET log_part = now() - interval '1 day' WHERE job_id = $1",
        &[&uuid(&across.id)?],
    )
    .await?;
    std::fs::write(&flag, b"go")?;
    let (_, attempts) = wait_state(&mut api, &across.id, pb::JobState::Succeeded).await?;
    assert_eq!(attempts.len(), 2);
    assert_eq!(logs(&mut api, &across.id, 0).await?.0, b"one\ntwo\n");
    let parts: i64 = db
        .query_one(
            "SELECT count(DISTINCT l.tableoid) FROM log_chunks l JOIN attempts a \
               ON a.id = l.attempt_id WHERE a.job_id = $1",
            &[&uuid(&across.id)?],
        )
        .await?
        .get(0);
    assert_eq!(parts, 2, "the two attempts' logs are in two partitions");

    // The long run ends, 8 days ago: every attempt in the old partition is past
    // retention, so the partition is dropped whole.
    std::fs::write(&done, b"done")?;
    wait_state(&mut api, &long.id, pb::JobState::Succeeded).await?;
    db.execute(
        "UPDATE attempts SET finished_at = now() - interval '8 days' WHERE job_id = $1",
        &[&uuid(&long.id)?],
    )
    .await?;
    until("the old partition dropped", || async {
        Ok(!partitions(&db).await?.contains(&old_name))
    })
    .await?;
    let (_, a) = get(&mut api, &long.id).await?;
    assert!(
        a[0].logs_purged,
        "an attempt of a dropped partition reads as purged"
    );
    assert!(logs(&mut api, &long.id, 0).await?.0.is_empty());

    // What is not old stays, and new writes land.
    assert_eq!(logs(&mut api, &across.id, 0).await?.0, b"one\ntwo\n");
    let fresh = submit(&mut api, sh("echo fresh")).await?;
    wait_state(&mut api, &fresh.id, pb::JobState::Succeeded).await?;
    assert_eq!(logs(&mut api, &fresh.id, 0).await?.0, b"fresh\n");
    assert!(partitions(&db).await?.contains(&today));
    Ok(())
}

#[tokio::test]
async fn logs_written_before_partitioning_survive_the_migration() -> anyhow::Result<()> {
    // A database as the release before partitioning left it, with a finished job's log.
    let admin = connect(&admin_url()).await?;
    let name = format!("drover_t_{}", uuid::Uuid::new_v4().simple());
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    let url = drover_pgserver::with_database(&admin_url(), &name);
    let result = async {
        drover_coordinator::db::migrate_to(&url, Some(18)).await?;
        let old = connect(&url).await?;
        old.batch_execute(
            "INSERT INTO jobs (id, queue, state, argv, retry_policy, attempt_count, finished_at) \
               VALUES ('00000000-0000-0000-0000-00000000000a', 'default', 'succeeded', \
                       '{echo}', '{}', 1, now()); \
             INSERT INTO attempts (id, job_id, number, worker_id, state, lease_expires_at, \
                                   finished_at, log_chunks, log_bytes, log_kept_bytes) \
               VALUES ('00000000-0000-0000-0000-0000000000a1', \
                       '00000000-0000-0000-0000-00000000000a', 1, 'w', 'succeeded', now(), \
                       now(), 2, 12, 12); \
             INSERT INTO log_chunks (attempt_id, seq, stream, time, data) VALUES \
               ('00000000-0000-0000-0000-0000000000a1', 0, 1, now(), 'before'), \
               ('00000000-0000-0000-0000-0000000000a1', 1, 1, now(), ' after')",
        )
        .await?;
        let cl = Cluster::new().await?;
        let opts = CoordinatorOpts {
            database_url: Some(url.clone()),
            config_toml: Some("retention_interval = \"200ms\"\n".into()),
            ..Default::default()
        };
        let (_c, addr) = cl.coordinator("coord", &opts)?;
        let mut api = jobs(&addr).await?;
        let id = "00000000-0000-0000-0000-00000000000a";
        assert_eq!(logs(&mut api, id, 0).await?.0, b"before after");
        let db = connect(&url).await?;
        assert!(partitions(&db)
            .await?
            .contains(&"log_chunks_legacy".to_string()));
        // Past retention, the old table is dropped like any partition.
        db.execute(
            "UPDATE attempts SET finished_at = now() - interval '8 days'",
            &[],
        )
        .await?;
        until("the legacy partition dropped", || async {
            Ok(!partitions(&db)
                .await?
                .contains(&"log_chunks_legacy".to_string()))
        })
        .await?;
        let (_, a) = get(&mut api, id).await?;
        assert!(a[0].logs_purged);
        anyhow::Ok(())
    }
    .await;
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await;
    result
}

#[tokio::test]
async fn bad_retention_settings_stop_the_coordinator_naming_the_key() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    /// Flags, environment, the key the error must name.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 6] = [
        (&["--retention-succeeded", "0d"], &[], "retention.succeeded"),
        (&["--retention-cancelled", "30"], &[], "retention.cancelled"),
        (
            &["--retention-log-partition", "10s"],
            &[],
            "retention.log_partition",
        ),
        (
            &["--retention-batch-size", "0"],
            &[],
            "retention.batch_size",
        ),
        (
            &[],
            &[("DROVER_RETENTION__WORKERS", "11y")],
            "retention.workers",
        ),
        (
            &[],
            &[("DROVER_RETENTION__SAMPLES", "24")],
            "retention.samples: 24: a duration needs a unit",
        ),
    ];
    for (args, env, key) in cases {
        let out = std::process::Command::new(bin("drover-coordinator"))
            .args(["--database-url", &cl.db.url, "--listen", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{args:?} {env:?}: {err}");
        assert!(err.contains(key), "{args:?} {env:?}: {err}");
    }
    // Good values on the command line are taken.
    let (c, _addr) = cl.coordinator(
        "coord",
        &CoordinatorOpts {
            env: vec![("DROVER_RETENTION__SAMPLES".into(), "3h".into())],
            ..Default::default()
        },
    )?;
    assert!(!c.log_text().contains("bad configuration"));
    Ok(())
}

#[tokio::test]
async fn a_schedules_old_runs_go_with_their_jobs_and_the_schedule_stays() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let db = cl.db.client().await?;
    let opts = CoordinatorOpts {
        config_toml: Some(
            "retention_interval = \"200ms\"\n[retention]\nsucceeded = \"1h\"\ncancelled = \"1h\"\n"
                .into(),
        ),
        ..Default::default()
    };
    let (_c, addr) = cl.coordinator("coord", &opts)?;
    let _w = cl.worker("w1", &addr, 2, &[])?;
    let mut sc = schedules(&addr).await?;
    sc.create_schedule(pb::CreateScheduleRequest {
        schedule: Some(pb::Schedule {
            name: "tick".into(),
            cron: "* * * * * *".into(),
            timezone: "UTC".into(),
            spec: Some(sh("true")),
            catch_up: "skip".into(),
            overlap: "allow".into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await?;
    until("two ticks fired and done", || async {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM schedule_runs r JOIN jobs j ON j.id = r.job_id \
                  WHERE r.schedule = 'tick' AND j.state = 'succeeded'",
                &[],
            )
            .await?
            .get(0);
        Ok(n >= 2)
    })
    .await?;
    sc.pause_schedule(pb::PauseScheduleRequest {
        name: "tick".into(),
    })
    .await?;
    // Let a tick that was firing while we paused finish.
    until("no unfinished run", || async {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM schedule_runs r JOIN jobs j ON j.id = r.job_id \
                  WHERE r.schedule = 'tick' AND j.state IN ('pending', 'running')",
                &[],
            )
            .await?
            .get(0);
        Ok(n == 0)
    })
    .await?;
    db.batch_execute(
        "UPDATE jobs SET finished_at = now() - interval '2 hours' \
          WHERE id IN (SELECT job_id FROM schedule_runs WHERE schedule = 'tick'); \
         INSERT INTO schedule_runs (schedule, fire_time, status, reason, created_at) VALUES \
           ('tick', now() - interval '3 hours', 'skipped', 'old', now() - interval '3 hours'), \
           ('tick', now() - interval '1 minute', 'skipped', 'recent', now() - interval '1 minute')",
    )
    .await?;
    until("the old runs deleted with their jobs", || async {
        let left: Vec<String> = db
            .query(
                "SELECT reason FROM schedule_runs WHERE schedule = 'tick' AND status <> 'held' \
                  ORDER BY fire_time",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        Ok(left == ["recent"])
    })
    .await?;
    let n: i64 = db.query_one("SELECT count(*) FROM jobs", &[]).await?.get(0);
    assert_eq!(n, 0, "the schedule's old jobs are deleted");
    let s = sc
        .get_schedule(pb::GetScheduleRequest {
            name: "tick".into(),
        })
        .await?
        .into_inner();
    assert_eq!(s.schedule.map(|s| s.name), Some("tick".to_string()));
    Ok(())
}

/// A keyed job: `script` under concurrency key `key`, limit 1.
fn keyed(key: &str, script: &str) -> pb::JobSpec {
    pb::JobSpec {
        concurrency_keys: vec![key.into()],
        concurrency_limit: 1,
        ..sh(script)
    }
}

async fn key_exists(db: &tokio_postgres::Client, key: &str) -> anyhow::Result<bool> {
    Ok(db
        .query_one(
            "SELECT count(*) FROM concurrency_keys WHERE key = $1",
            &[&key],
        )
        .await?
        .try_get::<_, i64>(0)?
        == 1)
}

#[tokio::test]
async fn idle_concurrency_keys_are_deleted_and_come_back_with_the_next_submit() -> anyhow::Result<()>
{
    let cl = Cluster::new().await?;
    let opts = CoordinatorOpts {
        config_toml: Some("retention_interval = \"200ms\"\n".into()),
        ..Default::default()
    };
    let (_c, addr) = cl.coordinator("coord", &opts)?;
    let _w = cl.worker("w1", &addr, 4, &[])?;
    let mut api = jobs(&addr).await?;
    let db = cl.db.client().await?;
    let hold = cl.path("hold");

    // "idle": its one job finished. "held": one job runs, one waits for the key.
    // "recent": finished, but used within the idle horizon.
    let idle = submit(&mut api, keyed("idle", "true")).await?;
    let recent = submit(&mut api, keyed("recent", "true")).await?;
    let holder = submit(
        &mut api,
        keyed(
            "held",
            &format!("while [ ! -f {} ]; do sleep 0.05; done", hold.display()),
        ),
    )
    .await?;
    let waiter = submit(&mut api, keyed("held", "true")).await?;
    for j in [&idle, &recent] {
        wait_state(&mut api, &j.id, pb::JobState::Succeeded).await?;
    }
    wait_state(&mut api, &holder.id, pb::JobState::Running).await?;
    // While the holder runs, nothing is deleted however old the rows look.
    db.execute(
        "UPDATE concurrency_keys SET updated_at = now() - interval '2 days' \
          WHERE key IN ('idle', 'held')",
        &[],
    )
    .await?;
    until("the idle key to be deleted", || async {
        Ok(!key_exists(&db, "idle").await?)
    })
    .await?;
    assert!(
        key_exists(&db, "held").await?,
        "a running job's key was deleted"
    );
    assert!(
        key_exists(&db, "recent").await?,
        "a recently used key was deleted"
    );

    // The holder finishes; the waiter takes the key, then it is idle too (backdated).
    std::fs::write(&hold, b"")?;
    wait_state(&mut api, &holder.id, pb::JobState::Succeeded).await?;
    wait_state(&mut api, &waiter.id, pb::JobState::Succeeded).await?;
    db.execute(
        "UPDATE concurrency_keys SET updated_at = now() - interval '2 days' WHERE key = 'held'",
        &[],
    )
    .await?;
    until("the released key to be deleted", || async {
        Ok(!key_exists(&db, "held").await?)
    })
    .await?;

    // A new job under the deleted key recreates it and runs, limit and all.
    let again = submit(&mut api, keyed("idle", "true")).await?;
    wait_state(&mut api, &again.id, pb::JobState::Succeeded).await?;
    let r = db
        .query_one(
            "SELECT max_running, running FROM concurrency_keys WHERE key = 'idle'",
            &[],
        )
        .await?;
    assert_eq!((r.try_get::<_, i32>(0)?, r.try_get::<_, i32>(1)?), (1, 0));
    Ok(())
}
