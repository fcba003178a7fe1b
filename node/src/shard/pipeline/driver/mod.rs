//! One node's whole pipeline run: measure capacity, then one actor drives [`Membership`] —
//! it reads the inbound pipeline messages, carries out the membership's actions (probes,
//! notices, break reports, the stage of each epoch), and feeds back what happened — until the
//! run finishes or fails.
//!
//! The actor owns every long-lived resource of the run: the inbound mailbox, the snapshots
//! (shared with the running stage, which adds its own), the range averaging (lent to each
//! stage), and the tasks it starts, each tracked in a [`JoinSet`] of its kind. Its loop is one
//! `select!` (biased: a stage's end before the messages it may have left behind), each arm
//! one call. While forming, the membership looks at the peer book whenever it changes
//! ([`Network::peer_changes`]), with a 1 s bound for what changes without an event.

mod control;
mod handoff;
mod inbound;
mod stages;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use libp2p::PeerId;
use murmur_models::pipeline::ShardState;
use murmur_protocol::pipeline::PipeBody;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::attack::{self, AttackEnd, Attacker};
use super::averaging::RangeAveraging;
use super::form::{self, Announcer};
use super::mailbox::{Inbound, Mailbox};
use super::members::probe_links;
use super::membership::{Action, EpochEnd, Event, Loss, Membership, ResumePoint, Rules};
use super::notice::{PlanNotice, Seat, report_broken, send_notice, send_parts_beyond_own_chain};
use super::rebalance::watch_for_rebalance;
use super::report::{Progress, report};
use super::snapshots::{self, Snapshots};
use super::stage::{self, Position, Resume, StageDone, StageOutcome, StageTask};
use super::{PipelineConfig, PipelineError, PipelineReport, Placement, StageProgress};
use crate::net::Network;
use crate::shard::capacity::{self, Capacity};
use control::Control;
use handoff::{Handoff, room_in};

/// A decoded snapshot: its sender, its plan epoch and the state (or why it is refused).
type Decoded = (PeerId, u64, Result<ShardState, PipelineError>);

/// Longest wait for snapshots still in flight when a new plan starts.
const PARTS_WAIT: Duration = Duration::from_secs(5);
/// Pipeline messages of later epochs kept until their stage starts (the oldest go first).
const EARLY_MESSAGES: usize = 256;
/// Snapshots decoded at once.
const DECODING: usize = 4;
/// How long the last announcement (this node's part is over) may take.
const LAST_ANNOUNCEMENT: Duration = Duration::from_secs(2);

/// Runs this node's part of the pipeline run described by `config` and reports it; live
/// figures go to `progress`.
pub async fn run(
    net: Network,
    signing: SigningKey,
    config: PipelineConfig,
    progress: watch::Sender<StageProgress>,
) -> Result<PipelineReport, PipelineError> {
    config.validate()?;
    if config.tamper == Some(crate::adversary::PipeTamper::FormationJunk) {
        // Red team: a stranger who never joins, only floods the members while they form.
        return attack::junk_only(net, config).await;
    }
    let mailbox = Mailbox::open(&net, config.run, &config.admission)?;
    let measured = measure(&config).await?;
    let averaging = if config.replicas > 1 && config.average_every > 0 {
        let seed = config.train.seed
            ^ u64::from_le_bytes(signing.to_bytes()[..8].try_into().unwrap_or_default());
        Some(RangeAveraging::open(
            &net,
            signing.clone(),
            config.run,
            config.model,
            seed,
        )?)
    } else {
        None
    };
    let config = Arc::new(config);
    let (capacity, capacity_rx) = watch::channel(measured);
    let (epoch, epoch_rx) = watch::channel(0u64);
    let announcing = CancellationToken::new();
    let mut announcer = JoinSet::new();
    let about = Announcer {
        net: net.clone(),
        signing,
        config: config.clone(),
        capacity: capacity_rx.clone(),
        epoch: epoch_rx,
    };
    announcer.spawn(form::announce(about, announcing.clone()));
    let rules = Rules::of(&config);
    let (membership, first) = Membership::new(net.local_peer_id(), measured, rules.clone(), now());
    let snapshots = Arc::new(Mutex::new(Snapshots::new(config.replicas as usize)));
    let mut driver = Driver {
        me: net.local_peer_id(),
        peer_changes: net.peer_changes(),
        ended_epoch: 0,
        net,
        config,
        rules,
        membership,
        mailbox,
        snapshots,
        progress: Progress::new(progress, capacity, capacity_rx),
        epoch,
        measured,
        started: None,
        averaging,
        outcome: Some(StageOutcome::default()),
        running: None,
        pending: None,
        early: VecDeque::new(),
        wake: None,
        stages: JoinSet::new(),
        control: JoinSet::new(),
        watchers: JoinSet::new(),
        decoding: JoinSet::new(),
        attacks: JoinSet::new(),
        refused: std::collections::BTreeMap::new(),
        result: None,
    };
    driver.apply(first);
    let result = driver.run().await;
    // One last announcement says this node's part is over.
    announcing.cancel();
    let _ = tokio::time::timeout(LAST_ANNOUNCEMENT, announcer.join_next()).await;
    result
}

