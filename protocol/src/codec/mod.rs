//! Payload codecs for f32 parameter vectors.
//!
//! | codec | payload | decode contract |
//! | --- | --- | --- |
//! | [`Codec::RawF32`] | `n` × f32 LE | exact |
//! | [`Codec::F16`] | `n` × IEEE binary16 LE | round to nearest even; magnitudes above 65504 saturate to ±65504 |
//! | [`Codec::Bf16`] | `n` × bfloat16 LE | round to nearest even |
//! | [`Codec::Int8Block`] | `ceil(n/B)` × f32 LE scales, then `n` × i8 | `x̂ = q·s`, `s = max|x|/127` per block, `|x − x̂| ≤ s/2` |
//! | [`Codec::TopK`] | `k` × u32 LE strictly increasing indices, then `k` × f32 LE values | exact at the `k` indices of largest magnitude, 0 elsewhere |
//!
//! Encoders refuse non-finite input; decoders check the exact payload length for the
//! declared element count *before* allocating, and refuse non-finite output.
//! [`ErrorFeedback`] carries each round's compression residual into the next one.

mod feedback;
mod float;
mod int8;
mod topk;

use bincode::{Decode, Encode};

pub use feedback::{Compressed, ErrorFeedback};

use float::Dense;

use crate::ids::Digest;
use crate::message::MAX_ELEMENTS;

/// Largest block size accepted for [`Codec::Int8Block`].
pub const MAX_INT8_BLOCK: u32 = 1 << 20;
/// Default block size for [`Codec::Int8Block`].
pub const DEFAULT_INT8_BLOCK: u32 = 256;

/// How a payload encodes an f32 vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum Codec {
    /// Little-endian f32, 4 bytes per element.
    RawF32,
    /// IEEE binary16, 2 bytes per element.
    F16,
    /// bfloat16, 2 bytes per element.
    Bf16,
    /// Blockwise int8 with one f32 absmax scale per block of `block` elements.
    Int8Block {
        /// Elements per block (1..=[`MAX_INT8_BLOCK`]).
        block: u32,
    },
    /// The `k` elements of largest magnitude, as (index, value) pairs.
    TopK {
        /// Number of elements kept.
        k: u64,
    },
}

