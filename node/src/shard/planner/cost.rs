//! The validated cost model of one [`PlanInput`]: the peer chain, prefix sums over the stages
//! and pairwise link costs, with the compute, boundary and memory costs every part of the
//! planner (solver, even split, evaluation) reads, so that they all agree bit for bit.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use super::{
    Assignment, ChainOrder, LinkSpec, MAX_PLAN_PEERS, MAX_PLAN_STAGES, Plan, PlanError, PlanInput,
};

/// A part of a placement: (chain position, first stage, one past the last stage).
pub(super) type Part = (usize, usize, usize);

/// A validated input with everything the planner computes from it, indexed by chain position.
#[derive(Debug)]
pub(super) struct Model<'a> {
    input: &'a PlanInput,
    /// Peer index (into `input.peers`) of each chain position.
    chain: Vec<usize>,
    /// Speed and memory per chain position.
    speed: Vec<f64>,
    memory: Vec<u64>,
    /// `flops[i]` = Σ flops of stages `0..i` (S + 1 entries, summed in stage order).
    flops: Vec<f64>,
    params: Vec<u128>,
    acts: Vec<u128>,
    /// Activation bytes of each stage, as `f64`.
    act: Vec<f64>,
    /// Samples of activations stashed per stage (micro-batch × in flight).
    stash: u128,
    /// Per ordered pair of chain positions `j * P + k`: seconds per activation byte (down and
    /// gradient up) and the round-trip floor of a boundary, seconds per sample.
    per_byte: Vec<f64>,
    floor: Vec<f64>,
}

fn finite(what: &str, x: f64, positive: bool) -> Result<(), PlanError> {
    let ok = x.is_finite() && if positive { x > 0.0 } else { x >= 0.0 };
    match ok {
        true => Ok(()),
        false => Err(PlanError::Invalid(format!("{what} is {x}"))),
    }
}

fn check_link(what: &str, l: &LinkSpec) -> Result<(), PlanError> {
    finite(&format!("{what} bytes_per_sec"), l.bytes_per_sec, true)?;
    finite(&format!("{what} rtt_secs"), l.rtt_secs, false)
}

/// Checks every peer's speed and that no id repeats; maps each id to its index in
/// `input.peers`.
fn peer_index(input: &PlanInput) -> Result<BTreeMap<&str, usize>, PlanError> {
    let mut index = BTreeMap::new();
    for (i, p) in input.peers.iter().enumerate() {
        finite(&format!("flops_per_sec of {}", p.id), p.flops_per_sec, true)?;
        if index.insert(p.id.as_str(), i).is_some() {
            return Err(PlanError::DuplicatePeer(p.id.clone()));
        }
    }
    Ok(index)
}

/// Prefix sums over the stages: entry `i` sums stages `0..i` (S + 1 entries, in stage order).
struct PrefixSums {
    /// FLOPs per sample.
    flops: Vec<f64>,
    /// Parameter bytes.
    params: Vec<u128>,
    /// Activation bytes per sample.
    acts: Vec<u128>,
}

/// The stages' [`PrefixSums`]. Checks every stage's FLOPs.
fn prefix_sums(input: &PlanInput) -> Result<PrefixSums, PlanError> {
    let (mut flops, mut params, mut acts) = (vec![0.0], vec![0u128], vec![0u128]);
    for (i, st) in input.stages.iter().enumerate() {
        finite(
            &format!("flops_per_sample of stage {i}"),
            st.flops_per_sample,
            false,
        )?;
        flops.push(flops[i] + st.flops_per_sample);
        params.push(params[i] + u128::from(st.param_bytes));
        acts.push(acts[i] + u128::from(st.activation_bytes_per_sample));
    }
    Ok(PrefixSums {
        flops,
        params,
        acts,
    })
}

/// Checks every link and merges them into directed links between peer indices: lowest
/// bandwidth, highest round trip. Links naming an unknown peer, or a peer to itself, are
/// skipped.
fn merged_links(
    input: &PlanInput,
    index: &BTreeMap<&str, usize>,
) -> Result<BTreeMap<(usize, usize), LinkSpec>, PlanError> {
    let mut links: BTreeMap<(usize, usize), LinkSpec> = BTreeMap::new();
    for l in &input.links {
        check_link(&format!("link {} → {}", l.from, l.to), &l.spec)?;
        let (Some(&a), Some(&b)) = (index.get(l.from.as_str()), index.get(l.to.as_str())) else {
            continue;
        };
        if a != b {
            let e = links.entry((a, b)).or_insert(l.spec);
            e.bytes_per_sec = e.bytes_per_sec.min(l.spec.bytes_per_sec);
            e.rtt_secs = e.rtt_secs.max(l.spec.rtt_secs);
        }
    }
    Ok(links)
}

