//! How long a client waits when the node downloading its NAR dies, per lock
//! backend, with the default lease (15 s) and heartbeat (5 s).
//!
//! `cargo build --release -p ncps-edge && cargo bench -p ncps-edge-tests
//! --bench failover` (needs Redis, PostgreSQL, MariaDB, s3s-fs and nix, like
//! the tests; `NCPS_EDGE_BIN` picks another `ncps-edge` binary). The scenario of
//! the failover issue, scaled to the fixture: a 30 MB NAR from an upstream
//! sending 4 MB/s; client 1 starts it through node 1, client 2 asks node 2
//! two seconds later, node 1 is killed (SIGKILL) two seconds after that.
//! Prints a markdown table of client 2's first byte and whole NAR, counted
//! from the kill.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use ncps_edge_tests::cluster::pair;
use ncps_edge_tests::fixture::{fixture, hash_of, nar_file, nar_url};
use sha2::{Digest, Sha256};

async fn measure(backend: &str) -> (Duration, Duration, bool) {
    let fx = fixture();
    let cache = fx.cache("none");
    let mut p = pair(fx, cache.clone(), backend, &[]).await;
    // 64 KiB chunks every 16 ms: 4 MB/s.
    p.up.faults().nar_chunk_delay_ms.store(16, Ordering::SeqCst);
    let nar = nar_url(&cache, &fx.big);
    let want = format!("{:x}", Sha256::digest(std::fs::read(nar_file(&cache, &fx.big)).unwrap()));
    let c = reqwest::Client::new();
    c.get(format!("{}/{}.narinfo", p.a.url, hash_of(&fx.big))).send().await.unwrap();
    let first = c.get(format!("{}{nar}", p.a.url)).send().await.unwrap();
    let drain = tokio::spawn(async move { first.bytes().await.is_ok() });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (c2, url) = (c.clone(), format!("{}{nar}", p.b.url));
    let second = tokio::spawn(async move {
        let resp = c2.get(&url).send().await.unwrap();
        let mut body = resp.bytes_stream();
        let (mut hasher, mut first_byte) = (Sha256::new(), None);
        while let Some(chunk) = body.next().await {
            first_byte.get_or_insert_with(Instant::now);
            hasher.update(chunk.unwrap());
        }
        (first_byte.unwrap_or_else(Instant::now), format!("{:x}", hasher.finalize()))
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = Instant::now();
    p.a.kill();
    let _ = drain.await;
    let (first_byte, got) = second.await.unwrap();
    (first_byte.saturating_duration_since(killed), killed.elapsed(), got == want)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    println!("| backend | first byte after the kill | whole NAR after the kill | correct |");
    println!("| --- | --- | --- | --- |");
    for backend in ["redis", "postgres", "mysql"] {
        let (first, whole, ok) = measure(backend).await;
        println!("| {backend} | {:.1} s | {:.1} s | {ok} |", first.as_secs_f64(), whole.as_secs_f64());
    }
}
