//! NAR requests: hits streamed from storage inside the host, misses
//! downloaded once (under the download lock) and streamed to the client and
//! to storage at the same time, published only when size and hash match.

use std::time::Duration;

use sha2::{Digest, Sha256 as Sha256Hasher};

use crate::hash::Sha256;
use crate::http::{text, BodyWriter, Request, Response};
use crate::logging;
use crate::ncps::edge::config::Settings;
use crate::ncps::edge::locks::{self, Lease, Mode};
use crate::ncps::edge::metadata::{self, NarRecord};
use crate::ncps::edge::metrics;
use crate::ncps::edge::storage::{self, ByteRange, Writer};
use crate::route::NarPath;
use crate::time::{sleep, Instant};
use crate::upstream;
use crate::wasi::http::types::ResponseOutparam;

const CONTENT_TYPE: &str = "application/x-nix-nar";

/// Serve `GET|HEAD /nar/<hash>.nar<ext>`.
pub fn get(settings: &Settings, req: &Request, path: &NarPath, out: ResponseOutparam, head: bool) {
    let key = path.key();
    if let Some(size) = stat(&key) {
        return serve_stored(req, &key, size, out, head);
    }
    if head {
        return text(out, 404, "not found\n", true);
    }
    let record = match metadata::get_nar(&key) {
        Ok(r) => r,
        Err(e) => {
            logging::warn("metadata lookup failed", &[("hash", &path.hash), ("error", &format!("{e:?}"))]);
            None
        }
    };
    let ttl = Duration::from_millis(settings.download_lock_ttl_ms);
    let lock_key = format!("download:nar:{}", path.hash);
    // Wait for a download in progress elsewhere rather than answering 5xx;
    // after the lock TTL (the holder is dead or stuck) go on alone.
    let deadline = Instant::now().add(ttl + Duration::from_secs(5));
    let mut delay = Duration::from_millis(20);
    loop {
        match locks::try_acquire(&lock_key, Mode::Exclusive, settings.download_lock_ttl_ms) {
            Ok(Some(lease)) => {
                logging::debug("acquired download lock", &[("hash", &path.hash), ("lock_type", "download:nar")]);
                if let Some(size) = stat(&key) {
                    drop(lease);
                    return serve_stored(req, &key, size, out, head);
                }
                return download(settings, path, record, Some(lease), out);
            }
            Ok(None) => {
                sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(500));
                if let Some(size) = stat(&key) {
                    return serve_stored(req, &key, size, out, head);
                }
                if Instant::now() > deadline {
                    logging::warn(
                        "download lock still held after its TTL; downloading without it",
                        &[("hash", &path.hash)],
                    );
                    return download(settings, path, record, None, out);
                }
            }
            Err(e) => {
                logging::warn(
                    "failed to acquire lock",
                    &[("hash", &path.hash), ("lock_type", "download:nar"), ("error", &format!("{e:?}"))],
                );
                // The lock service is down and degraded mode is off: fail
                // fast rather than download without the lock.
                return text(out, 503, "lock service unavailable\n", false);
            }
        }
    }
}

/// Size of the stored object; storage failures are logged and count as absent.
fn stat(key: &str) -> Option<u64> {
    match storage::stat(key) {
        Ok(info) => info.map(|i| i.size),
        Err(e) => {
            logging::warn("storage stat failed", &[("url", key), ("error", &format!("{e:?}"))]);
            None
        }
    }
}

/// Parse a single `Range: bytes=…` against `size`: `Some(Ok((first, last)))`,
/// `Some(Err(()))` when unsatisfiable, `None` when absent or not understood.
fn parse_range(header: Option<&str>, size: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = header?.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (first, last) = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            if n == 0 {
                return Some(Err(()));
            }
            (size.saturating_sub(n), size.checked_sub(1)?)
        }
        (a, "") => (a.parse().ok()?, size.saturating_sub(1)),
        (a, b) => (a.parse().ok()?, b.parse::<u64>().ok()?.min(size.saturating_sub(1))),
    };
    Some(if first >= size || first > last { Err(()) } else { Ok((first, last)) })
}

