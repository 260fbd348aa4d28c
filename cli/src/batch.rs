//! `droverctl submit --from-file`, `submit --wait` and `droverctl wait`.
//!
//! Exit status of a wait: 0 the job succeeded, 3 it ended permanent_failed, 4 it was
//! cancelled, 5 it had not finished when `--timeout` ran out; 1 on any other error. With
//! several jobs, the first job (in input order) that did not succeed decides.

use crate::{duration, duration_ms, output, print_json, status_error, Format};
use anyhow::{anyhow, bail, Context, Result};
use drover_proto::auth::AuthChannel;
use drover_proto::v1 as pb;
use drover_proto::v1::job_service_client::JobServiceClient;
use prost::Message;
use serde::Deserialize;
use std::collections::HashMap;
use std::io::BufRead;
use std::process::ExitCode;
use std::time::{Duration, Instant};

pub const EXIT_FAILED: u8 = 3;
pub const EXIT_CANCELLED: u8 = 4;
pub const EXIT_TIMED_OUT: u8 = 5;

/// Specs per SubmitJobs call (the coordinator's limit), and encoded bytes per call (under
/// its 4 MiB message limit).
const CHUNK_SPECS: usize = 1000;
const CHUNK_BYTES: usize = 3 * 1024 * 1024;
/// A line longer than this is refused without being parsed.
const MAX_LINE: usize = 1024 * 1024;
/// WaitJob's longest single wait (the coordinator's bound); waiting longer calls again.
const WAIT_CALL_MS: u64 = 3_600_000;

/// One line of a `--from-file` file: the same fields as `droverctl submit`'s flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecLine {
    argv: Vec<String>,
    #[serde(default)]
    queue: Option<String>,
    #[serde(default, alias = "param")]
    params: HashMap<String, String>,
    #[serde(default)]
    env: HashMap<String, String>,
    #[serde(default, alias = "label")]
    labels: Vec<String>,
    #[serde(default)]
    secret_env: HashMap<String, String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    max_retries: Option<u32>,
    #[serde(default)]
    retry_wait: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    keep: Vec<String>,
    #[serde(default)]
    memory: Option<String>,
    #[serde(default)]
    cpus: Option<String>,
    #[serde(default)]
    pids: Option<u32>,
    #[serde(default, alias = "concurrency_key")]
    concurrency_keys: Vec<String>,
    #[serde(default)]
    concurrency_limit: Option<u32>,
    #[serde(default)]
    after: Vec<String>,
    #[serde(default)]
    priority: Option<i32>,
}

impl SpecLine {
    pub fn into_spec(self) -> Result<pb::JobSpec> {
        if self.argv.is_empty() {
            bail!("argv: must name a program to run");
        }
        // References only, checked here so a value typed in place of one is never sent.
        for (k, v) in &self.secret_env {
            drover_core::jobguard::SecretRef::parse(v)
                .map_err(|e| anyhow!("secret_env {k}: {e}"))?;
        }
        Ok(pb::JobSpec {
            argv: self.argv,
            env: self.env,
            queue: self.queue.unwrap_or_else(|| "default".into()),
            labels: self.labels,
            params: self.params,
            timeout: match &self.timeout {
                Some(t) => Some(duration("timeout", t)?),
                None => None,
            },
            retry: Some(pb::RetryPolicy {
                max_retries: self.max_retries,
                initial_backoff: match &self.retry_wait {
                    Some(w) => Some(duration("retry-wait", w)?),
                    None => None,
                },
                ..Default::default()
            }),
            idempotency_key: self.idempotency_key.unwrap_or_default(),
            outputs: self.keep,
            memory_limit_bytes: match &self.memory {
                Some(m) => {
                    drover_core::limits::parse_size(m).map_err(|e| anyhow!("memory: {e}"))?
                }
                None => 0,
            },
            cpu_millis: match &self.cpus {
                Some(c) => drover_core::limits::parse_cpus(c).map_err(|e| anyhow!("cpus: {e}"))?,
                None => 0,
            },
            pids_limit: self.pids.unwrap_or(0),
            secret_env: self.secret_env,
            concurrency_keys: self.concurrency_keys,
            concurrency_limit: self.concurrency_limit.unwrap_or(0),
            priority: self.priority.unwrap_or(0),
            after: self.after,
        })
    }
}

