//! One pipeline shard: a contiguous range of a model's stages, trained with micro-batches.
//!
//! A [`StageShard`] is pure compute with no I/O; the node moves its inputs and outputs between
//! peers. Per optimisation step, for each micro-batch `m`:
//!
//! * [`StageShard::forward`] runs the range on the micro-batch's input and keeps its graph
//!   (the range's activations for that micro-batch) until the backward;
//! * [`StageShard::backward`] takes the gradient w.r.t. the range's output, accumulates the
//!   range's parameter gradients and returns the gradient w.r.t. its input (for upstream);
//! * the last shard instead calls [`StageShard::loss_backward`] with the targets, scaling the
//!   loss by `1 / micro_batches` so the accumulated gradient is the full batch's mean.
//!
//! Then every shard applies [`StageShard::apply`] with the *global* gradient norm (the square
//! root of the sum of every shard's [`StageShard::grad_norm_sq`]), so clipping, learning rate and
//! AdamW match the whole-model [`crate::Trainer`] exactly, up to float rounding.

mod adam;

pub use adam::FlatAdamW;

use std::collections::HashMap;
use std::ops::Range;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::model::{KeptForward, Model, ModelError};
use crate::params::ParamError;
use crate::spec::ModelSpec;
use crate::trainer::TrainConfig;
use crate::wire::{WireActivation, WireError};

/// A shard operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// The model rejected the range or an input.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// An activation or gradient is malformed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A flat vector does not fit.
    #[error(transparent)]
    Params(#[from] ParamError),
    /// A backward arrived for a micro-batch this shard has no kept forward for.
    #[error("no forward kept for micro-batch {0}")]
    UnknownMicroBatch(u32),
    /// The loss is NaN or infinite.
    #[error("training diverged: loss is {0}")]
    Diverged(f32),
    /// Saved shard state does not match this shard.
    #[error("shard state mismatch: {0}")]
    State(String),
}

/// What a shard holds beyond the model architecture: its parameters and optimizer moments,
/// for snapshots sent to the other members and for moving a range to a new holder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardState {
    /// The stages held.
    pub range: Range<usize>,
    /// Optimisation steps applied.
    pub steps: u64,
    /// The range's parameters, flat in layout order.
    pub params: Vec<f32>,
    /// AdamW moments of those parameters.
    pub optim: FlatAdamW,
}

/// A contiguous range of stages with its optimizer and micro-batch bookkeeping.
#[derive(Debug)]
pub struct StageShard {
    model: Model,
    range: Range<usize>,
    config: TrainConfig,
    optim: FlatAdamW,
    decays: Vec<bool>,
    stash: HashMap<u32, KeptForward>,
    grads: Vec<f32>,
    steps: u64,
}

impl StageShard {
    /// The shard of `range` of the model `spec` initialised from `seed` (every holder of a
    /// range of the same run builds the same initial values).
    pub fn new(
        spec: &ModelSpec,
        device: &Device,
        range: Range<usize>,
        config: TrainConfig,
    ) -> Result<Self, ShardError> {
        let model = Model::new(spec, device, config.seed)?;
        model.check_range(&range).map_err(ModelError::from)?;
        let layout = model.layout();
        let span = layout.span(range.clone());
        let mut decays = vec![false; span.len()];
        for e in layout.entries().iter().filter(|e| range.contains(&e.stage)) {
            let at = e.offset - span.start;
            decays[at..at + e.len()].fill(e.shape.len() >= 2);
        }
        Ok(Self {
            grads: vec![0.0; span.len()],
            model,
            range,
            config,
            optim: FlatAdamW::default(),
            decays,
            stash: HashMap::new(),
            steps: 0,
        })
    }

    /// The stages held.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }
    /// Whether the range ends at the model's head (computes the loss).
    pub fn is_last(&self) -> bool {
        self.range.end == self.model.num_stages()
    }
    /// Optimisation steps applied.
    pub fn steps(&self) -> u64 {
        self.steps
    }
    /// The learning rate of the next update.
    pub fn current_lr(&self) -> f64 {
        self.config.lr_at_step(self.steps)
    }

