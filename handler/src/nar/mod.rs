//! NAR requests: hits streamed from storage inside the host, misses
//! downloaded once under the download lock ([`download`]), uploads and deletes.

mod download;

use std::time::Duration;

use sha2::{Digest, Sha256 as Sha256Hasher};

use crate::hash::Sha256;
use crate::http::{text, Request, Response};
use crate::logging;
use crate::ncps::edge::config::Settings;
use crate::ncps::edge::locks::{self, Mode};
use crate::ncps::edge::metadata::{self, NarRecord};
use crate::ncps::edge::metrics::{self, CacheResult, ObjectKind};
use crate::ncps::edge::storage::{self, ByteRange, Writer};
use crate::route::NarPath;
use crate::time::{sleep, Instant};
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
                return download::download(settings, path, record, Some(lease), out);
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
                    return download::download(settings, path, record, None, out);
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
    metrics::served(ObjectKind::Nar, CacheResult::Hit);
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

/// Commit the object, then record its stored size.
pub(crate) fn publish(key: &str, writer: Writer, size: u64, record: Option<NarRecord>) {
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
