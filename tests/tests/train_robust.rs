//! Malicious nodes among four honest ones (deltas scaled ×100 or sign-flipped, the untrained
//! model at the largest finite weight, a round 2⁴⁰ ahead, a flood of re-signed and replayed
//! copies, or two sybil identities flipping together) with robust merging on, as `murmur
//! testnet --malicious` runs it: the honest nodes still reach 95 %, and the attack is refused
//! or bounded and counted.

mod train_common;

use std::time::Duration;

use murmur_node::adversary::Tamper;
use murmur_node::averaging::{MAX_MASS, Rejection, RobustConfig};
use murmur_node::session::NodeStatus;
use train_common::*;

/// Runs four honest nodes and one tampering node until the honest ones reach the target and
/// then `settled(at the target, now)` holds for them (both bounded), and returns every node's
/// final status.
async fn run_with(
    tamper: Tamper,
    seed_base: u8,
    settled: impl Fn(&[NodeStatus], &[NodeStatus]) -> bool,
) -> Vec<NodeStatus> {
    run_with_many(tamper, 1, 0.95, seed_base, settled).await
}

/// [`run_with`] with `tamperers` tampering nodes (distinct identities) after the four honest,
/// which must reach `target`.
async fn run_with_many(
    tamper: Tamper,
    tamperers: u8,
    target: f32,
    seed_base: u8,
    settled: impl Fn(&[NodeStatus], &[NodeStatus]) -> bool,
) -> Vec<NodeStatus> {
    let budget = 1000;
    let mut sessions = Vec::new();
    let mut bootstrap = Vec::new();
    for i in 0..4 + tamperers {
        let honest = i < 4;
        let (replica, anchor, model) = digits_replica(usize::from(i.min(3)), 4, budget);
        let mut cfg = config(model, &bootstrap, worker(25, budget, u64::from(i)));
        cfg.averager.robust = Some(RobustConfig::default());
        cfg.worker.target_accuracy = Some(target);
        if !honest {
            cfg.tamper = Some(tamper);
        }
        let session = start(seed_base + i, None, replica, anchor, cfg).await;
        if i == 0 {
            bootstrap.push(addr(&session).await);
        }
        sessions.push(session);
    }
    let honest: Vec<_> = sessions.iter().take(4).collect();
    let reached = wait_all(&honest, Duration::from_secs(40), |s| {
        s.worker.reached_target
    })
    .await;
    // On a fast machine the honest nodes may reach the target before the tamperer's first
    // delta reaches them; what they do with it is part of the test (the whole test stays
    // within a minute: 40 s + 10 s at most).
    let statuses =
        || -> Vec<NodeStatus> { honest.iter().map(|s| s.status().borrow().clone()).collect() };
    let at_target = statuses();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while reached && tokio::time::Instant::now() < deadline && !settled(&at_target, &statuses()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_all(sessions).await
}

/// Every honest node reached the target, and was not wrecked by what the tamperer sent since:
/// the nodes train on after the target, so held-out accuracy moves a few points (91.7 % seen
/// under load), while a merged attack drives it to a few percent (7 % without robust merging).
fn assert_honest_held(statuses: &[NodeStatus]) {
    for (i, s) in statuses[..4].iter().enumerate() {
        assert!(
            s.worker.reached_target && accuracy(s) >= 0.85,
            "honest node {i}: reached {}, accuracy now {} (round {}, steps {}, counts {:?})",
            s.worker.reached_target,
            accuracy(s),
            s.worker.round,
            s.worker.steps,
            s.worker.counts
        );
    }
}

/// Deltas the honest nodes rejected for `reason`.
fn rejected(honest: &[NodeStatus], reason: Rejection) -> u64 {
    honest
        .iter()
        .map(|s| s.worker.counts.rejected.get(&reason).copied().unwrap_or(0))
        .sum()
}

/// Scaled deltas the honest nodes rejected as norm outliers.
fn outliers(honest: &[NodeStatus]) -> u64 {
    rejected(honest, Rejection::NormOutlier)
}

/// Deltas the honest nodes folded into a queued one of the same sender.
fn folded(honest: &[NodeStatus]) -> u64 {
    honest.iter().map(|s| s.worker.counts.folded).sum()
}

/// Merged deltas whose weight the honest nodes clipped.
fn capped(honest: &[NodeStatus]) -> u64 {
    honest.iter().map(|s| s.worker.counts.capped).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_nodes_reach_95_percent_despite_a_node_scaling_its_deltas_by_100() {
    let statuses = run_with(Tamper::Scale(100.0), 50, |_, now| outliers(now) > 0).await;
    assert_honest_held(&statuses);
    assert!(
        outliers(&statuses[..4]) > 0,
        "scaled deltas must be rejected as norm outliers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_nodes_reach_95_percent_despite_a_node_flipping_its_deltas() {
    // A few more merges each after the target, with the tamperer's flipped deltas among them.
    let merged_more = |then: &[NodeStatus], now: &[NodeStatus]| {
        then.iter()
            .zip(now)
            .all(|(a, b)| b.worker.counts.merged >= a.worker.counts.merged + 3)
    };
    let statuses = run_with(Tamper::Flip, 60, merged_more).await;
    assert_honest_held(&statuses);
}

/// Weight attack: the untrained model at weight `f64::MAX`. Before the weight cap, two such
/// deltas made a receiver's mass infinite and its next sync failed to sign, ending training.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_nodes_reach_95_percent_despite_a_node_claiming_the_largest_weight() {
    let statuses = run_with(Tamper::Weight, 70, |_, now| capped(now) >= 4).await;
    assert_honest_held(&statuses);
    assert!(capped(&statuses[..4]) > 0, "the huge weights were clipped");
    for (i, s) in statuses[..4].iter().enumerate() {
        assert!(
            s.worker.mass.is_finite() && s.worker.mass <= MAX_MASS,
            "honest node {i}: mass {}",
            s.worker.mass
        );
    }
}

/// Round-jump attack: deltas claiming a round 2⁴⁰ ahead. Before the lead bound, they dragged
/// every receiver's clock there, so honest deltas were refused as stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_nodes_reach_95_percent_despite_a_node_jumping_rounds() {
    let statuses = run_with(Tamper::RoundJump, 80, |_, now| {
        rejected(now, Rejection::TooFarAhead) >= 4
    })
    .await;
    for (i, s) in statuses[..4].iter().enumerate() {
        assert!(
            s.worker.round < 1 << 20,
            "honest node {i}: clock captured at round {}",
            s.worker.round
        );
    }
    assert_honest_held(&statuses);
    assert!(rejected(&statuses[..4], Rejection::TooFarAhead) > 0);
}

/// Replay flood: each sign-flipped delta re-signed for the next 8 rounds and every copy sent
/// twice. The replay set refuses the byte-for-byte copies and each sender's copies fold into
/// its one place in the queue, so the flood counts as one delta per sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_nodes_reach_95_percent_despite_a_node_flooding_replayed_deltas() {
    let statuses = run_with(Tamper::ReplayFlood, 90, |_, now| {
        rejected(now, Rejection::Replay) >= 4 && folded(now) >= 4
    })
    .await;
    assert_honest_held(&statuses);
    assert!(
        rejected(&statuses[..4], Rejection::Replay) > 0,
        "byte-for-byte copies are refused as replays"
    );
    assert!(folded(&statuses[..4]) > 0, "re-signed copies are folded");
    for (i, s) in statuses[..4].iter().enumerate() {
        // Each sync merges one delta per sender at most: the flood adds no merges.
        let syncs = s.worker.round + 1;
        assert!(
            s.worker.counts.merged <= 4 * syncs,
            "honest node {i}: {} merges in {syncs} syncs",
            s.worker.counts.merged
        );
    }
}

