//! Ed25519 narinfo signatures in Nix's `name:base64` notation.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};

/// A trusted public key.
#[derive(Debug, Clone)]
pub struct PublicKey {
    name: String,
    key: VerifyingKey,
}

impl PublicKey {
    /// Parse `name:base64(32 bytes)`; `None` when malformed.
    pub fn parse(s: &str) -> Option<Self> {
        let (name, b64) = s.trim().split_once(':')?;
        let bytes: [u8; 32] = B64.decode(b64).ok()?.try_into().ok()?;
        Some(Self { name: name.to_owned(), key: VerifyingKey::from_bytes(&bytes).ok()? })
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `sig` (`name:base64`) is this key's valid signature of `fingerprint`.
    pub fn verifies(&self, fingerprint: &str, sig: &str) -> bool {
        let Some((name, b64)) = sig.split_once(':') else {
            return false;
        };
        let Some(bytes) = B64.decode(b64).ok().and_then(|b| <[u8; 64]>::try_from(b).ok()) else {
            return false;
        };
        name == self.name && self.key.verify_strict(fingerprint.as_bytes(), &Signature::from_bytes(&bytes)).is_ok()
    }
}

/// Whether any of `sigs` is a valid signature of `fingerprint` by any of `keys`.
pub fn verify_any(fingerprint: &str, sigs: &[String], keys: &[PublicKey]) -> bool {
    sigs.iter().any(|sig| keys.iter().any(|k| k.verifies(fingerprint, sig)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::narinfo::NarInfo;

    const TOP: &str = include_str!("../testdata/top.narinfo");
    const KEY: &str = include_str!("../testdata/fixture-1.pub");

    #[test]
    fn verifies_signature_made_by_nix() {
        let info = NarInfo::parse(TOP).unwrap();
        let key = PublicKey::parse(KEY).unwrap();
        assert!(verify_any(&info.fingerprint(), &info.sigs, std::slice::from_ref(&key)));
        // A changed NarSize breaks the signature.
        let mut tampered = info.clone();
        tampered.nar_size += 1;
        assert!(!verify_any(&tampered.fingerprint(), &tampered.sigs, &[key]));
    }

    #[test]
    fn rejects_other_keys_and_names() {
        let info = NarInfo::parse(TOP).unwrap();
        let other = PublicKey::parse("fixture-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=").unwrap();
        assert!(!verify_any(&info.fingerprint(), &info.sigs, &[other]));
        let renamed = PublicKey::parse(&KEY.replace("fixture-1", "other-1")).unwrap();
        assert!(!verify_any(&info.fingerprint(), &info.sigs, &[renamed]));
        assert!(PublicKey::parse("nokey").is_none());
    }
}
