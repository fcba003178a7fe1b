//! The arithmetic of gossip averaging: push-sum mixing of sample-weighted models and the
//! robust aggregate (norm clipping + coordinate-wise trimmed mean, the kept values weighted by
//! their masses within a bounded spread).
//!
//! Every node holds a model `x` and a mass `w` (samples). Sending to `k` peers keeps
//! `w / (k + 1)` and gives each peer `w / (k + 1)` along with `x`; a receiver folds a
//! message in as `x ← (w·x + m·y) / (w + m)`, `w ← w + m`. Mass is conserved, so with
//! training off every node converges to `Σ wᵢ xᵢ / Σ wᵢ`, the sample-weighted mean
//! (push-sum, Kempe et al. 2003). Training adds fresh samples to `w`, so a peer that
//! processed 4× the samples pulls the average 4× as hard (normalized model merging).

/// A model vector with the weight it carries.
#[derive(Debug, Clone, Copy)]
pub struct Weighted<'a> {
    /// The values.
    pub values: &'a [f32],
    /// Mass in samples.
    pub mass: f64,
}

/// Folds `incoming` into `own` (push-sum receive). Returns the new own mass.
///
/// A message with no mass (or of another length) changes nothing; an own mass of zero adopts
/// the message.
pub fn absorb(own: &mut [f32], own_mass: f64, incoming: Weighted<'_>) -> f64 {
    absorb_all(own, own_mass, &[incoming])
}

/// Folds every message of `incoming` into `own` at once:
/// `x ← (w·x + Σ mᵢ·yᵢ) / (w + Σ mᵢ)`, `w ← w + Σ mᵢ` — the same as absorbing them one after
/// another, in a single pass over `own`, block by block so each block of `own` stays in cache
/// while the messages are added to it. Messages without mass, or whose length differs from
/// `own`'s, are left out (their mass too). Returns the new own mass.
pub fn absorb_all(own: &mut [f32], own_mass: f64, incoming: &[Weighted<'_>]) -> f64 {
    const BLOCK: usize = 4096;
    let live: Vec<&Weighted<'_>> = incoming
        .iter()
        .filter(|w| w.mass > 0.0 && w.values.len() == own.len())
        .collect();
    let total = own_mass + live.iter().map(|w| w.mass).sum::<f64>();
    if live.is_empty() || total <= 0.0 {
        return own_mass;
    }
    let keep = (own_mass / total) as f32;
    let takes: Vec<f32> = live.iter().map(|w| (w.mass / total) as f32).collect();
    for (b, block) in own.chunks_mut(BLOCK).enumerate() {
        let start = b * BLOCK;
        for x in block.iter_mut() {
            *x *= keep;
        }
        for (w, take) in live.iter().zip(&takes) {
            let values = &w.values[start..start + block.len()];
            for (x, y) in block.iter_mut().zip(values) {
                *x += take * *y;
            }
        }
    }
    total
}

/// Mass kept and mass given to each of `recipients` peers when sending.
pub fn split_mass(mass: f64, recipients: usize) -> (f64, f64) {
    let share = mass / (recipients as f64 + 1.0);
    (share, share)
}

/// Euclidean distance, accumulated in f64.
pub fn l2_distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = f64::from(*x) - f64::from(*y);
            d * d
        })
        .sum::<f64>()
        .sqrt()
}

/// Settings of the robust aggregate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RobustConfig {
    /// Each candidate's distance from the own model is clipped to this multiple of the median
    /// distance.
    pub clip_multiple: f64,
    /// Fraction of candidates dropped at each end, per coordinate (at least one each side
    /// once there are three or more candidates).
    pub trim_fraction: f64,
    /// How far a candidate's weight in the mean of the kept values may stray from the typical
    /// mass (the median of the own and the candidates'): masses are clamped to
    /// `[typical / spread, typical × spread]`. 1: every candidate counts the same.
    pub weight_spread: f64,
}

/// The default [`RobustConfig::weight_spread`]: a peer that trained on 4× the samples of
/// another counts 4× as much, and one sender's claims move the mean at most 4× as far as an
/// equal share would (`spread²`).
pub const DEFAULT_WEIGHT_SPREAD: f64 = 2.0;

