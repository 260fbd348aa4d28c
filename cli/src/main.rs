//! `droverctl`: the operator's tool. Talks to a coordinator over the same gRPC API that
//! any program can use. Exit status: 0 on success, 1 on any error (one line on stderr),
//! 2 on a usage error; a wait for a job (`submit --wait`, `wait`) also exits 3 when the
//! job failed, 4 when it was cancelled, 5 when `--timeout` ran out (see batch.rs).

mod alerts_cmd;
mod batch;
#[cfg(feature = "dev")]
mod dev;
#[cfg(not(feature = "dev"))]
#[path = "dev_unavailable.rs"]
mod dev;
mod jobflags;
mod output;
mod queue;
mod schedule;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use drover_proto::auth::{AuthChannel, BearerToken};
use drover_proto::v1 as pb;
use drover_proto::v1::admin_service_client::AdminServiceClient;
use drover_proto::v1::job_service_client::JobServiceClient;
use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(name = "droverctl", version, about = "Operate a Drover cluster")]
struct Cli {
    /// Coordinator address; several, comma-separated, are tried in order and the first
    /// that answers is used.
    #[arg(
        long,
        env = "DROVER_ADDR",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    addr: String,
    /// CA certificate (PEM) that an https:// coordinator's certificate must chain to.
    #[arg(long, env = "DROVER_CA_FILE", global = true)]
    ca_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for a coordinator that asks for one (mTLS).
    #[arg(
        long,
        env = "DROVER_CLIENT_CERT",
        global = true,
        requires = "client_key"
    )]
    client_cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --client-cert.
    #[arg(
        long,
        env = "DROVER_CLIENT_KEY",
        global = true,
        requires = "client_cert"
    )]
    client_key: Option<std::path::PathBuf>,
    /// Output format of read commands.
    #[arg(long, short = 'o', value_enum, default_value = "text", global = true)]
    output: Format,
    /// Bearer token for the coordinator.
    #[arg(long, env = "DROVER_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// File holding the token (its first line; must not be readable by others).
    #[arg(long, env = "DROVER_TOKEN_FILE", global = true)]
    token_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Submit a job: droverctl submit --param date=2026-11-22 -- scraper --date {date}
    Submit(Box<SubmitArgs>),
    /// List jobs, newest first.
    List {
        /// Only jobs in this state (pending, running, succeeded, permanent_failed, cancelled).
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        queue: Option<String>,
        /// Jobs per page (1..1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue after a previous page.
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Show a job and all its attempts.
    Show { job: String },
    /// Wait until a job finishes. Exit 0 if it succeeded, 3 if it failed, 4 if it was
    /// cancelled, 5 if --timeout ran out first.
    Wait {
        job: String,
        /// Give up after this long, e.g. 10m (default: wait as long as it takes).
        #[arg(long)]
        timeout: Option<String>,
    },
    /// Print a job's log (stdout and stderr as the process wrote them).
    Logs {
        job: String,
        /// Keep printing new output until the job finishes.
        #[arg(long, short)]
        follow: bool,
        /// Only this attempt number (default: every attempt in order).
        #[arg(long)]
        attempt: Option<u32>,
        /// Start each line with the time it was read and its stream (out/err).
        #[arg(long, short)]
        timestamps: bool,
    },
    /// Retry a finished job as a new, linked job (the original is not changed). Without
    /// JOB: every finished job matching the filters (see --dry-run).
    Retry {
        job: Option<String>,
        /// Bulk: jobs in this state.
        #[arg(long, default_value = "permanent_failed")]
        state: String,
        /// Bulk: only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Bulk: only jobs that finished within this long, e.g. 6h.
        #[arg(long)]
        since: Option<String>,
        /// Bulk: list what would be retried, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Bulk: at most this many jobs.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Bulk: only the jobs of this failure group not retried yet (see droverctl failures).
        #[arg(long, conflicts_with = "since")]
        fingerprint: Option<String>,
    },
    /// Retry a finished job with some params replaced (a partial re-fetch):
    /// droverctl rerun JOB --set data_types=odds
    Rerun {
        job: String,
        /// Param to replace (repeatable); must be one of the job's params.
        #[arg(long = "set", value_name = "NAME=VALUE", required = true)]
        set: Vec<String>,
    },
    /// Cancel a job: a pending one at once, a running one by stopping its process.
    Cancel { job: String },
    /// List the files a job kept, or download one (its SHA-256 is verified).
    Artifacts {
        job: String,
        /// Download this artifact.
        #[arg(long, value_name = "NAME")]
        get: Option<String>,
        /// Where to write it (default: its file name in the current directory; - for stdout).
        #[arg(long = "out", short = 'O', value_name = "PATH", requires = "get")]
        out: Option<std::path::PathBuf>,
    },
    /// Is the system healthy? Status with reasons, jobs, queues, workers, database, logs.
    /// Exits 1 when failing.
    Health,
    /// Workers with their labels, slots in use and host resources.
    Workers,
    /// Failure groups (same cause, ids and numbers aside), most frequent first;
    /// `failures show FP` lists a group's jobs.
    Failures(alerts_cmd::FailuresArgs),
    /// Alert rules and channels; `alerts test CHANNEL` sends a test message.
    Alerts {
        #[command(subcommand)]
        cmd: Option<alerts_cmd::AlertsCmd>,
    },
    /// Notifications with their delivery attempts; `notifications redeliver ID`.
    Notifications(alerts_cmd::NotificationsArgs),
    /// API tokens (role admin): create, list, revoke.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The audit log: who did what, when, from where (role admin). Newest first.
    Audit {
        /// Only entries newer than this, e.g. 24h, 7d.
        #[arg(long)]
        since: Option<String>,
        /// Entries per page (1..1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Continue after a previous page.
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Job specs fired on a cron schedule (create, list, show, pause, resume, delete, trigger).
    Schedule {
        #[command(subcommand)]
        cmd: schedule::ScheduleCmd,
    },
    /// Pause or resume a queue, or list queues.
    Queue {
        #[command(subcommand)]
        cmd: queue::QueueCmd,
    },
    /// Run a local stack: PostgreSQL (private, unless DATABASE_URL is set), a coordinator
    /// and a worker, with a sample job. Ctrl-C stops all of it.
    Dev(dev::DevArgs),
    /// Certificates for TLS and mTLS from a private CA (for small installations).
    #[command(subcommand)]
    Certs(CertsCommand),
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Write a new CA (ca.pem, ca-key.pem), a server certificate for the coordinator
    /// (server.pem, server-key.pem) and a client certificate per worker
    /// (worker-ID.pem, worker-ID-key.pem) into DIR. Keys are mode 0600; nothing is
    /// overwritten.
    Init {
        dir: std::path::PathBuf,
        /// Host names and IP addresses the coordinator is reached at (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1")]
        hosts: Vec<String>,
        /// Worker ids to issue client certificates for (comma-separated).
        #[arg(long, value_delimiter = ',')]
        workers: Vec<String>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token; prints it once (only its SHA-256 is stored).
    Create {
        #[arg(long)]
        name: String,
        /// viewer, operator, admin or worker.
        #[arg(long)]
        role: String,
        /// Operator only: the queues it may act on (comma-separated).
        #[arg(long, value_delimiter = ',')]
        queues: Vec<String>,
        /// Worker only: the worker id, or a pattern with '*', it may connect as.
        #[arg(long)]
        worker: Option<String>,
        /// Lifetime, e.g. 30d, 12h (default: no expiry).
        #[arg(long)]
        expires: Option<String>,
    },
    /// List tokens (never their secrets).
    List {
        /// Include revoked tokens.
        #[arg(long)]
        all: bool,
    },
    /// Revoke a token by id or name; it is refused at once.
    Revoke {
        #[arg(value_name = "ID_OR_NAME")]
        which: String,
    },
}

#[derive(clap::Args)]
struct SubmitArgs {
    /// Queue name.
    #[arg(long, short, default_value = "default")]
    queue: String,
    /// Named parameter substituted into {name} placeholders in argv (repeatable).
    #[arg(long = "param", short = 'p', value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// Environment variable for the job (repeatable).
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// Label a worker must have (repeatable).
    #[arg(long = "label", short = 'l')]
    labels: Vec<String>,
    #[command(flatten)]
    flags: jobflags::JobFlags,
    /// Time limit per attempt, e.g. 90s, 2h.
    #[arg(long, allow_hyphen_values = true)]
    timeout: Option<String>,
    /// Retries after the first attempt.
    #[arg(long)]
    max_retries: Option<u32>,
    /// Wait before the first retry, e.g. 5s; doubles each time.
    #[arg(long)]
    retry_wait: Option<String>,
    /// Return the existing job if one was submitted with this key.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Run only after these jobs succeeded (comma-separated ids); cancelled if one fails.
    #[arg(long, value_delimiter = ',', value_name = "JOB[,JOB...]")]
    after: Vec<String>,
    /// Wait for the job to finish; exit 0 only if it succeeded (3 failed, 4 cancelled).
    #[arg(long)]
    wait: bool,
    /// Submit every job of a JSON Lines file (`-`: standard input), one spec per line with
    /// the fields of these flags, e.g. {"argv": ["echo", "hi"], "queue": "etl"}. Sent in
    /// batches; prints one job id per line, reports bad lines by number, exits 1 if any.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["argv", "params", "env", "labels", "secret_env", "timeout",
            "max_retries", "retry_wait", "idempotency_key", "outputs", "memory", "cpus",
            "pids", "concurrency_keys", "after", "priority"]
    )]
    from_file: Option<std::path::PathBuf>,
    /// Program and arguments.
    #[arg(last = true, required_unless_present = "from_file")]
    argv: Vec<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    drover_transport::install_crypto_provider();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("droverctl: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    match s.code() {
        tonic::Code::Unavailable => anyhow!("coordinator unavailable: {}", s.message()),
        tonic::Code::Unauthenticated => anyhow!(
            "not authenticated: {} (give a token with --token, DROVER_TOKEN or DROVER_TOKEN_FILE)",
            s.message()
        ),
        code => anyhow!("{code:?}: {}", s.message()),
    }
}

