//! Where the workspace's binaries are: next to the running program, in the same target
//! directory and profile.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The target directory of the running program: its own directory, or one level up when
/// it is a test in `target/<profile>/deps`.
pub fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(crate::error::io("locating the running program"))?;
    let dir = exe
        .parent()
        .ok_or_else(|| Error::Invalid(format!("{} has no parent directory", exe.display())))?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        Ok(dir.parent().unwrap_or(dir).to_path_buf())
    } else {
        Ok(dir.to_path_buf())
    }
}

/// The coordinator and worker binaries the stack starts.
#[derive(Clone, Debug)]
pub struct Bins {
    pub dir: PathBuf,
    pub coordinator: PathBuf,
    pub worker: PathBuf,
}

impl Bins {
    /// The binaries in the running program's target directory; an error names a missing one.
    pub fn locate() -> Result<Bins> {
        Bins::in_dir(&bin_dir()?)
    }

    pub fn in_dir(dir: &Path) -> Result<Bins> {
        Ok(Bins {
            coordinator: existing(dir.join("drover-coordinator"))?,
            worker: existing(dir.join("drover-worker"))?,
            dir: dir.to_path_buf(),
        })
    }

    /// Another binary of the same directory.
    pub fn path(&self, name: &str) -> Result<PathBuf> {
        existing(self.dir.join(name))
    }

    /// "release" or "debug": the profile directory the binaries are in.
    pub fn profile(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "?".into())
    }
}

fn existing(path: PathBuf) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingBinary { path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_is_named() {
        let dir = std::env::temp_dir().join(format!("drover-stack-bins-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        match Bins::in_dir(&dir) {
            Err(Error::MissingBinary { path }) => {
                assert_eq!(path, dir.join("drover-coordinator"))
            }
            other => panic!("expected MissingBinary, got {other:?}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
