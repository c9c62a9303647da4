//! Typed metadata: narinfo records, NAR records, size accounting and config
//! values, one implementation per database.

pub mod mysql;
pub mod postgres;
pub mod sqlite;

use crate::Result;

pub use crate::bindings::metadata::{NarRecord, NarinfoRecord};

/// Split a stored list (references by spaces, signatures by newlines).
pub(crate) fn split(s: String, sep: char) -> Vec<String> {
    s.split(sep).filter(|p| !p.is_empty()).map(str::to_owned).collect()
}

/// A stored size (signed in every database) as the record's `u64`.
pub(crate) fn to_u64(v: Option<i64>) -> Option<u64> {
    v.map(|n| n.max(0) as u64)
}

/// A metadata database: SQLite, PostgreSQL or MySQL.
#[async_trait::async_trait]
pub trait MetadataStore: Send + Sync {
    /// The narinfo of a store-path hash.
    async fn get_narinfo(&self, hash: &str) -> Result<Option<NarinfoRecord>>;
    /// Insert or replace a narinfo.
    async fn put_narinfo(&self, info: NarinfoRecord) -> Result<()>;
    /// Delete a narinfo: `true` when one was deleted.
    async fn delete_narinfo(&self, hash: &str) -> Result<bool>;
    /// The record of a NAR by storage key.
    async fn get_nar(&self, key: &str) -> Result<Option<NarRecord>>;
    /// Insert or replace a NAR record.
    async fn put_nar(&self, nar: NarRecord) -> Result<()>;
    /// Delete a NAR record: `true` when one was deleted.
    async fn delete_nar(&self, key: &str) -> Result<bool>;
    /// Sum of the stored NAR sizes.
    async fn total_size(&self) -> Result<u64>;
    /// Set last-access times (milliseconds since the epoch) of NAR keys,
    /// never moving one backwards.
    async fn touch(&self, accesses: Vec<(String, i64)>) -> Result<()>;
    /// Stored NARs, least recently used first.
    async fn lru_candidates(&self, limit: u32) -> Result<Vec<NarRecord>>;
    /// Delete a NAR record and every narinfo pointing at it in one
    /// transaction; returns the stored size it accounted for.
    async fn evict(&self, key: &str) -> Result<u64>;
    /// A config value.
    async fn get_config(&self, key: &str) -> Result<Option<String>>;
    /// Store `value` under `key` unless a value is there already; returns the
    /// value that is stored afterwards (so racing nodes agree on one).
    async fn set_config_if_absent(&self, key: &str, value: &str) -> Result<String>;
}
