//! Worker settings: defaults, then a TOML file, then `DROVER_WORKER_*` environment variables,
//! then flags. Durations are written with their unit (`kill_grace = "10s"`); unknown keys
//! are refused. Every setting and its default is listed in docs/configuration.md.

pub use drover_core::config_load::ConfigError;
use drover_core::duration::human as dur;
use figment::providers::Env;
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Coordinator gRPC addresses, tried in order: the worker keeps its session with one
    /// and moves to the next when that one is unreachable. A TOML list, or one string with
    /// commas (`DROVER_WORKER_COORDINATOR=https://a:50051,https://b:50051`).
    #[serde(deserialize_with = "address_list")]
    pub coordinator: Vec<String>,
    /// Stable worker id. Empty: read from `<state_dir>/worker-id`, created on first start.
    pub worker_id: String,
    /// Worker's own files: its id, per-attempt work directories and log spools.
    pub state_dir: PathBuf,
    /// Jobs run at once. 0 means one per CPU.
    pub slots: u32,
    /// Jobs the worker may hold beyond its slots, each started the moment a slot frees,
    /// so that a slot does not stand empty while its next lease is on its way (for many
    /// short jobs). 0 to `slots`.
    pub lease_ahead: u32,
    /// How long a job leased ahead may wait for a slot before it is handed back (released,
    /// not counted as a retry) for another worker; the worker then leases ahead again
    /// only after a job of its own ran for less than this.
    #[serde(with = "dur")]
    pub lease_ahead_hold: Duration,
    /// Threads of the worker's async runtime; 0: half the CPUs, at least one.
    pub runtime_threads: usize,
    /// Queues to take jobs from.
    pub queues: Vec<String>,
    /// Labels this worker offers; a job runs here only if it needs a subset of them.
    pub labels: Vec<String>,
    /// After SIGTERM (timeout, cancel), how long a job has before SIGKILL.
    #[serde(with = "dur")]
    pub kill_grace: Duration,
    /// After SIGTERM, how long running jobs may go on before they are stopped and handed
    /// back to the coordinator.
    #[serde(with = "dur")]
    pub drain_timeout: Duration,
    /// Most bytes of output spooled on local disk per attempt while the coordinator is
    /// unreachable; beyond it output is dropped with a marker in the log.
    pub max_spool_bytes: u64,
    /// Below this much free space on the work directory's disk, take no new jobs.
    pub min_disk_free_bytes: u64,
    /// Below this much available memory, take no new jobs.
    pub min_memory_available_bytes: u64,
    /// `text` or `json` log lines on stderr.
    pub log_format: String,
    /// If set, log lines also go to a file here, rotated daily, 7 kept.
    pub log_dir: Option<PathBuf>,
    /// How attempts are contained: `auto` (a cgroup per attempt or slot where the worker can
    /// create one, else a child subreaper) or `subreaper` (never cgroups; no limits).
    pub containment: String,
    /// Turn on cgroup2's `favordynmods` mount option (if off) so that joining an attempt's
    /// cgroup does not wait for an RCU grace period (~7 ms of pickup latency each).
    pub cgroup_favordynmods: bool,
    /// Bearer token (role worker) sent to the coordinator. Prefer `token_file`.
    pub token: Option<String>,
    /// File holding the token (first line; must not be readable by others).
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) an https:// coordinator's certificate must chain to.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) presented to the coordinator (mTLS); its common name or a
    /// SAN must be this worker's id.
    pub tls_cert_file: Option<PathBuf>,
    /// Private key (PEM) of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Programs jobs may run: absolute paths or globs, matched after the PATH search of
    /// argv[0]. Empty: any program.
    pub allowed_programs: Vec<String>,
    /// Refuse jobs whose program is a shell (sh, bash, dash, zsh, ...).
    pub forbid_shells: bool,
    /// Variables of the worker's own environment a job inherits (`NAME` or `PREFIX*`;
    /// `*` for all).
    pub inherit_env: Vec<String>,
    /// Run jobs as this user (the worker must be root).
    pub run_as_user: Option<String>,
    /// Run jobs with this group instead of the user's groups.
    pub run_as_group: Option<String>,
    /// Files a job's `file:` secret references may name (absolute globs).
    pub secret_files: Vec<String>,
    /// Worker variables a job's `env:` secret references may name (`NAME` or `PREFIX*`).
    pub secret_env_vars: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            coordinator: vec!["http://127.0.0.1:50051".into()],
            worker_id: String::new(),
            state_dir: PathBuf::from("/var/lib/drover-worker"),
            slots: 0,
            lease_ahead: 0,
            lease_ahead_hold: Duration::from_secs(1),
            runtime_threads: 0,
            queues: vec!["default".into()],
            labels: Vec::new(),
            kill_grace: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            max_spool_bytes: 1024 * 1024 * 1024,
            min_disk_free_bytes: 1024 * 1024 * 1024,
            min_memory_available_bytes: 128 * 1024 * 1024,
            log_format: "text".into(),
            log_dir: None,
            containment: "auto".into(),
            cgroup_favordynmods: true,
            token: None,
            token_file: None,
            ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            allowed_programs: Vec::new(),
            forbid_shells: false,
            inherit_env: drover_core::jobguard::DEFAULT_INHERIT_ENV
                .iter()
                .map(|s| s.to_string())
                .collect(),
            run_as_user: None,
            run_as_group: None,
            secret_files: vec!["/etc/drover/secrets/*".into()],
            secret_env_vars: vec!["DROVER_SECRET_*".into()],
        }
    }
}

