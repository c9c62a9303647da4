//! The SQLite schema and statements of the metadata store (the embedded
//! default; `PRAGMA user_version` counts the applied migrations).

/// The migrations, in order, each a list of statements.
pub const MIGRATIONS: &[&[&str]] = &[
    &[
        "CREATE TABLE narinfos (
    hash TEXT PRIMARY KEY,
    store_path TEXT NOT NULL,
    url TEXT NOT NULL,
    compression TEXT NOT NULL,
    file_hash TEXT,
    file_size INTEGER,
    nar_hash TEXT NOT NULL,
    nar_size INTEGER NOT NULL,
    refs TEXT NOT NULL,
    deriver TEXT,
    system TEXT,
    ca TEXT,
    sigs TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_accessed_at INTEGER NOT NULL
)",
        "CREATE INDEX narinfos_url ON narinfos (url)",
        "CREATE TABLE nars (
    key TEXT PRIMARY KEY,
    upstream_url TEXT,
    file_hash TEXT,
    file_size INTEGER,
    stored_size INTEGER,
    created_at INTEGER NOT NULL,
    last_accessed_at INTEGER NOT NULL
)",
        "CREATE TABLE config (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ],
    &["CREATE INDEX nars_lru ON nars (last_accessed_at) WHERE stored_size IS NOT NULL"],
];

/// Columns of a narinfo, in the order the SELECTs return them.
pub const GET_NARINFO: &str = "SELECT hash, store_path, url, compression, file_hash, file_size, nar_hash, nar_size, refs, deriver, system, ca, sigs FROM narinfos WHERE hash = ?1";
/// Upsert a narinfo: the 13 columns of [`GET_NARINFO`], then `?14` the time in ms.
pub const PUT_NARINFO: &str = "INSERT INTO narinfos (hash, store_path, url, compression, file_hash, file_size, nar_hash, nar_size, refs, deriver, system, ca, sigs, created_at, last_accessed_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?14)
     ON CONFLICT (hash) DO UPDATE SET store_path = excluded.store_path, url = excluded.url,
       compression = excluded.compression, file_hash = excluded.file_hash, file_size = excluded.file_size,
       nar_hash = excluded.nar_hash, nar_size = excluded.nar_size, refs = excluded.refs,
       deriver = excluded.deriver, system = excluded.system, ca = excluded.ca, sigs = excluded.sigs,
       last_accessed_at = excluded.last_accessed_at";
/// Delete narinfo `?1`.
pub const DELETE_NARINFO: &str = "DELETE FROM narinfos WHERE hash = ?1";
/// Columns of a NAR record, in the order the SELECTs return them.
pub const GET_NAR: &str = "SELECT key, upstream_url, file_hash, file_size, stored_size FROM nars WHERE key = ?1";
/// Upsert a NAR record: the 5 columns of [`GET_NAR`], then `?6` the time in ms.
pub const PUT_NAR: &str =
    "INSERT INTO nars (key, upstream_url, file_hash, file_size, stored_size, created_at, last_accessed_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
     ON CONFLICT (key) DO UPDATE SET upstream_url = excluded.upstream_url, file_hash = excluded.file_hash,
       file_size = excluded.file_size, stored_size = excluded.stored_size,
       last_accessed_at = excluded.last_accessed_at";
/// Delete NAR record `?1`.
pub const DELETE_NAR: &str = "DELETE FROM nars WHERE key = ?1";
/// Bytes stored.
pub const TOTAL_SIZE: &str = "SELECT COALESCE(SUM(stored_size), 0) FROM nars";
/// One access: `?1` the time in ms, `?2` the key (the MySQL order).
pub const RECORD_ACCESS: &str = "UPDATE nars SET last_accessed_at = MAX(last_accessed_at, ?1) WHERE key = ?2";
/// Stored NARs, least recently used first, at most `?1`.
pub const LRU_CANDIDATES: &str = "SELECT key, upstream_url, file_hash, file_size, stored_size FROM nars
     WHERE stored_size IS NOT NULL ORDER BY last_accessed_at ASC, key ASC LIMIT ?1";
/// NAR records after key `?1`, at most `?2`.
pub const NARS_AFTER: &str =
    "SELECT key, upstream_url, file_hash, file_size, stored_size FROM nars WHERE key > ?1 ORDER BY key LIMIT ?2";
/// Whether a narinfo points at NAR `?1`.
pub const IS_REFERENCED: &str = "SELECT 1 FROM narinfos WHERE url = ?1 LIMIT 1";
/// Eviction, in one transaction: the size of NAR `?1`.
pub const EVICT_LOCK_NAR: &str = "SELECT stored_size FROM nars WHERE key = ?1";
/// Eviction: forget the narinfos of NAR `?1`, returning their hashes.
pub const EVICT_NARINFOS: &str = "DELETE FROM narinfos WHERE url = ?1 RETURNING hash";
/// Eviction: forget NAR `?1`.
pub const EVICT_NAR: &str = "DELETE FROM nars WHERE key = ?1";
/// A configuration value by key `?1`.
pub const GET_CONFIG: &str = "SELECT value FROM config WHERE key = ?1";
/// Set configuration `?1` to `?2` unless it is set.
pub const SET_CONFIG_IF_ABSENT: &str = "INSERT INTO config (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING";
