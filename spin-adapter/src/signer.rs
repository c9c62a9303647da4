//! `ncps:edge/signer`: the cache's key from the `secret_key` variable (make
//! it a Spin secret), else the one native nodes keep in the database
//! (`config` row `cache.secret-key`), else a new one stored there for every
//! node. The secret key stays in the adapter; the handler never sees it,
//! and it is never written to the node's disk (only the public half is
//! kept in the node-local tier).

use std::cell::OnceCell;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};

use crate::bindings::exports::ncps::edge::signer::Guest;
use crate::bindings::exports::ncps::edge::types::Error as WitError;
use crate::error::{Error, Result};
use crate::{metadata, settings, tier};

/// The database row of the key, as the native signer names it.
const SECRET_KEY_CONFIG: &str = "cache.secret-key";

/// A named ed25519 key.
struct Key {
    name: String,
    key: SigningKey,
}

thread_local! {
    static KEY: OnceCell<Key> = const { OnceCell::new() };
}

/// Parse a Nix secret key: `name:base64`, 64 bytes (secret‖public) or a
/// 32-byte seed.
fn parse(text: &str) -> Result<Key> {
    let (name, b64) =
        text.trim().split_once(':').ok_or_else(|| Error::Invalid("secret key must be <name>:<base64>".into()))?;
    let bytes = B64.decode(b64).map_err(|e| Error::Invalid(format!("secret key: {e}")))?;
    let key = match bytes.len() {
        64 => {
            let pair: [u8; 64] = bytes.try_into().map_err(|_| Error::Invalid("secret key length".into()))?;
            SigningKey::from_keypair_bytes(&pair)
                .map_err(|e| Error::Invalid(format!("secret key does not match its public half: {e}")))?
        }
        32 => {
            let seed: [u8; 32] = bytes.try_into().map_err(|_| Error::Invalid("secret key length".into()))?;
            SigningKey::from_bytes(&seed)
        }
        n => return Err(Error::Invalid(format!("secret key has {n} bytes, want 64"))),
    };
    Ok(Key { name: name.to_owned(), key })
}

fn load() -> Result<Key> {
    if let Some(text) = settings::var("secret_key") {
        return parse(&text);
    }
    if let Some(stored) = metadata::get_config(SECRET_KEY_CONFIG)? {
        return parse(&stored);
    }
    let seed: [u8; 32] = crate::bindings::wasi::random::random::get_random_bytes(32)
        .try_into()
        .map_err(|_| Error::Internal("signer", "short random read".into()))?;
    let fresh = SigningKey::from_bytes(&seed);
    let name = settings::var("hostname").unwrap_or_else(|| "ncps-edge".into());
    let text = format!("{name}:{}", B64.encode(fresh.to_keypair_bytes()));
    // Racing nodes: the first stored key wins, so every node signs alike.
    parse(&metadata::set_config_if_absent(SECRET_KEY_CONFIG, &text)?)
}

fn with_key<T>(f: impl FnOnce(&Key) -> T) -> Result<T> {
    KEY.with(|cell| {
        if cell.get().is_none() {
            let _ = cell.set(load()?);
        }
        cell.get().map(f).ok_or_else(|| Error::Internal("signer", "no key".into()))
    })
}

impl Guest for crate::Adapter {
    /// A key that cannot be loaded (the database down, a malformed
    /// `secret_key`) is an error the handler answers with a 503, logged
    /// here once with its cause. The database key's public half is kept
    /// in the node-local tier, so `/pubkey` needs no round trip, and is
    /// answered while the database fails (within `stale_if_error_s`).
    fn public_key() -> std::result::Result<String, WitError> {
        let from_database = settings::var("secret_key").is_none();
        if let Some(kept) = tier::public_key().filter(|_| from_database) {
            return Ok(kept);
        }
        let key = match with_key(|k| format!("{}:{}", k.name, B64.encode(k.key.verifying_key().as_bytes()))) {
            Ok(key) => key,
            // The database failed: the public half kept before, at any age
            // within the stale bound (it is never replaced).
            Err(e) => match tier::stale_public_key().filter(|_| from_database) {
                Some(kept) => return Ok(kept),
                None => {
                    crate::log::error("the signing key cannot be loaded", &[("error", &e.to_string())]);
                    return Err(WitError::from(e));
                }
            },
        };
        if from_database {
            tier::keep_public_key(&key);
        }
        Ok(key)
    }

    fn sign(fingerprint: String) -> std::result::Result<String, WitError> {
        Ok(with_key(|k| format!("{}:{}", k.name, B64.encode(k.key.sign(fingerprint.as_bytes()).to_bytes())))?)
    }
}
