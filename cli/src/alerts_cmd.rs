//! `droverctl failures`, `droverctl alerts`, `droverctl notifications`: failure groups,
//! alert rules and notification delivery over `AlertService`.

use crate::output::time;
use crate::{channel, duration, print_json, status_error, Format};
use anyhow::Result;
use clap::Subcommand;
use drover_proto::v1 as pb;
use drover_proto::v1::alert_service_client::AlertServiceClient;
use serde_json::json;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum FailuresCmd {
    /// The jobs of one failure group, newest first.
    Show {
        fingerprint: String,
        #[arg(long)]
        queue: Option<String>,
        /// Jobs per page (1..1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        page_token: Option<String>,
    },
}

#[derive(clap::Args)]
pub struct FailuresArgs {
    #[command(subcommand)]
    pub cmd: Option<FailuresCmd>,
    /// Only this queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// Only groups seen within this long, e.g. 24h.
    #[arg(long)]
    pub since: Option<String>,
    /// Groups per page (1..100).
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    #[arg(long)]
    pub page_token: Option<String>,
}

#[derive(Subcommand)]
pub enum AlertsCmd {
    /// Queue a test message for CHANNEL; follow it with `droverctl notifications`.
    Test { channel: String },
}

#[derive(Subcommand)]
pub enum NotificationsCmd {
    /// Queue a dead notification again.
    Redeliver { id: u64 },
}

#[derive(clap::Args)]
pub struct NotificationsArgs {
    #[command(subcommand)]
    pub cmd: Option<NotificationsCmd>,
    /// Only dead notifications (given up).
    #[arg(long)]
    pub failed: bool,
    /// Notifications per page (1..200).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    #[arg(long)]
    pub page_token: Option<String>,
}

async fn client(addr: &str) -> Result<AlertServiceClient<drover_proto::auth::AuthChannel>> {
    Ok(AlertServiceClient::new(channel(addr).await?))
}

