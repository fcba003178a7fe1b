//! The plan a pipeline runs: the exact optimum of [`plan`], less the slow peers that only add a
//! shard boundary. The cost model counts a peer's compute and its links, not what a boundary
//! costs the shards on either side of it: the upstream shard keeps one more micro-batch's
//! forward graph in flight (1F1B keeps as many as the chain is long), and a shard that was last
//! (one fused loss + backward) becomes a middle one (forward and backward apart, activations
//! and gradients converted for the wire). Measured on `murmur testnet --sharded --slowdown
//! 1,1,8` (docs/benchmarks.md): with the 8× peer holding only the head, a 3 % planned gain, the
//! two fast shards' compute time grew 7–9 % and the run was 15 % slower end to end than with
//! that peer left out. A peer therefore has to earn its place by [`MIN_GAIN_PER_PEER`].

use super::{Plan, PlanError, PlanInput, plan};

/// The least throughput gain, as a fraction of the plan without it, that a peer must bring to
/// a plan to be given a range.
pub const MIN_GAIN_PER_PEER: f64 = 0.05;

/// [`plan`], then, while the optimum uses more than one peer, the same planning without its
/// slowest used peer (lowest FLOP/s; ties: the highest id): adopted when the peer brought less
/// than [`MIN_GAIN_PER_PEER`]. Deterministic like [`plan`]. Errors as [`plan`] on `input`; a
/// smaller input that cannot be planned (memory) keeps the larger plan.
pub fn lean_plan(input: &PlanInput) -> Result<Plan, PlanError> {
    let mut best = plan(input)?;
    let mut fewer = input.clone();
    while best.assignments.len() > 1 {
        let Some(slowest) = slowest_used(&fewer, &best) else {
            break;
        };
        fewer.peers.retain(|p| p.id != slowest);
        let Ok(without) = plan(&fewer) else {
            break;
        };
        if best.samples_per_sec >= (1.0 + MIN_GAIN_PER_PEER) * without.samples_per_sec {
            break;
        }
        best = without;
    }
    Ok(best)
}

/// The id of the slowest peer `plan` gives a range to.
fn slowest_used(input: &PlanInput, plan: &Plan) -> Option<String> {
    input
        .peers
        .iter()
        .filter(|p| plan.assignments.iter().any(|a| a.peer == p.id))
        .min_by(|a, b| {
            a.flops_per_sec
                .total_cmp(&b.flops_per_sec)
                .then_with(|| b.id.cmp(&a.id))
        })
        .map(|p| p.id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::planner::tests::{peer, stage};

    fn input(stages: usize, speeds: &[(&str, f64)]) -> PlanInput {
        let stages = (0..stages).map(|_| stage(1e9, 1, 1)).collect();
        let peers = speeds.iter().map(|&(id, s)| peer(id, s, 1 << 40)).collect();
        PlanInput::new(stages, peers)
    }

    fn uses(plan: &Plan, id: &str) -> bool {
        plan.assignments.iter().any(|a| a.peer == id)
    }

    #[test]
    fn a_peer_that_adds_little_is_left_out() {
        // 61 equal stages: the two fast peers alone split them 31 / 30 (bottleneck 1.55 s per
        // sample); the exact optimum also gives the slow peer one stage, 30 / 30 / 1 (1.5 s,
        // 3.3 % faster), which is not worth a boundary.
        let i = input(61, &[("a", 20e9), ("b", 20e9), ("c", 1.5e9)]);
        let full = plan(&i).unwrap();
        assert!(uses(&full, "c"), "{full:?}");
        let lean = lean_plan(&i).unwrap();
        assert!(!uses(&lean, "c"), "{lean:?}");
        assert_eq!(lean.assignments.len(), 2);
        assert!(lean.samples_per_sec * (1.0 + MIN_GAIN_PER_PEER) > full.samples_per_sec);
    }

    #[test]
    fn a_peer_that_adds_enough_is_kept_and_the_result_is_deterministic() {
        // 4 : 2 : 1 over 14 stages: 8 / 4 / 2 (bottleneck 2 s per sample) against 10 / 4 or
        // 9 / 5 without the slowest peer (2.5 s): it brings 25 %.
        let i = input(14, &[("a", 4e9), ("b", 2e9), ("c", 1e9)]);
        let lean = lean_plan(&i).unwrap();
        assert_eq!(lean, plan(&i).unwrap());
        assert_eq!(lean.assignments.len(), 3);
        let mut reversed = i.clone();
        reversed.peers.reverse();
        assert_eq!(lean_plan(&reversed).unwrap(), lean);
    }

    #[test]
    fn the_gain_threshold_decides_both_ways() {
        let (mut dropped, mut kept) = (0, 0);
        for slow in [1.5e9, 3e9, 6e9, 10e9] {
            let i = input(61, &[("a", 20e9), ("b", 20e9), ("c", slow)]);
            let full = plan(&i).unwrap();
            let mut two = i.clone();
            two.peers.retain(|p| p.id != "c");
            let without = plan(&two).unwrap();
            let lean = lean_plan(&i).unwrap();
            let worth = full.samples_per_sec >= (1.0 + MIN_GAIN_PER_PEER) * without.samples_per_sec;
            if uses(&full, "c") && !worth {
                assert_eq!(lean, without, "slow peer at {slow}");
                dropped += 1;
            } else {
                assert_eq!(lean, full, "slow peer at {slow}");
                kept += usize::from(uses(&full, "c"));
            }
        }
        assert!(dropped > 0 && kept > 0, "dropped {dropped}, kept {kept}");
    }
}
