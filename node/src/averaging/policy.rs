//! When a node synchronises: after a fixed number of local steps, after a fixed time, or by
//! the Quadratic Synchronization Rule (H ∝ 1/lr², Gu et al. 2024).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// How many local steps (or how much time) pass between two syncs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SyncPolicy {
    /// Every `H` local optimizer steps.
    Steps(u64),
    /// Every `T` seconds of wall-clock time, however many steps that is: a fast peer runs
    /// more steps per round (and its delta weighs more) instead of waiting for slow ones.
    Seconds(f64),
    /// Quadratic Synchronization Rule: `H = clamp(ceil((beta / lr)²), min, max)`, so the
    /// period grows as the learning rate decays.
    Qsr {
        /// Scale of the rule.
        beta: f64,
        /// Shortest period, steps.
        min_steps: u64,
        /// Longest period, steps.
        max_steps: u64,
    },
}

impl Default for SyncPolicy {
    fn default() -> Self {
        SyncPolicy::Steps(25)
    }
}

impl SyncPolicy {
    /// Local steps in the current period at learning rate `lr` (`None` for time-based).
    pub fn period_steps(&self, lr: f64) -> Option<u64> {
        match *self {
            SyncPolicy::Steps(h) => Some(h.max(1)),
            SyncPolicy::Seconds(_) => None,
            SyncPolicy::Qsr {
                beta,
                min_steps,
                max_steps,
            } => {
                let raw = if lr > 0.0 {
                    (beta / lr).powi(2).ceil()
                } else {
                    f64::INFINITY
                };
                let hi = max_steps.max(min_steps).max(1);
                Some((raw.min(hi as f64) as u64).clamp(min_steps.max(1), hi))
            }
        }
    }

    /// Whether a sync is due after `steps` local steps and `elapsed` time since the last one.
    pub fn due(&self, steps: u64, elapsed: Duration, lr: f64) -> bool {
        match *self {
            SyncPolicy::Seconds(t) => elapsed.as_secs_f64() >= t,
            _ => self.period_steps(lr).is_some_and(|h| steps >= h),
        }
    }

    /// The time-based period, if any.
    pub fn period_time(&self) -> Option<Duration> {
        match *self {
            SyncPolicy::Seconds(t) => Some(Duration::from_secs_f64(t.max(0.001))),
            _ => None,
        }
    }
}

/// A sync policy string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad sync policy {0:?}: expected steps:H, secs:T or qsr:BETA:MIN:MAX")]
pub struct PolicyParseError(String);

impl FromStr for SyncPolicy {
    type Err = PolicyParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PolicyParseError(s.to_owned());
        let mut parts = s.trim().split(':');
        let kind = parts.next().ok_or_else(err)?;
        let nums: Vec<&str> = parts.collect();
        let policy = match (kind, nums.as_slice()) {
            ("steps", [h]) => SyncPolicy::Steps(h.parse().map_err(|_| err())?),
            ("secs", [t]) => SyncPolicy::Seconds(t.parse().map_err(|_| err())?),
            ("qsr", [b, lo, hi]) => SyncPolicy::Qsr {
                beta: b.parse().map_err(|_| err())?,
                min_steps: lo.parse().map_err(|_| err())?,
                max_steps: hi.parse().map_err(|_| err())?,
            },
            _ => return Err(err()),
        };
        let valid = match policy {
            SyncPolicy::Steps(h) => h > 0,
            SyncPolicy::Seconds(t) => t.is_finite() && t > 0.0,
            SyncPolicy::Qsr {
                beta,
                min_steps,
                max_steps,
            } => beta.is_finite() && beta > 0.0 && min_steps > 0 && max_steps >= min_steps,
        };
        if valid { Ok(policy) } else { Err(err()) }
    }
}

impl fmt::Display for SyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncPolicy::Steps(h) => write!(f, "steps:{h}"),
            SyncPolicy::Seconds(t) => write!(f, "secs:{t}"),
            SyncPolicy::Qsr {
                beta,
                min_steps,
                max_steps,
            } => write!(f, "qsr:{beta}:{min_steps}:{max_steps}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qsr_grows_quadratically_as_the_rate_decays_and_is_clamped() {
        let p: SyncPolicy = "qsr:0.1:4:400".parse().unwrap();
        assert_eq!(p.period_steps(0.1), Some(4));
        assert_eq!(p.period_steps(0.01), Some(100));
        assert_eq!(p.period_steps(0.005), Some(400));
        assert_eq!(p.period_steps(0.0), Some(400));
    }

    #[test]
    fn parse_and_display_round_trip() {
        for s in ["steps:25", "secs:1.5", "qsr:0.05:10:200"] {
            let p: SyncPolicy = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
        }
        for bad in ["", "steps", "steps:0", "secs:-1", "qsr:1:5:2", "every:3"] {
            assert!(bad.parse::<SyncPolicy>().is_err(), "{bad}");
        }
    }

    #[test]
    fn due_by_steps_or_time() {
        assert!(SyncPolicy::Steps(5).due(5, Duration::ZERO, 0.1));
        assert!(!SyncPolicy::Steps(5).due(4, Duration::from_secs(100), 0.1));
        assert!(SyncPolicy::Seconds(1.0).due(0, Duration::from_secs(1), 0.1));
        assert!(!SyncPolicy::Seconds(1.0).due(1000, Duration::from_millis(10), 0.1));
    }
}
