//! Bootstrap node configuration: listeners, advertised addresses and relay limits.

use std::net::Ipv4Addr;
use std::time::Duration;

use libp2p::Multiaddr;

use crate::net::config::{NetLimits, quic_addr, tcp_addr};

/// Relay server limits.
#[derive(Clone, Debug)]
pub struct RelayLimits {
    /// Most reservations in total.
    pub max_reservations: usize,
    /// Most reservations per peer.
    pub max_reservations_per_peer: usize,
    /// Lifetime of a reservation.
    pub reservation_duration: Duration,
    /// Most relayed circuits in total.
    pub max_circuits: usize,
    /// Most relayed circuits per peer.
    pub max_circuits_per_peer: usize,
    /// Longest a circuit may live.
    pub max_circuit_duration: Duration,
    /// Most bytes a circuit may carry (each direction).
    pub max_circuit_bytes: u64,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_reservations: 256,
            max_reservations_per_peer: 4,
            reservation_duration: Duration::from_secs(3600),
            max_circuits: 64,
            max_circuits_per_peer: 8,
            max_circuit_duration: Duration::from_secs(10 * 60),
            max_circuit_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Bootstrap node configuration.
#[derive(Clone, Debug)]
pub struct BootstrapConfig {
    /// Listen addresses (default TCP and QUIC on 0.0.0.0:4001).
    pub listen_addrs: Vec<Multiaddr>,
    /// Public addresses to advertise.
    pub external_addrs: Vec<Multiaddr>,
    /// Also advertise the actual listen addresses as external (LAN and loopback setups).
    pub advertise_listen_addrs: bool,
    /// Relay server limits.
    pub relay: RelayLimits,
    /// Connection limits (only the connection fields are used).
    pub limits: NetLimits,
    /// Idle connection timeout.
    pub idle_connection_timeout: Duration,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        Self {
            listen_addrs: vec![
                tcp_addr(Ipv4Addr::UNSPECIFIED, 4001),
                quic_addr(Ipv4Addr::UNSPECIFIED, 4001),
            ],
            external_addrs: Vec::new(),
            advertise_listen_addrs: false,
            relay: RelayLimits::default(),
            limits: NetLimits {
                max_connections: 1024,
                max_connections_per_peer: 4,
                ..NetLimits::default()
            },
            idle_connection_timeout: Duration::from_secs(600),
        }
    }
}

impl BootstrapConfig {
    /// Loopback listeners on ephemeral ports, advertised as external (tests).
    pub fn loopback() -> Self {
        Self {
            listen_addrs: vec![
                tcp_addr(Ipv4Addr::LOCALHOST, 0),
                quic_addr(Ipv4Addr::LOCALHOST, 0),
            ],
            advertise_listen_addrs: true,
            ..Self::default()
        }
    }
}
