//! Re-planning with hysteresis, so that plans do not thrash: a re-plan is only *considered*
//! when the peer set or the model changed, or a peer's compute or memory drifted beyond a
//! threshold since the last consideration; the candidate is only *adopted* when the current
//! placement no longer works or the candidate is faster by at least a minimum gain. Link
//! changes alone do not trigger a consideration; they count at the next one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Plan, PlanError, PlanInput, PlanStage, evaluate, lean_plan};

/// The two thresholds of the hysteresis.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReplanConfig {
    /// Relative drift of a peer's `flops_per_sec` or `memory_bytes` (the larger of new/old and
    /// old/new, minus 1) beyond which a re-plan is considered, e.g. 0.2.
    pub drift_threshold: f64,
    /// Relative throughput gain a candidate needs over the current placement, e.g. 0.1.
    pub min_gain: f64,
}

impl Default for ReplanConfig {
    /// 20 % drift, 10 % gain.
    fn default() -> Self {
        Self {
            drift_threshold: 0.2,
            min_gain: 0.1,
        }
    }
}

/// Why a re-plan was considered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ReplanTrigger {
    /// There was no plan yet.
    Initial,
    /// The stages changed.
    ModelChanged,
    /// A peer (the first by id) left.
    PeerLeft(String),
    /// A peer (the first by id) joined.
    PeerJoined(String),
    /// A peer's (the first by id) compute or memory drifted beyond the threshold.
    CapacityDrift {
        /// The peer.
        peer: String,
        /// Its drift, `max(new/old, old/new) − 1` of the worse of compute and memory.
        drift: f64,
    },
}

/// What [`Replanner::update`] decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Decision {
    /// Nothing changed beyond the thresholds; nothing was computed.
    Unchanged,
    /// A re-plan was considered, but the candidate gained less than the minimum: the current
    /// placement stays (its figures are updated to the new capacities).
    Kept {
        /// Why it was considered.
        trigger: ReplanTrigger,
        /// The candidate's relative gain, `candidate / current − 1` in samples per second.
        gain: f64,
    },
    /// The candidate became the current plan.
    Adopted {
        /// Why it was considered.
        trigger: ReplanTrigger,
        /// The relative gain, or `None` when the current placement could no longer run.
        gain: Option<f64>,
    },
}

/// Keeps the current plan and the capacities it was last considered with.
#[derive(Debug, Clone, Default)]
pub struct Replanner {
    config: ReplanConfig,
    current: Option<Plan>,
    stages: Vec<PlanStage>,
    /// Peer id → (flops per second, memory bytes) at the last consideration.
    baseline: BTreeMap<String, (f64, u64)>,
}

fn drift(new: f64, old: f64) -> f64 {
    (new / old).max(old / new) - 1.0
}