/// Bounds of `lease_ahead_hold`: long enough for a slot to free between two short jobs,
/// short enough that a held job never waits long behind a busy host.
pub const MIN_LEASE_AHEAD_HOLD: Duration = Duration::from_millis(10);
pub const MAX_LEASE_AHEAD_HOLD: Duration = Duration::from_secs(60);

/// Most coordinator addresses a worker takes.
pub const MAX_COORDINATORS: usize = 16;

/// Splits comma-separated entries and drops blanks: `["a,b", "c"]` -> `[a, b, c]`.
pub fn split_addresses<'a>(items: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    items
        .into_iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// `coordinator` as one string (commas allowed) or a list of strings.
fn address_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => split_addresses([s.as_str()]),
        OneOrMany::Many(v) => split_addresses(v.iter().map(String::as_str)),
    })
}

impl Config {
    /// Layers the sources (`overrides` holds only the flags actually given) and validates
    /// the result once. `DROVER_WORKER_*` variables that are not settings (such as
    /// `DROVER_WORKER_CONFIG`) are left alone.
    pub fn load(file: Option<&Path>, overrides: Figment) -> Result<Config, ConfigError> {
        let env = vec![Env::prefixed("DROVER_WORKER_")];
        let c: Config = drover_core::config_load::load(file, env, overrides)?;
        c.validate().map_err(ConfigError::Invalid)?;
        Ok(c)
    }

