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

/// Split the credentials off a URL (`scheme://user:password@host/…`): the
/// URL without them, and the `authorization` header value that carries
/// them (`Basic …` of the percent-decoded user name and password).
pub fn split_credentials(url: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else { return (url.to_owned(), None) };
    let (authority, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let Some((userinfo, host)) = authority.rsplit_once('@') else { return (url.to_owned(), None) };
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let pair = format!("{}:{}", percent_decode(user), percent_decode(password));
    (format!("{scheme}://{host}{tail}"), Some(format!("Basic {}", B64.encode(pair))))
}

/// `%XX` escapes decoded (anything else kept as it is).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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

    #[test]
    fn credentials_leave_the_url_for_a_header() {
        let (url, auth) = split_credentials("http://u%40ser:s%3Acret@cache.example:8080/x?priority=2");
        assert_eq!(url, "http://cache.example:8080/x?priority=2");
        // base64 of "u@ser:s:cret": the user name and password decoded.
        assert_eq!(auth.as_deref(), Some("Basic dUBzZXI6czpjcmV0"));
        assert_eq!(presented(auth.as_deref()).as_deref(), Some("s:cret"));
        assert_eq!(split_credentials("https://cache.nixos.org/"), ("https://cache.nixos.org/".to_owned(), None));
        assert_eq!(split_credentials("http://h/a@b").1, None, "an @ in the path is no credential");
        assert_eq!(split_credentials("http://token@h").1.as_deref(), Some("Basic dG9rZW46"));
    }
}
