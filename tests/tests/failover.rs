//! Failover in seconds. The node downloading a NAR is killed (SIGKILL) or
//! frozen (SIGSTOP) in the middle: another node takes the download over
//! within the lease (Redis) or at once (PostgreSQL/MySQL, whose lock
//! session dies with the process), its client gets the whole NAR, the
//! upstream sees exactly one fetch more, and nothing partial or doubled is
//! ever published. A SIGTERM drains instead.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use ncps_edge_test_support::fresh_postgres;
use ncps_edge_tests::cluster::{pair, Pair};
use ncps_edge_tests::fixture::{fixture, hash_of, nar_file, nar_url};
use ncps_edge_tests::node::upstream_flags;
use ncps_edge_tests::process::NodeProcess;
use ncps_edge_tests::scrape::sample;
use ncps_edge_tests::upstream::FakeUpstream;
use sha2::{Digest, Sha256};

/// Lease and heartbeat of these tests (the defaults are 15 s and 5 s).
const LEASE: Duration = Duration::from_secs(4);

fn lease_flags() -> Vec<String> {
    vec![format!("--cache-lock-download-lease={}s", LEASE.as_secs()), "--cache-lock-heartbeat-interval=1s".into()]
}

/// Client 1's download of the big NAR on `a`, with the 2 MB read so far.
struct Started<S> {
    body: S,
    head: Vec<u8>,
}

/// Start client 1's download of the big NAR on `a` and read 2 MB of it.
async fn start_on_a(
    p: &Pair,
    c: &reqwest::Client,
    nar: &str,
) -> Started<impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>>> {
    let fx = fixture();
    assert_eq!(c.get(format!("{}/{}.narinfo", p.a.url, hash_of(&fx.big))).send().await.unwrap().status(), 200);
    let first = c.get(format!("{}{nar}", p.a.url)).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let mut body = Box::pin(first.bytes_stream());
    let mut head = Vec::new();
    while head.len() < 2_000_000 {
        head.extend_from_slice(&body.next().await.unwrap().unwrap());
    }
    Started { body, head }
}

/// Client 2 asks `b` for the NAR; (status, sha256, when its first byte came).
fn ask_b(p: &Pair, c: &reqwest::Client, nar: &str) -> tokio::task::JoinHandle<(u16, String, Instant)> {
    let (c, url) = (c.clone(), format!("{}{nar}", p.b.url));
    tokio::spawn(async move {
        let resp = c.get(&url).send().await.unwrap();
        let status = resp.status().as_u16();
        let mut body = resp.bytes_stream();
        let mut hasher = Sha256::new();
        let mut first_byte = None;
        while let Some(chunk) = body.next().await {
            first_byte.get_or_insert_with(Instant::now);
            hasher.update(chunk.expect("client 2's transfer broke"));
        }
        (status, format!("{:x}", hasher.finalize()), first_byte.unwrap_or_else(Instant::now))
    })
}

/// The objects in the shared bucket.
async fn objects(p: &Pair) -> Vec<String> {
    let listed = p.bucket.client().list_objects_v2().bucket(&p.bucket.bucket).send().await.unwrap();
    listed.contents().iter().filter_map(|o| o.key().map(str::to_owned)).collect()
}

