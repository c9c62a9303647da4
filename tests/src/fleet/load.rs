//! `wrk` load through a fleet: warm narinfo hits at single nodes (a near
//! and a far native node, the first Spin node), then a burst of misses at
//! every node at once, while the fleet's database connections are sampled.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::run::statements_of;
use super::Fleet;

/// The script every `wrk` of the harness runs (`wrk.lua`: random misses
/// or the given URL, answers counted by kind).
const SCRIPT: &str = include_str!("wrk.lua");

/// Connections of each warm-hit run (`wrk -c`).
pub const HIT_CONNECTIONS: usize = 16;

/// Connections per node of the miss burst (`wrk -c`).
pub const MISS_CLIENTS_PER_NODE: usize = 2;

/// What one `wrk` run counted.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counted {
    /// Seconds it ran.
    pub seconds: f64,
    /// 99th percentile of its latencies, ms.
    pub p99_ms: f64,
    /// Connect, read, write and timeout errors.
    pub socket_errors: u64,
    /// 200 answers.
    pub ok: u64,
    /// 404 answers.
    pub absent: u64,
    /// 5xx answers.
    pub server_errors: u64,
    /// Any other status.
    pub other: u64,
}

impl Counted {
    /// Answers of any kind.
    pub fn answers(&self) -> u64 {
        self.ok + self.absent + self.server_errors + self.other
    }

    /// Answers per second.
    pub fn per_s(&self) -> f64 {
        self.answers() as f64 / self.seconds.max(f64::EPSILON)
    }

    fn add(&mut self, other: &Counted) {
        self.seconds = self.seconds.max(other.seconds);
        self.p99_ms = self.p99_ms.max(other.p99_ms);
        self.socket_errors += other.socket_errors;
        self.ok += other.ok;
        self.absent += other.absent;
        self.server_errors += other.server_errors;
        self.other += other.other;
    }

    /// The script's last line: `fleet-wrk seconds=… p99_ms=… ok=… …`.
    fn parse(out: &str) -> Option<Counted> {
        let line = out.lines().find_map(|l| l.strip_prefix("fleet-wrk "))?;
        let mut c = Counted::default();
        for field in line.split_whitespace() {
            let (name, value) = field.split_once('=')?;
            match name {
                "seconds" => c.seconds = value.parse().ok()?,
                "p99_ms" => c.p99_ms = value.parse().ok()?,
                "socket_errors" => c.socket_errors = value.parse().ok()?,
                "ok" => c.ok = value.parse().ok()?,
                "absent" => c.absent = value.parse().ok()?,
                "server_errors" => c.server_errors = value.parse().ok()?,
                "other" => c.other = value.parse().ok()?,
                _ => {}
            }
        }
        Some(c)
    }
}

