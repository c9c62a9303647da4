//! How the node-local tier writes its entries in the key-value store, and
//! when one can no longer be served (what the sweep deletes).
//!
//! Every entry's key starts with its kind (`<kind>/…`), and every value
//! the tier writes with the scope that wrote it (`<scope>\n…`,
//! [`with_scope`]; see `super::get`):
//! - `narinfo`: JSON `{"kept_at_ms", "record"}`;
//! - `object` (a small NAR) and `public-key`: `<kept at, ms>\n<bytes>`;
//! - `absent`: `<until, ms> <kept at, ms>`;
//! - `accessed`: `<written at, ms>`, when the node last wrote a NAR's
//!   access time to the database.
//!
//! The node's own notes (`purge-log`, `purge-log-read`, `settings`,
//! `sweep`) are single keys and never swept. An entry without a scope (as
//! written before values carried it, under keys that held it) is dead.

use serde_json::{json, Value};

use ncps_edge_wire::sql::ACCESS_WRITE_EVERY_MS;

use crate::bindings::exports::ncps::edge::metadata::NarinfoRecord;

/// The kinds of entry: what the first segment of a key names. The tier
/// names its keys with [`Kind::prefix`] and the sweep tells them apart with
/// [`Kind::of`], so the two cannot drift apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A narinfo record.
    Narinfo,
    /// A small NAR.
    Object,
    /// The public half of the database's signing key.
    PublicKey,
    /// An absence.
    Absent,
    /// When a NAR's access time was last written.
    Accessed,
}

impl Kind {
    const ALL: [Kind; 5] = [Kind::Narinfo, Kind::Object, Kind::PublicKey, Kind::Absent, Kind::Accessed];

    /// The first segment of this kind's keys.
    pub const fn prefix(self) -> &'static str {
        match self {
            Kind::Narinfo => "narinfo",
            Kind::Object => "object",
            Kind::PublicKey => "public-key",
            Kind::Absent => "absent",
            Kind::Accessed => "accessed",
        }
    }

    /// The kind of entry `key` is; none for the node's notes.
    pub fn of(key: &str) -> Option<Kind> {
        let first = key.split_once('/').map_or(key, |(first, _)| first);
        Kind::ALL.into_iter().find(|kind| kind.prefix() == first)
    }
}

/// The entry kept for a narinfo record read from the database at
/// `kept_at_ms`.
pub fn encode_narinfo(record: &NarinfoRecord, kept_at_ms: i64) -> String {
    json!({ "kept_at_ms": kept_at_ms, "record": to_json(record) }).to_string()
}

/// When a narinfo entry was kept, and its record.
pub fn decode_narinfo(bytes: &[u8]) -> Option<(i64, NarinfoRecord)> {
    let (kept_at, entry) = narinfo_kept_at(bytes)?;
    Some((kept_at, from_json(entry.get("record")?)?))
}

fn narinfo_kept_at(bytes: &[u8]) -> Option<(i64, Value)> {
    let entry: Value = serde_json::from_slice(bytes).ok()?;
    Some((entry.get("kept_at_ms")?.as_i64()?, entry))
}

/// The entry kept at `kept_at_ms` for `bytes` (a small NAR, or the public
/// key).
pub fn encode_timed(kept_at_ms: i64, bytes: &[u8]) -> Vec<u8> {
    let mut value = format!("{kept_at_ms}\n").into_bytes();
    value.extend_from_slice(bytes);
    value
}

/// When a timed entry was kept, and its bytes.
pub fn decode_timed(mut value: Vec<u8>) -> Option<(i64, Vec<u8>)> {
    let newline = value.iter().position(|b| *b == b'\n')?;
    let kept_at = leading_time(&value[..newline])?;
    Some((kept_at, value.split_off(newline + 1)))
}

/// The time an entry starts with (up to its first newline or space).
fn leading_time(bytes: &[u8]) -> Option<i64> {
    let end = bytes.iter().position(|b| *b == b'\n' || *b == b' ').unwrap_or(bytes.len());
    std::str::from_utf8(&bytes[..end]).ok()?.parse().ok()
}

/// The entry of an absence known from `now_ms` until `until_ms`.
pub fn encode_absence(until_ms: i64, now_ms: i64) -> String {
    format!("{until_ms} {now_ms}")
}

/// Until when an absence is known, and when it was kept.
pub fn decode_absence(bytes: &[u8]) -> Option<(i64, i64)> {
    let (until, kept_at) = std::str::from_utf8(bytes).ok()?.split_once(' ')?;
    Some((until.parse().ok()?, kept_at.parse().ok()?))
}

/// `value` headed by the scope that wrote it (`<scope>\n<value>`).
pub fn with_scope(scope: &str, value: &[u8]) -> Vec<u8> {
    let mut headed = Vec::with_capacity(scope.len() + 1 + value.len());
    headed.extend_from_slice(scope.as_bytes());
    headed.push(b'\n');
    headed.extend_from_slice(value);
    headed
}

/// The scope that wrote a value, and the value; none when it has no scope.
pub fn split_scope(headed: &[u8]) -> Option<(&[u8], &[u8])> {
    let newline = headed.iter().position(|b| *b == b'\n')?;
    Some((&headed[..newline], &headed[newline + 1..]))
}

