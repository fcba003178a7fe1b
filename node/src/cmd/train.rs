//! `murmur train`: a single-node training run on this machine.
//!
//! This is the default job of `murmur` until a peer-to-peer run is asked for: it picks a
//! device, loads the embedded data set of the chosen model (or the user's CSV / text file),
//! trains with periodic held-out evaluation, and ends with a summary and one JSON line
//! that scripts can parse.

use std::path::PathBuf;
use std::time::Instant;

use crate::cmd::node::config::{at_least, invalid};
use crate::cmd::node::{ConfigError, defaults};
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
    #[arg(long, default_value_t = defaults::BATCH_SIZE)]
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
    /// Train on part I of N of the training set (every N-th sample from the I-th), written
    /// `I/N`.
    #[arg(long, alias = "shard", value_parser = parse_data_part)]
    pub data_part: Option<(usize, usize)>,
}

/// Parses `I/N`, a part of the data set (`--data-part`).
pub(crate) fn parse_data_part(s: &str) -> Result<(usize, usize), String> {
    let (i, n) = s.split_once('/').ok_or("expected I/N, e.g. 0/4")?;
    let i: usize = i
        .trim()
        .parse()
        .map_err(|_| format!("bad data part index {i:?}"))?;
    let n: usize = n
        .trim()
        .parse()
        .map_err(|_| format!("bad data part count {n:?}"))?;
    if n == 0 || i >= n {
        return Err(format!("data part {i}/{n} out of range"));
    }
    Ok((i, n))
}

/// The validated configuration of `murmur train`: every default applied (those of
/// `murmur node`'s gossip mode, [`crate::cmd::node::defaults`]) and every number checked.
#[derive(Debug, Clone)]
pub struct TrainRunConfig {
    /// The model trained.
    pub model: ModelKind,
    /// The compute device.
    pub device: DeviceChoice,
    /// The user's data file (default: the embedded set).
    pub data: Option<PathBuf>,
    /// The CSV file has a header row.
    pub csv_header: bool,
    /// Optimizer steps (≥ 1).
    pub steps: u64,
    /// Samples per step (≥ 1).
    pub batch_size: usize,
    /// Peak learning rate (positive, finite).
    pub lr: f64,
    /// Initialisation and shuffling seed.
    pub seed: u64,
    /// Evaluate every this many steps (≥ 1).
    pub eval_every: u64,
    /// Stop once held-out accuracy reaches this fraction (in (0, 1]).
    pub target_accuracy: Option<f32>,
    /// Train on part I of N of the training set (I < N).
    pub data_part: Option<(usize, usize)>,
}

impl TrainRunConfig {
    /// Validates the raw flags and applies the defaults.
    pub fn from_args(a: &TrainArgs) -> Result<Self, ConfigError> {
        let is_mlp = matches!(a.model, ModelKind::MlpDigits);
        let (steps, lr) = match is_mlp {
            true => (defaults::STEPS_MLP, defaults::LR_MLP),
            false => (defaults::STEPS_GPT, defaults::LR_GPT),
        };
        let lr = a.lr.unwrap_or(lr);
        if !(lr.is_finite() && lr > 0.0) {
            return Err(invalid("--lr", lr, "a positive finite number"));
        }
        if let Some(t) = a.target_accuracy
            && !(t > 0.0 && t <= 1.0)
        {
            return Err(invalid("--target-accuracy", t, "a fraction in (0, 1]"));
        }
        if let Some((i, n)) = a.data_part
            && i >= n
        {
            let expected = "I/N with I < N, e.g. 0/4";
            return Err(invalid("--data-part", format!("{i}/{n}"), expected));
        }
        Ok(Self {
            model: a.model,
            device: a.device,
            data: a.data.clone(),
            csv_header: a.csv_header,
            steps: at_least("--steps", a.steps.unwrap_or(steps), 1)?,
            batch_size: at_least("--batch-size", a.batch_size, 1)?,
            lr,
            seed: a.seed,
            eval_every: at_least("--eval-every", a.eval_every, 1)?,
            target_accuracy: a.target_accuracy,
            data_part: a.data_part,
        })
    }
}

