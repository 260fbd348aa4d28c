//! What an attempt occupies on disk, reused slot by slot: its work directory
//! (`<state_dir>/work/slot-N`) and the file recording its process group
//! (`<state_dir>/pids/slot-N`).
//!
//! With many short jobs, making and deleting a directory and a file per attempt was the
//! largest part of the worker's CPU: ext4 allocates an inode (and a directory block) for
//! each and frees it again, and on a file system without a journal its inode allocator
//! scans the recently deleted ones first (BENCHMARKS.md, session 9). A slot's directory is
//! emptied when its attempt ends instead, which for a job that left nothing behind is one
//! directory read.
//!
//! An attempt that finds no free slot (it cannot normally happen: the worker takes no more
//! attempts than it has slots) gets a directory and a file named after itself, removed at
//! its end. A slot whose directory cannot be emptied is retired, so the next job never
//! starts among an earlier one's files. A slot's group file is opened at its first
//! attempt and kept open, so recording and clearing a group is one `pwrite` each.

use crate::process::GroupFile;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The worker's slots, and which are free.
pub struct Slots {
    work_root: PathBuf,
    pids_dir: PathBuf,
    free: Mutex<Vec<usize>>,
    /// Slots' group files, open since their first attempt.
    group_files: Mutex<HashMap<usize, GroupFile>>,
}

impl Slots {
    pub fn new(work_root: PathBuf, pids_dir: PathBuf, slots: u32) -> Arc<Self> {
        Arc::new(Slots {
            work_root,
            pids_dir,
            free: Mutex::new((0..slots as usize).rev().collect()),
            group_files: Mutex::default(),
        })
    }

