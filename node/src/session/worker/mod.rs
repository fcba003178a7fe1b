//! The training thread: owns the replica and the averaging engine, runs local steps, syncs
//! on the policy's schedule, merges received deltas, evaluates and checkpoints.
//!
//! It talks to the async side only through bounded channels: inputs arrive on a
//! `sync_channel` (the async side never blocks on it, it drops and counts when full), and
//! outputs leave on a tokio channel with `blocking_send` (back-pressure on this thread only).
//!
//! - [`Worker`] (this file): the loop — inputs, local steps, the idle wait.
//! - [`shared`]: what both averaging modes share (steps, evaluation, checkpoints, status).
//! - [`mode`]: the [`Mode`](mode::Mode) trait the loop drives an averaging mode through.
//! - [`gossip`]: push-sum gossip ([`PushSum`](gossip::PushSum)).
//! - [`butterfly`]: butterfly rounds ([`Rounds`](butterfly::Rounds)).

mod butterfly;
mod gossip;
mod mode;
mod shared;

use std::sync::Arc;
use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
use std::time::Duration;

use libp2p::PeerId;
use murmur_models::EvalStats;
use murmur_protocol::Digest;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{mpsc, oneshot};

use super::SessionError;
use super::checkpoints::Checkpoints;
use super::in_flight::SendsInFlight;
use super::inputs::InputReceiver;
use super::presence::LivePeers;
use super::replica::Replica;
use crate::averaging::butterfly::{PartGate, PartSend};
use crate::averaging::{Averager, Butterfly, MergeCounts, Outgoing, Rejection, SyncPolicy};
use butterfly::Rounds;
use gossip::PushSum;
use mode::Mode;
use shared::Shared;

/// Schedule of the training thread.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// When to sync while training.
    pub policy: SyncPolicy,
    /// Local steps to train in total; afterwards the node only averages.
    pub step_budget: u64,
    /// Held-out accuracy at which the node reports it reached the target.
    pub target_accuracy: Option<f32>,
    /// Evaluate every this many local steps.
    pub eval_every: u64,
    /// Checkpoint every this many rounds (0 = never).
    pub checkpoint_every: u64,
    /// Sync period once the node no longer trains.
    pub idle_sync: Duration,
    /// Seed for choosing peers.
    pub seed: u64,
}

/// A message to the training thread.
#[derive(Debug)]
pub enum WorkerInput {
    /// A delta received from `peer`.
    Delta {
        /// Sender.
        peer: PeerId,
        /// Signed envelope bytes.
        header: Vec<u8>,
        /// Encoded payload.
        payload: Vec<u8>,
        /// Its BLAKE3 digest, computed and checked by the transfer.
        digest: Digest,
    },
    /// A delta could not be delivered; the model and mass it carried come back.
    SendFailed(Outgoing),
    /// A butterfly part received from `peer`.
    Part {
        /// Sender.
        peer: PeerId,
        /// Signed envelope bytes.
        header: Vec<u8>,
        /// Encoded payload.
        payload: Vec<u8>,
        /// Its BLAKE3 digest, computed and checked by the transfer.
        digest: Digest,
    },
    /// A butterfly part for `round` could not be delivered to `peer`.
    PartFailed {
        /// The recipient.
        peer: PeerId,
        /// The part's round.
        round: u64,
        /// Contribution or mean.
        phase: murmur_protocol::PartPhase,
    },
    /// The part gate refused parts before their payloads (see
    /// [`PartGate`](crate::averaging::butterfly::PartGate)): count them, and end the round if
    /// a member's split differed.
    PartsRefused,
    /// The delta gate refused deltas before their payloads (see
    /// [`DeltaGate`](crate::averaging::DeltaGate)): count them and charge their senders.
    DeltasRefused,
    /// Current parameters for a state download.
    Snapshot(oneshot::Sender<Snapshot>),
    /// Adopt a downloaded model state.
    Adopt {
        /// The server's round.
        round: u64,
        /// Its parameters.
        params: Vec<f32>,
        /// The peers whose states agreed on it.
        from: Vec<libp2p::PeerId>,
    },
    /// Finish and report.
    Stop,
}

/// The model state as served to late joiners.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Round.
    pub round: u64,
    /// Samples trained locally.
    pub samples: u64,
    /// Flat parameters.
    pub params: Vec<f32>,
}

