//! Stream framing over any `futures::io::{AsyncRead, AsyncWrite}`.
//!
//! Two shapes:
//! - **messages**: `len: u32 LE` then `len` bytes, for small things such as a
//!   [`SignedEnvelope`](crate::SignedEnvelope); the reader refuses `len > max` before allocating.
//! - **payloads**: a 20-byte header, bounded chunks, and a BLAKE3 trailer:
//!
//! ```text
//! header  = "MRMF" | version: u8 (=1) | flags: u8 (=0) | reserved: u16 (=0)
//!           | total_len: u64 LE | chunk_max: u32 LE
//! chunk*  = len: u32 LE (1..=chunk_max) | len bytes          until Σ len = total_len
//! trailer = BLAKE3(payload): 32 bytes
//! ```
//!
//! The reader checks `total_len` and `chunk_max` against its [`FrameLimits`] before
//! allocating, hashes while it reads, and fails with [`FrameError::DigestMismatch`]
//! if the trailer disagrees. A peer that goes away mid-payload surfaces as
//! [`FrameError::Truncated`]. Deadlines are the caller's (wrap the future in a timeout).

use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::ids::Digest;

const MAGIC: &[u8; 4] = b"MRMF";
const FRAMING_VERSION: u8 = 1;
const HEADER_LEN: usize = 20;

/// Default chunk size for payloads: 1 MiB.
pub const DEFAULT_CHUNK: u32 = 1 << 20;

/// What a payload reader is prepared to accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest payload, bytes.
    pub max_payload: u64,
    /// Largest chunk, bytes.
    pub max_chunk: u32,
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self {
            max_payload: 1 << 30,
            max_chunk: 16 << 20,
        }
    }
}

/// Why reading or writing a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The underlying stream failed.
    #[error("stream I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The stream ended before the frame was complete (the peer went away).
    #[error("stream ended after {received} of {expected} bytes")]
    Truncated {
        /// Bytes received.
        received: u64,
        /// Bytes expected.
        expected: u64,
    },
    /// A message or payload larger than the reader's limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A chunk of length 0, over the announced chunk size, or past the payload's end.
    #[error("invalid chunk length {0}")]
    BadChunk(u32),
    /// The payload header does not start with the magic bytes.
    #[error("not a Murmur payload stream")]
    BadMagic,
    /// A framing version this build does not speak.
    #[error("unsupported framing version {0}")]
    UnsupportedVersion(u8),
    /// Flags or reserved header bytes this build does not understand.
    #[error("unknown framing flags {0:#x}")]
    UnknownFlags(u8),
    /// The trailer digest does not match the bytes received.
    #[error("payload digest mismatch")]
    DigestMismatch,
}

/// Writes one length-prefixed message.
pub async fn write_message<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
    max_len: u32,
) -> Result<(), FrameError> {
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|len| *len <= max_len)
        .ok_or(FrameError::TooLarge {
            len: bytes.len() as u64,
            max: u64::from(max_len),
        })?;
    w.write_all(&len.to_le_bytes()).await?;
    w.write_all(bytes).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one length-prefixed message of at most `max_len` bytes.
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    max_len: u32,
) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 4];
    read_exact(r, &mut len, 0, 4).await?;
    let len = u32::from_le_bytes(len);
    if len > max_len {
        return Err(FrameError::TooLarge {
            len: u64::from(len),
            max: u64::from(max_len),
        });
    }
    let mut buf = vec![0u8; len as usize];
    read_exact(r, &mut buf, 0, u64::from(len)).await?;
    Ok(buf)
}

/// Writes `payload` as a chunked, digest-terminated stream and returns its digest.
pub async fn write_payload<W: AsyncWrite + Unpin>(
    w: &mut W,
    payload: &[u8],
    chunk: u32,
) -> Result<Digest, FrameError> {
    write_chunks(w, payload, chunk, None).await
}

/// Like [`write_payload`] for a payload whose BLAKE3 digest the caller already holds (e.g.
/// from the signed header that travels with it): the payload is not hashed again. A wrong
/// `digest` makes the receiver refuse the payload with [`FrameError::DigestMismatch`].
pub async fn write_payload_with_digest<W: AsyncWrite + Unpin>(
    w: &mut W,
    payload: &[u8],
    chunk: u32,
    digest: Digest,
) -> Result<Digest, FrameError> {
    write_chunks(w, payload, chunk, Some(digest)).await
}

