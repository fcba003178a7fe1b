//! Shared helpers for the pipeline tests: a narrow char-gpt, its training and pipeline
//! configurations, connected in-process nodes on loopback, and running every node's part.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use murmur_models::{GptConfig, ModelKind, ModelSpec, TrainConfig, builtin_data, spec_for};
use murmur_node::net::Network;
use murmur_node::shard::pipeline::{self, PipelineConfig, PipelineReport, Placement};
use murmur_protocol::ModelFingerprint;
use tokio::sync::watch;

use super::net_common;

pub fn spec() -> ModelSpec {
    spec_with_layers(2)
}

/// A narrow char-gpt with `layers` blocks (`layers + 2` stages).
pub fn spec_with_layers(layers: usize) -> ModelSpec {
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

pub fn train_config() -> TrainConfig {
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

pub fn config(steps: u64, placement: Placement, slowdown: f64) -> PipelineConfig {
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
        snapshot_every: 2,
        replicas: 1,
        average_every: 0,
        admission: murmur_node::averaging::Admission::Open,
        tamper: None,
    }
}

/// `n` connected nodes with identities from `first` on (the others bootstrap from the first).
/// Tests running at once use different identities, so no node is mistaken for another's.
pub async fn nodes(first: u8, n: u8) -> Vec<(net_common::Identity, Network)> {
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

pub async fn run_all(
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
    for r in reports.iter().flatten() {
        let refused = r.refused.get("notice");
        assert!(refused.is_none(), "an honest plan refused: {:?}", r.refused);
    }
    reports.into_iter().filter_map(Result::ok).collect()
}

/// The report of the pipeline task `handle` of node `i`, within `limit` (panics otherwise).
pub async fn finish(
    i: usize,
    handle: tokio::task::JoinHandle<Result<PipelineReport, pipeline::PipelineError>>,
    limit: Duration,
) -> PipelineReport {
    tokio::time::timeout(limit, handle)
        .await
        .unwrap_or_else(|_| panic!("node {i} finishes within {limit:?}"))
        .expect("task joins")
        .unwrap_or_else(|e| panic!("node {i} failed: {e}"))
}
