//! Error types of the network layer: one enum for control operations, one for transfers.

use std::time::Duration;

use libp2p::PeerId;
use murmur_protocol::framing::FrameError;

/// A boxed error of any of the types one setup step can fail with.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of network control operations (start, dial, publish, queries).
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Building the swarm failed: a transport, a behaviour, or the announcement topic's
    /// subscription (libp2p reports each with its own error type, hence boxed).
    #[error("transport setup failed ({stage})")]
    Transport {
        /// The step that failed.
        stage: &'static str,
        /// What libp2p reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// Listening on an address failed.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: String,
        /// What the transport reported.
        #[source]
        source: libp2p::TransportError<std::io::Error>,
    },
    /// Dialing failed.
    #[error("dial failed")]
    Dial(#[source] libp2p::swarm::DialError),
    /// Publishing on gossipsub failed (no subscribed peers yet, too large, duplicate…).
    #[error("publish failed")]
    Publish(#[source] libp2p::gossipsub::PublishError),
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
    #[error("cannot open a stream to {peer}")]
    Open {
        /// The peer.
        peer: PeerId,
        /// What libp2p-stream reported.
        #[source]
        source: libp2p_stream::OpenStreamError,
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
    /// The receiver refused the transfer (busy, rejected the header, unknown request), with
    /// the reason it sent (text from the peer, not a local error).
    #[error("refused by the peer: {0}")]
    Refused(String),
    /// The receiver acknowledged a different digest than the one sent.
    #[error("the peer acknowledged a different digest")]
    AckMismatch,
    /// The local node is shutting down.
    #[error("the network has shut down")]
    Shutdown,
}

impl NetError {
    /// A failed swarm-building step, its error boxed.
    pub(crate) fn transport(stage: &'static str, source: impl Into<BoxError>) -> Self {
        NetError::Transport {
            stage,
            source: source.into(),
        }
    }
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
