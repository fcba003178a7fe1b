//! Presence: signed announcements of this node (run, model, round, capacity, addresses)
//! and the live peer set the training thread picks recipients from.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use libp2p::PeerId;
use murmur_protocol::message::MAX_LISTEN_ADDRS;
use murmur_protocol::{Announcement, Capacity, Message, SignedEnvelope};

use super::Context;
use crate::net::{NetEvents, PeerInfo, link_stats};

/// How often the live peer set is refreshed.
const REFRESH: Duration = Duration::from_millis(300);

/// Announces periodically (more often while alone), refreshes the live peer set, and
/// drains network events into the log.
pub(crate) async fn run(ctx: Arc<Context>, mut events: NetEvents) {
    let mut refresh = tokio::time::interval(REFRESH);
    let mut next_announce = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            _ = refresh.tick() => {
                let Ok(peers) = ctx.net.peers().await else { return };
                let live = live_peers(&ctx, &peers);
                let alone = live.is_empty();
                ctx.live_peers.replace(live);
                if tokio::time::Instant::now() >= next_announce {
                    if let Err(err) = announce(&ctx, &peers).await {
                        tracing::debug!(%err, "announcement not published");
                    }
                    // While no training peer is known, announce quickly so newcomers are
                    // found within a second.
                    let period = if alone { Duration::from_millis(500) } else { ctx.config.announce_every };
                    next_announce = tokio::time::Instant::now() + period;
                }
            }
            Some(event) = events.events.recv() => tracing::debug!(?event, "network"),
            Some(a) = events.announcements.recv() => {
                tracing::trace!(from = %a.from, round = a.announcement.round, "announcement");
            }
        }
    }
}

/// The live peer set: written by the presence task, read by the training thread (recipients,
/// round completeness) and the status.
#[derive(Debug, Default)]
pub(crate) struct LivePeers(Mutex<Vec<PeerId>>);

impl LivePeers {
    fn lock(&self) -> MutexGuard<'_, Vec<PeerId>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many peers are live.
    pub(crate) fn count(&self) -> usize {
        self.lock().len()
    }

    /// The live peers now.
    pub(crate) fn snapshot(&self) -> Vec<PeerId> {
        self.lock().clone()
    }

    fn replace(&self, live: Vec<PeerId>) {
        *self.lock() = live;
    }
}

/// Connected peers whose latest announcement is for this run and model and who are admitted,
/// sorted so that every node's choice depends only on its seed.
pub(crate) fn live_peers(ctx: &Context, peers: &[PeerInfo]) -> Vec<PeerId> {
    let averager = &ctx.config.averager;
    let mut live: Vec<PeerId> = peers
        .iter()
        .filter(|p| p.connected)
        .filter(|p| {
            p.announcement.as_ref().is_some_and(|a| {
                a.run == averager.run
                    && a.model == averager.model
                    && averager.admission.admits(&a.peer)
            })
        })
        .map(|p| p.peer_id)
        .collect();
    live.sort();
    live
}

async fn announce(ctx: &Context, peers: &[PeerInfo]) -> Result<(), Box<dyn std::error::Error>> {
    let status = ctx.status.borrow().clone();
    let listen_addrs = ctx
        .net
        .listen_addrs()
        .await?
        .into_iter()
        .chain(ctx.net.external_addrs().await?)
        .take(MAX_LISTEN_ADDRS)
        .map(|a| a.to_string())
        .collect();
    let links = link_stats(peers);
    let message = Message::Announcement(Announcement {
        peer: ctx.identity.peer_key(),
        run: ctx.config.averager.run,
        model: ctx.config.averager.model,
        capacity: Capacity {
            samples_per_sec: status.worker.samples_per_sec as f32,
            flops_per_sec: 0.0,
            memory_bytes: 0,
            device: ctx.config.device.chars().take(100).collect(),
            links,
        },
        round: status.worker.round,
        listen_addrs,
        timestamp_ms: crate::net::now_ms(),
    });
    let envelope = SignedEnvelope::sign(ctx.identity.signing_key(), &message)?;
    ctx.net.publish_announcement(&envelope).await?;
    Ok(())
}
