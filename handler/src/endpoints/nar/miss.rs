//! A NAR miss: find the NAR upstream and download it into storage at the
//! upstream's own speed, publishing it only when its size and hash match
//! its name. The client is handed to the host (`hand-off-download`), which
//! sends it the bytes as they land, at the client's pace: a slow client
//! never slows the download or the other clients, and holds no instance.
//!
//! Where that cannot be (a host that declines, storage down, a name that
//! is no sha256), the bytes go to the client through this instance as they
//! arrive, the last chunk held back until the hash is checked, so a client
//! never receives a complete-looking corrupt NAR.
//!
//! A download whose lock lapses (this node stalled past its lease, or its
//! lock session died) still finishes and publishes: publishing is
//! put-if-absent and storage takes only bytes that hash to their name, so
//! whichever holder publishes first, the object is the same, and a late
//! one changes nothing.

use sha2::{Digest, Sha256 as Sha256Hasher};

use super::CONTENT_TYPE;
use crate::bindings::ncps::edge::config::Settings;
use crate::bindings::ncps::edge::locks::Lease;
use crate::bindings::ncps::edge::metadata::NarRecord;
use crate::bindings::ncps::edge::metrics::{self, CacheResult, FetchOutcome, ObjectKind};
use crate::bindings::ncps::edge::storage::{self, HandOffOutcome, Writer};
use crate::bindings::wasi::http::types::ResponseOutparam;
use crate::cache::nars::publish;
use crate::host::http::{text, BodyError, BodyWriter, Response};
use crate::host::logging;
use crate::host::time::Instant;
use crate::host::upstream::{self, UpstreamResponse};
use crate::protocol::hash::Sha256;
use crate::protocol::route::NarPath;

/// Why no upstream response could be used.
enum NotFound {
    /// Every upstream answered, none has it.
    Missing,
    /// At least one upstream failed (an error, a 5xx): worth a retry.
    Failed,
}

/// The first upstream (the recorded one, else all by priority) that has
/// the NAR; with `head`, asked with `HEAD` (no body).
fn find(
    settings: &Settings,
    path: &NarPath,
    record: Option<&NarRecord>,
    head: bool,
) -> Result<(String, UpstreamResponse), NotFound> {
    let key = path.key();
    let candidates: Vec<(String, Option<String>)> = match record.and_then(|r| r.upstream_url.clone()) {
        Some(url) => {
            let authorization = upstream::authorization_for(&url);
            vec![(url, authorization)]
        }
        None => upstream::ordered().into_iter().map(|u| (format!("{}/{key}", u.url), u.authorization)).collect(),
    };
    let mut failed = false;
    for (url, authorization) in candidates {
        let asked = Instant::now();
        let base = upstream::base_of(&url);
        match upstream::get_nar(head, &url, authorization.as_deref(), settings) {
            Ok(resp) if resp.status == 200 => return Ok((url, resp)),
            Ok(resp) => {
                // What a binary cache answers for a file it does not have;
                // anything else is trouble, worth a retry.
                let absent = matches!(resp.status, 403 | 404 | 410);
                failed |= !absent;
                let outcome = if absent { FetchOutcome::NotFound } else { FetchOutcome::Error };
                metrics::upstream_fetch(ObjectKind::Nar, base, asked.elapsed().as_secs_f64(), outcome);
                let status = resp.status.to_string();
                logging::debug("upstream has no NAR", &[("hash", &path.hash), ("upstream", base), ("status", &status)]);
            }
            Err(e) => {
                failed = true;
                metrics::upstream_fetch(ObjectKind::Nar, base, asked.elapsed().as_secs_f64(), FetchOutcome::Error);
                let error = e.to_string();
                logging::warn(
                    "upstream NAR request failed",
                    &[("hash", &path.hash), ("upstream", base), ("error", &error)],
                );
            }
        }
    }
    Err(if failed { NotFound::Failed } else { NotFound::Missing })
}

/// The answer when no upstream can give the NAR: 404 lets Nix fall back,
/// an upstream failure is worth a retry.
fn not_found(why: NotFound, out: ResponseOutparam, head: bool) {
    match why {
        NotFound::Missing => text(out, 404, "not found\n", head),
        NotFound::Failed => text(out, 502, "upstream unavailable\n", head),
    }
}

/// `HEAD` of a NAR that is not stored: what a `GET` would answer, without
/// fetching the body.
pub(super) fn head(settings: &Settings, path: &NarPath, record: Option<&NarRecord>, out: ResponseOutparam) {
    match find(settings, path, record, true) {
        Ok((_, resp)) => {
            let length = resp.content_length.or(record.and_then(|r| r.file_size));
            let head = Response::new(200).header("content-type", CONTENT_TYPE).header("x-cache", "MISS");
            head.header_if("content-length", length.map(|l| l.to_string())).start(out, true);
        }
        Err(why) => not_found(why, out, true),
    }
}

/// One NAR on its way from upstream to storage (and, when the host does
/// not send it, to the client).
struct Transfer<'a> {
    hash: &'a str,
    writer: Option<Writer>,
    /// The client follows the writer (its spool), so the writer is kept
    /// even when storage fails: the host goes on feeding the client.
    handed: bool,
    /// A storage write failed: nothing will be published.
    storage_failed: bool,
    client: Option<BodyWriter>,
    hasher: Sha256Hasher,
    total: u64,
    held: Vec<u8>,
    lease: Option<Lease>,
}

