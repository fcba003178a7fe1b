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
//! step wait until the current step's commit; a neighbour that sends nothing within the
//! deadline fails the run with [`PipelineError::PeerSilent`] instead of hanging it.
//!
//! The two loops live in `lead` and `follow`; this file holds what they share (sending with
//! retries, waiting for the next message, progress reports, range snapshots).

use std::time::{Duration, Instant};

use libp2p::PeerId;
use murmur_models::WireActivation;
use murmur_models::pipeline::StageShard;
use murmur_protocol::pipeline::{PIPE_VERSION, PipeBody, PipeHeader};
use tokio::sync::watch;

mod follow;
mod lead;

use super::averaging::RangeAveraging;
use super::compute::Compute;
use super::mailbox::{Inbound, Mailbox};
use super::outbox::{Delivery, Outbox};
use super::replicas::{self, Replicas};
use super::{PipelineConfig, PipelineError, StageProgress, tensor};
use crate::net::{Network, PayloadKind};

/// How often a waiting shard checks its outgoing sends.
const POLL: Duration = Duration::from_millis(100);

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

/// Runs this node's shard from `resume` up to `config.steps` steps; figures accumulate in
/// `outcome` (also when the run fails), snapshots in `replicas`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    net: &Network,
    mailbox: &mut Mailbox,
    config: &PipelineConfig,
    position: &Position,
    progress: &watch::Sender<StageProgress>,
    replicas: &mut Replicas,
    resume: Resume,
    outcome: &mut StageOutcome,
    mut averaging: Option<&mut RangeAveraging>,
) -> Result<(), PipelineError> {
    let (spec, device, range, train) = (
        config.spec.clone(),
        config.device.clone(),
        position.range.clone(),
        config.train.clone(),
    );
    let parts = resume.parts;
    let averages = config.average_every > 0 && !position.mates.is_empty();
    let (shard, anchor) = tokio::task::spawn_blocking(move || {
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
    .await
    .map_err(|e| PipelineError::Compute(e.to_string()))??;
    if let Some(averaging) = averaging.as_deref_mut().filter(|_| averages) {
        averaging.begin(
            position.epoch,
            &position.range,
            anchor,
            position.mates.clone(),
        );
    }
    let last = shard.is_last();
    let compute = Compute::start(shard, config.slowdown)?;
    let mut stage = Stage {
        mailbox,
        // Receivers drop streams beyond their per-protocol limit rather than queue them, so
        // never have more in flight than a peer with default limits accepts. A neighbour that
        // cannot take a send within the deadline is as gone as one that sends nothing.
        outbox: Outbox::new(
            net.clone(),
            net.limits().max_inbound_transfers,
            config.peer_deadline,
        ),
        config,
        position,
        compute,
        progress,
        last,
        started: Instant::now(),
        busy_before: outcome.busy_secs,
        elapsed_before: outcome.elapsed_secs,
        outcome,
        replicas,
        resume: resume.step,
        averaging: averaging.filter(|_| averages),
    };
    stage.report(resume.step, None);
    let result = if position.index == 0 {
        stage.lead().await
    } else {
        stage.follow().await
    };
    let result = match result {
        Ok(()) => stage.outbox.flush().await,
        Err(err) => Err(err),
    };
    // With replicas, what the range ended as (to compare the copies); one copy of the range.
    if result.is_ok() && !position.mates.is_empty() {
        stage.outcome.final_params = stage.compute.call(|s| s.params()).await??;
    }
    stage.outcome.busy_secs = stage.busy_before + stage.compute.busy().as_secs_f64();
    stage.outcome.elapsed_secs = stage.elapsed_before + stage.started.elapsed().as_secs_f64();
    result
}

struct Stage<'a> {
    mailbox: &'a mut Mailbox,
    outbox: Outbox,
    config: &'a PipelineConfig,
    position: &'a Position,
    compute: Compute,
    progress: &'a watch::Sender<StageProgress>,
    last: bool,
    started: Instant,
    busy_before: f64,
    elapsed_before: f64,
    outcome: &'a mut StageOutcome,
    replicas: &'a mut Replicas,
    resume: u64,
    averaging: Option<&'a mut RangeAveraging>,
}

impl Stage<'_> {
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
                let (meta, bytes) = tokio::task::spawn_blocking(move || tensor::encode(&t))
                    .await
                    .map_err(|e| PipelineError::Compute(e.to_string()))??;
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
            let out = &mut *self.outcome;
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

    /// After the update of step `done` (1-based): average the range with its other holders
    /// when due, then snapshot it when due.
    async fn after_update(&mut self, done: u64) -> Result<(), PipelineError> {
        self.average(done).await?;
        self.replicate(done).await
    }

    /// Every `average_every` steps, one gossip-averaging sync of the range with its holders in
    /// the other chains (see [`RangeAveraging`]).
    async fn average(&mut self, done: u64) -> Result<(), PipelineError> {
        let every = self.config.average_every;
        let Some(averaging) = self.averaging.as_deref_mut() else {
            return Ok(());
        };
        if every == 0 || !done.is_multiple_of(every) {
            return Ok(());
        }
        let params = self.compute.call(|s| s.params()).await??;
        let samples = every * self.config.train.batch_size as u64;
        let steps = u32::try_from(every).unwrap_or(u32::MAX);
        let merged = averaging.sync(params, samples, steps).await?;
        self.compute.call(move |s| s.set_params(&merged)).await??;
        Ok(())
    }

    /// Every `replicate_every` steps, snapshot the shard, keep the snapshot and send it to every
    /// other peer of the plan (all chains).
    async fn replicate(&mut self, done: u64) -> Result<(), PipelineError> {
        let every = self.config.replicate_every;
        // No snapshot after the last step: the run is over, and members may already be gone.
        let last_step = done >= self.config.steps;
        if every == 0 || !done.is_multiple_of(every) || last_step || self.position.planned.len() < 2
        {
            return Ok(());
        }
        let state = self.compute.call(|s| s.state()).await??;
        let (state, bytes) = tokio::task::spawn_blocking(move || {
            let bytes = replicas::encode(&state);
            (state, bytes)
        })
        .await
        .map_err(|e| PipelineError::Compute(e.to_string()))?;
        let bytes = bytes?;
        let range = &self.position.range;
        let body = PipeBody::Replica {
            start: range.start as u32,
            end: range.end as u32,
        };
        let me = self.position.chain[self.position.index];
        for peer in self
            .position
            .planned
            .clone()
            .into_iter()
            .filter(|p| *p != me)
        {
            let header = self.header(done, 0, body.clone());
            let header = PipeHeader {
                tensor: None,
                ..header
            };
            // Peers of other chains may already have finished their steps.
            let delivery = if self.position.chain.contains(&peer) {
                Delivery::Required
            } else {
                Delivery::BestEffort
            };
            self.outbox
                .send_as(peer, PayloadKind::Control, &header, bytes.clone(), delivery)
                .await?;
        }
        self.replicas.insert(state);
        Ok(())
    }

    /// Keeps a replica another member sent.
    async fn keep_replica(&mut self, message: Inbound) -> Result<(), PipelineError> {
        let PipeBody::Replica { start, end } = message.header.body else {
            return Ok(());
        };
        let payload = message.payload;
        let state = tokio::task::spawn_blocking(move || replicas::decode(&payload, start, end))
            .await
            .map_err(|e| PipelineError::Compute(e.to_string()))?;
        match state {
            Ok(state) => self.replicas.insert(state),
            Err(err) => tracing::warn!(peer = %message.peer, %err, "replica refused"),
        }
        Ok(())
    }

    /// Handles the control messages already queued, without waiting: snapshots are kept, a
    /// plan of a later epoch ends this one ([`PipelineError::Replanned`]). For a shard with no
    /// neighbours, which never waits in [`next_message`](Self::next_message).
    async fn take_control_messages(&mut self) -> Result<(), PipelineError> {
        self.outbox.reap()?;
        while let Some(message) = self.mailbox.recv(Duration::ZERO).await {
            let h = &message.header;
            match h.body {
                PipeBody::Plan if h.epoch > self.position.epoch => {
                    let epoch = h.epoch;
                    self.mailbox.requeue(vec![message]);
                    return Err(PipelineError::Replanned { epoch });
                }
                PipeBody::Replica { .. }
                    if self.position.planned.contains(&message.peer)
                        && h.epoch == self.position.epoch =>
                {
                    self.keep_replica(message).await?;
                }
                PipeBody::Broken if self.reports_broken(&message) => {
                    return Err(PipelineError::ChainBroken { peer: message.peer });
                }
                _ => {
                    tracing::debug!(peer = %message.peer, "pipeline message for a chain of one, dropped")
                }
            }
        }
        Ok(())
    }

    /// Whether `message` (a [`PipeBody::Broken`]) reports a broken chain of this epoch from a
    /// peer of this plan; older reports are left over from an epoch that is over.
    fn reports_broken(&self, message: &Inbound) -> bool {
        let current = message.header.epoch == self.position.epoch
            && self.position.planned.contains(&message.peer);
        if current {
            tracing::warn!(peer = %message.peer, epoch = message.header.epoch, "a chain of this plan broke; re-planning");
        }
        current
    }

    /// The next message of this epoch from an expected neighbour, within the deadline.
    async fn next_message(&mut self, waiting_on: Option<PeerId>) -> Result<Inbound, PipelineError> {
        let wait = self.config.peer_deadline;
        self.message_within(wait)
            .await?
            .ok_or_else(|| PipelineError::PeerSilent {
                peer: waiting_on.unwrap_or(self.position.chain[0]),
                waited: wait,
            })
    }

    /// The next message of this epoch from an expected neighbour, if one comes within `wait`
    /// (`Duration::ZERO`: only if the first one waiting is such a message).
    async fn message_within(&mut self, wait: Duration) -> Result<Option<Inbound>, PipelineError> {
        let deadline = Instant::now() + wait;
        let mut looked = false;
        loop {
            // Poll in short slices so a failed send surfaces at once, not after the deadline;
            // check the deadline every time, as other peers' messages (snapshots) may keep
            // arriving while the awaited neighbour stays silent.
            self.outbox.reap()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if looked && left.is_zero() {
                return Ok(None);
            }
            looked = true;
            let Some(message) = self.mailbox.recv(POLL.min(left)).await else {
                continue;
            };
            let h = &message.header;
            if h.body == PipeBody::Plan && h.epoch > self.position.epoch {
                let epoch = h.epoch;
                self.mailbox.requeue(vec![message]);
                return Err(PipelineError::Replanned { epoch });
            }
            if h.body == PipeBody::Probe {
                continue;
            }
            if h.body == PipeBody::Broken {
                if self.reports_broken(&message) {
                    return Err(PipelineError::ChainBroken { peer: message.peer });
                }
                continue;
            }
            if matches!(h.body, PipeBody::Replica { .. }) {
                if self.position.planned.contains(&message.peer) && h.epoch == self.position.epoch {
                    self.keep_replica(message).await?;
                }
                continue;
            }
            let expected = match h.body {
                PipeBody::Forward { .. } | PipeBody::Commit { .. } => self.position.prev(),
                PipeBody::Backward { .. } => self.position.next(),
                PipeBody::Plan | PipeBody::Replica { .. } | PipeBody::Probe | PipeBody::Broken => {
                    None
                }
            };
            if h.epoch != self.position.epoch || Some(message.peer) != expected {
                tracing::debug!(peer = %message.peer, epoch = h.epoch, "pipeline message not for this position, dropped");
                continue;
            }
            if h.micros != self.config.micro_batches {
                return Err(PipelineError::Protocol(format!(
                    "{} micro-batches per step, this run uses {}",
                    h.micros, self.config.micro_batches
                )));
            }
            return Ok(Some(message));
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
    tokio::task::spawn_blocking(move || decode(&meta, &payload))
        .await
        .map_err(|e| PipelineError::Compute(e.to_string()))?
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
