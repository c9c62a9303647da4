//! Stalled backends: a TCP proxy in front of PostgreSQL, MariaDB, Redis or
//! S3 stops forwarding without closing anything (packets dropped). Every
//! request still answers within a bound of a few backend deadlines, with
//! the documented status, and the node serves again as soon as the network
//! comes back.

use std::time::{Duration, Instant};

use ncps_edge_test_support::{fresh_bucket, fresh_mysql, fresh_postgres, host_port, redis_addr, via, StallProxy};
use ncps_edge_tests::fixture::{fixture, hash_of, nar_url};
use ncps_edge_tests::node::{memory_tier_on, start_node, upstream_flags, TestNode};
use ncps_edge_tests::scenario::Scenario;
use ncps_edge_tests::upstream::FakeUpstream;

/// Per-call deadline in these tests.
const DEADLINE: &str = "--cache-backend-timeout=1s";
/// What a request may take while a backend is stalled.
const BOUND: Duration = Duration::from_secs(15);
/// What a request may lose to stalled backends in all: twice the deadline
/// (deadlines do not stack), plus a margin for a loaded machine. A miss
/// that stacked its metadata and lock deadlines took 6 s and more here.
const BUDGET_BOUND: Duration = Duration::from_millis(4500);
/// Longest a node may take to serve again once the network is back: a lock
/// left by a holder that lost the stalled service lingers for its lease
/// (15 s); a bound well above it, so a loaded machine does not fail it.
const RECOVERY: Duration = Duration::from_secs(30);

/// GET `url`: status and how long it took; a request past [`BOUND`] fails the test.
async fn timed(c: &reqwest::Client, url: &str) -> (u16, Duration) {
    let started = Instant::now();
    let resp = tokio::time::timeout(BOUND * 2, async {
        let resp = c.get(url).send().await.unwrap();
        let status = resp.status().as_u16();
        resp.bytes().await.ok();
        status
    })
    .await
    .unwrap_or_else(|_| panic!("{url} hung"));
    (resp, started.elapsed())
}

