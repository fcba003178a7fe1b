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
///
/// It keeps two scratch vectors of the model's size (the corrected delta and its decoded
/// form) across calls: a sync of a large model then allocates only its payload, instead
/// of two fresh model-sized vectors (and their page faults) every round.
#[derive(Debug, Clone, Default)]
pub struct ErrorFeedback {
    residual: Vec<f32>,
    corrected: Vec<f32>,
    decoded: Vec<f32>,
}

/// One round's encoded payload.
#[derive(Debug, Clone)]
pub struct Compressed {
    /// The payload to send.
    pub payload: Vec<u8>,
    /// Its BLAKE3 digest, for the signed header.
    pub digest: crate::ids::Digest,
}

impl ErrorFeedback {
    /// An empty residual for vectors of `n` elements.
    pub fn new(n: usize) -> Self {
        Self::from_residual(vec![0.0; n])
    }

    /// Restores a residual saved earlier (e.g. from a checkpoint).
    pub fn from_residual(residual: Vec<f32>) -> Self {
        Self {
            residual,
            corrected: Vec::new(),
            decoded: Vec::new(),
        }
    }

    /// The residual that the next call will add.
    pub fn residual(&self) -> &[f32] {
        &self.residual
    }

    /// Exactly what `codec.decode(payload)` returns for the payload of the last successful
    /// [`compress`](Self::compress) (what receivers reconstruct).
    pub fn decoded(&self) -> &[f32] {
        &self.decoded
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
        self.corrected.clear();
        self.corrected
            .extend(delta.iter().zip(&self.residual).map(|(d, r)| d + r));
        let mut payload = Vec::new();
        let digest = codec.encode_into(&self.corrected, &mut payload)?;
        codec.decode_into(
            &payload,
            self.corrected.len() as u64,
            None,
            &mut self.decoded,
        )?;
        for ((r, c), d) in self
            .residual
            .iter_mut()
            .zip(&self.corrected)
            .zip(&self.decoded)
        {
            *r = c - d;
        }
        Ok(Compressed { payload, digest })
    }
}