/// The start-up capacity benchmark, on a blocking thread.
async fn measure(config: &PipelineConfig) -> Result<Capacity, PipelineError> {
    let (spec, device) = (config.spec.clone(), config.device.clone());
    let (samples, slowdown, budget) = (
        config.micro_samples(),
        config.slowdown,
        config.capacity_budget,
    );
    let measured = tokio::task::spawn_blocking(move || {
        capacity::measure(&spec, &device, samples, slowdown, budget)
    })
    .await??;
    tracing::info!(
        flops_per_sec = measured.flops_per_sec,
        samples_per_sec = measured.samples_per_sec,
        "capacity measured"
    );
    Ok(measured)
}

/// The stage of the running epoch.
struct Running {
    notice: PlanNotice,
    /// Ends the stage at its next wait.
    stop: CancellationToken,
    /// Its inbox, and the messages held while it is full.
    handoff: Handoff,
}

/// A stage waiting for the snapshots its range is built from.
struct Pending {
    notice: PlanNotice,
    seat: Seat,
    deadline: Instant,
}

struct Driver {
    me: PeerId,
    /// Marked changed whenever the peer book changes (read while forming).
    peer_changes: watch::Receiver<u64>,
    /// The epoch of the last stage that ended (its messages are stale).
    ended_epoch: u64,
    net: Network,
    config: Arc<PipelineConfig>,
    rules: Rules,
    membership: Membership,
    mailbox: Mailbox,
    snapshots: Arc<Mutex<Snapshots>>,
    progress: Progress,
    epoch: watch::Sender<u64>,
    measured: Capacity,
    /// When the first plan was agreed.
    started: Option<Instant>,
    /// Lent to the running stage.
    averaging: Option<RangeAveraging>,
    /// Lent to the running stage.
    outcome: Option<StageOutcome>,
    running: Option<Running>,
    pending: Option<Pending>,
    /// Stage messages of epochs not started yet.
    early: VecDeque<Inbound>,
    /// When the membership wants its next look at the peer book.
    wake: Option<Instant>,
    stages: JoinSet<StageDone>,
    control: JoinSet<Control>,
    watchers: JoinSet<Result<PlanNotice, PipelineError>>,
    decoding: JoinSet<Decoded>,
    /// Red team only: the attack of this member (`PipelineConfig::tamper`).
    attacks: JoinSet<AttackEnd>,
    /// Pipeline messages refused, by reason (plan notices are the membership's).
    refused: std::collections::BTreeMap<&'static str, u64>,
    result: Option<Result<PipelineReport, PipelineError>>,
}

impl Driver {
    async fn run(mut self) -> Result<PipelineReport, PipelineError> {
        loop {
            let wake = self.next_wake();
            // With [`DECODING`] snapshots being decoded, or [`HELD`] messages held for a
            // stage that is behind, inbound messages wait their turn (the loop goes on with
            // everything else meanwhile).
            let receptive = self.membership.receptive()
                && self.decoding.len() < DECODING
                && self.running.as_ref().is_none_or(|r| r.handoff.can_hold());
            let room = self.running.as_ref().and_then(|r| r.handoff.room());
            let watches_peers = self.membership.watches_peers();
            tokio::select! {
                biased;
                Some(done) = self.stages.join_next() => self.on_stage_done(done),
                Some(done) = self.control.join_next() => self.on_control(done),
                Some(done) = self.watchers.join_next() => self.on_watcher(done),
                Some(done) = self.decoding.join_next() => self.on_decoded(done),
                Some(done) = self.attacks.join_next() => self.on_attack(done),
                permit = room_in(room) => {
                    if let Some(running) = &mut self.running {
                        running.handoff.on_room(permit);
                    }
                }
                message = self.mailbox.next(), if receptive => self.on_message(message),
                changed = self.peer_changes.changed(), if watches_peers => self.on_peers_changed(changed).await,
                () = sleep_until(wake), if wake.is_some() => self.on_wake().await,
            }
            if let Some(result) = self.result.take() {
                self.stop_all();
                return result;
            }
        }
    }

    /// The earlier of the membership's look and a pending stage's deadline (which waits for
    /// the snapshots still being decoded).
    fn next_wake(&self) -> Option<Instant> {
        let pending = self
            .pending
            .as_ref()
            .map(|p| p.deadline)
            .filter(|_| self.decoding.is_empty());
        match (self.wake, pending) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn handle(&mut self, event: Event) {
        let actions = self.membership.handle(event);
        self.apply(actions);
    }

    fn apply(&mut self, actions: Vec<Action>) {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            let more = self.act(action);
            queue.extend(more);
        }
    }

