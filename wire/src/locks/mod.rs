//! Lock keys as every node spells them, and the Redis lock protocol: the
//! key pair of a lock and the Lua scripts that take, extend and release it
//! atomically (the native Redis backend and the Spin adapter run the same
//! scripts on the same keys, so their nodes exclude each other).

/// The prefix of every lock key, and of the channel name
/// (`--cache-lock-<backend>-key-prefix`, ncps's default).
pub const DEFAULT_PREFIX: &str = "ncps:lock:";

/// Longest key a guest may ask for (before the prefix).
pub const MAX_KEY_LEN: usize = 200;

/// Whether the guest's lock key `key` may be used.
pub fn is_valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_LEN && !key.chars().any(char::is_control)
}

/// The Redis lock protocol.
pub mod redis {
    /// Take a lease: `KEYS` [`keys`], `ARGV` token, TTL in ms, `x` or `s`;
    /// 1 when taken.
    pub const ACQUIRE: &str = include_str!("acquire.lua");
    /// Extend a lease to now + TTL: the keys and arguments of [`ACQUIRE`].
    pub const EXTEND: &str = include_str!("extend.lua");
    /// Release a lease: the keys and arguments of [`ACQUIRE`].
    pub const RELEASE: &str = include_str!("release.lua");

    /// The Redis keys of the prefixed lock key `full`: its exclusive entry
    /// and the sorted set of its shared holders (one hash slot: `{…}`).
    pub fn keys(full: &str) -> [String; 2] {
        [format!("{{{full}}}"), format!("{{{full}}}:readers")]
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lock_keys_share_one_hash_slot() {
        assert_eq!(super::redis::keys("ncps:lock:lru"), ["{ncps:lock:lru}", "{ncps:lock:lru}:readers"]);
        assert!(super::is_valid_key("download:nar:abc"));
        assert!(!super::is_valid_key("") && !super::is_valid_key("a\nb") && !super::is_valid_key(&"k".repeat(201)));
    }
}
