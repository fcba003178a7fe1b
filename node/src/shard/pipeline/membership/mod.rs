//! Pipeline membership as a sans-IO state machine: who is in the run, which plan runs, and
//! what to do when an epoch ends.
//!
//! [`Membership::handle`] takes an [`Event`] (a look at the peer book, a plan notice, a break
//! report, the end of this node's stage, a send or probe that finished, a re-balance proposal)
//! and returns the [`Action`]s the driver (`super::driver`) carries out: look again later, probe
//! links, send a notice, report a broken chain, start or stop the stage, finish or fail. There
//! is no runtime, socket or clock inside: time comes in with the events, so every failure path
//! a multi-node run ever hit is a unit test here (`tests.rs`).
//!
//! The phases, in the order a run goes through them:
//! - **forming**: wait for `members` candidates (connected or recently announced peers of this
//!   run and model); the lowest id probes its links and issues the first plan, the others wait
//!   for it. A node that sees a running pipeline waits to be planned in. A valid notice that
//!   arrives first is taken at once (the issuer may have seen every member before this node).
//! - **running**: this node's stage runs the plan. A valid notice of a later epoch, a break
//!   report from a member of this epoch, or the issuer's own re-balance stops the stage; how
//!   the stage ended ([`EpochEnd`]) decides what comes next.
//! - **grace**, then re-plan: after a neighbour was lost (or a break was reported), wait a
//!   moment for the transport to notice departures, then the lowest surviving member still
//!   running the plan issues the next epoch from the common snapshot; the others tell it their
//!   chain broke and wait for its notice.

mod blame;
pub(crate) mod citations;
mod entitled;
mod events;
mod forming;
mod issuing;
mod rules;
#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::PipelineError;
use super::notice::{PlanNotice, Seat};
use crate::errors::chain;
use crate::net::PeerInfo;
use crate::shard::capacity::Capacity;

pub(crate) use events::{Action, EpochEnd, Event, Loss};
pub(crate) use rules::{FINISHED_EPOCH, ResumePoint, Rules, restricted};

/// Wait before counting the members left after a failure.
pub(crate) const REPLAN_GRACE: Duration = Duration::from_millis(1000);
/// Longest a forming node goes without a look at the peer book. It looks whenever the peer
/// book changes (the driver sends a [`Event::Tick`] then); this bound only catches what changes
/// with no event, such as an unconnected peer's announcement growing too old to count.
pub(crate) const LOOK_EVERY: Duration = Duration::from_secs(1);
/// Shortest time between two looks: peers choose how often they announce, and each
/// announcement changes the peer book, so a flood of them must not become a flood of looks.
pub(crate) const LOOK_GAP: Duration = Duration::from_millis(100);
/// Longest the first plan waits for its link probes: past it, the issuer plans with the
/// links it has (none: the planner's default link), so a member that neither answers nor
/// fails a probe does not hold the run back. The driver bounds each probe push tighter
/// (`members::PROBE_DEADLINE`); this bound holds whatever the probes do.
pub(crate) const PROBE_BUDGET: Duration = Duration::from_secs(25);
/// Re-plans tolerated in a row with no progress between them (the resume step the same)
/// before giving up: a pipeline that cannot get going stops, one that trains between re-plans
/// never does (a member that forces re-plans slows the run, it cannot end it).
pub(crate) const MAX_REPLANS: u32 = 8;
/// Most epochs a plan notice may be ahead of the one this node runs or awaits: each re-plan,
/// re-balance or join moves one epoch, and a node misses at most a few while it stops.
pub(crate) const MAX_EPOCH_STEP: u64 = 16;

/// Break reports kept for an epoch this node does not run yet.
const BROKEN_KEPT: usize = 16;

/// Why a running stage is being stopped.
#[derive(Debug, Clone)]
#[expect(clippy::large_enum_variant, reason = "at most one per running epoch")]
enum Stopping {
    /// A valid notice of a later epoch arrived (kept in `Membership::later`).
    Superseded,
    /// A member of this epoch reported its chain broken.
    Broken(PeerId),
    /// This node (the issuer) adopted a re-balanced plan.
    Rebalance(PlanNotice),
}

/// What a failed notice send leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnSendFailure {
    /// The run fails.
    Fail,
    /// The pipeline re-plans without the member that could not be reached.
    Replan,
}

