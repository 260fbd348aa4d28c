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

/// Bounds of `dispatch_sweep_ms`: below 100 ms the sweep is polling; above a day a
/// missed notification would strand a job for too long.
pub const DISPATCH_SWEEP_MIN_MS: u64 = 100;
pub const DISPATCH_SWEEP_MAX_MS: u64 = 86_400_000;

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
    /// How often each coordinator looks for due jobs without being woken by a
    /// notification (a safety net for a missed NOTIFY).
    pub dispatch_sweep_ms: u64,
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
    /// Concurrent StreamLogs calls one client address may hold open; more are refused
    /// with RESOURCE_EXHAUSTED.
    pub max_log_streams_per_client: usize,
    /// Concurrent WatchJobs and WaitJob calls one principal (token) may hold open, and all
    /// callers together; more are refused with RESOURCE_EXHAUSTED.
    pub max_watches_per_principal: usize,
    pub max_watches: usize,
    /// `text` or `json` log lines on stderr.
    pub log_format: String,
    /// If set, log lines also go to a file here, rotated daily, 7 kept.
    pub log_dir: Option<PathBuf>,
    /// Alert rules, channels and notification delivery (`[alerts]`).
    pub alerts: crate::alerts::AlertsConfig,
    /// Every request must carry a bearer token whose role allows it (see docs/security.md).
    pub access_control: bool,
    /// Allows serving on a non-loopback address with access control off.
    pub insecure: bool,
    /// Routes served without a token: HTTP paths and gRPC method paths whose rule is
    /// `read` at most (health probes, metrics).
    pub open_routes: Vec<String>,
    /// How long a looked-up token is reused without asking the database again. Revocations
    /// reach every coordinator at once through NOTIFY; without that listener nothing is cached.
    pub token_cache_ms: u64,
    /// Audit log entries older than this are deleted by the leader.
    pub audit_retention_days: u64,
    /// PEM certificate (chain) for TLS on both listeners; with `tls_key_file`. Unset: plaintext.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificate(s) for client certificates (mTLS). Unset: none asked for.
    pub tls_client_ca_file: Option<PathBuf>,
    /// With `tls_client_ca_file`: refuse clients without a certificate (false lets them
    /// connect without one; a certificate presented is still verified).
    pub tls_client_cert_required: bool,
    /// How often the TLS files are checked for changes (they are also reloaded on SIGHUP).
    pub tls_reload_interval_ms: u64,
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
    /// How long finished jobs, departed workers and samples are kept (`[retention]`).
    pub retention: RetentionConfig,
}

/// Retention horizons (`[retention]`), each a number and a unit: `90s`, `30m`, `12h`, `30d`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Succeeded jobs (with their attempts, logs, artifacts) are deleted this long after
    /// they finished.
    pub succeeded: String,
    /// The same for permanently failed jobs.
    pub permanent_failed: String,
    /// The same for cancelled jobs (and schedule ticks skipped without a job).
    pub cancelled: String,
    /// Workers not seen for this long (and running nothing) are forgotten.
    pub workers: String,
    /// Per-minute resource samples of workers are kept this long.
    pub samples: String,
    /// Request ids of mutating calls (and the results kept for their repeats) are kept
    /// this long: a repeat after that acts again.
    pub request_ids: String,
    /// Logs and artifacts of attempts that finished this long ago are deleted; unset:
    /// `log_retention_hours`.
    pub logs: Option<String>,
    /// Length of one log partition: logs are stored in one table per period (by the
    /// start of their attempt) and retention drops whole tables.
    pub log_partition: String,
    /// Rows deleted per statement, so retention never holds locks for long.
    pub batch_size: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            succeeded: "30d".into(),
            permanent_failed: "90d".into(),
            cancelled: "30d".into(),
            workers: "7d".into(),
            samples: "24h".into(),
            request_ids: "24h".into(),
            logs: None,
            log_partition: "1d".into(),
            batch_size: 500,
        }
    }
}

/// [`RetentionConfig`] parsed.
#[derive(Debug, Clone)]
pub struct Retention {
    pub jobs: drover_core::retention::JobHorizons,
    pub workers: Duration,
    pub samples: Duration,
    pub request_ids: Duration,
    pub logs: Duration,
    pub log_partition: Duration,
    pub batch_size: i64,
}

