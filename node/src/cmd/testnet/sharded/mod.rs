//! `murmur testnet --sharded`: one model trained as a pipeline of layer shards across local
//! node processes, each emulating a device `--slowdown` times slower, with the plan, live
//! per-stage utilisation, and a final JSON line comparing the measured throughput of the
//! capacity-aware plan with an even split (`--compare-even`) and with the ideal bound.
//! `--churn SECS` kills one random node (kill -9) after that many seconds and restarts it with
//! its identity: the others re-plan, and it is planned in again. A node that exits without a
//! report is counted as lost, not waited for.

mod summary;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::child::{self, ChildProc, Layout, Line, child_node_args, start_bootstrap};
use super::config::{CommonConfig, ShardedConfig};
use super::render;
use crate::identity::NodeIdentity;
use crate::shard::pipeline::{PipelineReport, Placement};
use summary::{Measured, measure, summarise};

/// How long a node that exited may take to deliver its last lines before it counts as lost.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// The nodes' `--peer-deadline` (seconds) when `--churn` kills one: on loopback a silent
/// neighbour is gone long before the default deadline, meant for the internet.
const CHURN_PEER_DEADLINE: &str = "5";

/// Runs the sharded testnet (once per placement: capacity-aware then even with
/// `--compare-even`).
pub(super) async fn orchestrate(
    common: &CommonConfig,
    sharded: &ShardedConfig,
    layout: &Layout,
) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for &placement in &sharded.placements {
        runs.push(run_once(common, sharded, layout, placement).await?);
    }
    summarise(common, sharded, &runs)
}

fn name(placement: Placement) -> &'static str {
    match placement {
        Placement::CapacityAware => "capacity",
        Placement::Even => "even",
    }
}

fn node_args(
    common: &CommonConfig,
    sharded: &ShardedConfig,
    layout: &Layout,
    placement: Placement,
    index: usize,
    bootstrap: &str,
) -> Vec<String> {
    let dir = layout
        .root
        .join(format!("{}-node-{index}", name(placement)));
    let run = format!("murmur-testnet-sharded-{}", name(placement));
    let mut a = child_node_args(&dir, &run, bootstrap);
    let honest = sharded.slowdown.len();
    let members = honest + usize::from(sharded.malicious_member());
    // The hostile extra node is the last, at full speed.
    let slowdown = sharded.slowdown.get(index).copied().unwrap_or(1.0);
    a.extend::<[String; _]>([
        "--model".into(),
        common.model.to_string(),
        "--device".into(),
        common.device.to_string(),
        "--sharded".into(),
        "--pipeline-peers".into(),
        members.to_string(),
        "--placement".into(),
        name(placement).into(),
        "--slowdown".into(),
        slowdown.to_string(),
        "--steps".into(),
        common.steps.to_string(),
        "--batch-size".into(),
        sharded.batch_size.to_string(),
        "--micro-batches".into(),
        sharded.micro_batches.to_string(),
        "--pipeline-replicas".into(),
        sharded.replicas.to_string(),
    ]);
    if common.churn.is_some() || sharded.malicious.is_some() {
        // A member that leaves (churn, or an attacker) is noticed at once on loopback.
        a.extend(["--peer-deadline".into(), CHURN_PEER_DEADLINE.into()]);
    }
    if let Some(kind) = sharded.malicious.filter(|_| index >= honest) {
        a.extend(["--pipeline-tamper".into(), kind.to_string()]);
    }
    a
}

/// One pipeline run in progress: its node processes and what they reported.
struct Run<'a> {
    common: &'a CommonConfig,
    sharded: &'a ShardedConfig,
    layout: &'a Layout,
    placement: Placement,
    boot_addr: String,
    lines_tx: mpsc::Sender<Line>,
    children: BTreeMap<usize, ChildProc>,
    /// The latest `stage` line of each node.
    stages: Vec<Value>,
    /// The `final` line of each node that ended (or a `lost` marker).
    finals: BTreeMap<usize, Value>,
    /// When each node without a report was first seen exited.
    exited: BTreeMap<usize, Instant>,
    /// The hostile extra node's last line (`--malicious`), if it ended.
    attacker: Option<Value>,
    started: Instant,
}

