//! ncps-edge nodes started in-process with the same flags as the binary.

use ncps_edge::cli::{parse_cli, Command};
use ncps_edge::config::Config;
use ncps_edge::node::{start, RunningNode};

/// A node and its data folder.
pub struct TestNode {
    /// The running node.
    pub node: RunningNode,
    /// Its data folder.
    pub data: tempfile::TempDir,
}

impl TestNode {
    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.node.addr())
    }
    /// The node's public key.
    pub fn public_key(&self) -> String {
        self.node.services().signer.public_key()
    }
}

fn init_logs() {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    });
}

/// Start a node on a free port with `extra` flags (after sensible test defaults).
pub async fn start_node(extra: &[String]) -> TestNode {
    init_logs();
    let data = tempfile::tempdir().unwrap();
    let wasm_cache = std::env::temp_dir().join("ncps-edge-test-wasm-cache");
    let mut argv: Vec<String> =
        ["ncps-edge", "serve", "--cache-hostname=test-cache", "--server-addr=127.0.0.1:0", "--wasm-max-instances=128"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    argv.push(format!("--cache-storage-local={}", data.path().display()));
    argv.push(format!("--wasm-cache-dir={}", wasm_cache.display()));
    argv.extend(extra.iter().cloned());
    let parsed = parse_cli(argv).expect("flags");
    let Command::Serve(args) = parsed.cli.command else { panic!("not serve") };
    let config = Config::from_args(*args, parsed.without_effect).expect("valid configuration");
    let node = start(&config).await.expect("node starts");
    TestNode { node, data }
}

/// Whether nodes run with the edge tier's memory (the default; the suite
/// also runs with `EDGE_CACHE_MEMORY=0`, every request through the handler).
pub fn memory_tier_on() -> bool {
    std::env::var("EDGE_CACHE_MEMORY").map_or(true, |v| v.trim() != "0")
}

/// Whether the NAR at `url` (a node's `/nar/…`) is stored there: a `HEAD`
/// answers from storage (`x-cache: HIT`) only then; otherwise it answers
/// what the upstreams have.
pub async fn is_stored(c: &reqwest::Client, url: &str) -> bool {
    let resp = c.head(url).send().await.expect("HEAD");
    resp.status() == 200 && resp.headers().get("x-cache").is_some_and(|v| v == "HIT")
}

/// Flags pointing a node at `upstream_url`, trusting `key`.
pub fn upstream_flags(upstream_url: &str, key: &str) -> Vec<String> {
    vec![format!("--cache-upstream-url={upstream_url}"), format!("--cache-upstream-public-key={key}")]
}
