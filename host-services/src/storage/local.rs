//! Local-disk storage in ncps's layout: `store/nar/<h0>/<h0h1>/<file>`.
//!
//! Writes go to `store/tmp/<random>`; `commit` fsyncs the file and hard-links
//! it to its final name, which fails when the name exists (put-if-absent), so
//! no partial file is ever visible under a key.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use tokio::fs::{self, File};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufWriter};

use super::{BlobStore, BlobWriter, Body, ByteRange, FileRange, ObjectEntry, StorageKey};
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

    async fn open_file(&self, key: &StorageKey, range: Option<ByteRange>) -> Result<Option<FileRange>> {
        let Some(file) = absent_is_none(File::open(self.path_of(key)).await)? else {
            return Ok(None);
        };
        let size = file.metadata().await?.len();
        Ok(Some(FileRange::of(file.into_std().await, size, range)))
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
        tokio::task::spawn_blocking(move || list_after(&nar, &after, limit as usize))
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

/// The entries of `dir` whose names are at least `from`, sorted.
fn sorted_entries(dir: &Path, from: &str) -> Result<Vec<(String, std::fs::DirEntry)>> {
    let mut entries = Vec::new();
    let listing = match std::fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(entries),
        Err(e) => return Err(Error::unavailable("disk", e)),
    };
    for entry in listing {
        let entry = entry.map_err(|e| Error::unavailable("disk", e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.as_str() >= from {
            entries.push((name, entry));
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(entries)
}

/// Up to `limit` objects under `nar` (`<h0>/<h0h1>/<file>`) whose keys sort
/// after `after`, in key order. The folders sort like the file names in
/// them, so a page reads only the folders it returns from, never the tree.
fn list_after(nar: &Path, after: &str, limit: usize) -> Result<Vec<ObjectEntry>> {
    let file = after.strip_prefix("nar/").unwrap_or_default();
    let prefix = |n: usize| file.get(..n).unwrap_or(file);
    let mut found = Vec::new();
    for (_, h0) in sorted_entries(nar, prefix(1))? {
        for (_, h01) in sorted_entries(&h0.path(), prefix(2))? {
            for (name, entry) in sorted_entries(&h01.path(), "")? {
                let key = format!("nar/{name}");
                if key.as_str() <= after || !entry.file_type().is_ok_and(|t| t.is_file()) {
                    continue;
                }
                let size = entry.metadata().map_err(|e| Error::unavailable("disk", e))?.len();
                found.push(ObjectEntry { key, size });
                if found.len() == limit {
                    return Ok(found);
                }
            }
        }
    }
    Ok(found)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pages_list_every_object_once_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).await.unwrap();
        use sha2::Digest as _;
        let mut keys = Vec::new();
        for i in 0..700usize {
            let name = nix_base32::to_nix_base32(&sha2::Sha256::digest(i.to_le_bytes()));
            let key = StorageKey::parse(&format!("nar/{name}.nar")).unwrap();
            let path = store.path_of(&key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, vec![0u8; i % 13]).unwrap();
            keys.push(key.as_str().to_owned());
        }
        keys.sort();
        let (mut listed, mut after) = (Vec::new(), None::<String>);
        loop {
            let page = store.list(after.as_deref(), 64).await.unwrap();
            listed.extend(page.iter().map(|e| e.key.clone()));
            match page.last() {
                Some(last) if page.len() == 64 => after = Some(last.key.clone()),
                _ => break,
            }
        }
        assert_eq!(listed, keys);
        let from_middle = store.list(Some(&keys[300]), 5).await.unwrap();
        assert_eq!(from_middle.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), &keys[301..306]);
    }
}