/// Sybils: two fresh identities flipping their deltas alongside four honest nodes (a third
/// of the peers), until the honest nodes used their step budgets and averaged on idle — the
/// phase where, before, the sybils (still sending while the agreeing honest nodes had gone
/// quiet) dragged every honest model back to the untrained one within seconds. The clipping
/// radius is the median over senders (one voice each), peers silent this time count as
/// votes for the own model, and models far further away than the senders' typical distance
/// are refused as `distant`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_nodes_reach_93_percent_despite_two_sybils_flipping_together() {
    let idle_and_merged_more = |then: &[NodeStatus], now: &[NodeStatus]| {
        then.iter().zip(now).all(|(a, b)| {
            !b.worker.training && b.worker.counts.merged >= a.worker.counts.merged + 20
        }) && rejected(now, Rejection::Distant) >= 20
    };
    // Two sybils of six cost about a point while training (one node was seen to peak at
    // 93.3 % once in six runs): the target is 93 %.
    let statuses = run_with_many(Tamper::Flip, 2, 0.93, 100, idle_and_merged_more).await;
    assert_honest_held(&statuses);
    assert!(
        rejected(&statuses[..4], Rejection::Distant) > 0,
        "the flipped models are refused as distant"
    );
}

/// Slow loris: a node trains and sends honestly, but holds eight delta streams open at every
/// peer, writing one byte to each every 2 s and opening new ones as they are dropped. Each
/// receiver reads at most half its inbound streams from one peer, fails a stream that moves
/// less than 16 KiB per stall timeout, and scores the stalls: the honest nodes reach the
/// target, keep merging each other's deltas, and their sends get through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_nodes_reach_95_percent_despite_a_node_holding_their_streams_open() {
    let merged_more = |then: &[NodeStatus], now: &[NodeStatus]| {
        then.iter()
            .zip(now)
            .all(|(a, b)| b.worker.counts.merged >= a.worker.counts.merged + 10)
    };
    let statuses = run_with(Tamper::SlowLoris, 110, merged_more).await;
    assert_honest_held(&statuses);
    // Honest deltas find a place at their receivers (without the per-peer share: 113–132
    // failed sends per node against 46–61 delivered, and a node that merged nothing).
    for (i, s) in statuses[..4].iter().enumerate() {
        assert!(
            2 * s.send_failures <= s.deltas_sent,
            "honest node {i}: {} of {} sends failed",
            s.send_failures,
            s.deltas_sent
        );
    }
}
