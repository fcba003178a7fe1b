//! `murmur node` by gossip averaging (the default): loads the model and its part of the data, starts
//! a [`Session`] (network + training thread, resuming from the last checkpoint if there is
//! one) and prints progress until the node is told to stop.

use std::time::{Duration, Instant};

use anyhow::Context;
use murmur_models::{ModelSpec, TrainConfig, Trainer, select_device, spec_for};

use super::config::{CommonConfig, GossipConfig};
use super::{report, run_model_fingerprint, stop_signal, u64_prefix};
use crate::averaging::{AveragerConfig, ButterflyConfig, RobustConfig};
use crate::cmd::train::load_split;
use crate::identity::NodeIdentity;
use crate::session::replica::ModelReplica;
use crate::session::worker::WorkerConfig;
use crate::session::{Session, SessionConfig};
use crate::store::Store;

/// Trains and averages until stopped, then prints the final summary.
pub(super) async fn serve(
    common: &CommonConfig,
    gossip: &GossipConfig,
    identity: NodeIdentity,
    store: Store,
) -> anyhow::Result<()> {
    let selected = select_device(common.device).context("selecting a compute device")?;
    let (trainer, spec) = trainer(common, gossip, &selected.device)?;
    let anchor = trainer.flat_params()?;
    let model = run_model_fingerprint(trainer.fingerprint(), common.seed);
    let mut averager = AveragerConfig::new(common.run, model);
    averager.codec = gossip.codec;
    averager.fanout = gossip.fanout;
    averager.robust = gossip.robust.then(RobustConfig::default);
    averager.outer = gossip.outer;
    averager.admission = crate::cmd::pool::admission(gossip.pool.as_deref(), &common.run)?;
    averager.butterfly = gossip.butterfly.map(|window| {
        ButterflyConfig {
            window,
            ..ButterflyConfig::default()
        }
        .with_codec_if_dense(gossip.codec)
    });
    let config = SessionConfig {
        net: common.net.clone(),
        averager,
        worker: WorkerConfig {
            policy: gossip.sync,
            step_budget: common.steps,
            target_accuracy: gossip.target_accuracy,
            eval_every: gossip.eval_every,
            checkpoint_every: gossip.checkpoint_every,
            idle_sync: Duration::from_millis(300),
            seed: common.seed ^ u64_prefix(identity.peer_key().as_bytes()),
        },
        announce_every: gossip.announce_every,
        join_lag_rounds: 8,
        checkpoint_keep: gossip.keep_checkpoints,
        device: selected.info.name.clone(),
        tamper: gossip.tamper,
    };
    let peer_id = identity.peer_id();
    let replica = Box::new(ModelReplica(trainer));
    let session = Session::start(identity, Some(store), replica, anchor, config).await?;
    let mut out = report::Reporter::new(common.json, peer_id, common.model, spec.param_count());
    for addr in session.network().listen_addrs().await? {
        out.listening(&addr);
    }
    let started = Instant::now();
    let stop = stop_signal(common);
    tokio::pin!(stop);
    let mut status = session.status();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            changed = status.changed() => {
                if changed.is_err() { break; }
                let now = status.borrow_and_update().clone();
                out.progress(&now, started.elapsed());
            }
        }
    }
    let last = session.stop().await?;
    out.final_summary(&last, started.elapsed());
    Ok(())
}

/// The trainer of this node's part of the data, and the model's spec.
fn trainer(
    common: &CommonConfig,
    gossip: &GossipConfig,
    device: &murmur_models::Device,
) -> anyhow::Result<(Trainer, ModelSpec)> {
    let data = load_split(common.model, common.data.as_deref(), common.csv_header)?;
    let train = match gossip.data_part {
        Some((i, n)) => data.train.part(i, n)?,
        None => data.train,
    };
    let spec = spec_for(common.model, train.shape())?;
    let train_config = TrainConfig {
        lr: common.lr,
        total_steps: common.steps,
        batch_size: common.batch_size,
        seed: common.seed,
        ..TrainConfig::default()
    };
    let trainer = Trainer::new(&spec, train, data.test, train_config, device)?;
    Ok((trainer, spec))
}
