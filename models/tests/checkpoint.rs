//! Checkpoints restore the exact training trajectory; corrupt bytes are errors.

mod common;

use murmur_models::{CheckpointError, ModelKind, TrainError, Trainer, builtin_data, spec_for};

fn digits_trainer(seed: u64) -> Trainer {
    let data = builtin_data(ModelKind::MlpDigits).unwrap();
    let spec = spec_for(ModelKind::MlpDigits, data.train.shape()).unwrap();
    let mut cfg = common::config(16, 100, 3e-3);
    cfg.seed = seed;
    Trainer::new(&spec, data.train, data.test, cfg, &common::flex()).unwrap()
}

#[test]
fn restored_trainer_follows_the_same_trajectory() {
    let mut a = digits_trainer(1);
    for _ in 0..15 {
        a.step().unwrap();
    }
    let bytes = a.checkpoint().unwrap();
    let lr_at_15 = a.current_lr();
    let losses_a: Vec<f32> = (0..10).map(|_| a.step().unwrap().loss).collect();

    // A fresh trainer with another seed (other init, other shuffle) takes the checkpoint.
    let mut b = digits_trainer(2);
    b.restore(&bytes).unwrap();
    assert_eq!(b.steps_done(), 15);
    assert_eq!(b.samples_seen(), 15 * 16);
    assert_eq!(b.current_lr(), lr_at_15);
    let losses_b: Vec<f32> = (0..10).map(|_| b.step().unwrap().loss).collect();
    for (x, y) in losses_a.iter().zip(&losses_b) {
        assert!((x - y).abs() < 1e-5, "{losses_a:?} vs {losses_b:?}");
    }
    assert!(common::rel_diff(&a.flat_params().unwrap(), &b.flat_params().unwrap()) < 1e-5);
    assert_eq!(a.cursor(), b.cursor());
}

#[test]
fn corrupt_checkpoints_are_clear_errors() {
    let mut t = digits_trainer(1);
    t.step().unwrap();
    let bytes = t.checkpoint().unwrap();
    let before = t.flat_params().unwrap();

    let is = |r: Result<(), TrainError>, want: fn(&CheckpointError) -> bool| match r {
        Err(TrainError::Checkpoint(e)) => assert!(want(&e), "unexpected {e}"),
        other => panic!("expected a checkpoint error, got {other:?}"),
    };
    is(t.restore(&bytes[..10]), |e| {
        matches!(e, CheckpointError::Truncated(_))
    });
    is(t.restore(&bytes[..bytes.len() - 1]), |e| {
        matches!(e, CheckpointError::Corrupt)
    });
    let mut flipped = bytes.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x40;
    is(t.restore(&flipped), |e| {
        matches!(e, CheckpointError::Corrupt)
    });
    let mut magic = bytes.clone();
    magic[0] = b'X';
    is(t.restore(&magic), |e| {
        matches!(e, CheckpointError::BadMagic)
    });
    is(t.restore(&[0u8; 200]), |e| {
        matches!(e, CheckpointError::BadMagic)
    });

    // A checkpoint of another architecture.
    let data = builtin_data(ModelKind::MlpDigits).unwrap();
    let other = murmur_models::ModelSpec::Mlp(murmur_models::MlpConfig {
        widths: vec![64, 32, 10],
    });
    let mut small = Trainer::new(
        &other,
        data.train,
        data.test,
        common::config(16, 10, 1e-3),
        &common::flex(),
    )
    .unwrap();
    is(small.restore(&bytes), |e| {
        matches!(e, CheckpointError::WrongModel)
    });

    assert_eq!(
        t.flat_params().unwrap(),
        before,
        "failed restores must not change the trainer"
    );
}

#[test]
fn external_parameter_writes_keep_the_optimizer_usable() {
    let mut t = digits_trainer(3);
    for _ in 0..5 {
        t.step().unwrap();
    }
    let params = t.flat_params().unwrap();
    let averaged: Vec<f32> = params.iter().map(|p| p * 0.9).collect();
    t.set_flat_params(&averaged).unwrap();
    let delta = vec![0.001f32; params.len()];
    t.add_flat_delta(&delta, -1.0).unwrap();
    let loss = t.step().unwrap().loss;
    assert!(loss.is_finite());
    let bytes = t.checkpoint().unwrap();
    let mut u = digits_trainer(3);
    u.restore(&bytes).unwrap();
    assert_eq!(u.flat_params().unwrap(), t.flat_params().unwrap());
}
