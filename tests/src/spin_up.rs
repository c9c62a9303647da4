//! A real `spin up` (the Spin CLI, 3.1 or later) of the repository's
//! `spin.toml`, running this build's composed component: the manifest's
//! variables, `allowed_outbound_hosts` templates and trigger as a user
//! runs them, Spin's own PostgreSQL, MySQL, Redis and outbound HTTP.
//!
//! The CLI is `NCPS_TEST_SPIN` when set, else `spin` on `PATH`, else the
//! workplace's `../shared/tools/spin` beside the checkout. Without one, a
//! test skips with a note, and fails under `CI=true`.

use std::collections::HashMap;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ncps_edge_test_support::{free_port, host_port, redis_addr, via, ProxyMode, StallProxy};

use crate::spin_host::{composed_component, Shared};

/// The Spin CLI, if this machine has one.
pub fn spin_binary() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("NCPS_TEST_SPIN") {
        return Some(PathBuf::from(bin));
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("spin"))
        .find(|bin| bin.is_file());
    let beside = root().parent().map(|p| p.join("shared/tools/spin")).filter(|bin| bin.is_file());
    on_path.or(beside)
}

/// The Spin CLI, or `None` after saying why the caller skips; panics
/// under CI, where a missing Spin is a failure.
pub fn spin_or_skip() -> Option<PathBuf> {
    let bin = spin_binary();
    if bin.is_none() {
        assert!(std::env::var("CI").is_err(), "no Spin CLI: put it on PATH or set NCPS_TEST_SPIN");
        eprintln!("skipped: no Spin CLI (set NCPS_TEST_SPIN or put `spin` on PATH)");
    }
    bin
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf()
}

/// `spin.toml` of the repository, its component's `source` pointing at
/// `component`.
fn manifest_for(component: &Path) -> String {
    let text = std::fs::read_to_string(root().join("spin.toml")).expect("spin.toml");
    let source = "source = \"target/spin/ncps-edge.wasm\"";
    assert!(text.contains(source), "spin.toml's component source moved");
    text.replace(source, &format!("source = {:?}", component.display().to_string()))
}

/// The host variables `allowed_outbound_hosts` is made of, derived from
/// the addresses in `variables` as a user would write them.
fn with_hosts(mut variables: HashMap<String, String>) -> HashMap<String, String> {
    let mut derive = |name: &str, from: &str, to: fn(&str) -> String| {
        if let Some(value) = variables.get(from).cloned() {
            variables.entry(name.to_owned()).or_insert_with(|| to(&value));
        }
    };
    derive("redis_host", "redis_address", host_port);
    derive("database_host", "database_url", host_port);
    derive("s3_origin", "s3_endpoint", |e| e.trim_end_matches('/').to_owned());
    derive("upstream_origin", "upstream_urls", |u| {
        let first = u.split_whitespace().next().unwrap_or_default();
        let (scheme, rest) = first.split_once("://").unwrap_or(("http", first));
        format!("{scheme}://{}", rest.split('/').next().unwrap_or(rest))
    });
    variables
}

/// A `spin up` process; killed when dropped.
pub struct SpinUp {
    child: Child,
    addr: String,
    log: PathBuf,
    dir: tempfile::TempDir,
    runtime_config: Option<String>,
}

impl SpinUp {
    /// `spin up` of `spin.toml` with these variables (as
    /// `SPIN_VARIABLE_<NAME>`; the outbound host variables are derived from
    /// the addresses unless given) on a free port; waits until it listens.
    pub async fn start(spin: &Path, variables: HashMap<String, String>) -> Self {
        Self::start_in(spin, tempfile::tempdir().expect("a folder"), variables, None).await
    }

    /// [`SpinUp::start`] with Spin's runtime config `runtime_config` (the
    /// text of a `--runtime-config-file`), kept across restarts.
    pub async fn start_with_config(spin: &Path, variables: HashMap<String, String>, runtime_config: &str) -> Self {
        let dir = tempfile::tempdir().expect("a folder");
        Self::start_in(spin, dir, variables, Some(runtime_config.to_owned())).await
    }

