//! `ncps:edge/metadata` over Spin's PostgreSQL or MySQL
//! (`fermyon:spin/{postgres,mysql}`), chosen by `database_url`, with the
//! native backends' schema and statements (`ncps_edge_wire::sql`), so
//! Spin and native nodes share one database.
//!
//! One connection per instance, opened once: a database that cannot be
//! reached fails the rest of the request at once. Spin's PostgreSQL client
//! gets connect and TCP user timeouts of `backend_timeout_ms` unless
//! `database_url` names its own ([`postgres::bounded`]); Spin's MySQL
//! client takes none, so its calls (but the migrations, which wait for
//! another node's by design) are [`breaker::watched`]. A statement that
//! finds the schema missing applies the migrations (under the native
//! nodes' migration lock) and runs again. Access times are written after
//! the answer, at most once per key per node every 10 s
//! (`crate::accessed`): an instance has no background task to batch them
//! in. Narinfo lookups go through the node-local tier (`crate::tier`).

/// The [`Statements`] of a dialect's included SQL module (`$time_twice`:
/// whether its upserts take the time twice).
macro_rules! statements_of {
    ($sql:ident, $time_twice:expr) => {
        Statements {
            get_narinfo: $sql::GET_NARINFO,
            put_narinfo: $sql::PUT_NARINFO,
            delete_narinfo: $sql::DELETE_NARINFO,
            get_nar: $sql::GET_NAR,
            put_nar: $sql::PUT_NAR,
            delete_nar: $sql::DELETE_NAR,
            total_size: $sql::TOTAL_SIZE,
            record_access: $sql::RECORD_ACCESS,
            lru_candidates: $sql::LRU_CANDIDATES,
            nars_after: $sql::NARS_AFTER,
            is_referenced: $sql::IS_REFERENCED,
            get_config: $sql::GET_CONFIG,
            set_config_if_absent: $sql::SET_CONFIG_IF_ABSENT,
            time_twice: $time_twice,
        }
    };
}

/// `Db`, this dialect's connection `$conn`: `open` and `query`.
macro_rules! dialect_connection {
    ($conn:ty) => {
        /// A connection of this dialect.
        pub struct Db($conn);

        impl Db {
            /// Connect to `url`.
            pub fn open(url: &str) -> Result<Self, DbError> {
                <$conn>::open(url).map(Db)
            }

            /// Rows of a query.
            pub fn query(
                &self,
                statement: &str,
                params: &[P],
            ) -> Result<crate::bindings::fermyon::spin::rdbms_types::RowSet, DbError> {
                self.0.query(statement, params)
            }
        }
    };
}

mod mysql;
mod postgres;
mod rows;

pub use rows::{first_int, int_at, str_at};
use rows::{nar, narinfo, opt_int, opt_text, text};

use std::cell::OnceCell;

use crate::bindings::exports::ncps::edge::metadata::{Eviction, Guest, NarRecord, NarinfoRecord};
use crate::bindings::exports::ncps::edge::types::Error as WitError;
use crate::bindings::fermyon::spin::rdbms_types::{Error as DbError, ParameterValue as P, RowSet};
use crate::breaker::{self, Backend};
use crate::error::{Error, Result};
use crate::{settings, tier};

/// The statements of one dialect, in the order of their parameters.
pub struct Statements {
    get_narinfo: &'static str,
    put_narinfo: &'static str,
    delete_narinfo: &'static str,
    get_nar: &'static str,
    put_nar: &'static str,
    delete_nar: &'static str,
    total_size: &'static str,
    record_access: &'static str,
    lru_candidates: &'static str,
    nars_after: &'static str,
    is_referenced: &'static str,
    get_config: &'static str,
    set_config_if_absent: &'static str,
    /// The upserts take the time twice (created, accessed), not once.
    time_twice: bool,
}

/// This instance's database connection.
enum Db {
    Postgres(postgres::Db),
    MySql(mysql::Db),
}

impl Db {
    /// Connect, unless the node's breaker says the database does not
    /// answer ([`breaker`]); a connect that failed slowly trips it.
    fn open() -> Result<Self> {
        let url = settings::required("database_url")?;
        breaker::guarded(Backend::Database, || Self::connect(&url))
    }

    /// Connect to `url` in the dialect its scheme names.
    fn connect(url: &str) -> Result<Self> {
        let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or_default();
        match scheme {
            "postgres" | "postgresql" => postgres::Db::open(&postgres::bounded(url, settings::backend_timeout()))
                .map(Db::Postgres)
                .map_err(db_error),
            "mysql" => breaker::watched(Backend::Database, || mysql::Db::open(url)).map(Db::MySql).map_err(db_error),
            _ => Err(Error::Invalid(
                "the Spin variable `database_url` must be a postgres:// or mysql:// URL (no SQLite under Spin)".into(),
            )),
        }
    }

