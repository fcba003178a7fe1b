//! What a sharded testnet run measured: throughput end to end and in steady state, against
//! the planned and ideal bounds, and the final summary line (JSON).

use anyhow::Context;
use serde_json::{Value, json};

use super::super::config::{CommonConfig, ShardedConfig};
use super::super::render;
use super::name;
use crate::shard::pipeline::{PipelineReport, Placement};

/// What one pipeline run measured.
#[derive(Debug)]
pub(super) struct Measured {
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
    /// The losses the first chain's head recorded.
    head_losses: Option<Vec<f32>>,
    /// Nodes that exited without a report (killed by `--churn`, or crashed).
    lost: Vec<usize>,
    /// The hostile extra node's last line (`--malicious`).
    attacker: Option<Value>,
}

pub(super) fn measure(
    placement: Placement,
    reports: Vec<PipelineReport>,
    lost: Vec<usize>,
    attacker: Option<Value>,
) -> anyhow::Result<Measured> {
    // A hostile member's stage computes honestly: it is part of the chains measured.
    let member: Option<PipelineReport> = attacker
        .as_ref()
        .and_then(|a| a.get("pipeline"))
        .and_then(|p| serde_json::from_value(p.clone()).ok());
    let all: Vec<&PipelineReport> = reports.iter().chain(member.as_ref()).collect();
    let lanes = all.iter().map(|r| r.lanes).max().unwrap_or(1).max(1);
    let (mut samples_per_sec, mut steady_samples_per_sec) = (0.0, 0.0);
    let (mut observed, mut total_flops) = (0.0, 0.0);
    let (mut final_loss, mut head_losses) = (None, None);
    for lane in 0..lanes {
        let chain: Vec<&PipelineReport> = all
            .iter()
            .filter(|r| r.position.is_some() && r.lane.unwrap_or(0) == lane)
            .copied()
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
            head_losses = Some(head.losses.clone());
            total_flops = chain.iter().map(|r| r.range_flops_per_sample).sum();
        }
        // Each planned shard's capacity as observed while training: FLOPs done / compute
        // time. With shards sharing a machine this is what they achieved together, not alone.
        observed += chain
            .iter()
            .map(|r| r.range_flops_per_sample * samples / r.busy_secs.max(1e-9))
            .sum::<f64>();
    }
    let never_replanned = all.iter().all(|r| r.replans == 0);
    let observed_ideal_samples_per_sec =
        (never_replanned && total_flops > 0.0).then(|| observed / total_flops);
    Ok(Measured {
        placement,
        samples_per_sec,
        steady_samples_per_sec,
        observed_ideal_samples_per_sec,
        final_loss,
        head_losses,
        reports,
        lost,
        attacker,
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

pub(super) fn summarise(
    common: &CommonConfig,
    sharded: &ShardedConfig,
    runs: &[Measured],
) -> anyhow::Result<()> {
    let mut out = serde_json::Map::new();
    out.insert("event".into(), json!("testnet-sharded"));
    for run in runs {
        if let Some(any) = run.reports.first() {
            out.insert(name(run.placement).into(), run_summary(run, any));
        }
    }
    let first = runs.first().and_then(|r| r.reports.first());
    let ideal = first.map(|r| r.ideal_samples_per_sec);
    out.insert("ideal_samples_per_sec".into(), json!(ideal));
    out.insert("slowdowns".into(), json!(sharded.slowdown));
    out.insert("model".into(), json!(common.model.to_string()));
    if let Some(kind) = sharded.malicious {
        out.insert("malicious_kind".into(), json!(kind.to_string()));
    }
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
        fractions_of_bounds(&mut out, run, runs.get(1), ideal);
    }
    println!("{}", Value::Object(out));
    Ok(())
}

/// Prints one run's line and returns its entry of the JSON summary.
fn run_summary(run: &Measured, any: &PipelineReport) -> Value {
    let planned = any.plan.samples_per_sec * any.lanes.max(1) as f64;
    println!(
        "testnet: {} plan [{}]: measured {:.2} samples/s end to end, {:.2} samples/s steady state (planned {:.2}), final loss {}",
        name(run.placement),
        render::plan_text(any),
        run.samples_per_sec,
        run.steady_samples_per_sec,
        planned,
        run.final_loss.map_or("-".into(), |l| format!("{l:.4}"))
    );
    json!({
        "samples_per_sec": run.samples_per_sec,
        "steady_samples_per_sec": run.steady_samples_per_sec,
        "observed_ideal_samples_per_sec": run.observed_ideal_samples_per_sec,
        "planned_samples_per_sec": planned,
        "chains": any.lanes.max(1),
        "plan": any.plan.assignments.iter().map(|a| json!({
            "peer": a.peer, "start": a.start, "end": a.end,
        })).collect::<Vec<_>>(),
        "final_loss": run.final_loss,
        "lost_nodes": run.lost,
        "nodes": run.reports.iter().map(|r| json!({
            "position": r.position, "steps": r.steps, "epoch": r.epoch,
            "replans": r.replans, "refused": r.refused, "stopped_with_error": false,
        })).collect::<Vec<_>>(),
        "malicious": run.attacker.as_ref().map(|a| json!({
            "stopped_with_error": a.get("error").is_some(),
            "error": a.get("error"),
            "position": a.pointer("/pipeline/position"),
        })),
        "losses": run.head_losses,
    })
}

/// The steady-state throughput of a never re-planned `run` (and of the `even` run) as
/// fractions of the ideal bound and of the bounds from the capacities observed in training.
fn fractions_of_bounds(
    out: &mut serde_json::Map<String, Value>,
    run: &Measured,
    even: Option<&Measured>,
    ideal: f64,
) {
    let bound = "the ideal bound".to_string();
    fraction_of(out, run, ideal, &bound, "steady_fraction_of_ideal");
    // The same bound from the capacities the shards showed while training: the part of
    // the gap that is placement (load balance) rather than the capacities themselves
    // changing once every node computes at once (as on one shared machine).
    if let Some(observed) = run.observed_ideal_samples_per_sec {
        let bound =
            format!("the bound from capacities observed while training ({observed:.2} samples/s)");
        let key = "steady_fraction_of_observed_ideal";
        fraction_of(out, run, observed, &bound, key);
    }
    // The even split against its own observed bound: how much of the gap a placement
    // that ignores capacities leaves, on the same machine under the same load.
    if let Some(even) = even
        && let Some(observed) = even.observed_ideal_samples_per_sec
    {
        let bound = format!(
            "the bound from capacities observed while it trained ({observed:.2} samples/s)"
        );
        let key = "even_steady_fraction_of_observed_ideal";
        fraction_of(out, even, observed, &bound, key);
    }
}
