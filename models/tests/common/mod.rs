//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use burn::tensor::Device;
use murmur_models::{GptConfig, ModelSpec, TrainConfig};

/// A tiny GPT for exactness tests.
pub fn tiny_gpt(vocab: usize) -> ModelSpec {
    ModelSpec::Gpt(GptConfig {
        vocab,
        context: 8,
        d_model: 16,
        heads: 2,
        layers: 2,
    })
}

pub fn flex() -> Device {
    Device::flex()
}

pub fn config(batch_size: usize, total_steps: u64, lr: f64) -> TrainConfig {
    TrainConfig {
        lr,
        warmup_steps: 10,
        total_steps,
        batch_size,
        seed: 7,
        ..TrainConfig::default()
    }
}

/// Largest absolute difference, scaled by the largest magnitude (at least 1).
pub fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let scale = a.iter().chain(b).fold(1.0f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}
