//! A writer into S3: a multipart upload with one part buffered at a time
//! (named by a marker object so a sweep can abort it), published
//! put-if-absent at commit; a small object is one `PutObject`.

use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};

use super::{s3_error, S3Store, PART_SIZE};
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

    async fn abort_upload(&mut self) {
        if let Some(id) = self.upload_id.take() {
            let store = &self.store;
            let req = store.client.abort_multipart_upload().bucket(&store.bucket).key(&self.object).upload_id(&id);
            if let Err(e) = req.send().await {
                tracing::warn!(object = self.object, error = %DisplayErrorContext(&e), "failed to abort a multipart upload");
            }
            store.forget_marker(&id).await;
        }
    }
}

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
        let (client, bucket, object) = (self.store.client.clone(), self.store.bucket.clone(), self.object.clone());
        let store = self.store.clone();
        rt.spawn(async move {
            let _ = client.abort_multipart_upload().bucket(bucket).key(object).upload_id(&id).send().await;
            store.forget_marker(&id).await;
        });
    }
}