impl Replanner {
    /// A re-planner with no plan yet.
    pub fn new(config: ReplanConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// The current plan, if any.
    pub fn current(&self) -> Option<&Plan> {
        self.current.as_ref()
    }

    /// Why `input` warrants considering a re-plan, if it does (cheap: no planning).
    pub fn trigger(&self, input: &PlanInput) -> Option<ReplanTrigger> {
        if self.current.is_none() {
            return Some(ReplanTrigger::Initial);
        }
        if input.stages != self.stages {
            return Some(ReplanTrigger::ModelChanged);
        }
        let now: BTreeMap<&str, (f64, u64)> = input
            .peers
            .iter()
            .map(|p| (p.id.as_str(), (p.flops_per_sec, p.memory_bytes)))
            .collect();
        if let Some(id) = self
            .baseline
            .keys()
            .find(|id| !now.contains_key(id.as_str()))
        {
            return Some(ReplanTrigger::PeerLeft(id.clone()));
        }
        if let Some(id) = now.keys().find(|id| !self.baseline.contains_key(**id)) {
            return Some(ReplanTrigger::PeerJoined((*id).to_owned()));
        }
        self.baseline.iter().find_map(|(id, &(flops, mem))| {
            let &(f, m) = now.get(id.as_str())?;
            let d = drift(f, flops).max(drift(m.max(1) as f64, mem.max(1) as f64));
            (d > self.config.drift_threshold).then(|| ReplanTrigger::CapacityDrift {
                peer: id.clone(),
                drift: d,
            })
        })
    }

    /// Considers a re-plan if [`Self::trigger`] says so, and adopts the candidate when the
    /// current placement no longer runs (a peer left, memory no longer fits, the model changed)
    /// or the candidate is faster by at least `min_gain`. After any consideration the
    /// capacities of `input` become the baseline for drift. Errors (e.g. no placement fits
    /// memory) leave the state unchanged.
    pub fn update(&mut self, input: &PlanInput) -> Result<Decision, PlanError> {
        let Some(trigger) = self.trigger(input) else {
            return Ok(Decision::Unchanged);
        };
        let candidate = lean_plan(input)?;
        let current = self
            .current
            .as_ref()
            .and_then(|c| evaluate(input, &c.assignments).ok())
            .filter(|c| c.fits_memory);
        let decision = match current {
            Some(current) => {
                let gain = candidate.samples_per_sec / current.samples_per_sec - 1.0;
                if gain >= self.config.min_gain {
                    self.current = Some(candidate);
                    Decision::Adopted {
                        trigger,
                        gain: Some(gain),
                    }
                } else {
                    self.current = Some(current);
                    Decision::Kept { trigger, gain }
                }
            }
            None => {
                self.current = Some(candidate);
                Decision::Adopted {
                    trigger,
                    gain: None,
                }
            }
        };
        self.stages.clone_from(&input.stages);
        self.baseline = input
            .peers
            .iter()
            .map(|p| (p.id.clone(), (p.flops_per_sec, p.memory_bytes)))
            .collect();
        Ok(decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::planner::LinkSpec;
    use crate::shard::planner::tests::{peer, stage};

    /// 12 unit stages on peers of the given speeds, compute bound.
    fn input(speeds: &[(&str, f64)]) -> PlanInput {
        let peers = speeds.iter().map(|&(id, f)| peer(id, f, 1 << 40)).collect();
        PlanInput {
            default_link: LinkSpec {
                bytes_per_sec: 1e15,
                rtt_secs: 0.0,
            },
            ..PlanInput::new(vec![stage(1.0, 1, 1); 12], peers)
        }
    }

    fn split(r: &Replanner) -> Vec<usize> {
        let plan = r.current().unwrap();
        plan.assignments.iter().map(|a| a.end - a.start).collect()
    }

    #[test]
    fn first_plan_then_nothing_without_change() {
        let mut r = Replanner::new(ReplanConfig::default());
        let i = input(&[("a", 1.0), ("b", 1.0)]);
        let d = r.update(&i).unwrap();
        assert_eq!(
            d,
            Decision::Adopted {
                trigger: ReplanTrigger::Initial,
                gain: None
            }
        );
        assert_eq!(split(&r), [6, 6]);
        assert_eq!(r.update(&i).unwrap(), Decision::Unchanged);
        // 15 % drift stays below the 20 % threshold: nothing is even computed.
        assert_eq!(
            r.update(&input(&[("a", 1.0), ("b", 1.15)])).unwrap(),
            Decision::Unchanged
        );
    }

    #[test]
    fn small_gains_do_not_thrash() {
        let mut r = Replanner::new(ReplanConfig::default());
        r.update(&input(&[("a", 1.0), ("b", 1.0)])).unwrap();
        // b 25 % faster: 7 stages on b would give 5.6 s instead of 6 s, a 7 % gain: kept.
        for _ in 0..3 {
            let d = r.update(&input(&[("a", 1.0), ("b", 1.25)])).unwrap();
            let Decision::Kept {
                trigger: ReplanTrigger::CapacityDrift { peer, drift },
                gain,
            } = d
            else {
                panic!("{d:?}");
            };
            assert!(
                peer == "b"
                    && (drift - 0.25).abs() < 1e-12
                    && (gain - 6.0 / 5.6 + 1.0).abs() < 1e-12
            );
            assert_eq!(split(&r), [6, 6]);
            let d = r.update(&input(&[("a", 1.0), ("b", 1.0)])).unwrap();
            assert!(matches!(d, Decision::Kept { gain: 0.0, .. }), "{d:?}");
        }
        assert_eq!(r.current().unwrap().bottleneck_secs_per_sample, 6.0);
    }

    #[test]
    fn large_gains_are_adopted() {
        let mut r = Replanner::new(ReplanConfig::default());
        r.update(&input(&[("a", 1.0), ("b", 1.0)])).unwrap();
        let d = r.update(&input(&[("a", 1.0), ("b", 2.0)])).unwrap();
        assert!(
            matches!(d, Decision::Adopted { gain: Some(g), .. } if (g - 0.5).abs() < 1e-12),
            "{d:?}"
        );
        assert_eq!(split(&r), [8, 4]);
        let d = r
            .update(&input(&[("a", 1.0), ("b", 2.0), ("c", 2.0)]))
            .unwrap();
        assert!(
            matches!(d, Decision::Adopted { trigger: ReplanTrigger::PeerJoined(ref p), .. } if p == "c")
        );
        assert_eq!(split(&r), [5, 5, 2]);
    }

    #[test]
    fn broken_plans_are_replaced() {
        let mut r = Replanner::new(ReplanConfig::default());
        r.update(&input(&[("a", 1.0), ("b", 1.0), ("c", 1.0)]))
            .unwrap();
        let d = r.update(&input(&[("a", 1.0), ("c", 1.0)])).unwrap();
        let left = ReplanTrigger::PeerLeft("b".into());
        assert_eq!(
            d,
            Decision::Adopted {
                trigger: left,
                gain: None
            }
        );
        assert_eq!(split(&r), [6, 6]);
        // The model grows: the old ranges no longer tile the stages.
        let mut grown = input(&[("a", 1.0), ("c", 1.0)]);
        grown.stages.push(stage(1.0, 1, 1));
        let d = r.update(&grown).unwrap();
        assert_eq!(
            d,
            Decision::Adopted {
                trigger: ReplanTrigger::ModelChanged,
                gain: None
            }
        );
        // Memory shrinks below the current ranges' need: forced, even for a slower plan.
        let mut tight = grown.clone();
        tight.peers[0].memory_bytes = 4 * 5 + 32 * 5;
        let d = r.update(&tight).unwrap();
        assert!(matches!(
            d,
            Decision::Adopted {
                gain: None,
                trigger: ReplanTrigger::CapacityDrift { .. }
            }
        ));
        assert_eq!(split(&r), [5, 8]);
        // An input nothing fits is an error and leaves the plan as it was.
        let before = r.current().cloned();
        tight.peers.iter_mut().for_each(|p| p.memory_bytes = 1);
        assert!(r.update(&tight).is_err());
        assert_eq!(r.current().cloned(), before);
    }
}
