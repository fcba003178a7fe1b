//! Butterfly averaging between real sessions on loopback: with training off, nodes holding
//! different vectors and masses end with the same sample-weighted mean (exactly, with the
//! raw codec) and then stop sending (two nodes after exactly one round); a node that
//! vanishes does not stall the others; and a gossip-training run averaged in butterfly
//! rounds reaches the accuracy target.

mod train_common;

use std::time::Duration;

use murmur_node::averaging::ButterflyConfig;
use murmur_node::session::Session;
use murmur_node::session::replica::VectorReplica;
use murmur_protocol::{Codec, ModelFingerprint};
use train_common::*;

const LEN: usize = 10_007;
/// How long an idle node waits between looks at its group (the tests' default).
const IDLE: Duration = Duration::from_millis(100);

fn vector(i: usize) -> Vec<f32> {
    (0..LEN)
        .map(|j| (i as f32 + 1.0) * (1.0 + (j % 13) as f32 * 0.25))
        .collect()
}

async fn averaging_nodes(
    masses: &[f64],
    seed: u8,
    butterfly: ButterflyConfig,
    idle_sync: Duration,
) -> Vec<Session> {
    let model = ModelFingerprint([5; 32]);
    let mut sessions = Vec::new();
    let mut bootstrap = Vec::new();
    for (i, mass) in masses.iter().enumerate() {
        let mut cfg = config(model, &bootstrap, worker(1, 0, i as u64));
        cfg.worker.idle_sync = idle_sync;
        cfg.averager.initial_mass = *mass;
        cfg.averager.butterfly = Some(butterfly);
        let replica = Box::new(VectorReplica(vector(i)));
        let session = start(seed + i as u8, None, replica, vec![0.0; LEN], cfg).await;
        if i == 0 {
            bootstrap.push(addr(&session).await);
        }
        sessions.push(session);
    }
    sessions
}

async fn params(sessions: &[Session]) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    for s in sessions {
        out.push(s.snapshot().await.expect("snapshot").params);
    }
    out
}

fn bytes_sent(sessions: &[Session]) -> u64 {
    sessions
        .iter()
        .map(|s| s.status().borrow().bytes_sent)
        .sum()
}

