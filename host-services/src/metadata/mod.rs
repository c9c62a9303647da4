//! Typed metadata: narinfo records, NAR records, size accounting and access
//! times (`ncps:edge/metadata`), one implementation per database, plus the
//! node's own configuration values (the signing key).

pub mod access;
pub mod guarded;
pub mod mysql;
pub mod postgres;
pub mod sqlite;
pub mod wit;

use std::sync::Arc;
use std::time::Duration;

use crate::{Error, Result};

pub use crate::bindings::metadata::{NarRecord, NarinfoRecord};
use access::AccessRecorder;

/// Split a stored list (references by spaces, signatures by newlines).
pub(crate) fn split(s: String, sep: char) -> Vec<String> {
    s.split(sep).filter(|p| !p.is_empty()).map(str::to_owned).collect()
}

/// A stored size (signed in every database) as the record's `u64`.
pub(crate) fn to_u64(v: Option<i64>) -> Option<u64> {
    v.map(|n| n.max(0) as u64)
}

/// A size as every database stores it (signed 64-bit): a larger one is
/// refused, never wrapped into another number.
pub(crate) fn to_i64(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::invalid(format!("size {v} does not fit a database integer")))
}

/// [`to_i64`] of an optional size.
pub(crate) fn opt_i64(v: Option<u64>) -> Result<Option<i64>> {
    v.map(to_i64).transpose()
}

/// What [`MetadataStore::evict`] forgot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Eviction {
    /// The stored bytes the NAR accounted for.
    pub freed: u64,
    /// Store-path hashes of the narinfos that pointed at it.
    pub narinfos: Vec<String>,
}

/// A metadata database: SQLite, PostgreSQL or MySQL. One method per call of
/// the `ncps:edge/metadata` WIT interface; `record-access` is batched by
/// [`Metadata`], which hands the batch to [`MetadataStore::record_accesses`].
#[async_trait::async_trait]
pub trait MetadataStore: Send + Sync {
    /// `get-narinfo`: the narinfo of a store-path hash.
    async fn get_narinfo(&self, hash: &str) -> Result<Option<NarinfoRecord>>;
    /// `put-narinfo`: insert or replace a narinfo.
    async fn put_narinfo(&self, info: NarinfoRecord) -> Result<()>;
    /// `delete-narinfo`: `true` when one was deleted.
    async fn delete_narinfo(&self, hash: &str) -> Result<bool>;
    /// `get-nar`: the record of a NAR by storage key.
    async fn get_nar(&self, key: &str) -> Result<Option<NarRecord>>;
    /// `put-nar`: insert or replace a NAR record.
    async fn put_nar(&self, nar: NarRecord) -> Result<()>;
    /// `delete-nar`: `true` when one was deleted.
    async fn delete_nar(&self, key: &str) -> Result<bool>;
    /// `total-size`: sum of the stored NAR sizes.
    async fn total_size(&self) -> Result<u64>;
    /// `record-access`, batched: set last-access times (milliseconds since
    /// the epoch) of NAR keys, never moving one backwards.
    async fn record_accesses(&self, accesses: Vec<(String, i64)>) -> Result<()>;
    /// `lru-candidates`: stored NARs, least recently used first.
    async fn lru_candidates(&self, limit: u32) -> Result<Vec<NarRecord>>;
    /// `nars-after`: NAR records in key order after `after`, at most `limit`.
    async fn nars_after(&self, after: Option<&str>, limit: u32) -> Result<Vec<NarRecord>>;
    /// `is-referenced`: whether any narinfo points at NAR `key`.
    async fn is_referenced(&self, key: &str) -> Result<bool>;
    /// `evict`: delete a NAR record and every narinfo pointing at it in one
    /// transaction.
    async fn evict(&self, key: &str) -> Result<Eviction>;
}

/// The node's own configuration values kept in the shared database (not
/// part of the guest's contract).
#[async_trait::async_trait]
pub trait ConfigStore: Send + Sync {
    /// A config value.
    async fn get_config(&self, key: &str) -> Result<Option<String>>;
    /// Store `value` under `key` unless a value is there already; returns the
    /// value that is stored afterwards (so racing nodes agree on one).
    async fn set_config_if_absent(&self, key: &str, value: &str) -> Result<String>;
}

/// A database that is both.
pub trait Database: MetadataStore + ConfigStore {}
impl<T: MetadataStore + ConfigStore> Database for T {}

/// The metadata capability of a node: the database, with access times
/// noted in memory and written in batches so a hit is not a database write.
pub struct Metadata {
    store: Arc<dyn MetadataStore>,
    access: Arc<AccessRecorder>,
}

impl Metadata {
    /// Metadata on `store`.
    pub fn new(store: Arc<dyn MetadataStore>) -> Self {
        Self { access: Arc::new(AccessRecorder::new(store.clone())), store }
    }

    /// The database.
    pub fn store(&self) -> &Arc<dyn MetadataStore> {
        &self.store
    }

    /// `record-access`: note an access to `key` now (written later).
    pub fn record_access(&self, key: &str) {
        self.access.record(key);
    }

    /// `lru-candidates`: pending access times are written first, so the
    /// LRU decision sees every hit.
    pub async fn lru_candidates(&self, limit: u32) -> Result<Vec<NarRecord>> {
        if let Err(e) = self.access.flush().await {
            tracing::warn!(error = %e, "failed to write access times before an LRU decision");
        }
        self.store.lru_candidates(limit).await
    }

    /// Write pending access times now.
    pub async fn flush_accesses(&self) -> Result<()> {
        self.access.flush().await
    }

    /// Write pending access times every `interval` until the task is aborted.
    pub fn spawn_access_flusher(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        self.access.spawn_flusher(interval)
    }
}
