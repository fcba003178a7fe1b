//! Unit tests of the membership state machine: event sequences and the actions expected,
//! including every failure path a multi-node run hit (no network, no sleeps: time is an
//! argument).

use std::time::{Duration, Instant};

use libp2p::PeerId;
use murmur_models::{ModelKind, builtin_data, spec_for};
use murmur_protocol::{Announcement, Message, ModelFingerprint, RunId, SignedEnvelope};

use super::rules::MAX_NOTICE_MEMBERS;

mod blame;
mod entitled;
use super::*;
use crate::shard::pipeline::notice::encode_notice;
use crate::shard::pipeline::{PipelineConfig, Placement};

const FAST: f64 = 2e10;
/// Far too slow to be worth a shard: the lean plan leaves it out.
const SLOW: f64 = 1e8;

fn config(members: usize, replicas: u32) -> PipelineConfig {
    let data = builtin_data(ModelKind::CharGpt).expect("embedded corpus");
    PipelineConfig {
        run: RunId::from_name("membership-test"),
        spec: spec_for(ModelKind::CharGpt, data.train.shape()).expect("spec"),
        model: ModelFingerprint([7; 32]),
        train: murmur_models::TrainConfig::default(),
        micro_batches: 4,
        steps: 10,
        members,
        placement: Placement::CapacityAware,
        slowdown: 1.0,
        device: murmur_models::Device::flex(),
        device_name: "flex".into(),
        data: data.train,
        peer_deadline: Duration::from_secs(20),
        form_timeout: Duration::from_secs(30),
        capacity_budget: Duration::from_millis(50),
        snapshot_every: 2,
        replicas,
        average_every: 0,
        admission: crate::averaging::Admission::Open,
        tamper: None,
    }
}

fn capacity(flops_per_sec: f64) -> Capacity {
    Capacity {
        flops_per_sec,
        samples_per_sec: flops_per_sec / 1e8,
        memory_bytes: 1 << 32,
    }
}

/// `n` fixed peer ids, sorted as the membership orders them (by their text).
fn peers(n: u8) -> Vec<PeerId> {
    let mut ids: Vec<PeerId> = (1..=n)
        .map(|seed| {
            libp2p::identity::Keypair::ed25519_from_bytes([seed; 32])
                .expect("a valid ed25519 secret")
                .public()
                .to_peer_id()
        })
        .collect();
    ids.sort_by_key(PeerId::to_string);
    ids
}

/// The signing key of a peer of [`peers`].
fn key_of(peer: &PeerId) -> murmur_protocol::ed25519_dalek::SigningKey {
    let seed = (1..=64u8)
        .find(|seed| {
            libp2p::identity::Keypair::ed25519_from_bytes([*seed; 32])
                .is_ok_and(|k| k.public().to_peer_id() == *peer)
        })
        .expect("a peer of `peers`");
    murmur_protocol::ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
}

/// `peer`'s announcement of `rules`' run at plan epoch `round` with `flops`, and its signed
/// envelope.
fn announcement(rules: &Rules, peer: PeerId, round: u64, flops: f64) -> (Announcement, Vec<u8>) {
    let c = capacity(flops);
    let key = key_of(&peer);
    let announcement = Announcement {
        peer: murmur_protocol::envelope::peer_key(&key),
        run: rules.run,
        model: rules.model,
        capacity: murmur_protocol::Capacity {
            samples_per_sec: c.samples_per_sec as f32,
            flops_per_sec: c.flops_per_sec,
            memory_bytes: c.memory_bytes,
            device: "flex".into(),
            links: Vec::new(),
        },
        round,
        listen_addrs: Vec::new(),
        timestamp_ms: WALL,
    };
    let envelope = SignedEnvelope::sign(&key, &Message::Announcement(announcement.clone()))
        .expect("signable")
        .to_bytes();
    (announcement, envelope)
}

/// `peer` announcing `rules`' run at plan epoch `round` with `flops`, seen just now.
fn announcing(rules: &Rules, peer: PeerId, connected: bool, round: u64, flops: f64) -> PeerInfo {
    let (announcement, envelope) = announcement(rules, peer, round, flops);
    PeerInfo {
        peer_id: peer,
        addrs: Vec::new(),
        connected,
        announcement: Some(announcement),
        announcement_envelope: Some(envelope.into()),
        rtt: None,
        throughput_bps: None,
        misbehaviour: 0,
        last_seen_ms: WALL,
    }
}

/// `notice` citing, for each of its peers but `from`, a signed announcement of the capacity it
/// plans with (as an honest issuer's notice does).
fn cited_by(rules: &Rules, from: PeerId, notice: &PlanNotice) -> PlanNotice {
    let mut cited = notice.clone();
    cited.citations = notice
        .input
        .peers
        .iter()
        .filter(|p| p.id != from.to_string())
        .map(|p| {
            let peer: PeerId = p.id.parse().expect("a peer id");
            let (mut a, _) = announcement(rules, peer, 0, p.flops_per_sec);
            a.capacity.memory_bytes = p.memory_bytes;
            SignedEnvelope::sign(&key_of(&peer), &Message::Announcement(a))
                .expect("signable")
                .to_bytes()
        })
        .collect();
    cited
}

/// The first plan of `members` (with their flops), as the lowest would issue it.
fn first_plan(rules: &Rules, members: &[(PeerId, f64)]) -> PlanNotice {
    let members: Vec<(PeerId, Capacity)> =
        members.iter().map(|(p, f)| (*p, capacity(*f))).collect();
    let ids: Vec<PeerId> = members.iter().map(|(p, _)| *p).collect();
    let input = rules.plan_input(&members, Vec::new());
    let notice =
        PlanNotice::compute(1, rules.placement, &ids, input, rules.replicas).expect("a plan");
    let issuer = *ids.iter().min_by_key(|p| p.to_string()).expect("members");
    cited_by(rules, issuer, &notice)
}

/// The wall clock of the tests' announcements (ms since the Unix epoch).
const WALL: u64 = 1_796_601_600_000;

/// A look at `peers` at `now`, with the wall clock at [`WALL`].
fn tick(now: Instant, peers: Vec<PeerInfo>) -> Event {
    Event::Tick {
        now,
        wall_ms: WALL,
        peers,
    }
}

