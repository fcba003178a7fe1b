//! A training session: one node taking part in a run — the training thread (local steps,
//! syncs, merges, checkpoints) wired to the network (delta fan-out, state serving and
//! fetching, presence announcements).
//!
//! - [`replica`]: what is averaged (a burn model, or a plain vector with training off).
//! - [`worker`]: the training thread.
//! - [`checkpoints`]: crash-safe checkpoints in sled.
//! - [`pumps`]: the async tasks between the network and the training thread.
//! - [`presence`]: signed announcements and the live peer set.
//! - [`state_sync`]: serving and downloading model state (late joiners).

pub mod checkpoints;
mod in_flight;
mod inputs;
pub mod presence;
pub mod pumps;
pub mod replica;
mod slow_loris;
mod state_check;
pub mod state_ranges;
pub mod state_sync;
pub mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use libp2p::PeerId;
use murmur_models::TrainError;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::averaging::{Averager, AveragerConfig, AveragingError, Rejection, ReplayGuard, replay};
use crate::identity::NodeIdentity;
use crate::net::{
    Admission, IncomingPayload, NetConfig, NetError, NetEvents, Network, PayloadKind,
    StateRequestEvent,
};
use crate::store::{Store, StoreError};
use checkpoints::{CheckpointStoreError, Checkpoints};
use in_flight::SendsInFlight;
use presence::LivePeers;
use replica::Replica;
use worker::{Worker, WorkerConfig, WorkerInput, WorkerLinks, WorkerStatus};

/// Everything a session needs besides the replica.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Network settings (run topic, listen addresses, bootstrap nodes, limits).
    pub net: NetConfig,
    /// Averaging settings (run, model fingerprint, codec, fan-out, robustness, pool).
    pub averager: AveragerConfig,
    /// Training-thread schedule.
    pub worker: WorkerConfig,
    /// Interval of presence announcements.
    pub announce_every: Duration,
    /// Adopt a peer's state when it is this many rounds ahead (late joiners, restarts).
    pub join_lag_rounds: u64,
    /// Checkpoints kept.
    pub checkpoint_keep: usize,
    /// Device description announced to peers.
    pub device: String,
    /// Red team only: corrupt every delta sent this way (see [`crate::adversary`]).
    pub tamper: Option<crate::adversary::Tamper>,
}

/// A session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The network failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// Training failed.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// Averaging failed.
    #[error(transparent)]
    Averaging(#[from] AveragingError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Checkpoints failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointStoreError),
    /// The averager's signing key is not a valid peer identity.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// The training thread died.
    #[error("the training thread stopped unexpectedly")]
    WorkerGone,
    /// A thread could not be started.
    #[error("starting the training thread: {0}")]
    Spawn(std::io::Error),
}

/// Network-side counters.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Delta payload bytes sent.
    pub bytes_sent: AtomicU64,
    /// Delta payload bytes received.
    pub bytes_received: AtomicU64,
    /// Deltas delivered.
    pub deltas_sent: AtomicU64,
    /// Deltas that could not be delivered.
    pub send_failures: AtomicU64,
    /// State downloads served.
    pub states_served: AtomicU64,
    /// State requests refused (closed pool, wrong run or model).
    pub states_refused: AtomicU64,
}

/// A node's live figures.
#[derive(Debug, Clone, Default)]
pub struct NodeStatus {
    /// Training-thread figures.
    pub worker: WorkerStatus,
    /// Delta payload bytes sent.
    pub bytes_sent: u64,
    /// Delta payload bytes received.
    pub bytes_received: u64,
    /// Deltas delivered.
    pub deltas_sent: u64,
    /// Deltas not delivered.
    pub send_failures: u64,
    /// State downloads (ranges) served.
    pub states_served: u64,
    /// State requests refused.
    pub states_refused: u64,
    /// Live training peers of the same run and model.
    pub peers: usize,
}

impl NodeStatus {
    fn with_traffic(mut self, traffic: &Traffic, peers: usize) -> Self {
        self.bytes_sent = traffic.bytes_sent.load(Ordering::Relaxed);
        self.bytes_received = traffic.bytes_received.load(Ordering::Relaxed);
        self.deltas_sent = traffic.deltas_sent.load(Ordering::Relaxed);
        self.send_failures = traffic.send_failures.load(Ordering::Relaxed);
        self.states_served = traffic.states_served.load(Ordering::Relaxed);
        self.states_refused = traffic.states_refused.load(Ordering::Relaxed);
        self.peers = peers;
        self
    }
}

/// What the async tasks share.
#[derive(Debug)]
pub(crate) struct Context {
    pub(crate) net: Network,
    pub(crate) identity: NodeIdentity,
    pub(crate) config: SessionConfig,
    pub(crate) inputs: inputs::InputSender,
    pub(crate) live_peers: Arc<LivePeers>,
    pub(crate) in_flight: Arc<SendsInFlight>,
    pub(crate) traffic: Traffic,
    pub(crate) status: watch::Sender<NodeStatus>,
    pub(crate) param_count: usize,
    pub(crate) trains: bool,
    /// The run's initial model, which a late joiner measures downloaded states against
    /// (kept only by a node that trains: only it can be a late joiner).
    pub(crate) anchor: Option<Arc<[f32]>>,
    pub(crate) cancel: CancellationToken,
}

