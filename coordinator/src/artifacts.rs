//! Where artifact bytes live. The database records what exists (name, size, SHA-256,
//! attempt); a [`BlobStore`] keeps the bytes under a key `<job>/<attempt>/<name>`.
//! [`DirStore`] is a local (or shared, mounted) directory; an object store would be another
//! implementation of the same trait.

use crate::error::Error;
use futures::stream::BoxStream;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Size and hex SHA-256 of what was stored.
pub struct Stored {
    pub size: u64,
    pub sha256: String,
}

#[tonic::async_trait]
pub trait BlobStore: Send + Sync {
    /// Stores `body` under `key`, refusing more than `limit` bytes. The key only becomes
    /// visible once the whole body is stored.
    async fn put(
        &self,
        key: &str,
        body: BoxStream<'_, Result<Vec<u8>, Error>>,
        limit: u64,
    ) -> Result<Stored, Error>;
    async fn get(&self, key: &str) -> Result<BoxStream<'static, Result<Vec<u8>, Error>>, Error>;
    async fn delete(&self, key: &str) -> Result<(), Error>;
}

pub fn key(job: uuid::Uuid, attempt: uuid::Uuid, name: &str) -> String {
    format!("{job}/{attempt}/{name}")
}

pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirStore { root: root.into() }
    }

    fn path(&self, key: &str) -> Result<PathBuf, Error> {
        // Keys are built from ids and validated relative names; refuse anything else.
        if key
            .split('/')
            .any(|c| c.is_empty() || c == ".." || c == ".")
        {
            return Err(Error::Invalid(format!("name: bad artifact path {key:?}")));
        }
        Ok(self.root.join(key))
    }
}

fn io(what: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Internal(format!("artifact store {}: {e}", what.display()))
}

#[tonic::async_trait]
impl BlobStore for DirStore {
    async fn put(
        &self,
        key: &str,
        mut body: BoxStream<'_, Result<Vec<u8>, Error>>,
        limit: u64,
    ) -> Result<Stored, Error> {
        let path = self.path(key)?;
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        tokio::fs::create_dir_all(&dir).await.map_err(io(&dir))?;
        let tmp = path.with_extension(format!("part-{}", uuid::Uuid::new_v4().simple()));
        let mut file = tokio::fs::File::create(&tmp).await.map_err(io(&tmp))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let result = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                size += chunk.len() as u64;
                if size > limit {
                    return Err(Error::Invalid(format!(
                        "artifact {key} is larger than max_artifact_bytes ({limit})"
                    )));
                }
                hasher.update(&chunk);
                file.write_all(&chunk).await.map_err(io(&tmp))?;
            }
            file.sync_all().await.map_err(io(&tmp))?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        tokio::fs::rename(&tmp, &path).await.map_err(io(&path))?;
        Ok(Stored {
            size,
            sha256: format!("{:x}", hasher.finalize()),
        })
    }

    async fn get(&self, key: &str) -> Result<BoxStream<'static, Result<Vec<u8>, Error>>, Error> {
        let path = self.path(key)?;
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(format!(
                    "artifact {key} is missing from the store"
                )))
            }
            Err(e) => return Err(io(&path)(e)),
        };
        let stream = futures::stream::unfold((file, path), |(mut f, path)| async move {
            let mut buf = vec![0u8; 256 * 1024];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(buf), (f, path)))
                }
                Err(e) => {
                    let err = io(&path)(e);
                    Some((Err(err), (f, path)))
                }
            }
        });
        Ok(stream.boxed())
    }

    async fn delete(&self, key: &str) -> Result<(), Error> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        // Remove the attempt's and job's directories once empty; failures are harmless.
        let mut dir = path.parent();
        while let Some(d) = dir {
            if d == self.root || tokio::fs::remove_dir(d).await.is_err() {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(parts: Vec<&'static [u8]>) -> BoxStream<'static, Result<Vec<u8>, Error>> {
        futures::stream::iter(parts.into_iter().map(|p| Ok(p.to_vec()))).boxed()
    }

    #[tokio::test]
    async fn put_get_delete_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let s = DirStore::new(d.path());
        let stored = s
            .put("j/a/out/x.txt", body(vec![b"hello ", b"world"]), 100)
            .await
            .unwrap();
        assert_eq!(stored.size, 11);
        assert_eq!(
            stored.sha256,
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        let mut got = Vec::new();
        let mut st = s.get("j/a/out/x.txt").await.unwrap();
        while let Some(c) = st.next().await {
            got.extend(c.unwrap());
        }
        assert_eq!(got, b"hello world");
        s.delete("j/a/out/x.txt").await.unwrap();
        assert!(matches!(
            s.get("j/a/out/x.txt").await,
            Err(Error::NotFound(_))
        ));
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            0,
            "empty dirs removed"
        );
    }

    #[tokio::test]
    async fn over_the_limit_or_escaping_keys_store_nothing() {
        let d = tempfile::tempdir().unwrap();
        let s = DirStore::new(d.path());
        let r = s.put("j/a/big", body(vec![b"0123456789", b"x"]), 10).await;
        assert!(matches!(r, Err(Error::Invalid(_))));
        assert!(!d.path().join("j/a/big").exists());
        assert_eq!(std::fs::read_dir(d.path().join("j/a")).unwrap().count(), 0);
        assert!(s.put("j/../../etc/x", body(vec![]), 10).await.is_err());
    }
}