/// `notice` arriving `from` a peer, citing what its peers signed (as an honest sender's).
fn notice_event(now: Instant, from: PeerId, notice: &PlanNotice) -> Event {
    static RULES: std::sync::OnceLock<Rules> = std::sync::OnceLock::new();
    let rules = RULES.get_or_init(|| Rules::of(&config(1, 1)));
    raw_notice_event(now, from, &cited_by(rules, from, notice))
}

/// `notice` arriving `from` a peer as it is, citations included.
fn raw_notice_event(now: Instant, from: PeerId, notice: &PlanNotice) -> Event {
    Event::Notice {
        now,
        from,
        payload: encode_notice(notice).expect("encodable"),
    }
}

fn started(actions: &[Action]) -> Option<(u64, Seat)> {
    actions.iter().find_map(|a| match a {
        Action::StartStage { notice, seat } => Some((notice.epoch, *seat)),
        _ => None,
    })
}

fn sent(actions: &[Action]) -> Option<&PlanNotice> {
    actions.iter().find_map(|a| match a {
        Action::SendNotice { notice, .. } => Some(notice),
        _ => None,
    })
}

fn failed(actions: &[Action]) -> Option<&PipelineError> {
    actions.iter().find_map(|a| match a {
        Action::Fail(err) => Some(err),
        _ => None,
    })
}

fn woken(actions: &[Action]) -> Option<Instant> {
    actions.iter().find_map(|a| match a {
        Action::Wake(at) => Some(*at),
        _ => None,
    })
}

fn no_resume() -> ResumePoint {
    ResumePoint::default()
}

/// A membership of `me` among `ids` (all fast) that agreed on the first plan and runs it.
fn running(rules: &Rules, ids: &[PeerId], me: PeerId, now: Instant) -> (Membership, PlanNotice) {
    let (mut m, _) = Membership::new(me, capacity(FAST), rules.clone(), now);
    let members: Vec<(PeerId, f64)> = ids.iter().map(|p| (*p, FAST)).collect();
    let notice = first_plan(rules, &members);
    if me == ids[0] {
        let world: Vec<PeerInfo> = ids
            .iter()
            .map(|p| announcing(rules, *p, true, 0, FAST))
            .collect();
        let probe = m.handle(tick(now, world));
        assert!(
            matches!(probe[..], [Action::Probe(_), Action::Wake(_)]),
            "{probe:?}"
        );
        let send = m.handle(Event::Probed {
            now,
            links: Vec::new(),
        });
        assert_eq!(sent(&send), Some(&notice));
        let start = m.handle(Event::Sent {
            now,
            epoch: 1,
            result: Ok(()),
            resume: no_resume(),
        });
        assert_eq!(started(&start).map(|s| s.0), Some(1));
    } else {
        let start = m.handle(notice_event(now, ids[0], &notice));
        assert_eq!(started(&start).map(|s| s.0), Some(1), "{start:?}");
    }
    (m, notice)
}

#[test]
fn the_lowest_member_probes_plans_and_sends_then_starts() {
    let rules = Rules::of(&config(3, 1));
    let ids = peers(3);
    let now = Instant::now();
    let (m, notice) = running(&rules, &ids, ids[0], now);
    assert_eq!(m.running_epoch(), Some(1));
    assert_eq!(notice.members.len(), 3);
}

#[test]
fn a_member_waits_while_too_few_are_found_then_fails_at_the_deadline() {
    let rules = Rules::of(&config(3, 1));
    let ids = peers(3);
    let now = Instant::now();
    let (mut m, first) = Membership::new(ids[1], capacity(FAST), rules.clone(), now);
    assert_eq!(woken(&first), Some(now));
    let one = vec![announcing(&rules, ids[0], true, 0, FAST)];
    let again = m.handle(tick(now, one.clone()));
    assert_eq!(woken(&again), Some(now + LOOK_EVERY));
    let late = now + rules.form_timeout;
    let out = m.handle(tick(late, one));
    assert!(
        matches!(failed(&out), Some(PipelineError::Formation(msg)) if msg.contains("2 of 3")),
        "{out:?}"
    );
}

#[test]
fn a_member_that_is_not_the_lowest_awaits_the_lowest_and_fails_if_it_stays_silent() {
    let rules = Rules::of(&config(3, 1));
    let ids = peers(3);
    let now = Instant::now();
    let (mut m, _) = Membership::new(ids[2], capacity(FAST), rules.clone(), now);
    let world: Vec<PeerInfo> = ids[..2]
        .iter()
        .map(|p| announcing(&rules, *p, true, 0, FAST))
        .collect();
    let out = m.handle(tick(now, world));
    let deadline = now + rules.form_timeout;
    assert_eq!(woken(&out), Some(deadline));
    let out = m.handle(tick(deadline, Vec::new()));
    assert!(
        matches!(failed(&out), Some(PipelineError::PeerSilent { peer, .. }) if *peer == ids[0]),
        "{out:?}"
    );
}

/// The issuer may plan before this node has seen every member's announcement, and a member
/// the plan leaves out stops announcing: a node still forming takes a valid first plan at once
/// (before, the others waited for members and failed: 3 of ~25 1,1,8 testnet runs).
#[test]
fn a_forming_member_takes_a_valid_first_plan_before_it_sees_the_members() {
    let rules = Rules::of(&config(3, 1));
    let ids = peers(3);
    let now = Instant::now();
    let (mut m, _) = Membership::new(ids[1], capacity(FAST), rules.clone(), now);
    let notice = first_plan(&rules, &[(ids[0], FAST), (ids[1], FAST), (ids[2], FAST)]);
    let out = m.handle(notice_event(now, ids[0], &notice));
    assert!(matches!(out[0], Action::Announce(1)));
    assert!(started(&out).is_some(), "{out:?}");
}

