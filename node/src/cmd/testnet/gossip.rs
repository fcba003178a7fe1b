//! `murmur testnet` (gossip averaging): N honest nodes, each training on data part i/N, and an
//! optional malicious one; live per-node progress; churn; a summary at the end.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use murmur_protocol::{PoolManifest, RunId, SignedManifest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

use super::attack::LATE_JOIN_AFTER_ROUNDS;
use super::child::{self, ChildProc, Layout, Line, child_node_args, start_bootstrap};
use super::config::{CommonConfig, GossipConfig};
use super::render::{self, NodeView, Summary};
use crate::identity::NodeIdentity;
use crate::net::now_ms;

/// How long nodes keep averaging after all of them used their step budget.
const SETTLE: Duration = Duration::from_secs(5);

/// The run every gossip testnet node joins.
const RUN: &str = "murmur-testnet";

/// The command line of gossip node `index` (the malicious one is last).
fn node_args(
    common: &CommonConfig,
    gossip: &GossipConfig,
    layout: &Layout,
    index: usize,
    bootstrap: &str,
) -> Vec<String> {
    let honest = gossip.nodes;
    let fanout = gossip.fanout.min(gossip.total().saturating_sub(1)).max(1);
    let mut a = child_node_args(&layout.node_dir(index), RUN, bootstrap);
    a.extend::<[String; _]>([
        "--announce-every".into(),
        "1".into(),
        "--model".into(),
        common.model.to_string(),
        "--device".into(),
        common.device.to_string(),
        "--data-part".into(),
        format!("{}/{}", index.min(honest - 1), honest),
        "--steps".into(),
        common.steps.to_string(),
        "--sync".into(),
        gossip.sync.to_string(),
        "--fanout".into(),
        fanout.to_string(),
        "--codec".into(),
        codec_arg(gossip.codec),
    ]);
    if let Some(t) = gossip.target_accuracy {
        a.extend(["--target-accuracy".into(), t.to_string()]);
    }
    for (on, flag) in [
        (gossip.robust, "--robust"),
        (gossip.outer, "--outer"),
        (gossip.butterfly, "--butterfly"),
    ] {
        if on {
            a.push(flag.into());
        }
    }
    if gossip.butterfly {
        a.extend([
            "--pool".into(),
            layout.pool_manifest().display().to_string(),
        ]);
    }
    if index >= honest
        && let Some(attack) = gossip.malicious
    {
        a.extend(["--tamper".into(), attack.tamper.to_string()]);
    }
    a
}

/// Butterfly rounds need a closed pool: the testnet owns one (its key in `pool-owner/`) whose
/// members are the honest nodes' identities, created here in their data directories. A
/// malicious node is left out, so its parts are refused as a non-member's.
fn write_pool(layout: &Layout, honest: usize) -> anyhow::Result<()> {
    let owner = NodeIdentity::load_or_create(&layout.root.join("pool-owner"))?;
    let mut manifest = PoolManifest::new(RunId::from_name(RUN), owner.peer_key(), now_ms());
    for index in 0..honest {
        let member = NodeIdentity::load_or_create(&layout.node_dir(index))?;
        manifest.add_member(member.peer_key())?;
    }
    let signed = SignedManifest::sign(owner.signing_key(), manifest)?;
    let path = layout.pool_manifest();
    std::fs::write(&path, signed.to_text())
        .with_context(|| format!("writing the testnet's pool manifest {}", path.display()))?;
    Ok(())
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

/// A running gossip testnet: its node processes and what they reported.
struct Testnet<'a> {
    common: &'a CommonConfig,
    gossip: &'a GossipConfig,
    layout: &'a Layout,
    boot_addr: String,
    lines_tx: mpsc::Sender<Line>,
    children: BTreeMap<usize, ChildProc>,
    views: Vec<NodeView>,
    started: Instant,
    restarts: u32,
    /// A late joiner not started yet (`--malicious late-join-capture`).
    late: Option<usize>,
}

/// How the watch ended.
struct Outcome {
    why: &'static str,
    /// Seconds until every honest node reached the target accuracy.
    all_reached_at: Option<f64>,
}