    /// Stop this node and start it again with `variables`, on the same
    /// folder: Spin's state (the node-local store) outlives it.
    pub async fn restart(mut self, spin: &Path, variables: HashMap<String, String>) -> Self {
        self.kill();
        let dir = tempfile::tempdir().expect("a folder");
        let dir = std::mem::replace(&mut self.dir, dir);
        Self::start_in(spin, dir, variables, self.runtime_config.take()).await
    }

    async fn start_in(
        spin: &Path,
        dir: tempfile::TempDir,
        variables: HashMap<String, String>,
        runtime_config: Option<String>,
    ) -> Self {
        let component = dir.path().join("ncps-edge.wasm");
        std::fs::write(&component, composed_component()).expect("write the component");
        let manifest = dir.path().join("spin.toml");
        std::fs::write(&manifest, manifest_for(&component)).expect("write the manifest");
        let log = dir.path().join("spin.log");
        let out = std::fs::File::create(&log).expect("the log");
        let port = free_port();
        let mut command = Command::new(spin);
        command
            .process_group(0)
            .arg("up")
            .arg("--from")
            .arg(&manifest)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .env("OTEL_SDK_DISABLED", "true")
            // Spin's working folder (`spinup-*`, left behind when it is
            // killed) goes in TMPDIR: the node's folder, removed with it.
            .env("TMPDIR", dir.path())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("the log"))
            .stderr(out);
        if let Some(config) = &runtime_config {
            let file = dir.path().join("runtime-config.toml");
            std::fs::write(&file, config).expect("write the runtime config");
            command.arg("--runtime-config-file").arg(file);
        }
        for (name, value) in with_hosts(variables) {
            command.env(format!("SPIN_VARIABLE_{}", name.to_uppercase()), value);
        }
        let child = command.spawn().expect("spawning spin up");
        let mut node = Self { child, addr: format!("127.0.0.1:{port}"), log, dir, runtime_config };
        node.wait_ready().await;
        node
    }

    /// Spin compiles the component before it listens: a while on 2 cores.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(180);
        while tokio::net::TcpStream::connect(&self.addr).await.is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("spin up exited ({status}):\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "spin up did not listen in 180 s:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The app's folder: its manifest, Spin's state (`.spin/`: the
    /// key-value store's file) and Spin's working folder (`spinup-*`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id of `spin up`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What Spin and the component wrote so far (component logs included).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for SpinUp {
    /// Kill its process group: `spin up` runs the trigger as a child
    /// process, which would outlive a killed parent (and keep its
    /// database connections).
    fn drop(&mut self) {
        self.kill();
    }
}

impl SpinUp {
    /// Kill its process group (see [`Drop`]).
    fn kill(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Proxies between a Spin node and its shared backends (database, Redis,
/// S3), each of which can stall, refuse or add latency. A proxy dropped
/// stops forwarding: keep every field for as long as the node runs.
pub struct Region {
    /// In front of the database.
    pub db: StallProxy,
    /// In front of Redis.
    pub redis: StallProxy,
    /// In front of S3.
    pub s3: StallProxy,
}

impl Region {
    /// Proxies in front of `shared`'s backends, and `vars` pointed at them.
    pub async fn between(shared: &Shared, vars: &mut HashMap<String, String>) -> Region {
        Self::away(shared, vars, Duration::ZERO).await
    }

    /// [`Region::between`], every byte `one_way` late in each direction.
    pub async fn away(shared: &Shared, vars: &mut HashMap<String, String>, one_way: Duration) -> Region {
        let region = Region {
            db: StallProxy::with_delay(&host_port(&shared.db), one_way).await,
            redis: StallProxy::with_delay(&redis_addr(), one_way).await,
            s3: StallProxy::with_delay(&host_port(&shared.bucket.endpoint), one_way).await,
        };
        vars.insert("database_url".into(), via(&vars["database_url"], &region.db.addr()));
        vars.insert("redis_address".into(), format!("redis://{}", region.redis.addr()));
        vars.insert("s3_endpoint".into(), via(&vars["s3_endpoint"], &region.s3.addr()));
        region
    }

    /// Every proxy in `mode`.
    pub fn set(&self, mode: ProxyMode) {
        [&self.db, &self.redis, &self.s3].iter().for_each(|p| p.set(mode));
    }
}