/// A slow issuer that plans itself out still issues the plan and then stops (before, it
/// waited for a plan of its own and the pipeline never started).
#[test]
fn an_issuer_that_plans_itself_out_sends_the_plan_and_finishes_unseated() {
    let rules = Rules::of(&config(3, 1));
    let ids = peers(3);
    let now = Instant::now();
    let (mut m, _) = Membership::new(ids[0], capacity(SLOW), rules.clone(), now);
    let world: Vec<PeerInfo> = ids[1..]
        .iter()
        .map(|p| announcing(&rules, *p, true, 0, FAST))
        .collect();
    m.handle(tick(now, world));
    let out = m.handle(Event::Probed {
        now,
        links: Vec::new(),
    });
    let notice = sent(&out).expect("the issuer sends the plan").clone();
    assert!(!notice.is_planned(&ids[0]));
    let out = m.handle(Event::Sent {
        now,
        epoch: 1,
        result: Ok(()),
        resume: no_resume(),
    });
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::Finish { seat: None, .. })),
        "{out:?}"
    );
}

#[test]
fn a_first_plan_from_a_member_other_than_the_lowest_is_refused() {
    let rules = Rules::of(&config(3, 1));
    let ids = peers(3);
    let now = Instant::now();
    let (mut m, _) = Membership::new(ids[2], capacity(FAST), rules.clone(), now);
    let notice = first_plan(&rules, &[(ids[0], FAST), (ids[1], FAST), (ids[2], FAST)]);
    assert!(m.handle(notice_event(now, ids[1], &notice)).is_empty());
    let mut forged = notice.clone();
    forged.plan.assignments.reverse();
    assert!(m.handle(notice_event(now, ids[0], &forged)).is_empty());
    assert!(started(&m.handle(notice_event(now, ids[0], &notice))).is_some());
}

#[test]
fn a_newcomer_that_sees_a_running_pipeline_waits_to_be_planned_in() {
    let rules = Rules::of(&config(2, 1));
    let ids = peers(3);
    let now = Instant::now();
    let (mut m, _) = Membership::new(ids[0], capacity(FAST), rules.clone(), now);
    let world: Vec<PeerInfo> = ids[1..]
        .iter()
        .map(|p| announcing(&rules, *p, true, 1, FAST))
        .collect();
    let out = m.handle(tick(now, world));
    assert!(
        !out.iter().any(|a| matches!(a, Action::Probe(_))),
        "{out:?}"
    );
    assert_eq!(woken(&out), Some(now + rules.form_timeout));
}

#[test]
fn a_later_valid_plan_stops_the_stage_and_runs_once_it_stopped() {
    let rules = Rules::of(&config(3, 1));
    let ids = peers(3);
    let now = Instant::now();
    let (mut m, first) = running(&rules, &ids, ids[2], now);
    let mut next = first.clone();
    next.epoch = 2;
    // An equal or earlier epoch is no news.
    assert!(m.handle(notice_event(now, ids[0], &first)).is_empty());
    // From the plan's watcher (it re-balances): taken at once.
    let out = m.handle(notice_event(now, ids[0], &next));
    assert!(matches!(out[..], [Action::StopStage]), "{out:?}");
    let out = m.handle(stopped(now));
    assert_eq!(started(&out).map(|s| s.0), Some(2));
    assert_eq!(m.replans(), 1);
}

/// Plan hijack: a stranger writes itself into a valid plan of a later epoch (the deterministic
/// plan of the members it lists, itself among them). It is not a member of the running plan,
/// so the running epoch goes on (before: the stage stopped and ran the stranger's plan).
#[test]
fn a_later_plan_from_outside_the_running_plan_is_refused() {
    let rules = Rules::of(&config(3, 1));
    let all = peers(4);
    let ids: Vec<PeerId> = all[..3].to_vec();
    let stranger = all[3];
    let now = Instant::now();
    let (mut m, _) = running(&rules, &ids, ids[1], now);
    let members: Vec<(PeerId, Capacity)> = all.iter().map(|p| (*p, capacity(FAST))).collect();
    let input = rules.plan_input(&members, Vec::new());
    let hijack =
        PlanNotice::compute(2, rules.placement, &all, input, rules.replicas).expect("a plan");
    assert!(hijack.is_member(&stranger) && hijack.is_member(&ids[1]));
    assert!(m.handle(notice_event(now, stranger, &hijack)).is_empty());
    assert_eq!(m.running_epoch(), Some(1));
    // The same plan from a member of the running one (a join planned in) is taken.
    let out = m.handle(notice_event(now, ids[0], &hijack));
    assert!(matches!(out[..], [Action::StopStage]), "{out:?}");
}

/// Epoch jump: a member's notice far ahead of the running epoch is refused (before: it ended
/// the epoch, and every later honest notice then looked old).
#[test]
fn a_plan_far_ahead_of_the_running_epoch_is_refused() {
    let rules = Rules::of(&config(3, 1));
    let ids = peers(3);
    let now = Instant::now();
    let (mut m, first) = running(&rules, &ids, ids[2], now);
    let mut jump = first.clone();
    jump.epoch = 1 + MAX_EPOCH_STEP + 1;
    assert!(m.handle(notice_event(now, ids[0], &jump)).is_empty());
    jump.epoch = u64::MAX;
    assert!(m.handle(notice_event(now, ids[0], &jump)).is_empty());
    let mut next = first;
    next.epoch = 1 + MAX_EPOCH_STEP;
    let out = m.handle(notice_event(now, ids[0], &next));
    assert!(matches!(out[..], [Action::StopStage]), "{out:?}");
}

/// The rules of a closed pool whose members are `members`.
fn pool_rules(members: &[PeerId]) -> Rules {
    let keys = (1..=8u8)
        .map(|seed| {
            libp2p::identity::Keypair::ed25519_from_bytes([seed; 32])
                .expect("a valid ed25519 secret")
                .public()
        })
        .filter(|public| members.contains(&public.to_peer_id()))
        .filter_map(|public| crate::net::peer_key_of(&public))
        .collect();
    let mut config = config(3, 1);
    config.admission = crate::averaging::Admission::Closed(keys);
    Rules::of(&config)
}

