//! `murmur testnet --sharded`: one model trained as a pipeline of layer shards across local
//! node processes, each emulating a device `--slowdown` times slower, with the plan, live
//! per-stage utilisation, and a final JSON line comparing the measured throughput of the
//! capacity-aware plan with an even split (`--compare-even`) and with the ideal bound.
//! `--churn SECS` kills one random node (kill -9) after that many seconds and restarts it with
//! its identity: the others re-plan, and it is planned in again. A node that exits without a
//! report is counted as lost, not waited for.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::child::{self, ChildProc, Layout, Line, child_node_args, start_bootstrap};
use super::{TestnetArgs, render};
use crate::shard::pipeline::{PipelineReport, Placement};

/// Default optimisation steps of a sharded testnet run.
const DEFAULT_STEPS: u64 = 24;
/// How long a node that exited may take to deliver its last lines before it counts as lost.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// The nodes' `--peer-deadline` (seconds) when `--churn` kills one: on loopback a silent
/// neighbour is gone long before the default deadline, meant for the internet.
const CHURN_PEER_DEADLINE: &str = "5";

/// What one pipeline run measured.
#[derive(Debug)]
struct Measured {
    placement: Placement,
    reports: Vec<PipelineReport>,
    /// Samples per second from the first shard's first step to its last commit, summed over
    /// the chains.
    samples_per_sec: f64,
    /// Samples per second the busiest shard's compute time allows (no fill or drain), summed
    /// over the chains.
    steady_samples_per_sec: f64,
    /// The ideal bound recomputed from the capacities observed during the run (each shard's
    /// FLOPs over its compute time), when the run was never re-planned.
    observed_ideal_samples_per_sec: Option<f64>,
    final_loss: Option<f32>,
    /// Nodes that exited without a report (killed by `--churn`, or crashed).
    lost: Vec<usize>,
}

/// Runs the sharded testnet (once, or capacity-aware then even with `--compare-even`).
pub(super) async fn orchestrate(args: &TestnetArgs, layout: &Layout) -> anyhow::Result<()> {
    let slowdowns = &args.slowdown;
    if slowdowns.is_empty() || slowdowns.iter().any(|s| !(s.is_finite() && *s >= 1.0)) {
        bail!("--slowdown takes one factor ≥ 1 per node, e.g. 1,2,4");
    }
    let placements = if args.compare_even {
        vec![Placement::CapacityAware, Placement::Even]
    } else {
        vec![args.placement]
    };
    let mut runs = Vec::new();
    for placement in placements {
        runs.push(run_once(args, layout, placement).await?);
    }
    summarise(args, &runs)
}

fn name(placement: Placement) -> &'static str {
    match placement {
        Placement::CapacityAware => "capacity",
        Placement::Even => "even",
    }
}

fn node_args(
    args: &TestnetArgs,
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
    a.extend::<[String; _]>([
        "--model".into(),
        args.model().to_string(),
        "--device".into(),
        args.device.to_string(),
        "--sharded".into(),
        "--pipeline-peers".into(),
        args.slowdown.len().to_string(),
        "--placement".into(),
        name(placement).into(),
        "--slowdown".into(),
        args.slowdown[index].to_string(),
        "--steps".into(),
        args.steps.unwrap_or(DEFAULT_STEPS).to_string(),
        "--batch-size".into(),
        args.batch_size.to_string(),
        "--micro-batches".into(),
        args.micro_batches.to_string(),
        "--pipeline-replicas".into(),
        args.replicas.to_string(),
    ]);
    if args.churn.is_some() {
        a.extend(["--peer-deadline".into(), CHURN_PEER_DEADLINE.into()]);
    }
    a
}

