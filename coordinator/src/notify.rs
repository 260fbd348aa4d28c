//! Notification delivery, shared by every coordinator: each claims one due message at a
//! time with `FOR UPDATE SKIP LOCKED`, sends it while holding the row lock, and records
//! the outcome in the same transaction. A coordinator that dies mid-send releases the lock
//! unrecorded, so another sends it again (at-least-once; receivers dedup by idempotency
//! key); once a success is committed the message is never sent again.

use crate::alerts::AlertsConfig;
use crate::channels::{self, Outgoing};
use crate::error::Result;
use crate::store::notifications::{self, cut};
use crate::store::Store;
use drover_core::delivery::{self, Backoff, Observed, Verdict};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub use crate::store::notifications::{AttemptRow, NotificationRow, MAX_BODY, MAX_SUBJECT};

/// Delivers due notifications until shutdown. Runs on every coordinator.
pub async fn run(
    store: Store,
    cfg: Arc<AlertsConfig>,
    coordinator_id: String,
    shutdown: CancellationToken,
) {
    // reqwest and lettre are built with ring; make it the process default too, so any
    // other rustls user in this process agrees. Err means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = match reqwest::Client::builder()
        .connect_timeout(cfg.send_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "notification delivery disabled: HTTP client");
            return;
        }
    };
    loop {
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            match deliver_one(&store, &cfg, &http, &coordinator_id).await {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "notification delivery failed");
                    break;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.dispatch_interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Claims, sends and records one due notification. False when none is due.
pub async fn deliver_one(
    store: &Store,
    cfg: &AlertsConfig,
    http: &reqwest::Client,
    coordinator_id: &str,
) -> Result<bool> {
    let mut c = store.pool().get().await?;
    let tx = c.transaction().await?;
    let Some(n) = notifications::claim_due(&tx).await? else {
        return Ok(false);
    };
    let key = n.idempotency_key.to_string();
    let observed = match cfg.channels.get(&n.channel) {
        None => Observed::Config(format!(
            "no channel named {:?} in alerts.channels",
            n.channel
        )),
        Some(ch) => {
            let out = Outgoing {
                id: n.id,
                idempotency_key: &key,
                rule: &n.rule,
                subject: &n.subject,
                body: &n.body,
            };
            // The channel's own timeouts apply; this bounds a peer that trickles bytes.
            match tokio::time::timeout(
                cfg.send_timeout * 2,
                channels::send(http, ch, &out, cfg.send_timeout),
            )
            .await
            {
                Ok(o) => o,
                Err(_) => Observed::Network("timed out".into()),
            }
        }
    };
    let verdict = delivery::classify(&observed);
    let tries = n.tries + 1;
    let (state, outcome, detail, wait) = match &verdict {
        Verdict::Delivered => ("delivered", "delivered", String::new(), None),
        Verdict::Permanent { reason } => ("dead", "permanent", reason.clone(), None),
        Verdict::Transient { reason, at_least } => {
            if tries as u32 >= cfg.max_tries {
                (
                    "dead",
                    "transient",
                    format!("gave up after {tries} tries: {reason}"),
                    None,
                )
            } else {
                let w = delivery::next_wait(
                    &cfg.backoff(),
                    tries as u32,
                    rand::random::<f64>(),
                    *at_least,
                );
                ("pending", "transient", reason.clone(), Some(w))
            }
        }
    };
    let detail = cut(&detail, 1000);
    notifications::record_try(
        &tx,
        &notifications::Try {
            id: n.id,
            coordinator_id,
            outcome,
            detail: &detail,
            state,
            tries,
            wait,
        },
    )
    .await?;
    tx.commit().await?;
    match state {
        "delivered" => {
            tracing::info!(id = n.id, channel = %n.channel, tries, "notification delivered")
        }
        "dead" => {
            tracing::warn!(id = n.id, channel = %n.channel, tries, reason = %detail, "notification dead")
        }
        _ => tracing::info!(id = n.id, channel = %n.channel, tries, reason = %detail,
            retry_in_ms = wait.map(|w| w.as_millis() as u64).unwrap_or(0), "notification will be retried"),
    }
    Ok(true)
}

impl AlertsConfig {
    pub fn backoff(&self) -> Backoff {
        Backoff {
            initial: self.backoff_initial,
            max: self.backoff_max,
            multiplier: 2.0,
        }
    }
}
