//! The local-disk tier of NAR bytes, for a node whose shared storage is
//! remote (S3): a NAR read whole from the shared storage is written to a
//! local folder while it streams to its reader (never read twice), checked
//! against its name (a NAR's file name is the sha256 of its bytes) and
//! moved into place only when complete, so the tier never serves a partial
//! or corrupt file. The folder is bounded in bytes and evicted
//! least-recently-used first (by `quick_cache`); the content is addressed by
//! its hash, so it is never stale, and purges (deletes, evictions on any
//! node) remove the local copy too. (A little over 300 lines: the tier and
//! the store layer in front of it share one fill-and-check lifecycle.)

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use sha2::Digest as _;
use tokio::io::{AsyncRead, AsyncSeekExt as _, AsyncWriteExt as _, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

use super::{BlobStore, BlobWriter, Body, ByteRange, FileRange, ObjectEntry, StorageKey};
use crate::Result;

/// Chunks a fill may lag behind its reader; beyond that the reader waits
/// for the local disk (seldom slower than the remote storage), so a copy is
/// not lost to a burst of load.
const FILL_BACKLOG: usize = 256;

/// Local copies by key, least recently used first, with their total size.
struct Index {
    files: lru::LruCache<String, u64>,
    total: u64,
}

/// The local copies of NARs.
pub struct DiskTier {
    dir: PathBuf,
    capacity: u64,
    index: Mutex<Index>,
    /// Bumped by every [`DiskTier::forget`]: a fill that started before one
    /// keeps nothing (its object may have been deleted meanwhile).
    generation: AtomicU64,
    /// Held while the tier is open: a folder serves one node.
    _lock: std::fs::File,
}

impl DiskTier {
    /// The tier in `dir`, at most `capacity` bytes. Files left by an
    /// earlier run are kept (up to the capacity); unfinished ones are
    /// removed. A folder another process has open is refused.
    pub fn open(dir: &Path, capacity: u64) -> Result<Self> {
        std::fs::create_dir_all(dir.join("nar"))?;
        let lock = std::fs::File::create(dir.join("lock"))?;
        if lock.try_lock().is_err() {
            return Err(crate::Error::invalid(format!(
                "{} is in use by another node: give each node its own --edge-cache-dir",
                dir.display()
            )));
        }
        let _ = std::fs::remove_dir_all(dir.join("tmp"));
        std::fs::create_dir_all(dir.join("tmp"))?;
        let tier = Self {
            dir: dir.to_owned(),
            capacity,
            index: Mutex::new(Index { files: lru::LruCache::unbounded(), total: 0 }),
            generation: AtomicU64::new(0),
            _lock: lock,
        };
        let mut found: Vec<(std::time::SystemTime, String, u64)> = std::fs::read_dir(dir.join("nar"))?
            .flatten()
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, format!("nar/{}", e.file_name().to_str()?), meta.len()))
            })
            .collect();
        // Oldest first, so the newest are the most recently used.
        found.sort();
        for (_, key, size) in found {
            tier.keep(key, size, 0);
        }
        Ok(tier)
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Note the copy of `key` of `size` bytes, evicting the least recently
    /// used copies beyond the capacity; unless a forget happened since
    /// `generation`, in which case the file is removed.
    fn keep(&self, key: String, size: u64, generation: u64) {
        let evicted = {
            let mut index = self.index();
            if self.generation.load(Ordering::Acquire) != generation {
                drop(index);
                let _ = std::fs::remove_file(self.path(&key));
                return;
            }
            if let Some(old) = index.files.put(key, size) {
                index.total -= old;
            }
            index.total += size;
            let mut evicted = Vec::new();
            while index.total > self.capacity {
                let Some((key, size)) = index.files.pop_lru() else { break };
                index.total -= size;
                evicted.push(key);
            }
            evicted
        };
        for key in evicted {
            let _ = std::fs::remove_file(self.path(&key));
        }
    }

    /// Size of the local copy of `key`, if there is one (it becomes the most
    /// recently used).
    pub fn size(&self, key: &str) -> Option<u64> {
        self.index().files.get(key).copied()
    }

    /// Drop the local copy of `key`.
    pub fn forget(&self, key: &str) {
        let removed = {
            let mut index = self.index();
            self.generation.fetch_add(1, Ordering::AcqRel);
            let removed = index.files.pop(key);
            if let Some(size) = removed {
                index.total -= size;
            }
            removed
        };
        if removed.is_some() {
            let _ = std::fs::remove_file(self.path(key));
        }
    }

    /// Bytes held.
    pub fn weight(&self) -> u64 {
        self.index().total
    }

    /// Open the local copy of `key` (a range of it).
    async fn open_copy(&self, key: &str, range: Option<ByteRange>) -> Option<Body> {
        self.size(key)?;
        let mut file = tokio::fs::File::open(self.path(key)).await.ok()?;
        let range = range.unwrap_or_default();
        if range.offset > 0 {
            file.seek(std::io::SeekFrom::Start(range.offset)).await.ok()?;
        }
        Some(match range.length {
            Some(len) => Box::pin(tokio::io::AsyncReadExt::take(file, len)),
            None => Box::pin(file),
        })
    }

    /// The local copy of `key` (or `range` of it) as a file, if there is one.
    async fn open_copy_file(&self, key: &str, range: Option<ByteRange>) -> Option<FileRange> {
        let size = self.size(key)?;
        let file = tokio::fs::File::open(self.path(key)).await.ok()?;
        Some(FileRange::of(file.into_std().await, size, range))
    }

    /// Keep the bytes `body` yields, if they hash to `expected` (a part of
    /// the object, read by a reader that stopped early, never does).
    fn fill(self: &Arc<Self>, key: &str, expected: [u8; 32], body: Body) -> Body {
        let (tx, rx) = mpsc::channel(FILL_BACKLOG);
        let generation = self.generation.load(Ordering::Acquire);
        tokio::spawn(self.clone().write_copy(key.to_owned(), expected, generation, rx));
        Box::pin(Tee { inner: body, fill: Some(PollSender::new(tx)) })
    }

    async fn write_copy(
        self: Arc<Self>,
        key: String,
        expected: [u8; 32],
        generation: u64,
        mut rx: mpsc::Receiver<Bytes>,
    ) {
        let tmp = self.dir.join("tmp").join(format!("{:016x}", rand::random::<u64>()));
        let kept = async {
            let mut file = tokio::fs::File::create(&tmp).await.ok()?;
            let mut hasher = sha2::Sha256::new();
            let mut size = 0u64;
            // The reader closes the channel at the end of the object, or
            // when it stops early (an error, a client gone, or an HTTP
            // server that stops reading once it sent `content-length`
            // bytes): the hash tells a whole object from a part.
            while let Some(b) = rx.recv().await {
                hasher.update(&b);
                size += b.len() as u64;
                file.write_all(&b).await.ok()?;
            }
            if <[u8; 32]>::from(hasher.finalize()) != expected {
                tracing::debug!(
                    key,
                    bytes = size,
                    "NAR read from storage ended early or does not match its name; not kept locally"
                );
                return None;
            }
            file.flush().await.ok()?;
            drop(file);
            tokio::fs::rename(&tmp, self.path(&key)).await.ok()?;
            Some(size)
        }
        .await;
        match kept {
            Some(size) => self.keep(key, size, generation),
            None => {
                let _ = tokio::fs::remove_file(&tmp).await;
            }
        }
    }
}

