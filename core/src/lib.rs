//! Drover's domain logic, free of gRPC and SQL so it can be tested as pure functions.
//!
//! - [`state`] — job and attempt states.
//! - [`retry`] — the retry policy: classify how an attempt ended, then decide what happens next.
//! - [`flow`] — concurrency keys and their limits.
//! - [`logcap`] — the per-attempt log size cap (head and tail kept).
//! - [`params`] — `{name}` placeholder substitution in argv.
//! - [`schedule`] — cron fire times in a time zone and the catch-up policy.
//! - [`validate`] — limits and checks on submitted job specs, with errors naming the field.

pub mod flow;
pub mod logcap;
pub mod params;
pub mod retry;
pub mod schedule;
pub mod state;
pub mod validate;

pub use retry::{classify, decide, Classification, Next, PolicyOverrides, RawResult, RetryPolicy};
pub use state::{AttemptState, JobState};
pub use validate::{JobSpec, ValidationError};
