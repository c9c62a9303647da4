//! The edge tier as the guest directs it (`ncps:edge/edge-cache`): which
//! answers may be kept and for how long (`cache-control`), what stops being
//! true (purges), and which narinfos no upstream has.

use crate::bindings::ncps::edge::config::Settings;
use crate::bindings::ncps::edge::edge_cache;
use crate::bindings::ncps::edge::metadata::NarinfoRecord;
use crate::bindings::ncps::edge::metrics::CacheResult;
use crate::host::logging;

/// What an answer was served from, as its `x-cache` header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// This cache had it.
    Hit,
    /// Fetched from an upstream for this request.
    Miss,
    /// What the node's tier kept, past its max-age, because the region
    /// failed the lookup (counted as a hit).
    Stale,
}

impl Served {
    /// The `x-cache` header's value.
    pub fn x_cache(self) -> &'static str {
        match self {
            Served::Hit => "HIT",
            Served::Miss => "MISS",
            Served::Stale => "STALE",
        }
    }

    /// How the metrics count it.
    pub fn result(self) -> CacheResult {
        match self {
            Served::Hit | Served::Stale => CacheResult::Hit,
            Served::Miss => CacheResult::Miss,
        }
    }
}

/// `cache-control` of an answer that stays true until purged: kept up to
/// `--edge-cache-max-age` by the edge tier and by HTTP caches (`private`
/// when reads need a token, so no shared cache keeps it); none when the
/// max-age is 0.
pub fn hit_control(settings: &Settings) -> Option<String> {
    control(settings, settings.edge_max_age_s)
}

/// `cache-control` of "no upstream has it", kept `seconds`.
pub fn absent_control(settings: &Settings, seconds: u32) -> Option<String> {
    control(settings, seconds)
}

fn control(settings: &Settings, seconds: u32) -> Option<String> {
    let scope = if settings.get_token.is_some() { "private" } else { "public" };
    (seconds > 0).then(|| format!("{scope}, max-age={seconds}"))
}

/// The request path of the narinfo of `hash`.
pub fn narinfo_path(hash: &str) -> String {
    format!("/{hash}.narinfo")
}

/// The request path of the stored object `key` (`nar/<file>`).
pub fn object_path(key: &str) -> String {
    format!("/{key}")
}

/// Forget what every node keeps for `paths`.
pub fn purge(paths: &[String]) {
    if !paths.is_empty() {
        logging::debug("purging the edge tier", &[("paths", &paths.join(" "))]);
        edge_cache::purge(paths);
    }
}

/// Remember for `seconds` that the narinfo of `hash` cannot be had now.
pub fn mark_absent(hash: &str, seconds: u32) {
    edge_cache::mark_absent(hash, seconds);
}

/// Seconds `hash` stays known to be absent upstream (0: not known).
pub fn absent_for(hash: &str) -> u32 {
    edge_cache::absent_for(hash)
}

/// The whole stored object `key`, when the node's tier keeps it here.
pub fn kept_nar(key: &str) -> Option<Vec<u8>> {
    edge_cache::kept_nar(key)
}

/// Tell the host, before the settings are read, that this instance
/// answers a read of the request path `path` (a narinfo or a NAR).
pub fn will_read(path: &str) {
    edge_cache::will_read(path);
}

/// The record of `hash` as the node's tier kept it, for an answer marked
/// stale after the metadata lookup failed (none on a host whose tier
/// answers stale itself).
pub fn stale_narinfo(hash: &str) -> Option<NarinfoRecord> {
    edge_cache::stale_narinfo(hash)
}

/// The whole stored object `key` as the node's tier kept it, for an answer
/// marked stale after storage failed.
pub fn stale_nar(key: &str) -> Option<Vec<u8>> {
    edge_cache::stale_nar(key)
}

/// Offer the whole stored object `key`, just read, to the node's tier.
pub fn keep_nar(key: &str, bytes: &[u8]) {
    edge_cache::keep_nar(key, bytes);
}