/// What the training thread reports.
#[derive(Debug)]
pub enum WorkerOutput {
    /// Send `outgoing` to each of `peers`.
    Send {
        /// Recipients.
        peers: Vec<PeerId>,
        /// The signed delta.
        outgoing: Outgoing,
    },
    /// Push each butterfly part to its recipient.
    SendParts(Vec<PartSend>),
    /// The butterfly round is over here: its contributions still being sent are dropped
    /// (the next round redoes the average; the bandwidth goes to it).
    RoundOver(u64),
    /// A delta from `peer` was refused.
    Rejected {
        /// Sender.
        peer: PeerId,
        /// Why.
        reason: Rejection,
    },
    /// Progress figures.
    Progress(WorkerStatus),
}

/// The training thread's figures.
#[derive(Debug, Clone, Default)]
pub struct WorkerStatus {
    /// Syncs done.
    pub round: u64,
    /// Local steps done.
    pub steps: u64,
    /// Samples trained on locally.
    pub samples: u64,
    /// Latest training loss.
    pub loss: Option<f32>,
    /// Latest held-out evaluation.
    pub eval: Option<EvalStats>,
    /// Averaging mass held.
    pub mass: f64,
    /// Merged and rejected deltas.
    pub counts: MergeCounts,
    /// Whether it still trains.
    pub training: bool,
    /// Whether held-out accuracy reached the target.
    pub reached_target: bool,
    /// Local training throughput, samples per second.
    pub samples_per_sec: f64,
    /// Round of the last peer state this node downloaded and adopted, if any.
    pub adopted_round: Option<u64>,
    /// The peers whose agreeing states it adopted (empty when none).
    pub adopted_from: Vec<libp2p::PeerId>,
    /// Rounds this node ended with local steps of its own since it started: its own
    /// progress, which `round` (moved forward by merges too) does not measure.
    pub trained_rounds: u64,
    /// Butterfly rounds this node has started (pulled in by a peer or on its own).
    pub butterfly_rounds_started: u64,
}

/// The training thread's state: what both averaging modes share, and the mode.
pub struct Worker {
    shared: Shared,
    mode: Box<dyn Mode>,
    inputs: InputReceiver,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("status", &self.shared.status)
            .finish()
    }
}

/// The channels and shared state between the training thread and the async tasks.
#[derive(Debug)]
pub(crate) struct WorkerLinks {
    pub(crate) inputs: InputReceiver,
    pub(crate) outputs: mpsc::Sender<WorkerOutput>,
    pub(crate) live_peers: Arc<LivePeers>,
    pub(crate) in_flight: Arc<SendsInFlight>,
}

enum Flow {
    Continue,
    Stop,
}

impl Worker {
    /// A worker over `replica` and `averager`, connected to the async side by `links`; it
    /// averages in butterfly rounds when the averager is configured so, by push-sum gossip
    /// otherwise.
    pub(crate) fn new(
        replica: Box<dyn Replica>,
        averager: Averager,
        config: WorkerConfig,
        links: WorkerLinks,
        checkpoints: Option<Checkpoints>,
    ) -> Result<Self, SessionError> {
        let WorkerLinks {
            inputs,
            outputs,
            live_peers,
            in_flight,
        } = links;
        let mode: Box<dyn Mode> = match averager.config().butterfly {
            Some(config) => {
                let (key, me) = averager.signer();
                let local = crate::identity::peer_id_of(&me)?;
                let butterfly =
                    Butterfly::new(config, averager.config(), key.clone(), local, replica.len());
                Box::new(Rounds::new(butterfly, local))
            }
            None => Box::new(PushSum::new(StdRng::seed_from_u64(config.seed), in_flight)),
        };
        let shared = Shared::new(replica, averager, config, outputs, live_peers, checkpoints);
        Ok(Self {
            shared,
            mode,
            inputs,
        })
    }

    /// The figures so far.
    pub(crate) fn status(&self) -> &WorkerStatus {
        &self.shared.status
    }

    /// The early check of inbound parts (butterfly runs only).
    pub(crate) fn part_gate(&self) -> Option<Arc<PartGate>> {
        self.mode.part_gate()
    }

    /// Resumes from the newest intact checkpoint, if any. Returns the round resumed at.
    pub(crate) fn resume(&mut self) -> Result<Option<u64>, SessionError> {
        let shared = &mut self.shared;
        let Some(store) = &shared.checkpoints else {
            return Ok(None);
        };
        let next_round = store.next_round()?;
        let Some(ckpt) = store.latest()? else {
            shared.averager.advance_round(next_round);
            return Ok(None);
        };
        shared.replica.restore(&ckpt.replica)?;
        shared.averager.restore(ckpt.averager, next_round);
        shared.status.samples = ckpt.samples;
        shared.status.steps = shared.replica.steps();
        shared.status.round = shared.averager.round();
        Ok(Some(ckpt.round))
    }

