//! What a fleet of nodes costs one region: `NCPS_FLEET_NODES` (default 50)
//! nodes on one PostgreSQL (metadata and advisory locks) and one S3
//! bucket; with `NCPS_FLEET_SPIN=<k>`, the last k of them are a real
//! `spin up` (`spin` on `PATH`) and every node locks on Redis;
//! `NCPS_FLEET_LOAD_S` (default 5) is how long each `wrk` runs;
//! `NCPS_FLEET_DB=mysql` puts the metadata and locks on MySQL (MariaDB)
//! instead (no statement counts there), and `NCPS_FLEET_NODE_FLAGS` adds
//! flags to every native node. Prints a
//! markdown table (the figures of [`ncps_edge_tests::fleet::Report`]).
//!
//! `cargo build --release -p ncps-edge && NCPS_EDGE_BIN=target/release/ncps-edge
//! cargo bench -p ncps-edge-tests --bench fleet` (needs PostgreSQL, s3s-fs
//! and nix, like the tests).

use ncps_edge_tests::fleet::{run, Server, Shape, HIT_CONNECTIONS};
use ncps_edge_tests::spin_up::spin_binary;

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let n = std::env::var("NCPS_FLEET_NODES").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let spin = std::env::var("NCPS_FLEET_SPIN").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let spin = (spin > 0).then(|| (spin, spin_binary().expect("NCPS_FLEET_SPIN needs `spin` on PATH")));
    let load_s = std::env::var("NCPS_FLEET_LOAD_S").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let server = match std::env::var("NCPS_FLEET_DB").as_deref() {
        Ok("mysql") => Server::Mysql,
        Ok("postgres") | Err(_) => Server::Postgres,
        Ok(other) => panic!("NCPS_FLEET_DB={other}: postgres or mysql"),
    };
    let flags = std::env::var("NCPS_FLEET_NODE_FLAGS").unwrap_or_default();
    let flags = flags.split_whitespace().map(str::to_owned).collect();
    let shape = Shape { nodes: n, spin, load_s, server, flags };
    let r = run(&shape).await;
    println!("| figure | value |");
    println!("|---|---|");
    println!("| nodes (far: 50 ms RTT to database and bucket) | {} ({}) |", r.nodes, r.far_nodes);
    println!("| Spin nodes among them (`spin up`) | {} |", r.spin_nodes);
    let locks = match (r.spin_nodes > 0, r.server) {
        (true, _) => "Redis",
        (false, Server::Postgres) => "PostgreSQL advisory",
        (false, Server::Mysql) => "MySQL `GET_LOCK`",
    };
    println!("| locks | {locks} |");
    println!("| {:?} max_connections | {} |", r.server, r.max_connections);
    println!("| start all (parallel), s | {:.1} |", r.start_s);
    println!("| connections, idle (per node) | {} ({:.2}) |", r.idle_connections, r.idle_connections as f64 / n as f64);
    println!(
        "| connections, peak during {n} cold NAR downloads (per node) | {} ({:.2}) |",
        r.peak_connections,
        r.peak_connections as f64 / n as f64
    );
    println!(
        "| `nix copy` through a near and a far node, byte-identical / tries | {} / {} |",
        r.nix_copies.0, r.nix_copies.1
    );
    println!("| correct bodies / clients | {} / {n} |", r.correct_bodies);
    println!("| upstream downloads of that NAR | {} |", r.upstream_downloads);
    println!("| logs with \"too many clients\" / \"Too many connections\" | {} |", r.too_many_clients);
    let show = |v: Option<f64>| v.map_or_else(|| "n/a (no server log)".to_string(), |v| format!("{v:.2}"));
    println!(
        "| idle statements/s, fleet (per node) | {} ({}) |",
        show(r.idle_statements_per_s),
        show(r.idle_statements_per_s.map(|v| v / n as f64))
    );
    println!("| statements, narinfo first ask (fetched upstream) | {} |", show(r.statements_per_miss));
    println!("| statements, narinfo first ask at another node | {} |", show(r.statements_per_node_miss));
    println!("| statements, narinfo hit | {} |", show(r.statements_per_hit));
    println!(
        "| purge at node 0 → all nodes, p50 / p99 / max, s | {:.2} / {:.2} / {:.2} |",
        r.purge_quantile(0.5),
        r.purge_quantile(0.99),
        r.purge_quantile(1.0)
    );
    println!("| purge at node 0 → far nodes, max, s | {:.2} |", r.purge_far_max_s);
    println!("| RSS per native node, mean / max, MiB | {:.0} / {:.0} |", r.rss_mib.0, r.rss_mib.1);
    if r.spin_nodes > 0 {
        println!("| RSS per Spin node, mean / max, MiB | {:.0} / {:.0} |", r.spin_rss_mib.0, r.spin_rss_mib.1);
    }
    if let Some(load) = &r.load {
        for hit in &load.hits {
            let (kind, i) = hit.node;
            println!(
                "| `wrk` warm narinfo hits at node {i} ({kind}), {HIT_CONNECTIONS} conns: requests/s, p99 ms, non-200 | {:.0}, {:.1}, {} |",
                hit.counted.per_s(),
                hit.counted.p99_ms,
                hit.counted.answers() - hit.counted.ok + hit.counted.socket_errors
            );
        }
        let m = &load.misses;
        println!(
            "| `wrk` misses at all nodes at once ({} conns): answers/s, 404 / 5xx / other / socket errors | {:.0}, {} / {} / {} / {} |",
            load.miss_clients,
            m.per_s(),
            m.absent,
            m.server_errors,
            m.other,
            m.socket_errors
        );
        println!(
            "| connections, peak during the miss burst (per node) | {} ({:.2}) |",
            load.miss_peak_connections,
            load.miss_peak_connections as f64 / n as f64
        );
        println!("| statements per miss of the burst (absent narinfo) | {} |", show(load.statements_per_absent));
    }
}
