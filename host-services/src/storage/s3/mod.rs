//! S3 storage (`--cache-storage-s3-bucket`), in the same layout as local disk.
//!
//! A writer streams into a multipart upload with one part buffered at a
//! time ([`PART_SIZE`]), so memory is bounded whatever the NAR size, and
//! nothing is visible under the key until `CompleteMultipartUpload` (small
//! objects are one `PutObject` at commit). Commit is put-if-absent: an
//! existing object wins (checked first, and `If-None-Match: *` where the
//! server supports it). Deletes do not break reads in progress: S3 finishes
//! a GET that has started (and the filesystem-backed test server reads
//! from an open file).

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::Client;

/// Bytes buffered per multipart part (S3's minimum is 5 MiB).
pub use super::layout::PART_SIZE;
use super::layout::{nar_key_of, upload_marker, NAR_PREFIX, UPLOADS_PREFIX};
use super::{BlobStore, BlobWriter, Body, ByteRange, ObjectEntry, StorageKey};
use crate::{Error, Result};
use writer::S3Writer;

mod writer;

/// Settings of `--cache-storage-s3-*`.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// Bucket name.
    pub bucket: String,
    /// Endpoint URL (e.g. `http://127.0.0.1:9000`); AWS when none.
    pub endpoint: Option<String>,
    /// Region.
    pub region: String,
    /// Access key id (the SDK's default chain is not used: set both).
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Path-style addressing (MinIO, s3s, …).
    pub force_path_style: bool,
}

fn client(opts: &S3Options) -> Client {
    let creds = Credentials::new(&opts.access_key_id, &opts.secret_access_key, None, None, "ncps-edge");
    let mut config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(opts.region.clone()))
        .credentials_provider(creds)
        .force_path_style(opts.force_path_style);
    if let Some(endpoint) = &opts.endpoint {
        config = config.endpoint_url(endpoint);
    }
    Client::from_conf(config.build())
}

fn s3_error<E>(e: SdkError<E, HttpResponse>) -> Error
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
{
    match &e {
        SdkError::ServiceError(s) if s.err().code() == Some("PreconditionFailed") => Error::conflict("object exists"),
        // 500, 503 and the like are outages worth a retry.
        SdkError::ServiceError(s) if s.raw().status().is_server_error() => {
            Error::unavailable("s3", DisplayErrorContext(&e).to_string())
        }
        SdkError::ServiceError(_) => Error::internal("s3", DisplayErrorContext(&e).to_string()),
        SdkError::TimeoutError(_) => Error::timeout("s3", DisplayErrorContext(&e).to_string()),
        _ => Error::unavailable("s3", DisplayErrorContext(&e).to_string()),
    }
}

fn is_not_found<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    match e {
        SdkError::ServiceError(s) => matches!(s.err().code(), Some("NotFound" | "NoSuchKey" | "404")),
        _ => false,
    }
}

/// Whether S3 answered that the multipart upload does not exist (any
/// more): finished or aborted already.
fn is_no_such_upload<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    matches!(e, SdkError::ServiceError(s) if s.err().code() == Some("NoSuchUpload"))
}

/// Create `opts.bucket` if it does not exist (for tests and first set-up).
pub async fn create_bucket(opts: &S3Options) -> Result<()> {
    let c = client(opts);
    if c.head_bucket().bucket(&opts.bucket).send().await.is_ok() {
        return Ok(());
    }
    c.create_bucket().bucket(&opts.bucket).send().await.map_err(s3_error)?;
    Ok(())
}

/// An S3 bucket as a blob store.
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
}

impl S3Store {
    /// A store on `opts.bucket`; fails when the bucket cannot be reached.
    pub async fn connect(opts: &S3Options) -> Result<Self> {
        let client = client(opts);
        client.head_bucket().bucket(&opts.bucket).send().await.map_err(s3_error)?;
        Ok(Self { client, bucket: opts.bucket.clone() })
    }

