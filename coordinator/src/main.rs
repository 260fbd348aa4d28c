//! `drover-coordinator`: the control plane's binary.

use anyhow::Context;
use clap::{Parser, Subcommand};
use drover_coordinator::Config;
use figment::providers::Serialized;
use figment::Figment;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: per short job, glibc's allocator (its free-list
/// searches and consolidation) was a visible share of this process's CPU (BENCHMARKS.md,
/// session 16).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for a configuration error, so a supervisor can stop restarting
/// (systemd: RestartPreventExitStatus=78).
const EXIT_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(
    name = "drover-coordinator",
    version,
    about = "Drover coordinator: job queue and leases over gRPC"
)]
struct Cli {
    /// TOML config file.
    #[arg(long, short, env = "DROVER_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:50051].
    #[arg(long)]
    listen: Option<String>,
    /// HTTP listen address: health probes, log downloads [default: 127.0.0.1:50052].
    #[arg(long)]
    http_listen: Option<String>,
    /// PostgreSQL URL [default: postgres://postgres@127.0.0.1:5432/drover].
    #[arg(long)]
    database_url: Option<String>,
    /// Serve on a non-loopback address with access control off (warned at every start).
    #[arg(long)]
    insecure: bool,
    /// Keep succeeded jobs this long after they finished, e.g. 30d [default: 30d].
    #[arg(long, value_name = "AGE")]
    retention_succeeded: Option<String>,
    /// Keep permanently failed jobs this long [default: 90d].
    #[arg(long, value_name = "AGE")]
    retention_permanent_failed: Option<String>,
    /// Keep cancelled jobs this long [default: 30d].
    #[arg(long, value_name = "AGE")]
    retention_cancelled: Option<String>,
    /// Forget workers not seen for this long [default: 7d].
    #[arg(long, value_name = "AGE")]
    retention_workers: Option<String>,
    /// Keep workers' resource samples this long [default: 24h].
    #[arg(long, value_name = "AGE")]
    retention_samples: Option<String>,
    /// Keep logs and artifacts of finished attempts this long [default: log_retention].
    #[arg(long, value_name = "AGE")]
    retention_logs: Option<String>,
    /// Length of one log partition, 1m to 31d [default: 1d].
    #[arg(long, value_name = "AGE")]
    retention_log_partition: Option<String>,
    /// Rows per retention delete statement, 1 to 100000 [default: 500].
    #[arg(long, value_name = "N")]
    retention_batch_size: Option<u32>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gRPC API (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage API tokens directly in the database (works with no coordinator running:
    /// this is how the first admin token is made).
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it once (only its SHA-256 is stored).
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
        /// Lifetime, e.g. 90d, 12h (default: no expiry).
        #[arg(long)]
        expires: Option<String>,
    },
    /// List tokens (never their secrets).
    List {
        #[arg(long)]
        all: bool,
    },
    /// Revoke a token by id or name.
    Revoke { token: String },
}

fn overrides(cli: &Cli) -> Figment {
    let mut f = Figment::new();
    if let Some(l) = &cli.listen {
        f = f.merge(Serialized::default("listen", l));
    }
    if let Some(h) = &cli.http_listen {
        f = f.merge(Serialized::default("http_listen", h));
    }
    if let Some(u) = &cli.database_url {
        f = f.merge(Serialized::default("database_url", u));
    }
    if cli.insecure {
        f = f.merge(Serialized::default("insecure", true));
    }
    for (key, v) in [
        ("retention.succeeded", &cli.retention_succeeded),
        (
            "retention.permanent_failed",
            &cli.retention_permanent_failed,
        ),
        ("retention.cancelled", &cli.retention_cancelled),
        ("retention.workers", &cli.retention_workers),
        ("retention.samples", &cli.retention_samples),
        ("retention.logs", &cli.retention_logs),
        ("retention.log_partition", &cli.retention_log_partition),
    ] {
        if let Some(v) = v {
            f = f.merge(Serialized::default(key, v));
        }
    }
    if let Some(n) = cli.retention_batch_size {
        f = f.merge(Serialized::default("retention.batch_size", n));
    }
    f
}

fn main() -> ExitCode {
    drover_transport::install_crypto_provider();
    let cli = Cli::parse();
    let cfg = match Config::load(cli.config.as_deref(), overrides(&cli)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("drover-coordinator: bad configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Built here rather than by #[tokio::main] so `runtime_threads` can size it.
    match drover_telemetry::runtime::build(cfg.runtime_threads) {
        Ok(rt) => rt.block_on(main_async(cli, cfg)),
        Err(e) => {
            eprintln!("drover-coordinator: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn main_async(cli: Cli, cfg: Config) -> ExitCode {
    let serving = matches!(cli.command, None | Some(Command::Serve));
    if let (true, Err(e)) = (serving, cfg.check_exposure()) {
        eprintln!("drover-coordinator: refusing to start: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let log_guard = match drover_telemetry::init(
        "drover-coordinator",
        &cfg.log_format,
        cfg.log_dir.as_deref(),
    ) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("drover-coordinator: bad configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let code = match run(cli.command.unwrap_or(Command::Serve), cfg).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drover-coordinator: {e:#}");
            ExitCode::FAILURE
        }
    };
    log_guard.shutdown().await;
    code
}

async fn run(cmd: Command, cfg: Config) -> anyhow::Result<()> {
    match cmd {
        Command::Migrate => {
            let n = drover_coordinator::db::migrate(&cfg.database_url)
                .await
                .context("applying migrations")?;
            println!("applied {n} migration(s)");
            Ok(())
        }
        Command::Token(t) => token(t, &cfg).await,
        Command::Serve => {
            // SIGHUP reloads the TLS files (in `start`); without TLS it must not end the
            // process (its default), so that `systemctl reload` is always safe.
            if let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            {
                let tls = cfg.server_tls().is_some();
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        if !tls {
                            tracing::info!("SIGHUP: TLS is off, nothing to reload");
                        }
                    }
                });
            }
            let c = drover_coordinator::start(cfg).await?;
            // Tests and scripts that bind port 0 read the address from this line.
            let scheme = if c.tls { "https" } else { "http" };
            println!("DROVER_ADDR={scheme}://{}", c.addr);
            println!("DROVER_HTTP={scheme}://{}", c.http_addr);
            // Migrations ran and both listeners are bound.
            drover_telemetry::sdnotify::ready();
            main_loop().await;
            tracing::info!("shutting down");
            drover_telemetry::sdnotify::stopping();
            c.shutdown().await;
            Ok(())
        }
    }
}

async fn token(cmd: TokenCommand, cfg: &Config) -> anyhow::Result<()> {
    use drover_coordinator::tokens_api::{create_token, TokenSpec};
    drover_coordinator::db::migrate(&cfg.database_url)
        .await
        .context("applying migrations")?;
    let store =
        drover_coordinator::store::Store::new(drover_coordinator::db::pool(&cfg.database_url, 2)?);
    match cmd {
        TokenCommand::Create {
            name,
            role,
            queues,
            worker,
            expires,
        } => {
            let expires_in_secs = match expires {
                Some(e) => drover_core::auth::parse_lifetime(&e)
                    .map_err(|m| anyhow::anyhow!("--expires: {m}"))?
                    .as_secs(),
                None => 0,
            };
            let spec = TokenSpec {
                name,
                role,
                queues,
                worker_pattern: worker.unwrap_or_default(),
                expires_in_secs,
            };
            let (row, secret) = create_token(&store, &spec).await?;
            eprintln!(
                "created token {} ({}, role {}); it is shown only now:",
                row.name, row.id, row.role
            );
            println!("{secret}");
        }
        TokenCommand::List { all } => {
            for t in store.list_tokens(all).await? {
                println!(
                    "{}\t{}\t{}\t{}{}",
                    t.id,
                    t.name,
                    t.role,
                    if t.worker_pattern.is_empty() {
                        t.queues.join(",")
                    } else {
                        t.worker_pattern.clone()
                    },
                    if t.revoked_at.is_some() {
                        "\trevoked"
                    } else {
                        ""
                    }
                );
            }
        }
        TokenCommand::Revoke { token } => {
            let id = uuid::Uuid::parse_str(&token).ok();
            let row = store.revoke_token(id, &token).await?;
            println!("revoked token {} ({})", row.name, row.id);
        }
    }
    Ok(())
}

/// Waits for SIGTERM or SIGINT, sending systemd's watchdog keep-alive meanwhile when
/// `WatchdogSec` is set: if this loop stops being scheduled, systemd restarts the process.
async fn main_loop() {
    let signal = shutdown_signal();
    tokio::pin!(signal);
    let Some(every) = drover_telemetry::sdnotify::watchdog_interval() else {
        return signal.await;
    };
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = &mut signal => return,
            _ = tick.tick() => {
                drover_telemetry::sdnotify::watchdog();
            }
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
