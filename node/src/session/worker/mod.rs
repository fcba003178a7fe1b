//! The training thread: owns the replica and the averaging engine, runs local steps, syncs
//! on the policy's schedule, merges received deltas, evaluates and checkpoints.
//!
//! It talks to the async side only through bounded channels: inputs arrive on a
//! `sync_channel` (the async side never blocks on it, it drops and counts when full), and
//! outputs leave on a tokio channel with `blocking_send` (back-pressure on this thread only).

mod butterfly;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use murmur_models::EvalStats;
use murmur_protocol::Digest;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use tokio::sync::{mpsc, oneshot};

use super::SessionError;
use super::checkpoints::{Checkpoints, SessionCheckpoint};
use super::in_flight::SendsInFlight;
use super::presence::LivePeers;
use super::replica::Replica;
use crate::averaging::butterfly::{PartSend, RoundEnd};
use crate::averaging::{Averager, Butterfly, MergeCounts, Outgoing, Rejection, SyncPolicy};
use butterfly::RoundDue;

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
    /// Current parameters for a state download.
    Snapshot(oneshot::Sender<Snapshot>),
    /// Adopt a downloaded model state.
    Adopt {
        /// The server's round.
        round: u64,
        /// Its parameters.
        params: Vec<f32>,
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
    /// Rounds this node ended with local steps of its own since it started: its own
    /// progress, which `round` (moved forward by merges too) does not measure.
    pub trained_rounds: u64,
    /// Butterfly rounds this node has started (pulled in by a peer or on its own).
    pub butterfly_rounds_started: u64,
}

/// The training thread's state.
pub struct Worker {
    pub(crate) replica: Box<dyn Replica>,
    pub(crate) averager: Averager,
    pub(crate) config: WorkerConfig,
    pub(crate) inputs: Receiver<WorkerInput>,
    pub(crate) outputs: mpsc::Sender<WorkerOutput>,
    pub(crate) live_peers: Arc<LivePeers>,
    pub(crate) checkpoints: Option<Checkpoints>,
    /// Sends handed to the network and not finished yet (finished by the send tasks).
    pub(crate) in_flight: Arc<SendsInFlight>,
    pub(crate) status: WorkerStatus,
    pub(crate) rng: StdRng,
    steps_since_sync: u64,
    samples_since_sync: u64,
    last_sync: Instant,
    train_time: Duration,
    /// Peers sent the model since it last changed (trained, merged beyond the codec's
    /// rounding, adopted, or took a failed send back): an idle node whose every live peer
    /// has its model has nothing to tell anyone.
    told: HashMap<PeerId, Instant>,
    /// While only averaging: the model as the peers in `told` were sent it, so that many
    /// small merges that together move it far are news.
    told_model: Option<Vec<f32>>,
    /// The allocation of a `told_model` that went stale, reused for the next one.
    told_spare: Vec<f32>,
    /// The parameter buffer of the last sync, reused by the next one (model-sized).
    params_buffer: Vec<f32>,
    /// When the oldest delta still waiting to be merged arrived.
    pending_since: Option<Instant>,
    /// When this node's last fan-out was handed to the network, until seen delivered.
    sent_at: Option<Instant>,
    /// How long this node's last fan-out took to deliver: about how long the peers'
    /// deltas of a round take to arrive after the first one.
    fanout_took: Duration,
    /// Butterfly rounds, when the run averages that way instead of by gossip.
    butterfly: Option<Butterfly>,
    /// This node's peer id.
    local: PeerId,
    /// The model changed (trained, adopted) since the last butterfly round started.
    butterfly_dirty: bool,
    /// How the last butterfly round ended.
    last_round: Option<RoundEnd>,
    /// Since when a butterfly round is due but waits for the live peer set to settle.
    round_due_since: Option<Instant>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("status", &self.status)
            .finish()
    }
}

/// The channels and shared state between the training thread and the async tasks.
#[derive(Debug)]
pub(crate) struct WorkerLinks {
    pub(crate) inputs: Receiver<WorkerInput>,
    pub(crate) outputs: mpsc::Sender<WorkerOutput>,
    pub(crate) live_peers: Arc<LivePeers>,
    pub(crate) in_flight: Arc<SendsInFlight>,
}

