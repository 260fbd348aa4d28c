//! Who is following which job's log, and telling them when there is more.
//!
//! A follower does not poll the database: it reads what is stored, then waits for a
//! notification that its job got new output or ended. Notifications come from this
//! coordinator's own writes and, through LISTEN on [`LOGS_CHANNEL`], from every other
//! coordinator's; one broadcast channel fans them out to all followers. A slow fallback
//! re-check covers a missed notification (e.g. while the LISTEN connection reconnects).
//!
//! Concurrent log streams are also counted here, per client address, so one client cannot
//! hold an unbounded number of them.
//!
//! The notifications are only sent while the database's logs gate is armed (V33):
//! [`LogWatch::follow`] counts a follower, and [`crate::gate::keep`] arms the gate while this
//! coordinator has one. After an arming that may have followed a closed gate, every
//! follower hears [`RESYNC`] and re-reads.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, Notify};
use uuid::Uuid;

/// NOTIFY channel: a job's log grew or the job ended (payload: job id).
pub const LOGS_CHANNEL: &str = "drover_logs";
/// Sent to every follower instead of a job id: re-read, whatever your job (notifications
/// may have been missed while the logs gate was closed).
pub const RESYNC: Uuid = Uuid::nil();
/// Notifications buffered per follower before it must re-read (lagging is harmless: it
/// then simply checks its job).
const FANOUT: usize = 1024;

pub struct LogWatch {
    tx: broadcast::Sender<Uuid>,
    /// Jobs were submitted or became ready somewhere (NOTIFY on the jobs channel): the
    /// dashboard's live views refresh on it.
    jobs: broadcast::Sender<()>,
    streams: Mutex<HashMap<Option<IpAddr>, usize>>,
    /// Followers open here (log streams that follow, the dashboard's live views).
    following: AtomicUsize,
    /// Signalled when a follower opens, for [`crate::gate::keep`].
    opened: Notify,
}

impl Default for LogWatch {
    fn default() -> Self {
        LogWatch {
            tx: broadcast::channel(FANOUT).0,
            jobs: broadcast::channel(FANOUT).0,
            streams: Mutex::new(HashMap::new()),
            following: AtomicUsize::new(0),
            opened: Notify::new(),
        }
    }
}

/// Held while a follower waits for news: keeps the logs gate armed.
pub struct Following {
    watch: Arc<LogWatch>,
}

impl Drop for Following {
    fn drop(&mut self) {
        self.watch.following.fetch_sub(1, Ordering::Relaxed);
    }
}

impl crate::gate::Watched for LogWatch {
    fn open_count(&self) -> usize {
        self.following.load(Ordering::Relaxed)
    }

    fn opened(&self) -> &Notify {
        &self.opened
    }

    fn resync(&self) {
        self.notify(RESYNC);
    }
}

/// Held while a log stream is open; counts it against its client.
pub struct StreamSlot {
    watch: Arc<LogWatch>,
    client: Option<IpAddr>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut s = self.watch.streams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = s.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.remove(&self.client);
            }
        }
    }
}

impl LogWatch {
    /// Job `job_id` has new output or a new state.
    pub fn notify(&self, job_id: Uuid) {
        // No receivers is fine: nobody follows anything.
        let _ = self.tx.send(job_id);
    }

    /// Notifications without counting as a follower: they flow only while some follower
    /// keeps the gate armed (the dashboard's header, which refreshes on a timer anyway).
    pub fn subscribe(&self) -> broadcast::Receiver<Uuid> {
        self.tx.subscribe()
    }

    /// Notifications for a follower, counted so that the logs gate is armed while it waits.
    /// Subscribed before the caller's first read, so nothing written after it goes
    /// unnoticed; a job id of [`RESYNC`] means re-read whatever the job.
    pub fn follow(self: &Arc<Self>) -> (broadcast::Receiver<Uuid>, Following) {
        let rx = self.tx.subscribe();
        self.following.fetch_add(1, Ordering::Relaxed);
        self.opened.notify_one();
        (
            rx,
            Following {
                watch: self.clone(),
            },
        )
    }

    /// Some job was submitted or became ready again.
    pub fn notify_jobs(&self) {
        let _ = self.jobs.send(());
    }

    pub fn subscribe_jobs(&self) -> broadcast::Receiver<()> {
        self.jobs.subscribe()
    }

    /// Counts one more stream for `client`, or says how many it already has.
    pub fn open_stream(
        self: &Arc<Self>,
        client: Option<IpAddr>,
        max: usize,
    ) -> Result<StreamSlot, usize> {
        let mut s = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let n = s.entry(client).or_insert(0);
        if *n >= max {
            return Err(*n);
        }
        *n += 1;
        Ok(StreamSlot {
            watch: self.clone(),
            client,
        })
    }

    /// Open streams of one client (for tests and metrics).
    pub fn streams_of(&self, client: Option<IpAddr>) -> usize {
        let s = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        s.get(&client).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_capped_per_client_and_released_on_drop() {
        let w = Arc::new(LogWatch::default());
        let a: Option<IpAddr> = "10.0.0.1".parse().ok();
        let b: Option<IpAddr> = "10.0.0.2".parse().ok();
        let s1 = w.open_stream(a, 2).unwrap();
        let _s2 = w.open_stream(a, 2).unwrap();
        assert_eq!(w.open_stream(a, 2).err(), Some(2));
        let _other = w.open_stream(b, 2).unwrap();
        drop(s1);
        assert_eq!(w.streams_of(a), 1);
        assert!(w.open_stream(a, 2).is_ok());
    }

    #[tokio::test]
    async fn followers_hear_about_their_job_and_are_counted_while_they_follow() {
        use crate::gate::Watched;
        let w = Arc::new(LogWatch::default());
        let (mut rx, f) = w.follow();
        assert_eq!(w.open_count(), 1);
        let id = Uuid::new_v4();
        w.notify(id);
        assert_eq!(rx.recv().await.unwrap(), id);
        w.resync();
        assert_eq!(rx.recv().await.unwrap(), RESYNC);
        drop(f);
        assert_eq!(w.open_count(), 0);
    }
}
