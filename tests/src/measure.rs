//! What the benchmarks measure, shared by them.

use std::time::Instant;

/// Where a timed request ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// The whole body is in.
    Body,
    /// The response head is in (the body is read, untimed): for a large
    /// body, whose transfer would hide a round trip.
    Head,
}

/// Median and 90th percentile, in milliseconds, of `rounds` sequential GETs
/// of `url`, each expected to answer 200, until the whole body is in.
pub async fn latency(c: &reqwest::Client, url: &str, rounds: usize) -> (f64, f64) {
    latency_until(c, url, rounds, Until::Body).await
}

/// [`latency`], each request timed [`Until`] `until`.
pub async fn latency_until(c: &reqwest::Client, url: &str, rounds: usize, until: Until) -> (f64, f64) {
    let mut took = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        let resp = c.get(url).send().await.expect("request");
        assert_eq!(resp.status().as_u16(), 200, "{url}");
        let head_in = started.elapsed();
        resp.bytes().await.expect("body");
        let elapsed = if until == Until::Head { head_in } else { started.elapsed() };
        took.push(elapsed.as_secs_f64() * 1000.0);
    }
    took.sort_by(f64::total_cmp);
    (took[rounds / 2], took[rounds * 9 / 10])
}
