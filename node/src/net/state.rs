//! State transfer for late joiners: request/response over a `/murmur/state/1.0.0` stream.
//!
//! ```text
//! requester → request   (framing message: application request, e.g. a signed StateRequest)
//! server    → response  (framing message: status u8; 0 = ok + application header,
//!                                          1 = refused + UTF-8 reason)
//! server    → payload   (framing payload, only after status 0)
//! ```
//!
//! The server side hands each request to the application as a [`StateRequestEvent`] on a
//! bounded channel and streams whatever it replies; a full channel or a late reply refuses
//! the request instead of queueing without bound.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::AsyncWriteExt;
use libp2p::{PeerId, Stream, StreamProtocol};
use murmur_protocol::Digest;
use murmur_protocol::framing;
use tokio::sync::{mpsc, oneshot};

use super::config::NetLimits;
use super::error::TransferError;
use super::stall::StallGuard;
use super::transfer::frame_limits;

/// The state stream protocol id.
pub const STATE_PROTOCOL: StreamProtocol = StreamProtocol::new("/murmur/state/1.0.0");

const STATUS_OK: u8 = 0;
const STATUS_REFUSED: u8 = 1;
/// How long the application may take to answer a state request.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// The application's answer to a state request.
#[derive(Debug)]
pub enum StateReply {
    /// Send `payload` preceded by `header` (e.g. a signed `StateHeader`).
    Serve {
        /// Application header.
        header: Vec<u8>,
        /// The state bytes (cheaply shareable between concurrent requesters).
        payload: Bytes,
    },
    /// Refuse with a reason.
    Refuse(String),
}

/// A state request from a peer, to be answered with [`StateRequestEvent::respond`].
#[derive(Debug)]
pub struct StateRequestEvent {
    /// The requesting peer.
    pub peer: PeerId,
    /// The application request bytes.
    pub request: Vec<u8>,
    reply: oneshot::Sender<StateReply>,
}

impl StateRequestEvent {
    /// Answers the request (ignored if the requester already gave up).
    pub fn respond(self, reply: StateReply) {
        let _ = self.reply.send(reply);
    }
}

/// A fetched state.
#[derive(Debug)]
pub struct StateResponse {
    /// The server's application header.
    pub header: Vec<u8>,
    /// The state bytes, digest verified.
    pub payload: Vec<u8>,
    /// BLAKE3 digest of the payload.
    pub digest: Digest,
    /// Time from opening the stream to the end of the payload.
    pub elapsed: Duration,
}

fn max_header(limits: &NetLimits) -> u32 {
    u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX)
}

/// Requester side (the caller bounds it with a deadline).
pub(crate) async fn fetch(
    stream: Stream,
    request: &[u8],
    limits: &NetLimits,
) -> Result<StateResponse, TransferError> {
    let started = Instant::now();
    let mut stream = StallGuard::new(stream, limits.stall_timeout);
    framing::write_message(&mut stream, request, max_header(limits)).await?;
    let response = framing::read_message(&mut stream, max_header(limits)).await?;
    let header = match response.split_first() {
        Some((&STATUS_OK, header)) => header.to_vec(),
        Some((&STATUS_REFUSED, reason)) => {
            return Err(TransferError::Refused(
                String::from_utf8_lossy(reason).into_owned(),
            ));
        }
        _ => return Err(TransferError::BadPreamble("unknown state response status")),
    };
    let (payload, digest) = framing::read_payload(&mut stream, &frame_limits(limits)).await?;
    let _ = stream.close().await;
    Ok(StateResponse {
        header,
        payload,
        digest,
        elapsed: started.elapsed(),
    })
}

/// Server side: read the request, ask the application, stream the answer.
pub(crate) async fn serve(
    peer: PeerId,
    stream: Stream,
    limits: &NetLimits,
    app: &mpsc::Sender<StateRequestEvent>,
) -> Result<(), TransferError> {
    let mut stream = StallGuard::new(stream, limits.stall_timeout);
    let request = framing::read_message(&mut stream, max_header(limits)).await?;
    let (reply, answer) = oneshot::channel();
    let reply = match app.try_send(StateRequestEvent {
        peer,
        request,
        reply,
    }) {
        Ok(()) => match tokio::time::timeout(REPLY_TIMEOUT, answer).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => StateReply::Refuse("request dropped".into()),
            Err(_) => StateReply::Refuse("server too slow to answer".into()),
        },
        Err(mpsc::error::TrySendError::Full(_)) => StateReply::Refuse("server busy".into()),
        Err(mpsc::error::TrySendError::Closed(_)) => StateReply::Refuse("not serving".into()),
    };
    match reply {
        StateReply::Serve { header, payload } => {
            let mut response = Vec::with_capacity(1 + header.len());
            response.push(STATUS_OK);
            response.extend_from_slice(&header);
            framing::write_message(&mut stream, &response, max_header(limits)).await?;
            let chunk = u32::try_from(limits.chunk_bytes).unwrap_or(framing::DEFAULT_CHUNK);
            framing::write_payload(&mut stream, &payload, chunk).await?;
        }
        StateReply::Refuse(reason) => {
            let mut response = vec![STATUS_REFUSED];
            response.extend_from_slice(reason.as_bytes());
            framing::write_message(&mut stream, &response, max_header(limits)).await?;
        }
    }
    let _ = stream.close().await;
    Ok(())
}
