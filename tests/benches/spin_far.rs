//! Warm hits at a real `spin up` node next to the region and at one far
//! from it, in one run: both nodes share one PostgreSQL database, Redis and
//! S3 bucket; the far node reaches all three through proxies that delay
//! every byte by [`ONE_WAY`] each way. The difference of their latencies,
//! divided by the round-trip time, is the number of round trips a hit makes
//! to the region before the client has its answer.
//!
//! `cargo bench -p ncps-edge-tests --bench spin_far` (needs the Spin CLI,
//! Redis, PostgreSQL and s3s-fs, like the tests). Prints a markdown table.

use std::time::Duration;

use ncps_edge_tests::fixture::{fixture, hash_of, nar_url};
use ncps_edge_tests::measure::{latency_until, Until};
use ncps_edge_tests::spin_host::Shared;
use ncps_edge_tests::spin_up::{spin_binary, Region, SpinUp};

/// The added latency, each way, between the far node and the region.
const ONE_WAY: Duration = Duration::from_millis(25);
/// Sequential requests per measurement.
const SAMPLES: usize = 20;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let spin = spin_binary().expect("the Spin CLI: on PATH, NCPS_TEST_SPIN or ../shared/tools/spin");
    let fx = fixture();
    let shared = Shared::new(fx, "none").await;
    let near_vars = shared.variables(fx);
    let mut far_vars = near_vars.clone();
    let _region = Region::away(&shared, &mut far_vars, ONE_WAY).await;
    let near = SpinUp::start(&spin, near_vars).await;
    let far = SpinUp::start(&spin, far_vars).await;
    // A large NAR's transfer would hide a round trip: timed to its head.
    let paths = [
        ("/nix-cache-info", "/nix-cache-info".to_owned(), Until::Body),
        ("narinfo", format!("/{}.narinfo", hash_of(&fx.leaf)), Until::Body),
        ("narinfo of the 30 MB NAR", format!("/{}.narinfo", hash_of(&fx.big)), Until::Body),
        ("NAR, 8 bytes", nar_url(&fx.cache("none"), &fx.leaf), Until::Body),
        ("NAR, 30 MB (not kept), to its head", nar_url(&fx.cache("none"), &fx.big), Until::Head),
    ];
    let c = reqwest::Client::new();
    for node in [&near, &far] {
        for (_, path, _) in &paths {
            let resp = c.get(format!("{}{path}", node.url())).send().await.expect("warm-up");
            assert_eq!(resp.status().as_u16(), 200, "{path}:\n{}", node.log());
            resp.bytes().await.expect("warm-up body");
        }
    }
    let rtt_ms = 2.0 * ONE_WAY.as_secs_f64() * 1000.0;
    println!(
        "| warm hit | near: median / p90 | far ({rtt_ms:.0} ms RTT): median / p90 | round trips (far − near) / RTT |"
    );
    println!("| --- | --- | --- | --- |");
    for (what, path, until) in &paths {
        let (near_median, near_p90) = latency_until(&c, &format!("{}{path}", near.url()), SAMPLES, *until).await;
        let (far_median, far_p90) = latency_until(&c, &format!("{}{path}", far.url()), SAMPLES, *until).await;
        println!(
            "| {what} | {near_median:.1} / {near_p90:.1} ms | {far_median:.1} / {far_p90:.1} ms | {:.1} |",
            (far_median - near_median) / rtt_ms
        );
    }
}