impl<'a> Model<'a> {
    /// Validates `input` and precomputes everything.
    pub(super) fn new(input: &'a PlanInput) -> Result<Self, PlanError> {
        let (n, s) = (input.peers.len(), input.stages.len());
        if n == 0 {
            return Err(PlanError::NoPeers);
        }
        let max_links = MAX_PLAN_PEERS * MAX_PLAN_PEERS;
        if n > MAX_PLAN_PEERS || s > MAX_PLAN_STAGES || input.links.len() > max_links {
            return Err(PlanError::Invalid(format!(
                "{n} peers, {s} stages and {} links: at most {MAX_PLAN_PEERS} peers, \
                 {MAX_PLAN_STAGES} stages and {max_links} links",
                input.links.len()
            )));
        }
        if s == 0 {
            return Err(PlanError::NoStages);
        }
        let index = peer_index(input)?;
        let m = input.memory;
        if m.micro_batch_samples == 0 || m.in_flight_micro_batches == 0 {
            return Err(PlanError::Invalid(
                "micro-batch size and in-flight count must be ≥ 1".into(),
            ));
        }
        let stash = u128::from(m.micro_batch_samples) * u128::from(m.in_flight_micro_batches);
        let PrefixSums {
            flops,
            params,
            acts,
        } = prefix_sums(input)?;
        finite("total flops_per_sample", flops[s], true)?;
        check_link("default link", &input.default_link)?;
        let links = merged_links(input, &index)?;
        let dir = |a: usize, b: usize| {
            let l = links.get(&(a, b)).or_else(|| links.get(&(b, a)));
            *l.unwrap_or(&input.default_link)
        };
        let pair = |a: usize, b: usize| {
            let (down, up) = (dir(a, b), dir(b, a));
            let per_byte = 1.0 / down.bytes_per_sec + 1.0 / up.bytes_per_sec;
            (per_byte, down.rtt_secs.max(up.rtt_secs) / stash as f64)
        };
        let chain = match input.order {
            ChainOrder::Given => (0..n).collect(),
            ChainOrder::Greedy => greedy_chain(input, &pair),
        };
        let (mut per_byte, mut floor) = (vec![0.0; n * n], vec![0.0; n * n]);
        for (j, &a) in chain.iter().enumerate() {
            for (k, &b) in chain.iter().enumerate() {
                if a != b {
                    (per_byte[j * n + k], floor[j * n + k]) = pair(a, b);
                }
            }
        }
        Ok(Self {
            input,
            speed: chain
                .iter()
                .map(|&i| input.peers[i].flops_per_sec)
                .collect(),
            memory: chain.iter().map(|&i| input.peers[i].memory_bytes).collect(),
            chain,
            flops,
            params,
            acts,
            act: input
                .stages
                .iter()
                .map(|st| st.activation_bytes_per_sample as f64)
                .collect(),
            stash,
            per_byte,
            floor,
        })
    }

    /// Number of stages.
    pub(super) fn stages(&self) -> usize {
        self.act.len()
    }

    /// Number of peers (chain positions).
    pub(super) fn peers(&self) -> usize {
        self.chain.len()
    }

    /// FLOPs per sample of the whole model.
    pub(super) fn total_flops(&self) -> f64 {
        self.flops[self.stages()]
    }

    /// FLOP per second of all peers, summed in chain order (independent of the input order).
    pub(super) fn total_speed(&self) -> f64 {
        self.speed.iter().sum()
    }

    /// Activation bytes of the stage before boundary `s` (sort key of boundaries).
    pub(super) fn boundary_act(&self, s: usize) -> f64 {
        self.act[s - 1]
    }

    /// FLOPs per sample of stages `s..t`; non-decreasing in `t` and non-increasing in `s`
    /// (rounding is monotone).
    pub(super) fn flops(&self, s: usize, t: usize) -> f64 {
        self.flops[t] - self.flops[s]
    }

    /// Compute seconds per sample of chain peer `k` holding stages `s..t`.
    pub(super) fn compute(&self, k: usize, s: usize, t: usize) -> f64 {
        self.flops(s, t) / self.speed[k]
    }

