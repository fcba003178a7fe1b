//! When this node's own re-balance ends the running epoch: the watcher's proposal
//! ([`Event::Rebalance`](super::Event)) waits, like others' words, until the epoch settled
//! ([`Membership::settled_at`]), and a moment more ([`ISSUE_SLACK`]).
//!
//! The members hold a watcher's notice that comes before their epoch settled (see
//! `entitled`); a watcher that stopped its own stage for it meanwhile would stall theirs
//! until their neighbour deadline broke the chain — one re-balance turned into a re-plan.
//! Each member counts the settling from when its stage started; the issuer's started last
//! (it runs a plan once every member took it), a member's at most moments before another's:
//! the slack covers that.

use std::time::{Duration, Instant};

use super::super::notice::PlanNotice;
use super::entitled::wake_by;
use super::{Action, Membership, Phase, Stopping};

/// How long after its own epoch settled the watcher waits before a re-balance ends it, so
/// that every member sees the epoch settled too.
pub(crate) const ISSUE_SLACK: Duration = Duration::from_secs(1);

impl Membership {
    /// When a re-balance may end the running epoch (`None`: no epoch runs).
    fn issue_at(&self) -> Option<Instant> {
        let settled = self.settled_at()?;
        let Phase::Running { since, .. } = &self.phase else {
            return None;
        };
        Some(if settled > *since {
            settled + ISSUE_SLACK
        } else {
            settled
        })
    }

    /// The watch proposes `notice` at `now`: the stage stops for it once the epoch settled;
    /// until then it is kept, and a look is asked for when it may go.
    pub(super) fn on_rebalance(&mut self, now: Instant, notice: PlanNotice) -> Vec<Action> {
        let Phase::Running {
            notice: running,
            stopping,
            ..
        } = &self.phase
        else {
            return Vec::new();
        };
        if stopping.is_some() || notice.epoch != running.epoch + 1 {
            return Vec::new();
        }
        match self.issue_at() {
            Some(at) if now < at => {
                tracing::info!(epoch = notice.epoch, wait = ?at - now, "re-balance waits for the running epoch to settle");
                self.rebalance = Some(notice);
                vec![Action::Wake(at)]
            }
            _ => self.stop_for_rebalance(notice),
        }
    }

    /// At a look at `now`: the kept re-balance goes if it may, else the look's `actions` are
    /// asked to come back when it may.
    pub(super) fn judge_rebalance(&mut self, now: Instant, actions: Vec<Action>) -> Vec<Action> {
        let Some(notice) = self.rebalance.take() else {
            return actions;
        };
        let current = matches!(&self.phase, Phase::Running { notice: running, stopping: None, .. } if running.epoch + 1 == notice.epoch);
        match self.issue_at() {
            // The epoch it was for ended otherwise.
            _ if !current => actions,
            Some(at) if now < at => {
                self.rebalance = Some(notice);
                wake_by(actions, at)
            }
            _ => {
                let mut actions = actions;
                actions.extend(self.stop_for_rebalance(notice));
                actions
            }
        }
    }

    fn stop_for_rebalance(&mut self, notice: PlanNotice) -> Vec<Action> {
        let Phase::Running { stopping, .. } = &mut self.phase else {
            return Vec::new();
        };
        *stopping = Some(Stopping::Rebalance(notice));
        vec![Action::StopStage]
    }
}
