//! Nix hashes: nix32 strings and sha256 digests in Nix's notations.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

/// Nix's base-32 alphabet (no e, o, t, u).
const NIX32_ALPHABET: &str = "0123456789abcdfghijklmnpqrsvwxyz";

/// Whether `s` is non-empty and made only of nix32 characters.
pub fn is_nix32(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| NIX32_ALPHABET.contains(c))
}

/// Whether `s` is a store-path hash: 32 nix32 characters.
pub fn is_store_hash(s: &str) -> bool {
    s.len() == 32 && is_nix32(s)
}

/// Why a hash string was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid sha256 hash {0:?}")]
pub struct HashError(pub String);

/// A sha256 digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    /// Parse `sha256:<nix32|hex|base64>` or SRI `sha256-<base64>`.
    pub fn parse(s: &str) -> Result<Self, HashError> {
        let err = || HashError(s.to_owned());
        let body = s.strip_prefix("sha256:").or_else(|| s.strip_prefix("sha256-")).ok_or_else(err)?;
        let bytes = match body.len() {
            52 => Self::from_nix32(body).map(|h| h.0.to_vec()),
            64 => decode_hex(body),
            44 => B64.decode(body).ok(),
            _ => None,
        }
        .ok_or_else(err)?;
        bytes.try_into().map(Sha256).map_err(|_| err())
    }

    /// Parse a bare 52-character nix32 digest.
    pub fn from_nix32(s: &str) -> Option<Self> {
        if s.len() != 52 || !is_nix32(s) {
            return None;
        }
        nix_base32::from_nix_base32(s)?.try_into().ok().map(Sha256)
    }

    /// The bare nix32 form (52 characters).
    pub fn to_nix32(&self) -> String {
        nix_base32::to_nix_base32(&self.0)
    }

    /// `sha256:<nix32>`, the form narinfos and fingerprints use.
    pub fn to_nix_string(&self) -> String {
        format!("sha256:{}", self.to_nix32())
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // `nix-hash --type sha256 --to-base32` of the sha256 of "hello\n".
    const HELLO_HEX: &str = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
    const HELLO_NIX32: &str = "00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq";

    #[test]
    fn nix32_round_trip_matches_nix() {
        let h = Sha256::parse(&format!("sha256:{HELLO_HEX}")).unwrap();
        assert_eq!(h.to_nix32(), HELLO_NIX32);
        assert_eq!(Sha256::from_nix32(HELLO_NIX32), Some(h));
        assert_eq!(Sha256::parse(&h.to_nix_string()), Ok(h));
    }

    #[test]
    fn parses_sri() {
        let h = Sha256::parse("sha256-WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM=").unwrap();
        assert_eq!(h.to_nix32(), HELLO_NIX32);
    }

    #[test]
    fn rejects_garbage() {
        assert!(Sha256::parse("md5:abc").is_err());
        assert!(Sha256::parse("sha256:eeee").is_err());
        assert!(Sha256::from_nix32(&"e".repeat(52)).is_none());
        assert!(!is_store_hash("../../../../etc/passwd0000000000"));
        assert!(is_store_hash("0hjhjamk0a0xk2b5yygfqhy2rnql3byd"));
    }
}
