//! Bulk payload push over dedicated `libp2p-stream` streams.
//!
//! One stream per transfer, on the protocol of its [`PayloadKind`]:
//!
//! ```text
//! sender → preamble  (framing message: version u8 = 1 | flags u8 = 0 | app header bytes)
//! sender → payload   (framing payload: header, bounded chunks, BLAKE3 trailer)
//! receiver → ack     (framing message: status u8; 0 = accepted + 32-byte digest,
//!                                       1 = refused + UTF-8 reason)
//! ```
//!
//! A receiver with an [`Admission`] check may refuse right after the preamble, before the
//! payload: the sender reads the ack while it writes, so a refused payload (a part of a round
//! the receiver is past, say) costs a header's bytes instead of a model's.
//!
//! Both sides wrap the stream in a [`StallGuard`] and the whole exchange in a deadline
//! (`NetLimits::transfer_deadline`), so a vanished peer yields a typed [`TransferError`].
//! The receiver hands the payload to the application before acknowledging it, so a
//! successful send means the payload was verified and queued on the remote side. The sender
//! closes the stream once it has read the ack, and the receiver waits for that close (briefly):
//! a receiver that shuts down on the payload it just took in still gets its ack out.

use std::time::{Duration, Instant};

use std::sync::Arc;

use futures::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use libp2p::{PeerId, Stream, StreamProtocol};
use murmur_protocol::Digest;
use murmur_protocol::framing::{self, FrameLimits};
use tokio::sync::mpsc;

use super::config::NetLimits;
use super::error::TransferError;
use super::events::{IncomingPayload, TransferStats};
use super::stall::{StallGuard, is_stall};

const PREAMBLE_VERSION: u8 = 1;
const ACK_MAX: u32 = 1024;
const ACK_OK: u8 = 0;
/// Refusal status, with a reason (an [`Admission`] check that failed).
const ACK_REFUSED: u8 = 1;
/// Longest a receiver waits, after acknowledging, for the sender to close its side.
const ACK_LINGER: Duration = Duration::from_secs(2);

/// How long a sender whose payload write failed waits for a refusal that explains it.
const REFUSAL_GRACE: Duration = Duration::from_millis(500);

/// A receiver's check of an application header before it reads the payload: the sending peer
/// and the header; an error refuses the payload with that reason. Runs on the stream's task.
pub type Admission = Arc<dyn Fn(&PeerId, &[u8]) -> Result<(), String> + Send + Sync>;

/// What a pushed payload is; each kind has its own stream protocol and subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PayloadKind {
    /// A model delta (gossip averaging).
    Delta,
    /// One part of a butterfly all-reduce (contribution or result).
    Part,
    /// Pipeline activations (forward pass).
    Activations,
    /// Pipeline gradients (backward pass).
    Gradients,
    /// Pipeline control: plan notices and step commits.
    Control,
    /// Anything else (tools, tests, benchmarks).
    Blob,
}

impl PayloadKind {
    /// Every kind.
    pub const ALL: [PayloadKind; 6] = [
        PayloadKind::Delta,
        PayloadKind::Part,
        PayloadKind::Activations,
        PayloadKind::Gradients,
        PayloadKind::Control,
        PayloadKind::Blob,
    ];

    /// The stream protocol id of this kind.
    pub fn protocol(self) -> StreamProtocol {
        StreamProtocol::new(self.protocol_str())
    }

    /// Whether streams beyond the receiver's concurrency limit wait for a turn (the pipeline's
    /// small, promptly drained messages) rather than being reset (deltas, blobs).
    pub fn queues_when_busy(self) -> bool {
        matches!(
            self,
            PayloadKind::Part
                | PayloadKind::Activations
                | PayloadKind::Gradients
                | PayloadKind::Control
        )
    }

    /// The stream protocol id as text.
    pub fn protocol_str(self) -> &'static str {
        match self {
            PayloadKind::Delta => "/murmur/delta/1.0.0",
            PayloadKind::Part => "/murmur/part/1.1.0",
            PayloadKind::Activations => "/murmur/activations/1.0.0",
            PayloadKind::Gradients => "/murmur/gradients/1.0.0",
            PayloadKind::Control => "/murmur/pipeline-control/1.0.0",
            PayloadKind::Blob => "/murmur/blob/1.0.0",
        }
    }
}

/// Frame limits a receiver applies.
pub(crate) fn frame_limits(limits: &NetLimits) -> FrameLimits {
    FrameLimits {
        max_payload: limits.max_payload_bytes as u64,
        max_chunk: u32::try_from(limits.max_chunk_bytes).unwrap_or(u32::MAX),
    }
}

fn max_header(limits: &NetLimits) -> u32 {
    u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX)
}

/// Maps I/O errors from a [`StallGuard`] to [`TransferError::Stalled`].
pub(crate) fn classify(error: TransferError, limits: &NetLimits) -> TransferError {
    match error {
        TransferError::Io(io) if is_stall(&io) => TransferError::Stalled(limits.stall_timeout),
        other => other,
    }
}

