//! Dense float codecs: raw f32, IEEE f16 and bfloat16, all little-endian.
//!
//! On little-endian hosts the in-memory representation *is* the wire format, so these
//! are plain (safe, `bytemuck`) copies and half's SIMD slice conversions; big-endian
//! hosts take the element-by-element path. Callers have already checked lengths and
//! finiteness of the input.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

pub(super) fn encode_f32(values: &[f32]) -> Vec<u8> {
    if cfg!(target_endian = "little") {
        return bytemuck::cast_slice::<f32, u8>(values).to_vec();
    }
    let mut out = vec![0u8; values.len() * 4];
    for (dst, v) in out.chunks_exact_mut(4).zip(values) {
        dst.copy_from_slice(&v.to_le_bytes());
    }
    out
}

pub(super) fn decode_f32(payload: &[u8]) -> Vec<f32> {
    if cfg!(target_endian = "little") {
        return copy_from_le::<f32>(payload, 0.0);
    }
    payload
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub(super) fn encode_f16(values: &[f32]) -> Vec<u8> {
    let max = f16::MAX.to_f32();
    let clamped: Vec<f32> = values.iter().map(|v| v.clamp(-max, max)).collect();
    let mut halves = vec![f16::ZERO; values.len()];
    halves.convert_from_f32_slice(&clamped);
    halves_to_le_bytes(&halves, f16::to_le_bytes)
}

pub(super) fn decode_f16(payload: &[u8]) -> Vec<f32> {
    let halves: Vec<f16> = if cfg!(target_endian = "little") {
        copy_from_le::<f16>(payload, f16::ZERO)
    } else {
        payload
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]))
            .collect()
    };
    let mut out = vec![0f32; halves.len()];
    halves.convert_to_f32_slice(&mut out);
    out
}

pub(super) fn encode_bf16(values: &[f32]) -> Vec<u8> {
    let mut halves = vec![bf16::ZERO; values.len()];
    halves.convert_from_f32_slice(values);
    halves_to_le_bytes(&halves, bf16::to_le_bytes)
}

pub(super) fn decode_bf16(payload: &[u8]) -> Vec<f32> {
    let halves: Vec<bf16> = if cfg!(target_endian = "little") {
        copy_from_le::<bf16>(payload, bf16::ZERO)
    } else {
        payload
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]))
            .collect()
    };
    let mut out = vec![0f32; halves.len()];
    halves.convert_to_f32_slice(&mut out);
    out
}

fn halves_to_le_bytes<T: bytemuck::Pod>(halves: &[T], to_le: fn(T) -> [u8; 2]) -> Vec<u8> {
    if cfg!(target_endian = "little") {
        return bytemuck::cast_slice::<T, u8>(halves).to_vec();
    }
    halves.iter().flat_map(|h| to_le(*h)).collect()
}

/// Copies a little-endian payload into a vector of `T` on a little-endian host.
/// The payload length is a multiple of `size_of::<T>()` (checked by the caller).
fn copy_from_le<T: bytemuck::Pod>(payload: &[u8], zero: T) -> Vec<T> {
    let mut out = vec![zero; payload.len() / size_of::<T>()];
    bytemuck::cast_slice_mut::<T, u8>(&mut out).copy_from_slice(payload);
    out
}
