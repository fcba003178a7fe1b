//! A node that joins late downloads the current model state from a peer (digest-checked,
//! range by range), jumps to its round, and reaches the accuracy of the others.

mod train_common;

use std::time::Duration;

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
