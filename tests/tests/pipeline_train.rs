//! Pipeline training across three in-process nodes on loopback: the plan is agreed over the
//! network, every shard holder trains its range, and the losses equal single-node training.

#[path = "net_common/mod.rs"]
mod net_common;

use std::time::Duration;

use murmur_models::{
    GptConfig, ModelKind, ModelSpec, TrainConfig, Trainer, builtin_data, spec_for,
};
use murmur_node::net::Network;
use murmur_node::shard::pipeline::{
    self, PipelineConfig, PipelineReport, Placement, StageProgress,
};
use murmur_protocol::ModelFingerprint;
use tokio::sync::watch;

fn spec() -> ModelSpec {
    spec_with_layers(2)
}

/// A narrow char-gpt with `layers` blocks (`layers + 2` stages).
fn spec_with_layers(layers: usize) -> ModelSpec {
    let data = builtin_data(ModelKind::CharGpt).expect("embedded corpus");
    match spec_for(ModelKind::CharGpt, data.train.shape()).expect("spec") {
        ModelSpec::Gpt(full) => ModelSpec::Gpt(GptConfig {
            d_model: 16,
            heads: 2,
            layers,
            ..full
        }),
        other => other,
    }
}

fn train_config() -> TrainConfig {
    TrainConfig {
        lr: 3e-3,
        warmup_steps: 2,
        total_steps: 20,
        grad_clip: Some(0.5),
        batch_size: 8,
        seed: 11,
        ..TrainConfig::default()
    }
}

fn config(steps: u64, placement: Placement, slowdown: f64) -> PipelineConfig {
    let data = builtin_data(ModelKind::CharGpt).expect("embedded corpus");
    PipelineConfig {
        run: net_common::run(),
        spec: spec(),
        model: ModelFingerprint([3; 32]),
        train: train_config(),
        micro_batches: 4,
        steps,
        members: 3,
        placement,
        slowdown,
        device: murmur_models::Device::flex(),
        device_name: "flex".into(),
        data: data.train,
        peer_deadline: Duration::from_secs(20),
        form_timeout: Duration::from_secs(30),
        capacity_budget: Duration::from_millis(50),
        replicate_every: 2,
        replicas: 1,
        average_every: 0,
    }
}

/// `n` connected nodes with identities from `first` on (the others bootstrap from the first).
/// Tests running at once use different identities, so no node is mistaken for another's.
async fn nodes(first: u8, n: u8) -> Vec<(net_common::Identity, Network)> {
    let (id1, head, _e1) = net_common::start(first, net_common::loopback()).await;
    let boot = net_common::addr_of(&head, "tcp").await;
    let mut nodes = vec![(id1, head)];
    for seed in first + 1..first + n {
        let mut config = net_common::loopback();
        config.bootstrap = vec![boot.clone()];
        let (id, net, _events) = net_common::start(seed, config).await;
        nodes.push((id, net));
    }
    nodes
}

async fn three_nodes() -> Vec<(net_common::Identity, Network)> {
    nodes(1, 3).await
}

