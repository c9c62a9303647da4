//! A node-local tier under Spin: narinfo records kept in Spin's `default`
//! key-value store (node-local, shared by every instance of the node), so
//! a warm narinfo hit makes no round trip to the region; and absences (no
//! upstream has a narinfo), for the seconds the handler asks, so a repeated
//! miss asks the upstreams once.
//!
//! An entry is trusted for `max_age_s` seconds after it was read from the
//! database: the `cache-control: max-age` every such answer already carries,
//! so a Spin node serves nothing staler than an HTTP cache in front of it
//! may. Deletes, uploads and purges made through this node forget its
//! entries at once; those made at other nodes reach it when the entry ages
//! out (a Spin node does not hear the purge channel). `max_age_s = 0` turns
//! the narinfo tier off, `negative_ttl_s = 0` the absences. A store that
//! cannot be opened (not granted in `spin.toml`) is logged once per
//! instance, and every lookup goes to the database.

use std::cell::OnceCell;

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::bindings::exports::ncps::edge::metadata::NarinfoRecord;
use crate::bindings::fermyon::spin::key_value::Store;
use crate::metadata::now_ms;
use crate::settings;

/// The store the tier lives in (Spin's node-local default).
const STORE: &str = "default";

thread_local! {
    static OPENED: OnceCell<Option<Store>> = const { OnceCell::new() };
    static SCOPE: OnceCell<String> = const { OnceCell::new() };
}

/// Milliseconds an entry is trusted; 0 when the tier is off.
fn max_age_ms() -> i64 {
    i64::from(settings::max_age_s()) * 1000
}

fn with_store<T>(f: impl FnOnce(&Store) -> T) -> Option<T> {
    OPENED.with(|cell| {
        cell.get_or_init(|| {
            Store::open(STORE)
                .inspect_err(|e| {
                    crate::log::warn(
                        "the node-local tier is off: Spin's key-value store cannot be opened",
                        &[("store", STORE), ("error", &format!("{e:?}")), ("fix", "key_value_stores = [\"default\"]")],
                    )
                })
                .ok()
        })
        .as_ref()
        .map(f)
    })
}

/// The key of `hash`'s record, under the database it was read from: a
/// node pointed at another database never serves the first one's records.
/// (The scope is worked out once per instance.)
fn narinfo_key(hash: &str) -> String {
    SCOPE.with(|scope| {
        let scope = scope.get_or_init(|| {
            let database = settings::var("database_url").unwrap_or_default();
            Sha256::digest(database.as_bytes())[..8].iter().map(|b| format!("{b:02x}")).collect()
        });
        format!("narinfo/{scope}/{hash}")
    })
}

/// The key of `hash`'s absence, scoped as its record's.
fn absent_key(hash: &str) -> String {
    format!("absent/{}", narinfo_key(hash))
}

/// The record of `hash`, when this node read it less than `max_age_s` ago.
pub fn narinfo(hash: &str) -> Option<NarinfoRecord> {
    if max_age_ms() == 0 {
        return None;
    }
    let bytes = with_store(|s| s.get(&narinfo_key(hash)).ok().flatten())??;
    let entry: Value = serde_json::from_slice(&bytes).ok()?;
    let kept_at = entry.get("kept_at_ms")?.as_i64()?;
    let age = now_ms() - kept_at;
    if !(0..max_age_ms()).contains(&age) {
        return None;
    }
    from_json(entry.get("record")?)
}

/// Keep `record`, read from the database now.
pub fn keep(record: &NarinfoRecord) {
    if max_age_ms() == 0 {
        return;
    }
    let entry = json!({ "kept_at_ms": now_ms(), "record": to_json(record) });
    let written = with_store(|s| s.set(&narinfo_key(&record.hash), entry.to_string().as_bytes()));
    if let Some(Err(e)) = written {
        crate::log::warn("keeping a narinfo in the node-local tier failed", &[("error", &format!("{e:?}"))]);
    }
}

/// Forget the record of `hash`, and that it was absent.
pub fn forget(hash: &str) {
    for key in [narinfo_key(hash), absent_key(hash)] {
        if let Some(Err(e)) = with_store(|s| s.delete(&key)) {
            crate::log::warn("forgetting a narinfo in the node-local tier failed", &[("error", &format!("{e:?}"))]);
        }
    }
}

/// Remember for `seconds` that no upstream has the narinfo of `hash`.
pub fn mark_absent(hash: &str, seconds: u32) {
    if seconds == 0 {
        return;
    }
    let until = now_ms() + i64::from(seconds) * 1000;
    if let Some(Err(e)) = with_store(|s| s.set(&absent_key(hash), until.to_string().as_bytes())) {
        crate::log::warn("keeping an absence in the node-local tier failed", &[("error", &format!("{e:?}"))]);
    }
}

/// Seconds `hash` stays known to be absent (0: not known).
pub fn absent_for(hash: &str) -> u32 {
    let Some(Ok(Some(bytes))) = with_store(|s| s.get(&absent_key(hash))) else { return 0 };
    let until: i64 = String::from_utf8_lossy(&bytes).parse().unwrap_or(0);
    let left_ms = until - now_ms();
    if left_ms <= 0 {
        return 0;
    }
    u32::try_from((left_ms + 999) / 1000).unwrap_or(u32::MAX)
}

/// Forget what the request paths `paths` (`/<hash>.narinfo`, …) name.
pub fn purge(paths: &[String]) {
    for path in paths {
        if let Some(hash) = path.strip_prefix('/').and_then(|p| p.strip_suffix(".narinfo")) {
            forget(hash);
        }
    }
}

fn to_json(r: &NarinfoRecord) -> Value {
    json!({
        "hash": r.hash, "store_path": r.store_path, "url": r.url, "compression": r.compression,
        "file_hash": r.file_hash, "file_size": r.file_size, "nar_hash": r.nar_hash, "nar_size": r.nar_size,
        "references": r.references, "deriver": r.deriver, "system": r.system, "ca": r.ca, "sigs": r.sigs,
    })
}

fn from_json(v: &Value) -> Option<NarinfoRecord> {
    let field = |k: &str| v.get(k)?.as_str().map(str::to_owned);
    let words = |k: &str| -> Option<Vec<String>> {
        v.get(k)?.as_array()?.iter().map(|s| s.as_str().map(str::to_owned)).collect()
    };
    Some(NarinfoRecord {
        hash: field("hash")?,
        store_path: field("store_path")?,
        url: field("url")?,
        compression: field("compression")?,
        file_hash: field("file_hash"),
        file_size: v.get("file_size")?.as_u64(),
        nar_hash: field("nar_hash")?,
        nar_size: v.get("nar_size")?.as_u64()?,
        references: words("references")?,
        deriver: field("deriver"),
        system: field("system"),
        ca: field("ca"),
        sigs: words("sigs")?,
    })
}