impl Context {
    pub(crate) fn live_peer_count(&self) -> usize {
        self.live_peers.count()
    }

    /// Hands an input the training thread must not miss (an adopted state, returned
    /// mass, a snapshot request) to it, waiting while its queue is full of deltas instead
    /// of dropping the input. Gives up after [`DELIVER_LIMIT`], on shutdown, or when the
    /// thread is gone; returns whether the input was queued.
    pub(crate) async fn deliver(&self, input: WorkerInput) -> bool {
        self.inputs
            .send_within(input, DELIVER_LIMIT, &self.cancel)
            .await
    }
}

/// How long [`Context::deliver`] waits for room in the training thread's queue.
const DELIVER_LIMIT: Duration = Duration::from_secs(30);

/// A running node.
#[derive(Debug)]
pub struct Session {
    ctx: Arc<Context>,
    worker: Option<std::thread::JoinHandle<Result<WorkerStatus, SessionError>>>,
    tasks: TaskTracker,
    status: watch::Receiver<NodeStatus>,
}

impl Session {
    /// Starts the network and the training thread. `anchor` is the run's initial model
    /// (identical on every peer); payloads are encoded relative to it.
    pub async fn start(
        identity: NodeIdentity,
        store: Option<Store>,
        replica: Box<dyn Replica>,
        anchor: Vec<f32>,
        config: SessionConfig,
    ) -> Result<Self, SessionError> {
        let param_count = replica.len();
        let trains = replica.trains();
        let join_anchor = trains.then(|| Arc::<[f32]>::from(anchor.as_slice()));
        let (averager, checkpoints) = open_averager(&identity, store.as_ref(), &config, anchor)?;
        let (net, events) =
            Network::start(identity.keypair(), config.net.clone(), store.as_ref()).await?;
        let state_requests = net.serve_state()?;
        let (inputs, input_rx) = inputs::channel(64);
        let deltas = subscribe_deltas(&averager, &inputs, &net)?;
        let (outputs, output_rx) = mpsc::channel(64);
        let live_peers = Arc::new(LivePeers::default());
        let in_flight = Arc::new(SendsInFlight::default());
        let links = WorkerLinks {
            inputs: input_rx,
            outputs,
            live_peers: live_peers.clone(),
            in_flight: in_flight.clone(),
        };
        let mut worker = Worker::new(replica, averager, config.worker.clone(), links, checkpoints)?;
        if let Some(round) = worker.resume()? {
            tracing::info!(round, "resumed from checkpoint");
        }
        let parts = subscribe_parts(&worker, &inputs, &net)?;
        let (status_tx, status) = watch::channel(NodeStatus {
            worker: worker.status().clone(),
            ..NodeStatus::default()
        });
        let ctx = Arc::new(Context {
            net,
            identity,
            config,
            inputs,
            live_peers,
            in_flight,
            traffic: Traffic::default(),
            status: status_tx,
            param_count,
            trains,
            anchor: join_anchor,
            cancel: CancellationToken::new(),
        });
        let handle = std::thread::Builder::new()
            .name("murmur-train".into())
            .spawn(move || worker.run())
            .map_err(SessionError::Spawn)?;
        let inbound = Inbound {
            deltas,
            parts,
            outputs: output_rx,
            events,
            state_requests,
        };
        Ok(Self {
            tasks: spawn_tasks(&ctx, inbound),
            ctx,
            worker: Some(handle),
            status,
        })
    }

    /// Live figures, updated at every evaluation and sync.
    pub fn status(&self) -> watch::Receiver<NodeStatus> {
        self.status.clone()
    }

    /// The current parameters and round, read between two training steps.
    pub async fn snapshot(&self) -> Option<worker::Snapshot> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.ctx.inputs.try_send(WorkerInput::Snapshot(tx)).ok()?;
        tokio::time::timeout(Duration::from_secs(20), rx)
            .await
            .ok()?
            .ok()
    }

    /// The node's network handle.
    pub fn network(&self) -> &Network {
        &self.ctx.net
    }

    /// Stops training (a final checkpoint is written), the tasks and the network; returns
    /// the final figures.
    pub async fn stop(mut self) -> Result<NodeStatus, SessionError> {
        let _ = self.ctx.inputs.try_send(WorkerInput::Stop);
        let result = match self.worker.take() {
            Some(handle) => tokio::task::spawn_blocking(move || handle.join())
                .await
                .map_err(|_| SessionError::WorkerGone)?
                .map_err(|_| SessionError::WorkerGone)?,
            None => Err(SessionError::WorkerGone),
        };
        self.ctx.cancel.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await;
        self.ctx.net.shutdown().await;
        let status = result?;
        let peers = self.ctx.live_peer_count();
        Ok(NodeStatus {
            worker: status,
            ..NodeStatus::default()
        }
        .with_traffic(&self.ctx.traffic, peers))
    }
}

