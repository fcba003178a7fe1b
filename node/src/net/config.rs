//! Network configuration: what to listen on, whom to contact, and every limit in one place.
//!
//! The CLI fills a [`NetConfig`]; tests and benches build one with [`NetConfig::loopback`].

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use libp2p::{Multiaddr, multiaddr::Protocol};
use murmur_protocol::RunId;

/// Bounds on connections, messages, transfers and queues.
#[derive(Clone, Debug)]
pub struct NetLimits {
    /// Most established connections in total.
    pub max_connections: u32,
    /// Most established connections per peer.
    pub max_connections_per_peer: u32,
    /// Most established inbound connections from one IPv4 address or IPv6 /64 (relayed ones
    /// not counted): one host cannot fill the connection table under many identities.
    pub max_inbound_per_address: u32,
    /// Most pending (handshaking) incoming connections.
    pub max_pending_incoming: u32,
    /// Largest gossipsub message (an encoded `SignedEnvelope`), bytes.
    pub max_gossip_bytes: usize,
    /// Largest transfer header (application header plus transfer preamble), bytes.
    pub max_header_bytes: usize,
    /// Largest payload accepted on a stream, bytes. Memory use is bounded by
    /// `max_payload_bytes * max_inbound_transfers`.
    pub max_payload_bytes: usize,
    /// Largest chunk a peer may send inside a payload, bytes.
    pub max_chunk_bytes: usize,
    /// Chunk size used when sending, bytes.
    pub chunk_bytes: usize,
    /// Concurrent inbound transfers per payload kind; more are refused.
    pub max_inbound_transfers: usize,
    /// Fixed part of a transfer's deadline.
    pub transfer_base_timeout: Duration,
    /// Slowest acceptable transfer rate (bytes/s); the deadline grows with size at this rate.
    pub min_transfer_rate: u64,
    /// A transfer that moves less than 16 KiB (either way) within this long fails with
    /// `TransferError::Stalled` (one byte now and then does not keep a stream alive).
    pub stall_timeout: Duration,
    /// Capacity of the command channel into the swarm task.
    pub command_queue: usize,
    /// Capacity of each event / incoming-payload channel out of the network.
    pub event_queue: usize,
    /// Misbehaviour score at which a peer is disconnected and not redialed.
    pub ban_score: u32,
}

impl Default for NetLimits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            max_connections_per_peer: 4,
            max_inbound_per_address: 64,
            max_pending_incoming: 64,
            max_gossip_bytes: 16 * 1024,
            max_header_bytes: 64 * 1024,
            max_payload_bytes: 1536 * 1024 * 1024,
            max_chunk_bytes: 4 * 1024 * 1024,
            chunk_bytes: 4 * 1024 * 1024,
            max_inbound_transfers: 4,
            transfer_base_timeout: Duration::from_secs(15),
            min_transfer_rate: 4 * 1024 * 1024,
            stall_timeout: Duration::from_secs(20),
            command_queue: 256,
            event_queue: 256,
            ban_score: 100,
        }
    }
}

impl NetLimits {
    /// Deadline for a transfer of `bytes` bytes.
    pub fn transfer_deadline(&self, bytes: usize) -> Duration {
        let rate = self.min_transfer_rate.max(1);
        self.transfer_base_timeout + Duration::from_secs_f64(bytes as f64 / rate as f64)
    }
}

/// Transport tuning (bulk-transfer performance).
#[derive(Clone, Debug)]
pub struct TransportTuning {
    /// QUIC per-stream flow-control window, bytes.
    pub quic_stream_window: u32,
    /// QUIC per-connection flow-control window, bytes.
    pub quic_connection_window: u32,
    /// Upper bound for QUIC path-MTU discovery (probed, so safe on real paths).
    pub quic_mtu_upper_bound: u16,
    /// QUIC idle timeout (detects vanished peers), milliseconds.
    pub quic_idle_timeout_ms: u32,
}