async fn run_all(
    nodes: &[(net_common::Identity, Network)],
    configs: Vec<PipelineConfig>,
) -> Vec<PipelineReport> {
    let runs = nodes.iter().zip(configs).map(|((id, net), config)| {
        let (progress, _) = watch::channel(Default::default());
        pipeline::run(net.clone(), id.signing.clone(), config, progress)
    });
    let all = futures::future::join_all(runs);
    let reports = tokio::time::timeout(Duration::from_secs(50), all)
        .await
        .expect("the pipeline finishes within 50 s");
    let failures: Vec<String> = reports
        .iter()
        .zip(nodes)
        .filter_map(|(r, (_, net))| {
            r.as_ref()
                .err()
                .map(|e| format!("{}: {e}", net.local_peer_id()))
        })
        .collect();
    assert!(failures.is_empty(), "failed parts: {failures:#?}");
    reports.into_iter().filter_map(Result::ok).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_pipeline_matches_single_node_training() {
    let nodes = three_nodes().await;
    let steps = 5;
    let configs = (0..3)
        .map(|_| config(steps, Placement::Even, 1.0))
        .collect();
    let reports = run_all(&nodes, configs).await;

    let mut positions: Vec<usize> = reports.iter().filter_map(|r| r.position).collect();
    positions.sort();
    assert_eq!(positions, vec![0, 1, 2], "each node holds one range");
    assert!(reports.iter().all(|r| r.steps == steps));
    let head = reports
        .iter()
        .find(|r| r.position == Some(0))
        .expect("a head");
    assert_eq!(head.range, Some(0..2));

    let data = builtin_data(ModelKind::CharGpt).expect("embedded corpus");
    let mut trainer = Trainer::new(
        &spec(),
        data.train,
        data.test,
        train_config(),
        &murmur_models::Device::flex(),
    )
    .expect("trainer");
    for (step, got) in head.losses.iter().enumerate() {
        let expected = trainer.step().expect("step").loss;
        assert!(
            (expected - got).abs() < 1e-4 * expected.abs().max(1.0),
            "step {step}: single node {expected}, pipeline {got}"
        );
    }
    assert_eq!(head.losses.len(), steps as usize);
    for (_, net) in &nodes {
        net.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_middle_node_replans_and_training_goes_on() {
    let nodes = three_nodes().await;
    let steps = 30;
    let mut handles = Vec::new();
    let mut progress = Vec::new();
    for (id, net) in &nodes {
        let mut config = config(steps, Placement::Even, 1.0);
        config.peer_deadline = Duration::from_secs(3);
        let (tx, rx) = watch::channel(StageProgress::default());
        progress.push(rx);
        handles.push(tokio::spawn(pipeline::run(
            net.clone(),
            id.signing.clone(),
            config,
            tx,
        )));
    }
    // Kill the holder of the middle range once it has committed a few steps.
    let victim = tokio::time::timeout(Duration::from_secs(40), async {
        loop {
            for (i, p) in progress.iter().enumerate() {
                let p = p.borrow();
                if p.range.is_some() && p.position == 1 && p.step >= 5 {
                    return i;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the middle shard makes progress");
    handles[victim].abort();
    nodes[victim].1.shutdown().await;

    let mut head_losses = None;
    for (i, handle) in handles.into_iter().enumerate() {
        if i == victim {
            continue;
        }
        let report = tokio::time::timeout(Duration::from_secs(45), handle)
            .await
            .expect("survivors finish within 45 s")
            .expect("task joins")
            .expect("survivors re-plan and finish");
        assert_eq!(report.steps, steps, "node {i} trained every step");
        assert_eq!((report.epoch, report.replans), (2, 1));
        assert_eq!(
            report.plan.assignments.len(),
            2,
            "the plan has the two survivors"
        );
        let victim_id = nodes[victim].1.local_peer_id().to_string();
        assert!(report.plan.assignments.iter().all(|a| a.peer != victim_id));
        if report.position == Some(0) {
            head_losses = Some((report.first_loss_step, report.losses));
        }
    }
    let (first, losses) = head_losses.expect("a survivor leads the new plan");
    assert_eq!(first + losses.len() as u64, steps);
    assert!(losses.len() >= 10, "{losses:?}");
    assert!(losses.iter().all(|l| l.is_finite()));
    let early: f32 = losses[..5].iter().sum::<f32>() / 5.0;
    let late: f32 = losses[losses.len() - 5..].iter().sum::<f32>() / 5.0;
    assert!(
        late < early,
        "training went on after the re-plan: {losses:?}"
    );
    for (_, net) in &nodes {
        net.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_a_running_pipeline_is_planned_in() {
    let nodes = three_nodes().await;
    let steps = 300;
    let config = |members| {
        let mut c = config(steps, Placement::CapacityAware, 1.0);
        c.spec = spec_with_layers(6);
        c.members = members;
        c.peer_deadline = Duration::from_secs(10);
        c
    };
    let mut handles = Vec::new();
    let mut progress = Vec::new();
    for (id, net) in &nodes[..2] {
        let (tx, rx) = watch::channel(StageProgress::default());
        progress.push(rx);
        handles.push(tokio::spawn(pipeline::run(
            net.clone(),
            id.signing.clone(),
            config(2),
            tx,
        )));
    }
    // The third node starts once the two-node pipeline is training.
    tokio::time::timeout(Duration::from_secs(30), async {
        while !progress.iter().any(|p| p.borrow().step >= 3) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the two-node pipeline trains");
    let (id, net) = &nodes[2];
    let (tx, _rx) = watch::channel(StageProgress::default());
    handles.push(tokio::spawn(pipeline::run(
        net.clone(),
        id.signing.clone(),
        config(2),
        tx,
    )));

    let mut reports = Vec::new();
    for handle in handles {
        let report = tokio::time::timeout(Duration::from_secs(50), handle)
            .await
            .expect("every node finishes within 50 s")
            .expect("task joins")
            .expect("every node's part succeeds");
        reports.push(report);
    }
    let joiner = &reports[2];
    assert!(joiner.position.is_some(), "the newcomer holds a range");
    assert!(joiner.epoch >= 2, "it was planned in by a later epoch");
    assert_eq!(joiner.plan.assignments.len(), 3);
    for r in &reports {
        assert_eq!(r.steps, steps);
        assert_eq!(r.epoch, joiner.epoch, "everyone ends on the same plan");
    }
    let head = reports
        .iter()
        .find(|r| r.position == Some(0))
        .expect("a first shard");
    assert_eq!(head.first_loss_step + head.losses.len() as u64, steps);
    assert!(head.losses.iter().all(|l| l.is_finite()));
    for (_, net) in &nodes {
        net.shutdown().await;
    }
}

/// Four nodes as two chains of two: the holders of each range train it on different data and
/// gossip-average it every `average_every` steps. Returns, per range, the two holders' final
/// parameters' distance from each other relative to their mean distance from the initial
/// parameters, and the reports.
async fn two_chains(average_every: u64) -> (Vec<f64>, Vec<PipelineReport>) {
    // Both two-chain tests run beside the three-node ones: identities of their own.
    let nodes = nodes(10 + 4 * u8::from(average_every > 0), 4).await;
    let steps = 16;
    let configs = (0..4)
        .map(|_| {
            let mut c = config(steps, Placement::Even, 1.0);
            c.members = 4;
            c.replicas = 2;
            c.average_every = average_every;
            c.replicate_every = 4;
            c
        })
        .collect();
    let reports = run_all(&nodes, configs).await;
    for (_, net) in &nodes {
        net.shutdown().await;
    }
    assert!(reports.iter().all(|r| r.steps == steps && r.lanes == 2));
    let mut lanes: Vec<(usize, usize)> = reports
        .iter()
        .map(|r| (r.lane.expect("planned"), r.position.expect("planned")))
        .collect();
    lanes.sort();
    assert_eq!(
        lanes,
        vec![(0, 0), (0, 1), (1, 0), (1, 1)],
        "two chains of two"
    );
    let mut disagreement = Vec::new();
    for position in 0..2 {
        let holders: Vec<&PipelineReport> = reports
            .iter()
            .filter(|r| r.position == Some(position))
            .collect();
        let (a, b) = (&holders[0].final_params, &holders[1].final_params);
        assert_eq!(
            holders[0].range, holders[1].range,
            "replicas hold the same range"
        );
        let range = holders[0].range.clone().expect("a range");
        let init = murmur_models::pipeline::StageShard::new(
            &spec(),
            &murmur_models::Device::flex(),
            range,
            train_config(),
        )
        .and_then(|s| s.params())
        .expect("initial parameters");
        let dist = |x: &[f32], y: &[f32]| {
            x.iter()
                .zip(y)
                .map(|(p, q)| f64::from(p - q).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let moved = (dist(a, &init) + dist(b, &init)) / 2.0;
        assert!(moved > 0.0, "the range trained");
        disagreement.push(dist(a, b) / moved);
    }
    for head in reports.iter().filter(|r| r.position == Some(0)) {
        let (first, last) = (head.losses[0], head.losses[head.losses.len() - 1]);
        assert!(
            last < first,
            "chain {:?} trains: {:?}",
            head.lane,
            head.losses
        );
    }
    (disagreement, reports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_of_a_range_stay_in_agreement_by_gossip_averaging() {
    let (disagreement, reports) = two_chains(2).await;
    for r in &reports {
        let averaging = r.averaging.as_ref().expect("averaging ran");
        assert_eq!(averaging.syncs, 8, "a sync every 2 of 16 steps");
        assert!(averaging.merged >= 4, "mates' deltas merged: {averaging:?}");
        assert_eq!(averaging.rejected, 0, "{averaging:?}");
    }
    assert!(
        disagreement.iter().all(|d| *d < 0.35),
        "replicas agree: distance / distance moved = {disagreement:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_without_averaging_drift_apart() {
    let (disagreement, reports) = two_chains(0).await;
    assert!(reports.iter().all(|r| r.averaging.is_none()));
    assert!(
        disagreement.iter().all(|d| *d > 0.5),
        "chains on different data diverge: {disagreement:?}"
    );
}
