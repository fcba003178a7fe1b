//! What the training thread does the same way in either averaging mode: local steps and
//! their counters, the parameter buffer syncs reuse, evaluation, checkpoints, the round
//! bookkeeping at the end of a sync, and the status it publishes.
//!
//! [`Shared`] is owned by the [`Worker`](super::Worker) and lent to its averaging
//! [`Mode`](super::mode::Mode) at every call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tokio::sync::mpsc;

use super::{WorkerConfig, WorkerOutput, WorkerStatus};
use crate::averaging::{Averager, Outgoing, Rejection};
use crate::session::SessionError;
use crate::session::checkpoints::{CheckpointStoreError, Checkpoints, SessionCheckpoint};
use crate::session::presence::LivePeers;
use crate::session::replica::Replica;

/// The training thread's state common to both averaging modes.
pub(super) struct Shared {
    pub(super) replica: Box<dyn Replica>,
    pub(super) averager: Averager,
    pub(super) config: WorkerConfig,
    pub(super) outputs: mpsc::Sender<WorkerOutput>,
    pub(super) live_peers: Arc<LivePeers>,
    pub(super) checkpoints: Option<Checkpoints>,
    pub(super) status: WorkerStatus,
    /// Local steps since the last sync (or butterfly round start).
    pub(super) steps_since_sync: u64,
    /// Samples trained since the last sync: the mass the next sync adds.
    pub(super) samples_since_sync: u64,
    /// When the last sync (or round start) happened.
    pub(super) last_sync: Instant,
    /// Time spent in local steps, for the throughput figure.
    train_time: Duration,
    /// The parameter buffer of the last sync, reused by the next one (model-sized).
    pub(super) params_buffer: Vec<f32>,
    /// A checkpoint was refused as too large (said once; later ones are not tried again).
    checkpoint_refused: bool,
}

impl Shared {
    /// The shared state of a worker that has not trained or synced yet.
    pub(super) fn new(
        replica: Box<dyn Replica>,
        averager: Averager,
        config: WorkerConfig,
        outputs: mpsc::Sender<WorkerOutput>,
        live_peers: Arc<LivePeers>,
        checkpoints: Option<Checkpoints>,
    ) -> Self {
        Self {
            replica,
            averager,
            config,
            outputs,
            live_peers,
            checkpoints,
            status: WorkerStatus::default(),
            steps_since_sync: 0,
            samples_since_sync: 0,
            last_sync: Instant::now(),
            train_time: Duration::ZERO,
            params_buffer: Vec::new(),
            checkpoint_refused: false,
        }
    }

    /// Whether the replica still trains: it can, and its step budget is not spent.
    pub(super) fn trains(&self) -> bool {
        self.replica.trains() && self.replica.steps() < self.config.step_budget
    }

    /// One local step and its figures.
    pub(super) fn train_one(&mut self) -> Result<(), SessionError> {
        let started = Instant::now();
        let step = self.replica.step()?;
        self.train_time += started.elapsed();
        self.steps_since_sync += 1;
        self.samples_since_sync += step.samples;
        self.status.samples += step.samples;
        self.status.steps = self.replica.steps();
        self.status.loss = Some(step.loss);
        self.status.samples_per_sec =
            self.status.samples as f64 / self.train_time.as_secs_f64().max(1e-9);
        Ok(())
    }

    /// Whether the sync policy says a sync is due now.
    pub(super) fn sync_due(&self) -> bool {
        self.config.policy.due(
            self.steps_since_sync,
            self.last_sync.elapsed(),
            self.replica.lr(),
        )
    }

    /// The replica's parameters, in the buffer of the previous sync.
    pub(super) fn current_params(&mut self) -> Result<Vec<f32>, SessionError> {
        let mut params = std::mem::take(&mut self.params_buffer);
        self.replica.params_into(&mut params)?;
        Ok(params)
    }

