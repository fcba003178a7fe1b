//! What a node averages: a trained model ([`ModelReplica`]) or a fixed vector
//! ([`VectorReplica`], training off — consensus tests and benchmarks).

use murmur_models::{EvalStats, TrainError, Trainer};

/// One local step's figures.
#[derive(Debug, Clone, Copy)]
pub struct LocalStep {
    /// Training loss of the batch.
    pub loss: f32,
    /// Samples in the batch.
    pub samples: u64,
    /// Learning rate used.
    pub lr: f64,
}

/// The local copy of the model a node trains and averages.
pub trait Replica: Send {
    /// Number of parameters.
    fn len(&self) -> usize;
    /// Whether there is nothing to average.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether [`Replica::step`] trains (false: averaging only).
    fn trains(&self) -> bool;
    /// One local optimizer step.
    fn step(&mut self) -> Result<LocalStep, TrainError>;
    /// Learning rate of the next step.
    fn lr(&self) -> f64;
    /// Held-out evaluation, if the replica has held-out data.
    fn evaluate(&self) -> Result<Option<EvalStats>, TrainError>;
    /// All parameters, flat.
    fn params(&self) -> Result<Vec<f32>, TrainError>;
    /// All parameters, flat, into `out`, reusing its allocation (the training thread keeps
    /// one model-sized buffer across syncs instead of a fresh vector each time).
    fn params_into(&self, out: &mut Vec<f32>) -> Result<(), TrainError>;
    /// Replaces all parameters.
    fn set_params(&mut self, values: &[f32]) -> Result<(), TrainError>;
    /// Model + optimizer + data cursor, for checkpoints.
    fn checkpoint(&self) -> Result<Vec<u8>, TrainError>;
    /// Restores [`Replica::checkpoint`] bytes.
    fn restore(&mut self, bytes: &[u8]) -> Result<(), TrainError>;
    /// Steps taken so far.
    fn steps(&self) -> u64;
}

/// A burn model with its optimizer and part of the data.
#[derive(Debug)]
pub struct ModelReplica(pub Trainer);

impl Replica for ModelReplica {
    fn len(&self) -> usize {
        self.0.param_count()
    }
    fn trains(&self) -> bool {
        true
    }
    fn step(&mut self) -> Result<LocalStep, TrainError> {
        let stats = self.0.step()?;
        Ok(LocalStep {
            loss: stats.loss,
            samples: stats.samples as u64,
            lr: stats.lr,
        })
    }
    fn lr(&self) -> f64 {
        self.0.current_lr()
    }
    fn evaluate(&self) -> Result<Option<EvalStats>, TrainError> {
        self.0.evaluate().map(Some)
    }
    fn params(&self) -> Result<Vec<f32>, TrainError> {
        self.0.flat_params()
    }
    fn params_into(&self, out: &mut Vec<f32>) -> Result<(), TrainError> {
        self.0.flat_params_into(out)
    }
    fn set_params(&mut self, values: &[f32]) -> Result<(), TrainError> {
        self.0.set_flat_params(values)
    }
    fn checkpoint(&self) -> Result<Vec<u8>, TrainError> {
        self.0.checkpoint()
    }
    fn restore(&mut self, bytes: &[u8]) -> Result<(), TrainError> {
        self.0.restore(bytes)
    }
    fn steps(&self) -> u64 {
        self.0.steps_done()
    }
}

/// A plain vector that is averaged but never trained.
#[derive(Debug, Clone)]
pub struct VectorReplica(pub Vec<f32>);

impl Replica for VectorReplica {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn trains(&self) -> bool {
        false
    }
    fn step(&mut self) -> Result<LocalStep, TrainError> {
        Ok(LocalStep {
            loss: 0.0,
            samples: 0,
            lr: 0.0,
        })
    }
    fn lr(&self) -> f64 {
        0.0
    }
    fn evaluate(&self) -> Result<Option<EvalStats>, TrainError> {
        Ok(None)
    }
    fn params(&self) -> Result<Vec<f32>, TrainError> {
        Ok(self.0.clone())
    }
    fn params_into(&self, out: &mut Vec<f32>) -> Result<(), TrainError> {
        out.clear();
        out.extend_from_slice(&self.0);
        Ok(())
    }
    fn set_params(&mut self, values: &[f32]) -> Result<(), TrainError> {
        if values.len() != self.0.len() {
            return Err(TrainError::Mismatch(format!(
                "vector of {} values, expected {}",
                values.len(),
                self.0.len()
            )));
        }
        self.0.copy_from_slice(values);
        Ok(())
    }
    fn checkpoint(&self) -> Result<Vec<u8>, TrainError> {
        Ok(self.0.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
    fn restore(&mut self, bytes: &[u8]) -> Result<(), TrainError> {
        if bytes.len() != self.0.len() * 4 {
            return Err(TrainError::Mismatch(
                "vector checkpoint has the wrong length".into(),
            ));
        }
        for (v, c) in self.0.iter_mut().zip(bytes.chunks_exact(4)) {
            *v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        Ok(())
    }
    fn steps(&self) -> u64 {
        0
    }
}
