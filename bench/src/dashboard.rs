//! Dashboard rows: the first page of the job list with the table at `big` jobs (real
//! history copied, as in the scale rows), and the time until a 100 MB log's viewer has
//! its first lines. Each beside the same rows read straight from PostgreSQL.

use crate::report::{Ratio, Row};
use crate::scale;
use crate::stack::Stack;
use crate::util::{self, Dist};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub struct Params {
    pub real: usize,
    pub big: i64,
    pub log_bytes: u64,
    pub samples: usize,
    pub repeats: usize,
}

/// One GET with the admin token; its time until the whole body has arrived, in ms.
async fn timed_get(http: &reqwest::Client, url: &str, token: &str) -> Result<f64> {
    let t0 = Instant::now();
    let r = http
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = r.status();
    let body = r.bytes().await?;
    if !status.is_success() {
        bail!("GET {url}: {status} {}", String::from_utf8_lossy(&body));
    }
    Ok(t0.elapsed().as_secs_f64() * 1e3)
}

async fn sample_get(http: &reqwest::Client, url: &str, token: &str, n: usize) -> Result<Dist> {
    // One unmeasured request warms the connection and the statement caches.
    timed_get(http, url, token).await?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(timed_get(http, url, token).await?);
    }
    Ok(Dist::of(v))
}

async fn sample_sql(sql: &tokio_postgres::Client, stmt: &str, n: usize) -> Result<Dist> {
    let st = sql.prepare(stmt).await.context("preparing the raw query")?;
    sql.query(&st, &[]).await?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        sql.query(&st, &[]).await?;
        v.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(Dist::of(v))
}

pub async fn run(stack: &mut Stack, p: &Params) -> Result<(Vec<Vec<Row>>, Value)> {
    let http = reqwest::Client::new();
    let token = stack.admin_token.clone();
    say!(
        "[dashboard] {} real jobs, then history copied up to {} jobs",
        p.real,
        p.big
    );
    scale::run_real_jobs(stack, p.real).await?;
    scale::copy_history(&stack.sql, p.big).await?;
    let rows = scale::job_count(&stack.sql).await?;

    say!("[dashboard] one job writing {} MB", p.log_bytes / 1_000_000);
    let argv = vec![
        stack.bins.bench.display().to_string(),
        "spew".into(),
        p.log_bytes.to_string(),
    ];
    let job = util::submit(&mut stack.jobs, util::spec(argv, "")).await?;
    let (_, attempts) = util::wait_succeeded(
        &mut stack.jobs,
        &job.id,
        Duration::from_millis(100),
        Duration::from_millis(50),
        Duration::from_secs(3600),
    )
    .await?;
    let stored = attempts.first().map(|a| a.log_bytes).unwrap_or(0);
    let attempt_id = attempts.first().map(|a| a.id.clone()).unwrap_or_default();

    let list_api = format!("{}/api/v1/jobs?page_size=50", stack.http);
    let list_page = format!("{}/ui/jobs", stack.http);
    let log_api = format!("{}/api/v1/jobs/{}/log", stack.http, job.id);
    let raw_list = "SELECT id, state, queue, argv, created_at FROM jobs \
                    ORDER BY created_at DESC, id DESC LIMIT 51";
    let raw_log = format!(
        "SELECT seq, stream, time, data FROM log_chunks WHERE attempt_id = '{attempt_id}' \
            AND log_part = (SELECT log_part FROM attempts WHERE id = '{attempt_id}') \
          ORDER BY seq DESC LIMIT 8"
    );
    let mut runs = Vec::new();
    let mut details = Vec::new();
    for i in 0..p.repeats {
        say!("[dashboard] run {} of {}", i + 1, p.repeats);
        let api = sample_get(&http, &list_api, &token, p.samples).await?;
        let page = sample_get(&http, &list_page, &token, p.samples).await?;
        let sql_list = sample_sql(&stack.sql, raw_list, p.samples).await?;
        let log = sample_get(&http, &log_api, &token, p.samples).await?;
        let sql_log = sample_sql(&stack.sql, &raw_log, p.samples).await?;
        say!(
            "[dashboard]   jobs page p50 {:.1} ms (API {:.1} ms, SQL {:.2} ms); \
             log tail p50 {:.1} ms (SQL {:.2} ms)",
            page.p50,
            api.p50,
            sql_list.p50,
            log.p50,
            sql_log.p50
        );
        runs.push(vec![
            Row {
                key: "dashboard_jobs_page",
                metric: format!(
                    "dashboard job list, first page (50 jobs, HTML) with {} jobs stored, p50",
                    scale::short(rows)
                ),
                drover: page.p50,
                unit: "ms",
                machine: sql_list.p50,
                machine_what: "the page's keyset query in psql terms (51 rows)".into(),
                ratio: Ratio::Times,
                target: "< 200 ms".into(),
                ok: Some(page.p50 < 200.0),
                median_by_ratio: false,
                runs: Vec::new(),
            },
            Row {
                key: "dashboard_log_tail",
                metric: format!(
                    "log viewer's first lines of a {} MB log (tail page, JSON), p50",
                    stored / 1_000_000
                ),
                drover: log.p50,
                unit: "ms",
                machine: sql_log.p50,
                machine_what: "the same 8 chunks read in SQL".into(),
                ratio: Ratio::Times,
                target: "< 500 ms".into(),
                ok: Some(log.p50 < 500.0),
                median_by_ratio: false,
                runs: Vec::new(),
            },
        ]);
        details.push(json!({
            "jobs_page_ms": page.json(),
            "jobs_api_ms": api.json(),
            "jobs_sql_ms": sql_list.json(),
            "log_tail_ms": log.json(),
            "log_sql_ms": sql_log.json(),
        }));
    }
    Ok((
        runs,
        json!({"rows": rows, "log_bytes": stored, "runs": details}),
    ))
}
