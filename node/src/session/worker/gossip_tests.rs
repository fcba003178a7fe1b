//! Push-sum state without a network: recipients, back-pressure, failed sends, idle rounds.

use std::time::Instant;

use rand::SeedableRng;

use super::*;
use crate::session::worker::tests::{Fixture, LEN, averager};

fn push_sum(fixture: &Fixture) -> PushSum {
    PushSum::new(StdRng::seed_from_u64(1), fixture.in_flight.clone())
}

/// The one delta send among `outputs`.
fn the_send(outputs: Vec<WorkerOutput>) -> (Vec<PeerId>, Outgoing) {
    let mut sends: Vec<_> = outputs
        .into_iter()
        .filter_map(|o| match o {
            WorkerOutput::Send { peers, outgoing } => Some((peers, outgoing)),
            _ => None,
        })
        .collect();
    assert_eq!(sends.len(), 1, "one send");
    sends.remove(0)
}

/// The send tasks finished their sends to `peers`.
fn delivered(fixture: &Fixture, peers: &[PeerId]) {
    for peer in peers {
        drop(fixture.in_flight.slot(*peer));
    }
}

#[test]
fn a_due_sync_sends_and_a_failed_send_returns_its_model_and_mass() {
    let mut f = Fixture::new(averager(1, |_| {}).0);
    let mut ps = push_sum(&f);
    let a = PeerId::random();
    f.live_peers.replace(vec![a], 0, true);
    f.shared.samples_since_sync = 5;
    f.shared.steps_since_sync = 2;
    ps.trained(&mut f.shared, true).expect("sync");
    let (peers, outgoing) = the_send(f.sent());
    assert_eq!(peers, vec![a]);
    assert!(f.in_flight.busy(&a));
    assert_eq!(f.shared.averager.round(), 1);
    assert_eq!(f.shared.status.trained_rounds, 1);
    assert_eq!(f.shared.steps_since_sync, 0);
    // Mass 10 plus 5 fresh samples, half of it sent.
    assert!((f.shared.averager.mass() - 7.5).abs() < 1e-9);
    assert!((outgoing.mass_each - 7.5).abs() < 1e-9);
    assert!(!ps.has_news(&f.shared), "the only peer was told");

    ps.send_failed(&mut f.shared, &outgoing).expect("returned");
    assert!((f.shared.averager.mass() - 15.0).abs() < 1e-9);
    assert!(f.params().iter().all(|v| (v - 1.0).abs() < 1e-6));
    assert!(ps.has_news(&f.shared), "the peer never got the model");
}

#[test]
fn peers_told_the_model_are_not_chosen_again_until_it_changes() {
    let mut f = Fixture::new(averager(1, |_| {}).0);
    let mut ps = push_sum(&f);
    let (a, b) = (PeerId::random(), PeerId::random());
    f.live_peers.replace(vec![a, b], 0, true);
    ps.sync(&mut f.shared).expect("sync");
    let (first, _) = the_send(f.sent());
    delivered(&f, &first);
    ps.sync(&mut f.shared).expect("sync");
    let (second, _) = the_send(f.sent());
    delivered(&f, &second);
    let mut both = [first, second].concat();
    both.sort();
    let mut expected = vec![a, b];
    expected.sort();
    assert_eq!(both, expected, "each peer told once");
    assert!(
        ps.choose_peers(&f.shared).is_empty(),
        "everyone has the model"
    );
    ps.sync(&mut f.shared).expect("sync");
    assert!(
        f.sent().is_empty(),
        "a sync with nobody to tell sends nothing"
    );

    // A local step changes the model: news for every peer again.
    ps.trained(&mut f.shared, false).expect("step");
    assert_eq!(ps.choose_peers(&f.shared).len(), 1);
}

#[test]
fn no_new_fanout_while_one_is_in_flight_and_no_second_send_to_a_busy_peer() {
    let (a, b) = (PeerId::random(), PeerId::random());
    let f = Fixture::new(averager(1, |c| c.fanout = 1).0);
    let mut ps = push_sum(&f);
    f.live_peers.replace(vec![a, b], 0, true);
    f.in_flight.begin(&[a]);
    assert!(
        ps.choose_peers(&f.shared).is_empty(),
        "whole fan-out in flight"
    );

    let mut f = Fixture::new(averager(1, |c| c.fanout = 2).0);
    let mut ps = push_sum(&f);
    f.live_peers.replace(vec![a, b], 0, true);
    f.in_flight.begin(&[a]);
    assert_eq!(ps.choose_peers(&f.shared), vec![b], "a still receives");
    // The sync still merges and advances the round; it only sends less.
    ps.sync(&mut f.shared).expect("sync");
    let (peers, _) = the_send(f.sent());
    assert_eq!(peers, vec![b]);
    assert_eq!(f.shared.averager.round(), 1);
}

