//! The exact solver over a fixed peer chain: binary search of the bottleneck over `f64` bit
//! patterns, a bit-set feasibility check over (peer, boundary) states, and a deterministic
//! reconstruction of one optimal placement.
//!
//! Feasibility of a bottleneck `b`: `reach[k]` is the set of boundaries `t` such that stages
//! `0..t` can be placed with every cost ≤ `b`, the last range on chain peer `k`. Peer `k` may
//! start at boundary `s` (`entry[k]`) when `s = 0` or some earlier peer `j` reaches `s` and the
//! boundary `j → k` at `s` costs ≤ `b`; since that cost grows with the activation size at `s`,
//! the allowed boundaries of a pair are a prefix of the boundaries sorted by activation, one
//! precomputed bit set. From a start `s`, `k` can end anywhere up to `max_end[s]`, the furthest
//! end within `b` and memory, which is non-decreasing in `s` (two pointers).

use super::PlanError;
use super::cost::{Model, Part};

/// A bit set over `0..=stages`.
#[derive(Debug, Clone)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(len: usize) -> Self {
        Self(vec![0; len.div_ceil(64)])
    }

    fn get(&self, i: usize) -> bool {
        self.0[i / 64] >> (i % 64) & 1 == 1
    }

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn clear(&mut self) {
        self.0.fill(0);
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }

    /// `self |= a & b`.
    fn or_and(&mut self, a: &Self, b: &Self) {
        for ((w, x), y) in self.0.iter_mut().zip(&a.0).zip(&b.0) {
            *w |= x & y;
        }
    }

    /// Sets `lo..hi`.
    fn set_range(&mut self, lo: usize, hi: usize) {
        let mask = |i: usize| !0u64 << (i % 64);
        let (a, b) = (lo / 64, hi / 64);
        if a == b {
            self.0[a] |= mask(lo) & !mask(hi);
            return;
        }
        self.0[a] |= mask(lo);
        self.0[a + 1..b].fill(!0);
        if !hi.is_multiple_of(64) {
            self.0[b] |= !mask(hi);
        }
    }

    /// The set members below `end`, ascending.
    fn ones(&self, end: usize) -> impl Iterator<Item = usize> + '_ {
        self.0
            .iter()
            .enumerate()
            .flat_map(move |(i, &w)| {
                let mut w = w;
                std::iter::from_fn(move || {
                    (w != 0).then(|| {
                        let bit = w.trailing_zeros() as usize;
                        w &= w - 1;
                        i * 64 + bit
                    })
                })
            })
            .take_while(move |&x| x < end)
    }

    fn last(&self) -> Option<usize> {
        let i = self.0.iter().rposition(|&w| w != 0)?;
        Some(i * 64 + 63 - self.0[i].leading_zeros() as usize)
    }
}

#[derive(Debug)]
struct Solver<'m, 'a> {
    m: &'m Model<'a>,
    /// Boundaries `1..stages`, sorted by the activation crossing them (then by index).
    by_act: Vec<usize>,
    /// `prefix[n]`: the first `n` boundaries of `by_act`.
    prefix: Vec<Bits>,
    /// `mem_end[k * stages + s]`: the furthest end from `s` within chain peer `k`'s memory.
    mem_end: Vec<usize>,
    /// Tables of the last run: `max_end[k * stages + s]`, `entry[k]`, `reach[k]`.
    max_end: Vec<usize>,
    entry: Vec<Bits>,
    reach: Vec<Bits>,
}

