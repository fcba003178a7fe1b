//! A node's compute capacity for a run: measured once at start with a short standard benchmark
//! (forward + backward of the run's whole model on one micro-batch of the run's shapes, on the
//! node's own device), then refined from the stage times the node actually observes while
//! training (exponential moving average), and announced to peers.

use std::time::{Duration, Instant};

use murmur_models::Device;
use murmur_models::pipeline::{ShardError, StageShard};
use murmur_models::{ModelSpec, TrainConfig, WireActivation};
use rand::{Rng, SeedableRng};

/// Weight of a new observation in the moving average.
const REFINE_WEIGHT: f64 = 0.2;

/// What a node can do for a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    /// Sustained compute on this model, FLOP per second (forward + backward).
    pub flops_per_sec: f64,
    /// Whole-model training samples per second.
    pub samples_per_sec: f64,
    /// Memory available for model state and activations, bytes.
    pub memory_bytes: u64,
}

impl Capacity {
    /// Folds an observed compute rate into the estimate (moving average); samples per second
    /// follow in proportion. Non-finite or non-positive observations are ignored.
    pub fn refine(&mut self, observed_flops_per_sec: f64) {
        if !(observed_flops_per_sec.is_finite() && observed_flops_per_sec > 0.0) {
            return;
        }
        let next =
            (1.0 - REFINE_WEIGHT) * self.flops_per_sec + REFINE_WEIGHT * observed_flops_per_sec;
        self.samples_per_sec *= next / self.flops_per_sec.max(f64::MIN_POSITIVE);
        self.flops_per_sec = next;
    }
}

/// Measures `spec` on `device` with micro-batches of `samples`, `slowdown` times slower than
/// the device really is (an emulated heterogeneous peer), for about `budget` (at least one
/// timed iteration after a warm-up).
pub fn measure(
    spec: &ModelSpec,
    device: &Device,
    samples: usize,
    slowdown: f64,
    budget: Duration,
) -> Result<Capacity, ShardError> {
    let config = TrainConfig {
        batch_size: samples,
        ..TrainConfig::default()
    };
    let stages = spec.num_stages();
    let mut shard = StageShard::new(spec, device, 0..stages, config)?;
    let (input, targets) = synthetic_batch(spec, samples.max(1));
    shard.loss_backward(input.clone(), &targets, 1.0)?; // warm-up (kernels, allocations)
    // A slowed peer sleeps after each iteration as its compute thread will, so the machine's
    // load while measuring is the load while training.
    let started = Instant::now();
    let mut iterations = 0u32;
    while iterations == 0 || (started.elapsed() < budget && iterations < 50) {
        let t = Instant::now();
        shard.loss_backward(input.clone(), &targets, 1.0)?;
        if slowdown > 1.0 {
            std::thread::sleep(t.elapsed().mul_f64(slowdown - 1.0));
        }
        iterations += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    let flops_per_sample: f64 = spec
        .stage_costs()
        .iter()
        .map(|c| c.flops_per_sample as f64)
        .sum();
    let samples_per_sec = f64::from(iterations) * samples.max(1) as f64 / secs.max(1e-9);
    Ok(Capacity {
        flops_per_sec: samples_per_sec * flops_per_sample,
        samples_per_sec,
        memory_bytes: available_memory(),
    })
}

/// A batch of the model's input shape with random content (fixed seed).
fn synthetic_batch(spec: &ModelSpec, samples: usize) -> (WireActivation, Vec<u32>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x6361_7061);
    match spec {
        ModelSpec::Gpt(c) => {
            let n = samples * c.context;
            let vocab = c.vocab.max(1) as u32;
            let ids: Vec<u32> = (0..n).map(|_| rng.random_range(0..vocab)).collect();
            let targets = (0..n).map(|_| rng.random_range(0..vocab)).collect();
            let input = WireActivation::Tokens {
                shape: [samples, c.context],
                ids,
            };
            (input, targets)
        }
        ModelSpec::Mlp(c) => {
            let width = c.widths.first().copied().unwrap_or(1);
            let classes = c.widths.last().copied().unwrap_or(1).max(1) as u32;
            let values = (0..samples * width).map(|_| rng.random::<f32>()).collect();
            let targets = (0..samples).map(|_| rng.random_range(0..classes)).collect();
            let input = WireActivation::Hidden {
                shape: [samples, 1, width],
                values,
            };
            (input, targets)
        }
    }
}

/// Memory available to this process: `MemAvailable` from `/proc/meminfo`, or 4 GiB where it
/// cannot be read.
pub fn available_memory() -> u64 {
    const FALLBACK: u64 = 4 << 30;
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(FALLBACK, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use murmur_models::GptConfig;

    fn tiny() -> ModelSpec {
        ModelSpec::Gpt(GptConfig {
            vocab: 11,
            context: 8,
            d_model: 16,
            heads: 2,
            layers: 2,
        })
    }

    #[test]
    fn a_slowed_peer_measures_proportionally_less() {
        let device = Device::flex();
        let budget = Duration::from_millis(100);
        let fast = measure(&tiny(), &device, 4, 1.0, budget).unwrap();
        let slow = measure(&tiny(), &device, 4, 4.0, budget).unwrap();
        assert!(fast.flops_per_sec > 0.0 && fast.memory_bytes > 0);
        // The slowed run sleeps 3× each iteration's own compute time (a sleep never ends
        // early), so it measures at most about a quarter; only the unslowed compute time varies
        // between the two runs (other tests share the cores), hence the wide upper bound.
        let ratio = fast.flops_per_sec / slow.flops_per_sec;
        assert!((2.0..100.0).contains(&ratio), "ratio {ratio}");
    }

    #[test]
    fn refinement_moves_towards_observations_and_ignores_garbage() {
        let mut c = Capacity {
            flops_per_sec: 100.0,
            samples_per_sec: 10.0,
            memory_bytes: 1,
        };
        c.refine(200.0);
        assert!((c.flops_per_sec - 120.0).abs() < 1e-9);
        assert!((c.samples_per_sec - 12.0).abs() < 1e-9);
        c.refine(f64::NAN);
        c.refine(-1.0);
        assert!((c.flops_per_sec - 120.0).abs() < 1e-9);
    }
}
