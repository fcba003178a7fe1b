//! Capacity-aware layer sharding: placing contiguous ranges of a model's stages on peers in
//! proportion to their measured capacity (Sky Computing), and deciding when to re-plan.
//!
//! - [`planner`]: the exact bottleneck-minimising placement, the even split it is compared
//!   with, the ideal bound, and the [`planner::Replanner`] with hysteresis.

pub mod planner;
