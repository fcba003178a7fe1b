//! Snapshots of shard state, kept so that every range survives its holder.
//!
//! Every `snapshot_every` steps each shard holder snapshots its range (parameters and AdamW
//! moments, after the step's update) and streams the snapshot to every other member of the
//! chain; it keeps its own snapshot too. After a member disappears the survivors roll back to the
//! latest step at which a snapshot of *every* range of the old plan is held, and build the ranges
//! of the new plan from those snapshots, so all shards resume from one consistent model state and
//! at most `snapshot_every` steps are repeated.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use murmur_models::pipeline::ShardState;

use super::PipelineError;

/// Snapshots kept per range and chain (the newest may be incomplete when a holder dies
/// mid-broadcast).
const KEEP_PER_CHAIN: usize = 2;
/// Largest encoded shard state accepted.
pub(crate) const MAX_STATE_BYTES: usize = 1 << 30;

/// Shard snapshots by range and step.
#[derive(Debug)]
pub(crate) struct Snapshots {
    by_range: HashMap<(usize, usize), BTreeMap<u64, ShardState>>,
    keep: usize,
}

impl Snapshots {
    /// Room for the snapshots of `chains` chains, which reach a step at different times (a
    /// snapshot of a range at a step comes from whichever of its holders sent it last; they
    /// are kept in agreement by averaging).
    pub(crate) fn new(chains: usize) -> Self {
        Self {
            by_range: HashMap::new(),
            keep: KEEP_PER_CHAIN * chains.max(1),
        }
    }

    /// Stores `state` (its range and step come with it), keeping the newest few.
    pub(crate) fn insert(&mut self, state: ShardState) {
        let steps = self
            .by_range
            .entry((state.range.start, state.range.end))
            .or_default();
        steps.insert(state.steps, state);
        while steps.len() > self.keep {
            steps.pop_first();
        }
    }

    /// The newest step of any snapshot held (0 when none is).
    pub(crate) fn latest_step(&self) -> u64 {
        self.by_range
            .values()
            .filter_map(|steps| steps.keys().next_back())
            .max()
            .copied()
            .unwrap_or(0)
    }

    /// The latest step at which a snapshot of every range in `ranges` is held (0, the shared
    /// initial model, when there is none).
    pub(crate) fn common_step(&self, ranges: &[Range<usize>]) -> u64 {
        let mut candidates: Vec<u64> = ranges
            .first()
            .and_then(|r| self.by_range.get(&(r.start, r.end)))
            .map(|s| s.keys().copied().collect())
            .unwrap_or_default();
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        candidates
            .into_iter()
            .find(|step| {
                ranges.iter().all(|r| {
                    self.by_range
                        .get(&(r.start, r.end))
                        .is_some_and(|s| s.contains_key(step))
                })
            })
            .unwrap_or(0)
    }

    /// Whether a snapshot of every range of `ranges` at `step` is held.
    pub(crate) fn holds(&self, ranges: &[Range<usize>], step: u64) -> bool {
        ranges.iter().all(|r| {
            self.by_range
                .get(&(r.start, r.end))
                .is_some_and(|s| s.contains_key(&step))
        })
    }

    /// The snapshots at `step` of the `old` ranges that overlap `wanted`, in order.
    pub(crate) fn parts(
        &self,
        old: &[Range<usize>],
        wanted: &Range<usize>,
        step: u64,
    ) -> Result<Vec<ShardState>, PipelineError> {
        old.iter()
            .filter(|r| r.start < wanted.end && wanted.start < r.end)
            .map(|r| {
                self.by_range
                    .get(&(r.start, r.end))
                    .and_then(|s| s.get(&step))
                    .cloned()
                    .ok_or_else(|| {
                        PipelineError::Formation(format!(
                            "no copy of stages {}..{} at step {step}",
                            r.start, r.end
                        ))
                    })
            })
            .collect()
    }
}

/// The snapshots behind `shared` (a panic while it was held leaves them usable: every
/// update of the map is a single insert or removal).
pub(crate) fn lock(shared: &std::sync::Mutex<Snapshots>) -> std::sync::MutexGuard<'_, Snapshots> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<MAX_STATE_BYTES>()
}

/// Encodes a shard state (floats bit-exact).
pub(crate) fn encode(state: &ShardState) -> Result<Vec<u8>, PipelineError> {
    bincode::serde::encode_to_vec(state, config()).map_err(|source| PipelineError::Encode {
        what: "a shard state",
        source,
    })
}

/// Decodes a shard state sent as a snapshot of stages `start..end`.
pub(crate) fn decode(bytes: &[u8], start: u32, end: u32) -> Result<ShardState, PipelineError> {
    let (state, used): (ShardState, usize) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|source| PipelineError::Decode {
            what: "shard state",
            source,
        })?;
    let bad = used != bytes.len()
        || state.range != (start as usize..end as usize)
        || state
            .params
            .iter()
            .chain(&state.optim.m)
            .chain(&state.optim.v)
            .any(|v| !v.is_finite());
    if bad {
        return Err(PipelineError::Protocol(
            "shard state does not match its header or holds non-finite values".into(),
        ));
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use murmur_models::pipeline::FlatAdamW;

    fn state(range: Range<usize>, steps: u64) -> ShardState {
        ShardState {
            range,
            steps,
            params: vec![steps as f32; 3],
            optim: FlatAdamW::default(),
        }
    }

    #[test]
    fn rolls_back_to_the_latest_step_every_range_has() {
        let mut r = Snapshots::new(1);
        let ranges = [0..2, 2..4];
        assert_eq!(r.common_step(&ranges), 0);
        for step in [2, 4, 6] {
            r.insert(state(0..2, step));
        }
        r.insert(state(2..4, 4));
        assert_eq!(r.common_step(&ranges), 4);
        let parts = r.parts(&ranges, &(1..4), 4).unwrap();
        assert_eq!(parts.len(), 2);
        assert!(r.parts(&ranges, &(0..4), 6).is_err());
        // Only the newest two are kept.
        assert!(r.parts(&ranges[..1], &(0..2), 2).is_err());
    }

    #[test]
    fn decoding_checks_range_and_finiteness() {
        let s = state(1..3, 5);
        let bytes = encode(&s).unwrap();
        assert_eq!(decode(&bytes, 1, 3).unwrap(), s);
        assert!(decode(&bytes, 0, 3).is_err());
        let mut nan = s.clone();
        nan.params[0] = f32::NAN;
        assert!(decode(&encode(&nan).unwrap(), 1, 3).is_err());
        assert!(decode(&bytes[..bytes.len() - 1], 1, 3).is_err());
    }
}
