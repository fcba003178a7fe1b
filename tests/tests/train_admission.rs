//! What a node refuses: tampered, forged and replayed deltas, and — in a closed pool —
//! deltas (on their headers, before their payloads) and state downloads from peers the
//! manifest does not list. Every refusal is counted by reason.

mod train_common;

use std::collections::BTreeSet;
use std::time::Duration;

use murmur_node::averaging::{Admission, Rejection};
use murmur_node::net::{NetConfig, Network, PayloadKind, TransferError};
use murmur_node::session::Session;
use murmur_node::session::replica::VectorReplica;
use murmur_protocol::{
    Codec, DeltaHeader, Message, ModelFingerprint, SignedEnvelope, StateRequest,
};
use train_common::*;

const LEN: usize = 256;
const MODEL: ModelFingerprint = ModelFingerprint([5; 32]);

fn delta(signer: u8, claimed: u8, round: u64, values: &[f32]) -> (Vec<u8>, Vec<u8>) {
    let payload = Codec::RawF32.encode(values).expect("encode");
    signed(signer, claimed, round, payload)
}

/// A raw-f32 delta header for `payload` (any bytes), signed by `signer` claiming `claimed`.
fn signed(signer: u8, claimed: u8, round: u64, payload: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
    let codec = Codec::RawF32;
    let header = DeltaHeader {
        run: run(),
        model: MODEL,
        peer: identity(claimed).peer_key(),
        base_round: round,
        local_steps: 1,
        samples: 10,
        weight: 10.0,
        codec,
        element_count: payload.len() as u64 / 4,
        payload_len: payload.len() as u64,
        payload_digest: murmur_protocol::Digest::of(&payload),
        timestamp_ms: 0,
    };
    // `sign` checks nothing about the claimed peer; `open` does (signer must equal it).
    let envelope = SignedEnvelope::sign(identity(signer).signing_key(), &Message::Delta(header))
        .expect("sign");
    (envelope.to_bytes(), payload)
}

async fn target(seed: u8, admission: Admission) -> Session {
    let mut cfg = config(MODEL, &[], worker(1, 0, 0));
    cfg.averager.admission = admission;
    cfg.averager.codec = Codec::RawF32;
    start(
        seed,
        None,
        Box::new(VectorReplica(vec![1.0; LEN])),
        vec![0.0; LEN],
        cfg,
    )
    .await
}

async fn raw_peer(seed: u8, to: &Session) -> Network {
    let (net, _events) = Network::start(identity(seed).keypair(), NetConfig::loopback(run()), None)
        .await
        .expect("network");
    tokio::time::timeout(Duration::from_secs(10), net.dial(addr(to).await))
        .await
        .expect("dial in time")
        .expect("dial");
    net
}

/// Pushes a delta to `to` (retrying while the stream cannot be opened yet); the outcome.
async fn push(
    net: &Network,
    to: &Session,
    (header, payload): &(Vec<u8>, Vec<u8>),
) -> Result<(), TransferError> {
    let peer = to.network().local_peer_id();
    let mut retried = false;
    for _ in 0..50 {
        match net
            .send_payload(peer, PayloadKind::Delta, header, payload)
            .await
        {
            Ok(_) => return Ok(()),
            Err(TransferError::Open { .. }) => tokio::time::sleep(Duration::from_millis(100)).await,
            // A stream the receiver never picked up (seen intermittently under load, not yet
            // diagnosed) ends at the transfer deadline; a real sender retries, and so does this
            // one, once.
            Err(TransferError::Deadline(_)) if !retried => retried = true,
            Err(err) => return Err(err),
        }
    }
    panic!("could not open a stream");
}

/// Pushes a delta that the receiver takes in whole or refuses after its header.
async fn send(net: &Network, to: &Session, delta: &(Vec<u8>, Vec<u8>)) {
    match push(net, to, delta).await {
        // Refused after its header (the delta gate): delivered as far as it got.
        Ok(()) | Err(TransferError::Refused(_)) => {}
        Err(err) => panic!("send failed: {err}"),
    }
}

