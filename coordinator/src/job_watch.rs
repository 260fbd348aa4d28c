//! Job state changes for WatchJobs and WaitJob, without polling per caller.
//!
//! A trigger (V20) sends `NOTIFY drover_job_states '<id> <state> <queue>'` on every insert
//! and state change of a job, whoever made it (any coordinator, the dependency trigger).
//! This coordinator's LISTEN connection hears them and one broadcast channel fans them out
//! to every watcher here. A watcher subscribes *before* it reads the current state, so no
//! change can fall between the read and the first notification; it reads a job again only
//! when a notification concerns it. When it fell behind (the broadcast lagged) or the
//! LISTEN connection was re-made (notifications may have been missed), it gets
//! [`JobEvent::Resync`] and re-reads what it watches from the database.
//!
//! Open watches are counted per principal and in total, so no caller can hold unbounded
//! streams.
//!
//! The trigger only notifies while the database's watch gate is armed (V31): nobody pays
//! for notifications nobody reads. [`crate::gate::keep`] arms it while this coordinator has
//! a watch open, and after an arming that may have followed a closed gate, sends
//! [`JobEvent::Resync`] once every transaction that was running has ended.

use drover_core::JobState;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, Notify};
use uuid::Uuid;

/// NOTIFY channel of job state changes (payload: `<id> <state> <queue>`).
pub const STATES_CHANNEL: &str = "drover_job_states";
/// Events buffered per watcher; past that it lags and re-reads (never misses a change).
const FANOUT: usize = 4096;

#[derive(Debug, Clone, PartialEq)]
pub enum JobEvent {
    /// Job `id` (of `queue`) is now in `state`.
    Changed {
        id: Uuid,
        state: JobState,
        queue: Arc<str>,
    },
    /// Changes may have been missed: re-read everything watched.
    Resync,
}

/// Parses a notification payload; None for anything malformed.
pub fn parse_payload(p: &str) -> Option<JobEvent> {
    let mut it = p.splitn(3, ' ');
    let id = Uuid::parse_str(it.next()?).ok()?;
    let state: JobState = it.next()?.parse().ok()?;
    let queue = it.next()?;
    Some(JobEvent::Changed {
        id,
        state,
        queue: Arc::from(queue),
    })
}

pub struct JobWatch {
    tx: broadcast::Sender<JobEvent>,
    open: Mutex<HashMap<String, usize>>,
    /// Signalled when a watch opens, for [`crate::gate::keep`].
    opened: Notify,
}

impl Default for JobWatch {
    fn default() -> Self {
        JobWatch {
            tx: broadcast::channel(FANOUT).0,
            open: Mutex::new(HashMap::new()),
            opened: Notify::new(),
        }
    }
}

/// Held while a watch is open; counts it against its principal.
pub struct WatchSlot {
    watch: Arc<JobWatch>,
    who: String,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut o = self.watch.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = o.get_mut(&self.who) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                o.remove(&self.who);
            }
        }
    }
}

/// Why a watch was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Full {
    /// This principal holds this many already.
    Principal(usize),
    /// The coordinator holds this many in all.
    Total(usize),
}

impl JobWatch {
    pub fn publish(&self, e: JobEvent) {
        // No receivers is fine: nobody watches.
        let _ = self.tx.send(e);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.tx.subscribe()
    }

    /// Counts one more watch for `who`, or says which bound it would pass.
    pub fn open(
        self: &Arc<Self>,
        who: &str,
        per_principal: usize,
        total: usize,
    ) -> Result<WatchSlot, Full> {
        let mut o = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let all: usize = o.values().sum();
        if all >= total {
            return Err(Full::Total(all));
        }
        let n = o.entry(who.to_string()).or_insert(0);
        if *n >= per_principal {
            return Err(Full::Principal(*n));
        }
        *n += 1;
        self.opened.notify_one();
        Ok(WatchSlot {
            watch: self.clone(),
            who: who.to_string(),
        })
    }

    /// Open watches in all.
    pub fn total_open(&self) -> usize {
        let o = self.open.lock().unwrap_or_else(|p| p.into_inner());
        o.values().sum()
    }

    /// Open watches of one principal.
    pub fn open_of(&self, who: &str) -> usize {
        let o = self.open.lock().unwrap_or_else(|p| p.into_inner());
        o.get(who).copied().unwrap_or(0)
    }
}

impl crate::gate::Watched for JobWatch {
    fn open_count(&self) -> usize {
        self.total_open()
    }

    fn opened(&self) -> &Notify {
        &self.opened
    }

    fn resync(&self) {
        self.publish(JobEvent::Resync);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_and_garbage_is_ignored() {
        let id = Uuid::new_v4();
        assert_eq!(
            parse_payload(&format!("{id} running nightly.etl")),
            Some(JobEvent::Changed {
                id,
                state: JobState::Running,
                queue: Arc::from("nightly.etl")
            })
        );
        assert_eq!(parse_payload("nonsense"), None);
        assert_eq!(parse_payload(&format!("{id} exploded q")), None);
        assert_eq!(parse_payload(&format!("{id} running")), None);
    }

    #[test]
    fn watches_are_bounded_per_principal_and_in_total() {
        let w = Arc::new(JobWatch::default());
        let a1 = w.open("alice", 2, 3).unwrap();
        let _a2 = w.open("alice", 2, 3).unwrap();
        assert_eq!(w.open("alice", 2, 3).err(), Some(Full::Principal(2)));
        let _b1 = w.open("bob", 2, 3).unwrap();
        assert_eq!(w.open("carol", 2, 3).err(), Some(Full::Total(3)));
        drop(a1);
        assert_eq!(w.open_of("alice"), 1);
        assert!(w.open("carol", 2, 3).is_ok());
    }

    #[tokio::test]
    async fn a_lagging_watcher_is_told_so() {
        let w = JobWatch::default();
        let mut rx = w.subscribe();
        for _ in 0..FANOUT + 10 {
            w.publish(JobEvent::Resync);
        }
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(_))
        ));
    }
}
