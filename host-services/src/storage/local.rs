//! Local-disk storage in ncps's layout: `store/nar/<h0>/<h0h1>/<file>`.
//!
//! Writes go to `store/tmp/<random>`; `commit` fsyncs the file and hard-links
//! it to its final name, which fails when the name exists (put-if-absent), so
//! no partial file is ever visible under a key.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use tokio::fs::{self, File};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufWriter};

use super::{BlobStore, BlobWriter, Body, ByteRange, ObjectEntry, StorageKey};
use crate::{Error, Result};

/// Local-disk blob store rooted at a data directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// A store under `data_dir` (objects in `data_dir/store`); creates the folders.
    pub async fn open(data_dir: &Path) -> Result<Self> {
        let root = data_dir.join("store");
        fs::create_dir_all(root.join("tmp")).await?;
        Ok(Self { root })
    }

    /// Where `key` lives on disk.
    pub fn path_of(&self, key: &StorageKey) -> PathBuf {
        // `root` is `<data>/store`; the layout starts with `store/`.
        let layout = key.layout();
        self.root.join(layout.strip_prefix("store/").unwrap_or(&layout))
    }
}

fn absent_is_none<T>(r: std::io::Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[async_trait::async_trait]
impl BlobStore for LocalStore {
    async fn stat(&self, key: &StorageKey) -> Result<Option<u64>> {
        Ok(absent_is_none(fs::metadata(self.path_of(key)).await)?.map(|m| m.len()))
    }

    async fn read(&self, key: &StorageKey, range: Option<ByteRange>) -> Result<Option<Body>> {
        let Some(mut file) = absent_is_none(File::open(self.path_of(key)).await)? else {
            return Ok(None);
        };
        let range = range.unwrap_or_default();
        if range.offset > 0 {
            file.seek(SeekFrom::Start(range.offset)).await?;
        }
        Ok(Some(match range.length {
            Some(len) => Box::pin(file.take(len)),
            None => Box::pin(file),
        }))
    }

    async fn create(&self, key: &StorageKey) -> Result<Box<dyn BlobWriter>> {
        let tmp = self.root.join("tmp").join(format!("{:016x}.part", rand::random::<u64>()));
        let file = File::create(&tmp).await?;
        Ok(Box::new(LocalWriter {
            file: Some(BufWriter::with_capacity(256 * 1024, file)),
            tmp,
            dest: self.path_of(key),
            written: 0,
        }))
    }

    async fn delete(&self, key: &StorageKey) -> Result<bool> {
        Ok(absent_is_none(fs::remove_file(self.path_of(key)).await)?.is_some())
    }

    async fn list(&self, after: Option<&str>, limit: u32) -> Result<Vec<ObjectEntry>> {
        let nar = self.root.join("nar");
        let after = after.unwrap_or_default().to_owned();
        tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            if !nar.exists() {
                return Ok(found);
            }
            for entry in walkdir::WalkDir::new(&nar).min_depth(3).max_depth(3) {
                let entry = entry.map_err(|e| Error::unavailable("disk", e))?;
                if !entry.file_type().is_file() {
                    continue;
                }
                let key = format!("nar/{}", entry.file_name().to_string_lossy());
                if key.as_str() > after.as_str() {
                    let size = entry.metadata().map_err(|e| Error::unavailable("disk", e))?.len();
                    found.push(ObjectEntry { key, size });
                }
            }
            found.sort_by(|a, b| a.key.cmp(&b.key));
            found.truncate(limit as usize);
            Ok(found)
        })
        .await
        .map_err(|e| Error::internal("disk", e))?
    }

    async fn sweep_incomplete(&self, older_than: std::time::Duration) -> Result<u32> {
        let tmp = self.root.join("tmp");
        let cutoff = std::time::SystemTime::now() - older_than;
        let mut removed = 0;
        let mut dir = fs::read_dir(&tmp).await?;
        while let Some(entry) = dir.next_entry().await? {
            let modified = entry.metadata().await?.modified()?;
            if modified <= cutoff && absent_is_none(fs::remove_file(entry.path()).await)?.is_some() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

struct LocalWriter {
    file: Option<BufWriter<File>>,
    tmp: PathBuf,
    dest: PathBuf,
    written: u64,
}

#[async_trait::async_trait]
impl BlobWriter for LocalWriter {
    async fn write(&mut self, data: &[u8]) -> Result<()> {
        let file = self.file.as_mut().ok_or_else(|| Error::invalid("writer is closed"))?;
        file.write_all(data).await?;
        self.written += data.len() as u64;
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written
    }

    async fn commit(mut self: Box<Self>) -> Result<bool> {
        let mut file = self.file.take().ok_or_else(|| Error::invalid("writer is closed"))?;
        file.flush().await?;
        file.get_ref().sync_all().await?;
        drop(file);
        if let Some(parent) = self.dest.parent() {
            fs::create_dir_all(parent).await?;
        }
        // hard_link fails when dest exists: publish only if absent.
        let published = match fs::hard_link(&self.tmp, &self.dest).await {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(e.into()),
        };
        if let Some(parent) = self.dest.parent() {
            if let Ok(dir) = File::open(parent).await {
                let _ = dir.sync_all().await;
            }
        }
        Ok(published)
        // Drop removes the temporary name.
    }

    async fn abort(self: Box<Self>) {}
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.tmp) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.tmp.display(), error = %e, "failed to remove temporary file");
            }
        }
    }
}
