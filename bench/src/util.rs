//! Small shared pieces: job calls over the public API, percentiles, /proc readings.

use anyhow::{anyhow, bail, Context, Result};
use drover_proto::v1 as pb;
use drover_proto::v1::job_service_client::JobServiceClient;
use std::time::{Duration, Instant};

pub type Jobs = JobServiceClient<drover_proto::auth::AuthChannel>;

pub fn spec(argv: Vec<String>, queue: &str) -> pb::JobSpec {
    pb::JobSpec {
        argv,
        queue: queue.to_string(),
        ..Default::default()
    }
}

pub async fn submit(c: &mut Jobs, spec: pb::JobSpec) -> Result<pb::Job> {
    c.submit_job(pb::SubmitJobRequest { spec: Some(spec) })
        .await
        .context("SubmitJob")?
        .into_inner()
        .job
        .ok_or_else(|| anyhow!("SubmitJob returned no job"))
}

pub async fn get(c: &mut Jobs, id: &str) -> Result<(pb::Job, Vec<pb::Attempt>)> {
    let r = c
        .get_job(pb::GetJobRequest { id: id.to_string() })
        .await
        .with_context(|| format!("GetJob {id}"))?
        .into_inner();
    Ok((
        r.job
            .ok_or_else(|| anyhow!("GetJob {id} returned no job"))?,
        r.attempts,
    ))
}

fn terminal(j: &pb::Job) -> bool {
    matches!(
        pb::JobState::try_from(j.state),
        Ok(pb::JobState::Succeeded | pb::JobState::PermanentFailed | pb::JobState::Cancelled)
    )
}

/// Polls GetJob (first after `first`, then every `every`) until the job is terminal; fails
/// unless it succeeded.
pub async fn wait_succeeded(
    c: &mut Jobs,
    id: &str,
    first: Duration,
    every: Duration,
    patience: Duration,
) -> Result<(pb::Job, Vec<pb::Attempt>)> {
    let start = Instant::now();
    tokio::time::sleep(first).await;
    loop {
        let (job, attempts) = get(c, id).await?;
        if terminal(&job) {
            if job.state != pb::JobState::Succeeded as i32 {
                bail!(
                    "job {id} ended as {:?}: {}",
                    pb::JobState::try_from(job.state).unwrap_or(pb::JobState::Unspecified),
                    job.reason
                );
            }
            return Ok((job, attempts));
        }
        if start.elapsed() > patience {
            bail!(
                "job {id} did not finish within {patience:?} (state {:?})",
                pb::JobState::try_from(job.state).unwrap_or(pb::JobState::Unspecified)
            );
        }
        tokio::time::sleep(every).await;
    }
}

/// The first chunk of an attempt's stored log (enough for a stamp line), without reading
/// the rest.
pub async fn first_log_chunk(c: &mut Jobs, id: &str, attempt: u32) -> Result<Vec<u8>> {
    let mut s = c
        .stream_logs(pb::StreamLogsRequest {
            job_id: id.to_string(),
            attempt,
            follow: false,
        })
        .await
        .with_context(|| format!("StreamLogs {id}"))?
        .into_inner();
    let first = s
        .message()
        .await
        .with_context(|| format!("reading the log of job {id}"))?;
    Ok(first
        .and_then(|r| r.chunk)
        .map(|ch| ch.data)
        .unwrap_or_default())
}

/// The unix-ns stamp printed as the first line of an attempt's output.
pub async fn stamp_of(c: &mut Jobs, id: &str, attempt: u32) -> Result<i128> {
    let data = first_log_chunk(c, id, attempt).await?;
    parse_stamp(&data).with_context(|| format!("job {id} attempt {attempt}: no stamp in its log"))
}

