//! One peer's part of a pipeline run (1F1B schedule, see the module docs of `pipeline`).
//!
//! The first shard reads the data: per step it runs the forward of every micro-batch and sends
//! the activations on, taking the micro-batches' gradients back in between (at most as many
//! micro-batches in flight as the chain has shards) and after, computes the global
//! gradient norm from its own and the downstream shards' (which arrives with the last gradient),
//! updates, and sends a commit down the chain. Every other shard answers what arrives: a forward
//! (run it and send it on, or, on the last shard, compute the loss and send the gradient back),
//! a backward (send the input gradient up; with the last one of the step, the sum of the
//! squared gradient norms from here down), a commit (update and pass it on). Messages of a later
//! step wait until the current step's commit.
//!
//! A stage runs one plan epoch as a task of the driver and ends with an [`EpochEnd`]: every
//! step done, stopped by the driver (a later plan, a break report, a re-balance), or a
//! neighbour lost (silent for the deadline, or a send that failed for good). Control messages
//! never reach it: the driver routes only this epoch's forwards, backwards and commits here.
//!
//! The two loops live in `lead` and `follow`; this file holds what they share (sending with
//! retries, waiting for the next message, progress reports, range snapshots).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use libp2p::PeerId;
use murmur_models::WireActivation;
use murmur_models::pipeline::StageShard;
use murmur_protocol::pipeline::{PIPE_VERSION, PipeBody, PipeHeader};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

mod follow;
mod inbox;
mod lead;
mod upkeep;

use super::averaging::RangeAveraging;
use super::compute::Compute;
use super::mailbox::Mailbox;
use super::membership::{EpochEnd, Loss};
use super::outbox::Outbox;
use super::snapshots::{self, Snapshots};
use super::{PipelineConfig, PipelineError, StageProgress, tensor};
use crate::net::{Network, PayloadKind};

/// Where this node sits in the running plan.
#[derive(Debug, Clone)]
pub(crate) struct Position {
    /// Plan epoch.
    pub epoch: u64,
    /// Index in the chain.
    pub index: usize,
    /// The chain's peers, in pipeline order.
    pub chain: Vec<PeerId>,
    /// The stages this node holds.
    pub range: std::ops::Range<usize>,
    /// The chain (data-parallel replica) this node is in.
    pub lane: usize,
    /// The other holders of `range`, one per other chain.
    pub mates: Vec<PeerId>,
    /// Every peer of the plan, all chains (range snapshots go to all of them).
    pub planned: Vec<PeerId>,
}

impl Position {
    fn prev(&self) -> Option<PeerId> {
        self.index.checked_sub(1).map(|i| self.chain[i])
    }
    fn next(&self) -> Option<PeerId> {
        self.chain.get(self.index + 1).copied()
    }
}

/// What this shard did, accumulated over every plan epoch it ran in.
#[derive(Debug, Clone, Default)]
pub(crate) struct StageOutcome {
    /// Steps committed.
    pub steps: u64,
    /// Compute time, seconds (slowdown included).
    pub busy_secs: f64,
    /// Time spent running a shard (every epoch), seconds.
    pub elapsed_secs: f64,
    /// Loss of steps `first_loss_step..` while this node held the first shard, the latest
    /// contiguous stretch (repeated steps overwrite).
    pub losses: Vec<f32>,
    /// The step of `losses[0]`.
    pub first_loss_step: u64,
    /// The range's parameters when the shard finished (only when other chains hold it too).
    pub final_params: Vec<f32>,
}

/// Where a shard starts: the step, and the snapshots its range is rebuilt from (none: the
/// shared initial model).
#[derive(Debug, Default)]
pub(crate) struct Resume {
    pub step: u64,
    pub parts: Vec<murmur_models::pipeline::ShardState>,
}

/// Everything one stage of one plan epoch runs with (owned, so the driver can run it as a
/// task and still handle control messages meanwhile).
pub(crate) struct StageTask {
    pub net: Network,
    pub config: Arc<PipelineConfig>,
    pub position: Position,
    pub progress: Arc<watch::Sender<StageProgress>>,
    /// Snapshots, shared with the driver (which keeps those other members send).
    pub snapshots: Arc<Mutex<Snapshots>>,
    pub resume: Resume,
    /// Figures of the epochs before.
    pub outcome: StageOutcome,
    /// The range averaging of the run (handed back when the stage ends).
    pub averaging: Option<RangeAveraging>,
    /// This epoch's forwards, backwards and commits from the neighbours.
    pub mailbox: Mailbox,
    /// Ends the stage with [`EpochEnd::Stopped`] at its next wait.
    pub stop: CancellationToken,
}

/// What a stage hands back to the driver.
pub(crate) struct StageDone {
    pub outcome: StageOutcome,
    pub averaging: Option<RangeAveraging>,
    pub end: Result<EpochEnd, PipelineError>,
}