async fn run_once(
    args: &TestnetArgs,
    layout: &Layout,
    placement: Placement,
) -> anyhow::Result<Measured> {
    let started = Instant::now();
    let (lines_tx, mut lines) = mpsc::channel::<Line>(1024);
    let boot_name = format!("{}-bootstrap", name(placement));
    let (mut bootstrap, boot_addr) =
        start_bootstrap(layout, &boot_name, &lines_tx, &mut lines).await?;
    let n = args.slowdown.len();
    println!(
        "testnet: {} placement, {n} nodes slowed {:?}×, {} over a pipeline",
        name(placement),
        args.slowdown,
        args.model()
    );
    let mut children: BTreeMap<usize, ChildProc> = BTreeMap::new();
    // One compute thread per node, so each emulates one device instead of all of them
    // sharing every core.
    let env = [("RAYON_NUM_THREADS", "1")];
    for i in 0..n {
        let node_args = node_args(args, layout, placement, i, &boot_addr);
        let log = layout.log(&format!("{}-node-{i}", name(placement)));
        let child = child::spawn_with_env(i, 0, &node_args, &env, &log, lines_tx.clone())?;
        children.insert(i, child);
    }
    let deadline = started + Duration::from_secs(args.timeout);
    let mut stages: Vec<Value> = vec![Value::Null; n];
    let mut finals: BTreeMap<usize, Value> = BTreeMap::new();
    let mut exited: BTreeMap<usize, Instant> = BTreeMap::new();
    let mut kill_at = args
        .churn
        .map(|secs| started + Duration::from_secs_f64(secs.max(0.5)));
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while finals.len() < n && Instant::now() < deadline {
        tokio::select! {
            Some(line) = lines.recv() => {
                let Some(slot) = stages.get_mut(line.index) else { continue };
                match line.value.get("event").and_then(Value::as_str) {
                    Some("stage") => *slot = line.value,
                    Some("final") => {
                        if line.value.get("pipeline").is_none() {
                            println!("testnet: node {} ended: {}", line.index, line.value);
                        }
                        finals.insert(line.index, line.value);
                    }
                    _ => {}
                }
            }
            _ = tick.tick() => {
                render::stages(&args.slowdown, &stages, started.elapsed());
                if kill_at.is_some_and(|at| Instant::now() >= at) {
                    kill_at = None;
                    let victim = rng.random_range(0..n);
                    if let (Some(proc_), false) = (children.get_mut(&victim), finals.contains_key(&victim)) {
                        proc_.kill().await;
                        let generation = proc_.generation + 1;
                        println!("testnet: churn — killed node {victim} (kill -9), restarting it");
                        let node_args = node_args(args, layout, placement, victim, &boot_addr);
                        let log = layout.log(&format!("{}-node-{victim}", name(placement)));
                        let fresh = child::spawn_with_env(victim, generation, &node_args, &env, &log, lines_tx.clone())?;
                        children.insert(victim, fresh);
                    }
                }
                for (i, proc_) in children.iter_mut() {
                    if finals.contains_key(i) {
                        continue;
                    }
                    let Some(status) = proc_.exit_status() else { continue };
                    let since = *exited.entry(*i).or_insert_with(Instant::now);
                    if since.elapsed() >= EXIT_GRACE {
                        println!("testnet: node {i} exited ({status}) without a report");
                        finals.insert(*i, json!({ "event": "final", "lost": status.to_string() }));
                    }
                }
            }
        }
    }
    for proc_ in children.values_mut() {
        proc_.request_stop();
    }
    for proc_ in children.values_mut() {
        proc_.wait_or_kill(Duration::from_secs(5)).await;
    }
    bootstrap.request_stop();
    bootstrap.kill().await;
    render::stages(&args.slowdown, &stages, started.elapsed());
    let mut reports: Vec<PipelineReport> = Vec::new();
    let mut lost = Vec::new();
    for i in 0..n {
        let Some(value) = finals.get(&i) else {
            bail!(
                "node {i} did not finish within {} s (see its log)",
                args.timeout
            );
        };
        if value.get("lost").is_some() {
            println!("testnet: node {i} (×{}): lost", args.slowdown[i]);
            lost.push(i);
            continue;
        }
        if let Some(err) = value.get("error").and_then(Value::as_str) {
            bail!("node {i} failed: {err}");
        }
        let report: PipelineReport =
            serde_json::from_value(value.get("pipeline").cloned().unwrap_or(Value::Null))
                .with_context(|| format!("node {i} sent no pipeline report"))?;
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
        println!(
            "testnet: node {i} (×{}): {lane}{}, plan epoch {}, {} re-plans, {} steps, busy {:.1} s of {:.1} s{averaged}",
            args.slowdown[i],
            report
                .range
                .as_ref()
                .map_or("not in the plan".into(), |r| format!(
                    "stages {}..{}",
                    r.start, r.end
                )),
            report.epoch,
            report.replans,
            report.steps,
            report.busy_secs,
            report.wall_secs,
        );
        reports.push(report);
    }
    if reports.is_empty() {
        bail!("every node was lost");
    }
    measure(placement, reports, lost)
}

