//! The `--sharded` adversary suite: three honest in-process members and one hostile member
//! (`PipelineConfig::tamper`, as `murmur testnet --sharded --malicious KIND` runs it) on
//! loopback. For every kind the honest members train every step to the single-node loss,
//! none stops with an error, and they count what they refused.

#[path = "net_common/mod.rs"]
mod net_common;
mod pipeline_common;

use std::time::Duration;

use murmur_models::{ModelKind, Trainer, builtin_data};
use murmur_node::adversary::PipeTamper;
use murmur_node::net::Network;
use murmur_node::shard::pipeline::{self, PipelineReport, Placement, StageProgress};
use pipeline_common::*;
use tokio::sync::watch;

/// The single-node training losses of the tests' model, `steps` of them.
fn single_node_losses(steps: u64) -> Vec<f32> {
    let data = builtin_data(ModelKind::CharGpt).expect("embedded corpus");
    let device = murmur_models::Device::flex();
    let mut trainer =
        Trainer::new(&spec(), data.train, data.test, train_config(), &device).expect("trainer");
    (0..steps)
        .map(|_| trainer.step().expect("step").loss)
        .collect()
}

/// Runs three honest nodes and an attacker (identities from `first`; the attacker last) with
/// `tamper`, for `steps` steps, the pipeline waiting for `members` (4: the attacker is a
/// member); returns the honest members' reports and the attacker's outcome.
async fn run_with_attacker(
    first: u8,
    tamper: PipeTamper,
    (steps, members): (u64, usize),
) -> (Vec<PipelineReport>, Result<PipelineReport, String>) {
    let nodes: Vec<(net_common::Identity, Network)> = nodes(first, 4).await;
    let mut handles = Vec::new();
    for (i, (id, net)) in nodes.iter().enumerate() {
        let mut config = config(steps, Placement::Even, 1.0);
        config.members = members;
        config.peer_deadline = Duration::from_secs(3);
        config.tamper = (i == 3).then_some(tamper);
        let (tx, _) = watch::channel(StageProgress::default());
        handles.push(tokio::spawn(pipeline::run(
            net.clone(),
            id.signing.clone(),
            config,
            tx,
        )));
    }
    let attacker = handles.pop().expect("four members");
    let mut honest = Vec::new();
    for (i, handle) in handles.into_iter().enumerate() {
        honest.push(finish(i, handle, Duration::from_secs(50)).await);
    }
    let attacker = tokio::time::timeout(Duration::from_secs(10), attacker)
        .await
        .map_err(|_| "the attacker did not end".to_owned())
        .and_then(|joined| joined.map_err(|e| e.to_string()))
        .and_then(|r| r.map_err(|e| e.to_string()));
    for (_, net) in &nodes {
        net.shutdown().await;
    }
    (honest, attacker)
}

/// Every honest member trained every step, and the head's losses (the attacker's, if it holds
/// the head: its stage computes honestly) are single-node training's.
fn assert_trained_as_alone(
    honest: &[PipelineReport],
    attacker: &Result<PipelineReport, String>,
    steps: u64,
) {
    for r in honest {
        assert_eq!(r.steps, steps, "an honest member trained every step");
        assert!(r.position.is_some(), "an honest member holds a range");
    }
    let head = honest
        .iter()
        .chain(attacker.as_ref().ok())
        .find(|r| r.position == Some(0) && r.first_loss_step == 0)
        .expect("a head");
    let expected = single_node_losses(steps);
    assert_eq!(head.losses.len(), expected.len());
    for (step, (got, want)) in head.losses.iter().zip(&expected).enumerate() {
        assert!(
            (want - got).abs() < 1e-4 * want.abs().max(1.0),
            "step {step}: single node {want}, pipeline {got}"
        );
    }
}

fn refused(r: &PipelineReport, reason: &str) -> u64 {
    r.refused.get(reason).copied().unwrap_or(0)
}

/// A member sends the others the next epoch's plan computed from made-up capacities (every
/// rival at 1 kFLOP/s, itself at 1 PFLOP/s), citing their true announcements: refused for
/// capacities nobody signed (without the check, the honest members were planned out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_of_made_up_capacities_is_refused_and_training_goes_on() {
    let steps = 20;
    let (honest, attacker) = run_with_attacker(70, PipeTamper::PlanHijack, (steps, 4)).await;
    assert_trained_as_alone(&honest, &attacker, steps);
    for r in &honest {
        assert_eq!(r.epoch, 1, "no later plan was run");
        assert!(refused(r, "notice") >= 1, "{:?}", r.refused);
    }
}

/// A member sends the running plan again with an epoch 2⁴⁰ ahead and one just past the step
/// bound: refused (without the bound, every stage stopped for the jumped plan).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epochs_far_ahead_are_refused_and_training_goes_on() {
    let steps = 20;
    let (honest, attacker) = run_with_attacker(80, PipeTamper::EpochJump, (steps, 4)).await;
    assert_trained_as_alone(&honest, &attacker, steps);
    for r in &honest {
        assert_eq!(r.epoch, 1, "no jumped plan was run");
        assert!(refused(r, "notice") >= 2, "{:?}", r.refused);
    }
}

/// A member that is not the plan's watcher reports, once each plan runs, a break that did not
/// happen, then sends valid next plans of honest inputs eight epochs ahead one after another.
/// The first report (in the first plan) is heard: one re-plan. In the re-planned epoch the
/// next report waits for the epoch to settle (the run ends first), and every flooded plan is
/// held, then refused: its issuer is not entitled. Without the entitlement rule every member
/// stopped for the flooded plans and the run failed; without the settling rule the members
/// re-planned every epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_flooding_next_plans_and_false_breaks_costs_one_replan() {
    seated_above_the_lowest(110);
    let steps = 60;
    let (honest, attacker) = run_with_attacker(110, PipeTamper::ReplanFlood, (steps, 4)).await;
    for r in &honest {
        assert_eq!(r.steps, steps, "an honest member trained every step");
        assert!(
            r.replans <= 1,
            "at most the first report's re-plan: {}",
            r.replans
        );
        assert!(refused(r, "notice") >= 1, "{:?}", r.refused);
    }
    assert_final_loss_close(&honest, attacker.as_ref().ok(), steps);
}

