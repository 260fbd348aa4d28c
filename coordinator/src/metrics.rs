//! Prometheus metrics on `/metrics`. Every metric name is defined here. Counters and
//! histograms are recorded where things happen; queue, worker and pool gauges are read at
//! scrape time, so they are exact whenever Prometheus looks.

use crate::dispatch::Dispatcher;
use crate::store::Store;
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const DURATION_BUCKETS: &[f64] = &[
    0.1,
    0.5,
    1.0,
    5.0,
    15.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4.0 * 3600.0,
    12.0 * 3600.0,
];

/// Installs the process-wide recorder once. A second coordinator in the same process
/// (tests, `droverctl dev`) shares it.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("drover_pickup_latency_seconds".into()),
                    LATENCY_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("drover_attempt_duration_seconds".into()),
                        DURATION_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("drover_store_operation_seconds".into()),
                        LATENCY_BUCKETS,
                    )
                });
            match builder.and_then(|b| b.install_recorder()) {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .as_ref()
}

pub fn job_submitted(queue: &str) {
    counter!("drover_jobs_submitted_total", "queue" => queue.to_string()).increment(1);
}

pub fn job_leased(pickup: Duration) {
    histogram!("drover_pickup_latency_seconds").record(pickup.as_secs_f64());
}

pub fn attempt_finished(outcome: &str, job_state: &str, duration: Option<Duration>) {
    counter!("drover_attempts_finished_total", "outcome" => outcome.to_string()).increment(1);
    if let Some(d) = duration {
        histogram!("drover_attempt_duration_seconds", "outcome" => outcome.to_string())
            .record(d.as_secs_f64());
    }
    if matches!(job_state, "succeeded" | "permanent_failed" | "cancelled") {
        counter!("drover_jobs_finished_total", "state" => job_state.to_string()).increment(1);
    }
}

/// Records how an attempt ended (every path that ends one calls this).
pub fn ended(e: &crate::store::Ended) {
    attempt_finished(e.attempt_state.as_str(), e.job_state.as_str(), e.duration);
}

/// One store operation finished: its latency, and (if it failed) its error kind.
pub fn store_op(op: &'static str, took: Duration, error: Option<crate::error::ErrorKind>) {
    histogram!("drover_store_operation_seconds", "op" => op).record(took.as_secs_f64());
    if let Some(kind) = error {
        counter!("drover_store_operation_errors_total", "op" => op, "kind" => kind.name())
            .increment(1);
    }
}

/// A group of `n` attempt results was ended in one transaction (group commit): results
/// divided by groups is the mean group size.
pub fn finish_group(n: usize) {
    counter!("drover_finish_groups_total").increment(1);
    counter!("drover_finish_group_results_total").increment(n as u64);
}

/// A group of `n` single submits was stored in one transaction.
pub fn submit_group(n: usize) {
    counter!("drover_submit_groups_total").increment(1);
    counter!("drover_submit_group_jobs_total").increment(n as u64);
}

pub fn log_bytes(n: u64) {
    counter!("drover_log_bytes_ingested_total").increment(n);
}

/// Renders the exposition text, after refreshing the scrape-time gauges.
pub async fn render(store: &Store, dispatcher: &Dispatcher) -> String {
    gauge!("drover_workers_connected").set(dispatcher.session_count() as f64);
    let pool = store.pool_status();
    gauge!("drover_db_pool_connections").set(pool.size as f64);
    gauge!("drover_db_pool_available").set(pool.available as f64);
    gauge!("drover_db_pool_max").set(pool.max_size as f64);
    match store.queue_stats().await {
        Ok(queues) => {
            gauge!("drover_database_up").set(1.0);
            for q in queues {
                let l = q.queue.clone();
                gauge!("drover_queue_pending", "queue" => l.clone()).set(q.pending as f64);
                gauge!("drover_queue_running", "queue" => l.clone()).set(q.running as f64);
                gauge!("drover_queue_oldest_pending_seconds", "queue" => l)
                    .set(q.oldest_due_ms.unwrap_or(0) as f64 / 1000.0);
            }
        }
        Err(_) => gauge!("drover_database_up").set(0.0),
    }
    install().map(|h| h.render()).unwrap_or_default()
}
