//! Waiting until the stack is ready, through the API.

use crate::error::{Error, Result};
use drover_proto::auth::BearerToken;
use drover_proto::v1 as pb;
use drover_proto::v1::admin_service_client::AdminServiceClient;
use std::time::{Duration, Instant, SystemTime};

/// Waits until every worker in `ids` is listed ALIVE by the coordinator at `addr` (asked
/// with `token`, which needs role viewer or above) and was heard from at or after the time
/// given with it: a worker restarted under the same id is listed ALIVE for a lease TTL after
/// its predecessor went. `check` runs between polls and may give up early (e.g. when a
/// worker process exited).
pub async fn wait_workers_alive(
    addr: &str,
    token: &str,
    ids: &[(&str, SystemTime)],
    limit: Duration,
    mut check: impl FnMut() -> Result<()>,
) -> Result<()> {
    let bearer = BearerToken::new(Some(token)).map_err(|e| Error::Invalid(e.to_string()))?;
    let channel = tonic::transport::Endpoint::from_shared(addr.to_string())
        .map_err(|e| Error::Invalid(format!("coordinator address {addr}: {e}")))?
        .connect()
        .await
        .map_err(|source| Error::Connect {
            addr: addr.to_string(),
            source,
        })?;
    let mut admin = AdminServiceClient::with_interceptor(channel, bearer);
    let deadline = Instant::now() + limit;
    loop {
        let mut listed = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = admin
                .list_workers(pb::ListWorkersRequest {
                    page_token,
                    ..Default::default()
                })
                .await
                .map_err(|source| Error::Grpc {
                    what: "listing workers".into(),
                    source,
                })?
                .into_inner();
            listed.extend(page.workers);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        let alive = ids.iter().all(|(id, since)| {
            listed.iter().any(|w| {
                w.id == *id
                    && w.state == pb::WorkerState::Alive as i32
                    && seen_since(w.last_seen_at.as_ref(), *since)
            })
        });
        if alive {
            return Ok(());
        }
        check()?;
        if Instant::now() > deadline {
            return Err(Error::Timeout(format!(
                "workers {:?} did not all connect within {limit:?}",
                ids.iter().map(|(id, _)| *id).collect::<Vec<_>>()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether `seen` (a protobuf timestamp) is at or after `since`.
fn seen_since(seen: Option<&prost_types::Timestamp>, since: SystemTime) -> bool {
    let Some(seen) = seen else {
        return false;
    };
    let since = since
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    (seen.seconds, seen.nanos) >= (since.as_secs() as i64, since.subsec_nanos() as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_since_compares_seconds_then_nanos_and_needs_a_time() {
        let since = SystemTime::UNIX_EPOCH + Duration::new(100, 500);
        let at = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
        assert!(seen_since(Some(&at(100, 500)), since));
        assert!(seen_since(Some(&at(101, 0)), since));
        assert!(!seen_since(Some(&at(100, 499)), since));
        assert!(!seen_since(Some(&at(99, 999_999_999)), since));
        assert!(!seen_since(None, since));
    }
}
