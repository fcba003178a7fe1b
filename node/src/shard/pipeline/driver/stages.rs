//! The driver's stages: starting one for an epoch (once the snapshots its range is built
//! from are held), and turning its end into the membership's next event.

use super::*;

impl Driver {
    /// Starts the stage of `notice` at `seat` once the snapshots its range is built from are
    /// held (waiting up to [`PARTS_WAIT`] for those still in flight).
    pub(super) fn start_stage(&mut self, notice: PlanNotice, seat: Seat) {
        self.pending = Some(Pending {
            notice,
            seat,
            deadline: now() + PARTS_WAIT,
        });
        self.try_start();
    }

    pub(super) fn try_start(&mut self) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        let range = pending.notice.plan.assignments[pending.seat.index].stages();
        let parts = if pending.notice.resume_step == 0 {
            Ok(Vec::new())
        } else {
            let held = snapshots::lock(&self.snapshots);
            held.parts(
                &pending.notice.previous_ranges,
                &range,
                pending.notice.resume_step,
            )
        };
        match parts {
            Ok(parts) => {
                if let Err(err) = self.spawn_stage(pending.notice, pending.seat, parts) {
                    self.result = Some(Err(err));
                }
            }
            // Snapshots still being decoded may be the ones missing: wait for them.
            Err(err) if now() >= pending.deadline && self.decoding.is_empty() => {
                self.result = Some(Err(err));
            }
            Err(_) => self.pending = Some(pending),
        }
    }

    pub(super) fn spawn_stage(
        &mut self,
        notice: PlanNotice,
        seat: Seat,
        parts: Vec<ShardState>,
    ) -> Result<(), PipelineError> {
        let index = seat.index;
        let range = notice.plan.assignments[index].stages();
        let position = Position {
            epoch: notice.epoch,
            index,
            chain: notice.chain(seat.lane)?,
            range: range.clone(),
            lane: seat.lane,
            mates: notice
                .group(index)?
                .into_iter()
                .filter(|p| *p != self.me)
                .collect(),
            planned: notice.planned()?,
        };
        let range_flops: f64 = self.config.spec.stage_costs()[range]
            .iter()
            .map(|c| c.flops_per_sample as f64)
            .sum();
        self.progress
            .refine_while_running(range_flops * self.config.train.batch_size as f64);
        // The lowest id among the peers the plan uses also watches for joins and capacity
        // drift (not the lowest member: a member the planner leaves out stops). With several
        // chains only joins re-balance (see `rebalance`); departures re-plan through the
        // broken chain, as with one.
        let watches = self.config.placement == Placement::CapacityAware
            && self.config.snapshot_every > 0
            && notice.watcher() == Some(self.me);
        if watches {
            let own = self.progress.capacity();
            let current = (notice.clone(), self.membership.excluded().to_vec());
            let watch = watch_for_rebalance(self.net.clone(), self.rules.clone(), current, own);
            self.watchers.spawn(watch);
        }
        let (inbox, rx) = mpsc::channel(64);
        let early = self.take_early(notice.epoch);
        let stop = CancellationToken::new();
        let task = StageTask {
            net: self.net.clone(),
            config: self.config.clone(),
            position,
            progress: self.progress.sender(),
            snapshots: self.snapshots.clone(),
            resume: Resume {
                step: notice.resume_step,
                parts,
            },
            outcome: self.outcome.take().unwrap_or_default(),
            averaging: self.averaging.take(),
            mailbox: Mailbox::for_stage(rx, early),
            stop: stop.clone(),
        };
        self.stages.spawn(stage::run(task));
        self.running = Some(Running {
            notice,
            stop,
            handoff: Handoff::new(inbox),
        });
        Ok(())
    }

    /// The kept messages of `epoch` (older ones are dropped, later ones kept).
    pub(super) fn take_early(&mut self, epoch: u64) -> Vec<Inbound> {
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.early)
            .into_iter()
            .filter(|m| m.header.epoch >= epoch)
            .partition(|m| m.header.epoch == epoch);
        self.early = later.into();
        now
    }

    pub(super) fn on_stage_done(&mut self, done: Result<StageDone, tokio::task::JoinError>) {
        // Dropped, not only aborted: a proposal that came in meanwhile is for a plan that is over.
        self.watchers = JoinSet::new();
        self.progress.stop_refining();
        let Some(running) = self.running.take() else {
            return;
        };
        self.ended_epoch = running.notice.epoch;
        let done = match done {
            Ok(done) => done,
            Err(err) => {
                self.result = Some(Err(err.into()));
                return;
            }
        };
        self.outcome = Some(done.outcome);
        self.averaging = done.averaging;
        if let Ok(EpochEnd::NeighbourLost {
            cause: Loss::Misbehaved(_),
            ..
        }) = &done.end
        {
            *self.refused.entry("stage-message").or_default() += 1;
        }
        let resume = form::resume_point(&running.notice, &snapshots::lock(&self.snapshots));
        self.handle(Event::StageEnded {
            now: now(),
            end: done.end,
            resume,
        });
    }
}
