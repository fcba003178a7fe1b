//! Presence: signed announcements of this node (run, model, round, capacity, addresses)
//! and the live peer set the training thread picks recipients from.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use murmur_protocol::message::MAX_LISTEN_ADDRS;
use murmur_protocol::{Announcement, Capacity, Message, SignedEnvelope};

use super::Context;
use crate::errors::chain;
use crate::net::{NetEvents, PeerInfo, link_stats};

/// How often the live peer set is refreshed.
const REFRESH: Duration = Duration::from_millis(100);
/// How long the live peer set must stay the same (more than one refresh) before it counts as
/// settled: butterfly rounds start on a settled group, so that peers found one after the
/// other at start-up are not split into rounds of partial groups that disagree.
const SETTLE: Duration = Duration::from_millis(150);

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
                let round = announced_round(&live, &peers);
                let complete = view_complete(&ctx, &live, &peers);
                ctx.live_peers.replace(live, round, complete);
                if tokio::time::Instant::now() >= next_announce {
                    if let Err(err) = announce(&ctx, &peers).await {
                        tracing::debug!(err = %chain(err.as_ref()), "announcement not published");
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
pub(crate) struct LivePeers(Mutex<LiveSet>);

#[derive(Debug, Default)]
struct LiveSet {
    peers: Vec<PeerId>,
    /// When `peers` last changed (never: `None`).
    changed: Option<Instant>,
    /// The highest averaging round the live peers announced.
    round: u64,
    /// Whether a live peer announced a link to a training peer not live here (yet).
    incomplete: bool,
}

impl LivePeers {
    fn lock(&self) -> MutexGuard<'_, LiveSet> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many peers are live.
    pub(crate) fn count(&self) -> usize {
        self.lock().peers.len()
    }

    /// The live peers now.
    pub(crate) fn snapshot(&self) -> Vec<PeerId> {
        self.lock().peers.clone()
    }

    /// Whether the set is complete (no live peer links to a training peer missing from it)
    /// and stayed the same for [`SETTLE`] (or never changed).
    pub(crate) fn settled(&self) -> bool {
        let set = self.lock();
        !set.incomplete && set.changed.is_none_or(|at| at.elapsed() >= SETTLE)
    }

    /// The highest averaging round the live peers announced (0 when none did).
    pub(crate) fn announced_round(&self) -> u64 {
        self.lock().round
    }

    pub(crate) fn replace(&self, live: Vec<PeerId>, round: u64, complete: bool) {
        let mut set = self.lock();
        set.round = round;
        set.incomplete = !complete;
        if set.peers != live {
            set.peers = live;
            set.changed = Some(Instant::now());
        }
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

/// Whether this node's `live` set holds every training peer its live peers link to (their
/// announced links: their connected peers that announced). A peer they link to that this node
/// does not know, or knows only as connected without a matching announcement yet, is one it
/// has not found yet: a group formed now would be split from theirs. Peers known to be of
/// another model or not admitted are not waited for.
pub(crate) fn view_complete(ctx: &Context, live: &[PeerId], peers: &[PeerInfo]) -> bool {
    let me = ctx.identity.peer_key();
    let averager = &ctx.config.averager;
    let known_other = |key: &murmur_protocol::PeerKey| {
        peers.iter().any(|p| {
            p.announcement.as_ref().is_some_and(|a| {
                a.peer == *key && (a.model != averager.model || !averager.admission.admits(&a.peer))
            })
        })
    };
    let live_keys: Vec<murmur_protocol::PeerKey> = peers
        .iter()
        .filter(|p| live.contains(&p.peer_id))
        .filter_map(|p| p.announcement.as_ref().map(|a| a.peer))
        .collect();
    live_keys.iter().all(|key| {
        peers
            .iter()
            .filter_map(|p| p.announcement.as_ref())
            .filter(|a| a.peer == *key)
            .flat_map(|a| &a.capacity.links)
            .all(|link| {
                link.peer == me || live_keys.contains(&link.peer) || known_other(&link.peer)
            })
    })
}

/// The highest round announced by the `live` peers.
fn announced_round(live: &[PeerId], peers: &[PeerInfo]) -> u64 {
    peers
        .iter()
        .filter(|p| live.contains(&p.peer_id))
        .filter_map(|p| p.announcement.as_ref().map(|a| a.round))
        .max()
        .unwrap_or(0)
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
        round: match ctx.config.tamper {
            Some(tamper) => tamper.announced_round(status.worker.round),
            None => status.worker.round,
        },
        listen_addrs,
        timestamp_ms: crate::net::now_ms(),
    });
    let envelope = SignedEnvelope::sign(ctx.identity.signing_key(), &message)?;
    ctx.net.publish_announcement(&envelope).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_set_settles_once_complete_and_unchanged() {
        let live = LivePeers::default();
        assert!(live.settled(), "a set that never changed is settled");
        let (a, b) = (PeerId::random(), PeerId::random());
        live.replace(vec![a], 3, true);
        assert!(!live.settled(), "just changed");
        assert_eq!(live.announced_round(), 3);
        std::thread::sleep(SETTLE + Duration::from_millis(20));
        assert!(live.settled());
        // The same set again does not restart the clock; an incomplete view is not settled.
        live.replace(vec![a], 4, true);
        assert!(live.settled());
        live.replace(vec![a], 4, false);
        assert!(
            !live.settled(),
            "a peer's links name a training peer not found yet"
        );
        live.replace(vec![a, b], 4, true);
        assert!(!live.settled(), "a new peer restarts the clock");
        assert_eq!(live.snapshot(), vec![a, b]);
    }
}
