//! State shared between the `Network` handles and the transfer tasks they spawn.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use libp2p::PeerId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::NetLimits;
use super::event_loop::Command;
use super::events::NetEvent;

/// State shared by the handle and the transfer tasks.
pub(crate) struct Shared {
    pub(crate) local_peer_id: PeerId,
    pub(crate) limits: NetLimits,
    pub(crate) cancel: CancellationToken,
    pub(crate) tasks: TaskTracker,
    /// The tasks reading inbound streams: shutdown lets them finish (see
    /// [`SHUTDOWN_GRACE`](super::inbound::SHUTDOWN_GRACE)) before closing the connections.
    pub(crate) inbound: TaskTracker,
    pub(crate) commands: mpsc::WeakSender<Command>,
    pub(crate) events: mpsc::Sender<NetEvent>,
    pub(crate) control: Mutex<libp2p_stream::Control>,
    pub(crate) active: AtomicUsize,
    /// Bumped by the event loop whenever the peer book changes in a way membership reads (a
    /// peer's first connection, its last disconnection, a new announcement).
    pub(crate) peer_changes: tokio::sync::watch::Receiver<u64>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("local_peer_id", &self.local_peer_id)
            .finish()
    }
}

/// Counts an in-flight transfer for as long as it lives.
pub(crate) struct ActiveTransfer<'a>(&'a AtomicUsize);

impl Drop for ActiveTransfer<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    pub(crate) fn transfer_started(&self) -> ActiveTransfer<'_> {
        self.active.fetch_add(1, Ordering::SeqCst);
        ActiveTransfer(&self.active)
    }

    pub(crate) fn control(&self) -> libp2p_stream::Control {
        match self.control.lock() {
            Ok(control) => control.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Scores `peer` (best effort: dropped if the owner task is gone or saturated).
    pub(crate) fn penalize(&self, peer: PeerId, points: u32, reason: String) {
        if let Some(commands) = self.commands.upgrade() {
            let _ = commands.try_send(Command::Penalize {
                peer,
                points,
                reason,
            });
        }
    }

    pub(crate) fn emit(&self, event: NetEvent) {
        if let Err(e) = self.events.try_send(event) {
            tracing::debug!("network event dropped: {e}");
        }
    }

    /// Runs an outbound transfer under the node's shutdown token and `deadline`, mapping
    /// the outcome to the transfer error a caller should see.
    pub(crate) async fn bounded<T>(
        &self,
        deadline: std::time::Duration,
        work: impl std::future::Future<Output = Result<T, super::error::TransferError>>,
    ) -> Result<T, super::error::TransferError> {
        use super::error::TransferError;
        match self
            .cancel
            .run_until_cancelled(tokio::time::timeout(deadline, work))
            .await
        {
            None => Err(TransferError::Shutdown),
            Some(Err(_)) => Err(TransferError::Deadline(deadline)),
            Some(Ok(result)) => result.map_err(|e| super::transfer::classify(e, &self.limits)),
        }
    }
}
