//! Data-parallel replicas of a pipeline: four in-process nodes as two chains of two, whose
//! range holders keep their copies in agreement by gossip averaging, which re-plan together
//! when one chain loses a member and grow when members join (its own test binary, so its nodes do not load the machine
//! while the other pipeline tests time their steps).

#[path = "net_common/mod.rs"]
mod net_common;
mod pipeline_common;

use std::time::Duration;

use murmur_node::shard::pipeline::{self, PipelineReport, Placement, StageProgress};
use pipeline_common::*;
use tokio::sync::watch;

/// Four nodes as two chains of two: the holders of each range train it on different data and
/// gossip-average it every `average_every` steps. Returns, per range, the two holders' final
/// parameters' distance from each other relative to their mean distance from the initial
/// parameters, and the reports.
async fn two_chains(average_every: u64) -> (Vec<f64>, Vec<PipelineReport>) {
    // Both two-chain tests run beside the three-node ones: identities of their own.
    let nodes = nodes(10 + 4 * u8::from(average_every > 0), 4).await;
    // Long enough that chains that start a few steps apart (a plan notice or a first
    // activation retried) still overlap for most of their syncs.
    let steps = 32;
    let configs = (0..4)
        .map(|_| {
            let mut c = config(steps, Placement::Even, 1.0);
            c.members = 4;
            c.replicas = 2;
            c.average_every = average_every;
            c.snapshot_every = 4;
            c
        })
        .collect();
    let reports = run_all(&nodes, configs).await;
    for (_, net) in &nodes {
        net.shutdown().await;
    }
    assert!(reports.iter().all(|r| r.steps == steps && r.lanes == 2));
    let mut lanes: Vec<(usize, usize)> = reports
        .iter()
        .map(|r| (r.lane.expect("planned"), r.position.expect("planned")))
        .collect();
    lanes.sort();
    assert_eq!(
        lanes,
        vec![(0, 0), (0, 1), (1, 0), (1, 1)],
        "two chains of two"
    );
    let mut disagreement = Vec::new();
    for position in 0..2 {
        let holders: Vec<&PipelineReport> = reports
            .iter()
            .filter(|r| r.position == Some(position))
            .collect();
        let (a, b) = (&holders[0].final_params, &holders[1].final_params);
        assert_eq!(
            holders[0].range, holders[1].range,
            "replicas hold the same range"
        );
        let range = holders[0].range.clone().expect("a range");
        let init = murmur_models::pipeline::StageShard::new(
            &spec(),
            &murmur_models::Device::flex(),
            range,
            train_config(),
        )
        .and_then(|s| s.params())
        .expect("initial parameters");
        let dist = |x: &[f32], y: &[f32]| {
            x.iter()
                .zip(y)
                .map(|(p, q)| f64::from(p - q).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let moved = (dist(a, &init) + dist(b, &init)) / 2.0;
        assert!(moved > 0.0, "the range trained");
        disagreement.push(dist(a, b) / moved);
    }
    for head in reports.iter().filter(|r| r.position == Some(0)) {
        let (first, last) = (head.losses[0], head.losses[head.losses.len() - 1]);
        assert!(
            last < first,
            "chain {:?} trains: {:?}",
            head.lane,
            head.losses
        );
    }
    (disagreement, reports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_of_a_range_stay_in_agreement_by_gossip_averaging() {
    let (disagreement, reports) = two_chains(2).await;
    for r in &reports {
        let averaging = r.averaging.as_ref().expect("averaging ran");
        assert_eq!(averaging.syncs, 16, "a sync every 2 of 32 steps");
        // Gossip never waits: a mate that starts or ends a few steps apart misses some.
        assert!(averaging.merged >= 8, "mates' deltas merged: {averaging:?}");
        assert_eq!(averaging.rejected, 0, "{averaging:?}");
    }
    assert!(
        disagreement.iter().all(|d| *d < 0.35),
        "replicas agree: distance / distance moved = {disagreement:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_without_averaging_drift_apart() {
    let (disagreement, reports) = two_chains(0).await;
    assert!(reports.iter().all(|r| r.averaging.is_none()));
    assert!(
        disagreement.iter().all(|d| *d > 0.5),
        "chains on different data diverge: {disagreement:?}"
    );
}

/// Four nodes from identity `first` on, started as two chains of two running `steps` steps
/// (slowed `slowdown`×, neighbour deadline `deadline`), with their progress.
type Started = (
    Vec<(net_common::Identity, murmur_node::net::Network)>,
    Vec<tokio::task::JoinHandle<Result<PipelineReport, pipeline::PipelineError>>>,
    Vec<watch::Receiver<StageProgress>>,
);

async fn start_two_chains(first: u8, steps: u64, slowdown: f64, deadline: Duration) -> Started {
    let nodes = nodes(first, 4).await;
    let mut handles = Vec::new();
    let mut progress = Vec::new();
    for (id, net) in &nodes {
        let mut c = config(steps, Placement::Even, slowdown);
        c.members = 4;
        c.replicas = 2;
        c.average_every = 4;
        c.snapshot_every = 2;
        c.peer_deadline = deadline;
        let (tx, rx) = watch::channel(StageProgress::default());
        progress.push(rx);
        handles.push(tokio::spawn(pipeline::run(
            net.clone(),
            id.signing.clone(),
            c,
            tx,
        )));
    }
    (nodes, handles, progress)
}

/// Once every shard has committed a few steps, kills the second shard of the chain without
/// the lowest peer id (the member that re-plans is the lowest surviving one, so no one in
/// the broken chain's own chain notices for it); returns its index.
async fn kill_in_other_chain(started: &mut Started) -> usize {
    let (nodes, handles, progress) = started;
    let ids: Vec<String> = nodes
        .iter()
        .map(|(_, net)| net.local_peer_id().to_string())
        .collect();
    let lowest = (0..ids.len()).min_by_key(|&i| &ids[i]).expect("four nodes");
    let victim = tokio::time::timeout(Duration::from_secs(40), async {
        loop {
            let all: Vec<StageProgress> = progress.iter().map(|p| p.borrow().clone()).collect();
            if all.iter().all(|p| p.range.is_some() && p.step >= 6) {
                let lane = all[lowest].lane;
                let victim = (0..all.len()).find(|&i| all[i].lane != lane && all[i].position == 1);
                return victim.expect("two chains of two");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("both chains make progress");
    handles[victim].abort();
    nodes[victim].1.shutdown().await;
    victim
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_lost_in_one_chain_is_replanned_by_a_member_of_the_other() {
    // Enough steps (slowed by sleeping, so no more CPU) that the healthy chain is still
    // training when the break reaches it: here about 4 s after the kill (the peer deadline, the
    // re-plan grace, the report) against about 12 s for its 250 steps.
    let steps = 250;
    let mut started = start_two_chains(18, steps, 4.0, Duration::from_secs(3)).await;
    let victim = kill_in_other_chain(&mut started).await;
    let (nodes, handles, _) = started;
    let victim_id = nodes[victim].1.local_peer_id().to_string();
    let mut planned = 0;
    for (i, handle) in handles.into_iter().enumerate() {
        if i == victim {
            continue;
        }
        let report = finish(i, handle, Duration::from_secs(45)).await;
        assert_eq!(
            (report.epoch, report.replans),
            (2, 1),
            "node {i}: one re-plan, to epoch 2"
        );
        assert!(report.plan.assignments.iter().all(|a| a.peer != victim_id));
        assert!(
            !report.plan.assignments.is_empty() && report.lanes == 2,
            "the three survivors still run two chains (one is left out)"
        );
        if report.position.is_some() {
            planned += 1;
            assert_eq!(report.steps, steps, "node {i} trained every step");
        }
    }
    assert_eq!(planned, 2, "two survivors hold the model, one chain each");
    for (_, net) in &nodes {
        net.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_chain_whose_peers_have_finished_goes_on_alone() {
    // The healthy chain finishes its 60 steps (about 2 s) long before the survivor's 6 s
    // deadline expires: the members it would report to have announced that their part is over.
    let steps = 60;
    let mut started = start_two_chains(22, steps, 1.0, Duration::from_secs(6)).await;
    let victim = kill_in_other_chain(&mut started).await;
    let (nodes, handles, _) = started;
    let mut alone = 0;
    for (i, handle) in handles.into_iter().enumerate() {
        if i == victim {
            continue;
        }
        let report = finish(i, handle, Duration::from_secs(45)).await;
        assert_eq!(report.steps, steps, "node {i} trained every step");
        match report.epoch {
            1 => assert_eq!(
                (report.replans, report.lanes),
                (0, 2),
                "node {i}: healthy chain"
            ),
            2 => {
                alone += 1;
                assert_eq!(report.replans, 1);
                assert_eq!(report.lanes, 1, "the survivor holds the whole model alone");
                assert_eq!(report.plan.assignments.len(), 1);
                assert_eq!(report.position, Some(0));
            }
            epoch => panic!("node {i}: unexpected epoch {epoch}"),
        }
    }
    assert_eq!(
        alone, 1,
        "the broken chain's survivor re-planned on its own"
    );
    for (_, net) in &nodes {
        net.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_that_join_two_chains_lengthen_them() {
    let nodes = nodes(26, 6).await;
    // Slowed by sleeping (no more CPU) so the chains still train when the joiners are seen:
    // the issuer looks every 2 s.
    let steps = 100;
    let config = || {
        let mut c = config(steps, Placement::CapacityAware, 4.0);
        c.spec = spec_with_layers(6);
        c.members = 4;
        c.replicas = 2;
        c.average_every = 4;
        c.snapshot_every = 2;
        c.peer_deadline = Duration::from_secs(10);
        c
    };
    let start = |(id, net): &(net_common::Identity, murmur_node::net::Network)| {
        let (tx, rx) = watch::channel(StageProgress::default());
        let handle = tokio::spawn(pipeline::run(net.clone(), id.signing.clone(), config(), tx));
        (handle, rx)
    };
    let (mut handles, progress): (Vec<_>, Vec<_>) = nodes[..4].iter().map(start).unzip();
    // The joiners start once the chains train and announce their plan epoch to them (a
    // newcomer that sees a running pipeline waits to be planned in instead of forming one).
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let training = progress.iter().all(|p| p.borrow().step >= 4);
            let peers = nodes[4].1.peers().await.expect("network runs");
            let running = peers
                .iter()
                .any(|p| p.announcement.as_ref().is_some_and(|a| a.round == 1));
            if training && running {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("two chains of two train");
    handles.extend(nodes[4..].iter().map(|n| start(n).0));

    let mut reports = Vec::new();
    for (i, handle) in handles.into_iter().enumerate() {
        let report = finish(i, handle, Duration::from_secs(50)).await;
        reports.push(report);
    }
    for (i, r) in reports.iter().enumerate() {
        assert_eq!(r.steps, steps, "node {i} trained every step");
        assert_eq!(
            (r.epoch, r.lanes),
            (2, 2),
            "node {i}: one re-plan, two chains"
        );
        assert_eq!(r.plan.assignments.len(), 3, "chains of three");
    }
    let mut seats: Vec<(usize, usize)> = reports
        .iter()
        .map(|r| (r.lane.expect("planned"), r.position.expect("planned")))
        .collect();
    seats.sort();
    assert_eq!(seats, vec![(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]);
    for (_, net) in &nodes {
        net.shutdown().await;
    }
}
