//! Merging the queued deltas into the model: the norm-outlier filter against recent merges,
//! then push-sum absorption or the robust aggregate.

use super::{Averager, Candidate};
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

/// The latest distance of each recent sender's merged model from the own model: the robust
/// clipping radius is the median over senders, one voice each, so peers that keep sending
/// while the honest ones have gone quiet (their models agree) cannot set it; its size is how
/// many peers the node hears from (see `mixing::robust_aggregate`'s voters).
#[derive(Debug, Default)]
pub(super) struct SenderDistances {
    latest: std::collections::HashMap<murmur_protocol::PeerKey, f64>,
    /// Senders, least recently heard first.
    order: std::collections::VecDeque<murmur_protocol::PeerKey>,
}

impl SenderDistances {
    /// Senders remembered at most (the least recently heard is forgotten first).
    const MAX_SENDERS: usize = 64;

    fn record(&mut self, peer: murmur_protocol::PeerKey, distance: f64) {
        if self.latest.insert(peer, distance).is_some() {
            self.order.retain(|p| *p != peer);
        } else if self.order.len() == Self::MAX_SENDERS
            && let Some(oldest) = self.order.pop_front()
        {
            self.latest.remove(&oldest);
        }
        self.order.push_back(peer);
    }

    fn senders(&self) -> usize {
        self.latest.len()
    }

    fn median(&self) -> Option<f64> {
        let values: Vec<f64> = self.latest.values().copied().collect();
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
        match self.config.robust {
            Some(robust) => self.merge_robust(params, accepted, own_norm, robust),
            None => {
                self.counts.merged += accepted.len() as u64;
                let mass = mixing::absorb_all(params, self.mass, &weighted(&accepted));
                self.set_mass(mass);
                for candidate in accepted {
                    self.recycle(candidate.values);
                }
            }
        }
    }

    /// The robust merge of `accepted`: candidates far further from the own model than the
    /// senders' typical distance are refused, the rest clipped and trimmed (see
    /// `mixing::robust_aggregate`).
    fn merge_robust(
        &mut self,
        params: &mut [f32],
        accepted: Vec<Candidate>,
        own_norm: f64,
        robust: mixing::RobustConfig,
    ) {
        // The median over senders of their latest distance; until three senders were heard,
        // the node's own distance from the anchor (the batch's own median would let a batch
        // of attackers set their radius).
        let reference = self.distances.median().unwrap_or(own_norm);
        let limit = self.config.outlier_ratio * reference.max(1e-12);
        let mut kept = Vec::with_capacity(accepted.len());
        for candidate in accepted {
            let distance = mixing::l2_distance(params, &candidate.values);
            if distance > limit && own_norm > 0.0 {
                // A model far from where the honest senders are (a flipped one, say): its
                // sender would pull every merge its way, however far it is clipped.
                self.counts.reject(Rejection::Distant);
                self.recycle(candidate.values);
                continue;
            }
            // Distances enter the radius clamped to the node's own distance from the anchor,
            // for the same reason as the norms (none while the node sits on the anchor:
            // zeros would clip every later candidate to nothing).
            if own_norm > 0.0 {
                self.distances
                    .record(candidate.peer, distance.min(own_norm));
            }
            kept.push(candidate);
        }
        self.counts.merged += kept.len() as u64;
        let voters = self.distances.senders().max(self.live_peers) + 1;
        let votes = (Some(reference), voters);
        mixing::robust_aggregate(params, self.mass, &weighted(&kept), robust, votes);
        self.set_mass(self.mass + kept.iter().map(|c| c.mass).sum::<f64>());
        for candidate in kept {
            self.recycle(candidate.values);
        }
    }
}

/// The candidates' models with their masses.
fn weighted(candidates: &[Candidate]) -> Vec<Weighted<'_>> {
    candidates
        .iter()
        .map(|c| Weighted {
            values: &c.values,
            mass: c.mass,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use murmur_protocol::PeerKey;

    use super::SenderDistances;

    /// One voice per sender: a sender that keeps sending far models does not set the median,
    /// however often it is heard; the table stays bounded.
    #[test]
    fn the_radius_reference_is_one_value_per_sender_and_bounded() {
        let mut d = SenderDistances::default();
        for k in 1..=3u8 {
            d.record(PeerKey([k; 32]), 1.0);
        }
        for _ in 0..100 {
            d.record(PeerKey([9; 32]), 50.0);
        }
        assert_eq!(d.senders(), 4);
        assert_eq!(d.median(), Some(1.0));
        for k in 0..=255u8 {
            d.record(PeerKey([k; 32]), 2.0);
        }
        assert_eq!(d.senders(), SenderDistances::MAX_SENDERS);
        assert_eq!(d.order.len(), SenderDistances::MAX_SENDERS);
    }
}
