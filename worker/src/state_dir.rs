//! The worker's state directory: its stable id, and the work and spool directories that
//! are emptied at every start (whatever a crash left there belongs to attempts the
//! coordinator will mark lost when this worker says hello).

use std::io;
use std::path::Path;

/// Reads `<state_dir>/worker-id`, creating it as `<hostname>-<random>` on first start.
pub fn worker_id(state_dir: &Path) -> io::Result<String> {
    let path = state_dir.join("worker-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let host = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "worker".into());
    let id = format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    std::fs::create_dir_all(state_dir)?;
    std::fs::write(&path, format!("{id}\n"))?;
    Ok(id)
}

/// Empties (or creates) a directory the worker owns. Returns how many entries it removed.
pub fn reset_dir(dir: &Path) -> io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let mut n = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        // The entry's own type: a symlink is removed, never followed.
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
        n += 1;
    }
    Ok(n)
}

/// Kills the process groups recorded in `dir` by a previous run of this worker (one file
/// per attempt: "<pgid> <start time>") whose leader is still the same process, then empties
/// `dir`. Returns how many groups were killed.
pub fn kill_leftover_groups(dir: &Path) -> io::Result<usize> {
    let mut killed = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            let mut parts = text.split_whitespace();
            let pgid = parts.next().and_then(|p| p.parse::<i32>().ok());
            let start = parts.next().and_then(|p| p.parse::<u64>().ok());
            if let (Some(pgid), Some(start)) = (pgid, start) {
                // Same pid and same start time: still the process we started.
                if pgid > 1 && crate::process::process_start_time(pgid) == Some(start) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pgid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    killed += 1;
                }
            }
        }
    }
    reset_dir(dir)?;
    Ok(killed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn worker_id_is_stable() {
        let d = tempfile::tempdir().unwrap();
        let a = worker_id(d.path()).unwrap();
        let b = worker_id(d.path()).unwrap();
        assert_eq!(a, b);
        assert!(!a.is_empty());
    }

    #[test]
    fn leftover_groups_are_killed_but_reused_pids_are_not() {
        let d = tempfile::tempdir().unwrap();
        let pids = d.path().join("pids");
        std::fs::create_dir_all(&pids).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("1000")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let start = crate::process::process_start_time(pid).unwrap();
        std::fs::write(pids.join("a1"), format!("{pid} {start}\n")).unwrap();
        // A record whose start time does not match must be left alone.
        std::fs::write(pids.join("a2"), format!("{} 1\n", std::process::id())).unwrap();
        // A slot's record emptied when its attempt ended names nothing.
        std::fs::write(pids.join("slot-1"), b"").unwrap();
        assert_eq!(kill_leftover_groups(&pids).unwrap(), 1);
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        assert_eq!(std::fs::read_dir(&pids).unwrap().count(), 0);
    }

    #[test]
    fn reset_dir_removes_leftovers() {
        let d = tempfile::tempdir().unwrap();
        let work = d.path().join("work");
        std::fs::create_dir_all(work.join("old-attempt/sub")).unwrap();
        std::fs::write(work.join("old-attempt/sub/f"), b"x").unwrap();
        std::fs::write(work.join("stray"), b"x").unwrap();
        assert_eq!(reset_dir(&work).unwrap(), 2);
        assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);
    }
}
