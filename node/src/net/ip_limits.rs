//! Inbound connections per remote address: a peer id costs nothing, so one machine could
//! otherwise open connections under as many identities as the node's total limit allows and
//! crowd everyone else out. [`IpLimits`] refuses an inbound connection once `max` are
//! established from the same IPv4 address or IPv6 /64 (what one home link or one host gets).
//! Relayed connections are not counted: their address is the relay's, shared by every peer
//! behind it. Outbound connections (which this node chose) are not limited.
//!
//! The counting ([`IpCounts`]) is plain data; the `NetworkBehaviour` only feeds it the
//! swarm's connection events.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv6Addr};
use std::task::{Context, Poll};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr, multiaddr::Protocol};
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, ListenFailure, NetworkBehaviour,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};

/// An inbound connection refused because its address already has the most allowed.
#[derive(Debug, thiserror::Error)]
#[error("{max} inbound connections from {address} already (the most from one address)")]
pub(crate) struct TooManyFromAddress {
    /// The address (an IPv6 address stands for its /64).
    address: IpAddr,
    /// The limit.
    max: u32,
}

/// The address a connection counts against: an IPv4 address, or an IPv6 address's first 64
/// bits; `None` for relayed connections and addresses without an IP.
pub(crate) fn address_of(remote: &Multiaddr) -> Option<IpAddr> {
    if remote.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
        return None;
    }
    remote.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => {
            let prefix = u128::from(ip) & !((1u128 << 64) - 1);
            Some(IpAddr::V6(Ipv6Addr::from(prefix)))
        }
        _ => None,
    })
}

/// Established inbound connections by address.
#[derive(Debug, Default)]
pub(crate) struct IpCounts {
    max: u32,
    per_address: HashMap<IpAddr, u32>,
    connections: HashMap<ConnectionId, IpAddr>,
}

impl IpCounts {
    pub(crate) fn new(max: u32) -> Self {
        Self {
            max: max.max(1),
            ..Self::default()
        }
    }

    /// Whether one more inbound connection from `remote` is allowed.
    pub(crate) fn check(&self, remote: &Multiaddr) -> Result<(), TooManyFromAddress> {
        let Some(address) = address_of(remote) else {
            return Ok(());
        };
        if self.per_address.get(&address).copied().unwrap_or(0) >= self.max {
            return Err(TooManyFromAddress {
                address,
                max: self.max,
            });
        }
        Ok(())
    }

    /// Counts connection `id` from `remote`, if it is allowed.
    pub(crate) fn admit(
        &mut self,
        id: ConnectionId,
        remote: &Multiaddr,
    ) -> Result<(), TooManyFromAddress> {
        self.check(remote)?;
        if let Some(address) = address_of(remote) {
            *self.per_address.entry(address).or_default() += 1;
            self.connections.insert(id, address);
        }
        Ok(())
    }

    /// Connection `id` closed (or was refused after it was counted).
    pub(crate) fn remove(&mut self, id: ConnectionId) {
        let Some(address) = self.connections.remove(&id) else {
            return;
        };
        if let Some(count) = self.per_address.get_mut(&address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_address.remove(&address);
            }
        }
    }

    /// Addresses with at least one connection counted.
    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.per_address.len()
    }
}

/// The behaviour that applies [`IpCounts`] to inbound connections.
#[derive(Debug)]
pub(crate) struct IpLimits(IpCounts);

impl IpLimits {
    /// At most `max` established inbound connections per address.
    pub(crate) fn new(max: u32) -> Self {
        Self(IpCounts::new(max))
    }
}

impl NetworkBehaviour for IpLimits {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.0.check(remote).map_err(ConnectionDenied::new)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.0.admit(id, remote).map_err(ConnectionDenied::new)?;
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. })
            | FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => {
                self.0.remove(connection_id);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use libp2p::Multiaddr;
    use libp2p::swarm::ConnectionId;

    use super::{IpCounts, address_of};

    fn addr(text: &str) -> Multiaddr {
        text.parse().expect("multiaddr")
    }

    #[test]
    fn addresses_group_ipv6_by_64_and_skip_relayed_connections() {
        assert_eq!(
            address_of(&addr("/ip4/203.0.113.7/tcp/4001")),
            address_of(&addr("/ip4/203.0.113.7/udp/9/quic-v1"))
        );
        assert_eq!(
            address_of(&addr("/ip6/2001:db8:1:2:aaaa::1/tcp/1")),
            address_of(&addr("/ip6/2001:db8:1:2:bbbb::2/tcp/2")),
            "one /64"
        );
        assert_ne!(
            address_of(&addr("/ip6/2001:db8:1:2::1/tcp/1")),
            address_of(&addr("/ip6/2001:db8:1:3::1/tcp/1"))
        );
        let relayed = "/ip4/198.51.100.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit";
        assert_eq!(address_of(&addr(relayed)), None);
    }

    #[test]
    fn an_address_holds_at_most_the_limit_and_closed_connections_free_places() {
        let mut counts = IpCounts::new(2);
        let (a, b) = (
            addr("/ip4/203.0.113.7/tcp/1"),
            addr("/ip4/203.0.113.8/tcp/1"),
        );
        counts
            .admit(ConnectionId::new_unchecked(1), &a)
            .expect("first");
        counts
            .admit(ConnectionId::new_unchecked(2), &a)
            .expect("second");
        let refused = counts.admit(ConnectionId::new_unchecked(3), &a);
        assert!(refused.is_err_and(|e| e.to_string().contains("203.0.113.7")));
        counts
            .admit(ConnectionId::new_unchecked(4), &b)
            .expect("another address");
        counts.remove(ConnectionId::new_unchecked(1));
        counts
            .admit(ConnectionId::new_unchecked(5), &a)
            .expect("a place freed");
        for id in [2, 4, 5, 99] {
            counts.remove(ConnectionId::new_unchecked(id));
        }
        assert_eq!(
            counts.addresses(),
            0,
            "addresses without connections are forgotten"
        );
    }
}