fn serve_stored(req: &Request, key: &str, size: u64, out: ResponseOutparam, head: bool) {
    metadata::record_access(key);
    let (status, range, length) = match parse_range(req.header("range"), size) {
        None => (200, None, size),
        Some(Ok((first, last))) => (206, Some((first, last)), last - first + 1),
        Some(Err(())) => {
            return Response::new(416).header("content-range", format!("bytes */{size}")).send(out, b"", head);
        }
    };
    let stream = if head {
        None
    } else {
        let byte_range = range.map(|(first, _)| ByteRange { offset: first, length: Some(length) });
        match storage::read(key, byte_range) {
            Ok(Some(s)) => Some(s),
            Ok(None) => return text(out, 404, "not found\n", false),
            Err(e) => {
                logging::warn("storage read failed", &[("url", key), ("error", &format!("{e:?}"))]);
                return text(out, 503, "storage unavailable\n", false);
            }
        }
    };
    let mut resp = Response::new(status)
        .header("content-type", CONTENT_TYPE)
        .header("content-length", length.to_string())
        .header("accept-ranges", "bytes")
        .header("x-cache", "HIT");
    if let Some((first, last)) = range {
        resp = resp.header("content-range", format!("bytes {first}-{last}/{size}"));
    }
    let Some(mut body) = resp.start(out, head) else {
        return;
    };
    let Some(stream) = stream else { return };
    match body.splice_all(&stream) {
        Ok(n) if n == length => {
            drop(stream);
            body.finish();
        }
        Ok(n) => {
            logging::warn("stored NAR shorter than expected", &[("url", key), ("bytes", &n.to_string())]);
            drop(stream);
            body.abort();
        }
        Err(_) => {
            drop(stream);
            body.abort();
        }
    }
}

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

