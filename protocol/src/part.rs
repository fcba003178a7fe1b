//! [`PartHeader`]: one slice of a model in a butterfly (scatter-reduce) all-reduce.
//!
//! A round of butterfly averaging splits the parameter vector into one contiguous part per
//! member of the group. Each member sends every other member the slice that member owns
//! ([`PartPhase::Contribution`]); the owner averages the slices it received with its own,
//! weighted by the senders' masses, and sends the mean back to each contributor
//! ([`PartPhase::Result`]). The payload is the slice minus the run's anchor, encoded with the
//! header's codec, exactly as a [`DeltaHeader`] describes a whole model.

use bincode::{Decode, Encode};

use crate::ids::PeerKey;
use crate::message::{DeltaHeader, MAX_ELEMENTS, MessageError};

/// Which way a part travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum PartPhase {
    /// A member's slice, sent to the slice's owner.
    Contribution,
    /// The owner's weighted mean of the slice, sent back to each contributor.
    Result,
}

/// Describes a part payload that follows on a stream.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct PartHeader {
    /// Run, model, signer, round (`base_round`), mass (`weight`, the sender's for a
    /// contribution, the sum over the mean's members for a result), codec, the part's element
    /// count and the payload's length and digest.
    pub body: DeltaHeader,
    /// Contribution or result.
    pub phase: PartPhase,
    /// Index of the part's first element in the whole parameter vector.
    pub offset: u64,
    /// Length of the whole parameter vector.
    pub total_elements: u64,
    /// Models averaged into a result (0 for a contribution).
    pub members: u32,
}

impl PartHeader {
    /// The signer the header claims.
    pub fn peer(&self) -> &PeerKey {
        &self.body.peer
    }

    /// Checks the body and that the part lies inside the vector.
    pub fn validate(&self) -> Result<(), MessageError> {
        self.body.validate()?;
        let end = self.offset.checked_add(self.body.element_count);
        if self.total_elements > MAX_ELEMENTS || end.is_none_or(|end| end > self.total_elements) {
            return Err(MessageError::BadRange {
                offset: self.offset,
                len: self.body.element_count,
                total: self.total_elements,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codec;
    use crate::ids::{Digest, ModelFingerprint, RunId};

    fn header(offset: u64, len: u64, total: u64) -> PartHeader {
        PartHeader {
            body: DeltaHeader {
                run: RunId::from_name("t"),
                model: ModelFingerprint([1; 32]),
                peer: PeerKey([2; 32]),
                base_round: 3,
                local_steps: 0,
                samples: 0,
                weight: 1.0,
                codec: Codec::F16,
                element_count: len,
                payload_len: 2 * len,
                payload_digest: Digest([0; 32]),
                timestamp_ms: 0,
            },
            phase: PartPhase::Contribution,
            offset,
            total_elements: total,
            members: 0,
        }
    }

    #[test]
    fn a_part_must_lie_inside_the_vector() {
        assert!(header(0, 10, 10).validate().is_ok());
        assert!(header(5, 5, 10).validate().is_ok());
        assert!(header(6, 5, 10).validate().is_err());
        assert!(header(u64::MAX, 2, 10).validate().is_err());
        assert!(header(0, 1, MAX_ELEMENTS + 1).validate().is_err());
    }

    #[test]
    fn a_part_round_trips_through_a_signed_envelope() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let mut h = header(4, 6, 10);
        h.body.peer = crate::envelope::peer_key(&key);
        let envelope =
            crate::SignedEnvelope::sign(&key, &crate::Message::Part(h.clone())).expect("sign");
        let (signer, message) =
            crate::SignedEnvelope::open_bytes(&envelope.to_bytes(), 1 << 16).expect("open");
        assert_eq!(signer, h.body.peer);
        assert_eq!(message, crate::Message::Part(h));
    }
}
