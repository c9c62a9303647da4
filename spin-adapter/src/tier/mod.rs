//! A node-local tier under Spin: narinfo records and small NARs (the
//! handler offers those it read whole, up to 64 KiB; kept only when they
//! hash to their name) in Spin's `default` key-value store (node-local,
//! shared by every instance of the node), so a warm narinfo or small-NAR
//! hit makes no round trip to the region; and absences (no upstream has a
//! narinfo), for the seconds the handler asks, so a repeated miss asks the
//! upstreams once.
//!
//! An entry is served for at most `max_age_s` seconds after it was read
//! from the database (the `cache-control: max-age` every such answer
//! carries), and only while the node keeps up with the purge log
//! ([`ncps_edge_wire::purge_log`]): every purge, at any node, native or
//! Spin, is appended to a log in Redis beside the channel, and a Spin node
//! serves what it keeps only while its last read of that log is younger
//! than [`purge_log::TRUST_MS`] (1 s) and only what it kept since it last
//! read the log without a gap. A busy node reads the log after an answer
//! every [`purge_log::READ_EVERY_MS`], so no client waits for it; a hit
//! that finds the last read too old reads the log first (a Redis
//! connection and one `EVAL`). A node that cannot read the log (Redis
//! down) serves nothing from its tier: every lookup goes to the database.
//! So a purge anywhere stops being served by every Spin node within 1 s.
//! A purge read from the log forgets what the node keeps for its paths,
//! whenever it was kept (an entry kept after the purge is read from the
//! database once more). `max_age_s = 0` turns the narinfo and NAR tier
//! off, `negative_ttl_s = 0` the absences. A store that
//! cannot be opened (not granted in `spin.toml`) is logged once per
//! instance, and every lookup goes to the database. When the database or
//! storage fails a lookup, what the node keeps for that path is answered at
//! any age, marked stale, for `stale_if_error_s` after its last read of
//! the log ([`stale`]). What can no longer be served is deleted by the
//! sweep ([`sweep`]), so the store holds what the node served in about the
//! last `max_age_s` plus `stale_if_error_s` plus a minute.

mod entry;
pub mod sweep;

pub(crate) use entry::Kind;

use std::cell::{Cell, OnceCell, RefCell};

use sha2::{Digest as _, Sha256};

use ncps_edge_wire::channel::Message;
use ncps_edge_wire::layout::ContentCheck;
use ncps_edge_wire::purge_log::{self, Applied, Read};

use crate::bindings::exports::ncps::edge::metadata::NarinfoRecord;
use crate::bindings::fermyon::spin::redis::{RedisParameter, RedisResult};
use crate::metadata::now_ms;
use crate::{kv, redis, settings};

