//! `ncps:edge/edge-cache` under Spin: nothing is kept by a Spin node, so
//! nothing is purged here; purges are published on the Redis channel the
//! native nodes listen on (`<lock_key_prefix>edge-cache`, the native
//! message format), so a delete or upload through a Spin node clears their
//! tiers too. No negative cache: every miss asks the upstreams.

use crate::bindings::exports::ncps::edge::edge_cache::Guest;
use crate::bindings::fermyon::spin::redis::RedisParameter;
use crate::{redis, settings};

impl Guest for crate::Adapter {
    fn purge(paths: Vec<String>) {
        if paths.is_empty() {
            return;
        }
        let channel = format!("{}edge-cache", settings::lock_prefix());
        let message = format!("purge\n{}", paths.join("\n"));
        let sent = redis::with(|c| {
            c.execute("PUBLISH", &[redis::text(&channel), RedisParameter::Binary(message.into_bytes())])
        });
        if let Err(e) = sent {
            crate::log::warn("publishing a purge failed", &[("error", &e.to_string())]);
        }
    }

    fn mark_absent(_hash: String) {}

    fn absent_for(_hash: String) -> u32 {
        0
    }
}
