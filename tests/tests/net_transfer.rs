//! Bulk transfers over streams: 256 MB over TCP and over QUIC with digest verification,
//! state fetch, a header refused before its payload, a corrupted chunk, and a sender that
//! dies mid-transfer.

mod net_common;

use std::time::Duration;

use futures::AsyncWriteExt;
use murmur_node::net::{NetEvent, PayloadKind, StateReply, TransferError, quic_addr, tcp_addr};
use murmur_protocol::framing;
use net_common::{addr_of, loopback, start};

const MB: usize = 1024 * 1024;

/// Deterministic, non-repeating test data.
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

async fn transfer_256mb(transport: &str) {
    let mut receiver_config = loopback();
    receiver_config.listen_addrs = match transport {
        "tcp" => vec![tcp_addr(std::net::Ipv4Addr::LOCALHOST, 0)],
        _ => vec![quic_addr(std::net::Ipv4Addr::LOCALHOST, 0)],
    };
    let (_, receiver, _rx_events) = start(31, receiver_config).await;
    let mut incoming = receiver
        .subscribe_payloads(PayloadKind::Blob)
        .expect("subscribe");
    let (_, sender, _tx_events) = start(32, loopback()).await;
    sender
        .dial(addr_of(&receiver, transport).await)
        .await
        .expect("dial");

    let data = payload(256 * MB, 1);
    let expected = murmur_protocol::Digest::of(&data);
    let send = sender.send_payload(receiver.local_peer_id(), PayloadKind::Blob, b"hdr", &data);
    let stats = tokio::time::timeout(Duration::from_secs(50), send)
        .await
        .expect("transfer within 50 s")
        .expect("transfer succeeds");
    assert_eq!(stats.digest, expected);
    let got = tokio::time::timeout(Duration::from_secs(5), incoming.recv())
        .await
        .expect("payload delivered")
        .expect("channel open");
    assert_eq!(got.peer, sender.local_peer_id());
    assert_eq!(got.header, b"hdr");
    assert_eq!(got.digest, expected);
    assert!(got.payload == data, "payload bytes identical");
    eprintln!(
        "{transport}: 256 MiB in {:?} ({:.2} GB/s)",
        stats.elapsed,
        stats.bytes_per_sec() / 1e9
    );
    sender.shutdown().await;
    receiver.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_256mb_crosses_over_tcp() {
    transfer_256mb("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_256mb_crosses_over_quic() {
    transfer_256mb("quic-v1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_refused_by_admission_fails_the_send_and_delivers_nothing() {
    let (_, receiver, _rx_events) = start(41, loopback()).await;
    let admission: murmur_node::net::Admission = std::sync::Arc::new(|_peer, header| {
        if header == b"stale" {
            Err("round is over".to_string())
        } else {
            Ok(())
        }
    });
    let mut incoming = receiver
        .subscribe_payloads_admitting(PayloadKind::Blob, admission)
        .expect("subscribe");
    let (_, sender, _tx_events) = start(42, loopback()).await;
    sender
        .dial(addr_of(&receiver, "tcp").await)
        .await
        .expect("dial");
    let to = receiver.local_peer_id();
    // Larger than the muxer's window: the refusal must reach a sender still writing.
    let data = payload(64 * MB, 3);
    let refused = tokio::time::timeout(
        Duration::from_secs(30),
        sender.send_payload(to, PayloadKind::Blob, b"stale", &data),
    )
    .await
    .expect("refused within 30 s");
    match refused {
        Err(TransferError::Refused(reason)) => assert_eq!(reason, "round is over"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(
        !TransferError::Refused(String::new()).is_transient(),
        "a refusal is not retried"
    );
    let accepted = tokio::time::timeout(
        Duration::from_secs(30),
        sender.send_payload(to, PayloadKind::Blob, b"fresh", &data),
    )
    .await
    .expect("sent within 30 s")
    .expect("an admitted header goes through");
    assert_eq!(accepted.digest, murmur_protocol::Digest::of(&data));
    let got = tokio::time::timeout(Duration::from_secs(5), incoming.recv())
        .await
        .expect("payload delivered")
        .expect("channel open");
    assert_eq!(
        got.header, b"fresh",
        "the refused payload was never delivered"
    );
    assert!(incoming.try_recv().is_err());
    sender.shutdown().await;
    receiver.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_fetched_from_a_peer() {
    let (_, server, _e1) = start(33, loopback()).await;
    let mut requests = server.serve_state().expect("serve state");
    let (_, client, _e2) = start(34, loopback()).await;
    client
        .dial(addr_of(&server, "quic-v1").await)
        .await
        .expect("dial");
    let state = payload(3 * MB + 17, 2);
    let served = state.clone();
    tokio::spawn(async move {
        if let Some(request) = requests.recv().await {
            assert_eq!(request.request, b"give me round 7");
            request.respond(StateReply::Serve {
                header: b"round 7".to_vec(),
                payload: served.into(),
            });
        }
    });
    let fetch = client.fetch_state(server.local_peer_id(), b"give me round 7");
    let response = tokio::time::timeout(Duration::from_secs(20), fetch)
        .await
        .expect("fetch within 20 s")
        .expect("fetch succeeds");
    assert_eq!(response.header, b"round 7");
    assert!(response.payload == state);
    client.shutdown().await;
    server.shutdown().await;
}

/// Opens a raw blob stream (as the node's transfers do: a request made while the connection is
/// being set up is made again) and writes a valid preamble.
async fn raw_blob_stream(net: &murmur_node::net::Network, peer: libp2p::PeerId) -> libp2p::Stream {
    let mut stream = net
        .open_raw_stream(peer, PayloadKind::Blob.protocol(), Duration::from_secs(10))
        .await
        .expect("stream opens within 10 s");
    framing::write_message(&mut stream, &[1, 0, b'h'], 1024)
        .await
        .expect("preamble");
    stream
}

async fn next_inbound_failure(
    events: &mut tokio::sync::mpsc::Receiver<NetEvent>,
    limit: Duration,
) -> TransferError {
    let wait = async {
        loop {
            match events.recv().await {
                Some(NetEvent::InboundFailed { error, .. }) => return error,
                Some(_) => continue,
                None => panic!("event channel closed"),
            }
        }
    };
    tokio::time::timeout(limit, wait)
        .await
        .expect("inbound failure reported in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_chunk_is_detected() {
    let (_, receiver, mut rx_events) = start(35, loopback()).await;
    let mut incoming = receiver
        .subscribe_payloads(PayloadKind::Blob)
        .expect("subscribe");
    let (_, sender, _e) = start(36, loopback()).await;
    sender
        .dial(addr_of(&receiver, "tcp").await)
        .await
        .expect("dial");

    let mut frame = futures::io::Cursor::new(Vec::new());
    framing::write_payload(&mut frame, &payload(MB, 3), 64 * 1024)
        .await
        .expect("encode");
    let mut bytes = frame.into_inner();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    let mut stream = raw_blob_stream(&sender, receiver.local_peer_id()).await;
    stream
        .write_all(&bytes)
        .await
        .expect("write corrupted payload");
    stream.flush().await.expect("flush");

    let error = next_inbound_failure(&mut rx_events.events, Duration::from_secs(10)).await;
    assert!(
        matches!(
            error,
            TransferError::Frame(framing::FrameError::DigestMismatch)
        ),
        "got {error:?}"
    );
    assert!(
        incoming.try_recv().is_err(),
        "a corrupted payload is never delivered"
    );
    let scored = net_common::eventually(Duration::from_secs(5), || async {
        let peers = receiver.peers().await.unwrap_or_default();
        peers
            .iter()
            .any(|p| p.peer_id == sender.local_peer_id() && p.misbehaviour > 0)
    })
    .await;
    assert!(scored, "the sender of a corrupted frame is scored");
    sender.shutdown().await;
    receiver.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_killed_mid_transfer_gives_a_typed_error_and_no_task_leaks() {
    let mut config = loopback();
    config.limits.stall_timeout = Duration::from_secs(3);
    let (_, receiver, mut rx_events) = start(37, config).await;
    let _incoming = receiver
        .subscribe_payloads(PayloadKind::Blob)
        .expect("subscribe");
    for (seed, transport) in [(38, "tcp"), (39, "quic-v1")] {
        let (_, sender, _e) = start(seed, loopback()).await;
        sender
            .dial(addr_of(&receiver, transport).await)
            .await
            .expect("dial");
        // Announce 64 MiB, send a quarter of it, then kill the sender.
        let full = payload(64 * MB, 4);
        let mut frame = futures::io::Cursor::new(Vec::new());
        framing::write_payload(&mut frame, &full, MB as u32)
            .await
            .expect("encode");
        let bytes = frame.into_inner();
        let mut stream = raw_blob_stream(&sender, receiver.local_peer_id()).await;
        stream
            .write_all(&bytes[..bytes.len() / 4])
            .await
            .expect("partial write");
        stream.flush().await.expect("flush");
        let killed_at = tokio::time::Instant::now();
        sender.shutdown().await;
        drop(stream);
        let error = next_inbound_failure(&mut rx_events.events, Duration::from_secs(10)).await;
        assert!(
            matches!(
                error,
                TransferError::Frame(framing::FrameError::Truncated { .. })
                    | TransferError::Io(_)
                    | TransferError::Stalled(_)
            ),
            "{transport}: got {error:?}"
        );
        eprintln!(
            "{transport}: receiver saw {error} after {:?}",
            killed_at.elapsed()
        );
        let drained = net_common::eventually(Duration::from_secs(5), || async {
            receiver.active_transfers() == 0
        })
        .await;
        assert!(drained, "{transport}: no transfer task left behind");
    }
    receiver.shutdown().await;
}

/// A node that shuts down as soon as it takes a payload in (the last message of a run) still
/// acknowledges it: its sender must not count a delivered message as lost and fail over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_shuts_down_on_a_payload_still_acknowledges_it() {
    for (round, transport) in [(0u8, "tcp"), (1, "quic-v1"), (2, "tcp"), (3, "quic-v1")] {
        let (_, receiver, _rx_events) = start(43 + 2 * round, loopback()).await;
        let mut incoming = receiver
            .subscribe_payloads(PayloadKind::Blob)
            .expect("subscribe");
        let (_, sender, _tx_events) = start(44 + 2 * round, loopback()).await;
        sender
            .dial(addr_of(&receiver, transport).await)
            .await
            .expect("dial");
        let stops = {
            let receiver = receiver.clone();
            tokio::spawn(async move {
                let got = incoming.recv().await;
                receiver.shutdown().await;
                got.map(|p| p.header)
            })
        };
        let sent = tokio::time::timeout(
            Duration::from_secs(20),
            sender.send_payload(
                receiver.local_peer_id(),
                PayloadKind::Blob,
                b"last",
                b"commit",
            ),
        )
        .await
        .expect("the send ends within 20 s");
        let got = tokio::time::timeout(Duration::from_secs(10), stops)
            .await
            .expect("the receiver stops within 10 s")
            .expect("task joins");
        assert_eq!(got.as_deref(), Some(&b"last"[..]), "{transport}: delivered");
        assert!(sent.is_ok(), "{transport}: acknowledged, got {sent:?}");
        sender.shutdown().await;
    }
}
