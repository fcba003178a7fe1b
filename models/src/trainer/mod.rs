//! The local trainer the node owns on a dedicated thread: any [`ModelSpec`], a part of the data
//! set, AdamW with warmup + cosine schedule and gradient clipping, evaluation, flat-parameter
//! access for averaging, and checkpoints.

mod setup;

pub use setup::{EvalStats, StepStats, TrainConfig, TrainError, builtin_data, spec_for};

use burn::optim::GradientsParams;
use burn::tensor::Device;

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::data::{BatchStream, DataCursor, DataShape, Dataset};
use crate::model::{Model, ModelError, cross_entropy, scalar};
use crate::optim::AdamW;
use crate::spec::ModelSpec;
use crate::wire::WireError;
use setup::check_fit;

/// A model, its optimizer and its data.
#[derive(Debug)]
pub struct Trainer {
    model: Model,
    optim: AdamW,
    config: TrainConfig,
    train: Dataset,
    test: Dataset,
    stream: BatchStream,
    steps: u64,
    samples_seen: u64,
}

impl Trainer {
    /// A trainer for `spec` on `train` (this peer's part of the data), evaluated on `test`.
    pub fn new(
        spec: &ModelSpec,
        train: Dataset,
        test: Dataset,
        config: TrainConfig,
        device: &Device,
    ) -> Result<Self, TrainError> {
        check_fit(spec, train.shape())?;
        check_fit(spec, test.shape())?;
        if train.is_empty() {
            return Err(TrainError::Mismatch(
                "the training data part is empty".into(),
            ));
        }
        let model = Model::new(spec, device, config.seed)?;
        let stream = BatchStream::new(train.len(), config.seed);
        Ok(Self {
            model,
            optim: AdamW::default(),
            config,
            train,
            test,
            stream,
            steps: 0,
            samples_seen: 0,
        })
    }

    /// One optimisation step on the next batch.
    pub fn step(&mut self) -> Result<StepStats, TrainError> {
        let batch = self
            .train
            .batch(&self.stream.next_batch(self.config.batch_size));
        let input = batch.input.to_activation(&self.model.inner_device())?;
        let loss = self.model.loss_tracked(input, &batch.targets)?;
        let loss_value = scalar(&loss)?;
        if !loss_value.is_finite() {
            return Err(TrainError::Diverged(loss_value));
        }
        let grads = GradientsParams::from_grads(loss.backward(), self.model.network());
        let lr = self.current_lr();
        let network = self.model.take_network();
        let keep = network.clone();
        match self.optim.step(
            network,
            &grads,
            lr,
            self.config.weight_decay,
            self.config.grad_clip,
        ) {
            Ok((network, grad_norm)) => {
                self.model.put_network(network);
                self.steps += 1;
                self.samples_seen += batch.samples as u64;
                tracing::trace!(
                    step = self.steps,
                    loss = loss_value,
                    lr,
                    grad_norm,
                    "train step"
                );
                Ok(StepStats {
                    loss: loss_value,
                    lr,
                    samples: batch.samples,
                    grad_norm,
                })
            }
            Err(err) => {
                self.model.put_network(keep);
                Err(err.into())
            }
        }
    }

