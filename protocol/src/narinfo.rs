//! Narinfo files: parse, validate, render, and the fingerprint Nix signs.

use crate::hash::{is_store_hash, Sha256};

/// The store directory this cache serves.
pub const STORE_DIR: &str = "/nix/store";

/// Why a narinfo was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NarInfoError {
    /// A line is not `Key: value`.
    #[error("line {0} is not `Key: value`")]
    Syntax(usize),
    /// A required field is missing.
    #[error("missing {0}")]
    Missing(&'static str),
    /// A field has a bad value.
    #[error("bad {0}: {1:?}")]
    Bad(&'static str, String),
}

/// A parsed narinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    /// `/nix/store/<hash>-<name>`.
    pub store_path: String,
    /// Where the NAR file is, relative to the cache.
    pub url: String,
    /// `none`, `xz`, `zstd`, `bzip2`, …
    pub compression: String,
    /// Hash of the (compressed) file.
    pub file_hash: Option<Sha256>,
    /// Size of the (compressed) file.
    pub file_size: Option<u64>,
    /// Hash of the uncompressed NAR.
    pub nar_hash: Sha256,
    /// Size of the uncompressed NAR.
    pub nar_size: u64,
    /// Base names of the references.
    pub references: Vec<String>,
    /// Base name of the deriver.
    pub deriver: Option<String>,
    /// Build platform.
    pub system: Option<String>,
    /// Content address.
    pub ca: Option<String>,
    /// `name:base64` signatures.
    pub sigs: Vec<String>,
}

/// A narinfo's fields as they are stored (a metadata record, a database
/// row): hashes in Nix's notation, nothing checked yet
/// ([`NarInfo::from_fields`] checks them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields {
    /// `/nix/store/<hash>-<name>`.
    pub store_path: String,
    /// Where the NAR file is, relative to the cache.
    pub url: String,
    /// `none`, `xz`, `zstd`, `bzip2`, …
    pub compression: String,
    /// `sha256:…` of the (compressed) file.
    pub file_hash: Option<String>,
    /// Size of the (compressed) file.
    pub file_size: Option<u64>,
    /// `sha256:…` of the uncompressed NAR.
    pub nar_hash: String,
    /// Size of the uncompressed NAR.
    pub nar_size: u64,
    /// Base names of the references.
    pub references: Vec<String>,
    /// Base name of the deriver.
    pub deriver: Option<String>,
    /// Build platform.
    pub system: Option<String>,
    /// Content address.
    pub ca: Option<String>,
    /// `name:base64` signatures.
    pub sigs: Vec<String>,
}

/// Move the [`Fields`] of a narinfo from `$from` into a `$to { … }` that
/// has fields of the same names and types (plus `$extra`): the stored
/// fields and the metadata records on either side of the WIT boundary, so
/// the mapping is written once.
#[macro_export]
macro_rules! narinfo_fields {
    ($to:path { $($extra:tt)* } from $from:expr) => {{
        let f = $from;
        $to {
            store_path: f.store_path,
            url: f.url,
            compression: f.compression,
            file_hash: f.file_hash,
            file_size: f.file_size,
            nar_hash: f.nar_hash,
            nar_size: f.nar_size,
            references: f.references,
            deriver: f.deriver,
            system: f.system,
            ca: f.ca,
            sigs: f.sigs,
            $($extra)*
        }
    }};
}

/// Whether `name` is a valid store path base name `<hash>-<name>`.
pub fn is_store_base_name(base: &str) -> bool {
    let Some((hash, name)) = base.split_once('-') else {
        return false;
    };
    is_store_hash(hash)
        && !name.is_empty()
        && name.len() <= 211
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b))
}

/// The hash part of a store path, when it is a valid one.
pub fn store_path_hash(store_path: &str) -> Option<&str> {
    let base = store_path.strip_prefix(STORE_DIR)?.strip_prefix('/')?;
    is_store_base_name(base).then(|| &base[..32])
}

