//! Request paths of the binary-cache protocol.

use crate::hash::{is_nix32, is_store_hash};
use crate::narinfo::{compression_extension, NarInfo};

/// NAR file extensions this cache serves.
pub const NAR_EXTENSIONS: &[&str] = &["", ".xz", ".zst", ".bz2", ".lz4", ".br", ".lzip"];

/// What a request path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/`: JSON with hostname and public key.
    Root,
    /// `/nix-cache-info`.
    CacheInfo,
    /// `/pubkey`.
    PubKey,
    /// `/healthz`.
    Healthz,
    /// `/<hash>.narinfo`.
    Narinfo(String),
    /// `/nar/<hash>.nar<ext>`.
    Nar(NarPath),
    /// `/admin/lru`: run an LRU pass now.
    AdminLru,
    /// `/admin/fsck`: run a reconcile pass now.
    AdminFsck,
}

/// A NAR file name: `<hash>.nar<ext>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarPath {
    /// nix32 hash, 32 or 52 characters.
    pub hash: String,
    /// One of [`NAR_EXTENSIONS`].
    pub ext: String,
}

impl NarPath {
    /// Parse `<hash>.nar<ext>`.
    pub fn parse(file: &str) -> Option<Self> {
        let (hash, rest) = file.split_once(".nar")?;
        let ok_hash = (hash.len() == 32 || hash.len() == 52) && is_nix32(hash);
        (ok_hash && NAR_EXTENSIONS.contains(&rest)).then(|| Self { hash: hash.to_owned(), ext: rest.to_owned() })
    }
    /// The NAR path this cache serves a narinfo's file under: named by the
    /// sha256 of the file (its `FileHash`; an uncompressed NAR's is its
    /// `NarHash`), never by what its `URL` says, with the extension of its
    /// compression. None for an unknown compression or an unknown file
    /// hash: such a file cannot be named by its content.
    pub fn of_narinfo(info: &NarInfo) -> Option<Self> {
        let ext = compression_extension(&info.compression)?;
        let file_hash = info.file_hash.or((info.compression == "none").then_some(info.nar_hash))?;
        Some(Self { hash: file_hash.to_nix32(), ext: ext.to_owned() })
    }

    /// Make `info` a narinfo this cache serves: normalised (an
    /// uncompressed NAR's file hash is its NAR hash), its `URL` the NAR
    /// path named by its file hash ([`NarPath::of_narinfo`]); that path.
    /// `None` (and `info` unchanged but for normalising) when it cannot be
    /// named. What the cache, its uploads and `import-ncps` all do.
    pub fn adopt(info: &mut NarInfo) -> Option<Self> {
        info.normalise();
        let path = Self::of_narinfo(info)?;
        info.url = path.key();
        Some(path)
    }

    /// The sha256 this path's name promises (52-character names only).
    pub fn named_sha256(&self) -> Option<crate::hash::Sha256> {
        crate::hash::Sha256::from_nix32(&self.hash)
    }
    /// The storage key, `nar/<hash>.nar<ext>`.
    pub fn key(&self) -> String {
        format!("nar/{}.nar{}", self.hash, self.ext)
    }
}

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Looks like a cache path but is malformed (400).
    #[error("malformed path")]
    BadRequest,
    /// Nothing here (404).
    #[error("not found")]
    NotFound,
}

/// Route a request path (query string allowed; an `/upload` prefix is
/// accepted, so `nix copy --to http://host/upload` works).
pub fn parse(path_with_query: &str) -> Result<Route, RouteError> {
    let path = path_with_query.split(['?', '#']).next().unwrap_or_default();
    let path = path.strip_prefix("/upload").filter(|p| p.is_empty() || p.starts_with('/')).unwrap_or(path);
    match path {
        "" | "/" => return Ok(Route::Root),
        "/nix-cache-info" => return Ok(Route::CacheInfo),
        "/pubkey" => return Ok(Route::PubKey),
        "/healthz" => return Ok(Route::Healthz),
        "/admin/lru" => return Ok(Route::AdminLru),
        "/admin/fsck" => return Ok(Route::AdminFsck),
        _ => {}
    }
    if let Some(file) = path.strip_prefix("/nar/") {
        return NarPath::parse(file).map(Route::Nar).ok_or(RouteError::BadRequest);
    }
    if let Some(hash) = path.strip_prefix('/').and_then(|p| p.strip_suffix(".narinfo")) {
        return if is_store_hash(hash) { Ok(Route::Narinfo(hash.to_owned())) } else { Err(RouteError::BadRequest) };
    }
    Err(RouteError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "07hcdd9rppsp7n254gck5phaclgy1wnc";
    const F: &str = "0c5gsym8rwxz5ynj76j0gh1q9h9wv5pxfwy8k89plkrx0f8n3sah";

    #[test]
    fn routes_cache_paths() {
        assert_eq!(parse("/nix-cache-info"), Ok(Route::CacheInfo));
        assert_eq!(parse("/upload/nix-cache-info"), Ok(Route::CacheInfo));
        assert_eq!(parse("/admin/lru"), Ok(Route::AdminLru));
        assert_eq!(parse(&format!("/{H}.narinfo")), Ok(Route::Narinfo(H.into())));
        assert_eq!(parse(&format!("/upload/{H}.narinfo")), Ok(Route::Narinfo(H.into())));
        let nar = parse(&format!("/nar/{F}.nar.xz?hash={H}")).unwrap();
        assert_eq!(nar, Route::Nar(NarPath { hash: F.into(), ext: ".xz".into() }));
        if let Route::Nar(n) = nar {
            assert_eq!(n.key(), format!("nar/{F}.nar.xz"));
        }
        assert_eq!(parse(&format!("/nar/{F}.nar")), Ok(Route::Nar(NarPath { hash: F.into(), ext: String::new() })));
    }

    #[test]
    fn a_narinfo_s_nar_is_named_by_its_file_hash_not_its_url() {
        let text = include_str!("../testdata/top.narinfo");
        let info = NarInfo::parse(text).unwrap();
        let own = NarPath::of_narinfo(&info).unwrap();
        assert_eq!(Some(own.hash.as_str()), info.file_hash.map(|h| h.to_nix32()).as_deref());
        // A URL that borrows another NAR's name changes nothing.
        let mut lender = info.clone();
        lender.url = format!("nar/{F}.nar.xz");
        assert_eq!(NarPath::of_narinfo(&lender), Some(own.clone()));
        // No file hash, compressed: no name.
        let mut unnamed = info.clone();
        unnamed.file_hash = None;
        assert_eq!(NarPath::of_narinfo(&unnamed), None);
        unnamed.compression = "none".into();
        assert_eq!(NarPath::of_narinfo(&unnamed).map(|p| p.hash), Some(info.nar_hash.to_nix32()));
        let mut evil = info;
        evil.compression = "evil comp".into();
        assert_eq!(NarPath::of_narinfo(&evil), None);
    }

    #[test]
    fn refuses_malformed_and_traversal() {
        for bad in [
            "/nar/../../etc/passwd.nar",
            "/nar/%2e%2e%2fetc.nar.xz",
            &format!("/nar/{F}.nar.exe"),
            &format!("/nar/{F}.nar.xz/../../x"),
            "/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.narinfo",
            "/../etc/passwd.narinfo",
            "/short.narinfo",
        ] {
            assert_eq!(parse(bad), Err(RouteError::BadRequest), "{bad}");
        }
        assert_eq!(parse("/etc/passwd"), Err(RouteError::NotFound));
        assert_eq!(parse("/uploadx/nix-cache-info"), Err(RouteError::NotFound));
    }
}
