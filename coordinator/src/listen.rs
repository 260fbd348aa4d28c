//! LISTEN for jobs becoming ready, so a submit to (or a retry on) another coordinator
//! wakes this coordinator's dispatcher at once.

use crate::dispatch::Dispatcher;
use crate::job_watch::{parse_payload, JobEvent, STATES_CHANNEL};
use crate::log_watch::LOGS_CHANNEL;
use crate::store::{CONTROL_CHANNEL, JOBS_CHANNEL};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

pub async fn run(database_url: String, dispatcher: Arc<Dispatcher>, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        match listen_once(&database_url, &dispatcher, &shutdown).await {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(e) => tracing::debug!(error = %e, "LISTEN connection failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn listen_once(
    url: &str,
    dispatcher: &Dispatcher,
    shutdown: &CancellationToken,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut conn) = tokio_postgres::connect(url, NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let logs = dispatcher.logs.clone();
    let jobs = dispatcher.jobs.clone();
    // The connection must be polled for notifications to arrive.
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) if n.channel() == LOGS_CHANNEL => {
                    if let Ok(job) = uuid::Uuid::parse_str(n.payload()) {
                        logs.notify(job);
                    }
                }
                Ok(AsyncMessage::Notification(n)) if n.channel() == STATES_CHANNEL => {
                    if let Some(e) = parse_payload(n.payload()) {
                        jobs.publish(e);
                    }
                }
                Ok(AsyncMessage::Notification(n)) => {
                    if n.channel() == JOBS_CHANNEL {
                        logs.notify_jobs();
                    }
                    let order = (n.channel() == CONTROL_CHANNEL).then(|| n.payload().to_string());
                    if tx.send(order).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    client
        .batch_execute(&format!(
            "LISTEN {JOBS_CHANNEL}; LISTEN {CONTROL_CHANNEL}; LISTEN {LOGS_CHANNEL}; \
             LISTEN {STATES_CHANNEL}"
        ))
        .await?;
    // Anything that happened while we were not listening.
    dispatcher.wake();
    dispatcher.jobs.publish(JobEvent::Resync);
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some(None) => dispatcher.wake(),
                Some(Some(order)) => control(dispatcher, &order),
                None => break,
            },
            _ = shutdown.cancelled() => break,
        }
    }
    driver.abort();
    Ok(())
}

/// Carries out an order from the control channel: `cancel <attempt_id> <worker_id>`.
fn control(dispatcher: &Dispatcher, order: &str) {
    let parts: Vec<&str> = order.split(' ').collect();
    if let ["cancel", attempt, worker] = parts.as_slice() {
        if let Ok(id) = uuid::Uuid::parse_str(attempt) {
            let msg = crate::workers_api::stop_msg(
                id,
                tonic::Code::Cancelled,
                "job cancelled by operator",
            );
            if dispatcher.stop_attempt(worker, msg) {
                tracing::info!(attempt_id = %id, worker_id = %worker, "sent cancel to worker");
            }
        }
    } else {
        tracing::warn!(%order, "unknown control order");
    }
}
