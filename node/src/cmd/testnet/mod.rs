//! `murmur testnet`: a whole Murmur network on this machine, one command.
//!
//! Starts a bootstrap node and N training nodes as separate processes of this binary on
//! loopback, each with shard i/N of the training data; shows live per-node progress; stops
//! when every honest node reached the target accuracy (or its step budget, or the time
//! limit); prints a summary table and one JSON line; and cleans up every process. Churn
//! (`--churn SECS`: kill -9 and restart a random node) and a malicious extra node
//! (`--malicious flip|scale:F`) exercise crash recovery and robust merging.

mod child;
mod render;
mod sharded;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use murmur_models::{DeviceChoice, ModelKind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

use crate::averaging::{SyncPolicy, Tamper};
use child::{ChildProc, Layout, Line, child_node_args, start_bootstrap};
use render::{NodeView, Summary};

/// How long nodes keep averaging after all of them used their step budget.
const SETTLE: Duration = Duration::from_secs(5);

/// Flags of `murmur testnet`.
#[derive(Debug, Clone, clap::Args)]
pub struct TestnetArgs {
    /// Honest training nodes.
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// Model: mlp-digits, char-gpt, char-gpt-deep (default with --sharded) or char-gpt-large.
    #[arg(long)]
    pub model: Option<ModelKind>,
    /// Compute device of every node.
    #[arg(long, default_value = "flex")]
    pub device: DeviceChoice,
    /// Local step budget per node.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Sync policy: steps:H, secs:T or qsr:BETA:MIN:MAX.
    #[arg(long, default_value = "steps:40")]
    pub sync: SyncPolicy,
    /// Peers each delta is sent to.
    #[arg(long, default_value_t = 2)]
    pub fanout: usize,
    /// Delta codec: int8, raw, f16, bf16 or topk:K.
    #[arg(long, default_value = "int8", value_parser = crate::cmd::node::parse_codec)]
    pub codec: murmur_protocol::Codec,
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
    #[arg(long, conflicts_with_all = ["robust", "outer", "malicious"])]
    pub butterfly: bool,
    /// Kill -9 and restart a random honest node every this many seconds (with --sharded:
    /// once, after this many seconds).
    #[arg(long)]
    pub churn: Option<f64>,
    /// Add one malicious node that sends corrupted deltas: flip or scale:F.
    #[arg(long)]
    pub malicious: Option<Tamper>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 180)]
    pub timeout: u64,
    /// Directory for node data and logs (default: a fresh temporary directory, removed at
    /// the end unless --keep).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the data directory and logs.
    #[arg(long)]
    pub keep: bool,
    /// Seed for churn choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one compact line per second instead of the full table.
    #[arg(long)]
    pub plain: bool,

    // ---- pipeline sharding ----
    /// Train one model as a pipeline of layer shards across the nodes (char-gpt-deep by
    /// default) instead of gossip-averaged replicas.
    #[arg(long)]
    pub sharded: bool,
    /// With --sharded: one node per entry, each emulating a device this many times slower.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub slowdown: Vec<f64>,
    /// With --sharded: stage placement, capacity or even.
    #[arg(long, default_value = "capacity", value_parser = crate::cmd::node::parse_placement)]
    pub placement: crate::shard::pipeline::Placement,
    /// With --sharded: run the capacity-aware plan and then an even split, and compare.
    #[arg(long)]
    pub compare_even: bool,
    /// With --sharded: samples per step.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// With --sharded: micro-batches per step.
    #[arg(long, default_value_t = 8)]
    pub micro_batches: u32,
    /// With --sharded: data-parallel copies of the pipeline (the nodes are grouped this many
    /// at a time; each group holds one range in every chain, kept in agreement by gossip
    /// averaging).
    #[arg(long, default_value_t = 1)]
    pub replicas: u32,
}

impl TestnetArgs {
    /// The model trained: `--model`, else char-gpt-deep with `--sharded`, else mlp-digits.
    pub fn model(&self) -> ModelKind {
        self.model.unwrap_or(if self.sharded {
            ModelKind::CharGptDeep
        } else {
            ModelKind::MlpDigits
        })
    }
}

/// Runs a local testnet and prints its summary.
pub fn run(args: &TestnetArgs) -> anyhow::Result<()> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if let Some(churn) = args.churn
        && !(churn.is_finite() && churn > 0.0)
    {
        bail!("--churn {churn}: expected a positive finite number of seconds");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // Without --dir the nodes live in a fresh temporary directory, removed on drop.
    let temp = match &args.dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("murmur-testnet-")
                .tempdir()
                .context("creating a temporary directory")?,
        ),
    };
    let root = match (&args.dir, &temp) {
        (Some(dir), _) => dir.clone(),
        (None, Some(temp)) => temp.path().to_path_buf(),
        (None, None) => bail!("no directory for the testnet"),
    };
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let result = runtime.block_on(orchestrate(args, Layout { root: root.clone() }));
    if args.keep || args.dir.is_some() {
        if let Some(temp) = temp {
            let _ = temp.keep();
        }
        println!("node data and logs kept in {}", root.display());
    }
    result
}

