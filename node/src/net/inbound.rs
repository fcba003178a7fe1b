//! Accept loops for inbound streams: one task per protocol, one bounded task per stream.
//!
//! `libp2p-stream` drops inbound streams when the accept loop lags, so the loop only checks a
//! semaphore and spawns; streams over the concurrency limit are dropped (the remote sees a
//! reset and a typed error). Every spawned task is tracked, cancelled on shutdown, and
//! bounded by the transfer deadline.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use libp2p::{PeerId, Stream};
use libp2p_stream::IncomingStreams;
use tokio::sync::Semaphore;

use super::error::TransferError;
use super::events::NetEvent;
use super::shared::Shared;
use super::transfer::classify;

/// Spawns the accept loop for `protocol`; `handler` runs once per inbound stream.
pub(crate) fn spawn_accept_loop<F, Fut>(
    shared: Arc<Shared>,
    protocol: &'static str,
    mut incoming: IncomingStreams,
    handler: F,
) where
    F: Fn(PeerId, Stream) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), TransferError>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(shared.limits.max_inbound_transfers.max(1)));
    let tracker = shared.tasks.clone();
    tracker.spawn(async move {
        loop {
            let next = tokio::select! {
                biased;
                () = shared.cancel.cancelled() => break,
                next = incoming.next() => next,
            };
            let Some((peer, stream)) = next else { break };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tracing::warn!(%peer, protocol, "too many inbound transfers; dropping stream");
                continue;
            };
            let shared = shared.clone();
            let work = handler(peer, stream);
            shared.tasks.clone().spawn(async move {
                let _permit = permit;
                let _active = shared.transfer_started();
                let deadline = shared
                    .limits
                    .transfer_deadline(shared.limits.max_payload_bytes);
                let outcome = shared
                    .cancel
                    .run_until_cancelled(tokio::time::timeout(deadline, work))
                    .await;
                let error = match outcome {
                    None => TransferError::Shutdown,
                    Some(Err(_)) => TransferError::Deadline(deadline),
                    Some(Ok(Ok(()))) => return,
                    Some(Ok(Err(error))) => classify(error, &shared.limits),
                };
                tracing::debug!(%peer, protocol, %error, "inbound stream failed");
                if error.is_misbehaviour() {
                    shared.penalize(peer, 10, format!("{protocol}: {error}"));
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
