//! The MySQL/MariaDB dialect: `fermyon:spin/mysql` and the native
//! backend's statements.

use crate::bindings::exports::ncps::edge::metadata::Eviction;
use crate::bindings::fermyon::spin::mysql::Connection;
use crate::bindings::fermyon::spin::rdbms_types::{Error as DbError, ParameterValue as P};

use super::{first_int, str_at, transaction, Statements};

use ncps_edge_wire::sql::mysql as sql;

/// The statements.
pub static STATEMENTS: Statements = statements_of!(sql, true);

dialect_connection!(Connection);

impl Db {
    /// Rows a statement changed (Spin's MySQL `execute` does not say: asked
    /// of the same connection right after).
    pub fn execute(&self, statement: &str, params: &[P]) -> Result<u64, DbError> {
        self.0.execute(statement, params)?;
        Ok(first_int(&self.0.query("SELECT ROW_COUNT()", &[])?).unwrap_or(0).max(0) as u64)
    }

    fn run(&self, statement: &str) -> Result<(), DbError> {
        self.0.execute(statement, &[])
    }

    /// Apply pending migrations under the native nodes' `GET_LOCK`.
    pub fn migrate(&self) -> Result<(), DbError> {
        if first_int(&self.0.query(sql::LOCK_MIGRATIONS, &[])?) != Some(1) {
            return Err(DbError::QueryFailed("timed out waiting for another node's migration".into()));
        }
        let applied = (|| {
            self.run(sql::CREATE_SCHEMA_TABLE)?;
            let version = first_int(&self.0.query(sql::SCHEMA_VERSION, &[])?).unwrap_or(0).max(0) as usize;
            for (i, statements) in sql::MIGRATIONS.iter().enumerate().skip(version) {
                for statement in statements.iter() {
                    self.run(statement)?;
                }
                self.0.execute(sql::RECORD_MIGRATION, &[P::Int32(i as i32 + 1)])?;
            }
            Ok(())
        })();
        let _ = self.0.query(sql::UNLOCK_MIGRATIONS, &[]);
        applied
    }

    /// Forget NAR `key` and its narinfos in one transaction.
    pub fn evict(&self, key: &str) -> Result<Eviction, DbError> {
        let key = [P::Str(key.to_owned())];
        transaction(
            |s| self.run(s),
            || {
                let size = self.0.query(sql::EVICT_LOCK_NAR, &key)?;
                let narinfos = self.0.query(sql::EVICT_LOCK_NARINFOS, &key)?;
                self.0.execute(sql::EVICT_NARINFOS, &key)?;
                self.0.execute(sql::EVICT_NAR, &key)?;
                Ok(Eviction {
                    freed: first_int(&size).unwrap_or(0).max(0) as u64,
                    narinfos: narinfos.rows.iter().filter_map(|r| str_at(r, 0)).collect(),
                })
            },
        )
    }
}