impl Transfer<'_> {
    /// Hash, store and forward a chunk (the previous one: the last is held back).
    fn push(&mut self, chunk: Vec<u8>) {
        self.note_lease();
        self.hasher.update(&chunk);
        self.total += chunk.len() as u64;
        if let Some(w) = &self.writer {
            if let Err(e) = w.write(&chunk) {
                if !self.storage_failed {
                    let error = format!("{e:?}");
                    logging::warn(
                        "storage write failed; serving without caching",
                        &[("hash", self.hash), ("error", &error)],
                    );
                }
                self.storage_failed = true;
                if !self.handed {
                    if let Some(w) = self.writer.take() {
                        Writer::abort(w);
                    }
                }
            }
        }
        if let Some(c) = &mut self.client {
            if c.write_all(&self.held).is_err() {
                // The client left; finish the download for the next one.
                self.client = None;
            }
        }
        self.held = chunk;
    }

    /// The host keeps the lease alive; when it is lost, another node may be
    /// downloading the same NAR too (see the module doc: harmless).
    fn note_lease(&mut self) {
        if self.lease.as_ref().is_some_and(|l| !l.is_held()) {
            self.lease = None;
            logging::warn("download lock lost; finishing the download", &[("hash", self.hash)]);
        }
    }

    /// Give up: nothing is published and the client's transfer breaks.
    fn discard(mut self) {
        if let Some(w) = self.writer.take() {
            Writer::abort(w);
        }
        if let Some(c) = self.client.take() {
            c.abort();
        }
    }
}

/// Serve a NAR miss from upstream.
pub(super) fn download(
    settings: &Settings,
    path: &NarPath,
    record: Option<NarRecord>,
    lease: Option<Lease>,
    out: ResponseOutparam,
) {
    let key = path.key();
    // The name is the file's sha256; only a name that is one is stored.
    let expect_hash = path.named_sha256();
    let expect_size = record.as_ref().and_then(|r| r.file_size);
    let started = Instant::now();
    let (url, resp) = match find(settings, path, record.as_ref(), false) {
        Ok(found) => found,
        Err(why) => return not_found(why, out, false),
    };
    let base = upstream::base_of(&url);
    let outcome = |what| metrics::upstream_fetch(ObjectKind::Nar, base, started.elapsed().as_secs_f64(), what);
    let size_conflict = matches!((resp.content_length, expect_size), (Some(a), Some(b)) if a != b);
    let length = resp.content_length.or(expect_size);
    let Some(mut body) = resp.body.filter(|_| !size_conflict) else {
        outcome(FetchOutcome::Rejected);
        logging::warn("upstream NAR has the wrong size", &[("hash", &path.hash), ("upstream", base)]);
        return text(out, 502, "upstream NAR is not what its narinfo says\n", false);
    };
    let writer = match expect_hash.map(|_| storage::create(&key)) {
        Some(Ok(w)) => Some(w),
        Some(Err(e)) => {
            let error = format!("{e:?}");
            logging::warn("storage unavailable; serving without caching", &[("hash", &path.hash), ("error", &error)]);
            None
        }
        None => {
            logging::warn("NAR name is no sha256; served but not cached", &[("hash", &path.hash)]);
            None
        }
    };
    metrics::served(ObjectKind::Nar, CacheResult::Miss);
    let head = Response::new(200)
        .header("content-type", CONTENT_TYPE)
        .header("x-cache", "MISS")
        .header_if("content-length", length.map(|l| l.to_string()));
    // The host follows the writer for the client, at the client's pace.
    let handed = writer.is_some() && matches!(storage::hand_off_download(&key), Ok(HandOffOutcome::Taken));
    let client = if handed {
        head.start(out, true);
        None
    } else {
        head.start(out, false)
    };
    let mut t = Transfer {
        hash: &path.hash,
        writer,
        handed,
        storage_failed: false,
        client,
        hasher: Sha256Hasher::new(),
        total: 0,
        held: Vec::new(),
        lease,
    };
    // However slowly the upstream drips, the transfer ends within the
    // longest a download may hold its lock.
    let deadline = started.after(std::time::Duration::from_millis(settings.download_lock_ttl_ms));
    loop {
        match body.next_chunk_by(Some(deadline)) {
            Ok(Some(chunk)) => t.push(chunk),
            Ok(None) => break,
            Err(e) => {
                outcome(FetchOutcome::Error);
                let error = match e {
                    BodyError::TooSlow => "slower than the download lock's TTL allows".to_owned(),
                    e => e.to_string(),
                };
                logging::warn(
                    "upstream NAR transfer failed",
                    &[("hash", &path.hash), ("upstream", base), ("error", &error)],
                );
                return t.discard();
            }
        }
    }
    let digest = Sha256(t.hasher.clone().finalize().into());
    let total = t.total;
    if length.is_some_and(|s| s != total) || expect_hash.is_some_and(|h| h != digest) {
        outcome(FetchOutcome::Rejected);
        let (bytes, got) = (total.to_string(), format!("got sha256:{}", digest.to_nix32()));
        logging::warn(
            "NAR from upstream does not match its name; not cached",
            &[("hash", &path.hash), ("upstream", base), ("bytes", &bytes), ("error", &got)],
        );
        return t.discard();
    }
    if let Some(w) = t.writer.take() {
        publish(&key, w, total, record);
    }
    outcome(FetchOutcome::Ok);
    let (bytes, ms) = (total.to_string(), started.elapsed().as_millis().to_string());
    logging::info(
        "downloaded NAR from upstream",
        &[("hash", &path.hash), ("upstream", base), ("bytes", &bytes), ("duration_ms", &ms)],
    );
    t.lease = None;
    if let Some(mut c) = t.client.take() {
        if c.write_all(&t.held).is_ok() {
            c.finish();
        }
    }
}
