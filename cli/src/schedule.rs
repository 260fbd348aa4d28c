//! `droverctl schedule ...`: job specs fired on a cron schedule.

use crate::output::{job_state, time};
use crate::{channel, duration, pairs, print_json, status_error, Format};
use anyhow::Result;
use drover_proto::v1 as pb;
use drover_proto::v1::schedule_service_client::ScheduleServiceClient;
use serde_json::{json, Value};
use std::fmt::Write;

#[derive(clap::Subcommand)]
pub enum ScheduleCmd {
    /// Create a schedule:
    /// droverctl schedule create NAME --cron '0 6 * * *' --timezone Asia/Tokyo -- scraper --date {scheduled_date}
    Create(Box<CreateArgs>),
    /// List schedules.
    List,
    /// A schedule, its next 5 fire times and its last runs.
    Show { name: String },
    /// Stop firing (ticks while paused are not run later).
    Pause { name: String },
    /// Fire again from the next tick.
    Resume { name: String },
    /// Remove the schedule and its run history (its jobs are kept).
    Delete { name: String },
    /// Fire now, whatever the overlap policy.
    Trigger { name: String },
}

#[derive(clap::Args)]
pub struct CreateArgs {
    name: String,
    /// Five fields (minute hour day month weekday), or six with leading seconds.
    #[arg(long)]
    cron: String,
    /// IANA time zone, e.g. Asia/Tokyo.
    #[arg(long, default_value = "UTC")]
    timezone: String,
    #[arg(long, short, default_value = "default")]
    queue: String,
    /// Ticks missed while no coordinator ran: skip, once (the latest) or all (bounded).
    #[arg(long, default_value = "skip")]
    catch_up: String,
    /// A tick while the previous run is unfinished: allow, skip or queue.
    #[arg(long, default_value = "allow")]
    overlap: String,
    /// Named parameter for {name} placeholders (repeatable); {scheduled_at} and
    /// {scheduled_date} are filled from the tick.
    #[arg(long = "param", short = 'p', value_name = "NAME=VALUE")]
    params: Vec<String>,
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE")]
    env: Vec<String>,
    #[arg(long = "label", short = 'l')]
    labels: Vec<String>,
    /// Time limit per attempt, e.g. 90s, 2h.
    #[arg(long, allow_hyphen_values = true)]
    timeout: Option<String>,
    #[arg(long)]
    max_retries: Option<u32>,
    #[command(flatten)]
    flags: crate::jobflags::JobFlags,
    /// Create it paused.
    #[arg(long)]
    paused: bool,
    /// Program and arguments.
    #[arg(last = true, required = true)]
    argv: Vec<String>,
}

fn local(t: &Option<prost_types::Timestamp>, tz: &str) -> String {
    let Some(t) = time(t) else {
        return "-".into();
    };
    match drover_core::schedule::parse_timezone(tz) {
        Ok(z) => t
            .with_timezone(&z)
            .format("%Y-%m-%d %H:%M:%S %Z")
            .to_string(),
        Err(_) => t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    }
}

fn rfc(t: &Option<prost_types::Timestamp>) -> Value {
    drover_proto::json::time(t)
}

fn schedule_json(s: &pb::Schedule) -> Value {
    let spec = s.spec.clone().unwrap_or_default();
    json!({
        "name": s.name,
        "cron": s.cron,
        "timezone": s.timezone,
        "queue": spec.queue,
        "argv": spec.argv,
        "params": spec.params,
        "catch_up": s.catch_up,
        "overlap": s.overlap,
        "paused": s.paused,
        "next_fire_at": rfc(&s.next_fire_at),
        "dropped_ticks": s.dropped_ticks,
        "created_at": rfc(&s.created_at),
    })
}

fn run_json(r: &pb::ScheduleRun) -> Value {
    json!({
        "fire_time": rfc(&r.fire_time),
        "status": r.status,
        "job_id": r.job_id,
        "job_state": if r.job_id.is_empty() { Value::Null } else { job_state(r.job_state).into() },
        "manual": r.manual,
        "reason": r.reason,
    })
}

fn table(list: &[pb::Schedule]) -> String {
    let mut out = format!(
        "{:<24} {:<18} {:<18} {:<8} {:<26}\n",
        "NAME", "CRON", "TIMEZONE", "STATE", "NEXT"
    );
    for s in list {
        let _ = writeln!(
            out,
            "{:<24} {:<18} {:<18} {:<8} {:<26}",
            s.name,
            s.cron,
            s.timezone,
            if s.paused { "paused" } else { "active" },
            if s.paused {
                "-".into()
            } else {
                local(&s.next_fire_at, &s.timezone)
            }
        );
    }
    out
}

