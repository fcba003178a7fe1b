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
        by_act.sort_by(|&x, &y| m.boundary_act(x).total_cmp(&m.boundary_act(y)).then(x.cmp(&y)));
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
            let rows = k * n..(k + 1) * n;
            let max_end = &mut self.max_end[rows.clone()];
            let (mut t, within) = (0, m.flops_within(k, b));
            for ((s, end), &cap) in max_end.iter_mut().enumerate().zip(&self.mem_end[rows]) {
                t = t.max(s);
                while t < cap && m.flops(s, t + 1) <= within {
                    t += 1;
                }
                *end = t;
            }
            reach.clear();
            let mut far = 0;
            for t in 1..=n {
                if entry.get(t - 1) {
                    far = far.max(max_end[t - 1]);
                }
                if far >= t {
                    reach.set(t);
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
    let last = solver.run(b).ok_or(PlanError::Internal("optimum infeasible"))?;
    solver.reconstruct(last, b)
}
