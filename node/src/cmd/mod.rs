//! The commands of the `murmur` binary, apart from the subsystems they drive.
//!
//! Raw flags are parsed by clap into [`Cli`]; each subcommand turns them into a validated
//! configuration and runs. `main` stays a thin wrapper that maps errors to an exit code.
//!
//! - [`node`]: `murmur node`, a training peer of a run (gossip averaging or `--sharded`).
//! - [`train`]: `murmur train`, a single-node training run.
//! - [`testnet`]: `murmur testnet`, a local network of nodes as processes.
//! - [`pool`]: `murmur pool`, closed-pool manifests.
//! - [`identity`]: `murmur keygen` and `murmur id`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

pub mod identity;
pub mod node;
pub mod pool;
pub mod testnet;
pub mod train;

use crate::paths::default_data_dir;
use node::NodeArgs;
use pool::PoolCommand;
use testnet::TestnetArgs;
use train::TrainArgs;

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

/// Why the command line did not parse.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Clap refused the command line, or it asked for `--help` or `--version`: print it
    /// with [`clap::Error::exit`].
    #[error(transparent)]
    Clap(#[from] clap::Error),
    /// The `--config` file could not be read or merged.
    #[error(transparent)]
    Config(anyhow::Error),
}

/// Parses the command line `argv` (program name first), with the `--config` file of
/// `murmur node` merged in (see [`node::config_file`]).
pub fn parse_args<I, T>(argv: I) -> Result<Cli, ParseError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let command = node::with_old_env_names(Cli::command(), |name| std::env::var_os(name).is_some());
    let matches = command.clone().try_get_matches_from(&argv)?;
    let config = matches
        .subcommand_matches("node")
        .and_then(|node| node.get_one::<PathBuf>("config"))
        .cloned();
    let matches = match config {
        None => matches,
        Some(path) => node::config_file::with_file_defaults(command, &path)
            .map_err(ParseError::Config)?
            .try_get_matches_from(&argv)?,
    };
    Ok(Cli::from_arg_matches(&matches)?)
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let data_dir = cli.data_dir();
    match cli.command {
        Some(Command::Keygen) => identity::keygen(&data_dir)?,
        Some(Command::Id) => identity::id(&data_dir)?,
        Some(Command::Train(args)) => train::run(&args)?,
        Some(Command::Node(args)) => node::run(&args, &data_dir)?,
        Some(Command::Testnet(args)) => testnet::run(&args)?,
        Some(Command::Pool(command)) => pool::run(&command, &data_dir)?,
        Some(Command::BootstrapNode) => node::bootstrap_child::run(&data_dir)?,
        None => {
            // The default job: a local testnet of 4 nodes training the embedded default.
            if let Some(Command::Testnet(args)) = Cli::parse_from(["murmur", "testnet"]).command {
                testnet::run(&args)?;
            }
        }
    }
    Ok(())
}
