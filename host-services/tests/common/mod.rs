//! Addresses of the real servers the contract suites run against, and fresh
//! databases for them. A missing server fails the test.
#![allow(dead_code)]

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// `host:port` of Redis.
pub fn redis_addr() -> String {
    env("NCPS_TEST_REDIS_ADDR", "127.0.0.1:6379")
}

/// PostgreSQL server URL without a database.
pub fn postgres_server() -> String {
    env("NCPS_TEST_POSTGRES_SERVER", "postgresql://postgres@127.0.0.1:5432")
}

/// MySQL/MariaDB server URL without a database.
pub fn mysql_server() -> String {
    env("NCPS_TEST_MYSQL_SERVER", "mysql://root@127.0.0.1:3306")
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        ^ rand::random::<u64>();
    format!("{prefix}_{n:016x}")
}

/// A new, empty PostgreSQL database; its URL.
pub async fn fresh_postgres() -> String {
    let (admin, conn) = tokio_postgres::connect(&format!("{}/postgres", postgres_server()), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL must be reachable");
    tokio::spawn(conn);
    let name = unique("ncps_test");
    admin.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    format!("{}/{name}", postgres_server())
}

/// A new, empty MySQL database; its URL.
pub async fn fresh_mysql() -> String {
    use mysql_async::prelude::Queryable;
    let mut admin = mysql_async::Conn::new(mysql_async::Opts::from_url(&format!("{}/test", mysql_server())).unwrap())
        .await
        .expect("MariaDB must be reachable");
    let name = unique("ncps_test");
    admin.query_drop(format!("CREATE DATABASE {name}")).await.unwrap();
    format!("{}/{name}", mysql_server())
}

/// S3 settings of the test server (s3s-fs started by `.ci/run`), with a new bucket.
pub async fn fresh_s3() -> ncps_edge_host_services::storage::s3::S3Options {
    let opts = ncps_edge_host_services::storage::s3::S3Options {
        bucket: unique("ncps-test").replace('_', "-"),
        endpoint: Some(env("NCPS_TEST_S3_ENDPOINT", "http://127.0.0.1:9000")),
        region: "us-east-1".into(),
        access_key_id: env("NCPS_TEST_S3_ACCESS_KEY", "ncps-test"),
        secret_access_key: env("NCPS_TEST_S3_SECRET_KEY", "ncps-test-secret"),
        force_path_style: true,
    };
    ncps_edge_host_services::storage::s3::create_bucket(&opts).await.expect("the S3 server must be reachable");
    opts
}
