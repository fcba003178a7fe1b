//! Raw flags of `murmur node`, as clap parses them (each also readable from a `MURMUR_*`
//! environment variable and from the `--config` TOML file; see `docs/operator-guide.md`).
//!
//! Flags that only one mode uses (gossip averaging or `--sharded`) have no clap default:
//! they stay `None` unless given, so [`super::config`] can refuse them in the other mode and
//! applies their defaults itself.

use std::path::PathBuf;

use clap::Command;
use libp2p::Multiaddr;
use murmur_models::{DeviceChoice, ModelKind};
use murmur_protocol::Codec;

use super::defaults;
use crate::adversary::{PipeTamper, Tamper};
use crate::averaging::SyncPolicy;
use crate::cmd::train::parse_data_part;
use crate::shard::pipeline::Placement;

/// Flags of `murmur node`.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// TOML file whose keys are these flags' long names (command line and environment win).
    #[arg(long, env = "MURMUR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Name of the training run to join.
    #[arg(long, default_value = defaults::RUN, env = "MURMUR_RUN")]
    pub run: String,

    // ---- network ----
    /// Port for TCP and QUIC on all interfaces (0 = any free port).
    #[arg(long, default_value_t = defaults::PORT, env = "MURMUR_PORT")]
    pub port: u16,
    /// Explicit listen multiaddrs (repeatable); replaces --port.
    #[arg(long, env = "MURMUR_LISTEN", value_delimiter = ',')]
    pub listen: Vec<Multiaddr>,
    /// Bootstrap node multiaddrs with `/p2p/<id>` (repeatable).
    #[arg(long, env = "MURMUR_BOOTSTRAP", value_delimiter = ',')]
    pub bootstrap: Vec<Multiaddr>,
    /// Relays to reserve a circuit on when behind NAT (repeatable).
    #[arg(long, env = "MURMUR_RELAY", value_delimiter = ',')]
    pub relay: Vec<Multiaddr>,
    /// Publicly reachable addresses to advertise (repeatable).
    #[arg(long, env = "MURMUR_EXTERNAL_ADDR", value_delimiter = ',')]
    pub external_addr: Vec<Multiaddr>,
    /// Switch off mDNS discovery on the local network.
    #[arg(long, env = "MURMUR_NO_MDNS")]
    pub no_mdns: bool,
    /// Serve the DHT (Kademlia server mode) from the start, for directly dialable nodes.
    #[arg(long, env = "MURMUR_KAD_SERVER")]
    pub kad_server: bool,
    /// Seconds between presence announcements [default: 2].
    #[arg(long, env = "MURMUR_ANNOUNCE_EVERY")]
    pub announce_every: Option<f64>,

    // ---- model and data ----
    /// Model: mlp-digits, char-gpt, char-gpt-deep or char-gpt-large.
    #[arg(long, default_value = defaults::MODEL, env = "MURMUR_MODEL")]
    pub model: ModelKind,
    /// Compute device: auto, gpu, wgpu-cpu or flex.
    #[arg(long, default_value = defaults::DEVICE, env = "MURMUR_DEVICE")]
    pub device: DeviceChoice,
    /// Your own data (CSV for mlp-digits, text for char-gpt). Default: the embedded set.
    #[arg(long, env = "MURMUR_DATA")]
    pub data: Option<PathBuf>,
    /// The CSV file has a header row.
    #[arg(long, env = "MURMUR_CSV_HEADER")]
    pub csv_header: bool,
    /// Train on part I of N of the training set (every N-th sample from the I-th), written
    /// `I/N` (default: all of it; not with --sharded).
    #[arg(long, alias = "shard", value_parser = parse_data_part, env = "MURMUR_DATA_PART")]
    pub data_part: Option<(usize, usize)>,
    /// Local optimizer steps to run; afterwards the node keeps averaging and serving
    /// (default: 1500 for mlp-digits, 300 for char-gpt; 40 with --sharded).
    #[arg(long, env = "MURMUR_STEPS")]
    pub steps: Option<u64>,
    /// Samples per step.
    #[arg(long, default_value_t = defaults::BATCH_SIZE, env = "MURMUR_BATCH_SIZE")]
    pub batch_size: usize,
    /// Peak learning rate (default: 3e-3 for mlp-digits, 1e-3 for char-gpt and --sharded).
    #[arg(long, env = "MURMUR_LR")]
    pub lr: Option<f64>,
    /// Initialisation seed; every peer of a run must use the same (default: from the run name).
    #[arg(long, env = "MURMUR_SEED")]
    pub seed: Option<u64>,
    /// Evaluate on held-out data every this many local steps [default: 25].
    #[arg(long, env = "MURMUR_EVAL_EVERY")]
    pub eval_every: Option<u64>,
    /// Report when held-out accuracy reaches this fraction (classification only).
    #[arg(long, env = "MURMUR_TARGET_ACCURACY")]
    pub target_accuracy: Option<f32>,

    // ---- averaging ----
    /// Sync policy: steps:H, secs:T or qsr:BETA:MIN:MAX [default: steps:25].
    #[arg(long, env = "MURMUR_SYNC")]
    pub sync: Option<SyncPolicy>,
    /// Peers each delta is sent to [default: 2].
    #[arg(long, env = "MURMUR_FANOUT")]
    pub fanout: Option<usize>,
    /// Delta codec: int8, raw, f16, bf16 or topk:K [default: int8].
    #[arg(long, value_parser = parse_codec, env = "MURMUR_CODEC")]
    pub codec: Option<Codec>,
    /// Robust merging: per-delta norm clipping and a coordinate-wise trimmed mean.
    #[arg(long, env = "MURMUR_ROBUST", conflicts_with = "butterfly")]
    pub robust: bool,
    /// Average in butterfly (scatter-reduce) rounds: every sync, the node and its live peers
    /// end with one exact sample-weighted mean. Parts use --codec when it is raw, f16 or
    /// bf16, f16 otherwise. Trusts the owner of each part: not with --robust.
    #[arg(long, env = "MURMUR_BUTTERFLY", conflicts_with = "outer")]
    pub butterfly: bool,
    /// Base window of a butterfly round, seconds; each round adds its parts' transfer time at
    /// 25 MB/s, so large models get longer (with --butterfly) [default: 4].
    #[arg(long, env = "MURMUR_BUTTERFLY_WINDOW")]
    pub butterfly_window: Option<f64>,
    /// DiLoCo: feed the averaged model change to a Nesterov outer optimizer.
    #[arg(long, env = "MURMUR_OUTER")]
    pub outer: bool,
    /// Outer learning rate (with --outer) [default: 0.7].
    #[arg(long, env = "MURMUR_OUTER_LR")]
    pub outer_lr: Option<f32>,
    /// Outer Nesterov momentum (with --outer) [default: 0.9].
    #[arg(long, env = "MURMUR_OUTER_MOMENTUM")]
    pub outer_momentum: Option<f32>,
    /// Closed pool: only peers in this signed manifest may contribute, download state or (with
    /// --sharded) be planned into the pipeline.
    #[arg(long, env = "MURMUR_POOL")]
    pub pool: Option<PathBuf>,

    // ---- pipeline sharding ----
    /// Train one layer shard of a pipeline across peers instead of a whole model replica.
    #[arg(long, env = "MURMUR_SHARDED")]
    pub sharded: bool,
    /// Members the pipeline waits for, this node included (with --sharded) [default: 3].
    #[arg(long, env = "MURMUR_PIPELINE_PEERS")]
    pub pipeline_peers: Option<usize>,
    /// Micro-batches per step (divides --batch-size; with --sharded) [default: 4].
    #[arg(long, env = "MURMUR_MICRO_BATCHES")]
    pub micro_batches: Option<u32>,
    /// Stage placement: capacity (proportional to measured capacity) or even (with
    /// --sharded) [default: capacity].
    #[arg(long, value_parser = parse_placement, env = "MURMUR_PLACEMENT")]
    pub placement: Option<Placement>,
    /// Emulate a device this many times slower (≥ 1), to try heterogeneous pipelines (with
    /// --sharded) [default: 1].
    #[arg(long, env = "MURMUR_SLOWDOWN")]
    pub slowdown: Option<f64>,
    /// Snapshot this node's shard to the other members every this many steps, so the run
    /// re-plans and goes on when a member leaves (0: never; a departure ends the run; with
    /// --sharded) [default: 4].
    #[arg(long, alias = "replicate-every", env = "MURMUR_SNAPSHOT_EVERY")]
    pub snapshot_every: Option<u64>,
    /// Data-parallel copies of the pipeline: members are grouped this many at a time, each
    /// group's members hold the same layers in different chains that train on different data
    /// (with --sharded; 1: one chain) [default: 1].
    #[arg(long, env = "MURMUR_PIPELINE_REPLICAS")]
    pub pipeline_replicas: Option<u32>,
    /// With several pipeline replicas, gossip-average each layer range with its other holders
    /// every this many steps (0: never; with --sharded) [default: 4].
    #[arg(long, env = "MURMUR_AVERAGE_EVERY")]
    pub average_every: Option<u64>,
    /// Seconds to wait for a pipeline neighbour before the run fails or re-plans (with
    /// --sharded) [default: 30].
    #[arg(long, env = "MURMUR_PEER_DEADLINE")]
    pub peer_deadline: Option<f64>,

    // ---- state ----
    /// Checkpoint every this many rounds (0: never) [default: 4].
    #[arg(long, env = "MURMUR_CHECKPOINT_EVERY")]
    pub checkpoint_every: Option<u64>,
    /// Checkpoints kept [default: 3].
    #[arg(long, env = "MURMUR_KEEP_CHECKPOINTS")]
    pub keep_checkpoints: Option<usize>,

    // ---- running ----
    /// Print progress as JSON lines (for scripts and `murmur testnet`).
    #[arg(long, env = "MURMUR_JSON")]
    pub json: bool,
    /// Stop when standard input closes (how `murmur testnet` stops its nodes).
    #[arg(long, hide = true)]
    pub stdin_control: bool,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long, env = "MURMUR_DURATION")]
    pub duration: Option<u64>,
    /// Red team only: corrupt every delta this node sends (flip, scale:F, weight, round-jump).
    #[arg(long, hide = true)]
    pub tamper: Option<Tamper>,
    /// Red team only: attack the other pipeline members beside this node's stage
    /// (plan-hijack, epoch-jump, snapshot-poison, replan-flood, stage-garbage, formation-junk).
    #[arg(long, hide = true)]
    pub pipeline_tamper: Option<PipeTamper>,
    /// Check the flags, environment and config file, print the resulting configuration and
    /// exit without starting the node.
    #[arg(long)]
    pub check_config: bool,
}

