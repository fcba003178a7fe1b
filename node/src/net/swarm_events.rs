//! Handling of swarm events in the owner task, one method per behaviour.

use libp2p::gossipsub::{self, MessageAcceptance};
use libp2p::swarm::SwarmEvent;
use libp2p::{autonat, dcutr, identify, kad, mdns, ping, relay};

use super::behaviour::{KAD_PROTOCOL, NodeBehaviourEvent};
use super::event_loop::EventLoop;
use super::events::NetEvent;
use super::gossip;

impl EventLoop {
    pub(crate) fn handle_swarm_event(&mut self, event: SwarmEvent<NodeBehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(event) => self.handle_behaviour_event(event),
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                self.emit(NetEvent::Listening(address));
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                if self.is_banned(&peer_id) {
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                let addr = endpoint.get_remote_address().clone();
                if self.peers.connected(peer_id, &addr) {
                    self.peers_changed();
                    self.emit(NetEvent::PeerConnected {
                        peer: peer_id,
                        addr,
                    });
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, .. } => self.connection_closed(peer_id),
            SwarmEvent::ExternalAddrConfirmed { address } => {
                tracing::info!(%address, "external address confirmed");
                self.emit(NetEvent::ExternalAddrConfirmed(address));
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(?peer_id, "outgoing connection failed: {error}");
            }
            SwarmEvent::ListenerError { error, .. } => tracing::warn!("listener error: {error}"),
            _ => {}
        }
    }

    fn connection_closed(&mut self, peer: libp2p::PeerId) {
        if self.peers.disconnected(peer) {
            self.peers_changed();
            self.emit(NetEvent::PeerDisconnected(peer));
        }
    }

    /// Tells the peer-book watchers something they read changed.
    fn peers_changed(&self) {
        self.peer_changes.send_modify(|generation| *generation += 1);
    }

    fn handle_behaviour_event(&mut self, event: NodeBehaviourEvent) {
        match event {
            NodeBehaviourEvent::Gossipsub(event) => self.handle_gossip(event),
            NodeBehaviourEvent::Identify(event) => self.handle_identify(event),
            NodeBehaviourEvent::Kad(event) => self.handle_kad(event),
            NodeBehaviourEvent::Mdns(event) => self.handle_mdns(event),
            NodeBehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            }) => {
                self.peers.record_rtt(peer, rtt);
            }
            NodeBehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                ..
            }) => {
                tracing::info!(relay = %relay_peer_id, "relay reservation accepted");
                self.emit(NetEvent::RelayReservation {
                    relay: relay_peer_id,
                });
            }
            NodeBehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result: Ok(_),
            }) => {
                tracing::info!(peer = %remote_peer_id, "hole punch succeeded");
                self.emit(NetEvent::HolePunched(remote_peer_id));
            }
            NodeBehaviourEvent::Autonat(autonat::v2::client::Event {
                tested_addr,
                result,
                ..
            }) => {
                tracing::debug!(%tested_addr, ok = result.is_ok(), "autonat probe");
            }
            _ => {}
        }
    }

    fn discovered(&mut self, peer: libp2p::PeerId, addr: &libp2p::Multiaddr) {
        if peer == *self.swarm.local_peer_id() {
            return;
        }
        if self.peers.add_addr(peer, addr) {
            self.emit(NetEvent::PeerDiscovered(peer));
        }
        self.maybe_dial(peer);
    }

    fn handle_gossip(&mut self, event: gossipsub::Event) {
        let gossipsub::Event::Message {
            propagation_source,
            message_id,
            message,
        } = event
        else {
            return;
        };
        let verdict = gossip::validate(
            &message,
            propagation_source,
            &self.settings.run,
            self.settings.max_gossip_bytes,
        );
        // A peer announcing faster than any honest one: not taken in, not passed on, not
        // scored (its earlier announcement stands).
        let flooding = verdict
            .as_ref()
            .is_ok_and(|r| !self.peers.announcement_due(&r.from));
        let acceptance = match &verdict {
            Ok(_) if flooding => MessageAcceptance::Ignore,
            Ok(_) => MessageAcceptance::Accept,
            Err(_) => MessageAcceptance::Reject,
        };
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&message_id, &propagation_source, acceptance);
        match verdict {
            Ok(received) if flooding => {
                tracing::debug!(peer = %received.from, "announcement too soon after the last; ignored");
            }
            Ok(received) => {
                let envelope = received.envelope.to_bytes().into();
                self.peers
                    .record_announcement(received.from, &received.announcement, envelope);
                self.peers_changed();
                if let Err(e) = self.announcements.try_send(received) {
                    tracing::debug!("announcement dropped: {e}");
                }
            }
            Err(rejection) => {
                self.penalize(propagation_source, 10, format!("gossip: {rejection}"));
            }
        }
    }

    fn handle_identify(&mut self, event: identify::Event) {
        let identify::Event::Received { peer_id, info, .. } = event else {
            return;
        };
        let speaks_kad = info.protocols.contains(&KAD_PROTOCOL);
        for addr in info.listen_addrs.iter().take(16) {
            if speaks_kad {
                self.swarm
                    .behaviour_mut()
                    .kad
                    .add_address(&peer_id, addr.clone());
            }
            self.peers.add_addr(peer_id, addr);
        }
    }

    fn handle_kad(&mut self, event: kad::Event) {
        if let kad::Event::RoutingUpdated {
            peer, addresses, ..
        } = event
        {
            let addr = addresses.first().clone();
            self.discovered(peer, &addr);
        }
    }

    fn handle_mdns(&mut self, event: mdns::Event) {
        let mdns::Event::Discovered(found) = event else {
            return;
        };
        for (peer, addr) in found {
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&peer, addr.clone());
            self.discovered(peer, &addr);
        }
    }
}
