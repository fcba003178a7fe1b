//! `murmur testnet`: a whole Murmur network on this machine, one command.
//!
//! Starts a bootstrap node and N training nodes as separate processes of this binary on
//! loopback, each with part i/N of the training data; shows live per-node progress; stops
//! when every honest node reached the target accuracy (or its step budget, or the time
//! limit); prints a summary table and one JSON line; and cleans up every process. Churn
//! (`--churn SECS`: kill -9 and restart a random node) and malicious extra nodes
//! (`--malicious KIND`, see [`attack`]) exercise crash recovery and the defences against
//! hostile peers.
//!
//! The raw flags ([`TestnetArgs`]) are validated into a [`TestnetConfig`] first
//! ([`config`]): flags of the other mode are refused, not ignored.

pub mod attack;
mod child;
pub mod config;
pub mod defaults;
mod gossip;
mod render;
mod sharded;

use std::path::PathBuf;

use anyhow::{Context, bail};
use murmur_models::{DeviceChoice, ModelKind};

use crate::averaging::SyncPolicy;
use child::Layout;
pub use config::{Mode, TestnetConfig};

/// Flags of `murmur testnet`. Those of one mode are refused in the other (see [`config`]).
#[derive(Debug, Clone, clap::Args)]
pub struct TestnetArgs {
    /// Honest training nodes (default 4).
    #[arg(long)]
    pub nodes: Option<usize>,
    /// Model: mlp-digits, char-gpt, char-gpt-deep (default with --sharded) or char-gpt-large.
    #[arg(long)]
    pub model: Option<ModelKind>,
    /// Compute device of every node.
    #[arg(long, default_value = defaults::DEVICE)]
    pub device: DeviceChoice,
    /// Local step budget per node (default: 1500 for mlp-digits, 300 for char-gpt models,
    /// 24 with --sharded).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Sync policy: steps:H, secs:T or qsr:BETA:MIN:MAX (default steps:40).
    #[arg(long)]
    pub sync: Option<SyncPolicy>,
    /// Peers each delta is sent to (default 2).
    #[arg(long)]
    pub fanout: Option<usize>,
    /// Delta codec: int8, raw, f16, bf16 or topk:K (default int8).
    #[arg(long, value_parser = crate::cmd::node::parse_codec)]
    pub codec: Option<murmur_protocol::Codec>,
    /// Held-out accuracy every node must reach (mlp-digits; default 0.96).
    #[arg(long)]
    pub target_accuracy: Option<f32>,
    /// Robust merging on every node (on by default with --malicious).
    #[arg(long)]
    pub robust: bool,
    /// DiLoCo outer optimizer on every node.
    #[arg(long)]
    pub outer: bool,
    /// Butterfly (scatter-reduce) averaging on every node instead of push-sum gossip.
    #[arg(long, conflicts_with_all = ["robust", "outer"])]
    pub butterfly: bool,
    /// Kill -9 and restart a random honest node every this many seconds (with --sharded:
    /// once, after this many seconds).
    #[arg(long)]
    pub churn: Option<f64>,
    /// Add malicious nodes: flip, scale:F, weight, round-jump, replay-flood,
    /// late-join-capture or slow-loris (one node), or sybil:N (N flipping identities); with
    /// --butterfly, butterfly-takeover (a stranger outside the pool); with --sharded,
    /// one hostile member: plan-hijack, epoch-jump, snapshot-poison, replan-flood or stage-garbage, or a
    /// stranger: formation-junk.
    #[arg(long)]
    pub malicious: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = defaults::TIMEOUT)]
    pub timeout: u64,
    /// Directory for node data and logs (default: a fresh temporary directory, removed at
    /// the end unless --keep).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the data directory and logs.
    #[arg(long)]
    pub keep: bool,
    /// Seed for churn choices.
    #[arg(long, default_value_t = defaults::SEED)]
    pub seed: u64,
    /// Print one compact line per second instead of the full table.
    #[arg(long)]
    pub plain: bool,

    // ---- pipeline sharding ----
    /// Train one model as a pipeline of layer shards across the nodes (char-gpt-deep by
    /// default) instead of gossip-averaged replicas.
    #[arg(long)]
    pub sharded: bool,
    /// With --sharded: one node per entry, each emulating a device this many times slower
    /// (default 1,2,4).
    #[arg(long, value_delimiter = ',')]
    pub slowdown: Vec<f64>,
    /// With --sharded: stage placement, capacity (default) or even.
    #[arg(long, value_parser = crate::cmd::node::parse_placement)]
    pub placement: Option<crate::shard::pipeline::Placement>,
    /// With --sharded: run the capacity-aware plan and then an even split, and compare.
    #[arg(long)]
    pub compare_even: bool,
    /// With --sharded: samples per step (default 16).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// With --sharded: micro-batches per step (default 8).
    #[arg(long)]
    pub micro_batches: Option<u32>,
    /// With --sharded: data-parallel copies of the pipeline (the nodes are grouped this many
    /// at a time; each group holds one range in every chain, kept in agreement by gossip
    /// averaging; default 1).
    #[arg(long)]
    pub replicas: Option<u32>,
}

/// Runs a local testnet and prints its summary.
pub fn run(args: &TestnetArgs) -> anyhow::Result<()> {
    let config = TestnetConfig::from_args(args).context("invalid `murmur testnet` flags")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let common = &config.common;
    // Without --dir the nodes live in a fresh temporary directory, removed on drop.
    let temp = match &common.dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("murmur-testnet-")
                .tempdir()
                .context("creating a temporary directory")?,
        ),
    };
    let root = match (&common.dir, &temp) {
        (Some(dir), _) => dir.clone(),
        (None, Some(temp)) => temp.path().to_path_buf(),
        (None, None) => bail!("no directory for the testnet"),
    };
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let layout = Layout { root: root.clone() };
    let result = runtime.block_on(async {
        match &config.mode {
            Mode::Gossip(gossip) => gossip::orchestrate(common, gossip, &layout).await,
            Mode::Sharded(sharded) => sharded::orchestrate(common, sharded, &layout).await,
        }
    });
    if common.keep || common.dir.is_some() {
        if let Some(temp) = temp {
            let _ = temp.keep();
        }
        println!("node data and logs kept in {}", root.display());
    }
    result
}

/// Parses and validates `extra` as the flags of `murmur testnet`.
#[cfg(test)]
fn testnet_config(extra: &[&str]) -> Result<TestnetConfig, crate::cmd::node::ConfigError> {
    let argv = ["murmur", "testnet"].iter().chain(extra).copied();
    match crate::cmd::parse_args(argv).unwrap().command {
        Some(crate::cmd::Command::Testnet(args)) => TestnetConfig::from_args(&args),
        other => panic!("not `testnet`: {other:?}"),
    }
}

/// Parses and validates a child's command line as the child would.
#[cfg(test)]
fn validated(child_argv: Vec<String>) -> crate::cmd::node::NodeConfig {
    let argv = std::iter::once("murmur".to_owned()).chain(child_argv.iter().cloned());
    let cli = crate::cmd::parse_args(argv).unwrap_or_else(|e| panic!("{child_argv:?}: {e:#}"));
    match cli.command {
        Some(crate::cmd::Command::Node(args)) => crate::cmd::node::NodeConfig::from_args(&args)
            .unwrap_or_else(|e| panic!("{child_argv:?}: {e}")),
        other => panic!("not `node`: {other:?}"),
    }
}