fn measure(
    placement: Placement,
    reports: Vec<PipelineReport>,
    lost: Vec<usize>,
) -> anyhow::Result<Measured> {
    let lanes = reports.iter().map(|r| r.lanes).max().unwrap_or(1).max(1);
    let (mut samples_per_sec, mut steady_samples_per_sec) = (0.0, 0.0);
    let (mut observed, mut total_flops) = (0.0, 0.0);
    let mut final_loss = None;
    for lane in 0..lanes {
        let chain: Vec<&PipelineReport> = reports
            .iter()
            .filter(|r| r.position.is_some() && r.lane.unwrap_or(0) == lane)
            .collect();
        let head = chain
            .iter()
            .find(|r| r.position == Some(0))
            .with_context(|| format!("no node held the first stage of chain {lane}"))?;
        let samples = head.steps as f64 * head.batch_samples as f64;
        let busiest = chain.iter().map(|r| r.busy_secs).fold(0.0, f64::max);
        samples_per_sec += samples / head.wall_secs.max(1e-9);
        steady_samples_per_sec += samples / busiest.max(1e-9);
        if lane == 0 {
            final_loss = head.losses.last().copied();
            total_flops = chain.iter().map(|r| r.range_flops_per_sample).sum();
        }
        // Each planned shard's capacity as observed while training: FLOPs done / compute
        // time. With shards sharing a machine this is what they achieved together, not alone.
        observed += chain
            .iter()
            .map(|r| r.range_flops_per_sample * samples / r.busy_secs.max(1e-9))
            .sum::<f64>();
    }
    let never_replanned = reports.iter().all(|r| r.replans == 0);
    let observed_ideal_samples_per_sec =
        (never_replanned && total_flops > 0.0).then(|| observed / total_flops);
    Ok(Measured {
        placement,
        samples_per_sec,
        steady_samples_per_sec,
        observed_ideal_samples_per_sec,
        final_loss,
        reports,
        lost,
    })
}

/// Prints and records `run`'s steady-state throughput as a fraction of `bound` samples/s.
fn fraction_of(
    out: &mut serde_json::Map<String, Value>,
    run: &Measured,
    bound: f64,
    what: &str,
    key: &str,
) {
    let fraction = run.steady_samples_per_sec / bound.max(1e-9);
    println!(
        "testnet: {} plan reaches {:.0} % of {what} in steady state",
        name(run.placement),
        100.0 * fraction
    );
    out.insert(key.into(), json!(fraction));
}

