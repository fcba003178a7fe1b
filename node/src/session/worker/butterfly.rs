//! The training thread's side of butterfly averaging: it starts a round when the policy's
//! sync is due (training) or an idle node has news for its group, once its live peer set has
//! settled, or at once when a peer's round reaches it (the pull); it takes in parts, adds the means to the model as
//! they arrive (training goes on meanwhile), and ends rounds.

use std::time::{Duration, Instant};

use libp2p::PeerId;
use murmur_protocol::{Digest, PartPhase};

use super::{Worker, WorkerOutput};
use crate::averaging::Rejection;
use crate::averaging::butterfly::{
    Correction, MAX_ROUND_LEAD, PartGate, PartSend, Received, RoundEnd,
};
use crate::session::SessionError;

/// The longest a due round waits for the live peer set to settle.
const MAX_SETTLE_WAIT: Duration = Duration::from_secs(2);
/// How often a due round waiting for its group looks at it again.
const SETTLE_LOOK: Duration = Duration::from_millis(50);

/// When a training thread's butterfly round is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RoundDue {
    /// As the sync policy of a training node says.
    Policy(bool),
    /// When an idle node has news for its group ([`Worker::butterfly_idle_due`]), judged
    /// after the round in progress has been moved on.
    IdleNews,
}

impl Worker {
    /// Takes in a part from `peer`; refusals are counted and scored.
    pub(super) fn receive_part(
        &mut self,
        peer: PeerId,
        header: &[u8],
        payload: Vec<u8>,
        digest: &Digest,
    ) {
        let Some(butterfly) = self.butterfly.as_mut() else {
            return;
        };
        let own_round = self.averager.round();
        let received = butterfly.receive(
            &peer,
            header,
            payload,
            digest,
            self.averager.anchor(),
            own_round,
        );
        tracing::trace!(%peer, ?received, "butterfly part");
        match received {
            Ok(Received::Contribution | Received::Mean | Received::Early) => {}
            // The group agreed without this mean: this node's model is news again.
            Ok(Received::LateMean) => self.butterfly_dirty = true,
            Err(reason) => {
                self.averager.count_rejection(reason);
                if matches!(reason, Rejection::PartMismatch | Rejection::Stale) {
                    tracing::debug!(%peer, %reason, "part refused");
                } else {
                    tracing::warn!(%peer, %reason, "part refused");
                }
                let _ = self
                    .outputs
                    .blocking_send(WorkerOutput::Rejected { peer, reason });
            }
        }
    }

    /// The early check of inbound parts (butterfly runs only).
    pub(crate) fn part_gate(&self) -> Option<std::sync::Arc<PartGate>> {
        self.butterfly.as_ref().map(|b| b.gate())
    }

    /// A part for `round` could not be delivered to `peer`.
    pub(super) fn part_failed(&mut self, peer: &PeerId, round: u64, phase: PartPhase) {
        if let Some(butterfly) = self.butterfly.as_mut() {
            butterfly.send_failed(peer, round, phase);
        }
    }

    /// Moves the round in progress on, and starts one when it is due or pulled in; returns
    /// whether a round was due.
    pub(super) fn step_butterfly(&mut self, due: RoundDue) -> Result<bool, SessionError> {
        let Some(butterfly) = self.butterfly.as_mut() else {
            return Ok(false);
        };
        for reason in butterfly.take_refusals() {
            tracing::debug!(%reason, "part refused before its payload");
            self.averager.count_rejection(reason);
        }
        let (sends, end) = butterfly.advance(Instant::now(), self.averager.anchor())?;
        let idle = !butterfly.busy();
        self.send_parts(sends);
        // Means are added once the round is over (late ones: at the next step with no round
        // in progress): one read and write of the model per round instead of one per part.
        if idle && self.apply_corrections()? && end.is_none() {
            self.publish();
        }
        if let Some(end) = end {
            self.end_round(end)?;
        }
        // Judged only now: the round that just ended may have been what made it due.
        let due = match due {
            RoundDue::Policy(due) => due,
            RoundDue::IdleNews => self.butterfly_idle_due(),
        };
        let Some(butterfly) = self.butterfly.as_ref() else {
            return Ok(due);
        };
        let pulled = butterfly.pulled();
        if butterfly.busy() {
            return Ok(due);
        }
        if !due {
            self.round_due_since = None;
        }
        if pulled.is_some() || (due && self.group_settled()) {
            self.round_due_since = None;
            self.start_round(pulled)?;
        }
        Ok(due)
    }

    /// Whether a due round may start on its own: the live peer set settled (see
    /// `presence`), or the round waited [`MAX_SETTLE_WAIT`] for it (a group that keeps
    /// changing still averages). A round pulled in by a peer never waits.
    fn group_settled(&mut self) -> bool {
        if self.live_peers.settled() {
            return true;
        }
        let since = *self.round_due_since.get_or_insert_with(Instant::now);
        since.elapsed() >= MAX_SETTLE_WAIT
    }

