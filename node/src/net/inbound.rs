//! Accept loops for inbound streams: one task per protocol, one bounded task per stream.
//!
//! `libp2p-stream` drops inbound streams when the accept loop lags, so the loop only checks
//! two semaphores and spawns. At most `max_inbound_transfers` streams per protocol are read at
//! once. On protocols that queue (the pipeline's: bursts of small messages that the receiver
//! drains at once), up to [`QUEUE_FACTOR`] times as many more wait (unread, so they hold no
//! payload memory, only the muxer's window) for a permit for at most half the stall timeout, so
//! they are served in turn rather than reset. Other streams beyond the limit are dropped (the
//! remote sees a reset and a typed error). Every spawned task is tracked and bounded by the
//! transfer deadline; on shutdown a stream still waiting for a permit is dropped, and one being
//! read gets [`SHUTDOWN_GRACE`] to finish (and acknowledge) before it is cancelled.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::{PeerId, Stream};
use libp2p_stream::IncomingStreams;
use tokio::sync::Semaphore;

use super::error::TransferError;
use super::events::NetEvent;
use super::shared::Shared;
use super::transfer::classify;
use crate::errors::chain;

/// Streams that may wait for a permit, as a multiple of the concurrency limit.
const QUEUE_FACTOR: usize = 4;

/// How long an inbound transfer under way may go on once shutdown begins. The receiver hands a
/// payload to the application before it acknowledges it, and an application that finishes on
/// that very payload (the last message of a run) shuts down at once: without the grace the
/// acknowledgement is cancelled, and its sender counts a delivered message as lost.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// Spawns the accept loop for `protocol`; `handler` runs once per inbound stream.
pub(crate) fn spawn_accept_loop<F, Fut>(
    shared: Arc<Shared>,
    protocol: &'static str,
    queue: bool,
    mut incoming: IncomingStreams,
    handler: F,
) where
    F: Fn(PeerId, Stream) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), TransferError>> + Send + 'static,
{
    let limit = shared.limits.max_inbound_transfers.max(1);
    let permits = Arc::new(Semaphore::new(limit));
    let waiting = if queue { QUEUE_FACTOR } else { 0 };
    let admitted = Arc::new(Semaphore::new(limit * (1 + waiting)));
    let tracker = shared.tasks.clone();
    tracker.spawn(async move {
        loop {
            let next = tokio::select! {
                biased;
                () = shared.cancel.cancelled() => break,
                next = incoming.next() => next,
            };
            let Some((peer, stream)) = next else { break };
            let Ok(slot) = admitted.clone().try_acquire_owned() else {
                tracing::warn!(%peer, protocol, "too many inbound transfers; dropping stream");
                continue;
            };
            let (shared, permits) = (shared.clone(), permits.clone());
            let work = handler(peer, stream);
            shared.inbound.clone().spawn(async move {
                let _slot = slot;
                let wait = shared.limits.stall_timeout / 2;
                let queued = shared
                    .cancel
                    .run_until_cancelled(tokio::time::timeout(wait, permits.acquire_owned()))
                    .await;
                let Some(Ok(Ok(_permit))) = queued else {
                    tracing::warn!(%peer, protocol, "inbound stream waited too long; dropped");
                    return;
                };
                let _active = shared.transfer_started();
                let deadline = shared
                    .limits
                    .transfer_deadline(shared.limits.max_payload_bytes);
                let work = tokio::time::timeout(deadline, work);
                tokio::pin!(work);
                let outcome = tokio::select! {
                    outcome = &mut work => Some(outcome),
                    () = shared.cancel.cancelled() => {
                        tokio::time::timeout(SHUTDOWN_GRACE, &mut work).await.ok()
                    }
                };
                let error = match outcome {
                    None => TransferError::Shutdown,
                    Some(Err(_)) => TransferError::Deadline(deadline),
                    Some(Ok(Ok(()))) => return,
                    Some(Ok(Err(error))) => classify(error, &shared.limits),
                };
                tracing::debug!(%peer, protocol, error = %chain(&error), "inbound stream failed");
                if error.is_misbehaviour() {
                    shared.penalize(peer, 10, format!("{protocol}: {}", chain(&error)));
                }
                shared.emit(NetEvent::InboundFailed {
                    peer,
                    protocol,
                    error,
                });
            });
        }
    });
}
