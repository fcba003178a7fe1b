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
        let own_norm = mixing::l2_distance(params, &self.anchor);
        let reference = self.norm_history.median().unwrap_or(0.0).max(own_norm);
        let limit = self.config.outlier_ratio * reference.max(1e-12);
        let mut accepted = Vec::with_capacity(pending.len());
        for candidate in pending {
            if candidate.norm > limit {
                self.counts.reject(Rejection::NormOutlier);
                self.recycle(candidate.values);
            } else {
                self.norm_history.push(candidate.norm);
                accepted.push(candidate);
            }
        }
        self.counts.merged += accepted.len() as u64;
        match self.config.robust {
            Some(robust) => {
                let others: Vec<&[f32]> = accepted.iter().map(|c| c.values.as_slice()).collect();
                let reference = self.distance_history.median();
                for other in &others {
                    self.distance_history
                        .push(mixing::l2_distance(params, other));
                }
                mixing::robust_aggregate(params, &others, robust, reference);
                self.mass += accepted.iter().map(|c| c.mass).sum::<f64>();
            }
            None => {
                let weighted: Vec<Weighted<'_>> = accepted
                    .iter()
                    .map(|c| Weighted {
                        values: &c.values,
                        mass: c.mass,
                    })
                    .collect();
                self.mass = mixing::absorb_all(params, self.mass, &weighted);
            }
        }
        for candidate in accepted {
            self.recycle(candidate.values);
        }
    }
}
