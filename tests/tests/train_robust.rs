//! One malicious node out of five (deltas scaled ×100 or sign-flipped) with robust merging
//! on: the honest nodes still reach 95 %, and the scaled deltas are rejected and counted.

mod train_common;

use std::time::Duration;

use murmur_node::averaging::{Rejection, RobustConfig, Tamper};
use train_common::*;

async fn run_with(tamper: Tamper, seed_base: u8) -> Vec<murmur_node::session::NodeStatus> {
    let budget = 1000;
    let mut sessions = Vec::new();
    let mut bootstrap = Vec::new();
    for i in 0..5u8 {
        let honest = i < 4;
        let (replica, anchor, model) = digits_replica(usize::from(i.min(3)), 4, budget);
        let mut cfg = config(model, &bootstrap, worker(25, budget, u64::from(i)));
        cfg.averager.robust = Some(RobustConfig::default());
        cfg.worker.target_accuracy = Some(0.95);
        if !honest {
            cfg.averager.tamper = Some(tamper);
        }
        let session = start(seed_base + i, None, replica, anchor, cfg).await;
        if i == 0 {
            bootstrap.push(addr(&session).await);
        }
        sessions.push(session);
    }
    let honest: Vec<_> = sessions.iter().take(4).collect();
    wait_all(&honest, Duration::from_secs(45), |s| {
        s.worker.reached_target
    })
    .await;
    stop_all(sessions).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_nodes_reach_95_percent_despite_a_node_scaling_its_deltas_by_100() {
    let statuses = run_with(Tamper::Scale(100.0), 50).await;
    let outliers: u64 = statuses[..4]
        .iter()
        .map(|s| {
            s.worker
                .counts
                .rejected
                .get(&Rejection::NormOutlier)
                .copied()
                .unwrap_or(0)
        })
        .sum();
    for (i, s) in statuses[..4].iter().enumerate() {
        assert!(
            s.worker.reached_target,
            "honest node {i}: accuracy {}",
            accuracy(s)
        );
    }
    assert!(
        outliers > 0,
        "scaled deltas must be rejected as norm outliers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_nodes_reach_95_percent_despite_a_node_flipping_its_deltas() {
    let statuses = run_with(Tamper::Flip, 60).await;
    for (i, s) in statuses[..4].iter().enumerate() {
        assert!(
            s.worker.reached_target,
            "honest node {i}: accuracy {}",
            accuracy(s)
        );
    }
}
