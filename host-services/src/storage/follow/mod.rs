//! Following a download in progress: while an instance writes an object
//! (a NAR coming from upstream), other instances on this node may read it
//! as it arrives instead of waiting in silence for the end. Every writer's
//! bytes also go to a spool file; a follower reads the spool up to what is
//! safe to hand out. The last write is held back until the object is
//! committed (its writer checked it), so a follower never receives a
//! complete-looking object that was then refused; an abort ends every
//! follower's stream with an error.
//!
//! Across nodes ([`peers`]): the downloading node's internal route
//! answers a peer with the same stream.

mod peers;
mod spool;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt as _;
use tokio::sync::watch;

pub use peers::{Peers, FOLLOW_ROUTE};
use spool::{Progress, Spool, SpoolReader};

use super::{BlobStore, BlobWriter, Body, ByteRange, FileRange, ObjectEntry, StorageKey};
use crate::Result;

/// The objects being written on this node, by key.
type Downloads = Mutex<HashMap<String, Arc<Spool>>>;

/// A store whose writes can be followed.
pub struct Followed {
    inner: Arc<dyn BlobStore>,
    dir: PathBuf,
    downloads: Arc<Downloads>,
    /// Held while this process spools in `dir`.
    _lock: std::fs::File,
    peers: Option<Arc<Peers>>,
}