/// In a closed pool a stranger announcing the run (even the fastest peer) is never a
/// candidate, and a plan that lists it is refused.
#[test]
fn a_closed_pool_plans_only_its_members() {
    let all = peers(4);
    let (members, stranger) = (&all[..3], all[3]);
    let rules = pool_rules(members);
    let world: Vec<PeerInfo> = all
        .iter()
        .map(|p| {
            announcing(
                &rules,
                *p,
                true,
                0,
                if *p == stranger { 10.0 * FAST } else { FAST },
            )
        })
        .collect();
    let candidates: Vec<PeerId> = rules
        .candidates(&world, WALL)
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(candidates, members.to_vec());
    // The lowest member issues a plan with the stranger in it: the others refuse it.
    let open = Rules::of(&config(3, 1));
    let with_stranger: Vec<(PeerId, f64)> = all.iter().map(|p| (*p, FAST)).collect();
    let notice = first_plan(&open, &with_stranger);
    let now = Instant::now();
    let (mut m, _) = Membership::new(members[1], capacity(FAST), rules, now);
    let out = m.handle(notice_event(now, members[0], &notice));
    assert_eq!(started(&out), None, "{out:?}");
}

#[test]
fn a_stage_that_finishes_ends_the_run_even_with_a_stop_pending() {
    let rules = Rules::of(&config(2, 1));
    let ids = peers(2);
    let now = Instant::now();
    let (mut m, _) = running(&rules, &ids, ids[1], now);
    let stop = m.handle(Event::Broken {
        now,
        from: ids[0],
        epoch: 1,
        blame: None,
    });
    assert!(matches!(stop[..], [Action::StopStage]), "{stop:?}");
    let out = m.handle(Event::StageEnded {
        now,
        end: Ok(EpochEnd::Finished),
        resume: no_resume(),
    });
    assert!(matches!(out[..], [Action::Finish { seat: Some(_), .. }]));
}

/// The stage stopped (for a later plan or a report), with no snapshot to resume from.
fn stopped(now: Instant) -> Event {
    Event::StageEnded {
        now,
        end: Ok(EpochEnd::Stopped),
        resume: no_resume(),
    }
}

fn lost(now: Instant, peer: PeerId) -> Event {
    Event::StageEnded {
        now,
        end: Ok(EpochEnd::NeighbourLost {
            peer,
            cause: Loss::Silent(Duration::from_secs(20)),
        }),
        resume: ResumePoint {
            ranges: vec![0..2, 2..3],
            step: 6,
        },
    }
}

/// After a departure the lowest survivor re-plans over the survivors from the common
/// snapshot, after the grace; it sends the snapshots on with the notice.
#[test]
fn the_lowest_survivor_replans_without_the_lost_member_after_the_grace() {
    let rules = Rules::of(&config(3, 1));
    let ids = peers(3);
    let now = Instant::now();
    let (mut m, _) = running(&rules, &ids, ids[0], now);
    let out = m.handle(lost(now, ids[1]));
    assert_eq!(woken(&out), Some(now + REPLAN_GRACE));
    assert!(!m.receptive(), "messages wait while the grace runs");
    let world = vec![announcing(&rules, ids[2], true, 1, FAST)];
    // Too early: look again at the end of the grace.
    let early = m.handle(tick(now, world.clone()));
    assert_eq!(woken(&early), Some(now + REPLAN_GRACE));
    let out = m.handle(tick(now + REPLAN_GRACE, world));
    let notice = sent(&out).expect("the lowest survivor re-plans");
    assert_eq!(notice.epoch, 2);
    assert_eq!(notice.resume_step, 6);
    assert_eq!(notice.previous_ranges, vec![0..2, 2..3]);
    assert!(!notice.members.contains(&ids[1].to_string()));
    assert!(out.iter().any(|a| matches!(
        a,
        Action::SendNotice {
            previous: Some(_),
            ..
        }
    )));
}

/// The other survivors tell the re-planning member (which may sit in a healthy chain that
/// would never notice) and wait for its notice of the next epoch.
#[test]
fn a_survivor_that_is_not_the_lowest_reports_the_break_and_awaits_the_next_epoch() {
    let rules = Rules::of(&config(3, 1));
    let ids = peers(3);
    let now = Instant::now();
    let (mut m, first) = running(&rules, &ids, ids[2], now);
    m.handle(lost(now, ids[1]));
    let world = vec![announcing(&rules, ids[0], true, 1, FAST)];
    let out = m.handle(tick(now + REPLAN_GRACE, world));
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::ReportBroken { to, epoch: 1, .. } if *to == ids[0])),
        "{out:?}"
    );
    // A stale notice of the epoch that broke does not count; the next epoch's does.
    assert!(m.handle(notice_event(now, ids[0], &first)).is_empty());
    let mut next = first.clone();
    next.epoch = 2;
    assert_eq!(
        started(&m.handle(notice_event(now, ids[0], &next))).map(|s| s.0),
        Some(2)
    );
}

/// The re-planning member the survivor reported to finishes its part (or leaves) before it
/// re-plans: the survivor chooses again from the peer book, here itself, by the first wait's
/// deadline (before, it waited out the whole formation timeout for a notice that never came and
/// the run failed).
#[test]
fn a_survivor_whose_replanning_member_finishes_meanwhile_chooses_again() {
    let rules = Rules::of(&config(3, 1));
    let ids = peers(3);
    let now = Instant::now();
    let (mut m, _) = running(&rules, &ids, ids[2], now);
    m.handle(lost(now, ids[1]));
    let at = now + REPLAN_GRACE;
    let world = vec![announcing(&rules, ids[0], true, 1, FAST)];
    let out = m.handle(tick(at, world));
    assert_eq!(woken(&out), Some(at + rules.form_timeout), "{out:?}");
    assert!(
        m.watches_peers(),
        "it looks again whenever the peer book changes"
    );
    // Still running the old plan: the survivor goes on waiting for it.
    let world = vec![announcing(&rules, ids[0], true, 1, FAST)];
    assert_eq!(
        woken(&m.handle(tick(at, world))),
        Some(at + rules.form_timeout)
    );
    let world = vec![announcing(&rules, ids[0], true, FINISHED_EPOCH, FAST)];
    let out = m.handle(tick(at + Duration::from_secs(1), world));
    let notice = sent(&out).expect("the survivor re-plans alone");
    assert_eq!(notice.members, vec![ids[2].to_string()]);
    assert_eq!(notice.epoch, 2);
}

