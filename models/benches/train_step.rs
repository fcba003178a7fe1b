//! Training-step throughput: ms/step and samples/s for `mlp-digits` and both `char-gpt` presets,
//! on `flex` and on wgpu (a real GPU, else the lavapipe software adapter) where one is present.
//!
//! `cargo bench -p murmur-models` (plain `main`, no harness). `MURMUR_BENCH_QUICK=1` shortens it.
//! The large preset is skipped on software adapters, where one step takes minutes.

use std::time::Instant;

use burn::tensor::Device;
use murmur_models::{
    DeviceChoice, DeviceClass, ModelKind, SelectedDevice, TrainConfig, Trainer, builtin_data,
    select_device, spec_for,
};

#[derive(Debug, Clone, Copy)]
struct Case {
    kind: ModelKind,
    batch: usize,
    warmup: usize,
    steps: usize,
}

fn run(case: &Case, device: &Device, label: &str) {
    let data = match builtin_data(case.kind) {
        Ok(d) => d,
        Err(e) => return println!("{:<16} {label:<28} data error: {e}", case.kind.to_string()),
    };
    let spec = match spec_for(case.kind, data.train.shape()) {
        Ok(s) => s,
        Err(e) => return println!("{:<16} {label:<28} spec error: {e}", case.kind.to_string()),
    };
    let config = TrainConfig {
        batch_size: case.batch,
        total_steps: 10_000,
        ..TrainConfig::default()
    };
    let mut trainer = match Trainer::new(&spec, data.train, data.test, config, device) {
        Ok(t) => t,
        Err(e) => return println!("{:<16} {label:<28} error: {e}", case.kind.to_string()),
    };
    for _ in 0..case.warmup {
        if let Err(e) = trainer.step() {
            return println!("{:<16} {label:<28} step error: {e}", case.kind.to_string());
        }
    }
    let start = Instant::now();
    let mut samples = 0;
    for _ in 0..case.steps {
        match trainer.step() {
            Ok(s) => samples += s.samples,
            Err(e) => return println!("{:<16} {label:<28} step error: {e}", case.kind.to_string()),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{:<16} {label:<28} params {:>10}  batch {:>3}  {:>10.2} ms/step  {:>9.1} samples/s  ({} steps)",
        case.kind.to_string(),
        trainer.param_count(),
        case.batch,
        1000.0 * secs / case.steps as f64,
        samples as f64 / secs,
        case.steps
    );
}

fn main() {
    let quick = std::env::var("MURMUR_BENCH_QUICK").is_ok_and(|v| v == "1");
    let scale = |n: usize| if quick { n.div_ceil(4).max(1) } else { n };
    let cases = [
        Case {
            kind: ModelKind::MlpDigits,
            batch: 32,
            warmup: 20,
            steps: scale(200),
        },
        Case {
            kind: ModelKind::CharGpt,
            batch: 32,
            warmup: 3,
            steps: scale(20),
        },
        Case {
            kind: ModelKind::CharGptLarge,
            batch: 8,
            warmup: 1,
            steps: scale(3).min(3),
        },
    ];
    let mut devices: Vec<SelectedDevice> = Vec::new();
    if let Ok(flex) = select_device(DeviceChoice::Flex) {
        devices.push(flex);
    }
    match select_device(DeviceChoice::Gpu).or_else(|_| select_device(DeviceChoice::WgpuCpu)) {
        Ok(d) => devices.push(d),
        Err(e) => println!("no wgpu device: {e}"),
    }
    println!(
        "murmur-models train_step bench (threads: {})",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for selected in &devices {
        let label = selected.info.name.clone();
        for case in &cases {
            let software = selected.info.kind == DeviceClass::Cpu;
            if software && case.kind == ModelKind::CharGptLarge {
                println!(
                    "{:<16} {label:<28} skipped: a step takes minutes on a software adapter",
                    case.kind.to_string()
                );
                continue;
            }
            let mut case = *case;
            if software {
                case.steps = case.steps.div_ceil(4).max(2);
            }
            run(&case, &selected.device, &label);
        }
    }
}
