//! Push-sum conserves the network's weighted total when a send fails: the returned
//! delta's model comes back with its mass, even after the sender synced again.

mod support;

use murmur_node::averaging::Averager;
use support::LEN;

/// The fixture averager of node `secret` with initial mass `mass`.
fn averager(secret: u8, mass: f64) -> (Averager, libp2p::PeerId) {
    support::averager(secret, |c| c.initial_mass = mass)
}

fn weighted_total(nodes: &[(&Averager, &[f32])]) -> f64 {
    nodes.iter().map(|(a, x)| a.mass() * f64::from(x[0])).sum()
}

#[test]
fn a_failed_send_returns_its_model_and_mass_after_later_syncs() {
    let (mut a, _) = averager(1, 100.0);
    let (mut b, b_id) = averager(2, 300.0);
    let (mut xa, mut xb) = (vec![1.0f32; LEN], vec![3.0f32; LEN]);
    let before = weighted_total(&[(&a, &xa), (&b, &xb)]);

    // A sends half its share; the send will fail.
    let lost = a.sync(&mut xa, 0, 0, 1).expect("sync").expect("a message");
    // B's send reaches A, and A merges it in a later sync (a new round).
    let to_a = b.sync(&mut xb, 0, 0, 1).expect("sync").expect("a message");
    a.receive(&b_id, &to_a.header, &to_a.payload)
        .expect("accepted");
    assert!(a.sync(&mut xa, 0, 0, 0).expect("sync").is_none());
    assert!((xa[0] - 2.5).abs() < 1e-6, "merged: {}", xa[0]);

    // Only now does A learn its first send failed.
    a.returned(&lost, &mut xa);
    let after = weighted_total(&[(&a, &xa), (&b, &xb)]);
    assert!(
        (after - before).abs() < 1e-6 * before,
        "weighted total {after} != {before}"
    );
    assert!((a.mass() - 250.0).abs() < 1e-9);
    assert!((xa[0] - 2.2).abs() < 1e-6, "returned: {}", xa[0]);
    assert!(xa.iter().all(|v| (v - xa[0]).abs() < 1e-6));
}

#[test]
fn a_send_from_before_an_adopted_state_is_dropped() {
    let (mut a, _) = averager(1, 100.0);
    let mut xa = vec![1.0f32; LEN];
    let lost = a.sync(&mut xa, 0, 0, 1).expect("sync").expect("a message");
    a.adopt(10);
    let mut adopted = vec![7.0f32; LEN];
    a.returned(&lost, &mut adopted);
    assert!(adopted.iter().all(|v| *v == 7.0));
    assert_eq!(a.mass(), 0.0);
}
