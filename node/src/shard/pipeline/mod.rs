//! Pipeline training across peers: each peer of a plan holds a contiguous range of stages
//! (a [`murmur_models::pipeline::StageShard`]) and the run trains as a micro-batched pipeline
//! (one-forward-one-backward schedule: a step's micro-batches flow forward, their gradients
//! flow back, at most as many micro-batches in flight as the chain has shards; then one commit
//! carries the global gradient norm down the chain and every shard updates).
//!
//! - [`form`]: measure capacity, announce it, wait for the run's members, and agree on a plan
//!   (the member with the lowest peer id computes it and sends it; everyone re-computes it from
//!   the inputs in the notice and refuses a plan that is not the optimum for them);
//! - [`stage`]: one peer's part of the pipeline (the first shard also reads the data);
//! - [`notice`]: the plan notice, its encoding and checks; `members`: candidates, link
//!   probes and the planner's input;
//! - [`snapshots`]: snapshots of every range, so a range survives its holder;
//! - [`rebalance`]: the plan issuer's watch for joins and capacity drift;
//! - [`averaging`]: with several chains (data-parallel replicas of the pipeline), the holders
//!   of a range keep their copies in agreement by gossip averaging;
//! - [`mailbox`]: decoded inbound pipeline messages; [`outbox`]: bounded outbound sends, with
//!   a pool of their own for best-effort ones;
//! - `session`: [`run`], the whole of it for one node;
//! - [`compute`]: the shard's compute thread; [`tensor`]: tensors on the wire.

mod attack;
mod averaging;
mod compute;
mod driver;
pub mod form;
mod mailbox;
mod members;
pub(crate) mod membership;
pub mod notice;
mod outbox;
mod rebalance;
mod report;
mod snapshot_rules;
pub(crate) mod snapshots;
mod stage;
mod tensor;

use std::ops::Range;
use std::time::Duration;

use libp2p::PeerId;
use murmur_models::pipeline::ShardError;
use murmur_models::{Dataset, Device, ModelSpec, TrainConfig};
use murmur_protocol::{ModelFingerprint, RunId};
use serde::{Deserialize, Serialize};

pub use averaging::AveragingReport;
pub use driver::run;

use super::planner::{Plan, PlanError};
use crate::averaging::Admission;
use crate::net::{NetError, TransferError};

/// How stages are placed on the members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Placement {
    /// In proportion to measured capacity ([`super::planner::plan`]).
    CapacityAware,
    /// The same number of stages on every member ([`super::planner::even_split`]).
    Even,
}

/// Everything a node needs to take part in a pipeline run.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// The run.
    pub run: RunId,
    /// The model architecture.
    pub spec: ModelSpec,
    /// Architecture + initialisation fingerprint peers must share.
    pub model: ModelFingerprint,
    /// Optimiser and schedule; `batch_size` is the whole step's batch and `seed` the shared
    /// initialisation and data-order seed.
    pub train: TrainConfig,
    /// Micro-batches per step (divides `train.batch_size`).
    pub micro_batches: u32,
    /// Optimisation steps to run.
    pub steps: u64,
    /// Members the pipeline waits for (this node included).
    pub members: usize,
    /// Capacity-aware or even placement.
    pub placement: Placement,
    /// Emulated slowdown of this node's device (≥ 1).
    pub slowdown: f64,
    /// The device the shard computes on.
    pub device: Device,
    /// The device's description, announced.
    pub device_name: String,
    /// Training data (read only by the first shard).
    pub data: Dataset,
    /// Longest wait for a neighbour's message before the run fails.
    pub peer_deadline: Duration,
    /// Longest wait for the members and the plan.
    pub form_timeout: Duration,
    /// Time spent on the start-up capacity benchmark.
    pub capacity_budget: Duration,
    /// Snapshot every range to the other members every this many steps (0: never; a departed
    /// member then ends the run).
    pub snapshot_every: u64,
    /// Data-parallel copies of the pipeline: the members are grouped this many at a time and
    /// each group's members hold the same range in different chains (see
    /// [`crate::shard::planner::group_peers`]). 1: one chain.
    pub replicas: u32,
    /// With several replicas, the holders of a range gossip-average it every this many steps
    /// (0: never, the chains train independently).
    pub average_every: u64,
    /// Who may take part: anyone, or a closed pool's members (only they are planned in, and
    /// pipeline streams from others are refused on their header).
    pub admission: Admission,
    /// Red team only (`murmur testnet --sharded --malicious`, tests): how this member attacks
    /// the others beside its stage. `None` for every real node.
    pub tamper: Option<crate::adversary::PipeTamper>,
}

impl PipelineConfig {
    /// Samples per micro-batch.
    pub fn micro_samples(&self) -> usize {
        self.train.batch_size / self.micro_batches.max(1) as usize
    }

    fn validate(&self) -> Result<(), PipelineError> {
        let m = self.micro_batches as usize;
        if m == 0 || self.train.batch_size == 0 || !self.train.batch_size.is_multiple_of(m) {
            return Err(PipelineError::Config(format!(
                "batch size {} is not a positive multiple of {m} micro-batches",
                self.train.batch_size
            )));
        }
        if self.members == 0 || !(self.slowdown.is_finite() && self.slowdown >= 1.0) {
            return Err(PipelineError::Config(
                "members must be ≥ 1 and slowdown a finite number ≥ 1".into(),
            ));
        }
        if self.replicas == 0 || self.replicas as usize > self.members {
            return Err(PipelineError::Config(format!(
                "{} replicas of the pipeline need 1 to {} (the members)",
                self.replicas, self.members
            )));
        }
        Ok(())
    }
}

