//! Why a received delta was refused, and the per-reason counters the node reports.

use std::collections::BTreeMap;
use std::fmt;

/// Reason a delta was not merged. Every variant is counted and costs the sender score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rejection {
    /// The header is not a decodable signed envelope, or the signature does not verify.
    BadEnvelope,
    /// The envelope carries something other than a delta header.
    NotADelta,
    /// The signer is not the peer that sent the stream.
    SignerMismatch,
    /// Another run.
    WrongRun,
    /// Another model architecture.
    WrongModel,
    /// A closed pool's manifest does not list the sender.
    NotMember,
    /// This (peer, round) pair was merged before.
    Replay,
    /// Too many rounds behind.
    Stale,
    /// Too many rounds ahead of this node's clock.
    TooFarAhead,
    /// Payload length, digest, codec or element count do not match.
    BadPayload,
    /// The decoded values contain NaN or infinity.
    NonFinite,
    /// The model's norm is far outside the others'.
    NormOutlier,
    /// Robust merging: the model is far further from this node's than its peers' models
    /// typically are.
    Distant,
    /// The node could not keep up and dropped the delta unread.
    Overloaded,
    /// A butterfly part for another range or round than this node's (peers whose views
    /// of the group differ for a moment; not the sender's fault).
    PartMismatch,
}

impl Rejection {
    /// Stable snake-case name (metrics, JSON).
    pub fn name(self) -> &'static str {
        match self {
            Rejection::BadEnvelope => "bad_envelope",
            Rejection::NotADelta => "not_a_delta",
            Rejection::SignerMismatch => "signer_mismatch",
            Rejection::WrongRun => "wrong_run",
            Rejection::WrongModel => "wrong_model",
            Rejection::NotMember => "not_member",
            Rejection::Replay => "replay",
            Rejection::Stale => "stale",
            Rejection::TooFarAhead => "too_far_ahead",
            Rejection::BadPayload => "bad_payload",
            Rejection::NonFinite => "non_finite",
            Rejection::NormOutlier => "norm_outlier",
            Rejection::Distant => "distant",
            Rejection::Overloaded => "overloaded",
            Rejection::PartMismatch => "part_mismatch",
        }
    }

    /// Misbehaviour points charged to the sender (0 for reasons that are not its fault).
    pub fn penalty(self) -> u32 {
        match self {
            Rejection::Stale
            | Rejection::TooFarAhead
            | Rejection::Overloaded
            | Rejection::WrongModel
            | Rejection::PartMismatch => 0,
            Rejection::Replay | Rejection::NotMember | Rejection::WrongRun => 5,
            // An honest peer's model is far for a while now and then (early in training, or
            // one that started late): a light charge, which a peer refused every sync still
            // reaches the ban with in about 50 syncs.
            Rejection::Distant => 2,
            Rejection::NormOutlier => 10,
            Rejection::BadEnvelope
            | Rejection::NotADelta
            | Rejection::SignerMismatch
            | Rejection::BadPayload
            | Rejection::NonFinite => 25,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Counts of merged and rejected deltas.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeCounts {
    /// Deltas merged.
    pub merged: u64,
    /// Deltas folded into a queued one of the same sender before a sync (each sender holds
    /// one place in the queue; see `engine::admit`).
    pub folded: u64,
    /// Merged deltas whose mass was clipped to the most one sender may carry (a multiple of
    /// the node's own mass; see `engine::DEFAULT_MAX_WEIGHT_RATIO`).
    pub capped: u64,
    /// Deltas rejected, by reason.
    pub rejected: BTreeMap<Rejection, u64>,
}

impl MergeCounts {
    /// Counts one rejection.
    pub fn reject(&mut self, reason: Rejection) {
        *self.rejected.entry(reason).or_default() += 1;
    }

    /// Total rejections.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    /// Rejections as a name → count JSON object.
    pub fn rejected_json(&self) -> serde_json::Value {
        self.rejected
            .iter()
            .map(|(r, n)| (r.name().to_owned(), serde_json::Value::from(*n)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}
