//! Writing a flat vector (or adding a scaled flat delta) back into a network, keeping each
//! parameter's id and gradient requirement.

use std::collections::HashMap;
use std::ops::Range;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Tensor, TensorData};

use super::{ParamEntry, ParamError, ParamLayout, PathTracker};
use crate::network::{Network, Stage};

/// How [`write_params`] combines the flat vector with the current values.
#[derive(Debug, Clone, Copy)]
pub(crate) enum WriteMode {
    /// Replace.
    Set,
    /// `current + scale * values`.
    Add(f32),
}

struct Writer<'a> {
    tracker: PathTracker,
    entries: &'a HashMap<&'a str, &'a ParamEntry>,
    values: &'a [f32],
    base: usize,
    mode: WriteMode,
}

impl ModuleMapper for Writer<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.tracker.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.tracker.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(e) = self.entries.get(self.tracker.path().as_str()) else {
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        let require_grad = tensor.is_require_grad();
        let device = tensor.device();
        let start = e.offset - self.base;
        let slice = &self.values[start..start + e.len()];
        let inner = tensor.inner();
        let updated = match self.mode {
            WriteMode::Set => Tensor::<D>::from_data(
                TensorData::new(slice.to_vec(), e.shape.clone()),
                &inner.device(),
            ),
            WriteMode::Add(scale) => {
                let delta: Vec<f32> = slice.iter().map(|v| v * scale).collect();
                inner.clone()
                    + Tensor::<D>::from_data(
                        TensorData::new(delta, e.shape.clone()),
                        &inner.device(),
                    )
            }
        };
        let mut tensor = if device.is_autodiff() {
            updated.autodiff()
        } else {
            updated
        };
        if require_grad {
            tensor = tensor.require_grad();
        }
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// Writes (or adds) `values`, the flat vector of `stages`, into the network.
pub(crate) fn write_params(
    network: Network,
    layout: &ParamLayout,
    stages: Range<usize>,
    values: &[f32],
    mode: WriteMode,
) -> Result<Network, ParamError> {
    let span = layout.span(stages.clone());
    if values.len() != span.len() {
        return Err(ParamError::Length {
            expected: span.len(),
            got: values.len(),
        });
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(ParamError::NonFinite(i));
    }
    let entries = layout.by_path(stages.clone());
    let stages_out = network
        .stages
        .into_iter()
        .enumerate()
        .map(|(i, stage): (usize, Stage)| {
            if !stages.contains(&i) {
                return stage;
            }
            let mut w = Writer {
                tracker: PathTracker::new(i),
                entries: &entries,
                values,
                base: span.start,
                mode,
            };
            stage.map(&mut w)
        })
        .collect();
    Ok(Network { stages: stages_out })
}
