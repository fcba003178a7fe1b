//! Error feedback: carry each round's compression residual into the next round.
//!
//! With a lossy codec `C`, sending `C(δ_t)` every round loses information
//! systematically. Error feedback sends `C(δ_t + e_t)` and keeps
//! `e_{t+1} = δ_t + e_t − decode(C(δ_t + e_t))`, so after `T` rounds the decoded sum
//! equals the true sum minus the (bounded) current residual:
//! `Σ decoded = Σ δ − e_T`. The residual is computed from the decoder's exact
//! output, so it matches what receivers reconstruct bit for bit.

use super::{Codec, CodecError};

/// Accumulates the residual of a lossy codec between rounds.
#[derive(Debug, Clone, Default)]
pub struct ErrorFeedback {
    residual: Vec<f32>,
}

/// One round's encoded payload and the values receivers will decode from it.
#[derive(Debug, Clone)]
pub struct Compressed {
    /// The payload to send.
    pub payload: Vec<u8>,
    /// Its BLAKE3 digest, for the signed header.
    pub digest: crate::ids::Digest,
    /// Exactly what `codec.decode(payload)` returns.
    pub decoded: Vec<f32>,
}

impl ErrorFeedback {
    /// An empty residual for vectors of `n` elements.
    pub fn new(n: usize) -> Self {
        Self {
            residual: vec![0.0; n],
        }
    }

    /// Restores a residual saved earlier (e.g. from a checkpoint).
    pub fn from_residual(residual: Vec<f32>) -> Self {
        Self { residual }
    }

    /// The residual that the next call will add.
    pub fn residual(&self) -> &[f32] {
        &self.residual
    }

    /// Encodes `delta + residual` with `codec` and updates the residual.
    ///
    /// On error the residual is left unchanged.
    pub fn compress(&mut self, delta: &[f32], codec: Codec) -> Result<Compressed, CodecError> {
        if self.residual.len() != delta.len() {
            if self.residual.iter().any(|r| *r != 0.0) {
                return Err(CodecError::WrongElementCount {
                    expected: self.residual.len() as u64,
                    actual: delta.len() as u64,
                });
            }
            self.residual = vec![0.0; delta.len()];
        }
        let corrected: Vec<f32> = delta
            .iter()
            .zip(&self.residual)
            .map(|(d, r)| d + r)
            .collect();
        let mut payload = Vec::new();
        let digest = codec.encode_into(&corrected, &mut payload)?;
        let decoded = codec.decode(&payload, corrected.len() as u64)?;
        for ((r, c), d) in self.residual.iter_mut().zip(&corrected).zip(&decoded) {
            *r = c - d;
        }
        Ok(Compressed {
            payload,
            digest,
            decoded,
        })
    }
}
