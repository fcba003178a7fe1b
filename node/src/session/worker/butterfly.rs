//! [`Rounds`]: the training thread's side of butterfly averaging. It starts a round when the
//! policy's sync is due (training) or an idle node has news for its group, once its live peer
//! set has settled, or at once when a peer's round reaches it (the pull); it takes in parts,
//! adds the means to the model as they arrive (training goes on meanwhile), and ends rounds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use murmur_protocol::{Digest, PartPhase};

use super::WorkerOutput;
use super::mode::Mode;
use super::shared::Shared;
use crate::averaging::butterfly::{
    Correction, MAX_ROUND_LEAD, PartGate, PartSend, Received, RoundEnd,
};
use crate::averaging::{Butterfly, Rejection};
use crate::session::SessionError;

/// The longest a due round waits for the live peer set to settle.
const MAX_SETTLE_WAIT: Duration = Duration::from_secs(2);
/// How often a due round waiting for its group looks at it again.
const SETTLE_LOOK: Duration = Duration::from_millis(50);

/// When a training thread's butterfly round is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RoundDue {
    /// As the sync policy of a training node says.
    Policy(bool),
    /// When an idle node has news for its group ([`Rounds::idle_due`]), judged after the
    /// round in progress has been moved on.
    IdleNews,
}

/// Butterfly round state: the rounds themselves, and what decides when the next one starts.
pub(super) struct Rounds {
    /// The rounds in progress and recently ended.
    butterfly: Butterfly,
    /// This node's peer id.
    local: PeerId,
    /// The model changed (trained, adopted) since the last round started.
    dirty: bool,
    /// How the last round ended.
    last_round: Option<RoundEnd>,
    /// Since when a round is due but waits for the live peer set to settle.
    round_due_since: Option<Instant>,
}

impl Rounds {
    /// Butterfly rounds of `butterfly`, run by the node `local`.
    pub(super) fn new(butterfly: Butterfly, local: PeerId) -> Self {
        Self {
            butterfly,
            local,
            dirty: true,
            last_round: None,
            round_due_since: None,
        }
    }

    /// Moves the round in progress on, and starts one when it is due or pulled in; returns
    /// whether a round was due.
    fn step(&mut self, shared: &mut Shared, due: RoundDue) -> Result<bool, SessionError> {
        for reason in self.butterfly.take_refusals() {
            tracing::debug!(%reason, "part refused before its payload");
            shared.averager.count_rejection(reason);
        }
        let (sends, end) = self
            .butterfly
            .advance(Instant::now(), shared.averager.anchor())?;
        let idle = !self.butterfly.busy();
        send_parts(shared, sends);
        // Means are added once the round is over (late ones: at the next step with no round
        // in progress): one read and write of the model per round instead of one per part.
        if idle && self.apply_corrections(shared)? && end.is_none() {
            shared.publish();
        }
        if let Some(end) = end {
            self.end_round(shared, end)?;
        }
        // Judged only now: the round that just ended may have been what made it due.
        let due = match due {
            RoundDue::Policy(due) => due,
            RoundDue::IdleNews => self.idle_due(shared),
        };
        let pulled = self.butterfly.pulled();
        if self.butterfly.busy() {
            return Ok(due);
        }
        if !due {
            self.round_due_since = None;
        }
        if pulled.is_some() || (due && self.group_settled(shared)) {
            self.round_due_since = None;
            self.start_round(shared, pulled)?;
        }
        Ok(due)
    }

    /// Whether a due round may start on its own: the live peer set settled (see
    /// `presence`), or the round waited [`MAX_SETTLE_WAIT`] for it (a group that keeps
    /// changing still averages). A round pulled in by a peer never waits.
    fn group_settled(&mut self, shared: &Shared) -> bool {
        if shared.live_peers.settled() {
            return true;
        }
        let since = *self.round_due_since.get_or_insert_with(Instant::now);
        since.elapsed() >= MAX_SETTLE_WAIT
    }

    /// Whether an idle node should start a round: its idle period is over and its group
    /// may not hold one mean yet (the last round was incomplete, the group changed, or the
    /// model did).
    fn idle_due(&self, shared: &Shared) -> bool {
        let live = shared.live_peers.snapshot();
        if live.is_empty() || shared.last_sync.elapsed() < shared.config.idle_sync {
            return false;
        }
        let Some(last) = &self.last_round else {
            return true;
        };
        let mut group = live;
        group.push(self.local);
        group.sort();
        group.dedup();
        self.dirty || !last.complete || last.group != group
    }

    /// How long an idle node may wait for input before the round in progress needs it.
    fn wait(&self, idle: Duration) -> Duration {
        // A due round waiting for its group to settle looks again at the live set's pace.
        let idle = match self.round_due_since {
            Some(_) => idle.min(SETTLE_LOOK),
            None => idle,
        };
        self.butterfly.next_deadline().map_or(idle, |at| {
            idle.min(at.saturating_duration_since(Instant::now()))
        })
    }

