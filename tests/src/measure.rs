//! What the benchmarks measure, shared by them.

use std::time::Instant;

/// Median and 90th percentile, in milliseconds, of `rounds` sequential GETs
/// of `url`, each expected to answer 200.
pub async fn latency(c: &reqwest::Client, url: &str, rounds: usize) -> (f64, f64) {
    let mut took = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        let resp = c.get(url).send().await.expect("request");
        assert_eq!(resp.status().as_u16(), 200, "{url}");
        resp.bytes().await.expect("body");
        took.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    took.sort_by(f64::total_cmp);
    (took[rounds / 2], took[rounds * 9 / 10])
}
