//! Averaging correctness: with training off, nodes that start from different constant
//! vectors and different sample weights all converge to the sample-weighted mean, and then
//! stop sending.

mod train_common;

use std::time::Duration;

use murmur_node::session::replica::VectorReplica;
use murmur_protocol::{Codec, ModelFingerprint};
use train_common::*;

const LEN: usize = 4096;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_vectors_converge_to_the_sample_weighted_mean() {
    let masses = [100.0, 300.0, 50.0, 550.0];
    let total: f64 = masses.iter().sum();
    let expected: f64 = masses
        .iter()
        .enumerate()
        .map(|(i, m)| m * (i as f64 + 1.0))
        .sum::<f64>()
        / total;
    let model = ModelFingerprint([3; 32]);
    let mut sessions = Vec::new();
    let mut bootstrap = Vec::new();
    for (i, mass) in masses.iter().enumerate() {
        let mut cfg = config(model, &bootstrap, worker(1, 0, i as u64));
        cfg.averager.codec = Codec::RawF32;
        cfg.averager.initial_mass = *mass;
        cfg.averager.fanout = 1;
        let replica = Box::new(VectorReplica(vec![i as f32 + 1.0; LEN]));
        let session = start(30 + i as u8, None, replica, vec![0.0; LEN], cfg).await;
        if i == 0 {
            bootstrap.push(addr(&session).await);
        }
        sessions.push(session);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut worst = f64::INFINITY;
    while tokio::time::Instant::now() < deadline {
        worst = 0.0;
        for s in &sessions {
            let snap = s.snapshot().await.expect("snapshot");
            let err = snap
                .params
                .iter()
                .map(|v| (f64::from(*v) - expected).powi(2))
                .sum::<f64>()
                .sqrt()
                / (expected * (LEN as f64).sqrt());
            worst = worst.max(err);
        }
        if worst < 1e-3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Once the nodes agree, merges stop moving the models and nobody re-sends: the network
    // goes quiet (bounded wait: a second without any delta sent).
    let sent = |sessions: &[murmur_node::session::Session]| -> u64 {
        sessions
            .iter()
            .map(|s| s.status().borrow().deltas_sent)
            .sum()
    };
    let quiet_deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut quiet = false;
    let mut before = sent(&sessions);
    while !quiet && tokio::time::Instant::now() < quiet_deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = sent(&sessions);
        quiet = now == before;
        before = now;
    }
    let counts: Vec<_> = sessions
        .iter()
        .map(|s| {
            let st = s.status().borrow().clone();
            (
                st.worker.counts,
                st.worker.mass,
                st.deltas_sent,
                st.send_failures,
            )
        })
        .collect();
    for s in sessions {
        let _ = tokio::time::timeout(Duration::from_secs(15), s.stop()).await;
    }
    assert!(
        worst < 1e-3,
        "relative L2 error {worst} (expected mean {expected}); {counts:?}"
    );
    assert!(quiet, "idle nodes that agree stop sending; {counts:?}");
    for (c, _, _, _) in counts {
        assert!(c.merged > 0);
        assert_eq!(c.rejected_total(), 0, "{c:?}");
    }
}
