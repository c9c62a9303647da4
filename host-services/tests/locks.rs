//! The lock contract, run against every backend as two nodes: leases are
//! taken on node `a` and contended from node `b` (for local locks both are
//! one process's table). Redis, PostgreSQL and MariaDB are the real servers
//! (`NCPS_TEST_REDIS_ADDR`, `NCPS_TEST_POSTGRES_URL`, `NCPS_TEST_MYSQL_URL`,
//! read by `ncps-edge-test-support`);
//! a missing server fails the suite.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ncps_edge_host_services::locks::local::LocalLocks;
use ncps_edge_host_services::locks::mysql::MySqlSession;
use ncps_edge_host_services::locks::postgres::PgSession;
use ncps_edge_host_services::locks::redis::{RedisLocks, RedisOptions};
use ncps_edge_host_services::locks::session::SessionLocks;
use ncps_edge_host_services::locks::{LeaseHandle, LockBackend, Locks, Mode, RetryPolicy};
use ncps_edge_host_services::metrics::Metrics;
use ncps_edge_host_services::Error;
use wasmtime::component::ResourceTable;

const TTL: Duration = Duration::from_secs(30);
/// Server-side idle timeout of a database lock session.
const IDLE: Duration = Duration::from_secs(15);
/// Deadline of one lock-session call.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the session is pinged.
const HEARTBEAT: Duration = Duration::from_secs(5);

use ncps_edge_test_support as support;

fn postgres_url() -> String {
    format!("{}/test", support::postgres_url())
}
fn mysql_url() -> String {
    format!("{}/test", support::mysql_url())
}

struct Nodes {
    name: &'static str,
    a: Arc<dyn LockBackend>,
    b: Arc<dyn LockBackend>,
}

async fn redis() -> Arc<dyn LockBackend> {
    let opts = RedisOptions { addrs: vec![support::redis_addr()], ..Default::default() };
    Arc::new(RedisLocks::connect(&opts).await.expect("Redis must be reachable"))
}

async fn postgres(app: &str) -> Arc<dyn LockBackend> {
    let url = format!("{}?application_name={app}", postgres_url());
    Arc::new(SessionLocks::new(
        PgSession::connect(&url, IDLE, CALL_TIMEOUT).await.expect("PostgreSQL must be reachable"),
        CALL_TIMEOUT,
        HEARTBEAT,
    ))
}

async fn mysql() -> Arc<dyn LockBackend> {
    Arc::new(SessionLocks::new(
        MySqlSession::connect(&mysql_url(), IDLE, CALL_TIMEOUT).await.expect("MariaDB must be reachable"),
        CALL_TIMEOUT,
        HEARTBEAT,
    ))
}

async fn backends() -> Vec<Nodes> {
    let local: Arc<dyn LockBackend> = Arc::new(LocalLocks::new());
    vec![
        Nodes { name: "local", a: local.clone(), b: local },
        Nodes { name: "redis", a: redis().await, b: redis().await },
        Nodes { name: "postgres", a: postgres("ncps-test-a").await, b: postgres("ncps-test-b").await },
        Nodes { name: "mysql", a: mysql().await, b: mysql().await },
    ]
}

fn unique() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        ^ rand::random::<u64>()
}

/// Lock services of both nodes under one fresh prefix.
fn pair(n: &Nodes) -> (Locks, Locks) {
    let prefix = format!("test:{}:", unique());
    let retry = RetryPolicy {
        max_attempts: 3,
        initial_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
        jitter: true,
    };
    let metrics = Arc::new(Metrics::new());
    (
        Locks::new(n.a.clone(), prefix.clone(), retry.clone(), metrics.clone()),
        Locks::new(n.b.clone(), prefix, retry, metrics),
    )
}

