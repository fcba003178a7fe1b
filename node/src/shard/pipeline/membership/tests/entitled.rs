//! Who may start the next epoch, and the re-plan budget: a member of the running plan that
//! issues valid next plans from honest inputs (re-plan flood) is heard only when entitled,
//! and re-plans between which the run trains never end it.

use super::super::entitled::{HOLD_FOR, SETTLE};
use super::super::issuing::ISSUE_SLACK;
use super::*;

/// Three members running their first plan, seen from the highest (`ids[2]`), and the running
/// plan again as epoch 2 (a valid next plan of honest inputs).
fn flooded() -> (Rules, Vec<PeerId>, Membership, PlanNotice, Instant) {
    let rules = Rules::of(&config(3, 1));
    let ids = peers(3);
    let now = Instant::now();
    let (m, first) = running(&rules, &ids, ids[2], now);
    let mut next = first;
    next.epoch = 2;
    (rules, ids, m, next, now)
}

/// The other two members running `epoch`, the lowest connected or not.
fn world(rules: &Rules, ids: &[PeerId], lowest_connected: bool, epoch: u64) -> Vec<PeerInfo> {
    vec![
        announcing(rules, ids[0], lowest_connected, epoch, FAST),
        announcing(rules, ids[1], true, epoch, FAST),
    ]
}

/// Re-plan flood: `ids[1]` is neither the plan's watcher nor the lowest member still running
/// it, so its next plan does not stop the stage; it is held, then refused once its hold is
/// over (before: every such notice stopped every stage, and the ninth ended the run).
#[test]
fn a_next_plan_from_a_member_that_is_not_entitled_is_refused() {
    let (rules, ids, mut m, next, now) = flooded();
    let out = m.handle(notice_event(now, ids[1], &next));
    assert!(
        !out.iter().any(|a| matches!(a, Action::StopStage)),
        "{out:?}"
    );
    assert_eq!(woken(&out), Some(now), "a look at once");
    assert!(m.watches_peers(), "judged again as the peer book changes");
    let out = m.handle(tick(now, world(&rules, &ids, true, 1)));
    assert_eq!(woken(&out), Some(now + HOLD_FOR), "{out:?}");
    let out = m.handle(tick(now + HOLD_FOR, world(&rules, &ids, true, 1)));
    assert!(
        !out.iter().any(|a| matches!(a, Action::StopStage)),
        "{out:?}"
    );
    assert_eq!(m.running_epoch(), Some(1));
    assert_eq!(m.refused_notices(), 1);
    assert!(!m.watches_peers());
}

/// The same notice once the lowest member is gone here too (its issuer saw it go first):
/// `ids[1]` is the member that re-plans, and the stage stops for its plan.
#[test]
fn a_held_next_plan_is_taken_once_its_issuer_is_seen_entitled() {
    let (rules, ids, mut m, next, now) = flooded();
    m.handle(notice_event(now, ids[1], &next));
    let out = m.handle(tick(now, world(&rules, &ids, true, 1)));
    assert!(!out.iter().any(|a| matches!(a, Action::StopStage)));
    let later = now + Duration::from_secs(3);
    let out = m.handle(tick(later, world(&rules, &ids, false, 1)));
    assert!(matches!(out[..], [Action::StopStage]), "{out:?}");
    let out = m.handle(stopped(later));
    assert_eq!(started(&out).map(|s| s.0), Some(2));
    assert_eq!(m.refused_notices(), 0);
}

/// One notice is held at a time; a higher id cannot push out the notice of a lower one (the
/// entitled member is the lowest still running).
#[test]
fn a_higher_member_cannot_push_a_held_notice_out() {
    let rules = Rules::of(&config(4, 1));
    let ids = peers(4);
    let now = Instant::now();
    // Four stages over four members: the planner seats three, `ids[3]` is listed, unplanned.
    let (mut m, first) = running(&rules, &ids, ids[2], now);
    assert_eq!(first.seat(&ids[3]), None);
    let mut next = first;
    next.epoch = 2;
    m.handle(notice_event(now, ids[1], &next));
    let mut flood = next.clone();
    flood.epoch = 3;
    m.handle(notice_event(now, ids[3], &flood));
    assert_eq!(m.refused_notices(), 1, "the higher member's notice");
    let gone = vec![
        announcing(&rules, ids[0], false, 1, FAST),
        announcing(&rules, ids[1], true, 1, FAST),
        announcing(&rules, ids[3], true, 1, FAST),
    ];
    let out = m.handle(tick(now, gone));
    assert!(matches!(out[..], [Action::StopStage]), "{out:?}");
    let out = m.handle(stopped(now));
    assert_eq!(started(&out).map(|s| s.0), Some(2), "ids[1]'s plan");
}

