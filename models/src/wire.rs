//! Plain, serialisable activations and gradients, for moving them between processes.
//!
//! Pipeline stages on different peers exchange [`WireActivation`]s (serde, so the node picks the
//! codec). Conversion back to a device tensor validates the shape and rejects NaN/∞.

use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::network::Activation;

/// An activation (or a gradient w.r.t. one) as host data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WireActivation {
    /// Token ids `[batch, time]`.
    Tokens {
        /// `[batch, time]`.
        shape: [usize; 2],
        /// Row-major ids.
        ids: Vec<u32>,
    },
    /// Hidden states, logits or gradients `[batch, time, width]`.
    Hidden {
        /// `[batch, time, width]`.
        shape: [usize; 3],
        /// Row-major values.
        values: Vec<f32>,
    },
}

/// A wire activation is malformed or could not be read back.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Data length does not match the shape.
    #[error("shape {shape:?} needs {expected} values, got {got}")]
    Length {
        /// The declared shape.
        shape: Vec<usize>,
        /// Product of the shape.
        expected: usize,
        /// Values present.
        got: usize,
    },
    /// NaN or infinity.
    #[error("non-finite value at index {0}")]
    NonFinite(usize),
    /// Device read failed.
    #[error("reading the tensor from the device failed")]
    Read(#[source] burn::tensor::DataError),
    /// Token ids where a gradient (a hidden tensor) was expected.
    #[error("a gradient must be a hidden tensor")]
    NotHidden,
}

impl WireActivation {
    /// Wraps hidden values after checking the shape.
    pub fn hidden(shape: [usize; 3], values: Vec<f32>) -> Result<Self, WireError> {
        let w = Self::Hidden { shape, values };
        w.validate()?;
        Ok(w)
    }

    /// Checks length and finiteness.
    pub fn validate(&self) -> Result<(), WireError> {
        let (shape, got) = match self {
            Self::Tokens { shape, ids } => (shape.to_vec(), ids.len()),
            Self::Hidden { shape, values } => {
                if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                    return Err(WireError::NonFinite(i));
                }
                (shape.to_vec(), values.len())
            }
        };
        let expected = shape.iter().try_fold(1usize, |a, d| a.checked_mul(*d));
        match expected {
            Some(expected) if expected == got => Ok(()),
            _ => Err(WireError::Length {
                expected: expected.unwrap_or(usize::MAX),
                shape,
                got,
            }),
        }
    }

    /// Shape as a vector.
    pub fn shape(&self) -> Vec<usize> {
        match self {
            Self::Tokens { shape, .. } => shape.to_vec(),
            Self::Hidden { shape, .. } => shape.to_vec(),
        }
    }

    /// Reads an activation back from its device.
    pub fn from_activation(activation: &Activation) -> Result<Self, WireError> {
        match activation {
            Activation::Tokens(t) => {
                let ids = t
                    .to_data()
                    .convert::<i64>()
                    .try_into_vec::<i64>()
                    .map_err(WireError::Read)?
                    .into_iter()
                    .map(|v| u32::try_from(v).unwrap_or(u32::MAX))
                    .collect();
                Ok(Self::Tokens {
                    shape: t.dims(),
                    ids,
                })
            }
            Activation::Hidden(t) => Ok(Self::Hidden {
                shape: t.dims(),
                values: t
                    .to_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .map_err(WireError::Read)?,
            }),
        }
    }

    /// Creates the activation on `device` after validating it.
    pub fn to_activation(&self, device: &Device) -> Result<Activation, WireError> {
        self.validate()?;
        Ok(match self {
            Self::Tokens { shape, ids } => {
                let ids: Vec<i64> = ids.iter().map(|&v| i64::from(v)).collect();
                Activation::Tokens(Tensor::<2, Int>::from_data(
                    TensorData::new(ids, *shape),
                    device,
                ))
            }
            Self::Hidden { shape, values } => Activation::Hidden(Tensor::<3>::from_data(
                TensorData::new(values.clone(), *shape),
                device,
            )),
        })
    }

    /// The hidden tensor on `device` (for gradients), or `None` for token ids.
    pub fn to_hidden(&self, device: &Device) -> Result<Option<Tensor<3>>, WireError> {
        match self.to_activation(device)? {
            Activation::Hidden(t) => Ok(Some(t)),
            Activation::Tokens(_) => Ok(None),
        }
    }
}
