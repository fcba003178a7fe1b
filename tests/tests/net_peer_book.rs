//! The peer book: a restarted node reconnects to the peers it knew, without a bootstrap node.

mod net_common;

use std::time::Duration;

use murmur_node::net::Network;
use murmur_node::store::Store;
use net_common::{addr_of, eventually, identity, loopback};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_redials_known_peers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (friend, _friend_events) = Network::start(identity(61).keypair, loopback(), None)
        .await
        .expect("friend starts");
    let friend_addr = addr_of(&friend, "tcp").await;
    {
        let store = Store::open(dir.path()).expect("store opens");
        let (node, _events) = Network::start(identity(62).keypair, loopback(), Some(&store))
            .await
            .expect("node starts");
        node.dial(friend_addr).await.expect("dial");
        let connected = eventually(Duration::from_secs(10), || async {
            let peers = node.peers().await.unwrap_or_default();
            peers
                .iter()
                .any(|p| p.peer_id == friend.local_peer_id() && p.connected && p.rtt.is_some())
        })
        .await;
        assert!(connected, "connected and measured an RTT");
        node.shutdown().await;
        store.flush().await.expect("flush");
    }
    let store = Store::open(dir.path()).expect("store reopens");
    let record = store
        .peer_book()
        .expect("book")
        .get(&friend.local_peer_id())
        .expect("read");
    let record = record.expect("friend is in the peer book");
    assert!(!record.addrs.is_empty() && record.rtt_us.is_some());

    let (node, _events) = Network::start(identity(62).keypair, loopback(), Some(&store))
        .await
        .expect("node restarts");
    let reconnected = eventually(Duration::from_secs(10), || async {
        let peers = node.peers().await.unwrap_or_default();
        peers
            .iter()
            .any(|p| p.peer_id == friend.local_peer_id() && p.connected)
    })
    .await;
    assert!(reconnected, "reconnected from the peer book alone");
    node.shutdown().await;
    friend.shutdown().await;
}

/// Membership waits on the peer book instead of looking on a timer: a peer's first
/// connection and its last disconnection mark `peer_changes` changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_book_changes_are_signalled() {
    let (friend, _friend_events) = Network::start(identity(63).keypair, loopback(), None)
        .await
        .expect("friend starts");
    let friend_addr = addr_of(&friend, "tcp").await;
    let (node, _events) = Network::start(identity(64).keypair, loopback(), None)
        .await
        .expect("node starts");
    let mut changes = node.peer_changes();
    changes.borrow_and_update();
    node.dial(friend_addr).await.expect("dial");
    tokio::time::timeout(Duration::from_secs(10), changes.changed())
        .await
        .expect("a connection is signalled within 10 s")
        .expect("the network is up");
    assert!(
        node.peers()
            .await
            .expect("peers")
            .iter()
            .any(|p| p.peer_id == friend.local_peer_id() && p.connected)
    );
    changes.borrow_and_update();
    friend.shutdown().await;
    let disconnected = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if changes.changed().await.is_err() {
                return false;
            }
            let peers = node.peers().await.unwrap_or_default();
            if !peers
                .iter()
                .any(|p| p.peer_id == friend.local_peer_id() && p.connected)
            {
                return true;
            }
        }
    })
    .await;
    assert_eq!(disconnected, Ok(true), "the disconnection is signalled");
    node.shutdown().await;
}