/// A member whose part is over (it finished its steps in a healthy chain) announces
/// `FINISHED_EPOCH`: it is no survivor and never the re-planning member (before: the broken
/// chain's survivors waited for it and failed).
#[test]
fn a_finished_member_is_not_a_survivor_so_the_next_lowest_replans() {
    let rules = Rules::of(&config(3, 1));
    let ids = peers(3);
    let now = Instant::now();
    let (mut m, _) = running(&rules, &ids, ids[1], now);
    m.handle(lost(now, ids[2]));
    let world = vec![announcing(&rules, ids[0], true, FINISHED_EPOCH, FAST)];
    let out = m.handle(tick(now + REPLAN_GRACE, world));
    let notice = sent(&out).expect("the next lowest re-plans alone");
    assert_eq!(notice.members, vec![ids[1].to_string()]);
}

/// A member that crashed and restarted with its identity announces epoch 0: it is planned
/// back in but never re-plans (it holds neither the notice nor snapshots; before, it was
/// elected and the run deadlocked).
#[test]
fn a_restarted_member_is_planned_back_in_but_does_not_replan() {
    let rules = Rules::of(&config(3, 1));
    let ids = peers(3);
    let now = Instant::now();
    let (mut m, _) = running(&rules, &ids, ids[1], now);
    m.handle(lost(now, ids[0]));
    let world = vec![
        announcing(&rules, ids[0], true, 0, FAST),
        announcing(&rules, ids[2], true, 1, FAST),
    ];
    let out = m.handle(tick(now + REPLAN_GRACE, world));
    let notice = sent(&out).expect("the lowest member still running re-plans");
    assert!(notice.is_planned(&ids[0]), "planned back in");
    assert_eq!(notice.members.len(), 3);
}

#[test]
fn a_break_report_ends_the_epoch_only_from_a_planned_member_of_that_epoch() {
    let rules = Rules::of(&config(3, 1));
    let ids = peers(4);
    let now = Instant::now();
    let (mut m, _) = running(&rules, &ids[..3], ids[0], now);
    assert!(
        m.handle(Event::Broken {
            now,
            from: ids[1],
            epoch: 0,
            blame: None
        })
        .is_empty()
    );
    assert!(
        m.handle(Event::Broken {
            now,
            from: ids[3],
            epoch: 1,
            blame: None
        })
        .is_empty()
    );
    let out = m.handle(Event::Broken {
        now,
        from: ids[1],
        epoch: 1,
        blame: None,
    });
    assert!(matches!(out[..], [Action::StopStage]));
    let out = m.handle(stopped(now));
    assert_eq!(woken(&out), Some(now + REPLAN_GRACE), "re-plans: {out:?}");
}

/// The issuer's re-balance: the stage stops, the next notice goes out with the resume point
/// of the running plan; if it cannot be delivered (a member left between the look and the
/// notice), the run re-plans from it instead of failing (before: the run failed).
#[test]
fn an_undelivered_rebalance_notice_replans_instead_of_failing() {
    let rules = Rules::of(&config(3, 1));
    let ids = peers(3);
    let now = Instant::now();
    let (mut m, first) = running(&rules, &ids, ids[0], now);
    let mut next = first.clone();
    next.epoch = 2;
    assert!(matches!(
        m.handle(Event::Rebalance { now, notice: next })[..],
        [Action::StopStage]
    ));
    let out = m.handle(Event::StageEnded {
        now,
        end: Ok(EpochEnd::Stopped),
        resume: ResumePoint {
            ranges: vec![0..1, 1..3],
            step: 4,
        },
    });
    let notice = sent(&out).expect("the re-balanced notice is sent");
    assert_eq!((notice.epoch, notice.resume_step), (2, 4));
    let undelivered = PipelineError::PeerSilent {
        peer: ids[2],
        waited: Duration::from_secs(20),
    };
    let out = m.handle(Event::Sent {
        now,
        epoch: 2,
        result: Err(undelivered),
        resume: ResumePoint {
            ranges: vec![0..1, 1..3],
            step: 4,
        },
    });
    assert!(failed(&out).is_none(), "{out:?}");
    assert_eq!(woken(&out), Some(now + REPLAN_GRACE));
    let world = vec![announcing(&rules, ids[1], true, 2, FAST)];
    let out = m.handle(tick(now + REPLAN_GRACE, world));
    let replanned = sent(&out).expect("re-planned without the member that is gone");
    assert_eq!(replanned.epoch, 3);
    assert_eq!(replanned.members.len(), 2);
    // From the re-balanced plan's own resume point: no committed work is lost.
    assert_eq!(
        (replanned.resume_step, replanned.previous_ranges.clone()),
        (4, vec![0..1, 1..3])
    );
}

#[test]
fn a_run_without_snapshots_fails_when_a_neighbour_is_lost() {
    let mut config = config(2, 1);
    config.snapshot_every = 0;
    let rules = Rules::of(&config);
    let ids = peers(2);
    let now = Instant::now();
    let (mut m, _) = running(&rules, &ids, ids[0], now);
    let out = m.handle(lost(now, ids[1]));
    assert!(
        matches!(failed(&out), Some(PipelineError::PeerSilent { peer, .. }) if *peer == ids[1]),
        "{out:?}"
    );
}

#[test]
fn re_plans_are_bounded() {
    let rules = Rules::of(&config(2, 1));
    let ids = peers(2);
    let now = Instant::now();
    let (mut m, first) = running(&rules, &ids, ids[1], now);
    for epoch in 2..=u64::from(MAX_REPLANS) + 2 {
        let mut next = first.clone();
        next.epoch = epoch;
        // Each epoch long settled (see `entitled::SETTLE`).
        let now = now + Duration::from_secs(1000 * epoch);
        m.handle(notice_event(now, ids[0], &next));
        let out = m.handle(stopped(now));
        if epoch > u64::from(MAX_REPLANS) + 1 {
            assert!(failed(&out).is_some(), "{out:?}");
        } else {
            assert_eq!(started(&out).map(|s| s.0), Some(epoch));
        }
    }
}

#[test]
fn a_stage_error_fails_the_run() {
    let rules = Rules::of(&config(2, 1));
    let ids = peers(2);
    let now = Instant::now();
    let (mut m, _) = running(&rules, &ids, ids[0], now);
    let out = m.handle(Event::StageEnded {
        now,
        end: Err(PipelineError::Protocol("bad tensor".into())),
        resume: no_resume(),
    });
    assert!(matches!(failed(&out), Some(PipelineError::Protocol(_))));
}