fn when(t: &Option<prost_types::Timestamp>) -> String {
    time(t)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

pub async fn failures(addr: &str, fmt: Format, a: FailuresArgs) -> Result<ExitCode> {
    let mut c = client(addr).await?;
    if let Some(FailuresCmd::Show {
        fingerprint,
        queue,
        limit,
        page_token,
    }) = a.cmd
    {
        let group = c
            .list_failure_groups(pb::ListFailureGroupsRequest {
                fingerprint: fingerprint.clone(),
                queue: queue.clone().unwrap_or_default(),
                page_size: 100,
                ..Default::default()
            })
            .await
            .map_err(status_error)?
            .into_inner()
            .groups;
        if group.is_empty() {
            anyhow::bail!("no failure group with fingerprint {fingerprint}");
        }
        let r = c
            .list_failure_group_jobs(pb::ListFailureGroupJobsRequest {
                fingerprint,
                queue: queue.unwrap_or_default(),
                page_size: limit,
                page_token: page_token.unwrap_or_default(),
            })
            .await
            .map_err(status_error)?
            .into_inner();
        if fmt == Format::Json {
            print_json(&json!({
                "groups": group.iter().map(drover_proto::json::failure_group).collect::<Vec<_>>(),
                "jobs": r.jobs.iter().map(crate::output::job_json).collect::<Vec<_>>(),
                "next_page_token": r.next_page_token,
            }))?;
        } else {
            for g in &group {
                println!(
                    "{} in queue {}: {} failure(s), first {}, last {}, exit codes {:?}",
                    g.fingerprint,
                    g.queue,
                    g.count,
                    when(&g.first_seen_at),
                    when(&g.last_seen_at),
                    g.exit_codes
                );
                for line in g.normalised.lines() {
                    println!("    {line}");
                }
            }
            println!();
            print!("{}", crate::output::job_table(&r.jobs));
            if !r.next_page_token.is_empty() {
                eprintln!("more: --page-token {}", r.next_page_token);
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let since = match &a.since {
        Some(s) => Some(duration("since", s)?),
        None => None,
    };
    let r = c
        .list_failure_groups(pb::ListFailureGroupsRequest {
            queue: a.queue.unwrap_or_default(),
            since,
            page_size: a.limit,
            page_token: a.page_token.unwrap_or_default(),
            fingerprint: String::new(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if fmt == Format::Json {
        print_json(&json!({
            "groups": r.groups.iter().map(drover_proto::json::failure_group).collect::<Vec<_>>(),
            "next_page_token": r.next_page_token,
        }))?;
    } else {
        println!(
            "{:<17} {:>7}  {:<12} {:<19}  {:<19}  {:<36}  SAMPLE",
            "FINGERPRINT", "COUNT", "QUEUE", "FIRST SEEN", "LAST SEEN", "EXAMPLE JOB"
        );
        for g in &r.groups {
            println!(
                "{:<17} {:>7}  {:<12} {:<19}  {:<19}  {:<36}  {}",
                g.fingerprint,
                g.count,
                g.queue,
                when(&g.first_seen_at),
                when(&g.last_seen_at),
                g.last_job_id,
                g.sample.chars().take(120).collect::<String>()
            );
        }
        if !r.next_page_token.is_empty() {
            eprintln!("more: --page-token {}", r.next_page_token);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn alerts(addr: &str, fmt: Format, cmd: Option<AlertsCmd>) -> Result<ExitCode> {
    let mut c = client(addr).await?;
    if let Some(AlertsCmd::Test { channel }) = cmd {
        let n = c
            .test_alert_channel(pb::TestAlertChannelRequest {
                channel,
                ..Default::default()
            })
            .await
            .map_err(status_error)?
            .into_inner()
            .notification
            .unwrap_or_default();
        if fmt == Format::Json {
            print_json(&notification_json(&n))?;
        } else {
            println!("{}", n.id);
            eprintln!(
                "test message queued for {}; see droverctl notifications",
                n.channel
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let r = c
        .list_alert_rules(pb::ListAlertRulesRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    if fmt == Format::Json {
        print_json(&json!({
            "rules": r.rules.iter().map(|x| json!({
                "name": x.name, "kind": x.kind, "channel": x.channel, "queue": x.queue,
                "labels": x.labels, "window": drover_proto::json::duration(&x.window), "threshold": x.threshold,
            })).collect::<Vec<_>>(),
            "channels": r.channels.iter().map(|x| json!({
                "name": x.name, "kind": x.kind, "target": x.target,
            })).collect::<Vec<_>>(),
        }))?;
    } else {
        println!(
            "{:<20} {:<18} {:<14} {:<12} {:>8}  THRESHOLD",
            "RULE", "KIND", "CHANNEL", "QUEUE", "WINDOW"
        );
        for x in &r.rules {
            println!(
                "{:<20} {:<18} {:<14} {:<12} {:>7}s  {}{}",
                x.name,
                x.kind,
                x.channel,
                if x.queue.is_empty() { "*" } else { &x.queue },
                drover_proto::durations::or_zero(&x.window).as_secs(),
                x.threshold,
                if x.labels.is_empty() {
                    String::new()
                } else {
                    format!(" labels={}", x.labels.join(","))
                }
            );
        }
        println!();
        println!("{:<20} {:<8} TARGET", "CHANNEL", "KIND");
        for x in &r.channels {
            println!("{:<20} {:<8} {}", x.name, x.kind, x.target);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn notification_json(n: &pb::Notification) -> serde_json::Value {
    json!({
        "id": n.id,
        "channel": n.channel,
        "rule": n.rule,
        "subject": n.subject,
        "body": n.body,
        "state": n.state,
        "tries": n.tries,
        "next_attempt_at": drover_proto::json::time(&n.next_attempt_at),
        "last_error": n.last_error,
        "created_at": drover_proto::json::time(&n.created_at),
        "idempotency_key": n.idempotency_key,
        "attempts": n.attempts.iter().map(|a| json!({
            "try": a.r#try, "at": drover_proto::json::time(&a.at), "outcome": a.outcome, "detail": a.detail,
            "coordinator_id": a.coordinator_id,
        })).collect::<Vec<_>>(),
    })
}

pub async fn notifications(addr: &str, fmt: Format, a: NotificationsArgs) -> Result<ExitCode> {
    let mut c = client(addr).await?;
    if let Some(NotificationsCmd::Redeliver { id }) = a.cmd {
        let n = c
            .redeliver_notification(pb::RedeliverNotificationRequest { id })
            .await
            .map_err(status_error)?
            .into_inner()
            .notification
            .unwrap_or_default();
        if fmt == Format::Json {
            print_json(&notification_json(&n))?;
        } else {
            println!("{}: queued again for {}", n.id, n.channel);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let r = c
        .list_notifications(pb::ListNotificationsRequest {
            failed_only: a.failed,
            page_size: a.limit,
            page_token: a.page_token.unwrap_or_default(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if fmt == Format::Json {
        print_json(&json!({
            "notifications": r.notifications.iter().map(notification_json).collect::<Vec<_>>(),
            "next_page_token": r.next_page_token,
        }))?;
    } else {
        for n in &r.notifications {
            println!(
                "{:>6}  {:<9} {:<14} {} tries  created {}  {}",
                n.id,
                n.state,
                n.channel,
                n.tries,
                when(&n.created_at),
                n.subject
            );
            if !n.last_error.is_empty() {
                println!("        last error: {}", n.last_error);
            }
            for t in &n.attempts {
                println!(
                    "        try {} at {}: {}{}",
                    t.r#try,
                    when(&t.at),
                    t.outcome,
                    if t.detail.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", t.detail)
                    }
                );
            }
        }
        if !r.next_page_token.is_empty() {
            eprintln!("more: --page-token {}", r.next_page_token);
        }
    }
    Ok(ExitCode::SUCCESS)
}
