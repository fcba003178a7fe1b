//! `murmur node --sharded`: this machine trains one layer shard of a pipeline across the run's
//! peers (see `crate::shard::pipeline`), printing per-step progress and a final report
//! (`"event": "final"`, with the plan, the even split, the ideal bound and this shard's figures).

use std::time::{Duration, Instant};

use anyhow::Context;
use libp2p::PeerId;
use murmur_models::{Model, SelectedDevice, TrainConfig, select_device, spec_for};
use serde_json::json;
use tokio::sync::watch;

use super::config::{CommonConfig, ShardedConfig};
use super::{run_model_fingerprint, stop_signal};
use crate::cmd::train::load_split;
use crate::errors::chain;
use crate::identity::NodeIdentity;
use crate::net::Network;
use crate::shard::pipeline::{self, PipelineConfig, PipelineReport, StageProgress};
use crate::store::Store;

/// Runs this node's shard until the run's steps are done (or it is stopped).
pub(super) async fn serve(
    common: &CommonConfig,
    sharded: &ShardedConfig,
    identity: NodeIdentity,
    store: Store,
) -> anyhow::Result<()> {
    let selected = select_device(common.device).context("selecting a compute device")?;
    let config = pipeline_config(common, sharded, &selected).await?;
    let (net, mut events) = Network::start(identity.keypair(), common.net.clone(), Some(&store))
        .await
        .context("starting the network")?;
    // Network events are only logged here; the task ends when the network shuts down.
    let drain = tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(event) = events.events.recv() => tracing::debug!(?event, "network"),
                Some(_) = events.announcements.recv() => {}
                else => return,
            }
        }
    });
    let peer = net.local_peer_id();
    let result = train(common, &net, &identity, config).await;
    net.shutdown().await;
    join_drain(drain).await;
    final_report(common.json, peer, result?)
}

/// Prints the listening addresses, then trains this node's shard until the run ends
/// (`Some`) or the node is stopped (`None`).
async fn train(
    common: &CommonConfig,
    net: &Network,
    identity: &NodeIdentity,
    config: PipelineConfig,
) -> anyhow::Result<Option<Result<PipelineReport, pipeline::PipelineError>>> {
    let peer = net.local_peer_id();
    for addr in net.listen_addrs().await? {
        print_line(
            common.json,
            json!({"event": "listening", "peer": peer.to_string(), "addr": addr.to_string()}),
            &format!("listening on {addr}"),
        );
    }
    let (progress_tx, progress) = watch::channel(StageProgress::default());
    let work = pipeline::run(
        net.clone(),
        identity.signing_key().clone(),
        config,
        progress_tx,
    );
    Ok(drive(common, peer, work, progress).await)
}

/// How long the network-event task may take to end once the network is shut down.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Waits (at most [`DRAIN_GRACE`]) for the network-event task, aborting it after that; a
/// panic of the task is logged.
async fn join_drain(mut drain: tokio::task::JoinHandle<()>) {
    match tokio::time::timeout(DRAIN_GRACE, &mut drain).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::error!(error = %err, "the network-event task failed"),
        Err(_) => {
            tracing::warn!("the network-event task did not end after shutdown; aborting it");
            drain.abort();
        }
    }
}

