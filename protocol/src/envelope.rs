//! Signed envelopes: a message body, an ed25519 signature over it, and the signer's key.
//!
//! The signature covers a domain tag, the protocol version and the body bytes, so a
//! signature made for Murmur can never be replayed as a signature over anything else,
//! and the version cannot be rewritten without breaking it. Payloads are not signed
//! directly: headers carry the payload's BLAKE3 digest, which the signature covers.
//!
//! [`SignedEnvelope::open`] is the single entry point for untrusted bytes: it bounds the
//! input, checks the version, verifies the signature (strictly, rejecting malleable and
//! small-order keys) and checks that the signer is the peer the message claims to be.

use bincode::{Decode, Encode};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::PROTOCOL_VERSION;
use crate::ids::PeerKey;
use crate::message::{Message, MessageError};
use crate::wire::{self, MAX_MESSAGE_BYTES, WireError};

const DOMAIN: &[u8] = b"murmur/envelope/v1\0";

/// Largest encoded envelope accepted, bytes (body limit plus fixed fields).
pub const MAX_ENVELOPE_BYTES: usize = MAX_MESSAGE_BYTES + 128;

/// A message body with the ed25519 signature of its signer.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct SignedEnvelope {
    /// Protocol version of the body.
    pub version: u16,
    /// The bincode-encoded [`Message`].
    pub body: Vec<u8>,
    /// ed25519 signature over `DOMAIN || version (LE) || body`.
    pub signature: [u8; 64],
    /// The signer's ed25519 public key.
    pub signer: PeerKey,
}

/// Why an envelope was rejected.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// More bytes than [`MAX_ENVELOPE_BYTES`].
    #[error("envelope of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Input length.
        len: usize,
        /// The limit applied.
        max: usize,
    },
    /// Not a valid envelope encoding.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A protocol version this build does not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u16),
    /// The signer key is not a valid ed25519 point.
    #[error("signer key is not a valid ed25519 public key")]
    BadSignerKey,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// The body is not a valid message.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// The message claims a different peer than the one that signed it.
    #[error("signer {signer:?} is not the claimed peer {claimed:?}")]
    SignerMismatch {
        /// Who signed.
        signer: PeerKey,
        /// Who the message claims to be from.
        claimed: PeerKey,
    },
}

impl SignedEnvelope {
    /// Signs `message` with `key`.
    pub fn sign(key: &SigningKey, message: &Message) -> Result<Self, MessageError> {
        let body = message.to_bytes()?;
        let signature = key.sign(&signed_bytes(PROTOCOL_VERSION, &body));
        Ok(Self {
            version: PROTOCOL_VERSION,
            body,
            signature: signature.to_bytes(),
            signer: PeerKey(key.verifying_key().to_bytes()),
        })
    }

    /// Encodes the envelope for the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Encoding a Vec-backed value cannot fail except on writer errors, which a Vec has none of.
        wire::encode(self).unwrap_or_default()
    }

    /// Decodes an envelope, refusing inputs over `max_len` bytes before looking at them.
    /// Does not verify the signature: call [`open`](Self::open).
    pub fn from_bytes(bytes: &[u8], max_len: usize) -> Result<Self, EnvelopeError> {
        let max = max_len.min(MAX_ENVELOPE_BYTES);
        if bytes.len() > max {
            return Err(EnvelopeError::TooLarge {
                len: bytes.len(),
                max,
            });
        }
        Ok(wire::decode(bytes)?)
    }

    /// Verifies the envelope and returns the signer and the validated message.
    pub fn open(&self) -> Result<(PeerKey, Message), EnvelopeError> {
        if self.version != PROTOCOL_VERSION {
            return Err(EnvelopeError::UnsupportedVersion(self.version));
        }
        let key =
            VerifyingKey::from_bytes(&self.signer.0).map_err(|_| EnvelopeError::BadSignerKey)?;
        if key.is_weak() {
            return Err(EnvelopeError::BadSignerKey);
        }
        let signature = Signature::from_bytes(&self.signature);
        key.verify_strict(&signed_bytes(self.version, &self.body), &signature)
            .map_err(|_| EnvelopeError::BadSignature)?;
        let message = Message::from_bytes(&self.body)?;
        let claimed = *message.claimed_peer();
        if claimed != self.signer {
            return Err(EnvelopeError::SignerMismatch {
                signer: self.signer,
                claimed,
            });
        }
        Ok((self.signer, message))
    }

    /// Decodes and opens in one step.
    pub fn open_bytes(bytes: &[u8], max_len: usize) -> Result<(PeerKey, Message), EnvelopeError> {
        Self::from_bytes(bytes, max_len)?.open()
    }
}

fn signed_bytes(version: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(DOMAIN.len() + 2 + body.len());
    out.extend_from_slice(DOMAIN);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Convenience: the [`PeerKey`] of a signing key.
pub fn peer_key(key: &SigningKey) -> PeerKey {
    PeerKey(key.verifying_key().to_bytes())
}
