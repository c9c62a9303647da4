//! A fleet: N `ncps-edge` processes on one region's PostgreSQL (metadata
//! and advisory locks) and S3 bucket, every fourth one far from them (50 ms
//! RTT through delaying proxies), in front of one upstream, and what
//! they cost the region: connections (idle and at peak), statements (round
//! trips) per hit and per miss, idle traffic, upstream downloads, purge
//! propagation, memory per node, time to start. The fleet test runs a
//! small N in CI; `cargo bench --bench fleet` runs 50.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ncps_edge_test_support::{fresh_bucket, host_port, postgres_url, via, S3Bucket, StallProxy};
use sha2::{Digest, Sha256};

use crate::cluster::backend_flags;
use crate::fixture::{fixture, hash_of, nar_file, nar_url};
use crate::nix::NixEnv;
use crate::node::{memory_tier_on, upstream_flags};
use crate::process::{rss, NodeProcess};
use crate::upstream::FakeUpstream;

/// N nodes and what they share.
pub struct Fleet {
    /// The nodes.
    pub nodes: Vec<NodeProcess>,
    /// Their upstream.
    pub up: FakeUpstream,
    /// Name of their PostgreSQL database.
    pub database: String,
    /// Their bucket.
    pub bucket: S3Bucket,
    /// Their logs (`node<i>.log`).
    pub dir: tempfile::TempDir,
    /// How long starting all of them took.
    pub started_in: Duration,
    /// The proxies of the far nodes (database, bucket).
    _far: (StallProxy, StallProxy),
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
    /// Seconds to start them all (in parallel, until each accepts).
    pub start_s: f64,
    /// The server's `max_connections`.
    pub max_connections: i64,
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
    /// `nix copy` of a closure through a near and a far node: byte-identical
    /// copies, attempts.
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
    /// Node logs that mention "too many clients".
    pub too_many_clients: usize,
    /// Resident memory per node after the run, MiB: mean and max.
    pub rss_mib: (f64, f64),
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

async fn admin() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&format!("{}/postgres", postgres_url()), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL must be reachable");
    tokio::spawn(conn);
    client
}

impl Fleet {
    /// Start `n` nodes on a fresh database and bucket, with `extra` flags.
    pub async fn start(n: usize, extra: &[String]) -> Fleet {
        let fx = fixture();
        let up = FakeUpstream::start(fx.cache("zstd")).await;
        let bucket = fresh_bucket().await;
        let dir = tempfile::tempdir().unwrap();
        let mut flags = upstream_flags(&up.url(), &fx.public_key);
        let backend = backend_flags("postgres").await;
        let url = backend.iter().find_map(|f| f.strip_prefix("--cache-database-url=")).expect("a database URL");
        let database = url.rsplit('/').next().expect("a database name").to_owned();
        // Far nodes reach the database and the bucket through proxies
        // that delay every packet.
        let far_db = StallProxy::with_delay(&host_port(url), FAR_ONE_WAY).await;
        let far_s3 = StallProxy::with_delay(&host_port(&bucket.endpoint), FAR_ONE_WAY).await;
        let far_url = format!("--cache-database-url={}", via(url, &far_db.addr()));
        let mut far_flags: Vec<String> =
            backend.iter().filter(|f| !f.starts_with("--cache-database-url=")).cloned().collect();
        far_flags.push(far_url);
        far_flags.extend(bucket.through(&far_s3).flags());
        let mut near_flags = backend.clone();
        near_flags.extend(bucket.flags());
        if server_log().is_some() {
            // Every statement of the fleet's nodes goes to the server's log ([`Fleet::statements`]).
            let sql = format!("ALTER DATABASE {database} SET log_statement = 'all'");
            admin().await.batch_execute(&sql).await.expect("ALTER DATABASE");
        }
        flags.extend([
            "--cache-hostname=fleet".to_string(),
            "--cache-allow-delete-verb".into(),
            "--cache-delete-token=deleter".into(),
            "--edge-cache-max-age=1h".into(),
            format!("--wasm-cache-dir={}", std::env::temp_dir().join("ncps-edge-test-wasm-cache").display()),
        ]);
        flags.extend_from_slice(extra);
        // The first node applies the migrations and compiles the handler
        // into the shared cache; the rest start together.
        let flags_of = |i: usize| {
            let mut all = flags.clone();
            all.extend(if is_far(i) { far_flags.clone() } else { near_flags.clone() });
            all
        };
        let started = Instant::now();
        let mut nodes = vec![NodeProcess::spawn(&flags_of(0), &dir.path().join("node0.log"))];
        let rest: Vec<NodeProcess> = std::thread::scope(|s| {
            let spawned: Vec<_> = (1..n)
                .map(|i| {
                    let (flags, log) = (flags_of(i), dir.path().join(format!("node{i}.log")));
                    s.spawn(move || NodeProcess::spawn(&flags, &log))
                })
                .collect();
            spawned.into_iter().map(|h| h.join().expect("a node started")).collect()
        });
        nodes.extend(rest);
        Fleet { nodes, up, database, bucket, dir, started_in: started.elapsed(), _far: (far_db, far_s3) }
    }