    /// Every check of the settings, in one place; the first problem found is returned,
    /// starting with its key.
    pub fn validate(&self) -> Result<(), String> {
        if self.coordinator.is_empty() {
            return Err("coordinator: at least one address is needed".into());
        }
        if self.coordinator.len() > MAX_COORDINATORS {
            return Err(format!(
                "coordinator: {} addresses; the limit is {MAX_COORDINATORS}",
                self.coordinator.len()
            ));
        }
        for addr in &self.coordinator {
            if !(addr.starts_with("http://") || addr.starts_with("https://")) {
                return Err(format!(
                    "coordinator: {addr:?} must start with http:// or https://"
                ));
            }
            self.client_tls()
                .endpoint(addr)
                .map_err(|e| format!("coordinator: {e}"))?;
        }
        drover_telemetry::runtime::check_runtime_threads("runtime_threads", self.runtime_threads)?;
        if self.lease_ahead > self.slots() {
            return Err(format!(
                "lease_ahead: {} is more than slots ({}); at most one held job a slot",
                self.lease_ahead,
                self.slots()
            ));
        }
        if self.lease_ahead_hold < MIN_LEASE_AHEAD_HOLD
            || self.lease_ahead_hold > MAX_LEASE_AHEAD_HOLD
        {
            return Err(format!(
                "lease_ahead_hold: {} must be from {} to {}",
                drover_core::duration::format(self.lease_ahead_hold),
                drover_core::duration::format(MIN_LEASE_AHEAD_HOLD),
                drover_core::duration::format(MAX_LEASE_AHEAD_HOLD)
            ));
        }
        if !matches!(self.containment.as_str(), "auto" | "subreaper") {
            return Err(format!(
                "containment: {:?} must be \"auto\" or \"subreaper\"",
                self.containment
            ));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err("tls_cert_file and tls_key_file must be set together".into());
        }
        crate::jobsetup::JobSetup::from_config(self, &self.worker_id)?;
        for (i, q) in self.queues.iter().enumerate() {
            drover_core::validate::check_name(&format!("queues[{i}]"), q)
                .map_err(|e| e.to_string())?;
        }
        for (i, l) in self.labels.iter().enumerate() {
            drover_core::validate::check_name(&format!("labels[{i}]"), l)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The token to send: `token`, else the contents of `token_file`, else none.
    pub fn resolve_token(&self) -> Result<Option<String>, String> {
        match (&self.token, &self.token_file) {
            (Some(t), _) if !t.trim().is_empty() => Ok(Some(t.trim().to_string())),
            (_, Some(path)) => drover_proto::auth::read_token_file(path)
                .map(Some)
                .map_err(|e| format!("token_file: {e}")),
            _ => Ok(None),
        }
    }

    /// How the coordinator is verified (https://) and how this worker identifies to it.
    pub fn client_tls(&self) -> drover_transport::ClientTls {
        drover_transport::ClientTls {
            ca_file: self.ca_file.clone(),
            cert_file: self.tls_cert_file.clone(),
            key_file: self.tls_key_file.clone(),
        }
    }

    pub fn slots(&self) -> u32 {
        if self.slots > 0 {
            self.slots
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1)
        }
    }

    pub fn work_root(&self) -> PathBuf {
        self.state_dir.join("work")
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.state_dir.join("spool")
    }

    /// Process groups of running attempts, for cleanup after a crash.
    pub fn pids_dir(&self) -> PathBuf {
        self.state_dir.join("pids")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::Serialized;

    fn load_toml(text: &str) -> (String, Result<Config, ConfigError>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("worker.toml");
        std::fs::write(&path, text).expect("write");
        let c = Config::load(Some(&path), Figment::new());
        (path.display().to_string(), c)
    }

    #[test]
    fn durations_need_a_unit_and_typos_are_refused_naming_key_and_file() {
        let (_, c) = load_toml("kill_grace = \"500ms\"\ndrain_timeout = \"1m 30s\"\n");
        let c = c.expect("loads");
        assert_eq!(c.kill_grace, Duration::from_millis(500));
        assert_eq!(c.drain_timeout, Duration::from_secs(90));
        for (text, needle) in [
            (
                "kill_grace = 10\n",
                "kill_grace: 10: a duration needs a unit",
            ),
            (
                "kill_grace = \"10\"\n",
                "kill_grace: \"10\": a duration needs a unit",
            ),
            (
                "drain_timeout = \"-1s\"\n",
                "drain_timeout: \"-1s\": a duration must not",
            ),
            ("kill_grace_ms = 10000\n", "kill_grace_ms: unknown key"),
            ("slot = 2\n", "slot: unknown key"),
        ] {
            let (path, c) = load_toml(text);
            let e = c.expect_err(text).to_string();
            assert!(e.starts_with(needle), "{text}: {e}");
            assert!(e.contains(&path), "{text}: {e}");
        }
    }

    #[test]
    fn lease_ahead_is_bounded_by_the_slots_and_its_hold_by_its_range() {
        let (_, c) = load_toml("slots = 4\nlease_ahead = 4\nlease_ahead_hold = \"250ms\"\n");
        let c = c.expect("loads");
        assert_eq!(
            (c.lease_ahead, c.lease_ahead_hold),
            (4, Duration::from_millis(250))
        );
        for (text, needle) in [
            (
                "slots = 4\nlease_ahead = 5\n",
                "lease_ahead: 5 is more than slots (4)",
            ),
            (
                "lease_ahead_hold = \"1ms\"\n",
                "lease_ahead_hold: 1ms must be from 10ms to 1m",
            ),
            (
                "lease_ahead_hold = \"2m\"\n",
                "lease_ahead_hold: 2m must be from 10ms to 1m",
            ),
        ] {
            let (_, c) = load_toml(text);
            let e = c.expect_err(text).to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn unrelated_drover_worker_variables_are_ignored() {
        // DROVER_WORKER_CONFIG names the file (a flag's variable), not a setting.
        std::env::set_var("DROVER_WORKER_CONFIG", "/nonexistent.toml");
        std::env::set_var("DROVER_WORKER_SOMETHING_ELSE", "x");
        std::env::set_var("DROVER_TOKEN", "t");
        let c = Config::load(None, Figment::new()).expect("loads");
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn shipped_example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/worker.toml");
        let c = Config::load(Some(&path), Figment::new()).expect("deploy/worker.toml");
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.slots(), 8);
    }

    #[test]
    fn coordinator_addresses_from_file_env_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.toml");
        std::fs::write(
            &file,
            "coordinator = [\"http://a:1\", \"http://b:1,http://c:1\"]\n",
        )
        .unwrap();
        let c = Config::load(Some(&file), Figment::new()).unwrap();
        assert_eq!(c.coordinator, ["http://a:1", "http://b:1", "http://c:1"]);
        std::fs::write(&file, "coordinator = \"http://a:1, http://b:1\"\n").unwrap();
        let c = Config::load(Some(&file), Figment::new()).unwrap();
        assert_eq!(c.coordinator, ["http://a:1", "http://b:1"]);
        // Flags (repeated --coordinator) override the file.
        let flags = Figment::new().merge(Serialized::default(
            "coordinator",
            vec!["http://x:1", "http://y:1"],
        ));
        let c = Config::load(Some(&file), flags).unwrap();
        assert_eq!(c.coordinator, ["http://x:1", "http://y:1"]);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn bad_values_are_errors() {
        let c = Config {
            coordinator: vec!["127.0.0.1:50051".into()],
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().contains("coordinator"));
        let c = Config {
            coordinator: vec![],
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().contains("at least one"));
        let c = Config {
            coordinator: vec!["http://a:1".into(); MAX_COORDINATORS + 1],
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().contains("limit"));
        let c = Config {
            queues: vec!["bad queue".into()],
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().contains("queues[0]"));
        let c = Config {
            runtime_threads: 5000,
            ..Config::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .starts_with("runtime_threads: 5000"));
    }
}
