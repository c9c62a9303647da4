//! Failure behaviour: corrupt upstream NARs, dead or hanging upstreams,
//! guest traps, and concurrent cold requests.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ncps_edge_tests::fixture::{fixture, hash_of, nar_file, nar_url};
use ncps_edge_tests::node::{is_stored, start_node, upstream_flags};
use ncps_edge_tests::scenario::Scenario;
use ncps_edge_tests::upstream::{hanging_upstream, FakeUpstream};
use sha2::{Digest, Sha256};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_upstream_nar_is_not_cached_and_is_retried() {
    let fx = fixture();
    let s = Scenario::setup().start().await;
    let (up, node, c) = (&s.up, &s.node, &s.c);
    let path = nar_url(&fx.cache("none"), &fx.top);
    let original = std::fs::read(nar_file(&fx.cache("none"), &fx.top)).unwrap();
    let url = format!("{}{path}", node.url());
    // The client learns of the NAR through its narinfo first, as Nix does.
    assert_eq!(c.get(format!("{}/{}.narinfo", node.url(), hash_of(&fx.top))).send().await.unwrap().status(), 200);

    up.faults().corrupt_nars.store(true, Ordering::SeqCst);
    let got = match c.get(&url).send().await {
        Ok(resp) => resp.bytes().await.map(|b| b.to_vec()),
        Err(e) => Err(e),
    };
    assert!(got.as_ref().map_or(true, |b| *b != original), "a corrupt NAR must not look complete and correct");
    assert!(got.is_err(), "the transfer of a corrupt NAR must fail, got {} bytes", got.map(|b| b.len()).unwrap_or(0));
    assert!(!is_stored(c, &url).await, "corrupt NAR was stored");

    up.faults().corrupt_nars.store(false, Ordering::SeqCst);
    let good = c.get(&url).send().await.unwrap();
    assert_eq!(good.status(), 200);
    assert_eq!(good.bytes().await.unwrap(), original);
    assert_eq!(up.hits(&path), 2, "the next request went upstream again");
    assert!(is_stored(c, &url).await, "good NAR not stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_failing_and_hanging_upstreams_give_404_for_narinfo() {
    let fx = fixture();
    // Refused connections.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (hang_url, _hang) = hanging_upstream().await;
    let failing = FakeUpstream::start(fx.cache("none")).await;
    failing.faults().fail.store(true, Ordering::SeqCst);
    for upstream in [closed_url, hang_url, failing.url()] {
        let mut flags = upstream_flags(&upstream, &fx.public_key);
        flags.push("--cache-upstream-response-header-timeout=1s".into());
        let node = start_node(&flags).await;
        let url = format!("{}/{}.narinfo", node.url(), hash_of(&fx.top));
        let resp = tokio::time::timeout(Duration::from_secs(30), reqwest::get(&url))
            .await
            .unwrap_or_else(|_| panic!("{upstream}: narinfo request hung"))
            .unwrap();
        assert_eq!(resp.status(), 404, "{upstream}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guest_trap_gives_500_and_the_next_request_succeeds() {
    // A 4 MiB instance cannot buffer a 3 MB upload: its allocation traps.
    let node = start_node(&[
        "--cache-allow-put-verb".into(),
        "--cache-allow-anonymous-writes".into(),
        "--wasm-memory-limit=4194304".into(),
        "--cache-narinfo-max-size=8000000".into(),
    ])
    .await;
    let c = reqwest::Client::new();
    let huge = "X-Padding: y\n".repeat(230_000);
    let resp = c.put(format!("{}/{}.narinfo", node.url(), "0".repeat(32))).body(huge).send().await.unwrap();
    assert_eq!(resp.status(), 500);
    for _ in 0..3 {
        let ok = c.get(format!("{}/nix-cache-info", node.url())).send().await.unwrap();
        assert_eq!(ok.status(), 200, "server keeps serving after a trap");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cold_requests_share_one_download() {
    let fx = fixture();
    // Slow the body down so the requests overlap the download.
    let s = Scenario::setup().cache("zstd").start().await;
    let (up, node) = (&s.up, &s.node);
    up.faults().nar_chunk_delay_ms.store(2, Ordering::SeqCst);
    let path = nar_url(&fx.cache("zstd"), &fx.big);
    let want = format!("{:x}", Sha256::digest(std::fs::read(nar_file(&fx.cache("zstd"), &fx.big)).unwrap()));
    let c = reqwest::Client::new();
    assert_eq!(c.get(format!("{}/{}.narinfo", node.url(), hash_of(&fx.big))).send().await.unwrap().status(), 200);
    let url = format!("{}{path}", node.url());
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move {
                let resp = c.get(&url).send().await.unwrap();
                let status = resp.status().as_u16();
                (status, format!("{:x}", Sha256::digest(resp.bytes().await.unwrap())))
            })
        })
        .collect();
    for t in tasks {
        let (status, got) = t.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(got, want, "byte-identical for every client");
    }
    assert_eq!(up.hits(&path), 1, "exactly one upstream download");
}
