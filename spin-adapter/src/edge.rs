//! `ncps:edge/edge-cache` under Spin: a purge forgets what this node's
//! tier (`crate::tier`) keeps and is published on the Redis channel the
//! native nodes listen on (`<lock_key_prefix>edge-cache`, the native
//! message format) and appended to the purge log beside it, which the
//! other Spin nodes read; so a delete or upload through a Spin node clears
//! every node's tier. Absences ("no upstream has it") and small NARs are
//! kept in the same tier, and what it keeps is answered stale when the
//! database or storage fails.

use ncps_edge_wire::purge_log;

use crate::bindings::exports::ncps::edge::edge_cache::Guest;
use crate::bindings::exports::ncps::edge::metadata::NarinfoRecord;
use crate::bindings::fermyon::spin::redis::RedisParameter;
use crate::{redis, settings};

/// Largest purge message published, as the native Redis channel's.
const PURGE_MESSAGE_MAX: usize = 64 << 10;

impl Guest for crate::Adapter {
    fn purge(paths: Vec<String>) {
        if paths.is_empty() {
            return;
        }
        crate::tier::purge(&paths);
        let channel = ncps_edge_wire::channel::name(&settings::lock_prefix());
        let log = purge_log::keys(&channel);
        for message in ncps_edge_wire::channel::purges(&paths, PURGE_MESSAGE_MAX) {
            let args = [
                redis::text(&channel),
                RedisParameter::Binary(message.into_bytes()),
                RedisParameter::Int64(purge_log::KEPT_MS),
            ];
            if let Err(e) = redis::eval(purge_log::PUBLISH, &log, &args) {
                crate::log::warn("publishing a purge failed", &[("error", &e.to_string())]);
            }
        }
    }

    fn mark_absent(hash: String, seconds: u32) {
        crate::tier::mark_absent(&hash, seconds);
    }

    fn absent_for(hash: String) -> u32 {
        crate::tier::absent_for(&hash)
    }

    fn kept_nar(key: String) -> Option<Vec<u8>> {
        crate::tier::nar(&key)
    }

    fn keep_nar(key: String, bytes: Vec<u8>) {
        crate::tier::keep_nar(&key, &bytes);
    }

    fn will_read(path: String) {
        crate::tier::will_read(&path);
    }

    fn stale_narinfo(hash: String) -> Option<NarinfoRecord> {
        crate::tier::stale_narinfo(&hash)
    }

    fn stale_nar(key: String) -> Option<Vec<u8>> {
        crate::tier::stale_nar(&key)
    }
}
