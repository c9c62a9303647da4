//! What the guest is told: its settings (`ncps:edge/config.get-settings`)
//! and the upstream caches (`get-upstreams`), from the flags.

use ncps_edge_host_services::config::{Settings, Upstream};

use super::flags::ServeArgs;

/// Priority of an upstream given without `?priority=`: configuration order,
/// after any explicitly preferred one.
const DEFAULT_UPSTREAM_PRIORITY: u32 = 50;

/// The guest's settings.
pub(super) fn settings(args: &ServeArgs) -> Settings {
    Settings {
        hostname: args.cache_hostname.clone(),
        priority: args.cache_priority,
        sign_narinfo: args.cache_sign_narinfo,
        allow_put: args.cache_allow_put_verb,
        allow_delete: args.cache_allow_delete_verb,
        get_token: args.cache_get_token.clone().filter(|t| !t.is_empty()),
        put_token: args.cache_put_token.clone().filter(|t| !t.is_empty()),
        delete_token: args.cache_delete_token.clone().filter(|t| !t.is_empty()),
        upload_trusted_keys: args.cache_upload_trusted_key.clone(),
        require_trusted_upload: args.cache_require_trusted_signature,
        max_upload_size: args.cache_max_upload_size,
        upstream_timeout_ms: args.cache_upstream_response_header_timeout.as_millis() as u64,
        upstream_connect_timeout_ms: args.cache_upstream_dialer_timeout.as_millis() as u64,
        upstream_stall_timeout_ms: args.cache_upstream_stall_timeout.as_millis() as u64,
        download_lease_ms: args.cache_lock_download_lease.as_millis() as u64,
        download_lock_ttl_ms: args.cache_lock_download_ttl.as_millis() as u64,
        max_narinfo_size: args.cache_narinfo_max_size,
        max_size: args.cache_max_size,
        lru_lock_ttl_ms: args.cache_lock_lru_ttl.as_millis() as u64,
        admin_token: args.admin_token.clone().filter(|t| !t.is_empty()),
        edge_max_age_s: args.edge_cache_max_age.as_secs() as u32,
        negative_ttl_s: args.cache_negative_ttl.as_secs() as u32,
    }
}

/// The upstreams, in configuration order.
pub(super) fn upstreams(args: &ServeArgs) -> Vec<Upstream> {
    let allow_unsigned = args.cache_upstream_public_key.is_empty() && args.cache_upstream_allow_unsigned;
    args.cache_upstream_url
        .iter()
        .enumerate()
        .map(|(i, up)| Upstream {
            url: up.url.clone(),
            authorization: up.authorization.clone(),
            priority: up.priority.unwrap_or(DEFAULT_UPSTREAM_PRIORITY + i as u32),
            public_keys: args.cache_upstream_public_key.clone(),
            allow_unsigned,
            healthy: true,
        })
        .collect()
}
