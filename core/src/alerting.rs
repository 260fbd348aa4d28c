//! Alert rules: which events and conditions concern which rule, under which folding key,
//! and the text of the folded ("37 jobs … failed") and resolved messages. Pure functions;
//! the coordinator's `alerts` module feeds them rows and stores what they return.

use crate::state::WorkerState;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// What a rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// A job ended `permanent_failed`. Folded by queue and failure fingerprint.
    PermanentFailed,
    /// A job finished after more than `attempts_over` attempts.
    Attempts,
    /// An attempt ran longer than `ran_longer_than`.
    Runtime,
    /// A failure fingerprint was seen for the first time in its queue.
    NewFingerprint,
    /// A fingerprint was seen at least `count` times within `window` (condition).
    FingerprintSpike,
    /// A worker stopped heartbeating or paused itself (disk or memory low) (condition).
    Worker,
    /// A queue has due jobs and no available worker takes it (condition).
    QueueUnserved,
    /// A queue's oldest due job has waited longer than `waited_longer_than` (condition).
    QueueWait,
    /// A schedule missed a tick within `window` (its catch-up or overlap policy did not
    /// run it), or its next tick is more than `waited_longer_than` overdue, i.e. no
    /// scheduler is running (condition).
    ScheduleMissed,
}

impl RuleKind {
    /// Conditions fire and resolve; the others are events folded per window.
    pub fn is_condition(self) -> bool {
        matches!(
            self,
            RuleKind::FingerprintSpike
                | RuleKind::Worker
                | RuleKind::QueueUnserved
                | RuleKind::QueueWait
                | RuleKind::ScheduleMissed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::PermanentFailed => "permanent_failed",
            RuleKind::Attempts => "attempts",
            RuleKind::Runtime => "runtime",
            RuleKind::NewFingerprint => "new_fingerprint",
            RuleKind::FingerprintSpike => "fingerprint_spike",
            RuleKind::Worker => "worker",
            RuleKind::QueueUnserved => "queue_unserved",
            RuleKind::QueueWait => "queue_wait",
            RuleKind::ScheduleMissed => "schedule_missed",
        }
    }
}

/// One `[[alerts.rules]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique name, shown in messages and `droverctl alerts`.
    pub name: String,
    pub kind: RuleKind,
    /// Name of the channel (`[alerts.channels.<name>]`) its messages go to.
    pub channel: String,
    /// Only this queue (empty: any).
    #[serde(default)]
    pub queue: String,
    /// Only jobs (or workers) carrying all these labels.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Folding window: events with the same key within it become one message.
    #[serde(default = "default_window", with = "crate::duration::human")]
    pub window: Duration,
    /// `attempts`: more than this many attempts.
    #[serde(default = "default_attempts")]
    pub attempts_over: u32,
    /// `runtime`: longer than this.
    #[serde(default = "default_runtime", with = "crate::duration::human")]
    pub ran_longer_than: Duration,
    /// `fingerprint_spike`: at least this many failures within `window`.
    #[serde(default = "default_count")]
    pub count: u32,
    /// `queue_wait`: oldest due job waited longer than this.
    #[serde(default = "default_wait", with = "crate::duration::human")]
    pub waited_longer_than: Duration,
}

fn default_window() -> Duration {
    Duration::from_secs(300)
}
fn default_attempts() -> u32 {
    3
}
fn default_runtime() -> Duration {
    Duration::from_secs(3600)
}
fn default_count() -> u32 {
    10
}
fn default_wait() -> Duration {
    Duration::from_secs(900)
}

/// Longest folding window accepted (a day).
pub const MAX_WINDOW_SECS: u64 = 86_400;
/// Rules accepted in one config.
pub const MAX_RULES: usize = 100;
/// Examples kept in one folded message.
pub const MAX_EXAMPLES: usize = 5;

impl Rule {
    /// Checks one rule; the error names the field.
    pub fn validate(&self, channels: &BTreeSet<String>) -> Result<(), String> {
        let at = |f: &str, why: &str| format!("alerts.rules[{}].{f}: {why}", self.name);
        if self.name.is_empty() || self.name.len() > 64 {
            return Err("alerts.rules[].name: 1 to 64 characters".into());
        }
        if !channels.contains(&self.channel) {
            return Err(at(
                "channel",
                &format!("no channel named {:?} in alerts.channels", self.channel),
            ));
        }
        if self.window < Duration::from_secs(1) || self.window.as_secs() > MAX_WINDOW_SECS {
            return Err(at("window", "must be 1s to 1d"));
        }
        if self.kind == RuleKind::FingerprintSpike && self.count == 0 {
            return Err(at("count", "must be at least 1"));
        }
        if self.labels.len() > 16 {
            return Err(at("labels", "at most 16"));
        }
        Ok(())
    }

