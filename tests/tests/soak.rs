//! A soak under faults: three `ncps-edge` processes sharing a lock backend,
//! a database and an S3 bucket serve a few hundred concurrent clients
//! (narinfo and NAR hits and cold misses over a few hundred store paths,
//! some clients hanging up mid-body) while a node is killed and restarted,
//! the lock service goes away and comes back, and S3 answers 503 and then
//! hangs. Afterwards: every completed body was right, no path was fetched
//! twice outside a fault, no 5xx outside an outage, no lock or unfinished
//! upload left behind (but one the killed node had not yet named by a
//! marker, which s3s-fs cannot list), and each node's memory stayed
//! bounded.
//!
//! `NCPS_SOAK_SECONDS` sets the length of each run (60 by default;
//! `bench/soak.sh` runs a long one).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use ncps_edge_test_support::{
    fresh_mysql, fresh_postgres, host_port, via, PrivateRedis, PrivateS3, ProxyMode, StallProxy,
};
use ncps_edge_tests::fixture::{fixture, hash_of, soak_fixture};
use ncps_edge_tests::node::upstream_flags;
use ncps_edge_tests::process::{self, NodeProcess};
use ncps_edge_tests::upstream::FakeUpstream;
use sha2::{Digest, Sha256};

/// One soak at a time: each runs three nodes and hundreds of clients.
static SERIAL: LazyLock<tokio::sync::Mutex<()>> = LazyLock::new(|| tokio::sync::Mutex::new(()));

const CLIENTS: usize = 200;
const LEASE: Duration = Duration::from_secs(5);
/// A node's resident memory must stay below this.
const RSS_BOUND_MB: u64 = 1024;

fn seconds() -> u64 {
    std::env::var("NCPS_SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60)
}

/// What one request came to.
#[derive(Debug, Clone)]
struct Outcome {
    /// When the request ended.
    at: Instant,
    node: usize,
    nar: bool,
    /// None: the connection was refused (no node listening).
    status: Option<u16>,
    /// The body broke, or was not what the path should have.
    broken: bool,
    wrong: bool,
    dropped: bool,
}

/// A stretch of time in which failures are expected, and after which their
/// consequences may last `tail`.
#[derive(Debug, Clone)]
struct Fault {
    what: &'static str,
    from: Instant,
    to: Instant,
}

fn during(faults: &[Fault], at: Instant, tail: Duration) -> bool {
    faults.iter().any(|f| at >= f.from && at <= f.to + tail)
}

/// Each path: its narinfo line and the sha256 of its NAR file.
struct Expected {
    hash: String,
    nar_url: String,
    nar_sha256: String,
}

fn expected() -> Vec<Expected> {
    let sfx = soak_fixture();
    sfx.paths
        .iter()
        .map(|p| {
            let hash = hash_of(p).to_owned();
            let text = std::fs::read_to_string(sfx.cache.join(format!("{hash}.narinfo"))).unwrap();
            let url = text.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap().to_owned();
            let bytes = std::fs::read(sfx.cache.join(&url)).unwrap();
            Expected { hash, nar_url: format!("/{url}"), nar_sha256: format!("{:x}", Sha256::digest(&bytes)) }
        })
        .collect()
}

/// A request that got no answer: refused (`None`: no node listening), or
/// cut before its head (`Some(0)`: a node that answers but whose answer
/// broke, as a body cut by a backend failing under it; counted as broken).
fn refused_or_cut(e: &reqwest::Error) -> Option<u16> {
    if e.is_connect() {
        None
    } else {
        Some(0)
    }
}

async fn client(
    c: reqwest::Client,
    urls: Arc<Vec<String>>,
    paths: Arc<Vec<Expected>>,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> Vec<Outcome> {
    let mut out = Vec::new();
    let mut n = seed;
    while !stop.load(Ordering::Relaxed) {
        n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let (node, p) = ((n >> 33) as usize % urls.len(), &paths[(n >> 40) as usize % paths.len()]);
        let drop_mid_body = (n >> 20).is_multiple_of(20);
        let outcome = |status, broken, wrong, nar, dropped| Outcome {
            at: Instant::now(),
            node,
            nar,
            status,
            broken,
            wrong,
            dropped,
        };
        let resp = match c.get(format!("{}/{}.narinfo", urls[node], p.hash)).send().await {
            Ok(resp) => resp,
            Err(e) => {
                out.push(outcome(refused_or_cut(&e), true, false, false, false));
                continue;
            }
        };
        let status = resp.status().as_u16();
        match resp.text().await {
            Ok(body) => out.push(outcome(Some(status), false, status == 200 && !body.contains(&p.hash), false, false)),
            Err(_) => out.push(outcome(Some(status), true, false, false, false)),
        }
        if status != 200 {
            continue;
        }
        let outcome = |status, broken, wrong, dropped| Outcome {
            at: Instant::now(),
            node,
            nar: true,
            status,
            broken,
            wrong,
            dropped,
        };
        let resp = match c.get(format!("{}{}", urls[node], p.nar_url)).send().await {
            Ok(resp) => resp,
            Err(e) => {
                out.push(outcome(refused_or_cut(&e), true, false, false));
                continue;
            }
        };
        let status = resp.status().as_u16();
        let mut body = resp.bytes_stream();
        let (mut hasher, mut broken, mut got) = (Sha256::new(), false, 0usize);
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(bytes) => {
                    got += bytes.len();
                    hasher.update(&bytes);
                }
                Err(_) => {
                    broken = true;
                    break;
                }
            }
            if drop_mid_body && got > 0 {
                break;
            }
        }
        let dropped = drop_mid_body && got > 0;
        let wrong = status == 200 && !broken && !dropped && format!("{:x}", hasher.finalize()) != p.nar_sha256;
        out.push(outcome(Some(status), broken, wrong, dropped));
    }
    out
}

