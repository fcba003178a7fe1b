//! `murmur train`: a single-node training run on this machine.
//!
//! This is the default job of `murmur` until a peer-to-peer run is asked for: it picks a
//! device, loads the embedded data set of the chosen model (or the user's CSV / text file),
//! trains with periodic held-out evaluation, and ends with a summary and one JSON line
//! that scripts can parse.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use murmur_models::data::{CsvOptions, read_csv_file, read_text_file};
use murmur_models::{
    DataSplit, DeviceChoice, EvalStats, ModelKind, TrainConfig, Trainer, builtin_data,
    select_device, spec_for,
};

/// Flags of `murmur train`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// Model: mlp-digits, char-gpt or char-gpt-large.
    #[arg(long, default_value = "mlp-digits", env = "MURMUR_MODEL")]
    pub model: ModelKind,
    /// Compute device: auto, gpu, wgpu-cpu or flex.
    #[arg(long, default_value = "auto", env = "MURMUR_DEVICE")]
    pub device: DeviceChoice,
    /// Your own data: a `.csv` file (features then a label column) for mlp-digits,
    /// any UTF-8 text file for char-gpt. Default: the embedded data set.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The CSV file has a header row.
    #[arg(long)]
    pub csv_header: bool,
    /// Optimizer steps (default: 1500 for mlp-digits, 300 for char-gpt).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Samples per step.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Peak learning rate (default: 3e-3 for mlp-digits, 1e-3 for char-gpt).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Seed for initialisation and shuffling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Evaluate on held-out data every this many steps.
    #[arg(long, default_value_t = 100)]
    pub eval_every: u64,
    /// Stop early once held-out accuracy reaches this fraction (classification only).
    #[arg(long)]
    pub target_accuracy: Option<f32>,
    /// Train on shard I of N of the training set, written `I/N`.
    #[arg(long, value_parser = parse_shard)]
    pub shard: Option<(usize, usize)>,
}

pub(crate) fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let (i, n) = s.split_once('/').ok_or("expected I/N, e.g. 0/4")?;
    let i: usize = i
        .trim()
        .parse()
        .map_err(|_| format!("bad shard index {i:?}"))?;
    let n: usize = n
        .trim()
        .parse()
        .map_err(|_| format!("bad shard count {n:?}"))?;
    if n == 0 || i >= n {
        return Err(format!("shard {i}/{n} out of range"));
    }
    Ok((i, n))
}

/// Runs a local training job and prints progress, a summary and a JSON line.
pub fn run(args: &TrainArgs) -> anyhow::Result<()> {
    let selected = select_device(args.device).context("selecting a compute device")?;
    println!("device: {selected}");
    let data = load_data(args)?;
    let train_set = match args.shard {
        Some((i, n)) => data.train.shard(i, n)?,
        None => data.train,
    };
    let spec = spec_for(args.model, train_set.shape())?;
    let is_mlp = matches!(args.model, ModelKind::MlpDigits);
    let steps = args.steps.unwrap_or(if is_mlp { 1500 } else { 300 });
    let config = TrainConfig {
        lr: args.lr.unwrap_or(if is_mlp { 3e-3 } else { 1e-3 }),
        total_steps: steps,
        batch_size: args.batch_size,
        seed: args.seed,
        ..TrainConfig::default()
    };
    println!(
        "model: {} ({} parameters), {} training / {} held-out samples, {steps} steps",
        args.model,
        spec.param_count(),
        train_set.len(),
        data.test.len()
    );
    let mut trainer = Trainer::new(&spec, train_set, data.test, config, &selected.device)?;
    let started = Instant::now();
    let mut last = None;
    let mut loss = f32::NAN;
    for step in 1..=steps {
        loss = trainer.step()?.loss;
        if step % args.eval_every.max(1) == 0 || step == steps {
            let eval = trainer.evaluate()?;
            print_progress(step, loss, &eval, trainer.samples_seen(), started);
            last = Some(eval);
            let reached = args
                .target_accuracy
                .zip(eval.accuracy)
                .is_some_and(|(target, acc)| acc >= target);
            if reached {
                println!("target accuracy reached at step {step}");
                break;
            }
        }
    }
    let Some(eval) = last else {
        bail!("no step was run")
    };
    let secs = started.elapsed().as_secs_f64();
    let summary = serde_json::json!({
        "model": args.model.to_string(),
        "device": selected.info.name,
        "steps": trainer.steps_done(),
        "samples": trainer.samples_seen(),
        "seconds": secs,
        "samples_per_sec": trainer.samples_seen() as f64 / secs.max(1e-9),
        "train_loss": loss,
        "test_loss": eval.loss,
        "test_accuracy": eval.accuracy,
        "test_perplexity": eval.perplexity,
    });
    println!(
        "done: {} steps in {secs:.1} s on {}",
        trainer.steps_done(),
        selected.info.name
    );
    println!("{summary}");
    Ok(())
}

fn load_data(args: &TrainArgs) -> anyhow::Result<DataSplit> {
    load_split(args.model, args.data.as_deref(), args.csv_header)
}

/// The embedded data set of `model`, or the user's CSV / text file.
pub(crate) fn load_split(
    model: ModelKind,
    data: Option<&std::path::Path>,
    csv_header: bool,
) -> anyhow::Result<DataSplit> {
    let Some(path) = data else {
        return Ok(builtin_data(model)?);
    };
    let split = match model {
        ModelKind::MlpDigits => {
            let options = CsvOptions {
                has_header: csv_header,
                ..CsvOptions::default()
            };
            read_csv_file(path, &options)?
        }
        ModelKind::CharGpt | ModelKind::CharGptLarge | ModelKind::CharGptDeep => {
            let context = match model.spec(0) {
                murmur_models::ModelSpec::Gpt(c) => c.context,
                murmur_models::ModelSpec::Mlp(_) => 64,
            };
            read_text_file(path, context)?
        }
    };
    Ok(split)
}

fn print_progress(step: u64, loss: f32, eval: &EvalStats, samples: u64, started: Instant) {
    let rate = samples as f64 / started.elapsed().as_secs_f64().max(1e-9);
    let quality = match (eval.accuracy, eval.perplexity) {
        (Some(acc), _) => format!("test acc {:5.1}%", acc * 100.0),
        (None, Some(ppl)) => format!("test ppl {ppl:7.2}"),
        (None, None) => String::new(),
    };
    println!(
        "step {step:6}  train loss {loss:7.4}  test loss {:7.4}  {quality}  {rate:8.0} samples/s",
        eval.loss
    );
}
