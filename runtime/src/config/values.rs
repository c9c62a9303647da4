//! Parsers of single values: sizes, durations, upstream URLs, keys,
//! database URLs, listen addresses. Each is a clap value parser, so a bad
//! value is refused with the flag's name before anything starts.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};

/// Parse a size like ncps does: a number with an optional unit B, K, M, G
/// or T (powers of 1024), e.g. `100G`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a size like 100G"))?;
    let shift = match unit.trim().to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("{s:?}: unit must be B, K, M, G or T")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("{s:?} is too large"))
}

/// Parse a duration such as `100ms`, `3s`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s.trim())
}

/// One upstream cache from `--cache-upstream-url`.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// Base URL without credentials, query or trailing slash.
    pub url: String,
    /// Priority from `?priority=N`, if given.
    pub priority: Option<u32>,
    /// `Basic …` of the credentials in the URL (`http://user:password@host`).
    pub authorization: Option<String>,
}

impl std::fmt::Debug for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamUrl")
            .field("url", &self.url)
            .field("priority", &self.priority)
            .field("authorization", &self.authorization.as_ref().map(|_| "****"))
            .finish()
    }
}

/// Parse an upstream URL: http(s) only, optional `?priority=N`; credentials
/// in it become the `authorization` it is sent and leave the URL, so they
/// are never logged, shown in metrics or in `config check`.
pub fn parse_upstream(raw: &str) -> anyhow::Result<UpstreamUrl> {
    let (without_credentials, authorization) = ncps_edge_protocol::auth::split_credentials(raw.trim());
    let raw = mask_url(raw.trim());
    let parsed = url::Url::parse(&without_credentials).with_context(|| format!("upstream URL {raw:?}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        bail!("upstream URL {raw:?} must be http:// or https:// with a host");
    }
    let mut priority = None;
    for (k, v) in parsed.query_pairs() {
        match k.as_ref() {
            "priority" => priority = Some(v.parse().with_context(|| format!("priority in {raw:?}"))?),
            other => bail!("unknown upstream URL parameter {other:?} in {raw:?}"),
        }
    }
    let mut base = parsed.clone();
    base.set_query(None);
    Ok(UpstreamUrl { url: base.as_str().trim_end_matches('/').to_owned(), priority, authorization })
}

/// Check a Nix public key `name:base64`: it must decode to a valid ed25519
/// point, or the node refuses to start (a key that cannot verify anything
/// must never turn into "accept unverified").
pub fn parse_public_key(raw: &str) -> anyhow::Result<String> {
    ncps_edge_host_services::signer::check_public_key(raw.trim())
        .map(|()| raw.trim().to_owned())
        .with_context(|| format!("public key {raw:?} is not <name>:<base64 of a valid ed25519 key>"))
}

/// Where the metadata lives (`--cache-database-url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// `sqlite:<path>` (relative paths are resolved when the node starts).
    Sqlite(PathBuf),
    /// `postgresql://…` or `postgres://…`.
    Postgres(String),
    /// `mysql://…`.
    Mysql(String),
}

/// Parse `--cache-database-url`.
pub fn parse_database_url(url: &str) -> anyhow::Result<DatabaseUrl> {
    let url = url.trim();
    if let Some(path) = url.strip_prefix("sqlite:") {
        let path = path.trim_start_matches("//");
        if path.is_empty() {
            bail!("{url:?} has no path");
        }
        return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
    }
    if url.starts_with("postgresql://") || url.starts_with("postgres://") {
        return Ok(DatabaseUrl::Postgres(url.to_owned()));
    }
    if url.starts_with("mysql://") {
        return Ok(DatabaseUrl::Mysql(url.to_owned()));
    }
    bail!("{url:?}: use sqlite:<path>, postgresql://… or mysql://…")
}

/// Turn ncps's `:8501` into a bindable address.
pub fn listen_addr(addr: &str) -> String {
    if addr.starts_with(':') {
        format!("0.0.0.0{addr}")
    } else {
        addr.to_owned()
    }
}

/// A URL with its password replaced, for printing.
pub fn mask_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("****"));
            u.to_string()
        }
        _ => raw.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls_and_priorities() {
        assert_eq!(
            parse_upstream("https://cache.nixos.org/?priority=40").unwrap(),
            UpstreamUrl { url: "https://cache.nixos.org".into(), priority: Some(40), authorization: None }
        );
        let with_credentials = parse_upstream("http://us%3Aer:s%40cret@cache.example:8080/x?priority=2").unwrap();
        assert_eq!(with_credentials.url, "http://cache.example:8080/x");
        assert_eq!(with_credentials.priority, Some(2));
        // base64 of "us:er:s@cret": the user name and password decoded.
        assert_eq!(with_credentials.authorization.as_deref(), Some("Basic dXM6ZXI6c0BjcmV0"));
        assert!(!format!("{with_credentials:?}").contains("cret"), "credentials in a debug print");
        assert!(parse_upstream("ftp://x").is_err());
        assert!(parse_upstream("http://x?prio=1").is_err());
        assert_eq!(listen_addr(":8501"), "0.0.0.0:8501");
    }

    #[test]
    fn sizes_use_ncps_units() {
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("5K"), Ok(5 << 10));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("3MB"), Ok(3 << 20));
        assert!(parse_size("G").is_err() && parse_size("5X").is_err() && parse_size("99999999999T").is_err());
    }

    #[test]
    fn database_urls() {
        assert_eq!(parse_database_url("sqlite:db/x.sqlite").unwrap(), DatabaseUrl::Sqlite("db/x.sqlite".into()));
        assert_eq!(parse_database_url("sqlite:///abs/x").unwrap(), DatabaseUrl::Sqlite("/abs/x".into()));
        assert!(matches!(parse_database_url("postgres://u@h/d").unwrap(), DatabaseUrl::Postgres(_)));
        assert!(parse_database_url("oracle://x").is_err());
        assert!(parse_database_url("sqlite:").is_err());
    }

    #[test]
    fn public_keys_must_be_valid_points() {
        let good = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";
        assert!(parse_public_key(good).is_ok());
        assert!(parse_public_key("nokey").is_err());
        assert!(parse_public_key("n:AAAA").is_err());
        assert!(mask_url("postgresql://u:secret@h/d").contains("****"));
    }
}