/// The NAR file hashes whose download lock a node logged as lost, in the
/// node logs under `dir`.
fn lost_download_leases(dir: &std::path::Path) -> Vec<String> {
    let logs = std::fs::read_dir(dir).into_iter().flatten().flatten();
    let lines: Vec<String> = logs
        .flat_map(|f| {
            std::fs::read_to_string(f.path()).unwrap_or_default().lines().map(str::to_owned).collect::<Vec<_>>()
        })
        .collect();
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["message"] == "lease lost")
        .filter_map(|l| l["lock_key"].as_str()?.strip_prefix("download:nar:").map(str::to_owned))
        .collect()
}

fn rss_mb(pid: u32) -> u64 {
    process::rss(pid).map_or(0, |bytes| bytes >> 20)
}

fn shell(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn soak(backend: &str) {
    let _one_at_a_time = SERIAL.lock().await;
    let (fx, paths) = (fixture(), Arc::new(expected()));
    let up = FakeUpstream::start(soak_fixture().cache.clone()).await;
    let s3 = PrivateS3::start();
    let bucket = s3.bucket().await;
    let s3_proxy = StallProxy::start(&host_port(&s3.endpoint)).await;
    let mut routed = bucket.clone();
    routed.endpoint = via(&bucket.endpoint, &s3_proxy.addr());
    let mut redis = (backend == "redis").then(PrivateRedis::start);
    let db = match backend {
        "mysql" => fresh_mysql().await,
        _ => fresh_postgres().await,
    };
    let db_name = db.rsplit('/').next().unwrap().to_owned();
    let mut flags = upstream_flags(&up.url(), &fx.public_key);
    flags.extend(routed.flags());
    flags.extend([
        "--cache-hostname=soak".to_string(),
        format!("--cache-database-url={db}"),
        format!("--cache-lock-download-lease={}s", LEASE.as_secs()),
        "--cache-lock-heartbeat-interval=1s".into(),
        "--cache-lock-retry-initial-delay=20ms".into(),
        "--log-level=warn".into(),
        format!("--wasm-cache-dir={}", std::env::temp_dir().join("ncps-edge-test-wasm-cache").display()),
    ]);
    match &redis {
        Some(r) => flags.push(format!("--cache-redis-addrs={}", r.addr())),
        None => flags.push(format!("--cache-lock-backend={backend}")),
    }
    let logs = tempfile::tempdir().unwrap();
    let nodes: Vec<NodeProcess> =
        (0..3).map(|i| NodeProcess::spawn(&flags, &logs.path().join(format!("node{i}.log")))).collect();
    let urls = Arc::new(nodes.iter().map(|n| n.url.clone()).collect::<Vec<_>>());
    let nodes = Arc::new(Mutex::new(nodes));
    // Pooled connections are dropped before the node's idle timeout (10 s)
    // could close them under a request, as any well-behaved client does.
    let c = reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(5)).build().unwrap();
    let (stop, started, d) = (Arc::new(AtomicBool::new(false)), Instant::now(), Duration::from_secs(seconds()));
    // Memory of every node, sampled each second.
    let rss_peak = Arc::new(Mutex::new(vec![0u64; 3]));
    let sampler = {
        let (nodes, peak, stop) = (nodes.clone(), rss_peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                {
                    let pids: Vec<u32> = nodes.lock().unwrap().iter().map(|n| n.pid()).collect();
                    let mut peak = peak.lock().unwrap();
                    for (i, pid) in pids.into_iter().enumerate() {
                        peak[i] = peak[i].max(rss_mb(pid));
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(client(c.clone(), urls.clone(), paths.clone(), stop.clone(), i as u64 * 7919 + 1)))
        .collect();
    // The faults, at fixed fractions of the run.
    let at = |fraction: f64| started + d.mul_f64(fraction);
    let wait_until = |t: Instant| tokio::time::sleep_until(t.into());
    let mut faults = Vec::new();
    wait_until(at(0.12)).await;
    let from = Instant::now();
    let killed_at = std::time::SystemTime::now();
    tokio::task::block_in_place(|| nodes.lock().unwrap()[1].kill());
    wait_until(at(0.22)).await;
    tokio::task::block_in_place(|| nodes.lock().unwrap()[1].restart());
    faults.push(Fault { what: "node killed", from, to: Instant::now() + LEASE });
    wait_until(at(0.32)).await;
    let from = Instant::now();
    match (&mut redis, backend) {
        (Some(r), _) => {
            r.kill();
            wait_until(at(0.40)).await;
            tokio::task::block_in_place(|| r.restart());
        }
        (None, "postgres") => {
            // Every session of the database ends, as in a server restart.
            let kill =
                format!("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{db_name}'");
            shell("psql", &[&format!("{}/postgres", ncps_edge_test_support::postgres_url()), "-c", &kill]);
            wait_until(at(0.40)).await;
            shell("psql", &[&format!("{}/postgres", ncps_edge_test_support::postgres_url()), "-c", &kill]);
        }
        _ => {
            let kill_all = || {
                let ids = shell(
                    "mariadb",
                    &[
                        "-h",
                        "127.0.0.1",
                        "-u",
                        "root",
                        "-N",
                        "-e",
                        &format!("SELECT id FROM information_schema.PROCESSLIST WHERE DB = '{db_name}'"),
                    ],
                );
                for id in ids.lines() {
                    let _ = std::process::Command::new("mariadb")
                        .args(["-h", "127.0.0.1", "-u", "root", "-e", &format!("KILL {id}")])
                        .output();
                }
            };
            kill_all();
            wait_until(at(0.40)).await;
            kill_all();
        }
    }
    faults.push(Fault { what: "lock service restarted", from, to: Instant::now() + LEASE });
    wait_until(at(0.50)).await;
    let from = Instant::now();
    s3_proxy.set(ProxyMode::Fail);
    wait_until(at(0.58)).await;
    s3_proxy.set(ProxyMode::Pass);
    faults.push(Fault { what: "S3 answered 503", from, to: Instant::now() });
    wait_until(at(0.66)).await;
    let from = Instant::now();
    s3_proxy.stall();
    wait_until(at(0.74)).await;
    s3_proxy.resume();
    faults.push(Fault { what: "S3 hung", from, to: Instant::now() });
    wait_until(at(1.0)).await;
    stop.store(true, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for client in clients {
        outcomes.extend(client.await.unwrap());
    }
    sampler.await.unwrap();

    // Stop the nodes the way an operator would, then look for leftovers.
    tokio::time::sleep(LEASE + Duration::from_secs(1)).await;
    {
        let mut nodes = nodes.lock().unwrap();
        for n in nodes.iter() {
            n.signal("TERM");
        }
        for n in nodes.iter_mut() {
            let status = tokio::task::block_in_place(|| n.wait_exit(Duration::from_secs(60)));
            assert!(status.is_some_and(|s| s.success()), "{backend}: a node did not stop cleanly: {status:?}");
        }
    }
    let tail = Duration::from_secs(5);
    let total = outcomes.len();
    let count = |f: &dyn Fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    let wrong = count(&|o| o.wrong);
    let refused = count(&|o| o.status.is_none());
    let refused_outside = count(&|o| o.status.is_none() && !(o.node == 1 && during(&faults[..1], o.at, tail)));
    let server_errors = count(&|o| o.status.is_some_and(|s| s >= 500));
    let server_errors_outside = count(&|o| o.status.is_some_and(|s| s >= 500) && !during(&faults, o.at, tail));
    let broken = count(&|o| o.broken);
    let broken_outside = count(&|o| o.broken && !during(&faults, o.at, tail));
    let dropped = count(&|o| o.dropped);
    let completed_nars = count(&|o| o.nar && o.status == Some(200) && !o.broken && !o.dropped);
    let mut fetches = 0;
    let mut doubled = Vec::new();
    // A download whose holder could not renew its lease in time (a node
    // starved of CPU on this 2-core machine) is taken over by another node,
    // by design: its second fetch is a fault of its own, which the holder
    // logs ("lease lost" on the download lock of that NAR).
    let lost = lost_download_leases(logs.path());
    for p in paths.iter() {
        let times = up.hit_times(&p.nar_url);
        fetches += times.len();
        let file_hash = p.nar_url.trim_start_matches("/nar/").split('.').next().unwrap_or_default();
        if lost.iter().any(|h| h == file_hash) {
            eprintln!("lease lost on the download of {}: fetched {} times", p.nar_url, times.len());
            continue;
        }
        if times.iter().skip(1).any(|t| !during(&faults, *t, tail + LEASE)) {
            let at: Vec<Duration> = times.iter().map(|t| t.saturating_duration_since(started)).collect();
            doubled.push((p.hash.clone(), at));
        }
    }
    let peak = rss_peak.lock().unwrap().clone();
    let mut per_path: Vec<usize> = paths.iter().map(|p| up.hit_times(&p.nar_url).len()).collect();
    per_path.sort();
    eprintln!(
        "fetches per path: min {} median {} max {}",
        per_path[0],
        per_path[per_path.len() / 2],
        per_path[per_path.len() - 1]
    );
    for o in
        outcomes.iter().filter(|o| o.status.is_none() && !(o.node == 1 && during(&faults[..1], o.at, tail))).take(5)
    {
        eprintln!("refused: node {} at {:?}", o.node, o.at - started);
    }
    for f in &faults {
        eprintln!("fault {} from {:?} to {:?}", f.what, f.from - started, f.to - started);
    }
    for o in outcomes.iter().filter(|o| o.status.is_some_and(|s| s >= 500) && !during(&faults, o.at, tail)).take(5) {
        eprintln!("5xx outside: {:?} node {} nar {} at {:?}", o.status, o.node, o.nar, o.at - started);
    }
    println!(
        "SOAK backend={backend} seconds={} requests={total} completed_nars={completed_nars} wrong={wrong} refused={refused} 5xx={server_errors} broken={broken} dropped_by_client={dropped} upstream_nar_fetches={fetches} rss_peak_mb={peak:?} faults={:?}",
        d.as_secs(),
        faults.iter().map(|f| f.what).collect::<Vec<_>>()
    );
    if wrong + refused_outside + server_errors_outside + broken_outside > 0 || !doubled.is_empty() {
        // The nodes' logs say why; keep them past the test.
        eprintln!("{backend}: the nodes' logs are kept in {}", logs.keep().display());
    }
    assert!(total > 1000 && completed_nars > 500, "{backend}: too little traffic ({total} requests)");
    assert_eq!(wrong, 0, "{backend}: a completed body was wrong");
    assert_eq!(refused_outside, 0, "{backend}: connections refused outside the killed node's outage");
    assert_eq!(server_errors_outside, 0, "{backend}: 5xx outside the outages");
    assert_eq!(broken_outside, 0, "{backend}: transfers broke outside the faults");
    assert!(doubled.is_empty(), "{backend}: fetched upstream again outside a fault (path, fetch times): {doubled:?}");
    assert!(peak.iter().all(|mb| *mb < RSS_BOUND_MB), "{backend}: resident memory peaked at {peak:?} MB");

    // No lock left behind.
    match (&redis, backend) {
        (Some(r), _) => {
            let keys = shell("redis-cli", &["-p", &r.port.to_string(), "--scan", "--pattern", "*"]);
            assert!(keys.is_empty(), "{backend}: lock keys left in Redis: {keys}");
        }
        (None, "postgres") => {
            let q = format!("SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database WHERE l.locktype = 'advisory' AND d.datname = '{db_name}'");
            let left = shell("psql", &[&format!("{}/postgres", ncps_edge_test_support::postgres_url()), "-tAc", &q]);
            assert_eq!(left, "0", "{backend}: advisory locks left");
        }
        _ => {
            let q = format!("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = '{db_name}'");
            let left = shell("mariadb", &["-h", "127.0.0.1", "-u", "root", "-N", "-e", &q]);
            assert_eq!(left, "0", "{backend}: sessions (and their user locks) left");
        }
    }
    // No unfinished upload left once fsck has swept.
    let mut fsck = vec!["fsck".to_string()];
    fsck.extend(flags.iter().cloned());
    fsck.extend([
        "--cache-lock-download-ttl=1s".into(),
        "--cache-lock-download-lease=500ms".into(),
        "--cache-lock-heartbeat-interval=200ms".into(),
    ]);
    let cwd = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(ncps_edge_tests::process::binary())
        .current_dir(cwd.path())
        .args(&fsck)
        .output()
        .unwrap();
    assert!(out.status.success(), "{backend}: fsck failed: {}", String::from_utf8_lossy(&out.stderr));
    println!("SOAK backend={backend} fsck={}", String::from_utf8_lossy(&out.stdout).trim());
    // But one that the killed node created in the instant before it died,
    // before it could name it by a marker: a server that cannot list
    // uploads (s3s-fs) cannot find that one (S3 can: the sweep aborts it).
    let unnamed = (killed_at - Duration::from_secs(1))..=(killed_at + Duration::from_millis(100));
    let left: Vec<_> = s3.unfinished_uploads().into_iter().filter(|created| !unnamed.contains(created)).collect();
    assert!(left.is_empty(), "{backend}: unfinished multipart uploads left on the S3 server (created at {left:?})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_with_redis_locks() {
    soak("redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_with_postgres_locks() {
    soak("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_with_mysql_locks() {
    soak("mysql").await;
}
