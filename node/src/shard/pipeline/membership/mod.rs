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

mod rules;
#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::PipelineError;
use super::notice::{PlanNotice, Seat};
use crate::errors::chain;
use crate::net::{PeerInfo, TransferError};
use crate::shard::capacity::Capacity;
use crate::shard::planner::Link;

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
/// Re-plans tolerated per run before giving up.
pub(crate) const MAX_REPLANS: u32 = 8;

/// How one plan epoch of this node's stage ended (not an error: each leads to the next epoch
/// or to the end of the run).
#[derive(Debug)]
pub(crate) enum EpochEnd {
    /// Every step of the run is done.
    Finished,
    /// The driver stopped the stage (a later plan, a break report, a re-balance).
    Stopped,
    /// A neighbour went silent or could not be reached.
    NeighbourLost {
        /// The neighbour.
        peer: PeerId,
        /// How it was lost.
        cause: Loss,
    },
}

/// How a neighbour was lost.
#[derive(Debug)]
pub(crate) enum Loss {
    /// Nothing arrived from it within the deadline.
    Silent(Duration),
    /// A send to it failed for good.
    Send(Box<TransferError>),
}

impl Loss {
    /// The error losing `peer` this way becomes when the run cannot re-plan.
    fn into_error(self, peer: PeerId) -> PipelineError {
        match self {
            Loss::Silent(waited) => PipelineError::PeerSilent { peer, waited },
            Loss::Send(error) => PipelineError::Send { peer, error },
        }
    }
}

/// Something the driver saw.
#[derive(Debug)]
pub(crate) enum Event {
    /// A look at the peer book, asked for by [`Action::Wake`].
    Tick {
        /// When.
        now: Instant,
        /// The wall clock now, in ms since the Unix epoch: the clock of announcements
        /// (`PeerInfo::last_seen_ms`), against which a peer counts as recently seen.
        wall_ms: u64,
        /// The peer book.
        peers: Vec<PeerInfo>,
    },
    /// A plan notice arrived (undecoded).
    Notice {
        /// When.
        now: Instant,
        /// The (authenticated) sender.
        from: PeerId,
        /// The encoded notice.
        payload: Vec<u8>,
    },
    /// A member reported its chain of `epoch` broken.
    Broken {
        /// The member.
        from: PeerId,
        /// The epoch it ran.
        epoch: u64,
    },
    /// The link probes of [`Action::Probe`] are done.
    Probed {
        /// When.
        now: Instant,
        /// The links measured.
        links: Vec<Link>,
    },
    /// The send of [`Action::SendNotice`] for `epoch` ended.
    Sent {
        /// When.
        now: Instant,
        /// The notice's epoch.
        epoch: u64,
        /// Whether every planned member got it.
        result: Result<(), PipelineError>,
        /// Where a plan after this one would resume (from the snapshots held now).
        resume: ResumePoint,
    },
    /// This node's stage ended.
    StageEnded {
        /// When.
        now: Instant,
        /// How.
        end: Result<EpochEnd, PipelineError>,
        /// Where a next plan would resume (from the snapshots held now).
        resume: ResumePoint,
    },
    /// The re-balancing watch proposes the next epoch's plan.
    Rebalance(PlanNotice),
}

