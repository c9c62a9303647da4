//! `/<hash>.narinfo`: hits from metadata; misses pulled from the upstreams,
//! verified, rewritten to our NAR URL, signed and recorded; uploads and
//! deletes.

use std::time::Duration;

use crate::bindings::ncps::edge::config::Settings;
use crate::bindings::ncps::edge::metadata;
use crate::bindings::ncps::edge::metrics::{self, FetchOutcome, ObjectKind};
use crate::bindings::ncps::edge::storage;
use crate::bindings::wasi::http::types::ResponseOutparam;
use crate::cache::download_lock::{self, Wait};
use crate::cache::narinfos::{kept_stale, lookup, lookup_or_failed, normalise_and_sign, record};
use crate::cache::nars::lock_for_publish;
use crate::endpoints::written::Written;
use crate::host::edge::{self, Served};
use crate::host::http::{text, BodyError, Request, Response};
use crate::host::logging;
use crate::host::time::Instant;
use crate::host::upstream::{self, Trust};
use crate::protocol::narinfo::NarInfo;
use crate::protocol::route::NarPath;
use crate::protocol::signature::{verify_any, PublicKey};
use crate::protocol::timing;

/// `GET|HEAD /<hash>.narinfo`.
pub fn get(settings: &Settings, hash: &str, out: ResponseOutparam, head: bool) {
    match lookup_or_failed(hash) {
        Ok(Some(info)) => return respond(settings, out, &info, Served::Hit, head),
        Ok(None) => {}
        // The database failed: what the node's tier kept, marked stale.
        Err(_) => {
            if let Some(info) = kept_stale(hash) {
                return respond(settings, out, &info, Served::Stale, head);
            }
        }
    }
    let absent = edge::absent_for(hash);
    if absent > 0 {
        return not_found(settings, out, head, absent);
    }
    // A narinfo fetch ends by its deadline: wait longer than that for
    // another instance's fetch, so waiters get what it found. A lock still
    // held after that is held by no fetch (left by a holder that lost its
    // lock service): look once more, then fetch without it.
    let patience = timing::narinfo_patience(connect_timeout(settings), response_timeout(settings));
    let _lease = match download_lock::acquire_or_wait("narinfo", hash, settings, patience, || lookup(hash)) {
        Wait::Done(info) => return respond(settings, out, &info, Served::Hit, head),
        Wait::Acquired(lease) => Some(lease),
        Wait::GaveUp => match lookup(hash) {
            Some(info) => return respond(settings, out, &info, Served::Hit, head),
            None => None,
        },
        Wait::Unavailable => return text(out, 503, "lock service unavailable\n", head),
    };
    // The fetch this one waited for may have found that no upstream has it.
    let absent = edge::absent_for(hash);
    if absent > 0 {
        return not_found(settings, out, head, absent);
    }
    match fetch(settings, hash) {
        Fetched::Found(info) => respond(settings, out, &info, Served::Miss, head),
        // Answered first, then remembered (the host may do more work when
        // it writes, e.g. a sweep of its store): still under the lease, so
        // the requests waiting for it find the absence.
        Fetched::Absent => {
            not_found(settings, out, head, settings.negative_ttl_s);
            edge::mark_absent(hash, settings.negative_ttl_s);
        }
        // Upstream trouble: not found now, and for a few seconds, so the
        // requests that waited for this fetch (and those right behind) take
        // its outcome instead of asking the troubled upstreams once each.
        Fetched::Failed => {
            let seconds = FAILURE_MEMORY_S.min(settings.negative_ttl_s);
            not_found(settings, out, head, seconds);
            edge::mark_absent(hash, seconds);
        }
        // The host cannot sign (it logged why): retry, nothing recorded.
        Fetched::CannotSign => text(out, 503, "signing key unavailable\n", head),
    }
}

/// Seconds a failed narinfo fetch is remembered (at most the negative TTL).
const FAILURE_MEMORY_S: u32 = 5;

fn connect_timeout(settings: &Settings) -> Duration {
    Duration::from_millis(settings.upstream_connect_timeout_ms)
}

fn response_timeout(settings: &Settings) -> Duration {
    Duration::from_millis(settings.upstream_timeout_ms)
}

/// Answer with `info`, then record the access: after the answer, so a
/// client never waits for that write (under Spin a round trip to the
/// database).
fn respond(settings: &Settings, out: ResponseOutparam, info: &NarInfo, served: Served, head: bool) {
    metrics::served(ObjectKind::Narinfo, served.result());
    Response::new(200)
        .header("content-type", "text/x-nix-narinfo")
        .header("x-cache", served.x_cache())
        .header_if("cache-control", edge::hit_control(settings))
        .send(out, info.render().as_bytes(), head);
    metadata::record_access(&info.url);
}

/// "No upstream has it", known for `seconds` more.
fn not_found(settings: &Settings, out: ResponseOutparam, head: bool, seconds: u32) {
    Response::new(404)
        .header("content-type", "text/plain; charset=utf-8")
        .header_if("cache-control", edge::absent_control(settings, seconds))
        .send(out, b"not found\n", head);
}

