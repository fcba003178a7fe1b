//! Payload codecs: round trips, error bounds, bounds checks and error feedback.

mod common;

use common::values;
use murmur_protocol::codec::DEFAULT_INT8_BLOCK;
use murmur_protocol::{Codec, CodecError, Digest, ErrorFeedback};
use proptest::prelude::*;

fn l2(v: &[f32]) -> f64 {
    v.iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt()
}

proptest! {
    #![proptest_config(common::config(128))]

    #[test]
    fn raw_is_exact(v in values(2000)) {
        let p = Codec::RawF32.encode(&v).unwrap();
        prop_assert_eq!(Codec::RawF32.decode(&p, v.len() as u64).unwrap(), v);
    }

    #[test]
    fn half_precision_is_within_relative_rounding(v in values(2000)) {
        for (codec, eps) in [(Codec::F16, 1.0 / 2048.0), (Codec::Bf16, 1.0 / 256.0)] {
            let p = codec.encode(&v).unwrap();
            let d = codec.decode(&p, v.len() as u64).unwrap();
            for (x, y) in v.iter().zip(&d) {
                // relative rounding error, plus the f16 subnormal spacing near zero
                prop_assert!((x - y).abs() <= x.abs() * eps + 6.0e-8, "{x} -> {y}");
            }
        }
    }

    #[test]
    fn int8_error_is_within_half_a_step_per_block(v in values(3000), block in 1u32..600) {
        let codec = Codec::Int8Block { block };
        let p = codec.encode(&v).unwrap();
        let d = codec.decode(&p, v.len() as u64).unwrap();
        for (chunk, dec) in v.chunks(block as usize).zip(d.chunks(block as usize)) {
            let scale = chunk.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
            for (x, y) in chunk.iter().zip(dec) {
                prop_assert!((x - y).abs() <= scale * 0.5 * (1.0 + 1e-5) + f32::EPSILON * x.abs());
            }
        }
    }

    #[test]
    fn topk_keeps_the_largest_exactly_and_bounds_the_error(v in values(2000), frac in 0.0f64..1.0) {
        let k = ((v.len() as f64) * frac) as u64;
        let codec = Codec::TopK { k };
        let p = codec.encode(&v).unwrap();
        let d = codec.decode(&p, v.len() as u64).unwrap();
        let kept = d.iter().zip(&v).filter(|(y, x)| *y == *x && **x != 0.0).count() as u64;
        prop_assert!(kept <= k);
        // every dropped element is no larger than every kept one
        let min_kept = v.iter().zip(&d).filter(|(_, y)| **y != 0.0).map(|(x, _)| x.abs()).fold(f32::INFINITY, f32::min);
        let max_dropped = v.iter().zip(&d).filter(|(_, y)| **y == 0.0).map(|(x, _)| x.abs()).fold(0.0, f32::max);
        prop_assert!(max_dropped <= min_kept);
        let err: Vec<f32> = v.iter().zip(&d).map(|(x, y)| x - y).collect();
        let n = v.len() as f64;
        prop_assert!(l2(&err).powi(2) <= (n - k as f64) / n * l2(&v).powi(2) * (1.0 + 1e-9) + 1e-9);
    }

    #[test]
    fn wrong_lengths_are_rejected_before_decoding(v in values(500), codec in common::codec(), extra in 1usize..9) {
        prop_assume!(codec.payload_len(v.len() as u64).is_ok());
        let mut p = codec.encode(&v).unwrap();
        p.extend(std::iter::repeat_n(0u8, extra));
        let is_wrong_len = matches!(codec.decode(&p, v.len() as u64), Err(CodecError::WrongLength { .. }));
        prop_assert!(is_wrong_len);
    }

    #[test]
    fn error_feedback_makes_decoded_sum_converge_to_true_sum(seed in any::<u64>()) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let (n, rounds) = (256, 200);
        // A persistent direction plus noise, as successive local-SGD deltas look.
        let base: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let deltas: Vec<Vec<f32>> = (0..rounds)
            .map(|_| base.iter().map(|b| b + rng.random_range(-0.5f32..0.5)).collect())
            .collect();
        for (codec, tolerance) in [
            (Codec::Int8Block { block: 64 }, 1e-3),
            (Codec::F16, 1e-3),
            (Codec::TopK { k: 32 }, 0.1),
        ] {
            let mut fb = ErrorFeedback::new(n);
            let mut true_sum = vec![0f64; n];
            let mut decoded_sum = vec![0f64; n];
            let mut plain_sum = vec![0f64; n];
            for delta in &deltas {
                fb.compress(delta, codec).unwrap();
                let plain = codec.decode(&codec.encode(delta).unwrap(), n as u64).unwrap();
                for i in 0..n {
                    true_sum[i] += f64::from(delta[i]);
                    decoded_sum[i] += f64::from(fb.decoded()[i]);
                    plain_sum[i] += f64::from(plain[i]);
                }
            }
            // Σ decoded = Σ true − residual, up to f32 rounding …
            for i in 0..n {
                let gap = true_sum[i] - decoded_sum[i] - f64::from(fb.residual()[i]);
                prop_assert!(gap.abs() < 1e-2, "{codec:?} gap {gap}");
            }
            // … so the relative error of the sum vanishes as rounds accumulate.
            let rel = |sum: &[f64]| {
                let err: f64 = sum.iter().zip(&true_sum).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
                err / true_sum.iter().map(|x| x * x).sum::<f64>().sqrt()
            };
            prop_assert!(rel(&decoded_sum) < tolerance, "{codec:?}: {}", rel(&decoded_sum));
            if matches!(codec, Codec::TopK { .. }) {
                prop_assert!(rel(&decoded_sum) * 4.0 < rel(&plain_sum), "feedback must beat plain top-k");
            }
        }
    }
}