async fn run_once(
    common: &CommonConfig,
    sharded: &ShardedConfig,
    layout: &Layout,
    placement: Placement,
) -> anyhow::Result<Measured> {
    let started = Instant::now();
    let (lines_tx, mut lines) = mpsc::channel::<Line>(1024);
    let boot_name = format!("{}-bootstrap", name(placement));
    let (mut bootstrap, boot_addr) =
        start_bootstrap(layout, &boot_name, &lines_tx, &mut lines).await?;
    let n = sharded.slowdown.len();
    let malicious = sharded
        .malicious
        .map_or(String::new(), |kind| format!(" + 1 malicious ({kind})"));
    println!(
        "testnet: {} placement, {n} nodes slowed {:?}×{malicious}, {} over a pipeline",
        name(placement),
        sharded.slowdown,
        common.model
    );
    let mut run = Run {
        common,
        sharded,
        layout,
        placement,
        boot_addr,
        lines_tx,
        children: BTreeMap::new(),
        stages: vec![Value::Null; n],
        finals: BTreeMap::new(),
        exited: BTreeMap::new(),
        attacker: None,
        started,
    };
    if sharded.malicious_member() {
        seat_attacker(layout, placement, n)?;
    }
    for i in 0..n + usize::from(sharded.malicious.is_some()) {
        run.spawn_node(i, 0)?;
    }
    run.watch(&mut lines).await?;
    run.stop().await;
    bootstrap.request_stop();
    bootstrap.kill().await;
    render::stages(&sharded.slowdown, &run.stages, started.elapsed());
    let (reports, lost) = reports(common, sharded, &run.finals)?;
    measure(placement, reports, lost, run.attacker.take())
}

/// Creates the honest members' identities, then the hostile member's until it is not the
/// lowest: the lowest id is the plan's watcher, which may re-balance (what a watcher can do is
/// bounded by time instead; see docs/security.md), and the suite plays a member that is not.
fn seat_attacker(layout: &Layout, placement: Placement, honest: usize) -> anyhow::Result<()> {
    let dir = |i: usize| layout.root.join(format!("{}-node-{i}", name(placement)));
    let mut lowest: Option<String> = None;
    for i in 0..honest {
        let id = NodeIdentity::load_or_create(&dir(i))?.peer_id().to_string();
        lowest = Some(lowest.map_or(id.clone(), |l| l.min(id)));
    }
    // Each try is the lowest with chance 1/(honest + 1).
    for _ in 0..64 {
        let attacker = NodeIdentity::load_or_create(&dir(honest))?;
        if lowest
            .as_ref()
            .is_none_or(|l| attacker.peer_id().to_string() > *l)
        {
            return Ok(());
        }
        let key = dir(honest).join(crate::identity::KEY_FILE);
        std::fs::remove_file(&key).with_context(|| format!("removing {}", key.display()))?;
    }
    bail!("no identity for the hostile member above the lowest honest one in 64 tries")
}