/// A member sends each neighbour in its chain stage messages out of protocol once each plan
/// runs. The neighbours end the epoch and blame it (the member that re-plans takes its own
/// observation, or a neighbour's report), so the re-plan leaves it out; the honest members
/// train every step on to the single-node loss. Without blame it was planned back in and
/// broke every epoch until the no-progress budget failed the run; before the stage ended such
/// an epoch as a lost neighbour, the first message failed the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_sending_stage_messages_out_of_protocol_is_planned_out() {
    let attacker_id = seated_above_the_lowest(120);
    let steps = 40;
    let (honest, attacker) = run_with_attacker(120, PipeTamper::StageGarbage, (steps, 4)).await;
    let blamed: u64 = honest.iter().map(|r| refused(r, "stage-message")).sum();
    assert!(blamed >= 1, "a neighbour counted the messages");
    for r in &honest {
        assert_eq!(r.steps, steps, "an honest member trained every step");
        assert!(r.replans <= 1, "one re-plan plans it out: {}", r.replans);
        assert!(
            r.plan.assignments.iter().all(|a| a.peer != attacker_id),
            "the last plan leaves the attacker out: {:?}",
            r.plan.assignments
        );
    }
    assert_final_loss_close(&honest, attacker.as_ref().ok(), steps);
}

/// The id of the attacker of [`run_with_attacker`] with identities from `first`, checked not
/// to be the lowest (the plan's watcher and the member that re-plans).
fn seated_above_the_lowest(first: u8) -> String {
    let peer = |seed| {
        net_common::identity(seed)
            .keypair
            .public()
            .to_peer_id()
            .to_string()
    };
    let attacker = peer(first + 3);
    assert!(
        (first..first + 3).any(|seed| peer(seed) < attacker),
        "the attacker must not hold the lowest id"
    );
    attacker
}

/// The head's final loss (the attacker's, if it holds the head: its stage computes honestly)
/// is within 5 % of single-node training's (a re-plan resumes from a snapshot, so the losses
/// are not step for step the same).
fn assert_final_loss_close(
    honest: &[PipelineReport],
    attacker: Option<&PipelineReport>,
    steps: u64,
) {
    let expected = single_node_losses(steps);
    let head = honest
        .iter()
        .chain(attacker)
        .find(|r| r.position == Some(0))
        .expect("a head");
    assert!(head.losses.iter().all(|l| l.is_finite()));
    let last = *head.losses.last().expect("losses");
    let want = expected[steps as usize - 1];
    assert!(
        (last - want).abs() <= 0.05 * want,
        "final loss {last} within 5 % of single-node training's {want}"
    );
}

/// A member sends poisoned snapshots of the others' ranges and of every range far ahead, then
/// leaves: the survivors re-plan from the snapshots their holders sent, and train on to a
/// loss close to single-node training's (without the snapshot rules they resumed from the
/// poison).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisoned_snapshots_are_refused_and_the_replan_resumes_from_honest_ones() {
    let steps = 40;
    let (honest, attacker) = run_with_attacker(90, PipeTamper::SnapshotPoison, (steps, 4)).await;
    assert!(attacker.is_err(), "the attacker left: {attacker:?}");
    for r in &honest {
        assert_eq!(r.steps, steps, "an honest member trained every step");
        assert_eq!(r.replans, 1, "one re-plan, for the attacker's leave");
        let poison = refused(r, "snapshot-not-holder") + refused(r, "snapshot-ahead");
        assert!(poison >= 1, "{:?}", r.refused);
    }
    assert_final_loss_close(&honest, None, steps);
}

/// A stranger who learned the run floods the members with junk pipeline messages (stage
/// traffic, notices and snapshots that do not decode) while they form: two members wait for a
/// third while the junk arrives (counted as refused), then the third starts, and formation and
/// training go on as if the stranger had never been there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_while_forming_does_not_stop_the_pipeline() {
    let steps = 12;
    let nodes: Vec<(net_common::Identity, Network)> = nodes(100, 4).await;
    let run = |i: usize, tamper: Option<PipeTamper>| {
        let (id, net) = &nodes[i];
        let mut config = config(steps, Placement::Even, 1.0);
        config.peer_deadline = Duration::from_secs(3);
        config.tamper = tamper;
        let (tx, _) = watch::channel(StageProgress::default());
        tokio::spawn(pipeline::run(net.clone(), id.signing.clone(), config, tx))
    };
    let mut handles = vec![run(0, None), run(1, None)];
    let stranger = run(3, Some(PipeTamper::FormationJunk));
    let ended = tokio::time::timeout(Duration::from_secs(30), stranger)
        .await
        .expect("the stranger's junk is sent within 30 s")
        .expect("joins");
    assert!(ended.is_err(), "the stranger never joins: {ended:?}");
    handles.push(run(2, None));
    let mut honest = Vec::new();
    for (i, handle) in handles.into_iter().enumerate() {
        honest.push(finish(i, handle, Duration::from_secs(50)).await);
    }
    for (_, net) in &nodes {
        net.shutdown().await;
    }
    assert_trained_as_alone(&honest, &Err("a stranger".into()), steps);
    for r in &honest[..2] {
        let refused: u64 = r.refused.values().sum();
        assert!(refused >= 1, "junk counted: {:?}", r.refused);
    }
}
