//! Members that broke the pipeline protocol, and who is planned out for it.
//!
//! A neighbour that sends stage messages out of protocol (a malformed tensor, a micro-batch or
//! step out of place) ends this node's epoch like one that went silent
//! ([`Loss::Misbehaved`](super::Loss)), and the run re-plans. Unlike silence — which a slow
//! link, or a stall further down the chain, also causes — honest members never do that, so the
//! member is blamed: left out of every plan this node issues (re-plans and re-balances alike),
//! or else it would be planned back in and repeat until the no-progress budget ended the run.
//!
//! Stage messages travel over authenticated streams, unsigned: there is no evidence another
//! member could check. The issuer chooses a plan's members, so no agreement is needed, only a
//! rule for whose word it takes:
//! - its own observation: the neighbour is planned out;
//! - a member's break report that blames one of its neighbours in the plan that broke: taken
//!   once per reporter for the run, so a hostile reporter plans out at most one honest member
//!   (and spends its word doing so);
//! - a report that blames this node, which knows it false: the reporter is planned out.
//!
//! When the members not blamed cannot hold the model, the blamed stay in (a false blame must
//! not end the run; a member that breaks the protocol again spends the no-progress budget).
//!
//! What stays open: a successor issuer (the next lowest, once this one left) knows none of
//! it, and a member that breaks the protocol while it holds the lowest id is the issuer.

use libp2p::PeerId;

use super::super::notice::PlanNotice;
use super::rules::MAX_NOTICE_MEMBERS;

/// Who this node blames, and whose blame it took.
#[derive(Debug, Default)]
pub(super) struct Blame {
    /// Members planned out of every plan this node issues.
    excluded: Vec<PeerId>,
    /// Reporters whose blame was taken (one each).
    believed: Vec<PeerId>,
    /// The neighbour that broke the protocol in the epoch that broke here (told the issuer).
    own: Option<PeerId>,
}

impl Blame {
    /// Members this node plans out.
    pub(super) fn excluded(&self) -> &[PeerId] {
        &self.excluded
    }

    /// `peer`, a neighbour of this node in `running`, broke the protocol.
    pub(super) fn observed(&mut self, running: &PlanNotice, peer: PeerId) {
        if !running.is_planned(&peer) {
            return;
        }
        self.own = Some(peer);
        self.exclude(peer, "a neighbour broke the pipeline protocol; planned out");
    }

    /// Whom a break report of this node blames (once: the epoch it was for is over).
    pub(super) fn take_report(&mut self) -> Option<PeerId> {
        self.own.take()
    }

    /// The epoch that broke here is over: nothing left to report.
    pub(super) fn epoch_over(&mut self) {
        self.own = None;
    }

    /// `from`, a planned member of `running`, reports that `accused` broke the protocol.
    pub(super) fn reported(
        &mut self,
        running: &PlanNotice,
        me: PeerId,
        from: PeerId,
        accused: PeerId,
    ) {
        if accused == me {
            self.exclude(from, "a member blamed this node falsely; planned out");
            return;
        }
        if !neighbours(running, from, accused) {
            tracing::warn!(peer = %from, %accused, "blame of a member that is not its neighbour, ignored");
            return;
        }
        if self.believed.contains(&from) || self.excluded.contains(&accused) {
            tracing::info!(peer = %from, %accused, "blame not taken: its reporter's word was taken before, or the member is planned out already");
            return;
        }
        if self.believed.len() < MAX_NOTICE_MEMBERS {
            self.believed.push(from);
        }
        tracing::warn!(peer = %from, %accused, "a member's blame taken");
        self.exclude(accused, "a member blamed a neighbour; planned out");
    }

    fn exclude(&mut self, peer: PeerId, why: &str) {
        if self.excluded.contains(&peer) || self.excluded.len() >= MAX_NOTICE_MEMBERS {
            return;
        }
        tracing::warn!(%peer, "{why}");
        self.excluded.push(peer);
    }
}

/// Whether `a` and `b` sit next to each other in one chain of `plan` (only neighbours
/// exchange stage messages).
fn neighbours(plan: &PlanNotice, a: PeerId, b: PeerId) -> bool {
    match (plan.seat(&a), plan.seat(&b)) {
        (Some(a), Some(b)) => a.lane == b.lane && a.index.abs_diff(b.index) == 1,
        _ => false,
    }
}
