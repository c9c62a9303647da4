//! The cache's ed25519 signing key in Nix's formats
//! (`name:base64(secret‖public)` for secret keys, `name:base64(public)` for
//! public keys), loaded from a file or kept in the metadata database.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};

pub mod wit;

use crate::metadata::ConfigStore;
use crate::{Error, Result};

/// Config key under which a generated secret key is stored in the database.
pub const SECRET_KEY_CONFIG: &str = "cache.secret-key";

/// A named ed25519 signing key.
#[derive(Clone)]
pub struct Signer {
    name: String,
    key: SigningKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("public_key", &self.public_key()).finish()
    }
}

impl Signer {
    /// Parse a Nix secret key (`name:base64`, 64 bytes secret‖public or 32 bytes seed).
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        let (name, b64) = text
            .split_once(':')
            .filter(|(n, _)| !n.is_empty())
            .ok_or_else(|| Error::invalid("secret key must be <name>:<base64>"))?;
        let bytes = B64.decode(b64).map_err(|e| Error::invalid(format!("secret key: {e}")))?;
        let key = match bytes.len() {
            64 => {
                let arr: [u8; 64] = bytes.try_into().map_err(|_| Error::invalid("secret key length"))?;
                SigningKey::from_keypair_bytes(&arr)
                    .map_err(|e| Error::invalid(format!("secret key does not match its public half: {e}")))?
            }
            32 => {
                let arr: [u8; 32] = bytes.try_into().map_err(|_| Error::invalid("secret key length"))?;
                SigningKey::from_bytes(&arr)
            }
            n => return Err(Error::invalid(format!("secret key has {n} bytes, want 64"))),
        };
        Ok(Self { name: name.to_owned(), key })
    }

    /// A fresh random key called `name`.
    pub fn generate(name: &str) -> Self {
        Self { name: name.to_owned(), key: SigningKey::from_bytes(&rand::random::<[u8; 32]>()) }
    }

    /// The secret key in Nix's format.
    pub fn to_secret_string(&self) -> String {
        format!("{}:{}", self.name, B64.encode(self.key.to_keypair_bytes()))
    }

    /// The public key in Nix's format.
    pub fn public_key(&self) -> String {
        format!("{}:{}", self.name, B64.encode(self.key.verifying_key().as_bytes()))
    }

    /// Sign a fingerprint: `name:base64(signature)`.
    pub fn sign(&self, fingerprint: &str) -> String {
        format!("{}:{}", self.name, B64.encode(self.key.sign(fingerprint.as_bytes()).to_bytes()))
    }

    /// The key from `path` when given, else the one in the database, else a
    /// new one named `<hostname>-1` stored there (the first node to store
    /// one wins, so every node sharing the database signs alike).
    pub async fn load_or_generate(
        path: Option<&std::path::Path>,
        config: &dyn ConfigStore,
        hostname: &str,
    ) -> Result<Self> {
        if let Some(path) = path {
            let text = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| Error::invalid(format!("reading secret key {}: {e}", path.display())))?;
            return Self::parse(&text);
        }
        if let Some(stored) = config.get_config(SECRET_KEY_CONFIG).await? {
            return Self::parse(&stored);
        }
        let fresh = Self::generate(&format!("{hostname}-1"));
        let stored = config.set_config_if_absent(SECRET_KEY_CONFIG, &fresh.to_secret_string()).await?;
        Self::parse(&stored)
    }
}

/// Check a Nix public key `name:base64`: a name, and 32 bytes that are a
/// valid ed25519 point (a key with a typo in it usually is not).
pub fn check_public_key(text: &str) -> Result<()> {
    let (name, b64) = text
        .trim()
        .split_once(':')
        .filter(|(n, _)| !n.is_empty())
        .ok_or_else(|| Error::invalid("public key must be <name>:<base64>"))?;
    let bytes: [u8; 32] = B64
        .decode(b64)
        .map_err(|e| Error::invalid(format!("public key {name}: {e}")))?
        .try_into()
        .map_err(|_| Error::invalid(format!("public key {name} is not 32 bytes")))?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes)
        .map(|_| ())
        .map_err(|e| Error::invalid(format!("public key {name} is not a valid ed25519 key: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_secret_key() {
        let k = Signer::generate("test-1");
        let again = Signer::parse(&k.to_secret_string()).unwrap();
        assert_eq!(k.public_key(), again.public_key());
        assert!(k.public_key().starts_with("test-1:"));
    }

    #[test]
    fn public_keys_are_checked_as_points() {
        let good = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";
        assert!(check_public_key(good).is_ok());
        assert!(check_public_key(&Signer::generate("x").public_key()).is_ok());
        // Some one-character typo of a real key is base64 of 32 bytes that
        // is no ed25519 point: it must be refused, not ignored.
        let typo = (0..good.len() - 1)
            .flat_map(|i| ["A", "B", "C"].map(move |c| format!("{}{c}{}", &good[..i], &good[i + 1..])))
            .filter(|k| k != good && k.split_once(":").is_some_and(|(_, b)| B64.decode(b).is_ok_and(|b| b.len() == 32)))
            .find(|k| check_public_key(k).is_err());
        assert!(typo.is_some(), "no single-character typo makes an invalid point");
        assert!(check_public_key("nokey").is_err());
        assert!(check_public_key("n:AAAA").is_err());
    }

    #[test]
    fn rejects_malformed_keys() {
        assert!(Signer::parse("nocolon").is_err());
        assert!(Signer::parse("name:!!!").is_err());
        assert!(Signer::parse("name:AAAA").is_err());
    }
}
