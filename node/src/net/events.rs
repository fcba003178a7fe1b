//! What the network reports to the rest of the node: events, received payloads, stats.

use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use murmur_protocol::Digest;

use super::error::TransferError;
use super::transfer::PayloadKind;

/// Something that happened in the network (delivered on a bounded channel; dropped with a
/// warning when the consumer lags, so the swarm task never blocks).
#[derive(Debug)]
pub enum NetEvent {
    /// A new address we listen on.
    Listening(Multiaddr),
    /// A connection to a peer was established (first connection to that peer).
    PeerConnected {
        /// The peer.
        peer: PeerId,
        /// The remote address of the connection.
        addr: Multiaddr,
    },
    /// The last connection to a peer closed.
    PeerDisconnected(PeerId),
    /// A peer was found (Kademlia, mDNS, identify) that was not known before.
    PeerDiscovered(PeerId),
    /// An external address of this node was confirmed (AutoNAT, configuration).
    ExternalAddrConfirmed(Multiaddr),
    /// A relay accepted our reservation; we are reachable through it.
    RelayReservation {
        /// The relay.
        relay: PeerId,
    },
    /// A direct connection was established by hole punching.
    HolePunched(PeerId),
    /// An inbound transfer or state request failed.
    InboundFailed {
        /// The remote peer.
        peer: PeerId,
        /// The stream protocol.
        protocol: &'static str,
        /// What went wrong.
        error: TransferError,
    },
    /// A peer misbehaved (invalid gossip, bad frames) and was scored.
    Misbehaved {
        /// The peer.
        peer: PeerId,
        /// Its accumulated score.
        score: u32,
        /// What it did.
        reason: String,
    },
}

/// A payload pushed to us by a peer, digest verified.
#[derive(Debug)]
pub struct IncomingPayload {
    /// The sender.
    pub peer: PeerId,
    /// Which kind of payload (from the stream protocol).
    pub kind: PayloadKind,
    /// The application header that came with it (e.g. an encoded `SignedEnvelope`).
    pub header: Vec<u8>,
    /// The payload.
    pub payload: Vec<u8>,
    /// Its BLAKE3 digest (verified against the stream trailer).
    pub digest: Digest,
    /// Time from the first byte of the stream to the end of the payload.
    pub elapsed: Duration,
}

/// Outcome of a successful outgoing transfer.
#[derive(Clone, Copy, Debug)]
pub struct TransferStats {
    /// Payload bytes sent.
    pub bytes: u64,
    /// Time from opening the stream to the receiver's acknowledgement.
    pub elapsed: Duration,
    /// BLAKE3 digest of the payload, acknowledged by the receiver.
    pub digest: Digest,
}

impl TransferStats {
    /// Achieved throughput in bytes per second.
    pub fn bytes_per_sec(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}
