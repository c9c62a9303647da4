//! Where a storage key lives in a store (local folder or S3 bucket), in
//! ncps's layout, and what a NAR object's name promises: a NAR object is
//! named by the sha256 of its bytes (`nar/<nix32 sha256>.nar<ext>`), and no
//! store publishes bytes under a name they do not hash to ([`ContentCheck`]).

use sha2::Digest as _;

/// Longest storage key accepted.
pub const MAX_KEY_LEN: usize = 512;

/// Where NAR objects live under a store root.
pub const NAR_PREFIX: &str = "store/nar/";

/// Where markers of S3 multipart uploads in progress live.
pub const UPLOADS_PREFIX: &str = "store/uploads/";

/// Bytes of one part of an S3 multipart upload: what a writer buffers.
pub const PART_SIZE: usize = 8 << 20;

/// Whether `key` is a plain relative key: `/`-separated segments of
/// `[A-Za-z0-9._-]`, none of them empty, `.` or `..`.
pub fn is_valid_key(key: &str) -> bool {
    let ok_segment = |s: &str| {
        !s.is_empty() && s != "." && s != ".." && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    key.len() <= MAX_KEY_LEN && key.split('/').all(ok_segment)
}

/// The path of a valid `key` under a store root:
/// `store/nar/<h0>/<h0h1>/<file>` for NARs, `store/<key>` otherwise.
pub fn object_path(key: &str) -> String {
    match key.strip_prefix("nar/") {
        Some(file) if !file.contains('/') && file.len() >= 2 => {
            format!("{NAR_PREFIX}{}/{}/{file}", &file[..1], &file[..2])
        }
        _ => format!("store/{key}"),
    }
}

/// The storage key of an object path under [`NAR_PREFIX`] (its file name
/// under `nar/`), none for anything else.
pub fn nar_key_of(object: &str) -> Option<String> {
    let file = object.strip_prefix(NAR_PREFIX)?.rsplit('/').next()?;
    Some(format!("nar/{file}"))
}

/// Where the marker of multipart upload `id` lives.
pub fn upload_marker(id: &str) -> String {
    format!("{UPLOADS_PREFIX}{id}")
}

/// The sha256 that the NAR key `nar/<52 nix32 characters>.nar[.<ext>]`
/// names; none for any other key (a 32-character or non-canonical name
/// promises nothing, so no such object is ever written).
pub fn named_sha256(key: &str) -> Option<[u8; 32]> {
    let (hash, ext) = key.strip_prefix("nar/")?.split_once(".nar")?;
    if hash.len() != 52 || !(ext.is_empty() || ext.starts_with('.')) || ext.contains('/') {
        return None;
    }
    let digest: [u8; 32] = nix_base32::from_nix_base32(hash)?.try_into().ok()?;
    // One digest has one name: a string whose spare bits are set is not it.
    (nix_base32::to_nix_base32(&digest) == hash).then_some(digest)
}

/// Checks bytes written under a NAR key against the sha256 the key names.
#[derive(Clone)]
pub struct ContentCheck {
    want: [u8; 32],
    hasher: sha2::Sha256,
}

impl ContentCheck {
    /// The check of `key`; none when the key names no sha256 (such an
    /// object must not be written at all).
    pub fn for_key(key: &str) -> Option<Self> {
        Some(Self { want: named_sha256(key)?, hasher: sha2::Sha256::new() })
    }

    /// Hash the next bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
    }

    /// Whether everything hashed so far is what the name says.
    pub fn matches(&self) -> bool {
        let got: [u8; 32] = self.hasher.clone().finalize().into();
        got == self.want
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // `nix-hash --type sha256 --to-base32` of the sha256 of "hello\n".
    const HELLO: &str = "00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq";

    #[test]
    fn nar_objects_live_in_ncps_layout() {
        assert_eq!(object_path(&format!("nar/{HELLO}.nar.xz")), format!("store/nar/0/00/{HELLO}.nar.xz"));
        assert_eq!(nar_key_of(&format!("store/nar/0/00/{HELLO}.nar")), Some(format!("nar/{HELLO}.nar")));
        assert!(is_valid_key("nar/abc.nar.xz"));
        assert!(!is_valid_key("nar/../x") && !is_valid_key("nar//x") && !is_valid_key(""));
    }

    #[test]
    fn a_nar_name_is_the_sha256_of_its_bytes() {
        let mut check = ContentCheck::for_key(&format!("nar/{HELLO}.nar.zst")).expect("a content-addressed name");
        check.update(b"hello");
        assert!(!check.matches());
        check.update(b"\n");
        assert!(check.matches());
        let mut other = ContentCheck::for_key(&format!("nar/{HELLO}.nar")).unwrap();
        other.update(b"hello!\n");
        assert!(!other.matches());
    }

    #[test]
    fn names_that_promise_nothing_are_not_content_addressed() {
        for key in [
            "nar/0c5gsym8rwxz5ynj76j0gh1q9h9wv5px.nar.xz".to_owned(),
            format!("nar/{HELLO}.narx"),
            format!("nar/{HELLO}.nar/x"),
            format!("other/{HELLO}.nar"),
            format!("nar/{}.nar", HELLO.replace('0', "e")),
            // The spare top bits of a 52-character nix32 string set: the
            // same digest under a second name.
            format!("nar/{}.nar", HELLO.replacen('0', "z", 1)),
        ] {
            assert!(named_sha256(&key).is_none(), "{key}");
        }
    }
}
