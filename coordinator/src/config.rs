//! Coordinator settings: defaults, then a TOML file, then `DROVER_*` environment
//! variables (nested keys with `__`, e.g. `DROVER_RETRY__MAX_RETRIES=5`), then flags.
//! Every setting and its default is listed in docs/configuration.md.

use drover_core::{PolicyOverrides, RetryPolicy};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// HTTP listen address (health probes, log downloads).
    pub http_listen: SocketAddr,
    /// PostgreSQL connection URL. `DATABASE_URL` is honoured when this is not set.
    pub database_url: String,
    /// Maximum pooled database connections.
    pub db_pool_size: usize,
    /// A running attempt whose worker has not heartbeated for this long is lost.
    pub lease_ttl_ms: u64,
    /// How often workers are told to heartbeat.
    pub heartbeat_interval_ms: u64,
    /// How often the leader looks for expired leases.
    pub reaper_interval_ms: u64,
    /// Retry policy for jobs that do not set their own.
    pub retry: RetryPolicy,
    /// Per-queue defaults, applied over `retry` and under what a job sets itself.
    pub queues: BTreeMap<String, QueueConfig>,
    /// Per-attempt cap on stored output; past it the first and last halves are kept.
    pub log_cap_bytes: u64,
    /// Logs of attempts that finished longer ago than this are deleted.
    pub log_retention_hours: u64,
    /// How often the leader deletes expired logs and artifacts (in batches).
    pub retention_interval_ms: u64,
    /// Directory of the artifact store (job output files).
    pub artifact_dir: PathBuf,
    /// Largest single artifact accepted.
    pub max_artifact_bytes: u64,
    /// `text` or `json` log lines on stderr.
    pub log_format: String,
    /// If set, log lines also go to a file here, rotated daily, 7 kept.
    pub log_dir: Option<PathBuf>,
    /// How often the leader looks for due schedule ticks.
    pub schedule_interval_ms: u64,
    /// A tick handled later than this after its fire time counts as missed (catch-up policy).
    pub schedule_misfire_grace_ms: u64,
    /// Limits of concurrency keys by glob pattern (`"site:*" = 2`); the longest matching
    /// pattern applies when a job gives no limit. Unmatched keys: 1.
    pub concurrency_limits: BTreeMap<String, u32>,
    /// A job of priority p ranks as if it had waited p times this long already.
    pub priority_aging_ms: u64,
    /// Rate limits of concurrency keys by glob pattern (`"site:*" = "30/min"`).
    pub rate_limits: BTreeMap<String, String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 50052)),
            database_url: "postgres://postgres@127.0.0.1:5432/drover".into(),
            db_pool_size: 16,
            lease_ttl_ms: 8_000,
            heartbeat_interval_ms: 2_000,
            reaper_interval_ms: 1_000,
            retry: RetryPolicy::default(),
            queues: BTreeMap::new(),
            log_cap_bytes: 100 * 1024 * 1024,
            log_retention_hours: 7 * 24,
            retention_interval_ms: 60_000,
            artifact_dir: PathBuf::from("/var/lib/drover/artifacts"),
            max_artifact_bytes: 1024 * 1024 * 1024,
            log_format: "text".into(),
            log_dir: None,
            schedule_interval_ms: 500,
            schedule_misfire_grace_ms: 60_000,
            concurrency_limits: BTreeMap::new(),
            priority_aging_ms: 60_000,
            rate_limits: BTreeMap::new(),
        }
    }
}

/// Defaults for the jobs of one queue (`[queues.<name>]` in the config file).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Timeout for jobs that set none; 0 means none.
    pub timeout_ms: i64,
    /// Retry policy fields that differ from the server's `retry`.
    pub retry: PolicyOverrides,
    /// At most this many jobs of the queue run at once (jobs submitted while it is set
    /// hold the concurrency key `queue:<name>` with this limit).
    pub max_running: Option<u32>,
    /// Priority of the queue's jobs that give none (0).
    pub priority: i32,
}

impl Config {
    /// The retry policy and timeout a job of `queue` starts from.
    pub fn queue_defaults(&self, queue: &str) -> (RetryPolicy, i64) {
        match self.queues.get(queue) {
            Some(q) => (q.retry.apply(&self.retry), q.timeout_ms),
            None => (self.retry.clone(), 0),
        }
    }

