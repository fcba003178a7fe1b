//! The messages peers exchange, each bincode-encoded inside a [`SignedEnvelope`].
//!
//! [`Message`] is the tagged union that is signed. Each variant has a `validate`
//! step that bounds every variable-length field and rejects non-finite numbers,
//! so the node never acts on a message that decoded but makes no sense.
//!
//! [`SignedEnvelope`]: crate::SignedEnvelope

use bincode::{Decode, Encode};

use crate::codec::{Codec, CodecError};
use crate::ids::{Digest, ModelFingerprint, PeerKey, RunId};
use crate::part::PartHeader;
use crate::pipeline::PIPE_VERSION;
use crate::wire::{self, WireError};

/// Most listen addresses an announcement may carry.
pub const MAX_LISTEN_ADDRS: usize = 32;
/// Longest listen address (a multiaddr in text form), in bytes.
pub const MAX_ADDR_LEN: usize = 256;
/// Longest device description, in bytes.
pub const MAX_DEVICE_LEN: usize = 128;
/// Most link measurements an announcement may carry.
pub const MAX_LINKS: usize = 64;
/// Largest parameter vector a delta or state transfer may describe (2^32 elements, 16 GiB of f32).
pub const MAX_ELEMENTS: u64 = 1 << 32;

/// Everything a signed envelope can carry.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum Message {
    /// Presence and capacity of a peer (gossiped).
    Announcement(Announcement),
    /// Describes a model delta payload that follows on a stream.
    Delta(DeltaHeader),
    /// Asks a peer for (a range of) its current model state.
    StateRequest(StateRequest),
    /// Describes a model state payload that follows on a stream.
    State(StateHeader),
    /// Describes one part of a butterfly all-reduce that follows on a stream.
    Part(PartHeader),
}

/// A measured link from the announcing peer to a neighbour.
#[derive(Debug, Clone, Copy, PartialEq, Encode, Decode)]
pub struct LinkStat {
    /// The neighbour.
    pub peer: PeerKey,
    /// Round-trip time in microseconds.
    pub rtt_us: u32,
    /// Measured throughput to that neighbour in bytes per second (0 if unknown).
    pub bytes_per_sec: u64,
}

/// Measured compute capacity of a peer.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Capacity {
    /// Training throughput of the run's model on this peer, samples per second.
    pub samples_per_sec: f32,
    /// Estimated sustained compute, FLOP per second.
    pub flops_per_sec: f64,
    /// Memory available for model state and activations, bytes.
    pub memory_bytes: u64,
    /// Human-readable device description (adapter name, backend).
    pub device: String,
    /// Measured links to neighbours.
    pub links: Vec<LinkStat>,
}

/// A peer's presence and capacity announcement, gossiped on the run's topic.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Announcement {
    /// The announcing peer; must equal the envelope's signer.
    pub peer: PeerKey,
    /// The run the peer trains.
    pub run: RunId,
    /// The model architecture it trains.
    pub model: ModelFingerprint,
    /// Its measured capacity.
    pub capacity: Capacity,
    /// Its current synchronisation round.
    pub round: u64,
    /// Multiaddrs (text) it listens on.
    pub listen_addrs: Vec<String>,
    /// Wall-clock time of the announcement, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

/// Header of a model delta; the payload follows separately on a stream.
///
/// The signature over this header covers `payload_digest`, which binds the payload.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct DeltaHeader {
    /// The run this delta belongs to.
    pub run: RunId,
    /// Architecture the delta applies to.
    pub model: ModelFingerprint,
    /// The peer that produced the delta; must equal the envelope's signer.
    pub peer: PeerKey,
    /// Round the delta's base parameters belong to (replay key with `peer`).
    pub base_round: u64,
    /// Local optimizer steps behind the delta.
    pub local_steps: u32,
    /// Fresh training samples behind the delta since the producer's previous sync.
    pub samples: u64,
    /// Averaging mass the message carries, in samples (push-sum weight; see
    /// `docs/architecture.md`). Finite and non-negative.
    pub weight: f64,
    /// How the payload encodes the f32 delta.
    pub codec: Codec,
    /// Number of f32 elements the payload decodes to.
    pub element_count: u64,
    /// Exact payload length in bytes.
    pub payload_len: u64,
    /// BLAKE3 digest of the payload.
    pub payload_digest: Digest,
    /// Wall-clock time of creation, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

