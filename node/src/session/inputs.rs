//! The training thread's input queue: a bounded channel the thread reads without an async
//! runtime, whose async senders can wait for room as an event (the thread signals each input
//! it takes) instead of retrying on a timer.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};

/// Why an input was not queued (it is dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    /// The queue is full.
    #[error("the training thread's queue is full")]
    Full,
    /// The training thread is gone.
    #[error("the training thread is gone")]
    Closed,
}
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::worker::WorkerInput;

/// A bounded queue of `capacity` inputs.
pub(crate) fn channel(capacity: usize) -> (InputSender, InputReceiver) {
    let (tx, rx) = mpsc::sync_channel(capacity);
    let room = Arc::new(Notify::new());
    (
        InputSender {
            tx,
            room: room.clone(),
        },
        InputReceiver { rx, room },
    )
}

/// The async side's end.
#[derive(Debug, Clone)]
pub(crate) struct InputSender {
    tx: SyncSender<WorkerInput>,
    room: Arc<Notify>,
}

impl InputSender {
    /// Queues `input` if there is room now.
    pub(crate) fn try_send(&self, input: WorkerInput) -> Result<(), Refused> {
        self.tx.try_send(input).map_err(|err| match err {
            TrySendError::Full(_) => Refused::Full,
            TrySendError::Disconnected(_) => Refused::Closed,
        })
    }

    /// Queues `input`, waiting while the queue is full until the thread takes one, for at most
    /// `limit` and never past `cancel`; returns whether it was queued.
    pub(crate) async fn send_within(
        &self,
        mut input: WorkerInput,
        limit: Duration,
        cancel: &CancellationToken,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // Registered before the attempt: a take between the attempt and the wait wakes it.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.tx.try_send(input) {
                Ok(()) => return true,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(back)) => input = back,
            }
            tokio::select! {
                () = cancel.cancelled() => return false,
                () = &mut room => {}
                () = tokio::time::sleep_until(deadline) => {
                    tracing::warn!("training thread did not take an input in time");
                    return false;
                }
            }
        }
    }
}

/// The training thread's end.
#[derive(Debug)]
pub(crate) struct InputReceiver {
    rx: Receiver<WorkerInput>,
    room: Arc<Notify>,
}

impl InputReceiver {
    /// The next input, without waiting.
    pub(crate) fn try_recv(&self) -> Result<WorkerInput, TryRecvError> {
        let input = self.rx.try_recv()?;
        self.room.notify_waiters();
        Ok(input)
    }

    /// The next input, waiting at most `wait`.
    pub(crate) fn recv_timeout(&self, wait: Duration) -> Result<WorkerInput, RecvTimeoutError> {
        let input = self.rx.recv_timeout(wait)?;
        self.room.notify_waiters();
        Ok(input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_takes_the_input_once_the_thread_takes_one() {
        let (tx, rx) = channel(1);
        let cancel = CancellationToken::new();
        assert!(tx.try_send(WorkerInput::Stop).is_ok());
        let sender = tx.clone();
        let waiting = tokio::spawn(async move {
            sender
                .send_within(
                    WorkerInput::Stop,
                    Duration::from_secs(30),
                    &CancellationToken::new(),
                )
                .await
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the queue is full");
        // The training thread takes one: the waiting input goes in.
        let taker = std::thread::spawn(move || {
            let first = rx.recv_timeout(Duration::from_secs(5)).is_ok();
            let second = rx.recv_timeout(Duration::from_secs(5)).is_ok();
            (first, second)
        });
        assert!(waiting.await.expect("the sender task"));
        assert_eq!(taker.join().expect("the taker"), (true, true));
        drop(cancel);
    }

    #[tokio::test]
    async fn a_full_queue_gives_up_at_the_limit_or_on_cancel() {
        let (tx, _rx) = channel(1);
        assert!(tx.try_send(WorkerInput::Stop).is_ok());
        assert_eq!(tx.try_send(WorkerInput::Stop), Err(Refused::Full));
        let cancel = CancellationToken::new();
        assert!(
            !tx.send_within(WorkerInput::Stop, Duration::from_millis(50), &cancel)
                .await
        );
        cancel.cancel();
        assert!(
            !tx.send_within(WorkerInput::Stop, Duration::from_secs(30), &cancel)
                .await
        );
    }

    #[tokio::test]
    async fn a_gone_thread_refuses_at_once() {
        let (tx, rx) = channel(1);
        drop(rx);
        let cancel = CancellationToken::new();
        assert!(
            !tx.send_within(WorkerInput::Stop, Duration::from_secs(30), &cancel)
                .await
        );
    }
}
