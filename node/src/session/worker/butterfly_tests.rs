//! Butterfly round state without a network: when a round is due, when it waits for the
//! group, and what starting one does.

use std::time::Instant;

use crate::averaging::ButterflyConfig;
use crate::session::worker::tests::{Fixture, LEN, averager};

use super::*;

fn rounds(f: &Fixture) -> Rounds {
    let (key, me) = f.shared.averager.signer();
    let local = crate::identity::peer_id_of(&me).expect("peer id");
    let butterfly = Butterfly::new(
        ButterflyConfig::default(),
        f.shared.averager.config(),
        key.clone(),
        local,
        LEN,
    );
    Rounds::new(butterfly, local)
}

fn fixture() -> Fixture {
    Fixture::new(averager(1, |c| c.butterfly = Some(ButterflyConfig::default())).0)
}

/// `live` becomes the live set, settled.
fn settle(f: &Fixture, live: Vec<PeerId>) {
    f.live_peers.replace(live, 0, true);
    std::thread::sleep(Duration::from_millis(200));
    assert!(f.live_peers.settled());
}

/// The idle period is over.
fn idle_period_over(f: &mut Fixture) {
    let idle = f.shared.config.idle_sync;
    f.shared.last_sync = Instant::now()
        .checked_sub(idle + Duration::from_millis(1))
        .expect("an instant in the past");
}

fn part_sends(outputs: &[WorkerOutput]) -> usize {
    outputs
        .iter()
        .filter(|o| matches!(o, WorkerOutput::SendParts(_)))
        .count()
}

#[test]
fn an_idle_round_is_due_only_when_the_group_may_not_hold_one_mean() {
    let mut f = fixture();
    let mut r = rounds(&f);
    idle_period_over(&mut f);
    assert!(!r.idle_due(&f.shared), "alone");
    let a = PeerId::random();
    f.live_peers.replace(vec![a], 0, true);
    assert!(r.idle_due(&f.shared), "no round yet");

    let mut group = vec![a, r.local];
    group.sort();
    r.last_round = Some(RoundEnd {
        round: 0,
        complete: true,
        group,
    });
    r.dirty = false;
    assert!(!r.idle_due(&f.shared), "the group holds one mean");
    r.dirty = true;
    assert!(r.idle_due(&f.shared), "the model changed");
    r.dirty = false;
    r.last_round.as_mut().expect("a round").complete = false;
    assert!(r.idle_due(&f.shared), "the last round was incomplete");
    r.last_round.as_mut().expect("a round").complete = true;
    f.live_peers.replace(vec![a, PeerId::random()], 0, true);
    assert!(r.idle_due(&f.shared), "the group changed");

    f.shared.last_sync = Instant::now();
    assert!(!r.idle_due(&f.shared), "the idle period is not over");
}

#[test]
fn a_due_round_waits_for_the_group_to_settle_and_looks_again_soon() {
    let mut f = fixture();
    let mut r = rounds(&f);
    f.live_peers.replace(vec![PeerId::random()], 0, true);
    assert!(!f.live_peers.settled());
    r.trained(&mut f.shared, true).expect("step");
    assert_eq!(f.shared.status.butterfly_rounds_started, 0);
    assert!(r.round_due_since.is_some());
    assert!(r.wait(Duration::from_secs(5)) <= SETTLE_LOOK);
    // No longer due: the wait is over.
    r.trained(&mut f.shared, false).expect("step");
    assert!(r.round_due_since.is_none());
    assert_eq!(r.wait(Duration::from_secs(5)), Duration::from_secs(5));
}

#[test]
fn a_due_round_starts_on_a_settled_group_and_sends_its_contributions() {
    let mut f = fixture();
    let mut r = rounds(&f);
    settle(&f, vec![PeerId::random()]);
    f.shared.samples_since_sync = 6;
    f.shared.steps_since_sync = 3;
    r.trained(&mut f.shared, true).expect("step");
    assert_eq!(f.shared.status.butterfly_rounds_started, 1);
    assert_eq!(f.shared.status.trained_rounds, 1);
    assert_eq!(f.shared.steps_since_sync, 0);
    assert_eq!(f.shared.samples_since_sync, 0);
    assert!(
        (f.shared.averager.mass() - 16.0).abs() < 1e-9,
        "samples add mass"
    );
    assert!(!r.dirty);
    assert!(r.butterfly.busy());
    assert_eq!(part_sends(&f.sent()), 1);
    assert!(
        r.wait(Duration::from_secs(60)) < Duration::from_secs(60),
        "round deadline"
    );

    // A round in progress is not started again.
    r.trained(&mut f.shared, true).expect("step");
    assert_eq!(f.shared.status.butterfly_rounds_started, 1);
}

#[test]
fn a_round_without_peers_does_not_start() {
    let mut f = fixture();
    let mut r = rounds(&f);
    r.trained(&mut f.shared, true).expect("step");
    assert_eq!(f.shared.status.butterfly_rounds_started, 0);
    assert!(f.sent().is_empty());
}

#[test]
fn an_idle_node_with_nothing_due_waits_a_whole_period_again() {
    let mut f = fixture();
    let mut r = rounds(&f);
    idle_period_over(&mut f);
    assert_eq!(r.idle_wait(&f.shared), f.shared.config.idle_sync);
    r.idle_timeout(&mut f.shared).expect("timeout");
    assert!(f.shared.last_sync.elapsed() < f.shared.config.idle_sync);
    assert_eq!(f.shared.status.butterfly_rounds_started, 0);
}

#[test]
fn adopting_a_state_abandons_the_round_and_makes_the_model_news() {
    let mut f = fixture();
    let mut r = rounds(&f);
    settle(&f, vec![PeerId::random()]);
    r.trained(&mut f.shared, true).expect("step");
    assert!(r.butterfly.busy());
    r.adopted();
    assert!(!r.butterfly.busy());
    assert!(r.dirty);
}
