//! A NAR miss: find the NAR upstream, stream it to the client and to storage
//! at once, and publish it only when its size and hash match. The last chunk
//! is held back from the client until the hash is checked, so a client never
//! receives a complete-looking corrupt NAR.

use sha2::{Digest, Sha256 as Sha256Hasher};

use super::CONTENT_TYPE;
use crate::bindings::ncps::edge::config::Settings;
use crate::bindings::ncps::edge::locks::Lease;
use crate::bindings::ncps::edge::metadata::NarRecord;
use crate::bindings::ncps::edge::metrics::{self, CacheResult, FetchOutcome, ObjectKind};
use crate::bindings::ncps::edge::storage::{self, Writer};
use crate::bindings::wasi::http::types::ResponseOutparam;
use crate::cache::nars::publish;
use crate::host::http::{text, BodyWriter, Response};
use crate::host::logging;
use crate::host::time::Instant;
use crate::host::upstream::{self, UpstreamResponse};
use crate::protocol::hash::Sha256;
use crate::protocol::route::NarPath;

/// What the downloaded file must match.
struct Expected {
    hash: Option<Sha256>,
    size: Option<u64>,
}

fn expected(path: &NarPath, record: Option<&NarRecord>) -> Expected {
    let from_record = record.and_then(|r| r.file_hash.as_deref()).and_then(|h| Sha256::parse(h).ok());
    Expected {
        // A 52-character name is the file's own sha256, as Nix names NARs.
        hash: from_record.or_else(|| Sha256::from_nix32(&path.hash)),
        size: record.and_then(|r| r.file_size),
    }
}

/// Why no upstream response could be used.
enum NotFound {
    /// Every upstream answered, none has it.
    Missing,
    /// At least one upstream failed: worth a retry.
    Failed,
}

/// The first upstream (the recorded one, else all by priority) that has the NAR.
fn find(
    settings: &Settings,
    path: &NarPath,
    record: Option<&NarRecord>,
) -> Result<(String, UpstreamResponse), NotFound> {
    let key = path.key();
    let candidates: Vec<String> = match record.and_then(|r| r.upstream_url.clone()) {
        Some(url) => vec![url],
        None => upstream::ordered().into_iter().map(|u| format!("{}/{key}", u.url)).collect(),
    };
    let mut failed = false;
    for url in candidates {
        let asked = Instant::now();
        let base = upstream::base_of(&url);
        match upstream::get_nar(&url, settings) {
            Ok(resp) if resp.status == 200 => return Ok((url, resp)),
            Ok(resp) => {
                metrics::upstream_fetch(ObjectKind::Nar, base, asked.elapsed().as_secs_f64(), FetchOutcome::NotFound);
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

/// One NAR on its way from upstream to the client and to storage.
struct Transfer<'a> {
    hash: &'a str,
    writer: Option<Writer>,
    client: Option<BodyWriter>,
    hasher: Sha256Hasher,
    total: u64,
    held: Vec<u8>,
    lease: Option<Lease>,
}

impl Transfer<'_> {
    /// Hash, store and forward a chunk (the previous one: the last is held back).
    fn push(&mut self, chunk: Vec<u8>) {
        self.hasher.update(&chunk);
        self.total += chunk.len() as u64;
        if let Some(w) = &self.writer {
            if let Err(e) = w.write(&chunk) {
                self.stop_caching("storage write failed; serving without caching", &format!("{e:?}"));
            }
        }
        if let Some(c) = &mut self.client {
            if c.write_all(&self.held).is_err() {
                // The client left; finish the download for the next one.
                self.client = None;
            }
        }
        self.held = chunk;
        self.keep_lease();
    }

    /// The host keeps the lease alive; when it is lost (this node stalled
    /// past its expiry, or its session died) another node may be
    /// downloading: stop caching (keep serving).
    fn keep_lease(&mut self) {
        if self.lease.as_ref().is_some_and(|l| !l.is_held()) {
            self.lease = None;
            self.stop_caching("download lock lost; serving without caching", "lease expired");
        }
    }

    fn stop_caching(&mut self, why: &str, error: &str) {
        logging::warn(why, &[("hash", self.hash), ("error", error)]);
        if let Some(w) = self.writer.take() {
            Writer::abort(w);
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
    let expect = expected(path, record.as_ref());
    let started = Instant::now();
    let (url, resp) = match find(settings, path, record.as_ref()) {
        Ok(found) => found,
        // 404 lets Nix fall back; a transport failure is worth a retry.
        Err(NotFound::Missing) => return text(out, 404, "not found\n", false),
        Err(NotFound::Failed) => return text(out, 502, "upstream unavailable\n", false),
    };
    let base = upstream::base_of(&url);
    let outcome = |what| metrics::upstream_fetch(ObjectKind::Nar, base, started.elapsed().as_secs_f64(), what);
    let size_conflict = matches!((resp.content_length, expect.size), (Some(a), Some(b)) if a != b);
    let length = resp.content_length.or(expect.size);
    let Some(mut body) = resp.body.filter(|_| !size_conflict) else {
        outcome(FetchOutcome::Rejected);
        logging::warn("upstream NAR has the wrong size", &[("hash", &path.hash), ("upstream", base)]);
        return text(out, 502, "upstream NAR is not what its narinfo says\n", false);
    };
    let writer = match storage::create(&key) {
        Ok(w) => Some(w),
        Err(e) => {
            let error = format!("{e:?}");
            logging::warn("storage unavailable; serving without caching", &[("hash", &path.hash), ("error", &error)]);
            None
        }
    };
    metrics::served(ObjectKind::Nar, CacheResult::Miss);
    let mut head = Response::new(200).header("content-type", CONTENT_TYPE).header("x-cache", "MISS");
    if let Some(len) = length {
        head = head.header("content-length", len.to_string());
    }
    let mut t = Transfer {
        hash: &path.hash,
        writer,
        client: head.start(out, false),
        hasher: Sha256Hasher::new(),
        total: 0,
        held: Vec::new(),
        lease,
    };
    loop {
        match body.next_chunk() {
            Ok(Some(chunk)) => t.push(chunk),
            Ok(None) => break,
            Err(e) => {
                outcome(FetchOutcome::Error);
                let error = e.to_string();
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
    if length.is_some_and(|s| s != total) || expect.hash.is_some_and(|h| h != digest) {
        outcome(FetchOutcome::Rejected);
        let (bytes, got) = (total.to_string(), format!("got sha256:{}", digest.to_nix32()));
        logging::warn(
            "NAR from upstream does not match its narinfo; not cached",
            &[("hash", &path.hash), ("upstream", base), ("bytes", &bytes), ("error", &got)],
        );
        return t.discard();
    }
    if let Some(w) = t.writer.take() {
        if t.lease.as_ref().is_some_and(|l| !l.is_held()) {
            // The lease expired (this instance stalled): another instance may
            // be downloading the same NAR now. Serve, but publish nothing.
            logging::warn("download lock lost before publishing; not caching", &[("hash", &path.hash)]);
            Writer::abort(w);
        } else if expect.hash.is_some() {
            publish(&key, w, total, record);
        } else {
            logging::warn("NAR has no known hash; served but not cached", &[("hash", &path.hash)]);
            Writer::abort(w);
        }
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
