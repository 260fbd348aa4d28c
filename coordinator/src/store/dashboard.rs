//! SQL for the dashboard: sessions, reading a log from its end, stored host samples and
//! recent finishes.

use super::access::{token_from_row, TokenRow, TOKEN_COLUMNS};
use super::{measured, Cached, Store, StoredChunk};
use crate::error::Result;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A dashboard session and the token it was opened with.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub token: TokenRow,
    pub csrf: String,
    pub expires_at: DateTime<Utc>,
}

/// Sessions one token may hold at once; logging in again past this ends the oldest.
pub const MAX_SESSIONS_PER_TOKEN: i64 = 50;

impl Store {
    pub async fn create_session(
        &self,
        secret_hash: &[u8; 32],
        token_id: Uuid,
        csrf: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        measured("create_session", async {
            let mut c = self.pool.get().await?;
            let tx = c.transaction().await?;
            // Expired sessions of anyone go here, so the table needs no sweeper.
            tx.execute_cached(
                "DELETE FROM dashboard_sessions WHERE expires_at < now()",
                &[],
            )
            .await?;
            tx.execute_cached(
                "DELETE FROM dashboard_sessions WHERE secret_hash IN ( \
               SELECT secret_hash FROM dashboard_sessions WHERE token_id = $1 \
                ORDER BY created_at DESC OFFSET $2)",
                &[&token_id, &(MAX_SESSIONS_PER_TOKEN - 1)],
            )
            .await?;
            tx.execute_cached(
                "INSERT INTO dashboard_sessions (secret_hash, token_id, csrf, expires_at) \
             VALUES ($1, $2, $3, $4)",
                &[&secret_hash.as_slice(), &token_id, &csrf, &expires_at],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    pub async fn session_by_hash(&self, secret_hash: &[u8; 32]) -> Result<Option<SessionRow>> {
        measured("session_by_hash", async {
            let c = self.pool.get().await?;
            let cols = TOKEN_COLUMNS
                .split(',')
                .map(|col| format!("t.{}", col.trim()))
                .collect::<Vec<_>>()
                .join(", ");
            let row = c
                .query_opt_cached(
                    &format!(
                        "SELECT {cols}, s.csrf, s.expires_at AS session_expires_at \
                       FROM dashboard_sessions s JOIN api_tokens t ON t.id = s.token_id \
                      WHERE s.secret_hash = $1"
                    ),
                    &[&secret_hash.as_slice()],
                )
                .await?;
            row.map(|r| {
                Ok(SessionRow {
                    token: token_from_row(&r)?,
                    csrf: r.try_get("csrf")?,
                    expires_at: r.try_get("session_expires_at")?,
                })
            })
            .transpose()
        })
        .await
    }

    pub async fn delete_session(&self, secret_hash: &[u8; 32]) -> Result<()> {
        measured("delete_session", async {
            let c = self.pool.get().await?;
            c.execute_cached(
                "DELETE FROM dashboard_sessions WHERE secret_hash = $1",
                &[&secret_hash.as_slice()],
            )
            .await?;
            Ok(())
        })
        .await
    }

    /// Up to `limit` chunks of one attempt with seq < `before`, in order (the log's end
    /// first: a viewer opens a big log at its tail and reads back on demand).
    pub async fn read_logs_before(
        &self,
        attempt_id: Uuid,
        before: i64,
        limit: i64,
    ) -> Result<Vec<StoredChunk>> {
        measured("read_logs_before", async {
            let c = self.pool.get().await?;
            let rows = c
                .query_cached(
                    "SELECT seq, stream, time, data FROM log_chunks \
                  WHERE attempt_id = $1 AND seq < $2 \
                    AND log_part = (SELECT log_part FROM attempts WHERE id = $1) \
                  ORDER BY seq DESC LIMIT $3",
                    &[&attempt_id, &before, &limit],
                )
                .await?;
            let mut out = rows
                .iter()
                .map(|r| {
                    Ok(StoredChunk {
                        seq: r.try_get(0)?,
                        stream: r.try_get(1)?,
                        time: r.try_get(2)?,
                        data: r.try_get(3)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            out.reverse();
            Ok(out)
        })
        .await
    }

    /// A worker's stored resource samples (encoded drover.v1.HostResources) since `since`.
    pub async fn worker_samples(
        &self,
        worker_id: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<(DateTime<Utc>, Vec<u8>)>> {
        measured("worker_samples", async {
            let c = self.pool.get().await?;
            let rows = c
                .query_cached(
                    "SELECT at, resources FROM worker_samples \
                  WHERE worker_id = $1 AND at >= $2 ORDER BY at LIMIT 2000",
                    &[&worker_id, &since],
                )
                .await?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect()
        })
        .await
    }

    /// Jobs that reached a final state per queue and minute over the last `minutes`.
    pub async fn finished_per_minute(
        &self,
        minutes: i32,
    ) -> Result<Vec<(String, DateTime<Utc>, i64)>> {
        measured("finished_per_minute", async {
            let c = self.pool.get().await?;
            let rows = c
                .query_cached(
                    "SELECT queue, date_trunc('minute', finished_at) AS m, count(*) FROM jobs \
                  WHERE state IN ('succeeded', 'permanent_failed', 'cancelled') \
                    AND finished_at > now() - make_interval(mins => $1) \
                  GROUP BY 1, 2 ORDER BY 1, 2",
                    &[&minutes],
                )
                .await?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                .collect()
        })
        .await
    }
}
