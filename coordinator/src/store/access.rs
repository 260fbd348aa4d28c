//! SQL for access control: API tokens and the audit log.

use super::outbox::NOTIFY;
use super::{measured, Cached, Store};
use crate::error::{Error, Result};
use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct TokenRow {
    pub id: Uuid,
    pub name: String,
    pub role: String,
    pub queues: Vec<String>,
    pub worker_pattern: String,
    pub token_hash: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A token to store; the caller made the secret and hashed it.
pub struct NewToken {
    pub name: String,
    pub role: String,
    pub queues: Vec<String>,
    pub worker_pattern: String,
    pub token_hash: [u8; 32],
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct AuditRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub role: String,
    pub method: String,
    pub target: String,
    pub peer: String,
    pub outcome: String,
}

pub(super) fn token_from_row(r: &Row) -> Result<TokenRow> {
    Ok(TokenRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        role: r.try_get("role")?,
        queues: r.try_get("queues")?,
        worker_pattern: r.try_get("worker_pattern")?,
        token_hash: r.try_get("token_hash")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        last_used_at: r.try_get("last_used_at")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}

impl Store {
    /// The token with this SHA-256, revoked or not (one lookup in a unique index).
    pub async fn token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<TokenRow>> {
        const TOKEN_BY_HASH: &str = include_str!("sql/access/token_by_hash.sql");
        measured("token_by_hash", async {
            let c = self.pool.get().await?;
            let row = c
                .query_opt_cached(TOKEN_BY_HASH, &[&hash.as_slice()])
                .await?;
            row.as_ref().map(token_from_row).transpose()
        })
        .await
    }

    /// Whether the token is neither revoked nor expired (for long-lived worker sessions,
    /// which authenticated once when they opened).
    pub async fn token_is_live(&self, id: Uuid) -> Result<bool> {
        const TOKEN_IS_LIVE: &str = include_str!("sql/access/token_is_live.sql");
        measured("token_is_live", async {
            let c = self.pool.get().await?;
            let row = c.query_opt_cached(TOKEN_IS_LIVE, &[&id]).await?;
            Ok(row.is_some())
        })
        .await
    }

    pub async fn touch_token(&self, id: Uuid) -> Result<()> {
        const TOUCH_TOKEN: &str = include_str!("sql/access/touch_token.sql");
        measured("touch_token", async {
            let c = self.pool.get().await?;
            c.execute_cached(TOUCH_TOKEN, &[&id]).await?;
            Ok(())
        })
        .await
    }

    /// Stores a token; FAILED_PRECONDITION if a live token already has the name.
    pub async fn insert_token(&self, t: &NewToken) -> Result<TokenRow> {
        const INSERT_TOKEN: &str = include_str!("sql/access/insert_token.sql");
        measured("insert_token", async {
            let c = self.pool.get().await?;
            let r = c
                .query_one_cached(
                    INSERT_TOKEN,
                    &[
                        &Uuid::now_v7(),
                        &t.name,
                        &t.role,
                        &t.queues,
                        &t.worker_pattern,
                        &t.token_hash.as_slice(),
                        &t.expires_at,
                    ],
                )
                .await;
            match r {
                Ok(r) => token_from_row(&r),
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                    Err(Error::FailedPrecondition(format!(
                        "name: a token named {:?} exists already; revoke it or pick another name",
                        t.name
                    )))
                }
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    pub async fn list_tokens(&self, include_revoked: bool) -> Result<Vec<TokenRow>> {
        const LIST_TOKENS: &str = include_str!("sql/access/list_tokens.sql");
        measured("list_tokens", async {
            let c = self.pool.get().await?;
            let rows = c.query_cached(LIST_TOKENS, &[&include_revoked]).await?;
            rows.iter().map(token_from_row).collect()
        })
        .await
    }

    /// Revokes the live token with this id or name, and tells every coordinator to forget
    /// its cached copy (NOTIFY, in the same transaction).
    pub async fn revoke_token(&self, id: Option<Uuid>, name: &str) -> Result<TokenRow> {
        const REVOKE_TOKEN: &str = include_str!("sql/access/revoke_token.sql");
        measured("revoke_token", async {
            let mut c = self.pool.get().await?;
            let tx = c.transaction().await?;
            let row = tx
                .query_opt_cached(REVOKE_TOKEN, &[&id, &name])
                .await?
                .ok_or_else(|| {
                    Error::NotFound(format!(
                        "token: no live token with id or name {:?}",
                        id.map(|i| i.to_string())
                            .unwrap_or_else(|| name.to_string())
                    ))
                })?;
            tx.execute_cached(
                NOTIFY,
                &[
                    &crate::auth::TOKENS_CHANNEL,
                    &row.get::<_, Uuid>("id").to_string(),
                ],
            )
            .await?;
            tx.commit().await?;
            token_from_row(&row)
        })
        .await
    }

    /// Audit entries newest first, after `before_id` (a page token), at most `limit`.
    pub async fn list_audit(
        &self,
        since: Option<DateTime<Utc>>,
        before_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditRow>> {
        const LIST_AUDIT: &str = include_str!("sql/access/list_audit.sql");
        measured("list_audit", async {
            let c = self.pool.get().await?;
            let rows = c
                .query_cached(LIST_AUDIT, &[&since, &before_id, &limit])
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(AuditRow {
                        id: r.try_get(0)?,
                        at: r.try_get(1)?,
                        actor: r.try_get(2)?,
                        role: r.try_get(3)?,
                        method: r.try_get(4)?,
                        target: r.try_get(5)?,
                        peer: r.try_get(6)?,
                        outcome: r.try_get(7)?,
                    })
                })
                .collect()
        })
        .await
    }

    /// Deletes up to `limit` audit entries older than `older_than`; returns how many.
    pub async fn purge_audit(&self, older_than: std::time::Duration, limit: i64) -> Result<u64> {
        const PURGE_AUDIT: &str = include_str!("sql/access/purge_audit.sql");
        measured("purge_audit", async {
            let c = self.pool.get().await?;
            Ok(
                c.execute_cached(PURGE_AUDIT, &[&(older_than.as_secs() as f64), &limit])
                    .await?,
            )
        })
        .await
    }
}