    fn wants_queue(&self, queue: &str) -> bool {
        self.queue.is_empty() || self.queue == queue
    }

    fn wants_labels(&self, labels: &[String]) -> bool {
        self.labels.iter().all(|l| labels.contains(l))
    }
}

/// A job state change, as read from the outbox with its job and attempt.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobEvent {
    pub outbox_id: i64,
    /// Outbox event name, e.g. `job.permanent_failed`.
    pub event: String,
    pub job_id: String,
    pub queue: String,
    pub labels: Vec<String>,
    /// Attempts the job has had so far.
    pub attempts: i32,
    /// How long the attempt that just ended ran, in seconds.
    pub ran_secs: Option<f64>,
    pub reason: String,
    /// The ended attempt's failure fingerprint and its sample line, if it failed with output.
    pub fingerprint: Option<String>,
    pub sample: String,
    /// This attempt created the failure group.
    pub new_fingerprint: bool,
}

/// Whether `rule` is about `e`, and if so under which folding key.
pub fn event_key(rule: &Rule, e: &JobEvent) -> Option<String> {
    if !rule.wants_queue(&e.queue) || !rule.wants_labels(&e.labels) {
        return None;
    }
    let ended = matches!(e.event.as_str(), "job.succeeded" | "job.permanent_failed");
    let attempt_ended = ended || e.event == "job.retry_scheduled" || e.event == "job.cancelled";
    let fp = e.fingerprint.as_deref().unwrap_or("-");
    match rule.kind {
        RuleKind::PermanentFailed if e.event == "job.permanent_failed" => {
            Some(format!("{}|{fp}", e.queue))
        }
        RuleKind::Attempts if ended && e.attempts > rule.attempts_over as i32 => {
            Some(e.queue.clone())
        }
        RuleKind::Runtime
            if attempt_ended && e.ran_secs.unwrap_or(0.0) > rule.ran_longer_than.as_secs_f64() =>
        {
            Some(e.queue.clone())
        }
        RuleKind::NewFingerprint if e.new_fingerprint => Some(format!("{}|{fp}", e.queue)),
        _ => None,
    }
}

/// One example line of a folded message.
pub fn example_line(e: &JobEvent) -> String {
    let mut s = format!("job {} ({} attempt(s)): {}", e.job_id, e.attempts, e.reason);
    if !e.sample.is_empty() {
        s.push_str(&format!(" — {}", e.sample));
    }
    s.chars().take(400).collect()
}

/// A message ready to be queued for a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub subject: String,
    pub body: String,
}

/// The one message for `count` events of `rule` with the same `key` within its window.
/// `sample` is the fingerprint's sample line, if the key has one.
pub fn folded_message(
    rule: &Rule,
    key: &str,
    count: i64,
    sample: &str,
    examples: &[String],
) -> Message {
    let (queue, fp) = key.split_once('|').unwrap_or((key, ""));
    let jobs = if count == 1 {
        "1 job".to_string()
    } else {
        format!("{count} jobs")
    };
    let cause = if sample.is_empty() {
        String::new()
    } else {
        format!(" with fingerprint `{sample}`")
    };
    let subject = match rule.kind {
        RuleKind::PermanentFailed => format!("{jobs} in queue {queue} failed{cause}"),
        RuleKind::Attempts => format!(
            "{jobs} in queue {queue} needed more than {} attempts",
            rule.attempts_over
        ),
        RuleKind::Runtime => format!(
            "{jobs} in queue {queue} ran longer than {}s",
            rule.ran_longer_than.as_secs()
        ),
        RuleKind::NewFingerprint => {
            format!("new failure in queue {queue}: `{sample}` ({jobs} so far)")
        }
        _ => format!("{jobs}: {key}"),
    };
    let mut body = format!("[{}] {subject}\n", rule.name);
    if !fp.is_empty() && fp != "-" {
        body.push_str(&format!(
            "fingerprint {fp} (droverctl failures show {fp})\n"
        ));
    }
    if !examples.is_empty() {
        body.push_str("examples:\n");
        for e in examples.iter().take(MAX_EXAMPLES) {
            body.push_str(&format!("  - {e}\n"));
        }
        if count > examples.len().min(MAX_EXAMPLES) as i64 {
            body.push_str(&format!(
                "  … and {} more\n",
                count - examples.len().min(MAX_EXAMPLES) as i64
            ));
        }
    }
    Message { subject, body }
}

