//! Pipeline messages: the header that travels with every activation, gradient and control
//! payload between the holders of consecutive layer shards.
//!
//! The header is bincode like every other message (bounded by the 64 KiB message limit); the
//! tensor, when there is one, is the stream payload itself as little-endian `f32` values or
//! `u32` token ids, described by [`TensorMeta`]. [`TensorMeta::check_payload`] bounds the
//! payload against the declared shape before anything is allocated from it.
//!
//! Authenticity: pipeline payloads travel only over Noise-authenticated streams, and the
//! receiver accepts them only from the peer that the current plan puts next to it, so no
//! per-message signature is needed (unlike gossip deltas, which are relayed and stored).

use bincode::{Decode, Encode};

use crate::ids::RunId;
use crate::message::MessageError;
use crate::wire;

/// Version of [`PipeHeader`] this build speaks (2: plan notices cite signed capacities).
pub const PIPE_VERSION: u8 = 2;
/// Most targets one micro-batch carries.
pub const MAX_TARGETS: usize = 8192;
/// Most dimensions of a pipeline tensor.
pub const MAX_DIMS: usize = 4;
/// Longest peer id a break report's payload may carry (see [`PipeBody::Broken`]).
pub const MAX_BLAME_BYTES: usize = 64;

/// Element type of a pipeline tensor payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum TensorKind {
    /// `u32` token ids.
    Tokens,
    /// `f32` values (hidden states, gradients).
    F32,
}

/// Shape and element type of the payload that follows a header.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct TensorMeta {
    /// Element type.
    pub kind: TensorKind,
    /// Dimensions, outermost first.
    pub shape: Vec<u32>,
}

impl TensorMeta {
    /// Number of elements (None on overflow).
    pub fn elements(&self) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d as usize))
    }

    /// Checks that `payload` holds exactly the declared elements (4 bytes each).
    pub fn check_payload(&self, payload: &[u8]) -> Result<usize, MessageError> {
        let n = self
            .elements()
            .filter(|n| n.checked_mul(4) == Some(payload.len()))
            .ok_or_else(|| MessageError::BadRange {
                offset: 0,
                len: payload.len() as u64,
                // A shape a peer declares may multiply out past any size (found by fuzzing:
                // the plain product overflowed, a panic where overflow is checked).
                total: self
                    .elements()
                    .map_or(u64::MAX, |n| (n as u64).saturating_mul(4)),
            })?;
        Ok(n)
    }
}

/// What a pipeline message is.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum PipeBody {
    /// Activations of micro-batch `micro` going downstream, with the micro-batch's targets
    /// (one per output position) for the shard that computes the loss.
    Forward {
        /// Class labels or next-token ids.
        targets: Vec<u32>,
    },
    /// The gradient w.r.t. the receiver's output for micro-batch `micro`, going upstream.
    Backward {
        /// The micro-batch's loss (computed by the last shard, passed on unchanged).
        loss: f32,
        /// On the sender's last backward of the step: the sum of the squared gradient norms
        /// of the sender's shard and every shard after it.
        tail_norm_sq: Option<f64>,
    },
    /// The step is complete: apply the update clipped by this global gradient norm, then pass
    /// the commit downstream.
    Commit {
        /// Global gradient norm of the step.
        grad_norm: f32,
    },
    /// The plan of epoch `epoch` (payload: the plan notice, see `docs/protocol.md`).
    Plan,
    /// A copy of the sender's shard (stages `start..end`) after step `step`: parameters and
    /// optimizer moments (payload: the shard state, see `docs/protocol.md`), kept by the
    /// receiver so the range survives its holder.
    Snapshot {
        /// First stage.
        start: u32,
        /// One past the last stage.
        end: u32,
    },
    /// A link measurement from the member computing the plan (payload: filler bytes); the
    /// receiver only acknowledges it.
    Probe,
    /// The sender's chain of epoch `epoch` lost a member and the sender is re-planning: the
    /// receiver, the lowest surviving member of that plan, ends the epoch and re-plans too (it
    /// may sit in another, healthy chain that would otherwise never notice). Payload: empty,
    /// or the peer id (its bytes, at most [`MAX_BLAME_BYTES`]) of the neighbour whose stage
    /// messages broke the protocol — the member it blames (older senders send none).
    Broken,
}

/// The header of every pipeline payload.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct PipeHeader {
    /// [`PIPE_VERSION`].
    pub version: u8,
    /// The run.
    pub run: RunId,
    /// Plan epoch the message belongs to; messages of other epochs are dropped.
    pub epoch: u64,
    /// Optimisation step.
    pub step: u64,
    /// Micro-batch index within the step.
    pub micro: u32,
    /// Micro-batches per step.
    pub micros: u32,
    /// The tensor in the payload, if any.
    pub tensor: Option<TensorMeta>,
    /// What the message is.
    pub body: PipeBody,
}