/// Why a stage's loop stopped: an end of its epoch, or an error.
#[derive(Debug)]
pub(crate) enum Halt {
    End(EpochEnd),
    Failed(PipelineError),
}

impl From<PipelineError> for Halt {
    fn from(err: PipelineError) -> Self {
        match err {
            PipelineError::PeerSilent { peer, waited } => Halt::End(EpochEnd::NeighbourLost {
                peer,
                cause: Loss::Silent(waited),
            }),
            PipelineError::Send { peer, error } => Halt::End(EpochEnd::NeighbourLost {
                peer,
                cause: Loss::Send(error),
            }),
            other => Halt::Failed(other),
        }
    }
}

/// The end of the epoch when `peer`, a neighbour, sent a stage message that breaks the
/// protocol (`err` says how): it is lost like one that went silent, and blamed.
pub(crate) fn misbehaved(peer: PeerId, err: PipelineError) -> Halt {
    tracing::warn!(%peer, err = %crate::errors::chain(&err), "a neighbour broke the pipeline protocol");
    Halt::End(EpochEnd::NeighbourLost {
        peer,
        cause: Loss::Misbehaved(Box::new(err)),
    })
}

/// How an error met while handling a stage message of `peer` ends the epoch: the neighbour is
/// blamed when its message was at fault (out of protocol, malformed, a tensor the shard
/// refuses); other errors (a failed send, this node's own compute) end it as they would anyway.
pub(crate) fn blame(peer: PeerId) -> impl FnOnce(PipelineError) -> Halt {
    use murmur_models::pipeline::ShardError;
    move |err| match err {
        PipelineError::Protocol(_)
        | PipelineError::Message(_)
        | PipelineError::Tensor(_)
        | PipelineError::Shard(
            ShardError::Model(_) | ShardError::Wire(_) | ShardError::UnknownMicroBatch(_),
        ) => misbehaved(peer, err),
        other => Halt::from(other),
    }
}

impl From<murmur_models::pipeline::ShardError> for Halt {
    fn from(err: murmur_models::pipeline::ShardError) -> Self {
        Halt::Failed(err.into())
    }
}

/// Runs this node's shard of one epoch from `task.resume` up to `config.steps` steps; figures
/// accumulate in the outcome handed back (also when the epoch ends early).
pub(crate) async fn run(task: StageTask) -> StageDone {
    let StageTask {
        net,
        config,
        position,
        progress,
        snapshots,
        resume,
        outcome,
        mut averaging,
        mailbox,
        stop,
    } = task;
    let averages = config.average_every > 0 && !position.mates.is_empty();
    let built = build_shard(&config, &position, resume.parts, averages).await;
    let (shard, anchor) = match built {
        Ok(built) => built,
        Err(err) => {
            return StageDone {
                outcome,
                averaging,
                end: Err(err),
            };
        }
    };
    if let Some(averaging) = averaging.as_mut().filter(|_| averages) {
        averaging.begin(
            position.epoch,
            &position.range,
            anchor,
            position.mates.clone(),
        );
    }
    let last = shard.is_last();
    let compute = match Compute::start(shard, config.slowdown) {
        Ok(compute) => compute,
        Err(err) => {
            return StageDone {
                outcome,
                averaging,
                end: Err(err),
            };
        }
    };
    // Receivers drop streams beyond their per-protocol limit rather than queue them, so
    // never have more in flight than a peer with default limits accepts. A neighbour that
    // cannot take a send within the deadline is as gone as one that sends nothing.
    let outbox = Outbox::new(
        net.clone(),
        net.limits().max_inbound_transfers,
        config.peer_deadline,
    );
    let mut stage = Stage {
        mailbox,
        outbox,
        config,
        position,
        compute,
        progress,
        last,
        started: Instant::now(),
        busy_before: outcome.busy_secs,
        elapsed_before: outcome.elapsed_secs,
        outcome,
        snapshots,
        resume: resume.step,
        averaging,
        averages,
        stop,
    };
    let end = stage.run_to_end().await;
    stage.outcome.busy_secs = stage.busy_before + stage.compute.busy().as_secs_f64();
    stage.outcome.elapsed_secs = stage.elapsed_before + stage.started.elapsed().as_secs_f64();
    StageDone {
        outcome: stage.outcome,
        averaging: stage.averaging,
        end,
    }
}

/// Builds the shard of `position`'s range (from `parts`, or the shared initial model) off the
/// async runtime; with averaging, also the range's initial parameters (the deltas' anchor).
async fn build_shard(
    config: &PipelineConfig,
    position: &Position,
    parts: Vec<murmur_models::pipeline::ShardState>,
    averages: bool,
) -> Result<(StageShard, Vec<f32>), PipelineError> {
    let (spec, device, range, train) = (
        config.spec.clone(),
        config.device.clone(),
        position.range.clone(),
        config.train.clone(),
    );
    let built = tokio::task::spawn_blocking(move || {
        let mut shard = StageShard::new(&spec, &device, range, train)?;
        // Deltas are encoded relative to the shared initial parameters of the range.
        let anchor = if averages {
            shard.params()?
        } else {
            Vec::new()
        };
        if !parts.is_empty() {
            shard.restore_from_parts(&parts)?;
        }
        Ok::<_, murmur_models::pipeline::ShardError>((shard, anchor))
    })
    .await??;
    Ok(built)
}