    /// Forward of the range for micro-batch `micro`; keeps its graph for the backward, so
    /// the backward does not run the forward again (a non-last shard's step then costs what
    /// the capacity benchmark measured: one forward and one backward).
    pub fn forward(
        &mut self,
        micro: u32,
        input: WireActivation,
    ) -> Result<WireActivation, ShardError> {
        let device = self.model.inner_device();
        let (output, kept) = self
            .model
            .forward_kept(self.range.clone(), input.to_activation(&device)?)?;
        self.stash.insert(micro, kept);
        Ok(WireActivation::from_activation(&output)?)
    }

    /// Backward of micro-batch `micro` from the gradient w.r.t. the range's output; returns the
    /// gradient w.r.t. the range's input (`None` when the input is token ids).
    pub fn backward(
        &mut self,
        micro: u32,
        grad_output: &WireActivation,
    ) -> Result<Option<WireActivation>, ShardError> {
        let device = self.model.inner_device();
        let Some(grad) = grad_output.to_hidden(&device)? else {
            return Err(WireError::NotHidden.into());
        };
        let kept = self
            .stash
            .remove(&micro)
            .ok_or(ShardError::UnknownMicroBatch(micro))?;
        let grads = self.model.backward_kept(kept, grad)?;
        self.accumulate(&grads.params, 1.0);
        grads
            .input_grad
            .map(|g| WireActivation::from_activation(&crate::Activation::Hidden(g.inner())))
            .transpose()
            .map_err(ShardError::from)
    }

    /// Loss and backward of micro-batch `micro` on the last shard; gradients are scaled by
    /// `scale` (`1 / micro_batches`). Returns the micro-batch's mean loss and the scaled
    /// gradient w.r.t. the range's input.
    pub fn loss_backward(
        &mut self,
        input: WireActivation,
        targets: &[u32],
        scale: f32,
    ) -> Result<(f32, Option<WireActivation>), ShardError> {
        let device = self.model.inner_device();
        let (loss, grads) = self.model.loss_backward_range(
            self.range.clone(),
            input.to_activation(&device)?,
            targets,
        )?;
        if !loss.is_finite() {
            return Err(ShardError::Diverged(loss));
        }
        self.accumulate(&grads.params, scale);
        let input_grad = grads
            .input_grad
            .map(|g| WireActivation::from_activation(&crate::Activation::Hidden(g.inner() * scale)))
            .transpose()?;
        Ok((loss, input_grad))
    }

    fn accumulate(&mut self, grads: &[f32], scale: f32) {
        for (acc, g) in self.grads.iter_mut().zip(grads) {
            *acc += g * scale;
        }
    }

    /// Squared L2 norm of the gradients accumulated since the last [`Self::apply`].
    pub fn grad_norm_sq(&self) -> f64 {
        self.grads
            .iter()
            .map(|&g| f64::from(g) * f64::from(g))
            .sum()
    }

    /// Applies one AdamW update with the accumulated gradients, clipped by the whole model's
    /// gradient norm `global_norm` as the trainer does, then clears them. Returns the learning
    /// rate used.
    pub fn apply(&mut self, global_norm: f32) -> Result<f64, ShardError> {
        let lr = self.current_lr();
        let scale = match self.config.grad_clip {
            Some(c) if c > 0.0 && global_norm > c => f64::from(c / global_norm),
            _ => 1.0,
        };
        let mut params = self.model.flat_params_range(self.range.clone())?;
        self.optim.update(
            &mut params,
            &self.grads,
            &self.decays,
            lr,
            self.config.weight_decay,
            scale,
        );
        self.model
            .set_flat_params_range(self.range.clone(), &params)?;
        self.grads.fill(0.0);
        self.stash.clear();
        self.steps += 1;
        Ok(lr)
    }