thread_local! {
    static SCOPE: OnceCell<String> = const { OnceCell::new() };
    static STANDING: Cell<Option<Option<Applied>>> = const { Cell::new(None) };
    /// The request path this instance answers a read of ([`will_read`]).
    static WILL_READ: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Milliseconds an entry is trusted; 0 when the tier is off.
fn max_age_ms() -> i64 {
    i64::from(settings::max_age_s()) * 1000
}

fn short_hash(text: &str) -> String {
    Sha256::digest(text.as_bytes())[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// `f` of the scope of every entry: the database records were read from and the
/// purge log that says which are stale, so a node pointed at another
/// database or Redis never serves what it kept for the first. (From the
/// node's shared copy of its settings, else worked out once per
/// instance.) It is written at the head of each value, not in the key, so
/// that an instance can name the keys a request reads before it has read
/// the settings, and read both in one call ([`will_read`]).
fn with_this_scope<T>(f: impl FnOnce(&str) -> T) -> T {
    SCOPE.with(|cell| {
        f(cell.get_or_init(|| {
            settings::tier_scope().unwrap_or_else(|| {
                let database = settings::var("database_url").unwrap_or_default();
                scope(&database, &settings::var("redis_address").unwrap_or_default(), &settings::lock_prefix())
            })
        }))
    })
}

/// The value of `key`, when this node's scope wrote it.
pub(crate) fn get(key: &str) -> Option<Vec<u8>> {
    let value = kv::get(key)?;
    let (scope, rest) = entry::split_scope(&value)?;
    with_this_scope(|this| scope == this.as_bytes()).then(|| rest.to_vec())
}

/// Write `value` under `key`, headed by this node's scope.
pub(crate) fn set(key: &str, value: &[u8]) -> Option<Result<(), crate::bindings::wasi::keyvalue::store::Error>> {
    kv::set(key, &with_this_scope(|this| entry::with_scope(this, value)))
}

/// The scope of a node on the database `database_url` whose purge log is
/// on `redis_address` beside the channel of `lock_prefix`: digests only.
pub fn scope(database_url: &str, redis_address: &str, lock_prefix: &str) -> String {
    let log = format!("{redis_address} {}", ncps_edge_wire::channel::name(lock_prefix));
    format!("{}/{}", short_hash(database_url), short_hash(&log))
}

/// The key of `hash`'s record.
fn narinfo_key(hash: &str) -> String {
    format!("{}/{hash}", Kind::Narinfo.prefix())
}

/// The key of `hash`'s absence.
fn absent_key(hash: &str) -> String {
    format!("{}/{}", Kind::Absent.prefix(), narinfo_key(hash))
}

/// What a lookup of the narinfo `hash` reads: its record, and the access
/// note a hit reads after the answer. (Not its absence: that is read after
/// a wait for another instance's fetch, and must be read then.)
fn narinfo_lookup(hash: &str) -> Vec<String> {
    vec![narinfo_key(hash), crate::accessed::narinfo_note_key(hash)]
}

/// What a lookup of the object `key` (`nar/<file>`) reads: the object, and
/// the access note a hit reads next.
fn nar_lookup(key: &str) -> Vec<String> {
    vec![object_key(key), crate::accessed::note_key(key)]
}

/// This instance answers a read of the request path `path`
/// (`/<hash>.narinfo`, `/nar/<file>`): what its lookup reads is read with
/// the settings, in one call ([`read_with`]).
pub fn will_read(path: &str) {
    WILL_READ.with(|will| *will.borrow_mut() = Some(path.to_owned()));
}

/// Read `first` (the settings) in one call with what the lookup of the
/// path this instance answers ([`will_read`]) reads, the breakers of the
/// database, S3 and Redis with the notes of calls under way (read when the
/// lookup misses the tier, or the purge log is read) and where the node
/// stands in the purge log. Names keys only: no setting is read here.
pub(crate) fn read_with(first: &str) {
    let Some(path) = WILL_READ.with(|will| will.borrow_mut().take()) else { return };
    let lookup = match Named::of(&path) {
        Some(Named::Narinfo(hash)) => narinfo_lookup(hash),
        Some(Named::Object(key)) => nar_lookup(key),
        None => return,
    };
    let breakers = crate::breaker::Backend::ALL
        .iter()
        .flat_map(|b| std::iter::once(b.key()).chain(b.asked_key()).map(str::to_owned));
    read_ahead([vec![first.to_owned()], breakers.collect(), lookup].concat());
}

/// What a request path the tier keeps answers for names.
enum Named<'a> {
    /// `/<hash>.narinfo`: the narinfo of the hash.
    Narinfo(&'a str),
    /// `/nar/<file>`: the object `nar/<file>`.
    Object(&'a str),
}

impl<'a> Named<'a> {
    /// What `path` names; none for any other path.
    fn of(path: &'a str) -> Option<Self> {
        let path = path.strip_prefix('/')?;
        match path.strip_suffix(".narinfo") {
            Some(hash) => Some(Named::Narinfo(hash)),
            None => path.starts_with("nar/").then_some(Named::Object(path)),
        }
    }
}

/// The record of `hash`, when this node read it less than `max_age_s` ago
/// and may serve it ([`trusted`]).
pub fn narinfo(hash: &str) -> Option<NarinfoRecord> {
    if max_age_ms() == 0 {
        return None;
    }
    read_ahead(narinfo_lookup(hash));
    let key = narinfo_key(hash);
    let (kept_at, record) = servable(|| entry::decode_narinfo(&get(&key)?))?;
    young(kept_at).then_some(record)
}

/// Read in one call `keys` (an entry, and what its lookup reads next) and
/// where the node stands in the purge log, when this instance has not
/// read it ([`kv::read_ahead`]).
fn read_ahead(mut keys: Vec<String>) {
    if STANDING.get().is_none() {
        keys.push(STANDING_KEY.to_owned());
    }
    kv::read_ahead(&keys);
}

/// What `kept` reads (when it was kept, and the entry), when the node may
/// serve it ([`trusted`]). Nothing kept: no need to ask the log (but for a
/// node's first lookup: see [`read_once`]). Else the log (a read of it may
/// forget the entry: then the entry is read again).
fn servable<T>(kept: impl Fn() -> Option<(i64, T)>) -> Option<(i64, T)> {
    let Some(first) = kept() else {
        read_once();
        return None;
    };
    let before = standing();
    let applied = trusted_from(before)?;
    let (kept_at, entry) = if before == Some(applied) { first } else { kept()? };
    applied.trusts(kept_at, now_ms()).then_some((kept_at, entry))
}

/// Whether what was kept at `kept_at` is younger than `max_age_s`.
fn young(kept_at: i64) -> bool {
    entry::young(kept_at, now_ms(), max_age_ms())
}

/// Milliseconds after its last read of the purge log a node answers what
/// it keeps, marked stale, when the region fails it; 0 when stale answers
/// (or the tier) are off.
fn stale_bound_ms() -> i64 {
    if max_age_ms() == 0 {
        return 0;
    }
    i64::from(settings::stale_if_error_s()) * 1000
}

/// Milliseconds an entry is kept in the store: `max_age_s`, and then for
/// stale answers (0: the tier is off).
fn retention_ms() -> i64 {
    match max_age_ms() {
        0 => 0,
        max_age => max_age + stale_bound_ms(),
    }
}

/// What `kept` reads (when it was kept, and the entry), at any age, when
/// it may be answered stale: it was kept since the node could trust its
/// tier, as of its last read of the purge log, and that read is younger
/// than `stale_if_error_s` ([`Applied::trusts_stale`]). Asked only after
/// the region failed a lookup; what the node last read of the log says
/// which purges were applied (a purge made since is not known: a late
/// delete, as at a native node cut off from the region).
fn stale<T>(kept: impl FnOnce() -> Option<(i64, T)>) -> Option<T> {
    let bound = stale_bound_ms();
    if bound == 0 {
        return None;
    }
    let (kept_at, entry) = kept()?;
    let applied = standing()?;
    applied.trusts_stale(kept_at, now_ms(), bound).then_some(entry)
}

/// The record of `hash` at any age, for an answer marked stale ([`stale`]).
pub fn stale_narinfo(hash: &str) -> Option<NarinfoRecord> {
    let record = stale(|| entry::decode_narinfo(&get(&narinfo_key(hash))?))?;
    crate::log::warn("the database failed: a narinfo answered stale from the node-local tier", &[("hash", hash)]);
    Some(record)
}

/// The whole object `key` at any age, for an answer marked stale
/// ([`stale`]).
pub fn stale_nar(key: &str) -> Option<Vec<u8>> {
    let bytes = stale(|| entry::decode_timed(get(&object_key(key))?))?;
    crate::log::warn("storage failed: a NAR answered stale from the node-local tier", &[("key", key)]);
    Some(bytes)
}

/// The public half of the database's signing key at any age, when the
/// database fails ([`stale`]; no purge names it: it is never replaced).
pub fn stale_public_key() -> Option<String> {
    let key = stale(|| entry::decode_timed(get(PUBLIC_KEY_KEY)?))?;
    String::from_utf8(key).ok()
}

/// Keep `record`, read from the database at `asked_ms` (when the query
/// was sent: a purge after that is applied to it).
pub fn keep(record: &NarinfoRecord, asked_ms: i64) {
    if max_age_ms() == 0 {
        return;
    }
    let entry = entry::encode_narinfo(record, asked_ms);
    let written = set(&narinfo_key(&record.hash), entry.as_bytes());
    if let Some(Err(e)) = written {
        crate::log::warn("keeping a narinfo in the node-local tier failed", &[("error", &format!("{e:?}"))]);
    }
}

/// The keys of what the node keeps for the narinfo `hash`: its record, and
/// its absence.
fn narinfo_keys(hash: &str) -> [String; 2] {
    [narinfo_key(hash), absent_key(hash)]
}

/// Forget the record of `hash`, and that it was absent.
pub fn forget(hash: &str) {
    if let Some(Err(e)) = kv::delete(&narinfo_keys(hash)) {
        crate::log::warn("forgetting a narinfo in the node-local tier failed", &[("error", &format!("{e:?}"))]);
    }
}

/// Remember for `seconds` that no upstream has the narinfo of `hash`.
pub fn mark_absent(hash: &str, seconds: u32) {
    if seconds == 0 {
        return;
    }
    let now = now_ms();
    let entry = entry::encode_absence(now + i64::from(seconds) * 1000, now);
    if let Some(Err(e)) = set(&absent_key(hash), entry.as_bytes()) {
        crate::log::warn("keeping an absence in the node-local tier failed", &[("error", &format!("{e:?}"))]);
    }
    sweep::if_due();
}

/// Seconds `hash` stays known to be absent (0: not known, or not to be
/// trusted: [`trusted`]).
pub fn absent_for(hash: &str) -> u32 {
    // One that has run out is none.
    let key = absent_key(hash);
    read_ahead(vec![key.clone()]);
    let absence = servable(|| {
        let (until, kept_at) = entry::decode_absence(&get(&key)?)?;
        (until > now_ms()).then_some((kept_at, until))
    });
    let Some((_, until)) = absence else { return 0 };
    let left_ms = until - now_ms();
    if left_ms <= 0 {
        return 0;
    }
    u32::try_from((left_ms + 999) / 1000).unwrap_or(u32::MAX)
}

/// Forget what the request paths `paths` (`/<hash>.narinfo`,
/// `/nar/<file>`) name.
pub fn purge<S: AsRef<str>>(paths: &[S]) {
    let mut keys = Vec::new();
    for path in paths {
        match Named::of(path.as_ref()) {
            Some(Named::Narinfo(hash)) => keys.extend(narinfo_keys(hash)),
            Some(Named::Object(key)) => keys.push(object_key(key)),
            None => {}
        }
    }
    if let Some(Err(e)) = kv::delete(&keys) {
        crate::log::warn("forgetting purged paths in the node-local tier failed", &[("error", &format!("{e:?}"))]);
    }
}

/// The key of the kept object `key` (`nar/<file>`).
fn object_key(key: &str) -> String {
    format!("{}/{key}", Kind::Object.prefix())
}

/// The whole object `key`, when this node kept it less than `max_age_s`
/// ago and may serve it ([`trusted`]).
pub fn nar(key: &str) -> Option<Vec<u8>> {
    if max_age_ms() == 0 {
        return None;
    }
    read_ahead(nar_lookup(key));
    let object = object_key(key);
    let (kept_at, bytes) = servable(|| entry::decode_timed(get(&object)?))?;
    young(kept_at).then_some(bytes)
}

/// Keep `bytes`, the whole object `key` just read from storage, when they
/// hash to its name (a node never keeps what the name does not promise).
pub fn keep_nar(key: &str, bytes: &[u8]) {
    if max_age_ms() == 0 {
        return;
    }
    let Some(mut check) = ContentCheck::for_key(key) else { return };
    check.update(bytes);
    if !check.matches() {
        crate::log::warn("a NAR read from storage does not hash to its name; not kept", &[("key", key)]);
        return;
    }
    // Kept after the node's first read of the purge log, so it is trusted.
    read_once();
    let value = entry::encode_timed(now_ms(), bytes);
    if let Some(Err(e)) = set(&object_key(key), &value) {
        crate::log::warn("keeping a NAR in the node-local tier failed", &[("error", &format!("{e:?}"))]);
    }
}

/// The key of the kept public half of the database's signing key.
const PUBLIC_KEY_KEY: &str = Kind::PublicKey.prefix();

/// The public half of the database's signing key, when this node read it
/// less than `max_age_s` ago (no purge names it: it is never replaced).
pub fn public_key() -> Option<String> {
    if max_age_ms() == 0 {
        return None;
    }
    let (kept_at, key) = entry::decode_timed(get(PUBLIC_KEY_KEY)?)?;
    young(kept_at).then(|| String::from_utf8(key).ok()).flatten()
}

/// Keep the public half of the database's signing key.
pub fn keep_public_key(key: &str) {
    if max_age_ms() == 0 {
        return;
    }
    if let Some(Err(e)) = set(PUBLIC_KEY_KEY, &entry::encode_timed(now_ms(), key.as_bytes())) {
        crate::log::warn("keeping the public key in the node-local tier failed", &[("error", &format!("{e:?}"))]);
    }
}

/// The channel of this node's cache (its purge log is beside it).
fn channel() -> String {
    ncps_edge_wire::channel::name(&settings::lock_prefix())
}

/// Where this node stands in the purge log, as this instance last read or
/// stored it (an instance is one request: what it read stays fresh enough,
/// and [`Applied::is_fresh`] goes by the time of the read, not of this).
fn standing() -> Option<Applied> {
    STANDING.with(|cell| {
        cell.get().unwrap_or_else(|| {
            let stored = stored_standing();
            cell.set(Some(stored));
            stored
        })
    })
}

/// The key of where this node stands in the purge log.
const STANDING_KEY: &str = "purge-log";

/// Where this node stands in the purge log, as its store says now.
fn stored_standing() -> Option<Applied> {
    let bytes = get(STANDING_KEY)?;
    Applied::decode(std::str::from_utf8(&bytes).ok()?)
}

/// Whether a read of the log started (and has not been followed by
/// another) less than `ms` ago: one under way, or one that failed. Marks a
/// new one started now when not.
fn read_started_within(ms: i64) -> bool {
    noted_within("purge-log-read", ms)
}

/// Whether the store's `key` notes a time less than `ms` ago. When it
/// does not, it notes now.
pub(crate) fn noted_within(key: &str, ms: i64) -> bool {
    kv::noted_within_by(key, ms, get, |key, value| drop(set(key, value)))
}

/// Read the purge log after what this node applied: forget what the new
/// purges name, and store where the node stands. None when the log cannot
/// be read (logged).
fn read_log(before: Option<Applied>) -> Option<Applied> {
    let started = now_ms();
    let after = before.map_or_else(String::new, |b| b.last.to_string());
    let answer = redis::eval_items(
        purge_log::READ,
        &purge_log::keys(&channel()),
        &[redis::text(&after), RedisParameter::Int64(i64::from(purge_log::READ_MAX))],
    );
    let items: Vec<Vec<u8>> = match answer {
        Ok(items) => {
            items.into_iter().filter_map(|i| if let RedisResult::Binary(b) = i { Some(b) } else { None }).collect()
        }
        Err(e) => {
            crate::log::warn(
                "the purge log cannot be read: the node-local tier is not trusted until it can",
                &[("error", &e.to_string()), ("fix", "check that redis_address is reachable")],
            );
            return None;
        }
    };
    let Some(read) = Read::parse(&items) else {
        crate::log::warn("the purge log answered something else", &[("items", &items.len().to_string())]);
        return None;
    };
    for message in &read.messages {
        if let Some(Message::Purge(paths)) = Message::decode(message) {
            purge(&paths);
        }
    }
    // Another instance may have stored a read meanwhile: never trust more
    // than either says.
    let mut applied = Applied::after(before, &read, started);
    if let Some(other) = stored_standing() {
        applied.trusted_since_ms = applied.trusted_since_ms.max(other.trusted_since_ms);
        if other.read_at_ms > applied.read_at_ms {
            (applied.last, applied.read_at_ms) = (other.last, other.read_at_ms);
        }
    }
    if let Some(Err(e)) = set(STANDING_KEY, applied.encode().as_bytes()) {
        crate::log::warn("storing where the node stands in the purge log failed", &[("error", &format!("{e:?}"))]);
        return None;
    }
    STANDING.with(|cell| cell.set(Some(Some(applied))));
    Some(applied)
}

/// Where this node stands, when what it keeps may be served: its last read
/// of the purge log is recent, or a read now succeeds. None when the log
/// cannot be read, or another instance's read is under way or just failed.
fn trusted() -> Option<Applied> {
    trusted_from(standing())
}

/// [`trusted`], where the node stood being `before`. While the node's
/// breaker for Redis has a note (Redis did not answer), no request reads
/// the log before its answer: reads after answers probe Redis
/// ([`read_log_if_due`]), so a client never waits on a Redis that went
/// silent but for the one request that found it so.
fn trusted_from(before: Option<Applied>) -> Option<Applied> {
    if let Some(fresh) = before.filter(|a| a.is_fresh(now_ms())) {
        return Some(fresh);
    }
    if crate::breaker::noted(crate::breaker::Backend::Redis) || read_started_within(purge_log::TRUST_MS) {
        return None;
    }
    read_log(before)
}

/// A node that never read the purge log reads it before its first lookup
/// in the database: the first read trusts only what is kept after it (the
/// node may have missed purges before), so what that lookup keeps is
/// trusted.
fn read_once() {
    if standing().is_none() {
        let _ = trusted();
    }
}

/// After an answer: read the purge log when a read is due, so the next
/// hits need not.
pub fn read_log_if_due() {
    if max_age_ms() == 0 {
        return;
    }
    let before = standing();
    if before.is_some_and(|a| !a.read_due(now_ms())) || read_started_within(purge_log::READ_EVERY_MS) {
        return;
    }
    read_log(before);
}