/// Request for a peer's current model state (late joiners, restarts).
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct StateRequest {
    /// The requester; must equal the envelope's signer.
    pub peer: PeerKey,
    /// The run.
    pub run: RunId,
    /// Expected architecture.
    pub model: ModelFingerprint,
    /// Byte offset into the state payload to resume from.
    pub offset: u64,
    /// Most bytes wanted in this response (0 = to the end).
    pub max_len: u64,
}

/// Header of a model state payload (all of it, or the requested byte range).
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct StateHeader {
    /// The serving peer; must equal the envelope's signer.
    pub peer: PeerKey,
    /// The run.
    pub run: RunId,
    /// Architecture of the state.
    pub model: ModelFingerprint,
    /// Round the state belongs to.
    pub round: u64,
    /// Samples the state has been trained on, network-wide as far as the server knows.
    pub samples: u64,
    /// Length of the whole state payload, bytes.
    pub total_len: u64,
    /// BLAKE3 digest of the whole state payload.
    pub total_digest: Digest,
    /// Offset of the range that follows.
    pub offset: u64,
    /// Length of the range that follows.
    pub range_len: u64,
}

/// Why a message was rejected.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// Not a valid encoding.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A variable-length field exceeds its bound.
    #[error("field `{field}` too long: {len} > {max}")]
    FieldTooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A number is NaN, infinite or negative where it must not be.
    #[error("field `{0}` is not a finite non-negative number")]
    NotFinite(&'static str),
    /// Element count and payload length disagree with the codec.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The message could not be encoded.
    #[error("cannot encode message")]
    Encode(#[source] bincode::error::EncodeError),
    /// A pipeline header of a version this build does not speak.
    #[error("pipeline header version {0} (this build speaks {PIPE_VERSION})")]
    PipeVersion(u8),
    /// A range lies outside the payload it refers to.
    #[error("range {offset}+{len} outside a payload of {total} bytes")]
    BadRange {
        /// Range offset.
        offset: u64,
        /// Range length.
        len: u64,
        /// Payload length.
        total: u64,
    },
}

impl Message {
    /// Validates and encodes the message body (what the envelope signs).
    pub fn to_bytes(&self) -> Result<Vec<u8>, MessageError> {
        self.validate()?;
        wire::encode(self).map_err(MessageError::Encode)
    }

    /// Decodes and validates a message body.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MessageError> {
        let msg: Message = wire::decode(bytes)?;
        msg.validate()?;
        Ok(msg)
    }

    /// The peer the message claims to come from.
    pub fn claimed_peer(&self) -> &PeerKey {
        match self {
            Message::Announcement(a) => &a.peer,
            Message::Delta(d) => &d.peer,
            Message::StateRequest(r) => &r.peer,
            Message::State(s) => &s.peer,
            Message::Part(p) => p.peer(),
        }
    }

    /// Checks every bound and invariant of the message.
    pub fn validate(&self) -> Result<(), MessageError> {
        match self {
            Message::Announcement(a) => a.validate(),
            Message::Delta(d) => d.validate(),
            Message::StateRequest(_) => Ok(()),
            Message::State(s) => s.validate(),
            Message::Part(p) => p.validate(),
        }
    }
}

fn bound(field: &'static str, len: usize, max: usize) -> Result<(), MessageError> {
    if len > max {
        return Err(MessageError::FieldTooLong { field, len, max });
    }
    Ok(())
}

impl Announcement {
    /// Checks bounds and finiteness.
    pub fn validate(&self) -> Result<(), MessageError> {
        bound("listen_addrs", self.listen_addrs.len(), MAX_LISTEN_ADDRS)?;
        for addr in &self.listen_addrs {
            bound("listen_addrs[]", addr.len(), MAX_ADDR_LEN)?;
        }
        self.capacity.validate()
    }
}

impl Capacity {
    /// Checks bounds and finiteness.
    pub fn validate(&self) -> Result<(), MessageError> {
        bound("capacity.device", self.device.len(), MAX_DEVICE_LEN)?;
        bound("capacity.links", self.links.len(), MAX_LINKS)?;
        if !(self.samples_per_sec.is_finite() && self.samples_per_sec >= 0.0) {
            return Err(MessageError::NotFinite("capacity.samples_per_sec"));
        }
        if !(self.flops_per_sec.is_finite() && self.flops_per_sec >= 0.0) {
            return Err(MessageError::NotFinite("capacity.flops_per_sec"));
        }
        Ok(())
    }
}