impl Run<'_> {
    /// Starts (or restarts, with a new `generation`) node `index`, with one compute thread
    /// so that each emulates one device instead of all of them sharing every core.
    fn spawn_node(&mut self, index: usize, generation: u32) -> anyhow::Result<()> {
        let argv = node_args(
            self.common,
            self.sharded,
            self.layout,
            self.placement,
            index,
            &self.boot_addr,
        );
        let log = self
            .layout
            .log(&format!("{}-node-{index}", name(self.placement)));
        let env = [("RAYON_NUM_THREADS", "1")];
        let tx = self.lines_tx.clone();
        let proc_ = child::spawn_with_env(index, generation, &argv, &env, &log, tx)?;
        self.children.insert(index, proc_);
        Ok(())
    }

    /// Shows per-stage progress until every node ended (or was lost) or the time limit;
    /// kills and restarts one node once with `--churn`.
    async fn watch(&mut self, lines: &mut mpsc::Receiver<Line>) -> anyhow::Result<()> {
        let n = self.sharded.slowdown.len();
        let deadline = self.started + self.common.timeout;
        let mut kill_at = self.common.churn.map(|after| self.started + after);
        let mut rng = StdRng::seed_from_u64(self.common.seed);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        while (0..n).any(|i| !self.finals.contains_key(&i)) && Instant::now() < deadline {
            tokio::select! {
                Some(line) = lines.recv() => self.on_line(line),
                _ = tick.tick() => {
                    render::stages(&self.sharded.slowdown, &self.stages, self.started.elapsed());
                    if kill_at.is_some_and(|at| Instant::now() >= at) {
                        kill_at = None;
                        self.churn(rng.random_range(0..n)).await?;
                    }
                    self.mark_lost();
                }
            }
        }
        Ok(())
    }

    fn on_line(&mut self, line: Line) {
        let Some(slot) = self.stages.get_mut(line.index) else {
            // The hostile extra node: only how it ended is kept.
            if line.value.get("event").and_then(Value::as_str) == Some("final") {
                let how = line
                    .value
                    .get("error")
                    .map_or("its part done".into(), Value::to_string);
                println!("testnet: the malicious node ended: {how}");
                self.attacker = Some(line.value);
            }
            return;
        };
        match line.value.get("event").and_then(Value::as_str) {
            Some("stage") => *slot = line.value,
            Some("final") => {
                if line.value.get("pipeline").is_none() {
                    println!("testnet: node {} ended: {}", line.index, line.value);
                }
                self.finals.insert(line.index, line.value);
            }
            _ => {}
        }
    }

    /// Kills node `victim` (kill -9) and restarts it with its identity, unless it ended.
    async fn churn(&mut self, victim: usize) -> anyhow::Result<()> {
        if self.finals.contains_key(&victim) {
            return Ok(());
        }
        let Some(proc_) = self.children.get_mut(&victim) else {
            return Ok(());
        };
        proc_.kill().await;
        let generation = proc_.generation + 1;
        println!("testnet: churn — killed node {victim} (kill -9), restarting it");
        self.spawn_node(victim, generation)
    }

    /// Counts a node that exited without a report as lost once [`EXIT_GRACE`] passed.
    fn mark_lost(&mut self) {
        let honest = self.sharded.slowdown.len();
        for (i, proc_) in self.children.iter_mut() {
            if self.finals.contains_key(i) || *i >= honest {
                continue;
            }
            let Some(status) = proc_.exit_status() else {
                continue;
            };
            let since = *self.exited.entry(*i).or_insert_with(Instant::now);
            if since.elapsed() >= EXIT_GRACE {
                println!("testnet: node {i} exited ({status}) without a report");
                let lost = json!({ "event": "final", "lost": status.to_string() });
                self.finals.insert(*i, lost);
            }
        }
    }

    /// Asks every node to stop and waits for them to exit.
    async fn stop(&mut self) {
        for proc_ in self.children.values_mut() {
            proc_.request_stop();
        }
        for proc_ in self.children.values_mut() {
            proc_.wait_or_kill(Duration::from_secs(5)).await;
        }
    }
}

