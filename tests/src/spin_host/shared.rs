//! What Spin nodes (Spin-shaped or a real `spin up`) and native nodes of
//! one cache share: an upstream, a database, a bucket and a lock prefix.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ncps_edge_test_support::{fresh_bucket, fresh_postgres, redis_addr, unique, S3Bucket};

use super::{variables, SpinNode};
use crate::fixture::Fixture;
use crate::node::{start_node, upstream_flags, TestNode};
use crate::spin_up::SpinUp;
use crate::upstream::FakeUpstream;

/// The backends of one cache.
pub struct Shared {
    /// The upstream.
    pub up: FakeUpstream,
    /// The metadata database's URL.
    pub db: String,
    /// The bucket.
    pub bucket: S3Bucket,
    /// The Redis lock prefix.
    pub prefix: String,
}

impl Shared {
    /// The fixture's cache in `compression` upstream, a fresh PostgreSQL
    /// database.
    pub async fn new(fx: &Fixture, compression: &str) -> Self {
        Self::on(fx.cache(compression), fresh_postgres().await).await
    }

    /// An upstream serving the cache folder `upstream`, metadata in
    /// database `db`, a fresh bucket and lock prefix.
    pub async fn on(upstream: PathBuf, db: String) -> Self {
        Self {
            up: FakeUpstream::start(upstream).await,
            db,
            bucket: fresh_bucket().await,
            prefix: format!("{}:", unique("spin")),
        }
    }

    /// The Spin variables of a node of this cache. A PostgreSQL URL says
    /// `sslmode=disable`: Spin's client verifies the certificate a server
    /// offers, and a loopback address matches none.
    pub fn variables(&self, fx: &Fixture) -> HashMap<String, String> {
        let db = match self.db.starts_with("postgres") {
            true => format!("{}?sslmode=disable", self.db),
            false => self.db.clone(),
        };
        variables(&self.up.url(), &fx.public_key, &db, &self.bucket, &self.prefix)
    }

    /// A Spin-shaped node of this cache.
    pub async fn spin_node(&self, fx: &Fixture) -> SpinNode {
        SpinNode::start(self.variables(fx)).await
    }

    /// A real `spin up` of this cache with the Spin CLI `spin`.
    pub async fn spin_up(&self, spin: &Path, fx: &Fixture) -> SpinUp {
        SpinUp::start(spin, self.variables(fx)).await
    }

    /// A native node of this cache.
    pub async fn native_node(&self, fx: &Fixture) -> TestNode {
        self.native_node_with(fx, &[]).await
    }

    /// A native node of this cache, with `extra` flags.
    pub async fn native_node_with(&self, fx: &Fixture, extra: &[&str]) -> TestNode {
        let mut flags = upstream_flags(&self.up.url(), &fx.public_key);
        flags.extend([
            format!("--cache-redis-addrs={}", redis_addr()),
            format!("--cache-lock-redis-key-prefix={}", self.prefix),
            format!("--cache-database-url={}", self.db),
        ]);
        flags.extend(self.bucket.flags());
        flags.extend(extra.iter().map(|f| f.to_string()));
        start_node(&flags).await
    }
}