/// Waits (at most 15 s) for a second in which no node sends a byte; returns whether one came.
async fn go_quiet(sessions: &[Session]) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut before = bytes_sent(sessions);
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = bytes_sent(sessions);
        if now == before {
            return true;
        }
        before = now;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn butterfly_rounds_give_every_node_the_same_weighted_mean_then_go_quiet() {
    let masses = [100.0, 300.0, 50.0, 550.0];
    let total: f64 = masses.iter().sum();
    let expected: Vec<f64> = (0..LEN)
        .map(|j| {
            masses
                .iter()
                .enumerate()
                .map(|(i, m)| m * f64::from(vector(i)[j]))
                .sum::<f64>()
                / total
        })
        .collect();
    let butterfly = ButterflyConfig {
        codec: Codec::RawF32,
        window: Duration::from_secs(2),
    };
    let sessions = averaging_nodes(&masses, 60, butterfly, IDLE).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut worst = f64::INFINITY;
    while tokio::time::Instant::now() < deadline {
        worst = params(&sessions)
            .await
            .iter()
            .flat_map(|p| p.iter().zip(&expected))
            .map(|(v, e)| (f64::from(*v) - e).abs() / e)
            .fold(0.0, f64::max);
        if worst < 1e-5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Once the group holds one mean, nobody starts another round.
    let quiet = go_quiet(&sessions).await;
    // Quiet: every round is over; the values the group settled on.
    let settled = params(&sessions).await;
    let statuses = stop_all(sessions).await;
    assert!(worst < 1e-5, "worst relative error {worst}; {statuses:?}");
    assert!(
        settled.iter().all(|p| *p == settled[0]),
        "every node holds the very same values; {statuses:?}"
    );
    assert!(quiet, "nodes that agree stop sending; {statuses:?}");
    for (st, mass) in statuses.iter().zip(masses) {
        assert_eq!(st.worker.mass, mass, "averaging leaves masses alone");
        assert!(st.worker.counts.merged > 0, "{st:?}");
        // Only refusals from moments when the views of the group differed.
        let rejected = &st.worker.counts.rejected;
        let harmless = rejected
            .iter()
            .filter(|(r, _)| {
                matches!(
                    r,
                    murmur_node::averaging::Rejection::PartMismatch
                        | murmur_node::averaging::Rejection::Stale
                )
            })
            .map(|(_, n)| n)
            .sum::<u64>();
        assert_eq!(harmless, st.worker.counts.rejected_total(), "{st:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_idle_nodes_agree_in_one_round_and_start_no_other() {
    let butterfly = ButterflyConfig {
        codec: Codec::RawF32,
        // Long enough for a slow first round on a loaded machine to complete (a round
        // ends as soon as its means are in).
        window: Duration::from_secs(10),
    };
    let sessions = averaging_nodes(&[1.0, 3.0], 65, butterfly, Duration::from_millis(1)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut agree = false;
    while !agree && tokio::time::Instant::now() < deadline {
        let now = params(&sessions).await;
        agree = now[0] == now[1] && now[0] != vector(0);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let quiet = go_quiet(&sessions).await;
    let statuses = stop_all(sessions).await;
    assert!(agree, "the two nodes agree; {statuses:?}");
    assert!(quiet, "{statuses:?}");
    // One complete round gives both the same mean: a node whose round just ended with its
    // whole group has no news, and starts no second round (even though its idle period,
    // 1 ms, is long over when the round ends).
    for st in &statuses {
        assert_eq!(st.worker.butterfly_rounds_started, 1, "{st:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_vanishes_does_not_stall_the_others() {
    let masses = [1.0, 2.0, 3.0, 4.0];
    let butterfly = ButterflyConfig {
        codec: Codec::F16,
        window: Duration::from_secs(1),
    };
    let mut sessions = averaging_nodes(&masses, 70, butterfly, IDLE).await;
    let all: Vec<&Session> = sessions.iter().collect();
    assert!(
        wait_all(&all, Duration::from_secs(20), |s| s.peers == 3).await,
        "peers discover each other"
    );
    // Gone without a word while rounds are under way.
    let gone = sessions.pop().expect("four sessions");
    let _ = tokio::time::timeout(Duration::from_secs(15), gone.stop()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut spread = f64::INFINITY;
    let mut last = Vec::new();
    while tokio::time::Instant::now() < deadline {
        last = params(&sessions).await;
        spread = (0..LEN)
            .map(|j| {
                let values = last.iter().map(|p| f64::from(p[j]));
                let max = values.clone().fold(f64::MIN, f64::max);
                let min = values.fold(f64::MAX, f64::min);
                (max - min) / max.abs().max(1e-9)
            })
            .fold(0.0, f64::max);
        if spread < 1e-3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let statuses = stop_all(sessions).await;
    assert!(
        spread < 1e-3,
        "survivors agree: spread {spread}; {statuses:?}"
    );
    // A weighted mean of the starting vectors: between the smallest and the largest.
    for (j, v) in last[0].iter().enumerate() {
        assert!(v.is_finite());
        assert!(
            *v >= vector(0)[j] * 0.999 && *v <= vector(3)[j] * 1.001,
            "{j}: {v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_nodes_training_in_butterfly_rounds_all_reach_96_percent() {
    // As the gossip test: 1000 local steps each on a quarter of the digits.
    let budget = 1000;
    let sessions = digit_nodes(4, budget, 80, |config| {
        config.averager.butterfly = Some(ButterflyConfig::default());
    })
    .await;
    let (reached, finals) = train_to_target(sessions, Duration::from_secs(45)).await;
    assert_all_reached(reached, &finals, budget);
}

/// Butterfly takeover: a fifth node outside the pool takes part in butterfly rounds with every
/// part it sends — contributions and the means of parts it owns — sign-flipped and ×4. A
/// closed pool (what `--butterfly` requires) refuses its parts on the header and never counts
/// it in a group: every member reaches 96 % and counts the refusals. (In an open run the
/// stranger joined the groups: the members' models were dragged away — checked by opening
/// the pool; see docs/security.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_in_butterfly_rounds_is_refused_by_the_closed_pool() {
    use murmur_node::adversary::Tamper;
    use murmur_node::averaging::Admission;
    let (budget, seed) = (1000, 120u8);
    let members: std::collections::BTreeSet<_> =
        (0..4).map(|i| identity(seed + i).peer_key()).collect();
    let mut sessions = Vec::new();
    let mut bootstrap = Vec::new();
    for i in 0..5u8 {
        let (replica, anchor, model) = digits_replica(usize::from(i.min(3)), 4, budget);
        let mut cfg = config(model, &bootstrap, worker(25, budget, u64::from(i)));
        cfg.averager.butterfly = Some(ButterflyConfig::default());
        cfg.averager.admission = Admission::Closed(members.clone());
        if i == 4 {
            cfg.tamper = Some(Tamper::ButterflyTakeover);
        }
        let session = start(seed + i, None, replica, anchor, cfg).await;
        if i == 0 {
            bootstrap.push(addr(&session).await);
        }
        sessions.push(session);
    }
    let attacker = sessions.pop().expect("five sessions");
    let (reached, finals) = train_to_target(sessions, Duration::from_secs(45)).await;
    let _ = tokio::time::timeout(Duration::from_secs(15), attacker.stop()).await;
    assert_all_reached(reached, &finals, budget);
    let refused: u64 = finals
        .iter()
        .map(|s| s.worker.counts.rejected.values().sum::<u64>())
        .sum();
    assert!(refused > 0, "the stranger's parts were refused and counted");
}
