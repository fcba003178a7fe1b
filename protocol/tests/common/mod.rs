//! Shared strategies for the protocol property tests.
#![allow(dead_code, unreachable_pub)]

use ed25519_dalek::SigningKey;
use murmur_protocol::{
    Announcement, Capacity, Codec, DeltaHeader, Digest, LinkStat, Message, ModelFingerprint,
    PartHeader, PartPhase, PeerKey, RunId, StateHeader, StateRequest,
};
use proptest::prelude::*;

/// A proptest configuration with a fixed seed, so every run checks the same cases.
pub fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x6d75_726d_7572),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

pub fn peer_of(key: &SigningKey) -> PeerKey {
    PeerKey(key.verifying_key().to_bytes())
}

pub fn id32() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>()
}

pub fn codec() -> impl Strategy<Value = Codec> {
    prop_oneof![
        Just(Codec::RawF32),
        Just(Codec::F16),
        Just(Codec::Bf16),
        (1u32..4096).prop_map(|block| Codec::Int8Block { block }),
        (0u64..64).prop_map(|k| Codec::TopK { k }),
    ]
}

pub fn capacity() -> impl Strategy<Value = Capacity> {
    (
        0f32..1e6,
        0f64..1e15,
        any::<u64>(),
        "[a-zA-Z0-9 ()-]{0,64}",
        prop::collection::vec((id32(), any::<u32>(), any::<u64>()), 0..4),
    )
        .prop_map(|(sps, flops, mem, device, links)| Capacity {
            samples_per_sec: sps,
            flops_per_sec: flops,
            memory_bytes: mem,
            device,
            links: links
                .into_iter()
                .map(|(p, rtt_us, bytes_per_sec)| LinkStat {
                    peer: PeerKey(p),
                    rtt_us,
                    bytes_per_sec,
                })
                .collect(),
        })
}

/// A valid message claimed by `peer`.
pub fn message(peer: PeerKey) -> impl Strategy<Value = Message> {
    let announcement = (
        id32(),
        id32(),
        capacity(),
        any::<u64>(),
        prop::collection::vec("/ip4/127\\.0\\.0\\.1/tcp/[0-9]{1,5}", 0..4),
        any::<u64>(),
    )
        .prop_map(move |(run, model, capacity, round, listen_addrs, ts)| {
            Message::Announcement(Announcement {
                peer,
                run: RunId(run),
                model: ModelFingerprint(model),
                capacity,
                round,
                listen_addrs,
                timestamp_ms: ts,
            })
        });
    let delta = (
        id32(),
        id32(),
        any::<u64>(),
        any::<u32>(),
        any::<u64>(),
        codec(),
        64u64..10_000,
        id32(),
        any::<u64>(),
    )
        .prop_map(
            move |(run, model, round, steps, samples, codec, n, digest, ts)| {
                let payload_len = codec.payload_len(n).unwrap_or(0);
                Message::Delta(DeltaHeader {
                    run: RunId(run),
                    model: ModelFingerprint(model),
                    peer,
                    base_round: round,
                    local_steps: steps,
                    samples,
                    weight: samples as f64 / 2.0,
                    codec,
                    element_count: n,
                    payload_len,
                    payload_digest: Digest(digest),
                    timestamp_ms: ts,
                })
            },
        )
        .boxed();
    let request = (id32(), id32(), any::<u64>(), any::<u64>()).prop_map(
        move |(run, model, offset, max_len)| {
            Message::StateRequest(StateRequest {
                peer,
                run: RunId(run),
                model: ModelFingerprint(model),
                offset,
                max_len,
            })
        },
    );
    let state = (
        id32(),
        id32(),
        any::<u64>(),
        any::<u64>(),
        0u64..1 << 40,
        id32(),
    )
        .prop_flat_map(move |(run, model, round, samples, total, digest)| {
            (0..=total).prop_flat_map(move |offset| {
                (0..=total - offset).prop_map(move |range_len| {
                    Message::State(StateHeader {
                        peer,
                        run: RunId(run),
                        model: ModelFingerprint(model),
                        round,
                        samples,
                        total_len: total,
                        total_digest: Digest(digest),
                        offset,
                        range_len,
                    })
                })
            })
        });
    let part = (
        delta.clone(),
        any::<bool>(),
        0u64..1 << 20,
        0u64..1 << 20,
        any::<u32>(),
    )
        .prop_map(|(delta, result, offset, extra, members)| {
            let Message::Delta(body) = delta else {
                unreachable!("the delta strategy makes deltas")
            };
            let total_elements = offset + body.element_count + extra;
            Message::Part(PartHeader {
                body,
                phase: if result {
                    PartPhase::Result
                } else {
                    PartPhase::Contribution
                },
                offset,
                total_elements,
                members,
            })
        });
    prop_oneof![announcement, delta, request, state, part]
}

/// Finite f32 vectors of moderate magnitude.
pub fn values(max_len: usize) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(-1e3f32..1e3, 1..max_len)
}
