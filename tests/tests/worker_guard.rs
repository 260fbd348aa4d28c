//! Worker-side defence with real workers and real child processes: the program
//! allowlist, the switch that forbids shells, the minimal job environment, run_as, and
//! secrets that are read on the worker and masked in the stored log.

use drover_tests::v1 as pb;
use drover_tests::*;
use std::process::Command;

/// Starts a worker with a TOML config file (and `env`), taking jobs from `queue`.
fn worker_with_config(
    cl: &Cluster,
    name: &str,
    addr: &str,
    queue: &str,
    toml: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<Proc> {
    let path = cl.path(&format!("{name}.toml"));
    std::fs::write(&path, toml)?;
    let path = path.display().to_string();
    cl.worker_with_env(name, addr, 2, &["--config", &path, "--queue", queue], env)
}

fn on(queue: &str, mut s: pb::JobSpec) -> pb::JobSpec {
    s.queue = queue.into();
    s
}

#[tokio::test]
async fn allowlist_and_forbidden_shells_fail_jobs_permanently_with_the_reason() -> anyhow::Result<()>
{
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _listed = worker_with_config(
        &cl,
        "listed",
        &addr,
        "listed",
        "allowed_programs = [\"/usr/bin/echo\", \"/bin/echo\"]\n",
        &[],
    )?;
    let _noshell = worker_with_config(
        &cl,
        "noshell",
        &addr,
        "noshell",
        "forbid_shells = true\n",
        &[],
    )?;
    let mut api = jobs(&addr).await?;

    let ok = submit(&mut api, on("listed", spec(&["echo", "allowed"]))).await?;
    wait_state(&mut api, &ok.id, pb::JobState::Succeeded).await?;
    assert_eq!(logs(&mut api, &ok.id, 1).await?.0, b"allowed\n");

    for (queue, s, program, worker) in [
        ("listed", spec(&["true"]), "true", "listed"),
        ("listed", sh("echo never"), "sh", "listed"),
        // Through a PATH of the job's own choosing: still resolved, still refused.
        (
            "listed",
            {
                let mut s = spec(&["true"]);
                s.env.insert("PATH".into(), "/tmp:/usr/bin:/bin".into());
                s
            },
            "true",
            "listed",
        ),
        ("noshell", sh("echo never"), "sh", "noshell"),
        (
            "noshell",
            spec(&["bash", "-c", "echo never"]),
            "bash",
            "noshell",
        ),
        (
            "noshell",
            spec(&["/bin/sh", "-c", "echo never"]),
            "/bin/sh",
            "noshell",
        ),
    ] {
        let j = submit(&mut api, on(queue, s)).await?;
        let (job, attempts) = wait_state(&mut api, &j.id, pb::JobState::PermanentFailed).await?;
        let want = format!("program {program} not allowed on worker {worker}");
        assert!(job.reason.contains(&want), "{} / {want}", job.reason);
        assert_eq!(attempts.len(), 1, "a refused program must not be retried");
        let (out, _, _) = logs(&mut api, &j.id, 0).await?;
        assert!(out.is_empty(), "the refused program ran: {out:?}");
    }

    // Not a shell: runs on the no-shell worker.
    let ok = submit(&mut api, on("noshell", spec(&["echo", "fine"]))).await?;
    wait_state(&mut api, &ok.id, pb::JobState::Succeeded).await?;
    Ok(())
}

#[tokio::test]
async fn jobs_do_not_inherit_the_workers_environment() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let env = [
        ("DROVER_TEST_WORKER_SECRET", "worker-only-value"),
        ("LANG", "C.UTF-8"),
        ("DROVER_TEST_SHARED", "shared"),
    ];
    let _min = worker_with_config(&cl, "minimal", &addr, "minimal", "", &env)?;
    let _wide = worker_with_config(
        &cl,
        "wide",
        &addr,
        "wide",
        "inherit_env = [\"PATH\", \"DROVER_TEST_SHARED*\"]\n",
        &env,
    )?;
    let mut api = jobs(&addr).await?;
    let script = "echo \"[$DROVER_TEST_WORKER_SECRET][$LANG][$DROVER_TEST_SHARED][$MINE][$DROVER_JOB_ID]\"; test -n \"$PATH\"";
    for (queue, want_lang, want_shared) in [("minimal", "C.UTF-8", ""), ("wide", "", "shared")] {
        let mut s = on(queue, sh(script));
        s.env.insert("MINE".into(), "job-env".into());
        let j = submit(&mut api, s).await?;
        wait_state(&mut api, &j.id, pb::JobState::Succeeded).await?;
        let out = String::from_utf8(logs(&mut api, &j.id, 1).await?.0)?;
        assert_eq!(
            out,
            format!("[][{want_lang}][{want_shared}][job-env][{}]\n", j.id),
            "{queue}"
        );
    }
    Ok(())
}

