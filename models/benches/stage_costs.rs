//! Measured time of each stage kind of `char-gpt-deep` against the planner's cost model
//! ([`ModelSpec::stage_costs`]).
//!
//! A pipeline planner places stages by their analytic FLOPs ([`ModelSpec::stage_costs`]); a
//! stage whose real time share differs from its FLOP share is misplaced by that much, and on a
//! slowed peer the error is multiplied by the slowdown. This times the loss + backward of the
//! ranges `k..S` (the head, the last block and head, every block and head, the whole model)
//! on one micro-batch of the pipeline bench's shape, and prints each stage kind's measured
//! share of the whole model next to its modelled share.
//!
//! `RAYON_NUM_THREADS=1 cargo bench -p murmur-models --bench stage_costs --profile dev`;
//! `MURMUR_BENCH_SAMPLES` sets the micro-batch (default 2), `MURMUR_BENCH_ITERS` the timed
//! iterations per range (default 60).

use std::time::Instant;

use murmur_models::pipeline::StageShard;
use murmur_models::{
    Device, ModelKind, ModelSpec, TrainConfig, WireActivation, builtin_data, spec_for,
};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Median seconds of one loss + backward of stages `start..` on `samples` samples.
fn time_suffix(spec: &ModelSpec, start: usize, samples: usize, iters: usize) -> f64 {
    let ModelSpec::Gpt(c) = spec else {
        panic!("a char-gpt spec")
    };
    let device = Device::flex();
    let stages = spec.num_stages();
    let config = TrainConfig {
        batch_size: samples,
        ..TrainConfig::default()
    };
    let mut shard = StageShard::new(spec, &device, start..stages, config).expect("shard");
    let n = samples * c.context;
    let input = if start == 0 {
        WireActivation::Tokens {
            shape: [samples, c.context],
            ids: (0..n).map(|i| (i % c.vocab) as u32).collect(),
        }
    } else {
        let values = (0..n * c.d_model)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        WireActivation::hidden([samples, c.context, c.d_model], values).expect("hidden")
    };
    let targets: Vec<u32> = (0..n).map(|i| ((i * 31) % c.vocab) as u32).collect();
    for _ in 0..5 {
        shard
            .loss_backward(input.clone(), &targets, 1.0)
            .expect("warm-up");
    }
    let mut times: Vec<f64> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            shard
                .loss_backward(input.clone(), &targets, 1.0)
                .expect("step");
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let data = builtin_data(ModelKind::CharGptDeep).expect("embedded corpus");
    let spec = spec_for(ModelKind::CharGptDeep, data.train.shape()).expect("spec");
    let samples = env("MURMUR_BENCH_SAMPLES", 2);
    let iters = env("MURMUR_BENCH_ITERS", 60);
    let costs = spec.stage_costs();
    let total_flops: f64 = costs.iter().map(|c| c.flops_per_sample as f64).sum();
    let stages = spec.num_stages();
    // Suffixes: the head alone, the last block + head, every block + head, the whole model.
    let starts = [stages - 1, stages - 2, 1, 0];
    let times: Vec<f64> = starts
        .iter()
        .map(|&s| time_suffix(&spec, s, samples, iters))
        .collect();
    let whole = times[3];
    let rows = [
        ("head", times[0], stages - 1..stages),
        ("one block", times[1] - times[0], stages - 2..stages - 1),
        ("every block", times[2] - times[0], 1..stages - 1),
        ("embedding", times[3] - times[2], 0..1),
    ];
    println!(
        "char-gpt-deep, {stages} stages, micro-batch {samples}, median of {iters} timed iterations per range"
    );
    println!("whole model loss + backward: {:.2} ms", 1e3 * whole);
    println!("stages | measured ms | measured share | modelled share | measured ÷ modelled");
    for (name, secs, range) in rows {
        let flops: f64 = costs[range].iter().map(|c| c.flops_per_sample as f64).sum();
        let (measured, model) = (secs / whole, flops / total_flops);
        println!(
            "{name} | {:.3} | {:.2} % | {:.2} % | {:.2}",
            1e3 * secs,
            100.0 * measured,
            100.0 * model,
            measured / model
        );
    }
    println!("(the embedding is the difference of two timings within their noise)");
}
