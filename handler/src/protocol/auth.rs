//! Credentials as HTTP carries them: a bearer token, or the password of
//! basic auth (what a netrc file gives Nix), compared in constant time.
//! Shared by the guest's access control and the runtime's edge tier, so a
//! request is let in (or not) the same way by both.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

/// The secret an `Authorization` header value presents, if any.
pub fn presented(authorization: Option<&str>) -> Option<String> {
    let auth = authorization?;
    if let Some(bearer) = auth.strip_prefix("Bearer ") {
        return Some(bearer.trim().to_owned());
    }
    let raw = B64.decode(auth.strip_prefix("Basic ")?.trim()).ok()?;
    let pair = String::from_utf8(raw).ok()?;
    pair.split_once(':').map(|(_, password)| password.to_owned())
}

/// Compare secrets without an early exit on the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `given` is the (set, non-empty) `token`.
pub fn matches(given: Option<&str>, token: Option<&str>) -> bool {
    match (given, token.filter(|t| !t.is_empty())) {
        (Some(g), Some(t)) => constant_time_eq(g.as_bytes(), t.as_bytes()),
        _ => false,
    }
}

/// Whether a request with this `Authorization` may read: always without a
/// read token; else with the read token or either write token.
pub fn may_read(authorization: Option<&str>, get_token: Option<&str>, write_tokens: [Option<&str>; 2]) -> bool {
    let Some(token) = get_token.filter(|t| !t.is_empty()) else {
        return true;
    };
    let given = presented(authorization);
    [Some(token), write_tokens[0], write_tokens[1]].into_iter().any(|t| matches(given.as_deref(), t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_basic_passwords_are_presented() {
        assert_eq!(presented(Some("Bearer abc ")).as_deref(), Some("abc"));
        let basic = format!("Basic {}", B64.encode("nix:s3cret"));
        assert_eq!(presented(Some(&basic)).as_deref(), Some("s3cret"));
        assert_eq!(presented(Some("Digest x")), None);
        assert_eq!(presented(None), None);
    }

    #[test]
    fn reads_need_a_known_token_when_one_is_set() {
        assert!(may_read(None, None, [None, None]));
        assert!(!may_read(None, Some("r"), [None, None]));
        assert!(may_read(Some("Bearer r"), Some("r"), [None, None]));
        assert!(may_read(Some("Bearer w"), Some("r"), [Some("w"), None]));
        assert!(!may_read(Some("Bearer x"), Some("r"), [Some("w"), Some("")]));
        assert!(!may_read(Some("Bearer "), Some("r"), [Some(""), None]), "an empty write token matched");
    }
}