/// Every planned peer must be a listed member, each listed once: otherwise the members that
/// re-plan after a break (the listed ones) and the peers running the plan differ.
#[test]
fn a_plan_whose_planned_peers_are_not_all_listed_members_is_refused() {
    let rules = Rules::of(&config(3, 1));
    let ids = peers(3);
    let now = Instant::now();
    let (mut m, _) = Membership::new(ids[0], capacity(FAST), rules.clone(), now);
    let notice = first_plan(&rules, &[(ids[0], FAST), (ids[1], FAST), (ids[2], FAST)]);
    let mut unlisted = notice.clone();
    unlisted.epoch = 2;
    unlisted.members.retain(|p| *p != ids[2].to_string());
    assert!(m.handle(notice_event(now, ids[1], &unlisted)).is_empty());
    let mut twice = notice.clone();
    twice.epoch = 2;
    twice.members.push(ids[1].to_string());
    assert!(m.handle(notice_event(now, ids[1], &twice)).is_empty());
    let mut valid = notice;
    valid.epoch = 2;
    assert!(started(&m.handle(notice_event(now, ids[1], &valid))).is_some());
}

/// A re-balance notice that fails for another reason than a member out of reach (no snapshot
/// to send, the network gone) fails the run instead of re-planning from less than it holds.
#[test]
fn a_rebalance_notice_that_fails_for_lack_of_snapshots_fails_the_run() {
    let rules = Rules::of(&config(3, 1));
    let ids = peers(3);
    let now = Instant::now();
    let (mut m, first) = running(&rules, &ids, ids[0], now);
    let mut next = first.clone();
    next.epoch = 2;
    m.handle(Event::Rebalance { now, notice: next });
    m.handle(Event::StageEnded {
        now,
        end: Ok(EpochEnd::Stopped),
        resume: ResumePoint {
            ranges: vec![0..1, 1..3],
            step: 4,
        },
    });
    let out = m.handle(Event::Sent {
        now,
        epoch: 2,
        result: Err(PipelineError::Formation(
            "no copy of stages 0..1 at step 4".into(),
        )),
        resume: no_resume(),
    });
    assert!(
        matches!(failed(&out), Some(PipelineError::Formation(_))),
        "{out:?}"
    );
}

/// A stale re-balance proposal (not for the next epoch) changes nothing.
#[test]
fn a_rebalance_proposal_for_another_epoch_is_ignored() {
    let rules = Rules::of(&config(2, 1));
    let ids = peers(2);
    let now = Instant::now();
    let (mut m, first) = running(&rules, &ids, ids[0], now);
    let mut stale = first.clone();
    stale.epoch = 1;
    assert!(m.handle(Event::Rebalance { now, notice: stale }).is_empty());
}

/// A break report stops the stage; the valid notice of the next epoch that comes before the
/// stage has stopped is kept and run (before the fix it was dropped, and the node waited for
/// it after its grace and failed).
#[test]
fn a_later_plan_that_comes_while_the_stage_stops_is_run() {
    let rules = Rules::of(&config(3, 1));
    let ids = peers(3);
    let now = Instant::now();
    let (mut m, first) = running(&rules, &ids, ids[2], now);
    let stop = m.handle(Event::Broken {
        now,
        from: ids[1],
        epoch: 1,
        blame: None,
    });
    assert!(matches!(stop[..], [Action::StopStage]));
    let mut next = first.clone();
    next.epoch = 2;
    assert!(m.handle(notice_event(now, ids[0], &next)).is_empty());
    let out = m.handle(stopped(now));
    assert_eq!(started(&out).map(|s| s.0), Some(2), "{out:?}");
}

/// The stage may lose a neighbour after the driver stopped it for a later plan: the later
/// plan still decides (its members moved on), not a re-plan of the old one.
#[test]
fn a_later_plan_decides_even_if_the_stage_then_lost_a_neighbour() {
    let rules = Rules::of(&config(3, 1));
    let ids = peers(3);
    let now = Instant::now();
    let (mut m, first) = running(&rules, &ids, ids[2], now);
    let mut next = first.clone();
    next.epoch = 2;
    assert!(matches!(
        m.handle(notice_event(now, ids[0], &next))[..],
        [Action::StopStage]
    ));
    let out = m.handle(lost(now, ids[1]));
    assert_eq!(started(&out).map(|s| s.0), Some(2), "{out:?}");
}

/// A member of the next plan may lose a neighbour and report it before this node has the
/// notice: the report is kept, and the stage it starts stops at once for the re-plan (before:
/// it was dropped, and the reporter's chain waited out the formation timeout).
#[test]
fn a_break_report_for_the_awaited_epoch_is_kept_until_it_runs() {
    let rules = Rules::of(&config(3, 1));
    let ids = peers(3);
    let now = Instant::now();
    let (mut m, first) = running(&rules, &ids, ids[2], now);
    m.handle(lost(now, ids[1]));
    let world = vec![announcing(&rules, ids[0], true, 1, FAST)];
    m.handle(tick(now + REPLAN_GRACE, world));
    assert!(
        m.handle(Event::Broken {
            now,
            from: ids[0],
            epoch: 2,
            blame: None
        })
        .is_empty()
    );
    let mut next = first.clone();
    next.epoch = 2;
    let out = m.handle(notice_event(now, ids[0], &next));
    assert_eq!(started(&out).map(|s| s.0), Some(2));
    // A re-planned epoch: the report counts once a look shows the lost member gone.
    assert_eq!(woken(&out), Some(now + REPLAN_GRACE), "{out:?}");
    let world = vec![announcing(&rules, ids[0], true, 2, FAST)];
    let out = m.handle(tick(now + REPLAN_GRACE, world));
    assert!(matches!(out[..], [Action::StopStage]), "{out:?}");
}

