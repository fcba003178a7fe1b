//! Bounds on what one identity can do to a node's averaging, checked on the synchronous
//! [`Averager`] (no network): the numbers in a signed delta are the sender's choice, so the
//! round clock only moves within a bounded lead, one sender holds one place in the queue, its
//! weight is bounded by the node's own mass, and accepted models cannot ratchet the outlier
//! references up.

mod support;

use libp2p::PeerId;
use murmur_node::averaging::{
    Averager, DEFAULT_MAX_LEAD, DEFAULT_MAX_WEIGHT_RATIO, MAX_MASS, Rejection, RobustConfig,
};
use murmur_protocol::{Codec, DeltaHeader, Digest, Message, SignedEnvelope};
use support::{LEN, MODEL, identity, run};

/// Node `secret`'s engine (the fixture's: raw f32, fan-out 1, mass 10, anchor at zero).
fn averager(secret: u8) -> Averager {
    support::averager(secret, |_| {}).0
}

/// A signed delta from `secret`: every value `value`, at `round`, with `weight`.
fn delta(secret: u8, round: u64, value: f32, weight: f64) -> (PeerId, Vec<u8>, Vec<u8>) {
    delta_of(secret, round, &[value; LEN], weight)
}

/// A signed delta from `secret` carrying `values`, at `round`, with `weight`.
fn delta_of(secret: u8, round: u64, values: &[f32], weight: f64) -> (PeerId, Vec<u8>, Vec<u8>) {
    let payload: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
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
    assert_eq!(receive(&mut node, delta(2, 0, 2.0, 5.0)), Ok(()));
    assert_eq!(receive(&mut node, delta(2, 1, 8.0, 10.0)), Ok(()));
    assert_eq!(node.pending(), 1);
    let mut params = vec![1.0; LEN];
    node.merge(&mut params).expect("merge");
    // (10·1 + 5·2 + 10·8) / 25
    let expected = (10.0 + 10.0 + 80.0) / 25.0;
    assert!(
        params.iter().all(|p| (p - expected).abs() < 1e-5),
        "{params:?}"
    );
    assert!((node.mass() - 25.0).abs() < 1e-9);
}

/// Weight attack: a signed delta of weight 1e30 carrying another model. Its mass is clipped to
/// `DEFAULT_MAX_WEIGHT_RATIO` × the node's own, so the merge moves the model part of the way
/// (32/33) and the mass stays of the node's order (before: the model was replaced and the mass
/// became 1e30, spreading to every peer).
#[test]
fn a_huge_weight_moves_the_model_no_more_than_a_bounded_share() {
    let mut node = averager(1);
    assert_eq!(receive(&mut node, delta(66, 0, -5.0, 1e30)), Ok(()));
    let mut params = vec![1.0; LEN];
    node.merge(&mut params).expect("merge");
    let ratio = DEFAULT_MAX_WEIGHT_RATIO;
    let expected = (10.0 * 1.0 + ratio * 10.0 * -5.0) / (10.0 + ratio * 10.0);
    assert!(
        params
            .iter()
            .all(|p| (f64::from(*p) - expected).abs() < 1e-5),
        "{:?}",
        &params[..4]
    );
    assert!(
        (node.mass() - 10.0 * (1.0 + ratio)).abs() < 1e-9,
        "{}",
        node.mass()
    );
    assert_eq!(node.counts().capped, 1);
    // An honest delta lighter than the cap keeps its weight.
    assert_eq!(receive(&mut node, delta(2, 1, 1.0, 10.0)), Ok(()));
    node.merge(&mut params).expect("merge");
    assert_eq!(node.counts().capped, 1);
    let expected_mass = 10.0 * (1.0 + ratio) + 10.0;
    assert!(
        (node.mass() - expected_mass).abs() < 1e-9,
        "{}",
        node.mass()
    );
}

/// Escalating weight: a delta at `f64::MAX` every sync. Each merge grows the mass by at most
/// the cap (×16.5 a sync with the send's halving), and the mass never exceeds `MAX_MASS`, so
/// after two thousand syncs it is finite and the node still signs its deltas (before: two
/// such deltas made the mass infinite and the next sync failed to sign, which ended training;
/// with the cap alone, the mass overflows after about 250 syncs).
#[test]
fn escalating_weights_leave_the_mass_finite_and_the_node_syncing() {
    let mut node = averager(1);
    let mut params = vec![1.0; LEN];
    for round in 0..2000 {
        assert_eq!(
            receive(&mut node, delta(66, round, 1.0, f64::MAX)),
            Ok(()),
            "round {round}"
        );
        let outgoing = node.sync(&mut params, 10, 1, 1).expect("sync signs");
        assert!(outgoing.is_some_and(|o| o.mass_each.is_finite()));
        assert!(node.mass().is_finite() && node.mass() <= MAX_MASS);
    }
    assert_eq!(node.counts().capped, 2000);
}

/// Ratchet attack on robust merging: two identities send, every sync, the node's own model
/// with one coordinate pushed out so the norm sits just under the outlier limit. The
/// trimmed mean drops the spike (the model does not move), but before, their norms became
/// the outlier reference, which grew ×9 and let a model scaled ×50 in after a few syncs. Norms
/// now enter the reference clamped to what they were judged by: the ×50 model is refused.
#[test]
fn accepted_models_cannot_ratchet_the_outlier_reference() {
    let (mut node, _) = support::averager(1, |c| c.robust = Some(RobustConfig::default()));
    let mut params = vec![1.0f32; LEN];
    let own_norm = (LEN as f64).sqrt();
    for round in 0..6 {
        assert_eq!(receive(&mut node, delta(2, round, 1.0, 10.0)), Ok(()));
        for (secret, spike_at) in [(66u8, 0usize), (67, 1)] {
            let mut values = vec![1.0f32; LEN];
            // Norm ≈ 9 × the own model's.
            values[spike_at] = (9.0 * own_norm) as f32;
            assert_eq!(
                receive(&mut node, delta_of(secret, round, &values, 10.0)),
                Ok(())
            );
        }
        node.sync(&mut params, 0, 1, 0).expect("sync");
        assert!(
            params.iter().all(|p| (p - 1.0).abs() < 1e-4),
            "the spikes are trimmed: {:?}",
            &params[..4]
        );
    }
    assert!(!node.counts().rejected.contains_key(&Rejection::NormOutlier));
    assert_eq!(receive(&mut node, delta(68, 6, 50.0, 10.0)), Ok(()));
    node.sync(&mut params, 0, 1, 0).expect("sync");
    assert_eq!(
        node.counts().rejected.get(&Rejection::NormOutlier),
        Some(&1)
    );
    assert!(params.iter().all(|p| (p - 1.0).abs() < 1e-4));
}