/// A body that hands a copy of what it yields to a fill.
struct Tee {
    inner: Body,
    fill: Option<PollSender<Bytes>>,
}

impl AsyncRead for Tee {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        // Room for the copy first: a fill that lags waits the reader.
        if let Some(fill) = self.fill.as_mut() {
            match fill.poll_reserve(cx) {
                Poll::Pending => return Poll::Pending,
                // The fill gave up (its file could not be written).
                Poll::Ready(Err(_)) => self.fill = None,
                Poll::Ready(Ok(())) => {}
            }
        }
        let before = buf.filled().len();
        let polled = self.inner.as_mut().poll_read(cx, buf);
        match &polled {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                let copy = (!read.is_empty()).then(|| Bytes::copy_from_slice(read));
                // The end (or a fill that gave up) closes the channel.
                if copy.is_none_or(|copy| self.fill.as_mut().is_some_and(|fill| fill.send_item(copy).is_err())) {
                    self.fill = None;
                }
            }
            // An error: the fill gets no more bytes (a part, not kept).
            Poll::Ready(Err(_)) => self.fill = None,
            // The reserved room waits for the next read.
            Poll::Pending => {}
        }
        polled
    }
}

/// A remote store with the local-disk tier in front of its NAR reads.
pub struct DiskTiered {
    inner: Arc<dyn BlobStore>,
    tier: Arc<DiskTier>,
}

