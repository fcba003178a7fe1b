//! Murmur's wire protocol: the security boundary of the system.
//!
//! This crate does no I/O of its own. It defines
//! - [`ids`]: newtype identifiers (run, model fingerprint, peer key, digest);
//! - [`message`]: the versioned, bincode-encoded messages peers exchange
//!   (presence/capacity [`Announcement`], [`DeltaHeader`], state transfer headers);
//! - [`envelope`]: the [`SignedEnvelope`] that carries a message with an ed25519
//!   signature, and the checks that bind the signer to the peer the message claims;
//! - [`codec`]: payload codecs for f32 parameter vectors (raw, f16, bf16, blockwise
//!   int8, top-k) with exact decode contracts and error feedback;
//! - [`framing`]: a chunked, digest-checked stream framing over any
//!   `futures::io::{AsyncRead, AsyncWrite}`;
//! - [`part`]: the header of one slice of a butterfly (scatter-reduce) all-reduce;
//! - [`pipeline`]: the header of activation, gradient and control payloads between
//!   the holders of consecutive layer shards;
//! - [`manifest`]: the owner-signed [`PoolManifest`] listing the peers allowed to
//!   contribute to a closed run, and its text file format.
//!
//! Every decoder bounds lengths before allocating and rejects unknown versions,
//! unknown codecs, wrong element counts, bad signatures, digest mismatches and
//! non-finite values, each with its own error variant. Signing covers the BLAKE3
//! digest of a payload, so a large payload is hashed once and never fed to ed25519.
//!
//! The byte-level format is specified in `docs/protocol.md`.
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod codec;
pub mod envelope;
pub mod framing;
pub mod ids;
pub mod manifest;
pub mod message;
pub mod part;
pub mod pipeline;
mod wire;

pub use codec::{Codec, CodecError, ErrorFeedback};
pub use envelope::{EnvelopeError, SignedEnvelope};
pub use ids::{Digest, ModelFingerprint, PeerKey, RunId};
pub use manifest::{ManifestError, PoolManifest, SignedManifest};
pub use message::{
    Announcement, Capacity, DeltaHeader, LinkStat, Message, MessageError, StateHeader, StateRequest,
};
pub use part::{PartHeader, PartPhase};
pub use wire::WireError;

/// The protocol version carried by every envelope and stream header this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Re-export of the ed25519 implementation the protocol signs with.
pub use ed25519_dalek;
