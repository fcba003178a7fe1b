//! One node's whole pipeline run: measure capacity, announce it (refined while training), agree
//! on the plan, run this node's shard, and report.

use std::time::Duration;

use ed25519_dalek::SigningKey;
use murmur_protocol::pipeline::PipeBody;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Placement;
use super::averaging::RangeAveraging;
use super::mailbox::Mailbox;
use super::notice::announce_rebalance;
use super::rebalance::watch_for_rebalance;
use super::replicas::Replicas;
use super::stage::{self, Position, Resume, StageOutcome};
use super::{PipelineConfig, PipelineError, PipelineReport, StageProgress, form};
use crate::net::Network;
use crate::shard::capacity::{self, Capacity};
use crate::shard::planner::ideal_samples_per_sec;

/// Longest wait for snapshots still in flight when a new plan starts.
const PARTS_WAIT: Duration = Duration::from_secs(5);
/// Re-plans tolerated per run before giving up.
const MAX_REPLANS: u32 = 8;

/// Runs this node's part of the pipeline run described by `config` and reports it; live
/// figures go to `progress`.
pub async fn run(
    net: Network,
    signing: SigningKey,
    config: PipelineConfig,
    progress: watch::Sender<StageProgress>,
) -> Result<PipelineReport, PipelineError> {
    config.validate()?;
    let mut mailbox = Mailbox::open(&net, config.run)?;
    let (spec, device) = (config.spec.clone(), config.device.clone());
    let (samples, slowdown, budget) = (
        config.micro_samples(),
        config.slowdown,
        config.capacity_budget,
    );
    let measured = tokio::task::spawn_blocking(move || {
        capacity::measure(&spec, &device, samples, slowdown, budget)
    })
    .await
    .map_err(|e| PipelineError::Compute(e.to_string()))??;
    tracing::info!(
        flops_per_sec = measured.flops_per_sec,
        samples_per_sec = measured.samples_per_sec,
        "capacity measured"
    );
    let (capacity_tx, capacity_rx) = watch::channel(measured);
    let capacity_tx = std::sync::Arc::new(capacity_tx);
    let (epoch_tx, epoch_rx) = watch::channel(0u64);
    let cancel = CancellationToken::new();
    let _stop_announcing = cancel.clone().drop_guard();
    let announced = capacity_rx.clone();
    let mut averaging = if config.replicas > 1 && config.average_every > 0 {
        let seed = config.train.seed
            ^ u64::from_le_bytes(signing.to_bytes()[..8].try_into().unwrap_or_default());
        Some(RangeAveraging::open(
            &net,
            signing.clone(),
            config.run,
            config.model,
            seed,
        )?)
    } else {
        None
    };
    form::spawn_announcer(
        net.clone(),
        signing,
        &config,
        announced,
        epoch_rx,
        cancel.clone(),
    );

    let mut notice = form::agree(&net, &mut mailbox, &config, measured).await?;
    let started = std::time::Instant::now();
    let mut replicas = Replicas::new(config.replicas as usize);
    let mut outcome = StageOutcome::default();
    let mut replans = 0u32;
    let me = net.local_peer_id().to_string();
    let seat = loop {
        epoch_tx.send_replace(notice.epoch);
        let seat = notice.seat(&me);
        tracing::info!(
            epoch = notice.epoch,
            ?seat,
            resume = notice.resume_step,
            "plan agreed"
        );
        let Some(seat) = seat else { break None };
        let index = seat.index;
        let range = notice.plan.assignments[index].stages();
        let parts = if notice.resume_step == 0 {
            Vec::new()
        } else {
            let wanted = (&notice.previous_ranges[..], &range, notice.resume_step);
            await_parts(&mut mailbox, &mut replicas, wanted).await?
        };
        let resume = Resume {
            step: notice.resume_step,
            parts,
        };
        let me_id = net.local_peer_id();
        let position = Position {
            epoch: notice.epoch,
            index,
            chain: notice.chain(seat.lane)?,
            range: range.clone(),
            lane: seat.lane,
            mates: notice
                .group(index)?
                .into_iter()
                .filter(|p| *p != me_id)
                .collect(),
            planned: notice.planned()?,
        };
        let range_flops: f64 = config.spec.stage_costs()[range]
            .iter()
            .map(|c| c.flops_per_sample as f64)
            .sum();
        let refine = refine_from_progress(
            progress.subscribe(),
            capacity_tx.clone(),
            range_flops * config.train.batch_size as f64,
            cancel.clone(),
        );
        // The lowest id among the peers the plan uses also watches for joins and capacity
        // drift (not the lowest member: a member the planner leaves out stops here). With
        // several chains only joins re-balance (see `rebalance`); departures re-plan through
        // the broken chain, as with one.
        let watches = config.placement == Placement::CapacityAware
            && config.replicate_every > 0
            && notice.watcher() == Some(&me);
        let result = {
            let run = stage::run(
                &net,
                &mut mailbox,
                &config,
                &position,
                &progress,
                &mut replicas,
                resume,
                &mut outcome,
                averaging.as_mut(),
            );
            if watches {
                tokio::select! {
                    result = run => Ok(result),
                    rebalance = watch_for_rebalance(&net, &config, &notice, capacity_rx.clone()) => Err(rebalance),
                }
            } else {
                Ok(run.await)
            }
        };
        refine.abort();
        let result = match result {
            Ok(result) => result,
            Err(rebalance) => {
                let mut next = rebalance?;
                (next.previous_ranges, next.resume_step) = form::resume_point(&notice, &replicas);
                replans += 1;
                let announced = announce_rebalance(&net, &config, &next, &notice, &replicas).await;
                notice = next;
                match announced {
                    Ok(()) => continue,
                    // A member left between the look and the notice: the members that took it
                    // run it, the others the old plan; the re-plan below, without the member
                    // that is gone, reaches both.
                    Err(err) => Err(err),
                }
            }
        };
        match result {
            Ok(()) => break Some(seat),
            Err(PipelineError::Replanned { epoch }) if replans < MAX_REPLANS => {
                replans += 1;
                let me = net.local_peer_id();
                notice = form::await_notice(&mut mailbox, &config, me, me, epoch).await?;
            }
            Err(err)
                if err.calls_for_replan()
                    && config.replicate_every > 0
                    && replans < MAX_REPLANS =>
            {
                tracing::warn!(%err, epoch = notice.epoch, "pipeline broken; re-planning");
                replans += 1;
                notice = form::replan(&net, &mut mailbox, &config, &notice, &replicas).await?;
            }
            Err(err) => return Err(err),
        }
    };
    let even = notice.even()?;
    let ideal_samples_per_sec = ideal_samples_per_sec(&notice.input)?;
    let index = seat.map(|s| s.index);
    let lanes = notice.lanes();
    let range = index.map(|i| notice.plan.assignments[i].stages());
    let range_flops_per_sample = range.clone().map_or(0.0, |r| {
        config.spec.stage_costs()[r]
            .iter()
            .map(|c| c.flops_per_sample as f64)
            .sum()
    });
    Ok(PipelineReport {
        range,
        range_flops_per_sample,
        epoch: notice.epoch,
        replans,
        plan: notice.plan,
        even,
        ideal_samples_per_sec,
        flops_per_sec: measured.flops_per_sec,
        position: index,
        lane: seat.map(|s| s.lane),
        lanes,
        averaging: averaging.as_ref().map(RangeAveraging::report),
        final_params: outcome.final_params,
        steps: outcome.steps,
        batch_samples: config.train.batch_size,
        wall_secs: started.elapsed().as_secs_f64(),
        busy_secs: outcome.busy_secs,
        losses: outcome.losses,
        first_loss_step: outcome.first_loss_step,
    })
}

