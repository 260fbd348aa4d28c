//! `droverctl`: the operator's tool. Talks to a coordinator over the same gRPC API that
//! any program can use. Exit status: 0 on success, 1 on any error (one line on stderr),
//! 2 on a usage error; a wait for a job (`submit --wait`, `wait`) also exits 3 when the
//! job failed, 4 when it was cancelled, 5 when `--timeout` ran out (see batch.rs).

mod admin_cmd;
mod alerts_cmd;
mod batch;
#[cfg(feature = "dev")]
mod dev;
#[cfg(not(feature = "dev"))]
#[path = "dev_unavailable.rs"]
mod dev;
mod jobflags;
mod jobs_cmd;
mod output;
mod queue;
mod schedule;

use anyhow::{anyhow, bail, Result};
use clap::{Parser, Subcommand, ValueEnum};
use drover_proto::auth::{AuthChannel, BearerToken};
use drover_proto::v1 as pb;
use drover_proto::v1::job_service_client::JobServiceClient;
use std::collections::HashMap;
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
        code => {
            // An invalid request names its fields (google.rpc.BadRequest): print those as
            // `field: problem`, the same form as the message.
            use tonic_types::StatusExt;
            let fields: Vec<String> = s
                .get_details_bad_request()
                .map(|b| {
                    b.field_violations
                        .iter()
                        .map(|v| format!("{}: {}", v.field, v.description))
                        .collect()
                })
                .unwrap_or_default();
            if fields.is_empty() {
                anyhow!("{code:?}: {}", s.message())
            } else {
                anyhow!("{code:?}: {}", fields.join("; "))
            }
        }
    }
}

/// A fresh id for one mutating invocation (retry, rerun, cancel). The invocation's own
/// retries reuse it, so a call whose answer was lost is not carried out twice.
fn request_id() -> String {
    format!("droverctl:{}", uuid::Uuid::new_v4().simple())
}

/// Sends a call again (at most 3 tries in all) when it failed with UNAVAILABLE or ABORTED
/// (the coordinator went away, or an earlier try with the same request id is still
/// running). The request, and so its request_id, stays the same.
async fn with_retries<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match call().await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s)
                if tries < 3
                    && matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Aborted) =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(500 * tries)).await;
            }
            Err(s) => return Err(s),
        }
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

/// A duration flag on the wire.
fn duration(flag: &str, s: &str) -> Result<drover_proto::Duration> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| anyhow!("--{flag} {s:?}: {e} (use e.g. 30s, 5m, 2h)"))?;
    Ok(drover_proto::durations::from_std(d))
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
    let (addr, fmt) = (cli.addr.as_str(), cli.output);
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
        Command::Token(t) => admin_cmd::token_command(addr, fmt, t).await,
        Command::Audit {
            since,
            limit,
            page_token,
        } => admin_cmd::audit(addr, fmt, since, limit, page_token).await,
        Command::Certs(CertsCommand::Init {
            dir,
            hosts,
            workers,
        }) => certs_init(&dir, &hosts, &workers),
        Command::Dev(args) => {
            dev::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Submit(a) => match &a.from_file {
            Some(f) => batch::submit_file(addr, fmt, f, a.wait).await,
            None => jobs_cmd::submit(addr, fmt, *a).await,
        },
        Command::Wait { job, timeout } => batch::wait_command(addr, &job, timeout.as_deref()).await,
        Command::Failures(a) => alerts_cmd::failures(addr, fmt, a).await,
        Command::Alerts { cmd } => alerts_cmd::alerts(addr, fmt, cmd).await,
        Command::Notifications(a) => alerts_cmd::notifications(addr, fmt, a).await,
        Command::Queue { cmd } => {
            queue::run(addr, fmt, cmd).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Schedule { cmd } => {
            schedule::run(addr, fmt, cmd).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::List {
            state,
            queue,
            limit,
            page_token,
        } => jobs_cmd::list(addr, fmt, state, queue, limit, page_token).await,
        Command::Show { job } => jobs_cmd::show(addr, fmt, job).await,
        Command::Retry { job: Some(job), .. } => jobs_cmd::retry_one(addr, fmt, job).await,
        Command::Retry {
            job: None,
            state,
            queue,
            since,
            dry_run,
            limit,
            fingerprint,
        } => {
            let filter = jobs_cmd::RetryFilter {
                state,
                queue,
                since,
                dry_run,
                limit,
                fingerprint,
            };
            jobs_cmd::retry_many(addr, fmt, filter).await
        }
        Command::Rerun { job, set } => jobs_cmd::rerun(addr, fmt, job, set).await,
        Command::Cancel { job } => jobs_cmd::cancel(addr, fmt, job).await,
        Command::Health => admin_cmd::health(addr, fmt).await,
        Command::Workers => admin_cmd::workers(addr, fmt).await,
        Command::Artifacts { job, get, out } => jobs_cmd::artifacts(addr, fmt, job, get, out).await,
        Command::Logs {
            job,
            follow,
            attempt,
            timestamps,
        } => jobs_cmd::logs(addr, job, follow, attempt, timestamps).await,
    }
}

/// `certs init`: a private CA and certificates, written to `dir`.
fn certs_init(dir: &std::path::Path, hosts: &[String], workers: &[String]) -> Result<ExitCode> {
    let files = drover_transport::ca::init_dir(dir, hosts, workers)?;
    for f in files {
        println!("{}", f.display());
    }
    Ok(ExitCode::SUCCESS)
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
