//! A fleet: N nodes on one region's PostgreSQL (metadata, and advisory
//! locks; Redis locks when some of them are Spin nodes, a real `spin up`
//! of the composed component) and S3 bucket, every fourth one far from
//! them (50 ms RTT through delaying proxies), in front of one upstream, and
//! what they cost the region: connections (idle and at peak), statements
//! (round trips) per hit and per miss, idle traffic, upstream downloads,
//! purge propagation, memory per node, time to start, and `wrk` load
//! (hits at single nodes, a burst of misses at all of them). The fleet
//! tests run a small N in CI; `cargo bench --bench fleet` runs 50.

mod far;
mod load;
mod member;
mod run;
mod server;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ncps_edge_test_support::{fresh_bucket, host_port, via, S3Bucket};

use crate::cluster::backend_flags;
use crate::fixture::fixture;
use crate::node::upstream_flags;
use crate::process::NodeProcess;
use crate::spin_host::variables;
use crate::spin_up::SpinUp;
use crate::upstream::FakeUpstream;
use far::FarProxies;
pub use load::{Counted, HitLoad, Load, HIT_CONNECTIONS};
pub use member::Member;
pub use run::run;
pub use server::{Server, Watcher};

/// How many nodes, and of which kind.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Nodes in all.
    pub nodes: usize,
    /// How many of them (the last ones) are Spin nodes, and the Spin CLI
    /// that runs them. With any, every node locks on Redis (the one lock
    /// service a Spin node has) instead of PostgreSQL.
    pub spin: Option<(usize, PathBuf)>,
    /// Seconds of each `wrk` run of the load phase ([`Load`]).
    pub load_s: u64,
    /// The server of the metadata (and, without Spin nodes, the locks).
    pub server: Server,
    /// Flags of every native node beyond the harness's own.
    pub flags: Vec<String>,
}

impl Shape {
    /// `n` native nodes.
    pub fn native(n: usize) -> Self {
        Self { nodes: n, spin: None, load_s: 2, server: Server::Postgres, flags: Vec::new() }
    }

    /// Spin nodes in all.
    pub fn spin_nodes(&self) -> usize {
        self.spin.as_ref().map_or(0, |(n, _)| (*n).min(self.nodes))
    }
}

/// N nodes and what they share.
pub struct Fleet {
    /// The nodes.
    pub nodes: Vec<Member>,
    /// Their upstream.
    pub up: FakeUpstream,
    /// Their database's server.
    pub server: Server,
    /// A session on it, opened before the nodes start (a busy fleet may
    /// leave no connection for a new one).
    pub watcher: std::sync::Arc<tokio::sync::Mutex<Watcher>>,
    /// Name of their database.
    pub database: String,
    /// Their bucket.
    pub bucket: S3Bucket,
    /// The native nodes' logs (`node<i>.log`; a Spin node keeps its own).
    pub dir: tempfile::TempDir,
    /// How long starting all of them took.
    pub started_in: Duration,
    /// The proxies of the far nodes (database, bucket).
    _far: FarProxies,
}

/// One-way delay between a far node and the region (RTT 50 ms).
pub const FAR_ONE_WAY: Duration = Duration::from_millis(25);

/// Whether node `i` is far from the region: every fourth one, node 0 never.
pub fn is_far(i: usize) -> bool {
    i % 4 == 3
}

