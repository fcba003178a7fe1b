//! `murmur node --sharded`: this machine trains one layer shard of a pipeline across the run's
//! peers (see `crate::shard::pipeline`), printing per-step progress and a final report
//! (`"event": "final"`, with the plan, the even split, the ideal bound and this shard's figures).

use std::time::{Duration, Instant};

use anyhow::Context;
use murmur_models::{Model, TrainConfig, select_device, spec_for};
use murmur_protocol::RunId;
use serde_json::json;
use tokio::sync::watch;

use super::{NodeArgs, net_config, run_model_fingerprint, run_seed, stop_signal};
use crate::identity::NodeIdentity;
use crate::net::Network;
use crate::shard::pipeline::{self, PipelineConfig, StageProgress};
use crate::store::Store;
use crate::train_local::load_split;

/// Runs this node's shard until the run's steps are done (or it is stopped).
pub(super) async fn serve(
    args: &NodeArgs,
    identity: NodeIdentity,
    store: Store,
) -> anyhow::Result<()> {
    let run = RunId::from_name(&args.run);
    let selected = select_device(args.device).context("selecting a compute device")?;
    let data = load_split(args.model, args.data.as_deref(), args.csv_header)?;
    let spec = spec_for(args.model, data.train.shape())?;
    let seed = args.seed.unwrap_or_else(|| run_seed(&run));
    let steps = args.steps.unwrap_or(40);
    let train = TrainConfig {
        lr: args.lr.unwrap_or(1e-3),
        warmup_steps: 5.min(steps),
        total_steps: steps,
        batch_size: args.batch_size,
        seed,
        ..TrainConfig::default()
    };
    let (spec_c, device) = (spec.clone(), selected.device.clone());
    let architecture = tokio::task::spawn_blocking(move || {
        Model::new(&spec_c, &device, seed).map(|m| m.fingerprint())
    })
    .await??;
    let config = PipelineConfig {
        run,
        spec,
        model: run_model_fingerprint(architecture, seed),
        train,
        micro_batches: args.micro_batches,
        steps,
        members: args.pipeline_peers,
        placement: args.placement,
        slowdown: args.slowdown,
        device: selected.device.clone(),
        device_name: selected.info.name.clone(),
        data: data.train,
        peer_deadline: Duration::from_secs_f64(args.peer_deadline.max(0.1)),
        form_timeout: Duration::from_secs(120),
        capacity_budget: Duration::from_millis(1500),
        replicate_every: args.replicate_every,
        replicas: args.pipeline_replicas,
        average_every: args.average_every,
    };
    let (net, mut events) = Network::start(identity.keypair(), net_config(args, run), Some(&store))
        .await
        .context("starting the network")?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(event) = events.events.recv() => tracing::debug!(?event, "network"),
                Some(_) = events.announcements.recv() => {}
                else => return,
            }
        }
    });
    let peer = net.local_peer_id();
    for addr in net.listen_addrs().await? {
        print_line(
            args.json,
            json!({"event": "listening", "peer": peer.to_string(), "addr": addr.to_string()}),
            &format!("listening on {addr}"),
        );
    }
    let (progress_tx, mut progress) = watch::channel(StageProgress::default());
    let work = pipeline::run(
        net.clone(),
        identity.signing_key().clone(),
        config,
        progress_tx,
    );
    tokio::pin!(work);
    let stop = stop_signal(args);
    tokio::pin!(stop);
    let started = Instant::now();
    let result = loop {
        tokio::select! {
            result = &mut work => break Some(result),
            _ = &mut stop => break None,
            changed = progress.changed() => {
                if changed.is_err() { continue; }
                let p = progress.borrow_and_update().clone();
                let utilisation = p.busy_secs / p.elapsed_secs.max(1e-9);
                let text = format!(
                    "step {:>4}  loss {}  utilisation {:>3.0} %",
                    p.step,
                    p.loss.map_or("-".into(), |l| format!("{l:.4}")),
                    100.0 * utilisation
                );
                print_line(args.json, json!({
                    "event": "stage",
                    "peer": peer.to_string(),
                    "elapsed_s": started.elapsed().as_secs_f64(),
                    "step": p.step,
                    "position": p.position,
                    "range": p.range.as_ref().map(|r| [r.start, r.end]),
                    "loss": p.loss,
                    "busy_s": p.busy_secs,
                    "utilisation": utilisation,
                }), &text);
            }
        }
    };
    net.shutdown().await;
    let report = match result {
        None => {
            print_line(
                args.json,
                json!({"event": "final", "peer": peer.to_string(), "stopped": true}),
                "stopped",
            );
            return Ok(());
        }
        Some(Err(err)) => {
            print_line(
                args.json,
                json!({"event": "final", "peer": peer.to_string(), "error": err.to_string()}),
                &format!("pipeline failed: {err}"),
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
        args.json,
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