/// Poll `url` until it answers `want`; how long that took after the network came back.
async fn recovers(c: &reqwest::Client, url: &str, want: u16) -> Duration {
    let started = Instant::now();
    loop {
        let (status, _) = timed(c, url).await;
        if status == want {
            return started.elapsed();
        }
        assert!(started.elapsed() < RECOVERY, "{url} still {status} after the network came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node whose metadata and locks are `db` reached through `proxy`.
async fn database_case(db: String, lock_backend: &str) {
    let fx = fixture();
    let cache = fx.cache("none");
    let up = FakeUpstream::start(cache.clone()).await;
    let proxy = StallProxy::start(&host_port(&db)).await;
    let mut flags = upstream_flags(&up.url(), &fx.public_key);
    flags.extend([
        format!("--cache-database-url={}", via(&db, &proxy.addr())),
        format!("--cache-lock-backend={lock_backend}"),
        DEADLINE.into(),
        "--cache-lock-retry-initial-delay=10ms".into(),
    ]);
    let node = start_node(&flags).await;
    let c = reqwest::Client::new();
    let narinfo = |p: &str| format!("{}/{}.narinfo", node.url(), hash_of(p));
    let leaf_nar = format!("{}{}", node.url(), nar_url(&cache, &fx.leaf));
    // The tier keeps answers once the node hears the cluster (it starts
    // empty then).
    tokio::time::sleep(ncps_edge_host_services::cluster::channel::HEARD_WITHIN).await;
    assert_eq!(timed(&c, &narinfo(&fx.leaf)).await.0, 200);
    assert_eq!(timed(&c, &leaf_nar).await.0, 200);

    proxy.stall();
    // A stored NAR needs no database: still a hit.
    let (status, took) = timed(&c, &leaf_nar).await;
    assert_eq!(status, 200, "{lock_backend}: NAR hit while the database is stalled ({took:?})");
    // A cold narinfo needs the database and the lock: 503, within two
    // deadlines (metadata, then the lock: no queue behind the stalled
    // session, no stacking).
    let (status, took) = timed(&c, &narinfo(&fx.mid)).await;
    assert_eq!(status, 503, "{lock_backend}: a cold narinfo while the database is stalled");
    eprintln!("{lock_backend} stalled: a cold narinfo answered {status} after {took:?}");
    assert!(took < BUDGET_BOUND, "{lock_backend}: answered after {took:?}");
    // A warm one: once the edge tier knows it no longer hears the region,
    // it answers what it holds, marked stale; without the tier, 503.
    tokio::time::sleep(ncps_edge_host_services::cluster::channel::HEARD_WITHIN + Duration::from_secs(1)).await;
    let resp = tokio::time::timeout(BOUND, c.get(narinfo(&fx.leaf)).send()).await.expect("hung").unwrap();
    if memory_tier_on() {
        assert_eq!(resp.status(), 200, "{lock_backend}: a warm narinfo while the region is away");
        assert_eq!(resp.headers()["x-cache"], "STALE");
    } else {
        assert_eq!(resp.status(), 503, "{lock_backend}: a narinfo while the database is stalled");
    }
    proxy.resume();
    // Seconds, not minutes: at worst a lock whose holder lost the stalled
    // service lingers for its lease (15 s), or a waiter's patience passes.
    let took = recovers(&c, &narinfo(&fx.mid), 200).await;
    assert!(took < RECOVERY, "{lock_backend}: {took:?} to recover");
    assert_eq!(timed(&c, &narinfo(&fx.leaf)).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_postgres_answers_within_the_bound_and_recovers() {
    database_case(fresh_postgres().await, "postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_mysql_answers_within_the_bound_and_recovers() {
    // Through the proxy, not the server's Unix socket.
    database_case(format!("{}?prefer_socket=false", fresh_mysql().await), "mysql").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_redis_fails_misses_fast_serves_hits_and_recovers() {
    let fx = fixture();
    let cache = fx.cache("none");
    let up = FakeUpstream::start(cache.clone()).await;
    let proxy = StallProxy::start(&redis_addr()).await;
    let db = fresh_postgres().await;
    let mut flags = upstream_flags(&up.url(), &fx.public_key);
    flags.extend([
        format!("--cache-database-url={db}"),
        format!("--cache-redis-addrs={}", proxy.addr()),
        format!("--cache-lock-redis-key-prefix=stall:{}:", db.rsplit('/').next().unwrap()),
        DEADLINE.into(),
        "--cache-lock-retry-initial-delay=10ms".into(),
    ]);
    let node: TestNode = start_node(&flags).await;
    let c = reqwest::Client::new();
    let narinfo = |p: &str| format!("{}/{}.narinfo", node.url(), hash_of(p));
    assert_eq!(timed(&c, &narinfo(&fx.leaf)).await.0, 200);
    proxy.stall();
    let (status, _) = timed(&c, &narinfo(&fx.leaf)).await;
    assert_eq!(status, 200, "a hit needs no lock");
    let (status, took) = timed(&c, &narinfo(&fx.mid)).await;
    assert_eq!(status, 503, "a miss needs the lock service");
    assert!(took < BOUND, "answered after {took:?}");
    proxy.resume();
    let took = recovers(&c, &narinfo(&fx.mid), 200).await;
    assert!(took < RECOVERY, "{took:?} to recover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_s3_serves_from_upstream_within_the_bound_and_recovers() {
    let fx = fixture();
    let cache = fx.cache("none");
    let bucket = fresh_bucket().await;
    let proxy = StallProxy::start(&host_port(&bucket.endpoint)).await;
    let routed = bucket.through(&proxy);
    let s = Scenario::setup().flags(routed.flags()).flags([DEADLINE]).start().await;
    let (up, node, c) = (&s.up, &s.node, &s.c);
    let nar = |p: &str| format!("{}{}", node.url(), nar_url(&cache, p));
    for p in [&fx.leaf, &fx.mid] {
        assert_eq!(timed(c, &format!("{}/{}.narinfo", node.url(), hash_of(p))).await.0, 200);
    }
    assert_eq!(timed(c, &nar(&fx.leaf)).await.0, 200);
    assert_eq!(up.hits(&nar_url(&cache, &fx.leaf)), 1);
    proxy.stall();
    // The stored NAR cannot be read: it is served from upstream instead.
    for p in [&fx.leaf, &fx.mid] {
        let (status, took) = timed(c, &nar(p)).await;
        assert_eq!(status, 200, "{p} while S3 is stalled");
        assert!(took < BOUND, "answered after {took:?}");
    }
    proxy.resume();
    // S3 is used again once it answers (after the breaker's cool-down).
    let started = Instant::now();
    loop {
        let resp = c.get(nar(&fx.leaf)).send().await.unwrap();
        if resp.headers()["x-cache"] == "HIT" {
            break;
        }
        resp.bytes().await.ok();
        assert!(started.elapsed() < RECOVERY, "S3 not used again after the network came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
