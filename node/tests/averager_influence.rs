//! Bounds on what one identity can do to a node's averaging, checked on the synchronous
//! [`Averager`] (no network): the numbers in a signed delta are the sender's choice, so the
//! round clock only moves within a bounded lead, and one sender holds one place in the queue.

mod support;

use libp2p::PeerId;
use murmur_node::averaging::{Averager, DEFAULT_MAX_LEAD, Rejection};
use murmur_protocol::{Codec, DeltaHeader, Digest, Message, SignedEnvelope};
use support::{LEN, MODEL, identity, run};

/// Node `secret`'s engine (the fixture's: raw f32, fan-out 1, mass 10, anchor at zero).
fn averager(secret: u8) -> Averager {
    support::averager(secret, |_| {}).0
}

/// A signed delta from `secret`: every value `value`, at `round`, with `weight`.
fn delta(secret: u8, round: u64, value: f32, weight: f64) -> (PeerId, Vec<u8>, Vec<u8>) {
    let payload: Vec<u8> = std::iter::repeat_n(value.to_le_bytes(), LEN)
        .flatten()
        .collect();
    let header = DeltaHeader {
        run: run(),
        model: MODEL,
        peer: identity(secret).peer_key(),
        base_round: round,
        local_steps: 1,
        samples: 10,
        weight,
        codec: Codec::RawF32,
        element_count: LEN as u64,
        payload_len: payload.len() as u64,
        payload_digest: Digest::of(&payload),
        timestamp_ms: 0,
    };
    let header = SignedEnvelope::sign(identity(secret).signing_key(), &Message::Delta(header))
        .expect("sign")
        .to_bytes();
    (identity(secret).peer_id(), header, payload)
}

fn receive(
    averager: &mut Averager,
    (from, header, payload): (PeerId, Vec<u8>, Vec<u8>),
) -> Result<(), Rejection> {
    averager.receive(&from, &header, &payload)
}

/// Round-jump attack: a signed delta claiming a round far ahead (up to `u64::MAX`) is refused
/// and leaves the clock where it was, so honest deltas are not made stale and the next sync
/// does not overflow the clock (before: the clock jumped to the attacker's round).
#[test]
fn a_delta_far_ahead_is_refused_and_does_not_move_the_clock() {
    let mut node = averager(1);
    for round in [u64::MAX, u64::MAX - 1, 1_000_000, DEFAULT_MAX_LEAD + 1] {
        assert_eq!(
            receive(&mut node, delta(66, round, 1.0, 10.0)),
            Err(Rejection::TooFarAhead),
            "round {round}"
        );
        assert_eq!(node.round(), 0);
    }
    assert_eq!(node.counts().rejected[&Rejection::TooFarAhead], 4);
    // An honest peer at the node's own round is merged, and the node syncs on.
    assert_eq!(receive(&mut node, delta(2, 0, 1.0, 10.0)), Ok(()));
    let mut params = vec![0.0; LEN];
    node.sync(&mut params, 1, 0, 1).expect("sync");
    assert_eq!(node.round(), 1);
    // Within the lead a peer's round is a Lamport clock tick: it moves the clock up.
    assert_eq!(
        receive(&mut node, delta(3, DEFAULT_MAX_LEAD, 1.0, 10.0)),
        Ok(())
    );
    assert_eq!(node.round(), DEFAULT_MAX_LEAD);
}

/// Replay-flood attack: one identity sends many valid deltas with distinct rounds between two
/// syncs. They are folded into its one place in the queue, so an honest delta queued before
/// stays (before: the queue's cap pushed it out, oldest first) and the sender casts one vote.
#[test]
fn one_sender_flooding_distinct_rounds_keeps_one_place_in_the_queue() {
    let mut node = averager(1);
    assert_eq!(receive(&mut node, delta(2, 0, 1.0, 10.0)), Ok(()));
    for round in 0..40 {
        assert_eq!(
            receive(&mut node, delta(66, round, -5.0, 10.0)),
            Ok(()),
            "round {round}"
        );
    }
    assert_eq!(node.pending(), 2, "the honest delta and one folded place");
    assert_eq!(node.counts().folded, 39);
    assert!(!node.counts().rejected.contains_key(&Rejection::Overloaded));
}

/// Folding two deltas of one sender merges exactly what push-sum would have merged from
/// both: the mass-weighted mean, with both masses.
#[test]
fn folded_deltas_merge_as_push_sum_would() {
    let mut node = averager(1);
    assert_eq!(receive(&mut node, delta(2, 0, 2.0, 10.0)), Ok(()));
    assert_eq!(receive(&mut node, delta(2, 1, 8.0, 30.0)), Ok(()));
    assert_eq!(node.pending(), 1);
    let mut params = vec![1.0; LEN];
    node.merge(&mut params).expect("merge");
    // (10·1 + 10·2 + 30·8) / 50
    let expected = (10.0 + 20.0 + 240.0) / 50.0;
    assert!(
        params.iter().all(|p| (p - expected).abs() < 1e-5),
        "{params:?}"
    );
    assert!((node.mass() - 50.0).abs() < 1e-9);
}
