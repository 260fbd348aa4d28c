//! The Drover coordinator: owns the job queue, attempts, leases and logs in PostgreSQL
//! and serves them over gRPC. It keeps no state that PostgreSQL does not, so several
//! coordinators can run against one database.
//!
//! - [`artifacts`] — where job output files are kept (a directory; an object store could follow).
//! - [`auth`] — access control: the rule table, tokens, the principal of a request.
//! - [`audit`] — the audit log of mutating calls.
//! - [`config`] — settings and their sources.
//! - [`db`] — connection pool, migrations, dedicated connections.
//! - [`store`] — every SQL statement (one file each, under `store/sql/`), by table group.
//! - [`health`] — AdminService: the health verdict, workers, gRPC health status.
//! - [`http`] — the HTTP listener: health probes and log downloads.
//! - [`api`] — the JSON API (`/api/v1`): the gRPC services called in-process.
//! - [`dashboard`] — the web dashboard (`/ui`) and its live updates.
//! - [`tokens_api`] — AdminService's token and audit RPCs.
//! - [`jobs_api`] / [`workers_api`] — the gRPC services; [`watch_api`] — SubmitJobs, WatchJobs, WaitJob.
//! - [`dispatch`] — pushes pending jobs to connected workers with free slots.
//! - [`leader`] — leader-only duties (lease reaper, scheduler) under an advisory lock.
//! - [`queues_api`] — QueueService: pausing and resuming queues.
//! - [`scheduler`] / [`schedules_api`] — cron schedules: the firing pass and ScheduleService.
//! - [`logs`] — reading stored logs (with cap markers).
//! - [`retention`] — deleting what is past its horizon; log partitions.
//! - [`alerts`] / [`channels`] / [`notify`] — alert rules, channels (email, webhook, Slack),
//!   notification delivery; [`alerts_api`] serves them over gRPC.
//! - [`metrics`] — Prometheus metrics.
//! - [`patterns`] — retry policies' output patterns, compiled once per process.
//! - [`listen`] — LISTEN/NOTIFY so every coordinator hears about ready jobs.
//! - [`job_watch`] — job state changes fanned out to WatchJobs and WaitJob callers.
//! - [`gate`] — notification gates: NOTIFYs sent only while someone waits for them.

pub mod alerts;
pub mod alerts_api;
pub mod api;
pub mod artifacts;
pub mod audit;
pub mod auth;
pub mod channels;
pub mod config;
pub mod convert;
pub mod dashboard;
pub mod db;
pub mod dispatch;
pub mod error;
pub mod gate;
pub mod health;
pub mod http;
pub mod job_watch;
pub mod jobs_api;
pub mod leader;
pub mod listen;
pub mod log_watch;
pub mod logs;
pub mod metrics;
pub mod notify;
pub mod paging;
pub mod patterns;
pub mod queues_api;
pub mod request_ids;
pub mod retention;
pub mod scheduler;
pub mod schedules_api;
pub mod server;
pub mod store;
pub mod tokens_api;
pub mod watch_api;
pub mod workers_api;

pub use config::Config;
pub use server::{start, Coordinator};
