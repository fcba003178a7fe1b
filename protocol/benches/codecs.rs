//! Codec throughput: encode + sign and verify + decode, in GB/s of f32 parameters.
//!
//! `cargo bench -p murmur-protocol --bench codecs [-- SIZES]` where SIZES is a
//! comma-separated list of element counts (default `10000000,100000000`).
//! Single-threaded; each figure is the best of a few repetitions.

use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use murmur_protocol::{
    Codec, DeltaHeader, Message, ModelFingerprint, PeerKey, RunId, SignedEnvelope,
    envelope::MAX_ENVELOPE_BYTES,
};

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000_000, 100_000_000]);
    let key = SigningKey::from_bytes(&[42; 32]);
    let codecs = [
        Codec::RawF32,
        Codec::F16,
        Codec::Bf16,
        Codec::Int8Block { block: 256 },
        Codec::TopK { k: 0 },
    ];
    println!("| elements | codec | encode+sign GB/s | verify+decode GB/s | payload MB |");
    println!("| ---: | --- | ---: | ---: | ---: |");
    for &n in &sizes {
        let values = test_vector(n);
        for codec in codecs {
            let codec = match codec {
                Codec::TopK { .. } => Codec::TopK {
                    k: (n / 100) as u64,
                },
                c => c,
            };
            let reps = if n >= 50_000_000 { 2 } else { 4 };
            let mut best_enc = Duration::MAX;
            let mut best_dec = Duration::MAX;
            // Buffers are reused across repetitions, as a node reuses them across rounds.
            let mut payload = Vec::new();
            let mut decoded = Vec::new();
            for _ in 0..reps {
                let t = Instant::now();
                let env = encode_and_sign(&key, codec, &values, &mut payload);
                best_enc = best_enc.min(t.elapsed());
                let wire = env.to_bytes();

                let t = Instant::now();
                verify_and_decode(&wire, &payload, n as u64, &mut decoded);
                best_dec = best_dec.min(t.elapsed());
                assert_eq!(decoded.len(), n);
            }
            let payload_mb = payload.len() as f64 / 1e6;
            let gb = (n * 4) as f64 / 1e9;
            println!(
                "| {n} | {codec:?} | {:.2} | {:.2} | {payload_mb:.1} |",
                gb / best_enc.as_secs_f64(),
                gb / best_dec.as_secs_f64()
            );
        }
    }
}

fn encode_and_sign(
    key: &SigningKey,
    codec: Codec,
    values: &[f32],
    payload: &mut Vec<u8>,
) -> SignedEnvelope {
    let digest = codec.encode_into(values, payload).expect("encode");
    let header = DeltaHeader {
        run: RunId::from_name("bench"),
        model: ModelFingerprint([1; 32]),
        peer: PeerKey(key.verifying_key().to_bytes()),
        base_round: 1,
        local_steps: 10,
        samples: 320,
        weight: 160.0,
        codec,
        element_count: values.len() as u64,
        payload_len: payload.len() as u64,
        payload_digest: digest,
        timestamp_ms: 0,
    };
    SignedEnvelope::sign(key, &Message::Delta(header)).expect("sign")
}

fn verify_and_decode(wire: &[u8], payload: &[u8], expected: u64, out: &mut Vec<f32>) {
    let (_, message) = SignedEnvelope::open_bytes(wire, MAX_ENVELOPE_BYTES).expect("open");
    let Message::Delta(header) = message else {
        panic!("not a delta")
    };
    header
        .decode_payload_into(payload, expected, out)
        .expect("decode");
}

/// Deterministic, gradient-like values (xorshift, roughly N(0, 0.01)).
fn test_vector(n: usize) -> Vec<f32> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.02
        })
        .collect()
}