impl<'m, 'a> Solver<'m, 'a> {
    fn new(m: &'m Model<'a>) -> Self {
        let (s, p) = (m.stages(), m.peers());
        let mut by_act: Vec<usize> = (1..s).collect();
        by_act.sort_by(|&x, &y| {
            m.boundary_act(x)
                .total_cmp(&m.boundary_act(y))
                .then(x.cmp(&y))
        });
        let mut prefix = vec![Bits::new(s + 1)];
        for &b in &by_act {
            let mut next = prefix[prefix.len() - 1].clone();
            next.set(b);
            prefix.push(next);
        }
        let mut mem_end = vec![0; p * s];
        for (k, row) in mem_end.chunks_mut(s).enumerate() {
            let mut t = 0;
            for (start, end) in row.iter_mut().enumerate() {
                t = t.max(start);
                while t < s && m.fits(k, start, t + 1) {
                    t += 1;
                }
                *end = t;
            }
        }
        Self {
            m,
            by_act,
            prefix,
            mem_end,
            max_end: vec![0; p * s],
            entry: vec![Bits::new(s + 1); p],
            reach: vec![Bits::new(s + 1); p],
        }
    }

    /// Fills the tables for bottleneck `b`, peer by peer; returns the first chain peer that
    /// reaches the end (tables are then complete up to it), or `None` if `b` is infeasible.
    fn run(&mut self, b: f64) -> Option<usize> {
        let (m, n) = (self.m, self.m.stages());
        for k in 0..m.peers() {
            let (done, rest) = self.reach.split_at_mut(k);
            let (entry, reach) = (&mut self.entry[k], &mut rest[0]);
            entry.clear();
            entry.set(0);
            for (j, from) in done.iter().enumerate() {
                if !from.is_empty() {
                    let allowed = self.by_act.partition_point(|&s| m.transfer(j, k, s) <= b);
                    entry.or_and(from, &self.prefix[allowed]);
                }
            }
            // Only starts in `entry` matter; the two pointers stay valid when skipping others.
            let rows = k * n..(k + 1) * n;
            let (max_end, mem_end) = (&mut self.max_end[rows.clone()], &self.mem_end[rows]);
            let (mut t, mut far, within) = (0, 0, m.flops_within(k, b));
            reach.clear();
            for s in entry.ones(n) {
                t = t.max(s);
                while t < mem_end[s] && m.flops(s, t + 1) <= within {
                    t += 1;
                }
                max_end[s] = t;
                // Ends `s + 1..=t` are reached; `far` is the furthest end set so far.
                if t > far.max(s) {
                    reach.set_range(far.max(s) + 1, t + 1);
                    far = t;
                }
            }
            if reach.get(n) {
                return Some(k);
            }
        }
        None
    }

    /// Why even an unbounded bottleneck is infeasible (after a failed `run`).
    fn memory_error(&self) -> PlanError {
        let (m, n) = (self.m, self.m.stages());
        let max_peer_bytes = m.max_memory();
        match (0..n).find(|&i| m.need(i, i + 1) > u128::from(max_peer_bytes)) {
            Some(stage) => PlanError::StageTooLarge {
                stage,
                need_bytes: u64::try_from(m.need(stage, stage + 1)).unwrap_or(u64::MAX),
                max_peer_bytes,
            },
            None => PlanError::MemoryInfeasible {
                placed: self.reach.iter().filter_map(Bits::last).max().unwrap_or(0),
                stages: n,
            },
        }
    }

    /// Walks back from the end on `last` (after a successful `run(b)`): each peer takes the
    /// earliest start it can, its predecessor is the earliest chain peer that works.
    fn reconstruct(&self, last: usize, b: f64) -> Result<Vec<Part>, PlanError> {
        let (m, n) = (self.m, self.m.stages());
        let (mut k, mut t, mut parts) = (last, n, Vec::new());
        loop {
            let s = (0..t)
                .find(|&s| self.entry[k].get(s) && self.max_end[k * n + s] >= t)
                .ok_or(PlanError::Internal("no start for a reached end"))?;
            parts.push((k, s, t));
            if s == 0 {
                break;
            }
            k = (0..k)
                .find(|&j| self.reach[j].get(s) && m.transfer(j, k, s) <= b)
                .ok_or(PlanError::Internal("no predecessor for an entry"))?;
            t = s;
        }
        parts.reverse();
        Ok(parts)
    }
}

