//! A blob store behind deadlines and a circuit breaker
//! ([`crate::breaker`]): every call answers within its deadline, and a read
//! stream that makes no progress for the deadline fails instead of hanging.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::future::Future as _;

use tokio::io::{AsyncRead, ReadBuf};

use super::{BlobStore, BlobWriter, Body, ByteRange, FileRange, ObjectEntry, StorageKey};
use crate::breaker::Guard;
use crate::Result;

/// How much longer than a plain call completing an upload may take.
const COMMIT_FACTOR: u32 = 10;

/// A [`BlobStore`] whose every call has a deadline.
pub struct GuardedStore {
    store: Arc<dyn BlobStore>,
    guard: Arc<Guard>,
}

impl GuardedStore {
    /// Guard `store` (`name` in logs): calls must answer within `timeout`.
    pub fn new(store: Arc<dyn BlobStore>, name: &'static str, timeout: Duration, cool_down: Duration) -> Self {
        Self { store, guard: Arc::new(Guard::new(name, timeout, cool_down)) }
    }
}

#[async_trait::async_trait]
impl BlobStore for GuardedStore {
    async fn stat(&self, key: &StorageKey) -> Result<Option<u64>> {
        self.guard.call(self.store.stat(key)).await
    }

    async fn read(&self, key: &StorageKey, range: Option<ByteRange>) -> Result<Option<Body>> {
        let body = self.guard.call(self.store.read(key, range)).await?;
        Ok(body.map(|inner| Box::pin(StallTimeout::new(inner, self.guard.timeout())) as Body))
    }

    async fn open_file(&self, key: &StorageKey, range: Option<ByteRange>) -> Result<Option<FileRange>> {
        self.guard.call(self.store.open_file(key, range)).await
    }

    async fn create(&self, key: &StorageKey) -> Result<Box<dyn BlobWriter>> {
        let writer = self.guard.call(self.store.create(key)).await?;
        Ok(Box::new(GuardedWriter { writer, guard: self.guard.clone() }))
    }

    async fn delete(&self, key: &StorageKey) -> Result<bool> {
        self.guard.call(self.store.delete(key)).await
    }

    async fn list(&self, after: Option<&str>, limit: u32) -> Result<Vec<ObjectEntry>> {
        self.guard.call_within(self.guard.timeout() * COMMIT_FACTOR, self.store.list(after, limit)).await
    }

    async fn sweep_incomplete(&self, older_than: Duration) -> Result<u32> {
        self.guard.call_within(self.guard.timeout() * COMMIT_FACTOR, self.store.sweep_incomplete(older_than)).await
    }
}

struct GuardedWriter {
    writer: Box<dyn BlobWriter>,
    guard: Arc<Guard>,
}

#[async_trait::async_trait]
impl BlobWriter for GuardedWriter {
    async fn write(&mut self, data: &[u8]) -> Result<()> {
        // A write may upload a whole part.
        let timeout = self.guard.timeout() * COMMIT_FACTOR;
        self.guard.call_within(timeout, self.writer.write(data)).await
    }

    fn written(&self) -> u64 {
        self.writer.written()
    }

    async fn commit(self: Box<Self>) -> Result<bool> {
        let timeout = self.guard.timeout() * COMMIT_FACTOR;
        let Self { writer, guard } = *self;
        guard.call_within(timeout, writer.commit()).await
    }

    async fn abort(self: Box<Self>) {
        let timeout = self.guard.timeout();
        if tokio::time::timeout(timeout, self.writer.abort()).await.is_err() {
            tracing::warn!("aborting an upload did not finish in time");
        }
    }
}

/// A reader that fails with `TimedOut` when a read waits for `limit`
/// without a byte arriving (time the consumer spends elsewhere between
/// reads does not count).
pub struct StallTimeout<R> {
    inner: R,
    limit: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    waiting: bool,
}

impl<R> StallTimeout<R> {
    /// Wrap `inner`.
    pub fn new(inner: R, limit: Duration) -> Self {
        Self { inner, limit, timer: Box::pin(tokio::time::sleep(limit)), waiting: false }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for StallTimeout<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if !self.waiting {
            // A new wait starts now.
            let next = tokio::time::Instant::now() + self.limit;
            self.timer.as_mut().reset(next);
            self.waiting = true;
        }
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                self.waiting = false;
                Poll::Ready(r)
            }
            Poll::Pending => match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("storage read made no progress for {:?}", self.limit),
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}