    /// The largest `x` with `x / speed ≤ b` on chain peer `k`, so that `compute(k, s, t) ≤ b`
    /// exactly when `flops(s, t) ≤ flops_within(k, b)` (division is monotone); saves a
    /// division in the solver's inner loop.
    pub(super) fn flops_within(&self, k: usize, b: f64) -> f64 {
        let fits = |bits: u64| f64::from_bits(bits) / self.speed[k] <= b;
        let (mut lo, mut hi) = (0u64, f64::INFINITY.to_bits());
        if fits(hi) {
            return f64::INFINITY;
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            *if fits(mid) { &mut lo } else { &mut hi } = mid;
        }
        f64::from_bits(lo)
    }

    /// Memory need of stages `s..t`, saturating.
    pub(super) fn need(&self, s: usize, t: usize) -> u128 {
        let state = u128::from(self.input.memory.state_multiplier);
        let params = state.saturating_mul(self.params[t] - self.params[s]);
        params.saturating_add(self.stash.saturating_mul(self.acts[t] - self.acts[s]))
    }

    /// Whether chain peer `k` has the memory for stages `s..t`.
    pub(super) fn fits(&self, k: usize, s: usize, t: usize) -> bool {
        self.need(s, t) <= u128::from(self.memory[k])
    }

    /// The largest memory of any peer.
    pub(super) fn max_memory(&self) -> u64 {
        self.memory.iter().copied().max().unwrap_or(0)
    }

    /// Seconds per sample of boundary `s` (after stage `s − 1`) from chain peer `j` to `k`;
    /// non-decreasing in the boundary's activation size.
    pub(super) fn transfer(&self, j: usize, k: usize, s: usize) -> f64 {
        let i = j * self.peers() + k;
        (self.act[s - 1] * self.per_byte[i]).max(self.floor[i])
    }

    /// The chain position of a peer id.
    pub(super) fn position(&self, id: &str) -> Option<usize> {
        self.chain
            .iter()
            .position(|&i| self.input.peers[i].id == id)
    }

    /// The peers' ids in chain order.
    pub(super) fn chain_ids(&self) -> Vec<String> {
        self.chain
            .iter()
            .map(|&i| self.input.peers[i].id.clone())
            .collect()
    }

    /// Costs a placement whose parts tile the stages in order.
    pub(super) fn plan_of(&self, parts: &[Part]) -> Plan {
        let mut fits_memory = true;
        let mut bottleneck: f64 = 0.0;
        let assignments = parts
            .iter()
            .enumerate()
            .map(|(i, &(k, s, t))| {
                let compute = self.compute(k, s, t);
                let transfer = parts
                    .get(i + 1)
                    .map_or(0.0, |&(q, _, _)| self.transfer(k, q, t));
                fits_memory &= self.fits(k, s, t);
                bottleneck = bottleneck.max(compute).max(transfer);
                Assignment {
                    peer: self.input.peers[self.chain[k]].id.clone(),
                    start: s,
                    end: t,
                    compute_secs_per_sample: compute,
                    transfer_secs_per_sample: transfer,
                    memory_bytes: u64::try_from(self.need(s, t)).unwrap_or(u64::MAX),
                }
            })
            .collect();
        Plan {
            assignments,
            bottleneck_secs_per_sample: bottleneck,
            samples_per_sec: 1.0 / bottleneck,
            fits_memory,
        }
    }
}

/// Greedy nearest-neighbour chain: the fastest peer first, then repeatedly the unused peer with
/// the cheapest link (per byte, then round trip) from the last; ties by speed, then id.
fn greedy_chain(input: &PlanInput, pair: &dyn Fn(usize, usize) -> (f64, f64)) -> Vec<usize> {
    let peers = &input.peers;
    let faster = |a: usize, b: usize| {
        let (pa, pb) = (&peers[a], &peers[b]);
        pb.flops_per_sec
            .total_cmp(&pa.flops_per_sec)
            .then_with(|| pa.id.cmp(&pb.id))
    };
    let mut left: BTreeSet<usize> = (0..peers.len()).collect();
    let mut chain = Vec::with_capacity(peers.len());
    let mut last: Option<usize> = None;
    while let Some(next) = left.iter().copied().min_by(|&a, &b| {
        let link = |x: usize| last.map(|l| pair(l, x));
        let by_link = match (link(a), link(b)) {
            (Some((ba, ra)), Some((bb, rb))) => ba.total_cmp(&bb).then(ra.total_cmp(&rb)),
            _ => Ordering::Equal,
        };
        by_link.then_with(|| faster(a, b))
    }) {
        left.remove(&next);
        chain.push(next);
        last = Some(next);
    }
    chain
}