#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per node, replaced a few times per plan epoch"
)]
enum Phase {
    Forming {
        deadline: Instant,
    },
    Probing {
        members: Vec<(PeerId, Capacity)>,
        /// The signed announcements the members' capacities were read from.
        pool: Vec<bytes::Bytes>,
        deadline: Instant,
    },
    Awaiting {
        leader: PeerId,
        epoch: u64,
        deadline: Instant,
        /// For a re-plan's notice: the plan that broke and where the next resumes (the
        /// survivors are looked at again when the peer book changes).
        replanning: Option<Box<Replanning>>,
    },
    Sending {
        notice: PlanNotice,
        on_failure: OnSendFailure,
    },
    Running {
        notice: PlanNotice,
        seat: Seat,
        stopping: Option<Stopping>,
        /// When it started here.
        since: Instant,
    },
    Grace {
        previous: PlanNotice,
        resume: ResumePoint,
        until: Instant,
    },
    Over,
}

/// What a survivor awaiting the re-planning member's notice keeps, to choose another one
/// when that member leaves or finishes meanwhile.
#[derive(Debug)]
struct Replanning {
    previous: PlanNotice,
    resume: ResumePoint,
}

/// One node's view of the pipeline's membership (see the module docs).
#[derive(Debug)]
pub(crate) struct Membership {
    me: PeerId,
    own: Capacity,
    rules: Rules,
    phase: Phase,
    replans: u32,
    /// Re-plans since the resume step last moved (bounded by [`MAX_REPLANS`]).
    stalled: u32,
    /// The resume step of the last re-plan.
    replanned_at: u64,
    /// A later plan notice whose issuer this node does not see entitled yet (see
    /// [`Rules::entitled`]), or that waits for the running epoch to settle: adopted once it
    /// may be, refused past its deadline.
    held: Option<entitled::Held>,
    /// A break report of the running epoch that waits for it to settle.
    held_report: Option<PeerId>,
    /// This node's re-balance of the running epoch, waiting for it to settle.
    rebalance: Option<PlanNotice>,
    /// Members that broke the protocol, planned out of the plans this node issues.
    blame: blame::Blame,
    /// The time of the latest event that told it.
    clock: Instant,
    /// The latest valid notice of an epoch later than the one running: it decides how the
    /// running epoch ends, however its stage ends (bar finishing).
    later: Option<PlanNotice>,
    /// Break reports (reporter, epoch) for epochs not running yet: a member may run the next
    /// plan, and lose a neighbour, before this node has its notice.
    broken_later: Vec<(PeerId, u64)>,
    /// When it last looked at the peer book.
    last_look: Option<Instant>,
    /// Plan notices refused.
    refused_notices: u64,
}

impl Membership {
    /// A node that starts forming at `now` with its measured capacity `own`; the first
    /// actions look at the peer book at once.
    pub(crate) fn new(
        me: PeerId,
        own: Capacity,
        rules: Rules,
        now: Instant,
    ) -> (Self, Vec<Action>) {
        let deadline = now + rules.form_timeout;
        let membership = Self {
            me,
            own,
            rules,
            phase: Phase::Forming { deadline },
            replans: 0,
            stalled: 0,
            replanned_at: 0,
            held: None,
            held_report: None,
            rebalance: None,
            blame: blame::Blame::default(),
            clock: now,
            later: None,
            broken_later: Vec::new(),
            last_look: None,
            refused_notices: 0,
        };
        (membership, vec![Action::Wake(now)])
    }

    /// Re-plans so far.
    pub(crate) fn replans(&self) -> u32 {
        self.replans
    }

    /// Members this node plans out of the plans it issues, for breaking the protocol.
    pub(crate) fn excluded(&self) -> &[PeerId] {
        self.blame.excluded()
    }

    /// Plan notices refused so far (invalid, or not from whom the phase allows).
    pub(crate) fn refused_notices(&self) -> u64 {
        self.refused_notices
    }

    /// Whether the driver should send a [`Event::Tick`] whenever the peer book changes (while
    /// forming: who the members are is read from it).
    pub(crate) fn watches_peers(&self) -> bool {
        matches!(
            self.phase,
            Phase::Forming { .. }
                | Phase::Awaiting {
                    replanning: Some(_),
                    ..
                }
        ) || self.holds()
    }

    /// When to look at the peer book after it changed at `now`: at once, unless the last look
    /// was less than [`LOOK_GAP`] ago.
    pub(crate) fn look_after_change(&self, now: Instant) -> Instant {
        self.last_look
            .map_or(now, |last| (last + LOOK_GAP).max(now))
    }

    /// Whether the driver should hand it inbound control messages now. While it sends a notice
    /// or waits out the grace before a re-plan, messages stay queued (a notice from another
    /// member is judged once this node knows which plan it runs).
    pub(crate) fn receptive(&self) -> bool {
        !matches!(self.phase, Phase::Sending { .. } | Phase::Grace { .. })
    }

