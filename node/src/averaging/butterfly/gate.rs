//! The network side's early check of butterfly parts: run on each inbound part stream
//! after its header and before its payload (an [`Admission`](crate::net::Admission)), it
//! refuses the parts the training thread would refuse anyway as stale or as not matching the
//! split of the round in progress, so that a part of a round the receiver is past, or of a
//! group whose views differ at start-up, costs the sender a header instead of a model's
//! slice and frees the links for the round that counts.
//!
//! The gate mirrors [`Butterfly`](super::Butterfly)'s view (published by it whenever a round
//! starts or ends); a view a moment old only lets more through, never refuses what the
//! training thread would take. Parts whose header does not open (forged, another run) are let
//! through, for the training thread to refuse and score. Refusals are queued for the training
//! thread to count, and a member's mismatched split is handed over to end the round early, as
//! a mismatched part received in full would.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use libp2p::PeerId;
use murmur_protocol::{PartHeader, PartPhase};

use super::Rejection;
use super::wire::{self, Signer};

/// Refusals queued for the training thread, at most (more are only logged).
const MAX_QUEUED: usize = 1024;

/// The round in progress, as far as the gate needs it.
#[derive(Debug, Clone)]
struct RoundView {
    number: u64,
    group: Vec<PeerId>,
    ranges: Vec<Range<usize>>,
    mine: usize,
    /// This node averaged its part: later contributions are stale.
    reduced: bool,
}

#[derive(Debug, Default)]
struct GateState {
    finished: Option<u64>,
    current: Option<RoundView>,
    refused: Vec<Rejection>,
    /// A member's part of this round did not match its split.
    mismatched: Option<u64>,
}

/// Early checks of inbound parts; shared between the training thread and the part streams.
#[derive(Debug)]
pub struct PartGate {
    signer: Signer,
    local: PeerId,
    total: usize,
    state: Mutex<GateState>,
    /// The training thread was told of refusals it has not taken yet (one wake-up for many).
    told: AtomicBool,
}

/// What the gate refused since the training thread last looked.
#[derive(Debug, Default)]
pub(super) struct Refusals {
    pub(super) reasons: Vec<Rejection>,
    pub(super) mismatched: Option<u64>,
}

impl PartGate {
    pub(super) fn new(signer: Signer, local: PeerId, total: usize) -> Self {
        Self {
            signer,
            local,
            total,
            state: Mutex::new(GateState::default()),
            told: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes the training thread's view: the last round ended and the one in progress
    /// (its number, sorted group, and whether this node averaged its part).
    pub(super) fn publish(&self, finished: Option<u64>, current: Option<(u64, &[PeerId], bool)>) {
        let current = current.map(|(number, group, reduced)| RoundView {
            number,
            group: group.to_vec(),
            ranges: wire::split(self.total, group.len()),
            mine: group.iter().position(|p| *p == self.local).unwrap_or(0),
            reduced,
        });
        let mut state = self.lock();
        state.finished = finished;
        state.current = current;
    }

    /// Takes the refusals queued so far.
    pub(super) fn take(&self) -> Refusals {
        self.told.store(false, Ordering::Release);
        let mut state = self.lock();
        Refusals {
            reasons: std::mem::take(&mut state.refused),
            mismatched: state.mismatched.take(),
        }
    }

    /// Whether the training thread should be woken for a refusal: true once until it takes
    /// them, so a burst of refusals costs it one wake-up.
    pub fn should_wake(&self) -> bool {
        !self.told.swap(true, Ordering::AcqRel)
    }

    /// Checks the header of a part `peer` is sending; an error refuses its payload (its text is
    /// the refusal sent back).
    pub fn admit(&self, peer: &PeerId, header: &[u8]) -> Result<(), Rejection> {
        let Ok(part) = self.signer.open(peer, header, self.total) else {
            return Ok(());
        };
        let mut state = self.lock();
        let verdict = judge(&state, peer, &part);
        let Err((reason, member)) = verdict else {
            return Ok(());
        };
        if member {
            state.mismatched = Some(part.body.base_round);
        }
        if state.refused.len() < MAX_QUEUED {
            state.refused.push(reason);
        }
        Err(reason)
    }
}

/// The training thread's verdict on `part` from `peer`, where it is certain without the
/// payload: `Err((reason, whether a member's split differs))`.
fn judge(state: &GateState, peer: &PeerId, part: &PartHeader) -> Result<(), (Rejection, bool)> {
    let round = part.body.base_round;
    let current = state.current.as_ref();
    let matches = |view: &RoundView, k: usize| {
        let range = &view.ranges[k];
        part.offset == range.start as u64 && part.body.element_count == range.len() as u64
    };
    match part.phase {
        PartPhase::Contribution => {
            if state.finished.is_some_and(|f| round <= f)
                || current.is_some_and(|c| round < c.number)
            {
                return Err((Rejection::Stale, false));
            }
            match current.filter(|c| c.number == round) {
                // As the round does: a contribution after the reduce is stale, matched or not.
                Some(view) if view.reduced => Err((Rejection::Stale, false)),
                Some(view) if !matches(view, view.mine) => {
                    Err((Rejection::PartMismatch, view.group.contains(peer)))
                }
                // A contribution of a later round is kept for the pull.
                _ => Ok(()),
            }
        }
        PartPhase::Result => match current {
            Some(view) if view.number == round => {
                let k = view.group.iter().position(|p| p == peer);
                match k.filter(|k| *k != view.mine) {
                    None => Err((Rejection::PartMismatch, false)),
                    Some(k) if !matches(view, k) => Err((Rejection::PartMismatch, true)),
                    Some(_) => Ok(()),
                }
            }
            // A mean of a round not started here matches nothing.
            Some(view) if round > view.number => Err((Rejection::PartMismatch, false)),
            None if state.finished.is_none_or(|f| round > f) => {
                Err((Rejection::PartMismatch, false))
            }
            // A mean of an earlier round may be a late one.
            _ => Ok(()),
        },
    }
}