/// Runs the gossip testnet and prints its summary.
pub(super) async fn orchestrate(
    common: &CommonConfig,
    gossip: &GossipConfig,
    layout: &Layout,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let (lines_tx, mut lines) = mpsc::channel::<Line>(1024);
    let (mut bootstrap, boot_addr) =
        start_bootstrap(layout, "bootstrap", &lines_tx, &mut lines).await?;
    let malicious = match gossip.malicious {
        Some(attack) => format!(" + {} malicious ({attack})", attack.nodes),
        None => String::new(),
    };
    println!(
        "testnet: bootstrap {boot_addr}\ntestnet: {} training nodes{malicious} on {}, logs in {}",
        gossip.nodes,
        common.model,
        layout.root.display()
    );
    if gossip.butterfly {
        write_pool(layout, gossip.nodes)?;
    }
    let views = (0..gossip.total())
        .map(|i| NodeView::new(i, i >= gossip.nodes))
        .collect();
    let mut net = Testnet {
        common,
        gossip,
        layout,
        boot_addr,
        lines_tx,
        children: BTreeMap::new(),
        views,
        started,
        restarts: 0,
        late: gossip
            .malicious
            .filter(|a| a.late_joiner())
            .map(|_| gossip.nodes - 1),
    };
    let late = net.late;
    for i in (0..gossip.total()).filter(|i| Some(*i) != late) {
        net.spawn_node(i, 0)?;
    }
    let outcome = net.watch(&mut lines).await?;
    println!("testnet: {}; stopping nodes", outcome.why);
    let finals = net.stop(&mut lines).await;
    bootstrap.request_stop();
    bootstrap.kill().await;
    render::table(&net.views, started.elapsed(), false);
    let target = gossip.target_accuracy;
    let summary = Summary {
        outcome: outcome.why,
        seconds: started.elapsed().as_secs_f64(),
        seconds_to_target: outcome.all_reached_at,
        target,
        restarts: net.restarts,
        finals_received: finals,
        model: common.model.to_string(),
    };
    summary.print(&net.views);
    if target.is_some() && outcome.all_reached_at.is_none() {
        bail!(
            "not every node reached the target accuracy ({})",
            outcome.why
        );
    }
    Ok(())
}

