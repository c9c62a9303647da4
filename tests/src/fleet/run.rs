//! [`run`]: start a fleet and measure it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ncps_edge_host_services::pg_link::IDLE_CLOSE;
use sha2::{Digest, Sha256};

use super::load::{load, peak_connections_during, wrk_binary};
use super::{is_far, Fleet, Report, Shape};
use crate::fixture::{fixture, hash_of, nar_file, nar_url};
use crate::nix::NixEnv;
use crate::node::memory_tier_on;

/// Statements sent per second by the idle fleet, over `window`.
async fn idle_rate(fleet: &Fleet, window: Duration) -> Option<f64> {
    let before = fleet.statements()?;
    tokio::time::sleep(window).await;
    Some((fleet.statements()? - before) as f64 / window.as_secs_f64())
}

/// Connections to the fleet's database once the idle pools have closed
/// what they opened beyond their idle count: the fewest seen over one more
/// of MySQL's pool checks (every [`IDLE_CLOSE`] / 2, so the last one due
/// may fall just after the wait in [`run`]), or at once when there is no
/// more than one per node, the fewest a node holds.
async fn settled_connections(fleet: &Fleet) -> i64 {
    let deadline = Instant::now() + IDLE_CLOSE / 2 + Duration::from_secs(1);
    let mut fewest = i64::MAX;
    loop {
        fewest = fewest.min(fleet.watcher.lock().await.connections(&fleet.database).await);
        if fewest <= fleet.nodes.len() as i64 || Instant::now() >= deadline {
            return fewest;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What `work` returned, and the statements it caused, the idle rate over
/// its duration taken off.
pub(super) async fn statements_of<T>(
    fleet: &Fleet,
    idle: Option<f64>,
    work: impl std::future::Future<Output = T>,
) -> (T, Option<f64>) {
    let before = fleet.statements();
    let started = Instant::now();
    let out = work.await;
    // The server writes its log as it goes; give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spent = fleet.statements().zip(before).map(|(after, before)| (after - before) as f64);
    (out, spent.zip(idle).map(|(spent, idle)| (spent - idle * started.elapsed().as_secs_f64()).max(0.0)))
}

/// Ask every one of `urls` `rounds` times, one after the other; each must answer 200.
async fn ask_each(c: &reqwest::Client, urls: &[String], rounds: usize) {
    for _ in 0..rounds {
        for url in urls {
            let status = c.get(url).send().await.unwrap().status();
            assert_eq!(status, 200, "{url}");
        }
    }
}

/// Start the nodes of `shape` and measure them (see [`Report`]).
pub async fn run(shape: &Shape) -> Report {
    let n = shape.nodes;
    let fx = fixture();
    let fleet = Fleet::start(shape).await;
    // Until a node hears its channel it answers nothing from its tier;
    // connections its start opened beyond its pool's idle count close
    // after IDLE_CLOSE unused, at checks every half of it: idle is
    // measured after that.
    tokio::time::sleep(IDLE_CLOSE * 3 / 2 + Duration::from_secs(1)).await;
    let c = reqwest::Client::new();
    let far_nodes = (0..n).filter(|i| is_far(*i)).count();
    let mut report = Report {
        nodes: n,
        spin_nodes: shape.spin_nodes(),
        far_nodes,
        start_s: fleet.started_in.as_secs_f64(),
        ..Report::default()
    };
    report.server = shape.server;
    report.max_connections = fleet.watcher.lock().await.max_connections().await;
    report.idle_connections = settled_connections(&fleet).await;
    report.idle_statements_per_s = idle_rate(&fleet, Duration::from_secs(5)).await;

    // A narinfo: its first ask (fetched upstream), the first at every
    // other node (known to the database, not to the node), then hits.
    let narinfo = |i: usize, p: &str| format!("{}/{}.narinfo", fleet.nodes[i].url(), hash_of(p));
    let urls: Vec<String> = (0..n).map(|i| narinfo(i, &fx.leaf)).collect();
    let idle = report.idle_statements_per_s;
    let (_, first) = statements_of(&fleet, idle, ask_each(&c, &urls[..1], 1)).await;
    report.statements_per_miss = first;
    if n > 1 {
        let (_, others) = statements_of(&fleet, idle, ask_each(&c, &urls[1..], 1)).await;
        report.statements_per_node_miss = others.map(|s| s / (n - 1) as f64);
    }
    const HITS: usize = 20;
    let (_, hits) = statements_of(&fleet, idle, ask_each(&c, &urls, HITS)).await;
    report.statements_per_hit = hits.map(|s| s / (n * HITS) as f64);

    // The real nix client substitutes a closure through a near and a far
    // node, and the first Spin node.
    let first_spin = (shape.spin_nodes() > 0).then(|| n - shape.spin_nodes());
    for i in [1, 3].into_iter().filter(|i| *i < n && Some(*i) != first_spin).chain(first_spin) {
        report.nix_copies.1 += 1;
        let url = &fleet.nodes[i].url();
        let key = c.get(format!("{url}/pubkey")).send().await.unwrap().text().await.unwrap();
        let env = NixEnv::new();
        let store = env.path("store");
        let out = tokio::task::block_in_place(|| env.copy_from(url, key.trim(), &store, &fx.top));
        if out.status.success() && env.dump_hash(&store, &fx.top) == fx.env.dump_hash(&fx.store, &fx.top) {
            report.nix_copies.0 += 1;
        } else {
            eprintln!("nix copy through node {i}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }

    // One client per node asks for the same cold NAR at once.
    let cache = fx.cache("zstd");
    let nar = nar_url(&cache, &fx.big);
    let want = format!("{:x}", Sha256::digest(std::fs::read(nar_file(&cache, &fx.big)).unwrap()));
    let clients: Vec<_> = fleet
        .nodes
        .iter()
        .map(|node| {
            let (c, narinfo, nar) =
                (c.clone(), format!("{}/{}.narinfo", node.url(), hash_of(&fx.big)), format!("{}{nar}", node.url()));
            tokio::spawn(async move {
                let info = c.get(&narinfo).send().await.map_err(|e| format!("narinfo: {e}"))?.status();
                let resp = c.get(&nar).send().await.map_err(|e| format!("NAR: {e}"))?;
                let status = resp.status();
                let body = resp.bytes().await.map_err(|e| format!("NAR body: {e}"))?;
                if info != 200 || status != 200 {
                    return Err(format!("narinfo {info}, NAR {status}: {}", String::from_utf8_lossy(&body)));
                }
                // Hashed off the runtime's threads, as a client would.
                let digest = tokio::task::spawn_blocking(move || format!("{:x}", Sha256::digest(&body)));
                digest.await.map_err(|e| format!("hashing: {e}"))
            })
        })
        .collect();
    let (got, peak) = peak_connections_during(&fleet, futures_util::future::join_all(clients)).await;
    for (i, client) in got.into_iter().enumerate() {
        match client {
            Ok(Ok(got)) if got == want => report.correct_bodies += 1,
            other => {
                eprintln!("node {i} (far: {}): {other:?}", is_far(i));
                let log = fleet.nodes[i].log();
                let said: Vec<&str> = log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
                eprintln!("  its last warnings:\n  {}", said[said.len().saturating_sub(3)..].join("\n  "));
            }
        }
    }
    report.peak_connections = peak;
    report.upstream_downloads = fleet.up.hits(&nar);

    // wrk: warm hits at single nodes, then misses at every node at once.
    if let Some(wrk) = wrk_binary() {
        let path = format!("/{}.narinfo", hash_of(&fx.leaf));
        report.load = Some(load(&fleet, &wrk, &path, shape.load_s, idle).await);
    }

    // A purge at node 0: how long each node goes on serving the narinfo.
    // The upstream has no narinfo from now on, so a node that no longer
    // keeps it cannot fetch it again (or find it fetched again by another).
    if memory_tier_on() {
        fleet.up.faults().narinfos_gone.store(true, Ordering::SeqCst);
        let deleted = c.delete(&urls[0]).bearer_auth("deleter").send().await.unwrap();
        assert_eq!(deleted.status(), 204, "DELETE at node 0");
        let started = Instant::now();
        let waits: Vec<_> = (0..n)
            .map(|i| {
                let (c, url) = (c.clone(), urls[i].clone());
                tokio::spawn(async move {
                    // When the node last answered the narinfo: the end of
                    // the last 200 before its first answer without it.
                    let mut served_until = 0.0;
                    loop {
                        let resp = c.get(&url).send().await.unwrap();
                        if resp.status() != 200 {
                            return served_until;
                        }
                        served_until = started.elapsed().as_secs_f64();
                        if started.elapsed() > Duration::from_secs(30) {
                            return f64::INFINITY;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
            .collect();
        for (i, w) in waits.into_iter().enumerate() {
            let took = w.await.unwrap();
            if is_far(i) {
                report.purge_far_max_s = report.purge_far_max_s.max(took);
            }
            report.purge_s.push(took);
        }
        report.purge_s.sort_by(f64::total_cmp);
    }
    report.too_many_clients = fleet.logs_with("too many clients") + fleet.logs_with("Too many connections");
    let mean_max = |v: Vec<f64>| (v.iter().sum::<f64>() / v.len().max(1) as f64, v.iter().copied().fold(0.0, f64::max));
    report.rss_mib = mean_max(fleet.rss_mib(false));
    report.spin_rss_mib = mean_max(fleet.rss_mib(true));
    report
}