impl DiskTiered {
    /// `inner` with `tier` in front.
    pub fn new(inner: Arc<dyn BlobStore>, tier: Arc<DiskTier>) -> Self {
        Self { inner, tier }
    }
}

/// The sha256 a NAR's key names (`nar/<nix32 sha256>.nar<ext>`).
fn named_hash(key: &StorageKey) -> Option<[u8; 32]> {
    ncps_edge_wire::layout::named_sha256(key.as_str())
}

#[async_trait::async_trait]
impl BlobStore for DiskTiered {
    async fn stat(&self, key: &StorageKey) -> Result<Option<u64>> {
        match self.tier.size(key.as_str()) {
            Some(size) => Ok(Some(size)),
            None => self.inner.stat(key).await,
        }
    }

    async fn read(&self, key: &StorageKey, range: Option<ByteRange>) -> Result<Option<Body>> {
        if let Some(body) = self.tier.open_copy(key.as_str(), range).await {
            return Ok(Some(body));
        }
        let whole = range.is_none_or(|r| r.offset == 0 && r.length.is_none());
        let Some(body) = self.inner.read(key, range).await? else { return Ok(None) };
        Ok(Some(match named_hash(key).filter(|_| whole) {
            Some(expected) => self.tier.fill(key.as_str(), expected, body),
            None => body,
        }))
    }

    async fn open_file(&self, key: &StorageKey, range: Option<ByteRange>) -> Result<Option<FileRange>> {
        Ok(self.tier.open_copy_file(key.as_str(), range).await)
    }

    async fn create(&self, key: &StorageKey) -> Result<Box<dyn BlobWriter>> {
        self.inner.create(key).await
    }

    async fn delete(&self, key: &StorageKey) -> Result<bool> {
        self.tier.forget(key.as_str());
        self.inner.delete(key).await
    }

    async fn list(&self, after: Option<&str>, limit: u32) -> Result<Vec<ObjectEntry>> {
        self.inner.list(after, limit).await
    }

