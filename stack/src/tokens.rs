//! API tokens in a stack's database, made directly through the coordinator's store (as
//! `drover-coordinator token create` does), so no running coordinator is needed.

use crate::error::{Error, Result};
use drover_coordinator::store::{NewToken, Store};

/// What a token may do.
#[derive(Clone, Debug, Default)]
pub struct Grant {
    pub name: String,
    /// admin, operator, viewer or worker.
    pub role: String,
    /// Queues it is limited to (none: all).
    pub queues: Vec<String>,
    /// For role worker: the worker ids it may use (`*`: any).
    pub worker_pattern: String,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Grant {
    pub fn new(name: &str, role: &str, worker_pattern: &str) -> Grant {
        Grant {
            name: name.into(),
            role: role.into(),
            worker_pattern: worker_pattern.into(),
            ..Default::default()
        }
    }
}

fn store(db_url: &str) -> Result<Store> {
    let pool = drover_coordinator::db::pool(db_url, 2).map_err(|source| Error::Coordinator {
        what: "connecting to the stack's database".into(),
        source,
    })?;
    Ok(Store::new(pool))
}

/// Stores a token with a known secret. The store's own error comes back so that callers
/// can tell a token that already exists (FailedPrecondition).
pub async fn insert_with_secret(
    db_url: &str,
    grant: &Grant,
    secret: &str,
) -> Result<(), drover_coordinator::error::Error> {
    let pool = drover_coordinator::db::pool(db_url, 2)?;
    Store::new(pool)
        .insert_token(&NewToken {
            name: grant.name.clone(),
            role: grant.role.clone(),
            queues: grant.queues.clone(),
            worker_pattern: grant.worker_pattern.clone(),
            token_hash: drover_coordinator::auth::hash_token(secret),
            expires_at: grant.expires_at,
        })
        .await
        .map(|_| ())
}

/// Creates a token with a new random secret and returns the secret.
pub async fn create(db_url: &str, grant: &Grant) -> Result<String> {
    let secret = drover_coordinator::auth::new_token();
    insert_with_secret(db_url, grant, &secret)
        .await
        .map_err(|source| Error::Coordinator {
            what: format!("creating token {}", grant.name),
            source,
        })?;
    Ok(secret)
}

/// Revokes the token of that name if there is one, then creates it afresh: a new secret
/// each start.
pub async fn replace(db_url: &str, grant: &Grant) -> Result<String> {
    match store(db_url)?.revoke_token(None, &grant.name).await {
        Ok(_) | Err(drover_coordinator::error::Error::NotFound(_)) => {}
        Err(source) => {
            return Err(Error::Coordinator {
                what: format!("revoking token {}", grant.name),
                source,
            })
        }
    }
    create(db_url, grant).await
}
