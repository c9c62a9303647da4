//! The shared servers of a multi-node cluster: fresh PostgreSQL and MySQL
//! databases on the machine's servers, and private Redis instances that a
//! test may stop and restart. A missing server fails the test.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// `host:port` of the machine's Redis.
pub fn redis_addr() -> String {
    env("NCPS_TEST_REDIS_ADDR", "127.0.0.1:6379")
}

fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    format!("{prefix}_{n:016x}")
}

/// A new, empty PostgreSQL database; its URL.
pub fn fresh_postgres() -> String {
    let server = env("NCPS_TEST_POSTGRES_SERVER", "postgresql://postgres@127.0.0.1:5432");
    let name = unique("ncps_ha");
    let out = Command::new("psql")
        .args([&format!("{server}/postgres"), "-c", &format!("CREATE DATABASE {name}")])
        .output()
        .expect("psql");
    assert!(out.status.success(), "PostgreSQL must be reachable: {}", String::from_utf8_lossy(&out.stderr));
    format!("{server}/{name}")
}

/// A new, empty MySQL database; its URL.
pub fn fresh_mysql() -> String {
    let server = env("NCPS_TEST_MYSQL_SERVER", "mysql://root@127.0.0.1:3306");
    let name = unique("ncps_ha");
    let out = Command::new("mariadb")
        .args(["-h", "127.0.0.1", "-P", "3306", "-u", "root", "-e", &format!("CREATE DATABASE {name}")])
        .output()
        .expect("mariadb client");
    assert!(out.status.success(), "MariaDB must be reachable: {}", String::from_utf8_lossy(&out.stderr));
    format!("{server}/{name}")
}

/// A private Redis server on its own port.
pub struct PrivateRedis {
    /// Its port.
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Start one on a free port.
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut r = Self { port, child: None };
        r.restart();
        r
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kill it (as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port and wait until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(self.addr()).is_err() {
            assert!(Instant::now() < deadline, "private Redis did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Flags for S3 storage on the test server (s3s-fs, started by `.ci/run`)
/// in a new bucket.
pub async fn fresh_s3_flags() -> Vec<String> {
    use ncps_edge_host_services::storage::s3::{create_bucket, S3Options};
    let opts = S3Options {
        bucket: unique("ncps-ha").replace('_', "-"),
        endpoint: Some(env("NCPS_TEST_S3_ENDPOINT", "http://127.0.0.1:9000")),
        region: "us-east-1".into(),
        access_key_id: env("NCPS_TEST_S3_ACCESS_KEY", "ncps-test"),
        secret_access_key: env("NCPS_TEST_S3_SECRET_KEY", "ncps-test-secret"),
        force_path_style: true,
    };
    create_bucket(&opts).await.expect("the S3 server must be reachable");
    vec![
        format!("--cache-storage-s3-bucket={}", opts.bucket),
        format!("--cache-storage-s3-endpoint={}", opts.endpoint.unwrap_or_default()),
        format!("--cache-storage-s3-access-key-id={}", opts.access_key_id),
        format!("--cache-storage-s3-secret-access-key={}", opts.secret_access_key),
        "--cache-storage-s3-force-path-style".into(),
    ]
}
