//! A test's world in one builder: the Nix-made fixture, a fake upstream
//! serving one of its caches (or a folder the test wrote), a node trusting
//! it with the flags the test adds, and a client.
//!
//! ```ignore
//! let s = Scenario::setup().cache("zstd").flags(["--cache-max-size=1"]).start().await;
//! let body = s.get(&s.nar(&s.fx.big)).await.bytes().await?;
//! ```

use std::path::{Path, PathBuf};

use crate::fixture::{fixture, hash_of, nar_file, nar_url, Fixture};
use crate::node::{start_node, upstream_flags, TestNode};
use crate::upstream::FakeUpstream;

/// What a test sets up before it starts.
pub struct ScenarioBuilder {
    cache: &'static str,
    upstream_dir: Option<PathBuf>,
    upstream: bool,
    flags: Vec<String>,
}

/// A running scenario.
pub struct Scenario {
    /// The fixture caches and store paths.
    pub fx: &'static Fixture,
    /// The cache folder the upstream serves (a fixture cache, unless the
    /// test gave its own folder).
    pub cache: PathBuf,
    /// The upstream (its request counts and fault switches).
    pub up: FakeUpstream,
    /// The node.
    pub node: TestNode,
    /// A client.
    pub c: reqwest::Client,
}

impl Scenario {
    /// A node in front of an upstream serving the fixture's uncompressed cache.
    pub fn setup() -> ScenarioBuilder {
        ScenarioBuilder { cache: "none", upstream_dir: None, upstream: true, flags: Vec::new() }
    }

    /// `path` (starting with `/`) at the node.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.node.url())
    }

    /// The node's URL of the narinfo of `store_path`.
    pub fn narinfo(&self, store_path: &str) -> String {
        self.url(&format!("/{}.narinfo", hash_of(store_path)))
    }

    /// The path of `store_path`'s NAR in the upstream's cache (`/nar/…`).
    pub fn nar_path(&self, store_path: &str) -> String {
        nar_url(&self.cache, store_path)
    }

    /// The node's URL of `store_path`'s NAR.
    pub fn nar(&self, store_path: &str) -> String {
        self.url(&self.nar_path(store_path))
    }

    /// The bytes of `store_path`'s NAR file in the upstream's cache.
    pub fn nar_bytes(&self, store_path: &str) -> Vec<u8> {
        std::fs::read(nar_file(&self.cache, store_path)).expect("the fixture's NAR file")
    }

    /// GET `url`.
    pub async fn get(&self, url: &str) -> reqwest::Response {
        self.c.get(url).send().await.expect("GET")
    }

    /// The status of a GET of `url`.
    pub async fn status(&self, url: &str) -> u16 {
        self.get(url).await.status().as_u16()
    }
}

impl ScenarioBuilder {
    /// Serve the fixture cache made with this compression (`xz`, `zstd`, `none`).
    pub fn cache(mut self, compression: &'static str) -> Self {
        self.cache = compression;
        self
    }

    /// Serve this folder instead (a cache the test wrote, hostile or not).
    pub fn upstream_dir(mut self, dir: &Path) -> Self {
        self.upstream_dir = Some(dir.to_path_buf());
        self
    }

    /// Start the upstream but do not point the node at it.
    pub fn without_upstream(mut self) -> Self {
        self.upstream = false;
        self
    }

    /// Add flags (after the upstream's).
    pub fn flags<S: Into<String>>(mut self, flags: impl IntoIterator<Item = S>) -> Self {
        self.flags.extend(flags.into_iter().map(Into::into));
        self
    }

    /// Start the upstream and the node.
    pub async fn start(self) -> Scenario {
        let fx = fixture();
        let cache = self.upstream_dir.unwrap_or_else(|| fx.cache(self.cache));
        let up = FakeUpstream::start(cache.clone()).await;
        let mut flags = if self.upstream { upstream_flags(&up.url(), &fx.public_key) } else { Vec::new() };
        flags.extend(self.flags);
        let node = start_node(&flags).await;
        Scenario { fx, cache, up, node, c: reqwest::Client::new() }
    }
}