    fn start_round(
        &mut self,
        shared: &mut Shared,
        pulled: Option<u64>,
    ) -> Result<(), SessionError> {
        let peers = shared.live_peers.snapshot();
        if peers.is_empty() && pulled.is_none() {
            return Ok(());
        }
        let next = self.butterfly.next_round(shared.averager.round());
        // A round of its own starts at the group's round: a node that joins a group which
        // has averaged already would otherwise start at its own (lower) round, and the two
        // rounds would supersede each other. Bounded, so that one peer's announcement cannot
        // carry this node beyond what its other peers accept.
        let announced = shared
            .live_peers
            .announced_round()
            .min(next.saturating_add(MAX_ROUND_LEAD / 2));
        let round = next.max(pulled.unwrap_or(0)).max(announced);
        tracing::debug!(
            round,
            ?pulled,
            peers = peers.len(),
            "butterfly round starts"
        );
        shared.averager.add_mass(shared.samples_since_sync as f64);
        // Told before the parts are encoded, so that watchers see when the round began.
        shared.status.butterfly_rounds_started += 1;
        shared.publish();
        // The round's copy of the model, read straight into the buffer it keeps (the last
        // round's, reused: a fresh model-sized one costs a page fault per 4 KiB).
        let mut sent = self.butterfly.take_model_buffer();
        shared.replica.params_into(&mut sent)?;
        let sends = self.butterfly.start(
            round,
            sent,
            shared.averager.anchor(),
            shared.averager.mass(),
            &peers,
        )?;
        shared.sync_done();
        self.dirty = false;
        shared.record_next_round(round.saturating_add(1))?;
        send_parts(shared, sends);
        // Parts that arrived before the round started may already complete this node's part.
        let (sends, end) = self
            .butterfly
            .advance(Instant::now(), shared.averager.anchor())?;
        send_parts(shared, sends);
        if let Some(end) = end {
            self.apply_corrections(shared)?;
            self.end_round(shared, end)?;
        }
        Ok(())
    }

    /// Adds the means received so far to the model (one read and write of the parameters);
    /// returns whether there were any.
    fn apply_corrections(&mut self, shared: &mut Shared) -> Result<bool, SessionError> {
        let corrections = self.butterfly.take_corrections();
        if corrections.is_empty() {
            return Ok(false);
        }
        let mut params = shared.current_params()?;
        for Correction { offset, mean, sent } in &corrections {
            if let Some(slice) = params.get_mut(*offset..*offset + mean.len()) {
                for ((p, m), s) in slice.iter_mut().zip(mean).zip(sent) {
                    *p = if *p == *s { *m } else { *p + (m - s) };
                }
            }
        }
        shared.store_params(params)?;
        shared.averager.count_merged(corrections.len() as u64);
        Ok(true)
    }

    fn end_round(&mut self, shared: &mut Shared, end: RoundEnd) -> Result<(), SessionError> {
        tracing::debug!(
            round = end.round,
            complete = end.complete,
            group = end.group.len(),
            "butterfly round over"
        );
        shared.send(WorkerOutput::RoundOver(end.round));
        shared.averager.advance_round(end.round.saturating_add(1));
        self.last_round = Some(end);
        if !shared.status.training {
            shared.evaluate()?;
        }
        shared.publish();
        shared.checkpoint_if_due()
    }
}

fn send_parts(shared: &Shared, sends: Vec<PartSend>) {
    if !sends.is_empty() {
        shared.send(WorkerOutput::SendParts(sends));
    }
}

impl Mode for Rounds {
    /// Allocates and touches the model-sized buffers every round reuses before the first
    /// one, which would otherwise pay a page fault per 4 KiB of each.
    fn prepare(&mut self, shared: &mut Shared) -> Result<(), SessionError> {
        self.butterfly.prepare();
        shared.replica.params_into(&mut shared.params_buffer)?;
        Ok(())
    }

    fn part_gate(&self) -> Option<Arc<PartGate>> {
        Some(self.butterfly.gate())
    }

    fn trained(&mut self, shared: &mut Shared, due: bool) -> Result<(), SessionError> {
        self.dirty = true;
        self.step(shared, RoundDue::Policy(due))?;
        Ok(())
    }

    fn idle_wait(&self, shared: &Shared) -> Duration {
        let idle = shared.config.idle_sync;
        let remaining = idle.saturating_sub(shared.last_sync.elapsed());
        self.wait(if remaining.is_zero() { idle } else { remaining })
    }

    fn idle_input(&mut self, shared: &mut Shared) -> Result<(), SessionError> {
        self.step(shared, RoundDue::IdleNews)?;
        Ok(())
    }

    fn idle_timeout(&mut self, shared: &mut Shared) -> Result<(), SessionError> {
        let due = self.step(shared, RoundDue::IdleNews)?;
        if !due && shared.last_sync.elapsed() >= shared.config.idle_sync {
            // Nothing to do: wait a whole idle period again.
            shared.last_sync = Instant::now();
            shared.publish();
        }
        Ok(())
    }

    /// Takes in a part from `peer`; refusals are counted and scored.
    fn part(
        &mut self,
        shared: &mut Shared,
        peer: PeerId,
        header: &[u8],
        payload: Vec<u8>,
        digest: &Digest,
    ) {
        let own_round = shared.averager.round();
        let received = self.butterfly.receive(
            &peer,
            header,
            payload,
            digest,
            shared.averager.anchor(),
            own_round,
        );
        tracing::trace!(%peer, ?received, "butterfly part");
        match received {
            Ok(Received::Contribution | Received::Mean | Received::Early) => {}
            // The group agreed without this mean: this node's model is news again.
            Ok(Received::LateMean) => self.dirty = true,
            Err(reason) => {
                shared.averager.count_rejection(reason);
                if matches!(reason, Rejection::PartMismatch | Rejection::Stale) {
                    tracing::debug!(%peer, %reason, "part refused");
                } else {
                    tracing::warn!(%peer, %reason, "part refused");
                }
                shared.rejected(peer, reason);
            }
        }
    }

    fn part_failed(&mut self, peer: &PeerId, round: u64, phase: PartPhase) {
        self.butterfly.send_failed(peer, round, phase);
    }

    fn adopted(&mut self) {
        self.butterfly.abandon();
        self.dirty = true;
    }
}

#[cfg(test)]
#[path = "butterfly_tests.rs"]
mod tests;
