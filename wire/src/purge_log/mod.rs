//! The purge log: every purge published on a Redis channel is also
//! numbered and appended to a stream beside it, so a node that cannot stay
//! subscribed (a Spin instance lives for one request) reads the purges it
//! has not applied yet, and knows when it may have missed some.
//!
//! A reading node trusts what it keeps only while its last read of the log
//! is younger than [`TRUST_MS`], and only what it kept since it last read
//! the log without a gap ([`Applied`]): a purge published anywhere stops
//! being served by a reading node within [`TRUST_MS`] of the publish.

/// Append a purge and publish it: `KEYS` [`keys`], `ARGV` the channel, the
/// purge message, [`KEPT_MS`]; answers PUBLISH's count.
pub const PUBLISH: &str = include_str!("publish.lua");
/// The purges after a number: `KEYS` [`keys`], `ARGV` the number of the
/// last purge applied (`""`: none), [`READ_MAX`]; answers what
/// [`Read::parse`] reads.
pub const READ: &str = include_str!("read.lua");

/// Publish a native node's heartbeat with the number of the newest purge
/// appended (what [`heartbeat_position`] reads): `KEYS` the counter
/// ([`keys`]`[1]`), `ARGV` the heartbeat channel, the message; answers
/// PUBLISH's count.
pub const HEARTBEAT: &str = include_str!("heartbeat.lua");

/// A heartbeat [`HEARTBEAT`] published: the message, and the number of the
/// newest purge when it was sent. None for anything else.
pub fn heartbeat_position(text: &str) -> Option<(&str, u64)> {
    let (message, number) = text.rsplit_once('\n')?;
    Some((message, number.parse().ok()?))
}

/// How long the log keeps a purge, ms: a reader further behind than this
/// starts over (trusts nothing it kept before).
pub const KEPT_MS: i64 = 10 * 60 * 1000;
/// Most purges one read returns: a reader further behind starts over.
pub const READ_MAX: u32 = 1000;
/// A reader serves what it keeps only while its last read of the log is
/// younger than this, ms: the longest a purge made at another node is
/// served by a reader after it was published.
pub const TRUST_MS: i64 = 1000;
/// A reader reads the log again, after answering, once its last read is
/// this old, ms; so a busy reader stays within [`TRUST_MS`] without making
/// a client wait for the read.
pub const READ_EVERY_MS: i64 = 500;

/// The Redis keys of the log of `channel`: the stream and its counter (one
/// hash slot).
pub fn keys(channel: &str) -> [String; 2] {
    [format!("{{{channel}}}:purges"), format!("{{{channel}}}:purges:seq")]
}

/// What one read of the log answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// The number of the newest purge.
    pub last: u64,
    /// Some purges after the one asked from are not in `messages`.
    pub gap: bool,
    /// The purge messages (as [`crate::channel::Message::decode`] reads them).
    pub messages: Vec<String>,
}

impl Read {
    /// Read the items [`READ`] answers; none when they are not its answer.
    pub fn parse(items: &[Vec<u8>]) -> Option<Read> {
        let text = |bytes: &Vec<u8>| String::from_utf8(bytes.clone()).ok();
        let (last, gap) = (items.first().and_then(text)?, items.get(1).and_then(text)?);
        let messages = items[2..].iter().map(text).collect::<Option<Vec<_>>>()?;
        Some(Read { last: last.parse().ok()?, gap: gap == "1", messages })
    }
}

/// Where a reading node stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The number of the last purge applied.
    pub last: u64,
    /// When the log was last read (its read started), ms since the epoch.
    pub read_at_ms: i64,
    /// What was kept before this may have missed a purge: it is not served.
    pub trusted_since_ms: i64,
}

impl Applied {
    /// After applying `read`, which started at `started_ms`, from `before`
    /// (none: the log was never read). A gap, or a first read, trusts only
    /// what is kept from the read on.
    pub fn after(before: Option<Applied>, read: &Read, started_ms: i64) -> Applied {
        let trusted_since_ms = match before {
            Some(b) if !read.gap => b.trusted_since_ms,
            _ => started_ms,
        };
        Applied { last: read.last, read_at_ms: started_ms, trusted_since_ms }
    }

    /// Whether the last read is recent enough, at `now_ms`, to serve what is
    /// kept.
    pub fn is_fresh(&self, now_ms: i64) -> bool {
        (0..TRUST_MS).contains(&(now_ms - self.read_at_ms))
    }

    /// Whether a read is due at `now_ms` (after an answer).
    pub fn read_due(&self, now_ms: i64) -> bool {
        !(0..READ_EVERY_MS).contains(&(now_ms - self.read_at_ms))
    }

    /// Whether what was kept at `kept_ms` may be served at `now_ms`.
    pub fn trusts(&self, kept_ms: i64, now_ms: i64) -> bool {
        self.is_fresh(now_ms) && kept_ms >= self.trusted_since_ms
    }