/// Renamed environment variables: (old name, new name, argument id). Where only the old name
/// is set, the argument reads it, so scripts written for the old name keep working.
const OLD_ENV_NAMES: [(&str, &str, &str); 2] = [
    ("MURMUR_SHARD", "MURMUR_DATA_PART", "data_part"),
    (
        "MURMUR_REPLICATE_EVERY",
        "MURMUR_SNAPSHOT_EVERY",
        "snapshot_every",
    ),
];

/// `command` (the whole `murmur` command) with the `node` arguments whose environment variable
/// was renamed reading the old name instead where `is_set` says only the old one is set.
pub(crate) fn with_old_env_names(command: Command, is_set: impl Fn(&str) -> bool) -> Command {
    OLD_ENV_NAMES
        .into_iter()
        .filter(|(old, new, _)| is_set(old) && !is_set(new))
        .fold(command, |command, (old, _, id)| {
            command.mut_subcommand("node", |node| node.mut_arg(id, |arg| arg.env(old)))
        })
}

/// Parses `capacity` or `even`.
pub fn parse_placement(s: &str) -> Result<Placement, String> {
    match s {
        "capacity" => Ok(Placement::CapacityAware),
        "even" => Ok(Placement::Even),
        _ => Err(format!(
            "unknown placement {s:?}: expected capacity or even"
        )),
    }
}

