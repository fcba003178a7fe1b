//! `murmur node`: run this machine as a training peer of a Murmur run.
//!
//! The raw flags ([`NodeArgs`], with the `--config` file merged in by [`config_file`]) are
//! validated into a [`NodeConfig`]; then the node trains by gossip averaging (`gossip`) or as
//! one shard of a pipeline (`sharded`) until Ctrl-C, `--duration`, or (for `murmur testnet`)
//! standard input closing. The last line printed is a JSON summary.

mod args;
pub mod bootstrap_child;
pub mod config;
pub mod config_file;
pub mod defaults;
mod gossip;
pub mod modes;
pub mod report;
mod sharded;

use std::path::Path;

use anyhow::Context;
use murmur_protocol::{ModelFingerprint, RunId};

pub(crate) use args::with_old_env_names;
pub use args::{NodeArgs, parse_codec, parse_placement};
pub use config::{CommonConfig, ConfigError, GossipConfig, Mode, NodeConfig, ShardedConfig};

use crate::identity::NodeIdentity;
use crate::store::Store;

/// Runs a training node until it is told to stop (or, with `--check-config`, prints the
/// validated configuration).
pub fn run(args: &NodeArgs, data_dir: &Path) -> anyhow::Result<()> {
    let config = NodeConfig::from_args(args).context("invalid `murmur node` configuration")?;
    if args.check_config {
        println!("{config:#?}");
        return Ok(());
    }
    let identity = NodeIdentity::load_or_create(data_dir)?;
    let store = Store::open(&data_dir.join("store")).context("opening the node's store")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match &config.mode {
        Mode::Sharded(sharded) => {
            runtime.block_on(sharded::serve(&config.common, sharded, identity, store))
        }
        Mode::Gossip(gossip) => {
            runtime.block_on(gossip::serve(&config.common, gossip, identity, store))
        }
    }
}

/// The initialisation seed every peer of `run` shares unless one is given.
pub fn run_seed(run: &RunId) -> u64 {
    u64_prefix(run.as_bytes())
}

/// The first 8 bytes of a 32-byte id as a little-endian integer.
pub(crate) fn u64_prefix(bytes: &[u8; 32]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(first)
}

/// Fingerprint of architecture and initial model together: peers merge only deltas relative
/// to the same anchor.
pub fn run_model_fingerprint(architecture: [u8; 32], seed: u64) -> ModelFingerprint {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"murmur/model/v1");
    hasher.update(&architecture);
    hasher.update(&seed.to_le_bytes());
    ModelFingerprint(*hasher.finalize().as_bytes())
}

/// Resolves when the node should stop: Ctrl-C, `--duration`, or stdin closing.
async fn stop_signal(common: &CommonConfig) {
    let duration = common.duration;
    let stdin = common.stdin_control;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        } => {}
        _ = async {
            if stdin { stdin_closed().await } else { std::future::pending().await }
        } => {}
    }
}

/// Resolves when standard input reaches end-of-file (read on a plain thread: blocking
/// reads never touch the async runtime).
async fn stdin_closed() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("murmur-stdin".into())
        .spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 256];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
            let _ = tx.send(());
        });
    if spawned.is_ok() {
        let _ = rx.await;
    }
}