impl Default for TransportTuning {
    fn default() -> Self {
        Self {
            // Measured: 32/64 MB took 1 GB over QUIC from 0.14 to 0.21 GB/s (docs/network.md).
            // Worst-case buffering is the connection window per connection.
            quic_stream_window: 32_000_000,
            quic_connection_window: 64_000_000,
            quic_mtu_upper_bound: 1452,
            quic_idle_timeout_ms: 30_000,
        }
    }
}

/// Everything the network layer needs to start.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Addresses to listen on (TCP and/or QUIC).
    pub listen_addrs: Vec<Multiaddr>,
    /// Bootstrap nodes (`/…/p2p/<id>` multiaddrs), dialed and added to Kademlia at start.
    pub bootstrap: Vec<Multiaddr>,
    /// Addresses to advertise as confirmed external addresses (public IP, port forward).
    pub external_addrs: Vec<Multiaddr>,
    /// Relays (`/…/p2p/<relay id>`) to reserve a circuit on, for nodes behind NAT.
    pub relays: Vec<Multiaddr>,
    /// Force Kademlia server mode (otherwise it switches to server once an external address
    /// is confirmed). Useful on LANs and loopback, where AutoNAT cannot confirm anything.
    pub kad_server: bool,
    /// LAN discovery with mDNS.
    pub mdns: bool,
    /// The training run; names the announcement topic.
    pub run: RunId,
    /// How long an idle connection is kept open.
    pub idle_connection_timeout: Duration,
    /// Interval of Kademlia random walks (peer discovery), if any.
    pub kad_walk_interval: Option<Duration>,
    /// How often the live peer table is written to the peer book.
    pub peer_book_flush_interval: Duration,
    /// Known peers redialed from the peer book at start.
    pub redial_known_peers: usize,
    /// Limits.
    pub limits: NetLimits,
    /// Transport tuning.
    pub tuning: TransportTuning,
}

impl NetConfig {
    /// A node listening on all interfaces with TCP and QUIC on `port` (0 = any).
    pub fn new(run: RunId, port: u16) -> Self {
        Self::with_listen(
            run,
            vec![
                tcp_addr(Ipv4Addr::UNSPECIFIED, port),
                quic_addr(Ipv4Addr::UNSPECIFIED, port),
            ],
        )
    }

    /// A loopback-only node (tests, benches): TCP and QUIC on 127.0.0.1, ephemeral ports.
    /// Kademlia is forced into server mode and mDNS is off (tests opt in).
    pub fn loopback(run: RunId) -> Self {
        let mut config = Self::with_listen(
            run,
            vec![
                tcp_addr(Ipv4Addr::LOCALHOST, 0),
                quic_addr(Ipv4Addr::LOCALHOST, 0),
            ],
        );
        config.kad_server = true;
        config.mdns = false;
        config
    }

    fn with_listen(run: RunId, listen_addrs: Vec<Multiaddr>) -> Self {
        Self {
            listen_addrs,
            bootstrap: Vec::new(),
            external_addrs: Vec::new(),
            relays: Vec::new(),
            kad_server: false,
            mdns: true,
            run,
            idle_connection_timeout: Duration::from_secs(3600),
            kad_walk_interval: Some(Duration::from_secs(30)),
            peer_book_flush_interval: Duration::from_secs(30),
            redial_known_peers: 16,
            limits: NetLimits::default(),
            tuning: TransportTuning::default(),
        }
    }
}

/// `/ip4|ip6/<ip>/tcp/<port>`.
pub fn tcp_addr(ip: impl Into<IpAddr>, port: u16) -> Multiaddr {
    Multiaddr::from(ip.into()).with(Protocol::Tcp(port))
}

/// `/ip4|ip6/<ip>/udp/<port>/quic-v1`.
pub fn quic_addr(ip: impl Into<IpAddr>, port: u16) -> Multiaddr {
    Multiaddr::from(ip.into())
        .with(Protocol::Udp(port))
        .with(Protocol::QuicV1)
}
