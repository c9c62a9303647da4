//! What a node lets out and what it holds on to, on a real `ncps-edge`
//! process: upstream credentials are used but never shown (metrics, logs,
//! `config check`), and a thousand connections that stopped reading a NAR
//! hold little memory.

use std::time::Duration;

use base64::Engine as _;
use ncps_edge_tests::fixture::{fixture, hash_of, nar_file, nar_url};
use ncps_edge_tests::node::upstream_flags;
use ncps_edge_tests::process::{self, binary, NodeProcess};
use ncps_edge_tests::upstream::FakeUpstream;
use tokio::io::AsyncWriteExt as _;

/// Flags every node process here gets.
fn common(dir: &std::path::Path) -> Vec<String> {
    vec![
        "--cache-hostname=leaks".into(),
        format!("--cache-storage-local={}", dir.join("data").display()),
        format!("--wasm-cache-dir={}", std::env::temp_dir().join("ncps-edge-test-wasm-cache").display()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_credentials_are_used_and_never_shown() {
    const SECRET: &str = "pa55-w0rd-in-the-url";
    let fx = fixture();
    let cache = fx.cache("none");
    let up = FakeUpstream::start(cache.clone()).await;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("reader:{SECRET}"));
    *up.faults().require_authorization.lock().unwrap() = Some(format!("Basic {basic}"));
    let dir = tempfile::tempdir().unwrap();
    let with_credentials = up.url().replace("http://", &format!("http://reader:{SECRET}@"));
    let mut flags = upstream_flags(&with_credentials, &fx.public_key);
    flags.extend(common(dir.path()));
    flags.push("--prometheus-enabled".into());
    let log = dir.path().join("node.log");
    let node = NodeProcess::spawn(&flags, &log);
    let c = reqwest::Client::new();
    let narinfo = c.get(format!("{}/{}.narinfo", node.url, hash_of(&fx.leaf))).send().await.unwrap();
    assert_eq!(narinfo.status(), 200, "the upstream's credentials were not sent");
    let nar = c.get(format!("{}{}", node.url, nar_url(&cache, &fx.leaf))).send().await.unwrap();
    assert_eq!(nar.status(), 200);
    assert_eq!(nar.bytes().await.unwrap(), std::fs::read(nar_file(&cache, &fx.leaf)).unwrap());
    let metrics = c.get(format!("{}/metrics", node.url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("ncps_upstream_fetch_duration_seconds"), "{metrics}");
    assert!(!metrics.contains(SECRET), "the upstream's password is in /metrics");
    let check = std::process::Command::new(binary()).args(["config", "check"]).args(&flags).output().unwrap();
    let shown = String::from_utf8_lossy(&check.stdout).into_owned() + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{shown}");
    assert!(shown.contains("cache.upstream.urls") && !shown.contains(SECRET), "config check shows it:\n{shown}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("fetched narinfo from upstream"), "{logged}");
    assert!(!logged.contains(SECRET) && !logged.contains(&basic), "the password is in the log");
}

/// The resident memory of process `pid`, bytes.
fn rss(pid: u32) -> u64 {
    process::rss(pid).expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_stalled_nar_hits_hold_little_memory() {
    const CONNECTIONS: usize = 1000;
    let fx = fixture();
    let cache = fx.cache("none");
    let up = FakeUpstream::start(cache.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut flags = upstream_flags(&up.url(), &fx.public_key);
    flags.extend(common(dir.path()));
    let node = NodeProcess::spawn(&flags, &dir.path().join("node.log"));
    let c = reqwest::Client::new();
    let path = nar_url(&cache, &fx.big);
    assert_eq!(c.get(format!("{}/{}.narinfo", node.url, hash_of(&fx.big))).send().await.unwrap().status(), 200);
    let whole = c.get(format!("{}{path}", node.url)).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(whole.len(), fx_big_len(&cache, &fx.big));
    let before = rss(node.pid());
    let addr = node.url.trim_start_matches("http://").to_owned();
    let mut stalled = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
        stalled.push(conn);
    }
    // Let every connection fill what the sockets take.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = rss(node.pid());
    let per_connection = during.saturating_sub(before) / CONNECTIONS as u64;
    eprintln!("RSS before {} MB, with {CONNECTIONS} stalled hits {} MB", before >> 20, during >> 20);
    assert!(during < 300 << 20, "RSS {} MB with {CONNECTIONS} stalled NAR hits", during >> 20);
    assert!(per_connection < 200 << 10, "{per_connection} bytes per stalled connection");
    // The node still answers.
    drop(stalled);
    assert_eq!(c.get(format!("{}/healthz", node.url)).send().await.unwrap().status(), 200);
}

fn fx_big_len(cache: &std::path::Path, path: &str) -> usize {
    std::fs::metadata(nar_file(cache, path)).unwrap().len() as usize
}
