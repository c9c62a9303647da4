//! Helpers shared by every ncps-edge test suite and benchmark: where the
//! real servers are, fresh databases and buckets on them, and private Redis
//! instances a test may kill and restart.
//!
//! Every address comes from one environment variable (with the machine's
//! default), and every database is created through the same URL the tests
//! then connect to. A server that cannot be reached fails the test: under
//! `CI=true` nothing is ever skipped.
#![deny(missing_docs)]

mod dropped_port;
mod proxy;
mod redis;
mod s3;
mod s3server;
mod until_exit;

pub use dropped_port::DroppedPort;
pub use proxy::{Mode as ProxyMode, StallProxy};
pub use redis::PrivateRedis;
pub use s3::{fresh_bucket, S3Bucket};
pub use s3server::PrivateS3;
pub use until_exit::until_exit;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_owned())
}

/// `host:port` of the machine's Redis (`NCPS_TEST_REDIS_ADDR`).
pub fn redis_addr() -> String {
    env("NCPS_TEST_REDIS_ADDR", "127.0.0.1:6379")
}

/// PostgreSQL server URL without a database (`NCPS_TEST_POSTGRES_URL`).
pub fn postgres_url() -> String {
    env("NCPS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432").trim_end_matches('/').to_owned()
}

/// MySQL/MariaDB server URL without a database (`NCPS_TEST_MYSQL_URL`).
pub fn mysql_url() -> String {
    env("NCPS_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306").trim_end_matches('/').to_owned()
}

/// A name no other test (in this or another process) uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}_{:016x}", (nanos as u64) ^ rand::random::<u64>())
}

/// A new, empty PostgreSQL database on [`postgres_url`]; its URL.
pub async fn fresh_postgres() -> String {
    let server = postgres_url();
    let (admin, conn) = tokio_postgres::connect(&format!("{server}/postgres"), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL must be reachable at {server}: {e}"));
    tokio::spawn(conn);
    let name = unique("ncps_test");
    admin.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("CREATE DATABASE");
    format!("{server}/{name}")
}

/// A new, empty MySQL database on [`mysql_url`]; its URL.
pub async fn fresh_mysql() -> String {
    use mysql_async::prelude::Queryable;
    let server = mysql_url();
    let opts = mysql_async::Opts::from_url(&server).unwrap_or_else(|e| panic!("NCPS_TEST_MYSQL_URL {server}: {e}"));
    let mut admin =
        mysql_async::Conn::new(opts).await.unwrap_or_else(|e| panic!("MariaDB must be reachable at {server}: {e}"));
    let name = unique("ncps_test");
    admin.query_drop(format!("CREATE DATABASE {name}")).await.expect("CREATE DATABASE");
    let _ = admin.disconnect().await;
    format!("{server}/{name}")
}

/// `url` with its `host:port` replaced by `addr` (to route a client
/// through a [`StallProxy`]).
pub fn via(url: &str, addr: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (auth, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let user = auth.rsplit_once('@').map(|(u, _)| format!("{u}@")).unwrap_or_default();
    format!("{scheme}://{user}{addr}{tail}")
}

/// `host:port` of a URL.
pub fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let auth = rest.split('/').next().unwrap_or(rest);
    auth.rsplit_once('@').map_or(auth, |(_, hp)| hp).to_owned()
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}
