//! Narinfo requests: hits from metadata, misses pulled from upstream,
//! verified, rewritten and signed; uploads and deletes.

use crate::hash::{is_nix32, Sha256};
use crate::http::{text, Request, Response};
use crate::logging;
use crate::narinfo::{compression_extension, NarInfo};
use crate::ncps::edge::config::Settings;
use crate::ncps::edge::locks::{self, Mode};
use crate::ncps::edge::metadata::{self, NarRecord};
use crate::ncps::edge::metrics::{self, CacheResult, FetchOutcome, ObjectKind};
use crate::ncps::edge::signer;
use crate::ncps::edge::types::Error as HostError;
use crate::records::{from_record, to_record};
use crate::route::NarPath;
use crate::signature::verify_any;
use crate::upstream;
use crate::wasi::http::types::ResponseOutparam;

/// Serve `/<hash>.narinfo`.
pub fn get(settings: &Settings, hash: &str, out: ResponseOutparam, head: bool) {
    if let Some(info) = lookup(hash) {
        return respond(out, &info, "HIT", head);
    }
    // Serialize concurrent misses of one hash on the download lock; if the
    // lock service is down, go on without it (fetching twice is harmless).
    let ttl = settings.download_lock_ttl_ms;
    let _lease = match locks::acquire(&format!("download:narinfo:{hash}"), Mode::Exclusive, ttl) {
        Ok(lease) => {
            if let Some(info) = lookup(hash) {
                return respond(out, &info, "HIT", head);
            }
            Some(lease)
        }
        // The lock service is down (and degraded mode is off): fail fast.
        Err(e @ HostError::Unavailable(_)) => {
            logging::warn(
                "failed to acquire lock",
                &[("hash", hash), ("lock_type", "download:narinfo"), ("error", &format!("{e:?}"))],
            );
            return text(out, 503, "lock service unavailable\n", head);
        }
        // Held elsewhere for longer than the retries wait: fetching twice is harmless.
        Err(e) => {
            logging::warn(
                "failed to acquire lock",
                &[("hash", hash), ("lock_type", "download:narinfo"), ("error", &format!("{e:?}"))],
            );
            None
        }
    };
    match fetch(settings, hash) {
        Some(info) => respond(out, &info, "MISS", head),
        None => text(out, 404, "not found\n", head),
    }
}

fn respond(out: ResponseOutparam, info: &NarInfo, cache: &str, head: bool) {
    metadata::record_access(&info.url);
    let result = if cache == "HIT" { CacheResult::Hit } else { CacheResult::Miss };
    metrics::served(ObjectKind::Narinfo, result);
    Response::new(200).header("content-type", "text/x-nix-narinfo").header("x-cache", cache).send(
        out,
        info.render().as_bytes(),
        head,
    );
}

/// The stored narinfo; a metadata failure is logged and treated as a miss.
fn lookup(hash: &str) -> Option<NarInfo> {
    match metadata::get_narinfo(hash) {
        Ok(Some(record)) => from_record(record),
        Ok(None) => None,
        Err(e) => {
            logging::warn("metadata lookup failed", &[("hash", hash), ("error", &format!("{e:?}"))]);
            None
        }
    }
}

/// Why one upstream's narinfo was not taken.
enum Refusal {
    /// It does not have it (404 or another non-200 status).
    NotFound(u16),
    /// It answered with something we must not adopt.
    Rejected(String),
    /// The request failed.
    Failed(String),
}