    /// Whether what was kept at `kept_ms` may be served at `now_ms`, marked
    /// stale, while the region cannot be reached: it was trusted at the
    /// last read of the log, and that read is younger than `bound_ms`
    /// (purges since then are not known: a late delete is the price).
    pub fn trusts_stale(&self, kept_ms: i64, now_ms: i64, bound_ms: i64) -> bool {
        (0..bound_ms).contains(&(now_ms - self.read_at_ms)) && kept_ms >= self.trusted_since_ms
    }

    /// As stored.
    pub fn encode(&self) -> String {
        format!("{} {} {}", self.last, self.read_at_ms, self.trusted_since_ms)
    }

    /// Read what [`Applied::encode`] wrote; none for anything else.
    pub fn decode(text: &str) -> Option<Applied> {
        let mut words = text.split(' ');
        let applied = Applied {
            last: words.next()?.parse().ok()?,
            read_at_ms: words.next()?.parse().ok()?,
            trusted_since_ms: words.next()?.parse().ok()?,
        };
        words.next().is_none().then_some(applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(last: u64, gap: bool) -> Read {
        Read { last, gap, messages: vec![] }
    }

    #[test]
    fn answers_of_the_read_script_parse() {
        let items: Vec<Vec<u8>> = ["12", "0", "purge\n/a.narinfo"].iter().map(|s| s.as_bytes().to_vec()).collect();
        assert_eq!(
            Read::parse(&items),
            Some(Read { last: 12, gap: false, messages: vec!["purge\n/a.narinfo".into()] })
        );
        assert_eq!(Read::parse(&items[..1]), None);
        assert_eq!(Read::parse(&[b"x".to_vec(), b"0".to_vec()]), None);
        assert_eq!(keys("ncps:lock:edge-cache")[0], "{ncps:lock:edge-cache}:purges");
    }

    #[test]
    fn only_what_was_kept_since_a_gapless_read_is_trusted() {
        // The first read trusts nothing kept before it.
        let first = Applied::after(None, &read(5, false), 1_000);
        assert_eq!(first, Applied { last: 5, read_at_ms: 1_000, trusted_since_ms: 1_000 });
        assert!(!first.trusts(999, 1_100) && first.trusts(1_000, 1_100));
        // Reads without a gap keep trusting; a gap starts over.
        let later = Applied::after(Some(first), &read(9, false), 60_000);
        assert_eq!(later.trusted_since_ms, 1_000);
        assert!(later.trusts(2_000, 60_500));
        let gap = Applied::after(Some(later), &read(99, true), 70_000);
        assert!(!gap.trusts(60_000, 70_001) && gap.trusts(70_000, 70_001));
    }

    #[test]
    fn a_heartbeat_carries_the_number_of_the_newest_purge() {
        let beat = crate::channel::Message::Heartbeat("0123456789abcdef").encode();
        let published = format!("{beat}\n{}", 1_700_000_000_000_123u64);
        assert_eq!(heartbeat_position(&published), Some((beat.as_str(), 1_700_000_000_000_123)));
        assert_eq!(heartbeat_position(&format!("{beat}\n0")), Some((beat.as_str(), 0)));
        assert_eq!(heartbeat_position("heartbeat"), None, "no number");
        assert_eq!(heartbeat_position(&format!("{beat}\nx")), None, "not a number");
    }

    #[test]
    fn a_read_older_than_the_bound_trusts_nothing() {
        let a = Applied { last: 1, read_at_ms: 10_000, trusted_since_ms: 0 };
        assert!(a.trusts(5_000, 10_000 + TRUST_MS - 1));
        assert!(!a.trusts(5_000, 10_000 + TRUST_MS));
        assert!(!a.trusts(5_000, 9_000), "a read from the future (clock stepped back)");
        assert!(!a.read_due(10_000 + READ_EVERY_MS - 1) && a.read_due(10_000 + READ_EVERY_MS));
        assert_eq!(Applied::decode(&a.encode()), Some(a));
        assert_eq!(Applied::decode("1 2"), None);
        assert_eq!(Applied::decode("1 2 3 4"), None);
    }

    #[test]
    fn stale_answers_end_at_their_bound_and_never_serve_the_untrusted() {
        let a = Applied { last: 1, read_at_ms: 10_000, trusted_since_ms: 5_000 };
        assert!(a.trusts_stale(5_000, 10_000 + 60_000 - 1, 60_000));
        assert!(!a.trusts_stale(5_000, 10_000 + 60_000, 60_000), "past the bound");
        assert!(!a.trusts_stale(4_999, 10_001, 60_000), "kept before the node could trust it");
        assert!(!a.trusts_stale(5_000, 10_001, 0), "stale answers off");
    }
}