/// Releases of network backends are asynchronous: poll for up to 3 s.
async fn eventually(l: &Locks, key: &str, mode: Mode) -> Option<LeaseHandle> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if let Some(lease) = l.try_acquire(key, mode, TTL).await.unwrap() {
            return Some(lease);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_excludes_everyone() {
    for n in backends().await {
        let (a, b) = pair(&n);
        let name = n.name;
        let held = a.try_acquire("k", Mode::Exclusive, TTL).await.unwrap().expect(name);
        assert!(b.try_acquire("k", Mode::Exclusive, TTL).await.unwrap().is_none(), "{name}: other node");
        assert!(b.try_acquire("k", Mode::Shared, TTL).await.unwrap().is_none(), "{name}: other node shared");
        assert!(a.try_acquire("k", Mode::Exclusive, TTL).await.unwrap().is_none(), "{name}: same node");
        assert!(b.try_acquire("other", Mode::Exclusive, TTL).await.unwrap().is_some(), "{name}: keys are independent");
        drop(held);
        assert!(eventually(&b, "k", Mode::Exclusive).await.is_some(), "{name}: drop releases");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_holders_coexist_and_release_independently() {
    for n in backends().await {
        let (a, b) = pair(&n);
        let name = n.name;
        let a1 = a.try_acquire("k", Mode::Shared, TTL).await.unwrap().expect(name);
        let a2 = a.try_acquire("k", Mode::Shared, TTL).await.unwrap().expect(name);
        let b1 = b.try_acquire("k", Mode::Shared, TTL).await.unwrap().expect(name);
        assert!(b.try_acquire("k", Mode::Exclusive, TTL).await.unwrap().is_none(), "{name}");
        drop(a1);
        drop(a2);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(b1.is_held(), "{name}: other readers' release keeps this one");
        assert!(a.try_acquire("k", Mode::Exclusive, TTL).await.unwrap().is_none(), "{name}: a reader remains");
        drop(b1);
        assert!(eventually(&a, "k", Mode::Exclusive).await.is_some(), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expiry_frees_the_key_and_loses_the_lease() {
    for n in backends().await {
        let (a, b) = pair(&n);
        let name = n.name;
        let short = a.try_acquire("k", Mode::Exclusive, Duration::from_millis(300)).await.unwrap().expect(name);
        let reader = a.try_acquire("r", Mode::Shared, Duration::from_millis(300)).await.unwrap().expect(name);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(!short.is_held(), "{name}");
        let next = eventually(&b, "k", Mode::Exclusive).await;
        assert!(next.is_some(), "{name}: an expired lease frees the key");
        assert!(matches!(short.extend(TTL).await, Err(Error::Conflict(_))), "{name}: a lost lease cannot be extended");
        assert!(eventually(&b, "r", Mode::Exclusive).await.is_some(), "{name}: stale readers expire");
        drop(reader);
        drop(short);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(next.as_ref().unwrap().is_held(), "{name}: dropping a lost lease must not release the new holder");
        assert!(a.try_acquire("k", Mode::Exclusive, TTL).await.unwrap().is_none(), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_keeps_a_lease_alive() {
    for n in backends().await {
        let (a, b) = pair(&n);
        let name = n.name;
        let lease = a.try_acquire("k", Mode::Exclusive, Duration::from_millis(400)).await.unwrap().expect(name);
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            lease.extend(Duration::from_millis(400)).await.unwrap();
        }
        assert!(lease.is_held(), "{name}");
        assert!(b.try_acquire("k", Mode::Exclusive, TTL).await.unwrap().is_none(), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_retries_then_times_out() {
    for n in backends().await {
        let (a, b) = pair(&n);
        let name = n.name;
        let held = a.try_acquire("k", Mode::Exclusive, TTL).await.unwrap().expect(name);
        assert!(matches!(b.acquire("k", Mode::Exclusive, TTL).await, Err(Error::Timeout(_))), "{name}");
        let releaser = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(held);
        });
        let got = b.acquire("k", Mode::Exclusive, TTL).await;
        assert!(got.is_ok(), "{name}: acquire succeeds once the holder lets go within its retries");
        releaser.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_separate_deployments() {
    for n in backends().await {
        let (one, _) = pair(&n);
        let (two, _) = pair(&n);
        let _a = one.try_acquire("lru", Mode::Exclusive, TTL).await.unwrap().expect(n.name);
        assert!(two.try_acquire("lru", Mode::Exclusive, TTL).await.unwrap().is_some(), "{}", n.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_bad_keys() {
    for n in backends().await {
        let (a, _) = pair(&n);
        assert!(matches!(a.try_acquire("", Mode::Exclusive, TTL).await, Err(Error::Invalid(_))), "{}", n.name);
        assert!(
            matches!(a.try_acquire(&"x".repeat(1000), Mode::Exclusive, TTL).await, Err(Error::Invalid(_))),
            "{}",
            n.name
        );
    }
}

/// What happens when an instance dies: its store's resource table is
/// dropped, and with it every lease the instance held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_in_a_dropped_instance_table_are_released() {
    for n in backends().await {
        let (a, b) = pair(&n);
        let name = n.name;
        let mut table = ResourceTable::new();
        table.push(a.try_acquire("k", Mode::Exclusive, TTL).await.unwrap().expect(name)).unwrap();
        table.push(a.try_acquire("s", Mode::Shared, TTL).await.unwrap().expect(name)).unwrap();
        assert!(b.try_acquire("k", Mode::Exclusive, TTL).await.unwrap().is_none(), "{name}");
        drop(table);
        assert!(eventually(&b, "k", Mode::Exclusive).await.is_some(), "{name}");
        assert!(eventually(&b, "s", Mode::Exclusive).await.is_some(), "{name}");
    }
}

/// Many locks at once on one database session: no connection per lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_holds_many_locks() {
    for n in backends().await {
        let (a, b) = pair(&n);
        let mut held = Vec::new();
        for i in 0..300 {
            held.push(a.try_acquire(&format!("k{i}"), Mode::Exclusive, TTL).await.unwrap().expect(n.name));
        }
        assert!(b.try_acquire("k299", Mode::Exclusive, TTL).await.unwrap().is_none(), "{}", n.name);
        assert!(held.iter().all(|l| l.is_held()), "{}", n.name);
    }
}

/// PostgreSQL: when the lock session dies, its leases are lost at once and
/// other nodes may take the keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_session_death_loses_leases() {
    let app = format!("ncps-test-kill-{}", unique());
    let a_backend = postgres(&app).await;
    let nodes = Nodes { name: "postgres", a: a_backend, b: postgres("ncps-test-b").await };
    let (a, b) = pair(&nodes);
    let lease = a.try_acquire("k", Mode::Exclusive, TTL).await.unwrap().unwrap();
    let (admin, conn) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let killed = admin
        .query_one("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1", &[&app])
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(killed, 1);
    assert!(eventually(&b, "k", Mode::Exclusive).await.is_some(), "key freed by the session's death");
    let deadline = Instant::now() + Duration::from_secs(3);
    while lease.is_held() {
        assert!(Instant::now() < deadline, "lease still reported held after its session died");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The node reconnects for its next lock.
    assert!(a.try_acquire("other", Mode::Exclusive, TTL).await.unwrap().is_some());
}

/// A kept-alive lease outlives its expiry while its handle lives, stops at
/// its ceiling, and its key frees within the expiry once dropped or past
/// the ceiling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_renews_until_the_ceiling() {
    for n in backends().await {
        let (a, b) = pair(&n);
        let (a, name) = (a.with_heartbeat(Duration::from_millis(100)), n.name);
        let expiry = Duration::from_millis(400);
        let mut lease = a.try_acquire("k", Mode::Exclusive, expiry).await.unwrap().expect(name);
        lease.keep_alive(expiry, Duration::from_millis(1500));
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(lease.is_held(), "{name}: renewed past its expiry");
        assert!(b.try_acquire("k", Mode::Exclusive, TTL).await.unwrap().is_none(), "{name}: still held");
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(!lease.is_held(), "{name}: renewed past its ceiling");
        assert!(eventually(&b, "k", Mode::Exclusive).await.is_some(), "{name}: the key frees after the ceiling");
    }
}

/// Behind the circuit breaker, a stalled Redis costs one deadline per call
/// until the breaker opens; after the cool-down exactly one call probes it
/// while every other call fails at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_breaker_lets_one_probe_through() {
    use ncps_edge_host_services::locks::guard::Guarded;
    let proxy = support::StallProxy::start(&support::redis_addr()).await;
    let opts = RedisOptions { addrs: vec![proxy.addr()], ..Default::default() };
    let redis = RedisLocks::connect(&opts).await.expect("Redis must be reachable");
    let deadline = Duration::from_millis(300);
    let guarded: Arc<dyn LockBackend> =
        Arc::new(Guarded::new(Box::new(redis), "Redis", false, deadline, Duration::from_millis(500)));
    let key = format!("test:{}:k", unique());
    assert!(guarded.try_acquire(&key, Mode::Exclusive, TTL).await.unwrap().is_some());
    proxy.stall();
    for _ in 0..ncps_edge_host_services::breaker::TRIP_AFTER {
        let started = Instant::now();
        let e = guarded.try_acquire(&key, Mode::Exclusive, TTL).await.err().expect("stalled Redis granted a lock");
        assert!(e.is_outage(), "{e:?}");
        assert!(started.elapsed() < deadline * 3, "a call took {:?}", started.elapsed());
    }
    let started = Instant::now();
    assert!(guarded.try_acquire(&key, Mode::Exclusive, TTL).await.is_err());
    // Well under one deadline (300 ms): it did not wait on the stalled server.
    assert!(started.elapsed() < Duration::from_millis(200), "open breaker did not fail fast");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let calls = (0..8).map(|_| {
        let (g, key) = (guarded.clone(), key.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let r = g.try_acquire(&key, Mode::Exclusive, TTL).await;
            (r.is_err(), started.elapsed())
        })
    });
    let results: Vec<(bool, Duration)> =
        futures_util::future::join_all(calls).await.into_iter().map(|r| r.unwrap()).collect();
    assert!(results.iter().all(|(failed, _)| *failed), "{results:?}");
    let probes = results.iter().filter(|(_, took)| *took >= deadline / 2).count();
    assert_eq!(probes, 1, "exactly one call may wait on the stalled backend: {results:?}");
    proxy.resume();
}
