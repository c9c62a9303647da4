//! Metrics, logs and upstream health, checked the way an operator sees them:
//! /metrics scraped and parsed, JSON log lines parsed.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ncps_edge_host_services::locks::Mode;
use ncps_edge_tests::fixture::{fixture, hash_of, nar_file, nar_url};
use ncps_edge_tests::node::{memory_tier_on, start_node, upstream_flags};
use ncps_edge_tests::scenario::Scenario;
use ncps_edge_tests::scrape::sample;
use ncps_edge_tests::upstream::{hanging_upstream, FakeUpstream};

/// Capture this process's log lines (debug for the handler).
fn logs() {
    ncps_edge_tests::logs::capture("info,ncps_edge::handler=debug");
}

/// Parsed log lines whose `message` is `message`.
fn lines_with(message: &str) -> Vec<serde_json::Value> {
    ncps_edge_tests::logs::with_message(message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_a_scripted_workload() {
    logs();
    let fx = fixture();
    let cache = fx.cache("none");
    let s =
        Scenario::setup().flags(["--prometheus-enabled", "--cache-max-size=10G", "--admin-token=adm"]).start().await;
    let (up, node, c) = (&s.up, &s.node, &s.c);
    let scrape = || async { c.get(format!("{}/metrics", node.url())).send().await.unwrap().text().await.unwrap() };
    let before = scrape().await;
    for (name, labels) in [
        ("ncps_narinfo_served_total", vec![("result", "hit")]),
        ("ncps_nar_served_total", vec![("result", "miss")]),
        ("ncps_lock_acquisitions_total", vec![("type", "download:nar"), ("result", "success"), ("mode", "exclusive")]),
        ("ncps_lock_failures_total", vec![("type", "lru"), ("reason", "contended"), ("mode", "exclusive")]),
        ("ncps_lock_retry_attempts_total", vec![("type", "download:narinfo")]),
        ("ncps_lru_runs_total", vec![("result", "ran")]),
        ("ncps_guest_traps_total", vec![]),
        ("ncps_lru_bytes_freed_total", vec![]),
    ] {
        assert_eq!(sample(&before, name, &labels), Some(0.0), "{name}{labels:?} must exist at 0 from start:\n{before}");
    }

    let narinfo = format!("{}/{}.narinfo", node.url(), hash_of(&fx.top));
    let nar = format!("{}{}", node.url(), nar_url(&cache, &fx.top));
    let nar_size = std::fs::metadata(nar_file(&cache, &fx.top)).unwrap().len() as f64;
    for url in [&narinfo, &narinfo, &narinfo, &nar, &nar] {
        let resp = c.get(url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        // Read each body whole, so each request ends before the next.
        resp.bytes().await.unwrap();
    }
    assert_eq!(c.get(format!("{}/{}.narinfo", node.url(), "0".repeat(32))).send().await.unwrap().status(), 404);
    let lru = c.post(format!("{}/admin/lru", node.url())).bearer_auth("adm").send().await.unwrap();
    assert_eq!(lru.status(), 200);

    let after = scrape().await;
    let get = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels).unwrap_or_else(|| panic!("{name}{labels:?} missing:\n{after}"))
    };
    assert_eq!(get("ncps_narinfo_served_total", &[("result", "miss")]), 1.0);
    // With the edge tier, the two narinfo hits come from memory; the NAR
    // hit (the first after its download) from the handler.
    let (memory, handler) = if memory_tier_on() { (2.0, 0.0) } else { (0.0, 2.0) };
    assert_eq!(get("ncps_narinfo_served_total", &[("result", "hit"), ("tier", "memory")]), memory);
    assert_eq!(get("ncps_narinfo_served_total", &[("result", "hit"), ("tier", "handler")]), handler);
    assert_eq!(get("ncps_nar_served_total", &[("result", "miss")]), 1.0);
    assert_eq!(get("ncps_nar_served_total", &[("result", "hit"), ("tier", "handler")]), 1.0);
    let download = [("type", "download:nar"), ("result", "success"), ("mode", "exclusive")];
    assert_eq!(get("ncps_lock_acquisitions_total", &download), 1.0, "one NAR download lock");
    let narinfo_locks = [("type", "download:narinfo"), ("result", "success"), ("mode", "exclusive")];
    assert_eq!(get("ncps_lock_acquisitions_total", &narinfo_locks), 2.0, "two narinfo misses");
    assert_eq!(get("ncps_lock_hold_duration_seconds_count", &[("type", "download:nar"), ("mode", "exclusive")]), 1.0);
    let up_url = up.url();
    let fetch = |outcome| [("kind", "narinfo"), ("upstream", up_url.as_str()), ("outcome", outcome)];
    assert_eq!(get("ncps_upstream_fetch_duration_seconds_count", &fetch("ok")), 1.0);
    assert_eq!(get("ncps_upstream_fetch_duration_seconds_count", &fetch("not-found")), 1.0);
    let nar_fetch = [("kind", "nar"), ("upstream", up_url.as_str()), ("outcome", "ok")];
    assert_eq!(get("ncps_upstream_fetch_duration_seconds_count", &nar_fetch), 1.0, "labelled by upstream, not NAR URL");
    assert_eq!(get("ncps_store_size_bytes", &[]), nar_size);
    assert_eq!(get("ncps_store_max_size_bytes", &[]), (10u64 << 30) as f64);
    assert_eq!(get("ncps_lru_runs_total", &[("result", "ran")]), 1.0);
    assert_eq!(get("ncps_guest_traps_total", &[]), 0.0);
    let instances = get("ncps_component_instantiation_seconds_count", &[]);
    assert!(instances >= if memory_tier_on() { 6.0 } else { 8.0 }, "{instances} instances");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn json_logs_carry_the_seed_fields_and_messages() {
    logs();
    let fx = fixture();
    let cache = fx.cache("none");
    let up = FakeUpstream::start(cache.clone()).await;
    let mut flags = upstream_flags(&up.url(), &fx.public_key);
    flags.push("--cache-max-size=1".into());
    flags.push("--cache-lock-retry-initial-delay=10ms".into());
    // A narinfo waiter gives up after three upstream timeouts.
    flags.push("--cache-upstream-response-header-timeout=1s".into());
    let node = start_node(&flags).await;
    let c = reqwest::Client::new();
    let leaf = hash_of(&fx.leaf).to_owned();
    assert_eq!(c.get(format!("{}/{leaf}.narinfo", node.url())).send().await.unwrap().status(), 200);
    let nar = format!("{}{}", node.url(), nar_url(&cache, &fx.leaf));
    assert_eq!(c.get(&nar).send().await.unwrap().status(), 200);
    // A narinfo lock held elsewhere: acquisition fails after its retries.
    let mid = hash_of(&fx.mid).to_owned();
    let held = node
        .node
        .services()
        .locks
        .try_acquire(&format!("download:narinfo:{mid}"), Mode::Exclusive, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        c.get(format!("{}/{mid}.narinfo", node.url())).send().await.unwrap().status(),
        200,
        "served without the lock"
    );
    drop(held);
    // The LRU lock held elsewhere.
    let lru = node.node.services().locks.try_acquire("lru", Mode::Exclusive, Duration::from_secs(60)).await.unwrap();
    assert!(!node.node.server().run_lru().await.unwrap().ran);
    drop(lru);

    let requests = lines_with("request");
    let nar_line = requests
        .iter()
        .find(|l| l["path"].as_str() == Some(&nar_url(&cache, &fx.leaf)) && l["x_cache"] == "MISS")
        .expect("request line of the NAR download");
    assert_eq!(nar_line["status"], 200);
    assert_eq!(nar_line["level"], "INFO");
    assert!(nar_line["bytes"].as_str().is_some_and(|b| b.parse::<u64>().unwrap() > 0));
    assert!(nar_line["duration_ms"].is_u64());
    let acquired = lines_with("acquired download lock");
    assert!(acquired.iter().any(|l| l["hash"].as_str() == nar_url(&cache, &fx.leaf).get(5..57)
        && l["lock_type"] == "download:nar"
        && l["lock_key"].as_str().is_some_and(|k| k.starts_with("download:nar:"))));
    let downloaded = lines_with("downloaded NAR from upstream");
    assert!(downloaded.iter().any(|l| l["duration_ms"].as_str().is_some() && l["upstream"] == up.url().as_str()));
    let failed = lines_with("failed to acquire lock");
    assert!(failed.iter().any(|l| l["lock_type"] == "download:narinfo" && l["retries"] == 3), "host line with retries");
    let guest = failed.iter().find(|l| l["hash"] == mid.as_str()).expect("guest line with the hash");
    // Any field the guest sends reaches the log, not only a fixed list.
    assert!(guest["waited_ms"].as_str().is_some_and(|ms| ms.parse::<u64>().unwrap() >= 3000), "{guest}");
    assert!(lines_with("another instance is running LRU").iter().any(|l| l["lock_type"] == "lru"));
    assert!(!lines_with("using local locks").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_checks_skip_dead_upstreams_and_read_their_priority() {
    logs();
    let fx = fixture();
    let (a, b) = (FakeUpstream::start(fx.cache("none")).await, FakeUpstream::start(fx.cache("zstd")).await);
    *a.faults().cache_info.lock().unwrap() = Some("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 90\n".into());
    *b.faults().cache_info.lock().unwrap() = Some("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n".into());
    // A hanging upstream must not delay start-up.
    let (hang_url, _hang) = hanging_upstream().await;
    let flags = vec![
        format!("--cache-upstream-url={}", a.url()),
        format!("--cache-upstream-url={}", b.url()),
        format!("--cache-upstream-url={hang_url}"),
        format!("--cache-upstream-public-key={}", fx.public_key),
        "--cache-upstream-health-interval=200ms".into(),
        "--cache-upstream-response-header-timeout=1s".into(),
    ];
    let node = tokio::time::timeout(Duration::from_secs(30), start_node(&flags)).await.expect("start-up blocked");
    let c = reqwest::Client::new();
    let wait_for = |cond: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "health state never reached");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let ups = || node.node.services().config.upstreams();
    tokio::task::block_in_place(|| wait_for(&|| ups().iter().any(|u| u.priority == 30) && !ups()[2].healthy));
    // b's own Priority: 30 beats a's 90, though a comes first in the flags.
    let body =
        c.get(format!("{}/{}.narinfo", node.url(), hash_of(&fx.leaf))).send().await.unwrap().text().await.unwrap();
    assert!(body.contains("Compression: zstd"), "{body}");
    // a dies: it is marked unhealthy and no longer asked.
    a.faults().fail.store(true, Ordering::SeqCst);
    tokio::task::block_in_place(|| wait_for(&|| !ups()[0].healthy));
    let mid = format!("/{}.narinfo", hash_of(&fx.mid));
    let (a_before, b_before) = (a.hits(&mid), b.hits(&mid));
    assert_eq!(c.get(format!("{}{mid}", node.url())).send().await.unwrap().status(), 200);
    assert_eq!(a.hits(&mid), a_before, "an unhealthy upstream was asked");
    assert_eq!(b.hits(&mid), b_before + 1);
    // a comes back.
    a.faults().fail.store(false, Ordering::SeqCst);
    tokio::task::block_in_place(|| wait_for(&|| ups()[0].healthy));
    assert!(!lines_with("upstream is unhealthy; skipping it").is_empty());
}