/// Why an encode or decode failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    /// The element count exceeds the protocol maximum or the codec's own.
    #[error("element count {0} is out of range")]
    TooManyElements(u64),
    /// A codec parameter is invalid (block size 0 or too large, k > n…).
    #[error("invalid codec parameter: {0}")]
    BadParameter(&'static str),
    /// The payload length does not match what the codec needs for the element count.
    #[error("payload is {actual} bytes, expected {expected}")]
    WrongLength {
        /// Bytes expected.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// The payload's BLAKE3 digest does not match the signed header.
    #[error("payload digest mismatch")]
    DigestMismatch,
    /// An input or decoded value is NaN or infinite.
    #[error("non-finite value at index {0}")]
    NonFinite(usize),
    /// A block scale is negative, NaN or so large the block overflows.
    #[error("invalid scale in block {0}")]
    BadScale(usize),
    /// Top-k indices are out of range or not strictly increasing.
    #[error("invalid top-k index at position {0}")]
    BadIndex(usize),
    /// The number of values to encode differs from the expected count.
    #[error("expected {expected} elements, got {actual}")]
    WrongElementCount {
        /// Elements expected.
        expected: u64,
        /// Elements given.
        actual: u64,
    },
}

impl Codec {
    /// The default codec for deltas: blockwise int8 with [`DEFAULT_INT8_BLOCK`].
    pub const fn default_delta() -> Self {
        Codec::Int8Block {
            block: DEFAULT_INT8_BLOCK,
        }
    }

    /// Payload length in bytes for `n` elements, or why `n` or the parameters are invalid.
    pub fn payload_len(&self, n: u64) -> Result<u64, CodecError> {
        if n > MAX_ELEMENTS {
            return Err(CodecError::TooManyElements(n));
        }
        match *self {
            Codec::RawF32 => Ok(n * 4),
            Codec::F16 | Codec::Bf16 => Ok(n * 2),
            Codec::Int8Block { block } => {
                if block == 0 || block > MAX_INT8_BLOCK {
                    return Err(CodecError::BadParameter("int8 block size"));
                }
                Ok(n.div_ceil(u64::from(block)) * 4 + n)
            }
            Codec::TopK { k } => {
                if k > n || n > u64::from(u32::MAX) {
                    return Err(CodecError::BadParameter("top-k k or n"));
                }
                Ok(k * 8)
            }
        }
    }

    /// Checks that `payload_len` is exactly what `n` elements need.
    pub fn check_len(&self, n: u64, payload_len: u64) -> Result<(), CodecError> {
        let expected = self.payload_len(n)?;
        if expected != payload_len {
            return Err(CodecError::WrongLength {
                expected,
                actual: payload_len,
            });
        }
        Ok(())
    }

    /// Encodes `values`. Fails on NaN/Inf input or invalid parameters.
    pub fn encode(&self, values: &[f32]) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::new();
        self.encode_into(values, &mut out)?;
        Ok(out)
    }

    /// Encodes `values` into `out` (replacing its contents, reusing its allocation) and
    /// returns the payload's BLAKE3 digest, hashed while encoding.
    pub fn encode_into(&self, values: &[f32], out: &mut Vec<u8>) -> Result<Digest, CodecError> {
        self.payload_len(values.len() as u64)?;
        let mut hasher = blake3::Hasher::new();
        match *self {
            Codec::RawF32 => float::encode(Dense::F32, values, out, &mut hasher)?,
            Codec::F16 => float::encode(Dense::F16, values, out, &mut hasher)?,
            Codec::Bf16 => float::encode(Dense::Bf16, values, out, &mut hasher)?,
            Codec::Int8Block { block } => {
                check_finite(values)?;
                int8::encode(values, block as usize, out);
                hasher.update(out);
            }
            Codec::TopK { k } => {
                check_finite(values)?;
                topk::encode(values, k as usize, out);
                hasher.update(out);
            }
        }
        Ok(Digest::from(hasher.finalize()))
    }

    /// Decodes a payload into exactly `n` finite f32 values.
    ///
    /// `n` must come from the caller's own knowledge (its model's parameter count), not
    /// from the peer: for [`Codec::TopK`] the payload length bounds `k`, not `n`.
    pub fn decode(&self, payload: &[u8], n: u64) -> Result<Vec<f32>, CodecError> {
        let mut out = Vec::new();
        self.decode_into(payload, n, None, &mut out)?;
        Ok(out)
    }

    /// Decodes a payload into `out` (resized to `n`, reusing its allocation). When
    /// `digest` is given the payload is hashed during decoding and must match it.
    /// On error `out` holds unspecified values.
    pub fn decode_into(
        &self,
        payload: &[u8],
        n: u64,
        digest: Option<&Digest>,
        out: &mut Vec<f32>,
    ) -> Result<(), CodecError> {
        self.check_len(n, payload.len() as u64)?;
        let n = usize::try_from(n).map_err(|_| CodecError::TooManyElements(n))?;
        let mut hasher = digest.map(|_| blake3::Hasher::new());
        let result = match *self {
            Codec::RawF32 => float::decode(Dense::F32, payload, out, hasher.as_mut()),
            Codec::F16 => float::decode(Dense::F16, payload, out, hasher.as_mut()),
            Codec::Bf16 => float::decode(Dense::Bf16, payload, out, hasher.as_mut()),
            Codec::Int8Block { block } => {
                if let Some(h) = hasher.as_mut() {
                    h.update(payload);
                }
                int8::decode(payload, n, block as usize, out).and_then(|()| check_finite(out))
            }
            Codec::TopK { k } => {
                if let Some(h) = hasher.as_mut() {
                    h.update(payload);
                }
                topk::decode(payload, n, k as usize, out).and_then(|()| check_finite(out))
            }
        };
        if let Some(expected) = digest {
            // A payload that fails the digest is reported as tampered, whatever else is wrong
            // with it; the error path rehashes the whole payload to decide.
            let actual = match (&result, hasher) {
                (Ok(()), Some(h)) => Digest::from(h.finalize()),
                _ => Digest::of(payload),
            };
            if actual != *expected {
                return Err(CodecError::DigestMismatch);
            }
        }
        result
    }
}

fn check_finite(values: &[f32]) -> Result<(), CodecError> {
    match first_non_finite(values) {
        Some(i) => Err(CodecError::NonFinite(i)),
        None => Ok(()),
    }
}

/// Index of the first NaN or infinity. Scans in blocks with a branch-free reduction
/// (which vectorises) and only searches a block element by element once it is known
/// to hold a non-finite value.
pub fn first_non_finite(values: &[f32]) -> Option<usize> {
    const EXP: u32 = 0x7f80_0000;
    const BLOCK: usize = 4096;
    values.chunks(BLOCK).enumerate().find_map(|(b, chunk)| {
        let bad = chunk
            .iter()
            .fold(false, |acc, v| acc | (v.to_bits() & EXP == EXP));
        if bad {
            chunk
                .iter()
                .position(|v| !v.is_finite())
                .map(|i| b * BLOCK + i)
        } else {
            None
        }
    })
}

/// Checks a payload's length and BLAKE3 digest against a signed header's claims.
pub fn check_payload(payload: &[u8], len: u64, digest: &Digest) -> Result<(), CodecError> {
    if payload.len() as u64 != len {
        return Err(CodecError::WrongLength {
            expected: len,
            actual: payload.len() as u64,
        });
    }
    if Digest::of(payload) != *digest {
        return Err(CodecError::DigestMismatch);
    }
    Ok(())
}