/// A survivor awaiting the re-plan takes it only from the member it reported to (or one it
/// comes to see entitled), not from another member — here the one its stage lost, which may
/// have gone silent on purpose.
#[test]
fn an_awaited_re_plan_counts_only_from_the_re_planning_member() {
    let rules = Rules::of(&config(3, 1));
    let ids = peers(3);
    let now = Instant::now();
    let (mut m, first) = running(&rules, &ids, ids[2], now);
    m.handle(lost(now, ids[1]));
    let at = now + REPLAN_GRACE;
    let world = vec![announcing(&rules, ids[0], true, 1, FAST)];
    let out = m.handle(tick(at, world));
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::ReportBroken { to, .. } if *to == ids[0])),
        "{out:?}"
    );
    let survivors = [ids[0], ids[2]];
    let members: Vec<(PeerId, Capacity)> = survivors.iter().map(|p| (*p, capacity(FAST))).collect();
    let mut replan = PlanNotice::compute(
        2,
        rules.placement,
        &survivors,
        rules.plan_input(&members, Vec::new()),
        rules.replicas,
    )
    .expect("a plan");
    replan.previous_ranges = first.ranges();
    // The lost member plans itself back in: valid, but not from the member awaited.
    let mut hijack = first.clone();
    hijack.epoch = 2;
    let out = m.handle(notice_event(at, ids[1], &hijack));
    assert_eq!(started(&out), None, "not from the member awaited: {out:?}");
    assert_eq!(
        started(&m.handle(notice_event(at, ids[0], &replan))).map(|s| s.0),
        Some(2)
    );
}

/// Re-plans with training between them (the resume step moves) never end the run; the budget
/// counts re-plans in a row without progress.
#[test]
fn re_plans_between_which_the_run_trains_never_end_it() {
    let rules = Rules::of(&config(2, 1));
    let ids = peers(2);
    let now = Instant::now();
    let (mut m, first) = running(&rules, &ids, ids[1], now);
    let epochs = 3 * u64::from(MAX_REPLANS);
    for epoch in 2..=epochs {
        let mut next = first.clone();
        next.epoch = epoch;
        let now = now + Duration::from_secs(1000 * epoch);
        m.handle(notice_event(now, ids[0], &next));
        let out = m.handle(Event::StageEnded {
            now,
            end: Ok(EpochEnd::Stopped),
            resume: ResumePoint {
                ranges: first.ranges(),
                step: 2 * epoch,
            },
        });
        assert_eq!(started(&out).map(|s| s.0), Some(epoch), "{out:?}");
    }
    assert_eq!(u64::from(m.replans()), epochs - 1);
}

/// `ids[2]` of three running epoch 2, which the watcher issued (a re-planned epoch), from
/// `now`; and that plan.
fn re_planned() -> (Rules, Vec<PeerId>, Membership, PlanNotice, Instant) {
    let (rules, ids, mut m, next, now) = flooded();
    assert!(matches!(
        m.handle(notice_event(now, ids[0], &next))[..],
        [Action::StopStage]
    ));
    let out = m.handle(stopped(now));
    assert_eq!(started(&out).map(|s| s.0), Some(2));
    (rules, ids, m, next, now)
}

fn everyone(rules: &Rules, ids: &[PeerId]) -> Vec<PeerInfo> {
    world(rules, ids, true, 2)
}

/// After words that came at `soon` into the epoch [`re_planned`] started at `now` (`out`, what
/// they gave): the stage goes on — at a look with everyone there too — until the epoch has run
/// `SETTLE`, then stops.
fn stops_once_settled(
    m: &mut Membership,
    out: Vec<Action>,
    (rules, ids): (&Rules, &[PeerId]),
    (now, soon): (Instant, Instant),
) {
    assert!(
        !out.iter().any(|a| matches!(a, Action::StopStage)),
        "{out:?}"
    );
    let out = m.handle(tick(soon, everyone(rules, ids)));
    assert_eq!(woken(&out), Some(now + SETTLE), "{out:?}");
    let out = m.handle(tick(now + SETTLE, everyone(rules, ids)));
    assert!(matches!(out[..], [Action::StopStage]), "{out:?}");
}