    /// Whether an idle node should start a round: its idle period is over and its group
    /// may not hold one mean yet (the last round was incomplete, the group changed, or the
    /// model did).
    pub(super) fn butterfly_idle_due(&self) -> bool {
        let live = self.live_peers.snapshot();
        if live.is_empty() || self.last_sync.elapsed() < self.config.idle_sync {
            return false;
        }
        let Some(last) = &self.last_round else {
            return true;
        };
        let mut group = live;
        group.push(self.local);
        group.sort();
        group.dedup();
        self.butterfly_dirty || !last.complete || last.group != group
    }

    /// How long an idle node may wait for input before the round in progress needs it.
    pub(super) fn butterfly_wait(&self, idle: Duration) -> Duration {
        // A due round waiting for its group to settle looks again at the live set's pace.
        let idle = match self.round_due_since {
            Some(_) => idle.min(SETTLE_LOOK),
            None => idle,
        };
        self.butterfly
            .as_ref()
            .and_then(|b| b.next_deadline())
            .map_or(idle, |at| {
                idle.min(at.saturating_duration_since(Instant::now()))
            })
    }

    fn start_round(&mut self, pulled: Option<u64>) -> Result<(), SessionError> {
        let peers = self.live_peers.snapshot();
        if peers.is_empty() && pulled.is_none() {
            return Ok(());
        }
        let Some(next) = self
            .butterfly
            .as_ref()
            .map(|b| b.next_round(self.averager.round()))
        else {
            return Ok(());
        };
        // A round of its own starts at the group's round: a node that joins a group which
        // has averaged already would otherwise start at its own (lower) round, and the two
        // rounds would supersede each other. Bounded, so that one peer's announcement cannot
        // carry this node beyond what its other peers accept.
        let announced = self
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
        self.averager.add_mass(self.samples_since_sync as f64);
        // Told before the parts are encoded, so that watchers see when the round began.
        self.status.butterfly_rounds_started += 1;
        self.publish();
        let sends = match self.butterfly.as_mut() {
            Some(butterfly) => {
                // The round's copy of the model, read straight into the buffer it keeps (the
                // last round's, reused: a fresh model-sized one costs a page fault per 4 KiB).
                let mut sent = butterfly.take_model_buffer();
                self.replica.params_into(&mut sent)?;
                butterfly.start(
                    round,
                    sent,
                    self.averager.anchor(),
                    self.averager.mass(),
                    &peers,
                )?
            }
            None => Vec::new(),
        };
        self.count_trained_round();
        self.steps_since_sync = 0;
        self.samples_since_sync = 0;
        self.last_sync = Instant::now();
        self.butterfly_dirty = false;
        if let Some(store) = &self.checkpoints {
            store.record_next_round(round.saturating_add(1))?;
        }
        self.send_parts(sends);
        // Parts that arrived before the round started may already complete this node's part.
        let Some(butterfly) = self.butterfly.as_mut() else {
            return Ok(());
        };
        let (sends, end) = butterfly.advance(Instant::now(), self.averager.anchor())?;
        self.send_parts(sends);
        if let Some(end) = end {
            self.apply_corrections()?;
            self.end_round(end)?;
        }
        Ok(())
    }

    fn send_parts(&mut self, sends: Vec<PartSend>) {
        if !sends.is_empty() {
            let _ = self.outputs.blocking_send(WorkerOutput::SendParts(sends));
        }
    }

    /// Adds the means received so far to the model (one read and write of the parameters);
    /// returns whether there were any.
    fn apply_corrections(&mut self) -> Result<bool, SessionError> {
        let Some(butterfly) = self.butterfly.as_mut() else {
            return Ok(false);
        };
        let corrections = butterfly.take_corrections();
        if corrections.is_empty() {
            return Ok(false);
        }
        let mut params = self.current_params()?;
        for Correction { offset, mean, sent } in &corrections {
            if let Some(slice) = params.get_mut(*offset..*offset + mean.len()) {
                for ((p, m), s) in slice.iter_mut().zip(mean).zip(sent) {
                    *p = if *p == *s { *m } else { *p + (m - s) };
                }
            }
        }
        self.replica.set_params(&params)?;
        self.params_buffer = params;
        self.averager.count_merged(corrections.len() as u64);
        Ok(true)
    }

    fn end_round(&mut self, end: RoundEnd) -> Result<(), SessionError> {
        tracing::debug!(
            round = end.round,
            complete = end.complete,
            group = end.group.len(),
            "butterfly round over"
        );
        let _ = self
            .outputs
            .blocking_send(WorkerOutput::RoundOver(end.round));
        self.averager.advance_round(end.round.saturating_add(1));
        let every = self.config.checkpoint_every;
        let round = self.averager.round();
        self.last_round = Some(end);
        if !self.status.training {
            self.evaluate()?;
        }
        self.publish();
        if every > 0 && round.is_multiple_of(every) {
            self.checkpoint()?;
        }
        Ok(())
    }
}
