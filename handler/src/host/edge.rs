//! The edge tier as the guest directs it (`ncps:edge/edge-cache`): which
//! answers may be kept and for how long (`cache-control`), what stops being
//! true (purges), and which narinfos no upstream has.

use crate::bindings::ncps::edge::config::Settings;
use crate::bindings::ncps::edge::edge_cache;
use crate::host::logging;

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

/// Offer the whole stored object `key`, just read, to the node's tier.
pub fn keep_nar(key: &str, bytes: &[u8]) {
    edge_cache::keep_nar(key, bytes);
}
