//! `drover-worker`: the agent that runs jobs on one host.

use clap::Parser;
use drover_worker::Config;
use figment::providers::Serialized;
use figment::Figment;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

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
    name = "drover-worker",
    version,
    about = "Drover worker agent: runs jobs as child processes"
)]
struct Cli {
    /// TOML config file.
    #[arg(long, short, env = "DROVER_WORKER_CONFIG")]
    config: Option<PathBuf>,
    /// Coordinator address (repeatable, or comma-separated: tried in order, the next one
    /// taken when the current one is unreachable) [default: http://127.0.0.1:50051].
    #[arg(long = "coordinator")]
    coordinator: Vec<String>,
    /// Stable worker id [default: kept in <state-dir>/worker-id].
    #[arg(long)]
    worker_id: Option<String>,
    /// State directory [default: /var/lib/drover-worker].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Concurrent jobs [default: one per CPU].
    #[arg(long)]
    slots: Option<u32>,
    /// Jobs held beyond the slots, started as slots free [default: 0].
    #[arg(long)]
    lease_ahead: Option<u32>,
    /// Queue to take jobs from (repeatable) [default: default].
    #[arg(long = "queue")]
    queues: Vec<String>,
    /// Label this worker offers (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// File holding the worker's token (or set DROVER_WORKER_TOKEN / DROVER_WORKER_TOKEN_FILE).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify an https:// coordinator with.
    #[arg(long)]
    ca_file: Option<PathBuf>,
}

fn overrides(cli: &Cli) -> Figment {
    let mut f = Figment::new();
    if !cli.coordinator.is_empty() {
        let list =
            drover_worker::config::split_addresses(cli.coordinator.iter().map(|s| s.as_str()));
        f = f.merge(Serialized::default("coordinator", list));
    }
    if let Some(v) = &cli.worker_id {
        f = f.merge(Serialized::default("worker_id", v));
    }
    if let Some(v) = &cli.state_dir {
        f = f.merge(Serialized::default("state_dir", v));
    }
    if let Some(v) = cli.slots {
        f = f.merge(Serialized::default("slots", v));
    }
    if let Some(v) = cli.lease_ahead {
        f = f.merge(Serialized::default("lease_ahead", v));
    }
    if !cli.queues.is_empty() {
        f = f.merge(Serialized::default("queues", &cli.queues));
    }
    if let Some(v) = &cli.ca_file {
        f = f.merge(Serialized::default("ca_file", v));
    }
    if !cli.labels.is_empty() {
        f = f.merge(Serialized::default("labels", &cli.labels));
    }
    if let Some(v) = &cli.token_file {
        f = f.merge(Serialized::default("token_file", v));
    }
    f
}

fn main() -> ExitCode {
    drover_transport::install_crypto_provider();
    let cli = Cli::parse();
    let cfg = match Config::load(cli.config.as_deref(), overrides(&cli)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("drover-worker: bad configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Built here rather than by #[tokio::main] so `runtime_threads` can size it.
    match drover_telemetry::runtime::build(cfg.runtime_threads) {
        Ok(rt) => rt.block_on(main_async(cfg)),
        Err(e) => {
            eprintln!("drover-worker: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn main_async(cfg: Config) -> ExitCode {
    let log_guard =
        match drover_telemetry::init("drover-worker", &cfg.log_format, cfg.log_dir.as_deref()) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("drover-worker: bad configuration: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    // The main loop: waits for SIGTERM/SIGINT (then drains), and meanwhile sends systemd's
    // watchdog keep-alive when `WatchdogSec` is set.
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let signalled = async {
            if let Ok(mut term) = signal(SignalKind::terminate()) {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            } else {
                let _ = tokio::signal::ctrl_c().await;
            }
        };
        tokio::pin!(signalled);
        match drover_telemetry::sdnotify::watchdog_interval() {
            None => signalled.await,
            Some(every) => {
                let mut tick = tokio::time::interval(every);
                loop {
                    tokio::select! {
                        _ = &mut signalled => break,
                        _ = tick.tick() => {
                            drover_telemetry::sdnotify::watchdog();
                        }
                    }
                }
            }
        }
        drover_telemetry::sdnotify::stopping();
        s.cancel();
    });
    let code = match drover_worker::run(cfg, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drover-worker: {e}");
            ExitCode::FAILURE
        }
    };
    log_guard.shutdown().await;
    code
}