/// Parses `int8`, `int8:BLOCK`, `raw`, `f16`, `bf16`, `topk:K`.
pub fn parse_codec(s: &str) -> Result<Codec, String> {
    let (name, arg) = s.split_once(':').map_or((s, None), |(n, a)| (n, Some(a)));
    let number = |a: Option<&str>| -> Result<u64, String> {
        a.ok_or(format!("{name} needs a number, e.g. {name}:256"))?
            .parse()
            .map_err(|_| format!("bad number in codec {s:?}"))
    };
    match name {
        "raw" => Ok(Codec::RawF32),
        "f16" => Ok(Codec::F16),
        "bf16" => Ok(Codec::Bf16),
        "int8" => Ok(Codec::Int8Block {
            block: match arg {
                None => murmur_protocol::codec::DEFAULT_INT8_BLOCK,
                Some(_) => u32::try_from(number(arg)?).map_err(|_| "block too large")?,
            },
        }),
        "topk" => Ok(Codec::TopK { k: number(arg)? }),
        _ => Err(format!(
            "unknown codec {s:?}: expected int8, raw, f16, bf16 or topk:K"
        )),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::cmd::Cli;

    fn env_of(command: &Command, id: &str) -> Option<String> {
        let node = command.find_subcommand("node").expect("a node subcommand");
        let arg = node.get_arguments().find(|a| a.get_id() == id);
        let env = arg.expect("the argument").get_env()?;
        Some(env.to_string_lossy().into_owned())
    }

    #[test]
    fn an_old_environment_variable_is_read_only_when_the_new_one_is_unset() {
        let ids = ["data_part", "snapshot_every"];
        let env = |set: &[&str]| {
            let command = with_old_env_names(Cli::command(), |name| set.contains(&name));
            ids.map(|id| env_of(&command, id).expect("an environment variable"))
        };
        assert_eq!(env(&[]), ["MURMUR_DATA_PART", "MURMUR_SNAPSHOT_EVERY"]);
        assert_eq!(
            env(&["MURMUR_SHARD", "MURMUR_REPLICATE_EVERY"]),
            ["MURMUR_SHARD", "MURMUR_REPLICATE_EVERY"]
        );
        let both = ["MURMUR_SHARD", "MURMUR_DATA_PART", "MURMUR_REPLICATE_EVERY"];
        assert_eq!(env(&both), ["MURMUR_DATA_PART", "MURMUR_REPLICATE_EVERY"]);
    }
}
