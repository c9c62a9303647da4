//! The PostgreSQL dialect: `fermyon:spin/postgres` and the native
//! backend's statements.

use crate::bindings::exports::ncps::edge::metadata::Eviction;
use crate::bindings::fermyon::spin::postgres::Connection;
use crate::bindings::fermyon::spin::rdbms_types::{Error as DbError, ParameterValue as P};

use super::{first_int, int_at, str_at, transaction, Statements};

use ncps_edge_wire::sql::postgres as sql;

/// `url` with Spin's PostgreSQL client (tokio-postgres) told to give up
/// after `timeout` (whole seconds, at least 1): on a connect
/// (`connect_timeout`), and on a connection whose data goes unacknowledged
/// (`tcp_user_timeout`, Linux), unless `url` names its own. Without them a
/// database whose address drops packets holds a request for minutes (the
/// kernel's SYN and data retries), where a refused connection fails at
/// once; with them a connection fails within `backend_timeout_ms`, and
/// what the node-local tier keeps is answered stale. (Spin's pool tries
/// each pooled connection in turn, a timeout each: `crate::breaker` keeps
/// the requests after the first from waiting at all.)
pub fn bounded(url: &str, timeout: std::time::Duration) -> String {
    let seconds = timeout.as_millis().div_ceil(1000).max(1);
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let named = |key: &str| query.split('&').any(|pair| pair.split('=').next() == Some(key));
    let mut params: Vec<String> = query.split('&').filter(|p| !p.is_empty()).map(str::to_owned).collect();
    for key in ["connect_timeout", "tcp_user_timeout"] {
        if !named(key) {
            params.push(format!("{key}={seconds}"));
        }
    }
    format!("{base}?{}", params.join("&"))
}

/// The statements.
pub static STATEMENTS: Statements = statements_of!(sql, false);

dialect_connection!(Connection);

impl Db {
    /// Rows a statement changed.
    pub fn execute(&self, statement: &str, params: &[P]) -> Result<u64, DbError> {
        self.0.execute(statement, params)
    }

    fn run(&self, statement: &str) -> Result<(), DbError> {
        self.0.execute(statement, &[]).map(|_| ())
    }

    /// Apply pending migrations in one transaction, as the native nodes do.
    pub fn migrate(&self) -> Result<(), DbError> {
        transaction(
            |s| self.run(s),
            || {
                self.0.execute(sql::LOCK_MIGRATIONS, &[P::Int64(sql::MIGRATION_LOCK)])?;
                self.run(sql::CREATE_SCHEMA_TABLE)?;
                let version = first_int(&self.0.query(sql::SCHEMA_VERSION, &[])?).unwrap_or(0).max(0) as usize;
                for (i, migration) in sql::MIGRATIONS.iter().enumerate().skip(version) {
                    for statement in migration.iter() {
                        self.run(statement)?;
                    }
                    self.0.execute(sql::RECORD_MIGRATION, &[P::Int32(i as i32 + 1)])?;
                }
                Ok(())
            },
        )
    }

    /// Forget NAR `key` and its narinfos in one statement: Spin 3.4+ pools
    /// PostgreSQL connections, and a transaction left open by a trapped
    /// instance would go back to the pool.
    pub fn evict(&self, key: &str) -> Result<Eviction, DbError> {
        let rows = self.0.query(sql::EVICT, &[P::Str(key.to_owned())])?;
        let row = rows.rows.first();
        Ok(Eviction {
            freed: row.and_then(|r| int_at(r, 0)).unwrap_or(0).max(0) as u64,
            narinfos: row
                .and_then(|r| str_at(r, 1))
                .map(|h| h.split(' ').filter(|h| !h.is_empty()).map(str::to_owned).collect())
                .unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::bounded;

    #[test]
    fn a_database_url_gets_the_backend_timeout_unless_it_names_its_own() {
        let t = Duration::from_millis(3_000);
        assert_eq!(bounded("postgres://u@h:5432/db", t), "postgres://u@h:5432/db?connect_timeout=3&tcp_user_timeout=3");
        assert_eq!(
            bounded("postgres://u@h/db?sslmode=disable", Duration::from_millis(2_500)),
            "postgres://u@h/db?sslmode=disable&connect_timeout=3&tcp_user_timeout=3"
        );
        assert_eq!(
            bounded("postgres://u@h/db?connect_timeout=10&sslmode=require", t),
            "postgres://u@h/db?connect_timeout=10&sslmode=require&tcp_user_timeout=3"
        );
        assert_eq!(
            bounded("postgres://u@h/db?", Duration::ZERO),
            "postgres://u@h/db?connect_timeout=1&tcp_user_timeout=1"
        );
    }
}
