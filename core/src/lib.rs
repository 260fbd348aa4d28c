//! Drover's domain logic, free of gRPC and SQL so it can be tested as pure functions.
//!
//! - [`auth`] — roles, rights, worker-id patterns and token forms for access control.
//! - [`state`] — job and attempt states, and a worker's state from when it was last heard from.
//! - [`retry`] — the retry policy: classify how an attempt ended, then decide what happens next.
//! - [`transition`] — what ending an attempt does (attempt and job state, wait, reason, event).
//! - [`limits`] — per-job resource limits and the sizes they are written in.
//! - [`flow`] — concurrency keys and their limits.
//! - [`idempotency`] — whether a reused idempotency key carries the same submission.
//! - [`logcap`] — the per-attempt log size cap (head and tail kept).
//! - [`paging`] — bounding a page of results by bytes as well as count.
//! - [`protocol`] — the worker protocol version and which versions a coordinator accepts.
//! - [`params`] — `{name}` placeholder substitution in argv.
//! - [`fingerprint`] — failure fingerprints: normalised output tails that group failures by cause.
//! - [`alerting`] — alert rules, matching and storm folding.
//! - [`delivery`] — classifying a notification send's outcome, and its backoff.
//! - [`duration`] — durations as people write them in configuration (`8s`, `7d`).
//! - [`config_load`] — layered settings (file, environment, flags); errors name key and file.
//! - [`jobguard`] — worker-side defence: program allowlist, inherited environment, secret masking.
//! - [`retention`] — how long finished jobs are kept; time partitions of the log store.
//! - [`schedule`] — cron fire times in a time zone and the catch-up policy.
//! - [`validate`] — limits and checks on submitted job specs, with errors naming the field.

pub mod alerting;
pub mod auth;
pub mod config_load;
pub mod delivery;
pub mod duration;
pub mod fingerprint;
pub mod flow;
pub mod idempotency;
pub mod jobguard;
pub mod limits;
pub mod logcap;
pub mod paging;
pub mod params;
pub mod protocol;
pub mod retention;
pub mod retry;
pub mod schedule;
pub mod state;
pub mod transition;
pub mod validate;

pub use limits::ResourceLimits;
pub use retry::{
    classify, decide, Classification, Next, Patterns, PolicyOverrides, RawResult, RetryPolicy,
};
pub use state::{worker_state, AttemptState, JobState, WorkerState};
pub use transition::{transition, Counts, Transition};
pub use validate::{JobSpec, ValidationError};
