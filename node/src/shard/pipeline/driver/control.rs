//! The driver's control work beside the stage: sending a plan notice (and the snapshots a new
//! plan is built from), and what the control tasks and the re-balancing watch report.

use super::*;
use crate::errors::chain;

/// What a control task (run beside the stage) reports.
pub(super) enum Control {
    Probed(Vec<crate::shard::planner::Link>),
    Sent {
        notice: Box<PlanNotice>,
        result: Result<(), PipelineError>,
    },
    Reported(Result<(), PipelineError>),
}

impl Driver {
    pub(super) fn send_notice(&mut self, notice: PlanNotice, previous: Option<PlanNotice>) {
        let (net, config, snapshots) = (
            self.net.clone(),
            self.config.clone(),
            self.snapshots.clone(),
        );
        let rules = self.rules.clone();
        self.control.spawn(async move {
            let mut result = send_notice(&net, &config, &notice).await;
            if let (Ok(()), Some(previous)) = (&result, previous) {
                // Members of other chains got the snapshots only best effort; restarted
                // members lost theirs.
                result = match net.peers().await {
                    Ok(peers) => {
                        let restarted = rules.restarted(&peers);
                        send_parts_beyond_own_chain(
                            &net, &config, &notice, &previous, &snapshots, &restarted,
                        )
                        .await
                    }
                    Err(err) => Err(err.into()),
                };
            }
            Control::Sent {
                notice: Box::new(notice),
                result,
            }
        });
    }

    pub(super) fn on_control(&mut self, done: Result<Control, tokio::task::JoinError>) {
        let now = now();
        match done {
            Ok(Control::Probed(links)) => self.handle(Event::Probed { now, links }),
            Ok(Control::Sent { notice, result }) => {
                let resume = form::resume_point(&notice, &snapshots::lock(&self.snapshots));
                let epoch = notice.epoch;
                self.handle(Event::Sent {
                    now,
                    epoch,
                    result,
                    resume,
                });
            }
            Ok(Control::Reported(Err(err))) => {
                // The member may be re-planning already (it saw the break itself); its notice
                // decides.
                tracing::info!(err = %chain(&err), "broken chain not reported to the re-planning member");
            }
            Ok(Control::Reported(Ok(()))) => {}
            Err(err) => self.result = Some(Err(err.into())),
        }
    }

    pub(super) fn on_watcher(
        &mut self,
        done: Result<Result<PlanNotice, PipelineError>, tokio::task::JoinError>,
    ) {
        match done {
            Ok(Ok(notice)) => self.handle(Event::Rebalance { now: now(), notice }),
            Ok(Err(err)) => self.result = Some(Err(err)),
            Err(err) if err.is_cancelled() => {}
            Err(err) => self.result = Some(Err(err.into())),
        }
    }
}
