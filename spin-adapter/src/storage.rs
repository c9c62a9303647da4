//! `ncps:edge/storage` on S3, in the native layout (`ncps_edge_wire::layout`)
//! and with the native S3 backend's protocol: a writer buffers one part at
//! a time ([`PART_SIZE`]) into a multipart upload named by a marker object,
//! and commits put-if-absent, and only bytes that hash to their name;
//! nothing is visible before.
//!
//! Under Spin there is no `hand-off` (the handler streams reads and
//! downloads itself; `stat-for-read` opens the object, so a whole read is
//! one GET),
//! no `follow` (a Spin node has no other instance's writers), and
//! `sweep-incomplete` sweeps nothing: the markers this adapter writes let
//! a native node's sweep abort what a dead Spin instance left.

use std::cell::RefCell;
use std::rc::Rc;

use crate::bindings::exports::ncps::edge::storage::{
    ByteRange, Guest, GuestWriter, HandOffOutcome, ObjectEntry, ObjectInfo, Writer,
};
use crate::bindings::exports::ncps::edge::types::Error as WitError;
use crate::bindings::wasi::io::streams::InputStream;
use crate::error::{Error, Result};
use crate::locks;
use crate::s3::{self, S3};

use ncps_edge_wire::layout::{self, ContentCheck, PART_SIZE};

thread_local! {
    /// The object `stat-for-read` opened, by key, for the read that follows.
    static OPENED: RefCell<Option<(String, InputStream)>> = const { RefCell::new(None) };
}

fn object_of(key: &str) -> Result<String> {
    if !layout::is_valid_key(key) {
        return Err(Error::Invalid(format!("bad storage key {key:?}")));
    }
    Ok(layout::object_path(key))
}

/// An object being written.
pub struct SpinWriter {
    state: RefCell<WriterState>,
}

struct WriterState {
    s3: Rc<S3>,
    object: String,
    /// The sha256 the key names: nothing else is published under it.
    check: ContentCheck,
    buf: Vec<u8>,
    upload_id: Option<String>,
    etags: Vec<String>,
    written: u64,
}

impl WriterState {
    /// Upload the buffer as the next part, starting the upload first.
    fn flush_part(&mut self) -> Result<()> {
        let id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let id = self.s3.create_upload(&self.object)?;
                self.upload_id = Some(id.clone());
                // The marker names the upload for a sweep, as natively.
                self.s3.put(&layout::upload_marker(&id), self.object.as_bytes(), false)?;
                id
            }
        };
        let etag = self.s3.upload_part(&self.object, &id, self.etags.len() + 1, &self.buf)?;
        self.etags.push(etag);
        self.buf.clear();
        Ok(())
    }

    fn abort_upload(&mut self) {
        if let Some(id) = self.upload_id.take() {
            self.s3.abort_upload(&self.object, &id);
            let _ = self.s3.delete(&layout::upload_marker(&id));
        }
    }

    fn commit(&mut self) -> Result<bool> {
        if !self.check.matches() {
            self.abort_upload();
            return Err(Error::Invalid(format!("{}: the bytes do not hash to the name", self.object)));
        }
        if self.s3.head(&self.object)?.is_some() {
            self.abort_upload();
            return Ok(false);
        }
        let published = match self.upload_id.clone() {
            None => self.s3.put(&self.object, &std::mem::take(&mut self.buf), true),
            Some(id) => {
                let flushed = if self.buf.is_empty() { Ok(()) } else { self.flush_part() };
                flushed.and_then(|()| self.s3.complete_upload(&self.object, &id, &self.etags))
            }
        };
        match published {
            Ok(true) => {
                if let Some(id) = self.upload_id.take() {
                    let _ = self.s3.delete(&layout::upload_marker(&id));
                }
                Ok(true)
            }
            other => {
                self.abort_upload();
                other
            }
        }
    }
}

impl Drop for SpinWriter {
    fn drop(&mut self) {
        // Aborted, dropped, or never committed: leave nothing behind.
        self.state.borrow_mut().abort_upload();
    }
}