    /// The epoch whose stage runs, if one does.
    #[cfg(test)]
    pub(crate) fn running_epoch(&self) -> Option<u64> {
        match &self.phase {
            Phase::Running { notice, .. } => Some(notice.epoch),
            _ => None,
        }
    }

    /// Moves the state machine on by one event.
    pub(crate) fn handle(&mut self, event: Event) -> Vec<Action> {
        if let Some(now) = event.now() {
            self.clock = self.clock.max(now);
        }
        match event {
            Event::Tick {
                now,
                wall_ms,
                peers,
            } => self.on_tick(now, wall_ms, &peers),
            Event::Notice { now, from, payload } => self.on_notice(now, from, &payload),
            Event::Broken {
                now,
                from,
                epoch,
                blame,
            } => self.on_broken(now, from, epoch, blame),
            Event::Probed { now, links } => self.on_probed(now, links),
            Event::Sent {
                now,
                epoch,
                result,
                resume,
            } => self.on_sent(now, epoch, result, resume),
            Event::StageEnded { now, end, resume } => self.on_stage_ended(now, end, resume),
            Event::Rebalance { now, notice } => self.on_rebalance(now, notice),
        }
    }

    fn send(
        &mut self,
        notice: PlanNotice,
        previous: Option<PlanNotice>,
        on_failure: OnSendFailure,
    ) -> Vec<Action> {
        self.phase = Phase::Sending {
            notice: notice.clone(),
            on_failure,
        };
        vec![Action::SendNotice { notice, previous }]
    }

    fn on_sent(
        &mut self,
        now: Instant,
        epoch: u64,
        result: Result<(), PipelineError>,
        resume: ResumePoint,
    ) -> Vec<Action> {
        let Phase::Sending { notice, on_failure } = &self.phase else {
            return Vec::new();
        };
        if notice.epoch != epoch {
            return Vec::new();
        }
        let (notice, on_failure) = (notice.clone(), *on_failure);
        match result {
            Ok(()) => self.adopt(notice),
            // A member left between the look and the notice: the members that took it run it,
            // the others the old plan; a re-plan without the member that is gone reaches both.
            // Only a member out of reach calls for it: other failures (no snapshot to send, the
            // network gone) would re-plan from less than the run holds.
            Err(err @ (PipelineError::Send { .. } | PipelineError::PeerSilent { .. }))
                if on_failure == OnSendFailure::Replan =>
            {
                self.lost(now, notice, resume, err)
            }
            Err(err) => self.fail(err),
        }
    }

    fn on_notice(&mut self, now: Instant, from: PeerId, payload: &[u8]) -> Vec<Action> {
        let notice = match self.rules.check_notice(from, payload, self.me) {
            Ok(notice) => notice,
            Err(err) => {
                self.refused_notices += 1;
                // A peer chooses how many it sends: the 1st, 2nd, 4th, 8th… are logged.
                let refused = self.refused_notices;
                if refused.is_power_of_two() {
                    tracing::warn!(peer = %from, err = %chain(&err), refused, "plan notice refused");
                } else {
                    tracing::debug!(peer = %from, err = %chain(&err), refused, "plan notice refused");
                }
                return Vec::new();
            }
        };
        match &mut self.phase {
            // A node about to issue the first plan takes a valid one that came first.
            Phase::Forming { .. } | Phase::Probing { .. } => self.adopt(notice),
            Phase::Awaiting {
                epoch,
                leader,
                replanning,
                ..
            } if notice.epoch >= *epoch && notice.epoch <= epoch.saturating_add(MAX_EPOCH_STEP) => {
                // A re-plan counts from the member re-planning (or one this node comes to see
                // entitled); a newcomer takes its first plan from whoever plans it in.
                if replanning.is_none() || from == *leader {
                    self.adopt(notice)
                } else {
                    self.later_notice(now, from, notice)
                }
            }
            Phase::Running {
                notice: running, ..
            } if notice.epoch > running.epoch => {
                // Only a member of the running plan issues the next one — and of those only
                // the entitled (`entitled`): the re-planning survivor, the watcher re-balancing
                // or planning a newcomer in — and epochs advance by small steps: a notice a
                // stranger wrote itself into, or one that jumps far ahead (and would make every
                // later honest notice look old), does not end the epoch.
                if !running.is_member(&from)
                    || notice.epoch > running.epoch.saturating_add(MAX_EPOCH_STEP)
                {
                    self.refused_notices += 1;
                    tracing::warn!(epoch = notice.epoch, running = running.epoch, peer = %from, "later plan notice refused: not from a member of the running plan, or too far ahead");
                    return Vec::new();
                }
                self.later_notice(now, from, notice)
            }
            _ => {
                tracing::debug!(epoch = notice.epoch, peer = %from, ?now, "plan notice not for this phase, dropped");
                Vec::new()
            }
        }
    }