/// Largest size a narinfo may state: what every database stores (a signed
/// 64-bit integer), so a stated size is never stored as another number.
pub const MAX_SIZE: u64 = i64::MAX as u64;

fn parse_u64(field: &'static str, v: &str) -> Result<u64, NarInfoError> {
    v.parse().ok().filter(|n| *n <= MAX_SIZE).ok_or_else(|| NarInfoError::Bad(field, v.to_owned()))
}

fn parse_hash(field: &'static str, v: &str) -> Result<Sha256, NarInfoError> {
    Sha256::parse(v).map_err(|_| NarInfoError::Bad(field, v.to_owned()))
}

impl NarInfo {
    /// Parse and validate a narinfo. Unknown keys are ignored, as Nix does.
    pub fn parse(text: &str) -> Result<Self, NarInfoError> {
        let (mut store_path, mut url, mut compression) = (None, None, None);
        let (mut file_hash, mut file_size, mut nar_hash, mut nar_size) = (None, None, None, None);
        let (mut references, mut deriver, mut system, mut ca) = (Vec::new(), None, None, None);
        let mut sigs = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.is_empty() {
                continue;
            }
            let (key, value) = line.split_once(':').ok_or(NarInfoError::Syntax(i + 1))?;
            let value = value.trim().to_owned();
            match key {
                "StorePath" => store_path = Some(value),
                "URL" => url = Some(value),
                "Compression" => compression = Some(value),
                "FileHash" => file_hash = Some(value),
                "FileSize" => file_size = Some(parse_u64("FileSize", &value)?),
                "NarHash" => nar_hash = Some(value),
                "NarSize" => nar_size = Some(parse_u64("NarSize", &value)?),
                "References" => references = value.split_whitespace().map(str::to_owned).collect(),
                "Deriver" if value != "unknown-deriver" => deriver = Some(value),
                "System" => system = Some(value),
                "Sig" => sigs.push(value),
                "CA" => ca = Some(value),
                _ => {}
            }
        }
        Self::from_fields(Fields {
            store_path: store_path.ok_or(NarInfoError::Missing("StorePath"))?,
            url: url.ok_or(NarInfoError::Missing("URL"))?,
            // Nix's default when the field is absent.
            compression: compression.unwrap_or_else(|| "bzip2".to_owned()),
            file_hash,
            file_size,
            nar_hash: nar_hash.ok_or(NarInfoError::Missing("NarHash"))?,
            nar_size: nar_size.ok_or(NarInfoError::Missing("NarSize"))?,
            references,
            deriver,
            system,
            ca,
            sigs,
        })
    }

    /// Check stored fields (a metadata record, a database row) as
    /// [`NarInfo::parse`] checks a narinfo file.
    pub fn from_fields(f: Fields) -> Result<Self, NarInfoError> {
        store_path_hash(&f.store_path).ok_or_else(|| NarInfoError::Bad("StorePath", f.store_path.clone()))?;
        if f.url.is_empty() || f.url.contains(char::is_whitespace) {
            return Err(NarInfoError::Bad("URL", f.url));
        }
        for (field, size) in [("FileSize", f.file_size), ("NarSize", Some(f.nar_size))] {
            if size.is_some_and(|n| n > MAX_SIZE) {
                return Err(NarInfoError::Bad(field, size.unwrap_or_default().to_string()));
            }
        }
        if let Some(bad) = f.references.iter().find(|r| !is_store_base_name(r)) {
            return Err(NarInfoError::Bad("References", bad.clone()));
        }
        if let Some(bad) = f.deriver.as_ref().filter(|d| !is_store_base_name(d)) {
            return Err(NarInfoError::Bad("Deriver", bad.clone()));
        }
        Ok(NarInfo {
            store_path: f.store_path,
            url: f.url,
            compression: f.compression,
            file_hash: f.file_hash.map(|h| parse_hash("FileHash", &h)).transpose()?,
            file_size: f.file_size,
            nar_hash: parse_hash("NarHash", &f.nar_hash)?,
            nar_size: f.nar_size,
            references: f.references,
            deriver: f.deriver,
            system: f.system,
            ca: f.ca,
            sigs: f.sigs,
        })
    }

    /// The stored form of this narinfo.
    pub fn to_fields(&self) -> Fields {
        Fields {
            store_path: self.store_path.clone(),
            url: self.url.clone(),
            compression: self.compression.clone(),
            file_hash: self.file_hash.map(|h| h.to_nix_string()),
            file_size: self.file_size,
            nar_hash: self.nar_hash.to_nix_string(),
            nar_size: self.nar_size,
            references: self.references.clone(),
            deriver: self.deriver.clone(),
            system: self.system.clone(),
            ca: self.ca.clone(),
            sigs: self.sigs.clone(),
        }
    }

    /// The store-path hash (32 nix32 characters).
    pub fn hash(&self) -> &str {
        store_path_hash(&self.store_path).unwrap_or_default()
    }

    /// Render in Nix's field order.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::with_capacity(512);
        let _ = writeln!(s, "StorePath: {}", self.store_path);
        let _ = writeln!(s, "URL: {}", self.url);
        let _ = writeln!(s, "Compression: {}", self.compression);
        if let Some(h) = &self.file_hash {
            let _ = writeln!(s, "FileHash: {}", h.to_nix_string());
        }
        if let Some(n) = self.file_size {
            let _ = writeln!(s, "FileSize: {n}");
        }
        let _ = writeln!(s, "NarHash: {}", self.nar_hash.to_nix_string());
        let _ = writeln!(s, "NarSize: {}", self.nar_size);
        let _ = writeln!(s, "References: {}", self.references.join(" "));
        if let Some(d) = &self.deriver {
            let _ = writeln!(s, "Deriver: {d}");
        }
        if let Some(sys) = &self.system {
            let _ = writeln!(s, "System: {sys}");
        }
        for sig in &self.sigs {
            let _ = writeln!(s, "Sig: {sig}");
        }
        if let Some(ca) = &self.ca {
            let _ = writeln!(s, "CA: {ca}");
        }
        s
    }

    /// Make this the narinfo a cache serves: an uncompressed NAR's file
    /// hash is its NAR hash (Nix omits it).
    pub fn normalise(&mut self) {
        if self.compression == "none" && self.file_hash.is_none() {
            self.file_hash = Some(self.nar_hash);
        }
    }

    /// Sign with the key named `key_name`: `sign` turns the fingerprint
    /// into a `name:base64` signature, which replaces any earlier one under
    /// that name (an old signature of ours is dropped even when signing fails).
    pub fn sign_with<E>(&mut self, key_name: &str, sign: impl FnOnce(&str) -> Result<String, E>) -> Result<(), E> {
        self.sigs.retain(|s| s.split(':').next() != Some(key_name));
        self.sigs.push(sign(&self.fingerprint())?);
        Ok(())
    }

    /// Sign as the key whose public half is `public_key` (`name:base64`):
    /// [`NarInfo::sign_with`] its name.
    pub fn sign_as<E>(&mut self, public_key: &str, sign: impl FnOnce(&str) -> Result<String, E>) -> Result<(), E> {
        self.sign_with(public_key.split(':').next().unwrap_or_default(), sign)
    }

    /// What Nix signs: `1;<path>;<narhash>;<narsize>;<sorted full references>`.
    pub fn fingerprint(&self) -> String {
        let mut refs: Vec<String> = self.references.iter().map(|r| format!("{STORE_DIR}/{r}")).collect();
        refs.sort();
        format!("1;{};{};{};{}", self.store_path, self.nar_hash.to_nix_string(), self.nar_size, refs.join(","))
    }
}