impl Followed {
    /// `inner`, its writes spooled in a folder of this process under
    /// `parent` (nodes sharing a data folder each have their own). Folders
    /// of processes that are gone are removed.
    pub fn new(inner: Arc<dyn BlobStore>, parent: &Path) -> Result<Self> {
        std::fs::create_dir_all(parent)?;
        for entry in std::fs::read_dir(parent)?.flatten() {
            let stale = std::fs::File::open(entry.path().join("lock")).map_or(true, |f| f.try_lock().is_ok());
            if stale {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = parent.join(format!("{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir)?;
        let lock = std::fs::File::create(dir.join("lock"))?;
        lock.lock()?;
        Ok(Self { inner, dir, downloads: Arc::default(), _lock: lock, peers: None })
    }

    /// Announce downloads to `peers` and follow theirs.
    pub fn with_peers(mut self, peers: Peers) -> Self {
        self.peers = Some(Arc::new(peers));
        self
    }

    /// The download of `key` in progress on this node (what
    /// [`FOLLOW_ROUTE`] serves).
    pub fn follow_here(&self, key: &StorageKey) -> Option<Body> {
        let spool = self.downloads.lock().unwrap_or_else(|p| p.into_inner()).get(key.as_str()).cloned()?;
        SpoolReader::open(spool).map(|r| Box::pin(r) as Body)
    }

    /// Whether `token` is what peers present.
    pub fn is_peer(&self, token: &str) -> bool {
        self.peers.as_ref().is_some_and(|p| p.is_peer(token))
    }
}

/// A writer whose bytes are spooled for followers. When storage fails
/// mid-write the writer detaches from it (nothing will be published) and
/// keeps spooling, so the clients that follow still get the whole object.
struct FollowedWriter {
    /// Storage's writer; none once it failed (or was committed or aborted).
    inner: Option<Box<dyn BlobWriter>>,
    peers: Option<Arc<Peers>>,
    key: String,
    spool: Arc<Spool>,
    file: tokio::fs::File,
    /// Bytes written; all but the last write are safe for followers.
    written: u64,
    downloads: Arc<Downloads>,
    ended: bool,
}

impl FollowedWriter {
    fn end(&mut self, progress: Progress) {
        self.ended = true;
        self.spool.progress.send_replace(progress);
        let mut downloads = self.downloads.lock().unwrap_or_else(|p| p.into_inner());
        if downloads.get(&self.key).is_some_and(|s| Arc::ptr_eq(s, &self.spool)) {
            downloads.remove(&self.key);
        }
        if let Some(peers) = self.peers.clone() {
            let key = self.key.clone();
            tokio::spawn(async move { peers.cluster.announce_download(&key, None).await });
        }
    }
}

impl Drop for FollowedWriter {
    fn drop(&mut self) {
        if !self.ended {
            self.end(Progress::Failed);
        }
    }
}

#[async_trait::async_trait]
impl BlobWriter for FollowedWriter {
    async fn write(&mut self, data: &[u8]) -> Result<()> {
        let stored = match self.inner.as_mut() {
            Some(inner) => inner.write(data).await,
            None => Err(detached()),
        };
        if stored.is_err() {
            if let Some(inner) = self.inner.take() {
                inner.abort().await;
            }
        }
        // A spool that cannot be written fails its followers, not the download.
        if self.file.write_all(data).await.and(self.file.flush().await).is_err() {
            self.spool.progress.send_replace(Progress::Failed);
        } else if self.spool.progress.borrow().ne(&Progress::Failed) {
            self.spool.progress.send_replace(Progress::Safe(self.written));
        }
        self.written += data.len() as u64;
        stored
    }

    fn written(&self) -> u64 {
        self.written
    }

    /// The caller commits only bytes it checked (nodes write through the
    /// content-named store, which checks them against their name first),
    /// so followers get them whole even when storage could not keep them.
    async fn commit(mut self: Box<Self>) -> Result<bool> {
        let published = match self.inner.take() {
            Some(inner) => inner.commit().await,
            None => Err(detached()),
        };
        let failed = *self.spool.progress.borrow() == Progress::Failed;
        self.end(if failed { Progress::Failed } else { Progress::Done(self.written) });
        published
    }

    async fn abort(mut self: Box<Self>) {
        if let Some(inner) = self.inner.take() {
            inner.abort().await;
        }
        self.end(Progress::Failed);
    }
}

/// What a writer that lost its storage answers.
fn detached() -> crate::Error {
    crate::Error::unavailable("storage", "a write to storage failed earlier: nothing will be published")
}

#[async_trait::async_trait]
impl BlobStore for Followed {
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
        let inner = self.inner.create(key).await?;
        let path = self.dir.join(format!("{:016x}", rand::random::<u64>()));
        let file = tokio::fs::File::create(&path).await?;
        let (progress, _) = watch::channel(Progress::Safe(0));
        let spool = Arc::new(Spool { path, progress });
        self.downloads.lock().unwrap_or_else(|p| p.into_inner()).insert(key.as_str().to_owned(), spool.clone());
        if let Some(peers) = &self.peers {
            peers.cluster.announce_download(key.as_str(), Some(&peers.url)).await;
        }
        Ok(Box::new(FollowedWriter {
            inner: Some(inner),
            peers: self.peers.clone(),
            key: key.as_str().to_owned(),
            spool,
            file,
            written: 0,
            downloads: self.downloads.clone(),
            ended: false,
        }))
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
        if let Some(body) = self.follow_here(key) {
            return Ok(Some(body));
        }
        let Some(peers) = &self.peers else { return Ok(None) };
        match peers.cluster.download_elsewhere(key.as_str()).filter(|url| *url != peers.url) {
            Some(url) => Ok(peers.follow(&url, key).await),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::local::LocalStore;
    use tokio::io::AsyncReadExt as _;

    async fn store() -> (tempfile::TempDir, Followed) {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn BlobStore> = Arc::new(LocalStore::open(&dir.path().join("data")).await.unwrap());
        let followed = Followed::new(inner, &dir.path().join("spool")).unwrap();
        (dir, followed)
    }

    async fn read_some(body: &mut Body, n: usize) -> Vec<u8> {
        let mut out = vec![0; n];
        body.read_exact(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn followers_get_bytes_as_they_come_and_the_last_only_after_commit() {
        let (_dir, store) = store().await;
        let key = StorageKey::parse("nar/x.nar").unwrap();
        assert!(store.follow(&key).await.unwrap().is_none());
        let mut w = store.create(&key).await.unwrap();
        w.write(b"hello ").await.unwrap();
        let mut early = store.follow(&key).await.unwrap().expect("a download to follow");
        w.write(b"world").await.unwrap();
        // "hello " is safe; "world" is held back until commit.
        assert_eq!(read_some(&mut early, 6).await, b"hello ");
        let mut one = [0u8; 1];
        let held = tokio::time::timeout(std::time::Duration::from_millis(100), early.read(&mut one)).await;
        assert!(held.is_err(), "the last write was handed out before commit");
        let mut late = store.follow(&key).await.unwrap().unwrap();
        assert!(w.commit().await.unwrap());
        let mut rest = Vec::new();
        early.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"world");
        let mut all = Vec::new();
        late.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"hello world");
        assert!(store.follow(&key).await.unwrap().is_none(), "a finished download is still followed");
    }

    #[tokio::test]
    async fn an_abort_fails_every_follower() {
        let (dir, store) = store().await;
        let key = StorageKey::parse("nar/y.nar").unwrap();
        let mut w = store.create(&key).await.unwrap();
        w.write(&[1; 1000]).await.unwrap();
        let mut follower = store.follow(&key).await.unwrap().unwrap();
        w.write(&[2; 10]).await.unwrap();
        w.abort().await;
        let mut got = Vec::new();
        assert!(follower.read_to_end(&mut got).await.is_err(), "an abandoned download ended cleanly");
        assert!(got.len() <= 1000);
        // A follower keeps its spool until it is dropped.
        drop(follower);
        // Dropping a writer is an abort too; no spool is left behind.
        let w = store.create(&key).await.unwrap();
        drop(w);
        assert!(store.follow(&key).await.unwrap().is_none());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let spools: Vec<_> =
            std::fs::read_dir(&store.dir).unwrap().flatten().filter(|e| e.file_name() != "lock").collect();
        assert!(spools.is_empty(), "spools left behind: {spools:?}");
        drop(dir);
    }

    #[tokio::test]
    async fn a_follower_that_never_reads_does_not_hold_the_writer_back() {
        let (_dir, store) = store().await;
        let key = StorageKey::parse("nar/z.nar").unwrap();
        let mut w = store.create(&key).await.unwrap();
        let mut idle = store.follow(&key).await.unwrap().unwrap();
        let chunk = vec![7u8; 1 << 20];
        let wrote = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            for _ in 0..64 {
                w.write(&chunk).await.unwrap();
            }
        })
        .await;
        assert!(wrote.is_ok(), "64 MiB were not written while a follower read nothing");
        assert!(w.commit().await.unwrap());
        let mut all = Vec::new();
        idle.read_to_end(&mut all).await.unwrap();
        assert_eq!(all.len(), 64 << 20);
    }

    /// Storage that takes one write, then fails.
    struct Flaky;
    struct FlakyWriter(u32);

    #[async_trait::async_trait]
    impl BlobWriter for FlakyWriter {
        async fn write(&mut self, _data: &[u8]) -> Result<()> {
            self.0 += 1;
            match self.0 {
                1 => Ok(()),
                _ => Err(crate::Error::unavailable("storage", "gone")),
            }
        }
        fn written(&self) -> u64 {
            0
        }
        async fn commit(self: Box<Self>) -> Result<bool> {
            Ok(true)
        }
        async fn abort(self: Box<Self>) {}
    }

    #[async_trait::async_trait]
    impl BlobStore for Flaky {
        async fn stat(&self, _: &StorageKey) -> Result<Option<u64>> {
            Ok(None)
        }
        async fn read(&self, _: &StorageKey, _: Option<ByteRange>) -> Result<Option<Body>> {
            Ok(None)
        }
        async fn create(&self, _: &StorageKey) -> Result<Box<dyn BlobWriter>> {
            Ok(Box::new(FlakyWriter(0)))
        }
        async fn delete(&self, _: &StorageKey) -> Result<bool> {
            Ok(false)
        }
        async fn list(&self, _: Option<&str>, _: u32) -> Result<Vec<ObjectEntry>> {
            Ok(Vec::new())
        }
        async fn sweep_incomplete(&self, _: std::time::Duration) -> Result<u32> {
            Ok(0)
        }
    }

    #[tokio::test]
    async fn followers_finish_when_storage_fails_mid_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = Followed::new(Arc::new(Flaky), dir.path()).unwrap();
        let key = StorageKey::parse("nar/f.nar").unwrap();
        let mut w = store.create(&key).await.unwrap();
        w.write(b"first ").await.unwrap();
        let mut follower = store.follow(&key).await.unwrap().unwrap();
        assert!(w.write(b"second ").await.is_err(), "the storage failure is not reported");
        assert!(w.write(b"third").await.is_err(), "a detached writer claims to store");
        assert!(w.commit().await.is_err(), "published without storage");
        let mut all = Vec::new();
        follower.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"first second third");
    }
}
