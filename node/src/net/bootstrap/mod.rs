//! The bootstrap node: a training-free Kademlia server, relay, AutoNAT v2 server, identify
//! and ping. Used by the `murmur-bootstrap` binary and started in-process by tests.
//!
//! Relay limits default to coordination-sized circuits (announcements, hole punching), not
//! bulk data: bulk transfers go direct after DCUtR or fail over to another peer.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Swarm, SwarmBuilder, autonat, connection_limits, identify,
    identity::Keypair, kad, noise, ping, relay, tcp, yamux,
};
use tokio_util::sync::CancellationToken;

mod config;
pub use config::{BootstrapConfig, RelayLimits};

use super::behaviour::{
    KAD_PROTOCOL, connection_limits as limits_behaviour, identify as identify_behaviour, kademlia,
};

use super::error::NetError;
use super::ip_limits::IpLimits;
use super::start::listen_and_advertise;

/// The bootstrap node's behaviour.
#[derive(NetworkBehaviour)]
pub(crate) struct BootstrapBehaviour {
    limits: connection_limits::Behaviour,
    per_address: IpLimits,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    relay: relay::Behaviour,
    autonat: autonat::v2::server::Behaviour,
}

/// A bootstrap node that is listening and ready to run.
pub struct Bootstrap {
    swarm: Swarm<BootstrapBehaviour>,
}

impl std::fmt::Debug for Bootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bootstrap")
            .field("peer_id", self.swarm.local_peer_id())
            .finish()
    }
}

/// A bootstrap node running on its own task.
#[derive(Debug)]
pub struct BootstrapHandle {
    /// Its peer id.
    pub peer_id: PeerId,
    /// Its full addresses (with `/p2p/<id>`).
    pub addrs: Vec<Multiaddr>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl BootstrapHandle {
    /// Stops the node and waits for its task.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

impl Bootstrap {
    /// Builds the node and starts listening; returns once the listeners are up.
    pub async fn new(keypair: Keypair, config: &BootstrapConfig) -> Result<Self, NetError> {
        let peer_id = keypair.public().to_peer_id();
        let relay_config = relay::Config {
            max_reservations: config.relay.max_reservations,
            max_reservations_per_peer: config.relay.max_reservations_per_peer,
            reservation_duration: config.relay.reservation_duration,
            max_circuits: config.relay.max_circuits,
            max_circuits_per_peer: config.relay.max_circuits_per_peer,
            max_circuit_duration: config.relay.max_circuit_duration,
            max_circuit_bytes: config.relay.max_circuit_bytes,
            ..relay::Config::default()
        };
        let mut swarm = SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| NetError::transport("tcp", e))?
            .with_quic()
            .with_dns()
            .map_err(|e| NetError::transport("dns", e))?
            .with_behaviour(|key| BootstrapBehaviour {
                limits: limits_behaviour(&config.limits),
                per_address: IpLimits::new(config.limits.max_inbound_per_address),
                identify: identify_behaviour(key),
                ping: ping::Behaviour::new(ping::Config::new()),
                kad: kademlia(key),
                relay: relay::Behaviour::new(peer_id, relay_config),
                autonat: autonat::v2::server::Behaviour::default(),
            })
            .unwrap_or_else(|never| match never {})
            .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_connection_timeout))
            .build();
        swarm.behaviour_mut().kad.set_mode(Some(kad::Mode::Server));
        listen_and_advertise(&mut swarm, &config.listen_addrs, &config.external_addrs)?;
        let mut node = Self { swarm };
        node.wait_listening(config.listen_addrs.len(), config.advertise_listen_addrs)
            .await;
        Ok(node)
    }

    async fn wait_listening(&mut self, listeners: usize, advertise: bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut seen = 0;
        while seen < listeners {
            match tokio::time::timeout_at(deadline, self.swarm.next()).await {
                Ok(Some(SwarmEvent::NewListenAddr { address, .. })) => {
                    seen += 1;
                    if advertise {
                        self.swarm.add_external_address(address);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }

    /// The node's peer id.
    pub fn peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// Full listen and external addresses, each ending in `/p2p/<id>`.
    pub fn addrs(&self) -> Vec<Multiaddr> {
        let peer = self.peer_id();
        let mut addrs: Vec<Multiaddr> = self.swarm.listeners().cloned().collect();
        addrs.extend(self.swarm.external_addresses().cloned());
        addrs.dedup();
        addrs
            .into_iter()
            .map(|a| a.with(Protocol::P2p(peer)))
            .collect()
    }

    /// Runs until `shutdown` completes.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                event = self.swarm.next() => match event {
                    Some(event) => self.handle_event(event),
                    None => break,
                },
            }
        }
    }

    /// Runs on its own task; stop it with [`BootstrapHandle::shutdown`].
    pub fn spawn(self) -> BootstrapHandle {
        let cancel = CancellationToken::new();
        let (peer_id, addrs) = (self.peer_id(), self.addrs());
        let stop = cancel.clone();
        let task = tokio::spawn(async move { self.run(stop.cancelled_owned()).await });
        BootstrapHandle {
            peer_id,
            addrs,
            cancel,
            task,
        }
    }

    fn handle_event(&mut self, event: SwarmEvent<BootstrapBehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => tracing::info!(%address, "listening"),
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                tracing::debug!(%peer_id, addr = %endpoint.get_remote_address(), "connected");
            }
            SwarmEvent::Behaviour(BootstrapBehaviourEvent::Identify(
                identify::Event::Received { peer_id, info, .. },
            )) if info.protocols.contains(&KAD_PROTOCOL) => {
                for addr in info.listen_addrs.into_iter().take(16) {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(BootstrapBehaviourEvent::Relay(event)) => {
                tracing::debug!(?event, "relay");
            }
            _ => {}
        }
    }
}