/// What asking the upstreams for a narinfo found.
enum Fetched {
    /// A valid narinfo, adopted.
    Found(Box<NarInfo>),
    /// Every upstream answered that it does not have it.
    Absent,
    /// Some upstream failed or answered with something unusable.
    Failed,
    /// A valid narinfo that we cannot sign.
    CannotSign,
}

/// Why one upstream's narinfo was not taken.
enum Refusal {
    /// It does not have it (404, 403 or 410).
    NotFound(u16),
    /// It answered with something we must not adopt.
    Rejected(String),
    /// The request failed.
    Failed(String),
    /// It is valid, but the host cannot sign it.
    CannotSign(String),
}

impl Refusal {
    fn outcome(&self) -> FetchOutcome {
        match self {
            Refusal::NotFound(_) => FetchOutcome::NotFound,
            Refusal::Rejected(_) => FetchOutcome::Rejected,
            Refusal::Failed(_) | Refusal::CannotSign(_) => FetchOutcome::Error,
        }
    }
}

/// Ask every upstream at once, take the answer of the most preferred one that
/// has a valid narinfo, rewrite, sign and record it.
fn fetch(settings: &Settings, hash: &str) -> Fetched {
    let ups = upstream::ordered();
    let mut all_absent = !ups.is_empty();
    // The whole fetch, bodies included, ends by this deadline.
    let deadline = Instant::now().after(timing::narinfo_fetch(connect_timeout(settings), response_timeout(settings)));
    let pending: Vec<_> = ups
        .iter()
        .map(|u| upstream::start_get(&format!("{}/{hash}.narinfo", u.url), u.authorization.as_deref(), settings))
        .collect();
    for (up, pending) in ups.iter().zip(pending) {
        let started = Instant::now();
        let result =
            pending.map_err(|e| Refusal::Failed(e.to_string())).and_then(|p| take(settings, hash, up, p, deadline));
        let seconds = started.elapsed().as_secs_f64();
        let outcome = result.as_ref().map_or_else(Refusal::outcome, |_| FetchOutcome::Ok);
        metrics::upstream_fetch(ObjectKind::Narinfo, &up.url, seconds, outcome);
        match result {
            Ok(info) => {
                let ms = ((seconds * 1000.0) as u64).to_string();
                logging::info(
                    "fetched narinfo from upstream",
                    &[("hash", hash), ("upstream", &up.url), ("duration_ms", &ms)],
                );
                return Fetched::Found(Box::new(info));
            }
            Err(Refusal::NotFound(status)) => logging::debug(
                "upstream has no narinfo",
                &[("hash", hash), ("upstream", &up.url), ("status", &status.to_string())],
            ),
            Err(Refusal::Rejected(why)) => {
                all_absent = false;
                logging::warn("upstream narinfo refused", &[("hash", hash), ("upstream", &up.url), ("error", &why)])
            }
            Err(Refusal::Failed(why)) => {
                all_absent = false;
                logging::warn(
                    "upstream narinfo request failed",
                    &[("hash", hash), ("upstream", &up.url), ("error", &why)],
                )
            }
            Err(Refusal::CannotSign(why)) => {
                logging::warn("narinfo not signed", &[("hash", hash), ("error", &why)]);
                return Fetched::CannotSign;
            }
        }
    }
    if all_absent {
        Fetched::Absent
    } else {
        Fetched::Failed
    }
}

/// Read, check and adopt one upstream's answer.
fn take(
    settings: &Settings,
    hash: &str,
    up: &upstream::Upstream,
    pending: upstream::Pending,
    deadline: Instant,
) -> Result<NarInfo, Refusal> {
    let resp = pending.wait().map_err(|e| Refusal::Failed(e.to_string()))?;
    match resp.status {
        200 => {}
        // What a binary cache answers for a path it does not have.
        403 | 404 | 410 => return Err(Refusal::NotFound(resp.status)),
        status => return Err(Refusal::Failed(format!("status {status}"))),
    }
    let body = resp.body.ok_or_else(|| Refusal::Failed("no body".into()))?;
    let body = match body.read_to_end_by(settings.max_narinfo_size, Some(deadline)) {
        Ok(body) => body,
        Err(e @ (BodyError::TooSlow | BodyError::Stream(_))) => return Err(Refusal::Failed(e.to_string())),
        Err(e @ BodyError::TooLarge(_)) => return Err(Refusal::Rejected(e.to_string())),
    };
    let text = std::str::from_utf8(&body).map_err(|e| Refusal::Rejected(e.to_string()))?;
    let info = NarInfo::parse(text).map_err(|e| Refusal::Rejected(format!("malformed: {e}")))?;
    if info.hash() != hash {
        return Err(Refusal::Rejected(format!("narinfo is for another store path, {}", info.store_path)));
    }
    match &up.trust {
        Trust::Keys(keys) if verify_any(&info.fingerprint(), &info.sigs, keys) => {}
        Trust::Keys(_) => return Err(Refusal::Rejected("no valid signature from a trusted key".into())),
        Trust::Unsigned => {}
        Trust::Refuse(why) => return Err(Refusal::Rejected(why.clone())),
    }
    adopt(settings, info, &up.url)
}

