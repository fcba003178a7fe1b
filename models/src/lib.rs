//! Murmur's models: burn networks split into pipeline stages, flat parameter views, data sets and
//! the local trainer the node drives.
//!
//! * [`device`] — `auto | gpu | wgpu-cpu | flex` device selection.
//! * [`spec`] — model kinds and architectures, per-stage cost estimates.
//! * [`network`] — the stages themselves.
//! * [`model`] — a network with its flat layout; stage-range forward/backward.
//! * [`params`] — path-keyed flat parameter layout and fingerprint.
//! * [`wire`] — activations as plain data for crossing processes.
//! * [`data`] — built-in and user data sets, data parts, shuffling, batching, resumable cursors.
//! * [`pipeline`] — one pipeline shard: micro-batched forward/backward of a stage range, AdamW.
//! * [`trainer`] — AdamW with warmup + cosine schedule and gradient clipping; checkpoints.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod checkpoint;
pub mod data;
pub mod device;
mod init;
pub mod model;
pub mod network;
mod optim;
pub mod params;
pub mod pipeline;
pub mod spec;
pub mod trainer;
pub mod wire;

pub use burn::tensor::Device;
pub use checkpoint::CheckpointError;
pub use data::{Batch, DataError, DataShape, DataSplit, Dataset};
pub use device::{
    DeviceChoice, DeviceClass, DeviceError, DeviceInfo, SelectedDevice, select_device,
};
pub use model::{Model, ModelError, RangeGrads};
pub use network::{Activation, StageError};
pub use optim::lr_at;
pub use params::{ParamEntry, ParamError, ParamLayout};
pub use spec::{GptConfig, MlpConfig, ModelKind, ModelSpec, SpecError, StageCost};
pub use trainer::{EvalStats, StepStats, TrainConfig, TrainError, Trainer, builtin_data, spec_for};
pub use wire::{WireActivation, WireError};
