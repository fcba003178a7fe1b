//! AdamW over a [`Network`], keyed by parameter path, with global gradient-norm clipping and a
//! warmup + cosine learning-rate schedule.
//!
//! burn's own `ModuleOptimizer` keys its state by the per-process `ParamId` and restores it on
//! `Device::default()`; Murmur's moments are keyed by path so they survive external parameter
//! writes, checkpoints and other processes, and stay on the model's device.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData, Transaction};

use crate::model::{ModelError, scalar};
use crate::network::Network;
use crate::params::{ParamError, ParamLayout};

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

/// Learning rate at `step` (0-based): linear warmup to `lr` over `warmup` steps, then cosine
/// decay to `lr * min_ratio` at `total`, flat afterwards.
pub fn lr_at(lr: f64, warmup: u64, total: u64, min_ratio: f64, step: u64) -> f64 {
    let min = lr * min_ratio;
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup) as f64 / span as f64).min(1.0);
    min + 0.5 * (lr - min) * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// First and second moments per parameter path.
#[derive(Debug, Clone, Default)]
pub(crate) struct AdamW {
    steps: u64,
    slots: HashMap<String, (Tensor<1>, Tensor<1>)>,
}

/// Optimizer state as flat vectors in layout order (empty before the first step).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct AdamState {
    pub(crate) steps: u64,
    pub(crate) m: Vec<f32>,
    pub(crate) v: Vec<f32>,
}

impl AdamW {
    /// One update; returns the gradient norm before clipping.
    pub(crate) fn step(
        &mut self,
        network: Network,
        grads: &GradientsParams,
        lr: f64,
        weight_decay: f64,
        clip: Option<f32>,
    ) -> Result<(Network, f32), ModelError> {
        let mut norm = NormVisitor { grads, total: None };
        network.visit(&mut norm);
        let norm = match norm.total {
            Some(t) => scalar(&t)?.sqrt(),
            None => 0.0,
        };
        let scale = match clip {
            Some(c) if c > 0.0 && norm > c => f64::from(c / norm),
            _ => 1.0,
        };
        self.steps += 1;
        let t = self.steps as i32;
        let mut mapper = Update {
            path: Vec::new(),
            grads,
            slots: &mut self.slots,
            lr,
            weight_decay,
            scale,
            bias1: 1.0 - BETA1.powi(t),
            bias2: 1.0 - BETA2.powi(t),
        };
        let stages = network
            .stages
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                mapper.path = vec![i.to_string()];
                s.map(&mut mapper)
            })
            .collect();
        Ok((Network { stages }, norm))
    }

    /// The moments as flat vectors in `layout` order.
    pub(crate) fn export(&self, layout: &ParamLayout) -> Result<AdamState, ParamError> {
        if self.steps == 0 || self.slots.is_empty() {
            return Ok(AdamState::default());
        }
        let mut tx = Transaction::default();
        let mut order = Vec::new();
        for e in layout.entries() {
            if let Some((m, v)) = self.slots.get(&e.path) {
                tx = tx.register(m.clone()).register(v.clone());
                order.push(e);
            }
        }
        let datas = tx.try_execute().map_err(|e| ParamError::Read(e.into()))?;
        let mut m = vec![0.0; layout.total()];
        let mut v = vec![0.0; layout.total()];
        let read = |d: TensorData| {
            d.convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| ParamError::Read(e.into()))
        };
        let mut datas = datas.into_iter();
        for e in order {
            let (Some(dm), Some(dv)) = (datas.next(), datas.next()) else {
                break;
            };
            m[e.offset..e.offset + e.len()].copy_from_slice(&read(dm)?);
            v[e.offset..e.offset + e.len()].copy_from_slice(&read(dv)?);
        }
        Ok(AdamState {
            steps: self.steps,
            m,
            v,
        })
    }

    /// Rebuilds the moments from `state` on `device`.
    pub(crate) fn import(
        layout: &ParamLayout,
        state: &AdamState,
        device: &Device,
    ) -> Result<Self, ParamError> {
        if state.steps == 0 {
            return Ok(Self::default());
        }
        for got in [state.m.len(), state.v.len()] {
            if got != layout.total() {
                return Err(ParamError::Length {
                    expected: layout.total(),
                    got,
                });
            }
        }
        let tensor = |values: &[f32]| {
            Tensor::<1>::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
        };
        let slots = layout
            .entries()
            .iter()
            .map(|e| {
                let r = e.offset..e.offset + e.len();
                (
                    e.path.clone(),
                    (tensor(&state.m[r.clone()]), tensor(&state.v[r])),
                )
            })
            .collect();
        Ok(Self {
            steps: state.steps,
            slots,
        })
    }
}

struct NormVisitor<'a> {
    grads: &'a GradientsParams,
    total: Option<Tensor<1>>,
}

impl ModuleVisitor for NormVisitor<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let sq = g.clone().mul(g).sum();
            self.total = Some(match self.total.take() {
                Some(t) => t + sq,
                None => sq,
            });
        }
    }
}

struct Update<'a> {
    path: Vec<String>,
    grads: &'a GradientsParams,
    slots: &'a mut HashMap<String, (Tensor<1>, Tensor<1>)>,
    lr: f64,
    weight_decay: f64,
    scale: f64,
    bias1: f64,
    bias2: f64,
}

impl ModuleMapper for Update<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(g) = self.grads.get::<D>(param.id) else {
            return param;
        };
        let path = self.path.join(".");
        let (id, tensor, mapper) = param.consume();
        let require_grad = tensor.is_require_grad();
        let autodiff = tensor.is_autodiff();
        let shape = tensor.shape();
        let n = shape.num_elements();
        let p = tensor.inner().reshape([n]);
        let g = g.reshape([n]).mul_scalar(self.scale);
        let (m, v) = self
            .slots
            .remove(&path)
            .unwrap_or_else(|| (p.zeros_like(), p.zeros_like()));
        let m = m.mul_scalar(BETA1) + g.clone().mul_scalar(1.0 - BETA1);
        let v = v.mul_scalar(BETA2) + g.clone().mul(g).mul_scalar(1.0 - BETA2);
        let update = m.clone().div_scalar(self.bias1)
            / v.clone().div_scalar(self.bias2).sqrt().add_scalar(EPS);
        // Decoupled weight decay on matrices only (not on biases, norms' gains or shifts).
        let decay = if D >= 2 { self.weight_decay } else { 0.0 };
        let p = p.mul_scalar(1.0 - self.lr * decay) - update.mul_scalar(self.lr);
        self.slots.insert(path, (m, v));
        let mut out: Tensor<D> = p.reshape(shape);
        if autodiff {
            out = out.autodiff();
        }
        if require_grad {
            out = out.require_grad();
        }
        Param::from_mapped_value(id, out, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::lr_at;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let lr = |s| lr_at(1.0, 10, 110, 0.1, s);
        assert!((lr(0) - 0.1).abs() < 1e-12);
        assert!((lr(9) - 1.0).abs() < 1e-12);
        assert!((lr(10) - 1.0).abs() < 1e-12);
        assert!((lr(60) - 0.55).abs() < 1e-9);
        assert!((lr(110) - 0.1).abs() < 1e-12);
        assert!((lr(10_000) - 0.1).abs() < 1e-12);
        assert!((1..200).all(|s| lr(s) <= lr(s - 1) || s < 10));
        assert!((lr_at(2.0, 0, 0, 0.5, 0) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn trainer_is_send() {
        fn send<T: Send>() {}
        send::<crate::Trainer>();
        send::<crate::Model>();
    }
}
