//! The swarm's owner task: the only code that touches the `Swarm`.
//!
//! It selects over the bounded command channel, swarm events and a few timers; each arm is
//! one call to a `handle_*` method. Nothing here awaits a peer: transfers run in their own
//! tasks, peer-book writes run on the blocking pool, and outgoing events use `try_send`.

use std::time::Duration;

use libp2p::gossipsub::IdentTopic;
use libp2p::{Multiaddr, PeerId, Swarm};
use murmur_protocol::RunId;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior, interval, interval_at};

use super::behaviour::NodeBehaviour;
use super::error::NetError;
use super::events::NetEvent;
use super::gossip::ReceivedAnnouncement;
use super::peers::{PeerInfo, PeerTable};
use crate::store::PeerBook;

/// Longest a shutdown waits for the connections to close gracefully.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Requests from `Network` handles to the owner task.
#[derive(Debug)]
pub(crate) enum Command {
    Dial(Multiaddr, oneshot::Sender<Result<(), NetError>>),
    Publish(Vec<u8>, oneshot::Sender<Result<(), NetError>>),
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    ExternalAddrs(oneshot::Sender<Vec<Multiaddr>>),
    RecordThroughput {
        peer: PeerId,
        bytes_per_sec: f64,
    },
    Penalize {
        peer: PeerId,
        points: u32,
        reason: String,
    },
    Shutdown(oneshot::Sender<()>),
}

/// Static settings of the loop.
#[derive(Debug)]
pub(crate) struct LoopSettings {
    pub(crate) run: RunId,
    pub(crate) topic: IdentTopic,
    pub(crate) max_gossip_bytes: usize,
    pub(crate) ban_score: u32,
    pub(crate) target_connections: usize,
    pub(crate) kad_walk_interval: Option<Duration>,
    pub(crate) flush_interval: Duration,
}

/// The owner task's state.
pub(crate) struct EventLoop {
    pub(crate) swarm: Swarm<NodeBehaviour>,
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) events: mpsc::Sender<NetEvent>,
    pub(crate) announcements: mpsc::Sender<ReceivedAnnouncement>,
    /// Tells [`Network::peer_changes`](super::Network::peer_changes) watchers the peer book
    /// changed.
    pub(crate) peer_changes: tokio::sync::watch::Sender<u64>,
    pub(crate) peers: PeerTable,
    pub(crate) book: Option<PeerBook>,
    pub(crate) settings: LoopSettings,
    pub(crate) cancel: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("peer", self.swarm.local_peer_id())
            .finish()
    }
}

impl EventLoop {
    /// Drives the swarm until `listeners` listen addresses are up (or `timeout` passes).
    pub(crate) async fn wait_listening(&mut self, listeners: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.swarm.listeners().count() < listeners {
            match tokio::time::timeout_at(deadline, futures::StreamExt::next(&mut self.swarm)).await
            {
                Ok(Some(event)) => self.handle_swarm_event(event),
                Ok(None) | Err(_) => break,
            }
        }
    }