fn uid_of(user: &str) -> Option<u32> {
    let out = Command::new("id").args(["-u", user]).output().ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

#[tokio::test]
async fn run_as_runs_jobs_as_that_user_in_a_work_directory_it_owns() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("this test needs root (as CI and the development machines run)");
    }
    let uid = uid_of("nobody").ok_or_else(|| anyhow::anyhow!("no user nobody"))?;
    let cl = Cluster::new().await?;
    // The run_as user must be able to reach the state directory's work/ below it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(cl.dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let (_c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let _w = worker_with_config(
        &cl,
        "asnobody",
        &addr,
        "default",
        "run_as_user = \"nobody\"\n",
        &[],
    )?;
    let mut api = jobs(&addr).await?;
    let j = submit(
        &mut api,
        sh("id -u; stat -c %u \"$DROVER_WORK_DIR\"; echo x > \"$DROVER_WORK_DIR/f\" && echo wrote; echo \"$HOME\"; touch /root/drover-run-as-test 2>/dev/null || echo denied"),
    )
    .await?;
    wait_state(&mut api, &j.id, pb::JobState::Succeeded).await?;
    let out = String::from_utf8(logs(&mut api, &j.id, 1).await?.0)?;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some(uid.to_string().as_str()),
        "{out}"
    );
    assert_eq!(
        lines.get(1).copied(),
        Some(uid.to_string().as_str()),
        "{out}"
    );
    assert_eq!(lines.get(2).copied(), Some("wrote"), "{out}");
    assert_eq!(lines.get(4).copied(), Some("denied"), "{out}");
    assert!(!std::path::Path::new("/root/drover-run-as-test").exists());
    Ok(())
}