    fn statements(&self) -> &'static Statements {
        match self {
            Db::Postgres(_) => &postgres::STATEMENTS,
            Db::MySql(_) => &mysql::STATEMENTS,
        }
    }

    fn query(&self, sql: &str, params: &[P]) -> std::result::Result<RowSet, DbError> {
        match self {
            Db::Postgres(c) => c.query(sql, params),
            Db::MySql(c) => breaker::watched(Backend::Database, || c.query(sql, params)),
        }
    }

    /// Run a statement: the rows it changed.
    fn execute(&self, sql: &str, params: &[P]) -> std::result::Result<u64, DbError> {
        match self {
            Db::Postgres(c) => c.execute(sql, params),
            Db::MySql(c) => breaker::watched(Backend::Database, || c.execute(sql, params)),
        }
    }

    fn migrate(&self) -> std::result::Result<(), DbError> {
        match self {
            Db::Postgres(c) => c.migrate(),
            Db::MySql(c) => c.migrate(),
        }
    }

    fn evict(&self, key: &str) -> std::result::Result<Eviction, DbError> {
        match self {
            Db::Postgres(c) => c.evict(key),
            Db::MySql(c) => breaker::watched(Backend::Database, || c.evict(key)),
        }
    }
}

thread_local! {
    /// This instance's connection, or why it could not be opened: an
    /// instance tries once, so a database that does not answer costs a
    /// request one connect timeout, not one per statement.
    static DB: OnceCell<Result<Db>> = const { OnceCell::new() };
}

fn db_error(e: DbError) -> Error {
    match e {
        DbError::ConnectionFailed(m) => Error::unreachable("database", &m),
        DbError::QueryFailed(m) if m.contains("timed out") || m.contains("statement timeout") => {
            Error::Timeout("database", m)
        }
        DbError::QueryFailed(m) | DbError::Other(m) => Error::unreachable("database", &m),
        DbError::BadParameter(m) | DbError::ValueConversionFailed(m) => Error::Internal("database", m),
    }
}

fn missing_schema(e: &DbError) -> bool {
    matches!(e, DbError::QueryFailed(m) if m.contains("does not exist") || m.contains("doesn't exist"))
}

/// Call `f` with this instance's connection, opened on first use (once:
/// see [`DB`]).
fn connection<T>(f: impl FnOnce(&Db) -> T) -> Result<T> {
    DB.with(|cell| match cell.get_or_init(Db::open) {
        Ok(db) => Ok(f(db)),
        Err(e) => Err(e.clone()),
    })
}

/// Run `f`; when the schema is missing, migrate and run it once more.
fn run<T>(f: impl Fn(&Db) -> std::result::Result<T, DbError>) -> Result<T> {
    let started = now_ms();
    match connection(&f)? {
        Ok(v) => Ok(v),
        Err(e) if missing_schema(&e) => {
            connection(Db::migrate)?.map_err(db_error)?;
            connection(&f)?.map_err(db_error)
        }
        Err(e) => {
            let lost = lost_connection(&e);
            let e = db_error(e);
            if lost {
                breaker::trip_if_slow(Backend::Database, started, &e);
            }
            Err(e)
        }
    }
}