/// The token every call carries, resolved once from --token / --token-file.
static TOKEN: std::sync::OnceLock<BearerToken> = std::sync::OnceLock::new();

fn resolve_token(token: Option<&str>, file: Option<&std::path::Path>) -> Result<BearerToken> {
    let t = match (token.filter(|t| !t.trim().is_empty()), file) {
        (Some(t), _) => Some(t.to_string()),
        (None, Some(path)) => Some(
            drover_proto::auth::read_token_file(path).map_err(|e| anyhow!("--token-file: {e}"))?,
        ),
        (None, None) => None,
    };
    BearerToken::new(t.as_deref()).map_err(|e| anyhow!("--token: {e}"))
}

/// How to verify the coordinator (and identify to it) over https://; set once in `run`.
static CLIENT_TLS: std::sync::OnceLock<drover_transport::ClientTls> = std::sync::OnceLock::new();

/// A channel to the first coordinator of `addrs` (comma-separated) that answers.
async fn channel(addrs: &str) -> Result<AuthChannel> {
    let list: Vec<&str> = addrs
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect();
    if list.is_empty() {
        bail!("--addr is empty: give a coordinator address such as http://127.0.0.1:50051");
    }
    if list.len() > MAX_ADDRS {
        bail!("--addr: {} addresses; the limit is {MAX_ADDRS}", list.len());
    }
    let mut errors = Vec::new();
    for addr in &list {
        match channel_to(addr, list.len() > 1).await {
            Ok(ch) => return Ok(ch),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    bail!("{}", errors.join("; "))
}

/// Most addresses `--addr` takes.
const MAX_ADDRS: usize = 16;

async fn channel_to(addr: &str, several: bool) -> Result<AuthChannel> {
    let tls = CLIENT_TLS.get().cloned().unwrap_or_default();
    // With other addresses to try, a coordinator that does not answer is given up sooner.
    let timeout = Duration::from_secs(if several { 3 } else { 5 });
    let ep = tls
        .endpoint(addr)
        .map_err(|e| anyhow!("--addr: {e}"))?
        .connect_timeout(timeout);
    let ch: Channel = ep.connect().await.map_err(|e| {
        let mut why = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            why = format!("{why}: {s}");
            src = s.source();
        }
        let hint = if drover_transport::ClientTls::is_tls(addr) {
            " (https://: is the coordinator serving TLS, and is --ca-file the CA of its certificate?)"
        } else {
            " (set --addr or DROVER_ADDR)"
        };
        anyhow!("cannot reach coordinator at {addr}: {why}{hint}")
    })?;
    Ok(tonic::service::interceptor::InterceptedService::new(
        ch,
        TOKEN.get().cloned().unwrap_or_default(),
    ))
}

async fn connect(addr: &str) -> Result<JobServiceClient<AuthChannel>> {
    Ok(JobServiceClient::new(channel(addr).await?).max_decoding_message_size(16 * 1024 * 1024))
}

/// `--secret-env` items, checked here so that a value typed by mistake in place of a
/// reference is never sent to the coordinator.
fn pairs(field: &str, items: &[String]) -> Result<HashMap<String, String>> {
    items
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("--{field} {kv:?}: expected NAME=VALUE"))
        })
        .collect()
}

