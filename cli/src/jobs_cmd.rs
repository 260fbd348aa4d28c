//! Job commands: submit, list, show, retry, rerun, cancel, artifacts and logs.

use crate::{
    batch, connect, duration, output, pairs, parse_state, print_json, print_new_job, request_id,
    status_error, with_retries, Format, SubmitArgs,
};
use anyhow::{bail, Context, Result};
use drover_proto::auth::AuthChannel;
use drover_proto::v1 as pb;
use drover_proto::v1::job_service_client::JobServiceClient;
use std::io::Write;
use std::process::ExitCode;

pub async fn submit(addr: &str, fmt: Format, a: SubmitArgs) -> Result<ExitCode> {
    let timeout = match &a.timeout {
        Some(t) => Some(duration("timeout", t)?),
        None => None,
    };
    let retry = pb::RetryPolicy {
        max_retries: a.max_retries,
        initial_backoff: match &a.retry_wait {
            Some(w) => Some(duration("retry-wait", w)?),
            None => None,
        },
        ..Default::default()
    };
    let mut spec = pb::JobSpec {
        argv: a.argv,
        env: pairs("env", &a.env)?,
        queue: a.queue,
        labels: a.labels,
        params: pairs("param", &a.params)?,
        timeout,
        retry: Some(retry),
        idempotency_key: a.idempotency_key.unwrap_or_default(),
        after: a.after,
        ..Default::default()
    };
    a.flags.apply(&mut spec)?;
    let mut c = connect(addr).await?;
    let r = c
        .submit_job(pb::SubmitJobRequest { spec: Some(spec) })
        .await
        .map_err(status_error)?
        .into_inner();
    let job = r.job.unwrap_or_default();
    if fmt == Format::Json {
        let mut v = output::job_json(&job);
        v["created"] = r.created.into();
        print_json(&v)?;
    } else if r.created {
        println!("{}", job.id);
    } else {
        println!("{}", job.id);
        eprintln!("(existing job with this idempotency key)");
    }
    if !a.wait {
        return Ok(ExitCode::SUCCESS);
    }
    batch::wait_job(&mut c, &job.id, None).await
}

