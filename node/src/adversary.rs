//! The red team: a node that corrupts what it sends, for robustness tests and
//! `murmur testnet --malicious`. The trusted averaging engine knows nothing of it: the
//! adversary rewrites each delta after the engine made it — decodes the payload, corrupts the
//! model change, re-encodes it and signs a new header — so what honest nodes receive is a
//! validly signed delta of a corrupted model, exactly what a hostile peer could send.

use std::str::FromStr;

use ed25519_dalek::SigningKey;
use murmur_protocol::envelope::MAX_ENVELOPE_BYTES;
use murmur_protocol::{CodecError, EnvelopeError, Message, MessageError, SignedEnvelope};

use crate::averaging::Outgoing;

/// How a malicious test node corrupts what it sends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tamper {
    /// Multiply the model change by a factor (e.g. 100).
    Scale(f32),
    /// Negate the model change.
    Flip,
}

impl Tamper {
    /// Applies the corruption to a model change.
    pub fn apply(self, values: &mut [f32]) {
        let factor = match self {
            Tamper::Scale(s) => s,
            Tamper::Flip => -1.0,
        };
        for v in values {
            *v *= factor;
        }
    }
}

impl FromStr for Tamper {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "flip" => Ok(Tamper::Flip),
            _ => s
                .strip_prefix("scale:")
                .and_then(|f| f.parse::<f32>().ok())
                .filter(|f| f.is_finite())
                .map(Tamper::Scale)
                .ok_or_else(|| format!("bad tamper mode {s:?}: expected flip or scale:F")),
        }
    }
}

/// Why a delta could not be corrupted.
#[derive(Debug, thiserror::Error)]
pub enum AdversaryError {
    /// The engine's own envelope did not open.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The new header could not be signed.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// The payload could not be decoded or re-encoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The envelope holds no delta.
    #[error("the outgoing envelope holds no delta")]
    NotADelta,
}

/// A node's red-team switch: corrupts its outgoing deltas with `tamper`, signing with `key`
/// (the node's own: the deltas are its, only their contents are hostile).
#[derive(Debug, Clone)]
pub struct Adversary {
    tamper: Tamper,
    key: SigningKey,
}

impl Adversary {
    /// An adversary that corrupts by `tamper` and signs with `key`.
    pub fn new(tamper: Tamper, key: SigningKey) -> Self {
        Self { tamper, key }
    }

    /// The corrupted version of `outgoing` (same round, recipients' mass and codec).
    pub fn corrupt(&self, outgoing: &Outgoing) -> Result<Outgoing, AdversaryError> {
        let (_, message) = SignedEnvelope::open_bytes(&outgoing.header, MAX_ENVELOPE_BYTES)?;
        let Message::Delta(mut header) = message else {
            return Err(AdversaryError::NotADelta);
        };
        let mut values = header
            .codec
            .decode(&outgoing.payload, header.element_count)?;
        self.tamper.apply(&mut values);
        let mut payload = Vec::new();
        let digest = header.codec.encode_into(&values, &mut payload)?;
        header.payload_len = payload.len() as u64;
        header.payload_digest = digest;
        let envelope = SignedEnvelope::sign(&self.key, &Message::Delta(header))?;
        Ok(Outgoing {
            round: outgoing.round,
            header: envelope.to_bytes(),
            payload: payload.into(),
            digest,
            mass_each: outgoing.mass_each,
        })
    }
}