/// Something the driver must do.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "a few per plan epoch, moved once: boxing the notices buys nothing"
)]
pub(crate) enum Action {
    /// Look at the peer book at this time and report it ([`Event::Tick`]).
    Wake(Instant),
    /// Measure the links to these members ([`Event::Probed`]).
    Probe(Vec<PeerId>),
    /// Send `notice` to its members ([`Event::Sent`]); with `previous`, also the snapshots
    /// of `previous`'s ranges at the resume step to the members outside this node's chain of
    /// `previous` and to restarted ones.
    SendNotice {
        /// The notice.
        notice: PlanNotice,
        /// The plan it follows, when it resumes from snapshots.
        previous: Option<PlanNotice>,
    },
    /// Tell `to` (the member re-planning) that this node's chain of `epoch` broke.
    ReportBroken {
        /// The re-planning member.
        to: PeerId,
        /// The epoch that broke.
        epoch: u64,
    },
    /// Announce the plan epoch this node runs.
    Announce(u64),
    /// Run this node's stage of `notice` at `seat` (and, if it is the issuer, watch for
    /// joins and drift).
    StartStage {
        /// The plan.
        notice: PlanNotice,
        /// Where this node sits.
        seat: Seat,
    },
    /// Stop the running stage (it ends with [`EpochEnd::Stopped`]).
    StopStage,
    /// The run is over for this node; `seat` is None when the last plan left it out.
    Finish {
        /// The last plan.
        notice: PlanNotice,
        /// Where this node sat.
        seat: Option<Seat>,
    },
    /// The run failed.
    Fail(PipelineError),
}

/// Break reports kept for an epoch this node does not run yet.
const BROKEN_KEPT: usize = 16;

/// Why a running stage is being stopped.
#[derive(Debug, Clone)]
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
        deadline: Instant,
    },
    Awaiting {
        leader: PeerId,
        epoch: u64,
        deadline: Instant,
    },
    Sending {
        notice: PlanNotice,
        on_failure: OnSendFailure,
    },
    Running {
        notice: PlanNotice,
        seat: Seat,
        stopping: Option<Stopping>,
    },
    Grace {
        previous: PlanNotice,
        resume: ResumePoint,
        until: Instant,
    },
    Over,
}