/// A node about to issue the first plan takes a valid plan that comes first (a running
/// pipeline's issuer planning it in).
#[test]
fn a_node_probing_its_links_takes_a_valid_plan_that_comes_first() {
    let rules = Rules::of(&config(2, 1));
    let ids = peers(3);
    let now = Instant::now();
    let (mut m, _) = Membership::new(ids[0], capacity(FAST), rules.clone(), now);
    let world = vec![announcing(&rules, ids[1], true, 0, FAST)];
    assert!(matches!(
        m.handle(tick(now, world))[..],
        [Action::Probe(_), Action::Wake(_)]
    ));
    let mut plan = first_plan(&rules, &[(ids[0], FAST), (ids[1], FAST), (ids[2], FAST)]);
    plan.epoch = 2;
    let out = m.handle(notice_event(now, ids[2], &plan));
    assert_eq!(started(&out).map(|s| s.0), Some(2), "{out:?}");
    // The probes that end later change nothing.
    assert!(
        m.handle(Event::Probed {
            now,
            links: Vec::new()
        })
        .is_empty()
    );
}

/// A member the plan left out stops at once, but its last announcement (of a capacity, not
/// of being finished) stays recent for seconds: re-balancing must not plan it back in, or
/// the new plan is sent to a node that is gone.
#[test]
fn members_the_plan_left_out_are_not_rebalanced_back_in() {
    use crate::shard::pipeline::members::rebalance_input;

    let rules = Rules::of(&config(3, 1));
    let ids = peers(5);
    let me = ids[0];
    let fast = announcing(&rules, ids[1], true, 1, FAST);
    let slow = announcing(&rules, ids[2], true, 1, SLOW);
    let previous = first_plan(&rules, &[(me, FAST), (ids[1], FAST), (ids[2], SLOW)]);
    assert!(!previous.is_planned(&slow.peer_id));
    assert!(previous.is_planned(&fast.peer_id));

    let newcomer = announcing(&rules, ids[3], true, 0, 1e10);
    // A newcomer must be connected to be planned in.
    let unconnected = announcing(&rules, ids[4], false, 0, 1e10);
    let world = vec![fast, slow, newcomer.clone(), unconnected];
    let (members, input) =
        rebalance_input(&rules, (&previous, &[]), (&world, WALL), me, capacity(FAST));
    let expected = vec![me, ids[1], newcomer.peer_id];
    assert_eq!(members, expected);
    let planned: Vec<String> = input.peers.iter().map(|p| p.id.clone()).collect();
    let expected: Vec<String> = expected.iter().map(PeerId::to_string).collect();
    assert_eq!(planned, expected);
}

/// A member blamed for breaking the protocol (planned out, still connected and announcing) is
/// no newcomer to plan back in, nor is a planned one kept (without the filter the watcher
/// re-balanced it back in within seconds).
#[test]
fn members_blamed_for_breaking_the_protocol_are_not_rebalanced_back_in() {
    use crate::shard::pipeline::members::rebalance_input;

    let rules = Rules::of(&config(3, 1));
    let ids = peers(4);
    let me = ids[0];
    let previous = first_plan(&rules, &[(me, FAST), (ids[1], FAST)]);
    let world = vec![
        announcing(&rules, ids[1], true, 1, FAST),
        announcing(&rules, ids[2], true, 0, FAST),
        announcing(&rules, ids[3], true, 0, FAST),
    ];
    let blamed = [ids[1], ids[3]];
    let (members, _) = rebalance_input(
        &rules,
        (&previous, &blamed),
        (&world, WALL),
        me,
        capacity(FAST),
    );
    assert_eq!(members, vec![me, ids[2]]);
}

/// Peers choose how often they announce and each announcement changes the peer book: after a
/// look, the next one waits out the shortest gap, however many changes come meanwhile.
#[test]
fn looks_after_peer_book_changes_are_spaced() {
    let rules = Rules::of(&config(3, 1));
    let ids = peers(3);
    let now = Instant::now();
    let (mut m, _) = Membership::new(ids[0], capacity(FAST), rules, now);
    assert_eq!(m.look_after_change(now), now, "no look yet: at once");
    m.handle(tick(now, Vec::new()));
    let soon = now + Duration::from_millis(10);
    assert_eq!(m.look_after_change(soon), now + LOOK_GAP);
    let later = now + 2 * LOOK_GAP;
    assert_eq!(m.look_after_change(later), later);
}

/// A newcomer may have the running members' announcements (through the gossip mesh) before a
/// connection to any of them: it still waits to be planned in rather than counting them as
/// candidates and issuing a first plan of its own (whose re-plan would reach them as a later
/// epoch and take them off their pipeline; seen once in a full-suite run of the join test).
#[test]
fn a_newcomer_not_yet_connected_to_a_running_pipeline_does_not_form_its_own() {
    let rules = Rules::of(&config(2, 1));
    let ids = peers(3);
    let now = Instant::now();
    let (mut m, _) = Membership::new(ids[0], capacity(FAST), rules.clone(), now);
    let world: Vec<PeerInfo> = ids[1..]
        .iter()
        .map(|p| announcing(&rules, *p, false, 1, FAST))
        .collect();
    let out = m.handle(tick(now, world));
    assert!(
        !out.iter().any(|a| matches!(a, Action::Probe(_))),
        "{out:?}"
    );
    assert_eq!(woken(&out), Some(now + rules.form_timeout));
}

/// A probe push that neither answers nor fails (a member that accepts streams and never
/// reads them) does not hold the first plan back: past [`PROBE_BUDGET`] the issuer plans
/// with the default link, and the probes' late result changes nothing.
#[test]
fn a_stuck_probe_does_not_hold_the_first_plan_back() {
    let rules = Rules::of(&config(3, 1));
    let ids = peers(3);
    let now = Instant::now();
    let (mut m, _) = Membership::new(ids[0], capacity(FAST), rules.clone(), now);
    let world: Vec<PeerInfo> = ids
        .iter()
        .map(|p| announcing(&rules, *p, true, 0, FAST))
        .collect();
    let out = m.handle(tick(now, world.clone()));
    assert_eq!(woken(&out), Some(now + PROBE_BUDGET), "{out:?}");
    let early = m.handle(tick(now + Duration::from_secs(3), world.clone()));
    assert!(sent(&early).is_none(), "{early:?}");
    assert_eq!(woken(&early), Some(now + PROBE_BUDGET));
    let out = m.handle(tick(now + PROBE_BUDGET, world));
    let notice = sent(&out).expect("planned without the probes");
    assert!(notice.input.links.is_empty());
    assert_eq!(notice.members.len(), 3);
    let late = m.handle(Event::Probed {
        now: now + PROBE_BUDGET,
        links: Vec::new(),
    });
    assert!(late.is_empty(), "{late:?}");
}

