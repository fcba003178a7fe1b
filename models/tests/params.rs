//! Flat parameter views, deterministic initialisation and fingerprints.

mod common;

use murmur_models::{MlpConfig, Model, ModelKind, ModelSpec};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn flat_view_round_trips_and_deltas_add() {
    let spec = common::tiny_gpt(10);
    let mut model = Model::new(&spec, &common::flex(), 1).unwrap();
    let original = model.flat_params().unwrap();
    assert_eq!(original.len(), model.param_count());

    let replaced: Vec<f32> = (0..original.len())
        .map(|i| (i % 97) as f32 * 0.01 - 0.4)
        .collect();
    model.set_flat_params(&replaced).unwrap();
    assert_eq!(model.flat_params().unwrap(), replaced);
    // Reading into a used buffer (longer, other values) gives the same vector.
    let mut buffer = vec![7.0f32; original.len() + 13];
    model.flat_params_into(&mut buffer).unwrap();
    assert_eq!(buffer, replaced);

    let delta: Vec<f32> = (0..original.len()).map(|i| (i % 5) as f32).collect();
    model.add_flat_delta(&delta, 0.5).unwrap();
    let expected: Vec<f32> = replaced
        .iter()
        .zip(&delta)
        .map(|(p, d)| p + 0.5 * d)
        .collect();
    assert!(common::rel_diff(&model.flat_params().unwrap(), &expected) < 1e-6);

    // A stage range is a contiguous slice of the full vector.
    let span = model.layout().span(1..3);
    let middle = model.flat_params_range(1..3).unwrap();
    assert_eq!(middle, model.flat_params().unwrap()[span.clone()]);
    let zeros = vec![0.0; span.len()];
    model.set_flat_params_range(1..3, &zeros).unwrap();
    let after = model.flat_params().unwrap();
    assert!(after[span.clone()].iter().all(|v| *v == 0.0));
    assert_eq!(after[..span.start], expected[..span.start]);
}

#[test]
fn bad_flat_vectors_are_rejected_and_leave_the_model_intact() {
    let mut model = Model::new(&common::tiny_gpt(10), &common::flex(), 1).unwrap();
    let before = model.flat_params().unwrap();
    assert!(model.set_flat_params(&before[1..]).is_err());
    let mut nan = before.clone();
    nan[3] = f32::NAN;
    assert!(model.set_flat_params(&nan).is_err());
    assert!(model.add_flat_delta(&nan, 1.0).is_err());
    assert_eq!(model.flat_params().unwrap(), before);
}

#[test]
fn initialisation_is_deterministic_per_seed() {
    let spec = ModelSpec::Mlp(MlpConfig::digits());
    let a = Model::new(&spec, &common::flex(), 5)
        .unwrap()
        .flat_params()
        .unwrap();
    let b = Model::new(&spec, &common::flex(), 5)
        .unwrap()
        .flat_params()
        .unwrap();
    let c = Model::new(&spec, &common::flex(), 6)
        .unwrap()
        .flat_params()
        .unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn layout_is_path_ordered_stage_by_stage() {
    let model = Model::new(&common::tiny_gpt(10), &common::flex(), 0).unwrap();
    let entries = model.layout().entries();
    assert_eq!(entries.first().unwrap().path, "0.Embed.position.weight");
    for pair in entries.windows(2) {
        assert!((pair[0].stage, &pair[0].path) < (pair[1].stage, &pair[1].path));
        assert_eq!(pair[0].offset + pair[0].len(), pair[1].offset);
    }
}

#[test]
fn fingerprints_differ_across_architectures() {
    let fp = |spec: &ModelSpec| Model::new(spec, &common::flex(), 0).unwrap().fingerprint();
    let mlp = fp(&ModelKind::MlpDigits.spec(0));
    let gpt = fp(&ModelKind::CharGpt.spec(66));
    let gpt_other_vocab = fp(&ModelKind::CharGpt.spec(65));
    let tiny = fp(&common::tiny_gpt(66));
    assert_ne!(mlp, gpt);
    assert_ne!(gpt, gpt_other_vocab);
    assert_ne!(gpt, tiny);
    // Stable within a process and independent of the seed (ParamIds differ every build).
    assert_eq!(
        gpt,
        Model::new(&ModelKind::CharGpt.spec(66), &common::flex(), 9)
            .unwrap()
            .fingerprint()
    );
}

/// Printed by the child process of `fingerprint_matches_in_another_process`.
#[test]
#[ignore = "run as a child process by fingerprint_matches_in_another_process"]
fn print_fingerprint_for_parent() {
    let model = Model::new(&ModelKind::CharGpt.spec(66), &common::flex(), 0).unwrap();
    println!("FINGERPRINT={}", hex(&model.fingerprint()));
}

#[test]
fn fingerprint_matches_in_another_process() {
    let here = hex(
        &Model::new(&ModelKind::CharGpt.spec(66), &common::flex(), 0)
            .unwrap()
            .fingerprint(),
    );
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "print_fingerprint_for_parent",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let child = stdout
        .lines()
        .find_map(|l| l.split("FINGERPRINT=").nth(1).map(str::trim))
        .unwrap_or_else(|| panic!("child printed no fingerprint: {stdout}"));
    assert_eq!(child, here);
}
