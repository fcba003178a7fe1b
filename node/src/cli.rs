//! Command-line interface of the `murmur` binary.
//!
//! Raw flags are parsed by clap into [`Cli`]; each subcommand turns them into a validated
//! configuration and runs. `main` stays a thin wrapper that maps errors to an exit code.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::identity::NodeIdentity;
use crate::node_cmd::{self, NodeArgs};
use crate::paths::default_data_dir;
use crate::pool_cmd::{self, PoolCommand};
use crate::testnet::{self, TestnetArgs};
use crate::train_local::{self, TrainArgs};

/// Murmur: peer-to-peer decentralized training.
#[derive(Debug, Parser)]
#[command(name = "murmur", version, about)]
pub struct Cli {
    /// Node data directory (identity, peer book, checkpoints).
    #[arg(long, global = true, env = "MURMUR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// What to do; without a subcommand `murmur` runs its default job.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands of `murmur`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the node identity if it does not exist yet, and print its peer id.
    Keygen,
    /// Print the peer id of the existing node identity.
    Id,
    /// Train a model locally on this machine, without peers.
    Train(TrainArgs),
    /// Run as a training peer of a Murmur network (gossip averaging of signed deltas).
    Node(Box<NodeArgs>),
    /// Run a whole local network: a bootstrap node and N training nodes (the default job).
    Testnet(Box<TestnetArgs>),
    /// Manage a closed pool's signed manifest.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// A loopback bootstrap node for `murmur testnet` (prints JSON, stops when stdin closes).
    #[command(hide = true)]
    BootstrapNode,
}

impl Cli {
    /// The data directory to use.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(default_data_dir)
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let data_dir = cli.data_dir();
    match cli.command {
        Some(Command::Keygen) => {
            let identity = NodeIdentity::load_or_create(&data_dir)?;
            println!("{}", identity.peer_id());
        }
        Some(Command::Id) => {
            let identity = NodeIdentity::load(&data_dir)?;
            println!("{}", identity.peer_id());
        }
        Some(Command::Train(args)) => train_local::run(&args)?,
        Some(Command::Node(args)) => node_cmd::run(&args, &data_dir)?,
        Some(Command::Testnet(args)) => testnet::run(&args)?,
        Some(Command::Pool(command)) => pool_cmd::run(&command, &data_dir)?,
        Some(Command::BootstrapNode) => node_cmd::bootstrap_child::run(&data_dir)?,
        None => {
            // The default job: a local testnet of 4 nodes training the embedded default.
            if let Some(Command::Testnet(args)) = Cli::parse_from(["murmur", "testnet"]).command {
                testnet::run(&args)?;
            }
        }
    }
    Ok(())
}
