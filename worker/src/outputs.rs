//! A job's declared outputs: which files in its work directory match its globs, and their
//! SHA-256, so they can be uploaded before the directory is emptied.

use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// One file to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Path relative to the work directory, '/'-separated.
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
}

/// Files under `work_dir` matching any of `globs`, each once, sorted by name. Only regular
/// files inside the work directory count (a symlink pointing outside is refused).
pub fn collect(work_dir: &Path, globs: &[String]) -> Result<Vec<Output>, String> {
    let root = work_dir
        .canonicalize()
        .map_err(|e| format!("work directory: {e}"))?;
    let mut found = std::collections::BTreeMap::new();
    for g in globs {
        let pattern = root.join(g);
        let pattern = pattern.to_str().ok_or_else(|| format!("{g}: not UTF-8"))?;
        let paths = glob::glob(pattern).map_err(|e| format!("{g}: bad glob: {e}"))?;
        for entry in paths {
            let path = entry.map_err(|e| format!("{g}: {e}"))?;
            let real = path
                .canonicalize()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if !real.starts_with(&root) {
                return Err(format!(
                    "{} points outside the work directory",
                    path.display()
                ));
            }
            if !real.is_file() {
                continue;
            }
            let name = path
                .strip_prefix(&root)
                .map_err(|_| format!("{} is outside the work directory", path.display()))?
                .to_string_lossy()
                .into_owned();
            found.entry(name).or_insert(real);
        }
    }
    found
        .into_iter()
        .map(|(name, path)| {
            let (size, sha256) = hash(&path).map_err(|e| format!("{name}: {e}"))?;
            Ok(Output {
                name,
                path,
                size,
                sha256,
            })
        })
        .collect()
}

fn hash(path: &Path) -> std::io::Result<(u64, String)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((size, format!("{:x}", h.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_globs_once_and_refuses_escapes() {
        let d = tempfile::tempdir().unwrap();
        let w = d.path().join("work");
        std::fs::create_dir_all(w.join("out/sub")).unwrap();
        std::fs::write(w.join("out/a.csv"), b"a").unwrap();
        std::fs::write(w.join("out/b.csv"), b"bb").unwrap();
        std::fs::write(w.join("out/sub/c.csv"), b"c").unwrap();
        std::fs::write(w.join("skip.txt"), b"x").unwrap();
        let globs = vec![
            "out/*.csv".to_string(),
            "out/a.csv".into(),
            "out/**/*.csv".into(),
        ];
        let got = collect(&w, &globs).unwrap();
        let names: Vec<&str> = got.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, vec!["out/a.csv", "out/b.csv", "out/sub/c.csv"]);
        assert_eq!(got[1].size, 2);
        assert_eq!(
            got[0].sha256,
            "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"
        );
        assert!(collect(&w, &["nothing/*".to_string()]).unwrap().is_empty());

        std::os::unix::fs::symlink("/etc/hostname", w.join("leak")).unwrap();
        assert!(collect(&w, &["leak".to_string()]).is_err());
    }
}
