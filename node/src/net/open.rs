//! Opening a `libp2p-stream` stream to a peer, asking again when a request stalls.
//!
//! libp2p-stream 0.5.0-alpha can park a request forever. This happens when the request is made
//! after a connection's handler was created but before the swarm reports the connection as
//! established. The request then waits on a pending channel that the new connection never
//! takes, and the dial by peer id that would attach it is skipped, because the peer now counts
//! as connected. A second request finds the connection. So an attempt that yields no stream
//! within [`FIRST_ATTEMPT`] is made again, with doubling patience (a slow dial through a relay
//! is still waited for). The caller's transfer deadline bounds the whole.
//!
//! An abandoned request may still open a stream later, which is then dropped unused. The peer
//! sees a stream that ends before its preamble: a truncated transfer, which is not scored as
//! misbehaviour.

use std::time::Duration;

use libp2p::{PeerId, Stream, StreamProtocol};

use super::error::TransferError;

/// How long the first attempt may take before it is made again.
const FIRST_ATTEMPT: Duration = Duration::from_secs(1);
/// The most one attempt is given.
const LONGEST_ATTEMPT: Duration = Duration::from_secs(8);

/// Opens a stream of `protocol` to `peer`; runs until it succeeds or fails for good (wrap it
/// in a deadline).
pub(crate) async fn open_stream(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    protocol: StreamProtocol,
) -> Result<Stream, TransferError> {
    let mut patience = FIRST_ATTEMPT;
    loop {
        let attempt = control.open_stream(peer, protocol.clone());
        match tokio::time::timeout(patience, attempt).await {
            Ok(opened) => {
                return opened.map_err(|source| TransferError::Open { peer, source });
            }
            Err(_) => {
                tracing::debug!(%peer, %protocol, ?patience, "no stream yet; asking again");
                patience = (patience * 2).min(LONGEST_ATTEMPT);
            }
        }
    }
}