    async fn sweep_incomplete(&self, older_than: std::time::Duration) -> Result<u32> {
        self.inner.sweep_incomplete(older_than).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::local::LocalStore;
    use tokio::io::AsyncReadExt as _;

    fn nix32_sha256(bytes: &[u8]) -> String {
        nix_base32::to_nix_base32(&sha2::Sha256::digest(bytes))
    }

    async fn put(store: &dyn BlobStore, key: &StorageKey, bytes: &[u8]) {
        let mut w = store.create(key).await.unwrap();
        w.write(bytes).await.unwrap();
        assert!(w.commit().await.unwrap());
    }

    async fn read_all(store: &dyn BlobStore, key: &StorageKey) -> Vec<u8> {
        let mut out = Vec::new();
        store.read(key, None).await.unwrap().unwrap().read_to_end(&mut out).await.unwrap();
        out
    }

    async fn settle(tier: &DiskTier, key: &StorageKey) -> bool {
        for _ in 0..100 {
            if tier.size(key.as_str()).is_some() {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn keeps_whole_checked_copies_only() {
        let dir = tempfile::tempdir().unwrap();
        let remote: Arc<dyn BlobStore> = Arc::new(LocalStore::open(&dir.path().join("remote")).await.unwrap());
        let tier = Arc::new(DiskTier::open(&dir.path().join("tier"), 1 << 20).unwrap());
        let store = DiskTiered::new(remote.clone(), tier.clone());
        let bytes = vec![42u8; 300_000];
        let key = StorageKey::parse(&format!("nar/{}.nar", nix32_sha256(&bytes))).unwrap();
        put(remote.as_ref(), &key, &bytes).await;

        // A reader that stops half way keeps nothing.
        let mut half = vec![0; 1000];
        store.read(&key, None).await.unwrap().unwrap().read_exact(&mut half).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(tier.size(key.as_str()), None, "a partial read was kept");
        // A reader that takes every byte but never asks for the end (an
        // HTTP server done with `content-length`) keeps the copy.
        let mut all = vec![0; bytes.len()];
        store.read(&key, None).await.unwrap().unwrap().read_exact(&mut all).await.unwrap();
        assert_eq!(all, bytes);
        assert!(settle(&tier, &key).await, "a read of every byte was not kept");
        tier.forget(key.as_str());
        // A whole read is kept, and then served without the remote.
        assert_eq!(read_all(&store, &key).await, bytes);
        assert!(settle(&tier, &key).await, "a whole read was not kept");
        remote.delete(&key).await.unwrap();
        assert_eq!(read_all(&store, &key).await, bytes);
        assert_eq!(store.stat(&key).await.unwrap(), Some(bytes.len() as u64));

        // Bytes that do not match their name are never kept.
        let lying = StorageKey::parse(&format!("nar/{}.nar", nix32_sha256(b"other"))).unwrap();
        put(remote.as_ref(), &lying, &bytes).await;
        assert_eq!(read_all(&store, &lying).await, bytes);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(tier.size(lying.as_str()), None, "a mismatching NAR was kept");

        // Forgetting removes the file; capacity evicts.
        tier.forget(key.as_str());
        assert!(!dir.path().join("tier").join(key.as_str()).exists());
    }

    #[tokio::test]
    async fn bounded_in_bytes_and_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let remote: Arc<dyn BlobStore> = Arc::new(LocalStore::open(&dir.path().join("remote")).await.unwrap());
        let tier = Arc::new(DiskTier::open(&dir.path().join("tier"), 1 << 20).unwrap());
        let store = DiskTiered::new(remote.clone(), tier.clone());
        let mut keys = Vec::new();
        for i in 0..8u8 {
            let bytes = vec![i; 200_000];
            let key = StorageKey::parse(&format!("nar/{}.nar", nix32_sha256(&bytes))).unwrap();
            put(remote.as_ref(), &key, &bytes).await;
            read_all(&store, &key).await;
            assert!(settle(&tier, &key).await);
            keys.push(key);
        }
        assert!(tier.weight() <= 1 << 20, "{} bytes held", tier.weight());
        let files = std::fs::read_dir(dir.path().join("tier/nar")).unwrap().count() as u64;
        assert!(files * 200_000 <= 1 << 20, "{files} files left on disk");
        assert!(DiskTier::open(&dir.path().join("tier"), 1 << 20).is_err(), "a folder in use was opened twice");
        let held = tier.weight();
        drop(store);
        drop(tier);
        let again = DiskTier::open(&dir.path().join("tier"), 1 << 20).unwrap();
        assert_eq!(again.weight(), held, "the copies were not found again");
    }
}
