//! Intake fairness between real nodes on loopback: a peer that opens as many inbound streams
//! as a protocol reads at once and then trickles nothing (slow loris) holds only its share of
//! them, so an honest peer's payload still goes through; its stalled streams are scored.

mod net_common;

use std::time::Duration;

use futures::AsyncWriteExt;
use murmur_node::net::PayloadKind;
use murmur_protocol::framing;
use net_common::{addr_of, loopback, start};

/// Opens a blob stream to `peer`, writes a valid preamble, then nothing more: the stream
/// holds a place until the receiver's stall timeout. `None` when the receiver dropped it on
/// arrival (the peer already holds its share).
async fn trickling_stream(
    net: &murmur_node::net::Network,
    peer: libp2p::PeerId,
) -> Option<libp2p::Stream> {
    let mut stream = net
        .open_raw_stream(peer, PayloadKind::Blob.protocol(), Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("stream opens within 10 s: {e:?}"));
    framing::write_message(&mut stream, &[1, 0, b'h'], 1024)
        .await
        .ok()?;
    stream.flush().await.ok()?;
    Some(stream)
}

/// Slow-loris attack: before per-peer quotas the attacker's streams took every place and the
/// honest payload was dropped on arrival ("too many inbound transfers").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_holding_streams_open_does_not_starve_an_honest_sender() {
    let mut config = loopback();
    config.limits.stall_timeout = Duration::from_secs(6);
    let places = config.limits.max_inbound_transfers;
    let (_, receiver, _rx_events) = start(61, config).await;
    let mut incoming = receiver
        .subscribe_payloads(PayloadKind::Blob)
        .expect("subscribe");
    let to = receiver.local_peer_id();
    let (_, attacker, _a_events) = start(62, loopback()).await;
    let (_, honest, _h_events) = start(63, loopback()).await;
    for net in [&attacker, &honest] {
        net.dial(addr_of(&receiver, "tcp").await)
            .await
            .expect("dial");
    }
    let mut held = Vec::new();
    for _ in 0..places {
        if let Some(stream) = trickling_stream(&attacker, to).await {
            held.push(stream);
        }
        // One at a time, as a slow-loris peer would: each reaches the accept loop in turn.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!held.is_empty(), "the attacker holds some streams");
    // Give the receiver's accept loop the attacker's streams first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let data = vec![7u8; 256 * 1024];
    let sent = tokio::time::timeout(
        Duration::from_secs(4),
        honest.send_payload(to, PayloadKind::Blob, b"honest", &data),
    )
    .await
    .expect("the honest send ends before the attacker's streams stall");
    assert!(sent.is_ok(), "the honest payload goes through: {sent:?}");
    let got = tokio::time::timeout(Duration::from_secs(5), incoming.recv())
        .await
        .expect("payload delivered")
        .expect("channel open");
    assert_eq!(got.peer, honest.local_peer_id());
    // The attacker's streams stall and cost it score.
    let scored = net_common::eventually(Duration::from_secs(15), || async {
        let peers = receiver.peers().await.unwrap_or_default();
        peers
            .iter()
            .any(|p| p.peer_id == attacker.local_peer_id() && p.misbehaviour > 0)
    })
    .await;
    assert!(scored, "stalled streams are scored");
    drop(held);
    for net in [attacker, honest, receiver] {
        net.shutdown().await;
    }
}