fn detail(r: &pb::GetScheduleResponse) -> String {
    let s = r.schedule.clone().unwrap_or_default();
    let spec = s.spec.clone().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(out, "schedule   {}", s.name);
    let _ = writeln!(out, "cron       {} ({})", s.cron, s.timezone);
    let _ = writeln!(out, "queue      {}", spec.queue);
    let _ = writeln!(out, "argv       {}", spec.argv.join(" "));
    let _ = writeln!(
        out,
        "policy     catch-up {}, overlap {}",
        s.catch_up, s.overlap
    );
    let _ = writeln!(
        out,
        "state      {}",
        if s.paused { "paused" } else { "active" }
    );
    if s.dropped_ticks > 0 {
        let _ = writeln!(out, "dropped    {} missed tick(s)", s.dropped_ticks);
    }
    let _ = writeln!(out, "next fire times:");
    if r.next_fire_times.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for t in &r.next_fire_times {
        let _ = writeln!(out, "  {}", local(&Some(*t), &s.timezone));
    }
    let _ = writeln!(out, "last runs:");
    if r.runs.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for run in &r.runs {
        let what = match run.status.as_str() {
            "fired" => format!("{} {}", run.job_id, job_state(run.job_state)),
            other if run.reason.is_empty() => other.to_string(),
            other => format!("{other}: {}", run.reason),
        };
        let _ = writeln!(
            out,
            "  {}{}  {}",
            local(&run.fire_time, &s.timezone),
            if run.manual { " (manual)" } else { "" },
            what
        );
    }
    out
}

pub async fn run(addr: &str, fmt: Format, cmd: ScheduleCmd) -> Result<()> {
    let mut c = ScheduleServiceClient::new(channel(addr).await?);
    match cmd {
        ScheduleCmd::Create(a) => {
            let a = *a;
            let timeout = match &a.timeout {
                Some(t) => Some(duration("timeout", t)?),
                None => None,
            };
            let mut spec = pb::JobSpec {
                argv: a.argv,
                env: pairs("env", &a.env)?,
                queue: a.queue,
                labels: a.labels,
                params: pairs("param", &a.params)?,
                timeout,
                retry: Some(pb::RetryPolicy {
                    max_retries: a.max_retries,
                    ..Default::default()
                }),
                ..Default::default()
            };
            a.flags.apply(&mut spec)?;
            let r = c
                .create_schedule(pb::CreateScheduleRequest {
                    schedule: Some(pb::Schedule {
                        name: a.name,
                        cron: a.cron,
                        timezone: a.timezone,
                        spec: Some(spec),
                        catch_up: a.catch_up,
                        overlap: a.overlap,
                        paused: a.paused,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let s = r.schedule.unwrap_or_default();
            if fmt == Format::Json {
                print_json(&schedule_json(&s))?;
            } else {
                println!(
                    "{}: next fire {}",
                    s.name,
                    local(&s.next_fire_at, &s.timezone)
                );
            }
        }
        ScheduleCmd::List => {
            let mut r = pb::ListSchedulesResponse::default();
            loop {
                let page = c
                    .list_schedules(pb::ListSchedulesRequest {
                        page_token: r.next_page_token,
                        ..Default::default()
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                r.schedules.extend(page.schedules);
                r.next_page_token = page.next_page_token;
                if r.next_page_token.is_empty() {
                    break;
                }
            }
            if fmt == Format::Json {
                print_json(&Value::Array(
                    r.schedules.iter().map(schedule_json).collect(),
                ))?;
            } else {
                print!("{}", table(&r.schedules));
            }
        }
        ScheduleCmd::Show { name } => {
            let r = c
                .get_schedule(pb::GetScheduleRequest { name })
                .await
                .map_err(status_error)?
                .into_inner();
            if fmt == Format::Json {
                let mut v = schedule_json(&r.schedule.clone().unwrap_or_default());
                v["next_fire_times"] = r.next_fire_times.iter().map(|t| rfc(&Some(*t))).collect();
                v["runs"] = r.runs.iter().map(run_json).collect();
                print_json(&v)?;
            } else {
                print!("{}", detail(&r));
            }
        }
        ScheduleCmd::Pause { name } => {
            let r = c
                .pause_schedule(pb::PauseScheduleRequest { name })
                .await
                .map_err(status_error)?
                .into_inner();
            let s = r.schedule.unwrap_or_default();
            println!("{}: paused", s.name);
        }
        ScheduleCmd::Resume { name } => {
            let r = c
                .resume_schedule(pb::ResumeScheduleRequest { name })
                .await
                .map_err(status_error)?
                .into_inner();
            let s = r.schedule.unwrap_or_default();
            println!(
                "{}: active, next fire {}",
                s.name,
                local(&s.next_fire_at, &s.timezone)
            );
        }
        ScheduleCmd::Delete { name } => {
            c.delete_schedule(pb::DeleteScheduleRequest { name: name.clone() })
                .await
                .map_err(status_error)?;
            println!("{name}: deleted");
        }
        ScheduleCmd::Trigger { name } => {
            let r = c
                .trigger_schedule(pb::TriggerScheduleRequest {
                    name,
                    ..Default::default()
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let j = r.job.unwrap_or_default();
            if fmt == Format::Json {
                print_json(&crate::output::job_json(&j))?;
            } else {
                println!("{}", j.id);
            }
        }
    }
    Ok(())
}
