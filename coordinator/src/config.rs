//! Coordinator settings: defaults, then a TOML file, then `DROVER_*` environment
//! variables (nested keys with `__`, e.g. `DROVER_RETRY__MAX_RETRIES=5`), then flags.
//! Durations are written with their unit (`lease_ttl = "8s"`); every table refuses keys it
//! does not know. Every setting and its default is listed in docs/configuration.md.

pub use drover_core::config_load::ConfigError;
use drover_core::duration::{format as show, human as dur, human_opt as dur_opt};
use drover_core::{PolicyOverrides, RetryPolicy};
use figment::providers::Env;
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bounds of `dispatch_sweep`: below 100 ms the sweep is polling; above a day a missed
/// notification would strand a job for too long.
pub const DISPATCH_SWEEP_MIN: Duration = Duration::from_millis(100);
pub const DISPATCH_SWEEP_MAX: Duration = Duration::from_secs(86_400);
/// Longest retention horizon; more would overflow timestamp arithmetic sooner or later.
pub const RETENTION_MAX: Duration = Duration::from_secs(10 * 366 * 86_400);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// HTTP listen address (health probes, log downloads).
    pub http_listen: SocketAddr,
    /// PostgreSQL connection URL. `DATABASE_URL` is honoured when this is not set.
    pub database_url: String,
    /// Maximum pooled database connections.
    pub db_pool_size: usize,
    /// Threads of the async runtime; 0: half the CPUs, at least one.
    pub runtime_threads: usize,
    /// A running attempt whose worker has not heartbeated for this long is lost.
    #[serde(with = "dur")]
    pub lease_ttl: Duration,
    /// How often workers are told to heartbeat.
    #[serde(with = "dur")]
    pub heartbeat_interval: Duration,
    /// How often the leader looks for expired leases.
    #[serde(with = "dur")]
    pub reaper_interval: Duration,
    /// How often each coordinator looks for due jobs without being woken by a
    /// notification (a safety net for a missed NOTIFY).
    #[serde(with = "dur")]
    pub dispatch_sweep: Duration,
    /// Retry policy for jobs that do not set their own (`[retry]`).
    #[serde(with = "retry_section")]
    pub retry: RetryPolicy,
    /// Per-queue defaults, applied over `retry` and under what a job sets itself.
    pub queues: BTreeMap<String, QueueConfig>,
    /// Per-attempt cap on stored output; past it the first and last halves are kept.
    pub log_cap_bytes: u64,
    /// Logs of attempts that finished longer ago than this are deleted (unless
    /// `retention.logs` is set).
    #[serde(with = "dur")]
    pub log_retention: Duration,
    /// How often the leader deletes expired logs and artifacts (in batches).
    #[serde(with = "dur")]
    pub retention_interval: Duration,
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
    #[serde(with = "dur")]
    pub token_cache: Duration,
    /// Audit log entries older than this are deleted by the leader.
    #[serde(with = "dur")]
    pub audit_retention: Duration,
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
    #[serde(with = "dur")]
    pub tls_reload_interval: Duration,
    /// How often the leader looks for due schedule ticks.
    #[serde(with = "dur")]
    pub schedule_interval: Duration,
    /// A tick handled later than this after its fire time counts as missed (catch-up policy).
    #[serde(with = "dur")]
    pub schedule_misfire_grace: Duration,
    /// Limits of concurrency keys by glob pattern (`"site:*" = 2`); the longest matching
    /// pattern applies when a job gives no limit. Unmatched keys: 1.
    pub concurrency_limits: BTreeMap<String, u32>,
    /// A job of priority p ranks as if it had waited p times this long already.
    #[serde(with = "dur")]
    pub priority_aging: Duration,
    /// Rate limits of concurrency keys by glob pattern (`"site:*" = "30/min"`).
    pub rate_limits: BTreeMap<String, String>,
    /// How long finished jobs, departed workers and samples are kept (`[retention]`).
    pub retention: RetentionConfig,
}