fn duration_ms(flag: &str, s: &str) -> Result<i64> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| anyhow!("--{flag} {s:?}: {e} (use e.g. 30s, 5m, 2h)"))?;
    i64::try_from(d.as_millis()).map_err(|_| anyhow!("--{flag} {s:?}: too long"))
}

fn parse_state(s: &str) -> Result<pb::JobState> {
    Ok(match s {
        "pending" => pb::JobState::Pending,
        "running" => pb::JobState::Running,
        "succeeded" => pb::JobState::Succeeded,
        "permanent_failed" => pb::JobState::PermanentFailed,
        "cancelled" => pb::JobState::Cancelled,
        other => bail!(
            "--state {other:?}: use pending, running, succeeded, permanent_failed or cancelled"
        ),
    })
}

fn print_new_job(fmt: Format, job: &pb::Job) -> Result<()> {
    if fmt == Format::Json {
        print_json(&output::job_json(job))
    } else {
        println!("{}", job.id);
        Ok(())
    }
}

fn print_json(v: &serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let fmt = cli.output;
    let _ = CLIENT_TLS.set(drover_transport::ClientTls {
        ca_file: cli.ca_file.clone(),
        cert_file: cli.client_cert.clone(),
        key_file: cli.client_key.clone(),
    });
    if !matches!(cli.command, Command::Dev(_)) {
        let _ = TOKEN.set(resolve_token(
            cli.token.as_deref(),
            cli.token_file.as_deref(),
        )?);
    }
    match cli.command {
        Command::Token(t) => token_command(&cli.addr, fmt, t).await,
        Command::Audit {
            since,
            limit,
            page_token,
        } => {
            let since_secs = match &since {
                Some(s) => (duration_ms("since", s)? / 1000) as u64,
                None => 0,
            };
            let mut c = AdminServiceClient::new(channel(&cli.addr).await?);
            let r = c
                .list_audit(pb::ListAuditRequest {
                    since_secs,
                    page_size: limit,
                    page_token: page_token.unwrap_or_default(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if fmt == Format::Json {
                print_json(&serde_json::json!({
                    "entries": r.entries.iter().map(output::audit_json).collect::<Vec<_>>(),
                    "next_page_token": r.next_page_token,
                }))?;
            } else {
                print!("{}", output::audit_table(&r.entries));
                if !r.next_page_token.is_empty() {
                    eprintln!("more: --page-token {}", r.next_page_token);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Certs(CertsCommand::Init {
            dir,
            hosts,
            workers,
        }) => {
            let files = drover_transport::ca::init_dir(&dir, &hosts, &workers)?;
            for f in files {
                println!("{}", f.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Dev(args) => {
            dev::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Submit(a) => match &a.from_file {
            Some(f) => batch::submit_file(&cli.addr, fmt, f, a.wait).await,
            None => submit(&cli.addr, fmt, *a).await,
        },
        Command::Wait { job, timeout } => {
            batch::wait_command(&cli.addr, &job, timeout.as_deref()).await
        }
        Command::Failures(a) => alerts_cmd::failures(&cli.addr, fmt, a).await,
        Command::Alerts { cmd } => alerts_cmd::alerts(&cli.addr, fmt, cmd).await,
        Command::Notifications(a) => alerts_cmd::notifications(&cli.addr, fmt, a).await,
        Command::Queue { cmd } => {
            queue::run(&cli.addr, fmt, cmd).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Schedule { cmd } => {
            schedule::run(&cli.addr, fmt, cmd).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::List {
            state,
            queue,
            limit,
            page_token,
        } => {
            let state = match state.as_deref() {
                None => pb::JobState::Unspecified,
                Some(s) => parse_state(s)?,
            };
            let mut c = connect(&cli.addr).await?;
            let r = c
                .list_jobs(pb::ListJobsRequest {
                    state: state as i32,
                    queue: queue.unwrap_or_default(),
                    page_size: limit,
                    page_token: page_token.unwrap_or_default(),
                    ..Default::default()
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if fmt == Format::Json {
                print_json(&serde_json::json!({
                    "jobs": r.jobs.iter().map(output::job_json).collect::<Vec<_>>(),
                    "next_page_token": r.next_page_token,
                }))?;
            } else {
                print!("{}", output::job_table(&r.jobs));
                if !r.next_page_token.is_empty() {
                    eprintln!("more: --page-token {}", r.next_page_token);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { job } => {
            let mut c = connect(&cli.addr).await?;
            let r = c
                .get_job(pb::GetJobRequest { id: job })
                .await
                .map_err(status_error)?
                .into_inner();
            let j = r.job.unwrap_or_default();
            if fmt == Format::Json {
                let mut v = output::job_json(&j);
                v["attempts"] = r.attempts.iter().map(output::attempt_json).collect();
                v["retried_by"] = r.retried_by.clone().into();
                v["waiting_for"] = r.waiting_for.clone().into();
                print_json(&v)?;
            } else {
                print!("{}", output::job_detail(&j, &r.attempts, &r.retried_by));
                if !j.waiting.is_empty() {
                    println!("waiting: {}", j.waiting);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Retry { job: Some(job), .. } => {
            let mut c = connect(&cli.addr).await?;
            let r = c
                .retry_job(pb::RetryJobRequest {
                    id: job,
                    set_params: HashMap::new(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            print_new_job(fmt, &r.job.unwrap_or_default())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Retry {
            job: None,
            state,
            queue,
            since,
            dry_run,
            limit,
            fingerprint,
        } => {
            let state = parse_state(&state)?;
            let within = match &since {
                Some(s) => duration_ms("since", s)?,
                None => 0,
            };
            let mut c = connect(&cli.addr).await?;
            let r = c
                .retry_jobs(pb::RetryJobsRequest {
                    state: state as i32,
                    queue: queue.unwrap_or_default(),
                    finished_within_ms: within,
                    dry_run,
                    limit,
                    fingerprint: fingerprint.unwrap_or_default(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if fmt == Format::Json {
                print_json(&serde_json::json!({
                    "dry_run": dry_run,
                    "matched": r.matched.iter().map(output::job_json).collect::<Vec<_>>(),
                    "created": r.created.iter().map(output::job_json).collect::<Vec<_>>(),
                }))?;
            } else if dry_run {
                print!("{}", output::job_table(&r.matched));
                eprintln!(
                    "{} job(s) would be retried (dry run: nothing changed)",
                    r.matched.len()
                );
            } else {
                for (old, new) in r.matched.iter().zip(&r.created) {
                    println!("{} -> {}", old.id, new.id);
                }
                eprintln!("{} job(s) retried", r.created.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Rerun { job, set } => {
            let set_params = pairs("set", &set)?;
            let mut c = connect(&cli.addr).await?;
            let r = c
                .retry_job(pb::RetryJobRequest {
                    id: job,
                    set_params,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            print_new_job(fmt, &r.job.unwrap_or_default())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel { job } => {
            let mut c = connect(&cli.addr).await?;
            let r = c
                .cancel_job(pb::CancelJobRequest { id: job })
                .await
                .map_err(status_error)?
                .into_inner();
            let j = r.job.unwrap_or_default();
            if fmt == Format::Json {
                print_json(&output::job_json(&j))?;
            } else if j.cancel_requested {
                println!("{}: stopping its running attempt", j.id);
            } else {
                println!("{}: {}", j.id, output::job_state(j.state));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Health => {
            let mut c = AdminServiceClient::new(channel(&cli.addr).await?);
            let h = c
                .get_health(pb::GetHealthRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            if fmt == Format::Json {
                print_json(&drover_proto::json::health(&h))?;
            } else {
                print!("{}", output::health_text(&h));
            }
            Ok(if h.status == pb::HealthStatus::Failing as i32 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Workers => {
            let mut c = AdminServiceClient::new(channel(&cli.addr).await?);
            let w = c
                .list_workers(pb::ListWorkersRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .workers;
            if fmt == Format::Json {
                let v: Vec<_> = w.iter().map(drover_proto::json::worker).collect();
                print_json(&serde_json::Value::Array(v))?;
            } else {
                print!("{}", output::worker_table(&w));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Artifacts { job, get, out } => {
            let mut c = connect(&cli.addr).await?;
            match get {
                None => {
                    let r = c
                        .list_artifacts(pb::ListArtifactsRequest { job_id: job })
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    if fmt == Format::Json {
                        let v: Vec<_> = r.artifacts.iter().map(output::artifact_json).collect();
                        print_json(&serde_json::Value::Array(v))?;
                    } else {
                        print!("{}", output::artifact_table(&r.artifacts));
                    }
                }
                Some(name) => download_artifact(&mut c, job, name, out).await?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs {
            job,
            follow,
            attempt,
            timestamps,
        } => {
            let mut c = connect(&cli.addr).await?;
            logs(&mut c, job, follow, attempt.unwrap_or(0), timestamps).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn token_command(addr: &str, fmt: Format, t: TokenCommand) -> Result<ExitCode> {
    let mut c = AdminServiceClient::new(channel(addr).await?);
    match t {
        TokenCommand::Create {
            name,
            role,
            queues,
            worker,
            expires,
        } => {
            let expires_in_secs = match &expires {
                Some(e) => drover_core::auth::parse_lifetime(e)
                    .map_err(|m| anyhow!("--expires: {m}"))?
                    .as_secs(),
                None => 0,
            };
            let r = c
                .create_token(pb::CreateTokenRequest {
                    name,
                    role,
                    queues,
                    worker_pattern: worker.unwrap_or_default(),
                    expires_in_secs,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let t = r.token.unwrap_or_default();
            if fmt == Format::Json {
                let mut v = output::token_json(&t);
                v["secret"] = r.secret.into();
                print_json(&v)?;
            } else {
                eprintln!(
                    "created token {} ({}, role {}); it is shown only now:",
                    t.name, t.id, t.role
                );
                println!("{}", r.secret);
            }
        }
        TokenCommand::List { all } => {
            let r = c
                .list_tokens(pb::ListTokensRequest {
                    include_revoked: all,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if fmt == Format::Json {
                let v: Vec<_> = r.tokens.iter().map(output::token_json).collect();
                print_json(&serde_json::Value::Array(v))?;
            } else {
                print!("{}", output::token_table(&r.tokens));
            }
        }
        TokenCommand::Revoke { which } => {
            let r = c
                .revoke_token(pb::RevokeTokenRequest { token: which })
                .await
                .map_err(status_error)?
                .into_inner();
            let t = r.token.unwrap_or_default();
            println!("revoked token {} ({})", t.name, t.id);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn submit(addr: &str, fmt: Format, a: SubmitArgs) -> Result<ExitCode> {
    let timeout_ms = match &a.timeout {
        Some(t) => duration_ms("timeout", t)?,
        None => 0,
    };
    let retry = pb::RetryPolicy {
        max_retries: a.max_retries,
        initial_backoff_ms: match &a.retry_wait {
            Some(w) => Some(duration_ms("retry-wait", w)? as u64),
            None => None,
        },
        ..Default::default()
    };
    let mut spec = pb::JobSpec {
        argv: a.argv,
        env: pairs("env", &a.env)?,
        queue: a.queue,
        labels: a.labels,
        params: pairs("param", &a.params)?,
        timeout_ms,
        retry: Some(retry),
        idempotency_key: a.idempotency_key.unwrap_or_default(),
        after: a.after,
        ..Default::default()
    };
    a.flags.apply(&mut spec)?;
    let mut c = connect(addr).await?;
    let r = c
        .submit_job(pb::SubmitJobRequest { spec: Some(spec) })
        .await
        .map_err(status_error)?
        .into_inner();
    let job = r.job.unwrap_or_default();
    if fmt == Format::Json {
        let mut v = output::job_json(&job);
        v["created"] = r.created.into();
        print_json(&v)?;
    } else if r.created {
        println!("{}", job.id);
    } else {
        println!("{}", job.id);
        eprintln!("(existing job with this idempotency key)");
    }
    if !a.wait {
        return Ok(ExitCode::SUCCESS);
    }
    batch::wait_job(&mut c, &job.id, None).await
}

async fn logs(
    c: &mut JobServiceClient<AuthChannel>,
    job: String,
    follow: bool,
    attempt: u32,
    timestamps: bool,
) -> Result<()> {
    let mut stream = c
        .stream_logs(pb::StreamLogsRequest {
            job_id: job,
            attempt,
            follow,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut out = std::io::stdout().lock();
    let mut current = 0;
    let mut at_line_start = true;
    while let Some(chunk) = stream.message().await.map_err(status_error)? {
        if attempt == 0 && chunk.attempt_number != current {
            current = chunk.attempt_number;
            out.flush()?;
            eprintln!(
                "==> attempt {} ({}) <==",
                chunk.attempt_number, chunk.attempt_id
            );
        }
        if timestamps {
            let prefix = format!(
                "{} {} ",
                output::time(&chunk.time)
                    .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
                    .unwrap_or_default(),
                if chunk.stream == pb::LogStream::Stderr as i32 {
                    "err"
                } else {
                    "out"
                }
            );
            for piece in chunk.data.split_inclusive(|b| *b == b'\n') {
                if at_line_start {
                    out.write_all(prefix.as_bytes())?;
                }
                out.write_all(piece)?;
                at_line_start = piece.ends_with(b"\n");
            }
        } else {
            out.write_all(&chunk.data)?;
        }
        if follow {
            out.flush()?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Downloads one artifact, checking its size and SHA-256; a bad copy is removed.
async fn download_artifact(
    c: &mut JobServiceClient<AuthChannel>,
    job: String,
    name: String,
    out: Option<std::path::PathBuf>,
) -> Result<()> {
    use sha2::{Digest, Sha256};
    let mut stream = c
        .get_artifact(pb::GetArtifactRequest {
            job_id: job,
            name: name.clone(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let to_stdout = out.as_deref() == Some(std::path::Path::new("-"));
    let path = out.unwrap_or_else(|| {
        std::path::PathBuf::from(name.rsplit('/').next().unwrap_or(name.as_str()))
    });
    let mut sink: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        )
    };
    let mut meta = None;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(m) = stream.message().await.map_err(status_error)? {
        if meta.is_none() {
            meta = m.artifact;
        }
        hasher.update(&m.data);
        size += m.data.len() as u64;
        sink.write_all(&m.data)?;
    }
    sink.flush()?;
    drop(sink);
    let meta = meta.context("the coordinator sent no artifact metadata")?;
    let sha = format!("{:x}", hasher.finalize());
    if sha != meta.sha256 || size != meta.size {
        if !to_stdout {
            let _ = std::fs::remove_file(&path);
        }
        bail!(
            "{name}: download is corrupt ({size} bytes, sha256 {sha}; expected {} bytes, {})",
            meta.size,
            meta.sha256
        );
    }
    if !to_stdout {
        eprintln!(
            "{} ({} bytes, sha256 {} verified)",
            path.display(),
            size,
            sha
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
