//! `ncps:edge/config` from Spin variables (`[variables]` of `spin.toml`).
//!
//! `redis_address`, `database_url`, `s3_bucket` and the S3 keys are
//! required (a call that needs one fails saying which); every other
//! variable defaults to the native node's flag default. Durations are in
//! milliseconds, sizes in bytes, lists are separated by spaces or commas.
//!
//! Spin resolves each variable a component asks for on a blocking thread
//! of its own (a thread hand-off per variable), and a request reads about
//! thirty: most of an instance's cost. So the variables that hold no
//! secret ([`SHARED`]) are read together at most once per
//! [`SHARED_FOR_MS`] per node and kept in its key-value store, where every
//! instance reads them in one call; secrets (tokens, keys, URLs that may
//! carry a password) are read from Spin alone, never written to the
//! node's disk. A changed variable (a restart, a changing provider) is
//! seen within [`SHARED_FOR_MS`].

use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;

use crate::bindings::exports::ncps::edge::config::{Guest, Settings, Upstream};
use crate::bindings::fermyon::spin::variables;
use crate::error::{Error, Result};
use crate::metadata::now_ms;
use crate::{kv, tier};

/// The variables that hold no secret, read once per [`SHARED_FOR_MS`] per
/// node and shared by its instances.
const SHARED: &[&str] = &[
    "hostname",
    "priority",
    "sign_narinfo",
    "allow_put",
    "allow_delete",
    "allow_anonymous_writes",
    "upload_trusted_keys",
    "require_trusted_signature",
    "max_upload_size",
    "max_narinfo_size",
    "max_size",
    "max_age_s",
    "negative_ttl_s",
    "stale_if_error_s",
    "upstream_public_keys",
    "upstream_allow_unsigned",
    "upstream_timeout_ms",
    "upstream_connect_timeout_ms",
    "upstream_stall_timeout_ms",
    "backend_timeout_ms",
    "download_lease_ms",
    "download_lock_ttl_ms",
    "lru_lock_ttl_ms",
    "lock_key_prefix",
    "lock_retry_max_attempts",
    "lock_retry_initial_delay_ms",
    "lock_retry_max_delay_ms",
    "s3_bucket",
    "s3_endpoint",
    "s3_region",
    "s3_force_path_style",
];

/// Secrets whose presence, never their value, the shared copy records:
/// one that is unset costs an instance no read.
const PRESENCE: &[&str] = &["get_token", "put_token", "delete_token", "admin_token", "secret_key"];

/// The shared copy's entry of the node-local tier's scope
/// ([`tier::scope`]: digests, no secret).
const TIER_SCOPE: &str = "#tier-scope";

/// Milliseconds a node's shared copy of the [`SHARED`] variables is used.
pub const SHARED_FOR_MS: i64 = 1_000;

/// The key of the shared copy in the node-local store.
const SHARED_KEY: &str = "settings/variables";

thread_local! {
    /// The variables this instance read (each instance is one request, so
    /// a value read once stays right for its life).
    static READ: RefCell<HashMap<String, Option<String>>> = RefCell::default();
    /// The [`SHARED`] variables, as this instance found them (none when
    /// the node-local store cannot be used).
    static SHARED_READ: OnceCell<Option<HashMap<String, Option<String>>>> = const { OnceCell::new() };
}

/// A variable's value from Spin; none when undefined or empty.
fn from_spin(name: &str) -> Option<String> {
    variables::get(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// The [`SHARED`] variables, whether each [`PRESENCE`] secret is set
/// (`"<name>?"`: `"1"` or none) and the [`TIER_SCOPE`]: the node's copy when
/// it is younger than [`SHARED_FOR_MS`], else read from Spin and stored for
/// the others.
fn shared() -> Option<HashMap<String, Option<String>>> {
    if !kv::opened() {
        return None;
    }
    // With what the request will read next, when the handler said
    // (`edge-cache.will-read`): a warm hit's one read of the store.
    tier::read_with(SHARED_KEY);
    let kept = kv::get(SHARED_KEY);
    let fresh = kept.and_then(|bytes| {
        let (read_at, values): (i64, HashMap<String, Option<String>>) = serde_json::from_slice(&bytes).ok()?;
        (0..SHARED_FOR_MS).contains(&(now_ms() - read_at)).then_some(values)
    });
    if let Some(values) = fresh.filter(|v| v.len() == SHARED.len() + PRESENCE.len() + 1) {
        return Some(values);
    }
    let read_at = now_ms();
    let mut values: HashMap<String, Option<String>> = SHARED.iter().map(|n| ((*n).to_owned(), from_spin(n))).collect();
    for secret in PRESENCE {
        values.insert(format!("{secret}?"), from_spin(secret).map(|_| "1".to_owned()));
    }
    let prefix = values["lock_key_prefix"].clone().unwrap_or_else(|| ncps_edge_wire::locks::DEFAULT_PREFIX.into());
    let scope = tier::scope(
        &from_spin("database_url").unwrap_or_default(),
        &from_spin("redis_address").unwrap_or_default(),
        &prefix,
    );
    values.insert(TIER_SCOPE.to_owned(), Some(scope));
    if let Ok(bytes) = serde_json::to_vec(&(read_at, &values)) {
        let _ = kv::set(SHARED_KEY, &bytes);
    }
    Some(values)
}

/// What the shared copy holds under `key`: none when the node-local
/// store cannot be used, `Some(None)` when it holds nothing there.
fn in_shared(key: &str) -> Option<Option<String>> {
    SHARED_READ.with(|cell| cell.get_or_init(shared).as_ref().map(|v| v.get(key).cloned().flatten()))
}

/// The node-local tier's scope, from the shared copy.
pub fn tier_scope() -> Option<String> {
    in_shared(TIER_SCOPE).flatten()
}

/// A variable's value; none when undefined or empty.
pub fn var(name: &str) -> Option<String> {
    if SHARED.contains(&name) {
        if let Some(value) = in_shared(name) {
            return value;
        }
    }
    if PRESENCE.contains(&name) && in_shared(&format!("{name}?")) == Some(None) {
        return None;
    }
    if let Some(value) = READ.with(|read| read.borrow().get(name).cloned()) {
        return value;
    }
    let value = from_spin(name);
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

/// Seconds after its last read of the purge log a node answers what its
/// tier keeps, marked stale, when the database or storage fails (as
/// `--edge-cache-stale-if-error`; 1 h, not 6 h: the store has no size
/// budget, and keeps what was served for this long); 0 turns stale
/// answers off.
pub fn stale_if_error_s() -> u32 {
    number("stale_if_error_s", 3600) as u32
}

/// How long a call to a backend may take (`backend_timeout_ms`, 3000, as
/// `--cache-backend-timeout`): a storage request, a database connect.
pub fn backend_timeout() -> std::time::Duration {
    std::time::Duration::from_millis(number("backend_timeout_ms", 3_000))
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
