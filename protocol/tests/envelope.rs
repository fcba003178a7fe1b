//! Signed envelopes: round trips, tampering, forged and mismatched signers.

mod common;

use common::{key, message, peer_of};
use murmur_protocol::envelope::MAX_ENVELOPE_BYTES;
use murmur_protocol::{EnvelopeError, Message, PROTOCOL_VERSION, SignedEnvelope};
use proptest::prelude::*;

proptest! {
    #![proptest_config(common::config(256))]

    #[test]
    fn every_message_round_trips_through_a_signed_envelope(msg in message(peer_of(&key(7)))) {
        let env = SignedEnvelope::sign(&key(7), &msg).unwrap();
        let bytes = env.to_bytes();
        let (signer, opened) = SignedEnvelope::open_bytes(&bytes, MAX_ENVELOPE_BYTES).unwrap();
        prop_assert_eq!(signer, peer_of(&key(7)));
        prop_assert_eq!(opened, msg);
    }

    #[test]
    fn flipping_any_single_byte_is_rejected(
        msg in message(peer_of(&key(3))),
        pos in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let bytes = SignedEnvelope::sign(&key(3), &msg).unwrap().to_bytes();
        let mut tampered = bytes.clone();
        let i = pos.index(tampered.len());
        tampered[i] ^= 1 << bit;
        prop_assert!(SignedEnvelope::open_bytes(&tampered, MAX_ENVELOPE_BYTES).is_err());
    }

    #[test]
    fn truncation_is_rejected(msg in message(peer_of(&key(4))), cut in any::<prop::sample::Index>()) {
        let bytes = SignedEnvelope::sign(&key(4), &msg).unwrap().to_bytes();
        let cut = cut.index(bytes.len());
        prop_assert!(SignedEnvelope::open_bytes(&bytes[..cut], MAX_ENVELOPE_BYTES).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = SignedEnvelope::open_bytes(&bytes, MAX_ENVELOPE_BYTES);
    }
}

#[test]
fn signer_other_than_claimed_peer_is_rejected() {
    // Peer 2 signs a message that claims to come from peer 1.
    let msg = sample_message(1);
    let env = SignedEnvelope::sign(&key(2), &msg).unwrap();
    assert!(matches!(
        env.open(),
        Err(EnvelopeError::SignerMismatch { .. })
    ));
}

#[test]
fn forged_signature_and_swapped_signer_are_rejected() {
    let msg = sample_message(1);
    let mut env = SignedEnvelope::sign(&key(1), &msg).unwrap();
    env.signature[0] ^= 1;
    assert!(matches!(env.open(), Err(EnvelopeError::BadSignature)));

    // Replace signer by another valid key: signature no longer verifies.
    let mut env = SignedEnvelope::sign(&key(1), &msg).unwrap();
    env.signer = peer_of(&key(9));
    assert!(matches!(env.open(), Err(EnvelopeError::BadSignature)));
}

#[test]
fn unknown_version_and_oversize_are_rejected() {
    let msg = sample_message(5);
    let mut env = SignedEnvelope::sign(&key(5), &msg).unwrap();
    env.version = PROTOCOL_VERSION + 1;
    assert!(matches!(
        env.open(),
        Err(EnvelopeError::UnsupportedVersion(v)) if v == PROTOCOL_VERSION + 1
    ));
    let bytes = SignedEnvelope::sign(&key(5), &msg).unwrap().to_bytes();
    assert!(matches!(
        SignedEnvelope::from_bytes(&bytes, bytes.len() - 1),
        Err(EnvelopeError::TooLarge { .. })
    ));
}

#[test]
fn unknown_message_variant_is_rejected() {
    let msg = sample_message(6);
    let mut env = SignedEnvelope::sign(&key(6), &msg).unwrap();
    env.body[0] = 200; // enum discriminant (u32 LE) out of range
    // re-sign so only the decoding can fail
    let resigned = resign(&env, 6);
    assert!(matches!(resigned.open(), Err(EnvelopeError::Message(_))));
}

fn sample_message(seed: u8) -> Message {
    proptest::strategy::ValueTree::current(
        &proptest::strategy::Strategy::new_tree(
            &message(peer_of(&key(seed))),
            &mut proptest::test_runner::TestRunner::deterministic(),
        )
        .unwrap(),
    )
}

fn resign(env: &SignedEnvelope, seed: u8) -> SignedEnvelope {
    use ed25519_dalek::Signer;
    let mut bytes = b"murmur/envelope/v1\0".to_vec();
    bytes.extend_from_slice(&env.version.to_le_bytes());
    bytes.extend_from_slice(&env.body);
    let mut out = env.clone();
    out.signature = key(seed).sign(&bytes).to_bytes();
    out
}