/// Retention horizons (`[retention]`), each a duration: `90s`, `30m`, `12h`, `30d`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Succeeded jobs (with their attempts, logs, artifacts) are deleted this long after
    /// they finished.
    #[serde(with = "dur")]
    pub succeeded: Duration,
    /// The same for permanently failed jobs.
    #[serde(with = "dur")]
    pub permanent_failed: Duration,
    /// The same for cancelled jobs (and schedule ticks skipped without a job).
    #[serde(with = "dur")]
    pub cancelled: Duration,
    /// Workers not seen for this long (and running nothing) are forgotten.
    #[serde(with = "dur")]
    pub workers: Duration,
    /// Per-minute resource samples of workers are kept this long.
    #[serde(with = "dur")]
    pub samples: Duration,
    /// Request ids of mutating calls (and the results kept for their repeats) are kept
    /// this long: a repeat after that acts again.
    #[serde(with = "dur")]
    pub request_ids: Duration,
    /// Logs and artifacts of attempts that finished this long ago are deleted; unset:
    /// `log_retention`.
    #[serde(with = "dur_opt")]
    pub logs: Option<Duration>,
    /// Length of one log partition: logs are stored in one table per period (by the
    /// start of their attempt) and retention drops whole tables.
    #[serde(with = "dur")]
    pub log_partition: Duration,
    /// Rows deleted per statement, so retention never holds locks for long.
    pub batch_size: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            succeeded: DAY * 30,
            permanent_failed: DAY * 90,
            cancelled: DAY * 30,
            workers: DAY * 7,
            samples: DAY,
            request_ids: DAY,
            logs: None,
            log_partition: DAY,
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

const DAY: Duration = Duration::from_secs(86_400);

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
            runtime_threads: 0,
            lease_ttl: Duration::from_secs(8),
            heartbeat_interval: Duration::from_secs(2),
            reaper_interval: Duration::from_secs(1),
            dispatch_sweep: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            queues: BTreeMap::new(),
            log_cap_bytes: 100 * 1024 * 1024,
            log_retention: DAY * 7,
            retention_interval: Duration::from_secs(60),
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
            token_cache: Duration::from_secs(2),
            audit_retention: DAY * 90,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            tls_client_cert_required: true,
            tls_reload_interval: Duration::from_secs(2),
            schedule_interval: Duration::from_millis(500),
            schedule_misfire_grace: Duration::from_secs(60),
            concurrency_limits: BTreeMap::new(),
            priority_aging: Duration::from_secs(60),
            rate_limits: BTreeMap::new(),
            retention: RetentionConfig::default(),
        }
    }
}

