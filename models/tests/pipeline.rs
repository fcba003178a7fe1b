//! Pipeline shards trained with micro-batches follow the whole-model trainer's trajectory.

mod common;

use murmur_models::data::BatchStream;
use murmur_models::pipeline::{ShardError, StageShard};
use murmur_models::{
    Batch, GptConfig, ModelKind, ModelSpec, Trainer, WireActivation, builtin_data, spec_for,
};

/// The order of micro-batches through a step.
#[derive(Clone, Copy)]
enum Schedule {
    /// Each micro-batch's forward and backward before the next one's.
    OneByOne,
    /// Every forward first, then the backwards from the last micro-batch to the first, so
    /// that every micro-batch's forward is kept at once (as in the node's pipeline).
    AllForwardsFirst,
}

/// Runs one step through `shards` (contiguous, in order) with `micros` micro-batches, as the
/// node's pipeline does; returns the mean loss.
fn pipeline_step(
    shards: &mut [StageShard],
    batch: &Batch,
    micros: usize,
    schedule: Schedule,
) -> f32 {
    let samples = batch.samples;
    let per = samples / micros;
    let (WireActivation::Tokens { shape, ids }, targets) = (&batch.input, &batch.targets) else {
        panic!("char-gpt input is tokens");
    };
    let t = shape[1];
    let last = shards.len() - 1;
    let forward = |shards: &mut [StageShard], m: usize| {
        let rows = m * per..(m + 1) * per;
        let mut x = WireActivation::Tokens {
            shape: [per, t],
            ids: ids[rows.start * t..rows.end * t].to_vec(),
        };
        for shard in &mut shards[..last] {
            x = shard.forward(m as u32, x).unwrap();
        }
        x
    };
    let backward = |shards: &mut [StageShard], m: usize, x: WireActivation| {
        let rows = m * per..(m + 1) * per;
        let micro_targets = &targets[rows.start * t..rows.end * t];
        let (l, mut grad) = shards[last]
            .loss_backward(x, micro_targets, 1.0 / micros as f32)
            .unwrap();
        for shard in shards[..last].iter_mut().rev() {
            grad = shard.backward(m as u32, &grad.unwrap()).unwrap();
        }
        assert!(grad.is_none(), "the embedding stage takes token ids");
        l / micros as f32
    };
    let mut loss = 0.0;
    match schedule {
        Schedule::OneByOne => {
            for m in 0..micros {
                let x = forward(shards, m);
                loss += backward(shards, m, x);
            }
        }
        Schedule::AllForwardsFirst => {
            let outputs: Vec<_> = (0..micros).map(|m| forward(shards, m)).collect();
            for (m, x) in outputs.into_iter().enumerate().rev() {
                loss += backward(shards, m, x);
            }
        }
    }
    let norm = shards
        .iter()
        .map(StageShard::grad_norm_sq)
        .sum::<f64>()
        .sqrt() as f32;
    for shard in shards.iter_mut() {
        shard.apply(norm).unwrap();
    }
    loss
}

#[test]
fn three_shards_with_micro_batches_match_the_trainer() {
    shards_match_the_trainer(Schedule::OneByOne);
}

#[test]
fn shards_keeping_every_micro_batch_in_flight_match_the_trainer() {
    shards_match_the_trainer(Schedule::AllForwardsFirst);
}

fn shards_match_the_trainer(schedule: Schedule) {
    let data = builtin_data(ModelKind::CharGpt).unwrap();
    let spec = match spec_for(ModelKind::CharGpt, data.train.shape()).unwrap() {
        ModelSpec::Gpt(full) => ModelSpec::Gpt(GptConfig {
            d_model: 16,
            heads: 2,
            ..full
        }),
        other => other,
    };
    let mut cfg = common::config(8, 40, 3e-3);
    cfg.grad_clip = Some(0.5); // small enough to clip, so the global norm matters
    let device = common::flex();
    let mut trainer = Trainer::new(
        &spec,
        data.train.clone(),
        data.test.clone(),
        cfg.clone(),
        &device,
    )
    .unwrap();
    let mut shards: Vec<StageShard> = [0..2, 2..3, 3..4]
        .into_iter()
        .map(|r| StageShard::new(&spec, &device, r, cfg.clone()).unwrap())
        .collect();
    let mut stream = BatchStream::new(data.train.len(), cfg.seed);
    for step in 0..6 {
        let expected = trainer.step().unwrap().loss;
        let batch = data.train.batch(&stream.next_batch(cfg.batch_size));
        let got = pipeline_step(&mut shards, &batch, 4, schedule);
        assert!(
            (expected - got).abs() < 1e-4 * expected.abs().max(1.0),
            "step {step}: trainer {expected}, pipeline {got}"
        );
    }
    let whole = trainer.flat_params().unwrap();
    let pieces: Vec<f32> = shards
        .iter()
        .flat_map(|s| s.state().unwrap().params)
        .collect();
    assert!(common::rel_diff(&whole, &pieces) < 1e-4);
}

#[test]
fn shard_state_moves_between_holders_and_bad_inputs_are_errors() {
    let data = builtin_data(ModelKind::CharGpt).unwrap();
    let spec = spec_for(ModelKind::CharGpt, data.train.shape()).unwrap();
    let cfg = common::config(4, 20, 1e-3);
    let device = common::flex();
    let mut a = StageShard::new(&spec, &device, 1..3, cfg.clone()).unwrap();
    let grad = WireActivation::hidden([1, 1, 1], vec![0.0]).unwrap();
    assert!(matches!(
        a.backward(3, &grad),
        Err(ShardError::UnknownMicroBatch(3))
    ));
    a.apply(0.0).unwrap();
    let state = a.state().unwrap();
    // The same range elsewhere adopts it; a wider range is rebuilt from two parts.
    let mut b = StageShard::new(&spec, &device, 1..3, cfg.clone()).unwrap();
    b.restore(&state).unwrap();
    assert_eq!(b.state().unwrap(), state);
    let first = StageShard::new(&spec, &device, 0..1, cfg.clone()).unwrap();
    let mut wide = StageShard::new(&spec, &device, 0..3, cfg.clone()).unwrap();
    wide.restore_from_parts(&[first.state().unwrap(), state.clone()])
        .unwrap();
    let mut expect = first.state().unwrap().params;
    expect.extend(&state.params);
    assert_eq!(wide.state().unwrap().params, expect);
    assert!(matches!(
        wide.restore_from_parts(&[state]),
        Err(ShardError::State(_))
    ));
    assert!(StageShard::new(&spec, &device, 2..9, cfg).is_err());
}