    /// Slot `i`'s group file, opened on first use and kept open; one that cannot be
    /// opened now is opened at each write instead (which reports the error).
    fn group_file(&self, i: usize, path: PathBuf) -> GroupFile {
        let mut files = self.group_files.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = files.get(&i) {
            return f.clone();
        }
        match GroupFile::kept_open(path.clone()) {
            Ok(f) => files.entry(i).or_insert(f).clone(),
            Err(_) => GroupFile::at(path),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<usize>> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The places for one attempt: a free slot's, or (none free) the attempt's own.
    /// The work directory exists when this returns.
    pub fn open(self: &Arc<Self>, attempt_id: &str) -> io::Result<Workspace> {
        let slot = self.lock().pop();
        let name = match slot {
            Some(i) => format!("slot-{i}"),
            None => attempt_id.to_string(),
        };
        let group_path = self.pids_dir.join(&name);
        let ws = Workspace {
            slots: self.clone(),
            slot,
            work_dir: self.work_root.join(&name),
            group_file: match slot {
                Some(i) => self.group_file(i, group_path),
                None => GroupFile::at(group_path),
            },
            released: false,
        };
        match std::fs::create_dir(&ws.work_dir) {
            Ok(()) => Ok(ws),
            // A slot's directory stays between attempts (emptied).
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && slot.is_some() => Ok(ws),
            Err(e) => Err(e),
        }
    }

    #[cfg(test)]
    fn free_count(&self) -> usize {
        self.lock().len()
    }
}

/// One attempt's work directory and group file; `release` gives them back.
pub struct Workspace {
    slots: Arc<Slots>,
    slot: Option<usize>,
    pub work_dir: PathBuf,
    pub group_file: GroupFile,
    released: bool,
}

impl Workspace {
    /// The slot this attempt occupies; None for an attempt with a directory of its own.
    pub fn slot(&self) -> Option<usize> {
        self.slot
    }

    /// Empties the work directory (a slot's) or removes it (the attempt's own), and hands
    /// the slot back. Idempotent. A slot whose directory cannot be emptied is not handed
    /// back.
    pub async fn release(&mut self) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        let dir = self.work_dir.clone();
        let cleaned = match self.slot {
            // Inline when empty (the usual case): a directory read is cheaper than a
            // hand-off to a blocking thread.
            Some(_) if is_empty(&dir).unwrap_or(false) => Ok(()),
            Some(_) => blocking(move || empty_dir(&dir)).await,
            None => blocking(move || remove_dir(&dir)).await,
        };
        if let Err(e) = &cleaned {
            tracing::warn!(error = %e, dir = %self.work_dir.display(), "could not clean work directory");
        }
        match self.slot {
            Some(i) if cleaned.is_ok() => self.slots.lock().push(i),
            Some(i) => tracing::warn!(slot = i, "slot retired: its work directory is not empty"),
            None => {
                let _ = std::fs::remove_file(&self.group_file.path);
            }
        }
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if !self.released {
            // Abandoned (the task was dropped): the directory's state is unknown, so the
            // slot is retired; a restart empties `work/` anyway.
            tracing::warn!(dir = %self.work_dir.display(), "work directory abandoned");
        }
    }
}

async fn blocking(f: impl FnOnce() -> io::Result<()> + Send + 'static) -> io::Result<()> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

fn is_empty(dir: &Path) -> io::Result<bool> {
    Ok(std::fs::read_dir(dir)?.next().is_none())
}

/// Removes everything in `dir`, which stays. A job may have taken its own directory's
/// permissions away (it owns it), so they are given back first.
fn empty_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    crate::state_dir::reset_dir(dir).map(|_| ())
}

fn remove_dir(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(n: u32) -> (tempfile::TempDir, Arc<Slots>) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("work")).unwrap();
        std::fs::create_dir(d.path().join("pids")).unwrap();
        let s = Slots::new(d.path().join("work"), d.path().join("pids"), n);
        (d, s)
    }

    #[tokio::test]
    async fn a_slot_is_reused_and_its_directory_emptied() {
        let (_d, s) = slots(2);
        let mut a = s.open("att-a").unwrap();
        let b = s.open("att-b").unwrap();
        assert_ne!(a.work_dir, b.work_dir);
        assert_ne!(a.group_file.path, b.group_file.path);
        // What a job leaves: files, a nested directory, a symlink out of the directory.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), "x").unwrap();
        std::fs::write(a.work_dir.join("f"), "x").unwrap();
        std::fs::create_dir_all(a.work_dir.join("d/e")).unwrap();
        std::fs::write(a.work_dir.join("d/e/g"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path(), a.work_dir.join("link")).unwrap();
        let dir = a.work_dir.clone();
        a.release().await;
        a.release().await; // idempotent: the slot is handed back once
        assert_eq!(s.free_count(), 1);
        assert!(dir.is_dir() && is_empty(&dir).unwrap(), "emptied, kept");
        assert!(
            outside.path().join("keep").exists(),
            "a symlink is not followed"
        );
        let c = s.open("att-c").unwrap();
        assert_eq!(
            c.work_dir, dir,
            "the freed slot's directory is the next one's"
        );
        assert_eq!(c.group_file.path, a.group_file.path, "and its group file");
    }

    #[tokio::test]
    async fn a_directory_the_job_locked_is_still_emptied() {
        use std::os::unix::fs::PermissionsExt;
        let (_d, s) = slots(1);
        let mut a = s.open("att-a").unwrap();
        std::fs::write(a.work_dir.join("f"), "x").unwrap();
        std::fs::set_permissions(&a.work_dir, std::fs::Permissions::from_mode(0o500)).unwrap();
        a.release().await;
        assert!(is_empty(&a.work_dir).unwrap());
        assert_eq!(s.free_count(), 1);
    }

    #[tokio::test]
    async fn without_a_free_slot_the_attempt_gets_its_own_places_and_removes_them() {
        let (_d, s) = slots(1);
        let _a = s.open("att-a").unwrap();
        let mut b = s.open("att-b").unwrap();
        assert!(b.work_dir.ends_with("att-b") && b.group_file.path.ends_with("att-b"));
        std::fs::write(b.work_dir.join("f"), "x").unwrap();
        b.group_file.write(Some((1, 2))).unwrap();
        b.release().await;
        assert!(!b.work_dir.exists() && !b.group_file.path.exists());
        assert_eq!(s.free_count(), 0, "nothing handed back that was not taken");
    }

    #[tokio::test]
    async fn an_abandoned_workspace_retires_its_slot() {
        let (_d, s) = slots(1);
        drop(s.open("att-a").unwrap());
        assert_eq!(s.free_count(), 0);
        assert!(s.open("att-b").unwrap().work_dir.ends_with("att-b"));
    }
}
