//! Built-in defaults of `murmur node`, in one place: clap's defaults of the flags both modes
//! use refer to these, and [`super::config`] applies the others when a flag is not given.

use murmur_protocol::Codec;

use crate::averaging::SyncPolicy;
use crate::shard::pipeline::Placement;

/// `--run`.
pub const RUN: &str = "murmur-default";
/// `--model`.
pub const MODEL: &str = "mlp-digits";
/// `--device`.
pub const DEVICE: &str = "auto";
/// `--port` (any free port).
pub const PORT: u16 = 0;
/// `--batch-size`.
pub const BATCH_SIZE: usize = 32;
/// `--steps` of a gossip node training mlp-digits.
pub const STEPS_MLP: u64 = 1500;
/// `--steps` of a gossip node training a char-gpt model.
pub const STEPS_GPT: u64 = 300;
/// `--steps` of a `--sharded` node.
pub const STEPS_SHARDED: u64 = 40;
/// `--lr` for mlp-digits (gossip).
pub const LR_MLP: f64 = 3e-3;
/// `--lr` for char-gpt models and every `--sharded` node.
pub const LR_GPT: f64 = 1e-3;
/// `--announce-every`, seconds.
pub const ANNOUNCE_EVERY: f64 = 2.0;
/// `--eval-every`.
pub const EVAL_EVERY: u64 = 25;
/// `--sync`.
pub const SYNC: SyncPolicy = SyncPolicy::Steps(25);
/// `--fanout`.
pub const FANOUT: usize = 2;
/// `--codec`.
pub const CODEC: Codec = Codec::Int8Block {
    block: murmur_protocol::codec::DEFAULT_INT8_BLOCK,
};
/// `--butterfly-window`, seconds.
pub const BUTTERFLY_WINDOW: f64 = 4.0;
/// `--outer-lr`.
pub const OUTER_LR: f32 = 0.7;
/// `--outer-momentum`.
pub const OUTER_MOMENTUM: f32 = 0.9;
/// `--checkpoint-every`, rounds.
pub const CHECKPOINT_EVERY: u64 = 4;
/// `--keep-checkpoints`.
pub const KEEP_CHECKPOINTS: usize = 3;
/// `--pipeline-peers`.
pub const PIPELINE_PEERS: usize = 3;
/// `--micro-batches`.
pub const MICRO_BATCHES: u32 = 4;
/// `--placement`.
pub const PLACEMENT: Placement = Placement::CapacityAware;
/// `--slowdown`.
pub const SLOWDOWN: f64 = 1.0;
/// `--snapshot-every`, steps.
pub const SNAPSHOT_EVERY: u64 = 4;
/// `--pipeline-replicas`.
pub const PIPELINE_REPLICAS: u32 = 1;
/// `--average-every`, steps.
pub const AVERAGE_EVERY: u64 = 4;
/// `--peer-deadline`, seconds.
pub const PEER_DEADLINE: f64 = 30.0;