/// Warm hits at one node under `wrk`.
#[derive(Debug, Clone)]
pub struct HitLoad {
    /// Which node: "near", "far", "Spin", and its index.
    pub node: (&'static str, usize),
    /// What `wrk` counted.
    pub counted: Counted,
}

/// What the load phase measured.
#[derive(Debug, Default, Clone)]
pub struct Load {
    /// Warm narinfo hits, one node at a time.
    pub hits: Vec<HitLoad>,
    /// The miss burst: every node at once, answers summed (its seconds
    /// and p99: the largest of any node's).
    pub misses: Counted,
    /// Clients of the miss burst in all.
    pub miss_clients: usize,
    /// Most connections to the fleet's database seen during the burst.
    pub miss_peak_connections: i64,
    /// Statements per answer of the burst (a narinfo no upstream has),
    /// idle traffic taken off.
    pub statements_per_absent: Option<f64>,
}

/// The `wrk` to run: `NCPS_TEST_WRK`, else `wrk` on `PATH`; none (a
/// skipped load phase) outside CI, a failure in CI.
pub fn wrk_binary() -> Option<String> {
    let bin = std::env::var("NCPS_TEST_WRK").unwrap_or_else(|_| "wrk".into());
    let found = std::process::Command::new(&bin).arg("-v").output().is_ok();
    if !found {
        assert!(std::env::var("CI").is_err(), "no wrk: install Debian's wrk or set NCPS_TEST_WRK");
        eprintln!("load phase skipped: no wrk (install Debian's wrk or set NCPS_TEST_WRK)");
    }
    found.then_some(bin)
}

/// `wrk` with `connections` at `url` for `seconds`, random misses when
/// `miss` (seeded by `seed`).
async fn wrk(
    bin: &str,
    script: &Path,
    url: &str,
    connections: usize,
    seconds: u64,
    miss: bool,
    seed: usize,
) -> Counted {
    let out = tokio::process::Command::new(bin)
        .args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s"), "--latency", "-s"])
        .arg(script)
        .arg(url)
        .env("NCPS_WRK_MISS", if miss { "1" } else { "0" })
        .env("NCPS_WRK_SEED", seed.to_string())
        .output()
        .await
        .expect("wrk runs");
    let text = String::from_utf8_lossy(&out.stdout);
    Counted::parse(&text).unwrap_or_else(|| panic!("wrk at {url} counted nothing: {text}"))
}

/// The most connections to the fleet's database while `work` runs, held
/// across two readings in a row. A pool closes a connection it dropped in
/// a task of its own (mysql_async does), so the server can list it for a
/// moment after the pool has opened its replacement; what a node holds
/// lasts longer than that.
pub(crate) async fn peak_connections_during<T>(fleet: &Fleet, work: impl std::future::Future<Output = T>) -> (T, i64) {
    let peak = Arc::new(AtomicI64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling, database) = (peak.clone(), sampling.clone(), fleet.database.clone());
        let watcher = fleet.watcher.clone();
        tokio::spawn(async move {
            let mut last = 0;
            while sampling.load(Ordering::Acquire) {
                let now = watcher.lock().await.connections(&database).await;
                peak.fetch_max(now.min(last), Ordering::AcqRel);
                last = now;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let out = work.await;
    sampling.store(false, Ordering::Release);
    sampler.await.expect("the sampler ends");
    (out, peak.load(Ordering::Acquire))
}

/// Drive `fleet` with `wrk`: `path` (a warm narinfo) at a near, a far and
/// a Spin node for `seconds` each with [`HIT_CONNECTIONS`], then random
/// misses at every node at once.
pub async fn load(fleet: &Fleet, bin: &str, path: &str, seconds: u64, idle: Option<f64>) -> Load {
    let script = fleet.dir.path().join("wrk.lua");
    std::fs::write(&script, SCRIPT).expect("the wrk script written");
    let n = fleet.nodes.len();
    let spin = fleet.nodes.iter().position(|m| m.is_spin());
    let picks = [("near", Some(0)), ("far", (3..n).find(|i| super::is_far(*i) && Some(*i) != spin)), ("Spin", spin)];
    let mut report = Load::default();
    for (kind, node) in picks {
        let Some(i) = node else { continue };
        let url = format!("{}{path}", fleet.nodes[i].url());
        let counted = wrk(bin, &script, &url, HIT_CONNECTIONS, seconds, false, i).await;
        report.hits.push(HitLoad { node: (kind, i), counted });
    }
    report.miss_clients = n * MISS_CLIENTS_PER_NODE;
    let urls: Vec<String> = fleet.nodes.iter().map(|m| m.url()).collect();
    let burst = futures_util::future::join_all(
        urls.iter().enumerate().map(|(i, url)| wrk(bin, &script, url, MISS_CLIENTS_PER_NODE, seconds, true, i)),
    );
    let ((each, peak), spent) = statements_of(fleet, idle, peak_connections_during(fleet, burst)).await;
    for c in &each {
        report.misses.add(c);
    }
    report.miss_peak_connections = peak;
    report.statements_per_absent = spent.map(|spent| spent / report.misses.answers().max(1) as f64);
    report
}