impl Testnet<'_> {
    /// Starts (or restarts, with a new `generation`) node `index`.
    fn spawn_node(&mut self, index: usize, generation: u32) -> anyhow::Result<()> {
        let argv = node_args(
            self.common,
            self.gossip,
            self.layout,
            index,
            &self.boot_addr,
        );
        let log = self.layout.log(&format!("node-{index}"));
        let proc_ = child::spawn(index, generation, &argv, &log, self.lines_tx.clone())?;
        self.children.insert(index, proc_);
        Ok(())
    }

    /// Whether `line` comes from the current generation of its node.
    fn current(&self, line: &Line) -> bool {
        self.children
            .get(&line.index)
            .is_some_and(|c| c.generation == line.generation)
    }

    /// Shows progress until every honest node reached the target, used its budget (and
    /// settled), or the time limit; churns meanwhile.
    async fn watch(&mut self, lines: &mut mpsc::Receiver<Line>) -> anyhow::Result<Outcome> {
        let deadline = self.started + self.common.timeout;
        let mut render_tick = tokio::time::interval(Duration::from_secs(1));
        let mut rng = StdRng::seed_from_u64(self.common.seed);
        let mut next_churn = self.common.churn.map(|c| Instant::now() + c);
        let mut budget_done: Option<Instant> = None;
        loop {
            tokio::select! {
                Some(line) = lines.recv() => {
                    if self.current(&line) && let Some(view) = self.views.get_mut(line.index) {
                        view.update(&line.value, self.started.elapsed());
                    }
                }
                _ = render_tick.tick() => {
                    render::table(&self.views, self.started.elapsed(), self.gossip.plain);
                }
            }
            self.start_late_joiner()?;
            if self.all_at_target() {
                let all_reached_at = Some(self.started.elapsed().as_secs_f64());
                let why = "every node reached the target accuracy";
                return Ok(Outcome {
                    why,
                    all_reached_at,
                });
            }
            if self.budgets_used() {
                // Averaging goes on a little longer so the models settle on their consensus.
                let since = *budget_done.get_or_insert_with(Instant::now);
                if since.elapsed() >= SETTLE {
                    let why = "every node used its step budget";
                    return Ok(Outcome {
                        why,
                        all_reached_at: None,
                    });
                }
            }
            if Instant::now() >= deadline {
                let why = "time limit reached";
                return Ok(Outcome {
                    why,
                    all_reached_at: None,
                });
            }
            if let (Some(period), Some(at)) = (self.common.churn, next_churn)
                && Instant::now() >= at
            {
                self.churn(&mut rng).await?;
                next_churn = Some(Instant::now() + period);
            }
        }
    }

    /// Starts the late joiner once the other honest nodes trained
    /// [`LATE_JOIN_AFTER_ROUNDS`] rounds.
    fn start_late_joiner(&mut self) -> anyhow::Result<()> {
        let Some(late) = self.late else {
            return Ok(());
        };
        let ready = self.honest_views()[..late]
            .iter()
            .all(|v| v.round >= LATE_JOIN_AFTER_ROUNDS);
        if ready {
            println!("testnet: starting node {late}, the late joiner");
            self.late = None;
            self.spawn_node(late, 0)?;
        }
        Ok(())
    }

    fn honest_views(&self) -> &[NodeView] {
        &self.views[..self.gossip.nodes]
    }

    fn all_at_target(&self) -> bool {
        let Some(target) = self.gossip.target_accuracy else {
            return false;
        };
        self.honest_views()
            .iter()
            .all(|v| v.accuracy.is_some_and(|a| a >= f64::from(target)))
    }

    fn budgets_used(&self) -> bool {
        self.honest_views()
            .iter()
            .all(|v| v.started && !v.training && v.steps > 0)
    }

    /// Kills a random honest node (kill -9) and restarts it.
    async fn churn(&mut self, rng: &mut StdRng) -> anyhow::Result<()> {
        let victim = rng.random_range(0..self.gossip.nodes);
        let Some(proc_) = self.children.get_mut(&victim) else {
            return Ok(());
        };
        proc_.kill().await;
        let generation = proc_.generation + 1;
        self.restarts += 1;
        println!("testnet: churn — killed node {victim} (kill -9), restarting it");
        self.spawn_node(victim, generation)?;
        self.views[victim].restarted();
        Ok(())
    }

    /// Asks every node to stop, collects their final lines (returns how many) and waits
    /// for them to exit.
    async fn stop(&mut self, lines: &mut mpsc::Receiver<Line>) -> usize {
        for proc_ in self.children.values_mut() {
            proc_.request_stop();
        }
        let finals = self.collect_finals(lines).await;
        for (index, proc_) in &mut self.children {
            let exited = proc_.wait_or_kill(Duration::from_secs(5)).await;
            let ok = exited && proc_.exit_status().is_some_and(|s| s.success());
            if let Some(view) = self.views.get_mut(*index) {
                view.stopped_with_error = !ok;
            }
        }
        finals
    }

    async fn collect_finals(&mut self, lines: &mut mpsc::Receiver<Line>) -> usize {
        let mut finals = 0;
        let wait = tokio::time::sleep(Duration::from_secs(20));
        tokio::pin!(wait);
        while finals < self.children.len() {
            tokio::select! {
                _ = &mut wait => break,
                line = lines.recv() => {
                    let Some(line) = line else { break };
                    if !self.current(&line) {
                        continue;
                    }
                    if let Some(view) = self.views.get_mut(line.index) {
                        view.update(&line.value, self.started.elapsed());
                        if line.value.get("event").and_then(|e| e.as_str()) == Some("final") {
                            finals += 1;
                        }
                    }
                }
            }
        }
        finals
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::config::Mode as TestnetMode;
    use super::super::{testnet_config, validated};
    use super::*;
    use crate::cmd::node::Mode;

    #[test]
    fn every_gossip_child_command_line_parses_and_validates() {
        let layout = Layout {
            root: PathBuf::from("/tmp/murmur-testnet-test"),
        };
        let variants: [&[&str]; 9] = [
            &[],
            &["--robust", "--nodes", "3"],
            &["--outer", "--codec", "topk:100", "--sync", "secs:1"],
            &["--butterfly", "--codec", "raw"],
            &["--malicious", "scale:-4", "--churn", "5"],
            &["--malicious", "sybil:3"],
            &["--butterfly", "--malicious", "butterfly-takeover"],
            &["--malicious", "late-join-capture", "--nodes", "3"],
            &["--model", "char-gpt", "--target-accuracy", "0.5"],
        ];
        for extra in variants {
            let config = testnet_config(extra).unwrap();
            let TestnetMode::Gossip(gossip) = &config.mode else {
                panic!("{extra:?}: not a gossip testnet");
            };
            for i in 0..gossip.total() {
                let argv = node_args(
                    &config.common,
                    gossip,
                    &layout,
                    i,
                    "/ip4/127.0.0.1/tcp/4001",
                );
                let node = validated(argv);
                let Mode::Gossip(node_gossip) = node.mode else {
                    panic!("{extra:?}: node {i} is not a gossip node");
                };
                assert_eq!(node_gossip.robust, gossip.robust);
                assert_eq!(node_gossip.tamper.is_some(), i >= gossip.nodes);
                assert_eq!(node_gossip.codec, gossip.codec);
                assert_eq!(node.common.steps, config.common.steps);
                assert_eq!(
                    node.common.net.bootstrap[0].to_string(),
                    "/ip4/127.0.0.1/tcp/4001"
                );
            }
        }
    }
}
