//! Private Redis servers for tests that kill and restart one.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private Redis server on its own port; killed when dropped.
pub struct PrivateRedis {
    /// Its port.
    pub port: u16,
    extra: Vec<String>,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Start one on a free port.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Start one on a free port with extra `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        let mut r =
            Self { port: crate::free_port(), extra: extra.iter().map(|s| s.to_string()).collect(), child: None };
        r.restart();
        r
    }

    /// Start one that speaks only TLS on its port, with `cert`/`key` signed
    /// by `ca` (clients need no certificate of their own), and `extra`
    /// `redis-server` arguments.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path, ca: &std::path::Path, extra: &[&str]) -> Self {
        let port = crate::free_port();
        let mut args: Vec<String> = vec!["--port".into(), "0".into(), "--tls-port".into(), port.to_string()];
        for (flag, path) in [("--tls-cert-file", cert), ("--tls-key-file", key), ("--tls-ca-cert-file", ca)] {
            args.extend([flag.to_owned(), path.display().to_string()]);
        }
        args.extend(["--tls-auth-clients".into(), "no".into()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut r = Self { port, extra: args, child: None };
        r.restart();
        r
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kill it (as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port and wait until it accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(self.addr()).is_err() {
            assert!(Instant::now() < deadline, "private Redis did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