impl DeltaHeader {
    /// Checks that codec, element count and payload length agree.
    pub fn validate(&self) -> Result<(), MessageError> {
        if !(self.weight.is_finite() && self.weight >= 0.0) {
            return Err(MessageError::NotFinite("weight"));
        }
        self.codec
            .check_len(self.element_count, self.payload_len)
            .map_err(MessageError::from)
    }

    /// Verifies that `payload` is exactly the one this header describes (length and digest).
    pub fn check_payload(&self, payload: &[u8]) -> Result<(), CodecError> {
        crate::codec::check_payload(payload, self.payload_len, &self.payload_digest)
    }

    /// Verifies `payload` against this header and decodes it into `element_count` f32 values.
    ///
    /// `expected_elements` is the receiver's own parameter count: a header claiming any
    /// other count is refused before anything is allocated (a top-k payload of a few bytes
    /// could otherwise ask for a vector of 2³² elements).
    pub fn decode_payload(
        &self,
        payload: &[u8],
        expected_elements: u64,
    ) -> Result<Vec<f32>, CodecError> {
        let mut out = Vec::new();
        self.decode_payload_into(payload, expected_elements, &mut out)?;
        Ok(out)
    }

    /// Like [`decode_payload`](Self::decode_payload), into a reusable buffer. The payload
    /// is hashed while it is decoded, so it is read from memory once.
    pub fn decode_payload_into(
        &self,
        payload: &[u8],
        expected_elements: u64,
        out: &mut Vec<f32>,
    ) -> Result<(), CodecError> {
        self.check_sizes(payload, expected_elements)?;
        self.codec
            .decode_into(payload, self.element_count, Some(&self.payload_digest), out)
    }

    /// The header's element count and payload length against what the receiver expects,
    /// checked before anything is allocated or decoded.
    fn check_sizes(&self, payload: &[u8], expected_elements: u64) -> Result<(), CodecError> {
        if self.element_count != expected_elements {
            return Err(CodecError::WrongElementCount {
                expected: expected_elements,
                actual: self.element_count,
            });
        }
        if payload.len() as u64 != self.payload_len {
            return Err(CodecError::WrongLength {
                expected: self.payload_len,
                actual: payload.len() as u64,
            });
        }
        Ok(())
    }

    /// Like [`decode_payload`](Self::decode_payload) for a payload whose BLAKE3 digest was
    /// already computed in transit (`transfer_digest`, checked by the stream framing against
    /// the bytes received): when it equals the signed `payload_digest` the payload is not
    /// hashed a second time; otherwise it is checked as usual (and refused).
    pub fn decode_received_payload(
        &self,
        payload: &[u8],
        expected_elements: u64,
        transfer_digest: &Digest,
    ) -> Result<Vec<f32>, CodecError> {
        let mut out = Vec::new();
        self.decode_received_payload_into(payload, expected_elements, transfer_digest, &mut out)?;
        Ok(out)
    }

    /// Like [`decode_received_payload`](Self::decode_received_payload), into a reusable
    /// buffer (on error `out` holds unspecified values).
    pub fn decode_received_payload_into(
        &self,
        payload: &[u8],
        expected_elements: u64,
        transfer_digest: &Digest,
        out: &mut Vec<f32>,
    ) -> Result<(), CodecError> {
        if *transfer_digest != self.payload_digest {
            return self.decode_payload_into(payload, expected_elements, out);
        }
        self.check_sizes(payload, expected_elements)?;
        self.codec
            .decode_into(payload, self.element_count, None, out)
    }
}

impl StateHeader {
    /// Checks that the announced range lies inside the payload.
    pub fn validate(&self) -> Result<(), MessageError> {
        let end = self.offset.checked_add(self.range_len);
        if end.is_none_or(|end| end > self.total_len) {
            return Err(MessageError::BadRange {
                offset: self.offset,
                len: self.range_len,
                total: self.total_len,
            });
        }
        Ok(())
    }
}