/// Peers count by the wall clock the look brings, not the machine's: an unconnected peer
/// whose announcement is older than a candidate's recency is not a member to wait for.
#[test]
fn an_unconnected_peer_with_an_old_announcement_is_not_a_candidate() {
    let rules = Rules::of(&config(2, 1));
    let ids = peers(2);
    let now = Instant::now();
    let (mut m, _) = Membership::new(ids[0], capacity(FAST), rules.clone(), now);
    let mut old = announcing(&rules, ids[1], false, 0, FAST);
    old.last_seen_ms = WALL - 60_000;
    let out = m.handle(tick(now, vec![old.clone()]));
    assert!(
        !out.iter().any(|a| matches!(a, Action::Probe(_))),
        "{out:?}"
    );
    old.last_seen_ms = WALL - 1_000;
    let out = m.handle(tick(now + LOOK_EVERY, vec![old]));
    assert!(out.iter().any(|a| matches!(a, Action::Probe(_))), "{out:?}");
}

/// The last message of a run: the downstream neighbour finishes and leaves, and the sender
/// may see that send fail (before 2026-12-05 the acknowledgement was lost in the transport)
/// and report the chain broken. A member whose part is over takes no part in that: it
/// neither re-plans nor answers, whatever arrives after it finished.
#[test]
fn a_member_that_finished_ignores_what_comes_after_its_last_step() {
    let rules = Rules::of(&config(3, 1));
    let ids = peers(3);
    let now = Instant::now();
    let (mut m, notice) = running(&rules, &ids, ids[2], now);
    let out = m.handle(Event::StageEnded {
        now,
        end: Ok(EpochEnd::Finished),
        resume: no_resume(),
    });
    assert!(matches!(out[..], [Action::Finish { .. }]), "{out:?}");
    let broken = m.handle(Event::Broken {
        now,
        from: ids[1],
        epoch: 1,
        blame: None,
    });
    assert!(broken.is_empty(), "{broken:?}");
    let mut next = notice.clone();
    next.epoch = 2;
    assert!(m.handle(notice_event(now, ids[0], &next)).is_empty());
    assert!(m.handle(tick(now + REPLAN_GRACE, Vec::new())).is_empty());
}

/// Plan hijack by capacity: the issuer of a first plan (the lowest member, entitled to issue
/// it) writes that a rival has next to no compute, so the deterministic plan of those inputs
/// gives the rival almost nothing. Each planned capacity must be cited from its peer's own
/// signed announcement: a made-up number, a citation signed by someone else, one of another
/// run, or none at all is refused; the honest notice is taken (before: the made-up capacity
/// was planned with as given).
#[test]
fn a_plan_must_cite_what_each_peer_signed_for_its_capacity() {
    let rules = Rules::of(&config(3, 1));
    let ids = peers(3);
    let now = Instant::now();
    let (issuer, me) = (ids[0], ids[2]);
    let honest = first_plan(&rules, &[(ids[0], FAST), (ids[1], FAST), (ids[2], FAST)]);
    let mut input = honest.input.clone();
    for p in input
        .peers
        .iter_mut()
        .filter(|p| p.id != issuer.to_string())
    {
        p.flops_per_sec = 1e3;
    }
    let made_up = PlanNotice {
        citations: honest.citations.clone(),
        ..PlanNotice::compute(1, rules.placement, &ids, input, 1).expect("a plan")
    };
    assert_ne!(made_up.plan.assignments, honest.plan.assignments);
    let refused = |notice: &PlanNotice| {
        let (mut m, _) = Membership::new(me, capacity(FAST), rules.clone(), now);
        m.handle(raw_notice_event(now, issuer, notice)).is_empty()
    };
    assert!(refused(&made_up), "a made-up capacity");
    // Citations the issuer signed itself for the numbers it made up.
    let mut self_signed = made_up.clone();
    for (citation, p) in self_signed.citations.iter_mut().zip(
        made_up
            .input
            .peers
            .iter()
            .filter(|p| p.id != issuer.to_string()),
    ) {
        let (mut a, _) = announcement(&rules, issuer, 0, p.flops_per_sec);
        a.peer = murmur_protocol::envelope::peer_key(&key_of(&p.id.parse().expect("an id")));
        *citation = SignedEnvelope::sign(&key_of(&issuer), &Message::Announcement(a))
            .expect("signable")
            .to_bytes();
    }
    assert!(refused(&self_signed), "citations signed by the issuer");
    let mut other_run = honest.clone();
    let mut elsewhere = rules.clone();
    elsewhere.run = RunId::from_name("another run");
    other_run.citations = cited_by(&elsewhere, issuer, &honest).citations;
    assert!(refused(&other_run), "citations of another run");
    let mut none = honest.clone();
    none.citations.clear();
    assert!(refused(&none), "no citations");
    let (mut m, _) = Membership::new(me, capacity(FAST), rules.clone(), now);
    let out = m.handle(raw_notice_event(now, issuer, &honest));
    assert_eq!(started(&out).map(|s| s.0), Some(1), "{out:?}");
}

/// A notice padded with a thousand members the plan never uses (every member re-checks each
/// of them, and a left-out member is told the plan) is refused on its size, before its ids
/// are parsed or its plan recomputed (before: a valid plan with 1100 extra members ran).
#[test]
fn a_notice_listing_more_members_than_the_bound_is_refused() {
    let rules = Rules::of(&config(3, 1));
    let ids = peers(3);
    let now = Instant::now();
    let (mut m, first) = running(&rules, &ids, ids[2], now);
    let mut padded = first.clone();
    padded.epoch = 2;
    padded
        .members
        .extend((0..=MAX_NOTICE_MEMBERS).map(|_| PeerId::random().to_string()));
    assert!(m.handle(notice_event(now, ids[0], &padded)).is_empty());
    let mut next = first;
    next.epoch = 2;
    let out = m.handle(notice_event(now, ids[0], &next));
    assert!(matches!(out[..], [Action::StopStage]), "{out:?}");
}
