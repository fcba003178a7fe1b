//! What goes into and comes out of [`Membership`](super::Membership): the [`Event`]s the
//! driver hands it, the [`Action`]s it returns, and how an epoch of the stage ended
//! ([`EpochEnd`]).

use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::super::PipelineError;
use super::super::notice::{PlanNotice, Seat};
use super::ResumePoint;
use crate::net::{PeerInfo, TransferError};
use crate::shard::planner::Link;

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
    /// It sent a stage message that breaks the protocol.
    Misbehaved(Box<PipelineError>),
}

impl Loss {
    /// The error losing `peer` this way becomes when the run cannot re-plan.
    pub(super) fn into_error(self, peer: PeerId) -> PipelineError {
        match self {
            Loss::Silent(waited) => PipelineError::PeerSilent { peer, waited },
            Loss::Send(error) => PipelineError::Send { peer, error },
            Loss::Misbehaved(cause) => PipelineError::Misbehaved { peer, cause },
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
        /// When.
        now: Instant,
        /// The member.
        from: PeerId,
        /// The epoch it ran.
        epoch: u64,
        /// The neighbour it blames for breaking the protocol, if any.
        blame: Option<PeerId>,
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
    Rebalance {
        /// When.
        now: Instant,
        /// The proposed notice.
        notice: PlanNotice,
    },
}

impl Event {
    /// When it happened, where it says.
    pub(crate) fn now(&self) -> Option<Instant> {
        match self {
            Event::Tick { now, .. }
            | Event::Notice { now, .. }
            | Event::Broken { now, .. }
            | Event::Probed { now, .. }
            | Event::Sent { now, .. }
            | Event::StageEnded { now, .. }
            | Event::Rebalance { now, .. } => Some(*now),
        }
    }
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
        /// The neighbour this node blames for breaking the protocol, if any.
        blame: Option<PeerId>,
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
