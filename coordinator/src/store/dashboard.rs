//! SQL for the dashboard: sessions, reading a log from its end, stored host samples and
//! recent finishes.

use super::access::{token_from_row, TokenRow};
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
        const DELETE_EXPIRED_SESSIONS: &str =
            include_str!("sql/dashboard/delete_expired_sessions.sql");
        const DELETE_OLDEST_SESSIONS: &str =
            include_str!("sql/dashboard/delete_oldest_sessions.sql");
        const INSERT_SESSION: &str = include_str!("sql/dashboard/insert_session.sql");
        measured("create_session", async {
            let mut c = self.pool.get().await?;
            let tx = c.transaction().await?;
            // Expired sessions of anyone go here, so the table needs no sweeper.
            tx.execute_cached(DELETE_EXPIRED_SESSIONS, &[]).await?;
            tx.execute_cached(
                DELETE_OLDEST_SESSIONS,
                &[&token_id, &(MAX_SESSIONS_PER_TOKEN - 1)],
            )
            .await?;
            tx.execute_cached(
                INSERT_SESSION,
                &[&secret_hash.as_slice(), &token_id, &csrf, &expires_at],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    pub async fn session_by_hash(&self, secret_hash: &[u8; 32]) -> Result<Option<SessionRow>> {
        const SESSION_BY_HASH: &str = include_str!("sql/dashboard/session_by_hash.sql");
        measured("session_by_hash", async {
            let c = self.pool.get().await?;
            let row = c
                .query_opt_cached(SESSION_BY_HASH, &[&secret_hash.as_slice()])
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
        const DELETE_SESSION: &str = include_str!("sql/dashboard/delete_session.sql");
        measured("delete_session", async {
            let c = self.pool.get().await?;
            c.execute_cached(DELETE_SESSION, &[&secret_hash.as_slice()])
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
        const READ_LOGS_BEFORE: &str = include_str!("sql/dashboard/read_logs_before.sql");
        measured("read_logs_before", async {
            let c = self.pool.get().await?;
            let rows = c
                .query_cached(READ_LOGS_BEFORE, &[&attempt_id, &before, &limit])
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
        const WORKER_SAMPLES: &str = include_str!("sql/dashboard/worker_samples.sql");
        measured("worker_samples", async {
            let c = self.pool.get().await?;
            let rows = c
                .query_cached(WORKER_SAMPLES, &[&worker_id, &since])
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
        const FINISHED_PER_MINUTE: &str = include_str!("sql/dashboard/finished_per_minute.sql");
        measured("finished_per_minute", async {
            let c = self.pool.get().await?;
            let rows = c.query_cached(FINISHED_PER_MINUTE, &[&minutes]).await?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                .collect()
        })
        .await
    }
}
