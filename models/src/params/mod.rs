//! Flat parameter views keyed by parameter path (never by burn's per-process `ParamId`).
//!
//! The canonical order is stage by stage, and within a stage by path name, so the parameters of
//! any stage range form one contiguous slice of the full flat vector. Paths look like
//! `3.Block.qkv.weight` (stage index, stage kind, field path). Reads go through one burn
//! `Transaction` per call rather than one device sync per parameter.

mod read;
mod write;

pub(crate) use read::{read_grads, read_params, read_params_into};
pub(crate) use write::{WriteMode, write_params};

use std::collections::HashMap;
use std::ops::Range;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;

use crate::network::Network;

/// One parameter in the flat layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamEntry {
    /// `stage.Kind.field.param`.
    pub path: String,
    /// Tensor shape.
    pub shape: Vec<usize>,
    /// Index of the stage holding it.
    pub stage: usize,
    /// Offset in the full flat vector.
    pub offset: usize,
}

impl ParamEntry {
    /// Number of scalars.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The deterministic order of all parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamLayout {
    entries: Vec<ParamEntry>,
    /// `stage_offsets[i]` is where stage `i` starts; the last element is the total.
    stage_offsets: Vec<usize>,
}

/// A flat vector does not fit the layout, or the device failed a read.
#[derive(Debug, thiserror::Error)]
pub enum ParamError {
    /// Wrong number of values.
    #[error("flat vector has {got} values, the layout needs {expected}")]
    Length {
        /// Values required.
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// A value is NaN or infinite.
    #[error("flat vector holds a non-finite value at index {0}")]
    NonFinite(usize),
    /// Reading tensors back from the device failed: the device did not run the read, or the
    /// data read back does not convert to `f32` (two burn error types, hence boxed).
    #[error("reading parameters from the device failed")]
    Read(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ParamLayout {
    /// Builds the layout of `network`.
    pub fn of(network: &Network) -> Self {
        let mut entries = Vec::new();
        let mut stage_offsets = vec![0];
        let mut offset = 0;
        for (i, stage) in network.stages.iter().enumerate() {
            let mut shapes = ShapeVisitor::new(i);
            stage.visit(&mut shapes);
            shapes.found.sort_by(|a, b| a.0.cmp(&b.0));
            for (path, shape) in shapes.found {
                let entry = ParamEntry {
                    path,
                    shape,
                    stage: i,
                    offset,
                };
                offset += entry.len();
                entries.push(entry);
            }
            stage_offsets.push(offset);
        }
        Self {
            entries,
            stage_offsets,
        }
    }

    /// All entries in order.
    pub fn entries(&self) -> &[ParamEntry] {
        &self.entries
    }

    /// Total number of scalars.
    pub fn total(&self) -> usize {
        self.stage_offsets.last().copied().unwrap_or(0)
    }

    /// The slice of the full flat vector holding `stages`.
    pub fn span(&self, stages: Range<usize>) -> Range<usize> {
        let n = self.stage_offsets.len() - 1;
        let (s, e) = (
            stages.start.min(n),
            stages.end.min(n).max(stages.start.min(n)),
        );
        self.stage_offsets[s]..self.stage_offsets[e]
    }

    /// BLAKE3 of every path, shape and dtype, in order: equal across processes for the same
    /// architecture, different across architectures.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(b"murmur-model-v1");
        h.update(&(self.stage_offsets.len() as u64 - 1).to_le_bytes());
        for e in &self.entries {
            h.update(&(e.path.len() as u64).to_le_bytes());
            h.update(e.path.as_bytes());
            h.update(&(e.shape.len() as u64).to_le_bytes());
            for d in &e.shape {
                h.update(&(*d as u64).to_le_bytes());
            }
            h.update(b"f32");
        }
        *h.finalize().as_bytes()
    }

    pub(super) fn by_path(&self, stages: Range<usize>) -> HashMap<&str, &ParamEntry> {
        self.entries
            .iter()
            .filter(|e| stages.contains(&e.stage))
            .map(|e| (e.path.as_str(), e))
            .collect()
    }
}

/// Tracks the dotted path while a visitor or mapper walks one stage.
#[derive(Debug)]
pub(super) struct PathTracker(Vec<String>);

impl PathTracker {
    pub(super) fn new(stage: usize) -> Self {
        Self(vec![stage.to_string()])
    }
    pub(super) fn enter(&mut self, name: &str) {
        self.0.push(name.to_string());
    }
    pub(super) fn exit(&mut self) {
        self.0.pop();
    }
    pub(super) fn path(&self) -> String {
        self.0.join(".")
    }
}

struct ShapeVisitor {
    tracker: PathTracker,
    found: Vec<(String, Vec<usize>)>,
}

impl ShapeVisitor {
    fn new(stage: usize) -> Self {
        Self {
            tracker: PathTracker::new(stage),
            found: Vec::new(),
        }
    }
}

impl ModuleVisitor for ShapeVisitor {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.tracker.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.tracker.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.found
            .push((self.tracker.path(), param.lazy_shape().to_vec()));
    }
}
