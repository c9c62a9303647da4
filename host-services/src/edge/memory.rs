//! The memory tier: whole responses the guest marked cacheable, by request
//! path, bounded in bytes and evicted least-recently-used first (by
//! `quick_cache`), each until its own `max-age`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

/// What a kept response is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A narinfo (200) or "no upstream has it" (404).
    Narinfo,
    /// A NAR.
    Nar,
    /// `/nix-cache-info`, `/pubkey`, `/`.
    Info,
}

/// A response kept by the tier.
#[derive(Debug)]
pub struct Kept {
    /// Status code (200 or 404).
    pub status: u16,
    /// Response headers as the guest sent them, `x-cache` set to `HIT`.
    pub headers: http::HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// When it stops being served.
    pub expires: Instant,
    /// What it is.
    pub kind: Kind,
    /// The NAR whose access a hit records for the LRU (a narinfo's URL, a
    /// NAR's own key), as the guest records it.
    pub access_key: Option<String>,
}

#[derive(Clone)]
struct ByteWeight;

impl quick_cache::Weighter<String, Arc<Kept>> for ByteWeight {
    fn weight(&self, key: &String, kept: &Arc<Kept>) -> u64 {
        // Bodies plus a rough allowance for the key, headers and entry.
        (kept.body.len() + key.len() + 512) as u64
    }
}

/// Responses kept in memory.
pub struct MemoryTier {
    cache: quick_cache::sync::Cache<String, Arc<Kept>, ByteWeight>,
    /// Bumped by every purge: a response captured across a purge is not
    /// kept (it may predate what the purge announced).
    generation: AtomicU64,
    max_entry: usize,
}

impl MemoryTier {
    /// A tier of at most `capacity` bytes; no single response larger than
    /// a sixteenth of it is kept.
    pub fn new(capacity: u64) -> Self {
        let estimated_items = (capacity / 4096).clamp(16, 1 << 20) as usize;
        Self {
            cache: quick_cache::sync::Cache::with_weighter(estimated_items, capacity, ByteWeight),
            generation: AtomicU64::new(0),
            max_entry: (capacity / 16) as usize,
        }
    }

    /// The largest body this tier keeps.
    pub fn max_entry(&self) -> usize {
        self.max_entry
    }

    /// The kept response for `path`, unless it expired (it is kept past
    /// its max-age, until the bytes it takes are needed, for
    /// [`MemoryTier::get_stale`]).
    pub fn get(&self, path: &str) -> Option<Arc<Kept>> {
        self.cache.get(path).filter(|kept| kept.expires > Instant::now())
    }

    /// The kept response for `path`, expired or not.
    pub fn get_stale(&self, path: &str) -> Option<Arc<Kept>> {
        self.cache.get(path)
    }

    /// The generation to pass to [`MemoryTier::insert`] for a response
    /// whose capture starts now.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Keep `kept` under `path`, unless a purge happened since `generation`
    /// or it is too large; whether it was kept.
    pub fn insert(&self, path: String, kept: Kept, generation: u64) -> bool {
        if kept.body.len() > self.max_entry || self.generation() != generation {
            return false;
        }
        self.cache.insert(path, Arc::new(kept));
        // A purge between the check and the insert: undo, conservatively.
        if self.generation() != generation {
            return false;
        }
        true
    }

    /// Forget `paths`.
    pub fn remove(&self, paths: &[String]) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        for path in paths {
            self.cache.remove(path.as_str());
        }
    }

    /// Forget everything.
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.cache.clear();
    }

    /// Bytes kept (by the weight above).
    pub fn weight(&self) -> u64 {
        self.cache.weight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn kept(body: &'static [u8], ttl: Duration) -> Kept {
        Kept {
            status: 200,
            headers: http::HeaderMap::new(),
            body: Bytes::from_static(body),
            expires: Instant::now() + ttl,
            kind: Kind::Narinfo,
            access_key: None,
        }
    }

    #[test]
    fn keeps_until_max_age_and_forgets_on_purge() {
        let tier = MemoryTier::new(1 << 20);
        let g = tier.generation();
        assert!(tier.insert("/a.narinfo".into(), kept(b"a", Duration::from_secs(60)), g));
        assert!(tier.insert("/b.narinfo".into(), kept(b"b", Duration::from_millis(1)), g));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(tier.get("/a.narinfo").map(|k| k.body.clone()), Some(Bytes::from_static(b"a")));
        assert!(tier.get("/b.narinfo").is_none(), "served past its max-age");
        assert!(tier.get_stale("/b.narinfo").is_some(), "not kept past its max-age for stale answers");
        tier.remove(&["/a.narinfo".into()]);
        assert!(tier.get("/a.narinfo").is_none());
    }

    #[test]
    fn a_capture_across_a_purge_is_not_kept() {
        let tier = MemoryTier::new(1 << 20);
        let before = tier.generation();
        tier.remove(&["/a.narinfo".into()]);
        assert!(!tier.insert("/a.narinfo".into(), kept(b"old", Duration::from_secs(60)), before));
        assert!(tier.get("/a.narinfo").is_none());
    }

    #[test]
    fn bounded_in_bytes() {
        let tier = MemoryTier::new(64 << 10);
        static BODY: [u8; 2048] = [7; 2048];
        for i in 0..200 {
            tier.insert(format!("/{i}"), kept(&BODY, Duration::from_secs(60)), tier.generation());
        }
        assert!(tier.weight() <= 64 << 10, "{} bytes kept", tier.weight());
        assert!(!tier.insert("/huge".into(), kept(&[0; 8192], Duration::from_secs(60)), tier.generation()));
    }
}
