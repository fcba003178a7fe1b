//! Four nodes gossip-train mlp-digits on quarter parts of the data: every node reaches
//! 96 % held-out accuracy within a step budget comparable to one node seeing all the data.

mod train_common;

use std::time::Duration;

use train_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_nodes_on_quarter_parts_all_reach_96_percent() {
    // One node on all the data trains 1500 steps by default (`murmur train`); each node here
    // may take 1000 local steps on a quarter of it (it stops as soon as all are at 96 %).
    let budget = 1000;
    let sessions = digit_nodes(4, budget, 10, |_| {}).await;
    let (reached, finals) = train_to_target(sessions, Duration::from_secs(45)).await;
    assert_all_reached(reached, &finals, budget);
    for (i, s) in finals.iter().enumerate() {
        assert_eq!(
            s.worker.counts.rejected_total(),
            0,
            "node {i}: {:?}",
            s.worker.counts
        );
    }
}