/// Break-report flood: in an epoch that came from a re-plan, a member's report with nobody
/// seen gone stops the stage only once the epoch has run `SETTLE` (before: at once, so one
/// member re-planned the run back to back until the budget ended it).
#[test]
fn in_a_re_planned_epoch_a_break_report_waits_for_the_epoch_to_settle() {
    let (rules, ids, mut m, _, now) = re_planned();
    let soon = now + Duration::from_secs(1);
    let out = m.handle(Event::Broken {
        now: soon,
        from: ids[1],
        epoch: 2,
        blame: None,
    });
    stops_once_settled(&mut m, out, (&rules, &ids), (now, soon));
}

/// With a planned member seen gone, the same report counts at once.
#[test]
fn in_a_re_planned_epoch_a_break_report_counts_at_once_when_a_member_is_seen_gone() {
    let (rules, ids, mut m, _, now) = re_planned();
    let soon = now + Duration::from_secs(1);
    m.handle(Event::Broken {
        now: soon,
        from: ids[0],
        epoch: 2,
        blame: None,
    });
    let world = vec![announcing(&rules, ids[0], true, 2, FAST)];
    let out = m.handle(tick(soon, world));
    assert!(matches!(out[..], [Action::StopStage]), "{out:?}");
}

/// The watcher's next plan in a re-planned epoch waits for the epoch to settle too.
#[test]
fn in_a_re_planned_epoch_the_watchers_next_plan_waits_for_the_epoch_to_settle() {
    let (rules, ids, mut m, next, now) = re_planned();
    let mut third = next;
    third.epoch = 3;
    let soon = now + Duration::from_secs(1);
    let out = m.handle(notice_event(soon, ids[0], &third));
    stops_once_settled(&mut m, out, (&rules, &ids), (now, soon));
    assert_eq!(m.refused_notices(), 0);
}

/// The watcher's own re-balance in a re-planned epoch waits as its notice would at the
/// members — until the epoch settled, and the slack for their later start (before: the
/// watcher stopped its stage at once while the members held its notice, their stages
/// stalled on it, and the chain broke: a re-balance became a re-plan).
#[test]
fn in_a_re_planned_epoch_the_watchers_own_rebalance_waits_for_the_epoch_to_settle() {
    let rules = Rules::of(&config(3, 1));
    let ids = peers(3);
    let now = Instant::now();
    let (mut m, first) = running(&rules, &ids, ids[0], now);
    let mut next = first;
    next.epoch = 2;
    let out = m.handle(Event::Rebalance {
        now,
        notice: next.clone(),
    });
    assert!(matches!(out[..], [Action::StopStage]), "{out:?}");
    let resume = ResumePoint {
        ranges: vec![0..1, 1..2, 2..3],
        step: 4,
    };
    let out = m.handle(Event::StageEnded {
        now,
        end: Ok(EpochEnd::Stopped),
        resume: resume.clone(),
    });
    assert!(sent(&out).is_some(), "{out:?}");
    let out = m.handle(Event::Sent {
        now,
        epoch: 2,
        result: Ok(()),
        resume,
    });
    assert_eq!(started(&out).map(|s| s.0), Some(2));

    let mut third = next;
    third.epoch = 3;
    let soon = now + Duration::from_secs(2);
    let out = m.handle(Event::Rebalance {
        now: soon,
        notice: third,
    });
    let at = now + SETTLE + ISSUE_SLACK;
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(woken(&out), Some(at));
    let out = m.handle(tick(now + SETTLE, everyone(&rules, &ids)));
    assert!(
        !out.iter().any(|a| matches!(a, Action::StopStage)),
        "{out:?}"
    );
    assert_eq!(woken(&out), Some(at));
    let out = m.handle(tick(at, everyone(&rules, &ids)));
    assert!(matches!(out[..], [Action::StopStage]), "{out:?}");
    let out = m.handle(stopped(at));
    assert_eq!(sent(&out).map(|n| n.epoch), Some(3), "{out:?}");
}
