//! The metadata schema and statements, one module per SQL dialect, each of
//! the same shape: `MIGRATIONS` (in order, each a list of statements) and
//! one constant per statement under the same name in every dialect
//! (`GET_NARINFO`, `PUT_NAR`, `EVICT…`, …). Native nodes and the Spin
//! adapter run these very statements, so they share one database.

/// How stale a NAR's `last_accessed_at` may be: every node writes the
/// access times of its hits at most this often (a native node in one batch
/// per interval, a Spin node once per key per interval).
pub const ACCESS_WRITE_EVERY_MS: u64 = 10_000;

pub mod mysql;
pub mod postgres;
pub mod sqlite;

#[cfg(test)]
mod tests {
    /// The tables and columns every dialect creates, in order.
    fn shape(migrations: &[&[&str]]) -> Vec<String> {
        let mut out = Vec::new();
        for statement in migrations.iter().flat_map(|m| m.iter()) {
            let words: Vec<&str> = statement.split_whitespace().collect();
            if words.first() == Some(&"CREATE") && words.get(1) == Some(&"TABLE") {
                let name = words[2].trim_matches('`').split('(').next().unwrap_or_default().to_owned();
                let body = &statement[statement.find('(').unwrap_or(0) + 1..];
                let columns: Vec<String> = body
                    .split(',')
                    .filter_map(|c| c.split_whitespace().next())
                    .map(|c| c.trim_matches('`').to_owned())
                    .filter(|c| c != "INDEX" && !c.starts_with(')'))
                    .collect();
                out.push(format!("{name}: {}", columns.join(" ")));
            }
        }
        out
    }

    #[test]
    fn every_dialect_has_the_same_tables_and_columns() {
        let pg = shape(super::postgres::MIGRATIONS);
        assert_eq!(pg.len(), 3, "{pg:?}");
        assert_eq!(shape(super::mysql::MIGRATIONS), pg);
        assert_eq!(shape(super::sqlite::MIGRATIONS), pg);
    }
}
