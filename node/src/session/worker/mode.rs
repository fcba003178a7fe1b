//! [`Mode`]: how the training thread averages — push-sum gossip
//! ([`PushSum`](super::gossip::PushSum)) or butterfly rounds
//! ([`Rounds`](super::butterfly::Rounds)). The [`Worker`](super::Worker) drives either through
//! this trait and lends it the [`Shared`] state at every call; each mode keeps its own state.

use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use murmur_protocol::{Digest, PartPhase};

use super::shared::Shared;
use crate::averaging::Outgoing;
use crate::averaging::butterfly::PartGate;
use crate::session::SessionError;

/// One averaging mode of the training thread.
pub(super) trait Mode: Send {
    /// Before the first step: allocates the buffers the mode reuses every round.
    fn prepare(&mut self, _shared: &mut Shared) -> Result<(), SessionError> {
        Ok(())
    }

    /// The early check of inbound butterfly parts (butterfly rounds only).
    fn part_gate(&self) -> Option<Arc<PartGate>> {
        None
    }

    /// After a local step; `due` is the sync policy's verdict.
    fn trained(&mut self, shared: &mut Shared, due: bool) -> Result<(), SessionError>;

    /// How long an idle (no longer training) node waits for input.
    fn idle_wait(&self, shared: &Shared) -> Duration;

    /// An idle node took in an input.
    fn idle_input(&mut self, shared: &mut Shared) -> Result<(), SessionError>;

    /// An idle node's wait ran out without input.
    fn idle_timeout(&mut self, shared: &mut Shared) -> Result<(), SessionError>;

    /// A received delta was queued in the averager for the next merge.
    fn delta_queued(&mut self) {}

    /// A delta could not be delivered: the model and mass it carried come back.
    fn send_failed(
        &mut self,
        shared: &mut Shared,
        outgoing: &Outgoing,
    ) -> Result<(), SessionError> {
        shared.take_back(outgoing)
    }

    /// A butterfly part arrived from `peer`.
    fn part(
        &mut self,
        _shared: &mut Shared,
        _peer: PeerId,
        _header: &[u8],
        _payload: Vec<u8>,
        _digest: &Digest,
    ) {
    }

    /// A butterfly part for `round` could not be delivered to `peer`.
    fn part_failed(&mut self, _peer: &PeerId, _round: u64, _phase: PartPhase) {}

    /// The node adopted a downloaded state (the averager already moved to its round).
    fn adopted(&mut self);
}
