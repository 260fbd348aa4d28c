//! Audit entries written in groups: every mutating call queues its entry, and one writer
//! inserts whatever has queued up in one statement and one commit, instead of a commit
//! per call (a submit-heavy client made the audit insert a third of all durable commits).

use super::{measured, Cached, Store};
use crate::error::Result;
use tokio::sync::mpsc;

/// Entries inserted by one statement at most.
const MAX_GROUP: usize = 256;
/// Entries waiting for the writer; past this, new entries are dropped with a warning
/// rather than holding up the calls they describe.
const QUEUE: usize = 16_384;

/// One audit entry, as written.
pub struct AuditEntry {
    pub actor: String,
    pub role: String,
    pub method: String,
    pub target: String,
    pub peer: String,
    pub outcome: String,
}

pub(super) type Queue = mpsc::Sender<AuditEntry>;

impl Store {
    /// Queues an audit entry for the group writer (started on first use). Never waits.
    pub fn queue_audit(&self, e: AuditEntry) {
        let q = self.audits.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(run(self.clone(), rx));
            tx
        });
        if let Err(e) = q.try_send(e) {
            let e = match e {
                mpsc::error::TrySendError::Full(e) | mpsc::error::TrySendError::Closed(e) => e,
            };
            tracing::warn!(actor = %e.actor, method = %e.method, target = %e.target,
                "audit entry not written: the audit queue is full");
        }
    }

    /// Inserts entries in one statement.
    pub async fn insert_audits(&self, entries: &[AuditEntry]) -> Result<()> {
        const INSERT_AUDITS: &str = include_str!("sql/access/insert_audits.sql");
        measured("insert_audits", async {
            let col = |f: fn(&AuditEntry) -> &str| -> Vec<&str> { entries.iter().map(f).collect() };
            let c = self.pool.get().await?;
            c.execute_cached(
                INSERT_AUDITS,
                &[
                    &col(|e| &e.actor),
                    &col(|e| &e.role),
                    &col(|e| &e.method),
                    &col(|e| &e.target),
                    &col(|e| &e.peer),
                    &col(|e| &e.outcome),
                ],
            )
            .await?;
            Ok(())
        })
        .await
    }
}

async fn run(store: Store, mut rx: mpsc::Receiver<AuditEntry>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while rx.recv_many(&mut group, MAX_GROUP).await > 0 {
        if let Err(err) = store.insert_audits(&group).await {
            for e in &group {
                tracing::warn!(error = %err, actor = %e.actor, method = %e.method,
                    target = %e.target, "audit entry not written");
            }
        }
        group.clear();
    }
}