/// Pushes `payload` with `header` to `peer` (the caller bounds it with a deadline); `digest`
/// is the payload's BLAKE3 digest when the caller already holds it (not hashed again).
pub(crate) async fn send(
    stream: Stream,
    header: &[u8],
    payload: &[u8],
    digest: Option<Digest>,
    limits: &NetLimits,
) -> Result<TransferStats, TransferError> {
    let started = Instant::now();
    if payload.len() > limits.max_payload_bytes {
        return Err(TransferError::TooLarge {
            len: payload.len(),
            max: limits.max_payload_bytes,
        });
    }
    let stream = StallGuard::new(stream, limits.stall_timeout);
    let (mut reader, mut writer) = stream.split();
    let mut preamble = Vec::with_capacity(2 + header.len());
    preamble.extend_from_slice(&[PREAMBLE_VERSION, 0]);
    preamble.extend_from_slice(header);
    framing::write_message(&mut writer, &preamble, max_header(limits)).await?;
    let chunk = u32::try_from(limits.chunk_bytes).unwrap_or(framing::DEFAULT_CHUNK);
    let (digest, acked) = {
        let write = async {
            match digest {
                Some(known) => {
                    framing::write_payload_with_digest(&mut writer, payload, chunk, known).await
                }
                None => framing::write_payload(&mut writer, payload, chunk).await,
            }
        };
        let ack = read_ack(&mut reader);
        tokio::pin!(write, ack);
        // The ack is read while the payload is written: a receiver may refuse after the
        // header. An accepting ack can be ready before the last flush returns; the write is
        // then finished before the digests are compared.
        tokio::select! {
            biased;
            written = &mut write => match written {
                Ok(digest) => (digest, ack.await?),
                Err(error) => {
                    // A receiver that refused and dropped the stream fails the write: its
                    // refusal, if it came, is the reason (and is not worth a retry).
                    let refusal = tokio::time::timeout(REFUSAL_GRACE, &mut ack).await;
                    return Err(match refusal {
                        Ok(Err(refused @ TransferError::Refused(_))) => refused,
                        _ => error.into(),
                    });
                }
            },
            acked = &mut ack => {
                let acked = acked?;
                (write.await?, acked)
            }
        }
    };
    if acked != digest {
        return Err(TransferError::AckMismatch);
    }
    let _ = writer.close().await;
    Ok(TransferStats {
        bytes: payload.len() as u64,
        elapsed: started.elapsed(),
        digest,
    })
}

async fn read_ack<R: AsyncRead + Unpin>(stream: &mut R) -> Result<Digest, TransferError> {
    let ack = framing::read_message(stream, ACK_MAX).await?;
    match ack.split_first() {
        Some((&ACK_OK, digest)) => {
            let digest: [u8; 32] = digest
                .try_into()
                .map_err(|_| TransferError::BadPreamble("ack digest length"))?;
            Ok(Digest(digest))
        }
        Some((&ACK_REFUSED, reason)) => Err(TransferError::Refused(
            String::from_utf8_lossy(reason).into_owned(),
        )),
        _ => Err(TransferError::BadPreamble("unknown ack status")),
    }
}

/// Receives one pushed payload from `stream`, delivers it on `deliver`, then acknowledges;
/// a header that `admission` refuses is answered with the refusal before the payload.
pub(crate) async fn receive(
    peer: PeerId,
    kind: PayloadKind,
    stream: Stream,
    limits: &NetLimits,
    deliver: &mpsc::Sender<IncomingPayload>,
    admission: Option<&Admission>,
) -> Result<(), TransferError> {
    let started = Instant::now();
    let mut stream = StallGuard::new(stream, limits.stall_timeout);
    let preamble = framing::read_message(&mut stream, max_header(limits)).await?;
    let header = match preamble.as_slice() {
        [PREAMBLE_VERSION, 0, header @ ..] => header.to_vec(),
        [PREAMBLE_VERSION, ..] => return Err(TransferError::BadPreamble("unknown flags")),
        _ => return Err(TransferError::BadPreamble("unsupported preamble version")),
    };
    if let Some(Err(reason)) = admission.map(|admit| admit(&peer, &header)) {
        let mut refusal = Vec::with_capacity(1 + reason.len());
        refusal.push(ACK_REFUSED);
        refusal.extend(reason.bytes().take(ACK_MAX as usize - 1));
        framing::write_message(&mut stream, &refusal, ACK_MAX).await?;
        let _ = stream.close().await;
        return Ok(());
    }
    // The payload says how long it is: it gets the deadline of that length (the caller's,
    // sized for the largest payload, stays the bound of everything else).
    let announced = framing::read_payload_header(&mut stream, &frame_limits(limits)).await?;
    let deadline =
        limits.transfer_deadline(usize::try_from(announced.total()).unwrap_or(usize::MAX));
    let body = framing::read_payload_body(&mut stream, announced);
    let (payload, digest) = tokio::time::timeout(deadline.saturating_sub(started.elapsed()), body)
        .await
        .map_err(|_| TransferError::Deadline(deadline))??;
    let incoming = IncomingPayload {
        peer,
        kind,
        header,
        payload,
        digest,
        elapsed: started.elapsed(),
    };
    deliver
        .send(incoming)
        .await
        .map_err(|_| TransferError::Shutdown)?;
    let mut ack = Vec::with_capacity(33);
    ack.push(ACK_OK);
    ack.extend_from_slice(digest.as_bytes());
    framing::write_message(&mut stream, &ack, ACK_MAX).await?;
    let _ = stream.close().await;
    // The sender closes its side once it has read the ack: until then this task is a transfer
    // under way, which a shutdown lets finish (a muxer may still hold the ack).
    let mut rest = [0u8; 1];
    let _ = tokio::time::timeout(ACK_LINGER, stream.read(&mut rest)).await;
    Ok(())
}
