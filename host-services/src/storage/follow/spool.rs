//! A spool: the file a writer's bytes also go to, and how far it is safe
//! to read ([`Progress`]); a [`SpoolReader`] follows it at its own pace.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_util::StreamExt as _;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;

/// How far a download is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Progress {
    /// This many bytes may be handed out.
    Safe(u64),
    /// Committed with this many bytes.
    Done(u64),
    /// Aborted: followers fail.
    Failed,
}

/// One object being written.
pub(super) struct Spool {
    pub(super) path: PathBuf,
    pub(super) progress: watch::Sender<Progress>,
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A follower of one spool: reads what is safe to hand out, at its reader's
/// own pace, straight from the spool file (nothing is buffered for it but
/// what its reader asks for); waits when it has caught up with the writer;
/// ends when the object is committed and fails when it is abandoned.
pub(super) struct SpoolReader {
    /// Keeps the spool file's name until every follower is done.
    _spool: Arc<Spool>,
    file: tokio::fs::File,
    progress: WatchStream<Progress>,
    pos: u64,
    now: Progress,
}

impl SpoolReader {
    pub(super) fn open(spool: Arc<Spool>) -> Option<Self> {
        let file = std::fs::File::open(&spool.path).ok()?;
        let now = *spool.progress.borrow();
        let progress = WatchStream::from_changes(spool.progress.subscribe());
        Some(Self { _spool: spool, file: tokio::fs::File::from_std(file), progress, pos: 0, now })
    }
}

fn abandoned() -> std::io::Error {
    std::io::Error::other("the download being followed was abandoned")
}

impl AsyncRead for SpoolReader {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            let (limit, done) = match this.now {
                Progress::Safe(n) => (n, false),
                Progress::Done(n) => (n, true),
                Progress::Failed => return Poll::Ready(Err(abandoned())),
            };
            if this.pos < limit && buf.remaining() > 0 {
                let want = usize::try_from(limit - this.pos).unwrap_or(usize::MAX).min(buf.remaining());
                let mut part = buf.take(want);
                ready!(Pin::new(&mut this.file).poll_read(cx, &mut part))?;
                let n = part.filled().len();
                if n == 0 {
                    // The spool is shorter than what its writer wrote.
                    return Poll::Ready(Err(abandoned()));
                }
                // SAFETY: `part` borrows `buf`'s unfilled part, and the read filled `n` bytes of it.
                unsafe { buf.assume_init(n) };
                buf.advance(n);
                this.pos += n as u64;
                return Poll::Ready(Ok(()));
            }
            if done || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.progress.poll_next_unpin(cx)) {
                Some(progress) => this.now = progress,
                None => this.now = Progress::Failed,
            }
        }
    }
}
