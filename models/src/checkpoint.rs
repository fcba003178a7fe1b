//! Checkpoint bytes: model parameters, optimizer moments, step counters and the data cursor.
//!
//! Layout: `MURMCKPT` magic, format version (u32 LE), BLAKE3 of the payload (32 bytes), then the
//! bincode payload. Decoding checks each part in that order and bounds the payload size, so
//! truncated or corrupt bytes give a [`CheckpointError`], never a panic.

use serde::{Deserialize, Serialize};

use crate::data::DataCursor;
use crate::optim::AdamState;
use crate::spec::ModelSpec;

const MAGIC: &[u8; 8] = b"MURMCKPT";
const VERSION: u32 = 1;
const HEADER: usize = 8 + 4 + 32;
/// Largest payload accepted (4 GiB).
const LIMIT: usize = 1 << 32;

/// Everything needed to resume training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    pub(crate) spec: ModelSpec,
    pub(crate) fingerprint: [u8; 32],
    pub(crate) steps: u64,
    pub(crate) samples_seen: u64,
    pub(crate) cursor: DataCursor,
    pub(crate) shuffle_seed: u64,
    pub(crate) params: Vec<f32>,
    pub(crate) optimizer: AdamState,
}

/// Checkpoint bytes could not be produced or used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Fewer bytes than the header.
    #[error("checkpoint is truncated ({0} bytes)")]
    Truncated(usize),
    /// Not a Murmur checkpoint.
    #[error("not a Murmur checkpoint (bad magic)")]
    BadMagic,
    /// Written by an incompatible version.
    #[error("checkpoint format version {0} is not supported (expected {VERSION})")]
    Version(u32),
    /// The payload hash does not match.
    #[error("checkpoint is corrupt (checksum mismatch)")]
    Corrupt,
    /// The payload does not decode.
    #[error("checkpoint payload does not decode")]
    Decode(#[source] bincode::error::DecodeError),
    /// A decoded payload was followed by extra bytes.
    #[error("checkpoint payload does not decode: {0} trailing bytes")]
    TrailingBytes(usize),
    /// Encoding failed.
    #[error("checkpoint encoding failed")]
    Encode(#[source] bincode::error::EncodeError),
    /// For another architecture.
    #[error("checkpoint is for another model architecture")]
    WrongModel,
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_fixed_int_encoding()
        .with_limit::<LIMIT>()
}

impl Checkpoint {
    pub(crate) fn encode(&self) -> Result<Vec<u8>, CheckpointError> {
        let payload =
            bincode::serde::encode_to_vec(self, config()).map_err(CheckpointError::Encode)?;
        let mut out = Vec::with_capacity(HEADER + payload.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(blake3::hash(&payload).as_bytes());
        out.extend_from_slice(&payload);
        Ok(out)
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, CheckpointError> {
        if bytes.len() < HEADER {
            return Err(CheckpointError::Truncated(bytes.len()));
        }
        let (magic, rest) = bytes.split_at(8);
        if magic != MAGIC {
            return Err(CheckpointError::BadMagic);
        }
        let (version, rest) = rest.split_at(4);
        let version = u32::from_le_bytes([version[0], version[1], version[2], version[3]]);
        if version != VERSION {
            return Err(CheckpointError::Version(version));
        }
        let (hash, payload) = rest.split_at(32);
        if blake3::hash(payload).as_bytes() != hash {
            return Err(CheckpointError::Corrupt);
        }
        let (value, used) = bincode::serde::decode_from_slice::<Self, _>(payload, config())
            .map_err(CheckpointError::Decode)?;
        if used != payload.len() {
            return Err(CheckpointError::TrailingBytes(payload.len() - used));
        }
        Ok(value)
    }
}
