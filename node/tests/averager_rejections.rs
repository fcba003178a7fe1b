//! The averaging engine's refusals, checked on the synchronous [`Averager`] directly (no
//! network): every reason a delta is not merged is returned and counted.

mod support;

use std::collections::BTreeSet;

use libp2p::PeerId;
use murmur_node::adversary::{Adversary, Tamper};
use murmur_node::averaging::{Admission, Averager, AveragerConfig, Outgoing, Rejection};
use murmur_protocol::{
    Codec, DeltaHeader, Digest, Message, ModelFingerprint, RunId, SignedEnvelope,
};
use support::{LEN, MODEL, averager, identity, run};

/// A delta of `values` from a fresh sender `secret` configured by `configure`.
fn delta_from(
    secret: u8,
    values: f32,
    configure: impl FnOnce(&mut AveragerConfig),
) -> (Outgoing, PeerId) {
    let (mut sender, id) = averager(secret, configure);
    let mut params = vec![values; LEN];
    let outgoing = sender
        .sync(&mut params, 0, 1, 1)
        .expect("sync")
        .expect("a message");
    (outgoing, id)
}

/// A raw-f32 delta header for `payload` (any bytes) at `round`, signed by `secret`.
fn signed(secret: u8, round: u64, payload: &[u8]) -> Vec<u8> {
    let header = DeltaHeader {
        run: run(),
        model: MODEL,
        peer: identity(secret).peer_key(),
        base_round: round,
        local_steps: 1,
        samples: 10,
        weight: 10.0,
        codec: Codec::RawF32,
        element_count: payload.len() as u64 / 4,
        payload_len: payload.len() as u64,
        payload_digest: Digest::of(payload),
        timestamp_ms: 0,
    };
    SignedEnvelope::sign(identity(secret).signing_key(), &Message::Delta(header))
        .expect("sign")
        .to_bytes()
}

fn rejected(averager: &Averager, reason: Rejection) -> u64 {
    averager
        .counts()
        .rejected
        .get(&reason)
        .copied()
        .unwrap_or(0)
}

#[test]
fn a_delta_of_another_run_or_model_is_refused() {
    let (mut receiver, _) = averager(1, |_| {});
    let (other_run, from) = delta_from(2, 1.0, |c| c.run = RunId::from_name("other"));
    let got = receiver.receive(&from, &other_run.header, &other_run.payload);
    assert_eq!(got, Err(Rejection::WrongRun));
    let (other_model, from) = delta_from(3, 1.0, |c| c.model = ModelFingerprint([5; 32]));
    let got = receiver.receive(&from, &other_model.header, &other_model.payload);
    assert_eq!(got, Err(Rejection::WrongModel));
    assert_eq!(rejected(&receiver, Rejection::WrongRun), 1);
    assert_eq!(rejected(&receiver, Rejection::WrongModel), 1);
    assert_eq!(receiver.pending(), 0);
}

#[test]
fn the_same_peer_and_round_is_merged_once() {
    let (mut receiver, _) = averager(1, |_| {});
    let (delta, from) = delta_from(2, 1.0, |_| {});
    assert_eq!(
        receiver.receive(&from, &delta.header, &delta.payload),
        Ok(())
    );
    let again = receiver.receive(&from, &delta.header, &delta.payload);
    assert_eq!(again, Err(Rejection::Replay));
    assert_eq!(receiver.pending(), 1);
}

#[test]
fn a_delta_too_many_rounds_behind_is_refused_only_while_training() {
    let (mut receiver, _) = averager(1, |c| c.max_staleness = 4);
    receiver.advance_round(10);
    let (delta, from) = delta_from(2, 1.0, |_| {});
    let got = receiver.receive(&from, &delta.header, &delta.payload);
    assert_eq!(got, Err(Rejection::Stale));
    assert_eq!(rejected(&receiver, Rejection::Stale), 1);
    // Averaging only, models no longer move: old deltas are merged at full weight.
    receiver.set_training(false);
    assert_eq!(
        receiver.receive(&from, &delta.header, &delta.payload),
        Ok(())
    );
}