    fn on_broken(
        &mut self,
        now: Instant,
        from: PeerId,
        epoch: u64,
        blame: Option<PeerId>,
    ) -> Vec<Action> {
        let running = match &self.phase {
            Phase::Running { notice, .. } => Some(notice.epoch),
            Phase::Over => return Vec::new(),
            _ => None,
        };
        if running.is_none_or(|running| epoch > running) {
            // For a plan this node does not run yet: judged once it does.
            if !self.broken_later.contains(&(from, epoch)) {
                if self.broken_later.len() >= BROKEN_KEPT {
                    self.broken_later.remove(0);
                }
                self.broken_later.push((from, epoch));
            }
            return Vec::new();
        }
        let Phase::Running {
            notice, stopping, ..
        } = &mut self.phase
        else {
            return Vec::new();
        };
        let current = epoch == notice.epoch && notice.is_planned(&from);
        if let Some(accused) = blame.filter(|_| current) {
            self.blame.reported(notice, self.me, from, accused);
        }
        if !current || stopping.is_some() {
            return Vec::new();
        }
        self.broken_report(now, from)
    }

    fn on_stage_ended(
        &mut self,
        now: Instant,
        end: Result<EpochEnd, PipelineError>,
        resume: ResumePoint,
    ) -> Vec<Action> {
        let Phase::Running {
            notice,
            seat,
            stopping,
            ..
        } = std::mem::replace(&mut self.phase, Phase::Over)
        else {
            return Vec::new();
        };
        let lost = match end {
            Err(err) => return self.fail(err),
            Ok(EpochEnd::Finished) => {
                // A later plan still held never came from an entitled issuer in time.
                self.drop_held();
                return vec![Action::Finish {
                    notice,
                    seat: Some(seat),
                }];
            }
            Ok(EpochEnd::Stopped) => None,
            Ok(EpochEnd::NeighbourLost { peer, cause }) => {
                if matches!(cause, Loss::Misbehaved(_)) {
                    self.blame.observed(&notice, peer);
                }
                Some(cause.into_error(peer))
            }
        };
        // A valid later plan decides, however the stage ended (stopped for it, or a neighbour
        // lost meanwhile: its members moved on).
        if let Some(next) = self.later.take() {
            if !self.count_replan(resume.step) {
                return self.fail(PipelineError::Formation(format!(
                    "{MAX_REPLANS} re-plans in a row without progress; giving up"
                )));
            }
            return self.adopt(next);
        }
        match (lost, stopping) {
            (Some(err), _) => self.lost(now, notice, resume, err),
            (None, Some(Stopping::Rebalance(mut next))) => {
                (next.previous_ranges, next.resume_step) = (resume.ranges, resume.step);
                if !self.count_replan(next.resume_step) {
                    return self.fail(PipelineError::Formation(format!(
                        "{MAX_REPLANS} re-plans in a row without progress; giving up"
                    )));
                }
                self.send(next, Some(notice), OnSendFailure::Replan)
            }
            (None, Some(Stopping::Broken(reporter))) => {
                let err = PipelineError::ChainBroken { peer: reporter };
                self.lost(now, notice, resume, err)
            }
            // A stop for a later plan keeps that plan in `later`, taken above.
            (None, Some(Stopping::Superseded) | None) => self.fail(PipelineError::Protocol(
                "the stage stopped with no plan to go on with".into(),
            )),
        }
    }

    /// Counts a re-plan resuming at `step`; false when it would be one too many in a row
    /// without progress.
    fn count_replan(&mut self, step: u64) -> bool {
        if step > self.replanned_at {
            (self.replanned_at, self.stalled) = (step, 0);
        }
        if self.stalled >= MAX_REPLANS {
            return false;
        }
        self.stalled += 1;
        self.replans += 1;
        true
    }

    /// `previous` broke (`err`): re-plan after the grace, or fail when the run keeps no
    /// snapshots or has re-planned too often. Also after a re-balanced notice could not reach
    /// every member: the run re-plans from it, its own resume point included.
    fn lost(
        &mut self,
        now: Instant,
        previous: PlanNotice,
        resume: ResumePoint,
        err: PipelineError,
    ) -> Vec<Action> {
        if !self.rules.replans || !self.count_replan(resume.step) {
            return self.fail(err);
        }
        tracing::warn!(err = %chain(&err), epoch = previous.epoch, "pipeline broken; re-planning");
        let until = now + REPLAN_GRACE;
        self.phase = Phase::Grace {
            previous,
            resume,
            until,
        };
        vec![Action::Wake(until)]
    }

