//! The scheduling pass, run by the leader: fires due schedule ticks. Exactly-once does not
//! rest on there being one leader — the store's unique (schedule, fire time) row does — so
//! a second coordinator that briefly believes it leads only finds nothing to do.

use crate::dispatch::Dispatcher;
use crate::error::Error;
use crate::store::Store;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Schedules handled per pass; the rest wait for the next pass.
const PER_PASS: i64 = 200;

pub async fn run(
    store: Store,
    dispatcher: std::sync::Arc<Dispatcher>,
    interval: Duration,
    grace: Duration,
    stop: CancellationToken,
) {
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    loop {
        match pass(&store, grace).await {
            Ok(0) => {}
            Ok(_) => dispatcher.wake(),
            Err(e) => tracing::warn!(error = %e, "scheduling pass failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// One pass over every schedule with work to do; returns the number of jobs created.
pub async fn pass(store: &Store, grace: chrono::Duration) -> Result<usize, Error> {
    let mut fired = 0;
    for name in store.schedules_due(PER_PASS).await? {
        match store.run_schedule(&name, grace).await {
            Ok(r) => {
                fired += r.fired;
                if r.fired > 0 || r.skipped > 0 || r.dropped > 0 {
                    tracing::info!(schedule = %name, fired = r.fired, skipped = r.skipped,
                        dropped = r.dropped, "schedule ticks handled");
                }
            }
            // Handled concurrently by someone else: nothing was written.
            Err(e) if e.kind() == crate::error::ErrorKind::Aborted => {
                tracing::debug!(schedule = %name, "{e}")
            }
            Err(e) => tracing::warn!(schedule = %name, error = %e, "schedule pass failed"),
        }
    }
    Ok(fired)
}