/// Rewrite an upstream narinfo to our URL (named by its file hash: the
/// NAR is stored under that name only if its bytes hash to it), sign it and
/// record it with the upstream location of its NAR. Recording failures are
/// logged: the narinfo is still served. Without our key (a host that
/// cannot load it) nothing is served or recorded.
fn adopt(settings: &Settings, mut info: NarInfo, upstream_url: &str) -> Result<NarInfo, Refusal> {
    let upstream_nar = format!("{upstream_url}/{}", info.url.split('?').next().unwrap_or_default());
    NarPath::adopt(&mut info)
        .ok_or_else(|| Refusal::Rejected("unknown compression, or no FileHash to name its NAR by".into()))?;
    normalise_and_sign(settings, &mut info).map_err(|e| Refusal::CannotSign(format!("{e:?}")))?;
    if let Err(e) = record(&info, Some(upstream_nar)) {
        logging::warn("failed to record narinfo", &[("hash", info.hash()), ("error", &format!("{e:?}"))]);
    }
    Ok(info)
}

/// `PUT /<hash>.narinfo` (with `--cache-allow-put-verb`): parsed, checked
/// (for this hash, URL named by its file hash, signed by a trusted upload
/// key when those are configured, its NAR stored with the announced size),
/// signed by us and recorded, all under the NAR's publish lock so an LRU
/// pass cannot evict the NAR in between. Nothing is recorded when a check
/// fails.
pub fn put(settings: &Settings, req: &Request, hash: &str) -> Written {
    let target = format!("{hash}.narinfo");
    let body = match req.body().map(|b| b.read_to_end(settings.max_narinfo_size)) {
        Some(Ok(b)) => b,
        Some(Err(BodyError::TooLarge(n))) => {
            return Written::rejected(413, format!("narinfo larger than {n} bytes\n"), target)
        }
        _ => return Written::rejected(400, "unreadable body\n", target),
    };
    let mut info = match std::str::from_utf8(&body)
        .map_err(|e| e.to_string())
        .and_then(|t| NarInfo::parse(t).map_err(|e| e.to_string()))
    {
        Ok(info) => info,
        Err(e) => return Written::rejected(400, format!("invalid narinfo: {e}\n"), target),
    };
    let target = info.store_path.clone();
    if info.hash() != hash {
        return Written::rejected(400, "narinfo is for another store path\n", target);
    }
    info.normalise();
    // The NAR is named by its file hash (which its upload checked), with
    // the extension of a compression Nix knows.
    if NarPath::of_narinfo(&info).map(|p| p.key()).as_deref() != Some(info.url.as_str()) {
        return Written::rejected(
            400,
            "narinfo URL must be nar/<its FileHash>.nar<the extension of its Compression>\n",
            target,
        );
    }
    if settings.require_trusted_upload || !settings.upload_trusted_keys.is_empty() {
        let keys: Vec<PublicKey> = settings.upload_trusted_keys.iter().filter_map(|k| PublicKey::parse(k)).collect();
        if keys.len() != settings.upload_trusted_keys.len() || !verify_any(&info.fingerprint(), &info.sigs, &keys) {
            logging::warn("uploaded narinfo lacks a trusted signature", &[("hash", hash)]);
            return Written::rejected(403, "narinfo lacks a signature by a trusted upload key\n", target);
        }
    }
    let _publishing = match lock_for_publish(&info.url) {
        Ok(lease) => lease,
        Err(e) => return Written::failed(format!("lock service unavailable: {e:?}\n"), target),
    };
    match storage::stat(&info.url) {
        Ok(Some(o)) if info.file_size.is_none_or(|size| size == o.size) => {}
        Ok(Some(_)) => return Written::rejected(400, "stored NAR size differs from FileSize\n", target),
        Ok(None) => return Written::rejected(400, "upload the NAR before its narinfo\n", target),
        Err(e) => return Written::failed(format!("storage unavailable: {e:?}\n"), target),
    }
    if let Err(e) = normalise_and_sign(settings, &mut info) {
        return Written::failed(format!("cannot sign: {e:?}\n"), target);
    }
    if let Err(e) = record(&info, None) {
        logging::warn("failed to record uploaded narinfo", &[("hash", hash), ("error", &format!("{e:?}"))]);
        return Written::failed("metadata unavailable\n", target);
    }
    logging::info("stored uploaded narinfo", &[("hash", hash)]);
    Written::accepted(target)
}

/// `DELETE /<hash>.narinfo` (with `--cache-allow-delete-verb`).
pub fn delete(hash: &str) -> Written {
    let target = format!("{hash}.narinfo");
    match metadata::delete_narinfo(hash) {
        Ok(true) => Written::accepted(target),
        Ok(false) => Written::rejected(404, "not found\n", target),
        Err(e) => {
            logging::warn("failed to delete narinfo", &[("hash", hash), ("error", &format!("{e:?}"))]);
            Written::failed("metadata unavailable\n", target)
        }
    }
}
