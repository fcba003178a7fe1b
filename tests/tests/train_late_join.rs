//! A node that joins late downloads the current model state from its peers (digest-checked,
//! range by range), adopts what independent peers agree on, jumps to its round, and reaches
//! the accuracy of the others — and a peer serving a poisoned state does not capture it.

mod train_common;

use std::time::Duration;

use murmur_node::adversary::Tamper;
use train_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_adopts_the_state_and_reaches_the_others_accuracy() {
    let budget = 600;
    let mut early = Vec::new();
    let mut bootstrap = Vec::new();
    for i in 0..2u8 {
        let (replica, anchor, model) = digits_replica(usize::from(i), 3, budget);
        let cfg = config(model, &bootstrap, worker(10, budget, u64::from(i)));
        let session = start(100 + i, None, replica, anchor, cfg).await;
        if i == 0 {
            bootstrap.push(addr(&session).await);
        }
        early.push(session);
    }
    let refs: Vec<_> = early.iter().collect();
    let progressed = wait_all(&refs, Duration::from_secs(40), |s| {
        s.worker.round >= 30 && !s.worker.training
    })
    .await;
    assert!(
        progressed,
        "the first nodes make progress: {:?}",
        early
            .iter()
            .map(|s| s.status().borrow().clone())
            .collect::<Vec<_>>()
    );
    let leader_round = early
        .iter()
        .map(|s| s.status().borrow().worker.round)
        .min()
        .unwrap_or(0);
    let leader_accuracy = early
        .iter()
        .map(|s| accuracy(&s.status().borrow()))
        .fold(1.0, f32::min);
    // Typically 0.95–0.96; under a loaded machine (the whole suite in parallel) the two
    // leaders' merges are staler and 0.939 was seen. Only a precondition: the joiner's 30
    // local steps alone reach 0.74.
    assert!(
        leader_accuracy >= 0.92,
        "the first nodes train well: {leader_accuracy}"
    );

    // What the leaders adopted before the newcomer came (one may rightly have adopted the
    // other's state if it started late on a loaded machine).
    let leaders_adoptions = || -> Vec<Option<u64>> {
        early
            .iter()
            .map(|l| l.status().borrow().worker.adopted_round)
            .collect()
    };
    let adopted_before = leaders_adoptions();

    // The newcomer may train only 30 local steps: without the download it cannot get there.
    let (replica, anchor, model) = digits_replica(2, 3, 30);
    let cfg = config(model, &bootstrap, worker(10, 30, 2));
    let late = start(102, None, replica, anchor, cfg).await;
    // The leaders keep merging each other's last deltas (and re-evaluating), so compare
    // with their accuracy at the same moment rather than with the snapshot above.
    let joined = wait_all(&[&late], Duration::from_secs(30), |s| {
        let leaders_now = early
            .iter()
            .map(|l| accuracy(&l.status().borrow()))
            .fold(1.0, f32::min);
        s.worker.adopted_round.is_some()
            && s.worker.round >= leader_round
            && accuracy(s) >= 0.9
            && accuracy(s) >= leaders_now.min(leader_accuracy) - 0.01
    })
    .await;
    let status = late.status().borrow().clone();
    let leaders_now: Vec<f32> = early
        .iter()
        .map(|l| accuracy(&l.status().borrow()))
        .collect();
    let leaders_adopted = leaders_adoptions();
    let _ = tokio::time::timeout(Duration::from_secs(15), late.stop()).await;
    for s in early {
        let _ = tokio::time::timeout(Duration::from_secs(15), s.stop()).await;
    }
    assert!(
        joined,
        "late joiner at round {} (adopted {:?}; leaders at {leader_round}, accuracy \
         {leader_accuracy}, now {leaders_now:?}), accuracy {}",
        status.worker.round,
        status.worker.adopted_round,
        accuracy(&status)
    );
    assert!(status.worker.steps <= 30);
    // The leaders trained all along: a newcomer carried to a higher round by merges must
    // not look ahead of them, or they would adopt its barely trained model.
    assert_eq!(
        leaders_adopted, adopted_before,
        "a leader adopted a state after the newcomer came"
    );
    assert!(
        status
            .worker
            .adopted_round
            .is_some_and(|r| r + 8 >= leader_round),
        "the late joiner downloaded a peer's state: {:?}",
        status.worker.adopted_round
    );
}

/// Late-join capture: beside two honest leaders, a peer that averages honestly but announces
/// a round 32 ahead (within the lead bound, so a newcomer asks it first) and serves a
/// sign-flipped model. The newcomer downloads from all three and adopts only what the two
/// independent leaders agree on; before the cross-check it adopted the highest round's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_is_not_captured_by_a_peer_serving_a_poisoned_state() {
    let budget = 600;
    let mut early = Vec::new();
    let mut bootstrap = Vec::new();
    for i in 0..3u8 {
        let (replica, anchor, model) = digits_replica(usize::from(i), 3, budget);
        let mut cfg = config(model, &bootstrap, worker(10, budget, u64::from(i)));
        if i == 2 {
            cfg.tamper = Some(Tamper::LateJoinCapture);
        }
        let session = start(110 + i, None, replica, anchor, cfg).await;
        if i == 0 {
            bootstrap.push(addr(&session).await);
        }
        early.push(session);
    }
    let leaders: Vec<_> = early.iter().take(2).collect();
    let progressed = wait_all(&leaders, Duration::from_secs(40), |s| {
        s.worker.round >= 30 && accuracy(s) >= 0.9
    })
    .await;
    assert!(progressed, "the leaders make progress");
    let (honest, attacker) = (
        [identity(110).peer_id(), identity(111).peer_id()],
        identity(112).peer_id(),
    );

    let (replica, anchor, model) = digits_replica(0, 3, 30);
    let cfg = config(model, &bootstrap, worker(10, 30, 3));
    let late = start(113, None, replica, anchor, cfg).await;
    let joined = wait_all(&[&late], Duration::from_secs(30), |s| {
        s.worker.adopted_round.is_some()
    })
    .await;
    let status = late.status().borrow().clone();
    let _ = tokio::time::timeout(Duration::from_secs(15), late.stop()).await;
    let finals = stop_all(early).await;
    assert!(joined, "the late joiner adopted a state: {status:?}");
    assert!(
        !status.worker.adopted_from.contains(&attacker),
        "captured by the poisoned state: adopted from {:?}",
        status.worker.adopted_from
    );
    let mut from = status.worker.adopted_from.clone();
    from.sort();
    let mut expected = honest.to_vec();
    expected.sort();
    assert_eq!(from, expected, "adopted what the two leaders agree on");
    assert!(
        accuracy(&status) >= 0.85,
        "the adopted state is the leaders' trained model: accuracy {}",
        accuracy(&status)
    );
    assert!(
        finals.iter().all(|f| f.worker.adopted_from.is_empty() || !f.worker.adopted_from.contains(&attacker)),
        "no leader adopted the poisoned state either"
    );
}
