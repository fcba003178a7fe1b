//! Starting the network: build the swarm, listen, seed peers, spawn the owner task.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::kad;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, Swarm, gossipsub};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::behaviour::{NodeBehaviour, build_swarm};
use super::config::NetConfig;
use super::error::NetError;
use super::event_loop::{EventLoop, LoopSettings};
use super::events::NetEvent;
use super::gossip::{ReceivedAnnouncement, announcement_topic};
use super::handle::Network;
use super::peers::PeerTable;
use super::shared::Shared;
use crate::store::{PeerBook, Store};

/// Most connections the node opens on its own to discovered peers.
const TARGET_CONNECTIONS: usize = 48;

/// The receiving ends of the network's event channels.
#[derive(Debug)]
pub struct NetEvents {
    /// Connection, discovery and failure events.
    pub events: mpsc::Receiver<NetEvent>,
    /// Validated announcements from the run's topic.
    pub announcements: mpsc::Receiver<ReceivedAnnouncement>,
}

/// The peer id in a `/p2p/<id>` suffix, if any.
pub fn peer_id_of_addr(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(peer) => Some(peer),
        _ => None,
    })
}

impl Network {
    /// Starts the network with `keypair` as identity. With a `store`, known peers are read
    /// from (and later written to) its peer book and redialed. Returns once the listeners
    /// are up.
    pub async fn start(
        keypair: Keypair,
        config: NetConfig,
        store: Option<&Store>,
    ) -> Result<(Network, NetEvents), NetError> {
        let local_peer_id = keypair.public().to_peer_id();
        let (mut swarm, topic) = open_swarm(keypair, &config)?;
        let book = store.map(Store::peer_book).transpose()?;
        let known = match &book {
            Some(book) => book.all()?.records,
            None => Vec::new(),
        };
        if let Some(book) = &book {
            redial_known(&mut swarm, book, &config)?;
        }
        dial_bootstrap_and_relays(&mut swarm, &config)?;

        let control = swarm.behaviour().stream.new_control();
        let (command_tx, command_rx) = mpsc::channel(config.limits.command_queue);
        let (event_tx, event_rx) = mpsc::channel(config.limits.event_queue);
        let (announce_tx, announce_rx) = mpsc::channel(config.limits.event_queue);
        let cancel = CancellationToken::new();
        let (peer_changes, peer_changes_rx) = tokio::sync::watch::channel(0u64);
        let shared = Arc::new(Shared {
            local_peer_id,
            limits: config.limits.clone(),
            cancel: cancel.clone(),
            tasks: TaskTracker::new(),
            inbound: TaskTracker::new(),
            commands: command_tx.downgrade(),
            events: event_tx.clone(),
            control: Mutex::new(control),
            active: AtomicUsize::new(0),
            peer_changes: peer_changes_rx,
        });
        let mut event_loop = EventLoop {
            swarm,
            commands: command_rx,
            events: event_tx,
            announcements: announce_tx,
            peer_changes,
            peers: PeerTable::from_records(known),
            book,
            cancel,
            settings: LoopSettings {
                run: config.run,
                topic,
                max_gossip_bytes: config.limits.max_gossip_bytes,
                ban_score: config.limits.ban_score,
                target_connections: TARGET_CONNECTIONS,
                kad_walk_interval: config.kad_walk_interval,
                flush_interval: config.peer_book_flush_interval,
            },
        };
        let listeners = config.listen_addrs.len();
        event_loop
            .wait_listening(listeners, Duration::from_secs(5))
            .await;
        shared.tasks.spawn(event_loop.run());
        let network = Network {
            shared,
            commands: command_tx,
        };
        Ok((
            network,
            NetEvents {
                events: event_rx,
                announcements: announce_rx,
            },
        ))
    }
}

/// Builds the swarm, subscribes it to the run's announcement topic, starts its listeners and
/// sets the Kademlia mode; returns the swarm and the topic.
fn open_swarm(
    keypair: Keypair,
    config: &NetConfig,
) -> Result<(Swarm<NodeBehaviour>, gossipsub::IdentTopic), NetError> {
    let mut swarm = build_swarm(keypair, config)?;
    let topic = announcement_topic(&config.run);
    swarm
        .behaviour_mut()
        .gossipsub
        .subscribe(&topic)
        .map_err(|e| NetError::transport("announcement topic subscription", e))?;
    listen_and_advertise(&mut swarm, &config.listen_addrs, &config.external_addrs)?;
    if config.kad_server {
        swarm.behaviour_mut().kad.set_mode(Some(kad::Mode::Server));
    }
    Ok((swarm, topic))
}

/// Redials the peer book's dial candidates (their addresses also seed Kademlia); a failed
/// redial is only logged.
fn redial_known(
    swarm: &mut Swarm<NodeBehaviour>,
    book: &PeerBook,
    config: &NetConfig,
) -> Result<(), NetError> {
    let redial = book.dial_candidates(config.redial_known_peers, config.limits.ban_score)?;
    for (peer, addrs) in redial {
        for addr in &addrs {
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
        }
        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
            .addresses(addrs)
            .build();
        if let Err(e) = swarm.dial(opts) {
            tracing::debug!(%peer, "redial of known peer failed: {e}");
        }
    }
    Ok(())
}

/// Dials the bootstrap addresses (seeding Kademlia and starting its bootstrap) and listens
/// through every relay.
fn dial_bootstrap_and_relays(
    swarm: &mut Swarm<NodeBehaviour>,
    config: &NetConfig,
) -> Result<(), NetError> {
    for addr in &config.bootstrap {
        if let Some(peer) = peer_id_of_addr(addr) {
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
        }
        swarm.dial(addr.clone()).map_err(NetError::Dial)?;
    }
    if !config.bootstrap.is_empty() {
        let _ = swarm.behaviour_mut().kad.bootstrap();
    }
    for relay in &config.relays {
        swarm
            .listen_on(relay.clone().with(Protocol::P2pCircuit))
            .map_err(|source| NetError::Listen {
                addr: relay.to_string(),
                source,
            })?;
    }
    Ok(())
}

/// Starts listening on every address in `listen` and adds `external` as confirmed external
/// addresses (shared by training nodes and bootstrap nodes).
pub(crate) fn listen_and_advertise<B: libp2p::swarm::NetworkBehaviour>(
    swarm: &mut libp2p::Swarm<B>,
    listen: &[Multiaddr],
    external: &[Multiaddr],
) -> Result<(), NetError> {
    for addr in listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|source| NetError::Listen {
                addr: addr.to_string(),
                source,
            })?;
    }
    for addr in external {
        swarm.add_external_address(addr.clone());
    }
    Ok(())
}
