//! Single submits with group commit: SubmitJob calls that arrive while an earlier group is
//! being written are stored together by the batch path (`submit_batch`: one multi-row
//! insert with the outbox rows, one NOTIFY per queue, one commit), each with its own
//! result. A submit alone is a group of one. If a group fails as a whole (a lost
//! connection, a deadlock), each of its submits is tried again alone, so one cannot fail
//! another.

use super::batch::{BatchItem, ItemResult};
use super::{measured, JobRow, Store};
use crate::error::{Error, Result};
use tokio::sync::{mpsc, oneshot};

/// At most this many submits share a transaction.
const MAX_GROUP: usize = 128;
/// Submits waiting for the writer; a full queue makes callers wait (backpressure).
const QUEUE: usize = 1024;

pub(super) struct Pending {
    item: BatchItem,
    reply: oneshot::Sender<ItemResult>,
}

pub(super) type Queue = mpsc::Sender<Pending>;

impl Store {
    /// Stores one job (or finds the one holding its idempotency key), sharing the
    /// transaction with submits that arrive at the same moment. Returns the job and
    /// whether it was created.
    pub async fn submit_grouped(&self, item: BatchItem) -> Result<(JobRow, bool)> {
        measured("submit", self.submit_queued(item)).await
    }

    async fn submit_queued(&self, item: BatchItem) -> Result<(JobRow, bool)> {
        let queue = self.submits.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(run(self.clone(), rx));
            tx
        });
        let (reply, answer) = oneshot::channel();
        queue
            .send(Pending { item, reply })
            .await
            .map_err(|_| Error::Unavailable("the coordinator is shutting down".into()))?;
        answer
            .await
            .map_err(|_| Error::Unavailable("the coordinator is shutting down".into()))?
    }

    async fn submit_group(&self, group: Vec<Pending>) {
        let (items, replies): (Vec<BatchItem>, Vec<_>) =
            group.into_iter().map(|p| (p.item, p.reply)).unzip();
        let n = items.len();
        let results = match measured("submit_group", self.store_batch(&items, None)).await {
            Ok(results) if results.len() == n => {
                crate::metrics::submit_group(n);
                results
            }
            Ok(_) => (0..n)
                .map(|_| {
                    Err(Error::Internal(
                        "a submit group gave a result count unlike its size".into(),
                    ))
                })
                .collect(),
            Err(e) if n == 1 => {
                crate::metrics::submit_group(1);
                vec![Err(e)]
            }
            Err(e) => {
                tracing::warn!(error = %e, submits = n,
                    "a group of submits failed together; storing them one by one");
                let mut one_by_one = Vec::with_capacity(n);
                for item in &items {
                    let r = match measured(
                        "submit_group",
                        self.store_batch(std::slice::from_ref(item), None),
                    )
                    .await
                    {
                        Ok(mut v) if v.len() == 1 => v.remove(0),
                        Ok(_) => Err(Error::Internal("a submit gave no result".into())),
                        Err(e) => Err(e),
                    };
                    crate::metrics::submit_group(1);
                    one_by_one.push(r);
                }
                one_by_one
            }
        };
        for (reply, r) in replies.into_iter().zip(results) {
            // The caller may have gone; the job stands.
            let _ = reply.send(r);
        }
    }
}

async fn run(store: Store, mut rx: mpsc::Receiver<Pending>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while rx.recv_many(&mut group, MAX_GROUP).await > 0 {
        store.submit_group(std::mem::take(&mut group)).await;
    }
}
