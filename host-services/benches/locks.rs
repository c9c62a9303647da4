//! Lock latency per backend on loopback, and many locks held by one node.
//!
//! `cargo bench -p ncps-edge-host-services --bench locks` (needs the local
//! Redis, PostgreSQL and MariaDB). Prints markdown tables:
//! - acquire: one `try_acquire` of a free key (what a cache miss pays);
//! - hand-off: from dropping a lease on node A until node B holds the key.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ncps_edge_host_services::locks::local::LocalLocks;
use ncps_edge_host_services::locks::mysql::MySqlSession;
use ncps_edge_host_services::locks::postgres::PgSession;
use ncps_edge_host_services::locks::redis::{RedisLocks, RedisOptions};
use ncps_edge_host_services::locks::session::SessionLocks;
use ncps_edge_host_services::locks::{LockBackend, Locks, Mode, RetryPolicy};
use ncps_edge_host_services::metrics::Metrics;
use ncps_edge_test_support as support;

const ROUNDS: usize = 2000;
const TTL: Duration = Duration::from_secs(60);
/// Server-side idle timeout of a database lock session.
const IDLE: Duration = Duration::from_secs(15);
/// Deadline of one lock-session call.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the session is pinged.
const HEARTBEAT: Duration = Duration::from_secs(5);

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p) as usize].as_secs_f64() * 1000.0
}

fn locks(b: Arc<dyn LockBackend>, prefix: &str) -> Locks {
    Locks::new(b, prefix.to_owned(), RetryPolicy::default(), Arc::new(Metrics::new()))
}

async fn measure(name: &str, a: Arc<dyn LockBackend>, b: Arc<dyn LockBackend>) {
    let prefix = format!("bench:{}:", rand::random::<u64>());
    let (a, b) = (locks(a, &prefix), locks(b, &prefix));
    let mut acquire = Vec::with_capacity(ROUNDS);
    let mut handoff = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS {
        let key = format!("download:nar:{i}");
        let t = Instant::now();
        let lease = a.try_acquire(&key, Mode::Exclusive, TTL).await.unwrap().expect("free key");
        acquire.push(t.elapsed());
        let t = Instant::now();
        drop(lease);
        loop {
            if let Some(l) = b.try_acquire(&key, Mode::Exclusive, TTL).await.unwrap() {
                handoff.push(t.elapsed());
                drop(l);
                break;
            }
        }
    }
    acquire.sort();
    handoff.sort();
    println!(
        "| {name} | {:.3} | {:.3} | {:.3} | {:.3} |",
        pct(&acquire, 0.5),
        pct(&acquire, 0.99),
        pct(&handoff, 0.5),
        pct(&handoff, 0.99)
    );
}

async fn many_locks(name: &str, backend: Arc<dyn LockBackend>, count: usize) {
    let l = locks(backend, &format!("bench:{}:", rand::random::<u64>()));
    let t = Instant::now();
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let key = format!("download:nar:{i}");
        held.push(l.try_acquire(&key, Mode::Exclusive, TTL).await.unwrap().expect("free key"));
    }
    let all_held = held.iter().all(|h| h.is_held());
    println!("| {name} | {count} | {all_held} | {:.1} |", t.elapsed().as_secs_f64());
}

async fn redis(addr: &str) -> Arc<dyn LockBackend> {
    let opts = RedisOptions { addrs: vec![addr.to_owned()], ..Default::default() };
    Arc::new(RedisLocks::connect(&opts).await.expect("Redis"))
}

async fn postgres(url: &str, app: &str) -> Arc<dyn LockBackend> {
    let url = format!("{url}?application_name={app}");
    Arc::new(SessionLocks::new(
        PgSession::connect(&url, IDLE, CALL_TIMEOUT).await.expect("PostgreSQL"),
        CALL_TIMEOUT,
        HEARTBEAT,
    ))
}

async fn mysql(url: &str) -> Arc<dyn LockBackend> {
    Arc::new(SessionLocks::new(
        MySqlSession::connect(url, IDLE, CALL_TIMEOUT).await.expect("MariaDB"),
        CALL_TIMEOUT,
        HEARTBEAT,
    ))
}

#[tokio::main]
async fn main() {
    let redis_addr = support::redis_addr();
    let pg = support::fresh_postgres().await;
    let my = support::fresh_mysql().await;

    println!("Lock latency on loopback, {ROUNDS} rounds, milliseconds:\n");
    println!("| backend | acquire p50 | acquire p99 | hand-off p50 | hand-off p99 |");
    println!("| --- | --- | --- | --- | --- |");
    let local: Arc<dyn LockBackend> = Arc::new(LocalLocks::new());
    measure("local", local.clone(), local).await;
    measure("redis", redis(&redis_addr).await, redis(&redis_addr).await).await;
    measure("postgres", postgres(&pg, "bench-a").await, postgres(&pg, "bench-b").await).await;
    measure("mysql", mysql(&my).await, mysql(&my).await).await;

    println!("\nLocks held at once by one node (one database session):\n");
    println!("| backend | locks | all held | seconds to take them |");
    println!("| --- | --- | --- | --- |");
    many_locks("postgres", postgres(&pg, "bench-many").await, 10_000).await;
    many_locks("mysql", mysql(&my).await, 10_000).await;
}
