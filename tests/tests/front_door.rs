//! The HTTP front door under bad clients: slow headers (slowloris), idle
//! keep-alive connections, oversized heads and the connection cap.

use std::time::{Duration, Instant};

use ncps_edge_tests::node::start_node;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether the server closed `conn` (a read returns end of stream).
async fn closed_by_server(conn: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slowloris_does_not_starve_normal_clients() {
    let node = start_node(&["--server-read-header-timeout=2s".into()]).await;
    let addr = node.node.addr();
    // Hundreds of clients sending their head one byte a second.
    let slow: Vec<_> = (0..300)
        .map(|_| {
            tokio::spawn(async move {
                let mut conn = TcpStream::connect(addr).await.unwrap();
                let head = b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\n\r\n";
                let started = Instant::now();
                for byte in head {
                    if conn.write_all(&[*byte]).await.is_err() {
                        return started.elapsed();
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                started.elapsed()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = reqwest::Client::new();
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let resp = c.get(format!("{}/nix-cache-info", node.url())).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(slowest < Duration::from_millis(1500), "a normal request took {slowest:?} among slow clients");
    // The slow clients were cut after the header timeout, not served.
    for client in slow {
        let lasted = client.await.unwrap();
        assert!(lasted < Duration::from_secs(10), "a slow client kept its connection for {lasted:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_and_oversized_connections_are_closed() {
    let node = start_node(&["--server-read-header-timeout=1s".into(), "--server-max-header-size=8K".into()]).await;
    let addr = node.node.addr();
    // An idle keep-alive connection is closed after the header timeout.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    assert!(closed_by_server(&mut idle, Duration::from_secs(5)).await, "idle connection kept open");
    // A head larger than the cap is refused, and the node goes on serving.
    let mut big = TcpStream::connect(addr).await.unwrap();
    let head = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\n\r\n", "a".repeat(32 << 10));
    let _ = big.write_all(head.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), big.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "{answer}");
    let ok = reqwest::get(format!("{}/healthz", node.url())).await.unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_beyond_the_cap_wait() {
    let node = start_node(&["--server-max-connections=2".into(), "--server-read-header-timeout=2s".into()]).await;
    let addr = node.node.addr();
    // Two connections that send nothing hold both slots until the timeout.
    let mut holders = Vec::new();
    for _ in 0..2 {
        holders.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let resp = reqwest::get(format!("{}/healthz", node.url())).await.unwrap();
    assert_eq!(resp.status(), 200);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1200), "served at once ({waited:?}): the cap did not hold");
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_beyond_the_instance_pool_wait_for_an_instance() {
    use ncps_edge_tests::fixture::{fixture, hash_of, nar_file, nar_url};
    use ncps_edge_tests::scenario::Scenario;
    use std::sync::atomic::Ordering;
    let fx = fixture();
    let cache = fx.cache("none");
    let s = Scenario::setup().flags(["--wasm-max-instances=2", "--edge-cache-memory=0"]).start().await;
    let (up, node, c) = (&s.up, &s.node, &s.c);
    // A download that takes a while, so instances stay busy.
    up.faults().nar_chunk_delay_ms.store(2, Ordering::SeqCst);
    let narinfo = format!("{}/{}.narinfo", node.url(), hash_of(&fx.big));
    assert_eq!(c.get(&narinfo).send().await.unwrap().status(), 200);
    let url = format!("{}{}", node.url(), nar_url(&cache, &fx.big));
    let original = std::fs::read(nar_file(&cache, &fx.big)).unwrap();
    // Eight clients, two instances: the others wait for one, none fails.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move {
                let resp = c.get(url).send().await.unwrap();
                (resp.status().as_u16(), resp.bytes().await.unwrap_or_default())
            })
        })
        .collect();
    for client in clients {
        let (status, body) = client.await.unwrap();
        assert_eq!(status, 200);
        assert!(body == original, "a body differs");
    }
    assert_eq!(up.hits(&nar_url(&cache, &fx.big)), 1, "one upstream fetch");
}
