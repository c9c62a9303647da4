//! A TCP proxy a test controls, in front of a real server. It forwards
//! until told otherwise, then either holds every byte in both directions
//! without closing anything (a network that drops packets), or closes what
//! is open and answers every new HTTP request with `503` (a server in
//! trouble), until told to forward again. It may also add a fixed latency.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward.
    Pass,
    /// Hold every byte, close nothing.
    Stall,
    /// Close open connections; answer new requests `503 Service Unavailable`.
    Fail,
    /// Close open connections; reset new ones at once (a server that is
    /// down, for clients that do not speak HTTP).
    Refuse,
}

impl Mode {
    /// Whether connections are closed in this mode.
    fn closes(self) -> bool {
        matches!(self, Mode::Fail | Mode::Refuse)
    }
}

/// A controllable TCP proxy in front of `target`.
pub struct StallProxy {
    /// Its port on loopback.
    pub port: u16,
    mode: Arc<watch::Sender<Mode>>,
    accepted: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Wait until traffic may flow; false when the connection must close.
async fn flowing(rx: &mut watch::Receiver<Mode>) -> bool {
    loop {
        match *rx.borrow_and_update() {
            Mode::Pass => return true,
            Mode::Fail | Mode::Refuse => return false,
            Mode::Stall => {}
        }
        if rx.changed().await.is_err() {
            return false;
        }
    }
}

/// Whether `bytes` begin with an HTTP/1 request line (`GET /… HTTP/1.1`).
fn starts_request(bytes: &[u8]) -> bool {
    let line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    let method = line.split(|b| *b == b' ').next().unwrap_or_default();
    !method.is_empty() && method.iter().all(u8::is_ascii_uppercase) && line.windows(7).any(|w| w == b"HTTP/1.")
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    delay: Duration,
    requests: Option<Arc<AtomicUsize>>,
) {
    // Bytes read are handed to the writer with the time they may leave, so
    // a delay adds latency without limiting throughput.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let mut writer_mode = mode.clone();
    let writer = tokio::spawn(async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            // Bytes that arrived during a stall are held until it ends.
            if !flowing(&mut writer_mode).await || to.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !flowing(&mut mode).await {
            break;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = mode.wait_for(|m| m.closes()) => break,
        };
        if let Some(requests) = requests.as_ref().filter(|_| starts_request(&buf[..n])) {
            requests.fetch_add(1, Ordering::Relaxed);
        }
        if tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// Answer one HTTP request with 503 and close.
async fn refuse(mut client: TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let body = "<Error><Code>ServiceUnavailable</Code><Message>injected by the test</Message></Error>";
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(answer.as_bytes()).await;
    let _ = client.shutdown().await;
}

impl StallProxy {
    /// Forward a free loopback port to `target` (`host:port`).
    pub async fn start(target: &str) -> Self {
        Self::with_delay(target, Duration::ZERO).await
    }

    /// Forward a free loopback port to `target`, every byte `one_way` late
    /// in each direction: a network `2 * one_way` of round-trip time away.
    pub async fn with_delay(target: &str, one_way: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (tx, rx) = watch::channel(Mode::Pass);
        let target = target.to_owned();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        let requests = Arc::new(AtomicUsize::new(0));
        let requested = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::Relaxed);
                match *rx.borrow() {
                    Mode::Fail => {
                        tokio::spawn(refuse(client));
                        continue;
                    }
                    Mode::Refuse => {
                        // A reset, not an orderly close.
                        let _ = client.set_zero_linger();
                        continue;
                    }
                    Mode::Pass | Mode::Stall => {}
                }
                let Ok(server) = TcpStream::connect(&target).await else { continue };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, rx.clone(), one_way, Some(requested.clone())));
                tokio::spawn(pump(sr, cw, rx.clone(), one_way, None));
            }
        });
        Self { port, mode: Arc::new(tx), accepted, requests, task }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// HTTP/1 requests forwarded so far: reads from a client that begin
    /// with a request line, which counts every request of a client that
    /// waits for each answer before it sends the next (no pipelining).
    pub fn http_requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Switch to `mode`.
    pub fn set(&self, mode: Mode) {
        let _ = self.mode.send(mode);
    }

    /// Stop forwarding (nothing is closed).
    pub fn stall(&self) {
        self.set(Mode::Stall);
    }

    /// Forward again, held bytes first.
    pub fn resume(&self) {
        self.set(Mode::Pass);
    }
}

#[cfg(test)]
mod tests {
    use super::starts_request;

    #[test]
    fn a_request_line_starts_a_request() {
        assert!(starts_request(b"GET /bucket/nar/x HTTP/1.1\r\nhost: a\r\n\r\n"));
        assert!(starts_request(b"HEAD / HTTP/1.1\r\n"));
        assert!(!starts_request(b"HTTP/1.1 200 OK\r\n"));
        assert!(!starts_request(b"\x00\x01 body bytes"));
        assert!(!starts_request(b""));
    }
}
