//! The Drover worker agent: keeps a session with a coordinator, runs the jobs it is
//! given as child processes, and delivers their output and results.
//!
//! - [`agent`] — the session and the per-attempt tasks.
//! - [`containment`] — a cgroup per attempt or slot (or a subreaper): nothing a job starts outlives it.
//! - [`jobsetup`] — what a job starts with: allowed program, minimal environment, user, secrets.
//! - [`outputs`] — finding and hashing a job's declared output files.
//! - [`process`] — running one program in its own process group (timeouts, stop).
//! - [`resources`] — host and per-job resource samples; thresholds that pause the worker.
//! - [`slots`] — per-slot work directories and group files, reused from attempt to attempt.
//! - [`spawn`] — starting a job's process without `fork()` (a vfork-style clone), and its handle.
//! - [`spool`] — the local on-disk log spool between the child and the network.
//! - [`state_dir`] — the worker's stable id and its directories.
//! - [`config`] — settings.

pub mod agent;
pub mod config;
pub mod containment;
pub mod jobsetup;
pub mod outputs;
pub mod process;
pub mod resources;
pub mod slots;
pub mod spawn;
pub mod spool;
pub mod state_dir;

pub use config::Config;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Agent(#[from] agent::AgentError),
    #[error("state directory {0}: {1}")]
    StateDir(std::path::PathBuf, std::io::Error),
}

/// Runs the worker until `shutdown`, then hands back running attempts and returns.
pub async fn run(
    cfg: Config,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), RunError> {
    let io = |e| RunError::StateDir(cfg.state_dir.clone(), e);
    let worker_id = if cfg.worker_id.is_empty() {
        state_dir::worker_id(&cfg.state_dir).map_err(io)?
    } else {
        cfg.worker_id.clone()
    };
    // Whatever a previous run left running or on disk belongs to attempts that are lost
    // anyway (the coordinator marks them so when we say hello).
    let killed = state_dir::kill_leftover_groups(&cfg.pids_dir()).map_err(io)?;
    if killed > 0 {
        tracing::warn!(
            killed,
            "killed jobs left running by a previous run of this worker"
        );
    }
    let stale = state_dir::reset_dir(&cfg.work_root()).map_err(io)?
        + state_dir::reset_dir(&cfg.spool_dir()).map_err(io)?;
    if stale > 0 {
        tracing::info!(
            removed = stale,
            "removed work directories left by a previous run"
        );
    }
    if cfg.run_as_user.is_some() {
        // The run_as user must reach its own work directory (mode 0700, its own) below.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(cfg.work_root(), std::fs::Permissions::from_mode(0o711))
            .map_err(io)?;
    }
    let containment = if cfg.containment == "subreaper" {
        containment::Containment::subreaper_only()
    } else {
        containment::Containment::detect(&worker_id, &cfg.state_dir, cfg.cgroup_favordynmods)
    };
    let leftovers = containment.remove_leftovers();
    if leftovers > 0 {
        tracing::warn!(
            removed = leftovers,
            "killed and removed attempt cgroups left by a previous run"
        );
    }
    tracing::info!(%worker_id, coordinator = %cfg.coordinator.join(","), slots = cfg.slots(),
        containment = %containment.describe(), "worker starting");
    let agent = agent::Agent::new(cfg, worker_id, containment)?;
    agent.run(shutdown).await;
    Ok(())
}