impl Default for RobustConfig {
    fn default() -> Self {
        Self {
            clip_multiple: 1.5,
            trim_fraction: 0.2,
            weight_spread: DEFAULT_WEIGHT_SPREAD,
        }
    }
}

/// Replaces `own` (of mass `own_mass`) with the robust aggregate of `own` and `others`: every
/// candidate is clipped to `clip_multiple × reference` around `own` (`reference`: a typical
/// honest distance, e.g. the median of recently accepted distances; the median of this
/// batch's distances when `None`), then each coordinate is the weighted mean of the values
/// left after trimming the extremes (trimmed by count, so a sender's claimed mass does not
/// keep it in). Each value weighs its mass clamped to `weight_spread` times either side of
/// the typical mass: samples count, within a bound no claim exceeds. The peers that sent
/// nothing this time count as the own model at the typical mass (`voters`: how many models
/// the node expects, itself included; at least the candidates): so one sender moves the model
/// by at most `spread² / (voters − 2·trim)` of the clipping radius, however few deltas
/// arrived together. Returns how many candidates were clipped.
pub fn robust_aggregate(
    own: &mut [f32],
    own_mass: f64,
    others: &[Weighted<'_>],
    config: RobustConfig,
    (reference, voters): (Option<f64>, usize),
) -> usize {
    if others.is_empty() {
        return 0;
    }
    let distances: Vec<f64> = others.iter().map(|o| l2_distance(own, o.values)).collect();
    let radius = config.clip_multiple * reference.unwrap_or_else(|| median(&distances));
    let mut clipped = 0;
    let scales: Vec<f32> = distances
        .iter()
        .map(|d| {
            if *d > radius && *d > 0.0 {
                clipped += 1;
                (radius / d) as f32
            } else {
                1.0
            }
        })
        .collect();
    let n = voters.max(others.len() + 1);
    let absent = n - others.len() - 1;
    let trim = if n >= 3 {
        ((n as f64 * config.trim_fraction).floor() as usize).clamp(1, (n - 1) / 2)
    } else {
        0
    };
    let (own_weight, typical, weights) = bounded_weights(own_mass, others, config.weight_spread);
    let mut column: Vec<(f32, f64)> = Vec::with_capacity(n);
    for (i, x) in own.iter_mut().enumerate() {
        column.clear();
        column.push((*x, own_weight));
        column.extend(std::iter::repeat_n((*x, typical), absent));
        for ((other, scale), weight) in others.iter().zip(&scales).zip(&weights) {
            column.push((*x + scale * (other.values[i] - *x), *weight));
        }
        column.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
        let kept = &column[trim..n - trim];
        let total: f64 = kept.iter().map(|(_, w)| w).sum();
        let sum: f64 = kept.iter().map(|(v, w)| f64::from(*v) * w).sum();
        *x = (sum / total) as f32;
    }
    clipped
}

/// The weights of the own model and of `others` in the robust mean, and the typical mass
/// (the median of them all, 1 when none is positive and finite): each mass clamped to
/// `spread` times either side of the typical one (a mass that is not a positive finite
/// number weighs the least).
fn bounded_weights(own_mass: f64, others: &[Weighted<'_>], spread: f64) -> (f64, f64, Vec<f64>) {
    let valid = |m: f64| m.is_finite() && m > 0.0;
    let masses: Vec<f64> = std::iter::once(own_mass)
        .chain(others.iter().map(|o| o.mass))
        .filter(|m| valid(*m))
        .collect();
    let typical = if masses.is_empty() {
        1.0
    } else {
        median(&masses)
    };
    let spread = if spread.is_finite() {
        spread.max(1.0)
    } else {
        1.0
    };
    let (low, high) = (typical / spread, typical * spread);
    let bound = |m: f64| if valid(m) { m.clamp(low, high) } else { low };
    let weights = others.iter().map(|o| bound(o.mass)).collect();
    (bound(own_mass), typical, weights)
}

/// Median of a non-empty slice (mean of the middle pair for even lengths); 0 when empty.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absorbing_all_at_once_is_the_weighted_mean_and_matches_one_by_one() {
        // Longer than one block, not a multiple of it; a message without mass, one of another
        // length (both left out, mass included); own mass 3 and 0.
        let n = 10_000;
        let own: Vec<f32> = (0..n).map(|i| (i % 17) as f32 - 8.0).collect();
        let a: Vec<f32> = (0..n).map(|i| (i % 5) as f32).collect();
        let b: Vec<f32> = (0..n).map(|i| -((i % 7) as f32)).collect();
        let short = vec![100.0f32; n - 1];
        for own_mass in [3.0, 0.0] {
            let messages = [
                Weighted {
                    values: &a,
                    mass: 2.0,
                },
                Weighted {
                    values: &b,
                    mass: 0.0,
                },
                Weighted {
                    values: &short,
                    mass: 9.0,
                },
                Weighted {
                    values: &b,
                    mass: 5.0,
                },
            ];
            let total_expected = own_mass + 7.0;
            let expected: Vec<f64> = (0..n)
                .map(|i| {
                    (own_mass * f64::from(own[i]) + 2.0 * f64::from(a[i]) + 5.0 * f64::from(b[i]))
                        / total_expected
                })
                .collect();
            let mut at_once = own.clone();
            let total = absorb_all(&mut at_once, own_mass, &messages);
            let mut one_by_one = own.clone();
            let mut w = own_mass;
            for m in messages {
                w = absorb(&mut one_by_one, w, m);
            }
            for result in [total, w] {
                assert!((result - total_expected).abs() < 1e-12, "{result}");
            }
            for ((x, y), e) in at_once.iter().zip(&one_by_one).zip(&expected) {
                assert!((f64::from(*x) - e).abs() < 1e-5, "{x} vs {e}");
                assert!((f64::from(*y) - e).abs() < 1e-5, "{y} vs {e}");
            }
        }
        // Nothing with mass: nothing changes.
        let mut same = own.clone();
        let none = [Weighted {
            values: &a,
            mass: 0.0,
        }];
        assert_eq!(absorb_all(&mut same, 1.0, &none), 1.0);
        assert_eq!(same, own);
    }

    #[test]
    fn push_sum_with_full_fanout_reaches_the_weighted_mean_in_one_round() {
        let vectors = [vec![1.0f32, 0.0], vec![3.0, 4.0], vec![5.0, 8.0]];
        let masses = [1.0, 2.0, 5.0];
        let expected: Vec<f32> = (0..2)
            .map(|j| {
                let s: f64 = (0..3).map(|i| masses[i] * f64::from(vectors[i][j])).sum();
                (s / 8.0) as f32
            })
            .collect();
        let mut next = Vec::new();
        for i in 0..3 {
            let (kept, _) = split_mass(masses[i], 2);
            let mut x = vectors[i].clone();
            let mut w = kept;
            for j in (0..3).filter(|j| *j != i) {
                let given = split_mass(masses[j], 2).1;
                w = absorb(
                    &mut x,
                    w,
                    Weighted {
                        values: &vectors[j],
                        mass: given,
                    },
                );
            }
            next.push((x, w));
        }
        let total: f64 = next.iter().map(|(_, w)| w).sum();
        assert!((total - 8.0).abs() < 1e-9, "mass is conserved");
        for (x, _) in &next {
            for (a, b) in x.iter().zip(&expected) {
                assert!((a - b).abs() < 1e-5, "{x:?} vs {expected:?}");
            }
        }
    }

    #[test]
    fn a_massless_message_changes_nothing() {
        let mut x = vec![1.0f32, 2.0];
        let w = absorb(
            &mut x,
            3.0,
            Weighted {
                values: &[9.0, 9.0],
                mass: 0.0,
            },
        );
        assert_eq!((x, w), (vec![1.0, 2.0], 3.0));
    }

    #[test]
    fn the_robust_aggregate_ignores_one_scaled_and_one_flipped_model() {
        let honest = [vec![1.0f32; 4], vec![1.1; 4], vec![0.9; 4]];
        let scaled = vec![100.0f32; 4];
        let flipped = vec![-1.0f32; 4];
        let mut own = vec![1.05f32; 4];
        let others: Vec<Weighted<'_>> = honest
            .iter()
            .map(Vec::as_slice)
            .chain([scaled.as_slice(), flipped.as_slice()])
            .map(|values| Weighted { values, mass: 1.0 })
            .collect();
        let config = RobustConfig::default();
        let clipped = robust_aggregate(&mut own, 1.0, &others, config, (None, 0));
        assert!(clipped >= 1);
        for v in own {
            assert!((0.85..1.2).contains(&v), "{v}");
        }
    }

    /// Sybils: two deltas pushing the same way arrive together while the node's four other
    /// peers are silent this time. Counted as votes for the own model, the silent peers keep
    /// the move to a fraction of the clipping radius; counting only who arrived (the old
    /// aggregate), the two carried the model the whole radius their way.
    #[test]
    fn deltas_arriving_together_move_the_model_by_a_share_of_the_radius() {
        let sybil = vec![-4.0f32; 4];
        let one = Weighted {
            values: &sybil,
            mass: 1.0,
        };
        let others = [one, one];
        let config = RobustConfig::default();
        let mut own = vec![1.0f32; 4];
        robust_aggregate(&mut own, 1.0, &others, config, (Some(1.0), 7));
        // Radius 1.5 (distance 1.5 per vector, 0.75 per coordinate); two of seven voters,
        // one trimmed: at most 0.75 / 5 per coordinate.
        for v in &own {
            assert!((1.0 - v) <= 0.75 / 5.0 + 1e-6, "moved to {v}");
        }
        let mut alone = vec![1.0f32; 4];
        robust_aggregate(&mut alone, 1.0, &others, config, (Some(1.0), 0));
        assert!(alone.iter().all(|v| 1.0 - v > 0.7), "{alone:?}");
    }

    /// Four candidates and the own model (0, mass 1): two at +1 of mass 1, two at −1 of mass
    /// `heavy`; one trimmed each side, so −1 (heavy), 0 and +1 are kept. Returns the result.
    fn kept_mean(heavy: f64, spread: f64) -> f32 {
        let (up, down) = (vec![1.0f32; 4], vec![-1.0f32; 4]);
        let others = [
            Weighted {
                values: &up,
                mass: 1.0,
            },
            Weighted {
                values: &up,
                mass: 1.0,
            },
            Weighted {
                values: &down,
                mass: heavy,
            },
            Weighted {
                values: &down,
                mass: heavy,
            },
        ];
        let config = RobustConfig {
            weight_spread: spread,
            ..RobustConfig::default()
        };
        let mut own = vec![0.0f32; 4];
        robust_aggregate(&mut own, 1.0, &others, config, (None, 0));
        assert!(own.iter().all(|v| *v == own[0]), "{own:?}");
        own[0]
    }

    /// The robust mean weighs the samples behind each kept model: candidates that trained on
    /// twice the samples count twice (before, every candidate counted once and the result
    /// was 0 however the samples were spread).
    #[test]
    fn the_robust_mean_weighs_the_samples_behind_each_kept_model() {
        // Typical mass: the median of 1, 1, 1, 2, 2 is 1; weights 2, 1, 1 → (−2 + 0 + 1) / 4.
        assert!((kept_mean(2.0, DEFAULT_WEIGHT_SPREAD) + 0.25).abs() < 1e-6);
        assert!(kept_mean(2.0, 1.0).abs() < 1e-6, "spread 1: equal votes");
    }

    /// A claimed mass counts at most `spread` times the typical one: 10⁹ weighs as 2 does
    /// (without the bound: the kept heavy value took the mean to −1).
    #[test]
    fn a_huge_claimed_mass_weighs_at_most_the_spread_times_the_typical() {
        let capped = kept_mean(1e9, DEFAULT_WEIGHT_SPREAD);
        assert!((capped + 0.25).abs() < 1e-6, "{capped}");
        let nan = kept_mean(f64::NAN, DEFAULT_WEIGHT_SPREAD);
        assert!(
            nan.is_finite() && nan > 0.0,
            "a NaN mass weighs the least: {nan}"
        );
    }

    #[test]
    fn median_of_even_and_odd_lengths() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