/// Whether a statement failed because the connection did (not because of
/// the statement).
fn lost_connection(e: &DbError) -> bool {
    match e {
        DbError::ConnectionFailed(_) => true,
        DbError::QueryFailed(m) | DbError::Other(m) => {
            ["timed out", "connection closed", "Broken pipe", "Connection reset"].iter().any(|s| m.contains(s))
        }
        DbError::BadParameter(_) | DbError::ValueConversionFailed(_) => false,
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    let now = crate::bindings::wasi::clocks::wall_clock::now();
    now.seconds as i64 * 1000 + i64::from(now.nanoseconds / 1_000_000)
}

/// The time parameters of an upsert.
fn times(s: &Statements) -> Vec<P> {
    let t = now_ms();
    if s.time_twice {
        vec![P::Int64(t), P::Int64(t)]
    } else {
        vec![P::Int64(t)]
    }
}

/// A configuration value of the `config` table.
pub fn get_config(key: &str) -> Result<Option<String>> {
    let rows = run(|c| c.query(c.statements().get_config, &[text(key)]))?;
    Ok(rows.rows.first().and_then(|r| str_at(r, 0)))
}

/// Set a configuration value unless it is set; the value that holds.
pub fn set_config_if_absent(key: &str, value: &str) -> Result<String> {
    run(|c| c.execute(c.statements().set_config_if_absent, &[text(key), text(value)]))?;
    get_config(key)?.ok_or_else(|| Error::Internal("database", format!("config {key} vanished")))
}

fn wit<T>(r: Result<T>) -> std::result::Result<T, WitError> {
    r.map_err(WitError::from)
}

impl Guest for crate::Adapter {
    /// From the node-local tier when it has the record, else from the
    /// database (and then kept in the tier).
    fn get_narinfo(hash: String) -> std::result::Result<Option<NarinfoRecord>, WitError> {
        if let Some(kept) = tier::narinfo(&hash) {
            crate::accessed::answered_narinfo(&hash, &kept.url);
            return Ok(Some(kept));
        }
        let asked = now_ms();
        let rows = wit(run(|c| c.query(c.statements().get_narinfo, &[text(&hash)])))?;
        let found = rows.rows.first().map(|r| narinfo(r));
        if let Some(record) = &found {
            tier::keep(record, asked);
            crate::accessed::answered_narinfo(&hash, &record.url);
        }
        Ok(found)
    }

    fn put_narinfo(n: NarinfoRecord) -> std::result::Result<(), WitError> {
        tier::forget(&n.hash);
        let (file_size, nar_size) = (wit(opt_int(n.file_size))?, wit(opt_int(Some(n.nar_size)))?);
        wit(run(|c| {
            let mut params = vec![
                text(&n.hash),
                text(&n.store_path),
                text(&n.url),
                text(&n.compression),
                opt_text(&n.file_hash),
                file_size.clone(),
                text(&n.nar_hash),
                nar_size.clone(),
                text(&n.references.join(" ")),
                opt_text(&n.deriver),
                opt_text(&n.system),
                opt_text(&n.ca),
                text(&n.sigs.join("\n")),
            ];
            params.extend(times(c.statements()));
            c.execute(c.statements().put_narinfo, &params).map(|_| ())
        }))
    }

    fn delete_narinfo(hash: String) -> std::result::Result<bool, WitError> {
        tier::forget(&hash);
        wit(run(|c| c.execute(c.statements().delete_narinfo, &[text(&hash)])).map(|n| n > 0))
    }

    fn get_nar(key: String) -> std::result::Result<Option<NarRecord>, WitError> {
        let rows = wit(run(|c| c.query(c.statements().get_nar, &[text(&key)])))?;
        Ok(rows.rows.first().map(|r| nar(r)))
    }

    fn put_nar(n: NarRecord) -> std::result::Result<(), WitError> {
        let (file_size, stored_size) = (wit(opt_int(n.file_size))?, wit(opt_int(n.stored_size))?);
        wit(run(|c| {
            let mut params = vec![
                text(&n.key),
                opt_text(&n.upstream_url),
                opt_text(&n.file_hash),
                file_size.clone(),
                stored_size.clone(),
            ];
            params.extend(times(c.statements()));
            c.execute(c.statements().put_nar, &params).map(|_| ())
        }))
    }

    fn delete_nar(key: String) -> std::result::Result<bool, WitError> {
        wit(run(|c| c.execute(c.statements().delete_nar, &[text(&key)])).map(|n| n > 0))
    }

    fn total_size() -> std::result::Result<u64, WitError> {
        let rows = wit(run(|c| c.query(c.statements().total_size, &[])))?;
        Ok(first_int(&rows).unwrap_or(0).max(0) as u64)
    }

    /// After a hit's answer (the client does not wait): the purge log when
    /// a read is due (first: it does not wait for the database), then the
    /// access time when this node has not written it lately
    /// ([`crate::accessed`]).
    fn record_access(key: String) {
        tier::read_log_if_due();
        if !crate::accessed::due(&key) {
            return;
        }
        if let Err(e) = run(|c| c.execute(c.statements().record_access, &[P::Int64(now_ms()), text(&key)])) {
            crate::log::warn("recording a NAR access failed", &[("key", &key), ("error", &e.to_string())]);
        }
    }

    fn lru_candidates(limit: u32) -> std::result::Result<Vec<NarRecord>, WitError> {
        let rows = wit(run(|c| c.query(c.statements().lru_candidates, &[P::Int64(i64::from(limit))])))?;
        Ok(rows.rows.iter().map(|r| nar(r)).collect())
    }

    fn nars_after(after: Option<String>, limit: u32) -> std::result::Result<Vec<NarRecord>, WitError> {
        let after = after.unwrap_or_default();
        let rows = wit(run(|c| c.query(c.statements().nars_after, &[text(&after), P::Int64(i64::from(limit))])))?;
        Ok(rows.rows.iter().map(|r| nar(r)).collect())
    }

    fn is_referenced(key: String) -> std::result::Result<bool, WitError> {
        let rows = wit(run(|c| c.query(c.statements().is_referenced, &[text(&key)])))?;
        Ok(!rows.rows.is_empty())
    }

    fn evict(key: String) -> std::result::Result<Eviction, WitError> {
        wit(run(|c| c.evict(&key)))
    }
}

/// Run `f` in a transaction on a connection that takes `BEGIN`/`COMMIT`
/// as statements: committed when `f` succeeds, rolled back otherwise.
pub fn transaction<T>(
    execute: impl Fn(&str) -> std::result::Result<(), DbError>,
    f: impl FnOnce() -> std::result::Result<T, DbError>,
) -> std::result::Result<T, DbError> {
    execute("BEGIN")?;
    match f() {
        Ok(v) => execute("COMMIT").map(|()| v),
        Err(e) => {
            let _ = execute("ROLLBACK");
            Err(e)
        }
    }
}