/// What one fleet run measured.
#[derive(Debug, Default)]
pub struct Report {
    /// Nodes.
    pub nodes: usize,
    /// Spin nodes among them.
    pub spin_nodes: usize,
    /// Seconds to start them all (in parallel, until each accepts).
    pub start_s: f64,
    /// The server's `max_connections`.
    pub max_connections: i64,
    /// The server.
    pub server: Server,
    /// Connections to the fleet's database, all nodes idle.
    pub idle_connections: i64,
    /// Most connections seen while every node served a cold NAR at once.
    pub peak_connections: i64,
    /// Statements (round trips) per second of the idle fleet: channel
    /// proofs, lock pings. None when the server's log cannot be read.
    pub idle_statements_per_s: Option<f64>,
    /// Statements of a narinfo's first ask (fetched upstream), idle traffic taken off.
    pub statements_per_miss: Option<f64>,
    /// Statements of a narinfo's first ask at a node after another node fetched it.
    pub statements_per_node_miss: Option<f64>,
    /// Statements per warm narinfo hit.
    pub statements_per_hit: Option<f64>,
    /// `nix copy` of a closure through a near and a far node (and the
    /// first Spin node): byte-identical copies, attempts.
    pub nix_copies: (usize, usize),
    /// Clients (one per node) that got the cold NAR's right bytes.
    pub correct_bodies: usize,
    /// Upstream downloads of that NAR across the fleet.
    pub upstream_downloads: usize,
    /// Seconds each node went on serving a deleted narinfo (the end of its
    /// last answer with it), sorted (empty with the edge tier's memory off).
    pub purge_s: Vec<f64>,
    /// The same for the far nodes alone, at most.
    pub purge_far_max_s: f64,
    /// Far nodes ([`is_far`]).
    pub far_nodes: usize,
    /// Node logs that say the server refused a connection ("too many
    /// clients" on PostgreSQL, "Too many connections" on MySQL).
    pub too_many_clients: usize,
    /// Resident memory per native node after the run, MiB: mean and max.
    pub rss_mib: (f64, f64),
    /// The same per Spin node (`spin up` and its trigger process).
    pub spin_rss_mib: (f64, f64),
    /// `wrk` through the fleet (none without `wrk`, outside CI).
    pub load: Option<Load>,
}

impl Report {
    /// The `q` quantile of the purge times.
    pub fn purge_quantile(&self, q: f64) -> f64 {
        if self.purge_s.is_empty() {
            return f64::NAN;
        }
        self.purge_s[((self.purge_s.len() - 1) as f64 * q).round() as usize]
    }
}

