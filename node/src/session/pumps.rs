//! The async tasks between the network and the training thread: received deltas go in,
//! signed deltas go out (one task per recipient, bounded), rejections are scored, progress
//! is published.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{Semaphore, mpsc};
use tokio_util::task::TaskTracker;

use super::worker::{WorkerInput, WorkerOutput};
use super::{Context, publish_status};
use crate::averaging::Rejection;
use crate::net::{IncomingPayload, PayloadKind};

/// Most delta sends in flight at once.
const MAX_SENDS_IN_FLIGHT: usize = 8;

/// Forwards received deltas to the training thread; when it is full the delta is dropped
/// and counted (the swarm and the transfer tasks never wait on training).
pub(crate) async fn inbound(ctx: Arc<Context>, mut deltas: mpsc::Receiver<IncomingPayload>) {
    loop {
        let incoming = tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            incoming = deltas.recv() => match incoming {
                Some(incoming) => incoming,
                None => return,
            },
        };
        ctx.traffic
            .bytes_received
            .fetch_add(incoming.payload.len() as u64, Ordering::Relaxed);
        let peer = incoming.peer;
        let input = WorkerInput::Delta {
            peer,
            header: incoming.header,
            payload: incoming.payload,
            digest: incoming.digest,
        };
        if ctx.inputs.try_send(input).is_err() {
            tracing::warn!(%peer, reason = %Rejection::Overloaded, "delta dropped");
        }
    }
}

/// Carries out what the training thread asks for.
pub(crate) async fn outbound(
    ctx: Arc<Context>,
    mut outputs: mpsc::Receiver<WorkerOutput>,
    tasks: TaskTracker,
) {
    let sends = Arc::new(Semaphore::new(MAX_SENDS_IN_FLIGHT));
    while let Some(output) = outputs.recv().await {
        match output {
            WorkerOutput::Send { peers, outgoing } => {
                for peer in peers {
                    let (ctx, outgoing, sends) = (ctx.clone(), outgoing.clone(), sends.clone());
                    tasks.spawn(async move {
                        // Released however the task ends (delivered, failed, cancelled).
                        let _slot = ctx.in_flight.slot(peer);
                        let Ok(_permit) = sends.acquire_owned().await else {
                            return;
                        };
                        let sent = tokio::select! {
                            _ = ctx.cancel.cancelled() => return,
                            sent = ctx.net.send_hashed_payload(
                                peer,
                                PayloadKind::Delta,
                                &outgoing.header,
                                &outgoing.payload,
                                outgoing.digest,
                            ) => sent,
                        };
                        match sent {
                            Ok(stats) => {
                                ctx.traffic
                                    .bytes_sent
                                    .fetch_add(stats.bytes, Ordering::Relaxed);
                                ctx.traffic.deltas_sent.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(err) => {
                                tracing::debug!(%peer, %err, "delta not delivered; mass returned");
                                ctx.traffic.send_failures.fetch_add(1, Ordering::Relaxed);
                                if !ctx.deliver(WorkerInput::SendFailed(outgoing)).await {
                                    tracing::warn!(%peer, "undelivered delta's mass not returned: node stopping");
                                }
                            }
                        }
                    });
                }
            }
            WorkerOutput::Rejected { peer, reason } => {
                let points = reason.penalty();
                if points > 0 {
                    let _ = ctx
                        .net
                        .report_misbehaviour(peer, points, format!("delta rejected: {reason}"))
                        .await;
                }
            }
            WorkerOutput::Progress(status) => publish_status(&ctx, status),
        }
    }
}
