//! Capacity-aware pipeline placement: which contiguous range of model stages each peer of an
//! ordered chain holds, so that the pipeline's bottleneck time per sample is minimal while every
//! peer's memory suffices. Pure and deterministic: every peer computes the same [`Plan`] from the
//! same [`PlanInput`], whatever the order in which it learnt the peers and links.
//!
//! # Cost model (per training sample, steady state)
//!
//! - A peer holding stages `a..b` computes for `Σ flops_per_sample(a..b) / flops_per_sec`
//!   seconds. [`PlanStage::flops_per_sample`] already counts forward *and* backward, as
//!   `murmur_models::StageCost` does (≈ 3× the forward FLOPs), so no further factor is applied.
//! - The boundary after stage `b − 1`, from peer `p` to the next peer `q`, carries the activation
//!   down and a gradient of the same size back up: `act(b − 1) · (1 / bw(p→q) + 1 / bw(q→p))`
//!   seconds (the two directions are counted as sharing the link). A boundary moves at most
//!   `micro_batch_samples × in_flight_micro_batches` samples per round trip, so its time is at
//!   least `rtt / (micro_batch_samples × in_flight_micro_batches)`; the larger term counts.
//! - Compute and communication overlap (pipelined training), so the pipeline's time per sample
//!   is its *bottleneck*, the largest compute or boundary time, and its throughput is
//!   `1 / bottleneck` samples per second.
//! - A peer's memory need for stages `a..b` is `state_multiplier × Σ param_bytes(a..b)`
//!   (parameters, gradients and two Adam moments: 4) plus
//!   `micro_batch_samples × in_flight_micro_batches × Σ activation_bytes(a..b)` of stashed
//!   activations. It must not exceed [`PeerCapacity::memory_bytes`]. This counts each stage's
//!   *output* per kept micro-batch; a shard that keeps its forward graphs (as `StageShard`
//!   does) also holds the stages' intermediates, so the figure is low for attention-heavy
//!   ranges.
//!
//! Links: a [`Link`] is directed; a missing direction falls back to the opposite one, then to
//! [`PlanInput::default_link`]. Duplicates are merged conservatively (lowest bandwidth, highest
//! round trip), so the input order of links never matters.
//!
//! # Algorithm
//!
//! Peers are first put in a chain ([`ChainOrder::Greedy`]: start at the fastest peer, then
//! repeatedly append the unused peer with the cheapest link from the last one; ties by higher
//! speed, then lower id). Over that chain, the planner is **exact**: it finds the minimal
//! bottleneck over every way of choosing a subsequence of the chain (peers may be skipped when
//! they only slow the pipeline or lack memory) and splitting the stages contiguously over it.
//! It binary-searches the bottleneck over the bit patterns of `f64` (≤ 64 steps), so the result
//! is exactly the optimum's value; each step is a feasibility check over (peer, boundary) states
//! with bit sets, `O(P·S + P²·(log S + S/64))` for `S` stages and `P` peers. Ties between optimal
//! placements are broken deterministically (see [`plan`]).

mod cost;
mod groups;
mod lean;
mod replan;
mod solve;

use std::ops::Range;

use serde::{Deserialize, Serialize};

use cost::Model;
pub use groups::{Grouped, group_peers};
pub use lean::{MIN_GAIN_PER_PEER, lean_plan};
pub use replan::{Decision, ReplanConfig, ReplanTrigger, Replanner};

/// What one pipeline stage costs (mirrors `murmur_models::StageCost`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PlanStage {
    /// Forward + backward floating-point operations per sample.
    pub flops_per_sample: f64,
    /// Bytes of the stage's output activation per sample, sent downstream; a gradient of the
    /// same size comes back upstream.
    pub activation_bytes_per_sample: u64,
    /// Bytes of the stage's parameters.
    pub param_bytes: u64,
}

/// A peer's compute and memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerCapacity {
    /// The peer's id as text; unique, and the final tie-break of every ordering.
    pub id: String,
    /// Sustained compute, FLOP per second (finite, > 0).
    pub flops_per_sec: f64,
    /// Memory available for model state and activations, bytes.
    pub memory_bytes: u64,
}