pub async fn list(
    addr: &str,
    fmt: Format,
    state: Option<String>,
    queue: Option<String>,
    limit: u32,
    page_token: Option<String>,
) -> Result<ExitCode> {
    let state = match state.as_deref() {
        None => pb::JobState::Unspecified,
        Some(s) => parse_state(s)?,
    };
    let mut c = connect(addr).await?;
    let r = c
        .list_jobs(pb::ListJobsRequest {
            state: state as i32,
            queue: queue.unwrap_or_default(),
            page_size: limit,
            page_token: page_token.unwrap_or_default(),
            ..Default::default()
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if fmt == Format::Json {
        print_json(&serde_json::json!({
            "jobs": r.jobs.iter().map(output::job_json).collect::<Vec<_>>(),
            "next_page_token": r.next_page_token,
        }))?;
    } else {
        print!("{}", output::job_table(&r.jobs));
        if !r.next_page_token.is_empty() {
            eprintln!("more: --page-token {}", r.next_page_token);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn show(addr: &str, fmt: Format, job: String) -> Result<ExitCode> {
    let mut c = connect(addr).await?;
    let r = c
        .get_job(pb::GetJobRequest { id: job })
        .await
        .map_err(status_error)?
        .into_inner();
    let j = r.job.unwrap_or_default();
    if fmt == Format::Json {
        let mut v = output::job_json(&j);
        v["attempts"] = r.attempts.iter().map(output::attempt_json).collect();
        v["retried_by"] = r.retried_by.clone().into();
        v["waiting_for"] = r.waiting_for.clone().into();
        print_json(&v)?;
    } else {
        print!("{}", output::job_detail(&j, &r.attempts, &r.retried_by));
        if !j.waiting.is_empty() {
            println!("waiting: {}", j.waiting);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `retry JOB`: one finished job as a new, linked job.
pub async fn retry_one(addr: &str, fmt: Format, job: String) -> Result<ExitCode> {
    rerun(addr, fmt, job, Vec::new()).await
}

/// The filters of `retry` without a job.
pub struct RetryFilter {
    pub state: String,
    pub queue: Option<String>,
    pub since: Option<String>,
    pub dry_run: bool,
    pub limit: u32,
    pub fingerprint: Option<String>,
}

/// `retry` without a job: every finished job matching the filters.
pub async fn retry_many(addr: &str, fmt: Format, f: RetryFilter) -> Result<ExitCode> {
    let RetryFilter {
        state,
        queue,
        since,
        dry_run,
        limit,
        fingerprint,
    } = f;
    let state = parse_state(&state)?;
    let within = match &since {
        Some(s) => Some(duration("since", s)?),
        None => None,
    };
    let c = connect(addr).await?;
    let req = pb::RetryJobsRequest {
        state: state as i32,
        queue: queue.unwrap_or_default(),
        finished_within: within,
        dry_run,
        limit,
        fingerprint: fingerprint.unwrap_or_default(),
        request_id: request_id(),
    };
    let r = with_retries(|| {
        let (mut c, req) = (c.clone(), req.clone());
        async move { c.retry_jobs(req).await }
    })
    .await
    .map_err(status_error)?;
    if fmt == Format::Json {
        print_json(&serde_json::json!({
            "dry_run": dry_run,
            "matched": r.matched.iter().map(output::job_json).collect::<Vec<_>>(),
            "created": r.created.iter().map(output::job_json).collect::<Vec<_>>(),
        }))?;
    } else if dry_run {
        print!("{}", output::job_table(&r.matched));
        eprintln!(
            "{} job(s) would be retried (dry run: nothing changed)",
            r.matched.len()
        );
    } else {
        for (old, new) in r.matched.iter().zip(&r.created) {
            println!("{} -> {}", old.id, new.id);
        }
        eprintln!("{} job(s) retried", r.created.len());
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn rerun(addr: &str, fmt: Format, job: String, set: Vec<String>) -> Result<ExitCode> {
    let set_params = pairs("set", &set)?;
    let c = connect(addr).await?;
    let req = pb::RetryJobRequest {
        id: job,
        set_params,
        request_id: request_id(),
    };
    let r = with_retries(|| {
        let (mut c, req) = (c.clone(), req.clone());
        async move { c.retry_job(req).await }
    })
    .await
    .map_err(status_error)?;
    print_new_job(fmt, &r.job.unwrap_or_default())?;
    Ok(ExitCode::SUCCESS)
}

pub async fn cancel(addr: &str, fmt: Format, job: String) -> Result<ExitCode> {
    let c = connect(addr).await?;
    let req = pb::CancelJobRequest {
        id: job,
        request_id: request_id(),
    };
    let r = with_retries(|| {
        let (mut c, req) = (c.clone(), req.clone());
        async move { c.cancel_job(req).await }
    })
    .await
    .map_err(status_error)?;
    let j = r.job.unwrap_or_default();
    if fmt == Format::Json {
        print_json(&output::job_json(&j))?;
    } else if j.cancel_requested {
        println!("{}: stopping its running attempt", j.id);
    } else {
        println!("{}: {}", j.id, output::job_state(j.state));
    }
    Ok(ExitCode::SUCCESS)
}

/// Lists a job's artifacts, or downloads the one named by `get`.
pub async fn artifacts(
    addr: &str,
    fmt: Format,
    job: String,
    get: Option<String>,
    out: Option<std::path::PathBuf>,
) -> Result<ExitCode> {
    let mut c = connect(addr).await?;
    match get {
        None => {
            let mut r = pb::ListArtifactsResponse::default();
            loop {
                let page = c
                    .list_artifacts(pb::ListArtifactsRequest {
                        job_id: job.clone(),
                        page_token: r.next_page_token,
                        ..Default::default()
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                r.artifacts.extend(page.artifacts);
                r.next_page_token = page.next_page_token;
                if r.next_page_token.is_empty() {
                    break;
                }
            }
            if fmt == Format::Json {
                let v: Vec<_> = r.artifacts.iter().map(output::artifact_json).collect();
                print_json(&serde_json::Value::Array(v))?;
            } else {
                print!("{}", output::artifact_table(&r.artifacts));
            }
        }
        Some(name) => download_artifact(&mut c, job, name, out).await?,
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn logs(
    addr: &str,
    job: String,
    follow: bool,
    attempt: Option<u32>,
    timestamps: bool,
) -> Result<ExitCode> {
    let mut c = connect(addr).await?;
    print_logs(&mut c, job, follow, attempt.unwrap_or(0), timestamps).await?;
    Ok(ExitCode::SUCCESS)
}

async fn print_logs(
    c: &mut JobServiceClient<AuthChannel>,
    job: String,
    follow: bool,
    attempt: u32,
    timestamps: bool,
) -> Result<()> {
    let mut stream = c
        .stream_logs(pb::StreamLogsRequest {
            job_id: job,
            attempt,
            follow,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut out = std::io::stdout().lock();
    let mut current = 0;
    let mut at_line_start = true;
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(status_error)?
        .and_then(|r| r.chunk)
    {
        if attempt == 0 && chunk.attempt_number != current {
            current = chunk.attempt_number;
            out.flush()?;
            eprintln!(
                "==> attempt {} ({}) <==",
                chunk.attempt_number, chunk.attempt_id
            );
        }
        if timestamps {
            let prefix = format!(
                "{} {} ",
                output::time(&chunk.time)
                    .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
                    .unwrap_or_default(),
                if chunk.stream == pb::LogStream::Stderr as i32 {
                    "err"
                } else {
                    "out"
                }
            );
            for piece in chunk.data.split_inclusive(|b| *b == b'\n') {
                if at_line_start {
                    out.write_all(prefix.as_bytes())?;
                }
                out.write_all(piece)?;
                at_line_start = piece.ends_with(b"\n");
            }
        } else {
            out.write_all(&chunk.data)?;
        }
        if follow {
            out.flush()?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Downloads one artifact, checking its size and SHA-256; a bad copy is removed.
async fn download_artifact(
    c: &mut JobServiceClient<AuthChannel>,
    job: String,
    name: String,
    out: Option<std::path::PathBuf>,
) -> Result<()> {
    use sha2::{Digest, Sha256};
    let mut stream = c
        .get_artifact(pb::GetArtifactRequest {
            job_id: job,
            name: name.clone(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let to_stdout = out.as_deref() == Some(std::path::Path::new("-"));
    let path = out.unwrap_or_else(|| {
        std::path::PathBuf::from(name.rsplit('/').next().unwrap_or(name.as_str()))
    });
    let mut sink: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        )
    };
    let mut meta = None;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(m) = stream.message().await.map_err(status_error)? {
        if meta.is_none() {
            meta = m.artifact;
        }
        hasher.update(&m.data);
        size += m.data.len() as u64;
        sink.write_all(&m.data)?;
    }
    sink.flush()?;
    drop(sink);
    let meta = meta.context("the coordinator sent no artifact metadata")?;
    let sha = format!("{:x}", hasher.finalize());
    if sha != meta.sha256 || size != meta.size {
        if !to_stdout {
            let _ = std::fs::remove_file(&path);
        }
        bail!(
            "{name}: download is corrupt ({size} bytes, sha256 {sha}; expected {} bytes, {})",
            meta.size,
            meta.sha256
        );
    }
    if !to_stdout {
        eprintln!(
            "{} ({} bytes, sha256 {} verified)",
            path.display(),
            size,
            sha
        );
    }
    Ok(())
}
