//! Pipeline training across three in-process nodes on loopback: the plan is agreed over the
//! network, every shard holder trains its range, and the losses equal single-node training.

#[path = "net_common/mod.rs"]
mod net_common;
mod pipeline_common;

use std::time::Duration;

use murmur_models::{ModelKind, Trainer, builtin_data};
use murmur_node::net::Network;
use murmur_node::shard::pipeline::{self, Placement, StageProgress};
use pipeline_common::*;
use tokio::sync::watch;

async fn three_nodes() -> Vec<(net_common::Identity, Network)> {
    nodes(1, 3).await
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
        let report = finish(i, handle, Duration::from_secs(45)).await;
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
    for (i, handle) in handles.into_iter().enumerate() {
        reports.push(finish(i, handle, Duration::from_secs(50)).await);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_crashes_and_restarts_is_planned_back_in() {
    let first = 40;
    let nodes = nodes(first, 3).await;
    // Slowed by sleeping (no more CPU), so the run is still going when the member is back.
    let steps = 150;
    let config = || {
        let mut c = config(steps, Placement::Even, 4.0);
        c.peer_deadline = Duration::from_secs(3);
        c
    };
    let mut handles = Vec::new();
    let mut progress = Vec::new();
    for (id, net) in &nodes {
        let (tx, rx) = watch::channel(StageProgress::default());
        progress.push(rx);
        handles.push(tokio::spawn(pipeline::run(
            net.clone(),
            id.signing.clone(),
            config(),
            tx,
        )));
    }
    let victim = tokio::time::timeout(Duration::from_secs(40), async {
        loop {
            if let Some(i) = progress
                .iter()
                .position(|p| p.borrow().range.is_some() && p.borrow().position == 1)
                .filter(|&i| progress[i].borrow().step >= 5)
            {
                return i;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the middle shard makes progress");
    // A crash: the task and its network go at once; the same identity comes straight back,
    // with no plan and no snapshots.
    let boot = net_common::addr_of(&nodes[(victim + 1) % nodes.len()].1, "tcp").await;
    handles[victim].abort();
    nodes[victim].1.shutdown().await;
    let mut net_config = net_common::loopback();
    net_config.bootstrap = vec![boot];
    let seed = first + u8::try_from(victim).expect("three nodes");
    let (id, net, _events) = net_common::start(seed, net_config).await;
    let (tx, _rx) = watch::channel(StageProgress::default());
    handles[victim] = tokio::spawn(pipeline::run(net.clone(), id.signing.clone(), config(), tx));

    for (i, handle) in handles.into_iter().enumerate() {
        let report = finish(i, handle, Duration::from_secs(45)).await;
        assert_eq!(report.steps, steps, "node {i} trained every step");
        assert_eq!(report.epoch, 2, "node {i}: one re-plan");
        assert_eq!(
            report.plan.assignments.len(),
            3,
            "the restarted member is back"
        );
        assert!(report.position.is_some(), "node {i} holds a range");
    }
    net.shutdown().await;
    for (_, net) in &nodes {
        net.shutdown().await;
    }
}

/// The member with the lowest peer id issues the first plan. When it is so slow that the plan
/// leaves it out, it stops announcing right after sending the notice, perhaps before its one
/// announcement with a capacity reached the others: they must take the queued notice (which
/// lists the members and their capacities) instead of waiting for a third member until the
/// formation timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_issuer_that_plans_itself_out_still_starts_the_pipeline() {
    let nodes = nodes(60, 3).await;
    let lowest = nodes
        .iter()
        .map(|(_, net)| net.local_peer_id().to_string())
        .min()
        .expect("three nodes");
    let steps = 5;
    let configs = nodes
        .iter()
        .map(|(_, net)| {
            let issuer = net.local_peer_id().to_string() == lowest;
            let mut c = config(
                steps,
                Placement::CapacityAware,
                if issuer { 64.0 } else { 1.0 },
            );
            c.form_timeout = Duration::from_secs(20);
            c
        })
        .collect();
    let reports = run_all(&nodes, configs).await;
    for (report, (_, net)) in reports.iter().zip(&nodes) {
        if net.local_peer_id().to_string() == lowest {
            assert_eq!(report.position, None, "the slow issuer is left out");
            assert_eq!(report.steps, 0);
        } else {
            assert!(report.position.is_some(), "a fast member holds a range");
            assert_eq!(report.steps, steps);
        }
        assert_eq!(report.plan.assignments.len(), 2);
    }
    for (_, net) in &nodes {
        net.shutdown().await;
    }
}