/// One placement of minimal bottleneck over the model's chain.
pub(super) fn optimal(m: &Model<'_>) -> Result<Vec<Part>, PlanError> {
    let mut solver = Solver::new(m);
    if solver.run(f64::INFINITY).is_none() {
        return Err(solver.memory_error());
    }
    // Smallest feasible bit pattern: non-negative floats order like their bits, and the optimum
    // is itself a cost value, so the search ends exactly on it.
    let (mut lo, mut hi) = (0u64, f64::INFINITY.to_bits());
    if solver.run(0.0).is_some() {
        hi = 0;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match solver.run(f64::from_bits(mid)) {
            Some(_) => hi = mid,
            None => lo = mid,
        }
    }
    let b = f64::from_bits(hi);
    let last = solver
        .run(b)
        .ok_or(PlanError::Internal("optimum infeasible"))?;
    solver.reconstruct(last, b)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use proptest::test_runner::{RngAlgorithm, RngSeed};

    use super::Bits;
    use crate::shard::planner::{
        ChainOrder, Link, LinkSpec, MemoryModel, PeerCapacity, Plan, PlanInput, PlanStage, chain,
        evaluate, even_split, ideal_samples_per_sec, plan,
    };

    /// Costs computed independently of the solver: direct sums, links looked up in the list.
    struct Oracle<'a> {
        input: &'a PlanInput,
        peers: Vec<&'a PeerCapacity>,
    }

    impl<'a> Oracle<'a> {
        fn new(input: &'a PlanInput) -> Self {
            let ids = chain(input).unwrap();
            let peers = ids
                .iter()
                .map(|id| input.peers.iter().find(|p| &p.id == id).unwrap());
            Self {
                input,
                peers: peers.collect(),
            }
        }

        fn link(&self, a: &str, b: &str) -> LinkSpec {
            let find = |x: &str, y: &str| {
                let l: Vec<_> = self
                    .input
                    .links
                    .iter()
                    .filter(|l| l.from == x && l.to == y)
                    .collect();
                let bw = l.iter().map(|l| l.spec.bytes_per_sec).reduce(f64::min)?;
                let rtt = l.iter().map(|l| l.spec.rtt_secs).fold(0.0, f64::max);
                Some(LinkSpec {
                    bytes_per_sec: bw,
                    rtt_secs: rtt,
                })
            };
            find(a, b)
                .or_else(|| find(b, a))
                .unwrap_or(self.input.default_link)
        }

        fn stash(&self) -> u128 {
            let m = self.input.memory;
            u128::from(m.micro_batch_samples) * u128::from(m.in_flight_micro_batches)
        }

        /// Compute seconds of chain peer `k` on `s..t`, or `None` if it lacks the memory.
        fn part(&self, k: usize, s: usize, t: usize) -> Option<f64> {
            let st = &self.input.stages[s..t];
            let params: u128 = st.iter().map(|x| u128::from(x.param_bytes)).sum();
            let acts: u128 = st
                .iter()
                .map(|x| u128::from(x.activation_bytes_per_sample))
                .sum();
            let need =
                u128::from(self.input.memory.state_multiplier) * params + self.stash() * acts;
            let flops: f64 = st.iter().map(|x| x.flops_per_sample).sum();
            (need <= u128::from(self.peers[k].memory_bytes))
                .then(|| flops / self.peers[k].flops_per_sec)
        }

        fn transfer(&self, j: usize, k: usize, s: usize) -> f64 {
            let (a, b) = (&self.peers[j].id, &self.peers[k].id);
            let (down, up) = (self.link(a, b), self.link(b, a));
            let act = self.input.stages[s - 1].activation_bytes_per_sample as f64;
            (act * (1.0 / down.bytes_per_sec + 1.0 / up.bytes_per_sec))
                .max(down.rtt_secs.max(up.rtt_secs) / self.stash() as f64)
        }

        /// Minimal bottleneck by enumerating every peer subsequence and every split.
        fn brute_force(&self) -> Option<f64> {
            let (n, p) = (self.input.stages.len(), self.peers.len());
            let mut best: Option<f64> = None;
            for used in 1u32..1 << p {
                let used: Vec<usize> = (0..p).filter(|k| used >> k & 1 == 1).collect();
                for cuts in 0u32..1 << (n - 1) {
                    if cuts.count_ones() as usize + 1 != used.len() {
                        continue;
                    }
                    let mut bounds: Vec<usize> =
                        (1..n).filter(|i| cuts >> (i - 1) & 1 == 1).collect();
                    bounds.insert(0, 0);
                    bounds.push(n);
                    let mut cost = Some(0.0f64);
                    for (i, &k) in used.iter().enumerate() {
                        let c = self.part(k, bounds[i], bounds[i + 1]);
                        cost = cost.zip(c).map(|(a, b)| a.max(b));
                        if i > 0 {
                            cost = cost.map(|a| a.max(self.transfer(used[i - 1], k, bounds[i])));
                        }
                    }
                    best = match (best, cost) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
            }
            best
        }

        /// Minimal bottleneck by a plain O(P²·S²) dynamic programme over (last peer, end).
        fn dynamic_programme(&self) -> Option<f64> {
            let (n, p) = (self.input.stages.len(), self.peers.len());
            let mut best: Vec<Vec<f64>> = Vec::with_capacity(p);
            for k in 0..p {
                let mut row = vec![f64::INFINITY; n + 1];
                for s in 0..n {
                    let entry = match s {
                        0 => 0.0,
                        _ => best
                            .iter()
                            .enumerate()
                            .map(|(j, row)| row[s].max(self.transfer(j, k, s)))
                            .fold(f64::INFINITY, f64::min),
                    };
                    for (t, cell) in row.iter_mut().enumerate().skip(s + 1) {
                        let Some(c) = self.part(k, s, t) else { break };
                        *cell = cell.min(entry.max(c));
                    }
                }
                best.push(row);
            }
            let b = best.iter().map(|row| row[n]).fold(f64::INFINITY, f64::min);
            b.is_finite().then_some(b)
        }
    }

    fn input(
        max_stages: usize,
        max_peers: usize,
        max_memory: u64,
    ) -> impl Strategy<Value = PlanInput> {
        let stage = (0.0..100.0f64, 0u64..1000, 0u64..1000).prop_map(|(f, a, p)| PlanStage {
            flops_per_sample: f,
            activation_bytes_per_sample: a,
            param_bytes: p,
        });
        let spec = (1.0..100.0f64, 0.0..20.0f64).prop_map(|(b, r)| LinkSpec {
            bytes_per_sec: b,
            rtt_secs: r,
        });
        let peers = prop::collection::vec((1.0..10.0f64, 1000..max_memory), 1..=max_peers);
        let links =
            prop::collection::vec((0..max_peers, 0..max_peers, spec.clone()), 0..2 * max_peers);
        let memory = (1u64..4, 1u64..3, 1u64..3).prop_map(|(s, m, f)| MemoryModel {
            state_multiplier: s,
            micro_batch_samples: m,
            in_flight_micro_batches: f,
        });
        let order = prop_oneof![Just(ChainOrder::Greedy), Just(ChainOrder::Given)];
        let stages = prop::collection::vec(stage, 1..=max_stages);
        (stages, peers, links, spec, memory, order).prop_map(
            |(stages, peers, links, default_link, memory, order)| PlanInput {
                stages,
                peers: peers
                    .iter()
                    .enumerate()
                    .map(|(i, &(f, m))| PeerCapacity {
                        id: format!("p{i}"),
                        flops_per_sec: f,
                        memory_bytes: m,
                    })
                    .collect(),
                links: links
                    .into_iter()
                    .map(|(a, b, spec)| Link {
                        from: format!("p{a}"),
                        to: format!("p{b}"),
                        spec,
                    })
                    .collect(),
                default_link,
                memory,
                order,
            },
        )
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
    }

    /// A plan tiles the stages, fits memory and reports its own bottleneck.
    fn check_plan(input: &PlanInput, p: &Plan) {
        let ends: Vec<_> = p.assignments.iter().map(|a| (a.start, a.end)).collect();
        assert!(ends.windows(2).all(|w| w[0].1 == w[1].0 && w[0].0 < w[0].1));
        assert_eq!((ends[0].0, ends[ends.len() - 1].1), (0, input.stages.len()));
        for a in &p.assignments {
            assert!(
                a.memory_bytes
                    <= input
                        .peers
                        .iter()
                        .find(|q| q.id == a.peer)
                        .unwrap()
                        .memory_bytes
            );
        }
        let max = p
            .assignments
            .iter()
            .map(|a| a.compute_secs_per_sample.max(a.transfer_secs_per_sample))
            .fold(0.0, f64::max);
        assert!(
            p.fits_memory && max == p.bottleneck_secs_per_sample && p.samples_per_sec == 1.0 / max
        );
        assert_eq!(&evaluate(input, &p.assignments).unwrap(), p);
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 64,
            failure_persistence: None,
            rng_algorithm: RngAlgorithm::ChaCha,
            rng_seed: RngSeed::Fixed(7),
            ..ProptestConfig::default()
        })]

        #[test]
        fn optimal_against_brute_force(input in input(8, 4, 40_000)) {
            let want = Oracle::new(&input).brute_force();
            match (plan(&input), want) {
                (Ok(p), Some(b)) => {
                    prop_assert!(close(p.bottleneck_secs_per_sample, b), "{} vs {b}", p.bottleneck_secs_per_sample);
                    check_plan(&input, &p);
                }
                (Err(_), None) => {}
                (got, want) => prop_assert!(false, "plan {got:?}, brute force {want:?}"),
            }
        }

        #[test]
        fn optimal_against_dynamic_programme_across_words(input in input(200, 6, 400_000)) {
            let want = Oracle::new(&input).dynamic_programme();
            match (plan(&input), want) {
                (Ok(p), Some(b)) => prop_assert!(close(p.bottleneck_secs_per_sample, b)),
                (Err(_), None) => {}
                (got, want) => prop_assert!(false, "plan {got:?}, DP {want:?}"),
            }
        }

        #[test]
        fn no_worse_than_even_split_nor_above_ideal(input in input(40, 6, 100_000)) {
            if let Ok(p) = plan(&input) {
                check_plan(&input, &p);
                let even = even_split(&input).unwrap();
                prop_assert!(!even.fits_memory || p.bottleneck_secs_per_sample <= even.bottleneck_secs_per_sample);
                prop_assert!(p.samples_per_sec <= ideal_samples_per_sec(&input).unwrap() * (1.0 + 1e-9));
            }
        }

        #[test]
        fn deterministic_whatever_the_input_order(mut input in input(40, 6, 100_000), rot in 0usize..6) {
            input.order = ChainOrder::Greedy;
            let p = plan(&input);
            prop_assert_eq!(&p, &plan(&input));
            input.peers.reverse();
            input.links.reverse();
            let r = rot % input.peers.len();
            input.peers.rotate_left(r);
            prop_assert_eq!(&p, &plan(&input));
        }
    }

    #[test]
    fn bits() {
        let mut b = Bits::new(200);
        b.set_range(3, 3);
        assert!(b.is_empty() && b.last().is_none());
        b.set_range(60, 130);
        b.set(199);
        b.set_range(10, 12);
        let ones: Vec<usize> = b.ones(200).collect();
        let want: Vec<usize> = (10..12).chain(60..130).chain([199]).collect();
        assert_eq!(ones, want);
        assert_eq!(
            (b.last(), b.get(59), b.get(60), b.get(129), b.get(130)),
            (Some(199), false, true, true, false)
        );
        b.set_range(128, 192);
        assert_eq!(b.ones(400).count(), 2 + 132 + 1);
    }
}
