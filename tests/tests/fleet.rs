//! Eight nodes (two of them far, at 50 ms RTT) on one PostgreSQL (metadata
//! and advisory locks) and one bucket: what they cost the server stays
//! bounded per node, one upstream download serves them all, a purge
//! reaches all of them, and `wrk` finds no 5xx. Then the same with two of
//! the eight a real `spin up` (one of them far), all locking on Redis, and
//! with eight nodes on MySQL. (The 50-node run is `cargo bench --bench
//! fleet`; BENCHMARKS.md has its figures.)

use ncps_edge_host_services::cluster::channel::HEARD_WITHIN;
use ncps_edge_tests::fleet::{run, Report, Server, Shape};
use ncps_edge_tests::spin_up::spin_or_skip;

const NODES: usize = 8;

/// What every fleet must show: no node refused a connection, every client
/// got the right bytes from one upstream download, `nix` substituted
/// through every node it tried, a purge reached every node within the
/// channel's bound, and a hit made no round trip to the region.
fn check_served_alike(r: &Report) {
    assert_eq!(r.too_many_clients, 0, "{r:?}");
    assert_eq!(r.correct_bodies, NODES, "{r:?}");
    assert_eq!(r.nix_copies.0, r.nix_copies.1, "{r:?}");
    assert_eq!(r.upstream_downloads, 1, "{r:?}");
    if !r.purge_s.is_empty() {
        assert!(r.purge_quantile(1.0) <= HEARD_WITHIN.as_secs_f64(), "{r:?}");
        // A hit is answered by the node's tier: no round trip to the region.
        if let Some(per_hit) = r.statements_per_hit {
            assert!(per_hit < 0.1, "{r:?}");
        }
    }
    // Under wrk every hit is a 200, every random miss a 404: no node
    // answers 5xx however many clients miss at once.
    if let Some(load) = &r.load {
        assert_eq!(load.hits.len(), 2 + usize::from(r.spin_nodes > 0), "{load:?}");
        for hit in &load.hits {
            assert!(hit.counted.ok > 0, "{load:?}");
            assert_eq!(hit.counted.answers() + hit.counted.socket_errors, hit.counted.ok, "{load:?}");
        }
        let m = &load.misses;
        assert!(m.absent > 0, "{load:?}");
        assert_eq!((m.ok, m.server_errors, m.other, m.socket_errors), (0, 0, 0, 0), "{load:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_holds_one_connection_per_node_and_downloads_once() {
    let r = run(&Shape::native(NODES)).await;
    // Each node's one connection carries its metadata, locks and channel.
    assert!(r.idle_connections <= NODES as i64, "{r:?}");
    assert!(r.peak_connections <= NODES as i64, "{r:?}");
    let burst_peak = r.load.as_ref().map_or(0, |l| l.miss_peak_connections);
    assert!(burst_peak <= NODES as i64, "{r:?}");
    assert_eq!(r.nix_copies, (2, 2), "{r:?}");
    check_served_alike(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_of_native_and_spin_nodes_downloads_once_and_hears_every_purge() {
    let Some(cli) = spin_or_skip() else { return };
    let r = run(&Shape { spin: Some((2, cli)), ..Shape::native(NODES) }).await;
    eprintln!("{r:?}");
    // Before their first request Spin nodes hold no connection.
    assert!(r.idle_connections <= NODES as i64, "{r:?}");
    assert_eq!(r.nix_copies, (3, 3), "{r:?}");
    check_served_alike(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mysql_fleet_holds_two_connections_per_node_when_idle() {
    let r = run(&Shape { server: Server::Mysql, ..Shape::native(NODES) }).await;
    eprintln!("{r:?}");
    // A node's metadata pool (which its purge channel polls on) and its
    // lock session; at most the pool (2 by default) and the session.
    assert!(r.idle_connections <= 2 * NODES as i64, "{r:?}");
    assert!(r.peak_connections <= 3 * NODES as i64, "{r:?}");
    assert_eq!(r.nix_copies, (2, 2), "{r:?}");
    check_served_alike(&r);
}
