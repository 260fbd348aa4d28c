//! Notification gates: NOTIFYs that only matter to someone waiting are sent only while a
//! coordinator says someone waits.
//!
//! A gate is a sequence (V31, V33) holding the time (epoch seconds, database clock) until
//! which some coordinator has a watcher open; the statements that notify check it. A
//! coordinator with watchers pushes it forward; a crashed one lets it lapse. A row written
//! while the gate was closed sent nothing, even if its transaction commits after a watcher
//! read it, so after each arming that may have followed a closed gate, [`keep`] waits until
//! every transaction running then has ended and has every watcher re-read
//! ([`Watched::resync`]).

use crate::store::Store;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long one arming keeps a gate open, how often it is renewed while a watcher is open,
/// and how close to its end this coordinator stops counting on it (clocks and delays).
const GATE_TTL: Duration = Duration::from_secs(60);
const GATE_RENEW: Duration = Duration::from_secs(15);
const GATE_MARGIN: Duration = Duration::from_secs(15);
/// First pause between checks of whether older transactions have ended; it doubles up to
/// a second, so a transaction left open for hours costs one query a second, not a hundred.
const HORIZON_POLL: Duration = Duration::from_millis(10);
const HORIZON_POLL_MAX: Duration = Duration::from_secs(1);

/// Watchers that a gate's notifications serve.
pub trait Watched: Send + Sync + 'static {
    /// Watchers open on this coordinator now.
    fn open_count(&self) -> usize;
    /// Signalled when one opens.
    fn opened(&self) -> &Notify;
    /// Has every watcher re-read what it waits for from the database.
    fn resync(&self);
}

/// Keeps `gate` armed while this coordinator has a watcher of `watch` open, and after each
/// arming that may have followed a closed gate, makes every watcher re-read once the
/// transactions that were running have ended (their rows may have been written while the
/// gate was closed).
pub async fn keep<W: Watched>(
    store: Store,
    gate: &'static str,
    watch: Arc<W>,
    shutdown: CancellationToken,
) {
    // When this coordinator last armed the gate (its own clock).
    let mut armed: Option<Instant> = None;
    loop {
        if watch.open_count() == 0 {
            tokio::select! {
                _ = watch.opened().notified() => continue,
                _ = shutdown.cancelled() => return,
            }
        }
        let lapsed = armed.is_none_or(|t| t.elapsed() + GATE_MARGIN > GATE_TTL);
        let sent = Instant::now();
        let pause = match store.arm_gate(gate, GATE_TTL.as_secs() as i64).await {
            Ok(()) => {
                armed = Some(sent);
                if lapsed {
                    tokio::spawn(resync_after_horizon(store.clone(), watch.clone()));
                }
                GATE_RENEW
            }
            Err(e) => {
                tracing::warn!(gate, error = %e, "could not arm a notification gate; retrying");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Waits until every transaction running now has ended, then has every watcher re-read.
async fn resync_after_horizon<W: Watched>(store: Store, watch: Arc<W>) {
    let mut horizon = None;
    let mut pause = HORIZON_POLL;
    loop {
        let done = match horizon {
            None => store.xact_horizon().await.map(|h| {
                horizon = Some(h);
                false
            }),
            Some(h) => store.horizon_passed(h).await,
        };
        match done {
            Ok(true) => break,
            Ok(false) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(HORIZON_POLL_MAX);
            }
            Err(e) => {
                tracing::debug!(error = %e, "notification gate: horizon check failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    watch.resync();
}
