//! Deterministic parameter initialisation from a seed.
//!
//! burn initialises lazily from a per-device RNG, so values would depend on the backend and the
//! order of first use. Murmur instead draws every parameter on the host from a ChaCha stream keyed
//! by `(seed, path)`: the same seed gives the same model on `flex`, on wgpu and in every process,
//! which peers starting from a common seed rely on.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::params::{ParamEntry, ParamLayout};

/// Standard deviation of the transformer's weight matrices and embeddings (GPT-2's 0.02).
const GPT_STD: f32 = 0.02;

/// Initial values for every parameter of `layout`, in layout order.
pub(crate) fn initial_values(layout: &ParamLayout, seed: u64) -> Vec<f32> {
    let mut out = Vec::with_capacity(layout.total());
    for entry in layout.entries() {
        let rule = rule_for(entry);
        let mut rng = ChaCha8Rng::from_seed(seed_for(seed, &entry.path));
        out.extend((0..entry.len()).map(|_| rule.sample(&mut rng)));
    }
    out
}

/// How one tensor is initialised.
#[derive(Debug, Clone, Copy)]
enum Rule {
    Constant(f32),
    /// Uniform in `[-bound, bound]`.
    Uniform(f32),
}

impl Rule {
    fn sample(self, rng: &mut ChaCha8Rng) -> f32 {
        match self {
            Rule::Constant(c) => c,
            Rule::Uniform(b) => (rng.random::<f32>() * 2.0 - 1.0) * b,
        }
    }
}

fn rule_for(entry: &ParamEntry) -> Rule {
    let leaf = entry.path.rsplit('.').next().unwrap_or_default();
    let dense = entry.path.contains(".Dense.");
    match leaf {
        "gamma" => Rule::Constant(1.0),
        "beta" | "bias" => Rule::Constant(0.0),
        // PyTorch's default for linear layers: U(±1/sqrt(fan_in)); weights are [d_in, d_out].
        _ if dense => {
            Rule::Uniform(1.0 / (entry.shape.first().copied().unwrap_or(1).max(1) as f32).sqrt())
        }
        // A uniform with the standard deviation of N(0, 0.02).
        _ => Rule::Uniform(GPT_STD * 3f32.sqrt()),
    }
}

fn seed_for(seed: u64, path: &str) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"murmur-init-v1");
    h.update(&seed.to_le_bytes());
    h.update(path.as_bytes());
    *h.finalize().as_bytes()
}
