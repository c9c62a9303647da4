//! `PUT /nar/<hash>.nar<ext>` (with `--cache-allow-put-verb`): the body is
//! streamed to storage and published only when complete, within
//! `--cache-max-upload-size`, and when it hashes to its name (a NAR is
//! named by the sha256 of its file). Nothing partial is ever visible.

use sha2::{Digest, Sha256 as Sha256Hasher};

use crate::bindings::ncps::edge::config::Settings;
use crate::bindings::ncps::edge::metadata;
use crate::bindings::ncps::edge::storage::{self, Writer};
use crate::cache::nars::{publish, stat};
use crate::endpoints::written::Written;
use crate::host::http::Request;
use crate::host::logging;
use crate::protocol::hash::Sha256;
use crate::protocol::route::NarPath;

/// Store an uploaded NAR.
pub fn put(settings: &Settings, req: &Request, path: &NarPath) -> Written {
    let key = path.key();
    let declared = req.header("content-length").and_then(|v| v.trim().parse::<u64>().ok());
    let Some(want) = path.named_sha256() else {
        return Written::rejected(
            400,
            "a NAR is named by the sha256 of its file: nar/<52 nix32 characters>.nar…\n",
            key,
        );
    };
    if declared.is_some_and(|n| n > settings.max_upload_size) {
        return Written::rejected(413, format!("larger than {} bytes\n", settings.max_upload_size), key);
    }
    if stat(&key).is_some() {
        return Written::accepted(key);
    }
    let Some(mut body) = req.body() else {
        return Written::rejected(400, "unreadable body\n", key);
    };
    let writer = match storage::create(&key) {
        Ok(w) => w,
        Err(e) => {
            logging::warn("storage unavailable for upload", &[("hash", &path.hash), ("error", &format!("{e:?}"))]);
            return Written::failed("storage unavailable\n", key);
        }
    };
    let mut hasher = Sha256Hasher::new();
    loop {
        match body.next_chunk() {
            Ok(Some(chunk)) => {
                hasher.update(&chunk);
                if writer.written() + chunk.len() as u64 > settings.max_upload_size {
                    Writer::abort(writer);
                    return Written::rejected(413, format!("larger than {} bytes\n", settings.max_upload_size), key);
                }
                if let Err(e) = writer.write(&chunk) {
                    let error = format!("{e:?}");
                    logging::warn("storage write failed during upload", &[("hash", &path.hash), ("error", &error)]);
                    Writer::abort(writer);
                    return Written::failed("storage unavailable\n", key);
                }
            }
            Ok(None) => break,
            Err(e) => {
                Writer::abort(writer);
                return Written::rejected(400, format!("upload failed: {e}\n"), key);
            }
        }
    }
    let size = writer.written();
    if declared.is_some_and(|n| n != size) {
        Writer::abort(writer);
        return Written::rejected(400, "body shorter than its Content-Length\n", key);
    }
    let digest = Sha256(hasher.finalize().into());
    if want != digest {
        Writer::abort(writer);
        logging::warn("uploaded NAR does not match its name", &[("hash", &path.hash)]);
        return Written::rejected(400, "NAR hash does not match its name\n", key);
    }
    let record = metadata::get_nar(&key).ok().flatten();
    if !publish(&key, writer, size, record) {
        return Written::failed("storage unavailable\n", key);
    }
    logging::info("stored uploaded NAR", &[("hash", &path.hash), ("bytes", &size.to_string())]);
    Written::accepted(key)
}
