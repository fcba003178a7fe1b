//! Reading parameters or their gradients as one flat vector through a single `Transaction`.

use std::collections::HashMap;
use std::ops::Range;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, Transaction};

use super::{ParamError, ParamLayout, PathTracker};
use crate::network::Network;

/// Where a [`Collector`] reads from.
enum Source<'a> {
    Values,
    Grads(&'a GradientsParams),
}

/// Collects each parameter (or its gradient) as a flat tensor, keyed by path.
struct Collector<'a> {
    tracker: PathTracker,
    source: &'a Source<'a>,
    found: HashMap<String, Tensor<1>>,
}

impl ModuleVisitor for Collector<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.tracker.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.tracker.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let n = param.lazy_shape().num_elements();
        let tensor = match self.source {
            Source::Values => Some(param.val().inner()),
            Source::Grads(grads) => grads.get::<D>(param.id),
        };
        if let Some(t) = tensor {
            self.found.insert(self.tracker.path(), t.reshape([n]));
        }
    }
}

/// Fills `out` (resized to the span of `stages`, its allocation reused) with what `source`
/// holds for `stages`, in layout order; slots with nothing to read are zeros.
fn collect(
    network: &Network,
    layout: &ParamLayout,
    stages: Range<usize>,
    source: &Source<'_>,
    out: &mut Vec<f32>,
) -> Result<(), ParamError> {
    let mut found = HashMap::new();
    for i in stages.clone() {
        let Some(stage) = network.stages.get(i) else {
            break;
        };
        let mut c = Collector {
            tracker: PathTracker::new(i),
            source,
            found: HashMap::new(),
        };
        stage.visit(&mut c);
        found.extend(c.found);
    }
    let span = layout.span(stages.clone());
    out.clear();
    out.resize(span.len(), 0.0);
    let mut tx = Transaction::default();
    let mut slots = Vec::new();
    for e in layout.entries.iter().filter(|e| stages.contains(&e.stage)) {
        if let Some(t) = found.remove(&e.path) {
            tx = tx.register(t);
            slots.push(e.offset - span.start..e.offset - span.start + e.len());
        }
    }
    if slots.is_empty() {
        return Ok(());
    }
    let datas = tx.try_execute().map_err(|e| ParamError::Read(e.into()))?;
    for (slot, data) in slots.into_iter().zip(datas) {
        let values = data
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| ParamError::Read(e.into()))?;
        out[slot].copy_from_slice(&values);
    }
    Ok(())
}

/// The parameters of `stages` as one flat vector in layout order.
pub(crate) fn read_params(
    network: &Network,
    layout: &ParamLayout,
    stages: Range<usize>,
) -> Result<Vec<f32>, ParamError> {
    let mut out = Vec::new();
    read_params_into(network, layout, stages, &mut out)?;
    Ok(out)
}

/// Like [`read_params`], into `out` (its allocation reused).
pub(crate) fn read_params_into(
    network: &Network,
    layout: &ParamLayout,
    stages: Range<usize>,
    out: &mut Vec<f32>,
) -> Result<(), ParamError> {
    collect(network, layout, stages, &Source::Values, out)
}

/// The gradients of `stages` in layout order; parameters without a gradient read as zeros.
pub(crate) fn read_grads(
    network: &Network,
    layout: &ParamLayout,
    stages: Range<usize>,
    grads: &GradientsParams,
) -> Result<Vec<f32>, ParamError> {
    let mut out = Vec::new();
    collect(network, layout, stages, &Source::Grads(grads), &mut out)?;
    Ok(out)
}