    /// Connections to the fleet's database now.
    pub async fn connections(&self, admin: &tokio_postgres::Client) -> i64 {
        connections_to(admin, &self.database).await
    }

    /// Statements the fleet's nodes have sent so far (each one round
    /// trip; pings included), read from the server's log; none when the
    /// log cannot be read.
    pub fn statements(&self) -> Option<usize> {
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

    /// Resident memory of each node, MiB.
    pub fn rss_mib(&self) -> Vec<f64> {
        self.nodes.iter().filter_map(|n| rss(n.pid())).map(|bytes| bytes as f64 / f64::from(1 << 20)).collect()
    }

    /// Node logs that contain `needle`.
    pub fn logs_with(&self, needle: &str) -> usize {
        (0..self.nodes.len())
            .filter(|i| {
                std::fs::read_to_string(self.dir.path().join(format!("node{i}.log")))
                    .is_ok_and(|log| log.contains(needle))
            })
            .count()
    }
}

/// Connections to `database` now, as `admin` sees them.
async fn connections_to(admin: &tokio_postgres::Client, database: &str) -> i64 {
    let row = admin
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", &[&database])
        .await
        .expect("pg_stat_activity");
    row.get(0)
}

/// The PostgreSQL server's log (`NCPS_FLEET_PG_LOG`, else Debian's), where
/// the fleet's database logs every statement.
fn server_log() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("NCPS_FLEET_PG_LOG")
        .map_or_else(|| std::path::PathBuf::from("/var/log/postgresql/postgresql-15-main.log"), Into::into);
    path.exists().then_some(path)
}

/// Statements sent per second by the idle fleet, over `window`.
async fn idle_rate(fleet: &Fleet, window: Duration) -> Option<f64> {
    let before = fleet.statements()?;
    tokio::time::sleep(window).await;
    Some((fleet.statements()? - before) as f64 / window.as_secs_f64())
}

/// Statements `work` caused, the idle rate over its duration taken off.
async fn statements_of<F: std::future::Future<Output = ()>>(fleet: &Fleet, idle: Option<f64>, work: F) -> Option<f64> {
    let before = fleet.statements();
    let started = Instant::now();
    work.await;
    // The server writes its log as it goes; give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spent = (fleet.statements()? - before?) as f64;
    Some((spent - idle? * started.elapsed().as_secs_f64()).max(0.0))
}

/// Ask every one of `urls` `rounds` times, one after the other; each must answer 200.
async fn ask_each(c: &reqwest::Client, urls: &[String], rounds: usize) {
    for _ in 0..rounds {
        for url in urls {
            let status = c.get(url).send().await.unwrap().status();
            assert_eq!(status, 200, "{url}");
        }
    }
}

