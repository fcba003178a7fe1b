//! The node's composed `NetworkBehaviour` and the swarm builder (transports and tuning).
//!
//! TCP (Noise + Yamux) and QUIC, a relay-client transport for circuits, and one behaviour per
//! concern: connection limits (in total, per peer, inbound per address), identify, ping, Kademlia (`/murmur/kad/1.0.0`), optional mDNS,
//! gossipsub, relay client, DCUtR, AutoNAT v2 client, and `libp2p-stream` for bulk transfers.

use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, Swarm, SwarmBuilder, autonat, connection_limits, dcutr, gossipsub, identify,
    identity::Keypair, kad, mdns, noise, ping, relay, tcp, yamux,
};

use super::config::{NetConfig, NetLimits, TransportTuning};
use super::error::{BoxError, NetError};
use super::gossip;
use super::ip_limits::IpLimits;

/// Kademlia protocol name (Murmur's own DHT, not the IPFS one).
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/murmur/kad/1.0.0");
/// Identify `protocol_version` string advertised by Murmur nodes.
pub const IDENTIFY_VERSION: &str = "/murmur/1.0.0";

/// Everything a training node speaks.
#[derive(NetworkBehaviour)]
pub(crate) struct NodeBehaviour {
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) per_address: IpLimits,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) kad: kad::Behaviour<kad::store::MemoryStore>,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    pub(crate) gossipsub: gossipsub::Behaviour,
    pub(crate) relay_client: relay::client::Behaviour,
    pub(crate) dcutr: dcutr::Behaviour,
    pub(crate) autonat: autonat::v2::client::Behaviour,
    pub(crate) stream: libp2p_stream::Behaviour,
}

/// Connection limits from the configured bounds.
pub(crate) fn connection_limits(limits: &NetLimits) -> connection_limits::Behaviour {
    connection_limits::Behaviour::new(
        connection_limits::ConnectionLimits::default()
            .with_max_established(Some(limits.max_connections))
            .with_max_established_per_peer(Some(limits.max_connections_per_peer))
            .with_max_pending_incoming(Some(limits.max_pending_incoming)),
    )
}

/// Identify with Murmur's version string and the standard `/ipfs/id/1.0.0` protocol.
pub(crate) fn identify(keypair: &Keypair) -> identify::Behaviour {
    identify::Behaviour::new(identify::Config::new(
        IDENTIFY_VERSION.to_owned(),
        keypair.public(),
    ))
}

/// Kademlia on `/murmur/kad/1.0.0`.
pub(crate) fn kademlia(keypair: &Keypair) -> kad::Behaviour<kad::store::MemoryStore> {
    let peer_id = keypair.public().to_peer_id();
    let config = kad::Config::new(KAD_PROTOCOL);
    kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), config)
}

/// Applies [`TransportTuning`] to a QUIC config.
pub(crate) fn tune_quic(
    mut quic: libp2p::quic::Config,
    tuning: &TransportTuning,
) -> libp2p::quic::Config {
    quic.max_stream_data = tuning.quic_stream_window;
    quic.max_connection_data = tuning.quic_connection_window;
    quic.max_idle_timeout = tuning.quic_idle_timeout_ms;
    quic.mtu_upper_bound(tuning.quic_mtu_upper_bound)
}

/// Builds the node's swarm (not yet listening).
pub(crate) fn build_swarm(
    keypair: Keypair,
    config: &NetConfig,
) -> Result<Swarm<NodeBehaviour>, NetError> {
    let topic = gossip::announcement_topic(&config.run);
    let tuning = config.tuning.clone();
    let swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| NetError::transport("tcp", e))?
        .with_quic_config(|quic| tune_quic(quic, &tuning))
        .with_dns()
        .map_err(|e| NetError::transport("dns", e))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| NetError::transport("relay client", e))?
        .with_behaviour(|key, relay_client| {
            let peer_id = key.public().to_peer_id();
            let mdns = if config.mdns {
                Some(mdns::tokio::Behaviour::new(
                    mdns::Config::default(),
                    peer_id,
                )?)
            } else {
                None
            };
            let gossipsub = gossip::behaviour(key, &config.limits, &topic)?;
            Ok::<_, BoxError>(NodeBehaviour {
                limits: connection_limits(&config.limits),
                per_address: IpLimits::new(config.limits.max_inbound_per_address),
                identify: identify(key),
                ping: ping::Behaviour::new(ping::Config::new()),
                kad: kademlia(key),
                mdns: Toggle::from(mdns),
                gossipsub,
                relay_client,
                dcutr: dcutr::Behaviour::new(peer_id),
                autonat: autonat::v2::client::Behaviour::default(),
                stream: libp2p_stream::Behaviour::new(),
            })
        })
        .map_err(|e| NetError::transport("behaviour", e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_connection_timeout))
        .build();
    Ok(swarm)
}