/// Shortest log partition: shorter ones would make thousands of tables a day.
pub const LOG_PARTITION_MIN: Duration = Duration::from_secs(60);
/// Longest log partition: retention can only drop whole partitions.
pub const LOG_PARTITION_MAX: Duration = Duration::from_secs(31 * 86_400);

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
            dispatch_sweep_ms: 5_000,
            retry: RetryPolicy::default(),
            queues: BTreeMap::new(),
            log_cap_bytes: 100 * 1024 * 1024,
            log_retention_hours: 7 * 24,
            retention_interval_ms: 60_000,
            artifact_dir: PathBuf::from("/var/lib/drover/artifacts"),
            max_artifact_bytes: 1024 * 1024 * 1024,
            max_log_streams_per_client: 64,
            max_watches_per_principal: 64,
            max_watches: 4096,
            log_format: "text".into(),
            log_dir: None,
            alerts: crate::alerts::AlertsConfig::default(),
            access_control: true,
            insecure: false,
            open_routes: crate::auth::DEFAULT_OPEN_ROUTES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            token_cache_ms: 2_000,
            audit_retention_days: 90,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            tls_client_cert_required: true,
            tls_reload_interval_ms: 2_000,
            schedule_interval_ms: 500,
            schedule_misfire_grace_ms: 60_000,
            concurrency_limits: BTreeMap::new(),
            priority_aging_ms: 60_000,
            rate_limits: BTreeMap::new(),
            retention: RetentionConfig::default(),
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
    /// Memory limit for jobs that set none, e.g. "4G" (none by default).
    pub memory: Option<String>,
    /// CPU limit for jobs that set none, e.g. 2 or 0.5 (none by default).
    pub cpus: Option<f64>,
    /// Process/thread count limit for jobs that set none (none by default).
    pub pids: Option<u32>,
    /// At most this many jobs of the queue run at once (jobs submitted while it is set
    /// hold the concurrency key `queue:<name>` with this limit).
    pub max_running: Option<u32>,
    /// Priority of the queue's jobs that give none (0).
    pub priority: i32,
}

impl QueueConfig {
    fn limits(&self) -> Result<drover_core::ResourceLimits, String> {
        let memory_bytes = match &self.memory {
            Some(m) => {
                Some(drover_core::limits::parse_size(m).map_err(|e| format!("memory: {e}"))?)
            }
            None => None,
        };
        let cpu_millis = match self.cpus {
            Some(c) if c.is_finite() && c > 0.0 && c <= 1_000_000.0 => {
                Some((c * 1000.0).round() as u32)
            }
            Some(c) => return Err(format!("cpus: {c} must be a positive number of CPUs")),
            None => None,
        };
        let l = drover_core::ResourceLimits {
            memory_bytes,
            cpu_millis,
            pids: self.pids,
        };
        drover_core::validate::validate_limits(&l).map_err(|e| e.to_string())?;
        Ok(l)
    }
}

impl Config {
    /// The retry policy and timeout a job of `queue` starts from.
    pub fn queue_defaults(&self, queue: &str) -> (RetryPolicy, i64) {
        match self.queues.get(queue) {
            Some(q) => (q.retry.apply(&self.retry), q.timeout_ms),
            None => (self.retry.clone(), 0),
        }
    }

    /// The resource limits a job of `queue` gets for each limit it does not set.
    pub fn queue_limits(&self, queue: &str) -> drover_core::ResourceLimits {
        self.queues
            .get(queue)
            .and_then(|q| q.limits().ok())
            .unwrap_or_default()
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
        match self.retention().map(|r| r.logs) {
            Ok(d) => d,
            Err(_) => Duration::from_secs(self.log_retention_hours.saturating_mul(3600)),
        }
    }

    /// The `[retention]` horizons, parsed; the error names the key.
    pub fn retention(&self) -> Result<Retention, String> {
        let r = &self.retention;
        let d = |key: &str, v: &str| {
            drover_core::auth::parse_lifetime(v).map_err(|e| format!("retention.{key}: {e}"))
        };
        let logs = match &r.logs {
            Some(v) => d("logs", v)?,
            None if self.log_retention_hours == 0 => {
                return Err("log_retention_hours must be positive".into())
            }
            None => Duration::from_secs(self.log_retention_hours.saturating_mul(3600)),
        };
        let log_partition = d("log_partition", &r.log_partition)?;
        if !(LOG_PARTITION_MIN..=LOG_PARTITION_MAX).contains(&log_partition) {
            return Err(format!(
                "retention.log_partition: {:?} must be 1m to 31d",
                r.log_partition
            ));
        }
        if !(1..=100_000).contains(&r.batch_size) {
            return Err("retention.batch_size must be 1 to 100000".into());
        }
        Ok(Retention {
            jobs: drover_core::retention::JobHorizons {
                succeeded: d("succeeded", &r.succeeded)?,
                permanent_failed: d("permanent_failed", &r.permanent_failed)?,
                cancelled: d("cancelled", &r.cancelled)?,
            },
            workers: d("workers", &r.workers)?,
            samples: d("samples", &r.samples)?,
            request_ids: d("request_ids", &r.request_ids)?,
            logs,
            log_partition,
            batch_size: i64::from(r.batch_size),
        })
    }

