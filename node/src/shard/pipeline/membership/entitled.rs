//! Others' words that end the running epoch — a later plan notice, a break report — and when
//! they count.
//!
//! **Who.** Any member of the running plan can compute a valid next plan from honest inputs;
//! if every such notice counted, one hostile member could re-plan the run at will (each
//! re-plan stops every stage and rolls it back to the last snapshot). Two members are
//! entitled: the plan's watcher ([`PlanNotice::watcher`]: it re-balances and plans joiners
//! in) and, after a break, the member that re-plans — the lowest planned member still running
//! the plan ([`Rules::survivors`]). Views of who still runs lag: a notice from a member this
//! node does not see entitled yet (a lower member's connection has not dropped here) is held,
//! judged again at every look at the peer book, and refused when its issuer is still not
//! entitled after [`HOLD_FOR`].
//!
//! **When.** A peer id costs nothing, so the lowest one can be ground, and no member can tell
//! a false break report from a neighbour stalled but connected. What bounds a member that
//! re-plans the run again and again is time: in an epoch that itself came from a re-plan, a
//! notice or report counts at once only with evidence this node sees — a planned member gone
//! (disconnected) — and otherwise once the epoch has run [`SETTLE`], doubled for
//! each further re-plan without progress ([`Membership::settled_at`]). Meanwhile the stages
//! train and snapshot, so the re-plan budget (`MAX_REPLANS` in a row without progress) is
//! not spent by words alone: a hostile member slows a run, it does not end it. (A member that
//! finished its part is no such evidence: it is how a run ends.)

use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::super::notice::PlanNotice;
use super::rules::has_finished;
use super::{Action, Membership, Phase, Rules, Stopping};
use crate::net::PeerInfo;

/// Longest a later notice waits for this node to see its issuer entitled: about the time a
/// departed member's connection takes to drop.
pub(crate) const HOLD_FOR: Duration = Duration::from_secs(20);
/// How long an epoch that came from a re-plan runs before others' words alone end it (doubled
/// for each further re-plan without progress, up to 64 times).
pub(crate) const SETTLE: Duration = Duration::from_secs(10);

/// A later notice held until its issuer is entitled and the running epoch settled.
#[derive(Debug)]
pub(super) struct Held {
    from: PeerId,
    notice: PlanNotice,
    until: Instant,
}

/// What a look did with the held words.
pub(super) enum Judged {
    /// Nothing held (or what was held was dropped).
    Nothing,
    /// Words that count now: these actions follow them.
    Acted(Vec<Action>),
    /// Still held: judged again at the next look, at the latest at this time.
    Waiting(Instant),
}

impl Rules {
    /// Whether `from` may issue an epoch after `running`, as seen from `peers` by `me`.
    pub(crate) fn entitled(
        &self,
        running: &PlanNotice,
        from: PeerId,
        peers: &[PeerInfo],
        me: PeerId,
    ) -> bool {
        running.watcher() == Some(from)
            || self
                .survivors(running, peers, me)
                .is_ok_and(|(_, leader)| leader == from)
    }

    /// Whether a member `running` plans is gone in `peers`: disconnected without having
    /// announced that its part is over (a member that finished is no evidence of a break).
    pub(crate) fn member_gone(running: &PlanNotice, peers: &[PeerInfo], me: PeerId) -> bool {
        running.planned_members().into_iter().any(|member| {
            member != me
                && !peers
                    .iter()
                    .any(|p| p.peer_id == member && (p.connected || has_finished(p)))
        })
    }
}

impl Membership {
    /// The plan a later notice must be entitled by: the running one, or the one that broke
    /// while this node awaits the re-plan.
    fn judged_by(&self) -> Option<&PlanNotice> {
        match &self.phase {
            Phase::Running { notice, .. } => Some(notice),
            Phase::Awaiting {
                replanning: Some(replanning),
                ..
            } => Some(&replanning.previous),
            _ => None,
        }
    }

    /// When others' words alone may end the running epoch: at once in an epoch planned after
    /// progress, else [`SETTLE`] after it started, doubled per further re-plan without
    /// progress. `None` while no epoch runs (awaiting a re-plan: the epoch already broke).
    pub(super) fn settled_at(&self) -> Option<Instant> {
        let Phase::Running { since, .. } = &self.phase else {
            return None;
        };
        let doublings = self.stalled.saturating_sub(1).min(6);
        Some(match self.stalled {
            0 => *since,
            _ => *since + SETTLE * (1 << doublings),
        })
    }

