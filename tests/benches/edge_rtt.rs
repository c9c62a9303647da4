//! Warm hits at a node far from its shared backends: the same node setup
//! (PostgreSQL metadata, Redis locks, S3 storage) once with every backend
//! reached directly and once through proxies that add 150 ms of round-trip
//! time, with the edge tier on (the default).
//!
//! `cargo build --release -p ncps-edge && NCPS_EDGE_BIN=target/release/ncps-edge
//! cargo bench -p ncps-edge-tests --bench edge_rtt` (needs Redis, PostgreSQL,
//! s3s-fs and nix, like the tests). Prints a markdown table of the median and
//! p90 of sequential warm hits, and the far node's ratio to the near one.

use std::time::Duration;

use ncps_edge_test_support::{fresh_bucket, fresh_postgres, host_port, redis_addr, via, StallProxy};
use ncps_edge_tests::fixture::{fixture, hash_of, nar_url};
use ncps_edge_tests::measure::latency;
use ncps_edge_tests::node::upstream_flags;
use ncps_edge_tests::process::NodeProcess;
use ncps_edge_tests::upstream::FakeUpstream;

/// Sequential requests per measurement.
const ROUNDS: usize = 50;

/// Warm narinfo, small NAR and 30 MB NAR hits at a node `one_way` away
/// from PostgreSQL, Redis and S3.
async fn measure(one_way: Duration) -> [(f64, f64); 3] {
    let fx = fixture();
    let cache = fx.cache("none");
    let up = FakeUpstream::start(cache.clone()).await;
    let db = fresh_postgres().await;
    let bucket = fresh_bucket().await;
    let pg = StallProxy::with_delay(&host_port(&db), one_way).await;
    let redis = StallProxy::with_delay(&redis_addr(), one_way).await;
    let s3 = StallProxy::with_delay(&host_port(&bucket.endpoint), one_way).await;
    let routed = bucket.through(&s3);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut flags = upstream_flags(&up.url(), &fx.public_key);
    flags.extend([
        "--cache-hostname=bench".to_string(),
        "--log-level=warn".into(),
        format!("--cache-database-url={}", via(&db, &pg.addr())),
        format!("--cache-redis-addrs={}", redis.addr()),
        format!("--cache-lock-redis-key-prefix=bench:{}:", db.rsplit('/').next().unwrap_or("x")),
    ]);
    flags.extend(routed.flags());
    let node = NodeProcess::spawn(&flags, &dir.path().join("node.log"));
    let c = reqwest::Client::new();
    let narinfo = format!("{}/{}.narinfo", node.url, hash_of(&fx.leaf));
    let small = format!("{}{}", node.url, nar_url(&cache, &fx.leaf));
    let big = format!("{}{}", node.url, nar_url(&cache, &fx.big));
    // Warm: the misses store in S3, the first hits fill the node's tiers.
    for url in [&narinfo, &small, &big, &narinfo, &small, &big] {
        let resp = c.get(url).send().await.expect("warm-up request");
        assert_eq!(resp.status().as_u16(), 200, "{url}");
        resp.bytes().await.expect("warm-up body");
    }
    [latency(&c, &narinfo, ROUNDS).await, latency(&c, &small, ROUNDS).await, latency(&c, &big, ROUNDS).await]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let near = measure(Duration::ZERO).await;
    let far = measure(Duration::from_millis(75)).await;
    println!(
        "| warm hit ({ROUNDS} sequential) | 0 ms RTT median / p90 | 150 ms RTT median / p90 | far / near (median) |"
    );
    println!("| --- | --- | --- | --- |");
    for (i, what) in ["narinfo", "NAR, 8 bytes (leaf)", "NAR, 30 MB"].iter().enumerate() {
        let ((nm, n9), (fm, f9)) = (near[i], far[i]);
        println!("| {what} | {nm:.2} / {n9:.2} ms | {fm:.2} / {f9:.2} ms | {:.2} |", fm / nm);
    }
}
