//! Built-in defaults of `murmur testnet`, in one place: clap's defaults of the flags both
//! modes use refer to these, and [`super::config`] applies the others when a flag is not
//! given. Step budgets and the learning rate of the gossip nodes are those of `murmur node`.

use murmur_protocol::Codec;

use crate::averaging::SyncPolicy;
use crate::shard::pipeline::Placement;

/// `--device` of every node.
pub const DEVICE: &str = "flex";
/// `--timeout`, seconds.
pub const TIMEOUT: u64 = 180;
/// `--seed` of the churn choices.
pub const SEED: u64 = 1;
/// `--nodes`: honest gossip nodes.
pub const NODES: usize = 4;
/// `--sync` of the gossip nodes.
pub const SYNC: SyncPolicy = SyncPolicy::Steps(40);
/// `--fanout` of the gossip nodes.
pub const FANOUT: usize = 2;
/// `--codec` of the gossip nodes.
pub const CODEC: Codec = crate::cmd::node::defaults::CODEC;
/// `--target-accuracy` with mlp-digits (other models have none unless it is given).
pub const TARGET_ACCURACY_MLP: f32 = 0.96;
/// `--steps` of a `--sharded` testnet.
pub const STEPS_SHARDED: u64 = 24;
/// `--slowdown`: one node per factor.
pub const SLOWDOWN: [f64; 3] = [1.0, 2.0, 4.0];
/// `--placement`.
pub const PLACEMENT: Placement = Placement::CapacityAware;
/// `--batch-size` of the pipeline.
pub const BATCH_SIZE: usize = 16;
/// `--micro-batches` per step.
pub const MICRO_BATCHES: u32 = 8;
/// `--replicas`: data-parallel chains.
pub const REPLICAS: u32 = 1;
