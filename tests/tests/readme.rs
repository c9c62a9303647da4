//! The README's commands, run as a user would type them: every fenced block
//! marked `readme-test:<name>` is executed as written, from an empty
//! folder, with only the upstream and the servers' addresses swapped for
//! the test's own; the real `nix` then substitutes through the node.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ncps_edge_test_support::{fresh_bucket, fresh_mysql, fresh_postgres, PrivateRedis};
use ncps_edge_tests::fixture::fixture;
use ncps_edge_tests::nix::NixEnv;
use ncps_edge_tests::upstream::FakeUpstream;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// The block marked `readme-test:<name>`.
fn block(name: &str) -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme.find(&format!("```sh readme-test:{name}\n")).unwrap_or_else(|| panic!("no block {name}"));
    let body = &readme[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("```").unwrap()].to_owned()
}

/// `text` with each `(from, to)` swapped; every `from` must occur.
fn swap(text: &str, swaps: &[(&str, String)]) -> String {
    swaps.iter().fold(text.to_owned(), |t, (from, to)| {
        assert!(t.contains(from), "the README no longer has {from:?} in:\n{text}");
        t.replace(from, to)
    })
}

/// Where `cargo install` put the binary, installed once per test process by
/// the README's own install command (removed when the process exits).
fn installed() -> &'static Path {
    static ROOT: std::sync::OnceLock<&'static Path> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let root = ncps_edge_test_support::until_exit(tempfile::tempdir().unwrap());
        // The workspace's target folder (so a release build made before the
        // tests is reused); the install root keeps ~/.cargo/bin clean.
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().to_owned();
        let mut install = Command::new("sh");
        // As typed in a shell: without the variables `cargo test` sets for
        // this test (build scripts rerun when those change).
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(|n| n.starts_with("CARGO_") && n != "CARGO_HOME") {
                install.env_remove(name);
            }
        }
        let out = install
            .arg("-c")
            .arg(block("install"))
            .current_dir(repo())
            .env("CARGO_TARGET_DIR", target)
            .env("CARGO_INSTALL_ROOT", root)
            .output()
            .unwrap();
        assert!(out.status.success(), "the README's install command failed:\n{}", String::from_utf8_lossy(&out.stderr));
        root
    })
}

fn path_with_install() -> String {
    format!("{}:{}", installed().join("bin").display(), std::env::var("PATH").unwrap_or_default())
}

/// A README command running in an empty folder; SIGTERM when dropped.
struct Running {
    child: Child,
    dir: tempfile::TempDir,
}

impl Running {
    fn start(command: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("node.log")).unwrap();
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("exec {command}"))
            .current_dir(dir.path())
            .env("PATH", path_with_install())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut running = Self { child, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", 8501)).is_err() {
            if let Ok(Some(status)) = running.child.try_wait() {
                panic!("{command}\nexited with {status}:\n{}", running.log());
            }
            assert!(Instant::now() < deadline, "{command}\nnever listened:\n{}", running.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        running
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    /// SIGTERM, and wait for a clean exit.
    fn stop(mut self) -> String {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "exited with {status}:\n{}", self.log());
                return self.log();
            }
            assert!(Instant::now() < deadline, "did not stop:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The README's pubkey command, then the real nix substituting a closure
/// through the node, trusting only that key.
fn substitute_through_the_node() {
    let fx = fixture();
    let out = Command::new("sh").arg("-c").arg(block("pubkey")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(key.starts_with("cache.example.org-1:"), "{key}");
    let env = NixEnv::new();
    let store = env.path("store").display().to_string();
    let copy = env.try_run(
        "nix",
        &["copy", "--from", "http://127.0.0.1:8501", "--to", &store, "--option", "trusted-public-keys", &key, &fx.top],
    );
    assert!(copy.status.success(), "{}", String::from_utf8_lossy(&copy.stderr));
    for p in [&fx.top, &fx.mid, &fx.leaf] {
        assert_eq!(env.dump_hash(&env.path("store"), p), fx.env.dump_hash(&fx.store, p), "{p}");
    }
}

fn upstream_swaps(up: &FakeUpstream) -> Vec<(&'static str, String)> {
    vec![
        ("https://cache.nixos.org", up.url()),
        ("cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=", fixture().public_key.clone()),
    ]
}

/// All README nodes listen on the default port: one at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_commands_work_as_typed() {
    let fx = fixture();
    let up = FakeUpstream::start(fx.cache("xz")).await;
    tokio::task::block_in_place(installed);

    // The embedded default: SQLite and local disk under ./ncps-edge-data.
    let node = tokio::task::block_in_place(|| Running::start(&swap(&block("run"), &upstream_swaps(&up))));
    tokio::task::block_in_place(substitute_through_the_node);
    assert!(node.dir.path().join("ncps-edge-data/db/db.sqlite").exists(), "not under ./ncps-edge-data");
    tokio::task::block_in_place(|| node.stop());

    // The HA command lines, on the test's servers.
    for variant in ["ha-redis", "ha-postgres", "ha-mysql"] {
        let bucket = fresh_bucket().await;
        let database = match variant {
            "ha-mysql" => ("mysql://ncps:secret@db:3306/ncps", fresh_mysql().await),
            _ => ("postgresql://ncps:secret@db:5432/ncps", fresh_postgres().await),
        };
        let redis = [PrivateRedis::start(), PrivateRedis::start(), PrivateRedis::start()];
        let mut swaps = upstream_swaps(&up);
        swaps.extend([
            (database.0, database.1),
            ("https://s3.example.org", bucket.endpoint.clone()),
            ("--cache-storage-s3-bucket=ncps-cache", format!("--cache-storage-s3-bucket={}", bucket.bucket)),
            ("--cache-storage-s3-access-key-id=AK", format!("--cache-storage-s3-access-key-id={}", bucket.access_key)),
            (
                "--cache-storage-s3-secret-access-key=SK",
                format!("--cache-storage-s3-secret-access-key={}", bucket.secret_key),
            ),
        ]);
        if variant == "ha-redis" {
            let addrs: Vec<String> = redis.iter().map(|r| r.addr()).collect();
            swaps.push(("redis-a:6379,redis-b:6379,redis-c:6379", addrs.join(",")));
        }
        let node = tokio::task::block_in_place(|| Running::start(&swap(&block(variant), &swaps)));
        tokio::task::block_in_place(substitute_through_the_node);
        let listed = bucket.client().list_objects_v2().bucket(&bucket.bucket).send().await.unwrap();
        assert_eq!(listed.key_count(), Some(3), "{variant}: the closure's NARs are not in the bucket");
        tokio::task::block_in_place(|| node.stop());
    }
}

#[test]
fn readme_tool_commands_work_as_typed() {
    installed();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(repo().join("deploy/config.example.yaml"), dir.path().join("config.yaml")).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(block("tools"))
        .current_dir(dir.path())
        .env("PATH", path_with_install())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("# configuration is valid") && stdout.contains("handler sha256:"), "{stdout}");
    assert!(dir.path().join("sk").exists() && dir.path().join("pk").exists());
}