/// Parses one line (1-based `n` for messages).
pub fn parse_line(line: &str) -> Result<pb::JobSpec> {
    let l: SpecLine = serde_json::from_str(line).map_err(|e| anyhow!("{e}"))?;
    l.into_spec()
}

/// What became of one line.
struct Outcome {
    line: usize,
    job: Option<pb::Job>,
    created: bool,
    error: String,
}

async fn send_chunk(
    c: &mut JobServiceClient<AuthChannel>,
    chunk: &mut Vec<(usize, pb::JobSpec)>,
    out: &mut Vec<Outcome>,
) -> Result<()> {
    if chunk.is_empty() {
        return Ok(());
    }
    let lines: Vec<usize> = chunk.iter().map(|(n, _)| *n).collect();
    let specs: Vec<pb::JobSpec> = chunk.drain(..).map(|(_, s)| s).collect();
    let r = c
        .submit_jobs(pb::SubmitJobsRequest { specs })
        .await
        .map_err(status_error)
        .with_context(|| {
            format!(
                "lines {}-{} were not submitted (earlier lines were)",
                lines[0],
                lines[lines.len() - 1]
            )
        })?
        .into_inner();
    for res in r.results {
        let Some(&line) = lines.get(res.index as usize) else {
            bail!(
                "the coordinator answered for spec {} of {}",
                res.index,
                lines.len()
            );
        };
        // The coordinator names the item as specs[i]; the line number says more here.
        let error = res
            .error
            .split_once(": ")
            .filter(|(p, _)| p.starts_with("specs["))
            .map(|(_, m)| m.to_string())
            .unwrap_or(res.error);
        out.push(Outcome {
            line,
            job: res.job,
            created: res.created,
            error,
        });
    }
    Ok(())
}

