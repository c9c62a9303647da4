//! A writer into S3: a multipart upload with one part buffered at a time
//! (named by a marker object so a sweep can abort it), published
//! put-if-absent at commit; a small object is one `PutObject`. An upload
//! given up is aborted, retried through an outage ([`abandon`]), and its
//! marker is deleted only once the upload is gone.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use backon::{ExponentialBuilder, Retryable};

use super::{is_no_such_upload, s3_error, S3Store, PART_SIZE};
use crate::storage::layout::upload_marker;
use crate::storage::BlobWriter;
use crate::{Error, Result};

/// An object being written.
pub(super) struct S3Writer {
    pub(super) store: S3Store,
    pub(super) object: String,
    pub(super) buf: Vec<u8>,
    pub(super) upload_id: Option<String>,
    pub(super) parts: Vec<CompletedPart>,
    pub(super) written: u64,
}

impl S3Writer {
    /// Upload `buf` as the next part, starting the multipart upload first.
    async fn flush_part(&mut self) -> Result<()> {
        let (client, bucket) = (&self.store.client, &self.store.bucket);
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let out =
                    client.create_multipart_upload().bucket(bucket).key(&self.object).send().await.map_err(s3_error)?;
                let id = out.upload_id().ok_or_else(|| Error::internal("s3", "no upload id"))?.to_owned();
                self.upload_id = Some(id.clone());
                // A marker names the upload, so a sweep can abort it if this
                // node dies before completing it (not every S3-compatible
                // server lists multipart uploads).
                let marker = client
                    .put_object()
                    .bucket(bucket)
                    .key(upload_marker(&id))
                    .body(ByteStream::from(self.object.clone().into_bytes()))
                    .send()
                    .await;
                marker.map_err(s3_error)?;
                id
            }
        };
        let number = self.parts.len() as i32 + 1;
        let body = ByteStream::from(std::mem::replace(&mut self.buf, Vec::with_capacity(PART_SIZE)));
        let out = client
            .upload_part()
            .bucket(bucket)
            .key(&self.object)
            .upload_id(&upload_id)
            .part_number(number)
            .body(body)
            .send()
            .await
            .map_err(s3_error)?;
        self.parts.push(CompletedPart::builder().part_number(number).set_e_tag(out.e_tag().map(str::to_owned)).build());
        Ok(())
    }

    /// Abort the upload, if one was started. One attempt is awaited; if S3
    /// refuses it (an outage), [`abandon`] retries in the background.
    async fn abort_upload(&mut self) {
        if let Some(id) = self.upload_id.take() {
            match abort_once(&self.store, &self.object, &id).await {
                Ok(()) => self.store.forget_marker(&id).await,
                Err(e) => {
                    tracing::warn!(object = self.object, error = %e, "failed to abort a multipart upload; retrying");
                    if let Ok(rt) = tokio::runtime::Handle::try_current() {
                        rt.spawn(abandon(self.store.clone(), self.object.clone(), id));
                    }
                }
            }
        }
    }
}

/// One `AbortMultipartUpload`; an upload that is gone already counts as
/// aborted.
async fn abort_once(store: &S3Store, object: &str, id: &str) -> Result<()> {
    let req = store.client.abort_multipart_upload().bucket(&store.bucket).key(object).upload_id(id);
    match req.send().await {
        Ok(_) => Ok(()),
        Err(e) if is_no_such_upload(&e) => Ok(()),
        Err(e) => Err(s3_error(e)),
    }
}

/// Abort an upload this node gave up, retrying through an outage of S3
/// (about 20 s). Its marker goes only once the upload is gone: an upload
/// that could not be aborted keeps it, so a sweep still finds the upload on
/// a server that cannot list them.
async fn abandon(store: S3Store, object: String, id: String) {
    let backoff = ExponentialBuilder::default()
        .with_min_delay(ABANDON_FIRST_DELAY)
        .with_max_delay(ABANDON_MAX_DELAY)
        .with_max_times(8);
    let aborted = (|| abort_once(&store, &object, &id)).retry(backoff).sleep(tokio::time::sleep).await;
    match aborted {
        Ok(()) => store.forget_marker(&id).await,
        Err(e) => {
            tracing::warn!(object, upload_id = id, error = %e, "gave up aborting a multipart upload; a sweep aborts it")
        }
    }
}

/// First wait before [`abandon`] tries again.
const ABANDON_FIRST_DELAY: std::time::Duration = std::time::Duration::from_millis(200);
/// Longest wait between [`abandon`]'s tries.
const ABANDON_MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(5);

#[async_trait::async_trait]
impl BlobWriter for S3Writer {
    async fn write(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let n = (PART_SIZE - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            self.written += n as u64;
            if self.buf.len() == PART_SIZE {
                self.flush_part().await?;
            }
        }
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written
    }

    async fn commit(mut self: Box<Self>) -> Result<bool> {
        if self.store.exists(&self.object).await?.is_some() {
            self.abort_upload().await;
            return Ok(false);
        }
        let (client, bucket) = (self.store.client.clone(), self.store.bucket.clone());
        let result = if self.upload_id.is_none() {
            let body = ByteStream::from(std::mem::take(&mut self.buf));
            client
                .put_object()
                .bucket(&bucket)
                .key(&self.object)
                .if_none_match("*")
                .body(body)
                .send()
                .await
                .map(|_| ())
                .map_err(s3_error)
        } else {
            if !self.buf.is_empty() {
                self.flush_part().await?;
            }
            let parts = CompletedMultipartUpload::builder().set_parts(Some(std::mem::take(&mut self.parts))).build();
            let id = self.upload_id.clone().unwrap_or_default();
            let done = client
                .complete_multipart_upload()
                .bucket(&bucket)
                .key(&self.object)
                .upload_id(&id)
                .if_none_match("*")
                .multipart_upload(parts)
                .send()
                .await
                .map(|_| ())
                .map_err(s3_error);
            if done.is_ok() {
                if let Some(id) = self.upload_id.take() {
                    self.store.forget_marker(&id).await;
                }
            }
            done
        };
        match result {
            Ok(()) => Ok(true),
            Err(Error::Conflict(_)) => {
                self.abort_upload().await;
                Ok(false)
            }
            Err(e) => {
                self.abort_upload().await;
                Err(e)
            }
        }
    }

    async fn abort(mut self: Box<Self>) {
        self.abort_upload().await;
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        // An instance that died mid-upload: abort it in the background.
        let (Some(id), Ok(rt)) = (self.upload_id.take(), tokio::runtime::Handle::try_current()) else { return };
        rt.spawn(abandon(self.store.clone(), self.object.clone(), id));
    }
}
