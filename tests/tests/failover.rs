//! A node killed with SIGKILL in the middle of a download: another node
//! completes it (after the lock TTL with Redis, at once with PostgreSQL,
//! whose lock session dies with the process), and no partial object is
//! ever visible.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use ncps_edge_test_support::{fresh_postgres, redis_addr};
use ncps_edge_tests::fixture::{fixture, hash_of, nar_file, nar_url};
use ncps_edge_tests::node::upstream_flags;
use ncps_edge_tests::process::NodeProcess;
use ncps_edge_tests::upstream::FakeUpstream;
use sha2::{Digest, Sha256};

async fn kill_the_downloader(backend: &str, lease: &str) {
    let fx = fixture();
    let cache = fx.cache("none");
    let up = FakeUpstream::start(cache.clone()).await;
    // About 5 s for the whole NAR: time to kill the first node mid-way.
    up.faults().nar_chunk_delay_ms.store(10, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let db = fresh_postgres().await;
    let mut flags = upstream_flags(&up.url(), &fx.public_key);
    flags.extend([
        "--cache-hostname=failover".to_string(),
        format!("--cache-database-url={db}"),
        format!("--cache-storage-local={}", storage.display()),
        format!("--cache-lock-download-lease={lease}"),
        "--cache-lock-heartbeat-interval=1s".to_string(),
        format!("--cache-lock-redis-key-prefix=test:{}:", db.rsplit('/').next().unwrap()),
        format!("--wasm-cache-dir={}", std::env::temp_dir().join("ncps-edge-test-wasm-cache").display()),
    ]);
    match backend {
        "redis" => flags.push(format!("--cache-redis-addrs={}", redis_addr())),
        _ => flags.push("--cache-lock-backend=postgres".into()),
    }
    let mut a = NodeProcess::spawn(&flags, &dir.path().join("a.log"));
    let b = NodeProcess::spawn(&flags, &dir.path().join("b.log"));
    let nar = nar_url(&cache, &fx.big);
    let want = format!("{:x}", Sha256::digest(std::fs::read(nar_file(&cache, &fx.big)).unwrap()));
    let c = reqwest::Client::new();
    assert_eq!(c.get(format!("{}/{}.narinfo", a.url, hash_of(&fx.big))).send().await.unwrap().status(), 200);

    // Node a starts the download and streams it to its client.
    let first = c.get(format!("{}{nar}", a.url)).send().await.unwrap();
    let mut first_body = first.bytes_stream();
    let mut got = 0;
    while got < 2_000_000 {
        got += first_body.next().await.unwrap().unwrap().len();
    }
    // Node b is asked for the same NAR: it waits for a's download lock.
    let started = Instant::now();
    let second = tokio::spawn({
        let (c, url) = (c.clone(), format!("{}{nar}", b.url));
        async move {
            let resp = c.get(&url).send().await.unwrap();
            let status = resp.status().as_u16();
            (status, format!("{:x}", Sha256::digest(resp.bytes().await.unwrap())))
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.kill();
    let published = storage.join("store").join(&nar[1..4]).join(&nar[5..6]);
    let visible = |p: &std::path::Path| std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0);
    assert_eq!(visible(&published), 0, "{backend}: a partial NAR is visible after the crash");
    let rest: Vec<_> = first_body.collect().await;
    let broken = rest.iter().any(|r| r.is_err());
    let total = got + rest.iter().flatten().map(|b| b.len()).sum::<usize>();
    let full = std::fs::metadata(nar_file(&cache, &fx.big)).unwrap().len() as usize;
    assert!(broken || total < full, "{backend}: the killed node's client got a complete-looking NAR ({total} bytes)");

    let (status, body) =
        tokio::time::timeout(Duration::from_secs(120), second).await.expect("b never finished").unwrap();
    assert_eq!(status, 200, "{backend}");
    assert_eq!(body, want, "{backend}: b's NAR differs");
    assert_eq!(up.hits(&nar), 2, "{backend}: a's aborted download and b's");
    let after = c.get(format!("{}{nar}", b.url)).send().await.unwrap();
    assert_eq!(after.headers()["x-cache"], "HIT");
    assert_eq!(format!("{:x}", Sha256::digest(after.bytes().await.unwrap())), want);
    if backend == "postgres" {
        // The lock died with a's session: b did not wait for the 10 min TTL.
        assert!(started.elapsed() < Duration::from_secs(60), "{backend}: b waited for the TTL");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_lock_expires_and_another_node_completes() {
    kill_the_downloader("redis", "3s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_session_dies_and_another_node_takes_over_at_once() {
    kill_the_downloader("postgres", "15s").await;
}

/// SIGTERM: the node stops accepting, finishes the hits in flight, cuts the
/// slow download at the deadline (nothing published, the client's transfer
/// broken) and frees its lock at once, so another node serves the NAR.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_finishes_hits_and_hands_the_download_over() {
    let fx = fixture();
    let cache = fx.cache("none");
    let up = FakeUpstream::start(cache.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let db = fresh_postgres().await;
    let mut flags = upstream_flags(&up.url(), &fx.public_key);
    flags.extend([
        "--cache-hostname=drain".to_string(),
        format!("--cache-database-url={db}"),
        format!("--cache-storage-local={}", storage.display()),
        "--cache-lock-backend=postgres".into(),
        "--shutdown-timeout=2s".into(),
        format!("--wasm-cache-dir={}", std::env::temp_dir().join("ncps-edge-test-wasm-cache").display()),
    ]);
    let mut a = NodeProcess::spawn(&flags, &dir.path().join("a.log"));
    let b = NodeProcess::spawn(&flags, &dir.path().join("b.log"));
    let c = reqwest::Client::new();
    let digest = |p: &str| format!("{:x}", Sha256::digest(std::fs::read(nar_file(&cache, p)).unwrap()));
    for p in [&fx.leaf, &fx.mid, &fx.top, &fx.big] {
        assert_eq!(c.get(format!("{}/{}.narinfo", a.url, hash_of(p))).send().await.unwrap().status(), 200);
    }
    for p in [&fx.leaf, &fx.mid, &fx.top] {
        c.get(format!("{}{}", a.url, nar_url(&cache, p))).send().await.unwrap().bytes().await.unwrap();
    }
    up.faults().nar_chunk_delay_ms.store(10, Ordering::SeqCst);
    let big = nar_url(&cache, &fx.big);
    let download = c.get(format!("{}{big}", a.url)).send().await.unwrap();
    let mut download = download.bytes_stream();
    download.next().await.unwrap().unwrap();
    // Hits in flight when the signal comes.
    let hits: Vec<_> = (0..40)
        .map(|i| {
            let p = [&fx.leaf, &fx.mid, &fx.top][i % 3].clone();
            let (c, url) = (c.clone(), format!("{}{}", a.url, nar_url(&cache, &p)));
            tokio::spawn(async move {
                let resp = c.get(&url).send().await.ok()?;
                Some((p, resp.status().as_u16(), resp.bytes().await.map(|b| format!("{:x}", Sha256::digest(b)))))
            })
        })
        .collect();
    a.signal("TERM");
    for hit in hits {
        // Refused before it reached the node is fine; a started response must end well.
        if let Some((p, status, body)) = hit.await.unwrap() {
            assert_eq!(status, 200, "{p}");
            assert_eq!(body.expect("a hit's transfer broke at shutdown"), digest(&p), "{p}");
        }
    }
    let rest: Vec<_> = download.collect().await;
    let full = std::fs::metadata(nar_file(&cache, &fx.big)).unwrap().len() as usize;
    let got: usize = rest.iter().flatten().map(|b| b.len()).sum();
    assert!(rest.iter().any(|r| r.is_err()) || got < full, "the cut download looked complete");
    let status = tokio::task::block_in_place(|| a.wait_exit(Duration::from_secs(20))).expect("a did not exit");
    assert!(status.success(), "a exited with {status}");
    let file = &big[5..];
    let published = storage.join("store/nar").join(&file[..1]).join(&file[..2]).join(file);
    assert!(!published.exists(), "a partial NAR was published");
    // b takes the download over at once: a's lock went with its session.
    up.faults().nar_chunk_delay_ms.store(0, Ordering::SeqCst);
    let started = Instant::now();
    let resp = c.get(format!("{}{big}", b.url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(format!("{:x}", Sha256::digest(resp.bytes().await.unwrap())), digest(&fx.big));
    assert!(started.elapsed() < Duration::from_secs(10), "b waited {:?}", started.elapsed());
}