    /// Refuses a network-reachable coordinator without access control unless `insecure`.
    pub fn check_exposure(&self) -> Result<(), String> {
        if self.access_control || self.insecure {
            return Ok(());
        }
        for (key, addr) in [("listen", self.listen), ("http_listen", self.http_listen)] {
            if !addr.ip().is_loopback() {
                return Err(format!(
                    "{key} {addr} is reachable from other hosts and access_control is off: \
                     anyone who can connect could run commands on every worker. Turn \
                     access_control on, or pass --insecure (insecure = true) to accept that"
                ));
            }
        }
        Ok(())
    }

    pub fn reaper_interval(&self) -> Duration {
        Duration::from_millis(self.reaper_interval_ms)
    }

    pub fn dispatch_sweep(&self) -> Duration {
        Duration::from_millis(self.dispatch_sweep_ms)
    }

    /// The TLS files, if TLS is on.
    pub fn server_tls(&self) -> Option<drover_transport::ServerTls> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Some(drover_transport::ServerTls {
                cert_file: cert.clone(),
                key_file: key.clone(),
                client_ca_file: self.tls_client_ca_file.clone(),
                client_cert_required: self.tls_client_cert_required,
            }),
            _ => None,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err("tls_cert_file and tls_key_file must be set together".into());
        }
        if self.tls_client_ca_file.is_some() && self.tls_cert_file.is_none() {
            return Err(
                "tls_client_ca_file needs tls_cert_file and tls_key_file (mTLS is TLS)".into(),
            );
        }
        if self.tls_reload_interval_ms < 100 {
            return Err("tls_reload_interval_ms must be at least 100".into());
        }
        if !(DISPATCH_SWEEP_MIN_MS..=DISPATCH_SWEEP_MAX_MS).contains(&self.dispatch_sweep_ms) {
            return Err(format!(
                "dispatch_sweep_ms ({}) must be between {DISPATCH_SWEEP_MIN_MS} and \
                 {DISPATCH_SWEEP_MAX_MS}",
                self.dispatch_sweep_ms
            ));
        }
        if self.heartbeat_interval_ms == 0
            || self.heartbeat_interval_ms.saturating_mul(2) > self.lease_ttl_ms
        {
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
        self.retention()?;
        if self.max_log_streams_per_client == 0 {
            return Err("max_log_streams_per_client must be at least 1".into());
        }
        if self.max_watches_per_principal == 0 || self.max_watches == 0 {
            return Err("max_watches_per_principal and max_watches must be at least 1".into());
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
        crate::patterns::admit(&self.retry).map_err(|e| e.to_string())?;
        self.alerts.validate()?;
        for r in &self.open_routes {
            crate::auth::check_open_route(r).map_err(|e| format!("open_routes: {e}"))?;
        }
        if self.audit_retention_days == 0 {
            return Err("audit_retention_days must be positive".into());
        }
        if self.token_cache_ms > 60_000 {
            return Err("token_cache_ms must be at most 60000".into());
        }
        for (name, q) in &self.queues {
            drover_core::validate::check_name("queues", name).map_err(|e| e.to_string())?;
            let (policy, timeout) = self.queue_defaults(name);
            crate::patterns::admit(&policy).map_err(|e| format!("queues.{name}.{e}"))?;
            q.limits().map_err(|e| format!("queues.{name}.{e}"))?;
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
    fn watch_bounds_must_be_positive() {
        let c = Config {
            max_watches: 0,
            ..Config::default()
        };
        assert!(c.validate().is_err_and(|e| e.contains("max_watches")));
        let c = Config {
            max_watches_per_principal: 0,
            ..Config::default()
        };
        assert!(c
            .validate()
            .is_err_and(|e| e.contains("max_watches_per_principal")));
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
    fn shipped_alerts_example_loads() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/coordinator-alerts.example.toml");
        let c = Config::load(Some(&path), Figment::new()).expect("coordinator-alerts.example.toml");
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.alerts.channels.len(), 3);
        assert_eq!(c.alerts.rules.len(), 9);
        // Secrets never show in the effective config (GetHealth's config_json).
        let json = serde_json::to_string(&c).unwrap_or_default();
        assert!(
            !json.contains("change-me") && !json.contains("shared-secret"),
            "{json}"
        );
        assert!(!json.contains("XXXX"), "{json}");
    }

    #[test]
    fn alert_rules_must_name_a_known_channel() {
        let toml =
            "[[alerts.rules]]\nname = \"r\"\nkind = \"permanent_failed\"\nchannel = \"nope\"\n";
        let f = Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(toml));
        let c: Config = f.extract().expect("parses");
        assert!(c
            .validate()
            .unwrap_err()
            .contains("alerts.rules[r].channel"));
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
        let c = Config {
            open_routes: vec!["/drover.v1.JobService/SubmitJob".into()],
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().contains("open_routes"));
    }

    #[test]
    fn retention_horizons_parse_with_units_and_name_the_bad_key() {
        let c = Config::default();
        let r = c.retention().expect("defaults parse");
        assert_eq!(r.jobs, drover_core::retention::JobHorizons::default());
        assert_eq!(r.logs, Duration::from_secs(7 * 86_400));
        assert_eq!(r.log_partition, Duration::from_secs(86_400));
        let toml = "[retention]\nsucceeded = \"90s\"\nlogs = \"2m\"\nlog_partition = \"1m\"\n";
        let f = Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(toml));
        let c: Config = f.extract().expect("parses");
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.log_retention(), Duration::from_secs(120));
        assert_eq!(
            c.retention().map(|r| r.jobs.succeeded),
            Ok(Duration::from_secs(90))
        );
        for (key, value, needle) in [
            ("succeeded", "30", "retention.succeeded"),
            ("cancelled", "0d", "retention.cancelled"),
            ("workers", "7y", "retention.workers"),
            ("log_partition", "10s", "retention.log_partition"),
            ("log_partition", "60d", "retention.log_partition"),
        ] {
            let toml = format!("[retention]\n{key} = \"{value}\"\n");
            let f =
                Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(&toml));
            let c: Config = f.extract().expect("parses");
            let e = c.validate().unwrap_err();
            assert!(e.contains(needle), "{key}={value}: {e}");
        }
        let toml = "[retention]\nbatch_size = 0\n";
        let f = Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(toml));
        let c: Config = f.extract().expect("parses");
        assert!(c.validate().unwrap_err().contains("retention.batch_size"));
    }

    #[test]
    fn exposure_needs_access_control_or_insecure() {
        let table = [
            ("127.0.0.1:1", true, false, true),
            ("127.0.0.1:1", false, false, true),
            ("0.0.0.0:1", true, false, true),
            ("0.0.0.0:1", false, false, false),
            ("0.0.0.0:1", false, true, true),
            ("[::]:1", false, false, false),
        ];
        for (addr, access_control, insecure, ok) in table {
            let c = Config {
                listen: addr.parse().unwrap(),
                access_control,
                insecure,
                ..Config::default()
            };
            assert_eq!(
                c.check_exposure().is_ok(),
                ok,
                "{addr} {access_control} {insecure}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn any_numbers_validate_or_are_refused(
            hb in proptest::prelude::any::<u64>(),
            ttl in proptest::prelude::any::<u64>(),
            cap in proptest::prelude::any::<u64>(),
            streams in proptest::prelude::any::<usize>(),
            memory in ".{0,12}",
            cpus in proptest::prelude::any::<f64>(),
        ) {
            let mut c = Config {
                heartbeat_interval_ms: hb,
                lease_ttl_ms: ttl,
                log_cap_bytes: cap,
                max_log_streams_per_client: streams,
                ..Config::default()
            };
            c.queues.insert("q".into(), QueueConfig {
                memory: Some(memory),
                cpus: Some(cpus),
                ..QueueConfig::default()
            });
            if c.validate().is_ok() {
                proptest::prop_assert!(hb > 0 && hb.saturating_mul(2) <= ttl);
                proptest::prop_assert!(streams > 0 && cap >= 1024);
                let l = c.queue_limits("q");
                proptest::prop_assert!(l.memory_bytes.is_some() && l.cpu_millis.is_some());
            }
        }
    }

    #[test]
    fn queue_limits_are_parsed_and_checked() {
        let q = |memory: &str, cpus: f64| QueueConfig {
            memory: Some(memory.into()),
            cpus: Some(cpus),
            pids: Some(512),
            ..QueueConfig::default()
        };
        let mut c = Config::default();
        c.queues.insert("big".into(), q("4G", 2.0));
        assert_eq!(c.validate(), Ok(()));
        let l = c.queue_limits("big");
        assert_eq!(l.memory_bytes, Some(4 << 30));
        assert_eq!(l.cpu_millis, Some(2000));
        assert_eq!(l.pids, Some(512));
        assert!(c.queue_limits("other").is_empty());
        for (m, cpus, field) in [
            ("4X", 2.0, "memory"),
            ("4G", -1.0, "cpus"),
            ("1", 1.0, "memory_limit_bytes"),
        ] {
            let mut c = Config::default();
            c.queues.insert("big".into(), q(m, cpus));
            let e = c.validate().unwrap_err();
            assert!(e.contains(&format!("queues.big.{field}")), "{e}");
        }
    }
}
