//! The validated configuration of `murmur node`: raw flags ([`NodeArgs`]) become a
//! [`NodeConfig`] with every default applied (they live in [`super::defaults`]), every number
//! checked, and the flags of the other mode refused instead of silently ignored.
//!
//! Gossip averaging (the default) and pipeline sharding (`--sharded`) read different flags
//! (see [`super::modes`]); every other flag (network, model, data, schedule, output) applies
//! to both.

use std::path::PathBuf;
use std::time::Duration;

use murmur_models::{DeviceChoice, ModelKind};
use murmur_protocol::{Codec, RunId};

use super::args::NodeArgs;
use super::defaults;
use super::modes::{gossip_flags_given, sharded_flags_given};
use super::run_seed;
use crate::adversary::Tamper;
use crate::averaging::{OuterConfig, SyncPolicy};
use crate::net::NetConfig;
use crate::shard::pipeline::Placement;

/// Why the flags do not make a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Flags of pipeline sharding without `--sharded`.
    #[error("{} only appl{} to pipeline sharding: add --sharded or drop {}",
        .0.join(", "), if .0.len() == 1 { "ies" } else { "y" },
        if .0.len() == 1 { "it" } else { "them" })]
    ShardedOnly(Vec<&'static str>),
    /// Flags of gossip averaging with `--sharded`.
    #[error("{} {} not used by --sharded pipelines (gossip averaging only): drop {} or --sharded",
        .0.join(", "), if .0.len() == 1 { "is" } else { "are" },
        if .0.len() == 1 { "it" } else { "them" })]
    GossipOnly(Vec<&'static str>),
    /// A flag that refines another one, without it.
    #[error("{flag} only applies with {needs}")]
    Needs {
        /// The refining flag.
        flag: &'static str,
        /// The flag it refines.
        needs: &'static str,
    },
    /// Two flags that exclude each other.
    #[error("{0} and {1} cannot be used together")]
    Conflict(&'static str, &'static str),
    /// Butterfly rounds in an open run.
    #[error(
        "--butterfly needs --pool MANIFEST: each member of a butterfly group owns a part of \
         the model and every member applies the mean it sends back, so a stranger who joins a \
         group decides that part; in an open run use gossip averaging (with --robust)"
    )]
    ButterflyOpen,
    /// A value out of its range.
    #[error("{flag} {value}: expected {expected}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// The value given.
        value: String,
        /// What it should be.
        expected: String,
    },
}

/// The whole validated configuration of `murmur node`.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// What both modes use.
    pub common: CommonConfig,
    /// Gossip averaging or pipeline sharding, with that mode's settings.
    pub mode: Mode,
}

/// The two ways a node trains.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Gossip averaging of signed deltas between whole model replicas (the default).
    Gossip(GossipConfig),
    /// One layer shard of a pipeline across peers (`--sharded`).
    Sharded(ShardedConfig),
}

/// Settings both modes use.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    /// The run's name (`--run`).
    pub run_name: String,
    /// The run's id.
    pub run: RunId,
    /// Initialisation seed every peer of the run shares.
    pub seed: u64,
    /// Listeners, bootstrap nodes, relays, discovery.
    pub net: NetConfig,
    /// The model trained.
    pub model: ModelKind,
    /// The compute device.
    pub device: DeviceChoice,
    /// The user's data file (default: the embedded set).
    pub data: Option<PathBuf>,
    /// The CSV file has a header row.
    pub csv_header: bool,
    /// Local optimizer steps.
    pub steps: u64,
    /// Samples per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Print JSON lines.
    pub json: bool,
    /// Stop when standard input closes.
    pub stdin_control: bool,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

/// Settings of gossip averaging.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// Train on part I of N of the training set.
    pub data_part: Option<(usize, usize)>,
    /// Evaluate every this many local steps (≥ 1).
    pub eval_every: u64,
    /// Report when held-out accuracy reaches this fraction.
    pub target_accuracy: Option<f32>,
    /// Time between presence announcements.
    pub announce_every: Duration,
    /// When to sync.
    pub sync: SyncPolicy,
    /// Peers each delta is sent to (≥ 1).
    pub fanout: usize,
    /// Delta codec.
    pub codec: Codec,
    /// Robust merging.
    pub robust: bool,
    /// Butterfly rounds, with their base window.
    pub butterfly: Option<Duration>,
    /// DiLoCo outer optimizer.
    pub outer: Option<OuterConfig>,
    /// Closed pool manifest.
    pub pool: Option<PathBuf>,
    /// Checkpoint every this many rounds (0: never).
    pub checkpoint_every: u64,
    /// Checkpoints kept (≥ 1).
    pub keep_checkpoints: usize,
    /// Red team: corrupt every delta sent.
    pub tamper: Option<Tamper>,
}

