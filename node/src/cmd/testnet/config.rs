//! The validated configuration of `murmur testnet`: raw flags ([`TestnetArgs`]) become a
//! [`TestnetConfig`] with every default applied (they live in [`super::defaults`]), every
//! number checked, and the flags of the other mode refused instead of silently ignored — the
//! same rules and errors as `murmur node` (see [`crate::cmd::node::config`]).
//!
//! Gossip averaging (the default) and pipeline sharding (`--sharded`) read different flags
//! ([`GOSSIP_ONLY`], [`SHARDED_ONLY`]); the model, device, step budget, churn, time limit,
//! directory and seed apply to both.

use std::path::PathBuf;
use std::time::Duration;

use murmur_models::{DeviceChoice, ModelKind};
use murmur_protocol::Codec;

use super::TestnetArgs;
use super::attack::Attack;
use super::defaults;
use crate::adversary::{PipeTamper, Tamper};
use crate::averaging::SyncPolicy;
use crate::cmd::node::config::{at_least, invalid, refuse};
use crate::cmd::node::{ConfigError, defaults as node_defaults};
use crate::shard::pipeline::Placement;

/// Flags only the gossip testnet reads: refused with `--sharded`.
pub const GOSSIP_ONLY: [&str; 9] = [
    "--nodes",
    "--sync",
    "--fanout",
    "--codec",
    "--target-accuracy",
    "--robust",
    "--outer",
    "--butterfly",
    "--plain",
];

/// Flags only the sharded testnet reads: refused without `--sharded`.
pub const SHARDED_ONLY: [&str; 6] = [
    "--slowdown",
    "--placement",
    "--compare-even",
    "--batch-size",
    "--micro-batches",
    "--replicas",
];

/// The longest `--timeout` and `--churn` period, in seconds (30 days).
const MAX_SECS: u64 = 30 * 86_400;
/// The shortest churn period: a node needs a moment to start before it is killed again.
const MIN_CHURN_PERIOD: f64 = 0.5;

/// The whole validated configuration of `murmur testnet`.
#[derive(Debug, Clone)]
pub struct TestnetConfig {
    /// What both modes use.
    pub common: CommonConfig,
    /// Gossip averaging or pipeline sharding, with that mode's settings.
    pub mode: Mode,
}

/// The two kinds of testnet.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Gossip-averaged replicas (the default).
    Gossip(GossipConfig),
    /// One model as a pipeline of layer shards (`--sharded`).
    Sharded(ShardedConfig),
}

/// Settings both modes use.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    /// The model trained.
    pub model: ModelKind,
    /// Compute device of every node.
    pub device: DeviceChoice,
    /// Local step budget per node (≥ 1).
    pub steps: u64,
    /// Give up after this long.
    pub timeout: Duration,
    /// Churn period (gossip) or kill time (sharded), at least [`MIN_CHURN_PERIOD`].
    pub churn: Option<Duration>,
    /// Directory for node data and logs (default: a temporary one).
    pub dir: Option<PathBuf>,
    /// Keep the data directory and logs.
    pub keep: bool,
    /// Seed of the churn choices.
    pub seed: u64,
}

/// Settings of the gossip testnet.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// Honest training nodes (≥ 1).
    pub nodes: usize,
    /// Sync policy of every node.
    pub sync: SyncPolicy,
    /// Peers each delta is sent to (≥ 1).
    pub fanout: usize,
    /// Delta codec.
    pub codec: Codec,
    /// Held-out accuracy every honest node must reach (mlp-digits has one by default).
    pub target_accuracy: Option<f32>,
    /// Robust merging (on with `--malicious`).
    pub robust: bool,
    /// DiLoCo outer optimizer.
    pub outer: bool,
    /// Butterfly rounds instead of push-sum gossip.
    pub butterfly: bool,
    /// Malicious extra nodes.
    pub malicious: Option<Attack>,
    /// One compact line per second instead of the table.
    pub plain: bool,
}

