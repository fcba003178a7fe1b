//! The training thread without a network: fixtures for the mode tests, and whole-worker
//! runs over preloaded inputs in each averaging mode.

use super::*;
use crate::averaging::{AveragerConfig, ButterflyConfig};
use crate::session::replica::VectorReplica;

/// The averager fixture of the integration tests, shared.
#[path = "../../../tests/support/mod.rs"]
mod support;

pub(super) use support::{LEN, averager};

/// A schedule that never syncs on its own and checkpoints nothing.
pub(super) fn config() -> WorkerConfig {
    WorkerConfig {
        policy: SyncPolicy::Steps(1_000),
        step_budget: 0,
        target_accuracy: None,
        eval_every: 1,
        checkpoint_every: 0,
        idle_sync: Duration::from_millis(100),
        seed: 7,
    }
}

/// The shared state of a worker over a vector of ones, and its far ends.
pub(super) struct Fixture {
    pub(super) shared: Shared,
    pub(super) outputs: mpsc::Receiver<WorkerOutput>,
    pub(super) live_peers: Arc<LivePeers>,
    pub(super) in_flight: Arc<SendsInFlight>,
}

impl Fixture {
    pub(super) fn new(averager: Averager) -> Self {
        let (tx, outputs) = mpsc::channel(64);
        let live_peers = Arc::new(LivePeers::default());
        let shared = Shared::new(
            Box::new(VectorReplica(vec![1.0; LEN])),
            averager,
            config(),
            tx,
            live_peers.clone(),
            None,
        );
        Self {
            shared,
            outputs,
            live_peers,
            in_flight: Arc::new(SendsInFlight::default()),
        }
    }

    /// The outputs so far, progress reports left out.
    pub(super) fn sent(&mut self) -> Vec<WorkerOutput> {
        std::iter::from_fn(|| self.outputs.try_recv().ok())
            .filter(|o| !matches!(o, WorkerOutput::Progress(_)))
            .collect()
    }

    /// The replica's parameters.
    pub(super) fn params(&self) -> Vec<f32> {
        self.shared.replica.params().expect("params")
    }
}

/// A whole worker over a vector of ones, `inputs` already queued; runs it to the end.
fn run_worker(
    averager: Averager,
    inputs: Vec<WorkerInput>,
) -> (WorkerStatus, Vec<WorkerOutput>, bool) {
    let (input_tx, input_rx) = crate::session::inputs::channel(64);
    for input in inputs {
        input_tx.try_send(input).expect("queued");
    }
    let (tx, mut rx) = mpsc::channel(64);
    let worker = Worker::new(
        Box::new(VectorReplica(vec![1.0; LEN])),
        averager,
        config(),
        WorkerLinks {
            inputs: input_rx,
            outputs: tx,
            live_peers: Arc::new(LivePeers::default()),
            in_flight: Arc::new(SendsInFlight::default()),
        },
        None,
    )
    .expect("a valid signing key");
    let gate = worker.part_gate().is_some();
    let status = worker.run().expect("runs");
    let outputs = std::iter::from_fn(|| rx.try_recv().ok())
        .filter(|o| !matches!(o, WorkerOutput::Progress(_)))
        .collect();
    (status, outputs, gate)
}

fn butterfly(config: &mut AveragerConfig) {
    config.butterfly = Some(ButterflyConfig::default());
}

/// Adopting a state, serving it and stopping work alike in both modes.
fn adopts_serves_and_stops(configure: fn(&mut AveragerConfig), gate: bool) {
    let (averager, _) = averager(1, configure);
    let (reply, served) = oneshot::channel();
    let inputs = vec![
        WorkerInput::Adopt {
            round: 7,
            params: vec![2.0; LEN],
            from: Vec::new(),
        },
        WorkerInput::Snapshot(reply),
        WorkerInput::Stop,
    ];
    let (status, outputs, has_gate) = run_worker(averager, inputs);
    assert_eq!(has_gate, gate);
    assert_eq!(status.adopted_round, Some(7));
    assert_eq!(status.round, 7);
    assert_eq!(status.mass, 0.0, "the adopted copy's mass is the peer's");
    assert!(!status.training);
    assert!(outputs.is_empty(), "nothing sent: {outputs:?}");
    let snapshot = served.blocking_recv().expect("served");
    assert_eq!(snapshot.round, 7);
    assert_eq!(snapshot.params, vec![2.0; LEN]);
}

#[test]
fn a_push_sum_worker_adopts_serves_and_stops() {
    adopts_serves_and_stops(|_| {}, false);
}

#[test]
fn a_butterfly_worker_adopts_serves_and_stops() {
    adopts_serves_and_stops(butterfly, true);
}

/// A delta that cannot be opened is refused, counted and reported, in both modes.
fn refuses_a_bad_delta(configure: fn(&mut AveragerConfig)) {
    let (averager, _) = averager(1, configure);
    let peer = PeerId::random();
    let inputs = vec![
        WorkerInput::Delta {
            peer,
            header: vec![1, 2, 3],
            payload: vec![0; 16],
            digest: Digest::of(&[0u8; 16]),
        },
        WorkerInput::Stop,
    ];
    let (status, outputs, _) = run_worker(averager, inputs);
    assert_eq!(
        status.counts.rejected.get(&Rejection::BadEnvelope),
        Some(&1)
    );
    assert!(matches!(
        outputs.as_slice(),
        [WorkerOutput::Rejected { peer: p, reason: Rejection::BadEnvelope }] if *p == peer
    ));
}

#[test]
fn a_push_sum_worker_refuses_a_bad_delta() {
    refuses_a_bad_delta(|_| {});
}

#[test]
fn a_butterfly_worker_refuses_a_bad_delta() {
    refuses_a_bad_delta(butterfly);
}

#[test]
fn a_butterfly_worker_refuses_a_bad_part() {
    let (averager, _) = averager(1, butterfly);
    let peer = PeerId::random();
    let inputs = vec![
        WorkerInput::Part {
            peer,
            header: vec![1, 2, 3],
            payload: vec![0; 16],
            digest: Digest::of(&[0u8; 16]),
        },
        WorkerInput::Stop,
    ];
    let (status, outputs, _) = run_worker(averager, inputs);
    assert_eq!(status.counts.rejected.values().sum::<u64>(), 1);
    assert!(matches!(
        outputs.as_slice(),
        [WorkerOutput::Rejected { peer: p, .. }] if *p == peer
    ));
}
