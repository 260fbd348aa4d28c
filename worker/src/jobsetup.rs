//! What a job starts with on this worker: the program (found in PATH, then checked
//! against `allowed_programs` and `forbid_shells`), a minimal environment (only the
//! `inherit_env` variables of the worker's own environment), the user it runs as
//! (`run_as_user`/`run_as_group`, when the worker is root), and its secrets, read here
//! from files or the worker's environment as the job's references say.
//!
//! The rules themselves are pure functions in `drover_core::jobguard`.

use crate::Config;
use drover_core::jobguard::{inherits, ProgramPolicy, SecretRef, MAX_SECRET_BYTES, PATH_MATCH};
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// PATH for a job when the worker itself has none.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The user and groups a job's process switches to before exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the user's groups, or only `gid` with `run_as_group`).
    pub groups: Vec<u32>,
    pub home: PathBuf,
}

#[derive(Debug, Clone)]
pub struct JobSetup {
    worker_id: String,
    policy: ProgramPolicy,
    inherit_env: Vec<String>,
    secret_files: Vec<glob::Pattern>,
    secret_env_vars: Vec<String>,
    pub run_as: Option<RunAs>,
}

fn lookup_run_as(user: &str, group: Option<&str>) -> Result<RunAs, String> {
    use nix::unistd::{Group, User};
    let u = User::from_name(user)
        .map_err(|e| format!("run_as_user {user:?}: {e}"))?
        .ok_or_else(|| format!("run_as_user {user:?}: no such user"))?;
    let (gid, groups) = match group {
        Some(g) => {
            let gr = Group::from_name(g)
                .map_err(|e| format!("run_as_group {g:?}: {e}"))?
                .ok_or_else(|| format!("run_as_group {g:?}: no such group"))?;
            (gr.gid, vec![gr.gid.as_raw()])
        }
        None => {
            let name = std::ffi::CString::new(user)
                .map_err(|_| format!("run_as_user {user:?}: contains NUL"))?;
            let groups = nix::unistd::getgrouplist(&name, u.gid)
                .map_err(|e| format!("run_as_user {user:?}: its groups: {e}"))?;
            (u.gid, groups.iter().map(|g| g.as_raw()).collect())
        }
    };
    Ok(RunAs {
        user: u.name,
        uid: u.uid.as_raw(),
        gid: gid.as_raw(),
        groups,
        home: u.dir,
    })
}

/// The worker's own environment, read once at start (it does not change while the worker
/// runs, and reading it per attempt was a visible share of the worker's CPU with short
/// jobs). A variable whose name or value is not UTF-8 is left out: no job inherits it.
pub fn worker_environment() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
}

impl JobSetup {
    /// Checks the settings; an error is a configuration error.
    pub fn from_config(cfg: &Config, worker_id: &str) -> Result<JobSetup, String> {
        let policy = ProgramPolicy::new(&cfg.allowed_programs, cfg.forbid_shells)?;
        let secret_files = cfg
            .secret_files
            .iter()
            .enumerate()
            .map(|(i, p)| {
                if !p.starts_with('/') {
                    return Err(format!("secret_files[{i}]: {p:?} must be absolute"));
                }
                glob::Pattern::new(p).map_err(|e| format!("secret_files[{i}]: {e}"))
            })
            .collect::<Result<_, _>>()?;
        let run_as = match (&cfg.run_as_user, &cfg.run_as_group) {
            (None, None) => None,
            (None, Some(_)) => return Err("run_as_group needs run_as_user".into()),
            (Some(u), g) => {
                if !nix::unistd::geteuid().is_root() {
                    return Err(format!(
                        "run_as_user {u:?}: the worker must run as root to switch users"
                    ));
                }
                Some(lookup_run_as(u, g.as_deref())?)
            }
        };
        Ok(JobSetup {
            worker_id: worker_id.to_string(),
            policy,
            inherit_env: cfg.inherit_env.clone(),
            secret_files,
            secret_env_vars: cfg.secret_env_vars.clone(),
            run_as,
        })
    }

