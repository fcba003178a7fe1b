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

/// Bytes that must move (either way) within one stall timeout for the stream to count as
/// progressing: 16 KiB per 20 s is 800 B/s, far below any real link, but a peer that keeps a
/// stream (and a transfer slot) alive with one byte now and then no longer does.
pub(crate) const MIN_PROGRESS_BYTES: usize = 16 * 1024;

/// Wraps a stream; any poll that stays pending past the stall timeout fails, and the timeout
/// restarts only once [`MIN_PROGRESS_BYTES`] moved since it last did.
#[derive(Debug)]
pub(crate) struct StallGuard<S> {
    inner: S,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    /// Bytes moved since the timeout last restarted.
    moved: usize,
}

impl<S> StallGuard<S> {
    pub(crate) fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout)),
            moved: 0,
        }
    }

    fn progressed(&mut self, bytes: usize) {
        self.moved = self.moved.saturating_add(bytes);
        if self.moved >= MIN_PROGRESS_BYTES {
            self.moved = 0;
            self.timer.as_mut().reset(Instant::now() + self.timeout);
        }
    }

    fn check_stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, Stalled))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Passes a finished poll on (counting the bytes it moved, `moved`), and fails a pending
    /// one once the stream has stalled.
    fn settle<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
        moved: impl FnOnce(&T) -> usize,
    ) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                if let Ok(value) = &result {
                    self.progressed(moved(value));
                }
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
        this.settle(cx, poll, |n| *n)
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
        this.settle(cx, poll, |n| *n)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.settle(cx, poll, |()| 0)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_close(cx);
        this.settle(cx, poll, |()| 0)
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use std::future::Future;

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

    /// A peer that sends one byte at a time, each well within the stall timeout.
    struct Trickle {
        every: Duration,
        next: Pin<Box<tokio::time::Sleep>>,
    }

    impl Trickle {
        fn new(every: Duration) -> Self {
            Self {
                every,
                next: Box::pin(tokio::time::sleep(every)),
            }
        }
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            match self.next.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    let every = self.every;
                    self.next
                        .as_mut()
                        .reset(tokio::time::Instant::now() + every);
                    buf[0] = 1;
                    Poll::Ready(Ok(1))
                }
                Poll::Pending => Poll::Pending,
            }
        }
    }

    /// Slow loris: one byte every 30 ms under a 100 ms stall timeout. Before, every byte
    /// restarted the timeout and the read of 64 bytes took 2 s and succeeded; now too few
    /// bytes move within one timeout and it fails as a stall.
    #[tokio::test]
    async fn a_trickle_of_bytes_is_a_stall() {
        let started = tokio::time::Instant::now();
        let mut guard = StallGuard::new(
            Trickle::new(Duration::from_millis(30)),
            Duration::from_millis(100),
        );
        let err = guard
            .read_exact(&mut [0; 64])
            .await
            .expect_err("a trickle stalls");
        assert!(is_stall(&err), "{err}");
        assert!(started.elapsed() < Duration::from_secs(1));
        // A stream that delivers at once is not one.
        let mut fine = StallGuard::new(&[7u8; 64 * 1024][..], Duration::from_millis(100));
        let mut all = Vec::new();
        fine.read_to_end(&mut all).await.expect("read");
        assert_eq!(all.len(), 64 * 1024);
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