/// Settings of pipeline sharding.
#[derive(Debug, Clone)]
pub struct ShardedConfig {
    /// Members the pipeline waits for (≥ 1).
    pub pipeline_peers: usize,
    /// Micro-batches per step (divides the batch size).
    pub micro_batches: u32,
    /// Stage placement.
    pub placement: Placement,
    /// Emulated slowdown (finite, ≥ 1).
    pub slowdown: f64,
    /// Snapshot every this many steps (0: never).
    pub snapshot_every: u64,
    /// Data-parallel chains (1 to `pipeline_peers`).
    pub pipeline_replicas: u32,
    /// Average each range every this many steps (0: never).
    pub average_every: u64,
    /// Silence after which a neighbour counts as gone.
    pub peer_deadline: Duration,
    /// Closed pool manifest: only its members are planned in and heard.
    pub pool: Option<PathBuf>,
    /// Red team only: this member's attack on the others.
    pub tamper: Option<crate::adversary::PipeTamper>,
}

impl NodeConfig {
    /// Validates the raw flags and applies the defaults.
    pub fn from_args(args: &NodeArgs) -> Result<Self, ConfigError> {
        let mode = if args.sharded {
            refuse(ConfigError::GossipOnly, gossip_flags_given(args))?;
            Mode::Sharded(sharded(args)?)
        } else {
            refuse(ConfigError::ShardedOnly, sharded_flags_given(args))?;
            Mode::Gossip(gossip(args)?)
        };
        Ok(Self {
            common: common(args)?,
            mode,
        })
    }
}

