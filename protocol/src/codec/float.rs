//! Dense float codecs: raw f32, IEEE f16 and bfloat16, all little-endian.
//!
//! Encoding and decoding stream through the vector in blocks of [`BLOCK`] elements and
//! hash each block's bytes while they are still in cache, so a payload is read from
//! memory once for conversion, hashing and the finiteness check together. On
//! little-endian hosts the in-memory representation *is* the wire format (safe
//! `bytemuck` casts and half's SIMD slice conversions); big-endian hosts convert
//! element by element.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use super::{CodecError, first_non_finite};

/// Elements per fused block (256 KiB of f32: comfortably inside L2).
const BLOCK: usize = 64 * 1024;

/// Which dense representation.
#[derive(Debug, Clone, Copy)]
pub(super) enum Dense {
    F32,
    F16,
    Bf16,
}

impl Dense {
    fn width(self) -> usize {
        match self {
            Dense::F32 => 4,
            Dense::F16 | Dense::Bf16 => 2,
        }
    }
}

/// Encodes `values` into `out` (replacing its contents), feeding every byte to `hasher`.
pub(super) fn encode(
    kind: Dense,
    values: &[f32],
    out: &mut Vec<u8>,
    hasher: &mut blake3::Hasher,
) -> Result<(), CodecError> {
    out.clear();
    out.reserve(values.len() * kind.width());
    let mut halves: Vec<u16> = Vec::new();
    let mut clamped: Vec<f32> = Vec::new();
    for (b, chunk) in values.chunks(BLOCK).enumerate() {
        if let Some(i) = first_non_finite(chunk) {
            return Err(CodecError::NonFinite(b * BLOCK + i));
        }
        let start = out.len();
        match kind {
            Dense::F32 if cfg!(target_endian = "little") => {
                out.extend_from_slice(bytemuck::cast_slice(chunk));
            }
            Dense::F32 => chunk.iter().for_each(|v| out.extend(v.to_le_bytes())),
            Dense::F16 => {
                let max = f16::MAX.to_f32();
                clamped.clear();
                clamped.extend(chunk.iter().map(|v| v.clamp(-max, max)));
                halves.clear();
                halves.resize(chunk.len(), 0);
                bytemuck::cast_slice_mut::<u16, f16>(&mut halves).convert_from_f32_slice(&clamped);
                extend_le(out, &halves);
            }
            Dense::Bf16 => {
                halves.clear();
                halves.resize(chunk.len(), 0);
                bytemuck::cast_slice_mut::<u16, bf16>(&mut halves).convert_from_f32_slice(chunk);
                extend_le(out, &halves);
            }
        }
        hasher.update(&out[start..]);
    }
    Ok(())
}

/// Decodes `payload` (whose length the caller checked) into `out`, feeding every byte to
/// `hasher` when given, and fails on the first non-finite value.
pub(super) fn decode(
    kind: Dense,
    payload: &[u8],
    out: &mut Vec<f32>,
    mut hasher: Option<&mut blake3::Hasher>,
) -> Result<(), CodecError> {
    let n = payload.len() / kind.width();
    if out.len() != n {
        out.clear();
        out.resize(n, 0.0);
    }
    let mut halves: Vec<u16> = Vec::new();
    for (b, (bytes, dst)) in payload
        .chunks(BLOCK * kind.width())
        .zip(out.chunks_mut(BLOCK))
        .enumerate()
    {
        if let Some(h) = hasher.as_deref_mut() {
            h.update(bytes);
        }
        match kind {
            Dense::F32 if cfg!(target_endian = "little") => {
                bytemuck::cast_slice_mut::<f32, u8>(dst).copy_from_slice(bytes);
            }
            Dense::F32 => {
                for (d, c) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
                    *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            Dense::F16 | Dense::Bf16 => {
                read_le(bytes, &mut halves);
                if matches!(kind, Dense::F16) {
                    bytemuck::cast_slice::<u16, f16>(&halves).convert_to_f32_slice(dst);
                } else {
                    bytemuck::cast_slice::<u16, bf16>(&halves).convert_to_f32_slice(dst);
                }
            }
        }
        if let Some(i) = first_non_finite(dst) {
            return Err(CodecError::NonFinite(b * BLOCK + i));
        }
    }
    Ok(())
}

fn extend_le(out: &mut Vec<u8>, halves: &[u16]) {
    if cfg!(target_endian = "little") {
        out.extend_from_slice(bytemuck::cast_slice(halves));
    } else {
        halves.iter().for_each(|h| out.extend(h.to_le_bytes()));
    }
}

fn read_le(bytes: &[u8], halves: &mut Vec<u16>) {
    halves.clear();
    halves.resize(bytes.len() / 2, 0);
    if cfg!(target_endian = "little") {
        bytemuck::cast_slice_mut::<u16, u8>(halves).copy_from_slice(bytes);
    } else {
        for (h, c) in halves.iter_mut().zip(bytes.chunks_exact(2)) {
            *h = u16::from_le_bytes([c[0], c[1]]);
        }
    }
}
