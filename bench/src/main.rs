//! `drover-bench`: starts its own stack (PostgreSQL, a coordinator, workers — all separate
//! processes), measures Drover against the machine's own limits measured in the same run,
//! and prints one table. See BENCHMARKS.md for a recorded run.

/// Progress on stderr, with the time since the bench started.
macro_rules! say {
    ($($t:tt)*) => {
        eprintln!("[{:6.1} s] {}", $crate::elapsed_s(), format!($($t)*))
    };
}

mod clients;
mod dashboard;
mod failover;
mod helpers;
mod latency;
mod lograte;
mod recovery;
mod report;
mod scale;
mod soak;
mod stack;
mod throughput;
mod util;

use anyhow::{anyhow, Context, Result};
use clap::{Parser, ValueEnum};
use report::{merge_runs, Machine, Row};
use serde_json::{json, Value};
use stack::{Bins, Server, Stack};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

static START: OnceLock<Instant> = OnceLock::new();

fn elapsed_s() -> f64 {
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

#[derive(Parser)]
#[command(
    name = "drover-bench",
    about = "Drover benchmark: throughput, pickup latency, recovery, log rate and scale, each \
             beside the machine's own limit measured in the same run",
    after_help = "Helper modes, run as jobs: `drover-bench stamp` prints the unix time in ns; \
                  `drover-bench spew BYTES` writes a stamp line and then 4 KiB text lines, \
                  BYTES in all.\n\nWith DATABASE_URL set, a fresh database is created (and \
                  dropped) on that server; otherwise a private PostgreSQL is started."
)]
struct Cli {
    /// Small counts, each row still repeated: a smoke run of a few minutes.
    #[arg(long, conflicts_with = "full")]
    quick: bool,
    /// The full counts (the default).
    #[arg(long)]
    full: bool,
    /// Also write the numbers to this file as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Run only these parts (comma-separated). `soak`, `backlog` and `dashboard` run only
    /// when named.
    #[arg(long, value_delimiter = ',', value_enum)]
    only: Vec<Part>,
    /// Jobs through the soak (default: 1000000; --quick: 4000).
    #[arg(long, value_name = "N")]
    soak_jobs: Option<usize>,
    /// Pending jobs in the backlog rows (default: 100000; --quick: 5000).
    #[arg(long, value_name = "N")]
    backlog_jobs: Option<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Part {
    Throughput,
    /// Throughput again with workers that lease ahead (`lease_ahead`).
    Ahead,
    /// Throughput again with every job carrying one of 100 concurrency keys.
    Keys,
    Latency,
    Recovery,
    Logs,
    Scale,
    /// Many jobs with logs under short retention horizons: size plateau, no slowdown.
    Soak,
    /// Pickup and throughput with a large backlog of pending jobs.
    Backlog,
    Failover,
    /// The dashboard's job list at scale and a big log's first lines (only with --only:
    /// it copies history up to a million jobs a second time).
    Dashboard,
    /// SubmitJobs rate, and latency from a Python grpcio client.
    Clients,
}

struct Counts {
    mode: &'static str,
    throughput_jobs: usize,
    latency_samples: usize,
    log_bytes: u64,
    scale_rows: i64,
    scale_samples: usize,
    sessions: usize,
    heartbeat_window: Duration,
    /// Real jobs run before the scale rows (the small table, and the history copied).
    real_jobs: usize,
    /// Every row is measured this many times; the table shows the median and the range.
    repeats: usize,
    soak_jobs: usize,
    soak_waves: usize,
    backlog_jobs: i64,
    /// Jobs stored for the dashboard's job list row, and its log's size.
    dashboard_rows: i64,
    dashboard_log_bytes: u64,
    /// Jobs submitted for the SubmitJobs row, and samples of the Python client.
    submit_jobs: usize,
    client_samples: usize,
}

impl Counts {
    fn quick() -> Counts {
        Counts {
            mode: "quick",
            throughput_jobs: 300,
            latency_samples: 50,
            log_bytes: 64 << 20,
            scale_rows: 10_000,
            scale_samples: 50,
            sessions: 200,
            heartbeat_window: Duration::from_secs(5),
            real_jobs: 300,
            repeats: 3,
            soak_jobs: 4_000,
            soak_waves: 4,
            backlog_jobs: 5_000,
            dashboard_rows: 10_000,
            dashboard_log_bytes: 16_000_000,
            submit_jobs: 200,
            client_samples: 20,
        }
    }

