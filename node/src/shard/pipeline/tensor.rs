//! Pipeline tensors on the wire: a [`WireActivation`] becomes a [`TensorMeta`] for the header
//! and little-endian bytes for the stream payload, and back, with the shape checked against the
//! payload length before anything is allocated.

use murmur_models::WireActivation;
use murmur_protocol::pipeline::{TensorKind, TensorMeta};

use super::PipelineError;

/// Splits an activation into its header description and payload bytes.
pub(crate) fn encode(activation: &WireActivation) -> Result<(TensorMeta, Vec<u8>), PipelineError> {
    let dims = |shape: &[usize]| {
        shape
            .iter()
            .map(|&d| u32::try_from(d))
            .collect::<Result<Vec<u32>, _>>()
            .map_err(|_| PipelineError::Protocol("tensor dimension exceeds u32".into()))
    };
    Ok(match activation {
        WireActivation::Tokens { shape, ids } => (
            TensorMeta {
                kind: TensorKind::Tokens,
                shape: dims(shape)?,
            },
            ids.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        WireActivation::Hidden { shape, values } => (
            TensorMeta {
                kind: TensorKind::F32,
                shape: dims(shape)?,
            },
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
    })
}

/// Rebuilds an activation from a header description and payload (finiteness is checked).
pub(crate) fn decode(meta: &TensorMeta, payload: &[u8]) -> Result<WireActivation, PipelineError> {
    meta.check_payload(payload)?;
    let words = payload.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]);
    let shape: Vec<usize> = meta.shape.iter().map(|&d| d as usize).collect();
    let activation = match (meta.kind, shape.as_slice()) {
        (TensorKind::Tokens, &[b, t]) => WireActivation::Tokens {
            shape: [b, t],
            ids: words.map(u32::from_le_bytes).collect(),
        },
        (TensorKind::F32, &[b, t, w]) => WireActivation::Hidden {
            shape: [b, t, w],
            values: words.map(f32::from_le_bytes).collect(),
        },
        _ => {
            return Err(PipelineError::Protocol(format!(
                "unexpected tensor {:?} of shape {:?}",
                meta.kind, meta.shape
            )));
        }
    };
    activation.validate()?;
    Ok(activation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_mismatched_payloads() {
        let hidden = WireActivation::hidden([1, 2, 2], vec![1.0, -2.5, 0.0, 3.0]).unwrap();
        let (meta, bytes) = encode(&hidden).unwrap();
        assert_eq!(decode(&meta, &bytes).unwrap(), hidden);
        assert!(decode(&meta, &bytes[..12]).is_err());
        let tokens = WireActivation::Tokens {
            shape: [2, 1],
            ids: vec![7, 9],
        };
        let (meta, bytes) = encode(&tokens).unwrap();
        assert_eq!(decode(&meta, &bytes).unwrap(), tokens);
        let nan = f32::NAN.to_le_bytes().repeat(4);
        let (meta, _) = encode(&hidden).unwrap();
        assert!(decode(&meta, &nan).is_err());
    }
}
