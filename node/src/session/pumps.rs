//! The async tasks between the network and the training thread: received deltas go in,
//! signed deltas go out (one task per recipient, bounded), rejections are scored, progress
//! is published.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use murmur_protocol::PartPhase;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::task::TaskTracker;

use super::worker::{WorkerInput, WorkerOutput};
use super::{Context, publish_status};
use crate::adversary::Adversary;
use crate::averaging::butterfly::PartSend;
use crate::averaging::{Outgoing, Rejection};
use crate::errors::chain;
use crate::net::{IncomingPayload, PayloadKind, TransferError};

/// Most delta sends in flight at once.
const MAX_SENDS_IN_FLIGHT: usize = 8;
/// Most butterfly part sends in flight at once (a round of a group of n sends n − 1 parts,
/// then up to n − 1 means).
const MAX_PART_SENDS_IN_FLIGHT: usize = 32;

/// Forwards received deltas (or butterfly parts, by `kind`) to the training thread; when it
/// is full the payload is dropped and counted (the swarm and the transfer tasks never wait
/// on training).
pub(crate) async fn inbound(
    ctx: Arc<Context>,
    kind: PayloadKind,
    mut deltas: mpsc::Receiver<IncomingPayload>,
) {
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
        let input = if kind == PayloadKind::Part {
            WorkerInput::Part {
                peer,
                header: incoming.header,
                payload: incoming.payload,
                digest: incoming.digest,
            }
        } else {
            WorkerInput::Delta {
                peer,
                header: incoming.header,
                payload: incoming.payload,
                digest: incoming.digest,
            }
        };
        if kind == PayloadKind::Part {
            // A butterfly mean dropped here would leave this node off an average its owner
            // counted it in: wait for room (bounded) instead; this pump serves parts only.
            if !ctx.deliver(input).await {
                tracing::warn!(%peer, reason = %Rejection::Overloaded, "butterfly part dropped");
            }
        } else if ctx.inputs.try_send(input).is_err() {
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
    // Butterfly parts have slots of their own: a round's parts all go out at once (one per
    // member) and must not queue behind deltas or each other's rounds.
    let part_sends = Arc::new(Semaphore::new(MAX_PART_SENDS_IN_FLIGHT));
    // The first butterfly round not over yet on this node.
    let (rounds_over, rounds) = watch::channel(0u64);
    while let Some(output) = outputs.recv().await {
        match output {
            WorkerOutput::Send { peers, outgoing } => {
                send_deltas(&ctx, &tasks, &sends, peers, outgoing).await;
            }
            WorkerOutput::SendParts(parts) => {
                for part in parts {
                    let (ctx, slots, rounds) = (ctx.clone(), part_sends.clone(), rounds.clone());
                    tasks.spawn(send_part(ctx, part, slots, rounds));
                }
            }
            WorkerOutput::RoundOver(round) => {
                rounds_over.send_if_modified(|first| {
                    let next = round.saturating_add(1);
                    let later = next > *first;
                    *first = (*first).max(next);
                    later
                });
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

/// Pushes one butterfly part, retrying transient failures within the round's window (a mean
/// that does not arrive leaves the contributor off the group's average); a failure is
/// reported so that its mean is not waited for. A contribution is dropped once its round is
/// over here (`rounds`: the first round not over); a mean still goes out, as the contributor
/// adds a late one.
async fn send_part(
    ctx: Arc<Context>,
    part: PartSend,
    sends: Arc<Semaphore>,
    mut rounds: watch::Receiver<u64>,
) {
    let part = match ctx.config.tamper {
        Some(tamper @ crate::adversary::Tamper::ButterflyTakeover) => {
            let adversary = Adversary::new(tamper, ctx.identity.signing_key().clone());
            let original = part.clone();
            match tokio::task::spawn_blocking(move || adversary.corrupt_part(&original)).await {
                Ok(Ok(corrupted)) => corrupted,
                _ => part,
            }
        }
        _ => part,
    };
    // The part's time limit counts from now, its wait for a slot included: a part that only
    // gets out after its round is over is of no use to the owner.
    let deadline = tokio::time::Instant::now() + part.limit;
    let send = async {
        let _permit = sends
            .acquire_owned()
            .await
            .map_err(|_| TransferError::Deadline(part.limit))?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        ctx.net
            .send_with_retries(
                part.peer,
                PayloadKind::Part,
                &part.header,
                &part.payload,
                Some(part.digest),
                left,
            )
            .await
    };
    let contribution = part.phase == PartPhase::Contribution;
    let round_over = async {
        let over = rounds.wait_for(|first| *first > part.round).await.is_ok();
        if !contribution || !over {
            std::future::pending::<()>().await;
        }
    };
    let sent = tokio::select! {
        _ = ctx.cancel.cancelled() => return,
        () = round_over => {
            tracing::debug!(peer = %part.peer, round = part.round, "butterfly contribution dropped: its round is over");
            return;
        }
        sent = tokio::time::timeout_at(deadline, send) => {
            sent.unwrap_or(Err(TransferError::Deadline(part.limit)))
        }
    };
    match sent {
        Ok(stats) => {
            ctx.traffic
                .bytes_sent
                .fetch_add(stats.bytes, Ordering::Relaxed);
        }
        Err(err) => {
            tracing::debug!(peer = %part.peer, err = %chain(&err), "butterfly part not delivered");
            ctx.traffic.send_failures.fetch_add(1, Ordering::Relaxed);
            let failed = WorkerInput::PartFailed {
                peer: part.peer,
                round: part.round,
                phase: part.phase,
            };
            let _ = ctx.deliver(failed).await;
        }
    }
}

/// Sends `outgoing` to each of `peers`, each send a tracked task; a send that fails returns
/// the engine's own `outgoing` (its model and mass) to the training thread.
async fn send_deltas(
    ctx: &Arc<Context>,
    tasks: &TaskTracker,
    sends: &Arc<Semaphore>,
    peers: Vec<libp2p::PeerId>,
    outgoing: Outgoing,
) {
    let Some(mut wires) = on_the_wire(ctx, &outgoing).await else {
        for _ in &peers {
            if !ctx.deliver(WorkerInput::SendFailed(outgoing.clone())).await {
                tracing::warn!("unsent delta's mass not returned: node stopping");
            }
        }
        return;
    };
    // The first is the delta proper; a red-team node may send extra copies after it.
    let wire = wires.remove(0);
    let extra = Arc::new(wires);
    for peer in peers {
        let (ctx, outgoing, wire, extra, sends) = (
            ctx.clone(),
            outgoing.clone(),
            wire.clone(),
            extra.clone(),
            sends.clone(),
        );
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
                        &wire.header,
                        &wire.payload,
                        wire.digest,
                    ) => sent,
                };
                match sent {
                    Ok(stats) => {
                        ctx.traffic
                            .bytes_sent
                            .fetch_add(stats.bytes, Ordering::Relaxed);
                        ctx.traffic.deltas_sent.fetch_add(1, Ordering::Relaxed);
                        for copy in extra.iter() {
                            let _ = ctx.net.send_hashed_payload(peer, PayloadKind::Delta, &copy.header, &copy.payload, copy.digest).await;
                        }
                    }
                    Err(err) => {
                        tracing::debug!(%peer, err = %chain(&err), "delta not delivered; mass returned");
                        ctx.traffic.send_failures.fetch_add(1, Ordering::Relaxed);
                        if !ctx.deliver(WorkerInput::SendFailed(outgoing)).await {
                            tracing::warn!(%peer, "undelivered delta's mass not returned: node stopping");
                        }
                    }
                }
            });
    }
}

/// What goes on the wire for `outgoing`: itself, or on a red-team node its corrupted version
/// and any extra copies (made off the runtime); None when it could not be made.
async fn on_the_wire(ctx: &Context, outgoing: &Outgoing) -> Option<Vec<Outgoing>> {
    let Some(tamper) = ctx.config.tamper else {
        return Some(vec![outgoing.clone()]);
    };
    let adversary = Adversary::new(tamper, ctx.identity.signing_key().clone());
    let original = outgoing.clone();
    match tokio::task::spawn_blocking(move || adversary.corrupt(&original)).await {
        Ok(Ok(wires)) if !wires.is_empty() => Some(wires),
        Ok(Ok(_)) => None,
        Ok(Err(err)) => {
            tracing::warn!(err = %chain(&err), "delta not corrupted; not sent");
            None
        }
        Err(err) => {
            tracing::warn!(%err, "corrupting a delta failed; not sent");
            None
        }
    }
}