/// Whether what was kept at `kept_at` is younger than `max_age_ms` at
/// `now`.
pub fn young(kept_at: i64, now: i64, max_age_ms: i64) -> bool {
    (0..max_age_ms).contains(&(now - kept_at))
}

/// Whether the entry `key` holding `value` can no longer be served at
/// `now` by a node that keeps its entries `retention_ms` (`max_age_s`,
/// then for stale answers; 0: the tier is off, and every narinfo, NAR and
/// key entry is dead): the sweep deletes it. An entry of a known kind that
/// cannot be read is dead too; a key of no known kind is never.
pub fn expired(key: &str, value: &[u8], now: i64, retention_ms: i64) -> bool {
    let Some(kind) = Kind::of(key) else { return false };
    let Some((_, value)) = split_scope(value) else { return true };
    let kept = match kind {
        Kind::Narinfo => narinfo_kept_at(value).map(|(kept_at, _)| young(kept_at, now, retention_ms)),
        Kind::Object | Kind::PublicKey => leading_time(value).map(|kept_at| young(kept_at, now, retention_ms)),
        Kind::Absent => decode_absence(value).map(|(until, _)| until > now),
        Kind::Accessed => leading_time(value).map(|at| young(at, now, ACCESS_WRITE_EVERY_MS as i64)),
    };
    !kept.unwrap_or(false)
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

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;
    const AGE: i64 = 60_000;

    fn record() -> NarinfoRecord {
        NarinfoRecord {
            hash: "h".into(),
            store_path: "/nix/store/h-x".into(),
            url: "nar/f.nar".into(),
            compression: "none".into(),
            file_hash: None,
            file_size: None,
            nar_hash: "sha256:x".into(),
            nar_size: 1,
            references: vec![],
            deriver: None,
            system: None,
            ca: None,
            sigs: vec!["k:s".into()],
        }
    }

    #[test]
    fn entries_read_back_what_was_written() {
        let (kept_at, back) = decode_narinfo(encode_narinfo(&record(), 7).as_bytes()).unwrap();
        assert_eq!((kept_at, back.url, back.sigs), (7, "nar/f.nar".to_owned(), vec!["k:s".to_owned()]));
        assert_eq!(decode_timed(encode_timed(9, b"a\nb")), Some((9, b"a\nb".to_vec())));
        assert_eq!(decode_absence(encode_absence(20, 10).as_bytes()), Some((20, 10)));
    }

    /// `value` as the tier writes it, headed by a scope.
    fn headed(value: &[u8]) -> Vec<u8> {
        with_scope("d/l", value)
    }

    #[test]
    fn a_value_names_the_scope_that_wrote_it() {
        let value = with_scope("d/l", b"12\nx\ny");
        assert_eq!(split_scope(&value), Some((&b"d/l"[..], &b"12\nx\ny"[..])));
        assert_eq!(split_scope(b"no scope"), None);
    }

    #[test]
    fn entries_expire_by_kind() {
        let narinfo = |at| headed(encode_narinfo(&record(), at).as_bytes());
        assert!(!expired("narinfo/h", &narinfo(NOW - AGE + 1), NOW, AGE));
        assert!(expired("narinfo/h", &narinfo(NOW - AGE), NOW, AGE));
        assert!(expired("narinfo/h", &narinfo(NOW), NOW, 0), "the tier is off");
        assert!(!expired("object/nar/f.nar", &headed(&encode_timed(NOW - 1, b"x")), NOW, AGE));
        assert!(expired("object/nar/f.nar", &headed(&encode_timed(NOW - AGE, b"x")), NOW, AGE));
        assert!(expired("public-key", &headed(&encode_timed(NOW - AGE - 1, b"k")), NOW, AGE));
        assert!(!expired("absent/narinfo/h", &headed(encode_absence(NOW + 1, NOW - AGE * 9).as_bytes()), NOW, AGE));
        assert!(expired("absent/narinfo/h", &headed(encode_absence(NOW, NOW - 1).as_bytes()), NOW, AGE));
        let written = |at: i64| headed(at.to_string().as_bytes());
        assert!(!expired("accessed/nar/f.nar", &written(NOW - 1), NOW, AGE));
        assert!(expired("accessed/nar/f.nar", &written(NOW - ACCESS_WRITE_EVERY_MS as i64), NOW, AGE));
    }

    #[test]
    fn unreadable_entries_are_dead_and_notes_are_kept() {
        assert!(expired("narinfo/h", &headed(b"{"), NOW, AGE));
        assert!(expired("absent/narinfo/h", &headed(b"soon"), NOW, AGE));
        // An entry without a scope (as written before entries carried one).
        assert!(expired("absent/narinfo/s/h", format!("{} {NOW}", NOW + AGE).as_bytes(), NOW, AGE));
        assert!(expired("narinfo/h", encode_narinfo(&record(), NOW).as_bytes(), NOW, AGE));
        for note in [
            "purge-log",
            "purge-log-read",
            "settings/variables",
            "sweep/at",
            "breaker/database",
            "breaker/storage",
            "other",
        ] {
            assert_eq!(Kind::of(note), None);
            assert!(!expired(note, b"0", NOW, AGE), "{note}");
        }
        assert_eq!(Kind::of("accessed/nar/f.nar"), Some(Kind::Accessed));
        assert_eq!(Kind::of("absent/narinfo/h"), Some(Kind::Absent));
        assert_eq!(Kind::of("public-key"), Some(Kind::PublicKey));
    }
}
