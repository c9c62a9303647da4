//! A NAR object is named by the sha256 of its bytes, in every store: a
//! writer is opened only for a key that names a sha256
//! (`nar/<52 nix32>.nar<ext>`), it hashes what is written, and `commit`
//! publishes only when the bytes hash to the name; otherwise it discards
//! them and fails. Whatever a narinfo, an upload or an import claims, no
//! object is ever stored under a name its bytes do not hash to.

use std::sync::Arc;

use ncps_edge_wire::layout::ContentCheck;

use super::{BlobStore, BlobWriter, Body, ByteRange, FileRange, ObjectEntry, StorageKey};
use crate::{Error, Result};

/// A store whose objects are named by their content.
pub struct ContentNamed {
    inner: Arc<dyn BlobStore>,
}

impl ContentNamed {
    /// Name `inner`'s new objects by their content.
    pub fn new(inner: Arc<dyn BlobStore>) -> Self {
        Self { inner }
    }
}

#[async_trait::async_trait]
impl BlobStore for ContentNamed {
    async fn stat(&self, key: &StorageKey) -> Result<Option<u64>> {
        self.inner.stat(key).await
    }

    async fn read(&self, key: &StorageKey, range: Option<ByteRange>) -> Result<Option<Body>> {
        self.inner.read(key, range).await
    }

    async fn open_file(&self, key: &StorageKey, range: Option<ByteRange>) -> Result<Option<FileRange>> {
        self.inner.open_file(key, range).await
    }

    async fn create(&self, key: &StorageKey) -> Result<Box<dyn BlobWriter>> {
        let check = ContentCheck::for_key(key.as_str()).ok_or_else(|| {
            Error::invalid(format!("{} is not named by a sha256: no object is stored under it", key.as_str()))
        })?;
        let inner = self.inner.create(key).await?;
        Ok(Box::new(CheckedWriter { inner, check, key: key.as_str().to_owned() }))
    }

    async fn delete(&self, key: &StorageKey) -> Result<bool> {
        self.inner.delete(key).await
    }

    async fn list(&self, after: Option<&str>, limit: u32) -> Result<Vec<ObjectEntry>> {
        self.inner.list(after, limit).await
    }

    async fn sweep_incomplete(&self, older_than: std::time::Duration) -> Result<u32> {
        self.inner.sweep_incomplete(older_than).await
    }

    async fn follow(&self, key: &StorageKey) -> Result<Option<Body>> {
        self.inner.follow(key).await
    }

    async fn delete_many(&self, keys: &[StorageKey]) -> Result<u32> {
        self.inner.delete_many(keys).await
    }
}

/// A writer that publishes only bytes that hash to their key.
struct CheckedWriter {
    inner: Box<dyn BlobWriter>,
    check: ContentCheck,
    key: String,
}

#[async_trait::async_trait]
impl BlobWriter for CheckedWriter {
    async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.check.update(data);
        self.inner.write(data).await
    }

    fn written(&self) -> u64 {
        self.inner.written()
    }

    async fn commit(self: Box<Self>) -> Result<bool> {
        if !self.check.matches() {
            tracing::warn!(key = %self.key, "refused to publish bytes that do not hash to their name");
            self.inner.abort().await;
            return Err(Error::invalid(format!("{}: the bytes do not hash to the name", self.key)));
        }
        self.inner.commit().await
    }

    async fn abort(self: Box<Self>) {
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::local::LocalStore;

    // The sha256 of "hello\n", in nix32.
    const HELLO: &str = "00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq";

    #[tokio::test]
    async fn only_bytes_that_hash_to_the_name_are_published() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentNamed::new(Arc::new(LocalStore::open(dir.path()).await.unwrap()));
        let key = StorageKey::parse(&format!("nar/{HELLO}.nar.zst")).unwrap();
        let mut w = store.create(&key).await.unwrap();
        w.write(b"other bytes\n").await.unwrap();
        assert!(w.commit().await.is_err(), "bytes published under another content's name");
        assert_eq!(store.stat(&key).await.unwrap(), None);
        let mut w = store.create(&key).await.unwrap();
        w.write(b"hello\n").await.unwrap();
        assert!(w.commit().await.unwrap());
        assert_eq!(store.stat(&key).await.unwrap(), Some(6));
        for unnamed in ["nar/0c5gsym8rwxz5ynj76j0gh1q9h9wv5px.nar.xz", "nar/x.nar", "other/key"] {
            let key = StorageKey::parse(unnamed).unwrap();
            assert!(store.create(&key).await.is_err(), "{unnamed} may be written");
        }
        let spare = dir.path().join("store/tmp");
        assert_eq!(std::fs::read_dir(spare).unwrap().count(), 0, "a refused write left its file");
    }
}