/// Why a pipeline run failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The configuration cannot work.
    #[error("invalid pipeline configuration: {0}")]
    Config(String),
    /// A peer sent something malformed or out of protocol.
    #[error("pipeline protocol: {0}")]
    Protocol(String),
    /// A peer sent a plan notice or shard state that does not decode.
    #[error("pipeline protocol: malformed {what}")]
    Decode {
        /// What it sent.
        what: &'static str,
        /// What bincode reported.
        #[source]
        source: bincode::error::DecodeError,
    },
    /// A plan notice or shard state could not be encoded.
    #[error("cannot encode {what}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// What bincode reported.
        #[source]
        source: bincode::error::EncodeError,
    },
    /// The shard's compute thread could not be started.
    #[error("shard compute: cannot start the shard thread")]
    ComputeSpawn(#[source] std::io::Error),
    /// The shard's compute thread stopped.
    #[error("shard compute: the shard thread stopped")]
    ComputeStopped,
    /// A pipeline header or tensor description is invalid.
    #[error(transparent)]
    Message(#[from] murmur_protocol::MessageError),
    /// A tensor on the wire does not match its description.
    #[error(transparent)]
    Tensor(#[from] murmur_models::WireError),
    /// The range averaging engine refused a sync.
    #[error(transparent)]
    Averaging(#[from] crate::averaging::AveragingError),
    /// A task of the run (blocking work, a send) panicked or was cancelled.
    #[error("a pipeline task failed")]
    Task(#[from] tokio::task::JoinError),
    /// The shard rejected an input or diverged.
    #[error(transparent)]
    Shard(#[from] ShardError),
    /// No plan could be made.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The network is gone.
    #[error(transparent)]
    Net(#[from] NetError),
    /// A send to a neighbour failed.
    #[error("sending to {peer} failed")]
    Send {
        /// The neighbour.
        peer: PeerId,
        /// What went wrong (boxed: transfer errors are large).
        #[source]
        error: Box<TransferError>,
    },
    /// A neighbour sent nothing within the deadline.
    #[error("no message from {peer} within {waited:?}: it left or stalled")]
    PeerSilent {
        /// The neighbour waited on.
        peer: PeerId,
        /// How long.
        waited: Duration,
    },
    /// A neighbour sent a stage message that breaks the protocol (a malformed tensor, a
    /// micro-batch or step out of place): honest members never do.
    #[error("{peer} broke the pipeline protocol")]
    Misbehaved {
        /// The neighbour.
        peer: PeerId,
        /// What it sent.
        #[source]
        cause: Box<PipelineError>,
    },
    /// The members or the plan did not come together in time.
    #[error("pipeline formation: {0}")]
    Formation(String),
    /// A member of this plan reported that its chain lost a member (why this node re-plans,
    /// or fails when it cannot).
    #[error("{peer} reported its chain broken")]
    ChainBroken {
        /// The reporting member.
        peer: PeerId,
    },
}

/// Live figures of this node's part, for progress lines.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageProgress {
    /// This node's position in the chain.
    pub position: usize,
    /// The chain (data-parallel replica) it runs in.
    pub lane: usize,
    /// The stages it holds.
    pub range: Option<Range<usize>>,
    /// Steps completed (committed) by this shard.
    pub step: u64,
    /// Latest step loss (first shard only).
    pub loss: Option<f32>,
    /// Compute time so far, seconds (slowdown included).
    pub busy_secs: f64,
    /// Time spent running a shard since its first step began (every plan epoch, not the
    /// waits between them), seconds.
    pub elapsed_secs: f64,
}

/// What this node did in a pipeline run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineReport {
    /// The plan that ran.
    pub plan: Plan,
    /// An even split of the same stages over the same members, as planned.
    pub even: Plan,
    /// Sum of the members' capacities in samples per second.
    pub ideal_samples_per_sec: f64,
    /// This node's measured capacity, FLOP/s.
    pub flops_per_sec: f64,
    /// This node's position in the plan (None when the plan does not use it).
    pub position: Option<usize>,
    /// The chain this node ran in (None when the plan does not use it).
    #[serde(default)]
    pub lane: Option<usize>,
    /// Chains (data-parallel replicas of the pipeline) in the plan.
    #[serde(default)]
    pub lanes: usize,
    /// What the gossip averaging of this node's range with its other holders did (None with
    /// one chain or averaging off).
    #[serde(default)]
    pub averaging: Option<AveragingReport>,
    /// The range's parameters at the end, when other chains hold the range too (empty
    /// otherwise; not serialised).
    #[serde(skip)]
    pub final_params: Vec<f32>,
    /// The stages it held.
    pub range: Option<Range<usize>>,
    /// Forward + backward FLOPs per sample of `range` (0 when not in the plan).
    #[serde(default)]
    pub range_flops_per_sample: f64,
    /// Steps completed.
    pub steps: u64,
    /// Times the run was re-planned after a member left.
    pub replans: u32,
    /// Plan epoch at the end.
    pub epoch: u64,
    /// Samples per step.
    pub batch_samples: usize,
    /// From the first plan's agreement to this shard's last commit (re-plans included), seconds.
    pub wall_secs: f64,
    /// Compute time, seconds (slowdown included).
    pub busy_secs: f64,
    /// Loss of every step from `first_loss_step` on, while this node held the first shard.
    pub losses: Vec<f32>,
    /// The step of `losses[0]` (0 unless this node became the first shard after a re-plan).
    pub first_loss_step: u64,
    /// Pipeline messages this node refused, by reason (plan notices, snapshots).
    #[serde(default)]
    pub refused: std::collections::BTreeMap<String, u64>,
}
