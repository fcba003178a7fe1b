//! What a [`super::Trainer`] is built from and reports: hyper-parameters, step and evaluation
//! figures, errors, and how a model kind is sized for (and checked against) its data.

use serde::{Deserialize, Serialize};

use crate::checkpoint::CheckpointError;
use crate::data::{DataError, DataShape, DataSplit, digits, shakespeare};
use crate::model::ModelError;
use crate::params::ParamError;
use crate::spec::{GptConfig, MlpConfig, ModelKind, ModelSpec};
use crate::wire::WireError;

/// Training hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warmup steps.
    pub warmup_steps: u64,
    /// Steps of the cosine schedule (the rate stays at its minimum afterwards).
    pub total_steps: u64,
    /// Final rate as a fraction of `lr`.
    pub min_lr_ratio: f64,
    /// Decoupled weight decay (matrices only).
    pub weight_decay: f64,
    /// Clip the global gradient norm to this, if set.
    pub grad_clip: Option<f32>,
    /// Samples per step.
    pub batch_size: usize,
    /// Seed for initialisation and shuffling.
    pub seed: u64,
    /// Most held-out samples [`super::Trainer::evaluate`] looks at.
    pub eval_samples: usize,
}

impl TrainConfig {
    /// The learning rate of step `step` (0-based) under this schedule.
    pub fn lr_at_step(&self, step: u64) -> f64 {
        crate::optim::lr_at(
            self.lr,
            self.warmup_steps,
            self.total_steps,
            self.min_lr_ratio,
            step,
        )
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            warmup_steps: 20,
            total_steps: 1000,
            min_lr_ratio: 0.1,
            weight_decay: 0.01,
            grad_clip: Some(1.0),
            batch_size: 32,
            seed: 0,
            eval_samples: 512,
        }
    }
}

/// One step's figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Training loss of the batch (before the update).
    pub loss: f32,
    /// Learning rate used.
    pub lr: f64,
    /// Samples in the batch.
    pub samples: usize,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
}

/// Held-out figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalStats {
    /// Mean cross-entropy (nats).
    pub loss: f32,
    /// Classification accuracy (classification data only).
    pub accuracy: Option<f32>,
    /// `exp(loss)` (text data only).
    pub perplexity: Option<f32>,
    /// Samples evaluated.
    pub samples: usize,
}

/// Training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Model construction or execution.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Data loading.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Flat vectors.
    #[error(transparent)]
    Params(#[from] ParamError),
    /// Batch conversion.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// Checkpoint bytes.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Model and data do not fit together, or there is no data.
    #[error("{0}")]
    Mismatch(String),
    /// The loss became NaN or infinite.
    #[error("training diverged: loss is {0}")]
    Diverged(f32),
}

/// The built-in data set of a model kind (`digits` or Shakespeare at the preset's context).
pub fn builtin_data(kind: ModelKind) -> Result<DataSplit, DataError> {
    match kind {
        ModelKind::MlpDigits => digits(),
        ModelKind::CharGpt => shakespeare(GptConfig::small(0).context),
        ModelKind::CharGptLarge => shakespeare(GptConfig::large(0).context),
        ModelKind::CharGptDeep => shakespeare(GptConfig::deep(0).context),
    }
}

/// The architecture of `kind` sized for data of `shape`.
pub fn spec_for(kind: ModelKind, shape: DataShape) -> Result<ModelSpec, TrainError> {
    match (kind, shape) {
        (
            ModelKind::MlpDigits,
            DataShape::Classes {
                n_features,
                n_classes,
            },
        ) => Ok(ModelSpec::Mlp(MlpConfig {
            widths: vec![n_features, 128, 128, n_classes],
        })),
        (
            ModelKind::CharGpt | ModelKind::CharGptLarge | ModelKind::CharGptDeep,
            DataShape::Text { vocab, context },
        ) => {
            let mut spec = kind.spec(vocab);
            if let ModelSpec::Gpt(c) = &mut spec {
                c.context = c.context.max(context);
            }
            Ok(spec)
        }
        (kind, shape) => Err(TrainError::Mismatch(format!(
            "{kind} cannot train on {shape:?}"
        ))),
    }
}

pub(super) fn check_fit(spec: &ModelSpec, shape: DataShape) -> Result<(), TrainError> {
    let ok = match (spec, shape) {
        (
            ModelSpec::Mlp(c),
            DataShape::Classes {
                n_features,
                n_classes,
            },
        ) => c.widths.first() == Some(&n_features) && c.widths.last() == Some(&n_classes),
        (ModelSpec::Gpt(c), DataShape::Text { vocab, context }) => {
            c.vocab == vocab && c.context >= context
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(TrainError::Mismatch(format!(
            "model {spec:?} does not fit data {shape:?}"
        )))
    }
}