/// `droverctl submit --from-file FILE` (`-` for standard input).
pub async fn submit_file(
    addr: &str,
    fmt: Format,
    path: &std::path::Path,
    wait: bool,
) -> Result<ExitCode> {
    let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("{}", path.display()))?,
        ))
    };
    let mut c = crate::connect(addr).await?;
    let mut outcomes = Vec::new();
    let mut chunk: Vec<(usize, pb::JobSpec)> = Vec::new();
    let mut chunk_bytes = 0usize;
    for (i, line) in reader.split(b'\n').enumerate() {
        let n = i + 1;
        let raw = line.with_context(|| format!("{} line {n}", path.display()))?;
        if raw.len() > MAX_LINE {
            outcomes.push(Outcome {
                line: n,
                job: None,
                created: false,
                error: format!("longer than {MAX_LINE} bytes"),
            });
            continue;
        }
        let text = match String::from_utf8(raw) {
            Ok(t) => t,
            Err(_) => {
                outcomes.push(Outcome {
                    line: n,
                    job: None,
                    created: false,
                    error: "not UTF-8".into(),
                });
                continue;
            }
        };
        if text.trim().is_empty() {
            continue;
        }
        match parse_line(&text) {
            Ok(spec) => {
                let size = spec.encoded_len() + 8;
                if chunk.len() >= CHUNK_SPECS || chunk_bytes + size > CHUNK_BYTES {
                    send_chunk(&mut c, &mut chunk, &mut outcomes).await?;
                    chunk_bytes = 0;
                }
                chunk_bytes += size;
                chunk.push((n, spec));
            }
            Err(e) => outcomes.push(Outcome {
                line: n,
                job: None,
                created: false,
                error: format!("{e:#}"),
            }),
        }
    }
    send_chunk(&mut c, &mut chunk, &mut outcomes).await?;
    outcomes.sort_by_key(|o| o.line);
    let failed = outcomes.iter().filter(|o| o.job.is_none()).count();
    if fmt == Format::Json {
        let v: Vec<serde_json::Value> = outcomes
            .iter()
            .map(|o| match &o.job {
                Some(j) => serde_json::json!({"line": o.line, "id": j.id, "created": o.created}),
                None => serde_json::json!({"line": o.line, "error": o.error}),
            })
            .collect();
        print_json(&serde_json::Value::Array(v))?;
    } else {
        for o in &outcomes {
            match &o.job {
                Some(j) => println!("{}", j.id),
                None => eprintln!("line {}: {}", o.line, o.error),
            }
        }
    }
    if failed > 0 {
        eprintln!(
            "droverctl: {failed} of {} lines were not submitted",
            outcomes.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    let mut code = ExitCode::SUCCESS;
    for o in &outcomes {
        if let Some(j) = &o.job {
            let c2 = wait_job(&mut c, &j.id, None).await?;
            if code == ExitCode::SUCCESS {
                code = c2;
            }
        }
    }
    Ok(code)
}

/// Waits for a job with WaitJob (the coordinator tells when it finishes; nothing polls)
/// and turns its outcome into the exit status. `limit`: give up after this long.
pub async fn wait_job(
    c: &mut JobServiceClient<AuthChannel>,
    id: &str,
    limit: Option<Duration>,
) -> Result<ExitCode> {
    let start = Instant::now();
    let mut unavailable = 0u32;
    loop {
        let left = match limit {
            Some(l) => {
                let left = l.saturating_sub(start.elapsed());
                if left.is_zero() {
                    eprintln!(
                        "job {id} has not finished after {}",
                        humantime::format_duration(l)
                    );
                    return Ok(ExitCode::from(EXIT_TIMED_OUT));
                }
                (left.as_millis() as u64).clamp(1, WAIT_CALL_MS)
            }
            None => WAIT_CALL_MS,
        };
        match c
            .wait_job(pb::WaitJobRequest {
                id: id.to_string(),
                timeout: Some(drover_proto::durations::from_millis(left)),
            })
            .await
        {
            Ok(r) => {
                let j = r.into_inner().job.unwrap_or_default();
                return Ok(match pb::JobState::try_from(j.state) {
                    Ok(pb::JobState::Succeeded) => ExitCode::SUCCESS,
                    Ok(pb::JobState::Cancelled) => {
                        eprintln!("job {} cancelled: {}", j.id, j.reason);
                        ExitCode::from(EXIT_CANCELLED)
                    }
                    _ => {
                        eprintln!("job {} {}: {}", j.id, output::job_state(j.state), j.reason);
                        ExitCode::from(EXIT_FAILED)
                    }
                });
            }
            Err(s) if s.code() == tonic::Code::DeadlineExceeded => continue,
            // A coordinator restarting: wait for it a little while.
            Err(s) if s.code() == tonic::Code::Unavailable && unavailable < 30 => {
                unavailable += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(s) => return Err(status_error(s)),
        }
    }
}

/// `droverctl wait JOB [--timeout D]`.
pub async fn wait_command(addr: &str, id: &str, timeout: Option<&str>) -> Result<ExitCode> {
    let limit = match timeout {
        Some(t) => Some(Duration::from_millis(duration_ms("timeout", t)? as u64)),
        None => None,
    };
    let mut c = crate::connect(addr).await?;
    wait_job(&mut c, id, limit).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_takes_the_flags_fields() {
        let s = parse_line(
            r#"{"argv":["echo","{d}"],"queue":"etl","params":{"d":"1"},"labels":["x"],
               "timeout":"90s","max_retries":2,"retry_wait":"5s","idempotency_key":"k",
               "keep":["out/*"],"memory":"1G","cpus":"0.5","pids":10,"priority":3,
               "concurrency_keys":["site:a"],"concurrency_limit":2}"#,
        )
        .unwrap();
        assert_eq!(s.argv, ["echo", "{d}"]);
        assert_eq!(s.queue, "etl");
        assert_eq!(drover_proto::durations::to_millis(&s.timeout), Ok(90_000));
        assert_eq!(s.retry.as_ref().and_then(|r| r.max_retries), Some(2));
        assert_eq!(s.memory_limit_bytes, 1 << 30);
        assert_eq!(s.cpu_millis, 500);
        assert_eq!(s.priority, 3);
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        let e = parse_line(r#"{"argv":["x"],"qeue":"a"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("qeue"), "{e}");
        let e = parse_line(r#"{"argv":[]}"#).unwrap_err().to_string();
        assert!(e.contains("argv"), "{e}");
        let e = parse_line(r#"{"argv":["x"],"timeout":"soon"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("timeout"), "{e}");
        assert!(parse_line("not json").is_err());
    }
}