/// Folds a batch of events into per-(rule, key) counts and examples: the pure core of
/// storm folding (the coordinator adds each result to that key's open window).
pub fn fold<'a>(
    rules: &'a [Rule],
    events: &[JobEvent],
) -> BTreeMap<(&'a str, String), (i64, String, Vec<String>)> {
    let mut out: BTreeMap<(&str, String), (i64, String, Vec<String>)> = BTreeMap::new();
    for e in events {
        for r in rules.iter().filter(|r| !r.kind.is_condition()) {
            if let Some(key) = event_key(r, e) {
                let slot = out.entry((r.name.as_str(), key)).or_default();
                slot.0 += 1;
                if slot.1.is_empty() {
                    slot.1 = e.sample.clone();
                }
                if slot.2.len() < MAX_EXAMPLES {
                    slot.2.push(example_line(e));
                }
            }
        }
    }
    out
}

/// What a condition rule sees now: key → one-line description.
pub type Firing = BTreeMap<String, String>;

/// A worker as the condition rules see it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerView {
    pub id: String,
    pub labels: Vec<String>,
    pub queues: Vec<String>,
    pub state: WorkerState,
    pub paused_reason: String,
    pub seen_ago_secs: i64,
}

/// A queue as the condition rules see it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueView {
    pub queue: String,
    pub pending: i64,
    /// Age of the oldest due job, if any is due.
    pub oldest_due_secs: Option<i64>,
}

/// A schedule as the `schedule_missed` rule sees it (paused schedules are left out).
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleView {
    pub name: String,
    pub queue: String,
    /// Seconds since a tick was last missed (not run), if one ever was.
    pub missed_ago_secs: Option<i64>,
    /// Why (e.g. "3 tick(s) not run (catch-up skip)").
    pub missed_reason: String,
    /// Seconds its next tick is overdue, if it is due.
    pub overdue_secs: Option<i64>,
}

/// Which schedules a `schedule_missed` rule fires for: a tick missed within the window, or
/// the next tick overdue by more than `waited_longer_than`.
pub fn schedule_conditions(rule: &Rule, schedules: &[ScheduleView]) -> Firing {
    let mut f = Firing::new();
    if rule.kind != RuleKind::ScheduleMissed {
        return f;
    }
    for s in schedules.iter().filter(|s| rule.wants_queue(&s.queue)) {
        match (s.missed_ago_secs, s.overdue_secs) {
            (Some(ago), _) if ago <= rule.window.as_secs() as i64 => {
                f.insert(
                    s.name.clone(),
                    format!(
                        "schedule {} missed a run {ago}s ago: {}",
                        s.name, s.missed_reason
                    ),
                );
            }
            (_, Some(late)) if late > rule.waited_longer_than.as_secs() as i64 => {
                f.insert(
                    s.name.clone(),
                    format!(
                        "schedule {} is {late}s overdue: no coordinator is running its ticks",
                        s.name
                    ),
                );
            }
            _ => {}
        }
    }
    f
}

/// Which keys of a condition rule hold now. `spikes` is (queue, fingerprint, sample,
/// failures within the rule's window).
pub fn conditions(
    rule: &Rule,
    workers: &[WorkerView],
    queues: &[QueueView],
    spikes: &[(String, String, String, i64)],
) -> Firing {
    let mut f = Firing::new();
    match rule.kind {
        RuleKind::Worker => {
            for w in workers.iter().filter(|w| rule.wants_labels(&w.labels)) {
                if !rule.queue.is_empty() && !w.queues.contains(&rule.queue) {
                    continue;
                }
                match w.state {
                    // Offline is a stale worker that stayed away: still lost.
                    WorkerState::Stale | WorkerState::Offline => {
                        f.insert(
                            w.id.clone(),
                            format!(
                                "worker {} lost: no heartbeat for {}s",
                                w.id, w.seen_ago_secs
                            ),
                        );
                    }
                    WorkerState::Paused => {
                        f.insert(
                            w.id.clone(),
                            format!("worker {} paused itself: {}", w.id, w.paused_reason),
                        );
                    }
                    _ => {}
                }
            }
        }
        RuleKind::QueueUnserved => {
            for q in queues.iter().filter(|q| rule.wants_queue(&q.queue)) {
                let due = q.oldest_due_secs.is_some();
                let served = workers
                    .iter()
                    .any(|w| w.state == WorkerState::Alive && w.queues.contains(&q.queue));
                if due && !served {
                    f.insert(
                        q.queue.clone(),
                        format!(
                            "queue {}: {} job(s) due and no available worker takes it",
                            q.queue, q.pending
                        ),
                    );
                }
            }
        }
        RuleKind::QueueWait => {
            for q in queues.iter().filter(|q| rule.wants_queue(&q.queue)) {
                if let Some(age) = q.oldest_due_secs {
                    if age > rule.waited_longer_than.as_secs() as i64 {
                        f.insert(
                            q.queue.clone(),
                            format!(
                                "queue {}: oldest due job has waited {age}s (limit {}s)",
                                q.queue,
                                rule.waited_longer_than.as_secs()
                            ),
                        );
                    }
                }
            }
        }
        RuleKind::FingerprintSpike => {
            for (queue, fp, sample, n) in spikes {
                if rule.wants_queue(queue) && *n >= i64::from(rule.count) {
                    f.insert(
                        format!("{queue}|{fp}"),
                        format!(
                            "{n} failures in queue {queue} within {}s with fingerprint `{sample}` ({fp})",
                            rule.window.as_secs()
                        ),
                    );
                }
            }
        }
        _ => {}
    }
    f
}

