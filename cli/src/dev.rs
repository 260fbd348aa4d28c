//! `droverctl dev`: a whole local stack in one command, for trying Drover out.
//!
//! Without `DATABASE_URL`, a private PostgreSQL is started from the machine's server
//! binaries under `<data-dir>/pg` (kept between runs). The coordinator and one worker run
//! inside this process; Ctrl-C stops the worker, the coordinator and PostgreSQL.

use anyhow::{Context, Result};
use drover_proto::v1 as pb;
use drover_proto::v1::job_service_client::JobServiceClient;
use drover_stack::Server;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args)]
pub struct DevArgs {
    /// Where the private database, worker state and work directories live.
    #[arg(long, default_value = ".drover-dev")]
    data_dir: PathBuf,
    /// gRPC listen address of the coordinator.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// HTTP listen address of the coordinator (health, log downloads).
    #[arg(long, default_value = "127.0.0.1:50052")]
    http_listen: SocketAddr,
    /// Worker slots.
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// Do not submit the sample job.
    #[arg(long)]
    no_sample: bool,
    /// Stop once the sample job finished (for scripted checks).
    #[arg(long)]
    exit_after_sample: bool,
}

pub async fn run(args: DevArgs) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,drover_coordinator=info,drover_worker=info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = args
        .data_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", args.data_dir.display()))?;

    let server = Server::start(&data_dir.join("pg"))
        .await
        .context("starting a private PostgreSQL (or set DATABASE_URL)")?;
    let database_url = match &server {
        Server::Private(pg) => {
            pg.create_database("drover")
                .await
                .context("creating database drover")?;
            pg.url("drover")
        }
        // DATABASE_URL names the database itself.
        Server::External { admin_url } => admin_url.clone(),
    };

    let result = serve(&args, &data_dir, &database_url).await;
    if let Err(e) = server.stop().await {
        eprintln!("droverctl: stopping PostgreSQL: {e}");
    }
    result
}

async fn serve(args: &DevArgs, data_dir: &std::path::Path, database_url: &str) -> Result<()> {
    let coordinator = drover_coordinator::start(drover_coordinator::Config {
        listen: args.listen,
        http_listen: args.http_listen,
        database_url: database_url.to_string(),
        artifact_dir: data_dir.join("artifacts"),
        ..Default::default()
    })
    .await
    .context("starting the coordinator")?;
    let addr = format!("http://{}", coordinator.addr);
    let (admin_token, worker_token) = dev_tokens(database_url, data_dir).await?;

    let worker_cfg = drover_worker::Config {
        coordinator: vec![addr.clone()],
        state_dir: data_dir.join("worker"),
        slots: args.slots,
        worker_id: DEV_WORKER.into(),
        token: Some(worker_token),
        // The queues the README's examples use.
        queues: DEV_QUEUES.iter().map(|q| q.to_string()).collect(),
        ..Default::default()
    };
    let stop_worker = CancellationToken::new();
    let worker = tokio::spawn(drover_worker::run(worker_cfg, stop_worker.clone()));

    println!("Drover dev stack is running. Ctrl-C stops it.\n");
    println!("  DROVER_ADDR={addr}");
    println!("  DROVER_TOKEN={admin_token}");
    println!(
        "  (admin token, also in {}; a new one each start)",
        data_dir.join(ADMIN_TOKEN_FILE).display()
    );
    println!(
        "  HTTP:       http://{}  (/healthz, /readyz, /jobs/JOB_ID/logs)",
        coordinator.http_addr
    );
    println!("  database:   {database_url}");
    println!("\nIn another shell:");
    // `cargo run` puts droverctl on no PATH: name the directory it runs from.
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.to_path_buf()))
    {
        println!("  export PATH={}:$PATH", dir.display());
    }
    println!("  export DROVER_ADDR={addr}");
    println!("  export DROVER_TOKEN={admin_token}");
    println!("  droverctl submit --param date=2026-11-22 -- echo fetching {{date}}");
    println!("  droverctl list");
    println!("  droverctl show JOB_ID");
    println!("  droverctl logs JOB_ID --follow");
    println!("  droverctl health; droverctl workers\n");

    let sample = if args.no_sample {
        None
    } else {
        Some(tokio::spawn(sample_job(addr.clone(), admin_token.clone())))
    };

    if args.exit_after_sample {
        if let Some(s) = sample {
            s.await??;
        }
    } else {
        tokio::signal::ctrl_c().await?;
        println!("\nstopping...");
    }
    stop_worker.cancel();
    match tokio::time::timeout(Duration::from_secs(30), worker).await {
        Ok(Ok(Err(e))) => eprintln!("droverctl: worker: {e}"),
        Ok(Err(e)) => eprintln!("droverctl: worker task: {e}"),
        Err(_) => eprintln!("droverctl: worker did not stop within 30s"),
        Ok(Ok(Ok(()))) => {}
    }
    coordinator.shutdown().await;
    Ok(())
}

/// Queues the dev stack's worker takes: those the README's examples use.
const DEV_QUEUES: &[&str] = &["default", "scrape", "compute"];

const DEV_WORKER: &str = "dev-worker";
const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Access control stays on in the dev stack: a fresh admin token for the operator and a
/// worker token bound to the dev worker's id. Tokens of an earlier run are revoked.
async fn dev_tokens(database_url: &str, data_dir: &std::path::Path) -> Result<(String, String)> {
    use drover_stack::tokens::{replace, Grant};
    let admin = replace(database_url, &Grant::new("dev-admin", "admin", ""))
        .await
        .context("creating the dev-admin token")?;
    let worker = replace(
        database_url,
        &Grant::new("dev-worker", "worker", DEV_WORKER),
    )
    .await
    .context("creating the dev-worker token")?;
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        writeln!(f, "{admin}")?;
    }
    Ok((admin, worker))
}

/// Submits a small job that shows params, stdout and stderr, then prints its outcome.
async fn sample_job(addr: String, token: String) -> Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(addr)?
        .connect()
        .await?;
    let bearer = drover_proto::auth::BearerToken::new(Some(&token)).map_err(anyhow::Error::msg)?;
    let mut c = JobServiceClient::with_interceptor(channel, bearer);
    let spec = pb::JobSpec {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "echo \"fetching {data_types} for {date} on $(hostname)\"; echo 'a warning' >&2; sleep 1; echo done".into(),
        ],
        params: [
            ("date".to_string(), "2026-11-22".to_string()),
            ("data_types".to_string(), "racecards,odds".to_string()),
        ]
        .into(),
        ..Default::default()
    };
    let job = c
        .submit_job(pb::SubmitJobRequest { spec: Some(spec) })
        .await?
        .into_inner()
        .job
        .unwrap_or_default();
    println!("sample job submitted: {}", job.id);
    let mut logs = c
        .stream_logs(pb::StreamLogsRequest {
            job_id: job.id.clone(),
            attempt: 0,
            follow: true,
        })
        .await?
        .into_inner();
    while let Some(chunk) = logs.message().await?.and_then(|r| r.chunk) {
        for line in String::from_utf8_lossy(&chunk.data).lines() {
            println!("  [sample] {line}");
        }
    }
    let j = c
        .get_job(pb::GetJobRequest { id: job.id.clone() })
        .await?
        .into_inner()
        .job
        .unwrap_or_default();
    println!(
        "sample job {}: {} ({})",
        j.id,
        crate::output::job_state(j.state),
        j.reason
    );
    Ok(())
}