/// Ask every upstream at once, take the answer of the most preferred one that
/// has a valid narinfo, rewrite, sign and record it.
fn fetch(settings: &Settings, hash: &str) -> Option<NarInfo> {
    let ups = upstream::ordered();
    let pending: Vec<_> =
        ups.iter().map(|u| upstream::start_get(&format!("{}/{hash}.narinfo", u.url), settings)).collect();
    for (up, pending) in ups.iter().zip(pending) {
        let started = crate::time::Instant::now();
        let result = pending.map_err(|e| Refusal::Failed(e.to_string())).and_then(|p| take(settings, hash, up, p));
        let seconds = started.elapsed().as_secs_f64();
        let outcome = match &result {
            Ok(_) => FetchOutcome::Ok,
            Err(Refusal::NotFound(_)) => FetchOutcome::NotFound,
            Err(Refusal::Rejected(_)) => FetchOutcome::Rejected,
            Err(Refusal::Failed(_)) => FetchOutcome::Error,
        };
        metrics::upstream_fetch(ObjectKind::Narinfo, &up.url, seconds, outcome);
        match result {
            Ok(info) => {
                let ms = ((seconds * 1000.0) as u64).to_string();
                logging::info(
                    "fetched narinfo from upstream",
                    &[("hash", hash), ("upstream", &up.url), ("duration_ms", &ms)],
                );
                return Some(info);
            }
            Err(Refusal::NotFound(status)) => logging::debug(
                "upstream has no narinfo",
                &[("hash", hash), ("upstream", &up.url), ("status", &status.to_string())],
            ),
            Err(Refusal::Rejected(why)) => {
                logging::warn("upstream narinfo refused", &[("hash", hash), ("upstream", &up.url), ("error", &why)])
            }
            Err(Refusal::Failed(why)) => logging::warn(
                "upstream narinfo request failed",
                &[("hash", hash), ("upstream", &up.url), ("error", &why)],
            ),
        }
    }
    None
}

/// Read, check and adopt one upstream's answer.
fn take(
    settings: &Settings,
    hash: &str,
    up: &upstream::Upstream,
    pending: upstream::Pending,
) -> Result<NarInfo, Refusal> {
    let resp = pending.wait().map_err(|e| Refusal::Failed(e.to_string()))?;
    if resp.status != 200 {
        return Err(Refusal::NotFound(resp.status));
    }
    let body = resp.body.ok_or_else(|| Refusal::Failed("no body".into()))?;
    let body = body.read_to_end(settings.max_narinfo_size).map_err(|e| Refusal::Rejected(e.to_string()))?;
    let text = std::str::from_utf8(&body).map_err(|e| Refusal::Rejected(e.to_string()))?;
    let info = NarInfo::parse(text).map_err(|e| Refusal::Rejected(format!("malformed: {e}")))?;
    if info.hash() != hash {
        return Err(Refusal::Rejected(format!("narinfo is for another store path, {}", info.store_path)));
    }
    if !up.keys.is_empty() && !verify_any(&info.fingerprint(), &info.sigs, &up.keys) {
        return Err(Refusal::Rejected("no valid signature from a trusted key".into()));
    }
    adopt(settings, info, &up.url).ok_or_else(|| Refusal::Rejected("unusable URL or compression".into()))
}

/// The NAR path this cache serves an upstream narinfo's file under.
fn nar_path_for(info: &NarInfo) -> Option<NarPath> {
    let ext = compression_extension(&info.compression)?;
    let file = info.url.rsplit('/').next().unwrap_or_default();
    let url_hash = file.split('.').next().filter(|h| (h.len() == 52 || h.len() == 32) && is_nix32(h));
    let hash = match url_hash {
        Some(h) => h.to_owned(),
        None => info.file_hash.unwrap_or(info.nar_hash).to_nix32(),
    };
    Some(NarPath { hash, ext: ext.to_owned() })
}

/// Rewrite an upstream narinfo to our URL, sign it and record it with the
/// upstream location of its NAR. Recording failures are logged: the narinfo
/// is still served.
fn adopt(settings: &Settings, mut info: NarInfo, upstream_url: &str) -> Option<NarInfo> {
    let path = nar_path_for(&info)?;
    let upstream_nar = format!("{upstream_url}/{}", info.url.split('?').next().unwrap_or_default());
    info.url = path.key();
    if info.compression == "none" && info.file_hash.is_none() {
        info.file_hash = Some(info.nar_hash);
    }
    if settings.sign_narinfo {
        sign(&mut info);
    }
    if let Err(e) = record(&info, Some(upstream_nar)) {
        logging::warn("failed to record narinfo", &[("hash", info.hash()), ("error", &format!("{e:?}"))]);
    }
    Some(info)
}

