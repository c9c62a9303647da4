//! The edge tier of a node: answers kept close to its clients so that a hit
//! waits on no instance and no far database.
//!
//! The guest decides what may be kept (a `cache-control: max-age` on its
//! response) and when it stops being true ([`EdgeCache::purge`], the
//! `ncps:edge/edge-cache` WIT interface); the runtime keeps and serves.
//! - [`memory`]: whole responses by request path, bounded in bytes.
//! - "absent" marks: narinfos no upstream had, for `--cache-negative-ttl`.
//! - Purges reach every node over the cluster's channel
//!   ([`crate::cluster::channel`]: Redis pub/sub, PostgreSQL
//!   `LISTEN/NOTIFY`, a polled MySQL table). A node that cannot hear its
//!   channel stops answering from the tier until it hears it again, then
//!   starts empty unless the channel gave it what it missed (see there
//!   for the staleness bound).
//! - The local-disk tier of NAR bytes is a storage layer
//!   ([`crate::storage::disk_tier`]); purges of NAR paths reach it here.

pub mod memory;
pub mod wit;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, Kept};
use crate::storage::disk_tier::DiskTier;
use memory::MemoryTier;

/// Narinfo hashes remembered as absent at once, at most.
const ABSENT_CAPACITY: usize = 100_000;

/// A node's edge tier.
pub struct EdgeCache {
    memory: Option<MemoryTier>,
    absent: quick_cache::sync::Cache<String, Instant>,
    negative_ttl: Duration,
    disk: Option<Arc<DiskTier>>,
    cluster: Arc<Cluster>,
    /// How long after it last heard the cluster the tier answers stale.
    stale_if_error: Duration,
}

impl EdgeCache {
    /// A tier with `memory_bytes` of memory (0: no memory tier), absent
    /// marks kept `negative_ttl` (zero: none), and the local-disk tier of
    /// NAR bytes, if any, of a node of `cluster` (it answers only while the
    /// cluster's channel is heard).
    pub fn new(memory_bytes: u64, negative_ttl: Duration, disk: Option<Arc<DiskTier>>, cluster: Arc<Cluster>) -> Self {
        Self {
            memory: (memory_bytes > 0).then(|| MemoryTier::new(memory_bytes)),
            absent: quick_cache::sync::Cache::new(ABSENT_CAPACITY),
            negative_ttl,
            disk,
            cluster,
            stale_if_error: Duration::ZERO,
        }
    }

    /// While the cluster is not heard (the region cannot be reached), answer
    /// what the tier holds, stale, for up to `bound` after it was last heard
    /// (`--edge-cache-stale-if-error`).
    pub fn with_stale_if_error(mut self, bound: Duration) -> Self {
        self.stale_if_error = bound;
        self
    }

    /// The memory tier to fill, when there is one.
    pub fn memory(&self) -> Option<&MemoryTier> {
        self.memory.as_ref()
    }

    /// The memory tier to answer from: none while the channel is not heard
    /// (a purge may have been missed).
    pub fn serving(&self) -> Option<&MemoryTier> {
        self.memory.as_ref().filter(|_| self.cluster.health().is_heard())
    }

    /// The memory tier to answer from stale: while the cluster is not heard,
    /// within `--edge-cache-stale-if-error` of when it last was. NARs never
    /// change and a narinfo can only be deleted, so what it holds is at
    /// worst a late delete. The tier is emptied when the cluster is heard
    /// again, unless its channel gave every purge sent meanwhile (MySQL's).
    pub fn stale(&self) -> Option<&MemoryTier> {
        let unheard = self.cluster.health().unheard_for()?;
        self.memory.as_ref().filter(|_| unheard < self.stale_if_error)
    }

    /// The bound of stale answers.
    pub fn stale_if_error(&self) -> Duration {
        self.stale_if_error
    }

    /// Forget what is kept for `paths` here and on every node.
    pub async fn purge(&self, paths: Vec<String>) {
        if paths.is_empty() {
            return;
        }
        self.purge_here(&paths);
        self.cluster.publish_purge(&paths).await;
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

impl Kept for EdgeCache {
    fn purge_here(&self, paths: &[String]) {
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

    fn clear_here(&self) {
        if let Some(memory) = &self.memory {
            memory.clear();
        }
        self.absent.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_marks_expire_and_are_purged() {
        let edge = EdgeCache::new(0, Duration::from_millis(50), None, Cluster::new());
        edge.mark_absent("a", Duration::MAX);
        edge.mark_absent("b", Duration::MAX);
        assert!(edge.absent_for("a").is_some() && edge.absent_for("b").is_some());
        edge.purge_here(&["/a.narinfo".into()]);
        assert!(edge.absent_for("a").is_none(), "a purge of the narinfo did not clear its mark");
        std::thread::sleep(Duration::from_millis(60));
        assert!(edge.absent_for("b").is_none(), "kept past the TTL");
        let off = EdgeCache::new(0, Duration::ZERO, None, Cluster::new());
        off.mark_absent("a", Duration::MAX);
        assert!(off.absent_for("a").is_none());
    }
}
