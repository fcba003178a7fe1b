//! The one bincode configuration every Murmur message uses, and bounded decoding.
//!
//! Little-endian, fixed-width integers (so `docs/protocol.md` can give offsets),
//! and a hard byte limit that bincode checks before it allocates any container.

use bincode::config::{Configuration, Fixint, Limit, LittleEndian};
use bincode::{Decode, Encode};

/// Upper bound on any bincode-encoded message body, in bytes.
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 * 1024;

pub(crate) type WireConfig = Configuration<LittleEndian, Fixint, Limit<MAX_MESSAGE_BYTES>>;

pub(crate) const CONFIG: WireConfig = bincode::config::standard()
    .with_little_endian()
    .with_fixed_int_encoding()
    .with_limit::<MAX_MESSAGE_BYTES>();

/// Encodes `value` with the wire configuration.
pub(crate) fn encode<T: Encode>(value: &T) -> Result<Vec<u8>, bincode::error::EncodeError> {
    bincode::encode_to_vec(value, CONFIG)
}

/// Decodes exactly one `T` from `bytes`; trailing bytes are an error.
pub(crate) fn decode<T: Decode<()>>(bytes: &[u8]) -> Result<T, WireError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLarge(bytes.len()));
    }
    let (value, used) = bincode::decode_from_slice(bytes, CONFIG).map_err(WireError::Decode)?;
    if used != bytes.len() {
        return Err(WireError::TrailingBytes(bytes.len() - used));
    }
    Ok(value)
}

/// Why a bincode body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The input exceeds [`MAX_MESSAGE_BYTES`].
    #[error("message of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The bytes are not a valid encoding (unknown variant, truncated, over a limit…).
    #[error("malformed message: {0}")]
    Decode(bincode::error::DecodeError),
    /// A valid value was followed by extra bytes.
    #[error("{0} trailing bytes after message")]
    TrailingBytes(usize),
}