/// Replace any signature under our key name with a fresh one of ours.
fn sign(info: &mut NarInfo) {
    let ours = signer::public_key();
    let name = ours.split(':').next().unwrap_or_default();
    info.sigs.retain(|s| s.split(':').next() != Some(name));
    match signer::sign(&info.fingerprint()) {
        Ok(sig) => info.sigs.push(sig),
        Err(e) => logging::warn("signing failed", &[("hash", info.hash()), ("error", &format!("{e:?}"))]),
    }
}

/// Store the narinfo and its NAR record (keeping what is known of a NAR that
/// is stored already). A failure to store the NAR record is only logged: the
/// NAR can still be found upstream by its URL.
fn record(info: &NarInfo, upstream_nar: Option<String>) -> Result<(), HostError> {
    let hash = info.hash().to_owned();
    metadata::put_narinfo(&to_record(&hash, info))?;
    let stored_size = metadata::get_nar(&info.url).ok().flatten().and_then(|n| n.stored_size);
    let nar = NarRecord {
        key: info.url.clone(),
        upstream_url: upstream_nar,
        file_hash: info.file_hash.map(|h: Sha256| h.to_nix_string()),
        file_size: info.file_size,
        stored_size,
    };
    if let Err(e) = metadata::put_nar(&nar) {
        logging::warn("failed to record nar", &[("hash", &hash), ("error", &format!("{e:?}"))]);
    }
    Ok(())
}

/// `PUT /<hash>.narinfo` (with `--cache-allow-put-verb`).
pub fn put(settings: &Settings, req: &Request, hash: &str, out: ResponseOutparam) {
    let body = match req.body().map(|b| b.read_to_end(settings.max_narinfo_size)) {
        Some(Ok(b)) => b,
        Some(Err(crate::http::BodyError::TooLarge(n))) => {
            return text(out, 413, &format!("narinfo larger than {n} bytes\n"), false)
        }
        _ => return text(out, 400, "unreadable body\n", false),
    };
    let mut info = match std::str::from_utf8(&body)
        .map_err(|e| e.to_string())
        .and_then(|t| NarInfo::parse(t).map_err(|e| e.to_string()))
    {
        Ok(info) => info,
        Err(e) => return text(out, 400, &format!("invalid narinfo: {e}\n"), false),
    };
    if info.hash() != hash {
        return text(out, 400, "narinfo is for another store path\n", false);
    }
    let url_ok = info.url.strip_prefix("nar/").and_then(NarPath::parse).is_some_and(|p| p.key() == info.url);
    if !url_ok {
        return text(out, 400, "narinfo URL must be nar/<hash>.nar[.ext]\n", false);
    }
    if info.compression == "none" && info.file_hash.is_none() {
        info.file_hash = Some(info.nar_hash);
    }
    if settings.sign_narinfo {
        sign(&mut info);
    }
    if let Err(e) = record(&info, None) {
        logging::warn("failed to record uploaded narinfo", &[("hash", hash), ("error", &format!("{e:?}"))]);
        return text(out, 503, "metadata unavailable\n", false);
    }
    logging::info("stored uploaded narinfo", &[("hash", hash)]);
    Response::new(204).send(out, b"", false);
}

/// `DELETE /<hash>.narinfo` (with `--cache-allow-delete-verb`).
pub fn delete(hash: &str, out: ResponseOutparam) {
    match metadata::delete_narinfo(hash) {
        Ok(true) => Response::new(204).send(out, b"", false),
        Ok(false) => text(out, 404, "not found\n", false),
        Err(e) => {
            logging::warn("failed to delete narinfo", &[("hash", hash), ("error", &format!("{e:?}"))]);
            text(out, 503, "metadata unavailable\n", false)
        }
    }
}