    /// Writes `params` into the replica and keeps the buffer for the next sync.
    pub(super) fn store_params(&mut self, params: Vec<f32>) -> Result<(), SessionError> {
        self.replica.set_params(&params)?;
        self.params_buffer = params;
        Ok(())
    }

    /// Folds a delta that could not be delivered back into the model, with its mass.
    pub(super) fn take_back(&mut self, outgoing: &Outgoing) -> Result<(), SessionError> {
        let mut params = self.replica.params()?;
        self.averager.returned(outgoing, &mut params);
        self.replica.set_params(&params)?;
        Ok(())
    }

    /// A sync (or butterfly round start) took the local steps since the last one: counts
    /// the round as trained when it carried any, and starts the next period.
    pub(super) fn sync_done(&mut self) {
        if self.steps_since_sync > 0 {
            self.status.trained_rounds += 1;
        }
        self.steps_since_sync = 0;
        self.samples_since_sync = 0;
        self.last_sync = Instant::now();
    }

    /// Persists that round numbers below `round` are used (a restart never reuses them).
    pub(super) fn record_next_round(&self, round: u64) -> Result<(), SessionError> {
        if let Some(store) = &self.checkpoints {
            store.record_next_round(round)?;
        }
        Ok(())
    }

    /// Checkpoints when the round clock reached a multiple of the checkpoint period.
    pub(super) fn checkpoint_if_due(&mut self) -> Result<(), SessionError> {
        let every = self.config.checkpoint_every;
        if every > 0 && self.averager.round().is_multiple_of(every) {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Writes a checkpoint (when the node has a store).
    pub(super) fn checkpoint(&mut self) -> Result<(), SessionError> {
        let Some(store) = self
            .checkpoints
            .as_ref()
            .filter(|_| !self.checkpoint_refused)
        else {
            return Ok(());
        };
        let ckpt = SessionCheckpoint {
            round: self.averager.round(),
            samples: self.status.samples,
            replica: self.replica.checkpoint()?,
            averager: self.averager.state(),
        };
        match store.save(&ckpt) {
            Ok(()) => tracing::debug!(round = ckpt.round, "checkpoint written"),
            // Training goes on; the operator is told the node cannot resume from disk.
            Err(err @ CheckpointStoreError::TooLarge { .. }) => {
                if !self.checkpoint_refused {
                    tracing::error!(%err, "checkpoints are off for this model: a restart will start from the run's initial model or a peer's state");
                }
                self.checkpoint_refused = true;
            }
            Err(err) => return Err(err.into()),
        }
        Ok(())
    }

    /// Held-out evaluation, when the replica has held-out data.
    pub(super) fn evaluate(&mut self) -> Result<(), SessionError> {
        if let Some(eval) = self.replica.evaluate()? {
            self.status.eval = Some(eval);
            if let (Some(target), Some(acc)) = (self.config.target_accuracy, eval.accuracy) {
                self.status.reached_target |= acc >= target;
            }
        }
        Ok(())
    }

    /// Copies the averager's figures into the status.
    pub(super) fn refresh_status(&mut self) {
        self.status.round = self.averager.round();
        self.status.mass = self.averager.mass();
        self.status.counts = self.averager.counts().clone();
    }

    /// Publishes the status (dropped when the async side is behind: the next one follows),
    /// with the deltas the gate refused before their payloads counted and charged.
    pub(super) fn publish(&mut self) {
        for (peer, reason) in self.averager.take_gate_refusals() {
            tracing::debug!(%peer, %reason, "delta refused before its payload");
            self.rejected(peer, reason);
        }
        self.refresh_status();
        let _ = self
            .outputs
            .try_send(WorkerOutput::Progress(self.status.clone()));
    }

    /// Hands `output` to the async side (waits while its queue is full).
    pub(super) fn send(&self, output: WorkerOutput) {
        let _ = self.outputs.blocking_send(output);
    }

    /// Reports a refused delta or part from `peer`.
    pub(super) fn rejected(&self, peer: PeerId, reason: Rejection) {
        self.send(WorkerOutput::Rejected { peer, reason });
    }
}