impl GossipConfig {
    /// Every node, the malicious ones included.
    pub fn total(&self) -> usize {
        self.nodes + self.malicious.map_or(0, |a| a.nodes)
    }
}

/// Settings of the sharded testnet.
#[derive(Debug, Clone)]
pub struct ShardedConfig {
    /// One node per factor, each emulating a device this many times slower (each ≥ 1).
    pub slowdown: Vec<f64>,
    /// The placements run one after the other (two with `--compare-even`).
    pub placements: Vec<Placement>,
    /// Samples per step (≥ 1).
    pub batch_size: usize,
    /// Micro-batches per step (divides the batch size).
    pub micro_batches: u32,
    /// Data-parallel chains (1 to the number of nodes).
    pub replicas: u32,
    /// A hostile extra node (`--malicious`): a member attacking the others, or a stranger.
    pub malicious: Option<PipeTamper>,
}

impl ShardedConfig {
    /// Whether the hostile extra node is a pipeline member (every kind but the stranger's).
    pub fn malicious_member(&self) -> bool {
        self.malicious
            .is_some_and(|m| m != PipeTamper::FormationJunk)
    }
}

impl TestnetConfig {
    /// Validates the raw flags and applies the defaults.
    pub fn from_args(args: &TestnetArgs) -> Result<Self, ConfigError> {
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

fn gossip_flags_given(a: &TestnetArgs) -> Vec<&'static str> {
    let given = [
        a.nodes.is_some(),
        a.sync.is_some(),
        a.fanout.is_some(),
        a.codec.is_some(),
        a.target_accuracy.is_some(),
        a.robust,
        a.outer,
        a.butterfly,
        a.plain,
    ];
    flags_given(GOSSIP_ONLY, given)
}

fn sharded_flags_given(a: &TestnetArgs) -> Vec<&'static str> {
    let given = [
        !a.slowdown.is_empty(),
        a.placement.is_some(),
        a.compare_even,
        a.batch_size.is_some(),
        a.micro_batches.is_some(),
        a.replicas.is_some(),
    ];
    flags_given(SHARDED_ONLY, given)
}

