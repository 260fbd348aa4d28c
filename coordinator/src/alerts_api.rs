//! `AlertService`: failure groups, alert rules and channels, notifications.
//! Every list is paged with a bounded page size; every argument is checked first.

use crate::alerts::AlertsConfig;
use crate::convert;
use crate::error::Error;
use crate::store::failures::{GroupFilter, GroupRow};
use crate::store::notifications::NotificationRow;
use crate::store::Store;
use chrono::{DateTime, Utc};
use drover_core::alerting::RuleKind;
use drover_proto::v1 as pb;
use drover_proto::v1::alert_service_server::AlertService;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};
use uuid::Uuid;

pub const MAX_GROUPS_PAGE: u32 = 100;
pub const MAX_JOBS_PAGE: u32 = 1000;
pub const MAX_NOTIFICATIONS_PAGE: u32 = 200;
/// Deepest offset into the ranked group list.
pub const MAX_GROUPS_OFFSET: i64 = 10_000;

pub struct AlertsApi {
    pub store: Store,
    pub alerts: Arc<AlertsConfig>,
}

/// A fingerprint is 16 lowercase hex digits.
pub fn check_fingerprint(field: &str, fp: &str) -> Result<(), Error> {
    if fp.len() == 16
        && fp
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{field}: must be 16 lowercase hex digits (as shown by droverctl failures)"
        )))
    }
}

fn page(field: &str, v: u32, default: u32, max: u32) -> Result<i64, Error> {
    match v {
        0 => Ok(i64::from(default)),
        n if n > max => Err(Error::Invalid(format!("{field}: at most {max}"))),
        n => Ok(i64::from(n)),
    }
}

pub fn group_to_pb(g: &GroupRow) -> pb::FailureGroup {
    pb::FailureGroup {
        queue: g.queue.clone(),
        fingerprint: g.fingerprint.clone(),
        normalised: g.normalised.clone(),
        sample: g.sample.clone(),
        first_seen_at: Some(convert::ts(g.first_seen_at)),
        last_seen_at: Some(convert::ts(g.last_seen_at)),
        count: g.count.max(0) as u64,
        last_job_id: g.last_job_id.to_string(),
        last_attempt_id: g.last_attempt_id.to_string(),
        exit_codes: g.exit_codes.clone(),
    }
}

fn notification_to_pb(n: &NotificationRow) -> pb::Notification {
    pb::Notification {
        id: n.id.max(0) as u64,
        channel: n.channel.clone(),
        rule: n.rule.clone(),
        subject: n.subject.clone(),
        body: n.body.clone(),
        state: n.state.clone(),
        tries: n.tries.max(0) as u32,
        next_attempt_at: Some(convert::ts(n.next_attempt_at)),
        last_error: n.last_error.clone(),
        created_at: Some(convert::ts(n.created_at)),
        idempotency_key: n.idempotency_key.to_string(),
        attempts: n
            .attempts
            .iter()
            .map(|a| pb::NotificationAttempt {
                r#try: a.try_no.max(0) as u32,
                at: Some(convert::ts(a.at)),
                outcome: a.outcome.clone(),
                detail: a.detail.clone(),
                coordinator_id: a.coordinator_id.clone(),
            })
            .collect(),
    }
}

fn threshold(r: &drover_core::alerting::Rule) -> String {
    match r.kind {
        RuleKind::Attempts => format!("more than {} attempts", r.attempts_over),
        RuleKind::Runtime => format!("ran longer than {}s", r.ran_longer_than.as_secs()),
        RuleKind::FingerprintSpike => {
            format!("{} failures within {}s", r.count, r.window.as_secs())
        }
        RuleKind::QueueWait => format!("waited longer than {}s", r.waited_longer_than.as_secs()),
        _ => String::new(),
    }
}

/// Job keyset cursor: `<created_at rfc3339>/<id>`.
fn job_cursor(token: &str) -> Result<Option<(DateTime<Utc>, Uuid)>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Error::Invalid("page_token: not a token from a previous response".into());
    let (t, id) = token.split_once('/').ok_or_else(bad)?;
    let t = DateTime::parse_from_rfc3339(t).map_err(|_| bad())?;
    let id = Uuid::parse_str(id).map_err(|_| bad())?;
    Ok(Some((t.with_timezone(&Utc), id)))
}

#[tonic::async_trait]
impl AlertService for AlertsApi {
    async fn list_failure_groups(
        &self,
        req: Request<pb::ListFailureGroupsRequest>,
    ) -> Result<Response<pb::ListFailureGroupsResponse>, Status> {
        let r = req.into_inner();
        let pager = crate::paging::Pager::new("ListFailureGroups", &r, &r.page_token);
        if !r.queue.is_empty() {
            drover_core::validate::check_name("queue", &r.queue).map_err(Error::from)?;
        }
        if !r.fingerprint.is_empty() {
            check_fingerprint("fingerprint", &r.fingerprint)?;
        }
        let since_ms = convert::millis("since", &r.since)?;
        let limit = page("page_size", r.page_size, 20, MAX_GROUPS_PAGE)?;
        let offset = match pager.cursor::<i64>()? {
            None => 0,
            Some(n) if (0..=MAX_GROUPS_OFFSET).contains(&n) => n,
            Some(_) => {
                return Err(Error::Invalid(
                    "page_token: not a token from a previous response".into(),
                )
                .into())
            }
        };
        let groups = self
            .store
            .list_failure_groups(&GroupFilter {
                queue: (!r.queue.is_empty()).then_some(r.queue),
                fingerprint: (!r.fingerprint.is_empty()).then_some(r.fingerprint),
                since: (since_ms > 0).then(|| Duration::from_millis(since_ms)),
                offset,
                limit,
            })
            .await?;
        let next = offset + groups.len() as i64;
        Ok(Response::new(pb::ListFailureGroupsResponse {
            next_page_token: if groups.len() as i64 == limit && next <= MAX_GROUPS_OFFSET {
                pager.token(&next)
            } else {
                String::new()
            },
            groups: groups.iter().map(group_to_pb).collect(),
        }))
    }