async fn merged(session: &Session) -> bool {
    wait_all(&[session], Duration::from_secs(10), |s| {
        s.worker.counts.merged >= 1
    })
    .await
}

async fn rejected(session: &Session, reason: Rejection, at_least: u64) -> bool {
    wait_all(&[session], Duration::from_secs(10), |s| {
        s.worker.counts.rejected.get(&reason).copied().unwrap_or(0) >= at_least
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_forged_and_replayed_deltas_are_rejected_and_counted() {
    let node = target(70, Admission::Open).await;
    let net = raw_peer(71, &node).await;
    let good = delta(71, 71, 0, &[3.0; LEN]);
    send(&net, &node, &good).await;
    assert!(merged(&node).await, "a valid delta is merged");
    send(&net, &node, &good).await;
    assert!(rejected(&node, Rejection::Replay, 1).await, "replay");

    let (header, mut payload) = delta(71, 71, 1, &[3.0; LEN]);
    payload[17] ^= 0x40;
    send(&net, &node, &(header, payload)).await;
    assert!(
        rejected(&node, Rejection::BadPayload, 1).await,
        "tampered payload"
    );

    let (mut header, payload) = delta(71, 71, 2, &[3.0; LEN]);
    let at = header.len() / 2;
    header[at] ^= 1;
    send(&net, &node, &(header, payload)).await;
    assert!(
        rejected(&node, Rejection::BadEnvelope, 1).await,
        "tampered header"
    );

    // Signed correctly by 72 for itself, but pushed by 71.
    send(&net, &node, &delta(72, 72, 3, &[3.0; LEN])).await;
    assert!(
        rejected(&node, Rejection::SignerMismatch, 1).await,
        "forged sender"
    );

    let mut bad = vec![3.0f32; LEN];
    bad[9] = f32::NAN;
    // RawF32 refuses to encode NaN, so the payload bytes are written by hand.
    let nan: Vec<u8> = bad.iter().flat_map(|v| v.to_le_bytes()).collect();
    let nan = signed(71, 71, 4, nan);
    send(&net, &node, &nan).await;
    assert!(rejected(&node, Rejection::NonFinite, 1).await, "NaN delta");

    net.shutdown().await;
    let status = tokio::time::timeout(Duration::from_secs(15), node.stop())
        .await
        .expect("stops")
        .expect("ok");
    assert_eq!(status.worker.counts.merged, 1, "{:?}", status.worker.counts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pool_refuses_deltas_and_state_to_non_members() {
    let members: BTreeSet<_> = [identity(80).peer_key(), identity(81).peer_key()].into();
    let node = target(80, Admission::Closed(members)).await;
    let outsider = raw_peer(82, &node).await;
    // Refused on its header: the outsider's payload is never read (before the delta gate it
    // was read, hashed and queued, then refused).
    let pushed = push(&outsider, &node, &delta(82, 82, 0, &[2.0; LEN])).await;
    assert!(
        matches!(&pushed, Err(TransferError::Refused(reason)) if reason == "not_member"),
        "{pushed:?}"
    );
    assert!(
        rejected(&node, Rejection::NotMember, 1).await,
        "outsider delta"
    );

    let request = StateRequest {
        peer: identity(82).peer_key(),
        run: run(),
        model: MODEL,
        offset: 0,
        max_len: 0,
    };
    let env = SignedEnvelope::sign(identity(82).signing_key(), &Message::StateRequest(request))
        .expect("sign");
    let fetched = outsider
        .fetch_state(node.network().local_peer_id(), &env.to_bytes())
        .await;
    assert!(
        matches!(fetched, Err(TransferError::Refused(_))),
        "{fetched:?}"
    );

    let member = raw_peer(81, &node).await;
    send(&member, &node, &delta(81, 81, 0, &[2.0; LEN])).await;
    assert!(merged(&node).await, "a member's delta is merged");
    outsider.shutdown().await;
    member.shutdown().await;
    let status = tokio::time::timeout(Duration::from_secs(15), node.stop())
        .await
        .expect("stops")
        .expect("ok");
    assert_eq!(status.states_refused, 1);
    assert_eq!(status.worker.counts.merged, 1);
}