/// Defaults for the jobs of one queue (`[queues.<name>]` in the config file).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Timeout for jobs that set none (none by default).
    #[serde(with = "dur_opt")]
    pub timeout: Option<Duration>,
    /// Retry policy fields that differ from the server's `retry`.
    #[serde(with = "retry_overrides")]
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
    /// The retry policy and timeout (ms, 0 = none) a job of `queue` starts from.
    pub fn queue_defaults(&self, queue: &str) -> (RetryPolicy, i64) {
        match self.queues.get(queue) {
            Some(q) => (
                q.retry.apply(&self.retry),
                q.timeout.map_or(0, |t| millis(t) as i64),
            ),
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

    /// Layers the sources (`overrides` holds only the flags actually given) and validates
    /// the result once. Environment variables are read only for keys the config has, so
    /// `DROVER_TOKEN`, `DROVER_ADDR` and the like are left alone.
    pub fn load(file: Option<&Path>, overrides: Figment) -> Result<Config, ConfigError> {
        let env = vec![
            Env::raw().only(&["database_url"]),
            Env::prefixed("DROVER_").split("__"),
        ];
        let c: Config = drover_core::config_load::load(file, env, overrides)?;
        c.validate().map_err(ConfigError::Invalid)?;
        Ok(c)
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

    /// The `[retention]` horizons, with `retention.logs` falling back to `log_retention`.
    pub fn retention(&self) -> Retention {
        let r = &self.retention;
        Retention {
            jobs: drover_core::retention::JobHorizons {
                succeeded: r.succeeded,
                permanent_failed: r.permanent_failed,
                cancelled: r.cancelled,
            },
            workers: r.workers,
            samples: r.samples,
            request_ids: r.request_ids,
            logs: r.logs.unwrap_or(self.log_retention),
            log_partition: r.log_partition,
            batch_size: i64::from(r.batch_size),
        }
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

    /// Every check of the settings, in one place; the first problem found is returned,
    /// starting with its key. [`Config::load`] runs it; code that builds a `Config`
    /// itself has it run by `start`.
    pub fn validate(&self) -> Result<(), String> {
        let within = |key: &str, v: Duration, lo: Duration, hi: Duration| {
            if v < lo || v > hi {
                Err(format!(
                    "{key}: {} must be {} to {}",
                    show(v),
                    show(lo),
                    show(hi)
                ))
            } else {
                Ok(())
            }
        };
        let positive = |key: &str, v: Duration| {
            if v.is_zero() {
                Err(format!("{key}: must be positive"))
            } else {
                Ok(())
            }
        };
        let ms = Duration::from_millis;
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err("tls_cert_file and tls_key_file must be set together".into());
        }
        if self.tls_client_ca_file.is_some() && self.tls_cert_file.is_none() {
            return Err(
                "tls_client_ca_file needs tls_cert_file and tls_key_file (mTLS is TLS)".into(),
            );
        }
        if self.tls_reload_interval < ms(100) {
            return Err(format!(
                "tls_reload_interval: {} must be at least 100ms",
                show(self.tls_reload_interval)
            ));
        }
        within(
            "dispatch_sweep",
            self.dispatch_sweep,
            DISPATCH_SWEEP_MIN,
            DISPATCH_SWEEP_MAX,
        )?;
        let twice = self.heartbeat_interval.checked_mul(2);
        if self.heartbeat_interval.is_zero() || twice.is_none_or(|t| t > self.lease_ttl) {
            return Err(format!(
                "heartbeat_interval: {} must be positive and at most half of lease_ttl ({})",
                show(self.heartbeat_interval),
                show(self.lease_ttl)
            ));
        }
        positive("reaper_interval", self.reaper_interval)?;
        if self.log_cap_bytes < 1024 {
            return Err("log_cap_bytes must be at least 1024".into());
        }
        positive("retention_interval", self.retention_interval)?;
        within("log_retention", self.log_retention, ms(1), RETENTION_MAX)?;
        self.check_retention()?;
        if self.max_log_streams_per_client == 0 {
            return Err("max_log_streams_per_client must be at least 1".into());
        }
        if self.max_watches_per_principal == 0 || self.max_watches == 0 {
            return Err("max_watches_per_principal and max_watches must be at least 1".into());
        }
        within(
            "schedule_interval",
            self.schedule_interval,
            ms(1),
            ms(60_000),
        )?;
        if self.schedule_misfire_grace < self.schedule_interval {
            return Err(format!(
                "schedule_misfire_grace: {} must be at least schedule_interval ({})",
                show(self.schedule_misfire_grace),
                show(self.schedule_interval)
            ));
        }
        within("priority_aging", self.priority_aging, ms(1), DAY)?;
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
        drover_telemetry::runtime::check_runtime_threads("runtime_threads", self.runtime_threads)?;
        let max_backoff = ms(drover_core::retry::MAX_BACKOFF_MS);
        // Checked here too so that the message names the config's keys, not the job's.
        let policies = std::iter::once(("retry".to_string(), self.retry.clone())).chain(
            self.queues
                .iter()
                .map(|(n, q)| (format!("queues.{n}.retry"), q.retry.apply(&self.retry))),
        );
        for (prefix, p) in policies {
            within(
                &format!("{prefix}.initial_backoff"),
                ms(p.initial_backoff_ms),
                Duration::ZERO,
                max_backoff,
            )?;
            within(
                &format!("{prefix}.max_backoff"),
                ms(p.max_backoff_ms),
                Duration::ZERO,
                max_backoff,
            )?;
        }
        crate::patterns::admit(&self.retry).map_err(|e| e.to_string())?;
        self.alerts.validate()?;
        for r in &self.open_routes {
            crate::auth::check_open_route(r).map_err(|e| format!("open_routes: {e}"))?;
        }
        within(
            "audit_retention",
            self.audit_retention,
            ms(1),
            RETENTION_MAX,
        )?;
        within("token_cache", self.token_cache, Duration::ZERO, ms(60_000))?;
        for (name, q) in &self.queues {
            drover_core::validate::check_name("queues", name).map_err(|e| e.to_string())?;
            let (policy, _) = self.queue_defaults(name);
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
            if let Some(t) = q.timeout {
                let max = ms(drover_core::validate::MAX_TIMEOUT_MS as u64);
                within(&format!("queues.{name}.timeout"), t, ms(1), max)?;
            }
        }
        Ok(())
    }

    fn check_retention(&self) -> Result<(), String> {
        let r = &self.retention;
        let horizons = [
            ("succeeded", Some(r.succeeded)),
            ("permanent_failed", Some(r.permanent_failed)),
            ("cancelled", Some(r.cancelled)),
            ("workers", Some(r.workers)),
            ("samples", Some(r.samples)),
            ("request_ids", Some(r.request_ids)),
            ("logs", r.logs),
        ];
        for (key, v) in horizons {
            match v {
                Some(v) if v < Duration::from_secs(1) => {
                    return Err(format!("retention.{key}: {} must be at least 1s", show(v)))
                }
                Some(v) if v > RETENTION_MAX => {
                    return Err(format!("retention.{key}: {} is over 10 years", show(v)))
                }
                _ => {}
            }
        }
        if !(LOG_PARTITION_MIN..=LOG_PARTITION_MAX).contains(&r.log_partition) {
            return Err(format!(
                "retention.log_partition: {} must be 1m to 31d",
                show(r.log_partition)
            ));
        }
        if !(1..=100_000).contains(&r.batch_size) {
            return Err("retention.batch_size must be 1 to 100000".into());
        }
        Ok(())
    }
}

/// Whole milliseconds, saturating (the unit the job records and the retry policy keep).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `[retry]`: [`RetryPolicy`] as written in the config file, with durations for the waits
/// (the policy itself keeps milliseconds, as jobs store it).
mod retry_section {
    use super::{dur, millis};
    use drover_core::RetryPolicy;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::time::Duration;

    #[derive(Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Section {
        max_retries: u32,
        #[serde(with = "dur")]
        initial_backoff: Duration,
        multiplier: f64,
        #[serde(with = "dur")]
        max_backoff: Duration,
        jitter: f64,
        retryable_exit_codes: Vec<i32>,
        permanent_exit_codes: Vec<i32>,
        retryable_patterns: Vec<String>,
        permanent_patterns: Vec<String>,
        retry_out_of_memory: bool,
    }

    impl Default for Section {
        fn default() -> Self {
            Section::from(&RetryPolicy::default())
        }
    }

    impl From<&RetryPolicy> for Section {
        fn from(p: &RetryPolicy) -> Self {
            Section {
                max_retries: p.max_retries,
                initial_backoff: Duration::from_millis(p.initial_backoff_ms),
                multiplier: p.multiplier,
                max_backoff: Duration::from_millis(p.max_backoff_ms),
                jitter: p.jitter,
                retryable_exit_codes: p.retryable_exit_codes.clone(),
                permanent_exit_codes: p.permanent_exit_codes.clone(),
                retryable_patterns: p.retryable_patterns.clone(),
                permanent_patterns: p.permanent_patterns.clone(),
                retry_out_of_memory: p.retry_out_of_memory,
            }
        }
    }

    pub fn serialize<S: Serializer>(p: &RetryPolicy, s: S) -> Result<S::Ok, S::Error> {
        Section::from(p).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<RetryPolicy, D::Error> {
        let s = Section::deserialize(d)?;
        Ok(RetryPolicy {
            max_retries: s.max_retries,
            initial_backoff_ms: millis(s.initial_backoff),
            multiplier: s.multiplier,
            max_backoff_ms: millis(s.max_backoff),
            jitter: s.jitter,
            retryable_exit_codes: s.retryable_exit_codes,
            permanent_exit_codes: s.permanent_exit_codes,
            retryable_patterns: s.retryable_patterns,
            permanent_patterns: s.permanent_patterns,
            retry_out_of_memory: s.retry_out_of_memory,
        })
    }
}

/// `[queues.<name>.retry]`: [`PolicyOverrides`] as written in the config file.
mod retry_overrides {
    use super::{dur_opt, millis};
    use drover_core::PolicyOverrides;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::time::Duration;

    #[derive(Default, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Section {
        max_retries: Option<u32>,
        #[serde(with = "dur_opt", skip_serializing_if = "Option::is_none")]
        initial_backoff: Option<Duration>,
        multiplier: Option<f64>,
        #[serde(with = "dur_opt", skip_serializing_if = "Option::is_none")]
        max_backoff: Option<Duration>,
        jitter: Option<f64>,
        retryable_exit_codes: Option<Vec<i32>>,
        permanent_exit_codes: Option<Vec<i32>>,
        retryable_patterns: Option<Vec<String>>,
        permanent_patterns: Option<Vec<String>>,
        retry_out_of_memory: Option<bool>,
    }

    pub fn serialize<S: Serializer>(p: &PolicyOverrides, s: S) -> Result<S::Ok, S::Error> {
        Section {
            max_retries: p.max_retries,
            initial_backoff: p.initial_backoff_ms.map(Duration::from_millis),
            multiplier: p.multiplier,
            max_backoff: p.max_backoff_ms.map(Duration::from_millis),
            jitter: p.jitter,
            retryable_exit_codes: p.retryable_exit_codes.clone(),
            permanent_exit_codes: p.permanent_exit_codes.clone(),
            retryable_patterns: p.retryable_patterns.clone(),
            permanent_patterns: p.permanent_patterns.clone(),
            retry_out_of_memory: p.retry_out_of_memory,
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PolicyOverrides, D::Error> {
        let s = Section::deserialize(d)?;
        Ok(PolicyOverrides {
            max_retries: s.max_retries,
            initial_backoff_ms: s.initial_backoff.map(millis),
            multiplier: s.multiplier,
            max_backoff_ms: s.max_backoff.map(millis),
            jitter: s.jitter,
            retryable_exit_codes: s.retryable_exit_codes,
            permanent_exit_codes: s.permanent_exit_codes,
            retryable_patterns: s.retryable_patterns,
            permanent_patterns: s.permanent_patterns,
            retry_out_of_memory: s.retry_out_of_memory,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::Serialized;

    /// Loads `text` as the config file, the way the binary does.
    fn load_toml(text: &str) -> (tempfile::TempDir, PathBuf, Result<Config, ConfigError>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("coordinator.toml");
        std::fs::write(&path, text).expect("write");
        let c = Config::load(Some(&path), Figment::new());
        (dir, path, c)
    }

    fn load_err(text: &str) -> (String, String) {
        let (_dir, path, c) = load_toml(text);
        match c {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => (e.to_string(), path.display().to_string()),
        }
    }

    #[test]
    fn defaults_are_valid_and_loopback_only() {
        let c = Config::default();
        assert_eq!(c.validate(), Ok(()));
        assert!(c.listen.ip().is_loopback());
        assert_eq!(c.retry.max_retries, 3);
    }

    #[test]
    fn runtime_threads_are_bounded() {
        let c = Config {
            runtime_threads: 1025,
            ..Config::default()
        };
        assert!(c
            .validate()
            .is_err_and(|e| e.starts_with("runtime_threads: 1025")));
        let c = Config {
            runtime_threads: 1,
            ..Config::default()
        };
        assert_eq!(c.validate(), Ok(()));
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
        assert_eq!(c.lease_ttl, Duration::from_secs(8));
        assert_eq!(c.retry.retryable_patterns.len(), 3);
        assert_eq!(c.retry.initial_backoff_ms, 5_000);
        assert_eq!(c.retry.max_backoff_ms, 3_600_000);
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
        assert_eq!(c.alerts.channels.len(), 3);
        assert_eq!(c.alerts.rules.len(), 9);
        assert_eq!(c.alerts.backoff_max, Duration::from_secs(15 * 60));
        // Secrets never show in the effective config (GetHealth's config_json).
        let json = serde_json::to_string(&c).unwrap_or_default();
        assert!(
            !json.contains("change-me") && !json.contains("shared-secret"),
            "{json}"
        );
        assert!(!json.contains("XXXX"), "{json}");
    }

    #[test]
    fn durations_are_read_with_their_unit_from_file_and_flags() {
        let (_d, _p, c) = load_toml(
            "lease_ttl = \"9s\"\nheartbeat_interval = \"1500ms\"\nlog_retention = \"1h 30m\"\n\
             [queues.q]\ntimeout = \"2m\"\n[queues.q.retry]\nmax_backoff = \"1h\"\n\
             [retry]\ninitial_backoff = \"250ms\"\n[alerts]\nretention = \"2d\"\n",
        );
        let c = c.expect("loads");
        assert_eq!(c.lease_ttl, Duration::from_secs(9));
        assert_eq!(c.heartbeat_interval, Duration::from_millis(1500));
        assert_eq!(c.retention().logs, Duration::from_secs(5400));
        assert_eq!(c.retry.initial_backoff_ms, 250);
        let (p, timeout) = c.queue_defaults("q");
        assert_eq!((p.max_backoff_ms, timeout), (3_600_000, 120_000));
        assert_eq!(c.alerts.retention, Duration::from_secs(2 * 86_400));
        // The effective config shows them the same way.
        let json = serde_json::to_value(&c).unwrap_or_default();
        assert_eq!(json["lease_ttl"], "9s");
        assert_eq!(json["retry"]["initial_backoff"], "250ms");
        // Flags are strings too.
        let flags = Figment::new().merge(Serialized::default("retention.logs", "3d"));
        let c = Config::load(None, flags).expect("loads");
        assert_eq!(c.retention().logs, Duration::from_secs(3 * 86_400));
        let flags = Figment::new().merge(Serialized::default("retention.logs", "3"));
        let e = Config::load(None, flags).unwrap_err().to_string();
        assert!(
            e.starts_with("retention.logs: ") && e.contains("flag"),
            "{e}"
        );
    }

    #[test]
    fn bare_numbers_and_negative_durations_are_refused_naming_the_key() {
        for (text, key, needle) in [
            ("lease_ttl = 8\n", "lease_ttl", "needs a unit"),
            ("lease_ttl = \"8\"\n", "lease_ttl", "needs a unit"),
            ("lease_ttl = \"-1s\"\n", "lease_ttl", "negative"),
            ("lease_ttl = -1\n", "lease_ttl", "negative"),
            (
                "token_cache = \"2 fortnights\"\n",
                "token_cache",
                "e.g. \"500ms\"",
            ),
            (
                "[alerts]\nsend_timeout = 3000\n",
                "alerts.send_timeout",
                "\"3000ms\"",
            ),
            (
                "[retention]\nsucceeded = \"30\"\n",
                "retention.succeeded",
                "needs a unit",
            ),
            (
                "[retry]\nmax_backoff = 60000\n",
                "retry.max_backoff",
                "needs a unit",
            ),
            (
                "[queues.q]\ntimeout = 5\n",
                "queues.q.timeout",
                "needs a unit",
            ),
        ] {
            let (e, path) = load_err(text);
            assert!(e.starts_with(&format!("{key}: ")), "{text}: {e}");
            assert!(e.contains(needle), "{text}: {e}");
            assert!(e.contains(&path), "{text}: {e}");
        }
    }

    #[test]
    fn a_typo_in_any_table_is_refused_naming_the_key_and_the_file() {
        for (text, key) in [
            ("lease_ttl_ms = 8000\n", "lease_ttl_ms"),
            ("lese_ttl = \"8s\"\n", "lese_ttl"),
            ("[retry]\nmax_retrys = 2\n", "retry.max_retrys"),
            (
                "[retry]\ninitial_backoff_ms = 5000\n",
                "retry.initial_backoff_ms",
            ),
            ("[queues.q]\ntimeout_ms = 5000\n", "queues.q.timeout_ms"),
            ("[queues.q.retry]\njiter = 0.1\n", "queues.q.retry.jiter"),
            ("[retention]\nsuceeded = \"1d\"\n", "retention.suceeded"),
            ("[alerts]\nretention_hours = 1\n", "alerts.retention_hours"),
            (
                "[alerts.channels.c]\nkind = \"slack\"\nurl = \"http://x\"\nuri = \"y\"\n",
                "alerts.channels.c.uri",
            ),
        ] {
            let (e, path) = load_err(text);
            assert!(e.starts_with(&format!("{key}: unknown key")), "{text}: {e}");
            assert!(e.contains(&path), "{text}: {e}");
        }
    }

    #[test]
    fn unrelated_drover_variables_are_ignored_and_settings_are_read() {
        // Harmless to other tests of this process: none of them looks at max_watches.
        std::env::set_var("DROVER_TOKEN", "t0ken");
        std::env::set_var("DROVER_ADDR", "http://127.0.0.1:1");
        std::env::set_var("DROVER_SECRET_API_KEY", "s");
        std::env::set_var("DROVER_WORKER_KILL_GRACE", "1s");
        std::env::set_var("DROVER_MAX_WATCHES", "4097");
        let c = Config::load(None, Figment::new()).expect("loads");
        assert_eq!(c.max_watches, 4097);
    }

    #[test]
    fn alert_rules_must_name_a_known_channel() {
        let (e, _) = load_err(
            "[[alerts.rules]]\nname = \"r\"\nkind = \"permanent_failed\"\nchannel = \"nope\"\n",
        );
        assert!(e.contains("alerts.rules[r].channel"), "{e}");
    }

    #[test]
    fn missing_file_and_bad_values_are_errors() {
        assert!(matches!(
            Config::load(Some(Path::new("/nonexistent.toml")), Figment::new()),
            Err(ConfigError::MissingFile(_))
        ));
        let (e, _) = load_err("heartbeat_interval = \"5s\"\nlease_ttl = \"8s\"\n");
        assert_eq!(
            e,
            "heartbeat_interval: 5s must be positive and at most half of lease_ttl (8s)"
        );
        let (e, _) = load_err("dispatch_sweep = \"50ms\"\n");
        assert_eq!(e, "dispatch_sweep: 50ms must be 100ms to 1d");
        let (e, _) = load_err("schedule_interval = \"2m\"\n");
        assert!(e.starts_with("schedule_interval: 2m must be"), "{e}");
        let (e, _) = load_err("[alerts]\nbackoff_initial = \"1m\"\nbackoff_max = \"30s\"\n");
        assert!(e.starts_with("alerts.backoff_max: 30s must be 1m"), "{e}");
        let (e, _) = load_err("[retry]\nmax_backoff = \"31d\"\n");
        assert_eq!(e, "retry.max_backoff: 31d must be 0s to 30d");
        let c = Config {
            open_routes: vec!["/drover.v1.JobService/SubmitJob".into()],
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().contains("open_routes"));
    }

    #[test]
    fn retention_horizons_parse_with_units_and_name_the_bad_key() {
        let r = Config::default().retention();
        assert_eq!(r.jobs, drover_core::retention::JobHorizons::default());
        assert_eq!(r.logs, Duration::from_secs(7 * 86_400));
        assert_eq!(r.log_partition, Duration::from_secs(86_400));
        let (_d, _p, c) =
            load_toml("[retention]\nsucceeded = \"90s\"\nlogs = \"2m\"\nlog_partition = \"1m\"\n");
        let c = c.expect("loads");
        assert_eq!(c.retention().logs, Duration::from_secs(120));
        assert_eq!(c.retention().jobs.succeeded, Duration::from_secs(90));
        for (key, value) in [
            ("cancelled", "0d"),
            ("workers", "11y"),
            ("log_partition", "10s"),
            ("log_partition", "60d"),
        ] {
            let (e, _) = load_err(&format!("[retention]\n{key} = \"{value}\"\n"));
            assert!(e.starts_with(&format!("retention.{key}: ")), "{e}");
        }
        let (e, _) = load_err("[retention]\nbatch_size = 0\n");
        assert!(e.contains("retention.batch_size"), "{e}");
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
                heartbeat_interval: Duration::from_millis(hb),
                lease_ttl: Duration::from_millis(ttl),
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

        #[test]
        fn any_duration_text_loads_or_is_refused_naming_the_key(text in ".{0,16}") {
            let flags = Figment::new().merge(Serialized::default("priority_aging", &text));
            if let Err(e) = Config::load(None, flags) {
                let e = e.to_string();
                proptest::prop_assert!(e.starts_with("priority_aging: "), "{}", e);
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