    fn full() -> Counts {
        Counts {
            mode: "full",
            throughput_jobs: 10_000,
            latency_samples: 1_000,
            log_bytes: 1 << 30,
            scale_rows: 1_000_000,
            scale_samples: 50,
            sessions: 200,
            heartbeat_window: Duration::from_secs(20),
            real_jobs: 1_000,
            repeats: 3,
            soak_jobs: 1_000_000,
            soak_waves: 20,
            backlog_jobs: 100_000,
            dashboard_rows: 1_000_000,
            dashboard_log_bytes: 100_000_000,
            submit_jobs: 10_000,
            client_samples: 500,
        }
    }
}

fn main() -> ExitCode {
    // Helper modes first, before any parsing or runtime: `stamp` must start fast.
    let mut args = std::env::args_os().skip(1);
    match args.next() {
        Some(a) if a == "stamp" => return helpers::stamp(),
        Some(a) if a == "spew" => return helpers::spew(args.next()),
        _ => {}
    }
    let cli = Cli::parse();
    // One thread: the bench's own CPU use stays bounded on a small machine, and every child
    // is spawned from the thread its parent-death signal is tied to.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drover-bench: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async {
        tokio::select! {
            r = run(cli) => r,
            // Returning drops every guard: processes are killed, databases dropped.
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drover-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let mut counts = if cli.quick {
        Counts::quick()
    } else {
        Counts::full()
    };
    if let Some(n) = cli.soak_jobs {
        counts.soak_jobs = n.max(1);
    }
    if let Some(n) = cli.backlog_jobs {
        counts.backlog_jobs = n.max(1);
    }
    let parts = if cli.only.is_empty() {
        vec![
            Part::Throughput,
            Part::Ahead,
            Part::Keys,
            Part::Latency,
            Part::Recovery,
            Part::Failover,
            Part::Logs,
            Part::Scale,
            Part::Clients,
        ]
    } else {
        cli.only.clone()
    };
    let bins = Bins::locate()?;
    let tmp = tempfile::Builder::new()
        .prefix("drover-bench-")
        .tempdir()
        .context("creating a temporary directory")?;
    let t0 = Instant::now();
    START.get_or_init(|| t0);
    say!(
        "drover-bench: {} mode, binaries in {}, scratch in {}",
        counts.mode,
        bins.drover.dir.display(),
        tmp.path().display()
    );
    let mut machine = Machine::local();
    if machine.load_start > 0.5 {
        say!(
            "warning: load average {:.2} before the start: other work competes for the CPUs",
            machine.load_start
        );
    }
    let server = Server::start(&tmp.path().join("pg"))
        .await
        .context("starting a private PostgreSQL (or set DATABASE_URL)")?;
    let mut rows: Vec<(Part, Row)> = Vec::new();
    let mut details = serde_json::Map::new();
    let r = async {
        describe_server(&server, &mut machine).await?;
        measure(
            &server,
            &bins,
            tmp.path(),
            &counts,
            &parts,
            &mut rows,
            &mut details,
        )
        .await
    }
    .await;
    machine.load_end = report::loadavg();
    let stopped = server.stop().await;

    // Table order follows the brief's rows, whatever order they ran in.
    let order = [
        Part::Throughput,
        Part::Ahead,
        Part::Keys,
        Part::Latency,
        Part::Recovery,
        Part::Failover,
        Part::Logs,
        Part::Scale,
        Part::Backlog,
        Part::Soak,
        Part::Dashboard,
        Part::Clients,
    ];
    let ordered: Vec<Row> = order
        .iter()
        .flat_map(|p| {
            rows.iter()
                .filter(move |(q, _)| q == p)
                .map(|(_, r)| r.clone())
        })
        .collect();
    let footer = footer(&machine, &counts, &bins, t0.elapsed());
    if let Err(e) = r {
        if !ordered.is_empty() {
            eprintln!(
                "\nRows measured before the error:\n{}",
                report::table(&ordered)
            );
        }
        return Err(e);
    }
    stopped?;
    let table = report::table(&ordered);
    println!("\n{table}\n{footer}");
    if let Some(path) = &cli.json {
        let doc = json!({
            "mode": counts.mode,
            "build": bins.profile(),
            "machine": machine.json(),
            "rows": ordered.iter().map(Row::json).collect::<Vec<Value>>(),
            "details": Value::Object(details),
            "table": table,
            "footer": footer,
        });
        let text = serde_json::to_string_pretty(&doc)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("drover-bench: wrote {}", path.display());
    }
    Ok(())
}

/// The coordinator settings every stack starts with: the documented defaults, set
/// explicitly so nothing in the caller's environment changes them.
fn base_env() -> Vec<(&'static str, String)> {
    vec![
        ("DROVER_LEASE_TTL", format!("{}ms", recovery::LEASE_TTL_MS)),
        (
            "DROVER_HEARTBEAT_INTERVAL",
            format!("{}ms", scale::HEARTBEAT_INTERVAL_MS),
        ),
        (
            "DROVER_REAPER_INTERVAL",
            format!("{}ms", recovery::REAPER_INTERVAL_MS),
        ),
        ("DROVER_DB_POOL_SIZE", "16".into()),
    ]
}

/// Log cap for the main stack: the log row must store every byte, so the cap is raised
/// above the job's output (the default is 100 MiB per attempt).
fn log_cap(c: &Counts) -> u64 {
    (2 * c.log_bytes).max(100 << 20)
}

async fn measure(
    server: &Server,
    bins: &Bins,
    tmp: &Path,
    counts: &Counts,
    parts: &[Part],
    rows: &mut Vec<(Part, Row)>,
    details: &mut serde_json::Map<String, Value>,
) -> Result<()> {
    let main_parts = [
        Part::Throughput,
        Part::Keys,
        Part::Latency,
        Part::Logs,
        Part::Recovery,
        Part::Clients,
    ];
    if parts.iter().any(|p| main_parts.contains(p)) {
        let mut env = base_env();
        env.push(("DROVER_LOG_CAP_BYTES", log_cap(counts).to_string()));
        let mut stack = Stack::start(server, bins, tmp, "main", &env).await?;
        stack.add_worker("w1", 8, &[])?;
        stack.add_worker("w2", 8, &[])?;
        stack.wait_workers(&["w1", "w2"]).await?;

        let n = counts.repeats;
        if parts.contains(&Part::Throughput) {
            let (mut runs, mut ds) = (Vec::new(), Vec::new());
            for i in 0..n {
                say!("[throughput] run {} of {n}", i + 1);
                let (r, d) = throughput::run(&mut stack, counts.throughput_jobs, 0).await?;
                runs.push(r);
                ds.push(d);
                settle().await;
            }
            rows.extend(merge_runs(runs).into_iter().map(|r| (Part::Throughput, r)));
            details.insert("throughput".into(), Value::Array(ds));
        }
        if parts.contains(&Part::Keys) {
            let (mut runs, mut ds) = (Vec::new(), Vec::new());
            for i in 0..n {
                say!("[throughput, 100 keys] run {} of {n}", i + 1);
                let (r, d) = throughput::run(&mut stack, counts.throughput_jobs, 100).await?;
                runs.push(r);
                ds.push(d);
                settle().await;
            }
            rows.extend(merge_runs(runs).into_iter().map(|r| (Part::Keys, r)));
            details.insert("throughput_keys".into(), Value::Array(ds));
        }
        let mut raw_spawn = None;
        if parts.contains(&Part::Latency) {
            let (mut runs, mut ds) = (Vec::new(), Vec::new());
            for i in 0..n {
                say!("[latency] run {} of {n}", i + 1);
                let (r, d, raw) = latency::run(&mut stack, counts.latency_samples).await?;
                runs.push(r);
                ds.push(d);
                // The recovery rows compare with the last run's spawn latency.
                raw_spawn = Some(raw);
                settle().await;
            }
            rows.extend(merge_runs(runs).into_iter().map(|r| (Part::Latency, r)));
            details.insert("latency".into(), Value::Array(ds));
        }
        if parts.contains(&Part::Logs) {
            let (mut runs, mut ds) = (Vec::new(), Vec::new());
            for i in 0..n {
                say!("[logs] run {} of {n}", i + 1);
                let (r, d) = lograte::run(&mut stack, counts.log_bytes).await?;
                runs.push(r);
                ds.push(d);
                settle().await;
            }
            rows.extend(merge_runs(runs).into_iter().map(|r| (Part::Logs, r)));
            details.insert("logs".into(), Value::Array(ds));
        }
        if parts.contains(&Part::Clients) {
            let (mut runs, mut ds) = (Vec::new(), Vec::new());
            for i in 0..n {
                say!("[submit] run {} of {n}", i + 1);
                let (r, d) = clients::batch_rate(&mut stack, counts.submit_jobs).await?;
                runs.push(r);
                ds.push(d);
                settle().await;
            }
            rows.extend(merge_runs(runs).into_iter().map(|r| (Part::Clients, r)));
            details.insert("submit_jobs".into(), Value::Array(ds));
            let (mut runs, mut ds) = (Vec::new(), Vec::new());
            for i in 0..n {
                say!("[python] run {} of {n}", i + 1);
                match clients::python_client(&mut stack, counts.client_samples).await? {
                    Some((r, d)) => {
                        runs.push(r);
                        ds.push(d);
                    }
                    None => break,
                }
                settle().await;
            }
            rows.extend(merge_runs(runs).into_iter().map(|r| (Part::Clients, r)));
            details.insert("python_client".into(), Value::Array(ds));
        }
        if parts.contains(&Part::Recovery) {
            let raw = match raw_spawn {
                Some(r) => r,
                None => latency::raw_spawn_latency(&stack.bins.bench, 50).await?,
            };
            let (runs, d) = recovery::run(&mut stack, raw, n).await?;
            rows.extend(merge_runs(runs).into_iter().map(|r| (Part::Recovery, r)));
            details.insert("recovery".into(), d);
        }
        stack.stop();
    }
    if parts.contains(&Part::Failover) {
        let (runs, d) = failover::run(server, bins, tmp, &base_env(), counts.repeats).await?;
        rows.extend(merge_runs(runs).into_iter().map(|r| (Part::Failover, r)));
        details.insert("failover".into(), d);
        let (runs, d) = failover::promotion(bins, tmp, &base_env(), counts.repeats).await?;
        rows.extend(merge_runs(runs).into_iter().map(|r| (Part::Failover, r)));
        details.insert("promotion".into(), d);
    }
    if parts.contains(&Part::Scale) {
        let p = scale::Params {
            real: counts.real_jobs,
            repeats: counts.repeats,
            big: counts.scale_rows,
            samples: counts.scale_samples,
            sessions: counts.sessions,
            window: counts.heartbeat_window,
        };
        let (runs, d) = scale::run(server, bins, tmp, &base_env(), &p).await?;
        rows.extend(merge_runs(runs).into_iter().map(|r| (Part::Scale, r)));
        details.insert("scale".into(), d);
    }
    if parts.contains(&Part::Ahead) {
        let mut stack = Stack::start(server, bins, tmp, "ahead", &base_env()).await?;
        let ahead = throughput::LEASE_AHEAD.to_string();
        for w in ["a1", "a2"] {
            stack.add_worker_with(w, 8, &[], &["--lease-ahead", &ahead])?;
        }
        stack.wait_workers(&["a1", "a2"]).await?;
        let (mut runs, mut ds) = (Vec::new(), Vec::new());
        for i in 0..counts.repeats {
            say!(
                "[throughput, lease_ahead {ahead}] run {} of {}",
                i + 1,
                counts.repeats
            );
            let (r, d) = throughput::run_with(
                &mut stack,
                counts.throughput_jobs,
                0,
                throughput::LEASE_AHEAD,
            )
            .await?;
            runs.push(r);
            ds.push(d);
            settle().await;
        }
        rows.extend(merge_runs(runs).into_iter().map(|r| (Part::Ahead, r)));
        details.insert("throughput_ahead".into(), Value::Array(ds));
        stack.stop();
    }
    if parts.contains(&Part::Dashboard) {
        let mut env = base_env();
        env.push((
            "DROVER_LOG_CAP_BYTES",
            (2 * counts.dashboard_log_bytes).max(100 << 20).to_string(),
        ));
        let mut stack = Stack::start(server, bins, tmp, "dashboard", &env).await?;
        stack.add_worker("d1", 8, &[])?;
        stack.wait_workers(&["d1"]).await?;
        let p = dashboard::Params {
            real: counts.real_jobs,
            big: counts.dashboard_rows,
            log_bytes: counts.dashboard_log_bytes,
            samples: 20,
            repeats: counts.repeats,
        };
        let (runs, d) = dashboard::run(&mut stack, &p).await?;
        rows.extend(merge_runs(runs).into_iter().map(|r| (Part::Dashboard, r)));
        details.insert("dashboard".into(), d);
        stack.stop();
    }
    if parts.contains(&Part::Backlog) {
        let (r, d) = soak::backlog(
            server,
            bins,
            tmp,
            &base_env(),
            counts.backlog_jobs,
            counts.latency_samples,
        )
        .await?;
        rows.extend(r.into_iter().map(|r| (Part::Backlog, r)));
        details.insert("backlog".into(), d);
    }
    if parts.contains(&Part::Soak) {
        let p = soak::SoakParams {
            jobs: counts.soak_jobs,
            waves: counts.soak_waves,
            log_bytes: 8 << 10,
            // The p99 of 200 samples is their second largest, one scheduler hiccup (a soak
            // with 200: 5.4–11.9 ms between waves, no trend); 500 take ~20 s per wave.
            probes: (counts.latency_samples / 2).max(20),
        };
        let (r, d) = soak::soak(server, bins, tmp, &base_env(), &p).await?;
        rows.extend(r.into_iter().map(|r| (Part::Soak, r)));
        details.insert("soak".into(), d);
    }
    Ok(())
}

/// A pause between rows so one row's tail (autovacuum, WAL writes) does not land in the next.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(2)).await;
}

async fn describe_server(server: &Server, m: &mut Machine) -> Result<()> {
    let c = stack::sql(&server.admin_url()).await?;
    let r = c
        .query_one(
            "SELECT current_setting('server_version'), current_setting('fsync'), \
                    current_setting('synchronous_commit'), current_setting('full_page_writes'), \
                    to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI \"UTC\"')",
            &[],
        )
        .await
        .context("reading PostgreSQL's version and settings")?;
    m.pg_version = r.try_get(0)?;
    m.pg_durability = format!(
        "fsync={} synchronous_commit={} full_page_writes={}",
        r.try_get::<_, String>(1)?,
        r.try_get::<_, String>(2)?,
        r.try_get::<_, String>(3)?
    );
    m.pg_where = if server.is_private() {
        "private server started by the bench".into()
    } else {
        "DATABASE_URL".into()
    };
    m.date = r.try_get(4)?;
    Ok(())
}

fn footer(m: &Machine, c: &Counts, bins: &Bins, took: Duration) -> String {
    let mut f = format!(
        "machine: {} × {}, {:.1} GiB, Linux {}; PostgreSQL {} ({}), {}; mode {}, {} build; \
         {}; run took {:.0} s; load average {:.2} at start, {:.2} at end\n",
        m.nproc,
        m.cpu,
        m.mem_gib,
        m.kernel,
        m.pg_version,
        m.pg_where,
        m.pg_durability,
        c.mode,
        bins.profile(),
        m.date,
        took.as_secs_f64(),
        m.load_start,
        m.load_end
    );
    f.push_str(&format!(
        "stack: coordinator and workers as separate processes on loopback, RUST_LOG=warn, \
         lease TTL {} s, heartbeat {} s, DB pool 16; log row with log_cap_bytes {} MiB so \
         every byte is stored.",
        recovery::LEASE_TTL_MS / 1000,
        scale::HEARTBEAT_INTERVAL_MS / 1000,
        log_cap(c) >> 20
    ));
    if bins.profile() != "release" {
        f.push_str("\nWARNING: not a release build; these numbers are not meaningful.");
    }
    f
}
