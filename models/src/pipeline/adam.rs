//! AdamW over a flat slice of parameters (one pipeline shard's), with the same update rule as
//! the whole-model trainer: bias-corrected moments, a clipping scale computed from the global
//! gradient norm, and decoupled weight decay on matrices only.

use serde::{Deserialize, Serialize};

const BETA1: f32 = 0.9;
const BETA2: f32 = 0.999;
const EPS: f32 = 1e-8;

/// AdamW moments of one shard, flat in layout order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlatAdamW {
    /// Updates applied so far.
    pub steps: u64,
    /// First moments (empty before the first update).
    pub m: Vec<f32>,
    /// Second moments (empty before the first update).
    pub v: Vec<f32>,
}

impl FlatAdamW {
    /// Applies one update to `params` from `grads` (same length), scaling the gradient by
    /// `scale` (the clipping factor) first. `decays[i]` says whether weight decay applies to
    /// parameter `i`.
    pub fn update(
        &mut self,
        params: &mut [f32],
        grads: &[f32],
        decays: &[bool],
        lr: f64,
        weight_decay: f64,
        scale: f64,
    ) {
        let n = params.len();
        if self.m.len() != n || self.v.len() != n {
            self.m = vec![0.0; n];
            self.v = vec![0.0; n];
        }
        self.steps += 1;
        let t = self.steps as i32;
        let bias1 = (1.0 - f64::from(BETA1).powi(t)) as f32;
        let bias2 = (1.0 - f64::from(BETA2).powi(t)) as f32;
        let (lr, scale) = (lr as f32, scale as f32);
        let keep = 1.0 - lr * weight_decay as f32;
        let items = params.iter_mut().zip(grads).zip(decays);
        for (((p, &g), &decay), (m, v)) in items.zip(self.m.iter_mut().zip(self.v.iter_mut())) {
            let g = g * scale;
            *m = *m * BETA1 + g * (1.0 - BETA1);
            *v = *v * BETA2 + g * g * (1.0 - BETA2);
            let step = (*m / bias1) / ((*v / bias2).sqrt() + EPS);
            let base = if decay { *p * keep } else { *p };
            *p = base - step * lr;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_step_moves_each_parameter_by_about_lr_against_its_gradient() {
        let mut adam = FlatAdamW::default();
        let mut p = vec![1.0, 1.0, -2.0];
        adam.update(
            &mut p,
            &[0.5, -3.0, 0.0],
            &[false, true, false],
            0.1,
            0.5,
            1.0,
        );
        assert!((p[0] - 0.9).abs() < 1e-5, "{p:?}");
        assert!((p[1] - (1.0 * (1.0 - 0.05) + 0.1)).abs() < 1e-5, "{p:?}");
        assert_eq!(p[2], -2.0);
        assert_eq!(adam.steps, 1);
    }
}
