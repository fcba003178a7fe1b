//! Stage ranges chained equal the unsplit model: same outputs, loss and gradients.

mod common;

use murmur_models::{Activation, MlpConfig, Model, ModelSpec, WireActivation};

fn tokens_batch(vocab: usize, b: usize, t: usize) -> (WireActivation, Vec<u32>) {
    let ids: Vec<u32> = (0..b * t).map(|i| ((i * 7 + 3) % vocab) as u32).collect();
    let targets: Vec<u32> = (0..b * t).map(|i| ((i * 5 + 1) % vocab) as u32).collect();
    (WireActivation::Tokens { shape: [b, t], ids }, targets)
}

fn features_batch(b: usize, f: usize, classes: usize) -> (WireActivation, Vec<u32>) {
    let values: Vec<f32> = (0..b * f).map(|i| ((i * 13 % 17) as f32) / 17.0).collect();
    let targets = (0..b).map(|i| (i % classes) as u32).collect();
    (
        WireActivation::Hidden {
            shape: [b, 1, f],
            values,
        },
        targets,
    )
}

/// Runs the model unsplit and split at `cut`, comparing loss, output and every gradient.
fn check_split(spec: &ModelSpec, input: &WireActivation, targets: &[u32], cut: usize) {
    let model = Model::new(spec, &common::flex(), 11).unwrap();
    let n = model.num_stages();
    let device = model.inner_device();
    let act = || input.to_activation(&device).unwrap();

    let (loss_full, full) = model.loss_backward_range(0..n, act(), targets).unwrap();
    assert!(full.input_grad.is_none() || matches!(input, WireActivation::Hidden { .. }));

    // First range forward, shipped as plain data, then the last range's loss + backward.
    let mid = model.forward_range(0..cut, act()).unwrap();
    let mid_wire = WireActivation::from_activation(&mid).unwrap();
    let mid = mid_wire.to_activation(&device).unwrap();
    let (loss_split, tail) = model.loss_backward_range(cut..n, mid, targets).unwrap();
    let grad_mid =
        WireActivation::from_activation(&Activation::Hidden(tail.input_grad.unwrap())).unwrap();
    let grad_mid = grad_mid.to_hidden(&device).unwrap().unwrap();
    let head = model.backward_range(0..cut, act(), grad_mid).unwrap();

    assert!(
        (loss_full - loss_split).abs() < 1e-5,
        "loss {loss_full} vs {loss_split}"
    );
    let mut split_grads = head.params.clone();
    split_grads.extend_from_slice(&tail.params);
    assert_eq!(split_grads.len(), model.param_count());
    let diff = common::rel_diff(&full.params, &split_grads);
    assert!(diff < 1e-4, "cut {cut}: gradient difference {diff}");
    assert!(
        full.params.iter().any(|g| g.abs() > 0.0),
        "gradients should not all be zero"
    );

    // Chained inference forward equals the unsplit forward.
    let whole =
        WireActivation::from_activation(&model.forward_range(0..n, act()).unwrap()).unwrap();
    let chained = model
        .forward_range(cut..n, model.forward_range(0..cut, act()).unwrap())
        .unwrap();
    let chained = WireActivation::from_activation(&chained).unwrap();
    let (WireActivation::Hidden { values: a, .. }, WireActivation::Hidden { values: b, .. }) =
        (whole, chained)
    else {
        panic!("logits expected")
    };
    assert!(common::rel_diff(&a, &b) < 1e-5);
}

#[test]
fn split_gpt_equals_unsplit_at_every_cut() {
    let spec = common::tiny_gpt(12);
    let (input, targets) = tokens_batch(12, 3, 8);
    for cut in 1..spec.num_stages() {
        check_split(&spec, &input, &targets, cut);
    }
}

#[test]
fn split_mlp_equals_unsplit_at_every_cut() {
    let spec = ModelSpec::Mlp(MlpConfig::digits());
    let (input, targets) = features_batch(5, 64, 10);
    for cut in 1..spec.num_stages() {
        check_split(&spec, &input, &targets, cut);
    }
}

#[test]
fn middle_range_backward_returns_input_and_param_grads() {
    let spec = common::tiny_gpt(12);
    let model = Model::new(&spec, &common::flex(), 3).unwrap();
    let device = model.inner_device();
    let (input, _) = tokens_batch(12, 2, 8);
    let h = model
        .forward_range(0..1, input.to_activation(&device).unwrap())
        .unwrap();
    let out = model
        .forward_range(1..3, h.clone())
        .unwrap()
        .into_hidden("test")
        .unwrap();
    let g = out.ones_like();
    let grads = model.backward_range(1..3, h, g).unwrap();
    assert_eq!(grads.params.len(), model.layout().span(1..3).len());
    assert_eq!(grads.input_grad.unwrap().dims(), [2, 8, 16]);
}

#[test]
fn bad_ranges_and_inputs_are_errors() {
    let spec = common::tiny_gpt(12);
    let model = Model::new(&spec, &common::flex(), 3).unwrap();
    let device = model.inner_device();
    let (tokens, targets) = tokens_batch(12, 2, 8);
    assert!(
        model
            .forward_range(2..2, tokens.to_activation(&device).unwrap())
            .is_err()
    );
    assert!(
        model
            .forward_range(0..9, tokens.to_activation(&device).unwrap())
            .is_err()
    );
    // Token ids into a block stage.
    assert!(
        model
            .forward_range(1..2, tokens.to_activation(&device).unwrap())
            .is_err()
    );
    // Loss over a range that does not end at the head.
    assert!(
        model
            .loss_backward_range(0..2, tokens.to_activation(&device).unwrap(), &targets)
            .is_err()
    );
    // Too few targets.
    assert!(
        model
            .loss_backward_range(0..4, tokens.to_activation(&device).unwrap(), &targets[1..])
            .is_err()
    );
    // Malformed wire data.
    let bad = WireActivation::Hidden {
        shape: [2, 8, 16],
        values: vec![0.0; 5],
    };
    assert!(bad.to_activation(&device).is_err());
    let nan = WireActivation::Hidden {
        shape: [1, 1, 2],
        values: vec![0.0, f32::NAN],
    };
    assert!(nan.to_activation(&device).is_err());
}

#[test]
fn stage_costs_cover_every_stage() {
    let spec = murmur_models::ModelKind::CharGptLarge.spec(66);
    let costs = spec.stage_costs();
    assert_eq!(costs.len(), spec.num_stages());
    assert!(
        spec.param_count() >= 25_000_000,
        "large preset has {} params",
        spec.param_count()
    );
    let small = common::tiny_gpt(12);
    let model = Model::new(&small, &common::flex(), 0).unwrap();
    assert_eq!(small.param_count() as usize, model.param_count());
    for (i, c) in small.stage_costs().iter().enumerate() {
        assert_eq!(c.params as usize, model.layout().span(i..i + 1).len());
        assert!(c.flops_per_sample > 0 && c.activation_bytes_per_sample > 0);
    }
}