#[tokio::test]
async fn secrets_reach_the_job_but_not_the_api_or_the_stored_log() -> anyhow::Result<()> {
    let cl = Cluster::new().await?;
    // The outbox is searched for the secret below: have rows written to it.
    cl.db.want_outbox_events().await?;
    let (c, addr) = cl.coordinator("coord", &CoordinatorOpts::default())?;
    let secrets = cl.path("secrets");
    std::fs::create_dir_all(&secrets)?;
    let env_value = format!("env-secret-{}", uuid::Uuid::new_v4().simple());
    let file_value = format!("file-secret-{}", uuid::Uuid::new_v4().simple());
    std::fs::write(secrets.join("api"), format!("{file_value}\n"))?;
    std::fs::write(cl.path("elsewhere"), "not-allowed")?;
    let toml = format!("secret_files = [\"{}/*\"]\n", secrets.display());
    let _w = worker_with_config(
        &cl,
        "w1",
        &addr,
        "default",
        &toml,
        &[("DROVER_SECRET_API_TOKEN", &env_value)],
    )?;
    let mut api = jobs(&addr).await?;

    // Prints both values whole, the env one split across two writes (and so two reads),
    // and a digest of each to show the job had the real values.
    let script = "echo \"token=$TOKEN\"; echo \"file=$FILE_KEY\" >&2; \
        printf '%s' \"$TOKEN\" | head -c 7; sleep 0.3; printf '%s' \"$TOKEN\" | tail -c +8; echo; \
        printf '%s' \"$TOKEN\" | sha256sum; printf '%s' \"$FILE_KEY\" | sha256sum";
    let mut s = sh(script);
    s.secret_env
        .insert("TOKEN".into(), "env:DROVER_SECRET_API_TOKEN".into());
    s.secret_env
        .insert("FILE_KEY".into(), format!("file:{}/api", secrets.display()));
    let j = submit(&mut api, s).await?;
    wait_state(&mut api, &j.id, pb::JobState::Succeeded).await?;
    let (out, err, _) = logs(&mut api, &j.id, 1).await?;
    let (out, err) = (String::from_utf8(out)?, String::from_utf8(err)?);
    let sha = |v: &str| {
        let o = Command::new("sh")
            .args(["-c", "printf '%s' \"$V\" | sha256sum"])
            .env("V", v)
            .output()
            .expect("sha256sum");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(
        out,
        format!(
            "token=[REDACTED]\n[REDACTED]\n{}{}",
            sha(&env_value),
            sha(&file_value)
        )
    );
    assert_eq!(err, "file=[REDACTED]\n");

    // Nowhere in the API: GetJob, ListJobs, droverctl show -o json.
    let got = format!("{:?}", get(&mut api, &j.id).await?);
    let listed = format!(
        "{:?}",
        api.list_jobs(pb::ListJobsRequest::default())
            .await?
            .into_inner()
    );
    let shown = Command::new(bin("droverctl"))
        .env("DROVER_TOKEN", ADMIN_TOKEN)
        .env("DROVER_ADDR", &addr)
        .args(["show", "-o", "json", &j.id])
        .output()?;
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(shown.contains("env:DROVER_SECRET_API_TOKEN"), "{shown}");
    for text in [&got, &listed, &shown] {
        assert!(
            !text.contains(&env_value) && !text.contains(&file_value),
            "{text}"
        );
    }
    // Nor anywhere in the database: jobs, attempts, stored log chunks, outbox.
    let db = cl.db.client().await?;
    for v in [&env_value, &file_value] {
        let like = format!("%{v}%");
        for table in ["jobs", "attempts", "outbox"] {
            let n: i64 = db
                .query_one(
                    &format!("SELECT count(*) FROM {table} t WHERE t::text LIKE $1"),
                    &[&like],
                )
                .await?
                .get(0);
            assert_eq!(n, 0, "{table} holds a secret");
        }
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM log_chunks WHERE position($1::bytea in data) > 0",
                &[&v.as_bytes()],
            )
            .await?
            .get(0);
        assert_eq!(n, 0, "log_chunks holds a secret");
    }
    assert!(!c.log_text().contains(&env_value));

    // A reference the worker cannot or may not resolve fails the job once, for good.
    for (r, needle) in [
        (
            format!("file:{}/missing", secrets.display()),
            "secret MISSING",
        ),
        (
            format!("file:{}", cl.path("elsewhere").display()),
            "secret_files",
        ),
        ("env:HOME".to_string(), "secret_env_vars"),
        ("env:DROVER_SECRET_NOT_SET".to_string(), "not set"),
    ] {
        let mut s = sh("echo should-not-run");
        s.secret_env.insert("MISSING".into(), r);
        let j = submit(&mut api, s).await?;
        let (job, attempts) = wait_state(&mut api, &j.id, pb::JobState::PermanentFailed).await?;
        assert!(job.reason.contains(needle), "{}", job.reason);
        assert_eq!(attempts.len(), 1);
    }

    // A value given where a reference belongs is refused, by droverctl before sending
    // and by the coordinator.
    let out = Command::new(bin("droverctl"))
        .env("DROVER_TOKEN", ADMIN_TOKEN)
        .env("DROVER_ADDR", &addr)
        .args(["submit", "--secret-env", "TOKEN=hunter2", "--", "true"])
        .output()?;
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--secret-env TOKEN"));
    let mut s = sh("true");
    s.secret_env.insert("TOKEN".into(), "hunter2".into());
    let Err(e) = api.submit_job(pb::SubmitJobRequest { spec: Some(s) }).await else {
        panic!("a literal secret value was accepted");
    };
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("secret_env"), "{}", e.message());
    assert!(!e.message().contains("hunter2"), "{}", e.message());
    Ok(())
}