/// Bandwidth and round-trip time of a link.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinkSpec {
    /// Throughput, bytes per second (finite, > 0).
    pub bytes_per_sec: f64,
    /// Round-trip time, seconds (finite, ≥ 0).
    pub rtt_secs: f64,
}

impl Default for LinkSpec {
    /// An unmeasured internet link: 100 Mbit/s, 20 ms round trip.
    fn default() -> Self {
        Self {
            bytes_per_sec: 12.5e6,
            rtt_secs: 0.02,
        }
    }
}

/// A measured link from peer `from` to peer `to`. Links naming unknown peers are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Link {
    /// Sending peer's id.
    pub from: String,
    /// Receiving peer's id.
    pub to: String,
    /// What was measured.
    pub spec: LinkSpec,
}

/// How a peer's memory need is computed from the stages it holds (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryModel {
    /// Parameter-sized buffers held per parameter byte (params, grads, Adam m and v: 4).
    pub state_multiplier: u64,
    /// Samples per micro-batch (≥ 1).
    pub micro_batch_samples: u64,
    /// Micro-batches whose activations a stage keeps at once (≥ 1).
    pub in_flight_micro_batches: u64,
}

impl Default for MemoryModel {
    /// Adam state (×4), micro-batches of 8 samples, 4 in flight.
    fn default() -> Self {
        Self {
            state_multiplier: 4,
            micro_batch_samples: 8,
            in_flight_micro_batches: 4,
        }
    }
}

/// Which order the peers are chained in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChainOrder {
    /// Greedy nearest neighbour over link cost from the fastest peer (module docs); independent
    /// of the order of [`PlanInput::peers`].
    #[default]
    Greedy,
    /// [`PlanInput::peers`] in the order given.
    Given,
}

/// Everything the planner needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanInput {
    /// The model's stages, in pipeline order.
    pub stages: Vec<PlanStage>,
    /// The candidate peers (ids unique).
    pub peers: Vec<PeerCapacity>,
    /// Measured links, any order.
    pub links: Vec<Link>,
    /// Assumed for pairs with no measured link in either direction.
    pub default_link: LinkSpec,
    /// How memory need is computed.
    pub memory: MemoryModel,
    /// How the peers are chained.
    pub order: ChainOrder,
}

impl PlanInput {
    /// An input with no measured links, the default link and memory model, and greedy order.
    pub fn new(stages: Vec<PlanStage>, peers: Vec<PeerCapacity>) -> Self {
        Self {
            stages,
            peers,
            links: Vec::new(),
            default_link: LinkSpec::default(),
            memory: MemoryModel::default(),
            order: ChainOrder::Greedy,
        }
    }
}

/// The stages one peer holds and what they cost it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// The peer's id.
    pub peer: String,
    /// First stage held.
    pub start: usize,
    /// One past the last stage held.
    pub end: usize,
    /// Compute time per sample.
    pub compute_secs_per_sample: f64,
    /// Time per sample of the boundary to the next peer of the plan (0 for the last peer).
    pub transfer_secs_per_sample: f64,
    /// Memory need of the held stages (saturating).
    pub memory_bytes: u64,
}

impl Assignment {
    /// The stages held, `start..end`.
    pub fn stages(&self) -> Range<usize> {
        self.start..self.end
    }
}

/// A placement of every stage, in pipeline order, and its expected throughput.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// One entry per peer used, in pipeline order; the ranges tile `0..stages`.
    pub assignments: Vec<Assignment>,
    /// The largest compute or boundary time per sample.
    pub bottleneck_secs_per_sample: f64,
    /// Expected throughput, `1 / bottleneck`.
    pub samples_per_sec: f64,
    /// Whether every peer's memory suffices (always true for [`plan`]).
    pub fits_memory: bool,
}

