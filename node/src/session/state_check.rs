//! Which peers' states a late joiner may adopt, and what it adopts: a pure check of the
//! announcements and downloaded states (no network), so one peer announcing a huge round or
//! serving a poisoned model cannot capture every newcomer.
//!
//! - **Whom to ask** ([`sources`]): live peers far enough ahead to be worth adopting, but only
//!   those whose announced round is within `max_lead` of the median of those rounds (a round
//!   is the sender's choice), highest first, at most [`SOURCES`].
//! - **What to adopt** ([`cross_check`]): the states of at least two independent peers that
//!   agree — each pair closer than [`AGREEMENT`] of their distance from the run's initial
//!   model. The joiner adopts the coordinate-wise median of the largest agreeing set (the
//!   mean of two), at the lowest round in that set. Honest peers that average are close;
//!   an attacker's state is not adopted unless peers it does not control agree with it. With
//!   fewer than two agreeing states the joiner adopts nothing and keeps training and
//!   averaging (its robust merge and outlier checks still apply).

use libp2p::PeerId;

use crate::averaging::mixing;

/// States downloaded for one cross-check at most.
pub(crate) const SOURCES: usize = 3;
/// Two states agree when their distance is at most this fraction of the larger one's
/// distance from the run's initial model.
pub(crate) const AGREEMENT: f64 = 0.5;

/// A peer's downloaded state.
#[derive(Debug, Clone)]
pub(crate) struct Offer {
    /// The peer that served it.
    pub peer: PeerId,
    /// Its round.
    pub round: u64,
    /// Its parameters.
    pub params: Vec<f32>,
}

/// The peers to download from, from `(announced round, peer)` of live peers far ahead:
/// rounds more than `max_lead` above the median of those rounds are dropped, then the
/// highest first, at most [`SOURCES`].
pub(crate) fn sources(mut ahead: Vec<(u64, PeerId)>, max_lead: u64) -> Vec<(u64, PeerId)> {
    if ahead.is_empty() {
        return ahead;
    }
    ahead.sort_unstable();
    let median = ahead[(ahead.len() - 1) / 2].0;
    ahead.retain(|(round, _)| *round <= median.saturating_add(max_lead));
    ahead.reverse();
    ahead.truncate(SOURCES);
    ahead
}

/// What [`cross_check`] decided.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Adopt `params` at `round` (agreed by `peers`).
    Adopt {
        /// The lowest round of the agreeing states.
        round: u64,
        /// Their coordinate-wise median.
        params: Vec<f32>,
        /// The peers that agreed.
        peers: Vec<PeerId>,
    },
    /// Fewer than two states agree.
    Disagree,
}

/// Adopts what at least two of `offers` (from distinct peers) agree on (see the module docs).
pub(crate) fn cross_check(offers: &[Offer], anchor: &[f32]) -> Verdict {
    let n = offers.len();
    let agree = |i: usize, j: usize| {
        let (a, b) = (&offers[i].params, &offers[j].params);
        let scale = mixing::l2_distance(a, anchor).max(mixing::l2_distance(b, anchor));
        offers[i].peer != offers[j].peer
            && mixing::l2_distance(a, b) <= AGREEMENT * scale.max(f64::MIN_POSITIVE)
    };
    // The largest set whose members all agree pairwise (n ≤ SOURCES: every subset is tried).
    let mut best: Vec<usize> = Vec::new();
    for mask in 1u32..(1 << n) {
        let set: Vec<usize> = (0..n).filter(|i| mask & (1 << i) != 0).collect();
        let pairwise = set
            .iter()
            .enumerate()
            .all(|(k, &i)| set[k + 1..].iter().all(|&j| agree(i, j)));
        if set.len() >= 2 && pairwise && set.len() > best.len() {
            best = set;
        }
    }
    if best.is_empty() {
        return Verdict::Disagree;
    }
    let chosen: Vec<&Offer> = best.iter().map(|&i| &offers[i]).collect();
    let len = chosen[0].params.len();
    let mut column = Vec::with_capacity(chosen.len());
    let params = (0..len)
        .map(|k| {
            column.clear();
            column.extend(chosen.iter().map(|o| f64::from(o.params[k])));
            mixing::median(&column) as f32
        })
        .collect();
    Verdict::Adopt {
        round: chosen.iter().map(|o| o.round).min().unwrap_or(0),
        params,
        peers: chosen.iter().map(|o| o.peer).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(peer: PeerId, round: u64, value: f32) -> Offer {
        Offer {
            peer,
            round,
            params: vec![value; 8],
        }
    }

    const ANCHOR: [f32; 8] = [0.0; 8];

    /// Late-join capture: one peer announcing an absurd round is not asked at all.
    #[test]
    fn a_round_far_above_the_others_is_not_a_source() {
        let (a, b, evil) = (PeerId::random(), PeerId::random(), PeerId::random());
        let chosen = sources(vec![(120, a), (118, b), (u64::MAX, evil)], 64);
        let peers: Vec<PeerId> = chosen.iter().map(|(_, p)| *p).collect();
        assert_eq!(peers, vec![a, b]);
    }

    /// Late-join capture: a lone peer's state, whatever it announces, is not adopted; two
    /// honest peers that agree outvote it, and the joiner takes their lowest round.
    #[test]
    fn only_states_that_independent_peers_agree_on_are_adopted() {
        let (a, b, evil) = (PeerId::random(), PeerId::random(), PeerId::random());
        assert!(matches!(
            cross_check(&[offer(evil, 500, -9.0)], &ANCHOR),
            Verdict::Disagree
        ));
        let offers = [
            offer(evil, 130, -9.0),
            offer(a, 120, 1.0),
            offer(b, 118, 1.2),
        ];
        let Verdict::Adopt {
            round,
            params,
            peers,
        } = cross_check(&offers, &ANCHOR)
        else {
            panic!("two honest peers agree");
        };
        assert_eq!(round, 118);
        assert_eq!(peers, vec![a, b]);
        assert!(params.iter().all(|p| (p - 1.1).abs() < 1e-6), "{params:?}");
    }

    #[test]
    fn states_that_disagree_are_not_adopted() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let offers = [offer(a, 120, 1.0), offer(b, 120, -1.0)];
        assert!(matches!(cross_check(&offers, &ANCHOR), Verdict::Disagree));
        // One peer serving twice is not two peers.
        let twice = [offer(a, 120, 1.0), offer(a, 121, 1.0)];
        assert!(matches!(cross_check(&twice, &ANCHOR), Verdict::Disagree));
    }
}