fn target(args: &TestnetArgs) -> Option<f32> {
    match args.model() {
        ModelKind::MlpDigits => Some(args.target_accuracy.unwrap_or(0.96)),
        _ => args.target_accuracy,
    }
}

fn node_args(args: &TestnetArgs, layout: &Layout, index: usize, bootstrap: &str) -> Vec<String> {
    let honest = args.nodes;
    let total = honest + usize::from(args.malicious.is_some());
    let is_mlp = matches!(args.model(), ModelKind::MlpDigits);
    let steps = args.steps.unwrap_or(if is_mlp { 1500 } else { 300 });
    let mut a = child_node_args(&layout.node_dir(index), "murmur-testnet", bootstrap);
    a.extend::<[String; _]>([
        "--announce-every".into(),
        "1".into(),
        "--model".into(),
        args.model().to_string(),
        "--device".into(),
        args.device.to_string(),
        "--shard".into(),
        format!("{}/{}", index.min(honest - 1), honest),
        "--steps".into(),
        steps.to_string(),
        "--sync".into(),
        args.sync.to_string(),
        "--fanout".into(),
        args.fanout.min(total.saturating_sub(1)).max(1).to_string(),
        "--codec".into(),
        codec_arg(args.codec),
    ]);
    if let Some(t) = target(args) {
        a.extend(["--target-accuracy".into(), t.to_string()]);
    }
    if args.robust || args.malicious.is_some() {
        a.push("--robust".into());
    }
    if args.outer {
        a.push("--outer".into());
    }
    if args.butterfly {
        a.push("--butterfly".into());
    }
    if index >= honest
        && let Some(tamper) = args.malicious
    {
        a.extend([
            "--tamper".into(),
            match tamper {
                Tamper::Flip => "flip".into(),
                Tamper::Scale(f) => format!("scale:{f}"),
            },
        ]);
    }
    a
}

fn codec_arg(codec: murmur_protocol::Codec) -> String {
    use murmur_protocol::Codec;
    match codec {
        Codec::RawF32 => "raw".into(),
        Codec::F16 => "f16".into(),
        Codec::Bf16 => "bf16".into(),
        Codec::Int8Block { block } => format!("int8:{block}"),
        Codec::TopK { k } => format!("topk:{k}"),
    }
}

