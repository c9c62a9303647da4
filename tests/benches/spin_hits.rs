//! Warm hits through the Spin-shaped host beside the native runtime, in one
//! run: the same PostgreSQL database, Redis and S3 bucket behind three
//! nodes in this process, the native node with its edge tier's memory off
//! (every request through a fresh instance, as under Spin) and on (the
//! default), and a Spin-shaped node running the composed component.
//!
//! `cargo bench -p ncps-edge-tests --bench spin_hits` (needs Redis,
//! PostgreSQL and s3s-fs, like the tests). Prints a markdown table.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ncps_edge_test_support::{fresh_bucket, fresh_postgres, redis_addr, unique};
use ncps_edge_tests::fixture::{fixture, hash_of, nar_url};
use ncps_edge_tests::node::{start_node, upstream_flags};
use ncps_edge_tests::spin_host::{variables, SpinNode};
use ncps_edge_tests::upstream::FakeUpstream;

/// How long each measurement runs.
const WINDOW: Duration = Duration::from_secs(5);

/// Requests per second, median and p99 latency (ms) of `clients`
/// concurrent clients GETting `url` for [`WINDOW`].
async fn load(url: &str, clients: usize) -> (f64, f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let c = reqwest::Client::new();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (c, url, stop) = (c.clone(), url.to_owned(), stop.clone());
            tokio::spawn(async move {
                let mut took = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let resp = c.get(&url).send().await.expect("request");
                    assert_eq!(resp.status().as_u16(), 200, "{url}");
                    resp.bytes().await.expect("body");
                    took.push(started.elapsed().as_secs_f64() * 1000.0);
                }
                took
            })
        })
        .collect();
    tokio::time::sleep(WINDOW).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client"));
    }
    all.sort_by(f64::total_cmp);
    let n = all.len();
    (n as f64 / WINDOW.as_secs_f64(), all[n / 2], all[(n * 99 / 100).min(n - 1)])
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let fx = fixture();
    let cache = fx.cache("none");
    let up = FakeUpstream::start(cache.clone()).await;
    let db = fresh_postgres().await;
    let bucket = fresh_bucket().await;
    let prefix = format!("{}:", unique("bench"));
    let mut flags = upstream_flags(&up.url(), &fx.public_key);
    flags.extend([
        "--log-level=warn".to_string(),
        format!("--cache-database-url={db}"),
        format!("--cache-redis-addrs={}", redis_addr()),
        format!("--cache-lock-redis-key-prefix={prefix}"),
    ]);
    flags.extend(bucket.flags());
    let mut tier_off = flags.clone();
    tier_off.push("--edge-cache-memory=0".into());
    let native_off = start_node(&tier_off).await;
    let native_on = start_node(&flags).await;
    let spin = SpinNode::start(variables(&up.url(), &fx.public_key, &db, &bucket, &prefix)).await;
    let paths = [
        ("narinfo", format!("/{}.narinfo", hash_of(&fx.leaf)), 16),
        ("NAR, 8 bytes", nar_url(&cache, &fx.leaf), 16),
        ("NAR, 30 MB", nar_url(&cache, &fx.big), 2),
    ];
    let nodes =
        [("native, tier off", native_off.url()), ("native, tier on", native_on.url()), ("Spin-shaped", spin.url())];
    let c = reqwest::Client::new();
    for (_, base) in &nodes {
        for (_, path, _) in &paths {
            for _ in 0..2 {
                let resp = c.get(format!("{base}{path}")).send().await.expect("warm-up");
                assert_eq!(resp.status().as_u16(), 200, "{base}{path}");
                resp.bytes().await.expect("warm-up body");
            }
        }
    }
    println!("| warm hit (clients) | node | req/s | median | p99 | Spin / node (req/s) |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (what, path, clients) in &paths {
        let mut results = Vec::new();
        for (name, base) in &nodes {
            results.push((name, load(&format!("{base}{path}"), *clients).await));
        }
        let spin_rate = results[2].1 .0;
        for (name, (rate, median, p99)) in &results {
            println!(
                "| {what} ({clients}) | {name} | {rate:.0} | {median:.2} ms | {p99:.2} ms | {:.2} |",
                spin_rate / rate
            );
        }
    }
}
