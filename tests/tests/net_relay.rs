//! NAT traversal: a node that can only be reached through a relay circuit on the bootstrap
//! node still receives announcements.

mod net_common;

use std::time::Duration;

use libp2p::multiaddr::Protocol;
use murmur_node::net::NetEvent;
use murmur_node::net::bootstrap::{Bootstrap, BootstrapConfig};
use net_common::{announcement, eventually, identity, loopback, publish_when_ready, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_behind_relay_receives_announcements() {
    let boot = Bootstrap::new(identity(210).keypair, &BootstrapConfig::loopback())
        .await
        .expect("bootstrap starts")
        .spawn();
    let relay_addr = boot
        .addrs
        .iter()
        .find(|a| a.iter().any(|p| matches!(p, Protocol::Tcp(_))))
        .cloned()
        .expect("relay tcp address");

    // The hidden node has no listener of its own: only a reservation on the relay.
    let mut hidden_config = loopback();
    hidden_config.listen_addrs = Vec::new();
    hidden_config.relays = vec![relay_addr.clone()];
    hidden_config.kad_walk_interval = None;
    let (_, hidden, mut hidden_events) = start(41, hidden_config).await;
    let reserved = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(event) = hidden_events.events.recv().await {
            if matches!(event, NetEvent::RelayReservation { .. }) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(reserved, "the hidden node gets a relay reservation");

    let (publisher_id, publisher, mut publisher_events) = start(42, loopback()).await;
    let circuit = relay_addr
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(hidden.local_peer_id()));
    publisher
        .dial(circuit)
        .await
        .expect("dial through the relay");
    let relayed = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(event) = publisher_events.events.recv().await {
            if let NetEvent::PeerConnected { peer, addr } = event
                && peer == hidden.local_peer_id()
            {
                return addr.iter().any(|p| matches!(p, Protocol::P2pCircuit));
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(
        relayed,
        "the first connection to the hidden node goes through the relay"
    );

    let envelope = announcement(&publisher_id, 5);
    assert!(
        publish_when_ready(&publisher, envelope.to_bytes(), Duration::from_secs(20)).await,
        "publisher sees the hidden node subscribe"
    );
    let received =
        tokio::time::timeout(Duration::from_secs(15), hidden_events.announcements.recv())
            .await
            .expect("announcement within 15 s")
            .expect("channel open");
    assert_eq!(received.from, publisher.local_peer_id());
    assert_eq!(received.announcement.round, 5);
    let listed = eventually(Duration::from_secs(5), || async {
        let peers = hidden.peers().await.unwrap_or_default();
        peers
            .iter()
            .any(|p| p.peer_id == publisher.local_peer_id() && p.announcement.is_some())
    })
    .await;
    assert!(
        listed,
        "the announcement's capacity shows up in the peer list"
    );
    publisher.shutdown().await;
    hidden.shutdown().await;
    boot.shutdown().await;
}