    async fn exists(&self, object: &str) -> Result<Option<u64>> {
        match self.client.head_object().bucket(&self.bucket).key(object).send().await {
            Ok(head) => Ok(Some(head.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(s3_error(e)),
        }
    }
}

#[async_trait::async_trait]
impl BlobStore for S3Store {
    async fn stat(&self, key: &StorageKey) -> Result<Option<u64>> {
        self.exists(&key.layout()).await
    }

    async fn read(&self, key: &StorageKey, range: Option<ByteRange>) -> Result<Option<Body>> {
        let mut req = self.client.get_object().bucket(&self.bucket).key(key.layout());
        if let Some(r) = range {
            let spec = match r.length {
                Some(0) => return Ok(Some(Box::pin(tokio::io::empty()))),
                Some(len) => format!("bytes={}-{}", r.offset, r.offset + len - 1),
                None => format!("bytes={}-", r.offset),
            };
            req = req.range(spec);
        }
        match req.send().await {
            Ok(out) => Ok(Some(Box::pin(out.body.into_async_read()))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(s3_error(e)),
        }
    }

    async fn create(&self, key: &StorageKey) -> Result<Box<dyn BlobWriter>> {
        Ok(Box::new(S3Writer {
            store: self.clone(),
            object: key.layout(),
            buf: Vec::with_capacity(PART_SIZE),
            upload_id: None,
            parts: Vec::new(),
            written: 0,
        }))
    }

    async fn delete(&self, key: &StorageKey) -> Result<bool> {
        let object = key.layout();
        if self.exists(&object).await?.is_none() {
            return Ok(false);
        }
        self.client.delete_object().bucket(&self.bucket).key(&object).send().await.map_err(s3_error)?;
        Ok(true)
    }

    async fn list(&self, after: Option<&str>, limit: u32) -> Result<Vec<ObjectEntry>> {
        // The layout `store/nar/<h0>/<h0h1>/<file>` sorts like the file names.
        let mut req = self.client.list_objects_v2().bucket(&self.bucket).prefix(NAR_PREFIX).max_keys(limit as i32);
        if let Some(after) = after {
            req = req.start_after(StorageKey::parse(after)?.layout());
        }
        let out = req.send().await.map_err(s3_error)?;
        Ok(out
            .contents()
            .iter()
            .filter_map(|o| Some(ObjectEntry { key: nar_key_of(o.key()?)?, size: o.size().unwrap_or(0).max(0) as u64 }))
            .collect())
    }

    async fn sweep_incomplete(&self, older_than: std::time::Duration) -> Result<u32> {
        let cutoff = aws_sdk_s3::primitives::DateTime::from(std::time::SystemTime::now() - older_than);
        let marked = self.sweep_marked(cutoff).await?;
        let (mut key_marker, mut id_marker, mut aborted) = (None::<String>, None::<String>, marked);
        loop {
            let out = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix("store/")
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await;
            let out = match out {
                Ok(out) => out,
                // Some S3-compatible servers cannot list uploads: nothing to sweep.
                Err(SdkError::ServiceError(e)) if e.err().code() == Some("NotImplemented") => {
                    tracing::debug!("the S3 server cannot list multipart uploads; none swept");
                    return Ok(aborted);
                }
                Err(e) => return Err(s3_error(e)),
            };
            for upload in out.uploads() {
                let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) else { continue };
                if upload.initiated().is_some_and(|t| t.secs() <= cutoff.secs()) {
                    let req = self.client.abort_multipart_upload().bucket(&self.bucket).key(key).upload_id(id);
                    match req.send().await {
                        Ok(_) => aborted += 1,
                        // Finished or aborted by its node since the listing.
                        Err(e) if is_no_such_upload(&e) => {}
                        Err(e) => return Err(s3_error(e)),
                    }
                }
            }
            if !out.is_truncated().unwrap_or(false) {
                return Ok(aborted);
            }
            key_marker = out.next_key_marker().map(str::to_owned);
            id_marker = out.next_upload_id_marker().map(str::to_owned);
        }
    }
}

impl S3Store {
    async fn forget_marker(&self, id: &str) {
        let req = self.client.delete_object().bucket(&self.bucket).key(upload_marker(id));
        if let Err(e) = req.send().await {
            tracing::debug!(upload_id = id, error = %DisplayErrorContext(&e), "failed to delete an upload marker");
        }
    }

    /// Abort the uploads whose markers are older than `cutoff`; how many.
    async fn sweep_marked(&self, cutoff: aws_sdk_s3::primitives::DateTime) -> Result<u32> {
        let (mut token, mut aborted) = (None::<String>, 0);
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(UPLOADS_PREFIX)
                .set_continuation_token(token.clone())
                .send()
                .await
                .map_err(s3_error)?;
            for marker in out.contents() {
                let (Some(key), Some(at)) = (marker.key(), marker.last_modified()) else { continue };
                if at.secs() > cutoff.secs() {
                    continue;
                }
                let id = key.trim_start_matches(UPLOADS_PREFIX);
                let object = self.client.get_object().bucket(&self.bucket).key(key).send().await.map_err(s3_error)?;
                let object = object.body.collect().await.map_err(|e| Error::unavailable("s3", e))?.into_bytes();
                let object = String::from_utf8_lossy(&object).into_owned();
                let req = self.client.abort_multipart_upload().bucket(&self.bucket).key(&object).upload_id(id);
                match req.send().await {
                    Ok(_) => aborted += 1,
                    Err(e) if is_no_such_upload(&e) => {}
                    // An upload that finished before its marker was deleted
                    // (the node died in between): S3 says NoSuchUpload, some
                    // S3-compatible servers (s3s) AccessDenied. The listing
                    // below still finds any upload that is really left.
                    Err(SdkError::ServiceError(e)) if e.err().code() == Some("AccessDenied") => {
                        tracing::warn!(
                            upload_id = id,
                            object = %object,
                            "the S3 server refused to abort a marked upload (finished already, or the credentials \
                             lack s3:AbortMultipartUpload); its marker is dropped"
                        );
                    }
                    Err(e) => return Err(s3_error(e)),
                }
                self.forget_marker(id).await;
            }
            if !out.is_truncated().unwrap_or(false) {
                return Ok(aborted);
            }
            token = out.next_continuation_token().map(str::to_owned);
        }
    }
}