/// One node's view of the pipeline's membership (see the module docs).
#[derive(Debug)]
pub(crate) struct Membership {
    me: PeerId,
    own: Capacity,
    rules: Rules,
    phase: Phase,
    replans: u32,
    /// The latest valid notice of an epoch later than the one running: it decides how the
    /// running epoch ends, however its stage ends (bar finishing).
    later: Option<PlanNotice>,
    /// Break reports (reporter, epoch) for epochs not running yet: a member may run the next
    /// plan, and lose a neighbour, before this node has its notice.
    broken_later: Vec<(PeerId, u64)>,
    /// When it last looked at the peer book.
    last_look: Option<Instant>,
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
            later: None,
            broken_later: Vec::new(),
            last_look: None,
        };
        (membership, vec![Action::Wake(now)])
    }

    /// Re-plans so far.
    pub(crate) fn replans(&self) -> u32 {
        self.replans
    }

    /// Whether the driver should send a [`Event::Tick`] whenever the peer book changes (while
    /// forming: who the members are is read from it).
    pub(crate) fn watches_peers(&self) -> bool {
        matches!(self.phase, Phase::Forming { .. })
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
        match event {
            Event::Tick {
                now,
                wall_ms,
                peers,
            } => self.on_tick(now, wall_ms, &peers),
            Event::Notice { now, from, payload } => self.on_notice(now, from, &payload),
            Event::Broken { from, epoch } => self.on_broken(from, epoch),
            Event::Probed { now, links } => self.on_probed(now, links),
            Event::Sent {
                now,
                epoch,
                result,
                resume,
            } => self.on_sent(now, epoch, result, resume),
            Event::StageEnded { now, end, resume } => self.on_stage_ended(now, end, resume),
            Event::Rebalance(notice) => self.on_rebalance(notice),
        }
    }

    fn on_tick(&mut self, now: Instant, wall_ms: u64, peers: &[PeerInfo]) -> Vec<Action> {
        self.last_look = Some(now);
        match &self.phase {
            Phase::Forming { deadline } => {
                let deadline = *deadline;
                self.form(now, wall_ms, deadline, peers)
            }
            Phase::Probing { deadline, .. } if now >= *deadline => {
                tracing::warn!(
                    budget = ?PROBE_BUDGET,
                    "link probes did not finish in time; planning with the default link"
                );
                self.on_probed(now, Vec::new())
            }
            Phase::Probing { deadline, .. } => vec![Action::Wake(*deadline)],
            Phase::Awaiting {
                leader, deadline, ..
            } if now >= *deadline => self.fail(PipelineError::PeerSilent {
                peer: *leader,
                waited: self.rules.form_timeout,
            }),
            Phase::Awaiting { deadline, .. } => vec![Action::Wake(*deadline)],
            Phase::Grace { until, .. } if now < *until => vec![Action::Wake(*until)],
            Phase::Grace { .. } => {
                let Phase::Grace {
                    previous, resume, ..
                } = std::mem::replace(&mut self.phase, Phase::Over)
                else {
                    return Vec::new();
                };
                self.replan(now, &previous, resume, peers)
            }
            _ => Vec::new(),
        }
    }

    /// One look while forming (see the module docs).
    fn form(
        &mut self,
        now: Instant,
        wall_ms: u64,
        deadline: Instant,
        peers: &[PeerInfo],
    ) -> Vec<Action> {
        if let Some(running) = self.rules.running_leader(peers, wall_ms) {
            tracing::info!(%running, "a pipeline of this run is running; waiting to be planned in");
            self.phase = Phase::Awaiting {
                leader: running,
                epoch: 1,
                deadline,
            };
            return vec![Action::Wake(deadline)];
        }
        let mut members = self.rules.candidates(peers, wall_ms);
        members.retain(|(p, _)| *p != self.me);
        members.push((self.me, self.own));
        let found = members.len();
        if found >= self.rules.members {
            members.sort_by_key(|(peer, _)| peer.to_string());
            members.truncate(self.rules.members);
            if let Some((leader, _)) = members
                .first()
                .filter(|_| members.iter().any(|(p, _)| *p == self.me))
            {
                let leader = *leader;
                if leader == self.me {
                    let others = members
                        .iter()
                        .map(|(p, _)| *p)
                        .filter(|p| *p != self.me)
                        .collect();
                    let deadline = now + PROBE_BUDGET;
                    self.phase = Phase::Probing { members, deadline };
                    return vec![Action::Probe(others), Action::Wake(deadline)];
                }
                self.phase = Phase::Awaiting {
                    leader,
                    epoch: 1,
                    deadline,
                };
                return vec![Action::Wake(deadline)];
            }
            // Not among the members of the pipeline being formed: once it runs, it plans
            // newcomers in.
            if now >= deadline {
                return self.fail(PipelineError::Formation(
                    "more members than needed; this node is not among them".into(),
                ));
            }
        } else if now >= deadline {
            return self.fail(PipelineError::Formation(format!(
                "{found} of {} members found within {:?}",
                self.rules.members, self.rules.form_timeout
            )));
        }
        vec![Action::Wake(now + LOOK_EVERY)]
    }

    fn on_probed(&mut self, _now: Instant, links: Vec<Link>) -> Vec<Action> {
        let Phase::Probing { members, .. } = &self.phase else {
            return Vec::new();
        };
        let ids: Vec<PeerId> = members.iter().map(|(p, _)| *p).collect();
        let input = self.rules.plan_input(members, links);
        if let Ok(json) = serde_json::to_string(&input) {
            tracing::debug!(input = %json, "planner input");
        }
        match PlanNotice::compute(1, self.rules.placement, &ids, input, self.rules.replicas) {
            Ok(notice) => self.send(notice, None, OnSendFailure::Fail),
            Err(err) => self.fail(err),
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
                tracing::warn!(peer = %from, err = %chain(&err), "plan notice refused");
                return Vec::new();
            }
        };
        match &mut self.phase {
            // A node about to issue the first plan takes a valid one that came first.
            Phase::Forming { .. } | Phase::Probing { .. } => self.adopt(notice),
            Phase::Awaiting { epoch, .. } if notice.epoch >= *epoch => self.adopt(notice),
            Phase::Running {
                notice: running,
                stopping,
                ..
            } if notice.epoch > running.epoch => {
                tracing::info!(epoch = notice.epoch, peer = %from, "a later plan arrived");
                if self.later.as_ref().is_none_or(|l| notice.epoch > l.epoch) {
                    self.later = Some(notice);
                }
                if stopping.is_some() {
                    return Vec::new();
                }
                *stopping = Some(Stopping::Superseded);
                vec![Action::StopStage]
            }
            _ => {
                tracing::debug!(epoch = notice.epoch, peer = %from, ?now, "plan notice not for this phase, dropped");
                Vec::new()
            }
        }
    }

    fn on_broken(&mut self, from: PeerId, epoch: u64) -> Vec<Action> {
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
        if !current || stopping.is_some() {
            return Vec::new();
        }
        tracing::warn!(peer = %from, epoch, "a chain of this plan broke; re-planning");
        *stopping = Some(Stopping::Broken(from));
        vec![Action::StopStage]
    }

    fn on_rebalance(&mut self, notice: PlanNotice) -> Vec<Action> {
        let Phase::Running {
            notice: running,
            stopping,
            ..
        } = &mut self.phase
        else {
            return Vec::new();
        };
        if stopping.is_some() || notice.epoch != running.epoch + 1 {
            return Vec::new();
        }
        *stopping = Some(Stopping::Rebalance(notice));
        vec![Action::StopStage]
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
        } = std::mem::replace(&mut self.phase, Phase::Over)
        else {
            return Vec::new();
        };
        let lost = match end {
            Err(err) => return self.fail(err),
            Ok(EpochEnd::Finished) => {
                return vec![Action::Finish {
                    notice,
                    seat: Some(seat),
                }];
            }
            Ok(EpochEnd::Stopped) => None,
            Ok(EpochEnd::NeighbourLost { peer, cause }) => Some(cause.into_error(peer)),
        };
        // A valid later plan decides, however the stage ended (stopped for it, or a neighbour
        // lost meanwhile: its members moved on).
        if let Some(next) = self.later.take() {
            if self.replans >= MAX_REPLANS {
                return self.fail(PipelineError::Formation(format!(
                    "{MAX_REPLANS} re-plans; giving up"
                )));
            }
            self.replans += 1;
            return self.adopt(next);
        }
        match (lost, stopping) {
            (Some(err), _) => self.lost(now, notice, resume, err),
            (None, Some(Stopping::Rebalance(mut next))) => {
                (next.previous_ranges, next.resume_step) = (resume.ranges, resume.step);
                self.replans += 1;
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
        if !self.rules.replans || self.replans >= MAX_REPLANS {
            return self.fail(err);
        }
        tracing::warn!(err = %chain(&err), epoch = previous.epoch, "pipeline broken; re-planning");
        self.replans += 1;
        let until = now + REPLAN_GRACE;
        self.phase = Phase::Grace {
            previous,
            resume,
            until,
        };
        vec![Action::Wake(until)]
    }

    /// The re-plan after `previous` broke (see [`Rules::survivors`]).
    fn replan(
        &mut self,
        now: Instant,
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
                deadline: now + self.rules.form_timeout,
            };
            return vec![
                Action::ReportBroken {
                    to: leader,
                    epoch: previous.epoch,
                },
                Action::Wake(now + self.rules.form_timeout),
            ];
        }
        let input = rules::restricted(&previous.input, &survivors);
        let computed = PlanNotice::compute(
            epoch,
            previous.placement,
            &survivors,
            input,
            previous.replicas,
        );
        match computed {
            Ok(mut notice) => {
                (notice.previous_ranges, notice.resume_step) = (resume.ranges, resume.step);
                self.send(notice, Some(previous.clone()), OnSendFailure::Fail)
            }
            Err(err) => self.fail(err),
        }
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
            stopping: reporter.map(Stopping::Broken),
        };
        let mut actions = vec![announce, Action::StartStage { notice, seat }];
        if let Some(reporter) = reporter {
            tracing::warn!(peer = %reporter, "a chain of this plan broke before it started here; re-planning");
            actions.push(Action::StopStage);
        }
        actions
    }

    fn fail(&mut self, err: PipelineError) -> Vec<Action> {
        self.phase = Phase::Over;
        vec![Action::Fail(err)]
    }
}
