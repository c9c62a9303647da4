//! The MySQL/MariaDB schema and statements of the metadata store.

macro_rules! table_options {
    () => {
        "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
    };
}

/// The migrations, in order, each a list of statements;
/// `ncps_edge_schema` counts the applied ones.
pub const MIGRATIONS: &[&[&str]] = &[&[
    concat!(
        "CREATE TABLE narinfos (
            hash VARCHAR(64) PRIMARY KEY,
            store_path VARCHAR(512) NOT NULL,
            url VARCHAR(255) NOT NULL,
            compression VARCHAR(32) NOT NULL,
            file_hash VARCHAR(128),
            file_size BIGINT,
            nar_hash VARCHAR(128) NOT NULL,
            nar_size BIGINT NOT NULL,
            refs MEDIUMTEXT NOT NULL,
            deriver VARCHAR(512),
            `system` VARCHAR(64),
            ca TEXT,
            sigs TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            last_accessed_at BIGINT NOT NULL,
            INDEX narinfos_url (url)
        ) ",
        table_options!()
    ),
    concat!(
        "CREATE TABLE nars (
            `key` VARCHAR(255) PRIMARY KEY,
            upstream_url TEXT,
            file_hash VARCHAR(128),
            file_size BIGINT,
            stored_size BIGINT,
            created_at BIGINT NOT NULL,
            last_accessed_at BIGINT NOT NULL,
            INDEX nars_lru (last_accessed_at)
        ) ",
        table_options!()
    ),
    concat!("CREATE TABLE config (`key` VARCHAR(255) PRIMARY KEY, value TEXT NOT NULL) ", table_options!()),
]];

/// Take the lock serializing migrations across nodes (60 s): 1 when held.
pub const LOCK_MIGRATIONS: &str = "SELECT GET_LOCK('ncps-edge-migrate', 60)";
/// Release it.
pub const UNLOCK_MIGRATIONS: &str = "SELECT RELEASE_LOCK('ncps-edge-migrate')";
/// The table counting applied migrations.
pub const CREATE_SCHEMA_TABLE: &str =
    concat!("CREATE TABLE IF NOT EXISTS ncps_edge_schema (version INT NOT NULL) ", table_options!());
/// How many migrations are applied.
pub const SCHEMA_VERSION: &str = "SELECT COUNT(*) FROM ncps_edge_schema";
/// Record migration `?` as applied.
pub const RECORD_MIGRATION: &str = "INSERT INTO ncps_edge_schema (version) VALUES (?)";

/// Columns of a narinfo, in the order the SELECTs return them.
pub const GET_NARINFO: &str = "SELECT hash, store_path, url, compression, file_hash, file_size, nar_hash, nar_size, refs, deriver, `system`, ca, sigs FROM narinfos WHERE hash = ?";
/// Upsert a narinfo: the 13 columns of [`GET_NARINFO`], then the time in
/// ms twice (created, accessed).
pub const PUT_NARINFO: &str = "INSERT INTO narinfos (hash, store_path, url, compression, file_hash, file_size, nar_hash, nar_size, refs, deriver, `system`, ca, sigs, created_at, last_accessed_at)
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
     ON DUPLICATE KEY UPDATE store_path = VALUES(store_path), url = VALUES(url), compression = VALUES(compression),
       file_hash = VALUES(file_hash), file_size = VALUES(file_size), nar_hash = VALUES(nar_hash),
       nar_size = VALUES(nar_size), refs = VALUES(refs), deriver = VALUES(deriver), `system` = VALUES(`system`),
       ca = VALUES(ca), sigs = VALUES(sigs), last_accessed_at = VALUES(last_accessed_at)";
/// Delete narinfo `?`.
pub const DELETE_NARINFO: &str = "DELETE FROM narinfos WHERE hash = ?";
/// Columns of a NAR record, in the order the SELECTs return them.
pub const GET_NAR: &str = "SELECT `key`, upstream_url, file_hash, file_size, stored_size FROM nars WHERE `key` = ?";
/// Upsert a NAR record: the 5 columns of [`GET_NAR`], then the time in ms
/// twice (created, accessed).
pub const PUT_NAR: &str =
    "INSERT INTO nars (`key`, upstream_url, file_hash, file_size, stored_size, created_at, last_accessed_at)
     VALUES (?, ?, ?, ?, ?, ?, ?)
     ON DUPLICATE KEY UPDATE upstream_url = VALUES(upstream_url), file_hash = VALUES(file_hash),
       file_size = VALUES(file_size), stored_size = VALUES(stored_size), last_accessed_at = VALUES(last_accessed_at)";
/// Delete NAR record `?`.
pub const DELETE_NAR: &str = "DELETE FROM nars WHERE `key` = ?";
/// Bytes stored.
pub const TOTAL_SIZE: &str = "SELECT CAST(COALESCE(SUM(stored_size), 0) AS SIGNED) FROM nars";
/// One access: the time in ms, then the key.
pub const RECORD_ACCESS: &str = "UPDATE nars SET last_accessed_at = GREATEST(last_accessed_at, ?) WHERE `key` = ?";
/// Stored NARs, least recently used first, at most `?`.
pub const LRU_CANDIDATES: &str = "SELECT `key`, upstream_url, file_hash, file_size, stored_size FROM nars
     WHERE stored_size IS NOT NULL ORDER BY last_accessed_at ASC, `key` ASC LIMIT ?";
/// NAR records after key `?`, at most `?`.
pub const NARS_AFTER: &str =
    "SELECT `key`, upstream_url, file_hash, file_size, stored_size FROM nars WHERE `key` > ? ORDER BY `key` LIMIT ?";
/// Whether a narinfo points at NAR `?`.
pub const IS_REFERENCED: &str = "SELECT 1 FROM narinfos WHERE url = ? LIMIT 1";
/// Eviction, in one transaction: the size of NAR `?`, locked.
pub const EVICT_LOCK_NAR: &str = "SELECT stored_size FROM nars WHERE `key` = ? FOR UPDATE";
/// Eviction: the narinfos of NAR `?`, locked.
pub const EVICT_LOCK_NARINFOS: &str = "SELECT hash FROM narinfos WHERE url = ? FOR UPDATE";
/// Eviction: forget the narinfos of NAR `?`.
pub const EVICT_NARINFOS: &str = "DELETE FROM narinfos WHERE url = ?";
/// Eviction: forget NAR `?`.
pub const EVICT_NAR: &str = "DELETE FROM nars WHERE `key` = ?";
/// A configuration value by key `?`.
pub const GET_CONFIG: &str = "SELECT value FROM config WHERE `key` = ?";
/// Set configuration `?` to `?` unless it is set.
pub const SET_CONFIG_IF_ABSENT: &str = "INSERT IGNORE INTO config (`key`, value) VALUES (?, ?)";