/// How long a peer sent the current model counts as having it (idle averaging).
const TOLD_EXPIRES: Duration = Duration::from_secs(30);

/// Longest wait for the rest of a round before merging part of it (idle averaging).
const MAX_ROUND_WAIT: Duration = Duration::from_secs(10);

enum Flow {
    Continue,
    Stop,
}

impl Worker {
    /// A worker over `replica` and `averager`, connected to the async side by `links`.
    pub(crate) fn new(
        replica: Box<dyn Replica>,
        averager: Averager,
        config: WorkerConfig,
        links: WorkerLinks,
        checkpoints: Option<Checkpoints>,
    ) -> Self {
        let WorkerLinks {
            inputs,
            outputs,
            live_peers,
            in_flight,
        } = links;
        let rng = StdRng::seed_from_u64(config.seed);
        let (key, me) = averager.signer();
        let local = crate::identity::peer_id_of(&me).unwrap_or_else(|_| PeerId::random());
        let butterfly = averager
            .config()
            .butterfly
            .map(|b| Butterfly::new(b, averager.config(), key.clone(), local, replica.len()));
        Self {
            replica,
            averager,
            config,
            inputs,
            outputs,
            live_peers,
            checkpoints,
            in_flight,
            status: WorkerStatus::default(),
            rng,
            steps_since_sync: 0,
            samples_since_sync: 0,
            last_sync: Instant::now(),
            train_time: Duration::ZERO,
            told: HashMap::new(),
            told_model: None,
            told_spare: Vec::new(),
            params_buffer: Vec::new(),
            pending_since: None,
            sent_at: None,
            fanout_took: Duration::ZERO,
            butterfly,
            local,
            butterfly_dirty: true,
            last_round: None,
            round_due_since: None,
        }
    }

    /// Resumes from the newest intact checkpoint, if any. Returns the round resumed at.
    pub(crate) fn resume(&mut self) -> Result<Option<u64>, SessionError> {
        let Some(store) = &self.checkpoints else {
            return Ok(None);
        };
        let next_round = store.next_round()?;
        let Some(ckpt) = store.latest()? else {
            self.averager.advance_round(next_round);
            return Ok(None);
        };
        self.replica.restore(&ckpt.replica)?;
        self.averager.restore(ckpt.averager, next_round);
        self.status.samples = ckpt.samples;
        self.status.steps = self.replica.steps();
        self.status.round = self.averager.round();
        Ok(Some(ckpt.round))
    }