fn download(
    settings: &Settings,
    path: &NarPath,
    record: Option<NarRecord>,
    lease: Option<Lease>,
    out: ResponseOutparam,
) {
    let key = path.key();
    let expect = expected(path, record.as_ref());
    let candidates: Vec<String> = match record.as_ref().and_then(|r| r.upstream_url.clone()) {
        Some(url) => vec![url],
        None => upstream::ordered().into_iter().map(|u| format!("{}/{key}", u.url)).collect(),
    };
    let started = Instant::now();
    let mut failed = false;
    let mut found = None;
    for url in &candidates {
        let asked = Instant::now();
        match upstream::get(url, settings) {
            Ok(resp) if resp.status == 200 => {
                found = Some((url.clone(), resp));
                break;
            }
            Ok(resp) => {
                metrics::upstream_fetch("nar", upstream::base_of(url), asked.elapsed().as_secs_f64(), "not-found");
                logging::debug(
                    "upstream has no NAR",
                    &[("hash", &path.hash), ("upstream", upstream::base_of(url)), ("status", &resp.status.to_string())],
                );
            }
            Err(e) => {
                failed = true;
                metrics::upstream_fetch("nar", upstream::base_of(url), asked.elapsed().as_secs_f64(), "error");
                logging::warn(
                    "upstream NAR request failed",
                    &[("hash", &path.hash), ("upstream", upstream::base_of(url)), ("error", &e.to_string())],
                );
            }
        }
    }
    let Some((url, resp)) = found else {
        // Nothing found: 404 lets Nix fall back; a transport failure is worth a retry.
        return if failed {
            text(out, 502, "upstream unavailable\n", false)
        } else {
            text(out, 404, "not found\n", false)
        };
    };
    let size_conflict = matches!((resp.content_length, expect.size), (Some(a), Some(b)) if a != b);
    let length = resp.content_length.or(expect.size);
    let Some(mut upstream_body) = resp.body.filter(|_| !size_conflict) else {
        metrics::upstream_fetch("nar", upstream::base_of(&url), started.elapsed().as_secs_f64(), "rejected");
        logging::warn(
            "upstream NAR has the wrong size",
            &[("hash", &path.hash), ("upstream", upstream::base_of(&url))],
        );
        return text(out, 502, "upstream NAR is not what its narinfo says\n", false);
    };
    let mut writer = match storage::create(&key) {
        Ok(w) => Some(w),
        Err(e) => {
            logging::warn(
                "storage unavailable; serving without caching",
                &[("hash", &path.hash), ("error", &format!("{e:?}"))],
            );
            None
        }
    };
    let mut resp = Response::new(200).header("content-type", CONTENT_TYPE).header("x-cache", "MISS");
    if let Some(len) = length {
        resp = resp.header("content-length", len.to_string());
    }
    let mut client = resp.start(out, false);
    let mut hasher = Sha256Hasher::new();
    let mut total: u64 = 0;
    // The last chunk is held back until the hash is checked, so a client
    // never receives a complete-looking corrupt NAR.
    let mut held: Vec<u8> = Vec::new();
    let ttl_ms = settings.download_lock_ttl_ms;
    let mut last_extend = Instant::now();
    loop {
        let chunk = match upstream_body.next_chunk() {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => {
                metrics::upstream_fetch("nar", upstream::base_of(&url), started.elapsed().as_secs_f64(), "error");
                logging::warn(
                    "upstream NAR transfer failed",
                    &[("hash", &path.hash), ("upstream", upstream::base_of(&url)), ("error", &e.to_string())],
                );
                discard(writer, client);
                return;
            }
        };
        hasher.update(&chunk);
        total += chunk.len() as u64;
        if let Some(w) = &writer {
            if let Err(e) = w.write(&chunk) {
                logging::warn(
                    "storage write failed; serving without caching",
                    &[("hash", &path.hash), ("error", &format!("{e:?}"))],
                );
                if let Some(w) = writer.take() {
                    Writer::abort(w);
                }
            }
        }
        if let Some(c) = &mut client {
            if c.write_all(&held).is_err() {
                // The client left; finish the download for the next one.
                client = None;
            }
        }
        held = chunk;
        if let Some(lease) = &lease {
            if last_extend.elapsed() > Duration::from_millis(ttl_ms / 3) {
                if let Err(e) = lease.extend(ttl_ms) {
                    logging::warn("download lock lost", &[("hash", &path.hash), ("error", &format!("{e:?}"))]);
                }
                last_extend = Instant::now();
            }
        }
    }
    let digest = Sha256(hasher.finalize().into());
    let size_ok = length.is_none_or(|s| s == total);
    let hash_ok = expect.hash.is_none_or(|h| h == digest);
    let verifiable = expect.hash.is_some();
    if !(size_ok && hash_ok) {
        metrics::upstream_fetch("nar", upstream::base_of(&url), started.elapsed().as_secs_f64(), "rejected");
        logging::warn(
            "NAR from upstream does not match its narinfo; not cached",
            &[
                ("hash", &path.hash),
                ("upstream", upstream::base_of(&url)),
                ("bytes", &total.to_string()),
                ("error", &format!("got sha256:{}", digest.to_nix32())),
            ],
        );
        discard(writer, client);
        return;
    }
    if let Some(w) = writer {
        if !verifiable {
            logging::warn("NAR has no known hash; served but not cached", &[("hash", &path.hash)]);
            Writer::abort(w);
        } else {
            publish(&key, w, total, record);
        }
    }
    metrics::upstream_fetch("nar", upstream::base_of(&url), started.elapsed().as_secs_f64(), "ok");
    let ms = started.elapsed().as_millis().to_string();
    logging::info(
        "downloaded NAR from upstream",
        &[
            ("hash", &path.hash),
            ("upstream", upstream::base_of(&url)),
            ("bytes", &total.to_string()),
            ("duration_ms", &ms),
        ],
    );
    drop(lease);
    if let Some(mut c) = client {
        if c.write_all(&held).is_ok() {
            c.finish();
        }
    }
}