pub(crate) fn refuse(
    error: fn(Vec<&'static str>) -> ConfigError,
    given: Vec<&'static str>,
) -> Result<(), ConfigError> {
    if given.is_empty() {
        Ok(())
    } else {
        Err(error(given))
    }
}

fn common(a: &NodeArgs) -> Result<CommonConfig, ConfigError> {
    let run = RunId::from_name(&a.run);
    let is_mlp = matches!(a.model, ModelKind::MlpDigits);
    let (default_steps, default_lr) = match (a.sharded, is_mlp) {
        (true, _) => (defaults::STEPS_SHARDED, defaults::LR_GPT),
        (false, true) => (defaults::STEPS_MLP, defaults::LR_MLP),
        (false, false) => (defaults::STEPS_GPT, defaults::LR_GPT),
    };
    let lr = a.lr.unwrap_or(default_lr);
    if !(lr.is_finite() && lr > 0.0) {
        return Err(invalid("--lr", lr, "a positive finite number"));
    }
    let mut net = NetConfig::new(run, a.port);
    if !a.listen.is_empty() {
        net.listen_addrs = a.listen.clone();
    }
    net.bootstrap = a.bootstrap.clone();
    net.relays = a.relay.clone();
    net.external_addrs = a.external_addr.clone();
    net.mdns = !a.no_mdns;
    net.kad_server = a.kad_server || !a.external_addr.is_empty();
    Ok(CommonConfig {
        run_name: a.run.clone(),
        run,
        seed: a.seed.unwrap_or_else(|| run_seed(&run)),
        net,
        model: a.model,
        device: a.device,
        data: a.data.clone(),
        csv_header: a.csv_header,
        steps: a.steps.unwrap_or(default_steps),
        batch_size: at_least("--batch-size", a.batch_size, 1)?,
        lr,
        json: a.json,
        stdin_control: a.stdin_control,
        duration: a.duration.map(Duration::from_secs),
    })
}

fn gossip(a: &NodeArgs) -> Result<GossipConfig, ConfigError> {
    if a.butterfly && a.robust {
        return Err(ConfigError::Conflict("--robust", "--butterfly"));
    }
    if a.butterfly && a.outer {
        return Err(ConfigError::Conflict("--butterfly", "--outer"));
    }
    if a.butterfly && a.pool.is_none() {
        return Err(ConfigError::ButterflyOpen);
    }
    needs(
        "--butterfly-window",
        a.butterfly_window.is_some(),
        "--butterfly",
        a.butterfly,
    )?;
    needs("--outer-lr", a.outer_lr.is_some(), "--outer", a.outer)?;
    needs(
        "--outer-momentum",
        a.outer_momentum.is_some(),
        "--outer",
        a.outer,
    )?;
    if let Some(t) = a.target_accuracy
        && !(t > 0.0 && t <= 1.0)
    {
        return Err(invalid("--target-accuracy", t, "a fraction in (0, 1]"));
    }
    let window = a.butterfly_window.unwrap_or(defaults::BUTTERFLY_WINDOW);
    let butterfly = match a.butterfly {
        true => Some(seconds("--butterfly-window", window, 0.1, 600.0)?),
        false => None,
    };
    let outer = match a.outer {
        true => Some(outer(a)?),
        false => None,
    };
    let announce = a.announce_every.unwrap_or(defaults::ANNOUNCE_EVERY);
    Ok(GossipConfig {
        data_part: a.data_part,
        eval_every: at_least(
            "--eval-every",
            a.eval_every.unwrap_or(defaults::EVAL_EVERY),
            1,
        )?,
        target_accuracy: a.target_accuracy,
        announce_every: seconds("--announce-every", announce, 0.1, 3600.0)?,
        sync: a.sync.unwrap_or(defaults::SYNC),
        fanout: at_least("--fanout", a.fanout.unwrap_or(defaults::FANOUT), 1)?,
        codec: a.codec.unwrap_or(defaults::CODEC),
        robust: a.robust,
        butterfly,
        outer,
        pool: a.pool.clone(),
        checkpoint_every: a.checkpoint_every.unwrap_or(defaults::CHECKPOINT_EVERY),
        keep_checkpoints: at_least(
            "--keep-checkpoints",
            a.keep_checkpoints.unwrap_or(defaults::KEEP_CHECKPOINTS),
            1,
        )?,
        tamper: a.tamper,
    })
}

fn outer(a: &NodeArgs) -> Result<OuterConfig, ConfigError> {
    let lr = a.outer_lr.unwrap_or(defaults::OUTER_LR);
    if !(lr.is_finite() && lr > 0.0) {
        return Err(invalid("--outer-lr", lr, "a positive finite number"));
    }
    let momentum = a.outer_momentum.unwrap_or(defaults::OUTER_MOMENTUM);
    if !(0.0..1.0).contains(&momentum) {
        return Err(invalid("--outer-momentum", momentum, "a number in [0, 1)"));
    }
    Ok(OuterConfig { lr, momentum })
}

fn sharded(a: &NodeArgs) -> Result<ShardedConfig, ConfigError> {
    let members = a.pipeline_peers.unwrap_or(defaults::PIPELINE_PEERS);
    let members = at_least("--pipeline-peers", members, 1)?;
    let micro = a.micro_batches.unwrap_or(defaults::MICRO_BATCHES);
    if micro == 0 || !a.batch_size.is_multiple_of(micro as usize) {
        let expected = format!("a divisor of --batch-size {} (≥ 1)", a.batch_size);
        return Err(invalid("--micro-batches", micro, expected));
    }
    let slowdown = a.slowdown.unwrap_or(defaults::SLOWDOWN);
    if !(slowdown.is_finite() && slowdown >= 1.0) {
        return Err(invalid("--slowdown", slowdown, "a finite factor ≥ 1"));
    }
    let replicas = a.pipeline_replicas.unwrap_or(defaults::PIPELINE_REPLICAS);
    if replicas == 0 || replicas as usize > members {
        let expected = format!("1 to --pipeline-peers ({members})");
        return Err(invalid("--pipeline-replicas", replicas, expected));
    }
    let deadline = a.peer_deadline.unwrap_or(defaults::PEER_DEADLINE);
    Ok(ShardedConfig {
        pipeline_peers: members,
        micro_batches: micro,
        placement: a.placement.unwrap_or(defaults::PLACEMENT),
        slowdown,
        snapshot_every: a.snapshot_every.unwrap_or(defaults::SNAPSHOT_EVERY),
        pipeline_replicas: replicas,
        average_every: a.average_every.unwrap_or(defaults::AVERAGE_EVERY),
        peer_deadline: seconds("--peer-deadline", deadline, 0.1, 86_400.0)?,
        pool: a.pool.clone(),
        tamper: a.pipeline_tamper,
    })
}

fn needs(
    flag: &'static str,
    given: bool,
    needs: &'static str,
    present: bool,
) -> Result<(), ConfigError> {
    match given && !present {
        true => Err(ConfigError::Needs { flag, needs }),
        false => Ok(()),
    }
}

pub(crate) fn at_least<T: PartialOrd + std::fmt::Display>(
    flag: &'static str,
    value: T,
    min: T,
) -> Result<T, ConfigError> {
    if value >= min {
        Ok(value)
    } else {
        let expected = format!("at least {min}");
        Err(invalid(flag, value, expected))
    }
}

/// A number of seconds in `[min, max]` (finite, so `inf` and `nan` are refused).
pub(crate) fn seconds(
    flag: &'static str,
    secs: f64,
    min: f64,
    max: f64,
) -> Result<Duration, ConfigError> {
    if secs.is_finite() && (min..=max).contains(&secs) {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(invalid(flag, secs, format!("seconds from {min} to {max}")))
    }
}

pub(crate) fn invalid(
    flag: &'static str,
    value: impl ToString,
    expected: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        flag,
        value: value.to_string(),
        expected: expected.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::modes::{GOSSIP_ONLY, SHARDED_ONLY};
    use super::*;
    use crate::cmd::{Command, parse_args};

    fn config(flags: &[&str]) -> Result<NodeConfig, ConfigError> {
        let argv = ["murmur", "node"].iter().chain(flags).copied();
        match parse_args(argv).unwrap().command {
            Some(Command::Node(args)) => NodeConfig::from_args(&args),
            other => panic!("not `node`: {other:?}"),
        }
    }

    fn refused(flags: &[&str], needle: &str) {
        let err = config(flags).expect_err("refused").to_string();
        assert!(err.contains(needle), "{flags:?}: {err}");
    }

    #[test]
    fn defaults_live_here() {
        let config = config(&[]).unwrap();
        assert_eq!(config.common.steps, defaults::STEPS_MLP);
        assert_eq!(config.common.lr, defaults::LR_MLP);
        let Mode::Gossip(gossip) = config.mode else {
            panic!("gossip is the default")
        };
        assert_eq!(gossip.fanout, defaults::FANOUT);
        assert_eq!(gossip.codec, defaults::CODEC);
        assert_eq!(gossip.sync, defaults::SYNC);
        assert_eq!(gossip.announce_every, Duration::from_secs(2));
        let config = self::config(&["--sharded"]).unwrap();
        assert_eq!(config.common.steps, defaults::STEPS_SHARDED);
        let Mode::Sharded(sharded) = config.mode else {
            panic!("--sharded")
        };
        assert_eq!(sharded.pipeline_peers, defaults::PIPELINE_PEERS);
        assert_eq!(sharded.peer_deadline, Duration::from_secs(30));
    }

    #[test]
    fn every_sharded_only_flag_is_refused_without_sharded() {
        let values = ["4", "4", "even", "2", "4", "1", "4", "10", "epoch-jump"];
        for (flag, value) in SHARDED_ONLY.into_iter().zip(values) {
            refused(&[flag, value], flag);
            refused(&[flag, value], "only applies to pipeline sharding");
            assert!(config(&["--sharded", flag, value]).is_ok(), "{flag}");
        }
        let err = config(&["--placement", "even", "--slowdown", "2"]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--placement, --slowdown only apply"),
            "{err}"
        );
    }

    #[test]
    fn every_gossip_only_flag_is_refused_with_sharded() {
        let given: [&[&str]; 16] = [
            &["--data-part", "0/2"],
            &["--eval-every", "10"],
            &["--target-accuracy", "0.9"],
            &["--announce-every", "1"],
            &["--sync", "steps:10"],
            &["--fanout", "3"],
            &["--codec", "raw"],
            &["--robust"],
            &["--butterfly", "--pool", "pool.manifest"],
            &["--butterfly", "--pool", "p", "--butterfly-window", "2"],
            &["--outer"],
            &["--outer", "--outer-lr", "0.5"],
            &["--outer", "--outer-momentum", "0.5"],
            &["--checkpoint-every", "2"],
            &["--keep-checkpoints", "2"],
            &["--tamper", "flip"],
        ];
        for (flag, flags) in GOSSIP_ONLY.into_iter().zip(given) {
            let mut sharded = vec!["--sharded"];
            sharded.extend(flags);
            refused(&sharded, flag);
            refused(&sharded, "not used by --sharded");
            assert!(config(flags).is_ok(), "{flags:?}");
        }
    }

    /// A closed pool applies to pipelines too: `--pool` is taken with `--sharded`.
    #[test]
    fn a_pool_is_taken_in_both_modes() {
        let sharded = config(&["--sharded", "--pool", "pool.manifest"]).expect("sharded pool");
        let Mode::Sharded(s) = sharded.mode else {
            panic!("not sharded");
        };
        assert_eq!(
            s.pool.as_deref(),
            Some(std::path::Path::new("pool.manifest"))
        );
        assert!(config(&["--pool", "pool.manifest"]).is_ok());
    }

    /// Butterfly takeover: in an open run a stranger could join a group and decide a part of
    /// every member's model; butterfly rounds are refused without a pool manifest.
    #[test]
    fn butterfly_rounds_need_a_closed_pool() {
        refused(&["--butterfly"], "--butterfly needs --pool MANIFEST");
        assert!(config(&["--butterfly", "--pool", "pool.manifest"]).is_ok());
    }

    #[test]
    fn refinements_need_their_flag_and_exclusive_flags_conflict() {
        refused(
            &["--butterfly-window", "2"],
            "--butterfly-window only applies with --butterfly",
        );
        refused(
            &["--outer-lr", "0.5"],
            "--outer-lr only applies with --outer",
        );
        refused(
            &["--outer-momentum", "0.5"],
            "--outer-momentum only applies with --outer",
        );
    }

    #[test]
    fn numbers_out_of_range_are_clear_errors() {
        for (flags, needle) in [
            (
                &["--sharded", "--peer-deadline", "inf"][..],
                "--peer-deadline inf",
            ),
            (&["--sharded", "--peer-deadline", "0"], "--peer-deadline 0"),
            (&["--announce-every", "inf"], "--announce-every inf"),
            (&["--announce-every=-1"], "--announce-every -1"),
            (
                &["--butterfly", "--pool", "p", "--butterfly-window", "nan"],
                "--butterfly-window NaN",
            ),
            (
                &["--butterfly", "--pool", "p", "--butterfly-window", "601"],
                "--butterfly-window 601",
            ),
            (&["--sharded", "--slowdown", "0.5"], "--slowdown 0.5"),
            (&["--sharded", "--slowdown", "inf"], "--slowdown inf"),
            (
                &["--sharded", "--pipeline-peers", "0"],
                "--pipeline-peers 0",
            ),
            (&["--sharded", "--micro-batches", "0"], "--micro-batches 0"),
            (
                &["--sharded", "--micro-batches", "5"],
                "a divisor of --batch-size 32",
            ),
            (
                &["--sharded", "--pipeline-replicas", "4"],
                "1 to --pipeline-peers (3)",
            ),
            (&["--fanout", "0"], "--fanout 0: expected at least 1"),
            (&["--eval-every", "0"], "--eval-every 0"),
            (&["--keep-checkpoints", "0"], "--keep-checkpoints 0"),
            (&["--batch-size", "0"], "--batch-size 0"),
            (&["--lr", "nan"], "--lr NaN"),
            (&["--lr", "0"], "--lr 0"),
            (&["--target-accuracy", "1.5"], "--target-accuracy 1.5"),
            (&["--outer", "--outer-momentum", "1"], "--outer-momentum 1"),
            (&["--outer", "--outer-lr", "inf"], "--outer-lr inf"),
        ] {
            refused(flags, needle);
        }
    }

    #[test]
    fn the_old_flag_names_give_the_same_config() {
        let data_part = |flags: &[&str]| match config(flags).unwrap().mode {
            Mode::Gossip(gossip) => gossip.data_part,
            Mode::Sharded(_) => panic!("gossip is the default"),
        };
        assert_eq!(data_part(&["--data-part", "1/2"]), Some((1, 2)));
        assert_eq!(data_part(&["--shard", "1/2"]), Some((1, 2)));
        let snapshot_every = |flags: &[&str]| match config(flags).unwrap().mode {
            Mode::Sharded(sharded) => sharded.snapshot_every,
            Mode::Gossip(_) => panic!("--sharded"),
        };
        assert_eq!(snapshot_every(&["--sharded", "--snapshot-every", "2"]), 2);
        assert_eq!(snapshot_every(&["--sharded", "--replicate-every", "2"]), 2);
        // Refusals name the flag by its one documented name.
        refused(&["--sharded", "--shard", "1/2"], "--data-part");
        refused(&["--replicate-every", "2"], "--snapshot-every");
    }
}