/// The pipeline configuration of this node (builds the model once for its fingerprint).
async fn pipeline_config(
    common: &CommonConfig,
    sharded: &ShardedConfig,
    selected: &SelectedDevice,
) -> anyhow::Result<PipelineConfig> {
    let data = load_split(common.model, common.data.as_deref(), common.csv_header)?;
    let spec = spec_for(common.model, data.train.shape())?;
    let (seed, steps) = (common.seed, common.steps);
    let train = TrainConfig {
        lr: common.lr,
        warmup_steps: 5.min(steps),
        total_steps: steps,
        batch_size: common.batch_size,
        seed,
        ..TrainConfig::default()
    };
    let (spec_c, device) = (spec.clone(), selected.device.clone());
    let architecture = tokio::task::spawn_blocking(move || {
        Model::new(&spec_c, &device, seed).map(|m| m.fingerprint())
    })
    .await??;
    Ok(PipelineConfig {
        run: common.run,
        spec,
        model: run_model_fingerprint(architecture, seed),
        train,
        micro_batches: sharded.micro_batches,
        steps,
        members: sharded.pipeline_peers,
        placement: sharded.placement,
        slowdown: sharded.slowdown,
        device: selected.device.clone(),
        device_name: selected.info.name.clone(),
        data: data.train,
        peer_deadline: sharded.peer_deadline,
        form_timeout: Duration::from_secs(120),
        capacity_budget: Duration::from_millis(1500),
        snapshot_every: sharded.snapshot_every,
        replicas: sharded.pipeline_replicas,
        average_every: sharded.average_every,
        admission: crate::cmd::pool::admission(sharded.pool.as_deref(), &common.run)?,
        tamper: sharded.tamper,
    })
}

/// Prints progress until the pipeline run ends (`Some`) or the node is stopped (`None`).
async fn drive<F>(
    common: &CommonConfig,
    peer: PeerId,
    work: F,
    mut progress: watch::Receiver<StageProgress>,
) -> Option<Result<PipelineReport, pipeline::PipelineError>>
where
    F: std::future::Future<Output = Result<PipelineReport, pipeline::PipelineError>>,
{
    tokio::pin!(work);
    let stop = stop_signal(common);
    tokio::pin!(stop);
    let started = Instant::now();
    loop {
        tokio::select! {
            result = &mut work => return Some(result),
            _ = &mut stop => return None,
            changed = progress.changed() => {
                if changed.is_err() { continue; }
                let p = progress.borrow_and_update().clone();
                print_progress(common.json, peer, started, &p);
            }
        }
    }
}

fn print_progress(json: bool, peer: PeerId, started: Instant, p: &StageProgress) {
    let utilisation = p.busy_secs / p.elapsed_secs.max(1e-9);
    let text = format!(
        "step {:>4}  loss {}  utilisation {:>3.0} %",
        p.step,
        p.loss.map_or("-".into(), |l| format!("{l:.4}")),
        100.0 * utilisation
    );
    let value = json!({
        "event": "stage",
        "peer": peer.to_string(),
        "elapsed_s": started.elapsed().as_secs_f64(),
        "step": p.step,
        "position": p.position,
        "range": p.range.as_ref().map(|r| [r.start, r.end]),
        "loss": p.loss,
        "busy_s": p.busy_secs,
        "utilisation": utilisation,
    });
    print_line(json, value, &text);
}

/// Prints the `"event": "final"` line of a run that ended (or was stopped: `None`).
fn final_report(
    json: bool,
    peer: PeerId,
    result: Option<Result<PipelineReport, pipeline::PipelineError>>,
) -> anyhow::Result<()> {
    let report = match result {
        None => {
            let value = json!({"event": "final", "peer": peer.to_string(), "stopped": true});
            print_line(json, value, "stopped");
            return Ok(());
        }
        Some(Err(err)) => {
            let error = chain(&err).to_string();
            print_line(
                json,
                json!({"event": "final", "peer": peer.to_string(), "error": error}),
                &format!("pipeline failed: {error}"),
            );
            return Err(err).context("pipeline run");
        }
        Some(Ok(report)) => report,
    };
    let text = format!(
        "pipeline done: position {:?}, stages {:?}, {} steps in {:.1} s, busy {:.1} s",
        report.position, report.range, report.steps, report.wall_secs, report.busy_secs
    );
    print_line(
        json,
        json!({"event": "final", "peer": peer.to_string(), "pipeline": report}),
        &text,
    );
    Ok(())
}

fn print_line(json: bool, value: serde_json::Value, text: &str) {
    if json {
        println!("{value}");
    } else {
        println!("{text}");
    }
}
