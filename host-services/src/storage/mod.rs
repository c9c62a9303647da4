//! Blob storage for NAR files: the contract and key validation.

pub mod disk_tier;
pub mod follow;
pub mod guarded;
pub mod local;
pub mod named;
pub mod s3;
pub mod wit;

use std::pin::Pin;

use tokio::io::AsyncRead;

pub use ncps_edge_wire::layout;

use crate::{Error, Result};

/// A validated storage key: relative, `/`-separated segments of
/// `[A-Za-z0-9._-]`, none of them empty, `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageKey(String);

impl StorageKey {
    /// Validate `key`.
    pub fn parse(key: &str) -> Result<Self> {
        if !layout::is_valid_key(key) {
            return Err(Error::invalid(format!("bad storage key {key:?}")));
        }
        Ok(Self(key.to_owned()))
    }
    /// The key as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Where the object lives under a store root ([`layout::object_path`]).
    pub fn layout(&self) -> String {
        layout::object_path(&self.0)
    }
}

/// A byte range of an object.
#[derive(Debug, Clone, Copy, Default)]
pub struct ByteRange {
    /// First byte.
    pub offset: u64,
    /// How many bytes; `None` to the end.
    pub length: Option<u64>,
}

/// One stored object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectEntry {
    /// Its key, `nar/<file>`.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
}

/// A streamed object body.
pub type Body = Pin<Box<dyn AsyncRead + Send>>;

/// A byte range of a local file.
#[derive(Debug)]
pub struct FileRange {
    /// The open file (an open file outlives a delete of its name).
    pub file: std::fs::File,
    /// First byte.
    pub offset: u64,
    /// How many bytes.
    pub len: u64,
}

impl FileRange {
    /// `range` of `file`, cut to its size.
    pub fn of(file: std::fs::File, size: u64, range: Option<ByteRange>) -> Self {
        let range = range.unwrap_or_default();
        let offset = range.offset.min(size);
        let len = range.length.map_or(size - offset, |len| len.min(size - offset));
        Self { file, offset, len }
    }
}

/// A body the runtime sends for an instance: a stream, or a range of a
/// local file (sent with positioned reads: nothing is buffered for a
/// client beyond the chunk it is being sent).
pub enum HandedOff {
    /// Bytes as a stream yields them.
    Stream(Body),
    /// A range of a local file.
    File(FileRange),
}

/// Where `storage.hand-off` puts the body of a request's response (the
/// object, or the range asked for), for the runtime to send; shared by the
/// request's store and the runtime.
pub type HandOff = std::sync::Arc<std::sync::Mutex<Option<HandedOff>>>;

/// An object being written; nothing is visible until [`BlobWriter::commit`].
#[async_trait::async_trait]
pub trait BlobWriter: Send + Sync {
    /// Append bytes.
    async fn write(&mut self, data: &[u8]) -> Result<()>;
    /// Bytes written so far.
    fn written(&self) -> u64;
    /// Publish if the key is still absent: `true` when this writer published.
    async fn commit(self: Box<Self>) -> Result<bool>;
    /// Discard everything written (dropping the writer does the same).
    async fn abort(self: Box<Self>);
}

/// A blob store: local disk or S3.
#[async_trait::async_trait]
pub trait BlobStore: Send + Sync {
    /// Size of the object, `None` when absent.
    async fn stat(&self, key: &StorageKey) -> Result<Option<u64>>;
    /// Stream the object or a range of it, `None` when absent.
    async fn read(&self, key: &StorageKey, range: Option<ByteRange>) -> Result<Option<Body>>;
    /// Start writing an object.
    async fn create(&self, key: &StorageKey) -> Result<Box<dyn BlobWriter>>;
    /// Delete the object: `true` when something was deleted. A read already
    /// in progress must not be broken by it.
    async fn delete(&self, key: &StorageKey) -> Result<bool>;

    /// Stored objects under `nar/` in key order, after `after`, at most `limit`.
    async fn list(&self, after: Option<&str>, limit: u32) -> Result<Vec<ObjectEntry>>;

    /// Remove leftovers of unfinished writes older than `older_than`; how many.
    async fn sweep_incomplete(&self, older_than: std::time::Duration) -> Result<u32>;

    /// The object (or `range` of it) as a local file, when this store keeps
    /// it in one; `None` otherwise (then [`BlobStore::read`] streams it).
    async fn open_file(&self, _key: &StorageKey, _range: Option<ByteRange>) -> Result<Option<FileRange>> {
        Ok(None)
    }

    /// The object `key` as it is being written on this node, if it is
    /// ([`follow`]); `None` from stores that do not keep track.
    async fn follow(&self, _key: &StorageKey) -> Result<Option<Body>> {
        Ok(None)
    }

    /// Delete many objects, [`DELETE_PARALLELISM`] at a time; how many existed.
    async fn delete_many(&self, keys: &[StorageKey]) -> Result<u32> {
        use futures_util::{StreamExt as _, TryStreamExt as _};
        // The (lazy) futures are made first: a closure inside the stream
        // would have to be generic over the keys' lifetime.
        let deletes: Vec<_> = keys.iter().map(|k| self.delete(k)).collect();
        futures_util::stream::iter(deletes)
            .buffer_unordered(DELETE_PARALLELISM)
            .try_fold(0u32, |n, existed| async move { Ok(n + u32::from(existed)) })
            .await
    }
}

/// Deletes in flight at once in [`BlobStore::delete_many`].
pub const DELETE_PARALLELISM: usize = 8;

/// A writer as the guest holds it.
pub struct WriterHandle(pub Box<dyn BlobWriter>);