    /// Runs until told to stop or the async side goes away.
    pub(crate) fn run(mut self) -> Result<WorkerStatus, SessionError> {
        self.prepare_buffers()?;
        self.refresh_status();
        self.evaluate()?;
        self.publish();
        loop {
            loop {
                match self.inputs.try_recv() {
                    Ok(input) => {
                        if let Flow::Stop = self.handle(input)? {
                            return self.finish();
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return self.finish(),
                }
            }
            let training = self.replica.trains() && self.replica.steps() < self.config.step_budget;
            self.status.training = training;
            self.averager.set_training(training);
            if training {
                self.train_one()?;
                let lr = self.replica.lr();
                let due =
                    self.config
                        .policy
                        .due(self.steps_since_sync, self.last_sync.elapsed(), lr);
                if self.butterfly.is_some() {
                    self.step_butterfly(RoundDue::Policy(due))?;
                } else if due {
                    self.sync()?;
                }
                if self
                    .replica
                    .steps()
                    .is_multiple_of(self.config.eval_every.max(1))
                {
                    self.evaluate()?;
                    self.publish();
                }
            } else if self.butterfly.is_some() {
                if let Flow::Stop = self.idle_butterfly()? {
                    return self.finish();
                }
            } else {
                let wait = self
                    .config
                    .idle_sync
                    .saturating_sub(self.last_sync.elapsed());
                match self.inputs.recv_timeout(wait) {
                    Ok(input) => {
                        if let Flow::Stop = self.handle(input)? {
                            return self.finish();
                        }
                        // Averaging only: merge and pass on as soon as every live peer's
                        // delta is here, instead of waiting for the timer.
                        let live = self.live_peers.count();
                        if live > 0 && self.averager.pending() >= live {
                            self.idle_sync()?;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => self.idle_sync()?,
                    Err(RecvTimeoutError::Disconnected) => return self.finish(),
                }
            }
        }
    }

    /// One wait of an idle node that averages in butterfly rounds.
    fn idle_butterfly(&mut self) -> Result<Flow, SessionError> {
        let idle = self.config.idle_sync;
        let remaining = idle.saturating_sub(self.last_sync.elapsed());
        let wait = self.butterfly_wait(if remaining.is_zero() { idle } else { remaining });
        match self.inputs.recv_timeout(wait) {
            Ok(input) => {
                if let Flow::Stop = self.handle(input)? {
                    return Ok(Flow::Stop);
                }
                self.step_butterfly(RoundDue::IdleNews)?;
            }
            Err(RecvTimeoutError::Timeout) => {
                let due = self.step_butterfly(RoundDue::IdleNews)?;
                if !due && self.last_sync.elapsed() >= idle {
                    // Nothing to do: wait a whole idle period again.
                    self.last_sync = Instant::now();
                    self.publish();
                }
            }
            Err(RecvTimeoutError::Disconnected) => return Ok(Flow::Stop),
        }
        Ok(Flow::Continue)
    }

    fn handle(&mut self, input: WorkerInput) -> Result<Flow, SessionError> {
        match input {
            WorkerInput::Delta {
                peer,
                header,
                payload,
                digest,
            } => {
                let received =
                    self.averager
                        .receive_transferred(&peer, &header, &payload, Some(&digest));
                if received.is_ok() {
                    self.pending_since.get_or_insert_with(Instant::now);
                }
                if let Err(reason) = received {
                    tracing::warn!(%peer, %reason, "delta rejected");
                    let _ = self
                        .outputs
                        .blocking_send(WorkerOutput::Rejected { peer, reason });
                }
            }
            WorkerInput::Part {
                peer,
                header,
                payload,
                digest,
            } => self.receive_part(peer, &header, payload, &digest),
            WorkerInput::PartFailed { peer, round, phase } => self.part_failed(&peer, round, phase),
            // Taken in by the next `step_butterfly`, which follows every input.
            WorkerInput::PartsRefused => {}
            WorkerInput::SendFailed(outgoing) => {
                let mut params = self.replica.params()?;
                self.averager.returned(&outgoing, &mut params);
                self.replica.set_params(&params)?;
                self.changed();
            }
            WorkerInput::Snapshot(reply) => {
                let _ = reply.send(Snapshot {
                    round: self.averager.round(),
                    samples: self.status.samples,
                    params: self.replica.params()?,
                });
            }
            WorkerInput::Adopt { round, params } => {
                self.replica.set_params(&params)?;
                self.averager.adopt(round);
                if let Some(butterfly) = self.butterfly.as_mut() {
                    butterfly.abandon();
                }
                self.butterfly_dirty = true;
                self.pending_since = None;
                self.changed();
                self.status.round = self.averager.round();
                self.status.adopted_round = Some(round);
                tracing::info!(round, "adopted the state of a peer");
                self.evaluate()?;
                self.publish();
            }
            WorkerInput::Stop => return Ok(Flow::Stop),
        }
        Ok(Flow::Continue)
    }

    fn train_one(&mut self) -> Result<(), SessionError> {
        let started = Instant::now();
        let step = self.replica.step()?;
        self.changed();
        self.butterfly_dirty = true;
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

    fn choose_peers(&mut self) -> Vec<PeerId> {
        // Back-pressure: while a whole fan-out is still in flight (slow links), merge but
        // do not send more, and never send to a peer still receiving the previous delta;
        // the transfers' deadlines bound how long that lasts.
        let fanout = self.averager.config().fanout;
        if self.in_flight.total() >= fanout.max(1) {
            return Vec::new();
        }
        // Peers that already have the current model gain nothing from it again.
        let idle: Vec<PeerId> = self
            .live_peers
            .snapshot()
            .into_iter()
            .filter(|p| !self.in_flight.busy(p) && !self.has_told(p))
            .collect();
        idle.choose_multiple(&mut self.rng, fanout)
            .copied()
            .collect()
    }

    fn sync(&mut self) -> Result<(), SessionError> {
        let params = self.current_params()?;
        self.sync_params(params)
    }

    /// Butterfly runs: allocates and touches the model-sized buffers every round reuses
    /// before the first one, which would otherwise pay a page fault per 4 KiB of each.
    fn prepare_buffers(&mut self) -> Result<(), SessionError> {
        let Some(butterfly) = self.butterfly.as_mut() else {
            return Ok(());
        };
        butterfly.prepare();
        self.replica.params_into(&mut self.params_buffer)?;
        Ok(())
    }

    /// The replica's parameters, in the buffer of the previous sync.
    fn current_params(&mut self) -> Result<Vec<f32>, SessionError> {
        let mut params = std::mem::take(&mut self.params_buffer);
        self.replica.params_into(&mut params)?;
        Ok(params)
    }

    /// A sync of `params` (the replica's current parameters).
    fn sync_params(&mut self, mut params: Vec<f32>) -> Result<(), SessionError> {
        let peers = self.choose_peers();
        let outgoing = self.averager.sync(
            &mut params,
            self.samples_since_sync,
            u32::try_from(self.steps_since_sync).unwrap_or(u32::MAX),
            peers.len(),
        )?;
        self.replica.set_params(&params)?;
        self.pending_since = None;
        self.count_trained_round();
        self.steps_since_sync = 0;
        self.samples_since_sync = 0;
        self.last_sync = Instant::now();
        self.refresh_status();
        if let Some(store) = &self.checkpoints {
            store.record_next_round(self.averager.round())?;
        }
        if let Some(outgoing) = outgoing {
            self.sent_at = Some(Instant::now());
            let now = Instant::now();
            self.told.extend(peers.iter().map(|p| (*p, now)));
            if !self.status.training && self.told_model.is_none() {
                let mut told = std::mem::take(&mut self.told_spare);
                told.clear();
                told.extend_from_slice(&params);
                self.told_model = Some(told);
            }
            self.in_flight.begin(&peers);
            let _ = self
                .outputs
                .blocking_send(WorkerOutput::Send { peers, outgoing });
        }
        self.params_buffer = params;
        let every = self.config.checkpoint_every;
        if every > 0 && self.averager.round().is_multiple_of(every) {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// A sync while not training; the model is evaluated again only if the sync merged
    /// something (held-out evaluation of a large model costs more than a sync).
    ///
    /// Averaging alone runs in rounds: a node merges and passes on as soon as every live
    /// peer's delta is here; otherwise the timer's sync waits until this node's own sends
    /// are done and, after the first delta of a round arrived, about as long as its own last
    /// fan-out took (the peers' sends to it take about as long), so a large model is not
    /// re-encoded and re-sent with a fraction of the round merged. A node sends only while it
    /// has news (see `has_news`): a merge that moves the model less than the codec's rounding
    /// ([`Averager::quiet_change`]) is kept but is no news, so once the peers agree and each
    /// has told every other its model the network goes quiet instead of re-sending the model
    /// every period (a peer with news wakes it up). With nothing to merge and no news, the
    /// sync is skipped: it would copy the model twice and advance the round clock for nothing.
    fn idle_sync(&mut self) -> Result<(), SessionError> {
        let live = self.live_peers.count();
        let pending = self.averager.pending();
        let round_complete = live > 0 && pending >= live;
        let sending = self.in_flight.total() > 0;
        if !sending && let Some(sent) = self.sent_at.take() {
            self.fanout_took = sent.elapsed().min(MAX_ROUND_WAIT);
        }
        // The rest of a round arrives within about one fan-out time of its first delta.
        let patient = self
            .pending_since
            .is_some_and(|first| first.elapsed() < self.fanout_took);
        let nothing_to_send = !self.has_news();
        if !round_complete && (sending || patient || (pending == 0 && nothing_to_send)) {
            self.last_sync = Instant::now();
            // Rejections and peers still change: keep the status current (cheap).
            self.publish();
            return Ok(());
        }
        let merged = self.averager.counts().merged;
        let mut params = self.current_params()?;
        // Samples trained since the last sync weigh this node's model in the merge: a sync
        // adds them to the mass first, so it merges.
        if self.samples_since_sync > 0 {
            self.changed();
        } else {
            self.averager.merge(&mut params)?;
        }
        self.pending_since = None;
        let moved = self.told_model.as_ref().map_or(f64::INFINITY, |told| {
            self.averager.relative_distance(told, &params)
        });
        if moved > self.averager.quiet_change() {
            self.changed();
        }
        if self.has_news() {
            self.sync_params(params)?;
        } else {
            self.replica.set_params(&params)?;
            self.params_buffer = params;
            self.last_sync = Instant::now();
        }
        if self.averager.counts().merged != merged || self.status.eval.is_none() {
            self.evaluate()?;
        }
        self.publish();
        Ok(())
    }

    /// The model changed beyond the codec's rounding: it is news for every peer.
    fn changed(&mut self) {
        self.told.clear();
        if let Some(told) = self.told_model.take() {
            self.told_spare = told;
        }
    }

    /// Whether `peer` was sent the current model, recently enough: a delta can be delivered
    /// and still be dropped before it is merged (a full queue, a restart), so a peer is told
    /// again after [`TOLD_EXPIRES`].
    fn has_told(&self, peer: &PeerId) -> bool {
        self.told
            .get(peer)
            .is_some_and(|at| at.elapsed() < TOLD_EXPIRES)
    }

    /// Whether an idle node has something to send: a live peer that has not been sent the
    /// model since it last changed. Each node passing its own changes to every peer is what
    /// spreads the average (push-sum mixes only along sends), and it ends: merges shrink
    /// below the codec's rounding, and then every peer has been told.
    fn has_news(&self) -> bool {
        let live = self.live_peers.snapshot();
        // Sparse codecs carry what they leave out in their error feedback: always news.
        let never_quiet = self.averager.quiet_change() <= 0.0;
        !live.is_empty() && (never_quiet || live.iter().any(|p| !self.has_told(p)))
    }

    fn checkpoint(&mut self) -> Result<(), SessionError> {
        let Some(store) = &self.checkpoints else {
            return Ok(());
        };
        let ckpt = SessionCheckpoint {
            round: self.averager.round(),
            samples: self.status.samples,
            replica: self.replica.checkpoint()?,
            averager: self.averager.state(),
        };
        store.save(&ckpt)?;
        tracing::debug!(round = ckpt.round, "checkpoint written");
        Ok(())
    }

    fn evaluate(&mut self) -> Result<(), SessionError> {
        if let Some(eval) = self.replica.evaluate()? {
            self.status.eval = Some(eval);
            if let (Some(target), Some(acc)) = (self.config.target_accuracy, eval.accuracy) {
                self.status.reached_target |= acc >= target;
            }
        }
        Ok(())
    }

    /// Counts the round now ending as trained when it carried local steps.
    fn count_trained_round(&mut self) {
        if self.steps_since_sync > 0 {
            self.status.trained_rounds += 1;
        }
    }

    fn refresh_status(&mut self) {
        self.status.round = self.averager.round();
        self.status.mass = self.averager.mass();
        self.status.counts = self.averager.counts().clone();
    }

    fn publish(&mut self) {
        self.refresh_status();
        let _ = self
            .outputs
            .try_send(WorkerOutput::Progress(self.status.clone()));
    }

    fn finish(mut self) -> Result<WorkerStatus, SessionError> {
        self.checkpoint()?;
        self.evaluate()?;
        self.refresh_status();
        self.status.training = false;
        Ok(self.status)
    }
}