/// The averager (with its replay guard, persistent when there is a store) and the
/// checkpoints of a session.
fn open_averager(
    identity: &NodeIdentity,
    store: Option<&Store>,
    config: &SessionConfig,
    anchor: Vec<f32>,
) -> Result<(Averager, Option<Checkpoints>), SessionError> {
    let replay = match store {
        Some(store) => ReplayGuard::persistent(store.raw_tree(replay::MERGED_TREE)?)?,
        None => ReplayGuard::in_memory(),
    };
    let checkpoints = store
        .map(|s| Checkpoints::open(s, config.checkpoint_keep))
        .transpose()?;
    let averager = Averager::new(
        config.averager.clone(),
        identity.signing_key().clone(),
        anchor,
        replay,
    );
    Ok((averager, checkpoints))
}

/// Subscribes to deltas, their headers checked by the engine's gate before their payloads
/// are read.
fn subscribe_deltas(
    averager: &Averager,
    inputs: &inputs::InputSender,
    net: &Network,
) -> Result<mpsc::Receiver<IncomingPayload>, SessionError> {
    let gate = averager.gate();
    let wake = gate.clone();
    let admission = gated(
        move |peer, header| gate.admit(peer, header),
        move || wake.should_wake(),
        inputs,
        || WorkerInput::DeltasRefused,
    );
    Ok(net.subscribe_payloads_admitting(PayloadKind::Delta, admission)?)
}

/// Subscribes to butterfly parts when the worker runs rounds: parts are checked against
/// the rounds before their payloads are read.
fn subscribe_parts(
    worker: &Worker,
    inputs: &inputs::InputSender,
    net: &Network,
) -> Result<Option<mpsc::Receiver<IncomingPayload>>, SessionError> {
    let Some(gate) = worker.part_gate() else {
        return Ok(None);
    };
    let wake = gate.clone();
    let admission = gated(
        move |peer, header| gate.admit(peer, header),
        move || wake.should_wake(),
        inputs,
        || WorkerInput::PartsRefused,
    );
    Ok(Some(net.subscribe_payloads_admitting(
        PayloadKind::Part,
        admission,
    )?))
}

/// The admission of a gated stream: `admit` judges each header; a refusal's name is what the
/// sending peer is told, and the first refusal the training thread has not taken yet
/// (`should_wake`) wakes it with `input` to count them.
fn gated(
    admit: impl Fn(&PeerId, &[u8]) -> Result<(), Rejection> + Send + Sync + 'static,
    should_wake: impl Fn() -> bool + Send + Sync + 'static,
    inputs: &inputs::InputSender,
    input: fn() -> WorkerInput,
) -> Admission {
    let wake = inputs.clone();
    Arc::new(move |peer, header| {
        let verdict = admit(peer, header);
        if verdict.is_err() && should_wake() {
            let _ = wake.try_send(input());
        }
        verdict.map_err(|rejection| rejection.to_string())
    })
}

/// What the session's tasks read.
struct Inbound {
    deltas: mpsc::Receiver<IncomingPayload>,
    parts: Option<mpsc::Receiver<IncomingPayload>>,
    outputs: mpsc::Receiver<worker::WorkerOutput>,
    events: NetEvents,
    state_requests: mpsc::Receiver<StateRequestEvent>,
}

/// Starts the session's async tasks, every one tracked.
fn spawn_tasks(ctx: &Arc<Context>, inbound: Inbound) -> TaskTracker {
    let tasks = TaskTracker::new();
    tasks.spawn(pumps::inbound(
        ctx.clone(),
        PayloadKind::Delta,
        inbound.deltas,
    ));
    if let Some(parts) = inbound.parts {
        tasks.spawn(pumps::inbound(ctx.clone(), PayloadKind::Part, parts));
    }
    tasks.spawn(pumps::outbound(ctx.clone(), inbound.outputs, tasks.clone()));
    tasks.spawn(presence::run(ctx.clone(), inbound.events));
    tasks.spawn(state_sync::serve(ctx.clone(), inbound.state_requests));
    tasks.spawn(state_sync::join(ctx.clone()));
    if ctx.config.tamper == Some(crate::adversary::Tamper::SlowLoris) {
        tasks.spawn(slow_loris::run(ctx.clone()));
    }
    tasks
}

/// Publishes worker figures merged with the network counters.
pub(crate) fn publish_status(ctx: &Context, worker: WorkerStatus) {
    let status = NodeStatus {
        worker,
        ..NodeStatus::default()
    }
    .with_traffic(&ctx.traffic, ctx.live_peer_count());
    ctx.status.send_replace(status);
}