#[test]
fn a_delta_with_nan_values_is_refused() {
    let (mut receiver, _) = averager(1, |_| {});
    let mut values = vec![1.0f32; LEN];
    values[5] = f32::NAN;
    // The raw codec refuses to encode NaN, so the payload bytes are written by hand.
    let payload: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let header = signed(2, 0, &payload);
    let got = receiver.receive(&identity(2).peer_id(), &header, &payload);
    assert_eq!(got, Err(Rejection::NonFinite));
}

#[test]
fn forged_tampered_and_unreadable_deltas_are_refused() {
    let (mut receiver, _) = averager(1, |_| {});
    let (delta, from) = delta_from(2, 1.0, |_| {});
    let someone_else = identity(3).peer_id();
    let got = receiver.receive(&someone_else, &delta.header, &delta.payload);
    assert_eq!(got, Err(Rejection::SignerMismatch));
    let mut payload = delta.payload.to_vec();
    payload[9] ^= 0x40;
    let got = receiver.receive(&from, &delta.header, &payload);
    assert_eq!(got, Err(Rejection::BadPayload));
    let mut header = delta.header.clone();
    let at = header.len() / 2;
    header[at] ^= 1;
    let got = receiver.receive(&from, &header, &delta.payload);
    assert_eq!(got, Err(Rejection::BadEnvelope));
    assert_eq!(receiver.pending(), 0);
}

#[test]
fn a_closed_pool_refuses_non_members() {
    let members: BTreeSet<_> = [identity(1).peer_key(), identity(2).peer_key()].into();
    let (mut receiver, _) = averager(1, |c| c.admission = Admission::Closed(members));
    let (outsider, from) = delta_from(3, 1.0, |_| {});
    let got = receiver.receive(&from, &outsider.header, &outsider.payload);
    assert_eq!(got, Err(Rejection::NotMember));
    let (member, from) = delta_from(2, 1.0, |_| {});
    assert_eq!(
        receiver.receive(&from, &member.header, &member.payload),
        Ok(())
    );
}

#[test]
fn a_scaled_model_is_refused_as_an_outlier_when_merged() {
    let (mut receiver, _) = averager(1, |_| {});
    let (honest, from) = delta_from(2, 3.0, |_| {});
    let (plain, attacker) = delta_from(3, 1.0, |_| {});
    // The attacker's own, validly signed delta of a model scaled ×100.
    let adversary = Adversary::new(Tamper::Scale(100.0), identity(3).signing_key().clone());
    let scaled = adversary.corrupt(&plain).expect("corrupted").remove(0);
    // Both pass the checks on arrival: the norm is judged against the own model at a merge.
    assert_eq!(
        receiver.receive(&from, &honest.header, &honest.payload),
        Ok(())
    );
    let got = receiver.receive(&attacker, &scaled.header, &scaled.payload);
    assert_eq!(got, Ok(()));
    let mut params = vec![1.0f32; LEN];
    receiver.merge(&mut params).expect("merge");
    assert_eq!(rejected(&receiver, Rejection::NormOutlier), 1);
    assert_eq!(receiver.counts().merged, 1);
    // Masses 10 at 1.0 and 5 at 3.0; the scaled model left no trace.
    let expected = (10.0 + 5.0 * 3.0) / 15.0;
    assert!(
        params.iter().all(|v| (v - expected).abs() < 1e-5),
        "{params:?}"
    );
}

#[test]
fn a_node_that_cannot_keep_up_drops_its_oldest_delta() {
    let (mut receiver, _) = averager(1, |_| {});
    // Fan-out 1 keeps 4 × 1 + 8 deltas.
    for secret in 2..15 {
        let (delta, from) = delta_from(secret, 1.0, |_| {});
        assert_eq!(
            receiver.receive(&from, &delta.header, &delta.payload),
            Ok(())
        );
    }
    assert_eq!(receiver.pending(), 12);
    assert_eq!(rejected(&receiver, Rejection::Overloaded), 1);
}
