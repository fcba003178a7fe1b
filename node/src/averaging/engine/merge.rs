//! Merging the queued deltas into the model: the norm-outlier filter against recent merges,
//! then push-sum absorption or the robust aggregate.

use super::Averager;
use crate::averaging::mixing::{self, Weighted};
use crate::averaging::{AveragingError, Rejection};

/// The last few values of a statistic, for robust reference levels.
#[derive(Debug, Default)]
pub(super) struct History(std::collections::VecDeque<f64>);

impl History {
    const LEN: usize = 32;

    pub(super) fn push(&mut self, value: f64) {
        if self.0.len() == Self::LEN {
            self.0.pop_front();
        }
        self.0.push_back(value);
    }

    fn median(&self) -> Option<f64> {
        let values: Vec<f64> = self.0.iter().copied().collect();
        (values.len() >= 3).then(|| mixing::median(&values))
    }
}

impl Averager {
    /// Merges the queued deltas into `params` without producing a message (a later
    /// [`sync`](Self::sync) then has nothing left to merge). Errors when `params` has the
    /// wrong length.
    pub fn merge(&mut self, params: &mut [f32]) -> Result<(), AveragingError> {
        if params.len() != self.anchor.len() {
            return Err(AveragingError::WrongLength {
                expected: self.anchor.len(),
                actual: params.len(),
            });
        }
        self.merge_pending(params);
        Ok(())
    }

    /// How far `to` is from `from`, relative to `from`'s distance from the anchor (what
    /// deltas encode).
    pub fn relative_distance(&self, from: &[f32], to: &[f32]) -> f64 {
        let scale = mixing::l2_distance(from, &self.anchor);
        mixing::l2_distance(from, to) / scale.max(f64::MIN_POSITIVE)
    }

    pub(super) fn merge_pending(&mut self, params: &mut [f32]) {
        let pending = std::mem::take(&mut self.pending);
        if pending.is_empty() {
            return;
        }
        // Norm outliers: a model much further from the anchor than this node's own model and
        // than the models merged recently (e.g. a delta scaled ×100) is refused. The candidate
        // itself never sets the reference, so a lone attacker cannot raise it.
        //
        // Accepted models enter the history clamped to the reference they were judged by, so
        // the reference only grows as fast as the node's own model moves: deltas just under
        // the limit, sync after sync, no longer ratchet it up (before: ×10 per sync, a few
        // syncs to let a ×1000 model in).
        let own_norm = mixing::l2_distance(params, &self.anchor);
        let reference = self.norm_history.median().unwrap_or(0.0).max(own_norm);
        let limit = self.config.outlier_ratio * reference.max(1e-12);
        // One sender's mass is bounded by the node's own (see `DEFAULT_MAX_WEIGHT_RATIO`).
        let max_mass = self.config.max_weight_ratio * self.mass.max(1.0);
        let mut accepted = Vec::with_capacity(pending.len());
        for mut candidate in pending {
            if candidate.norm > limit {
                self.counts.reject(Rejection::NormOutlier);
                self.recycle(candidate.values);
            } else {
                self.norm_history.push(candidate.norm.min(reference));
                if candidate.mass > max_mass {
                    candidate.mass = max_mass;
                    self.counts.capped += 1;
                }
                accepted.push(candidate);
            }
        }
        self.counts.merged += accepted.len() as u64;
        match self.config.robust {
            Some(robust) => {
                let others: Vec<&[f32]> = accepted.iter().map(|c| c.values.as_slice()).collect();
                let reference = self.distance_history.median();
                // Distances enter the clipping radius's history clamped to the node's own
                // distance from the anchor, for the same reason as the norms above (none
                // while the node sits on the anchor: zeros would clip every later candidate
                // to nothing).
                if own_norm > 0.0 {
                    for other in &others {
                        let distance = mixing::l2_distance(params, other);
                        self.distance_history.push(distance.min(own_norm));
                    }
                }
                mixing::robust_aggregate(params, &others, robust, reference);
                self.set_mass(self.mass + accepted.iter().map(|c| c.mass).sum::<f64>());
            }
            None => {
                let weighted: Vec<Weighted<'_>> = accepted
                    .iter()
                    .map(|c| Weighted {
                        values: &c.values,
                        mass: c.mass,
                    })
                    .collect();
                let mass = mixing::absorb_all(params, self.mass, &weighted);
                self.set_mass(mass);
            }
        }
        for candidate in accepted {
            self.recycle(candidate.values);
        }
    }
}
