//! The parts of a butterfly round on the wire: encoding a slice relative to the anchor,
//! signing its [`PartHeader`], and checking a received one before it is used.

use libp2p::PeerId;
use murmur_protocol::{
    Codec, CodecError, DeltaHeader, Digest, Message, ModelFingerprint, PartHeader, PartPhase,
    PeerKey, RunId, SignedEnvelope, envelope::MAX_ENVELOPE_BYTES,
};

use crate::averaging::{Admission, AveragingError, Rejection, check_origin};

/// A part ready to be pushed to `peer` on the part stream protocol.
#[derive(Debug, Clone)]
pub struct PartSend {
    /// The recipient.
    pub peer: PeerId,
    /// Encoded `SignedEnvelope` with the part header.
    pub header: Vec<u8>,
    /// The encoded slice.
    pub payload: bytes::Bytes,
    /// BLAKE3 digest of `payload` (signed in the header).
    pub digest: Digest,
    /// The round the part belongs to.
    pub round: u64,
    /// How long sending it may take, retries included (half the round's window for a
    /// contribution, the whole window for a mean).
    pub limit: std::time::Duration,
    /// Whether it is a contribution (whose mean the sender awaits) or a mean.
    pub phase: PartPhase,
}

/// Who signs and what every part of this node's run carries.
#[derive(Debug, Clone)]
pub(super) struct Signer {
    pub(super) run: RunId,
    pub(super) model: ModelFingerprint,
    pub(super) key: ed25519_dalek::SigningKey,
    pub(super) me: PeerKey,
    pub(super) codec: Codec,
    pub(super) admission: Admission,
}

/// What a part says about itself, besides its values.
#[derive(Debug, Clone, Copy)]
pub(super) struct PartMeta {
    pub(super) phase: PartPhase,
    pub(super) round: u64,
    pub(super) offset: usize,
    pub(super) total: usize,
    pub(super) weight: f64,
    pub(super) members: u32,
}

/// An encoded, signed part (its recipients are chosen by the caller).
#[derive(Debug, Clone)]
pub(super) struct SignedPart {
    pub(super) phase: PartPhase,
    pub(super) header: Vec<u8>,
    pub(super) payload: bytes::Bytes,
    pub(super) digest: Digest,
}

impl SignedPart {
    pub(super) fn to(&self, peer: PeerId, round: u64, limit: std::time::Duration) -> PartSend {
        PartSend {
            peer,
            header: self.header.clone(),
            payload: self.payload.clone(),
            digest: self.digest,
            round,
            limit,
            phase: self.phase,
        }
    }
}

impl Signer {
    /// Encodes `values` (absolute; `anchor` is the same slice of the run's anchor) and signs
    /// the header. `scratch` is reused for the values relative to the anchor.
    pub(super) fn encode(
        &self,
        meta: PartMeta,
        values: &[f32],
        anchor: &[f32],
        scratch: &mut Vec<f32>,
    ) -> Result<SignedPart, AveragingError> {
        scratch.clear();
        scratch.extend(values.iter().zip(anchor).map(|(v, a)| v - a));
        let mut payload = Vec::new();
        let digest = self.codec.encode_into(scratch, &mut payload)?;
        let header = PartHeader {
            body: DeltaHeader {
                run: self.run,
                model: self.model,
                peer: self.me,
                base_round: meta.round,
                local_steps: 0,
                samples: 0,
                weight: meta.weight,
                codec: self.codec,
                element_count: values.len() as u64,
                payload_len: payload.len() as u64,
                payload_digest: digest,
                timestamp_ms: crate::net::now_ms(),
            },
            phase: meta.phase,
            offset: meta.offset as u64,
            total_elements: meta.total as u64,
            members: meta.members,
        };
        let envelope = SignedEnvelope::sign(&self.key, &Message::Part(header))?;
        Ok(SignedPart {
            phase: meta.phase,
            header: envelope.to_bytes(),
            payload: payload.into(),
            digest,
        })
    }

    /// Opens a received header: signature, signer = sending peer, run, model, membership
    /// and the vector length `total`.
    pub(super) fn open(
        &self,
        sender: &PeerId,
        header: &[u8],
        total: usize,
    ) -> Result<PartHeader, Rejection> {
        let (signer, message) = SignedEnvelope::open_bytes(header, MAX_ENVELOPE_BYTES)
            .map_err(|_| Rejection::BadEnvelope)?;
        let Message::Part(part) = message else {
            return Err(Rejection::NotADelta);
        };
        let origin = (&self.run, &self.model);
        check_origin(&signer, sender, &part.body, origin, &self.admission)?;
        if part.total_elements != total as u64 || part.body.codec != self.codec {
            return Err(Rejection::BadPayload);
        }
        Ok(part)
    }
}

/// Decodes a checked part's payload into absolute values (`anchor`: the part's slice of the
/// run's anchor) in `out`; `transfer_digest` is the digest the stream framing checked.
pub(crate) fn decode(
    part: &PartHeader,
    payload: &[u8],
    transfer_digest: &Digest,
    anchor: &[f32],
    out: &mut Vec<f32>,
) -> Result<(), Rejection> {
    part.body
        .decode_received_payload_into(payload, anchor.len() as u64, transfer_digest, out)
        .map_err(|e| match e {
            CodecError::NonFinite(_) => Rejection::NonFinite,
            _ => Rejection::BadPayload,
        })?;
    let mut finite = true;
    for (v, a) in out.iter_mut().zip(anchor) {
        *v += a;
        finite &= v.is_finite();
    }
    if finite {
        Ok(())
    } else {
        Err(Rejection::NonFinite)
    }
}

/// The group's split of `total` elements into one contiguous part per member.
pub(super) fn split(total: usize, members: usize) -> Vec<std::ops::Range<usize>> {
    let n = members.max(1);
    (0..n)
        .map(|k| (k * total / n)..((k + 1) * total / n))
        .collect()
}