    /// Layers the sources; `overrides` holds only the flags actually given.
    pub fn load(file: Option<&Path>, overrides: Figment) -> Result<Config, Box<figment::Error>> {
        let mut f = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(Box::new(figment::Error::from(format!(
                    "config file {} does not exist",
                    path.display()
                ))));
            }
            f = f.merge(Toml::file(path));
        }
        f.merge(Env::raw().only(&["database_url"]))
            .merge(Env::prefixed("DROVER_").split("__"))
            .merge(overrides)
            .extract()
            .map_err(Box::new)
    }

    /// The parsed `rate_limits` (validated at start, so an error here is a bug).
    pub fn rate_patterns(&self) -> Result<Vec<(String, drover_core::flow::Rate)>, String> {
        self.rate_limits
            .iter()
            .map(|(p, r)| {
                drover_core::flow::parse_rate(&format!("rate_limits.{p:?}"), r)
                    .map(|rate| (p.clone(), rate))
                    .map_err(|e| e.to_string())
            })
            .collect()
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    pub fn log_retention(&self) -> Duration {
        Duration::from_secs(self.log_retention_hours.saturating_mul(3600))
    }

    pub fn reaper_interval(&self) -> Duration {
        Duration::from_millis(self.reaper_interval_ms)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat_interval_ms == 0 || self.heartbeat_interval_ms * 2 > self.lease_ttl_ms {
            return Err(format!(
                "heartbeat_interval_ms ({}) must be positive and at most half of lease_ttl_ms ({})",
                self.heartbeat_interval_ms, self.lease_ttl_ms
            ));
        }
        if self.reaper_interval_ms == 0 {
            return Err("reaper_interval_ms must be positive".into());
        }
        if self.log_cap_bytes < 1024 {
            return Err("log_cap_bytes must be at least 1024".into());
        }
        if self.retention_interval_ms == 0 {
            return Err("retention_interval_ms must be positive".into());
        }
        if self.schedule_interval_ms == 0 || self.schedule_interval_ms > 60_000 {
            return Err("schedule_interval_ms must be 1 to 60000".into());
        }
        if self.schedule_misfire_grace_ms < self.schedule_interval_ms {
            return Err(format!(
                "schedule_misfire_grace_ms ({}) must be at least schedule_interval_ms ({})",
                self.schedule_misfire_grace_ms, self.schedule_interval_ms
            ));
        }
        if self.priority_aging_ms == 0 || self.priority_aging_ms > 86_400_000 {
            return Err("priority_aging_ms must be 1 to 86400000".into());
        }
        for pattern in self.rate_limits.keys() {
            if let Err(e) = glob::Pattern::new(pattern) {
                return Err(format!("rate_limits.{pattern:?}: bad pattern: {e}"));
            }
        }
        self.rate_patterns()?;
        for (pattern, limit) in &self.concurrency_limits {
            if let Err(e) = glob::Pattern::new(pattern) {
                return Err(format!("concurrency_limits.{pattern:?}: bad pattern: {e}"));
            }
            if *limit == 0 {
                return Err(format!(
                    "concurrency_limits.{pattern:?}: must be at least 1"
                ));
            }
            drover_core::flow::check_limit(&format!("concurrency_limits.{pattern:?}"), *limit)
                .map_err(|e| e.to_string())?;
        }
        if self.db_pool_size < 2 {
            return Err("db_pool_size must be at least 2".into());
        }
        drover_core::validate::validate_policy(&self.retry).map_err(|e| e.to_string())?;
        for (name, q) in &self.queues {
            drover_core::validate::check_name("queues", name).map_err(|e| e.to_string())?;
            let (policy, timeout) = self.queue_defaults(name);
            drover_core::validate::validate_policy(&policy)
                .map_err(|e| format!("queues.{name}.{e}"))?;
            drover_core::flow::check_priority(&format!("queues.{name}.priority"), q.priority)
                .map_err(|e| e.to_string())?;
            if let Some(m) = q.max_running {
                if m == 0 {
                    return Err(format!("queues.{name}.max_running: must be at least 1"));
                }
                drover_core::flow::check_limit(&format!("queues.{name}.max_running"), m)
                    .map_err(|e| e.to_string())?;
            }
            if timeout < 0 || q.timeout_ms < 0 {
                return Err(format!("queues.{name}.timeout_ms: must not be negative"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_loopback_only() {
        let c = Config::default();
        assert_eq!(c.validate(), Ok(()));
        assert!(c.listen.ip().is_loopback());
        assert_eq!(c.retry.max_retries, 3);
    }

    #[test]
    fn shipped_example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/coordinator.toml");
        let c = Config::load(Some(&path), Figment::new()).expect("deploy/coordinator.toml");
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.retry.retryable_patterns.len(), 3);
        let (p, timeout) = c.queue_defaults("compute");
        assert_eq!(timeout, 6 * 3_600_000);
        assert_eq!(p.max_retries, 1);
        assert_eq!(p.initial_backoff_ms, c.retry.initial_backoff_ms);
        assert_eq!(c.queue_defaults("unknown").0, c.retry);
    }

    #[test]
    fn missing_file_and_bad_values_are_errors() {
        assert!(Config::load(Some(Path::new("/nonexistent.toml")), Figment::new()).is_err());
        let c = Config {
            heartbeat_interval_ms: 5_000,
            lease_ttl_ms: 8_000,
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().contains("heartbeat_interval_ms"));
    }
}
