//! Four nodes gossip-train mlp-digits on quarter shards of the data: every node reaches
//! 96 % held-out accuracy within a step budget comparable to one node seeing all the data.

mod train_common;

use std::time::Duration;

use train_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_nodes_on_quarter_shards_all_reach_96_percent() {
    // One node on all the data trains 1500 steps by default (`murmur train`); each node here
    // may take 1000 local steps on a quarter of it (it stops as soon as all are at 96 %).
    let budget = 1000;
    let mut sessions = Vec::new();
    let mut bootstrap = Vec::new();
    for i in 0..4u8 {
        let (replica, anchor, model) = digits_replica(i as usize, 4, budget);
        let config = config(model, &bootstrap, worker(25, budget, u64::from(i)));
        let session = start(10 + i, None, replica, anchor, config).await;
        if i == 0 {
            bootstrap.push(addr(&session).await);
        }
        sessions.push(session);
    }
    let refs: Vec<_> = sessions.iter().collect();
    let reached = wait_all(&refs, Duration::from_secs(45), |s| s.worker.reached_target).await;
    let finals: Vec<_> = sessions
        .iter()
        .map(|s| s.status().borrow().clone())
        .collect();
    for s in sessions {
        let _ = tokio::time::timeout(Duration::from_secs(15), s.stop()).await;
    }
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
        assert_eq!(
            s.worker.counts.rejected_total(),
            0,
            "node {i}: {:?}",
            s.worker.counts
        );
    }
    assert!(reached);
}