/// The snapshots of `old` ranges covering `range` at `step`; replicas still queued in the
/// mailbox (sent just before the re-plan) are taken in for up to [`PARTS_WAIT`].
async fn await_parts(
    mailbox: &mut Mailbox,
    replicas: &mut Replicas,
    (old, range, step): (&[std::ops::Range<usize>], &std::ops::Range<usize>, u64),
) -> Result<Vec<murmur_models::pipeline::ShardState>, PipelineError> {
    let deadline = std::time::Instant::now() + PARTS_WAIT;
    let mut others = Vec::new();
    let result = loop {
        match replicas.parts(old, range, step) {
            Ok(parts) => break Ok(parts),
            Err(err) if std::time::Instant::now() >= deadline => break Err(err),
            Err(_) => {}
        }
        let Some(message) = mailbox.recv(Duration::from_millis(100)).await else {
            continue;
        };
        match message.header.body {
            PipeBody::Replica { start, end } => {
                let payload = message.payload;
                let decoded = tokio::task::spawn_blocking(move || {
                    super::replicas::decode(&payload, start, end)
                })
                .await
                .map_err(|e| PipelineError::Compute(e.to_string()))?;
                match decoded {
                    Ok(state) => replicas.insert(state),
                    Err(err) => tracing::warn!(peer = %message.peer, %err, "replica refused"),
                }
            }
            _ => others.push(message),
        }
    };
    mailbox.requeue(others);
    result
}

/// Refines the announced capacity from the shard's observed compute time per step:
/// `flops_per_step` of work took the busy time between two progress updates.
fn refine_from_progress(
    mut progress: watch::Receiver<StageProgress>,
    capacity: std::sync::Arc<watch::Sender<Capacity>>,
    flops_per_step: f64,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (mut steps, mut busy) = (0u64, 0.0f64);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = progress.changed() => if changed.is_err() { return },
            }
            let now = progress.borrow_and_update().clone();
            let (d_steps, d_busy) = (now.step.saturating_sub(steps), now.busy_secs - busy);
            if d_steps > 0 && d_busy > 0.0 {
                let observed = flops_per_step * d_steps as f64 / d_busy;
                capacity.send_modify(|c| c.refine(observed));
            }
            (steps, busy) = (now.step, now.busy_secs);
        }
    })
}
