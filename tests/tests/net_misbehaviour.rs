//! Misbehaviour: malformed and oversized gossip and malformed stream frames are rejected,
//! scored against the sender, and do not disturb other peers.

mod net_common;

use std::time::Duration;

use futures::AsyncWriteExt;
use murmur_node::net::{Network, PayloadKind};
use net_common::{addr_of, announcement, eventually, loopback, publish_when_ready, start};

async fn score_of(observer: &Network, peer: libp2p::PeerId) -> u32 {
    let peers = observer.peers().await.unwrap_or_default();
    peers
        .iter()
        .find(|p| p.peer_id == peer)
        .map_or(0, |p| p.misbehaviour)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_gossip_is_rejected_and_scored() {
    // The victim has the default 16 KiB gossip limit; the attacker allows itself 256 KiB.
    let (_, victim, mut victim_events) = start(51, loopback()).await;
    let mut attacker_config = loopback();
    attacker_config.limits.max_gossip_bytes = 256 * 1024;
    let (_, attacker, _a) = start(52, attacker_config).await;
    let (honest_id, honest, _h) = start(53, loopback()).await;
    let victim_addr = addr_of(&victim, "tcp").await;
    attacker
        .dial(victim_addr.clone())
        .await
        .expect("attacker dials");
    honest.dial(victim_addr).await.expect("honest dials");

    // Garbage that is not an envelope.
    assert!(
        publish_when_ready(
            &attacker,
            b"not an envelope".to_vec(),
            Duration::from_secs(20)
        )
        .await
    );
    let scored = eventually(Duration::from_secs(10), || async {
        score_of(&victim, attacker.local_peer_id()).await > 0
    })
    .await;
    assert!(scored, "malformed gossip is scored against the attacker");
    // An oversized message: refused by the victim's codec, never delivered.
    let _ = attacker.publish_bytes(vec![0xAB; 100 * 1024]).await;

    // The honest peer is undisturbed: its announcement is delivered and it is not scored.
    let envelope = announcement(&honest_id, 9);
    assert!(publish_when_ready(&honest, envelope.to_bytes(), Duration::from_secs(20)).await);
    // Only the honest announcement may be accepted: nothing from the attacker gets through.
    let received =
        tokio::time::timeout(Duration::from_secs(10), victim_events.announcements.recv())
            .await
            .expect("honest announcement within 10 s")
            .expect("channel open");
    assert_eq!(received.from, honest.local_peer_id());
    assert_eq!(received.announcement.round, 9);
    assert_eq!(score_of(&victim, honest.local_peer_id()).await, 0);
    for net in [&attacker, &honest, &victim] {
        net.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_stream_frame_is_rejected_and_scored() {
    let (_, victim, _events) = start(54, loopback()).await;
    let mut incoming = victim
        .subscribe_payloads(PayloadKind::Delta)
        .expect("subscribe");
    let (_, attacker, _a) = start(55, loopback()).await;
    let (_, honest, _h) = start(56, loopback()).await;
    let victim_addr = addr_of(&victim, "quic-v1").await;
    attacker
        .dial(victim_addr.clone())
        .await
        .expect("attacker dials");
    honest.dial(victim_addr).await.expect("honest dials");

    // A valid preamble followed by a payload header claiming 1 TiB.
    let mut stream = attacker
        .open_raw_stream(
            victim.local_peer_id(),
            PayloadKind::Delta.protocol(),
            Duration::from_secs(10),
        )
        .await
        .expect("stream opens in time");
    murmur_protocol::framing::write_message(&mut stream, &[1, 0], 1024)
        .await
        .expect("preamble");
    let mut header = Vec::from(*b"MRMF");
    header.extend_from_slice(&[1, 0, 0, 0]);
    header.extend_from_slice(&(1u64 << 40).to_le_bytes());
    header.extend_from_slice(&(1u32 << 20).to_le_bytes());
    stream.write_all(&header).await.expect("header");
    stream.flush().await.expect("flush");

    let scored = eventually(Duration::from_secs(10), || async {
        score_of(&victim, attacker.local_peer_id()).await > 0
    })
    .await;
    assert!(scored, "an oversized frame is scored against the sender");

    let stats = tokio::time::timeout(
        Duration::from_secs(20),
        honest.send_payload(
            victim.local_peer_id(),
            PayloadKind::Delta,
            b"ok",
            &[5u8; 4096],
        ),
    )
    .await
    .expect("honest transfer in time")
    .expect("honest transfer succeeds");
    assert_eq!(stats.bytes, 4096);
    let got = tokio::time::timeout(Duration::from_secs(5), incoming.recv())
        .await
        .expect("delivered")
        .expect("open");
    assert_eq!(got.peer, honest.local_peer_id());
    assert_eq!(score_of(&victim, honest.local_peer_id()).await, 0);
    for net in [&attacker, &honest, &victim] {
        net.shutdown().await;
    }
}
