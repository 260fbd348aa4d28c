//! `droverctl queue ...`: pausing and resuming queues.

use crate::{channel, print_json, status_error, Format};
use anyhow::Result;
use drover_proto::v1 as pb;
use drover_proto::v1::queue_service_client::QueueServiceClient;
use serde_json::{json, Value};
use std::fmt::Write;

#[derive(clap::Subcommand)]
pub enum QueueCmd {
    /// No new leases from the queue; running jobs finish.
    Pause { queue: String },
    /// Lease from the queue again.
    Resume { queue: String },
    /// Queues that are paused or have unfinished jobs.
    List,
}

fn state_json(q: &pb::QueueState) -> Value {
    json!({"queue": q.queue, "paused": q.paused, "pending": q.pending, "running": q.running})
}

fn line(q: &pb::QueueState) -> String {
    format!(
        "{:<24} {:<8} {:>8} {:>8}",
        q.queue,
        if q.paused { "paused" } else { "active" },
        q.pending,
        q.running
    )
}

pub async fn run(addr: &str, fmt: Format, cmd: QueueCmd) -> Result<()> {
    let mut c = QueueServiceClient::new(channel(addr).await?);
    let one = match cmd {
        QueueCmd::Pause { queue } => c
            .pause_queue(pb::PauseQueueRequest { queue })
            .await
            .map_err(status_error)?
            .into_inner()
            .queue
            .unwrap_or_default(),
        QueueCmd::Resume { queue } => c
            .resume_queue(pb::ResumeQueueRequest { queue })
            .await
            .map_err(status_error)?
            .into_inner()
            .queue
            .unwrap_or_default(),
        QueueCmd::List => {
            let mut r = pb::ListQueuesResponse::default();
            loop {
                let page = c
                    .list_queues(pb::ListQueuesRequest {
                        page_token: r.next_page_token,
                        ..Default::default()
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                r.queues.extend(page.queues);
                r.next_page_token = page.next_page_token;
                if r.next_page_token.is_empty() {
                    break;
                }
            }
            if fmt == Format::Json {
                return print_json(&Value::Array(r.queues.iter().map(state_json).collect()));
            }
            let mut out = format!(
                "{:<24} {:<8} {:>8} {:>8}\n",
                "QUEUE", "STATE", "PENDING", "RUNNING"
            );
            for q in &r.queues {
                let _ = writeln!(out, "{}", line(q));
            }
            print!("{out}");
            return Ok(());
        }
    };
    if fmt == Format::Json {
        print_json(&state_json(&one))
    } else {
        println!(
            "{}: {} ({} pending, {} running)",
            one.queue,
            if one.paused { "paused" } else { "active" },
            one.pending,
            one.running
        );
        Ok(())
    }
}