impl GuestWriter for SpinWriter {
    fn write(&self, data: Vec<u8>) -> std::result::Result<(), WitError> {
        locks::heartbeat();
        let mut state = self.state.borrow_mut();
        state.check.update(&data);
        let mut data = data.as_slice();
        while !data.is_empty() {
            let n = (PART_SIZE - state.buf.len()).min(data.len());
            state.buf.extend_from_slice(&data[..n]);
            state.written += n as u64;
            data = &data[n..];
            if state.buf.len() == PART_SIZE {
                state.flush_part()?;
            }
        }
        Ok(())
    }

    fn written(&self) -> u64 {
        self.state.borrow().written
    }

    fn commit(this: Writer) -> std::result::Result<bool, WitError> {
        locks::heartbeat();
        let writer: SpinWriter = this.into_inner();
        let committed = writer.state.borrow_mut().commit();
        Ok(committed?)
    }

    fn abort(this: Writer) {
        drop(this.into_inner::<SpinWriter>());
    }
}

fn range_header(range: &ByteRange) -> Result<String> {
    match range.length {
        Some(0) => Err(Error::Invalid("an empty range".into())),
        Some(len) => Ok(format!("bytes={}-{}", range.offset, range.offset + len - 1)),
        None => Ok(format!("bytes={}-", range.offset)),
    }
}

impl Guest for crate::Adapter {
    type Writer = SpinWriter;

    fn hand_off(_key: String, _range: Option<ByteRange>) -> std::result::Result<HandOffOutcome, WitError> {
        Ok(HandOffOutcome::Declined)
    }

    fn hand_off_download(key: String) -> std::result::Result<HandOffOutcome, WitError> {
        object_of(&key)?;
        Ok(HandOffOutcome::Declined)
    }

    fn stat(key: String) -> std::result::Result<Option<ObjectInfo>, WitError> {
        Ok(s3::bucket()?.head(&object_of(&key)?)?.map(|size| ObjectInfo { size }))
    }

    fn stat_for_read(key: String) -> std::result::Result<Option<ObjectInfo>, WitError> {
        let Some((size, body)) = s3::bucket()?.open(&object_of(&key)?)? else { return Ok(None) };
        OPENED.with(|opened| *opened.borrow_mut() = Some((key, body)));
        Ok(Some(ObjectInfo { size }))
    }

    fn read(key: String, range: Option<ByteRange>) -> std::result::Result<Option<InputStream>, WitError> {
        if range.is_none() {
            let opened = OPENED.with(|opened| opened.borrow_mut().take_if(|(k, _)| *k == key));
            if let Some((_, body)) = opened {
                return Ok(Some(body));
            }
        }
        let range = range.as_ref().map(range_header).transpose()?;
        Ok(s3::bucket()?.get(&object_of(&key)?, range)?)
    }

    fn create(key: String) -> std::result::Result<Writer, WitError> {
        let object = object_of(&key)?;
        let check = ContentCheck::for_key(&key)
            .ok_or_else(|| Error::Invalid(format!("{key} is not named by a sha256: no object is stored under it")))?;
        let state = WriterState {
            s3: s3::bucket()?,
            object,
            check,
            buf: Vec::new(),
            upload_id: None,
            etags: Vec::new(),
            written: 0,
        };
        Ok(Writer::new(SpinWriter { state: RefCell::new(state) }))
    }

    fn follow(key: String) -> std::result::Result<Option<InputStream>, WitError> {
        object_of(&key)?;
        Ok(None)
    }

    fn delete(key: String) -> std::result::Result<bool, WitError> {
        let (s3, object) = (s3::bucket()?, object_of(&key)?);
        if s3.head(&object)?.is_none() {
            return Ok(false);
        }
        s3.delete(&object)?;
        Ok(true)
    }

    fn delete_many(keys: Vec<String>) -> std::result::Result<u32, WitError> {
        let mut existed = 0;
        for key in keys {
            if Self::delete(key)? {
                existed += 1;
            }
        }
        Ok(existed)
    }

    fn list_objects(after: Option<String>, limit: u32) -> std::result::Result<Vec<ObjectEntry>, WitError> {
        let start_after = after.as_deref().map(object_of).transpose()?;
        let listed = s3::bucket()?.list(layout::NAR_PREFIX, start_after, limit)?;
        Ok(listed
            .into_iter()
            .filter_map(|o| Some(ObjectEntry { key: layout::nar_key_of(&o.key)?, size: o.size }))
            .collect())
    }

    fn sweep_incomplete(_older_than_ms: u64) -> std::result::Result<u32, WitError> {
        Ok(0)
    }
}
