//! `ncps:edge/config` from Spin variables (`[variables]` of `spin.toml`).
//!
//! `redis_address`, `database_url`, `s3_bucket` and the S3 keys are
//! required (a call that needs one fails saying which); every other
//! variable defaults to the native node's flag default. Durations are in
//! milliseconds, sizes in bytes, lists are separated by spaces or commas.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::bindings::exports::ncps::edge::config::{Guest, Settings, Upstream};
use crate::bindings::fermyon::spin::variables;
use crate::error::{Error, Result};

thread_local! {
    /// The variables this instance read (each instance is one request, so
    /// a value read once stays right for its life): most are asked for
    /// several times per request, and each ask is a host call.
    static READ: RefCell<HashMap<String, Option<String>>> = RefCell::default();
}

/// A variable's value; none when undefined or empty.
pub fn var(name: &str) -> Option<String> {
    if let Some(value) = READ.with(|read| read.borrow().get(name).cloned()) {
        return value;
    }
    let value = variables::get(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    READ.with(|read| read.borrow_mut().insert(name.to_owned(), value.clone()));
    value
}

/// A variable the adapter cannot work without.
pub fn required(name: &str) -> Result<String> {
    var(name).ok_or_else(|| Error::Invalid(format!("the Spin variable `{name}` is not set")))
}

/// The words of a list variable.
pub fn list(name: &str) -> Vec<String> {
    var(name)
        .map(|v| v.split([' ', ',', '\n']).filter(|s| !s.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// A boolean variable (`true`/`false`), `default` when unset or not a boolean.
pub fn flag(name: &str, default: bool) -> bool {
    match var(name).as_deref() {
        Some("true") | Some("1") => true,
        Some("false") | Some("0") => false,
        _ => default,
    }
}

/// A number variable, `default` when unset or not a number.
pub fn number(name: &str, default: u64) -> u64 {
    var(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Whether the write verb `allow` is on: only with its token, or with
/// `allow_anonymous_writes`, as the native node refuses to start otherwise.
/// Refused, the verb stays off (fail closed) and every request says why.
fn write_verb(allow: &str, token: &str) -> bool {
    if !flag(allow, false) {
        return false;
    }
    if var(token).is_some() || flag("allow_anonymous_writes", false) {
        return true;
    }
    crate::log::error(
        "a write verb is enabled without its token; it stays off",
        &[("variable", allow), ("token_variable", token), ("allow_anyway", "allow_anonymous_writes")],
    );
    false
}

/// Seconds a narinfo answer may be kept (`cache-control: max-age`, and the
/// node-local tier's trust in an entry); 0 turns both off.
pub fn max_age_s() -> u32 {
    number("max_age_s", 60) as u32
}

/// The lock key prefix, as `--cache-lock-redis-key-prefix`.
pub fn lock_prefix() -> String {
    var("lock_key_prefix").unwrap_or_else(|| ncps_edge_wire::locks::DEFAULT_PREFIX.into())
}

impl Guest for crate::Adapter {
    fn get_settings() -> Settings {
        Settings {
            hostname: var("hostname").unwrap_or_default(),
            priority: number("priority", 10) as u32,
            sign_narinfo: flag("sign_narinfo", true),
            allow_put: write_verb("allow_put", "put_token"),
            allow_delete: write_verb("allow_delete", "delete_token"),
            get_token: var("get_token"),
            put_token: var("put_token"),
            delete_token: var("delete_token"),
            upload_trusted_keys: list("upload_trusted_keys"),
            require_trusted_upload: flag("require_trusted_signature", false),
            max_upload_size: number("max_upload_size", 8 << 30),
            upstream_timeout_ms: number("upstream_timeout_ms", 3_000),
            upstream_connect_timeout_ms: number("upstream_connect_timeout_ms", 3_000),
            upstream_stall_timeout_ms: number("upstream_stall_timeout_ms", 30_000),
            download_lease_ms: number("download_lease_ms", 15_000),
            download_lock_ttl_ms: number("download_lock_ttl_ms", 300_000),
            max_narinfo_size: number("max_narinfo_size", 1 << 20),
            max_size: var("max_size").and_then(|v| v.parse().ok()),
            lru_lock_ttl_ms: number("lru_lock_ttl_ms", 1_800_000),
            admin_token: var("admin_token"),
            edge_max_age_s: max_age_s(),
            // Absences are remembered in the node-local tier (`crate::tier`).
            negative_ttl_s: number("negative_ttl_s", 60) as u32,
        }
    }

    fn get_upstreams() -> Vec<Upstream> {
        let keys = list("upstream_public_keys");
        let allow_unsigned = flag("upstream_allow_unsigned", false);
        list("upstream_urls")
            .into_iter()
            .enumerate()
            .map(|(i, url)| (i, ncps_edge_protocol::auth::split_credentials(&url)))
            .map(|(i, (url, authorization))| Upstream {
                url: url.trim_end_matches('/').to_owned(),
                authorization,
                priority: 40 + i as u32,
                public_keys: keys.clone(),
                allow_unsigned: allow_unsigned && keys.is_empty(),
                healthy: true,
            })
            .collect()
    }
}