    async fn list_failure_group_jobs(
        &self,
        req: Request<pb::ListFailureGroupJobsRequest>,
    ) -> Result<Response<pb::ListFailureGroupJobsResponse>, Status> {
        let r = req.into_inner();
        let pager = crate::paging::Pager::new("ListFailureGroupJobs", &r, &r.page_token);
        check_fingerprint("fingerprint", &r.fingerprint)?;
        if !r.queue.is_empty() {
            drover_core::validate::check_name("queue", &r.queue).map_err(Error::from)?;
        }
        let limit = page("page_size", r.page_size, 100, MAX_JOBS_PAGE)?;
        let after = match pager.cursor::<String>()? {
            Some(c) => job_cursor(&c)?,
            None => None,
        };
        let jobs = self
            .store
            .jobs_with_fingerprint(
                &r.fingerprint,
                (!r.queue.is_empty()).then_some(r.queue.as_str()),
                None,
                false,
                after,
                limit,
            )
            .await?;
        let next = match jobs.last() {
            Some(j) if jobs.len() as i64 == limit => {
                pager.token(&format!("{}/{}", j.created_at.to_rfc3339(), j.id))
            }
            _ => String::new(),
        };
        Ok(Response::new(pb::ListFailureGroupJobsResponse {
            jobs: jobs.iter().map(convert::job_to_pb).collect(),
            next_page_token: next,
        }))
    }

    async fn list_alert_rules(
        &self,
        _req: Request<pb::ListAlertRulesRequest>,
    ) -> Result<Response<pb::ListAlertRulesResponse>, Status> {
        Ok(Response::new(pb::ListAlertRulesResponse {
            rules: self
                .alerts
                .rules
                .iter()
                .map(|r| pb::AlertRule {
                    name: r.name.clone(),
                    kind: r.kind.as_str().into(),
                    channel: r.channel.clone(),
                    queue: r.queue.clone(),
                    labels: r.labels.clone(),
                    window: Some(drover_proto::durations::from_std(r.window)),
                    threshold: threshold(r),
                })
                .collect(),
            channels: self
                .alerts
                .channels
                .iter()
                .map(|(name, c)| pb::AlertChannel {
                    name: name.clone(),
                    kind: c.kind().into(),
                    target: c.target(),
                })
                .collect(),
        }))
    }

    async fn list_notifications(
        &self,
        req: Request<pb::ListNotificationsRequest>,
    ) -> Result<Response<pb::ListNotificationsResponse>, Status> {
        let r = req.into_inner();
        let pager = crate::paging::Pager::new("ListNotifications", &r, &r.page_token);
        let limit = page("page_size", r.page_size, 50, MAX_NOTIFICATIONS_PAGE)?;
        let before = pager.cursor::<i64>()?;
        let rows = self
            .store
            .list_notifications(r.failed_only, before, limit)
            .await?;
        let next = match rows.last() {
            Some(n) if rows.len() as i64 == limit => pager.token(&n.id),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListNotificationsResponse {
            notifications: rows.iter().map(notification_to_pb).collect(),
            next_page_token: next,
        }))
    }

    async fn redeliver_notification(
        &self,
        req: Request<pb::RedeliverNotificationRequest>,
    ) -> Result<Response<pb::RedeliverNotificationResponse>, Status> {
        let id = req.into_inner().id;
        let id = match i64::try_from(id) {
            Ok(id) if id > 0 => id,
            _ => {
                return Err(
                    Error::Invalid("id: must be a notification id (positive)".into()).into(),
                )
            }
        };
        let n = self.store.redeliver_notification(id).await?;
        tracing::info!(id, "notification queued again by an operator");
        Ok(Response::new(pb::RedeliverNotificationResponse {
            notification: Some(notification_to_pb(&n)),
        }))
    }

    async fn test_alert_channel(
        &self,
        req: Request<pb::TestAlertChannelRequest>,
    ) -> Result<Response<pb::TestAlertChannelResponse>, Status> {
        let (principal, msg) = (crate::auth::Principal::of(&req), req.get_ref().clone());
        let act = async move {
            let channel = req.into_inner().channel;
            if !self.alerts.channels.contains_key(&channel) {
                let known: Vec<&str> = self.alerts.channels.keys().map(String::as_str).collect();
                return Err(Error::Invalid(format!(
                    "channel: no channel named {:?} (configured: {})",
                    channel.chars().take(64).collect::<String>(),
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ))
                .into());
            }
            let n = self
                .store
                .enqueue_notification(
                    &channel,
                    "",
                    "Drover test message",
                    &format!(
                "This is a test message for channel {channel}, sent by droverctl alerts test.\n"
            ),
                )
                .await?;
            Ok::<_, Status>(pb::TestAlertChannelResponse {
                notification: Some(notification_to_pb(&n)),
            })
        };
        crate::request_ids::once(
            &self.store,
            &principal,
            "/drover.v1.AlertService/TestAlertChannel",
            &msg.request_id,
            &msg,
            act,
        )
        .await
        .map(Response::new)
    }
}