/// Compares what fired before with what holds now: (newly firing, resolved) keys.
pub fn transitions(before: &BTreeSet<String>, now: &Firing) -> (Vec<String>, Vec<String>) {
    let fired = now
        .keys()
        .filter(|k| !before.contains(*k))
        .cloned()
        .collect();
    let resolved = before
        .iter()
        .filter(|k| !now.contains_key(*k))
        .cloned()
        .collect();
    (fired, resolved)
}

/// Message for a condition that started (`detail` from [`conditions`]) or resolved.
pub fn condition_message(rule: &Rule, key: &str, detail: &str, resolved: bool) -> Message {
    if resolved {
        Message {
            subject: format!("resolved: [{}] {key}", rule.name),
            body: format!(
                "[{}] resolved: {key} no longer holds (was: {detail})\n",
                rule.name
            ),
        }
    } else {
        Message {
            subject: format!("[{}] {detail}", rule.name),
            body: format!("[{}] {detail}\n", rule.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(kind: RuleKind) -> Rule {
        Rule {
            name: "r".into(),
            kind,
            channel: "ops".into(),
            queue: String::new(),
            labels: vec![],
            window: Duration::from_secs(60),
            attempts_over: 3,
            ran_longer_than: Duration::from_secs(10),
            count: 3,
            waited_longer_than: Duration::from_secs(30),
        }
    }

    fn failed(job: &str, fp: &str) -> JobEvent {
        JobEvent {
            event: "job.permanent_failed".into(),
            job_id: job.into(),
            queue: "scrape".into(),
            labels: vec!["site-a".into()],
            attempts: 4,
            ran_secs: Some(1.0),
            reason: "exit code 1".into(),
            fingerprint: Some(fp.into()),
            sample: format!("HTTP 503 from {{host}} ({fp})"),
            ..Default::default()
        }
    }

    #[test]
    fn a_storm_folds_into_one_key_per_cause() {
        let rules = vec![rule(RuleKind::PermanentFailed)];
        let mut events: Vec<JobEvent> = (0..500).map(|i| failed(&format!("j{i}"), "aa")).collect();
        events.extend((0..7).map(|i| failed(&format!("k{i}"), "bb")));
        let folded = fold(&rules, &events);
        assert_eq!(folded.len(), 2);
        let (n, sample, ex) = &folded[&("r", "scrape|aa".to_string())];
        assert_eq!(*n, 500);
        assert_eq!(ex.len(), MAX_EXAMPLES);
        let m = folded_message(&rules[0], "scrape|aa", *n, sample, ex);
        assert_eq!(
            m.subject,
            "500 jobs in queue scrape failed with fingerprint `HTTP 503 from {host} (aa)`"
        );
        assert!(m.body.contains("and 495 more"), "{}", m.body);
        assert_eq!(folded[&("r", "scrape|bb".to_string())].0, 7);
    }

    #[test]
    fn filters_and_kinds() {
        let e = failed("j", "aa");
        let mut r = rule(RuleKind::PermanentFailed);
        r.queue = "other".into();
        assert_eq!(event_key(&r, &e), None);
        r.queue = "scrape".into();
        r.labels = vec!["site-b".into()];
        assert_eq!(event_key(&r, &e), None);
        r.labels = vec!["site-a".into()];
        assert!(event_key(&r, &e).is_some());
        // attempts: 4 > 3
        assert_eq!(
            event_key(&rule(RuleKind::Attempts), &e),
            Some("scrape".into())
        );
        let mut few = e.clone();
        few.attempts = 3;
        assert_eq!(event_key(&rule(RuleKind::Attempts), &few), None);
        // runtime: 1s is not over 10s
        assert_eq!(event_key(&rule(RuleKind::Runtime), &e), None);
        let mut long = e.clone();
        long.ran_secs = Some(11.0);
        assert!(event_key(&rule(RuleKind::Runtime), &long).is_some());
        // new fingerprint only when flagged
        assert_eq!(event_key(&rule(RuleKind::NewFingerprint), &e), None);
        let mut new = e.clone();
        new.new_fingerprint = true;
        assert!(event_key(&rule(RuleKind::NewFingerprint), &new).is_some());
        // a retry is not a permanent failure
        let mut retry = e;
        retry.event = "job.retry_scheduled".into();
        assert_eq!(event_key(&rule(RuleKind::PermanentFailed), &retry), None);
    }

    #[test]
    fn schedules_fire_for_a_recent_miss_or_an_overdue_tick() {
        let view = |name: &str, ago: Option<i64>, overdue: Option<i64>| ScheduleView {
            name: name.into(),
            queue: "scrape".into(),
            missed_ago_secs: ago,
            missed_reason: "3 tick(s) not run (catch-up skip)".into(),
            overdue_secs: overdue,
        };
        let schedules = vec![
            view("recent", Some(10), None),
            view("old-miss", Some(10_000), Some(1)),
            view("stuck", None, Some(5_000)),
            view("fine", None, Some(2)),
        ];
        let mut r = rule(RuleKind::ScheduleMissed);
        r.window = Duration::from_secs(3600);
        r.waited_longer_than = Duration::from_secs(900);
        let f = schedule_conditions(&r, &schedules);
        assert_eq!(f.keys().collect::<Vec<_>>(), vec!["recent", "stuck"]);
        assert!(f["recent"].contains("catch-up skip"), "{}", f["recent"]);
        assert!(f["stuck"].contains("5000s overdue"), "{}", f["stuck"]);
        r.queue = "other".into();
        assert!(schedule_conditions(&r, &schedules).is_empty());
        // Other kinds never fire from schedules.
        assert!(schedule_conditions(&rule(RuleKind::QueueWait), &schedules).is_empty());
    }

    #[test]
    fn conditions_fire_and_resolve_once() {
        let workers = vec![
            WorkerView {
                id: "w1".into(),
                labels: vec![],
                queues: vec!["default".into()],
                state: WorkerState::Stale,
                paused_reason: String::new(),
                seen_ago_secs: 20,
            },
            WorkerView {
                id: "w2".into(),
                labels: vec![],
                queues: vec!["default".into()],
                state: WorkerState::Paused,
                paused_reason: "disk low".into(),
                seen_ago_secs: 0,
            },
        ];
        let queues = vec![QueueView {
            queue: "default".into(),
            pending: 4,
            oldest_due_secs: Some(45),
        }];
        let w = conditions(&rule(RuleKind::Worker), &workers, &queues, &[]);
        assert_eq!(w.len(), 2);
        assert!(w["w2"].contains("disk low"));
        let u = conditions(&rule(RuleKind::QueueUnserved), &workers, &queues, &[]);
        assert_eq!(u.keys().collect::<Vec<_>>(), vec!["default"]);
        let q = conditions(&rule(RuleKind::QueueWait), &workers, &queues, &[]);
        assert!(q["default"].contains("45s"));
        let spikes = vec![
            ("scrape".into(), "aa".into(), "x".into(), 3),
            ("scrape".into(), "bb".into(), "y".into(), 2),
        ];
        let s = conditions(&rule(RuleKind::FingerprintSpike), &[], &[], &spikes);
        assert_eq!(s.keys().collect::<Vec<_>>(), vec!["scrape|aa"]);

        let before: BTreeSet<String> = ["w1".to_string(), "gone".to_string()].into();
        let (fired, resolved) = transitions(&before, &w);
        assert_eq!(fired, vec!["w2".to_string()]);
        assert_eq!(resolved, vec!["gone".to_string()]);
        let m = condition_message(&rule(RuleKind::Worker), "gone", "worker gone lost", true);
        assert!(m.subject.starts_with("resolved:"));
    }

    #[test]
    fn validation_names_the_field() {
        let channels: BTreeSet<String> = ["ops".to_string()].into();
        let mut r = rule(RuleKind::PermanentFailed);
        assert_eq!(r.validate(&channels), Ok(()));
        r.channel = "nope".into();
        assert!(r.validate(&channels).unwrap_err().contains(".channel"));
        r.channel = "ops".into();
        r.window = Duration::ZERO;
        assert!(r.validate(&channels).unwrap_err().contains("window"));
    }
}