fn discard(writer: Option<Writer>, client: Option<BodyWriter>) {
    if let Some(w) = writer {
        Writer::abort(w);
    }
    if let Some(c) = client {
        c.abort();
    }
}

/// Commit the object, then record its stored size.
fn publish(key: &str, writer: Writer, size: u64, record: Option<NarRecord>) {
    match Writer::commit(writer) {
        Ok(_) => {
            let mut nar = record.unwrap_or(NarRecord {
                key: key.to_owned(),
                upstream_url: None,
                file_hash: None,
                file_size: None,
                stored_size: None,
            });
            nar.stored_size = Some(size);
            if let Err(e) = metadata::put_nar(&nar) {
                logging::warn("failed to record stored NAR", &[("url", key), ("error", &format!("{e:?}"))]);
            }
        }
        Err(e) => logging::warn("storage commit failed", &[("url", key), ("error", &format!("{e:?}"))]),
    }
}

/// `PUT /nar/<hash>.nar<ext>` (with `--cache-allow-put-verb`): stream the
/// body to storage; a 52-character name must be the body's sha256.
pub fn put(req: &Request, path: &NarPath, out: ResponseOutparam) {
    let key = path.key();
    if stat(&key).is_some() {
        return Response::new(204).send(out, b"", false);
    }
    let Some(mut body) = req.body() else {
        return text(out, 400, "unreadable body\n", false);
    };
    let writer = match storage::create(&key) {
        Ok(w) => w,
        Err(e) => {
            logging::warn("storage unavailable for upload", &[("hash", &path.hash), ("error", &format!("{e:?}"))]);
            return text(out, 503, "storage unavailable\n", false);
        }
    };
    let mut hasher = Sha256Hasher::new();
    loop {
        match body.next_chunk() {
            Ok(Some(chunk)) => {
                hasher.update(&chunk);
                if let Err(e) = writer.write(&chunk) {
                    logging::warn(
                        "storage write failed during upload",
                        &[("hash", &path.hash), ("error", &format!("{e:?}"))],
                    );
                    Writer::abort(writer);
                    return text(out, 503, "storage unavailable\n", false);
                }
            }
            Ok(None) => break,
            Err(e) => {
                Writer::abort(writer);
                return text(out, 400, &format!("upload failed: {e}\n"), false);
            }
        }
    }
    let digest = Sha256(hasher.finalize().into());
    if let Some(want) = Sha256::from_nix32(&path.hash) {
        if want != digest {
            Writer::abort(writer);
            logging::warn("uploaded NAR does not match its name", &[("hash", &path.hash)]);
            return text(out, 400, "NAR hash does not match its name\n", false);
        }
    }
    let size = writer.written();
    let record = metadata::get_nar(&key).ok().flatten();
    publish(&key, writer, size, record);
    logging::info("stored uploaded NAR", &[("hash", &path.hash), ("bytes", &size.to_string())]);
    Response::new(204).send(out, b"", false);
}

/// `DELETE /nar/<hash>.nar<ext>` (with `--cache-allow-delete-verb`).
pub fn delete(path: &NarPath, out: ResponseOutparam) {
    let key = path.key();
    let deleted = storage::delete(&key);
    let _ = metadata::delete_nar(&key);
    match deleted {
        Ok(true) => Response::new(204).send(out, b"", false),
        Ok(false) => text(out, 404, "not found\n", false),
        Err(e) => {
            logging::warn("failed to delete NAR", &[("hash", &path.hash), ("error", &format!("{e:?}"))]);
            text(out, 503, "storage unavailable\n", false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn parses_ranges() {
        assert_eq!(parse_range(None, 10), None);
        assert_eq!(parse_range(Some("bytes=0-4"), 10), Some(Ok((0, 4))));
        assert_eq!(parse_range(Some("bytes=5-"), 10), Some(Ok((5, 9))));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Some(Ok((7, 9))));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), Some(Ok((8, 9))));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Some(Err(())));
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), None);
        assert_eq!(parse_range(Some("items=0-1"), 10), None);
    }
}
