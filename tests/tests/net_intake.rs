//! Intake fairness between real nodes on loopback: a peer that opens as many inbound streams
//! as a protocol reads at once and then trickles nothing (slow loris) holds only its share of
//! them, so an honest peer's payload still goes through, and its stalled streams are scored;
//! one address connects at most a bounded number of identities.

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

/// Whether `receiver` scores `attacker`'s misbehaviour within `limit`.
async fn scored_within(
    receiver: &murmur_node::net::Network,
    attacker: &murmur_node::net::Network,
    limit: Duration,
) -> bool {
    net_common::eventually(limit, || async {
        let peers = receiver.peers().await.unwrap_or_default();
        peers
            .iter()
            .any(|p| p.peer_id == attacker.local_peer_id() && p.misbehaviour > 0)
    })
    .await
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
    let scored = scored_within(&receiver, &attacker, Duration::from_secs(15)).await;
    assert!(scored, "stalled streams are scored");
    drop(held);
    for net in [attacker, honest, receiver] {
        net.shutdown().await;
    }
}

/// A payload announced at 64 KiB and trickled at 5 KiB/s — fast enough for the stall guard —
/// is cut at the deadline of its announced length (2 s here), and scored; before, the stream
/// kept its place for the deadline of the largest payload and the trickle was taken in whole
/// after 13 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_trickled_slower_than_its_length_allows_is_cut_at_its_own_deadline() {
    let mut config = loopback();
    config.limits.transfer_base_timeout = Duration::from_secs(1);
    config.limits.min_transfer_rate = 64 * 1024;
    config.limits.stall_timeout = Duration::from_secs(6);
    let (_, receiver, _rx_events) = start(64, config).await;
    let mut incoming = receiver
        .subscribe_payloads(PayloadKind::Blob)
        .expect("subscribe");
    let to = receiver.local_peer_id();
    let (_, attacker, _a_events) = start(65, loopback()).await;
    attacker
        .dial(addr_of(&receiver, "tcp").await)
        .await
        .expect("dial");
    let mut stream = trickling_stream(&attacker, to)
        .await
        .expect("the stream is taken in");
    // The framing header: magic, version 1, no flags, 64 KiB in chunks of at most 1 KiB.
    let (total, chunk) = (64u64 * 1024, 1024u32);
    let header = [
        b"MRMF".as_slice(),
        &[1, 0, 0, 0],
        &total.to_le_bytes(),
        &chunk.to_le_bytes(),
    ]
    .concat();
    let started = tokio::time::Instant::now();
    let mut cut = stream.write_all(&header).await.is_err();
    let block = [[0u8; 4], [9u8; 4]].concat();
    let chunk_bytes = [chunk.to_le_bytes().as_slice(), &block.repeat(128)].concat();
    for _ in 0..total / u64::from(chunk) {
        if cut {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        cut = stream.write_all(&chunk_bytes).await.is_err() || stream.flush().await.is_err();
    }
    let elapsed = started.elapsed();
    assert!(cut, "the trickle was cut before it was all sent");
    assert!(
        elapsed < Duration::from_secs(6),
        "cut at its own deadline, not the stall timeout: {elapsed:?}"
    );
    assert!(incoming.try_recv().is_err(), "nothing delivered");
    let scored = scored_within(&receiver, &attacker, Duration::from_secs(5)).await;
    assert!(scored, "an overrun deadline is scored");
    for net in [attacker, receiver] {
        net.shutdown().await;
    }
}

/// Connections under many identities from one host: past the per-address limit, an inbound
/// connection is refused (before: one machine could fill the whole connection table).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_connections_from_one_address_are_bounded() {
    let mut config = loopback();
    config.limits.max_inbound_per_address = 2;
    let (_, receiver, _rx_events) = start(71, config).await;
    let target = addr_of(&receiver, "tcp").await;
    let connected = |peers: Vec<murmur_node::net::PeerInfo>| -> Vec<libp2p::PeerId> {
        peers
            .into_iter()
            .filter(|p| p.connected)
            .map(|p| p.peer_id)
            .collect()
    };
    let mut dialers = Vec::new();
    for seed in [72, 73] {
        let (_, net, events) = start(seed, loopback()).await;
        net.dial(target.clone()).await.expect("dial");
        dialers.push((net, events));
    }
    let both = net_common::eventually(Duration::from_secs(10), || async {
        connected(receiver.peers().await.unwrap_or_default()).len() == 2
    })
    .await;
    assert!(both, "the first two identities connect");
    let (_, third, _third_events) = start(74, loopback()).await;
    let _ = third.dial(target.clone()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let now = connected(receiver.peers().await.unwrap_or_default());
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(
        !now.contains(&third.local_peer_id()),
        "the third is refused"
    );
    third.shutdown().await;
    for (net, _) in dialers {
        net.shutdown().await;
    }
    receiver.shutdown().await;
}
