//! The PostgreSQL schema and statements of the metadata store.

/// The migrations, in order, each a list of statements;
/// `ncps_edge_schema` counts the applied ones.
pub const MIGRATIONS: &[&[&str]] = &[&[
    "CREATE TABLE narinfos (
    hash TEXT PRIMARY KEY,
    store_path TEXT NOT NULL,
    url TEXT NOT NULL,
    compression TEXT NOT NULL,
    file_hash TEXT,
    file_size BIGINT,
    nar_hash TEXT NOT NULL,
    nar_size BIGINT NOT NULL,
    refs TEXT NOT NULL,
    deriver TEXT,
    system TEXT,
    ca TEXT,
    sigs TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_accessed_at BIGINT NOT NULL
)",
    "CREATE INDEX narinfos_url ON narinfos (url)",
    "CREATE TABLE nars (
    key TEXT PRIMARY KEY,
    upstream_url TEXT,
    file_hash TEXT,
    file_size BIGINT,
    stored_size BIGINT,
    created_at BIGINT NOT NULL,
    last_accessed_at BIGINT NOT NULL
)",
    "CREATE INDEX nars_lru ON nars (last_accessed_at) WHERE stored_size IS NOT NULL",
    "CREATE TABLE config (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
]];

/// Advisory lock id serializing migrations across nodes.
pub const MIGRATION_LOCK: i64 = 0x6e63_7073_6564_6765;
/// Take [`MIGRATION_LOCK`] for the transaction (`$1`: the id).
pub const LOCK_MIGRATIONS: &str = "SELECT pg_advisory_xact_lock($1)";
/// The table counting applied migrations.
pub const CREATE_SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS ncps_edge_schema (version INT NOT NULL)";
/// How many migrations are applied.
pub const SCHEMA_VERSION: &str = "SELECT COUNT(*) FROM ncps_edge_schema";
/// Record migration `$1` (INT) as applied.
pub const RECORD_MIGRATION: &str = "INSERT INTO ncps_edge_schema (version) VALUES ($1)";

/// Columns of a narinfo, in the order the SELECTs return them.
pub const GET_NARINFO: &str = "SELECT hash, store_path, url, compression, file_hash, file_size, nar_hash, nar_size, refs, deriver, system, ca, sigs FROM narinfos WHERE hash = $1";
/// Upsert a narinfo: the 13 columns of [`GET_NARINFO`], then `$14` the time in ms.
pub const PUT_NARINFO: &str = "INSERT INTO narinfos (hash, store_path, url, compression, file_hash, file_size, nar_hash, nar_size, refs, deriver, system, ca, sigs, created_at, last_accessed_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14)
     ON CONFLICT (hash) DO UPDATE SET store_path = EXCLUDED.store_path, url = EXCLUDED.url,
       compression = EXCLUDED.compression, file_hash = EXCLUDED.file_hash, file_size = EXCLUDED.file_size,
       nar_hash = EXCLUDED.nar_hash, nar_size = EXCLUDED.nar_size, refs = EXCLUDED.refs,
       deriver = EXCLUDED.deriver, system = EXCLUDED.system, ca = EXCLUDED.ca, sigs = EXCLUDED.sigs,
       last_accessed_at = EXCLUDED.last_accessed_at";
/// Delete narinfo `$1`.
pub const DELETE_NARINFO: &str = "DELETE FROM narinfos WHERE hash = $1";
/// Columns of a NAR record, in the order the SELECTs return them.
pub const GET_NAR: &str = "SELECT key, upstream_url, file_hash, file_size, stored_size FROM nars WHERE key = $1";
/// Upsert a NAR record: the 5 columns of [`GET_NAR`], then `$6` the time in ms.
pub const PUT_NAR: &str =
    "INSERT INTO nars (key, upstream_url, file_hash, file_size, stored_size, created_at, last_accessed_at)
     VALUES ($1, $2, $3, $4, $5, $6, $6)
     ON CONFLICT (key) DO UPDATE SET upstream_url = EXCLUDED.upstream_url, file_hash = EXCLUDED.file_hash,
       file_size = EXCLUDED.file_size, stored_size = EXCLUDED.stored_size,
       last_accessed_at = EXCLUDED.last_accessed_at";
/// Delete NAR record `$1`.
pub const DELETE_NAR: &str = "DELETE FROM nars WHERE key = $1";
/// Bytes stored.
pub const TOTAL_SIZE: &str = "SELECT COALESCE(SUM(stored_size), 0)::BIGINT FROM nars";
/// Accesses: `$1` keys (TEXT[]), `$2` times in ms (BIGINT[]).
pub const RECORD_ACCESSES: &str = "UPDATE nars SET last_accessed_at = GREATEST(nars.last_accessed_at, a.at)
     FROM UNNEST($1::TEXT[], $2::BIGINT[]) AS a(key, at) WHERE nars.key = a.key";
/// One access: `$1` the time in ms, `$2` the key (the MySQL order).
pub const RECORD_ACCESS: &str = "UPDATE nars SET last_accessed_at = GREATEST(last_accessed_at, $1) WHERE key = $2";
/// Stored NARs, least recently used first, at most `$1`.
pub const LRU_CANDIDATES: &str = "SELECT key, upstream_url, file_hash, file_size, stored_size FROM nars
     WHERE stored_size IS NOT NULL ORDER BY last_accessed_at ASC, key ASC LIMIT $1";
/// NAR records after key `$1`, at most `$2`.
pub const NARS_AFTER: &str =
    "SELECT key, upstream_url, file_hash, file_size, stored_size FROM nars WHERE key > $1 ORDER BY key LIMIT $2";
/// Whether a narinfo points at NAR `$1`.
pub const IS_REFERENCED: &str = "SELECT 1 FROM narinfos WHERE url = $1 LIMIT 1";
/// Eviction, atomic as one statement (under Spin a connection may go back
/// to a pool mid-transaction): NAR `$1` and its narinfos forgotten; the
/// bytes freed and the narinfo hashes, space-separated.
pub const EVICT: &str = "WITH gone_nar AS (DELETE FROM nars WHERE key = $1 RETURNING stored_size),
       gone_narinfos AS (DELETE FROM narinfos WHERE url = $1 RETURNING hash)
     SELECT (SELECT COALESCE(SUM(stored_size), 0)::BIGINT FROM gone_nar),
            (SELECT COALESCE(string_agg(hash, ' '), '') FROM gone_narinfos)";
/// A configuration value by key `$1`.
pub const GET_CONFIG: &str = "SELECT value FROM config WHERE key = $1";
/// Set configuration `$1` to `$2` unless it is set.
pub const SET_CONFIG_IF_ABSENT: &str = "INSERT INTO config (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING";