/// File extension Nix uses for a compression method (`.xz`, `.zst`, …).
pub fn compression_extension(compression: &str) -> Option<&'static str> {
    Some(match compression {
        "none" => "",
        "xz" => ".xz",
        "bzip2" => ".bz2",
        "zstd" => ".zst",
        "lzip" => ".lzip",
        "lz4" => ".lz4",
        "br" => ".br",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOP: &str = include_str!("../testdata/top.narinfo");
    const HELLO: &str = include_str!("../testdata/hello-ca.narinfo");

    #[test]
    fn round_trips_real_nix_narinfos() {
        for text in [TOP, HELLO] {
            let info = NarInfo::parse(text).unwrap();
            assert_eq!(info.render(), text);
            assert_eq!(NarInfo::parse(&info.render()).unwrap(), info);
        }
    }

    #[test]
    fn fingerprint_has_sorted_full_references() {
        let info = NarInfo::parse(TOP).unwrap();
        assert_eq!(info.hash(), "07hcdd9rppsp7n254gck5phaclgy1wnc");
        assert_eq!(
            info.fingerprint(),
            "1;/nix/store/07hcdd9rppsp7n254gck5phaclgy1wnc-top;sha256:1ryq5islnapbglfhqw3ji6zmh8qlgy0gnkqj1n1np8cfyk7n43hv;384;\
             /nix/store/357329bb1zwv4kcwlrl2qn47hiczjy4j-leaf,/nix/store/lrhi4ivsx7ppmwzk0jw3mhh587nbar7y-mid"
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(NarInfo::parse("garbage"), Err(NarInfoError::Syntax(1)));
        assert!(matches!(
            NarInfo::parse(&TOP.replace("StorePath: /nix/store/", "StorePath: /etc/")),
            Err(NarInfoError::Bad("StorePath", _))
        ));
        assert!(matches!(
            NarInfo::parse(&TOP.replace("NarSize: 384", "NarSize: -1")),
            Err(NarInfoError::Bad("NarSize", _))
        ));
        assert!(matches!(NarInfo::parse(&TOP.replace("-leaf ", "-../leaf ")), Err(NarInfoError::Bad("References", _))));
        for huge in ["9223372036854775808", "18446744073709551615", "18446744073709551616"] {
            let text = TOP.replace("NarSize: 384", &format!("NarSize: {huge}"));
            assert!(matches!(NarInfo::parse(&text), Err(NarInfoError::Bad("NarSize", _))), "{huge}");
        }
        let largest = TOP.replace("NarSize: 384", "NarSize: 9223372036854775807");
        assert_eq!(NarInfo::parse(&largest).unwrap().nar_size, MAX_SIZE);
        let no_url: String = TOP.lines().filter(|l| !l.starts_with("URL")).map(|l| format!("{l}\n")).collect();
        assert_eq!(NarInfo::parse(&no_url), Err(NarInfoError::Missing("URL")));
    }

    #[test]
    fn stored_fields_round_trip_and_are_checked_like_a_file() {
        let info = NarInfo::parse(TOP).unwrap();
        assert_eq!(NarInfo::from_fields(info.to_fields()), Ok(info.clone()));
        let mut bad = info.to_fields();
        bad.references.push("../etc".into());
        assert!(matches!(NarInfo::from_fields(bad), Err(NarInfoError::Bad("References", _))));
        let mut huge = info.to_fields();
        huge.nar_size = MAX_SIZE + 1;
        assert!(matches!(NarInfo::from_fields(huge), Err(NarInfoError::Bad("NarSize", _))));
        let mut hash = info.to_fields();
        hash.nar_hash = "sha256:nope".into();
        assert!(matches!(NarInfo::from_fields(hash), Err(NarInfoError::Bad("NarHash", _))));
    }

    #[test]
    fn default_compression_is_bzip2() {
        let text: String = HELLO.lines().filter(|l| !l.starts_with("Compression")).map(|l| format!("{l}\n")).collect();
        assert_eq!(NarInfo::parse(&text).unwrap().compression, "bzip2");
    }
}