impl Fleet {
    /// Start the nodes of `shape` on a fresh database and bucket.
    pub async fn start(shape: &Shape) -> Fleet {
        let n = shape.nodes;
        let fx = fixture();
        let up = FakeUpstream::start(fx.cache("zstd")).await;
        let bucket = fresh_bucket().await;
        let dir = tempfile::tempdir().unwrap();
        let mut flags = upstream_flags(&up.url(), &fx.public_key);
        let backend = backend_flags(match (shape.spin_nodes() > 0, shape.server) {
            (true, Server::Postgres) => "redis",
            (true, Server::Mysql) => panic!("the harness runs Spin nodes on PostgreSQL only"),
            (false, Server::Postgres) => "postgres",
            (false, Server::Mysql) => "mysql",
        })
        .await;
        let url = backend.iter().find_map(|f| f.strip_prefix("--cache-database-url=")).expect("a database URL");
        let database = url.rsplit('/').next().expect("a database name").to_owned();
        // Far nodes reach the database and the bucket through proxies
        // that delay every packet.
        let far = FarProxies::start(&host_port(url), &host_port(&bucket.endpoint));
        let (far_db, far_s3) = (&far.db, &far.s3);
        let far_url = format!("--cache-database-url={}", via(url, &far_db.addr()));
        let mut far_flags: Vec<String> =
            backend.iter().filter(|f| !f.starts_with("--cache-database-url=")).cloned().collect();
        far_flags.push(far_url);
        far_flags.extend(bucket.through(far_s3).flags());
        let mut near_flags = backend.clone();
        near_flags.extend(bucket.flags());
        let mut watcher = Watcher::connect(shape.server).await;
        if server_log().is_some() && shape.server == Server::Postgres {
            // Every statement of the fleet's nodes goes to the server's log ([`Fleet::statements`]).
            watcher.batch_execute(&format!("ALTER DATABASE {database} SET log_statement = 'all'")).await;
        }
        let watcher = std::sync::Arc::new(tokio::sync::Mutex::new(watcher));
        flags.extend([
            "--cache-hostname=fleet".to_string(),
            "--cache-allow-delete-verb".into(),
            "--cache-delete-token=deleter".into(),
            "--edge-cache-max-age=1h".into(),
            format!("--wasm-cache-dir={}", std::env::temp_dir().join("ncps-edge-test-wasm-cache").display()),
        ]);
        flags.extend_from_slice(&shape.flags);
        // The first node applies the migrations and compiles the handler
        // into the shared cache; the rest start together.
        let flags_of = |i: usize| {
            let mut all = flags.clone();
            all.extend(if is_far(i) { far_flags.clone() } else { near_flags.clone() });
            all
        };
        let started = Instant::now();
        let natives = n - shape.spin_nodes();
        let mut nodes = vec![Member::Native(NodeProcess::spawn(&flags_of(0), &dir.path().join("node0.log")))];
        let rest: Vec<Member> = std::thread::scope(|s| {
            let spawned: Vec<_> = (1..natives)
                .map(|i| {
                    let (flags, log) = (flags_of(i), dir.path().join(format!("node{i}.log")));
                    s.spawn(move || NodeProcess::spawn(&flags, &log))
                })
                .collect();
            spawned.into_iter().map(|h| Member::Native(h.join().expect("a node started"))).collect()
        });
        nodes.extend(rest);
        if let Some((_, cli)) = &shape.spin {
            // The Spin nodes, on the same backends (a far one through the
            // same proxies) and lock prefix, all at once.
            let prefix =
                backend.iter().find_map(|f| f.strip_prefix("--cache-lock-redis-key-prefix=")).expect("a prefix");
            let spin_nodes = (natives..n).map(|i| {
                let (db, bucket) = match is_far(i) {
                    true => (via(url, &far_db.addr()), bucket.through(far_s3)),
                    false => (url.to_owned(), bucket.clone()),
                };
                // Spin's PostgreSQL client verifies a certificate a server
                // offers; a loopback address matches none.
                let db = format!("{db}?sslmode=disable");
                let mut vars = variables(&up.url(), &fx.public_key, &db, &bucket, prefix);
                vars.extend([("hostname".into(), "fleet".into()), ("max_age_s".into(), "3600".into())]);
                SpinUp::start(cli, vars)
            });
            nodes.extend(futures_util::future::join_all(spin_nodes).await.into_iter().map(Member::Spin));
        }
        let server = shape.server;
        let started_in = started.elapsed();
        Fleet { nodes, up, server, watcher, database, bucket, dir, started_in, _far: far }
    }

    /// Statements the fleet's nodes have sent so far (each one round
    /// trip; pings included), read from PostgreSQL's log; none when the
    /// log cannot be read or the server is MySQL.
    pub fn statements(&self) -> Option<usize> {
        if self.server != Server::Postgres {
            return None;
        }
        let log = std::fs::read(server_log()?).ok()?;
        let needle = format!("@{} LOG:  ", self.database);
        let text = String::from_utf8_lossy(&log);
        Some(
            text.lines()
                .filter(|l| {
                    l.split_once(&needle)
                        .is_some_and(|(_, rest)| rest.starts_with("execute") || rest.starts_with("statement:"))
                })
                .count(),
        )
    }

    /// Resident memory of each native node (`spin`: false) or Spin
    /// node (true), MiB.
    pub fn rss_mib(&self, spin: bool) -> Vec<f64> {
        let of_kind = self.nodes.iter().filter(|n| n.is_spin() == spin);
        of_kind.filter_map(Member::rss).map(|bytes| bytes as f64 / f64::from(1 << 20)).collect()
    }

    /// Node logs that contain `needle`.
    pub fn logs_with(&self, needle: &str) -> usize {
        self.nodes.iter().filter(|n| n.log().contains(needle)).count()
    }
}

/// The PostgreSQL server's log (`NCPS_FLEET_PG_LOG`, else Debian's), where
/// the fleet's database logs every statement.
fn server_log() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("NCPS_FLEET_PG_LOG")
        .map_or_else(|| std::path::PathBuf::from("/var/log/postgresql/postgresql-15-main.log"), Into::into);
    path.exists().then_some(path)
}
