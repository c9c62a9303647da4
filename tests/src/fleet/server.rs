//! The fleet's database server as the harness watches it: connections to
//! the fleet's database and the server's limit, on PostgreSQL or MySQL
//! (MariaDB).

use mysql_async::prelude::Queryable as _;

use ncps_edge_test_support::{mysql_url, postgres_url};

/// Which server holds the fleet's metadata (and, without Spin nodes, its locks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Server {
    /// PostgreSQL: metadata and advisory locks.
    #[default]
    Postgres,
    /// MySQL (MariaDB): metadata and `GET_LOCK` locks.
    Mysql,
}

/// An administrative session on the fleet's server.
pub enum Watcher {
    /// On PostgreSQL's `postgres` database.
    Postgres(tokio_postgres::Client),
    /// On the MySQL server.
    Mysql(mysql_async::Conn),
}

impl Watcher {
    /// A session on `server`.
    pub async fn connect(server: Server) -> Self {
        match server {
            Server::Postgres => {
                let url = format!("{}/postgres", postgres_url());
                let (client, conn) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("PostgreSQL must be reachable");
                tokio::spawn(conn);
                Watcher::Postgres(client)
            }
            Server::Mysql => {
                let opts = mysql_async::Opts::from_url(&mysql_url()).expect("NCPS_TEST_MYSQL_URL");
                Watcher::Mysql(mysql_async::Conn::new(opts).await.expect("MySQL must be reachable"))
            }
        }
    }

    /// Connections to `database` now.
    pub async fn connections(&mut self, database: &str) -> i64 {
        match self {
            Watcher::Postgres(c) => c
                .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", &[&database])
                .await
                .expect("pg_stat_activity")
                .get(0),
            Watcher::Mysql(c) => c
                .exec_first("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = ?", (database,))
                .await
                .expect("PROCESSLIST")
                .unwrap_or(0),
        }
    }

    /// The server's `max_connections`.
    pub async fn max_connections(&mut self) -> i64 {
        match self {
            Watcher::Postgres(c) => {
                let row = c.query_one("SHOW max_connections", &[]).await.expect("SHOW max_connections");
                row.get::<_, String>(0).parse().unwrap_or(0)
            }
            Watcher::Mysql(c) => {
                c.query_first("SELECT @@max_connections").await.expect("@@max_connections").unwrap_or(0)
            }
        }
    }

    /// Run `sql` (PostgreSQL only; a no-op on MySQL).
    pub async fn batch_execute(&mut self, sql: &str) {
        if let Watcher::Postgres(c) = self {
            c.batch_execute(sql).await.expect(sql);
        }
    }
}