    /// The environment a job starts from: the inherited variables of `worker_env`, a
    /// PATH, and (with run_as) HOME, USER and LOGNAME of that user. The job's own env,
    /// its secrets and the DROVER_* variables go on top.
    pub fn base_env(
        &self,
        worker_env: impl Iterator<Item = (String, String)>,
    ) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = worker_env
            .filter(|(k, _)| inherits(&self.inherit_env, k))
            // Never hand on the worker's systemd channels.
            .filter(|(k, _)| k != "NOTIFY_SOCKET" && !k.starts_with("WATCHDOG_"))
            .collect();
        env.entry("PATH".into())
            .or_insert_with(|| DEFAULT_PATH.into());
        if let Some(r) = &self.run_as {
            env.insert("HOME".into(), r.home.display().to_string());
            env.insert("USER".into(), r.user.clone());
            env.insert("LOGNAME".into(), r.user.clone());
        }
        env
    }

    fn refused(&self, program: &str) -> String {
        format!("program {program} not allowed on worker {}", self.worker_id)
    }

    /// Finds argv[0] the way exec would (a name with a `/` is a path from the work
    /// directory, others are looked up in the job's PATH) and checks it against the
    /// allowlist. The returned path is what gets executed, so what was checked is what
    /// runs.
    pub fn resolve_program(
        &self,
        program: &str,
        path_env: Option<&str>,
        work_dir: &Path,
    ) -> Result<PathBuf, String> {
        let found = if program.contains('/') {
            let p = work_dir.join(program);
            is_executable(&p).then_some(p)
        } else if program.is_empty() {
            None
        } else {
            path_env
                .unwrap_or(DEFAULT_PATH)
                .split(':')
                .filter(|d| !d.is_empty())
                .map(|d| Path::new(d).join(program))
                .find(|p| is_executable(p))
        };
        let Some(found) = found else {
            return Err(format!("{program}: not found (or not executable)"));
        };
        // A relative PATH entry is relative to the work directory, where the job runs.
        let found = if found.is_absolute() {
            found
        } else {
            work_dir.join(found)
        };
        let canonical = || std::fs::canonicalize(&found).unwrap_or_else(|_| found.clone());
        if !self.policy.allows_with(&found, canonical) {
            return Err(self.refused(program));
        }
        Ok(found)
    }

    /// Reads the values of a job's secret references. Errors name the variable and the
    /// reference, never a value.
    pub fn resolve_secrets<'a>(
        &self,
        refs: impl Iterator<Item = (&'a String, &'a String)>,
    ) -> Result<BTreeMap<String, String>, String> {
        let mut out = BTreeMap::new();
        for (name, r) in refs {
            let why = |e: String| format!("secret {name} ({r}): {e}");
            let value = match SecretRef::parse(r).map_err(why)? {
                SecretRef::Env(var) => {
                    if !inherits(&self.secret_env_vars, &var) {
                        return Err(why(format!(
                            "{var} is not in this worker's secret_env_vars"
                        )));
                    }
                    std::env::var(&var)
                        .map_err(|_| why(format!("{var} is not set on this worker")))?
                }
                SecretRef::File(path) => {
                    let canonical = std::fs::canonicalize(&path).map_err(|e| why(e.to_string()))?;
                    let allowed = |p: &Path| {
                        self.secret_files
                            .iter()
                            .any(|g| g.matches_path_with(p, PATH_MATCH))
                    };
                    if !(allowed(&path) && allowed(&canonical)) {
                        return Err(why("not in this worker's secret_files".into()));
                    }
                    let mut buf = Vec::new();
                    std::fs::File::open(&canonical)
                        .and_then(|f| f.take(MAX_SECRET_BYTES + 1).read_to_end(&mut buf))
                        .map_err(|e| why(e.to_string()))?;
                    if buf.len() as u64 > MAX_SECRET_BYTES {
                        return Err(why(format!("larger than {MAX_SECRET_BYTES} bytes")));
                    }
                    if buf.last() == Some(&b'\n') {
                        buf.pop();
                    }
                    String::from_utf8(buf).map_err(|_| why("not UTF-8".into()))?
                }
            };
            if value.contains('\0') {
                return Err(why("contains a NUL byte".into()));
            }
            out.insert(name.clone(), value);
        }
        Ok(out)
    }

    /// Makes a work directory the job's: mode 0700 (a job may have changed the mode of
    /// the slot's directory it had before), owned by the run_as user if there is one.
    pub fn prepare_work_dir(&self, dir: &Path) -> std::io::Result<()> {
        if let Some(r) = &self.run_as {
            std::os::unix::fs::chown(dir, Some(r.uid), Some(r.gid))?;
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
    }
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(allowed: &[&str], shells: bool) -> JobSetup {
        let cfg = Config {
            allowed_programs: allowed.iter().map(|s| s.to_string()).collect(),
            forbid_shells: shells,
            ..Config::default()
        };
        JobSetup::from_config(&cfg, "w9").unwrap()
    }

    #[test]
    fn programs_are_resolved_then_checked() {
        let dir = tempfile::tempdir().unwrap();
        let open = setup(&[], false);
        let echo = open.resolve_program("echo", None, dir.path()).unwrap();
        assert!(echo.is_absolute() && echo.ends_with("echo"), "{echo:?}");
        assert!(open
            .resolve_program("no-such-prog-x", None, dir.path())
            .is_err());
        assert!(open.resolve_program("", None, dir.path()).is_err());

        let only_true = setup(&["/usr/bin/true", "/bin/true"], false);
        assert!(only_true.resolve_program("true", None, dir.path()).is_ok());
        assert_eq!(
            only_true
                .resolve_program("echo", None, dir.path())
                .unwrap_err(),
            "program echo not allowed on worker w9"
        );
        // A script in the work directory is not on the list either.
        let script = dir.path().join("run.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(open.resolve_program("./run.sh", None, dir.path()).is_ok());
        assert!(only_true
            .resolve_program("./run.sh", None, dir.path())
            .is_err());
        // PATH pointing somewhere else does not get around the list.
        let p = dir.path().display().to_string();
        assert!(only_true
            .resolve_program("run.sh", Some(&p), dir.path())
            .is_err());

        let no_shells = setup(&[], true);
        for sh in ["sh", "bash", "dash"] {
            if open.resolve_program(sh, None, dir.path()).is_ok() {
                assert!(
                    no_shells.resolve_program(sh, None, dir.path()).is_err(),
                    "{sh}"
                );
            }
        }
        assert!(no_shells.resolve_program("true", None, dir.path()).is_ok());
    }

    #[test]
    fn minimal_environment() {
        let s = setup(&[], false);
        let env = s.base_env(
            [
                ("PATH", "/x"),
                ("HOME", "/root"),
                ("AWS_SECRET_ACCESS_KEY", "k"),
                ("LC_ALL", "C"),
                ("NOTIFY_SOCKET", "/run/n"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        assert_eq!(env.get("PATH").map(String::as_str), Some("/x"));
        assert_eq!(env.get("LC_ALL").map(String::as_str), Some("C"));
        assert!(!env.contains_key("AWS_SECRET_ACCESS_KEY"));
        assert!(!env.contains_key("NOTIFY_SOCKET"));
        let env = s.base_env(std::iter::empty());
        assert_eq!(env.get("PATH").map(String::as_str), Some(DEFAULT_PATH));
    }

    #[test]
    fn the_worker_environment_leaves_out_what_is_not_utf8() {
        use std::os::unix::ffi::OsStrExt;
        // std::env::vars() would panic on this variable.
        let bad = std::ffi::OsStr::from_bytes(b"caf\xe9");
        std::env::set_var("DROVER_TEST_NOT_UTF8_VALUE", bad);
        std::env::set_var("DROVER_TEST_UTF8_VALUE", "caf\u{e9}");
        let env: BTreeMap<String, String> = worker_environment().collect();
        assert!(!env.contains_key("DROVER_TEST_NOT_UTF8_VALUE"));
        assert_eq!(
            env.get("DROVER_TEST_UTF8_VALUE").map(String::as_str),
            Some("caf\u{e9}")
        );
    }

    #[test]
    fn secrets_only_from_allowed_places() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("secrets");
        std::fs::create_dir(&allowed).unwrap();
        std::fs::write(allowed.join("api"), "v4lue\n").unwrap();
        std::fs::write(dir.path().join("outside"), "no").unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), allowed.join("link")).unwrap();
        let cfg = Config {
            secret_files: vec![format!("{}/*", allowed.display())],
            ..Config::default()
        };
        let s = JobSetup::from_config(&cfg, "w").unwrap();
        let r = |name: &str, r: String| {
            let m: BTreeMap<String, String> = [(name.to_string(), r)].into();
            s.resolve_secrets(m.iter())
        };
        let ok = r("API", format!("file:{}/api", allowed.display())).unwrap();
        assert_eq!(ok.get("API").map(String::as_str), Some("v4lue"));
        let e = r("API", format!("file:{}/outside", dir.path().display())).unwrap_err();
        assert!(
            e.contains("secret_files") && e.starts_with("secret API"),
            "{e}"
        );
        let e = r("API", format!("file:{}/link", allowed.display())).unwrap_err();
        assert!(e.contains("secret_files"), "{e}");
        let e = r("API", format!("file:{}/missing", allowed.display())).unwrap_err();
        assert!(e.contains("missing"), "{e}");
        let e = r("API", "env:HOME".into()).unwrap_err();
        assert!(e.contains("secret_env_vars"), "{e}");
        let e = r("API", "env:DROVER_SECRET_SURELY_UNSET_X".into()).unwrap_err();
        assert!(e.contains("not set"), "{e}");
    }
}
