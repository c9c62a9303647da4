//! A node cut off from its region: its metadata database, its lock service
//! (Redis, or the database's own locks) and its bucket (S3), each behind a
//! proxy that stops forwarding without closing anything (a half-open
//! partition), for each lock backend. The node
//! keeps serving what it holds (marked stale), passes misses through from
//! the upstream, answers within its budget, and serves fresh again once
//! the region is back. Checked with the real `nix` client.

use std::time::{Duration, Instant};

use ncps_edge_host_services::cluster::channel::HEARD_WITHIN;
use ncps_edge_test_support::{
    fresh_bucket, fresh_mysql, fresh_postgres, host_port, redis_addr, unique, via, StallProxy,
};
use ncps_edge_tests::fixture::{fixture, hash_of};
use ncps_edge_tests::nix::NixEnv;
use ncps_edge_tests::node::{memory_tier_on, start_node, upstream_flags};
use ncps_edge_tests::upstream::FakeUpstream;

/// Per-call deadline of the node's backends.
const DEADLINE: Duration = Duration::from_secs(1);
/// What a warm narinfo may take from the tier while partitioned (the
/// issue's bar is 1 s).
const FROM_THE_TIER: Duration = Duration::from_secs(1);
/// What any answer may take while partitioned: twice the deadline (the
/// request's budget for stalled backends) plus a margin for a loaded
/// machine and the upstream's own time.
const BUDGET_BOUND: Duration = Duration::from_secs(6);
/// Longest the node may take to serve fresh again once the region is back.
const RECOVERY: Duration = Duration::from_secs(30);

/// `nix copy` of `path` from `url` into `store` (blocking the test thread).
fn copy(env: &NixEnv, url: &str, key: &str, store: &std::path::Path, path: &str) {
    let out = tokio::task::block_in_place(|| env.copy_from(url, key, store, path));
    assert!(out.status.success(), "nix copy of {path}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A node on `lock_backend` (`redis`: locks on Redis, metadata on
/// PostgreSQL; `postgres`, `mysql`: both on that database) and S3, every
/// backend behind a proxy; partitioned, then healed.
async fn partitioned(lock_backend: &str) {
    let fx = fixture();
    let cache = fx.cache("zstd");
    let up = FakeUpstream::start(cache.clone()).await;
    let db = match lock_backend {
        // Through the proxy, not the server's Unix socket.
        "mysql" => format!("{}?prefer_socket=false", fresh_mysql().await),
        _ => fresh_postgres().await,
    };
    let bucket = fresh_bucket().await;
    let (db_proxy, redis_proxy, s3_proxy) = (
        StallProxy::start(&host_port(&db)).await,
        StallProxy::start(&redis_addr()).await,
        StallProxy::start(&host_port(&bucket.endpoint)).await,
    );
    let mut flags = upstream_flags(&up.url(), &fx.public_key);
    flags.extend([
        format!("--cache-database-url={}", via(&db, &db_proxy.addr())),
        format!("--cache-backend-timeout={}s", DEADLINE.as_secs()),
        "--cache-lock-allow-degraded-mode".into(),
    ]);
    match lock_backend {
        "redis" => flags.extend([
            format!("--cache-redis-addrs={}", redis_proxy.addr()),
            format!("--cache-lock-redis-key-prefix={}:", unique("partition")),
        ]),
        database => flags.push(format!("--cache-lock-backend={database}")),
    }
    flags.extend(bucket.through(&s3_proxy).flags());
    let node = start_node(&flags).await;
    let (url, key) = (node.url(), node.public_key());
    // The tier keeps answers once the node hears the cluster.
    tokio::time::sleep(HEARD_WITHIN).await;

    // Warm: the closure through the node twice (the second time its NARs
    // are hits, kept by the tiers).
    let env = NixEnv::new();
    for store in ["warm-1", "warm-2"] {
        copy(&env, &url, &key, &env.path(store), &fx.top);
    }

    for proxy in [&db_proxy, &redis_proxy, &s3_proxy] {
        proxy.stall();
    }
    tokio::time::sleep(Duration::from_secs(12)).await;

    // Warm narinfos answer from the tier, marked, within a second; without
    // the memory tier, from the upstream within the budget.
    let c = reqwest::Client::new();
    for p in [&fx.top, &fx.mid, &fx.leaf] {
        let started = Instant::now();
        let resp = c.get(format!("{url}/{}.narinfo", hash_of(p))).send().await.unwrap();
        let took = started.elapsed();
        assert_eq!(resp.status(), 200, "{lock_backend}: {p}");
        if memory_tier_on() {
            assert_eq!(resp.headers()["x-cache"], "STALE", "{lock_backend}: {p}");
            assert!(took < FROM_THE_TIER, "{lock_backend}: {p}: {took:?} from the tier");
        } else {
            assert!(took < BUDGET_BOUND, "{lock_backend}: {p}: {took:?}");
        }
    }
    // The warm closure copies, byte-identical.
    let store = env.path("partitioned");
    let started = Instant::now();
    copy(&env, &url, &key, &store, &fx.top);
    eprintln!("{lock_backend}: warm closure while partitioned: {:?}", started.elapsed());
    for p in [&fx.top, &fx.mid, &fx.leaf] {
        assert_eq!(env.dump_hash(&store, p), fx.env.dump_hash(&fx.store, p), "{p} differs");
    }
    // A cold path passes through from the upstream, verified and signed.
    let started = Instant::now();
    copy(&env, &url, &key, &store, &fx.big);
    eprintln!("{lock_backend}: cold path while partitioned: {:?}", started.elapsed());
    assert_eq!(env.dump_hash(&store, &fx.big), fx.env.dump_hash(&fx.store, &fx.big));

    // The region is back: fresh answers again, the tier having forgotten
    // what it may have missed.
    for proxy in [&db_proxy, &redis_proxy, &s3_proxy] {
        proxy.resume();
    }
    let started = Instant::now();
    loop {
        let resp = c.get(format!("{url}/{}.narinfo", hash_of(&fx.top))).send().await.unwrap();
        if resp.status() == 200 && resp.headers()["x-cache"] != "STALE" {
            break;
        }
        assert!(
            started.elapsed() < RECOVERY,
            "{lock_backend}: still stale {:?} after the region came back",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_node_on_redis_locks_serves_what_it_holds() {
    partitioned("redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_node_on_postgres_locks_serves_what_it_holds() {
    partitioned("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_node_on_mysql_locks_serves_what_it_holds() {
    partitioned("mysql").await;
}
