//! `ncps:edge/edge-cache` under Spin: a purge forgets what this node's
//! tier (`crate::tier`) keeps and is published on the Redis channel the
//! native nodes listen on (`<lock_key_prefix>edge-cache`, the native
//! message format), so a delete or upload through a Spin node clears their
//! tiers too. Absences ("no upstream has it") are kept in the same tier.

use crate::bindings::exports::ncps::edge::edge_cache::Guest;
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
        for message in ncps_edge_wire::channel::purges(&paths, PURGE_MESSAGE_MAX) {
            let sent = redis::with(|c| {
                c.execute("PUBLISH", &[redis::text(&channel), RedisParameter::Binary(message.into_bytes())])
            });
            if let Err(e) = sent {
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
}
