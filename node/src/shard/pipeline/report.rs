//! What a pipeline run tells its caller: live progress (and the capacity estimate refined from
//! it, which the announcements carry), and the report at the end.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::averaging::AveragingReport;
use super::notice::{PlanNotice, Seat};
use super::stage::StageOutcome;
use super::{PipelineConfig, PipelineError, PipelineReport, StageProgress};
use crate::shard::capacity::Capacity;
use crate::shard::planner::ideal_samples_per_sec;

/// The live figures of a run and the capacity estimate refined from them.
pub(crate) struct Progress {
    progress: Arc<watch::Sender<StageProgress>>,
    capacity: Arc<watch::Sender<Capacity>>,
    capacity_rx: watch::Receiver<Capacity>,
    /// The refining task of the running stage (at most one).
    refining: JoinSet<()>,
}

impl Progress {
    pub(crate) fn new(
        progress: watch::Sender<StageProgress>,
        capacity: watch::Sender<Capacity>,
        capacity_rx: watch::Receiver<Capacity>,
    ) -> Self {
        Self {
            progress: Arc::new(progress),
            capacity: Arc::new(capacity),
            capacity_rx,
            refining: JoinSet::new(),
        }
    }

    /// Where a stage reports its progress.
    pub(crate) fn sender(&self) -> Arc<watch::Sender<StageProgress>> {
        self.progress.clone()
    }

    /// The latest capacity estimate.
    pub(crate) fn capacity(&self) -> watch::Receiver<Capacity> {
        self.capacity_rx.clone()
    }

    /// While a stage runs: refines the capacity from its observed compute time per step
    /// (`flops_per_step` of work took the busy time between two progress updates).
    pub(crate) fn refine_while_running(&mut self, flops_per_step: f64) {
        self.refining.abort_all();
        let mut progress = self.progress.subscribe();
        let capacity = self.capacity.clone();
        self.refining.spawn(async move {
            let (mut steps, mut busy) = (0u64, 0.0f64);
            while progress.changed().await.is_ok() {
                let now = progress.borrow_and_update().clone();
                let (d_steps, d_busy) = (now.step.saturating_sub(steps), now.busy_secs - busy);
                if d_steps > 0 && d_busy > 0.0 {
                    let observed = flops_per_step * d_steps as f64 / d_busy;
                    capacity.send_modify(|c| c.refine(observed));
                }
                (steps, busy) = (now.step, now.busy_secs);
            }
        });
    }

    /// The stage is over: stop refining.
    pub(crate) fn stop_refining(&mut self) {
        self.refining.abort_all();
    }
}

/// The report of a run that ended under `notice` (with this node at `seat`, or left out);
/// `run` is (the start-up capacity, re-plans, seconds since the first plan).
pub(crate) fn report(
    config: &PipelineConfig,
    notice: &PlanNotice,
    seat: Option<Seat>,
    outcome: StageOutcome,
    (measured, replans, wall_secs): (Capacity, u32, f64),
    averaging: Option<AveragingReport>,
    refused: std::collections::BTreeMap<String, u64>,
) -> Result<PipelineReport, PipelineError> {
    let even = notice.even()?;
    let ideal_samples_per_sec = ideal_samples_per_sec(&notice.input)?;
    let index = seat.map(|s| s.index);
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
        plan: notice.plan.clone(),
        even,
        ideal_samples_per_sec,
        flops_per_sec: measured.flops_per_sec,
        position: index,
        lane: seat.map(|s| s.lane),
        lanes: notice.lanes(),
        averaging,
        final_params: outcome.final_params,
        steps: outcome.steps,
        batch_samples: config.train.batch_size,
        wall_secs,
        busy_secs: outcome.busy_secs,
        losses: outcome.losses,
        first_loss_step: outcome.first_loss_step,
        refused,
    })
}