/// Start `n` nodes and measure them (see [`Report`]).
pub async fn run(n: usize) -> Report {
    let fx = fixture();
    let admin = admin().await;
    let fleet = Fleet::start(n, &[]).await;
    // Until a node hears its channel it answers nothing from its tier.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let c = reqwest::Client::new();
    let far_nodes = (0..n).filter(|i| is_far(*i)).count();
    let mut report = Report { nodes: n, far_nodes, start_s: fleet.started_in.as_secs_f64(), ..Report::default() };
    report.max_connections =
        admin.query_one("SHOW max_connections", &[]).await.unwrap().get::<_, String>(0).parse().unwrap_or(0);
    report.idle_connections = fleet.connections(&admin).await;
    report.idle_statements_per_s = idle_rate(&fleet, Duration::from_secs(5)).await;

    // A narinfo: its first ask (fetched upstream), the first at every
    // other node (known to the database, not to the node), then hits.
    let narinfo = |i: usize, p: &str| format!("{}/{}.narinfo", fleet.nodes[i].url, hash_of(p));
    let urls: Vec<String> = (0..n).map(|i| narinfo(i, &fx.leaf)).collect();
    let idle = report.idle_statements_per_s;
    report.statements_per_miss = statements_of(&fleet, idle, ask_each(&c, &urls[..1], 1)).await;
    if n > 1 {
        let others = statements_of(&fleet, idle, ask_each(&c, &urls[1..], 1)).await;
        report.statements_per_node_miss = others.map(|s| s / (n - 1) as f64);
    }
    const HITS: usize = 20;
    let hits = statements_of(&fleet, idle, ask_each(&c, &urls, HITS)).await;
    report.statements_per_hit = hits.map(|s| s / (n * HITS) as f64);

    // The real nix client substitutes a closure through a near and a far node.
    for i in [1, 3].into_iter().filter(|i| *i < n) {
        report.nix_copies.1 += 1;
        let url = &fleet.nodes[i].url;
        let key = c.get(format!("{url}/pubkey")).send().await.unwrap().text().await.unwrap();
        let env = NixEnv::new();
        let store = env.path("store");
        let out = tokio::task::block_in_place(|| env.copy_from(url, key.trim(), &store, &fx.top));
        if out.status.success() && env.dump_hash(&store, &fx.top) == fx.env.dump_hash(&fx.store, &fx.top) {
            report.nix_copies.0 += 1;
        } else {
            eprintln!("nix copy through node {i}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }

    // One client per node asks for the same cold NAR at once.
    let cache = fx.cache("zstd");
    let nar = nar_url(&cache, &fx.big);
    let want = format!("{:x}", Sha256::digest(std::fs::read(nar_file(&cache, &fx.big)).unwrap()));
    let peak = Arc::new(AtomicI64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling, database) = (peak.clone(), sampling.clone(), fleet.database.clone());
        let sampler_admin = self::admin().await;
        tokio::spawn(async move {
            while sampling.load(Ordering::Acquire) {
                peak.fetch_max(connections_to(&sampler_admin, &database).await, Ordering::AcqRel);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let clients: Vec<_> = fleet
        .nodes
        .iter()
        .map(|node| {
            let (c, narinfo, nar) =
                (c.clone(), format!("{}/{}.narinfo", node.url, hash_of(&fx.big)), format!("{}{nar}", node.url));
            tokio::spawn(async move {
                let info = c.get(&narinfo).send().await.map_err(|e| format!("narinfo: {e}"))?.status();
                let resp = c.get(&nar).send().await.map_err(|e| format!("NAR: {e}"))?;
                let status = resp.status();
                let body = resp.bytes().await.map_err(|e| format!("NAR body: {e}"))?;
                if info != 200 || status != 200 {
                    return Err(format!("narinfo {info}, NAR {status}: {}", String::from_utf8_lossy(&body)));
                }
                Ok::<_, String>(format!("{:x}", Sha256::digest(&body)))
            })
        })
        .collect();
    for (i, client) in clients.into_iter().enumerate() {
        match client.await {
            Ok(Ok(got)) if got == want => report.correct_bodies += 1,
            other => eprintln!("node {i} (far: {}): {other:?}", is_far(i)),
        }
    }
    sampling.store(false, Ordering::Release);
    sampler.await.unwrap();
    report.peak_connections = peak.load(Ordering::Acquire);
    report.upstream_downloads = fleet.up.hits(&nar);

    // A purge at node 0: how long each node goes on serving the narinfo.
    // The upstream has no narinfo from now on, so a node that no longer
    // keeps it cannot fetch it again (or find it fetched again by another).
    if memory_tier_on() {
        fleet.up.faults().narinfos_gone.store(true, Ordering::SeqCst);
        let deleted = c.delete(&urls[0]).bearer_auth("deleter").send().await.unwrap();
        assert_eq!(deleted.status(), 204, "DELETE at node 0");
        let started = Instant::now();
        let waits: Vec<_> = (0..n)
            .map(|i| {
                let (c, url) = (c.clone(), urls[i].clone());
                tokio::spawn(async move {
                    // When the node last answered the narinfo: the end of
                    // the last 200 before its first answer without it.
                    let mut served_until = 0.0;
                    loop {
                        let resp = c.get(&url).send().await.unwrap();
                        if resp.status() != 200 {
                            return served_until;
                        }
                        served_until = started.elapsed().as_secs_f64();
                        if started.elapsed() > Duration::from_secs(30) {
                            return f64::INFINITY;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
            .collect();
        for (i, w) in waits.into_iter().enumerate() {
            let took = w.await.unwrap();
            if is_far(i) {
                report.purge_far_max_s = report.purge_far_max_s.max(took);
            }
            report.purge_s.push(took);
        }
        report.purge_s.sort_by(f64::total_cmp);
    }
    report.too_many_clients = fleet.logs_with("too many clients");
    let rss = fleet.rss_mib();
    report.rss_mib = (rss.iter().sum::<f64>() / rss.len().max(1) as f64, rss.iter().copied().fold(0.0, f64::max));
    report
}
