//! [`Model`]: a network with its flat-parameter layout, and stage-range execution.
//!
//! Any contiguous range of stages runs on its own:
//! * [`Model::forward_range`] — inference forward of a range;
//! * [`Model::forward_kept`] and [`Model::backward_kept`] — a tracked forward whose graph is
//!   held until the backward from the gradient w.r.t. its output, which gives the gradient
//!   w.r.t. its input and the range's parameter gradients (flat, layout order);
//! * [`Model::backward_range`] — the same backward from the range's input alone, recomputing
//!   the forward (for when activations do not fit);
//! * [`Model::loss_backward_range`] — the same for a range ending at the last stage, from targets.
//!
//! A graph is consumed by its one backward (there is no `retain_graph`). Backpropagating a
//! given output gradient uses `(y * g).sum().backward()` with `g` constant.

mod range;

pub use range::KeptForward;
pub(crate) use range::{cross_entropy, scalar};

use std::ops::Range;

use burn::tensor::{Device, Tensor};

use crate::init::initial_values;
use crate::network::{Network, StageError};
use crate::params::{
    ParamError, ParamLayout, WriteMode, read_params, read_params_into, write_params,
};
use crate::spec::{ModelSpec, SpecError, StageCost};

/// Building or running a model failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Bad specification.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A stage rejected its input, or a bad range.
    #[error(transparent)]
    Stage(#[from] StageError),
    /// A flat vector did not fit.
    #[error(transparent)]
    Params(#[from] ParamError),
    /// Targets do not match the logits.
    #[error("{0}")]
    Targets(String),
    /// A tensor could not be read back from the device.
    #[error("reading a tensor back from the device failed")]
    Read(#[source] burn::tensor::DataError),
}

/// Gradients of a stage range.
#[derive(Debug, Clone)]
pub struct RangeGrads {
    /// Gradient w.r.t. the range's input (`None` when the input is token ids).
    pub input_grad: Option<Tensor<3>>,
    /// Parameter gradients of the range, flat in layout order.
    pub params: Vec<f32>,
}

/// A network on an autodiff device, with its flat layout.
#[derive(Debug, Clone)]
pub struct Model {
    spec: ModelSpec,
    network: Network,
    layout: ParamLayout,
    device: Device,
}

impl Model {
    /// Builds `spec` on `device` (autodiff is added) and initialises it from `seed`.
    pub fn new(spec: &ModelSpec, device: &Device, seed: u64) -> Result<Self, ModelError> {
        let device = device.clone().autodiff();
        let network = spec.build_network(&device)?;
        let layout = ParamLayout::of(&network);
        let values = initial_values(&layout, seed);
        let stages = 0..network.stages.len();
        let network = write_params(network, &layout, stages, &values, WriteMode::Set)?;
        Ok(Self {
            spec: spec.clone(),
            network,
            layout,
            device,
        })
    }

    /// The architecture.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }
    /// The flat layout.
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }
    /// The (autodiff) device.
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// The device without autodiff, where activations for [`Self::forward_range`] live.
    pub fn inner_device(&self) -> Device {
        self.device.clone().inner()
    }
    /// Number of stages.
    pub fn num_stages(&self) -> usize {
        self.network.stages.len()
    }
    /// Number of scalar parameters.
    pub fn param_count(&self) -> usize {
        self.layout.total()
    }
    /// Architecture fingerprint (see [`ParamLayout::fingerprint`]).
    pub fn fingerprint(&self) -> [u8; 32] {
        self.layout.fingerprint()
    }
    /// Cost estimate per stage.
    pub fn stage_costs(&self) -> Vec<StageCost> {
        self.spec.stage_costs()
    }
    pub(crate) fn network(&self) -> &Network {
        &self.network
    }
    pub(crate) fn take_network(&mut self) -> Network {
        std::mem::replace(&mut self.network, Network { stages: Vec::new() })
    }
    pub(crate) fn put_network(&mut self, network: Network) {
        self.network = network;
    }

    /// All parameters, flat.
    pub fn flat_params(&self) -> Result<Vec<f32>, ModelError> {
        self.flat_params_range(0..self.num_stages())
    }
    /// All parameters, flat, into `out` (its allocation reused: no fresh model-sized vector
    /// per read).
    pub fn flat_params_into(&self, out: &mut Vec<f32>) -> Result<(), ModelError> {
        Ok(read_params_into(
            &self.network,
            &self.layout,
            0..self.num_stages(),
            out,
        )?)
    }
    /// Parameters of `stages`, flat.
    pub fn flat_params_range(&self, stages: Range<usize>) -> Result<Vec<f32>, ModelError> {
        self.check_range(&stages)?;
        Ok(read_params(&self.network, &self.layout, stages)?)
    }
    /// Replaces all parameters.
    pub fn set_flat_params(&mut self, values: &[f32]) -> Result<(), ModelError> {
        self.write(0..self.num_stages(), values, WriteMode::Set)
    }
    /// Replaces the parameters of `stages`.
    pub fn set_flat_params_range(
        &mut self,
        stages: Range<usize>,
        values: &[f32],
    ) -> Result<(), ModelError> {
        self.write(stages, values, WriteMode::Set)
    }
    /// Adds `scale * delta` to all parameters.
    pub fn add_flat_delta(&mut self, delta: &[f32], scale: f32) -> Result<(), ModelError> {
        self.write(0..self.num_stages(), delta, WriteMode::Add(scale))
    }
    /// Adds `scale * delta` to the parameters of `stages`.
    pub fn add_flat_delta_range(
        &mut self,
        stages: Range<usize>,
        delta: &[f32],
        scale: f32,
    ) -> Result<(), ModelError> {
        self.write(stages, delta, WriteMode::Add(scale))
    }

    fn write(
        &mut self,
        stages: Range<usize>,
        values: &[f32],
        mode: WriteMode,
    ) -> Result<(), ModelError> {
        self.check_range(&stages)?;
        let network = self.take_network();
        let keep = network.clone();
        match write_params(network, &self.layout, stages, values, mode) {
            Ok(network) => self.network = network,
            Err(err) => {
                self.network = keep;
                return Err(err.into());
            }
        }
        Ok(())
    }

    pub(crate) fn check_range(&self, stages: &Range<usize>) -> Result<(), StageError> {
        let len = self.num_stages();
        if stages.start >= stages.end || stages.end > len {
            return Err(StageError::BadRange {
                start: stages.start,
                end: stages.end,
                len,
            });
        }
        Ok(())
    }
}