    /// Carries out one action; a stop of a stage that never started ends it at once, which
    /// the membership answers with more actions.
    fn act(&mut self, action: Action) -> Vec<Action> {
        match action {
            Action::Wake(at) => self.wake = Some(at),
            Action::Probe(members) => {
                let (net, run) = (self.net.clone(), self.config.run);
                self.control
                    .spawn(async move { Control::Probed(probe_links(&net, run, &members).await) });
            }
            Action::SendNotice { notice, previous } => self.send_notice(notice, previous),
            Action::ReportBroken { to, epoch, blame } => {
                let (net, config) = (self.net.clone(), self.config.clone());
                self.control.spawn(async move {
                    Control::Reported(report_broken(&net, &config, (epoch, blame), to).await)
                });
            }
            Action::Announce(epoch) => {
                self.epoch.send_replace(epoch);
                self.started.get_or_insert_with(now);
            }
            Action::StartStage { notice, seat } => {
                // A look asked for before the plan came is no longer wanted.
                self.wake = None;
                if let Some(tamper) = self.config.tamper {
                    let attacker = self.attacker();
                    self.attacks
                        .spawn(attacker.during_epoch(tamper, notice.clone()));
                }
                self.start_stage(notice, seat);
            }
            Action::StopStage => {
                if let Some(running) = &self.running {
                    running.stop.cancel();
                } else if let Some(pending) = self.pending.take() {
                    // It never ran: a next plan resumes where this one was to.
                    self.ended_epoch = pending.notice.epoch;
                    let resume = ResumePoint {
                        ranges: pending.notice.previous_ranges.clone(),
                        step: pending.notice.resume_step,
                    };
                    return self.membership.handle(Event::StageEnded {
                        now: now(),
                        end: Ok(super::membership::EpochEnd::Stopped),
                        resume,
                    });
                }
            }
            Action::Finish { notice, seat } => self.finish(&notice, seat),
            Action::Fail(err) => self.result = Some(Err(err)),
        }
        Vec::new()
    }

    /// The peer book changed: the membership takes a look (while it forms), at once or, after
    /// a look moments ago, at the end of the shortest gap between looks.
    async fn on_peers_changed(&mut self, changed: Result<(), watch::error::RecvError>) {
        if changed.is_err() {
            self.result = Some(Err(crate::net::NetError::Shutdown.into()));
            return;
        }
        let now = now();
        let at = self.membership.look_after_change(now);
        if at <= now {
            self.look().await;
        } else {
            self.wake = Some(self.wake.map_or(at, |w| w.min(at)));
        }
    }

    /// Hands the membership a look at the peer book.
    async fn look(&mut self) {
        let now = now();
        match self.net.peers().await {
            Ok(peers) => self.handle(Event::Tick {
                now,
                wall_ms: crate::net::now_ms(),
                peers,
            }),
            Err(err) => self.result = Some(Err(err.into())),
        }
    }

    async fn on_wake(&mut self) {
        let now = now();
        if self.pending.as_ref().is_some_and(|p| now >= p.deadline) {
            self.try_start();
        }
        if self.wake.is_some_and(|at| now >= at) {
            self.wake = None;
            self.look().await;
        }
    }

    fn finish(&mut self, notice: &PlanNotice, seat: Option<Seat>) {
        let outcome = self.outcome.take().unwrap_or_default();
        let wall = self.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        let averaging = self.averaging.as_ref().map(RangeAveraging::report);
        let replans = self.membership.replans();
        let mut refused: std::collections::BTreeMap<String, u64> = self
            .refused
            .iter()
            .map(|(reason, n)| ((*reason).to_owned(), *n))
            .collect();
        let notices = self.membership.refused_notices();
        if notices > 0 {
            refused.insert("notice".to_owned(), notices);
        }
        self.result = Some(report(
            &self.config,
            notice,
            seat,
            outcome,
            (self.measured, replans, wall),
            averaging,
            refused,
        ));
    }

    /// Ends every task of the run (a finished run has none left but the announcer's).
    fn stop_all(&mut self) {
        if let Some(running) = &self.running {
            running.stop.cancel();
        }
        self.progress.stop_refining();
        self.stages.abort_all();
        self.control.abort_all();
        self.watchers.abort_all();
        self.decoding.abort_all();
        self.attacks.abort_all();
    }

    /// Red team only: what this member's attack needs.
    fn attacker(&self) -> Attacker {
        Attacker {
            net: self.net.clone(),
            config: self.config.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    /// Red team only: an attack ended; after some, this member leaves the run.
    fn on_attack(&mut self, done: Result<AttackEnd, tokio::task::JoinError>) {
        if let Ok(AttackEnd::Leave) = done {
            self.result = Some(Err(PipelineError::Protocol(
                "this member left the run after its attack".into(),
            )));
        }
    }
}

/// The runtime's clock as a std instant (paused with the runtime in tests).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
    }
}