/// Each node's pipeline report (printed), and the nodes that were lost.
fn reports(
    common: &CommonConfig,
    sharded: &ShardedConfig,
    finals: &BTreeMap<usize, Value>,
) -> anyhow::Result<(Vec<PipelineReport>, Vec<usize>)> {
    let mut reports: Vec<PipelineReport> = Vec::new();
    let mut lost = Vec::new();
    for (i, slowdown) in sharded.slowdown.iter().enumerate() {
        let Some(value) = finals.get(&i) else {
            let secs = common.timeout.as_secs();
            bail!("node {i} did not finish within {secs} s (see its log)");
        };
        if value.get("lost").is_some() {
            println!("testnet: node {i} (×{slowdown}): lost");
            lost.push(i);
            continue;
        }
        if let Some(err) = value.get("error").and_then(Value::as_str) {
            bail!("node {i} failed: {err}");
        }
        let report: PipelineReport =
            serde_json::from_value(value.get("pipeline").cloned().unwrap_or(Value::Null))
                .with_context(|| format!("node {i} sent no pipeline report"))?;
        print_report(i, *slowdown, &report);
        reports.push(report);
    }
    if reports.is_empty() {
        bail!("every node was lost");
    }
    Ok((reports, lost))
}

fn print_report(i: usize, slowdown: f64, report: &PipelineReport) {
    let lane = match (report.lane, report.lanes) {
        (Some(lane), lanes) if lanes > 1 => format!("chain {lane}, "),
        _ => String::new(),
    };
    let averaged = report.averaging.as_ref().map_or(String::new(), |a| {
        format!(
            ", {} range syncs ({} deltas merged, {} refused)",
            a.syncs, a.merged, a.rejected
        )
    });
    let stages = report.range.as_ref().map_or("not in the plan".into(), |r| {
        format!("stages {}..{}", r.start, r.end)
    });
    println!(
        "testnet: node {i} (×{slowdown}): {lane}{stages}, plan epoch {}, {} re-plans, {} steps, busy {:.1} s of {:.1} s{averaged}",
        report.epoch, report.replans, report.steps, report.busy_secs, report.wall_secs,
    );
}

#[cfg(test)]
mod tests {
    use super::super::config::Mode as TestnetMode;
    use super::super::{testnet_config, validated};
    use super::*;
    use crate::cmd::node::Mode;

    #[test]
    fn every_sharded_child_command_line_parses_and_validates() {
        let layout = Layout {
            root: std::path::PathBuf::from("/tmp/murmur-testnet-test"),
        };
        let variants: [&[&str]; 5] = [
            &["--sharded"],
            &["--sharded", "--churn", "10", "--compare-even"],
            &["--sharded", "--replicas", "2", "--slowdown", "1,1,2,2"],
            &["--sharded", "--malicious", "epoch-jump"],
            &["--sharded", "--malicious", "formation-junk"],
        ];
        for extra in variants {
            let config = testnet_config(extra).unwrap();
            let TestnetMode::Sharded(sharded) = &config.mode else {
                panic!("{extra:?}: not sharded");
            };
            let honest = sharded.slowdown.len();
            let members = honest + usize::from(sharded.malicious_member());
            let nodes = honest + usize::from(sharded.malicious.is_some());
            for placement in [Placement::CapacityAware, Placement::Even] {
                for i in 0..nodes {
                    let common = &config.common;
                    let argv = node_args(
                        common,
                        sharded,
                        &layout,
                        placement,
                        i,
                        "/ip4/127.0.0.1/tcp/1",
                    );
                    let node = validated(argv);
                    let Mode::Sharded(node_sharded) = node.mode else {
                        panic!("{extra:?}: node {i} is not sharded");
                    };
                    assert_eq!(node_sharded.placement, placement);
                    let slowdown = sharded.slowdown.get(i).copied().unwrap_or(1.0);
                    assert_eq!(node_sharded.slowdown, slowdown);
                    assert_eq!(node_sharded.pipeline_replicas, sharded.replicas);
                    assert_eq!(node_sharded.pipeline_peers, members);
                    let tamper = sharded.malicious.filter(|_| i >= honest);
                    assert_eq!(node_sharded.tamper, tamper, "{extra:?}: node {i}");
                    assert_eq!(node.common.batch_size, sharded.batch_size);
                    assert_eq!(node.common.steps, common.steps);
                }
            }
        }
    }
}