#[test]
fn non_finite_values_are_rejected_both_ways() {
    for codec in [
        Codec::RawF32,
        Codec::F16,
        Codec::Bf16,
        Codec::Int8Block { block: 4 },
        Codec::TopK { k: 2 },
    ] {
        assert!(matches!(
            codec.encode(&[1.0, f32::NAN, 2.0]),
            Err(CodecError::NonFinite(1))
        ));
        assert!(matches!(
            codec.encode(&[f32::INFINITY, 1.0, 2.0]),
            Err(CodecError::NonFinite(0))
        ));
    }
    let mut raw = Codec::RawF32.encode(&[1.0, 2.0]).unwrap();
    raw[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    assert_eq!(Codec::RawF32.decode(&raw, 2), Err(CodecError::NonFinite(1)));
    let mut bf = Codec::Bf16.encode(&[1.0]).unwrap();
    bf.copy_from_slice(&half::bf16::INFINITY.to_le_bytes());
    assert_eq!(Codec::Bf16.decode(&bf, 1), Err(CodecError::NonFinite(0)));
}

#[test]
fn corrupt_int8_scales_and_topk_indices_are_rejected() {
    let codec = Codec::Int8Block { block: 2 };
    let mut p = codec.encode(&[1.0, -1.0, 0.5, 0.25]).unwrap();
    p[4..8].copy_from_slice(&(-1.0f32).to_le_bytes());
    assert_eq!(codec.decode(&p, 4), Err(CodecError::BadScale(1)));
    p[4..8].copy_from_slice(&f32::MAX.to_le_bytes());
    assert_eq!(codec.decode(&p, 4), Err(CodecError::BadScale(1)));

    let codec = Codec::TopK { k: 2 };
    let mut p = codec.encode(&[0.0, 3.0, 0.0, 4.0]).unwrap();
    p[0..4].copy_from_slice(&3u32.to_le_bytes()); // not strictly increasing
    assert_eq!(codec.decode(&p, 4), Err(CodecError::BadIndex(1)));
    p[0..4].copy_from_slice(&1u32.to_le_bytes());
    p[4..8].copy_from_slice(&9u32.to_le_bytes()); // out of range
    assert_eq!(codec.decode(&p, 4), Err(CodecError::BadIndex(1)));
}

#[test]
fn absurd_element_counts_are_refused_without_allocating() {
    for codec in [
        Codec::RawF32,
        Codec::Int8Block {
            block: DEFAULT_INT8_BLOCK,
        },
        Codec::TopK { k: 1 },
    ] {
        assert!(codec.decode(&[0u8; 8], u64::MAX).is_err());
        assert!(codec.decode(&[0u8; 8], 1 << 40).is_err());
    }
    assert!(matches!(
        Codec::Int8Block { block: 0 }.payload_len(4),
        Err(CodecError::BadParameter(_))
    ));
    assert!(matches!(
        Codec::TopK { k: 5 }.payload_len(4),
        Err(CodecError::BadParameter(_))
    ));
}

#[test]
fn payload_check_catches_length_and_digest() {
    let p = Codec::RawF32.encode(&[1.0, 2.0, 3.0]).unwrap();
    let d = Digest::of(&p);
    assert!(murmur_protocol::codec::check_payload(&p, 12, &d).is_ok());
    let mut bad = p.clone();
    bad[0] ^= 1;
    assert_eq!(
        murmur_protocol::codec::check_payload(&bad, 12, &d),
        Err(CodecError::DigestMismatch)
    );
    assert!(matches!(
        murmur_protocol::codec::check_payload(&p, 13, &d),
        Err(CodecError::WrongLength { .. })
    ));
}

#[test]
fn decoding_into_a_reused_buffer_matches_fresh_decoding() {
    let mut out = vec![9.0f32; 7];
    for (n, codec) in [
        (1000usize, Codec::RawF32),
        (10, Codec::F16),
        (300_000, Codec::Bf16),
        (513, Codec::Int8Block { block: 64 }),
        (77, Codec::TopK { k: 5 }),
    ] {
        let values: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut payload = vec![1u8; 3];
        let digest = codec.encode_into(&values, &mut payload).unwrap();
        assert_eq!(digest, Digest::of(&payload));
        codec
            .decode_into(&payload, n as u64, Some(&digest), &mut out)
            .unwrap();
        assert_eq!(out, codec.decode(&payload, n as u64).unwrap(), "{codec:?}");
        let wrong = Digest::of(b"something else");
        assert_eq!(
            codec.decode_into(&payload, n as u64, Some(&wrong), &mut out),
            Err(CodecError::DigestMismatch)
        );
    }
}
