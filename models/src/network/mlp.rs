//! The dense stage used by `mlp-digits`: `y = relu?(x W + b)` on `[batch, 1, width]`.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use super::{StageError, check_width};

/// A fully connected layer, ReLU after it unless it is the output layer.
#[derive(Module, Debug)]
pub struct DenseStage {
    /// Weight `[d_in, d_out]` and bias `[d_out]`.
    pub linear: Linear,
    /// Whether ReLU follows.
    #[module(skip)]
    pub relu: bool,
}

impl DenseStage {
    /// A `d_in → d_out` layer (weights are overwritten by the deterministic initializer).
    pub fn new(d_in: usize, d_out: usize, relu: bool, device: &Device) -> Self {
        Self {
            linear: LinearConfig::new(d_in, d_out).init(device),
            relu,
        }
    }

    /// `[b, t, d_in] → [b, t, d_out]`.
    pub fn forward(&self, x: Tensor<3>) -> Result<Tensor<3>, StageError> {
        let [d_in, _] = self.linear.weight.shape().dims();
        check_width("dense", &x, d_in)?;
        let y = self.linear.forward(x);
        Ok(if self.relu { relu(y) } else { y })
    }
}
