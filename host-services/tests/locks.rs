//! The lock contract, run against every backend available in this build.
//! A new backend adds one line to `backends()`.

use std::sync::Arc;
use std::time::Duration;

use ncps_edge_host_services::locks::local::LocalLocks;
use ncps_edge_host_services::locks::{LockBackend, Locks, Mode, RetryPolicy};
use ncps_edge_host_services::metrics::Metrics;
use ncps_edge_host_services::Error;
use wasmtime::component::ResourceTable;

const TTL: Duration = Duration::from_secs(30);

fn backends() -> Vec<(&'static str, Arc<dyn LockBackend>)> {
    vec![("local", Arc::new(LocalLocks::new()))]
}

fn locks(backend: Arc<dyn LockBackend>, prefix: &str) -> Locks {
    let retry = RetryPolicy {
        max_attempts: 3,
        initial_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
        jitter: true,
    };
    Locks::new(backend, format!("test:{}:{prefix}:", rand_suffix()), retry, Arc::new(Metrics::new()))
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

#[tokio::test]
async fn exclusive_excludes_everyone() {
    for (name, b) in backends() {
        let l = locks(b, "ex");
        let held = l.try_acquire("k", Mode::Exclusive, TTL).await.unwrap().expect(name);
        assert!(l.try_acquire("k", Mode::Exclusive, TTL).await.unwrap().is_none(), "{name}");
        assert!(l.try_acquire("k", Mode::Shared, TTL).await.unwrap().is_none(), "{name}");
        assert!(l.try_acquire("other", Mode::Exclusive, TTL).await.unwrap().is_some(), "{name}: keys are independent");
        drop(held);
        assert!(l.try_acquire("k", Mode::Exclusive, TTL).await.unwrap().is_some(), "{name}: drop releases");
    }
}

#[tokio::test]
async fn shared_holders_coexist_and_release_independently() {
    for (name, b) in backends() {
        let l = locks(b, "sh");
        let a = l.try_acquire("k", Mode::Shared, TTL).await.unwrap().expect(name);
        let c = l.try_acquire("k", Mode::Shared, TTL).await.unwrap().expect(name);
        assert!(l.try_acquire("k", Mode::Exclusive, TTL).await.unwrap().is_none(), "{name}");
        drop(a);
        assert!(c.is_held(), "{name}: one reader's release keeps the other's");
        assert!(l.try_acquire("k", Mode::Exclusive, TTL).await.unwrap().is_none(), "{name}");
        drop(c);
        assert!(l.try_acquire("k", Mode::Exclusive, TTL).await.unwrap().is_some(), "{name}");
    }
}

#[tokio::test]
async fn ttl_expiry_frees_the_key_and_loses_the_lease() {
    for (name, b) in backends() {
        let l = locks(b, "ttl");
        let short = l.try_acquire("k", Mode::Exclusive, Duration::from_millis(100)).await.unwrap().expect(name);
        let stale_reader = l.try_acquire("r", Mode::Shared, Duration::from_millis(100)).await.unwrap().expect(name);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(!short.is_held(), "{name}");
        let next = l.try_acquire("k", Mode::Exclusive, TTL).await.unwrap();
        assert!(next.is_some(), "{name}: expired lease frees the key");
        assert!(matches!(short.extend(TTL).await, Err(Error::Conflict(_))), "{name}: a lost lease cannot be extended");
        assert!(l.try_acquire("r", Mode::Exclusive, TTL).await.unwrap().is_some(), "{name}: stale readers expire");
        drop(stale_reader);
        drop(short);
        assert!(next.unwrap().is_held(), "{name}: dropping the lost lease must not release the new holder");
    }
}

#[tokio::test]
async fn extend_keeps_a_lease_alive() {
    for (name, b) in backends() {
        let l = locks(b, "extend");
        let lease = l.try_acquire("k", Mode::Exclusive, Duration::from_millis(150)).await.unwrap().expect(name);
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(75)).await;
            lease.extend(Duration::from_millis(150)).await.unwrap();
        }
        assert!(lease.is_held(), "{name}");
        assert!(l.try_acquire("k", Mode::Exclusive, TTL).await.unwrap().is_none(), "{name}");
    }
}

#[tokio::test]
async fn acquire_retries_then_times_out() {
    for (name, b) in backends() {
        let l = locks(b, "retry");
        let held = l.try_acquire("k", Mode::Exclusive, TTL).await.unwrap().expect(name);
        assert!(matches!(l.acquire("k", Mode::Exclusive, TTL).await, Err(Error::Timeout(_))), "{name}");
        let releaser = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            drop(held);
        });
        let got = l.acquire("k", Mode::Exclusive, TTL).await;
        assert!(got.is_ok(), "{name}: acquire succeeds once the holder lets go within the retries");
        releaser.await.unwrap();
    }
}

#[tokio::test]
async fn prefixes_separate_deployments() {
    for (name, b) in backends() {
        let one = locks(b.clone(), "one");
        let two = locks(b, "two");
        let _a = one.try_acquire("lru", Mode::Exclusive, TTL).await.unwrap().expect(name);
        assert!(two.try_acquire("lru", Mode::Exclusive, TTL).await.unwrap().is_some(), "{name}");
    }
}

#[tokio::test]
async fn rejects_bad_keys() {
    for (name, b) in backends() {
        let l = locks(b, "bad");
        assert!(matches!(l.try_acquire("", Mode::Exclusive, TTL).await, Err(Error::Invalid(_))), "{name}");
        assert!(
            matches!(l.try_acquire(&"x".repeat(1000), Mode::Exclusive, TTL).await, Err(Error::Invalid(_))),
            "{name}"
        );
    }
}

/// What happens when an instance dies: its store's resource table is
/// dropped, and with it every lease the instance held.
#[tokio::test]
async fn leases_in_a_dropped_instance_table_are_released() {
    for (name, b) in backends() {
        let l = locks(b, "crash");
        let mut table = ResourceTable::new();
        table.push(l.try_acquire("k", Mode::Exclusive, TTL).await.unwrap().expect(name)).unwrap();
        table.push(l.try_acquire("s", Mode::Shared, TTL).await.unwrap().expect(name)).unwrap();
        assert!(l.try_acquire("k", Mode::Exclusive, TTL).await.unwrap().is_none(), "{name}");
        drop(table);
        assert!(l.try_acquire("k", Mode::Exclusive, TTL).await.unwrap().is_some(), "{name}");
        assert!(l.try_acquire("s", Mode::Exclusive, TTL).await.unwrap().is_some(), "{name}");
    }
}