async fn orchestrate(args: &TestnetArgs, layout: Layout) -> anyhow::Result<()> {
    if args.sharded {
        return sharded::orchestrate(args, &layout).await;
    }
    let started = Instant::now();
    let (lines_tx, mut lines) = mpsc::channel::<Line>(1024);
    let (mut bootstrap, boot_addr) =
        start_bootstrap(&layout, "bootstrap", &lines_tx, &mut lines).await?;
    let honest = args.nodes;
    let total = honest + usize::from(args.malicious.is_some());
    println!(
        "testnet: bootstrap {boot_addr}\ntestnet: {honest} training nodes{} on {}, logs in {}",
        if args.malicious.is_some() {
            " + 1 malicious"
        } else {
            ""
        },
        args.model(),
        layout.root.display()
    );
    let mut children: BTreeMap<usize, ChildProc> = BTreeMap::new();
    let mut views: Vec<NodeView> = (0..total).map(|i| NodeView::new(i, i >= honest)).collect();
    for i in 0..total {
        let node_args = node_args(args, &layout, i, &boot_addr);
        children.insert(
            i,
            child::spawn(
                i,
                0,
                &node_args,
                &layout.log(&format!("node-{i}")),
                lines_tx.clone(),
            )?,
        );
    }
    let target = target(args);
    let deadline = started + Duration::from_secs(args.timeout);
    let mut render_tick = tokio::time::interval(Duration::from_secs(1));
    let mut rng = StdRng::seed_from_u64(args.seed);
    let churn = args.churn.map(|s| Duration::from_secs_f64(s.max(0.5)));
    let mut next_churn = churn.map(|c| Instant::now() + c);
    let mut restarts = 0u32;
    let mut all_reached_at: Option<f64> = None;
    let mut budget_done: Option<Instant> = None;
    let outcome = loop {
        tokio::select! {
            Some(line) = lines.recv() => {
                if let Some(view) = views.get_mut(line.index)
                    && children.get(&line.index).is_some_and(|c| c.generation == line.generation)
                {
                    view.update(&line.value, started.elapsed());
                }
            }
            _ = render_tick.tick() => {
                render::table(&views, started.elapsed(), args.plain);
            }
        }
        let honest_views = &views[..honest];
        let at_target = |v: &NodeView| {
            target
                .zip(v.accuracy)
                .is_some_and(|(t, a)| a >= f64::from(t))
        };
        if all_reached_at.is_none() && target.is_some() && honest_views.iter().all(at_target) {
            all_reached_at = Some(started.elapsed().as_secs_f64());
            break "every node reached the target accuracy";
        }
        if honest_views
            .iter()
            .all(|v| v.started && !v.training && v.steps > 0)
        {
            // Averaging goes on a little longer so the models settle on their consensus.
            let since = *budget_done.get_or_insert_with(Instant::now);
            if since.elapsed() >= SETTLE {
                break "every node used its step budget";
            }
        }
        if Instant::now() >= deadline {
            break "time limit reached";
        }
        if let (Some(period), Some(at)) = (churn, next_churn)
            && Instant::now() >= at
        {
            let victim = rng.random_range(0..honest);
            if let Some(proc_) = children.get_mut(&victim) {
                proc_.kill().await;
                let generation = proc_.generation + 1;
                restarts += 1;
                println!("testnet: churn — killed node {victim} (kill -9), restarting it");
                let node_args = node_args(args, &layout, victim, &boot_addr);
                let fresh = child::spawn(
                    victim,
                    generation,
                    &node_args,
                    &layout.log(&format!("node-{victim}")),
                    lines_tx.clone(),
                )?;
                children.insert(victim, fresh);
                views[victim].restarted();
            }
            next_churn = Some(Instant::now() + period);
        }
    };
    println!("testnet: {outcome}; stopping nodes");
    for proc_ in children.values_mut() {
        proc_.request_stop();
    }
    let finals = collect_finals(&mut lines, &children, &mut views, started).await;
    for proc_ in children.values_mut() {
        proc_.wait_or_kill(Duration::from_secs(5)).await;
    }
    bootstrap.request_stop();
    bootstrap.kill().await;
    render::table(&views, started.elapsed(), false);
    let summary = Summary {
        outcome,
        seconds: started.elapsed().as_secs_f64(),
        seconds_to_target: all_reached_at,
        target,
        restarts,
        finals_received: finals,
        model: args.model().to_string(),
    };
    summary.print(&views);
    if target.is_some() && all_reached_at.is_none() {
        bail!("not every node reached the target accuracy ({outcome})");
    }
    Ok(())
}

async fn collect_finals(
    lines: &mut mpsc::Receiver<Line>,
    children: &BTreeMap<usize, ChildProc>,
    views: &mut [NodeView],
    started: Instant,
) -> usize {
    let mut finals = 0;
    let wait = tokio::time::sleep(Duration::from_secs(20));
    tokio::pin!(wait);
    while finals < children.len() {
        tokio::select! {
            _ = &mut wait => break,
            line = lines.recv() => {
                let Some(line) = line else { break };
                let current = children.get(&line.index).is_some_and(|c| c.generation == line.generation);
                if let Some(view) = views.get_mut(line.index).filter(|_| current) {
                    view.update(&line.value, started.elapsed());
                    if line.value.get("event").and_then(|e| e.as_str()) == Some("final") {
                        finals += 1;
                    }
                }
            }
        }
    }
    finals
}

/// Parses `extra` as the flags of `murmur testnet`.
#[cfg(test)]
fn testnet_args(extra: &[&str]) -> TestnetArgs {
    let argv = ["murmur", "testnet"].iter().chain(extra).copied();
    match crate::cmd::parse_args(argv).unwrap().command {
        Some(crate::cmd::Command::Testnet(args)) => *args,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::node::Mode;

    #[test]
    fn every_gossip_child_command_line_parses_and_validates() {
        let layout = Layout {
            root: PathBuf::from("/tmp/murmur-testnet-test"),
        };
        let variants: [&[&str]; 6] = [
            &[],
            &["--robust", "--nodes", "3"],
            &["--outer", "--codec", "topk:100", "--sync", "secs:1"],
            &["--butterfly", "--codec", "raw"],
            &["--malicious", "scale:-4", "--churn", "5"],
            &["--model", "char-gpt", "--target-accuracy", "0.5"],
        ];
        for extra in variants {
            let args = testnet_args(extra);
            let total = args.nodes + usize::from(args.malicious.is_some());
            for i in 0..total {
                let argv = node_args(&args, &layout, i, "/ip4/127.0.0.1/tcp/4001");
                let config = validated(argv);
                let Mode::Gossip(gossip) = config.mode else {
                    panic!("{extra:?}: node {i} is not a gossip node");
                };
                assert_eq!(gossip.robust, args.robust || args.malicious.is_some());
                assert_eq!(gossip.tamper.is_some(), i >= args.nodes);
                assert_eq!(
                    config.common.net.bootstrap[0].to_string(),
                    "/ip4/127.0.0.1/tcp/4001"
                );
            }
        }
    }
}
