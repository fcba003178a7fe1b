//! Which flags of `murmur node` belong to which mode: [`GOSSIP_ONLY`] lists the flags only
//! gossip averaging reads (refused with `--sharded`), [`SHARDED_ONLY`] those only pipeline
//! sharding reads (refused without it).

use super::args::NodeArgs;

/// Flags only gossip averaging reads: refused with `--sharded`.
pub const GOSSIP_ONLY: [&str; 16] = [
    "--data-part",
    "--eval-every",
    "--target-accuracy",
    "--announce-every",
    "--sync",
    "--fanout",
    "--codec",
    "--robust",
    "--butterfly",
    "--butterfly-window",
    "--outer",
    "--outer-lr",
    "--outer-momentum",
    "--checkpoint-every",
    "--keep-checkpoints",
    "--tamper",
];

/// Flags only pipeline sharding reads: refused without `--sharded`.
pub const SHARDED_ONLY: [&str; 9] = [
    "--pipeline-peers",
    "--micro-batches",
    "--placement",
    "--slowdown",
    "--snapshot-every",
    "--pipeline-replicas",
    "--average-every",
    "--peer-deadline",
    "--pipeline-tamper",
];

/// The gossip-only flags given (in [`GOSSIP_ONLY`] order).
pub(super) fn gossip_flags_given(a: &NodeArgs) -> Vec<&'static str> {
    let given = [
        a.data_part.is_some(),
        a.eval_every.is_some(),
        a.target_accuracy.is_some(),
        a.announce_every.is_some(),
        a.sync.is_some(),
        a.fanout.is_some(),
        a.codec.is_some(),
        a.robust,
        a.butterfly,
        a.butterfly_window.is_some(),
        a.outer,
        a.outer_lr.is_some(),
        a.outer_momentum.is_some(),
        a.checkpoint_every.is_some(),
        a.keep_checkpoints.is_some(),
        a.tamper.is_some(),
    ];
    GOSSIP_ONLY
        .into_iter()
        .zip(given)
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect()
}

/// The sharded-only flags given (in [`SHARDED_ONLY`] order).
pub(super) fn sharded_flags_given(a: &NodeArgs) -> Vec<&'static str> {
    let given = [
        a.pipeline_peers.is_some(),
        a.micro_batches.is_some(),
        a.placement.is_some(),
        a.slowdown.is_some(),
        a.snapshot_every.is_some(),
        a.pipeline_replicas.is_some(),
        a.average_every.is_some(),
        a.peer_deadline.is_some(),
        a.pipeline_tamper.is_some(),
    ];
    SHARDED_ONLY
        .into_iter()
        .zip(given)
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect()
}