    /// Runs until told to stop or the async side goes away.
    pub(crate) fn run(mut self) -> Result<WorkerStatus, SessionError> {
        self.mode.prepare(&mut self.shared)?;
        self.shared.refresh_status();
        self.shared.evaluate()?;
        self.shared.publish();
        loop {
            if let Flow::Stop = self.drain_inputs()? {
                return self.finish();
            }
            let training = self.shared.trains();
            self.shared.status.training = training;
            self.shared.averager.set_training(training);
            let flow = if training {
                self.train()?;
                Flow::Continue
            } else {
                self.idle()?
            };
            if let Flow::Stop = flow {
                return self.finish();
            }
        }
    }

    /// Handles the inputs waiting, without blocking.
    fn drain_inputs(&mut self) -> Result<Flow, SessionError> {
        loop {
            match self.inputs.try_recv() {
                Ok(input) => {
                    if let Flow::Stop = self.handle(input)? {
                        return Ok(Flow::Stop);
                    }
                }
                Err(TryRecvError::Empty) => return Ok(Flow::Continue),
                Err(TryRecvError::Disconnected) => return Ok(Flow::Stop),
            }
        }
    }

    /// One local step, then whatever averaging the sync policy makes due, then an evaluation
    /// when one is due.
    fn train(&mut self) -> Result<(), SessionError> {
        self.shared.train_one()?;
        let due = self.shared.sync_due();
        self.mode.trained(&mut self.shared, due)?;
        let every = self.shared.config.eval_every.max(1);
        if self.shared.replica.steps().is_multiple_of(every) {
            self.shared.evaluate()?;
            self.shared.publish();
        }
        Ok(())
    }

    /// One wait of a node that no longer trains: for an input, or until the mode's timer.
    fn idle(&mut self) -> Result<Flow, SessionError> {
        let wait = self.mode.idle_wait(&self.shared);
        match self.inputs.recv_timeout(wait) {
            Ok(input) => {
                if let Flow::Stop = self.handle(input)? {
                    return Ok(Flow::Stop);
                }
                self.mode.idle_input(&mut self.shared)?;
            }
            Err(RecvTimeoutError::Timeout) => self.mode.idle_timeout(&mut self.shared)?,
            Err(RecvTimeoutError::Disconnected) => return Ok(Flow::Stop),
        }
        Ok(Flow::Continue)
    }

    fn handle(&mut self, input: WorkerInput) -> Result<Flow, SessionError> {
        let shared = &mut self.shared;
        match input {
            WorkerInput::Delta {
                peer,
                header,
                payload,
                digest,
            } => {
                let received =
                    shared
                        .averager
                        .receive_transferred(&peer, &header, &payload, Some(&digest));
                match received {
                    Ok(()) => self.mode.delta_queued(),
                    Err(reason) => {
                        tracing::warn!(%peer, %reason, "delta rejected");
                        shared.rejected(peer, reason);
                    }
                }
            }
            WorkerInput::Part {
                peer,
                header,
                payload,
                digest,
            } => self.mode.part(shared, peer, &header, payload, &digest),
            WorkerInput::PartFailed { peer, round, phase } => {
                self.mode.part_failed(&peer, round, phase);
            }
            // Taken in by the next butterfly step, which follows every input.
            WorkerInput::PartsRefused => {}
            // Taken in by the status publication (which counts and charges them).
            WorkerInput::DeltasRefused => shared.publish(),
            WorkerInput::SendFailed(outgoing) => self.mode.send_failed(shared, &outgoing)?,
            WorkerInput::Snapshot(reply) => {
                let _ = reply.send(Snapshot {
                    round: shared.averager.round(),
                    samples: shared.status.samples,
                    params: shared.replica.params()?,
                });
            }
            WorkerInput::Adopt {
                round,
                params,
                from,
            } => self.adopt(round, &params, from)?,
            WorkerInput::Stop => return Ok(Flow::Stop),
        }
        Ok(Flow::Continue)
    }

    /// Adopts a peer's downloaded state.
    fn adopt(
        &mut self,
        round: u64,
        params: &[f32],
        from: Vec<libp2p::PeerId>,
    ) -> Result<(), SessionError> {
        let shared = &mut self.shared;
        shared.replica.set_params(params)?;
        shared.averager.adopt(round);
        self.mode.adopted();
        shared.status.round = shared.averager.round();
        shared.status.adopted_round = Some(round);
        shared.status.adopted_from = from;
        tracing::info!(round, "adopted the state of a peer");
        shared.evaluate()?;
        shared.publish();
        Ok(())
    }

    fn finish(mut self) -> Result<WorkerStatus, SessionError> {
        self.shared.checkpoint()?;
        self.shared.evaluate()?;
        self.shared.refresh_status();
        self.shared.status.training = false;
        Ok(self.shared.status)
    }
}

#[cfg(test)]
mod tests;
