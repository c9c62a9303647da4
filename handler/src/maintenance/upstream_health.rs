//! Upstream health: every upstream's `/nix-cache-info`, fetched in parallel.

use crate::bindings::exports::ncps::edge::maintenance::UpstreamHealth;
use crate::bindings::ncps::edge::config;
use crate::host::logging;
use crate::host::upstream;

/// Largest `/nix-cache-info` read.
const MAX_INFO: u64 = 64 * 1024;

/// Check every configured upstream.
pub fn check() -> Vec<UpstreamHealth> {
    let settings = config::get_settings();
    let ups = config::get_upstreams();
    let pending: Vec<_> = ups
        .iter()
        .map(|u| {
            let url = format!("{}/nix-cache-info", u.url.trim_end_matches('/'));
            upstream::start_get(&url, u.authorization.as_deref(), &settings)
        })
        .collect();
    ups.iter()
        .zip(pending)
        .map(|(u, pending)| {
            let info = pending
                .and_then(|p| p.wait())
                .ok()
                .filter(|r| r.status == 200)
                .and_then(|r| r.body)
                .and_then(|b| b.read_to_end(MAX_INFO).ok())
                .and_then(|b| String::from_utf8(b).ok())
                .filter(|text| text.lines().any(|l| l.trim() == "StoreDir: /nix/store"));
            if info.is_none() {
                logging::warn("upstream failed its health check", &[("upstream", &u.url)]);
            }
            let priority = info
                .as_deref()
                .and_then(|t| t.lines().find_map(|l| l.strip_prefix("Priority:")))
                .and_then(|p| p.trim().parse().ok());
            UpstreamHealth { url: u.url.clone(), healthy: info.is_some(), priority }
        })
        .collect()
}
