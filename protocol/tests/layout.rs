//! Pins the byte layout documented in `docs/protocol.md`, so the spec and the code
//! cannot drift apart, and checks that a signed delta binds its payload.

mod common;

use common::{key, peer_of};
use murmur_protocol::{
    Codec, CodecError, DeltaHeader, Digest, Message, ModelFingerprint, RunId, SignedEnvelope,
};
use proptest::prelude::*;

fn delta(payload: &[u8], n: u64, codec: Codec) -> DeltaHeader {
    DeltaHeader {
        run: RunId::from_name("layout"),
        model: ModelFingerprint([0xAB; 32]),
        peer: peer_of(&key(1)),
        base_round: 7,
        local_steps: 3,
        samples: 96,
        weight: 48.5,
        codec,
        element_count: n,
        payload_len: payload.len() as u64,
        payload_digest: Digest::of(payload),
        timestamp_ms: 1_700_000_000_000,
    }
}

#[test]
fn envelope_and_delta_header_bytes_match_the_spec() {
    let values = [1.0f32, -2.0, 0.5];
    let codec = Codec::Int8Block { block: 256 };
    let payload = codec.encode(&values).unwrap();
    let header = delta(&payload, 3, codec);
    let env = SignedEnvelope::sign(&key(1), &Message::Delta(header)).unwrap();
    let bytes = env.to_bytes();

    assert_eq!(&bytes[0..2], &1u16.to_le_bytes(), "version");
    let body_len = u64::from_le_bytes(bytes[2..10].try_into().unwrap()) as usize;
    let body = &bytes[10..10 + body_len];
    assert_eq!(
        &bytes[10 + body_len + 64..],
        peer_of(&key(1)).as_bytes(),
        "signer last"
    );
    assert_eq!(bytes.len(), 10 + body_len + 64 + 32);

    // Message::Delta is variant 1, then the header fields in order.
    assert_eq!(&body[0..4], &1u32.to_le_bytes());
    let mut at = 4;
    let mut take = |n: usize| {
        let s = &body[at..at + n];
        at += n;
        s.to_vec()
    };
    assert_eq!(take(32), RunId::from_name("layout").as_bytes());
    assert_eq!(take(32), [0xAB; 32]);
    assert_eq!(take(32), peer_of(&key(1)).as_bytes());
    assert_eq!(take(8), 7u64.to_le_bytes(), "base_round");
    assert_eq!(take(4), 3u32.to_le_bytes(), "local_steps");
    assert_eq!(take(8), 96u64.to_le_bytes(), "samples");
    assert_eq!(take(8), 48.5f64.to_le_bytes(), "weight");
    assert_eq!(take(4), 3u32.to_le_bytes(), "codec variant Int8Block");
    assert_eq!(take(4), 256u32.to_le_bytes(), "block");
    assert_eq!(take(8), 3u64.to_le_bytes(), "element_count");
    assert_eq!(
        take(8),
        (4u64 + 3).to_le_bytes(),
        "payload_len = 4*ceil(3/256) + 3"
    );
    assert_eq!(take(32), Digest::of(&payload).as_bytes());
    assert_eq!(take(8), 1_700_000_000_000u64.to_le_bytes());
    assert_eq!(at, body.len(), "no trailing fields");

    // Int8 payload: one scale (max|x| / 127), then the rounded quantised values.
    assert_eq!(&payload[0..4], &(2.0f32 / 127.0).to_le_bytes());
    assert_eq!(&payload[4..], &[64u8, (-127i8) as u8, 32]);
}

proptest! {
    #![proptest_config(common::config(128))]

    #[test]
    fn a_signed_delta_rejects_any_altered_payload_byte(
        values in common::values(3000),
        codec in common::codec(),
        pos in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        prop_assume!(codec.payload_len(values.len() as u64).is_ok());
        let payload = codec.encode(&values).unwrap();
        prop_assume!(!payload.is_empty());
        let header = delta(&payload, values.len() as u64, codec);
        prop_assert!(header.decode_payload(&payload, values.len() as u64).is_ok());
        let mut tampered = payload.clone();
        tampered[pos.index(payload.len())] ^= 1 << bit;
        prop_assert_eq!(header.decode_payload(&tampered, values.len() as u64), Err(CodecError::DigestMismatch));
        // With the digest the transfer computed over the received bytes: the same outcome,
        // without hashing twice when it matches the signed one.
        let n = values.len() as u64;
        prop_assert_eq!(
            header.decode_received_payload(&payload, n, &Digest::of(&payload)),
            header.decode_payload(&payload, n)
        );
        prop_assert_eq!(
            header.decode_received_payload(&tampered, n, &Digest::of(&tampered)),
            Err(CodecError::DigestMismatch)
        );
    }
}

#[test]
fn a_header_claiming_another_element_count_is_refused_before_decoding() {
    // A top-k payload of 8 bytes claiming 2^32 elements must not allocate 16 GiB.
    let codec = Codec::TopK { k: 1 };
    let payload = codec.encode(&[0.0, 5.0]).unwrap();
    let mut header = delta(&payload, 2, codec);
    header.element_count = 1 << 32;
    assert_eq!(
        header.decode_payload(&payload, 2),
        Err(CodecError::WrongElementCount {
            expected: 2,
            actual: 1 << 32
        })
    );
}
