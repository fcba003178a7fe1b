//! Shared helpers for the gossip-training tests: in-process nodes (network + training
//! thread) on loopback, built from seeded identities, and bounded waiting on their status.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use murmur_models::{
    DataSplit, DeviceChoice, ModelKind, TrainConfig, Trainer, builtin_data, select_device, spec_for,
};
use murmur_node::averaging::{AveragerConfig, SyncPolicy};
use murmur_node::cmd::node::run_model_fingerprint;
use murmur_node::identity::NodeIdentity;
use murmur_node::net::NetConfig;
use murmur_node::session::replica::{ModelReplica, Replica};
use murmur_node::session::worker::WorkerConfig;
use murmur_node::session::{NodeStatus, Session, SessionConfig};
use murmur_node::store::Store;
use murmur_protocol::{ModelFingerprint, RunId};

/// The run every test node joins.
pub fn run() -> RunId {
    RunId::from_name("train-test-run")
}

/// Deterministic identity number `seed`.
pub fn identity(seed: u8) -> NodeIdentity {
    NodeIdentity::from_secret([seed; 32]).expect("valid secret")
}

/// A session config for loopback tests, bootstrapping from `bootstrap`.
pub fn config(
    model: ModelFingerprint,
    bootstrap: &[Multiaddr],
    worker: WorkerConfig,
) -> SessionConfig {
    let mut net = NetConfig::loopback(run());
    net.bootstrap = bootstrap.to_vec();
    net.kad_walk_interval = Some(Duration::from_millis(500));
    SessionConfig {
        net,
        averager: AveragerConfig::new(run(), model),
        worker,
        announce_every: Duration::from_millis(500),
        join_lag_rounds: 8,
        checkpoint_keep: 3,
        device: "test".into(),
        tamper: None,
    }
}

/// Worker schedule: sync every `h` steps, train `budget` steps.
pub fn worker(h: u64, budget: u64, seed: u64) -> WorkerConfig {
    WorkerConfig {
        policy: SyncPolicy::Steps(h),
        step_budget: budget,
        target_accuracy: Some(0.96),
        eval_every: h,
        checkpoint_every: 4,
        idle_sync: Duration::from_millis(100),
        seed,
    }
}

/// The digits data.
pub fn digits() -> DataSplit {
    builtin_data(ModelKind::MlpDigits).expect("embedded digits")
}

/// An mlp-digits replica on data part `index` of `count`, with the run's shared init seed.
/// Returns the replica, its anchor (initial parameters) and the run model fingerprint.
pub fn digits_replica(
    index: usize,
    count: usize,
    steps: u64,
) -> (Box<dyn Replica>, Vec<f32>, ModelFingerprint) {
    let data = digits();
    let train = data.train.part(index, count).expect("a data part");
    let spec = spec_for(ModelKind::MlpDigits, train.shape()).expect("spec");
    let device = select_device(DeviceChoice::Flex)
        .expect("flex device")
        .device;
    let seed = 11;
    let config = TrainConfig {
        lr: 3e-3,
        total_steps: steps,
        batch_size: 32,
        seed,
        ..TrainConfig::default()
    };
    let trainer = Trainer::new(&spec, train, data.test, config, &device).expect("trainer");
    let anchor = trainer.flat_params().expect("params");
    let model = run_model_fingerprint(trainer.fingerprint(), seed);
    (Box::new(ModelReplica(trainer)), anchor, model)
}

/// Starts a session.
pub async fn start(
    seed: u8,
    store: Option<Store>,
    replica: Box<dyn Replica>,
    anchor: Vec<f32>,
    config: SessionConfig,
) -> Session {
    tokio::time::timeout(
        Duration::from_secs(20),
        Session::start(identity(seed), store, replica, anchor, config),
    )
    .await
    .expect("session starts in time")
    .expect("session starts")
}

/// The first TCP listen address of `session`, with its `/p2p` suffix.
pub async fn addr(session: &Session) -> Multiaddr {
    let id = session.network().local_peer_id();
    let addrs = session
        .network()
        .listen_addrs()
        .await
        .expect("listen addrs");
    let tcp = addrs
        .into_iter()
        .find(|a| a.iter().any(|p| matches!(p, Protocol::Tcp(_))))
        .expect("a TCP listener");
    tcp.with(Protocol::P2p(id))
}

/// Waits until `check` holds for the latest status of every session, or `limit` passes.
pub async fn wait_all(
    sessions: &[&Session],
    limit: Duration,
    check: impl Fn(&NodeStatus) -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if sessions.iter().all(|s| check(&s.status().borrow())) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Held-out accuracy in the latest status.
pub fn accuracy(status: &NodeStatus) -> f32 {
    status.worker.eval.and_then(|e| e.accuracy).unwrap_or(0.0)
}

/// Starts `count` mlp-digits nodes on `count` parts of the data with a local step budget of
/// `budget`, syncing every 25 steps, identities from `seed` on; `adjust` edits each node's
/// config.
pub async fn digit_nodes(
    count: usize,
    budget: u64,
    seed: u8,
    adjust: impl Fn(&mut SessionConfig),
) -> Vec<Session> {
    let mut sessions = Vec::new();
    let mut bootstrap = Vec::new();
    for i in 0..count {
        let (replica, anchor, model) = digits_replica(i, count, budget);
        let mut config = config(model, &bootstrap, worker(25, budget, i as u64));
        adjust(&mut config);
        let session = start(seed + i as u8, None, replica, anchor, config).await;
        if i == 0 {
            bootstrap.push(addr(&session).await);
        }
        sessions.push(session);
    }
    sessions
}

/// Waits (at most `limit`) until every session reached the target accuracy and merged
/// something from its peers (a node that starts last may reach the target on its own part
/// before its first merge), stops them all, and returns whether they did with their last
/// statuses.
pub async fn train_to_target(sessions: Vec<Session>, limit: Duration) -> (bool, Vec<NodeStatus>) {
    let refs: Vec<_> = sessions.iter().collect();
    let done = |s: &NodeStatus| s.worker.reached_target && s.worker.counts.merged > 0;
    let reached = wait_all(&refs, limit, done).await;
    (reached, stop_all(sessions).await)
}

/// The sessions' latest statuses, then stops them (each within a bounded time).
pub async fn stop_all(sessions: Vec<Session>) -> Vec<NodeStatus> {
    let statuses = sessions
        .iter()
        .map(|s| s.status().borrow().clone())
        .collect();
    for s in sessions {
        let _ = tokio::time::timeout(Duration::from_secs(15), s.stop()).await;
    }
    statuses
}

/// Asserts that every node reached the target within `budget` steps and merged something.
pub fn assert_all_reached(reached: bool, finals: &[NodeStatus], budget: u64) {
    for (i, s) in finals.iter().enumerate() {
        assert!(
            s.worker.reached_target,
            "node {i}: accuracy {} after {} steps, merged {}",
            accuracy(s),
            s.worker.steps,
            s.worker.counts.merged
        );
        assert!(s.worker.steps <= budget);
        assert!(s.worker.counts.merged > 0, "node {i} merged nothing");
    }
    assert!(reached);
}