    /// A valid later `notice` from `from`: taken at once from the running plan's watcher in
    /// an epoch planned after progress, else held and judged at a look asked for now. One is
    /// held at a time: a notice from a lower id (or the same issuer's later epoch) replaces
    /// it — the entitled member is the lowest still running, so a higher id never pushes its
    /// notice out.
    pub(super) fn later_notice(
        &mut self,
        now: Instant,
        from: PeerId,
        notice: PlanNotice,
    ) -> Vec<Action> {
        let watcher = self.judged_by().and_then(PlanNotice::watcher) == Some(from);
        if watcher && self.settled_at().is_some_and(|at| now >= at) {
            return self.accept_later(from, notice);
        }
        let replaces = self.held.as_ref().is_none_or(|held| {
            let (new, old) = (from.to_string(), held.from.to_string());
            new < old || (new == old && notice.epoch > held.notice.epoch)
        });
        if !replaces {
            self.refuse_unentitled(from, notice.epoch);
            return Vec::new();
        }
        tracing::info!(epoch = notice.epoch, peer = %from, "a later plan held until its issuer is entitled and the running epoch settled");
        let held = Held {
            from,
            notice,
            until: now + HOLD_FOR,
        };
        if let Some(old) = self.held.replace(held)
            && old.from != from
        {
            self.refuse_unentitled(old.from, old.notice.epoch);
        }
        vec![Action::Wake(now)]
    }

    /// A member's report that its chain of the running epoch broke: the stage stops for a
    /// re-plan at once in an epoch planned after progress, else the report waits for a look.
    pub(super) fn broken_report(&mut self, now: Instant, from: PeerId) -> Vec<Action> {
        if self.settled_at().is_some_and(|at| now >= at) {
            return self.stop_for_break(from);
        }
        tracing::info!(peer = %from, "break report held until the epoch settled or a member is seen gone");
        self.held_report.get_or_insert(from);
        vec![Action::Wake(now)]
    }

    fn stop_for_break(&mut self, from: PeerId) -> Vec<Action> {
        let Phase::Running { stopping, .. } = &mut self.phase else {
            return Vec::new();
        };
        if stopping.is_some() {
            return Vec::new();
        }
        tracing::warn!(peer = %from, "a chain of this plan broke; re-planning");
        *stopping = Some(Stopping::Broken(from));
        vec![Action::StopStage]
    }

    /// At a look at `peers`: the held words acted on if they count now, a notice refused past
    /// its deadline, else kept.
    pub(super) fn judge_held(&mut self, now: Instant, peers: &[PeerInfo]) -> Judged {
        let Some(running) = self.judged_by() else {
            // The plan they would end is no longer run or awaited.
            (self.held, self.held_report) = (None, None);
            return Judged::Nothing;
        };
        let gone = Rules::member_gone(running, peers, self.me);
        let settled = self.settled_at().is_none_or(|at| now >= at);
        let entitled = (self.held.as_ref())
            .map(|held| self.rules.entitled(running, held.from, peers, self.me));
        let mut wait: Option<Instant> = None;
        if let (Some(entitled), Some(held)) = (entitled, self.held.take()) {
            if entitled && (gone || settled) {
                return Judged::Acted(self.accept_later(held.from, held.notice));
            }
            if !entitled && now >= held.until {
                self.refuse_unentitled(held.from, held.notice.epoch);
            } else {
                // Entitled, waiting to settle; or not yet seen entitled.
                wait = Some(if entitled {
                    self.settled_at().unwrap_or(now)
                } else {
                    held.until
                });
                self.held = Some(held);
            }
        }
        if let Some(reporter) = self.held_report {
            if gone || settled {
                self.held_report = None;
                return Judged::Acted(self.stop_for_break(reporter));
            }
            let at = self.settled_at().unwrap_or(now);
            wait = Some(wait.map_or(at, |w| w.min(at)));
        }
        wait.map_or(Judged::Nothing, Judged::Waiting)
    }

    /// Whether a look at the peer book could act on held words.
    pub(super) fn holds(&self) -> bool {
        self.held.is_some() || self.held_report.is_some()
    }

    /// Refuses the held notice, if any (the run is over for this node).
    pub(super) fn drop_held(&mut self) {
        self.held_report = None;
        if let Some(held) = self.held.take() {
            self.refuse_unentitled(held.from, held.notice.epoch);
        }
    }

    fn refuse_unentitled(&mut self, from: PeerId, epoch: u64) {
        self.refused_notices += 1;
        tracing::warn!(peer = %from, epoch, "later plan notice refused: its issuer is not entitled to re-plan (a lower member still runs the plan)");
    }

    /// Goes on with `notice`, a later plan from an entitled issuer.
    fn accept_later(&mut self, from: PeerId, notice: PlanNotice) -> Vec<Action> {
        tracing::info!(epoch = notice.epoch, peer = %from, "a later plan arrived");
        let Phase::Running { stopping, .. } = &mut self.phase else {
            // Awaiting the re-plan of a broken one.
            return self.adopt(notice);
        };
        if self.later.as_ref().is_none_or(|l| notice.epoch > l.epoch) {
            self.later = Some(notice);
        }
        if stopping.is_some() {
            return Vec::new();
        }
        *stopping = Some(Stopping::Superseded);
        vec![Action::StopStage]
    }
}

/// `actions` with their look moved to `at` if that is earlier (or added if they have none):
/// the driver keeps one wake-up time.
pub(super) fn wake_by(mut actions: Vec<Action>, at: Instant) -> Vec<Action> {
    let mut found = false;
    for action in &mut actions {
        if let Action::Wake(when) = action {
            *when = (*when).min(at);
            found = true;
        }
    }
    if !found {
        actions.push(Action::Wake(at));
    }
    actions
}
