//! Job flags that `submit` and `schedule create` share: files kept, resource limits,
//! secret references, concurrency keys and priority. One definition, so a scheduled job
//! takes the same flags, with the same checks, as a submitted one.

use anyhow::{anyhow, Result};
use drover_proto::v1 as pb;

#[derive(clap::Args, Debug, Default)]
pub struct JobFlags {
    /// Secret environment variable read by the worker, never sent: NAME=file:/path or
    /// NAME=env:WORKER_VAR (repeatable). Its value is masked as [REDACTED] in the log.
    #[arg(long = "secret-env", value_name = "NAME=file:PATH|env:VAR")]
    secret_env: Vec<String>,
    /// Files to keep after success: a glob relative to the work directory (repeatable).
    #[arg(long = "keep", value_name = "GLOB")]
    outputs: Vec<String>,
    /// Memory limit per attempt, e.g. 4G or 512M (enforced by a cgroup on the worker).
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// CPU limit per attempt, e.g. 2 or 0.5.
    #[arg(long, value_name = "N")]
    cpus: Option<String>,
    /// Most processes and threads per attempt.
    #[arg(long, value_name = "N")]
    pids: Option<u32>,
    /// Concurrency key (repeatable), e.g. site:netkeiba: at most the key's limit of jobs
    /// holding it run at once.
    #[arg(long = "concurrency-key", value_name = "KEY")]
    concurrency_keys: Vec<String>,
    /// Limit for this job's keys (default: the coordinator's configured pattern, else 1).
    #[arg(long, requires = "concurrency_keys")]
    concurrency_limit: Option<u32>,
    /// Higher runs first within the queue (0..1000; default: the queue's).
    #[arg(long)]
    priority: Option<i32>,
}

impl JobFlags {
    /// Sets these flags' fields of `spec`; a malformed value is an error naming its flag.
    pub fn apply(self, spec: &mut pb::JobSpec) -> Result<()> {
        spec.outputs = self.outputs;
        spec.memory_limit_bytes = match &self.memory {
            Some(m) => drover_core::limits::parse_size(m).map_err(|e| anyhow!("--memory: {e}"))?,
            None => 0,
        };
        spec.cpu_millis = match &self.cpus {
            Some(c) => drover_core::limits::parse_cpus(c).map_err(|e| anyhow!("--cpus: {e}"))?,
            None => 0,
        };
        spec.pids_limit = self.pids.unwrap_or(0);
        let refs = crate::pairs("secret-env", &self.secret_env)?;
        for (k, v) in &refs {
            drover_core::jobguard::SecretRef::parse(v)
                .map_err(|e| anyhow!("--secret-env {k}: {e}"))?;
        }
        spec.secret_env = refs;
        spec.concurrency_keys = self.concurrency_keys;
        spec.concurrency_limit = self.concurrency_limit.unwrap_or(0);
        spec.priority = self.priority.unwrap_or(0);
        Ok(())
    }
}
