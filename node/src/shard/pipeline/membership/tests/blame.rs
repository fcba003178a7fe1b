//! Members that break the pipeline protocol: planned out by the member that re-plans, on its
//! own observation or on one reporter's word (see `membership::blame`).

use super::super::blame::Blame;
use super::*;

/// The stage ended because `peer`, a neighbour, sent a stage message out of protocol.
fn misbehaved(now: Instant, peer: PeerId) -> Event {
    Event::StageEnded {
        now,
        end: Ok(EpochEnd::NeighbourLost {
            peer,
            cause: Loss::Misbehaved(Box::new(PipelineError::Protocol(
                "micro-batch 9 of a step of 2".into(),
            ))),
        }),
        resume: ResumePoint {
            ranges: vec![0..1, 1..2, 2..3],
            step: 6,
        },
    }
}

/// Everyone but `me` connected and running `epoch`.
fn all_but(rules: &Rules, ids: &[PeerId], me: PeerId, epoch: u64) -> Vec<PeerInfo> {
    ids.iter()
        .filter(|p| **p != me)
        .map(|p| announcing(rules, *p, true, epoch, FAST))
        .collect()
}

/// Three members running their first plan, seen from `me`: one chain, `ids[0]`, `ids[1]`,
/// `ids[2]` in that order (`ids[0]` re-plans).
fn three(me: usize) -> (Rules, Vec<PeerId>, Membership, Instant) {
    let rules = Rules::of(&config(3, 1));
    let ids = peers(3);
    let now = Instant::now();
    let (m, first) = running(&rules, &ids, ids[me], now);
    assert_eq!(first.chain(0).ok().as_deref(), Some(&ids[..]));
    (rules, ids, m, now)
}

/// A member that broke the protocol toward the member that re-plans is left out of the
/// re-plan though still connected (before: planned back in, it broke the next epoch the same
/// way, and the no-progress budget ended the run).
#[test]
fn the_re_planning_member_plans_out_a_neighbour_it_saw_break_the_protocol() {
    let (rules, ids, mut m, now) = three(0);
    m.handle(misbehaved(now, ids[1]));
    let out = m.handle(tick(now + REPLAN_GRACE, all_but(&rules, &ids, ids[0], 1)));
    let notice = sent(&out).expect("re-planned");
    assert_eq!(notice.members, [ids[0].to_string(), ids[2].to_string()]);
    assert_eq!(m.excluded(), [ids[1]]);
}

/// A member that is not the one re-planning names the neighbour it blames in its break report.
#[test]
fn a_member_reports_the_neighbour_it_blames() {
    let (rules, ids, mut m, now) = three(2);
    m.handle(misbehaved(now, ids[1]));
    let out = m.handle(tick(now + REPLAN_GRACE, all_but(&rules, &ids, ids[2], 1)));
    assert!(
        out.iter().any(|a| matches!(
            a,
            Action::ReportBroken { to, blame: Some(b), .. } if *to == ids[0] && *b == ids[1]
        )),
        "{out:?}"
    );
}

/// The member that re-plans gets `from`'s break report of epoch 1 blaming `accused`.
fn report(m: &mut Membership, now: Instant, from: PeerId, accused: PeerId) -> Vec<Action> {
    m.handle(Event::Broken {
        now,
        from,
        epoch: 1,
        blame: Some(accused),
    })
}

/// A reporter's blame of its neighbour plans that neighbour out of the re-plan (stage messages
/// carry no evidence: the reporter's word is all there is).
#[test]
fn a_members_blame_of_its_neighbour_plans_the_neighbour_out() {
    let (rules, ids, mut m, now) = three(0);
    let out = report(&mut m, now, ids[2], ids[1]);
    assert!(matches!(out[..], [Action::StopStage]), "{out:?}");
    m.handle(stopped(now));
    let out = m.handle(tick(now + REPLAN_GRACE, all_but(&rules, &ids, ids[0], 1)));
    let notice = sent(&out).expect("re-planned");
    assert_eq!(notice.members, [ids[0].to_string(), ids[2].to_string()]);
}

/// Each reporter's word is taken once: a hostile reporter plans out at most one honest member
/// (seen from a fourth peer: the middle member blames each of its neighbours in turn).
#[test]
fn a_reporters_blame_is_taken_once() {
    let rules = Rules::of(&config(3, 1));
    let ids = peers(4);
    let members: Vec<(PeerId, f64)> = ids[..3].iter().map(|p| (*p, FAST)).collect();
    let plan = first_plan(&rules, &members);
    assert_eq!(plan.chain(0).ok().as_deref(), Some(&ids[..3]));
    let mut blame = Blame::default();
    blame.reported(&plan, ids[3], ids[1], ids[0]);
    blame.reported(&plan, ids[3], ids[1], ids[2]);
    assert_eq!(blame.excluded(), [ids[0]]);
}

/// A blame of a member two seats away (they exchange no stage messages) is ignored; a blame of
/// the member that receives it, which knows it false, plans the reporter out instead.
#[test]
fn a_blame_of_a_non_neighbour_is_ignored_and_one_of_the_receiver_plans_the_reporter_out() {
    let (_, ids, mut m, now) = three(1);
    report(&mut m, now, ids[2], ids[0]);
    assert!(m.excluded().is_empty(), "{:?}", m.excluded());
    report(&mut m, now, ids[2], ids[1]);
    assert_eq!(m.excluded(), [ids[2]]);
}

/// When the members not blamed cannot hold the model, the blamed one stays in: a false blame
/// does not end the run (without the fallback the re-plan failed, and so did the run).
#[test]
fn a_blamed_member_the_others_cannot_do_without_stays_in() {
    let mut rules = Rules::of(&config(3, 1));
    let params: u64 = rules.stages.iter().map(|s| s.param_bytes).sum();
    // Each member holds 4 GiB; the model's state needs 8 GiB in four stages of 7, 44, 44 and
    // 4 %: three members hold 7 | 44 | 48 %, two would need 52 % on one.
    rules.memory.state_multiplier = (8u64 << 30) / params.max(1);
    let ids = peers(3);
    let now = Instant::now();
    let (mut m, first) = running(&rules, &ids, ids[0], now);
    assert_eq!(first.plan.assignments.len(), 3, "every member is needed");
    m.handle(misbehaved(now, ids[1]));
    let out = m.handle(tick(now + REPLAN_GRACE, all_but(&rules, &ids, ids[0], 1)));
    let notice = sent(&out).expect("re-planned, the blamed member in");
    assert_eq!(notice.members.len(), 3);
}
