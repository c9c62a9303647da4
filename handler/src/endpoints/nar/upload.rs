//! `PUT /nar/<hash>.nar<ext>` (with `--cache-allow-put-verb`): the body is
//! streamed to storage and published only when complete and, for a
//! 52-character name, when it hashes to its name.

use sha2::{Digest, Sha256 as Sha256Hasher};

use crate::bindings::ncps::edge::metadata;
use crate::bindings::ncps::edge::storage::{self, Writer};
use crate::bindings::wasi::http::types::ResponseOutparam;
use crate::cache::nars::{publish, stat};
use crate::host::http::{text, Request, Response};
use crate::host::logging;
use crate::protocol::hash::Sha256;
use crate::protocol::route::NarPath;

/// Store an uploaded NAR.
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
    if !publish(&key, writer, size, record) {
        return text(out, 503, "storage unavailable\n", false);
    }
    logging::info("stored uploaded NAR", &[("hash", &path.hash), ("bytes", &size.to_string())]);
    Response::new(204).send(out, b"", false);
}