fn flags_given<const N: usize>(flags: [&'static str; N], given: [bool; N]) -> Vec<&'static str> {
    flags
        .into_iter()
        .zip(given)
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect()
}

fn common(a: &TestnetArgs) -> Result<CommonConfig, ConfigError> {
    let model = a.model.unwrap_or(match a.sharded {
        true => ModelKind::CharGptDeep,
        false => ModelKind::MlpDigits,
    });
    let default_steps = match (a.sharded, model) {
        (true, _) => defaults::STEPS_SHARDED,
        (false, ModelKind::MlpDigits) => node_defaults::STEPS_MLP,
        (false, _) => node_defaults::STEPS_GPT,
    };
    if !(1..=MAX_SECS).contains(&a.timeout) {
        let expected = format!("seconds from 1 to {MAX_SECS}");
        return Err(invalid("--timeout", a.timeout, expected));
    }
    let churn = match a.churn {
        Some(secs) if secs.is_finite() && secs > 0.0 && secs <= MAX_SECS as f64 => {
            Some(Duration::from_secs_f64(secs.max(MIN_CHURN_PERIOD)))
        }
        Some(secs) => {
            let expected = format!("a positive number of seconds up to {MAX_SECS}");
            return Err(invalid("--churn", secs, expected));
        }
        None => None,
    };
    Ok(CommonConfig {
        model,
        device: a.device,
        steps: at_least("--steps", a.steps.unwrap_or(default_steps), 1)?,
        timeout: Duration::from_secs(a.timeout),
        churn,
        dir: a.dir.clone(),
        keep: a.keep,
        seed: a.seed,
    })
}

/// `--malicious` as a kind of the testnet's mode.
fn malicious<T: std::str::FromStr<Err = String>>(
    a: &TestnetArgs,
) -> Result<Option<T>, ConfigError> {
    let parse = |m: &str| m.parse::<T>().map_err(|e| invalid("--malicious", m, e));
    a.malicious.as_deref().map(parse).transpose()
}

fn gossip(a: &TestnetArgs) -> Result<GossipConfig, ConfigError> {
    let target_accuracy = match (a.target_accuracy, a.model.unwrap_or(ModelKind::MlpDigits)) {
        (Some(t), _) if !(t > 0.0 && t <= 1.0) => {
            return Err(invalid("--target-accuracy", t, "a fraction in (0, 1]"));
        }
        (Some(t), _) => Some(t),
        (None, ModelKind::MlpDigits) => Some(defaults::TARGET_ACCURACY_MLP),
        (None, _) => None,
    };
    let nodes = at_least("--nodes", a.nodes.unwrap_or(defaults::NODES), 1)?;
    let malicious = malicious::<Attack>(a)?;
    // Butterfly rounds meet the one attack made on them; that attack needs them.
    let takeover = malicious.is_some_and(|m| m.tamper == Tamper::ButterflyTakeover);
    if a.butterfly && malicious.is_some() && !takeover {
        let expected = "butterfly-takeover with --butterfly (the gossip kinds need push-sum)";
        return Err(invalid(
            "--malicious",
            malicious.map(|m| m.to_string()).unwrap_or_default(),
            expected,
        ));
    }
    if takeover && !a.butterfly {
        return Err(invalid(
            "--malicious",
            "butterfly-takeover",
            "--butterfly with it (it attacks butterfly rounds)",
        ));
    }
    if malicious.is_some_and(|m| m.late_joiner()) && nodes < 3 {
        let expected =
            "at least 3 with --malicious late-join-capture (two to cross-check, one late)";
        return Err(invalid("--nodes", nodes, expected));
    }
    Ok(GossipConfig {
        nodes,
        sync: a.sync.unwrap_or(defaults::SYNC),
        fanout: at_least("--fanout", a.fanout.unwrap_or(defaults::FANOUT), 1)?,
        codec: a.codec.unwrap_or(defaults::CODEC),
        target_accuracy,
        // Butterfly rounds take no robust merging: their defence is the closed pool.
        robust: a.robust || (malicious.is_some() && !a.butterfly),
        outer: a.outer,
        butterfly: a.butterfly,
        malicious,
        plain: a.plain,
    })
}

fn sharded(a: &TestnetArgs) -> Result<ShardedConfig, ConfigError> {
    if a.compare_even && a.placement.is_some() {
        return Err(ConfigError::Conflict("--placement", "--compare-even"));
    }
    let slowdown = match a.slowdown.is_empty() {
        true => defaults::SLOWDOWN.to_vec(),
        false => a.slowdown.clone(),
    };
    if let Some(bad) = slowdown.iter().find(|s| !(s.is_finite() && **s >= 1.0)) {
        let expected = "one finite factor ≥ 1 per node, e.g. 1,2,4";
        return Err(invalid("--slowdown", bad, expected));
    }
    let batch_size = at_least(
        "--batch-size",
        a.batch_size.unwrap_or(defaults::BATCH_SIZE),
        1,
    )?;
    let micro = a.micro_batches.unwrap_or(defaults::MICRO_BATCHES);
    if micro == 0 || !batch_size.is_multiple_of(micro as usize) {
        let expected = format!("a divisor of --batch-size {batch_size} (≥ 1)");
        return Err(invalid("--micro-batches", micro, expected));
    }
    let replicas = a.replicas.unwrap_or(defaults::REPLICAS);
    if replicas == 0 || replicas as usize > slowdown.len() {
        let expected = format!("1 to the number of nodes ({})", slowdown.len());
        return Err(invalid("--replicas", replicas, expected));
    }
    let placements = match a.compare_even {
        true => vec![Placement::CapacityAware, Placement::Even],
        false => vec![a.placement.unwrap_or(defaults::PLACEMENT)],
    };
    let malicious = malicious::<PipeTamper>(a)?;
    Ok(ShardedConfig {
        slowdown,
        placements,
        batch_size,
        micro_batches: micro,
        replicas,
        malicious,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testnet_config as config;
    use super::*;

    fn refused(flags: &[&str], needle: &str) {
        let err = config(flags).expect_err("refused").to_string();
        assert!(err.contains(needle), "{flags:?}: {err}");
    }

    #[test]
    fn defaults_live_here() {
        let config = config(&[]).unwrap();
        assert_eq!(config.common.model, ModelKind::MlpDigits);
        assert_eq!(config.common.steps, node_defaults::STEPS_MLP);
        assert_eq!(
            config.common.timeout,
            Duration::from_secs(defaults::TIMEOUT)
        );
        let Mode::Gossip(gossip) = config.mode else {
            panic!("gossip is the default")
        };
        assert_eq!(gossip.nodes, defaults::NODES);
        assert_eq!(gossip.sync, defaults::SYNC);
        assert_eq!(gossip.fanout, defaults::FANOUT);
        assert_eq!(gossip.codec, defaults::CODEC);
        assert_eq!(gossip.target_accuracy, Some(defaults::TARGET_ACCURACY_MLP));
        let config = self::config(&["--sharded"]).unwrap();
        assert_eq!(config.common.model, ModelKind::CharGptDeep);
        assert_eq!(config.common.steps, defaults::STEPS_SHARDED);
        let Mode::Sharded(sharded) = config.mode else {
            panic!("--sharded")
        };
        assert_eq!(sharded.slowdown, defaults::SLOWDOWN);
        assert_eq!(sharded.placements, [defaults::PLACEMENT]);
        assert_eq!(sharded.batch_size, defaults::BATCH_SIZE);
        assert_eq!(sharded.micro_batches, defaults::MICRO_BATCHES);
        assert_eq!(sharded.replicas, defaults::REPLICAS);
    }

    #[test]
    fn documented_combinations_validate() {
        let compare = config(&["--sharded", "--compare-even"]).unwrap();
        let Mode::Sharded(sharded) = compare.mode else {
            panic!("--sharded")
        };
        assert_eq!(
            sharded.placements,
            [Placement::CapacityAware, Placement::Even]
        );
        let chains = config(&["--sharded", "--replicas", "2", "--slowdown", "1,1,2,2"]).unwrap();
        let Mode::Sharded(sharded) = chains.mode else {
            panic!("--sharded")
        };
        assert_eq!((sharded.replicas, sharded.slowdown.len()), (2, 4));
        let churn = config(&["--churn", "0.1"]).unwrap();
        assert_eq!(churn.common.churn, Some(Duration::from_millis(500)));
        let capture = config(&["--malicious", "late-join-capture", "--nodes", "2"]);
        assert!(
            capture.is_err_and(|e| e.to_string().contains("two to cross-check")),
            "a capture needs two honest leaders and a late joiner"
        );
        let Mode::Gossip(sybils) = config(&["--malicious", "sybil:3"]).unwrap().mode else {
            panic!("a gossip testnet");
        };
        assert_eq!(sybils.total(), sybils.nodes + 3);
        let malicious = config(&["--malicious", "flip"]).unwrap();
        let Mode::Gossip(gossip) = malicious.mode else {
            panic!("gossip")
        };
        assert!(gossip.robust, "--malicious switches robust merging on");
        assert_eq!(gossip.total(), defaults::NODES + 1);
        let gpt = config(&["--model", "char-gpt"]).unwrap();
        assert_eq!(gpt.common.steps, node_defaults::STEPS_GPT);
        let Mode::Gossip(gossip) = gpt.mode else {
            panic!("gossip")
        };
        assert_eq!(gossip.target_accuracy, None);
    }

    #[test]
    fn every_gossip_only_flag_is_refused_with_sharded() {
        let given: [&[&str]; 9] = [
            &["--nodes", "3"],
            &["--sync", "steps:10"],
            &["--fanout", "3"],
            &["--codec", "raw"],
            &["--target-accuracy", "0.9"],
            &["--robust"],
            &["--outer"],
            &["--butterfly"],
            &["--plain"],
        ];
        for (flag, flags) in GOSSIP_ONLY.into_iter().zip(given) {
            let mut sharded = vec!["--sharded"];
            sharded.extend(flags);
            refused(&sharded, flag);
            refused(&sharded, "not used by --sharded");
            assert!(config(flags).is_ok(), "{flags:?}");
        }
        refused(
            &["--sharded", "--robust", "--plain"],
            "--robust, --plain are not used by --sharded",
        );
        // Butterfly rounds meet only the attack made on them, and it needs them.
        refused(
            &["--butterfly", "--malicious", "flip"],
            "butterfly-takeover with --butterfly",
        );
        refused(
            &["--malicious", "butterfly-takeover"],
            "--butterfly with it",
        );
        let Mode::Gossip(takeover) = config(&["--butterfly", "--malicious", "butterfly-takeover"])
            .unwrap()
            .mode
        else {
            panic!("gossip");
        };
        assert!(!takeover.robust, "butterfly rounds take no robust merging");
        // --malicious takes each mode's kinds.
        refused(&["--sharded", "--malicious", "flip"], "plan-hijack");
        refused(&["--malicious", "epoch-jump"], "sybil:N");
        for kind in [
            "plan-hijack",
            "epoch-jump",
            "snapshot-poison",
            "replan-flood",
            "stage-garbage",
            "formation-junk",
        ] {
            let Mode::Sharded(sharded) = config(&["--sharded", "--malicious", kind]).unwrap().mode
            else {
                panic!("sharded");
            };
            assert_eq!(
                sharded.malicious.map(|m| m.to_string()).as_deref(),
                Some(kind)
            );
        }
    }

    #[test]
    fn every_sharded_only_flag_is_refused_without_sharded() {
        let given: [&[&str]; 6] = [
            &["--slowdown", "1,2"],
            &["--placement", "even"],
            &["--compare-even"],
            &["--batch-size", "8"],
            &["--micro-batches", "4"],
            &["--replicas", "1"],
        ];
        for (flag, flags) in SHARDED_ONLY.into_iter().zip(given) {
            refused(flags, flag);
            refused(flags, "only applies to pipeline sharding");
            let mut sharded = vec!["--sharded"];
            sharded.extend(flags);
            assert!(config(&sharded).is_ok(), "{sharded:?}");
        }
    }

    #[test]
    fn numbers_out_of_range_and_conflicts_are_clear_errors() {
        for (flags, needle) in [
            (&["--nodes", "0"][..], "--nodes 0: expected at least 1"),
            (&["--fanout", "0"], "--fanout 0"),
            (&["--steps", "0"], "--steps 0"),
            (&["--timeout", "0"], "--timeout 0"),
            (&["--timeout", "99999999999"], "--timeout 99999999999"),
            (&["--churn", "0"], "--churn 0"),
            (&["--churn=-1"], "--churn -1"),
            (&["--churn", "nan"], "--churn NaN"),
            (&["--churn", "inf"], "--churn inf"),
            (&["--target-accuracy", "1.5"], "--target-accuracy 1.5"),
            (&["--target-accuracy", "0"], "--target-accuracy 0"),
            (&["--sharded", "--slowdown", "1,0.5"], "--slowdown 0.5"),
            (&["--sharded", "--slowdown", "1,inf"], "--slowdown inf"),
            (&["--sharded", "--batch-size", "0"], "--batch-size 0"),
            (&["--sharded", "--micro-batches", "0"], "--micro-batches 0"),
            (
                &["--sharded", "--micro-batches", "3"],
                "a divisor of --batch-size 16",
            ),
            (&["--sharded", "--replicas", "0"], "--replicas 0"),
            (
                &["--sharded", "--replicas", "4"],
                "1 to the number of nodes (3)",
            ),
            (
                &["--sharded", "--compare-even", "--placement", "even"],
                "--placement and --compare-even cannot be used together",
            ),
        ] {
            refused(flags, needle);
        }
    }
}