/// Most peers (or replica groups) one plan places stages on. The planner's tables grow with
/// the square of the peers and a plan notice is computed again by every member from inputs
/// its issuer chose: the bound keeps that work small whatever a notice lists.
pub const MAX_PLAN_PEERS: usize = 256;
/// Most stages one plan places.
pub const MAX_PLAN_STAGES: usize = 4096;
// Links: at most one per ordered pair of the most peers (`MAX_PLAN_PEERS²`).

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// The input names no peer.
    #[error("no peers to place stages on")]
    NoPeers,
    /// The input has no stage.
    #[error("no stages to place")]
    NoStages,
    /// Two peers share an id.
    #[error("peer id {0:?} appears twice")]
    DuplicatePeer(String),
    /// A number is non-finite, negative or zero where it must not be.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// One stage alone needs more memory than any peer has.
    #[error("stage {stage} needs {need_bytes} bytes but the largest peer has {max_peer_bytes}")]
    StageTooLarge {
        /// The first such stage.
        stage: usize,
        /// Its memory need.
        need_bytes: u64,
        /// The most memory any peer has.
        max_peer_bytes: u64,
    },
    /// Every stage fits somewhere, but no contiguous placement along the chain fits memory.
    #[error("memory: only stages 0..{placed} of {stages} can be placed along the peer chain")]
    MemoryInfeasible {
        /// The longest prefix of stages that can be placed.
        placed: usize,
        /// Number of stages.
        stages: usize,
    },
    /// A placement given to [`evaluate`] names a peer that is not in the input.
    #[error("peer {0:?} is not in the input")]
    UnknownPeer(String),
    /// A placement given to [`evaluate`] does not tile the stages or repeats a peer.
    #[error("invalid placement: {0}")]
    InvalidPlacement(String),
    /// The solver's tables were inconsistent (a bug).
    #[error("internal planner error: {0}")]
    Internal(&'static str),
}

/// The placement of minimal bottleneck over the chain (see the module docs).
///
/// Among optimal placements, the chosen one ends on the earliest chain peer that can finish the
/// pipeline; walking back, each peer takes the longest range it can (earliest split) and the
/// previous peer is the earliest in the chain that works. Errors on invalid input or when no
/// placement fits memory.
pub fn plan(input: &PlanInput) -> Result<Plan, PlanError> {
    let model = Model::new(input)?;
    let parts = solve::optimal(&model)?;
    Ok(model.plan_of(&parts))
}

/// The same chain with the stages split as evenly as possible by count (the first
/// `stages % peers` peers take one more; only the first `stages` peers are used when peers
/// outnumber stages), for comparison. Memory is not enforced: see [`Plan::fits_memory`].
pub fn even_split(input: &PlanInput) -> Result<Plan, PlanError> {
    let model = Model::new(input)?;
    let (s, p) = (model.stages(), model.peers().min(model.stages()));
    let mut parts = Vec::with_capacity(p);
    let mut start = 0;
    for k in 0..p {
        let end = start + s / p + usize::from(k < s % p);
        parts.push((k, start, end));
        start = end;
    }
    Ok(model.plan_of(&parts))
}

/// Costs an existing placement (only `peer`, `start` and `end` of each assignment are read)
/// under `input`, e.g. the current plan after capacities changed. Errors when a peer is unknown
/// or repeated, or when the ranges do not tile the stages in order.
pub fn evaluate(input: &PlanInput, placement: &[Assignment]) -> Result<Plan, PlanError> {
    let model = Model::new(input)?;
    let mut parts = Vec::with_capacity(placement.len());
    let mut next = 0;
    for a in placement {
        let k = model
            .position(&a.peer)
            .ok_or_else(|| PlanError::UnknownPeer(a.peer.clone()))?;
        if parts.iter().any(|&(j, _, _)| j == k) {
            return Err(PlanError::InvalidPlacement(format!("{} repeated", a.peer)));
        }
        if a.start != next || a.end <= a.start {
            return Err(PlanError::InvalidPlacement(format!(
                "{} holds {}..{}, expected a non-empty range from {next}",
                a.peer, a.start, a.end
            )));
        }
        parts.push((k, a.start, a.end));
        next = a.end;
    }
    if next != model.stages() {
        return Err(PlanError::InvalidPlacement(format!(
            "stages end at {next}, not {}",
            model.stages()
        )));
    }
    Ok(model.plan_of(&parts))
}

/// The ideal bound: the sum of the peers' capacities, each `flops_per_sec / Σ flops_per_sample`
/// samples per second, as if training were perfectly parallel and communication free.
pub fn ideal_samples_per_sec(input: &PlanInput) -> Result<f64, PlanError> {
    let model = Model::new(input)?;
    Ok(model.total_speed() / model.total_flops())
}

