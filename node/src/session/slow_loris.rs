//! Red team only ([`Tamper::SlowLoris`](crate::adversary::Tamper::SlowLoris)): beside its
//! honest training, the node keeps as many delta streams open at each peer of its run as it
//! can, writing one byte to each every couple of seconds — far below the receivers' minimum
//! progress — and opens new ones as the receivers drop them. It is what a receiver's intake
//! limits are for: one peer's share of the streams read at once, a minimum of progress per
//! stall timeout, and stalls scored until the peer is banned.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::AsyncWriteExt;
use libp2p::PeerId;

use super::Context;
use crate::net::PayloadKind;

/// Streams it tries to hold open at each peer.
const STREAMS_PER_PEER: usize = 8;
/// How often it writes one byte to each stream (and looks for peers).
const TRICKLE_EVERY: Duration = Duration::from_secs(2);
/// Longest it waits to open one stream, or to write its byte.
const STEP_LIMIT: Duration = Duration::from_secs(5);

/// Holds and trickles streams until the session stops.
pub(crate) async fn run(ctx: Arc<Context>) {
    let mut held: HashMap<PeerId, Vec<libp2p::Stream>> = HashMap::new();
    let mut tick = tokio::time::interval(TRICKLE_EVERY);
    let mut changes = ctx.net.peer_changes();
    tracing::warn!("red team: holding delta streams open at every peer (slow loris)");
    loop {
        // A new peer is besieged at once; every stream gets its byte on the tick.
        let trickle = tokio::select! {
            biased;
            () = ctx.cancel.cancelled() => return,
            _ = tick.tick() => true,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                false
            }
        };
        let Ok(peers) = ctx.net.peers().await else {
            return;
        };
        let run = ctx.config.averager.run;
        let targets = peers
            .iter()
            .filter(|p| p.connected && p.announcement.as_ref().is_some_and(|a| a.run == run));
        for peer in targets {
            let streams = held.entry(peer.peer_id).or_default();
            let mut kept = Vec::with_capacity(streams.len());
            for mut stream in streams.drain(..) {
                if !trickle {
                    kept.push(stream);
                    continue;
                }
                let wrote = tokio::time::timeout(STEP_LIMIT, async {
                    stream.write_all(&[0]).await?;
                    stream.flush().await
                })
                .await;
                if matches!(wrote, Ok(Ok(()))) {
                    kept.push(stream);
                }
            }
            *streams = kept;
            while streams.len() < STREAMS_PER_PEER {
                let protocol = PayloadKind::Delta.protocol();
                match ctx
                    .net
                    .open_raw_stream(peer.peer_id, protocol, STEP_LIMIT)
                    .await
                {
                    Ok(stream) => streams.push(stream),
                    Err(_) => break,
                }
            }
        }
    }
}
