//! `ncps-edge serve` as a real process, for tests that kill a node.
//!
//! The binary is the one cargo builds for the runtime's own integration
//! tests (`target/<profile>/ncps-edge`), so it exists before any test runs.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `ncps-edge` binary: `NCPS_EDGE_BIN` when set, else the one next to
/// this test executable.
pub fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("NCPS_EDGE_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("test executable");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    let bin = profile_dir.join("ncps-edge");
    assert!(bin.exists(), "{} missing: run the tests with `cargo test --workspace`", bin.display());
    bin
}

/// The resident memory of process `pid`, bytes (none when it is gone).
pub fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// A running node process; killed with SIGKILL when dropped. It runs in a
/// working folder of its own, as a node on its own machine would: what it
/// keeps by default (`./ncps-edge-data`: its local-disk tier, compiled
/// code) is its own and never lands in the checkout.
pub struct NodeProcess {
    child: Child,
    /// `http://127.0.0.1:port`.
    pub url: String,
    port: u16,
    flags: Vec<String>,
    log: std::path::PathBuf,
    /// The working folder (kept across restarts).
    pub cwd: tempfile::TempDir,
}

fn launch(port: u16, flags: &[String], log: &std::path::Path, cwd: &std::path::Path) -> Child {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let child = Command::new(binary())
        .current_dir(cwd)
        .arg("serve")
        .arg(format!("--server-addr=127.0.0.1:{port}"))
        .args(flags)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawning ncps-edge");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "node did not start; see {}", log.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

impl NodeProcess {
    /// Start `ncps-edge serve` with `flags` on a free port; its JSON log
    /// goes to `log`. Waits until it accepts connections.
    pub fn spawn(flags: &[String], log: &std::path::Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cwd = tempfile::tempdir().unwrap();
        let child = launch(port, flags, log, cwd.path());
        Self { child, url: format!("http://127.0.0.1:{port}"), port, flags: flags.to_vec(), log: log.to_owned(), cwd }
    }

    /// Start it again on the same port with the same flags (after a kill).
    pub fn restart(&mut self) {
        self.kill();
        self.child = launch(self.port, &self.flags, &self.log, self.cwd.path());
    }

    /// What it logged so far (every start).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send `signal` (`TERM`, `STOP`, `CONT`, …) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{signal} failed");
    }

    /// Wait up to `within` for the process to exit; its exit status.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
