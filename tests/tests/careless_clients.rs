//! No client, upstream or idle socket holds the others back: a download
//! runs at the upstream's speed however slowly its clients read, sockets
//! that never read hold no handler instance and little memory, a dripping
//! upstream is cut off and asked once, and requests without `Host`, with
//! odd `Range` values or oversized heads get the answer they should.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ncps_edge_tests::cluster::backend_flags;
use ncps_edge_tests::fixture::{fixture, hash_of, nar_file, nar_url};
use ncps_edge_tests::node::{is_stored, start_node, upstream_flags, TestNode};
use ncps_edge_tests::scenario::Scenario;
use ncps_edge_tests::upstream::FakeUpstream;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// A connection that sent `GET path` and reads nothing (yet).
async fn ask_and_stall(node: &str, path: &str) -> TcpStream {
    let addr = node.trim_start_matches("http://");
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
    conn
}

/// Read `conn` at 1 KiB a second until it ends; how many bytes came.
async fn read_slowly(mut conn: TcpStream) -> usize {
    let mut buf = [0u8; 1024];
    let mut total = 0;
    loop {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return total,
            Ok(n) => total += n,
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Fetch `url` whole: the body and how long it took.
async fn timed_body(c: &reqwest::Client, url: &str) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let resp = c.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{url}");
    (resp.bytes().await.unwrap().to_vec(), started.elapsed())
}

/// Generous bound on a transfer that takes about a second on loopback.
const TRANSFER_BOUND: Duration = Duration::from_secs(60);

/// A slow reader at `slow` and a fast one at `fast` of the same cold NAR.
async fn slow_and_fast(slow: &TestNode, fast: &TestNode, up: &FakeUpstream) {
    let fx = fixture();
    let cache = fx.cache("zstd");
    let c = reqwest::Client::new();
    for node in [slow, fast] {
        let narinfo = c.get(format!("{}/{}.narinfo", node.url(), hash_of(&fx.big))).send().await.unwrap();
        assert_eq!(narinfo.status(), 200);
    }
    let path = nar_url(&cache, &fx.big);
    let original = std::fs::read(nar_file(&cache, &fx.big)).unwrap();
    let reader = tokio::spawn(read_slowly(ask_and_stall(&slow.url(), &path).await));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fast_url = format!("{}{path}", fast.url());
    let fast_client = timed_body(&c, &fast_url);
    let (body, took) =
        tokio::time::timeout(TRANSFER_BOUND, fast_client).await.expect("the fast client waits for the slow one");
    assert!(body == original, "the fast client's body differs");
    assert!(took < TRANSFER_BOUND);
    // Stored at the upstream's pace, while the slow client still reads.
    assert!(is_stored(&c, &format!("{}{path}", slow.url())).await, "not stored while a slow client reads");
    assert!(!reader.is_finished(), "the slow client was cut off");
    reader.abort();
    assert_eq!(up.hits(&path), 1, "one upstream download");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_reads_slowly_does_not_hold_the_download_back() {
    let s = Scenario::setup().cache("zstd").start().await;
    // About a second for the whole NAR.
    s.up.faults().nar_chunk_delay_ms.store(2, Ordering::SeqCst);
    slow_and_fast(&s.node, &s.node, &s.up).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_client_at_one_node_does_not_hold_back_a_client_at_another() {
    let fx = fixture();
    let up = FakeUpstream::start(fx.cache("zstd")).await;
    up.faults().nar_chunk_delay_ms.store(2, Ordering::SeqCst);
    let shared = tempfile::tempdir().unwrap();
    let mut flags = upstream_flags(&up.url(), &fx.public_key);
    flags.extend(backend_flags("redis").await);
    flags.push(format!("--cache-storage-local={}", shared.path().display()));
    let with_address = |flags: &[String]| {
        let port = ncps_edge_test_support::free_port();
        let mut flags = flags.to_vec();
        flags.push(format!("--server-addr=127.0.0.1:{port}"));
        flags.push(format!("--cache-node-url=http://127.0.0.1:{port}"));
        flags
    };
    let a = start_node(&with_address(&flags)).await;
    let b = start_node(&with_address(&flags)).await;
    tokio::time::sleep(ncps_edge_host_services::cluster::channel::HEARD_WITHIN).await;
    slow_and_fast(&a, &b, &up).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sockets_that_never_read_hold_no_handler_instance() {
    let fx = fixture();
    let (zstd, none) = (fx.cache("zstd"), fx.cache("none"));
    let up_zstd = FakeUpstream::start(zstd.clone()).await;
    let up_none = FakeUpstream::start(none.clone()).await;
    let mut flags = upstream_flags(&up_zstd.url(), &fx.public_key);
    flags.push(format!("--cache-upstream-url={}", up_none.url()));
    flags.push("--wasm-max-instances=4".into());
    let node = start_node(&flags).await;
    let c = reqwest::Client::new();
    // A stored NAR (hits) and a cold one (a download and its followers).
    let hit = nar_url(&zstd, &fx.big);
    let narinfo = format!("{}/{}.narinfo", node.url(), hash_of(&fx.big));
    assert_eq!(c.get(&narinfo).send().await.unwrap().status(), 200);
    assert_eq!(timed_body(&c, &format!("{}{hit}", node.url())).await.0.len() as u64, {
        std::fs::metadata(nar_file(&zstd, &fx.big)).unwrap().len()
    });
    let cold = nar_url(&none, &fx.big);
    let mut idle = Vec::new();
    for i in 0..24 {
        idle.push(ask_and_stall(&node.url(), if i % 2 == 0 { &hit } else { &cold }).await);
    }
    // Three times the instances: each asked, none reads.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let healthz = tokio::time::timeout(Duration::from_secs(20), c.get(format!("{}/healthz", node.url())).send()).await;
    let status = healthz.expect("/healthz waited for an instance").unwrap().status();
    assert_eq!(status, 200);
    let narinfo = tokio::time::timeout(Duration::from_secs(20), c.get(&narinfo).send()).await;
    assert_eq!(narinfo.expect("a narinfo waited for an instance").unwrap().status(), 200);
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dripping_upstream_is_cut_off_and_asked_once_for_all_waiters() {
    let s = Scenario::setup().start().await;
    let (fx, up, node) = (s.fx, &s.up, &s.node);
    up.faults().drip_narinfos.store(true, Ordering::SeqCst);
    let narinfo = format!("{}/{}.narinfo", node.url(), hash_of(&fx.leaf));
    let started = Instant::now();
    let asks: Vec<_> = (0..5)
        .map(|_| {
            let (c, url) = (reqwest::Client::new(), narinfo.clone());
            tokio::spawn(async move { c.get(url).send().await.unwrap().status().as_u16() })
        })
        .collect();
    for ask in asks {
        assert_eq!(ask.await.unwrap(), 404, "a dripping upstream's narinfo was adopted");
    }
    // Its deadline is 3 s + 2 × 3 s; a bound well above it.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "answered after {took:?}");
    assert_eq!(up.hits(&format!("/{}.narinfo", hash_of(&fx.leaf))), 1, "asked once per waiter");
    // Remembered for a few seconds only: then asked again.
    up.faults().drip_narinfos.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(reqwest::get(&narinfo).await.unwrap().status(), 200);
}

/// Send a raw request and read the answer until the server closes.
async fn raw(node: &str, request: &[u8]) -> String {
    let mut conn = TcpStream::connect(node.trim_start_matches("http://")).await.unwrap();
    conn.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_without_host_odd_ranges_and_large_heads_get_their_answers() {
    let fx = fixture();
    let cache = fx.cache("none");
    let s = Scenario::setup().start().await;
    let node = &s.node;
    // An HTTP/1.0 health check names no host: the guest answers it, then the tier.
    for path in ["/healthz", "/nix-cache-info", "/nix-cache-info"] {
        let answer = raw(&node.url(), format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.") && answer.contains(" 200 "), "{path}: {answer}");
    }
    // A Range with a Unicode space is malformed: the whole NAR, from the
    // guest and from the tier alike.
    let c = reqwest::Client::new();
    let path = nar_url(&cache, &fx.leaf);
    let original = std::fs::read(nar_file(&cache, &fx.leaf)).unwrap();
    let url = format!("{}{path}", node.url());
    assert_eq!(timed_body(&c, &url).await.0, original);
    let odd = reqwest::header::HeaderValue::from_bytes("bytes=0-4\u{a0}".as_bytes()).unwrap();
    for _ in 0..2 {
        let resp = c.get(&url).header("range", odd.clone()).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.bytes().await.unwrap(), original);
    }
    let proper = c.get(&url).header("range", "bytes=0-4").send().await.unwrap();
    assert_eq!(proper.status(), 206);
    // The request head limit (64K by default) is what is accepted.
    let head = |pad: usize| format!("GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n", "a".repeat(pad));
    let under = raw(&node.url(), head(60 << 10).as_bytes()).await;
    assert!(under.starts_with("HTTP/1.1 200"), "{}", &under[..under.len().min(200)]);
    for pad in [66 << 10, 100 << 10] {
        let over = raw(&node.url(), head(pad).as_bytes()).await;
        assert!(over.starts_with("HTTP/1.1 431"), "{pad} bytes of header: {}", &over[..over.len().min(200)]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_failures_and_redirects_on_a_nar() {
    let fx = fixture();
    let cache = fx.cache("none");
    let s = Scenario::setup().start().await;
    let (up, node, c) = (&s.up, &s.node, &s.c);
    let path = nar_url(&cache, &fx.leaf);
    let url = format!("{}{path}", node.url());
    assert_eq!(c.get(format!("{}/{}.narinfo", node.url(), hash_of(&fx.leaf))).send().await.unwrap().status(), 200);
    // An upstream in trouble is worth a retry, not "not here".
    up.faults().nar_status.store(503, Ordering::SeqCst);
    assert_eq!(c.get(&url).send().await.unwrap().status(), 502);
    assert_eq!(c.head(&url).send().await.unwrap().status(), 502);
    up.faults().nar_status.store(404, Ordering::SeqCst);
    assert_eq!(c.get(&url).send().await.unwrap().status(), 404);
    up.faults().nar_status.store(0, Ordering::SeqCst);
    // A redirect (to a mirror) is followed.
    let mirror = FakeUpstream::start(cache.clone()).await;
    *up.faults().redirect_nars_to.lock().unwrap() = Some(mirror.url());
    let body = c.get(&url).send().await.unwrap();
    assert_eq!(body.status(), 200);
    assert_eq!(body.bytes().await.unwrap(), std::fs::read(nar_file(&cache, &fx.leaf)).unwrap());
    assert_eq!(mirror.hits(&path), 1);
    assert!(is_stored(c, &url).await);
}