    /// The re-plan after `previous` broke (see [`Rules::survivors`]): issued here, or awaited
    /// from the re-planning member until `deadline`.
    fn replan(
        &mut self,
        deadline: Instant,
        previous: &PlanNotice,
        resume: ResumePoint,
        peers: &[PeerInfo],
    ) -> Vec<Action> {
        let epoch = previous.epoch + 1;
        let (survivors, leader) = match self.rules.survivors(previous, peers, self.me) {
            Ok(found) => found,
            Err(err) => return self.fail(err),
        };
        tracing::warn!(epoch, survivors = survivors.len(), %leader, "re-planning the pipeline");
        if leader != self.me {
            self.phase = Phase::Awaiting {
                leader,
                epoch,
                deadline,
                replanning: Some(Box::new(Replanning {
                    previous: previous.clone(),
                    resume,
                })),
            };
            return vec![
                Action::ReportBroken {
                    to: leader,
                    epoch: previous.epoch,
                    blame: self.blame.take_report(),
                },
                Action::Wake(deadline),
            ];
        }
        // The leader is the lowest survivor in every member's view; who is planned is its
        // choice, less the members that broke the protocol (see `blame`) — unless the others
        // cannot hold the model without them: then they stay in (a member falsely blamed must
        // not end the run; one that breaks the protocol again spends the no-progress budget).
        let excluded = self.blame.excluded();
        let trusted: Vec<PeerId> = (survivors.iter().copied())
            .filter(|s| *s == self.me || !excluded.contains(s))
            .collect();
        let computed = match self.plan_over(epoch, previous, &trusted, peers) {
            Err(err) if trusted.len() < survivors.len() => {
                tracing::warn!(err = %chain(&err), "the members not blamed cannot hold the model; the blamed stay in");
                self.plan_over(epoch, previous, &survivors, peers)
            }
            computed => computed,
        };
        match computed {
            Ok(mut notice) => {
                (notice.previous_ranges, notice.resume_step) = (resume.ranges, resume.step);
                self.send(notice, Some(previous.clone()), OnSendFailure::Fail)
            }
            Err(err) => self.fail(err),
        }
    }

    /// The next epoch's plan of `members` after `previous`, citing their capacities.
    fn plan_over(
        &self,
        epoch: u64,
        previous: &PlanNotice,
        members: &[PeerId],
        peers: &[PeerInfo],
    ) -> Result<PlanNotice, PipelineError> {
        let mut input = rules::restricted(&previous.input, members);
        let origin = (&self.rules.run, &self.rules.model);
        let known = (&previous.citations[..], peers);
        let cited = citations::cite_known(&mut input, self.me, known, origin)?;
        let mut notice =
            PlanNotice::compute(epoch, previous.placement, members, input, previous.replicas)?;
        notice.citations = cited;
        Ok(notice)
    }

    /// Runs `notice`: this node's stage if the plan seats it, else the run is over for it.
    fn adopt(&mut self, notice: PlanNotice) -> Vec<Action> {
        let seat = notice.seat(&self.me);
        tracing::info!(
            epoch = notice.epoch,
            ?seat,
            resume = notice.resume_step,
            "plan agreed"
        );
        let announce = Action::Announce(notice.epoch);
        let Some(seat) = seat else {
            self.phase = Phase::Over;
            return vec![announce, Action::Finish { notice, seat: None }];
        };
        self.later = self.later.take().filter(|l| l.epoch > notice.epoch);
        self.blame.epoch_over();
        // A member of this plan may have lost a neighbour before this node had the notice.
        let reporter = self
            .broken_later
            .iter()
            .find(|(p, e)| *e == notice.epoch && notice.is_planned(p))
            .map(|(p, _)| *p);
        self.broken_later.retain(|(_, e)| *e > notice.epoch);
        self.phase = Phase::Running {
            notice: notice.clone(),
            seat,
            stopping: None,
            since: self.clock,
        };
        let mut actions = vec![announce, Action::StartStage { notice, seat }];
        if let Some(reporter) = reporter {
            tracing::warn!(peer = %reporter, "a chain of this plan broke before it started here");
            actions.extend(self.broken_report(self.clock, reporter));
        }
        actions
    }

    fn fail(&mut self, err: PipelineError) -> Vec<Action> {
        self.phase = Phase::Over;
        vec![Action::Fail(err)]
    }
}