#[test]
fn an_idle_node_without_news_skips_its_sync() {
    let mut f = Fixture::new(averager(1, |_| {}).0);
    let mut ps = push_sum(&f);
    let a = PeerId::random();
    f.live_peers.replace(vec![a], 0, true);
    f.shared.status.training = false;
    f.shared.averager.set_training(false);
    ps.idle_timeout(&mut f.shared).expect("idle sync");
    let (peers, _) = the_send(f.sent());
    assert_eq!(peers, vec![a], "a model nobody has is news");
    assert_eq!(f.shared.averager.round(), 1);

    // While the send is in flight the node waits.
    ps.idle_timeout(&mut f.shared).expect("idle sync");
    assert!(f.sent().is_empty());
    delivered(&f, &peers);
    // Delivered, the peer has the model: nothing to merge, no news, no sync.
    ps.idle_timeout(&mut f.shared).expect("idle sync");
    assert!(f.sent().is_empty());
    assert_eq!(f.shared.averager.round(), 1, "the round clock stays");
}

#[test]
fn an_idle_node_merges_once_every_live_peer_delta_is_here() {
    let (mut f, b) = {
        let (mut peer, b) = averager(2, |_| {});
        let mut values = vec![3.0f32; LEN];
        let outgoing = peer
            .sync(&mut values, 0, 0, 1)
            .expect("sync")
            .expect("sent");
        let mut f = Fixture::new(averager(1, |_| {}).0);
        f.shared.averager.set_training(false);
        f.shared
            .averager
            .receive(&b, &outgoing.header, &outgoing.payload)
            .expect("accepted");
        (f, b)
    };
    let mut ps = push_sum(&f);
    f.shared.status.training = false;
    ps.delta_queued();
    let c = PeerId::random();
    f.live_peers.replace(vec![b, c], 0, true);
    ps.idle_input(&mut f.shared).expect("input");
    assert_eq!(f.shared.averager.pending(), 1, "waits for c's delta");
    assert!(f.sent().is_empty());

    f.live_peers.replace(vec![b], 0, true);
    ps.idle_input(&mut f.shared).expect("input");
    assert_eq!(f.shared.averager.pending(), 0);
    assert_eq!(f.shared.averager.counts().merged, 1);
    // Masses 10 and 5 at 1.0 and 3.0.
    let expected = (10.0 * 1.0 + 5.0 * 3.0) / 15.0;
    assert!(f.params().iter().all(|v| (v - expected).abs() < 1e-5));
    let (peers, _) = the_send(f.sent());
    assert_eq!(peers, vec![b], "the merged model is news");
    assert!(ps.pending_since.is_none());
}

#[test]
fn the_rest_of_a_round_is_waited_for_about_one_fanout_time() {
    let f = Fixture::new(averager(1, |_| {}).0);
    let mut ps = push_sum(&f);
    f.live_peers
        .replace(vec![PeerId::random(), PeerId::random()], 0, true);
    ps.fanout_took = Duration::from_secs(60);
    ps.pending_since = Some(Instant::now());
    assert!(
        ps.waits(&f.shared),
        "a delta just arrived; the others follow"
    );
    ps.pending_since = Instant::now().checked_sub(Duration::from_secs(61));
    assert!(!ps.waits(&f.shared), "waited long enough");
}

#[test]
fn adopting_a_state_forgets_the_round_and_who_was_told() {
    let mut f = Fixture::new(averager(1, |_| {}).0);
    let mut ps = push_sum(&f);
    let a = PeerId::random();
    f.live_peers.replace(vec![a], 0, true);
    ps.sync(&mut f.shared).expect("sync");
    ps.delta_queued();
    assert!(!ps.has_news(&f.shared));
    ps.adopted();
    assert!(ps.pending_since.is_none());
    assert!(ps.has_news(&f.shared));
}