async fn write_chunks<W: AsyncWrite + Unpin>(
    w: &mut W,
    payload: &[u8],
    chunk: u32,
    known: Option<Digest>,
) -> Result<Digest, FrameError> {
    let chunk = chunk.max(1);
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(MAGIC);
    header[4] = FRAMING_VERSION;
    header[8..16].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    header[16..20].copy_from_slice(&chunk.to_le_bytes());
    w.write_all(&header).await?;
    let mut hasher = blake3::Hasher::new();
    for part in payload.chunks(chunk as usize) {
        if known.is_none() {
            hasher.update(part);
        }
        w.write_all(&(part.len() as u32).to_le_bytes()).await?;
        w.write_all(part).await?;
    }
    let digest = known.unwrap_or_else(|| Digest::from(hasher.finalize()));
    w.write_all(digest.as_bytes()).await?;
    w.flush().await?;
    Ok(digest)
}

/// Reads a payload written by [`write_payload`], enforcing `limits`, and verifies its digest.
pub async fn read_payload<R: AsyncRead + Unpin>(
    r: &mut R,
    limits: &FrameLimits,
) -> Result<(Vec<u8>, Digest), FrameError> {
    let header = read_payload_header(r, limits).await?;
    read_payload_body(r, header).await
}

/// The header of a payload, checked against the limits it was read under: how long the
/// payload says it is (a reader sizes its deadline from it before reading the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadHeader {
    total: u64,
    chunk_max: u32,
    max_payload: u64,
}

impl PayloadHeader {
    /// The payload's length, bytes (within the limits).
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// Reads the header of a payload written by [`write_payload`], enforcing `limits`.
pub async fn read_payload_header<R: AsyncRead + Unpin>(
    r: &mut R,
    limits: &FrameLimits,
) -> Result<PayloadHeader, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    read_exact(r, &mut header, 0, HEADER_LEN as u64).await?;
    let (total, chunk_max) = parse_header(&header, limits)?;
    Ok(PayloadHeader {
        total,
        chunk_max,
        max_payload: limits.max_payload,
    })
}

/// Reads the rest of the payload whose `header` was just read, and verifies its digest.
pub async fn read_payload_body<R: AsyncRead + Unpin>(
    r: &mut R,
    header: PayloadHeader,
) -> Result<(Vec<u8>, Digest), FrameError> {
    let PayloadHeader {
        total,
        chunk_max,
        max_payload,
    } = header;
    let total_usize = usize::try_from(total).map_err(|_| FrameError::TooLarge {
        len: total,
        max: max_payload,
    })?;
    let mut payload = vec![0u8; total_usize];
    let mut hasher = blake3::Hasher::new();
    let mut filled = 0usize;
    while filled < total_usize {
        let mut len = [0u8; 4];
        read_exact(r, &mut len, filled as u64, total).await?;
        let len = u32::from_le_bytes(len);
        let end = filled.saturating_add(len as usize);
        if len == 0 || len > chunk_max || end > total_usize {
            return Err(FrameError::BadChunk(len));
        }
        read_exact(r, &mut payload[filled..end], filled as u64, total).await?;
        hasher.update(&payload[filled..end]);
        filled = end;
    }
    let mut trailer = [0u8; 32];
    read_exact(r, &mut trailer, total, total).await?;
    let digest = Digest::from(hasher.finalize());
    if digest.0 != trailer {
        return Err(FrameError::DigestMismatch);
    }
    Ok((payload, digest))
}

fn parse_header(header: &[u8; HEADER_LEN], limits: &FrameLimits) -> Result<(u64, u32), FrameError> {
    if &header[..4] != MAGIC {
        return Err(FrameError::BadMagic);
    }
    if header[4] != FRAMING_VERSION {
        return Err(FrameError::UnsupportedVersion(header[4]));
    }
    if header[5..8] != [0, 0, 0] {
        return Err(FrameError::UnknownFlags(header[5]));
    }
    let mut total = [0u8; 8];
    total.copy_from_slice(&header[8..16]);
    let total = u64::from_le_bytes(total);
    if total > limits.max_payload {
        return Err(FrameError::TooLarge {
            len: total,
            max: limits.max_payload,
        });
    }
    let chunk_max = u32::from_le_bytes([header[16], header[17], header[18], header[19]]);
    if chunk_max == 0 || chunk_max > limits.max_chunk {
        return Err(FrameError::BadChunk(chunk_max));
    }
    Ok((total, chunk_max))
}

/// `read_exact` that reports a clean end of stream as [`FrameError::Truncated`].
async fn read_exact<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    received: u64,
    expected: u64,
) -> Result<(), FrameError> {
    match r.read_exact(buf).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(FrameError::Truncated { received, expected })
        }
        Err(e) => Err(FrameError::Io(e)),
    }
}