    /// Drops the kept micro-batch forwards and gradients of an unfinished step (after a
    /// re-plan).
    pub fn discard_step(&mut self) {
        self.grads.fill(0.0);
        self.stash.clear();
    }

    /// Parameters and optimizer state of the range.
    pub fn state(&self) -> Result<ShardState, ShardError> {
        Ok(ShardState {
            range: self.range.clone(),
            steps: self.steps,
            params: self.model.flat_params_range(self.range.clone())?,
            optim: self.optim.clone(),
        })
    }

    /// The range's parameters, flat in layout order.
    pub fn params(&self) -> Result<Vec<f32>, ShardError> {
        Ok(self.model.flat_params_range(self.range.clone())?)
    }

    /// Replaces the range's parameters (e.g. with the average of its replicas); optimizer
    /// moments and the step count stay.
    pub fn set_params(&mut self, params: &[f32]) -> Result<(), ShardError> {
        if params.len() != self.grads.len() {
            return Err(ShardError::State(format!(
                "{} parameters for a range of {}",
                params.len(),
                self.grads.len()
            )));
        }
        self.model
            .set_flat_params_range(self.range.clone(), params)?;
        Ok(())
    }

    /// Adopts `state` (same range): parameters, moments and step count.
    pub fn restore(&mut self, state: &ShardState) -> Result<(), ShardError> {
        if state.range != self.range {
            return Err(ShardError::State(format!(
                "state of stages {:?}, this shard holds {:?}",
                state.range, self.range
            )));
        }
        let n = self.grads.len();
        let optim_ok = state.optim.m.is_empty() || state.optim.m.len() == n;
        if state.params.len() != n || !optim_ok || state.optim.m.len() != state.optim.v.len() {
            return Err(ShardError::State("vector lengths do not match".into()));
        }
        self.model
            .set_flat_params_range(self.range.clone(), &state.params)?;
        self.optim = state.optim.clone();
        self.steps = state.steps;
        self.discard_step();
        Ok(())
    }

    /// Adopts the parameters and moments of `states`, which together must cover this shard's
    /// range exactly (in order), e.g. the snapshots of the ranges of a departed peer and
    /// of this peer's old range after a re-plan.
    pub fn restore_from_parts(&mut self, states: &[ShardState]) -> Result<(), ShardError> {
        let layout = self.model.layout();
        let mut merged = ShardState {
            range: self.range.clone(),
            steps: states.first().map_or(0, |s| s.steps),
            params: Vec::with_capacity(self.grads.len()),
            optim: FlatAdamW {
                steps: 0,
                m: Vec::new(),
                v: Vec::new(),
            },
        };
        let mut next = self.range.start;
        for part in states {
            let start = part.range.start.max(next);
            if start != next || part.range.end <= start {
                return Err(ShardError::State(format!(
                    "part {:?} does not continue at stage {next}",
                    part.range
                )));
            }
            let end = part.range.end.min(self.range.end);
            let base = layout.span(part.range.clone()).start;
            let span = layout.span(start..end);
            let local = span.start - base..span.end - base;
            let take = |v: &[f32]| v.get(local.clone()).map(<[f32]>::to_vec);
            merged.params.extend(
                take(&part.params)
                    .ok_or_else(|| ShardError::State("part params too short".into()))?,
            );
            let zeros = vec![0.0; local.len()];
            merged
                .optim
                .m
                .extend(take(&part.optim.m).unwrap_or_else(|| zeros.clone()));
            merged.optim.v.extend(take(&part.optim.v).unwrap_or(zeros));
            merged.optim.steps = merged.optim.steps.max(part.optim.steps);
            next = end;
            if next == self.range.end {
                break;
            }
        }
        if next != self.range.end {
            return Err(ShardError::State(format!(
                "parts end at stage {next}, shard ends at {}",
                self.range.end
            )));
        }
        self.restore(&merged)
    }
}