/// The peers' ids in chain order (per [`PlanInput::order`]).
pub fn chain(input: &PlanInput) -> Result<Vec<String>, PlanError> {
    Ok(Model::new(input)?.chain_ids())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn stage(flops: f64, act: u64, params: u64) -> PlanStage {
        PlanStage {
            flops_per_sample: flops,
            activation_bytes_per_sample: act,
            param_bytes: params,
        }
    }

    pub(super) fn peer(id: &str, flops_per_sec: f64, memory_bytes: u64) -> PeerCapacity {
        PeerCapacity {
            id: id.into(),
            flops_per_sec,
            memory_bytes,
        }
    }

    /// Every member computes a notice's plan again from inputs its issuer chose: a notice
    /// listing thousands of peers (tables quadratic in them, a lean plan per peer left out)
    /// or stages is refused before any table is built (before: planned, for minutes).
    #[test]
    fn inputs_beyond_the_plan_bounds_are_refused() {
        let many: Vec<PeerCapacity> = (0..=MAX_PLAN_PEERS)
            .map(|i| peer(&format!("p{i}"), 1e9, u64::MAX))
            .collect();
        let input = PlanInput::new(vec![stage(1e6, 1, 1); 8], many);
        assert!(matches!(plan(&input), Err(PlanError::Invalid(_))));
        assert!(matches!(even_split(&input), Err(PlanError::Invalid(_))));
        let long = PlanInput::new(
            vec![stage(1e6, 1, 1); MAX_PLAN_STAGES + 1],
            vec![peer("a", 1e9, u64::MAX)],
        );
        assert!(matches!(plan(&long), Err(PlanError::Invalid(_))));
        let mut links = PlanInput::new(vec![stage(1e6, 1, 1); 8], vec![peer("a", 1e9, 1 << 40)]);
        links.links = vec![
            Link {
                from: "a".into(),
                to: "b".into(),
                spec: LinkSpec::default(),
            };
            MAX_PLAN_PEERS * MAX_PLAN_PEERS + 1
        ];
        assert!(matches!(plan(&links), Err(PlanError::Invalid(_))));
        let fits: Vec<PeerCapacity> = (0..MAX_PLAN_PEERS)
            .map(|i| peer(&format!("p{i}"), 1e9, u64::MAX))
            .collect();
        assert!(plan(&PlanInput::new(vec![stage(1e6, 1, 1); 8], fits)).is_ok());
    }

    /// `n` unit stages on peers of the given speeds with plenty of memory and free links.
    fn compute_bound(n: usize, speeds: &[(&str, f64)]) -> PlanInput {
        let peers = speeds
            .iter()
            .map(|&(id, f)| peer(id, f, u64::MAX))
            .collect();
        PlanInput {
            default_link: LinkSpec {
                bytes_per_sec: 1e15,
                rtt_secs: 0.0,
            },
            ..PlanInput::new(vec![stage(1.0, 1, 1); n], peers)
        }
    }

    fn split(plan: &Plan) -> Vec<(&str, usize)> {
        plan.assignments
            .iter()
            .map(|a| (a.peer.as_str(), a.end - a.start))
            .collect()
    }

    #[test]
    fn proportional_capacities_get_proportional_stages() {
        let p = plan(&compute_bound(14, &[("b", 2.0), ("c", 1.0), ("a", 4.0)])).unwrap();
        assert_eq!(split(&p), [("a", 8), ("b", 4), ("c", 2)]);
        assert_eq!(p.bottleneck_secs_per_sample, 2.0);
        assert_eq!(p.samples_per_sec, 0.5);
        let p = plan(&compute_bound(
            12,
            &[("w", 3.0), ("x", 3.0), ("y", 3.0), ("z", 3.0)],
        ))
        .unwrap();
        assert_eq!(split(&p), [("w", 3), ("x", 3), ("y", 3), ("z", 3)]);
    }

    #[test]
    fn skewed_peers_beat_the_even_split() {
        // The bench's scenarios: 3 peers slowed 1×/2×/4× and 1×/1×/8×, 12 uniform stages.
        for (speeds, ratio) in [([1.0, 0.5, 0.25], 2.0), ([1.0, 1.0, 0.125], 16.0 / 3.0)] {
            let input = compute_bound(12, &[("a", speeds[0]), ("b", speeds[1]), ("c", speeds[2])]);
            let (p, e) = (plan(&input).unwrap(), even_split(&input).unwrap());
            assert_eq!(split(&e), [("a", 4), ("b", 4), ("c", 4)]);
            assert!((p.samples_per_sec / e.samples_per_sec - ratio).abs() < 1e-12);
            assert!(p.samples_per_sec <= ideal_samples_per_sec(&input).unwrap());
        }
    }

    #[test]
    fn memory_limits_are_respected() {
        // Each stage needs 4 × 10 + 32 × 1 = 72 bytes; "b" has room for two.
        let mut input = compute_bound(6, &[("a", 1.0), ("b", 1.0)]);
        input.stages = vec![stage(1.0, 1, 10); 6];
        input.peers[1].memory_bytes = 150;
        let p = plan(&input).unwrap();
        assert_eq!(split(&p), [("a", 4), ("b", 2)]);
        assert!(p.fits_memory && p.assignments[1].memory_bytes == 144);
        let e = even_split(&input).unwrap();
        assert!(!e.fits_memory && e.assignments[1].memory_bytes == 216);

        input.peers[0].memory_bytes = 71;
        input.peers[1].memory_bytes = 71;
        let err = plan(&input).unwrap_err();
        assert_eq!(
            err,
            PlanError::StageTooLarge {
                stage: 0,
                need_bytes: 72,
                max_peer_bytes: 71
            }
        );

        // Stage 0 only fits "b", which comes after "a" in the given chain and cannot hold both.
        input.order = ChainOrder::Given;
        input.stages[0].param_bytes = 20;
        input.peers[0].memory_bytes = 100;
        input.peers[1].memory_bytes = 120;
        assert_eq!(
            plan(&input).unwrap_err(),
            PlanError::MemoryInfeasible {
                placed: 1,
                stages: 6
            }
        );
    }

    #[test]
    fn slow_links_and_round_trips_are_costed() {
        // A 1 MB activation over a 1 MB/s link costs 2 s per sample: one peer is better.
        let mut input = compute_bound(2, &[("a", 1.0), ("b", 1.0)]);
        input.stages = vec![stage(1.0, 1_000_000, 1); 2];
        input.default_link.bytes_per_sec = 1e6;
        let p = plan(&input).unwrap();
        assert_eq!(split(&p), [("a", 2)]);
        assert_eq!(even_split(&input).unwrap().bottleneck_secs_per_sample, 2.0);
        // A measured fast link (one direction; the other falls back to it) makes splitting pay.
        input.links.push(Link {
            from: "b".into(),
            to: "a".into(),
            spec: LinkSpec {
                bytes_per_sec: 1e8,
                rtt_secs: 3.2,
            },
        });
        let p = plan(&input).unwrap();
        assert_eq!(split(&p), [("a", 1), ("b", 1)]);
        // Round-trip floor: 3.2 s / (8 samples × 4 in flight).
        assert_eq!(p.assignments[0].transfer_secs_per_sample, 0.1);
        assert_eq!(p.assignments[1].transfer_secs_per_sample, 0.0);
    }

    #[test]
    fn plans_are_deterministic_and_order_independent() {
        let mut input = compute_bound(
            40,
            &[
                ("p3", 2.0),
                ("p1", 5.0),
                ("p0", 2.0),
                ("p2", 7.0),
                ("p4", 1.0),
            ],
        );
        for (i, s) in input.stages.iter_mut().enumerate() {
            *s = stage((i * 7 % 11) as f64 + 1.0, (i * 13 % 17) as u64 * 1000, 10);
        }
        for (a, b, bw) in [
            ("p1", "p2", 1e6),
            ("p2", "p0", 2e6),
            ("p0", "p3", 5e5),
            ("p2", "p1", 3e6),
        ] {
            input.links.push(Link {
                from: a.into(),
                to: b.into(),
                spec: LinkSpec {
                    bytes_per_sec: bw,
                    rtt_secs: 0.01,
                },
            });
        }
        input.default_link.bytes_per_sec = 1e5;
        let p = plan(&input).unwrap();
        let json = serde_json::to_string(&p).unwrap();
        let mut shuffled = input.clone();
        shuffled.peers.reverse();
        shuffled.links.reverse();
        shuffled.peers.rotate_left(2);
        assert_eq!(
            serde_json::to_string(&plan(&shuffled).unwrap()).unwrap(),
            json
        );
        assert_eq!(chain(&input).unwrap(), chain(&shuffled).unwrap());
        assert_eq!(chain(&input).unwrap()[0], "p2");
        assert_eq!(evaluate(&input, &p.assignments).unwrap(), p);
    }

    #[test]
    fn invalid_input_is_rejected() {
        let ok = compute_bound(3, &[("a", 1.0)]);
        let check = |f: &dyn Fn(&mut PlanInput), want: &str| {
            let mut input = ok.clone();
            f(&mut input);
            let err = plan(&input).unwrap_err().to_string();
            assert!(err.contains(want), "{err} lacks {want}");
        };
        check(&|i| i.peers.clear(), "no peers");
        check(&|i| i.stages.clear(), "no stages");
        check(&|i| i.peers.push(peer("a", 1.0, 1)), "appears twice");
        check(
            &|i| i.peers[0].flops_per_sec = f64::NAN,
            "flops_per_sec of a",
        );
        check(&|i| i.peers[0].flops_per_sec = 0.0, "flops_per_sec of a");
        check(&|i| i.stages[1].flops_per_sample = -1.0, "stage 1");
        check(
            &|i| i.stages.iter_mut().for_each(|s| s.flops_per_sample = 0.0),
            "total",
        );
        check(&|i| i.default_link.bytes_per_sec = 0.0, "default link");
        check(
            &|i| i.default_link.rtt_secs = f64::INFINITY,
            "default link rtt",
        );
        check(&|i| i.memory.micro_batch_samples = 0, "micro-batch");
        assert!(ideal_samples_per_sec(&ok).is_ok() && even_split(&ok).is_ok());
    }

    #[test]
    fn evaluate_checks_the_placement() {
        let input = compute_bound(4, &[("a", 1.0), ("b", 1.0)]);
        let p = plan(&input).unwrap();
        assert_eq!(evaluate(&input, &p.assignments).unwrap(), p);
        let mut bad = p.assignments.clone();
        bad[0].peer = "zz".into();
        assert_eq!(
            evaluate(&input, &bad).unwrap_err(),
            PlanError::UnknownPeer("zz".into())
        );
        let mut bad = p.assignments.clone();
        bad[1].peer = "a".into();
        assert!(matches!(
            evaluate(&input, &bad),
            Err(PlanError::InvalidPlacement(_))
        ));
        let mut bad = p.assignments.clone();
        bad[1].end -= 1;
        assert!(matches!(
            evaluate(&input, &bad),
            Err(PlanError::InvalidPlacement(_))
        ));
        assert!(matches!(
            evaluate(&input, &[]),
            Err(PlanError::InvalidPlacement(_))
        ));
    }

    #[test]
    fn even_split_and_ideal() {
        let input = compute_bound(10, &[("a", 1.0), ("b", 2.0), ("c", 5.0)]);
        assert_eq!(
            split(&even_split(&input).unwrap()),
            [("c", 4), ("b", 3), ("a", 3)]
        );
        assert_eq!(ideal_samples_per_sec(&input).unwrap(), 0.8);
        let input = compute_bound(2, &[("a", 1.0), ("b", 1.0), ("c", 1.0)]);
        assert_eq!(split(&even_split(&input).unwrap()), [("a", 1), ("b", 1)]);
    }

    #[test]
    fn json_round_trip() {
        let mut input = compute_bound(3, &[("a", 1.0), ("b", 2.0)]);
        input.links.push(Link {
            from: "a".into(),
            to: "b".into(),
            spec: LinkSpec::default(),
        });
        let text = serde_json::to_string(&input).unwrap();
        assert!(text.contains(r#""from":"a","to":"b","spec":{"bytes_per_sec""#));
        assert_eq!(serde_json::from_str::<PlanInput>(&text).unwrap(), input);
        let p = plan(&input).unwrap();
        assert_eq!(
            serde_json::from_str::<Plan>(&serde_json::to_string(&p).unwrap()).unwrap(),
            p
        );
        assert_eq!(p.assignments[0].stages(), 0..p.assignments[0].end);
    }
}
