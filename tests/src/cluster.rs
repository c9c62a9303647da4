//! Two `ncps-edge` processes sharing a lock backend, a metadata database
//! and an S3 bucket, in front of a fake upstream: the setting of the
//! failover tests and of the failover benchmark.

use std::path::PathBuf;

use ncps_edge_test_support::{fresh_bucket, fresh_mysql, fresh_postgres, redis_addr, S3Bucket};

use crate::fixture::Fixture;
use crate::node::upstream_flags;
use crate::process::NodeProcess;
use crate::upstream::FakeUpstream;

/// Two nodes and what they share.
pub struct Pair {
    /// The first node.
    pub a: NodeProcess,
    /// The second node.
    pub b: NodeProcess,
    /// The upstream both fetch from.
    pub up: FakeUpstream,
    /// The bucket both store NARs in.
    pub bucket: S3Bucket,
    /// Logs of both nodes (`a.log`, `b.log`).
    pub dir: tempfile::TempDir,
}

impl Pair {
    /// The log file of node `name` (`a` or `b`).
    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }
}

/// Flags of the shared database and lock service for `backend` (`redis`,
/// `postgres` or `mysql`).
pub async fn backend_flags(backend: &str) -> Vec<String> {
    let (db, locks) = match backend {
        "redis" => (fresh_postgres().await, vec![format!("--cache-redis-addrs={}", redis_addr())]),
        "postgres" => (fresh_postgres().await, vec!["--cache-lock-backend=postgres".to_string()]),
        "mysql" => (fresh_mysql().await, vec!["--cache-lock-backend=mysql".to_string()]),
        other => panic!("no backend {other}"),
    };
    let mut flags = vec![
        format!("--cache-lock-redis-key-prefix=test:{}:", db.rsplit('/').next().unwrap_or("x")),
        format!("--cache-database-url={db}"),
    ];
    flags.extend(locks);
    flags
}

/// Start two nodes on `backend` with `extra` flags, upstream `cache`.
pub async fn pair(fx: &Fixture, cache: PathBuf, backend: &str, extra: &[String]) -> Pair {
    let up = FakeUpstream::start(cache).await;
    let bucket = fresh_bucket().await;
    let dir = tempfile::tempdir().unwrap();
    let mut flags = upstream_flags(&up.url(), &fx.public_key);
    flags.extend(backend_flags(backend).await);
    flags.extend(bucket.flags());
    flags.extend([
        "--cache-hostname=pair".to_string(),
        "--prometheus-enabled".into(),
        format!("--wasm-cache-dir={}", std::env::temp_dir().join("ncps-edge-test-wasm-cache").display()),
    ]);
    flags.extend_from_slice(extra);
    let a = NodeProcess::spawn(&flags, &dir.path().join("a.log"));
    let b = NodeProcess::spawn(&flags, &dir.path().join("b.log"));
    Pair { a, b, up, bucket, dir }
}
