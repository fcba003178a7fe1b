//! Stage-range execution: inference forward, a tracked forward kept for its backward, backward
//! from an output gradient (kept, or recomputed from the input), and loss + backward for a
//! range ending at the head; plus the cross-entropy loss.

use std::ops::Range;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::{Model, ModelError, RangeGrads};
use crate::network::{Activation, StageError};
use crate::params::read_grads;

/// A range's forward kept for its backward ([`Model::forward_kept`]): the graph from the
/// range's input (a leaf when it is a hidden state) to its output.
#[derive(Debug)]
pub struct KeptForward {
    stages: Range<usize>,
    leaf: Option<Tensor<3>>,
    output: Tensor<3>,
}

impl Model {
    /// Inference forward of `stages`; input and output live on [`Self::inner_device`].
    pub fn forward_range(
        &self,
        stages: Range<usize>,
        input: Activation,
    ) -> Result<Activation, ModelError> {
        self.check_range(&stages)?;
        let mut x = input;
        for stage in &self.network.stages[stages] {
            x = stage.valid().forward(x)?;
        }
        Ok(x)
    }

    /// Forward of `stages` on the autodiff device, keeping the graph.
    fn forward_tracked(
        &self,
        stages: Range<usize>,
        input: Activation,
    ) -> Result<Activation, ModelError> {
        self.check_range(&stages)?;
        let mut x = input;
        for stage in &self.network.stages[stages] {
            x = stage.forward(x)?;
        }
        Ok(x)
    }

    /// Makes `input` a leaf of a fresh graph (hidden states require grad, tokens stay ids).
    fn leaf(input: Activation) -> (Activation, Option<Tensor<3>>) {
        match input {
            Activation::Hidden(x) => {
                let x = x.inner().autodiff().require_grad();
                (Activation::Hidden(x.clone()), Some(x))
            }
            Activation::Tokens(t) => (Activation::Tokens(t.inner().autodiff()), None),
        }
    }

    fn finish(
        &self,
        stages: Range<usize>,
        leaf: Option<Tensor<3>>,
        grads: burn::tensor::Gradients,
    ) -> Result<RangeGrads, ModelError> {
        let input_grad = leaf.and_then(|x| x.grad(&grads));
        let params = GradientsParams::from_grads(grads, &self.network);
        let params = read_grads(&self.network, &self.layout, stages, &params)?;
        Ok(RangeGrads { input_grad, params })
    }

    /// Forward of `stages` on the autodiff device that keeps its graph for
    /// [`Self::backward_kept`]: the output (on [`Self::inner_device`], for the next range) and
    /// the graph from the range's input to it. Holding the graph costs the range's
    /// intermediate activations until the backward, and saves recomputing the forward there.
    pub fn forward_kept(
        &self,
        stages: Range<usize>,
        input: Activation,
    ) -> Result<(Activation, KeptForward), ModelError> {
        let (input, leaf) = Self::leaf(input);
        let output = self
            .forward_tracked(stages.clone(), input)?
            .into_hidden("range output")?;
        let plain = Activation::Hidden(output.clone().inner());
        Ok((
            plain,
            KeptForward {
                stages,
                leaf,
                output,
            },
        ))
    }

    /// Backward of a kept forward given the gradient w.r.t. its output (no recomputation).
    pub fn backward_kept(
        &self,
        kept: KeptForward,
        grad_output: Tensor<3>,
    ) -> Result<RangeGrads, ModelError> {
        let KeptForward {
            stages,
            leaf,
            output,
        } = kept;
        Self::check_output_grad(&output, &grad_output)?;
        let g = grad_output.inner().autodiff();
        let grads = (output * g).sum().backward();
        self.finish(stages, leaf, grads)
    }

    fn check_output_grad(output: &Tensor<3>, grad: &Tensor<3>) -> Result<(), ModelError> {
        if output.dims() == grad.dims() {
            return Ok(());
        }
        Err(ModelError::Targets(format!(
            "output gradient shape {:?} differs from the output shape {:?}",
            grad.dims(),
            output.dims()
        )))
    }

    /// Backward of `stages` given its input and the gradient w.r.t. its output, recomputing
    /// the range's forward from that input (activation recomputation: only the input is kept
    /// between forward and backward).
    pub fn backward_range(
        &self,
        stages: Range<usize>,
        input: Activation,
        grad_output: Tensor<3>,
    ) -> Result<RangeGrads, ModelError> {
        let (input, leaf) = Self::leaf(input);
        let y = self
            .forward_tracked(stages.clone(), input)?
            .into_hidden("range output")?;
        Self::check_output_grad(&y, &grad_output)?;
        let g = grad_output.inner().autodiff();
        let grads = (y * g).sum().backward();
        self.finish(stages, leaf, grads)
    }

    /// Loss and backward of `stages` (ending at the last stage) given its input and the targets
    /// (one class or next-token id per output position).
    pub fn loss_backward_range(
        &self,
        stages: Range<usize>,
        input: Activation,
        targets: &[u32],
    ) -> Result<(f32, RangeGrads), ModelError> {
        if stages.end != self.num_stages() {
            return Err(StageError::BadRange {
                start: stages.start,
                end: stages.end,
                len: self.num_stages(),
            }
            .into());
        }
        let (input, leaf) = Self::leaf(input);
        let logits = self
            .forward_tracked(stages.clone(), input)?
            .into_hidden("logits")?;
        let loss = cross_entropy(logits, targets, &self.device)?;
        let value = scalar(&loss)?;
        let grads = loss.backward();
        Ok((value, self.finish(stages, leaf, grads)?))
    }

    /// Full forward + loss on the autodiff device (graph kept, for training).
    pub(crate) fn loss_tracked(
        &self,
        input: Activation,
        targets: &[u32],
    ) -> Result<Tensor<1>, ModelError> {
        let logits = self
            .forward_tracked(0..self.num_stages(), input)?
            .into_hidden("logits")?;
        cross_entropy(logits, targets, &self.device)
    }
}

/// Mean cross-entropy of `logits [b, t, v]` against `targets` (`b * t` ids).
pub(crate) fn cross_entropy(
    logits: Tensor<3>,
    targets: &[u32],
    device: &Device,
) -> Result<Tensor<1>, ModelError> {
    let [b, t, v] = logits.dims();
    let n = b * t;
    if targets.len() != n {
        return Err(ModelError::Targets(format!(
            "{} targets for {n} output positions",
            targets.len()
        )));
    }
    if let Some(bad) = targets.iter().find(|&&x| x as usize >= v) {
        return Err(ModelError::Targets(format!(
            "target {bad} is not below the {v} classes"
        )));
    }
    let ids: Vec<i64> = targets.iter().map(|&x| i64::from(x)).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [n, 1]), &device.clone().inner());
    let ids = if logits.is_autodiff() {
        ids.autodiff()
    } else {
        ids
    };
    let logp = log_softmax(logits.reshape([n, v]), 1);
    Ok(logp.gather(1, ids).mean().neg())
}

/// Reads a one-element tensor.
pub(crate) fn scalar(t: &Tensor<1>) -> Result<f32, ModelError> {
    let values = t
        .to_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(ModelError::Read)?;
    values
        .first()
        .copied()
        .ok_or_else(|| ModelError::Targets("could not read a scalar back from the device".into()))
}
