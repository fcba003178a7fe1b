//! Error types of the network layer: one enum for control operations, one for transfers.

use std::time::Duration;

use libp2p::PeerId;
use murmur_protocol::framing::FrameError;

/// Errors of network control operations (start, dial, publish, queries).
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Building a transport failed.
    #[error("transport setup failed: {0}")]
    Transport(String),
    /// Listening on an address failed.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// Dialing failed.
    #[error("dial failed: {0}")]
    Dial(String),
    /// Publishing on gossipsub failed (no subscribed peers yet, too large, duplicate…).
    #[error("publish failed: {0}")]
    Publish(String),
    /// The payload kind already has a subscriber.
    #[error("payload kind {0} already has a subscriber")]
    AlreadySubscribed(&'static str),
    /// The swarm task is gone (the network was shut down).
    #[error("the network has shut down")]
    Shutdown,
    /// The peer book could not be read or written.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Errors of a single payload transfer or state fetch.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// Could not open a stream to the peer (not connected, unreachable, protocol unsupported).
    #[error("cannot open a stream to {peer}: {reason}")]
    Open {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// The whole transfer did not finish within its deadline.
    #[error("transfer did not finish within {0:?}")]
    Deadline(Duration),
    /// No bytes moved for the stall timeout (the peer vanished or froze).
    #[error("no progress for {0:?}: peer stalled or vanished")]
    Stalled(Duration),
    /// The stream broke (connection closed, reset, peer shut down).
    #[error("stream i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent a malformed, oversized, truncated or corrupted frame.
    #[error("bad frame: {0}")]
    Frame(FrameError),
    /// The transfer preamble or acknowledgement was malformed.
    #[error("malformed transfer preamble: {0}")]
    BadPreamble(&'static str),
    /// The payload is larger than the configured limit.
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The receiver refused the transfer (busy, rejected the header, unknown request).
    #[error("refused by the peer: {0}")]
    Refused(String),
    /// The receiver acknowledged a different digest than the one sent.
    #[error("the peer acknowledged a different digest")]
    AckMismatch,
    /// The local node is shutting down.
    #[error("the network has shut down")]
    Shutdown,
}

impl From<FrameError> for TransferError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(io) => TransferError::Io(io),
            other => TransferError::Frame(other),
        }
    }
}

impl TransferError {
    /// Whether retrying the transfer may succeed: the stream could not be opened or broke
    /// before the acknowledgement (a connection replaced during start-up, a busy receiver
    /// resetting it), as opposed to a refusal, bad data or a dead peer's deadline.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            TransferError::Open { .. }
                | TransferError::Io(_)
                | TransferError::Frame(FrameError::Truncated { .. })
        )
    }

    /// Whether this error is the remote's fault (bad data) rather than a network failure,
    /// i.e. whether it should count against the peer's misbehaviour score.
    pub fn is_misbehaviour(&self) -> bool {
        match self {
            // A stream that ends early is what a vanished peer looks like, not an attack.
            TransferError::Frame(FrameError::Truncated { .. }) => false,
            TransferError::Frame(_) | TransferError::BadPreamble(_) => true,
            _ => false,
        }
    }
}