    /// Loss (and accuracy or perplexity) on up to `eval_samples` held-out samples.
    pub fn evaluate(&self) -> Result<EvalStats, TrainError> {
        let test = self.test.take(self.config.eval_samples.max(1));
        let device = self.model.inner_device();
        let (mut loss_sum, mut positions, mut correct) = (0.0f64, 0usize, 0usize);
        let chunk = self.config.batch_size.max(1) * 4;
        let all: Vec<usize> = (0..test.len()).collect();
        for ids in all.chunks(chunk) {
            let batch = test.batch(ids);
            let input = batch.input.to_activation(&device)?;
            let logits = self
                .model
                .forward_range(0..self.model.num_stages(), input)?
                .into_hidden("logits")
                .map_err(ModelError::from)?;
            let n = batch.targets.len();
            let predicted = logits
                .clone()
                .argmax(2)
                .into_data()
                .convert::<i64>()
                .try_into_vec::<i64>();
            let predicted = predicted.map_err(WireError::Read)?;
            correct += predicted
                .iter()
                .zip(&batch.targets)
                .filter(|(p, t)| **p == i64::from(**t))
                .count();
            loss_sum +=
                f64::from(scalar(&cross_entropy(logits, &batch.targets, &device)?)?) * n as f64;
            positions += n;
        }
        if positions == 0 {
            return Err(TrainError::Mismatch("the evaluation set is empty".into()));
        }
        let loss = (loss_sum / positions as f64) as f32;
        let text = matches!(self.test.shape(), DataShape::Text { .. });
        Ok(EvalStats {
            loss,
            accuracy: (!text).then_some(correct as f32 / positions as f32),
            perplexity: text.then_some(loss.exp()),
            samples: test.len(),
        })
    }

    /// All parameters, flat (path order).
    pub fn flat_params(&self) -> Result<Vec<f32>, TrainError> {
        Ok(self.model.flat_params()?)
    }
    /// All parameters, flat (path order), into `out` (its allocation reused).
    pub fn flat_params_into(&self, out: &mut Vec<f32>) -> Result<(), TrainError> {
        Ok(self.model.flat_params_into(out)?)
    }
    /// Replaces all parameters; the optimizer moments are kept.
    pub fn set_flat_params(&mut self, values: &[f32]) -> Result<(), TrainError> {
        Ok(self.model.set_flat_params(values)?)
    }
    /// Adds `scale * delta` to all parameters; the optimizer moments are kept.
    pub fn add_flat_delta(&mut self, delta: &[f32], scale: f32) -> Result<(), TrainError> {
        Ok(self.model.add_flat_delta(delta, scale)?)
    }
    /// Number of scalar parameters.
    pub fn param_count(&self) -> usize {
        self.model.param_count()
    }
    /// Architecture fingerprint.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.model.fingerprint()
    }
    /// Samples trained on so far.
    pub fn samples_seen(&self) -> u64 {
        self.samples_seen
    }
    /// Steps taken so far.
    pub fn steps_done(&self) -> u64 {
        self.steps
    }
    /// Learning rate the next step will use.
    pub fn current_lr(&self) -> f64 {
        self.config.lr_at_step(self.steps)
    }
    /// Where the data stream stands.
    pub fn cursor(&self) -> DataCursor {
        self.stream.cursor()
    }
    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }
    /// The model (for stage-range work and inspection).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Model, optimizer state, counters and data cursor as bytes.
    pub fn checkpoint(&self) -> Result<Vec<u8>, TrainError> {
        let ckpt = Checkpoint {
            spec: self.model.spec().clone(),
            fingerprint: self.fingerprint(),
            steps: self.steps,
            samples_seen: self.samples_seen,
            cursor: self.stream.cursor(),
            shuffle_seed: self.stream.seed(),
            params: self.flat_params()?,
            optimizer: self.optim.export(self.model.layout())?,
        };
        Ok(ckpt.encode()?)
    }

    /// Restores a [`Self::checkpoint`] taken from a trainer of the same architecture. On error
    /// the trainer is unchanged.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), TrainError> {
        let ckpt = Checkpoint::decode(bytes)?;
        if ckpt.fingerprint != self.fingerprint() || &ckpt.spec != self.model.spec() {
            return Err(CheckpointError::WrongModel.into());
        }
        let optim = AdamW::import(
            self.model.layout(),
            &ckpt.optimizer,
            &self.model.inner_device(),
        )?;
        self.model.set_flat_params(&ckpt.params)?;
        self.optim = optim;
        self.steps = ckpt.steps;
        self.samples_seen = ckpt.samples_seen;
        self.stream = BatchStream::resume(self.train.len(), ckpt.shuffle_seed, ckpt.cursor);
        Ok(())
    }
}
