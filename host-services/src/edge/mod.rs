//! The edge tier of a node: answers kept close to its clients so that a hit
//! waits on no instance and no far database.
//!
//! The guest decides what may be kept (a `cache-control: max-age` on its
//! response) and when it stops being true ([`EdgeCache::purge`], the
//! `ncps:edge/edge-cache` WIT interface); the runtime keeps and serves.
//! - [`memory`]: whole responses by request path, bounded in bytes.
//! - "absent" marks: narinfos no upstream had, for `--cache-negative-ttl`.
//! - [`channel`]: purges reach every node over the lock service's own
//!   channel (Redis pub/sub, PostgreSQL `LISTEN/NOTIFY`, a polled MySQL
//!   table). A node that cannot hear its channel stops answering from the
//!   tier until it hears it again, then starts empty (see [`channel`] for
//!   the staleness bound).
//! - The local-disk tier of NAR bytes is a storage layer
//!   ([`crate::storage::disk_tier`]); purges of NAR paths reach it here.

pub mod channel;
pub mod memory;
pub mod wit;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::storage::disk_tier::DiskTier;
use channel::{Health, Publisher};
use memory::MemoryTier;

/// Narinfo hashes remembered as absent at once, at most.
const ABSENT_CAPACITY: usize = 100_000;
/// Longest a download announced by another node is believed in progress
/// without news of its end (a lost message, a crashed node).
const DOWNLOAD_BELIEVED: Duration = Duration::from_secs(600);

/// A node's edge tier.
pub struct EdgeCache {
    memory: Option<MemoryTier>,
    absent: quick_cache::sync::Cache<String, Instant>,
    negative_ttl: Duration,
    disk: Option<Arc<DiskTier>>,
    publisher: OnceLock<Arc<dyn Publisher>>,
    health: Health,
    /// Downloads other nodes announced: storage key → where to follow it.
    downloads: std::sync::Mutex<std::collections::HashMap<String, (String, Instant)>>,
}

impl EdgeCache {
    /// A tier with `memory_bytes` of memory (0: no memory tier), absent
    /// marks kept `negative_ttl` (zero: none), and the local-disk tier of
    /// NAR bytes, if any. Until [`EdgeCache::connect`] it is a single
    /// node's tier, always heard.
    pub fn new(memory_bytes: u64, negative_ttl: Duration, disk: Option<Arc<DiskTier>>) -> Self {
        Self {
            memory: (memory_bytes > 0).then(|| MemoryTier::new(memory_bytes)),
            absent: quick_cache::sync::Cache::new(ABSENT_CAPACITY),
            negative_ttl,
            disk,
            publisher: OnceLock::new(),
            health: Health::default(),
            downloads: Default::default(),
        }
    }

    /// Announce purges through `publisher` from now on. From now on the
    /// tier answers only while the channel's listener ([`channel::spawn`])
    /// proves it is heard.
    pub fn connect(&self, publisher: Arc<dyn Publisher>) {
        self.health.expect_heartbeats();
        let _ = self.publisher.set(publisher);
    }

    /// Whether the channel is heard (always, on a single node).
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The memory tier to fill, when there is one.
    pub fn memory(&self) -> Option<&MemoryTier> {
        self.memory.as_ref()
    }

    /// The memory tier to answer from: none while the channel is not heard
    /// (a purge may have been missed).
    pub fn serving(&self) -> Option<&MemoryTier> {
        self.memory.as_ref().filter(|_| self.health.is_heard())
    }

    /// Forget what is kept for `paths` on this node only.
    pub fn purge_here(&self, paths: &[String]) {
        if let Some(memory) = &self.memory {
            memory.remove(paths);
        }
        for path in paths {
            if let Some(hash) = path.strip_prefix('/').and_then(|p| p.strip_suffix(".narinfo")) {
                self.absent.remove(hash);
            }
            if let (Some(disk), Some(key)) = (&self.disk, path.strip_prefix('/').filter(|p| p.starts_with("nar/"))) {
                disk.forget(key);
            }
        }
    }

    /// Forget everything kept on this node (after the channel was not
    /// heard for a while: a purge may have been missed).
    pub fn clear_here(&self) {
        if let Some(memory) = &self.memory {
            memory.clear();
        }
        self.absent.clear();
    }

    /// Forget what is kept for `paths` here and on every node.
    pub async fn purge(&self, paths: Vec<String>) {
        if paths.is_empty() {
            return;
        }
        self.purge_here(&paths);
        if let Some(publisher) = self.publisher.get() {
            if let Err(e) = channel::publish_purge(publisher.as_ref(), &paths).await {
                // The other nodes' tiers hold it until their max-age.
                tracing::warn!(error = %e, paths = paths.len(), "purge not announced to the other nodes");
            }
        }
    }

    /// Tell the other nodes that `key` is being downloaded here and can be
    /// followed at `url` (`None`: its download ended).
    pub async fn announce_download(&self, key: &str, url: Option<&str>) {
        if let Some(publisher) = self.publisher.get() {
            if let Err(e) = channel::publish_download(publisher.as_ref(), key, url).await {
                tracing::debug!(error = %e, key, "download not announced to the other nodes");
            }
        }
    }

    /// Where another node's download of `key` can be followed, if one was
    /// announced (and the channel is heard).
    pub fn download_elsewhere(&self, key: &str) -> Option<String> {
        if !self.health.is_heard() {
            return None;
        }
        let mut downloads = self.downloads.lock().unwrap_or_else(|p| p.into_inner());
        match downloads.get(key) {
            Some((url, since)) if since.elapsed() < DOWNLOAD_BELIEVED => Some(url.clone()),
            Some(_) => {
                downloads.remove(key);
                None
            }
            None => None,
        }
    }

    /// Note another node's announcement about `key`.
    pub(crate) fn heard_download(&self, key: &str, url: Option<&str>) {
        let mut downloads = self.downloads.lock().unwrap_or_else(|p| p.into_inner());
        match url {
            Some(url) => {
                downloads.retain(|_, (_, since)| since.elapsed() < DOWNLOAD_BELIEVED);
                downloads.insert(key.to_owned(), (url.to_owned(), Instant::now()));
            }
            None => {
                downloads.remove(key);
            }
        }
    }

    /// Remember for `ttl` (at most `--cache-negative-ttl`) that the
    /// narinfo of `hash` cannot be had from the upstreams now.
    pub fn mark_absent(&self, hash: &str, ttl: Duration) {
        let ttl = ttl.min(self.negative_ttl);
        if !ttl.is_zero() {
            self.absent.insert(hash.to_owned(), Instant::now() + ttl);
        }
    }

    /// How much longer `hash` stays marked absent, when it is.
    pub fn absent_for(&self, hash: &str) -> Option<Duration> {
        let until = self.absent.get(hash)?;
        let left = until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero());
        if left.is_none() {
            self.absent.remove(hash);
        }
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_marks_expire_and_are_purged() {
        let edge = EdgeCache::new(0, Duration::from_millis(50), None);
        edge.mark_absent("a", Duration::MAX);
        edge.mark_absent("b", Duration::MAX);
        assert!(edge.absent_for("a").is_some() && edge.absent_for("b").is_some());
        edge.purge_here(&["/a.narinfo".into()]);
        assert!(edge.absent_for("a").is_none(), "a purge of the narinfo did not clear its mark");
        std::thread::sleep(Duration::from_millis(60));
        assert!(edge.absent_for("b").is_none(), "kept past the TTL");
        let off = EdgeCache::new(0, Duration::ZERO, None);
        off.mark_absent("a", Duration::MAX);
        assert!(off.absent_for("a").is_none());
    }
}
