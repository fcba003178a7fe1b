//! The engine's state over time: what a checkpoint keeps and restores, and the jumps of
//! the round clock (adopting a peer's model, advancing the round).

use murmur_protocol::ErrorFeedback;
use serde::{Deserialize, Serialize};

use super::Averager;
use crate::averaging::outer::OuterOptimizer;

/// What a checkpoint keeps of the engine.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AveragerState {
    /// Next round number.
    pub round: u64,
    /// Mass held.
    pub mass: f64,
    /// Error-feedback residual.
    pub residual: Vec<f32>,
    /// Outer momentum and the model at the last sync (empty without an outer optimizer).
    pub outer_momentum: Vec<f32>,
    /// Model at the last sync (outer optimizer only).
    pub outer_previous: Vec<f32>,
}

impl Averager {
    /// Adopts a model downloaded from a peer (late join): its parameters are the caller's,
    /// the round jumps to the peer's, queued deltas are dropped.
    ///
    /// The node's mass is forfeited: its old model is gone, and keeping the mass with the
    /// adopted copy would count the peer's model twice in the network-wide average.
    pub fn adopt(&mut self, round: u64) {
        self.set_round(self.round.max(round));
        self.mass = 0.0;
        self.pending.clear();
        self.returns_from = self.round;
        if let Some((_, previous)) = &mut self.outer {
            previous.clear();
        }
    }

    /// Moves the round clock forward to at least `round` (never backwards).
    pub fn advance_round(&mut self, round: u64) {
        self.set_round(self.round.max(round));
    }

    /// What a checkpoint keeps.
    pub fn state(&self) -> AveragerState {
        let (outer_momentum, outer_previous) = match &self.outer {
            Some((opt, prev)) => (opt.momentum().to_vec(), prev.clone()),
            None => (Vec::new(), Vec::new()),
        };
        AveragerState {
            round: self.round,
            mass: self.mass,
            residual: self.feedback.residual().to_vec(),
            outer_momentum,
            outer_previous,
        }
    }

    /// Restores a checkpointed state; `min_round` (e.g. the last round persisted as sent)
    /// keeps round numbers from being reused after a crash.
    pub fn restore(&mut self, state: AveragerState, min_round: u64) {
        self.set_round(state.round.max(min_round));
        self.set_mass(state.mass);
        if state.residual.len() == self.anchor.len() {
            self.feedback = ErrorFeedback::from_residual(state.residual);
        }
        if let Some((opt, prev)) = &mut self.outer {
            let config = self.config.outer.unwrap_or_default();
            *opt =
                OuterOptimizer::new(config, self.anchor.len()).with_momentum(state.outer_momentum);
            *prev = state.outer_previous;
        }
        self.pending.clear();
        self.returns_from = self.round;
    }
}
