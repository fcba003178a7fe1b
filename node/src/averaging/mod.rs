//! Gossip averaging of signed model deltas: the math and the per-node engine.
//!
//! - [`mixing`]: push-sum mixing of sample-weighted models; robust aggregate.
//! - [`policy`]: when to sync (fixed steps, fixed time, Quadratic Synchronization Rule).
//! - [`outer`]: DiLoCo's Nesterov outer optimizer.
//! - [`engine`]: [`Averager`], which validates, merges and produces deltas.
//! - [`butterfly`]: scatter-reduce rounds in which a group ends with one exact mean.
//! - [`replay`]: the persisted set of merged (peer, round) pairs.
//! - [`reject`]: rejection reasons and counters.
//!
//! The algorithm and why it converges are described in `docs/architecture.md`.

pub mod butterfly;
pub mod engine;
pub mod mixing;
pub mod outer;
pub mod policy;
pub mod reject;
pub mod replay;

use std::collections::BTreeSet;

use murmur_protocol::{CodecError, DeltaHeader, MessageError, ModelFingerprint, PeerKey, RunId};

pub use butterfly::{Butterfly, ButterflyConfig};
pub use engine::{
    Averager, AveragerConfig, AveragerState, DEFAULT_MAX_LEAD, DEFAULT_MAX_WEIGHT_RATIO, DeltaGate,
    MAX_MASS, Outgoing,
};
pub use mixing::RobustConfig;
pub use outer::OuterConfig;
pub use policy::SyncPolicy;
pub use reject::{MergeCounts, Rejection};
pub use replay::ReplayGuard;

/// Who may contribute deltas and download state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Admission {
    /// Anyone (robust merging and peer scores protect the run).
    #[default]
    Open,
    /// Only the listed peers (a closed pool's manifest).
    Closed(BTreeSet<PeerKey>),
}

impl Admission {
    /// Whether `peer` may contribute.
    pub fn admits(&self, peer: &PeerKey) -> bool {
        match self {
            Admission::Open => true,
            Admission::Closed(members) => members.contains(peer),
        }
    }

    /// Whether the peer with libp2p id `peer` may take part (its key is in the id).
    pub fn admits_peer(&self, peer: &libp2p::PeerId) -> bool {
        match self {
            Admission::Open => true,
            Admission::Closed(members) => members
                .iter()
                .any(|key| crate::net::key_matches_peer(key, peer)),
        }
    }
}

/// The checks every signed delta or part header passes before anything else: the signer is
/// the peer that opened the stream, and the header is for this run, this model and (in a
/// closed pool) from a member.
pub(crate) fn check_origin(
    signer: &PeerKey,
    sender: &libp2p::PeerId,
    body: &DeltaHeader,
    (run, model): (&RunId, &ModelFingerprint),
    admission: &Admission,
) -> Result<(), Rejection> {
    if !crate::net::key_matches_peer(signer, sender) {
        return Err(Rejection::SignerMismatch);
    }
    if body.run != *run {
        return Err(Rejection::WrongRun);
    }
    if body.model != *model {
        return Err(Rejection::WrongModel);
    }
    if !admission.admits(signer) {
        return Err(Rejection::NotMember);
    }
    Ok(())
}

/// Whether a delta or part made at `base_round` is more than `max_lead` rounds ahead of a
/// clock at `round` (its sender's choice: it never moves the clock that far).
pub(crate) fn beyond_lead(base_round: u64, round: u64, max_lead: u64) -> bool {
    base_round > round.saturating_add(max_lead)
}

/// The averaging engine could not produce a message.
#[derive(Debug, thiserror::Error)]
pub enum AveragingError {
    /// The parameter vector has the wrong length.
    #[error("parameter vector has {actual} elements, expected {expected}")]
    WrongLength {
        /// Expected length.
        expected: usize,
        /// Actual length.
        actual: usize,
    },
    /// The model holds NaN/Inf or the codec failed.
    #[error("encoding the delta: {0}")]
    Codec(#[from] CodecError),
    /// Signing failed.
    #[error("signing the delta: {0}")]
    Message(#[from] MessageError),
}
