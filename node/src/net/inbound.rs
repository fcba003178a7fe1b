//! Accept loops for inbound streams: one task per protocol, one bounded task per stream.
//!
//! `libp2p-stream` drops inbound streams when the accept loop lags, so the loop only checks
//! two semaphores and spawns. At most `max_inbound_transfers` streams per protocol are read at
//! once. On protocols that queue (the pipeline's: bursts of small messages that the receiver
//! drains at once), up to [`QUEUE_FACTOR`] times as many more wait (unread, so they hold no
//! payload memory, only the muxer's window) for a permit for at most half the stall timeout, so
//! they are served in turn rather than reset. Other streams beyond the limit are dropped (the
//! remote sees a reset and a typed error). One peer holds at most half of either (see
//! [`quota`](super::quota)), so a peer that opens streams and trickles bytes cannot starve the
//! others; a stream that stalls or overruns its deadline costs its sender [`STALL_POINTS`].
//! Every spawned task is tracked and bounded by the transfer deadline; on shutdown a stream
//! still waiting for a permit is dropped, and one being read gets [`SHUTDOWN_GRACE`] to finish
//! (and acknowledge) before it is cancelled.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::{PeerId, Stream};
use libp2p_stream::IncomingStreams;
use tokio::sync::Semaphore;

use super::error::TransferError;
use super::events::NetEvent;
use super::quota::PeerQuotas;
use super::shared::Shared;
use super::transfer::classify;
use crate::errors::chain;

/// Streams that may wait for a permit, as a multiple of the concurrency limit.
const QUEUE_FACTOR: usize = 4;

/// Misbehaviour points for an inbound stream that stalled or overran its deadline: a peer
/// that vanished looks the same, so a few points (a ban takes dozens of such streams within
/// the score's hour), but a slow-loris peer that keeps doing it is banned.
const STALL_POINTS: u32 = 3;

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
    let quotas = PeerQuotas::new(limit * (1 + waiting) / 2, limit / 2);
    let tracker = shared.tasks.clone();
    tracker.spawn(async move {
        loop {
            let next = tokio::select! {
                biased;
                () = shared.cancel.cancelled() => break,
                next = incoming.next() => next,
            };
            let Some((peer, stream)) = next else { break };
            let Some(quota) = quotas.admit(peer) else {
                tracing::warn!(%peer, protocol, "peer holds its share of inbound transfers; dropping stream");
                continue;
            };
            let Ok(slot) = admitted.clone().try_acquire_owned() else {
                tracing::warn!(%peer, protocol, "too many inbound transfers; dropping stream");
                continue;
            };
            let (shared, permits) = (shared.clone(), permits.clone());
            let work = handler(peer, stream);
            shared.inbound.clone().spawn(async move {
                let _slot = slot;
                let wait = shared.limits.stall_timeout / 2;
                let both = async {
                    let own = quota.reading().await;
                    (own, permits.acquire_owned().await)
                };
                let queued = shared
                    .cancel
                    .run_until_cancelled(tokio::time::timeout(wait, both))
                    .await;
                let Some(Ok((Some(_own), Ok(_permit)))) = queued else {
                    tracing::warn!(%peer, protocol, "inbound stream waited too long; dropped");
                    return;
                };
                let Some(error) = run(&shared, work).await else {
                    return;
                };
                failed(&shared, protocol, peer, error);
            });
        }
    });
}

/// Reads one admitted stream within the transfer deadline (and, once shutdown begins, within
/// [`SHUTDOWN_GRACE`]); its error, if it failed.
async fn run(
    shared: &Shared,
    work: impl Future<Output = Result<(), TransferError>>,
) -> Option<TransferError> {
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
    match outcome {
        None => Some(TransferError::Shutdown),
        Some(Err(_)) => Some(TransferError::Deadline(deadline)),
        Some(Ok(Ok(()))) => None,
        Some(Ok(Err(error))) => Some(classify(error, &shared.limits)),
    }
}

/// Logs a failed inbound stream, charges its sender (malformed frames, stalls and overruns),
/// and reports it.
fn failed(shared: &Shared, protocol: &'static str, peer: PeerId, error: TransferError) {
    tracing::debug!(%peer, protocol, error = %chain(&error), "inbound stream failed");
    let points = if error.is_misbehaviour() {
        10
    } else if matches!(
        error,
        TransferError::Stalled(_) | TransferError::Deadline(_)
    ) {
        STALL_POINTS
    } else {
        0
    };
    if points > 0 {
        shared.penalize(peer, points, format!("{protocol}: {}", chain(&error)));
    }
    shared.emit(NetEvent::InboundFailed {
        peer,
        protocol,
        error,
    });
}
