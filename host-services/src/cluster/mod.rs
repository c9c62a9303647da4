//! The nodes of one cache as a cluster: the channel they share over the
//! lock service ([`channel`]), whether this node hears it (the staleness
//! bound rests on it), purges it sends, and downloads in progress it
//! announces and hears of. Below both the edge tier (which purges) and
//! storage (which announces downloads for peers to follow): neither knows
//! the other.

pub mod channel;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use channel::{Health, Publisher};

/// Longest a download announced by another node is believed in progress
/// without news of its end (a lost message, a crashed node).
const DOWNLOAD_BELIEVED: Duration = Duration::from_secs(600);

/// What a node keeps that purges heard from the other nodes change.
pub trait Kept: Send + Sync {
    /// Forget what is kept for `paths`, on this node.
    fn purge_here(&self, paths: &[String]);
    /// Forget everything kept on this node (purges may have been missed).
    fn clear_here(&self);
}

/// This node's view of the cluster.
#[derive(Default)]
pub struct Cluster {
    publisher: OnceLock<Arc<dyn Publisher>>,
    health: Health,
    /// Downloads other nodes announced: storage key → where to follow it.
    downloads: Mutex<HashMap<String, (String, Instant)>>,
}

impl Cluster {
    /// A single node's cluster (until [`Cluster::connect`]): always heard.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Send through `publisher` from now on; from now on the node counts as
    /// heard only while the channel's listener ([`channel::spawn`]) proves it.
    pub fn connect(&self, publisher: Arc<dyn Publisher>) {
        self.health.expect_heartbeats();
        let _ = self.publisher.set(publisher);
    }

    /// Whether the channel is heard (always, on a single node).
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Tell every other node to forget what it keeps for `paths`.
    pub async fn publish_purge(&self, paths: &[String]) {
        if let Some(publisher) = self.publisher.get() {
            if let Err(e) = channel::publish_purge(publisher.as_ref(), paths).await {
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
}