/// Runs a local training job and prints progress, a summary and a JSON line.
pub fn run(args: &TrainArgs) -> anyhow::Result<()> {
    let config = TrainRunConfig::from_args(args).context("invalid `murmur train` flags")?;
    let selected = select_device(config.device).context("selecting a compute device")?;
    println!("device: {selected}");
    let data = load_split(config.model, config.data.as_deref(), config.csv_header)?;
    let train_set = match config.data_part {
        Some((i, n)) => data.train.part(i, n)?,
        None => data.train,
    };
    let spec = spec_for(config.model, train_set.shape())?;
    let steps = config.steps;
    let train = TrainConfig {
        lr: config.lr,
        total_steps: steps,
        batch_size: config.batch_size,
        seed: config.seed,
        ..TrainConfig::default()
    };
    println!(
        "model: {} ({} parameters), {} training / {} held-out samples, {steps} steps",
        config.model,
        spec.param_count(),
        train_set.len(),
        data.test.len()
    );
    let mut trainer = Trainer::new(&spec, train_set, data.test, train, &selected.device)?;
    let started = Instant::now();
    let (loss, eval) = train_loop(&config, &mut trainer, started)?;
    let secs = started.elapsed().as_secs_f64();
    let summary = serde_json::json!({
        "model": config.model.to_string(),
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

/// Trains with periodic evaluation until the step budget or the target accuracy; returns
/// the last training loss and evaluation.
fn train_loop(
    config: &TrainRunConfig,
    trainer: &mut Trainer,
    started: Instant,
) -> anyhow::Result<(f32, EvalStats)> {
    let mut last = None;
    let mut loss = f32::NAN;
    for step in 1..=config.steps {
        loss = trainer.step()?.loss;
        if step % config.eval_every == 0 || step == config.steps {
            let eval = trainer.evaluate()?;
            print_progress(step, loss, &eval, trainer.samples_seen(), started);
            last = Some(eval);
            let reached = config
                .target_accuracy
                .zip(eval.accuracy)
                .is_some_and(|(target, acc)| acc >= target);
            if reached {
                println!("target accuracy reached at step {step}");
                break;
            }
        }
    }
    match last {
        Some(eval) => Ok((loss, eval)),
        None => bail!("no step was run"),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::{Command, parse_args};

    fn args(flags: &[&str]) -> TrainArgs {
        let argv = ["murmur", "train"].iter().chain(flags).copied();
        match parse_args(argv).unwrap().command {
            Some(Command::Train(args)) => args,
            other => panic!("not `train`: {other:?}"),
        }
    }

    fn config(flags: &[&str]) -> Result<TrainRunConfig, ConfigError> {
        TrainRunConfig::from_args(&args(flags))
    }

    #[test]
    fn defaults_are_those_of_a_gossip_node() {
        let mlp = config(&[]).unwrap();
        assert_eq!((mlp.steps, mlp.lr), (defaults::STEPS_MLP, defaults::LR_MLP));
        assert_eq!(mlp.batch_size, defaults::BATCH_SIZE);
        let gpt = config(&["--model", "char-gpt"]).unwrap();
        assert_eq!((gpt.steps, gpt.lr), (defaults::STEPS_GPT, defaults::LR_GPT));
        let given = config(&[
            "--data-part",
            "1/4",
            "--target-accuracy",
            "1",
            "--lr",
            "0.1",
        ]);
        let given = given.unwrap();
        assert_eq!(given.data_part, Some((1, 4)));
        assert_eq!(given.target_accuracy, Some(1.0));
        assert_eq!(given.lr, 0.1);
    }

    #[test]
    fn numbers_out_of_range_are_clear_errors() {
        for (flags, needle) in [
            (
                &["--lr", "0"][..],
                "--lr 0: expected a positive finite number",
            ),
            (&["--lr=-1"], "--lr -1"),
            (&["--lr", "nan"], "--lr NaN"),
            (&["--lr", "inf"], "--lr inf"),
            (&["--steps", "0"], "--steps 0: expected at least 1"),
            (&["--batch-size", "0"], "--batch-size 0"),
            (&["--eval-every", "0"], "--eval-every 0"),
            (&["--target-accuracy", "0"], "--target-accuracy 0"),
            (&["--target-accuracy", "1.5"], "--target-accuracy 1.5"),
            (&["--target-accuracy", "nan"], "--target-accuracy NaN"),
        ] {
            let err = config(flags).expect_err("refused").to_string();
            assert!(err.contains(needle), "{flags:?}: {err}");
        }
    }

    #[test]
    fn a_data_part_index_must_be_below_the_count() {
        let argv = ["murmur", "train", "--data-part", "4/4"];
        let err = parse_args(argv)
            .expect_err("refused by the parser")
            .to_string();
        assert!(err.contains("data part 4/4 out of range"), "{err}");
        let mut raw = args(&[]);
        raw.data_part = Some((2, 2));
        let err = TrainRunConfig::from_args(&raw).unwrap_err().to_string();
        assert!(
            err.contains("--data-part 2/2: expected I/N with I < N"),
            "{err}"
        );
    }

    #[test]
    fn the_old_shard_flag_still_names_the_data_part() {
        let new = config(&["--data-part", "1/2"]).unwrap();
        let old = config(&["--shard", "1/2"]).unwrap();
        assert_eq!((new.data_part, old.data_part), (Some((1, 2)), Some((1, 2))));
        let argv = ["murmur", "train", "--shard", "1/2", "--data-part", "0/2"];
        assert!(
            parse_args(argv).is_err(),
            "one flag under two names, given twice"
        );
    }
}