struct Stage {
    mailbox: Mailbox,
    outbox: Outbox,
    config: Arc<PipelineConfig>,
    position: Position,
    compute: Compute,
    progress: Arc<watch::Sender<StageProgress>>,
    last: bool,
    started: Instant,
    busy_before: f64,
    elapsed_before: f64,
    outcome: StageOutcome,
    snapshots: Arc<Mutex<Snapshots>>,
    resume: u64,
    averaging: Option<RangeAveraging>,
    /// Whether this stage averages its range with the other chains.
    averages: bool,
    stop: CancellationToken,
}

impl Stage {
    fn header(&self, step: u64, micro: u32, body: PipeBody) -> PipeHeader {
        PipeHeader {
            version: PIPE_VERSION,
            run: self.config.run,
            epoch: self.position.epoch,
            step,
            micro,
            micros: self.config.micro_batches,
            tensor: None,
            body,
        }
    }

    async fn send(
        &mut self,
        peer: Option<PeerId>,
        kind: PayloadKind,
        mut header: PipeHeader,
        tensor: Option<WireActivation>,
    ) -> Result<(), PipelineError> {
        let peer = peer.ok_or_else(|| PipelineError::Protocol("no neighbour to send to".into()))?;
        let payload = match tensor {
            Some(t) => {
                let (meta, bytes) =
                    tokio::task::spawn_blocking(move || tensor::encode(&t)).await??;
                header.tensor = Some(meta);
                bytes
            }
            None => Vec::new(),
        };
        self.outbox.send(peer, kind, &header, payload).await
    }

    fn report(&mut self, step: u64, loss: Option<f32>) {
        self.outcome.steps = step;
        if let Some(loss) = loss.filter(|_| step > 0) {
            let at = step - 1;
            let out = &mut self.outcome;
            let next = out.first_loss_step + out.losses.len() as u64;
            // Keep one contiguous stretch: start over after a gap (another member led meanwhile).
            if out.losses.is_empty() || at < out.first_loss_step || at > next {
                out.losses.clear();
                out.first_loss_step = at;
            }
            out.losses.truncate((at - out.first_loss_step) as usize);
            out.losses.push(loss);
        }
        self.progress.send_replace(StageProgress {
            position: self.position.index,
            lane: self.position.lane,
            range: Some(self.position.range.clone()),
            step,
            loss,
            busy_secs: self.busy_before + self.compute.busy().as_secs_f64(),
            elapsed_secs: self.elapsed_before + self.started.elapsed().as_secs_f64(),
        });
    }

    /// Runs the loop of this node's position, then waits for its sends; with replicas, keeps
    /// what the range ended as (to compare the copies).
    async fn run_to_end(&mut self) -> Result<EpochEnd, PipelineError> {
        self.report(self.resume, None);
        let looped = if self.position.index == 0 {
            self.lead().await
        } else {
            self.follow().await
        };
        let flushed = match looped {
            Ok(()) => self.outbox.flush().await.map_err(Halt::from),
            Err(halt) => Err(halt),
        };
        match flushed {
            Ok(()) => {
                if !self.position.mates.is_empty() {
                    self.outcome.final_params = self.compute.call(|s| s.params()).await??;
                }
                Ok(EpochEnd::Finished)
            }
            Err(Halt::End(end)) => Ok(end),
            Err(Halt::Failed(err)) => Err(err),
        }
    }

    /// Runs the forward of micro-batch `micro` and sends the activation downstream.
    async fn forward_on(
        &mut self,
        step: u64,
        micro: u32,
        input: WireActivation,
        targets: Vec<u32>,
    ) -> Result<(), PipelineError> {
        let out = self
            .compute
            .call(move |s| s.forward(micro, input))
            .await??;
        let header = self.header(step, micro, PipeBody::Forward { targets });
        let next = self.position.next();
        self.send(next, PayloadKind::Activations, header, Some(out))
            .await
    }
}

/// [`decode`] on a blocking thread (activations can be megabytes).
async fn decode_off_thread(
    meta: Option<murmur_protocol::pipeline::TensorMeta>,
    payload: Vec<u8>,
) -> Result<WireActivation, PipelineError> {
    tokio::task::spawn_blocking(move || decode(&meta, &payload)).await?
}

fn decode(
    meta: &Option<murmur_protocol::pipeline::TensorMeta>,
    payload: &[u8],
) -> Result<WireActivation, PipelineError> {
    let meta = meta
        .as_ref()
        .ok_or_else(|| PipelineError::Protocol("a tensor message without a tensor".into()))?;
    tensor::decode(meta, payload)
}
