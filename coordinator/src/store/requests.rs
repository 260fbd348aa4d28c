//! SQL for request ids: the first result of a mutating call, kept so that a repeat of the
//! call (same caller, method and id) returns it instead of acting twice.

use super::{measured, Cached};
use crate::error::Result;

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The id is new: this call is the first and must act, then [`Store::finish_request`].
    New,
    /// A call with this id ran before (or is running: `response` None).
    Seen {
        fingerprint: String,
        response: Option<Vec<u8>>,
    },
}

impl super::Store {
    /// Claims `request_id` for this call, or returns what an earlier call with it left.
    pub async fn claim_request(
        &self,
        caller: &str,
        method: &str,
        request_id: &str,
        fingerprint: &str,
    ) -> Result<Claim> {
        measured("claim_request", async {
            let c = self.pool.get().await?;
            let inserted = c
                .execute_cached(
                    include_str!("sql/requests/claim_request.sql"),
                    &[&caller, &method, &request_id, &fingerprint],
                )
                .await?;
            if inserted == 1 {
                return Ok(Claim::New);
            }
            let row = c
                .query_opt_cached(
                    include_str!("sql/requests/request_by_id.sql"),
                    &[&caller, &method, &request_id],
                )
                .await?;
            match row {
                Some(r) => Ok(Claim::Seen {
                    fingerprint: r.try_get(0)?,
                    response: r.try_get(1)?,
                }),
                // Deleted in between (the first call failed): treat as running; the
                // caller retries.
                None => Ok(Claim::Seen {
                    fingerprint: fingerprint.to_string(),
                    response: None,
                }),
            }
        })
        .await
    }

    /// Stores the response of the call that claimed `request_id`.
    pub async fn finish_request(
        &self,
        caller: &str,
        method: &str,
        request_id: &str,
        response: &[u8],
    ) -> Result<()> {
        measured("finish_request", async {
            let c = self.pool.get().await?;
            c.execute_cached(
                include_str!("sql/requests/finish_request.sql"),
                &[&caller, &method, &request_id, &response],
            )
            .await?;
            Ok(())
        })
        .await
    }

    /// Gives up a claim whose call failed, so that a retry with the same id acts.
    pub async fn release_request(
        &self,
        caller: &str,
        method: &str,
        request_id: &str,
    ) -> Result<()> {
        measured("release_request", async {
            let c = self.pool.get().await?;
            c.execute_cached(
                include_str!("sql/requests/release_request.sql"),
                &[&caller, &method, &request_id],
            )
            .await?;
            Ok(())
        })
        .await
    }

    /// Deletes request ids older than `horizon`, at most `batch` rows; returns how many.
    pub async fn delete_old_request_ids(
        &self,
        horizon: std::time::Duration,
        batch: i64,
    ) -> Result<u64> {
        measured("delete_old_request_ids", async {
            let c = self.pool.get().await?;
            let secs = horizon.as_secs_f64();
            Ok(c.execute_cached(
                include_str!("sql/requests/delete_old_request_ids.sql"),
                &[&secs, &batch],
            )
            .await?)
        })
        .await
    }
}
