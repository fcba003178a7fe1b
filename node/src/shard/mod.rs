//! Capacity-aware layer sharding: placing contiguous ranges of a model's stages on peers in
//! proportion to their measured capacity (Sky Computing), and training across them.
//!
//! - [`capacity`]: the start-up benchmark and its refinement from observed stage times.
//! - [`planner`]: the exact bottleneck-minimising placement, the even split it is compared
//!   with, the ideal bound, and the [`planner::Replanner`] with hysteresis.
//! - [`pipeline`]: forming a pipeline from the run's members and training it across them.

pub mod capacity;
pub mod pipeline;
pub mod planner;