    /// Runs until shutdown or until every `Network` handle is dropped.
    pub(crate) async fn run(mut self) {
        let far = Duration::from_secs(24 * 3600);
        let walk_every = self.settings.kad_walk_interval.unwrap_or(far);
        let mut walk = interval_at(Instant::now() + walk_every, walk_every);
        walk.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut flush = interval(self.settings.flush_interval);
        flush.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let reply = loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown(reply)) => break Some(reply),
                    Some(command) => self.handle_command(command),
                    None => break None,
                },
                event = futures::StreamExt::next(&mut self.swarm) => match event {
                    Some(event) => self.handle_swarm_event(event),
                    None => break None,
                },
                _ = walk.tick(), if self.settings.kad_walk_interval.is_some() => self.random_walk(),
                _ = flush.tick() => {
                    self.flush_peer_book();
                }
            }
        };
        if reply.is_some() {
            self.close_connections().await;
        }
        let writes = self.flush_peer_book();
        if let Some(writes) = writes {
            let _ = writes.await;
        }
        // Stop transfer tasks and accept loops even when the handles were simply dropped.
        self.cancel.cancel();
        tracing::debug!(peer = %self.swarm.local_peer_id(), "network stopped");
        if let Some(reply) = reply {
            let _ = reply.send(());
        }
    }

    /// Closes every connection and drives the swarm until they are closed (at most
    /// [`CLOSE_GRACE`]): a muxer flushes what its streams wrote on a graceful close (the last
    /// acknowledgements among them), where dropping the swarm would discard it.
    async fn close_connections(&mut self) {
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in peers {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        let deadline = tokio::time::sleep(CLOSE_GRACE);
        tokio::pin!(deadline);
        while self.swarm.connected_peers().next().is_some() {
            tokio::select! {
                () = &mut deadline => {
                    tracing::debug!("connections still open at shutdown; dropped");
                    break;
                }
                event = futures::StreamExt::next(&mut self.swarm) => match event {
                    Some(event) => self.handle_swarm_event(event),
                    None => break,
                },
            }
        }
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Dial(addr, reply) => {
                let result = self.swarm.dial(addr).map_err(NetError::Dial);
                let _ = reply.send(result);
            }
            Command::Publish(bytes, reply) => {
                let topic = self.settings.topic.clone();
                let result = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(topic, bytes)
                    .map(|_| ())
                    .map_err(NetError::Publish);
                let _ = reply.send(result);
            }
            Command::Peers(reply) => {
                let _ = reply.send(self.peers.infos());
            }
            Command::ListenAddrs(reply) => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::ExternalAddrs(reply) => {
                let _ = reply.send(self.swarm.external_addresses().cloned().collect());
            }
            Command::RecordThroughput {
                peer,
                bytes_per_sec,
            } => {
                self.peers.record_throughput(peer, bytes_per_sec);
            }
            Command::Penalize {
                peer,
                points,
                reason,
            } => self.penalize(peer, points, reason),
            Command::Shutdown(_) => {}
        }
    }

    /// Adds misbehaviour points; disconnects the peer once it reaches the ban score.
    pub(crate) fn penalize(&mut self, peer: PeerId, points: u32, reason: String) {
        let score = self.peers.penalize(peer, points);
        tracing::info!(%peer, score, %reason, "peer misbehaved");
        if score >= self.settings.ban_score {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        self.emit(NetEvent::Misbehaved {
            peer,
            score,
            reason,
        });
    }

    pub(crate) fn is_banned(&self, peer: &PeerId) -> bool {
        self.peers.misbehaviour(peer) >= self.settings.ban_score
    }

    pub(crate) fn emit(&self, event: NetEvent) {
        if let Err(e) = self.events.try_send(event) {
            tracing::debug!("network event dropped: {e}");
        }
    }

    fn random_walk(&mut self) {
        self.swarm
            .behaviour_mut()
            .kad
            .get_closest_peers(PeerId::random());
    }

    /// Writes dirty peer records on the blocking pool; returns the write task, if any.
    fn flush_peer_book(&mut self) -> Option<tokio::task::JoinHandle<()>> {
        let book = self.book.clone()?;
        let dirty = self.peers.take_dirty();
        let evicted = self.peers.take_evicted();
        if dirty.is_empty() && evicted.is_empty() {
            return None;
        }
        Some(tokio::task::spawn_blocking(move || {
            // Removals first: a peer evicted and seen again since is written back.
            for peer in evicted {
                if let Err(e) = book.remove(&peer) {
                    tracing::warn!(%peer, "peer book removal failed: {e}");
                }
            }
            for (peer, record) in dirty {
                if let Err(e) = book.put(&peer, &record) {
                    tracing::warn!(%peer, "peer book write failed: {e}");
                }
            }
        }))
    }

    /// Dials a discovered peer if we are below the connection target.
    pub(crate) fn maybe_dial(&mut self, peer: PeerId) {
        if self.peers.connected_count() >= self.settings.target_connections
            || self.peers.is_connected(&peer)
            || self.is_banned(&peer)
            || peer == *self.swarm.local_peer_id()
        {
            return;
        }
        if let Err(e) = self.swarm.dial(peer) {
            tracing::trace!(%peer, "dial of discovered peer failed: {e}");
        }
    }
}
