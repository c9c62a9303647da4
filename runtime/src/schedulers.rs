//! Background work the host schedules and the guest decides: upstream health
//! checks (at start, then every interval) and LRU passes followed by a
//! reconcile pass (on a cron schedule).

use std::sync::Arc;
use std::time::Duration;

use ncps_edge_host_services::Services;

use crate::bindings::UpstreamHealth;
use crate::config::LruSchedule;
use crate::server::Server;

/// Apply health results: flip `healthy`, and take an upstream's own
/// `Priority:` unless its URL set one (`explicit[i]`).
pub fn apply_health(services: &Services, results: &[UpstreamHealth], explicit: &[bool]) {
    services.config.update_upstreams(|ups| apply_to(ups, results, explicit));
}

fn apply_to(ups: &mut [ncps_edge_host_services::config::Upstream], results: &[UpstreamHealth], explicit: &[bool]) {
    for (i, up) in ups.iter_mut().enumerate() {
        let Some(r) = results.iter().find(|r| r.url == up.url) else { continue };
        if r.healthy != up.healthy {
            if r.healthy {
                tracing::info!(upstream = up.url, "upstream is healthy again");
            } else {
                tracing::warn!(upstream = up.url, "upstream is unhealthy; skipping it");
            }
            up.healthy = r.healthy;
        }
        if let (Some(p), false) = (r.priority, explicit.get(i).copied().unwrap_or(true)) {
            up.priority = p;
        }
    }
}

/// Check upstreams now and then every `interval`, in the background (a dead
/// or slow upstream never delays start-up).
pub fn spawn_health_checks(
    server: Arc<Server>,
    services: Arc<Services>,
    interval: Duration,
    explicit: Vec<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match server.check_upstreams().await {
                Ok(results) => apply_health(&services, &results, &explicit),
                Err(e) => tracing::warn!(error = format!("{e:#}"), "upstream health check failed"),
            }
            tokio::time::sleep(interval).await;
        }
    })
}

/// Run an LRU pass at every time `schedule` names (in its time zone).
pub fn spawn_lru(server: Arc<Server>, schedule: LruSchedule) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let now = chrono::Utc::now().with_timezone(&schedule.timezone);
            let Ok(next) = schedule.cron.find_next_occurrence(&now, false) else {
                tracing::warn!("LRU schedule has no next run; LRU scheduler stops");
                return;
            };
            tokio::time::sleep((next - now).to_std().unwrap_or(Duration::ZERO)).await;
            match server.run_lru().await {
                Ok(r) if r.ran => tracing::info!(
                    evicted = r.evicted,
                    bytes_freed = r.bytes_freed,
                    total_after = r.total_after,
                    "scheduled LRU pass done"
                ),
                Ok(_) => continue,
                Err(e) => tracing::warn!(error = format!("{e:#}"), "scheduled LRU pass failed"),
            }
            // Whatever a crash or a failed step left behind is mended after
            // each pass.
            if let Err(e) = server.reconcile(false).await {
                tracing::warn!(error = format!("{e:#}"), "scheduled reconcile pass failed");
            }
        }
    })
}