impl PipeHeader {
    /// Checks version and bounds.
    pub fn validate(&self) -> Result<(), MessageError> {
        if self.version != PIPE_VERSION {
            return Err(MessageError::PipeVersion(self.version));
        }
        if self.micros == 0 || self.micro >= self.micros {
            return Err(MessageError::FieldTooLong {
                field: "micro",
                len: self.micro as usize,
                max: self.micros.saturating_sub(1) as usize,
            });
        }
        if let Some(t) = &self.tensor
            && t.shape.len() > MAX_DIMS
        {
            return Err(MessageError::FieldTooLong {
                field: "tensor.shape",
                len: t.shape.len(),
                max: MAX_DIMS,
            });
        }
        match &self.body {
            PipeBody::Forward { targets } if targets.len() > MAX_TARGETS => {
                Err(MessageError::FieldTooLong {
                    field: "targets",
                    len: targets.len(),
                    max: MAX_TARGETS,
                })
            }
            PipeBody::Backward { loss, tail_norm_sq } => {
                let finite_sq = tail_norm_sq.is_none_or(|v| v.is_finite() && v >= 0.0);
                if !loss.is_finite() || !finite_sq {
                    return Err(MessageError::NotFinite("backward"));
                }
                Ok(())
            }
            PipeBody::Commit { grad_norm } if !grad_norm.is_finite() || *grad_norm < 0.0 => {
                Err(MessageError::NotFinite("grad_norm"))
            }
            _ => Ok(()),
        }
    }

    /// Validates and encodes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, MessageError> {
        self.validate()?;
        wire::encode(self).map_err(MessageError::Encode)
    }

    /// Decodes and validates.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MessageError> {
        let header: Self = wire::decode(bytes)?;
        header.validate()?;
        Ok(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(body: PipeBody) -> PipeHeader {
        PipeHeader {
            version: PIPE_VERSION,
            run: RunId::from_name("t"),
            epoch: 1,
            step: 2,
            micro: 3,
            micros: 4,
            tensor: Some(TensorMeta {
                kind: TensorKind::F32,
                shape: vec![2, 3],
            }),
            body,
        }
    }

    #[test]
    fn round_trips_and_rejects_bad_fields() {
        let h = header(PipeBody::Forward {
            targets: vec![1, 2],
        });
        assert_eq!(PipeHeader::from_bytes(&h.to_bytes().unwrap()).unwrap(), h);
        let mut bad = h.clone();
        bad.micro = 4;
        assert!(bad.to_bytes().is_err());
        bad = header(PipeBody::Backward {
            loss: f32::NAN,
            tail_norm_sq: None,
        });
        assert!(bad.to_bytes().is_err());
        bad = header(PipeBody::Commit { grad_norm: -1.0 });
        assert!(bad.to_bytes().is_err());
        bad = header(PipeBody::Forward {
            targets: vec![0; MAX_TARGETS + 1],
        });
        assert!(bad.to_bytes().is_err());
        let mut bytes = h.to_bytes().unwrap();
        bytes[0] = 9;
        assert!(matches!(
            PipeHeader::from_bytes(&bytes),
            Err(MessageError::PipeVersion(9))
        ));
        assert!(PipeHeader::from_bytes(&bytes[..5]).is_err());
    }

    /// Found by fuzzing: a shape whose byte size overflows `u64` panicked (overflow checks
    /// are on in the dev profile the quick start builds) instead of being refused.
    #[test]
    fn a_shape_too_large_for_any_payload_is_refused_not_a_panic() {
        let meta = TensorMeta {
            kind: TensorKind::F32,
            shape: vec![u32::MAX, u32::MAX],
        };
        assert!(matches!(
            meta.check_payload(&[0; 16]),
            Err(MessageError::BadRange {
                total: u64::MAX,
                ..
            })
        ));
    }

    #[test]
    fn payload_must_match_the_shape() {
        let meta = TensorMeta {
            kind: TensorKind::F32,
            shape: vec![2, 3],
        };
        assert_eq!(meta.check_payload(&[0; 24]).unwrap(), 6);
        assert!(meta.check_payload(&[0; 20]).is_err());
        let huge = TensorMeta {
            kind: TensorKind::F32,
            shape: vec![u32::MAX, u32::MAX, u32::MAX],
        };
        assert!(huge.check_payload(&[0; 4]).is_err());
    }
}