fn summarise(args: &TestnetArgs, runs: &[Measured]) -> anyhow::Result<()> {
    let mut out = serde_json::Map::new();
    out.insert("event".into(), json!("testnet-sharded"));
    for run in runs {
        let Some(any) = run.reports.first() else {
            continue;
        };
        println!(
            "testnet: {} plan [{}]: measured {:.2} samples/s end to end, {:.2} samples/s steady state (planned {:.2}), final loss {}",
            name(run.placement),
            render::plan_text(any),
            run.samples_per_sec,
            run.steady_samples_per_sec,
            any.plan.samples_per_sec * any.lanes.max(1) as f64,
            run.final_loss.map_or("-".into(), |l| format!("{l:.4}"))
        );
        out.insert(
            name(run.placement).into(),
            json!({
                "samples_per_sec": run.samples_per_sec,
                "steady_samples_per_sec": run.steady_samples_per_sec,
                "observed_ideal_samples_per_sec": run.observed_ideal_samples_per_sec,
                "planned_samples_per_sec": any.plan.samples_per_sec * any.lanes.max(1) as f64,
                "chains": any.lanes.max(1),
                "plan": any.plan.assignments.iter().map(|a| json!({
                    "peer": a.peer, "start": a.start, "end": a.end,
                })).collect::<Vec<_>>(),
                "final_loss": run.final_loss,
                "lost_nodes": run.lost,
                "losses": run.reports.iter().find(|r| r.position == Some(0)).map(|r| r.losses.clone()),
            }),
        );
    }
    let first = runs.first().and_then(|r| r.reports.first());
    let ideal = first.map(|r| r.ideal_samples_per_sec);
    out.insert("ideal_samples_per_sec".into(), json!(ideal));
    out.insert("slowdowns".into(), json!(args.slowdown));
    out.insert("model".into(), json!(args.model().to_string()));
    if let [aware, even] = runs {
        let speedup = aware.samples_per_sec / even.samples_per_sec.max(1e-9);
        let steady = aware.steady_samples_per_sec / even.steady_samples_per_sec.max(1e-9);
        println!(
            "testnet: capacity-aware vs even split: {speedup:.2}× end to end, {steady:.2}× steady state"
        );
        out.insert("speedup_vs_even".into(), json!(speedup));
        out.insert("steady_speedup_vs_even".into(), json!(steady));
    }
    let replanned = runs
        .first()
        .is_some_and(|run| run.reports.iter().any(|r| r.replans > 0));
    if replanned {
        // Throughput spans several plans (and members): no one bound to compare it with.
        println!("testnet: the plan changed during the run; no fraction of the ideal bound");
    } else if let (Some(run), Some(ideal)) = (runs.first(), ideal) {
        let bound = "the ideal bound".to_string();
        fraction_of(&mut out, run, ideal, &bound, "steady_fraction_of_ideal");
        // The same bound from the capacities the shards showed while training: the part of
        // the gap that is placement (load balance) rather than the capacities themselves
        // changing once every node computes at once (as on one shared machine).
        if let Some(observed) = run.observed_ideal_samples_per_sec {
            let bound = format!(
                "the bound from capacities observed while training ({observed:.2} samples/s)"
            );
            fraction_of(
                &mut out,
                run,
                observed,
                &bound,
                "steady_fraction_of_observed_ideal",
            );
        }
        // The even split against its own observed bound: how much of the gap a placement
        // that ignores capacities leaves, on the same machine under the same load.
        if let Some(even) = runs.get(1)
            && let Some(observed) = even.observed_ideal_samples_per_sec
        {
            let bound = format!(
                "the bound from capacities observed while it trained ({observed:.2} samples/s)"
            );
            fraction_of(
                &mut out,
                even,
                observed,
                &bound,
                "even_steady_fraction_of_observed_ideal",
            );
        }
    }
    println!("{}", Value::Object(out));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{testnet_args, validated};
    use super::*;
    use crate::cmd::node::Mode;

    #[test]
    fn every_sharded_child_command_line_parses_and_validates() {
        let layout = Layout {
            root: std::path::PathBuf::from("/tmp/murmur-testnet-test"),
        };
        let variants: [&[&str]; 3] = [
            &["--sharded"],
            &["--sharded", "--churn", "10", "--compare-even"],
            &["--sharded", "--replicas", "2", "--slowdown", "1,1,2,2"],
        ];
        for extra in variants {
            let args = testnet_args(extra);
            for placement in [Placement::CapacityAware, Placement::Even] {
                for i in 0..args.slowdown.len() {
                    let argv = node_args(&args, &layout, placement, i, "/ip4/127.0.0.1/tcp/1");
                    let config = validated(argv);
                    let Mode::Sharded(sharded) = config.mode else {
                        panic!("{extra:?}: node {i} is not sharded");
                    };
                    assert_eq!(sharded.placement, placement);
                    assert_eq!(sharded.slowdown, args.slowdown[i]);
                    assert_eq!(sharded.pipeline_replicas, args.replicas);
                    assert_eq!(sharded.pipeline_peers, args.slowdown.len());
                }
            }
        }
    }
}
