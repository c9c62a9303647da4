//! Last-access times without a database write per hit: hits are noted in
//! memory and written in one batch per interval (and before every LRU
//! decision, so eviction sees them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::MetadataStore;
use crate::Result;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Buffered last-access times of NAR keys.
pub struct AccessRecorder {
    pending: Mutex<HashMap<String, i64>>,
    metadata: Arc<dyn MetadataStore>,
}

impl AccessRecorder {
    /// A recorder writing to `metadata`.
    pub fn new(metadata: Arc<dyn MetadataStore>) -> Self {
        Self { pending: Mutex::default(), metadata }
    }

    /// Note an access to `key` now.
    pub fn record(&self, key: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.insert(key.to_owned(), now_ms());
    }

    /// Write the pending accesses; on failure they are kept for the next try.
    pub async fn flush(&self) -> Result<()> {
        let batch: Vec<(String, i64)> = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.drain().collect()
        };
        if batch.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.metadata.record_accesses(batch.clone()).await {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for (k, t) in batch {
                let slot = pending.entry(k).or_insert(t);
                *slot = (*slot).max(t);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Flush every `interval` until the returned task is aborted.
    pub fn spawn_flusher(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                if let Err(e) = this.flush().await {
                    tracing::warn!(error = %e, "failed to write access times");
                }
            }
        })
    }
}
