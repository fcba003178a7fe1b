//! DiLoCo's outer optimizer: the averaged model change is treated as a pseudo-gradient and
//! applied with Nesterov momentum instead of being adopted directly.

/// Settings of the outer optimizer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OuterConfig {
    /// Outer learning rate (1 with momentum 0 adopts the average as it is).
    pub lr: f32,
    /// Nesterov momentum.
    pub momentum: f32,
}

impl Default for OuterConfig {
    fn default() -> Self {
        // DiLoCo's published setting.
        Self {
            lr: 0.7,
            momentum: 0.9,
        }
    }
}

/// Nesterov-momentum outer optimizer over a flat parameter vector.
#[derive(Debug, Clone)]
pub struct OuterOptimizer {
    config: OuterConfig,
    momentum: Vec<f32>,
}

impl OuterOptimizer {
    /// A fresh optimizer for `n` parameters.
    pub fn new(config: OuterConfig, n: usize) -> Self {
        Self {
            config,
            momentum: vec![0.0; n],
        }
    }

    /// Restores the momentum buffer (from a checkpoint); a wrong length resets it.
    pub fn with_momentum(mut self, momentum: Vec<f32>) -> Self {
        if momentum.len() == self.momentum.len() {
            self.momentum = momentum;
        }
        self
    }

    /// The momentum buffer, for checkpoints.
    pub fn momentum(&self) -> &[f32] {
        &self.momentum
    }

    /// One outer step: `previous` is the model at the last sync, `averaged` the merged model
    /// now; on return `averaged` holds the new model.
    /// `g = previous − averaged; m ← μ·m + g; new = previous − lr·(g + μ·m)`.
    pub fn step(&mut self, previous: &[f32], averaged: &mut [f32]) {
        let OuterConfig { lr, momentum: mu } = self.config;
        for ((x, p), m) in averaged.iter_mut().zip(previous).zip(&mut self.momentum) {
            let g = p - *x;
            *m = mu * *m + g;
            *x = p - lr * (g + mu * *m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_rate_without_momentum_adopts_the_average() {
        let mut opt = OuterOptimizer::new(
            OuterConfig {
                lr: 1.0,
                momentum: 0.0,
            },
            2,
        );
        let mut avg = vec![0.5f32, 2.0];
        opt.step(&[1.0, 1.0], &mut avg);
        assert_eq!(avg, vec![0.5, 2.0]);
    }

    #[test]
    fn momentum_accelerates_a_steady_direction() {
        let mut opt = OuterOptimizer::new(
            OuterConfig {
                lr: 1.0,
                momentum: 0.9,
            },
            1,
        );
        let mut x = vec![0.0f32];
        let mut prev = vec![0.0f32];
        for _ in 0..3 {
            let mut avg = vec![prev[0] - 1.0];
            opt.step(&prev, &mut avg);
            x[0] = avg[0];
            prev = x.clone();
        }
        // Plain averaging would have moved by 3; momentum moves further.
        assert!(x[0] < -3.0, "{x:?}");
    }
}
