//! The delta gate: what the engine would refuse from a delta's header alone is refused before
//! the payload is read, queued with its sender, and counted by the engine as its own refusal.

mod support;

use std::collections::BTreeSet;

use murmur_node::averaging::{Admission, DEFAULT_MAX_LEAD, Rejection};
use murmur_protocol::{Codec, DeltaHeader, Digest, Message, RunId, SignedEnvelope};
use support::{LEN, MODEL, identity, run};

/// A header signed by `signer` for a raw-f32 delta at `round`, edited by `edit`.
fn header(signer: u8, round: u64, edit: impl FnOnce(&mut DeltaHeader)) -> Vec<u8> {
    let payload = vec![0u8; LEN * 4];
    let mut h = DeltaHeader {
        run: run(),
        model: MODEL,
        peer: identity(signer).peer_key(),
        base_round: round,
        local_steps: 1,
        samples: 10,
        weight: 10.0,
        codec: Codec::RawF32,
        element_count: LEN as u64,
        payload_len: payload.len() as u64,
        payload_digest: Digest::of(&payload),
        timestamp_ms: 0,
    };
    edit(&mut h);
    SignedEnvelope::sign(identity(signer).signing_key(), &Message::Delta(h))
        .expect("sign")
        .to_bytes()
}

#[test]
fn headers_the_engine_would_refuse_are_refused_before_the_payload_and_counted() {
    let members: BTreeSet<_> = [identity(2).peer_key(), identity(3).peer_key()].into();
    let (mut node, _) = support::averager(1, |c| c.admission = Admission::Closed(members));
    let gate = node.gate();
    let (member, outsider) = (identity(2).peer_id(), identity(9).peer_id());
    assert_eq!(gate.admit(&member, &header(2, 0, |_| {})), Ok(()));
    let mut tampered = header(2, 0, |_| {});
    let middle = tampered.len() / 2;
    tampered[middle] ^= 1;
    let cases = [
        (member, tampered, Rejection::BadEnvelope),
        (member, header(3, 0, |_| {}), Rejection::SignerMismatch),
        (
            member,
            header(2, 0, |h| h.run = RunId::from_name("another run")),
            Rejection::WrongRun,
        ),
        (outsider, header(9, 0, |_| {}), Rejection::NotMember),
        (
            member,
            header(2, DEFAULT_MAX_LEAD + 1, |_| {}),
            Rejection::TooFarAhead,
        ),
        (member, header(2, u64::MAX, |_| {}), Rejection::TooFarAhead),
        // A consistent header for a model of another size.
        (
            member,
            header(2, 0, |h| {
                h.element_count = LEN as u64 + 1;
                h.payload_len = (LEN as u64 + 1) * 4;
            }),
            Rejection::BadPayload,
        ),
    ];
    for (peer, bytes, reason) in &cases {
        assert_eq!(gate.admit(peer, bytes), Err(*reason), "{reason}");
    }
    assert!(
        gate.should_wake(),
        "the first refusal wakes the training thread"
    );
    assert!(
        !gate.should_wake(),
        "later ones do not, until it takes them"
    );
    let refused = node.take_gate_refusals();
    assert_eq!(refused.len(), cases.len());
    assert_eq!(refused[3], (outsider, Rejection::NotMember));
    assert_eq!(node.counts().rejected[&Rejection::TooFarAhead], 2);
    assert_eq!(node.counts().rejected_total(), cases.len() as u64);
    assert!(node.take_gate_refusals().is_empty());
    assert!(gate.should_wake(), "taken: the next refusal wakes it again");
}

#[test]
fn the_gate_follows_the_engines_round_clock() {
    let (mut node, _) = support::averager(1, |_| {});
    let gate = node.gate();
    let peer = identity(2).peer_id();
    let ahead = header(2, DEFAULT_MAX_LEAD + 3, |_| {});
    assert_eq!(gate.admit(&peer, &ahead), Err(Rejection::TooFarAhead));
    let mut params = vec![0.0; LEN];
    for _ in 0..3 {
        node.sync(&mut params, 1, 1, 0).expect("sync");
    }
    assert_eq!(node.round(), 3);
    assert_eq!(
        gate.admit(&peer, &ahead),
        Ok(()),
        "three syncs later it is within the lead"
    );
    node.adopt(1000);
    assert_eq!(
        gate.admit(&peer, &header(2, 1000 + DEFAULT_MAX_LEAD, |_| {})),
        Ok(())
    );
}
