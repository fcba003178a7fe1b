//! Blockwise int8 quantisation with one absmax scale per block.
//!
//! Layout: `ceil(n/B)` little-endian f32 scales, then `n` signed bytes. Element `i`
//! of block `b` decodes to `q[i] · s[b]` with `s[b] = max|x| / 127` over the block,
//! so the absolute error of every element is at most `s[b] / 2`.

use super::CodecError;

/// Rounds to the nearest integer, ties to even, for |v| < 2^22. Adding and subtracting
/// 1.5·2^23 makes the FPU do the rounding, which vectorises on baseline x86-64 (SSE2)
/// where `round_ties_even` would be a library call per element.
#[inline(always)]
fn round_small(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

pub(super) fn encode(values: &[f32], block: usize, out: &mut Vec<u8>) {
    let n = values.len();
    let blocks = n.div_ceil(block);
    out.clear();
    out.resize(blocks * 4 + n, 0);
    let (scales, quants) = out.split_at_mut(blocks * 4);
    for ((chunk, scale_dst), q_dst) in values
        .chunks(block)
        .zip(scales.chunks_exact_mut(4))
        .zip(quants.chunks_mut(block))
    {
        let absmax = chunk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = absmax / 127.0;
        scale_dst.copy_from_slice(&scale.to_le_bytes());
        let inv = if scale > 0.0 { 127.0 / absmax } else { 0.0 };
        for (dst, v) in q_dst.iter_mut().zip(chunk) {
            let q = round_small(v * inv).clamp(-127.0, 127.0) as i8;
            *dst = q.to_le_bytes()[0];
        }
    }
}

pub(super) fn decode(
    payload: &[u8],
    n: usize,
    block: usize,
    out: &mut Vec<f32>,
) -> Result<(), CodecError> {
    let blocks = n.div_ceil(block);
    let (scales, quants) = payload.split_at(blocks * 4);
    if out.len() != n {
        out.clear();
        out.resize(n, 0.0);
    }
    for (b, ((scale, q_src), dst)) in scales
        .chunks_exact(4)
        .zip(quants.chunks(block))
        .zip(out.chunks_mut(block))
        .enumerate()
    {
        let s = f32::from_le_bytes([scale[0], scale[1], scale[2], scale[3]]);
        if !(s >= 0.0 && (s * 127.0).is_finite()) {
            return Err(CodecError::BadScale(b));
        }
        for (d, q) in dst.iter_mut().zip(q_src) {
            *d = f32::from(i8::from_le_bytes([*q])) * s;
        }
    }
    Ok(())
}
