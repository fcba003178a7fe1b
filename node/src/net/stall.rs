//! A stream wrapper that fails reads and writes after a period without progress.
//!
//! A peer that vanishes without closing its connection (power loss, frozen process, NAT
//! drop) leaves reads and writes pending forever; [`StallGuard`] turns that into an
//! `io::ErrorKind::TimedOut` error carrying [`Stalled`], mapped to `TransferError::Stalled`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

/// The cause inside the I/O error a stalled stream returns (recognised by type, not text).
#[derive(Debug, thiserror::Error)]
#[error("murmur: stream stalled")]
pub(crate) struct Stalled;

/// Wraps a stream; any poll that stays pending past the stall timeout fails.
#[derive(Debug)]
pub(crate) struct StallGuard<S> {
    inner: S,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
}

impl<S> StallGuard<S> {
    pub(crate) fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    fn progressed(&mut self) {
        self.timer.as_mut().reset(Instant::now() + self.timeout);
    }

    fn check_stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, Stalled))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn settle<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                self.progressed();
                Poll::Ready(result)
            }
            Poll::Pending => self.check_stalled(cx),
        }
    }
}

/// Whether an I/O error came from a [`StallGuard`].
pub(crate) fn is_stall(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::TimedOut && error.get_ref().is_some_and(|e| e.is::<Stalled>())
}

impl<S: AsyncRead + Unpin> AsyncRead for StallGuard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.settle(cx, poll)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StallGuard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.settle(cx, poll)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.settle(cx, poll)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_close(cx);
        this.settle(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use futures::io::{AsyncRead, AsyncReadExt};

    use super::{StallGuard, is_stall};

    /// A stream that never yields a byte (a peer that froze).
    struct Frozen;

    impl AsyncRead for Frozen {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_stall_is_recognised_by_its_cause_not_its_text() {
        let mut guard = StallGuard::new(Frozen, Duration::from_millis(20));
        let err = guard.read(&mut [0; 4]).await.expect_err("stalled");
        assert!(is_stall(&err), "{err}");
        assert_eq!(err.to_string(), "murmur: stream stalled");
        // Another timeout that happens to read the same is not a stall.
        let lookalike = io::Error::new(io::ErrorKind::TimedOut, "murmur: stream stalled");
        assert!(!is_stall(&lookalike));
    }
}
