//! A metadata database behind a deadline and a circuit breaker
//! ([`crate::breaker`]): a stalled database answers [`Error::Timeout`]
//! within the deadline instead of hanging the request.
//!
//! [`Error::Timeout`]: crate::Error::Timeout

use std::sync::Arc;
use std::time::Duration;

use super::{ConfigStore, Database, Eviction, MetadataStore, NarRecord, NarinfoRecord};
use crate::breaker::Guard;
use crate::Result;

/// A [`Database`] whose every call has a deadline.
pub struct GuardedMetadata {
    db: Arc<dyn Database>,
    guard: Guard,
}

impl GuardedMetadata {
    /// Guard `db` (`name` in logs): calls must answer within `timeout`.
    pub fn new(db: Arc<dyn Database>, name: &'static str, timeout: Duration, cool_down: Duration) -> Self {
        Self { db, guard: Guard::new(name, timeout, cool_down) }
    }
}

#[async_trait::async_trait]
impl MetadataStore for GuardedMetadata {
    async fn get_narinfo(&self, hash: &str) -> Result<Option<NarinfoRecord>> {
        self.guard.call(self.db.get_narinfo(hash)).await
    }
    async fn put_narinfo(&self, info: NarinfoRecord) -> Result<()> {
        self.guard.call(self.db.put_narinfo(info)).await
    }
    async fn delete_narinfo(&self, hash: &str) -> Result<bool> {
        self.guard.call(self.db.delete_narinfo(hash)).await
    }
    async fn get_nar(&self, key: &str) -> Result<Option<NarRecord>> {
        self.guard.call(self.db.get_nar(key)).await
    }
    async fn put_nar(&self, nar: NarRecord) -> Result<()> {
        self.guard.call(self.db.put_nar(nar)).await
    }
    async fn delete_nar(&self, key: &str) -> Result<bool> {
        self.guard.call(self.db.delete_nar(key)).await
    }
    async fn total_size(&self) -> Result<u64> {
        self.guard.call(self.db.total_size()).await
    }
    async fn record_accesses(&self, accesses: Vec<(String, i64)>) -> Result<()> {
        self.guard.call(self.db.record_accesses(accesses)).await
    }
    async fn lru_candidates(&self, limit: u32) -> Result<Vec<NarRecord>> {
        self.guard.call(self.db.lru_candidates(limit)).await
    }
    async fn nars_after(&self, after: Option<&str>, limit: u32) -> Result<Vec<NarRecord>> {
        self.guard.call(self.db.nars_after(after, limit)).await
    }
    async fn is_referenced(&self, key: &str) -> Result<bool> {
        self.guard.call(self.db.is_referenced(key)).await
    }
    async fn evict(&self, key: &str) -> Result<Eviction> {
        self.guard.call(self.db.evict(key)).await
    }
}

#[async_trait::async_trait]
impl ConfigStore for GuardedMetadata {
    async fn get_config(&self, key: &str) -> Result<Option<String>> {
        self.guard.call(self.db.get_config(key)).await
    }
    async fn set_config_if_absent(&self, key: &str, value: &str) -> Result<String> {
        self.guard.call(self.db.set_config_if_absent(key, value)).await
    }
}