pub fn parse_stamp(data: &[u8]) -> Result<i128> {
    let text = String::from_utf8_lossy(data);
    let line = text.lines().next().unwrap_or("").trim();
    line.parse::<i128>()
        .map_err(|_| anyhow!("expected a unix-ns stamp, got {:?}", truncate(line, 80)))
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

pub fn ts_ns(t: &Option<drover_proto::Timestamp>) -> Result<i128> {
    let t = t.as_ref().ok_or_else(|| anyhow!("timestamp missing"))?;
    Ok(i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos))
}

pub fn ns_to_ms(ns: i128) -> f64 {
    ns as f64 / 1e6
}

/// Nearest-rank percentile of `v` (sorted ascending), p in 0..=100.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

pub fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

#[derive(Debug, Clone, Copy)]
pub struct Dist {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub n: usize,
}

impl Dist {
    pub fn of(v: Vec<f64>) -> Dist {
        let v = sorted(v);
        Dist {
            p50: percentile(&v, 50.0),
            p99: percentile(&v, 99.0),
            max: v.last().copied().unwrap_or(f64::NAN),
            n: v.len(),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"p50": self.p50, "p99": self.p99, "max": self.max, "n": self.n})
    }
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: i32) -> Result<f64> {
    cpu_times(pid).map(|(own, _)| own)
}

/// (utime + stime, cutime + cstime) of a process in seconds: its own CPU, and that of its
/// children it has reaped (a worker's finished jobs, a postmaster's ended backends).
pub fn cpu_times(pid: i32) -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let (_, rest) = stat
        .rsplit_once(')')
        .ok_or_else(|| anyhow!("/proc/{pid}/stat: unexpected format"))?;
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        f.get(i)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("/proc/{pid}/stat: field {} missing", i + 3))
    };
    let hz = clk_tck();
    let own = (ticks(11)? + ticks(12)?) as f64 / hz;
    let children = (ticks(13)? + ticks(14)?) as f64 / hz;
    Ok((own, children))
}

fn clk_tck() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&h| h > 0)
        .unwrap_or(100) as f64
}

/// CPU seconds the whole machine spent busy (all CPUs; idle and iowait excluded).
pub fn machine_busy_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let cpu = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .ok_or_else(|| anyhow!("/proc/stat: no cpu line"))?;
    let v: Vec<u64> = cpu
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum();
    Ok(busy as f64 / clk_tck())
}

fn ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU seconds used so far by a postmaster and all its backends, live or ended.
pub fn postgres_cpu_seconds(postmaster: i32) -> Result<f64> {
    let (own, ended) = cpu_times(postmaster)?;
    let mut live = 0.0;
    for e in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if ppid(pid) == Some(postmaster) {
            live += cpu_times(pid).map(|(o, _)| o).unwrap_or(0.0);
        }
    }
    Ok(own + ended + live)
}

/// A field of /proc/<pid>/status in KiB (VmHWM, VmRSS).
pub fn status_kib(pid: i32, field: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("/proc/{pid}/status has no {field}"))
}

/// after − before for each part, plus "other": machine time no part accounts for (other
/// work on the machine, kernel threads).
pub fn cpu_delta(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
    wall: f64,
) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    let mut parts = 0.0;
    for (k, a) in after {
        let d = a - before.get(k).copied().unwrap_or(0.0);
        if k != "machine" {
            parts += d;
        }
        out.insert(k.clone(), serde_json::json!((d * 100.0).round() / 100.0));
    }
    if let (Some(a), Some(b)) = (after.get("machine"), before.get("machine")) {
        let other = (a - b) - parts;
        out.insert(
            "other".into(),
            serde_json::json!((other * 100.0).round() / 100.0),
        );
    }
    out.insert(
        "wall".into(),
        serde_json::json!((wall * 100.0).round() / 100.0),
    );
    serde_json::Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn stamps_parse_from_the_first_line_only() {
        assert_eq!(parse_stamp(b"123\nrest").ok(), Some(123));
        assert!(parse_stamp(b"nope\n").is_err());
    }
}
