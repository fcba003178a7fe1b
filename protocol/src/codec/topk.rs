//! Top-k sparsification: keep the `k` elements of largest magnitude.
//!
//! Layout: `k` little-endian u32 indices in strictly increasing order, then the `k`
//! f32 values at those indices. Every other element decodes to zero, so the squared
//! error is the sum of the `n − k` smallest squares, at most `(n − k)/n · ‖x‖²`.
//! Ties in magnitude are broken by the lower index, which makes encoding deterministic.

use std::cmp::Ordering;

use super::CodecError;

pub(super) fn encode(values: &[f32], k: usize, out: &mut Vec<u8>) {
    let mut order: Vec<u32> = (0..values.len() as u32).collect();
    let by_magnitude = |a: &u32, b: &u32| -> Ordering {
        let (ma, mb) = (values[*a as usize].abs(), values[*b as usize].abs());
        mb.total_cmp(&ma).then(a.cmp(b))
    };
    if k > 0 && k < order.len() {
        order.select_nth_unstable_by(k - 1, by_magnitude);
    }
    order.truncate(k);
    order.sort_unstable();
    out.clear();
    out.resize(k * 8, 0);
    let (idx, vals) = out.split_at_mut(k * 4);
    for ((i, dst_i), dst_v) in order
        .iter()
        .zip(idx.chunks_exact_mut(4))
        .zip(vals.chunks_exact_mut(4))
    {
        dst_i.copy_from_slice(&i.to_le_bytes());
        dst_v.copy_from_slice(&values[*i as usize].to_le_bytes());
    }
}

pub(super) fn decode(
    payload: &[u8],
    n: usize,
    k: usize,
    out: &mut Vec<f32>,
) -> Result<(), CodecError> {
    let (idx, vals) = payload.split_at(k * 4);
    out.clear();
    out.resize(n, 0.0);
    let mut next_min = 0usize;
    for (pos, (i, v)) in idx.chunks_exact(4).zip(vals.chunks_exact(4)).enumerate() {
        let i = u32::from_le_bytes([i[0], i[1], i[2], i[3]]) as usize;
        if i < next_min || i >= n {
            return Err(CodecError::BadIndex(pos));
        }
        out[i] = f32::from_le_bytes([v[0], v[1], v[2], v[3]]);
        next_min = i + 1;
    }
    Ok(())
}