async fn kill_the_downloader(backend: &str) {
    let fx = fixture();
    let cache = fx.cache("none");
    let mut p = pair(fx, cache.clone(), backend, &lease_flags()).await;
    // About 5 s for the whole NAR.
    p.up.faults().nar_chunk_delay_ms.store(10, Ordering::SeqCst);
    let nar = nar_url(&cache, &fx.big);
    let want = format!("{:x}", Sha256::digest(std::fs::read(nar_file(&cache, &fx.big)).unwrap()));
    let c = reqwest::Client::new();
    let first = start_on_a(&p, &c, &nar).await;
    let second = ask_b(&p, &c, &nar);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Instant::now();
    p.a.kill();
    assert!(objects(&p).await.is_empty(), "{backend}: a partial NAR is visible after the crash");
    let rest: Vec<_> = first.body.collect().await;
    let full = std::fs::metadata(nar_file(&cache, &fx.big)).unwrap().len() as usize;
    let got: usize = rest.iter().flatten().map(|b| b.len()).sum::<usize>() + first.head.len();
    assert!(
        rest.iter().any(|r| r.is_err()) || got < full,
        "{backend}: the killed node's client got a complete-looking NAR"
    );
    let (status, body, first_byte) =
        tokio::time::timeout(Duration::from_secs(60), second).await.expect("b never finished").unwrap();
    let done = killed.elapsed();
    assert_eq!(status, 200, "{backend}");
    assert_eq!(body, want, "{backend}: b's NAR differs");
    // The lease and one whole download of about 5 s: seconds, not minutes.
    // A bound well above what it takes (a loaded machine once took 16 s).
    assert!(done < LEASE + Duration::from_secs(40), "{backend}: client 2 finished {done:?} after the kill");
    eprintln!("{backend}: first byte {:?} and whole NAR {done:?} after the kill", first_byte - killed);
    assert_eq!(p.up.hits(&nar), 2, "{backend}: a's cut download and b's takeover");
    assert_eq!(objects(&p).await.len(), 1, "{backend}: one published object");
    let after = c.get(format!("{}{nar}", p.b.url)).send().await.unwrap();
    assert_eq!(after.headers()["x-cache"], "HIT");
    assert_eq!(format!("{:x}", Sha256::digest(after.bytes().await.unwrap())), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_lease_expires_and_another_node_takes_over() {
    kill_the_downloader("redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_session_dies_and_another_node_takes_over() {
    kill_the_downloader("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_session_dies_and_another_node_takes_over() {
    kill_the_downloader("mysql").await;
}

async fn freeze_the_downloader(backend: &str) {
    let fx = fixture();
    let cache = fx.cache("none");
    let p = pair(fx, cache.clone(), backend, &lease_flags()).await;
    p.up.faults().nar_chunk_delay_ms.store(10, Ordering::SeqCst);
    let nar = nar_url(&cache, &fx.big);
    let want = format!("{:x}", Sha256::digest(std::fs::read(nar_file(&cache, &fx.big)).unwrap()));
    let c = reqwest::Client::new();
    let first = start_on_a(&p, &c, &nar).await;
    p.a.signal("STOP");
    // b takes over once a's lease is gone (Redis: expiry; databases: the
    // server ends the idle session) and publishes.
    let (status, body, _) =
        tokio::time::timeout(Duration::from_secs(60), ask_b(&p, &c, &nar)).await.expect("b never finished").unwrap();
    assert_eq!((status, body.as_str()), (200, want.as_str()), "{backend}: b's NAR");
    assert_eq!(objects(&p).await.len(), 1, "{backend}: b published");
    p.a.signal("CONT");
    // a's client still gets a whole, correct NAR; a publishes nothing over b's.
    let mut hasher = Sha256::new();
    hasher.update(&first.head);
    let rest: Vec<_> = first.body.collect().await;
    for chunk in rest {
        hasher.update(chunk.expect("a's client saw an error after CONT"));
    }
    assert_eq!(format!("{:x}", hasher.finalize()), want, "{backend}: a's client got a different NAR");
    assert_eq!(p.up.hits(&nar), 2, "{backend}: a's download and b's");
    assert_eq!(objects(&p).await.len(), 1, "{backend}: still one object");
    let stored =
        p.bucket.client().get_object().bucket(&p.bucket.bucket).key(&objects(&p).await[0]).send().await.unwrap();
    let stored = stored.body.collect().await.unwrap().into_bytes();
    assert_eq!(format!("{:x}", Sha256::digest(&stored)), want, "{backend}: the published object is whole");
    // a noticed: the lease counts as lost, with a log line naming it.
    let metrics = c.get(format!("{}/metrics", p.a.url)).send().await.unwrap().text().await.unwrap();
    let lost = [("type", "download:nar"), ("reason", "lost"), ("mode", "exclusive")];
    assert!(
        sample(&metrics, "ncps_lock_failures_total", &lost).unwrap_or(0.0) >= 1.0,
        "{backend}: no lost lease counted"
    );
    let log = std::fs::read_to_string(p.log("a")).unwrap();
    assert!(
        log.lines().any(|l| l.contains("\"lease lost\"") && l.contains("download:nar:") && l.contains("\"holder\"")),
        "{backend}: no 'lease lost' line"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_frozen_holder_is_taken_over_and_its_late_publish_changes_nothing() {
    freeze_the_downloader("redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_frozen_holder_is_taken_over_and_its_late_publish_changes_nothing() {
    freeze_the_downloader("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_frozen_holder_is_taken_over_and_its_late_publish_changes_nothing() {
    freeze_the_downloader("mysql").await;
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
    assert!(started.elapsed() < Duration::from_secs(30), "b waited {:?}", started.elapsed());
}
